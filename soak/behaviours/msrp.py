"""
The behaviours of MSRP clients: sessions, people at a terminal, hostile
frames, and files abandoned, stalled or cut short.
"""

from __future__ import annotations

import asyncio
import hashlib
import os

from chatd.msrp import codec as msrp
from chatd.msrp.protocol import FILL_MAX

from soak.wire import (
    Closed,
    Connection,
    MsrpClient,
    NoAnswer,
    ProtobufClient,
    Request,
    SoakFailure,
    messageRequest,
    parseClientList,
)
from soak import wire
from soak.behaviours.common import (
    Limited,
    SUCCESSFUL,
    Skip,
    Soak,
    _expect,
    _expectPb,
    isLimit,
)


async def _msrpLogin(soak: Soak, name: str, receiveBuffer: int = 0) -> MsrpClient:
    """Connect as C{name} (binary) and wait for the answer to LIST."""
    client = await MsrpClient.open(soak.ports["msrp"], soak.timeout, receiveBuffer)
    try:
        await client.send(name.encode() + msrp.encodeListRequest())
        frame = await client.expect(lambda f: type(f) in (msrp.ClientList, msrp.Error))
        if type(frame) is msrp.Error:
            text = frame.text.decode("utf-8", "replace")
            if isLimit(text):
                raise Limited(text)
            raise SoakFailure(f"msrp: the login of {name} was refused: {text!r}")
        _expect(
            name in parseClientList(frame.text),
            f"msrp: {name} is not in its own list",
        )
    except BaseException:
        client.connection.reset()
        raise
    return client


#: ERRORs a well-behaved MSRP client may get for what it sent to others,
#: who come and go (docs/msrp.md, "Error texts").
_PEER_ERRORS = (
    "Cliente objetivo no encontrado.",
    "No se pudo entregar a ",
    " no puede recibir archivos.",
    "Archivo demasiado grande para ",
    "Error al recibir el archivo. ",
    "Ningún archivo ",
    "El remitente de ",
)


def _allowedError(frame) -> None:
    """An ERROR among the frames of a well-behaved session must be explained."""
    if type(frame) is msrp.Error:
        text = frame.text.decode("utf-8", "replace")
        if any(part in text for part in _PEER_ERRORS) or isLimit(text):
            return
        raise SoakFailure(f"msrp: an unexpected ERROR {text!r}")


def _filesFromOthers(frames: list) -> list[bytes]:
    """The names of the whole files among C{frames} (what a client may ACK)."""
    names, current = [], None
    for frame in frames:
        if type(frame) is msrp.FileHeader:
            current = frame.filename
        elif type(frame) is msrp.FileEnd and current is not None:
            names.append(current)
            current = None
    return names


async def msrpSession(soak: Soak) -> None:
    """A binary client: list, messages, a file to itself and its ACK."""
    name = soak.msrpName()
    wire = name.encode()
    client = await _msrpLogin(soak, name)
    rng = soak.rng
    others: list = []
    try:
        soak.online[name] = "msrp"
        for _ in range(rng.randint(1, 5)):
            await soak.pause(0.0, 0.4)
            op = rng.randrange(6)
            if op == 0:
                users = await client.users()
                _expect(name in users, f"msrp: {name} is not in its own list")
            elif op == 4:
                # A file to someone else (MSRP: streamed; MSGR: handed over
                # whole; protobuf and people: refused). The LIST after it is
                # answered once the server has read the whole file, so the
                # sender never vanishes in its middle (which would cut the
                # receiver off, as documented).
                peer = soak.peer(name, fourBytes=True)
                if peer is not None:
                    size = rng.randint(0, 32 * 1024)
                    filename = f"p{rng.randrange(10**6)}.txt".encode()
                    await client.send(
                        msrp.encodeFileHeader(peer.encode(), filename, size) + os.urandom(size)
                    )
                    await client.users()
            elif op == 5:
                # ACK a file received from someone else, if any came.
                received = _filesFromOthers(others)
                if received:
                    await client.send(msrp.encodeAck(rng.choice(received)))
            elif op == 1:
                text = soak.text().encode()
                await client.send(msrp.encodeMessage(wire, text))
                await client.expect(
                    lambda f: type(f) is msrp.Message and f.name == wire and f.text == text,
                    others=others,
                )
            elif op == 2:
                peer = soak.peer(name, fourBytes=True)
                if peer is not None:
                    await client.send(msrp.encodeMessage(peer.encode(), soak.text().encode()))
            else:
                size = rng.choice([0, 1, rng.randint(2, 96 * 1024)])
                content = os.urandom(size)
                filename = f"f{rng.randrange(10**6)}.bin".encode()
                await client.send(
                    msrp.encodeFileHeader(wire, filename, size, 40000, b"127.0.0.1") + content
                )
                header = await client.expect(
                    lambda f: type(f) is msrp.FileHeader and f.filename == filename,
                    others=others,
                )
                _expect(
                    header.name == wire and header.size == size and header.port == 40000
                    and header.ip == b"127.0.0.1",
                    f"msrp: the file came back with header {header!r}",
                )
                received = bytearray()
                while True:
                    frame = await client.frame()
                    if type(frame) is msrp.FileEnd:
                        break
                    _expect(
                        type(frame) is msrp.FileChunk,
                        f"msrp: {frame!r} inside a file's content",
                    )
                    received += frame.data
                _expect(
                    hashlib.sha256(received).digest() == hashlib.sha256(content).digest(),
                    f"msrp: a file of {size} bytes came back as {len(received)} other bytes",
                )
                await client.send(msrp.encodeAck(filename))
                await client.expect(
                    lambda f: type(f) is msrp.Ack and f.filename == filename, others=others
                )
            for frame in others:
                _allowedError(frame)
            if rng.random() < 0.5:
                others.clear()
    finally:
        soak.online.pop(name, None)
        await client.connection.end(soak.abrupt(0.4))


async def msrpPerson(soak: Soak) -> None:
    """The mode for people: greeting, clientes, a message to oneself, salir."""
    name = soak.msrpName()
    connection = await Connection.open(soak.ports["msrp"], soak.timeout)
    buffer = bytearray()

    async def line() -> str:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + soak.timeout
        while b"\n" not in buffer:
            buffer.extend(await connection.read(max(0.01, deadline - loop.time())))
        raw, _, rest = bytes(buffer).partition(b"\n")
        buffer[:] = rest
        return raw.decode("utf-8", "replace")

    async def lineThat(predicate) -> str:
        while True:
            text = await line()
            if predicate(text):
                return text

    try:
        await connection.send(name.encode() + b"\r\n", soak.timeout)
        greeting = await line()
        if greeting.startswith("ERROR:") and isLimit(greeting):
            raise Limited(greeting)
        _expect(greeting.startswith(f"Hola, {name}."), f"msrp: greeting {greeting!r}")
        soak.online[name] = "msrp"
        await connection.send(b"clientes\n", soak.timeout)
        await lineThat(lambda t: t == "Lista de clientes:")
        await lineThat(lambda t: t.startswith("Cliente ") and t.endswith(f": {name}"))
        await connection.send(f"{name} hola {name}\r\n".encode(), soak.timeout)
        await lineThat(lambda t: t == f"[{name}]: hola {name}")
        peer = soak.peer(name)
        if peer is not None:
            await connection.send(f"{peer} {soak.text()}\n".encode(), soak.timeout)
        if soak.abrupt(0.5):
            soak.online.pop(name, None)
            connection.reset()
            return
        await connection.send(b"salir\n", soak.timeout)
        await lineThat(lambda t: t == "Adiós.")
        soak.online.pop(name, None)
        await connection.readUntilClosed(soak.timeout)
    finally:
        soak.online.pop(name, None)
        await connection.end(True)


async def msrpSlot(soak: Soak) -> None:
    """
    A protobuf user whose name is longer than 4 bytes and a binary MSRP
    client reach each other by the name slot (docs/msrp.md, "Name slots"):
    the slot comes from LIST, where every slot is unique and no online name;
    a message to the slot reaches the protobuf user, and one from them
    arrives under the slot with the full name first.
    """
    # "sl-<n>_": never a name of another behaviour, and its slots ("sl-1",
    # "sl-2", ..., "sl01", ...) never one either, so no real name wins them
    # from under this behaviour.
    longName = f"sl-{soak.pbName()[3:]}_"
    msName = soak.msrpName()
    pb = await ProtobufClient.open(soak.ports["protobuf"], soak.timeout)
    ms = None
    try:
        _expectPb(await pb.login(longName), Request.USER_LOGIN, SUCCESSFUL, f"welcome, {longName}")
        ms = await _msrpLogin(soak, msName)
        await ms.send(msrp.encodeListRequest())
        frame = await ms.expect(lambda f: type(f) is msrp.ClientList)
        entries = dict(msrp.parseClientListEntry(e) for e in parseClientList(frame.text))
        slot = entries.get(longName)
        _expect(slot is not None, f"msrp: no slot for {longName} in LIST")
        keys = [s.decode("utf-8", "replace").casefold() for s in entries.values() if s]
        _expect(len(keys) == len(set(keys)), "msrp: two users share a 4-byte slot in LIST")
        # To the slot: it reaches the protobuf user.
        text = soak.text()
        await ms.send(msrp.encodeMessage(slot, text.encode()))
        await pb.delivery(lambda d: d.messg.sender == msName and d.messg.text == text)
        # From the long name: under the slot, the full name first.
        text = soak.text()
        response = await pb.request(messageRequest(msName, text))
        _expectPb(response, Request.SEND_MESSAGE, SUCCESSFUL, f"delivered to {msName}")
        expected = f"{longName}: {text}".encode()
        message = await ms.expect(lambda f: type(f) is msrp.Message and f.text == expected)
        _expect(message.name == slot, f"msrp: {longName} wrote under {message.name!r}, not {slot!r}")
    finally:
        if ms is not None:
            await ms.connection.end(soak.abrupt(0.4))
        await pb.connection.end(soak.abrupt(0.4))


async def msrpPersonWaits(soak: Soak) -> None:
    """
    The mode for people as a newcomer meets it: connect and wait, be told
    what to type (--msrp-greeting), type the name, ask for help, leave.
    """
    name = soak.msrpName()
    connection = await Connection.open(soak.ports["msrp"], soak.timeout)
    buffer = bytearray()

    async def line() -> str:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + soak.timeout
        while b"\n" not in buffer:
            if buffer[:1] == b"\x00" and b"\x00" in buffer[2:]:
                # An ERROR frame: refused at once by a connection limit.
                text = bytes(buffer[2:]).split(b"\x00", 1)[0].decode("utf-8", "replace")
                _expect(isLimit(text), f"msrp: a waiting person got the frame {text!r}")
                raise Limited(text)
            buffer.extend(await connection.read(max(0.01, deadline - loop.time())))
        raw, _, rest = bytes(buffer).partition(b"\n")
        buffer[:] = rest
        return raw.decode("utf-8", "replace")

    async def answer() -> str:
        # The next line that is not a message arriving (others write to
        # everyone meanwhile; a message's further lines are indented).
        while True:
            text = await line()
            if not text.startswith(("[", "  ")):
                return text

    try:
        prompt = await line()
        _expect(
            prompt.startswith("Hola. Escribe tu nombre, de exactamente 4 bytes"),
            f"msrp: the prompt for a name was {prompt!r}",
        )
        await connection.send(name.encode() + b"\r\n", soak.timeout)
        greeting = await line()
        if greeting.startswith("ERROR:") and isLimit(greeting):
            raise Limited(greeting)
        _expect(greeting.startswith(f"Hola, {name}."), f"msrp: greeting {greeting!r}")
        soak.online[name] = "msrp"
        await connection.send(b"help\n", soak.timeout)
        first = await answer()
        _expect(first == "Escribe una orden por línea:", f"msrp: help began {first!r}")
        # The help is one write: its five lines come together.
        rest = [await line() for _ in range(5)]
        _expect(rest[-1].startswith("  salir"), f"msrp: help ended {rest!r}")
        await connection.send(b"salir\n", soak.timeout)
        bye = await answer()
        _expect(bye == "Adiós.", f"msrp: {bye!r} after salir")
        soak.online.pop(name, None)
        await connection.readUntilClosed(soak.timeout)
    finally:
        soak.online.pop(name, None)
        await connection.end(True)


async def msrpHalfClose(soak: Soak) -> None:
    """
    A person's name and `clientes` without its Enter, then the sending side
    shut down (as `nc -q 1` does): the greeting and the list come, then the
    server closes.
    """
    name = soak.msrpName()
    connection = await Connection.open(soak.ports["msrp"], soak.timeout)
    try:
        connection.write(name.encode() + b"\nclientes")
        connection.writer.write_eof()
        text = (await connection.readUntilClosed(soak.timeout)).decode("utf-8", "replace")
        if text.startswith("ERROR:") and isLimit(text):
            raise Limited(text)
        lines = text.split("\n")
        _expect(lines[0].startswith(f"Hola, {name}."), f"msrp: half-close greeting {text[:80]!r}")
        _expect(
            "Lista de clientes:" in lines and any(
                line.startswith("Cliente ") and line.endswith(f": {name}") for line in lines
            ),
            f"msrp: no list before the close after a half-close: {text[:200]!r}",
        )
    finally:
        await connection.end(True)


async def msrpPartial(soak: Soak) -> None:
    """
    Part of a name, nothing at all, or a name and a frame cut short: left
    hanging, then closed.
    """
    connection = await Connection.open(soak.ports["msrp"], soak.timeout)
    rng = soak.rng
    try:
        kind = rng.randrange(3)
        if kind == 0:
            connection.write(soak.msrpName().encode()[: rng.randint(1, 3)])
        elif kind == 2:
            name = soak.msrpName().encode()
            frame = rng.choice(
                [
                    msrp.encodeMessage(name, b"hola"),
                    msrp.encodeFileHeader(name, b"x.bin", 10, 1, b"10.0.0.1") + b"01234",
                    msrp.encodeAck(b"x.bin"),
                    msrp.encodeListRequest(b"clientes"),
                ]
            )
            connection.write(name + frame[: rng.randrange(1, len(frame))])
        await soak.pause(0.2, 3.0)
    finally:
        await connection.end(soak.abrupt())


async def msrpGarbage(soak: Soak) -> None:
    """Random bytes, after a name and a binary start or instead of a name."""
    connection = await Connection.open(soak.ports["msrp"], soak.timeout)
    try:
        if soak.abrupt():
            connection.write(soak.msrpName().encode() + b"\x00" + soak.junk(1, 4096))
        else:
            # A first byte outside the soak's names, so that a random name
            # never takes a well-behaved client's.
            connection.write(b"\xff" + soak.junk(0, 4096))
        await connection.drainFor(soak.rng.uniform(0.0, 0.5))
    finally:
        await connection.end(soak.abrupt())


async def msrpOversized(soak: Soak) -> None:
    """A text past its maximum without its 0x00, or a file announced too large."""
    name = soak.msrpName()
    client = await _msrpLogin(soak, name)
    try:
        if soak.abrupt():
            client.connection.write(b"\x00\x01" + name.encode() + b"a" * (msrp.MAX_TEXT + 10))
            expected = "supera"
        else:
            client.connection.write(
                msrp.encodeFileHeader(name.encode(), b"big.bin", 2**63, 0, b"")
            )
            expected = "Archivo demasiado grande"
        try:
            frame = await client.expect(lambda f: type(f) is msrp.Error)
        except Closed:
            return  # closed while bytes were still coming: the answer may be lost

        _expect(
            expected in frame.text.decode("utf-8", "replace"),
            f"msrp: an oversized frame answered {frame.text[:80]!r}",
        )
        await client.connection.readUntilClosed(soak.timeout)
    finally:
        client.connection.reset()


async def msrpLoginVanish(soak: Soak) -> None:
    """Log in, then an RST: no goodbye."""
    client = await _msrpLogin(soak, soak.msrpName())
    await soak.pause(0.0, 1.0)
    client.connection.reset()


async def _receiveAbandoned(
    receiver: MsrpClient,
    filename: bytes,
    size: int,
    timeout: float,
    started: asyncio.Event,
    notice: str,
    large: bool = False,
) -> int:
    """
    The receiver of a file whose sender vanishes: the header, the content
    the sender sent, the rest as zero bytes, then at once ERROR C{notice}
    (docs/msrp.md: never a file that passes for whole), and the connection
    goes on; or, when more than FILL_MAX bytes were missing, the connection
    is closed before C{size} bytes (docs/msrp.md, "Large files"). C{large}:
    the sender sent so little that the server must close it. Returns how
    many bytes came.
    """
    await receiver.expect(lambda f: type(f) is msrp.FileHeader and f.filename == filename)
    started.set()
    got = 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout + size / (256 * 1024)
    while True:
        try:
            frame = await receiver.frame(max(0.01, deadline - loop.time()))
        except Closed:
            # Closed only when more than FILL_MAX was missing: what came is
            # at most what the server relayed (less, if the reset lost some).
            _expect(
                got < size - FILL_MAX,
                f"msrp: the receiver of an abandoned file was closed ({got} of"
                f" {size} bytes), when at most {FILL_MAX} were missing",
            )
            return got
        except NoAnswer:
            raise SoakFailure(
                f"msrp: the receiver of an abandoned file got {got} of {size} bytes, then nothing"
            ) from None
        if type(frame) is msrp.FileEnd:
            break
        _expect(type(frame) is msrp.FileChunk, f"msrp: {frame!r} inside a file's content")
        got += len(frame.data)
    _expect(got == size, f"msrp: an abandoned file of {size} bytes ended after {got}")
    _expect(
        not large,
        f"msrp: an abandoned file of {size} bytes with more than {FILL_MAX} missing"
        " was completed with zeros",
    )
    # The ERROR follows the last zero byte at once; it gets a timeout of its
    # own, not what a slow transfer left of the file's.
    frame = await receiver.frame(timeout)
    text = frame.text.decode("utf-8", "replace") if type(frame) is msrp.Error else repr(frame)
    # A sender slowed down by the load may stall first: that notice is right too.
    stalled = f"Error al recibir el archivo. {filename.decode()} no avanzó en "
    _expect(
        text == notice or (text.startswith(stalled) and text.endswith(" s; no se entregó.")),
        f"msrp: after an abandoned file, {text!r} instead of {notice!r}",
    )
    return got


async def msrpAbandonedFile(soak: Soak) -> None:
    """
    A file between two MSRP clients abandoned midway: by its sender (an RST;
    the receiver gets the rest as zero bytes and an ERROR, and goes on, or,
    with more than FILL_MAX missing, is disconnected), by
    its receiver (the sender is told, and goes on), or sent to a receiver
    that never reads (then the sender gives up).
    """
    rng = soak.rng
    receiverName, senderName = soak.msrpName(), soak.msrpName()
    kind = rng.randrange(3)
    receiver = await _msrpLogin(soak, receiverName, receiveBuffer=4096 if kind == 2 else 0)
    try:
        sender = await _msrpLogin(soak, senderName)
    except BaseException:
        receiver.connection.reset()
        raise
    size = rng.randint(64 * 1024, 4 * 1024 * 1024)
    filename = f"abandoned{rng.randrange(10**6)}.bin".encode()
    part = rng.randint(0, size - 1)
    try:
        header = msrp.encodeFileHeader(receiverName.encode(), filename, size, 0, b"")
        if kind == 0:
            started = asyncio.Event()
            notice = (
                f"Error al recibir el archivo. {senderName} se desconectó;"
                f" {filename.decode()} no se entregó."
            )
            receiving = asyncio.ensure_future(
                _receiveAbandoned(
                    receiver, filename, size, soak.timeout, started, notice,
                    large=size - part > FILL_MAX,
                )
            )
            try:
                await sender.send(header)
                # The header is through before the sender vanishes, so that
                # the receiver has a file that is cut short.
                try:
                    await asyncio.wait_for(started.wait(), soak.timeout)
                except asyncio.TimeoutError:
                    if receiving.done():
                        await receiving  # its own failure says more
                    raise SoakFailure("msrp: the receiver never got the file's header") from None
                sent = 0
                while sent < part:
                    n = min(part - sent, 65536)
                    await sender.send(os.urandom(n))
                    sent += n
                sender.connection.reset()
                await receiving
            finally:
                receiving.cancel()
        elif kind == 1:
            await sender.send(header + os.urandom(min(part, 65536)))
            await receiver.expect(lambda f: type(f) is msrp.FileHeader and f.filename == filename)
            receiver.connection.reset()
            frame = await sender.expect(lambda f: type(f) is msrp.Error)
            text = frame.text.decode("utf-8", "replace")
            _expect(
                text == f"Error al recibir el archivo. {receiverName} se desconectó;"
                f" {filename.decode()} no se entregó.",
                f"msrp: the sender of a file whose receiver left got {text!r}",
            )
            # The rest is read and dropped, then the connection goes on.
            rest = size - min(part, 65536)
            while rest:
                n = min(rest, 65536)
                await sender.send(b"\x00" * n)
                rest -= n
            users = await sender.users()
            _expect(senderName in users, f"msrp: {senderName} is not in its own list")
        else:
            # The receiver never reads: the server stops reading the sender.
            await sender.send(header)
            try:
                sent = 0
                while sent < size - 1:
                    n = min(size - 1 - sent, 65536)
                    await sender.connection.send(os.urandom(n), 1.0)
                    sent += n
            except NoAnswer:
                pass  # backpressure, as it should be
            sender.connection.reset()
    finally:
        sender.connection.reset()
        receiver.connection.reset()


async def msrpStalledFile(soak: Soak) -> None:
    """
    The stalled file sender (issue 11): a file announced to a receiver, a
    few bytes of it, then nothing. Meanwhile a third client writes to the
    receiver and the receiver asks for the list. Within --file-idle-timeout
    the sender is told; the receiver gets the rest as zero bytes, the same
    ERROR, then the messages and its list: nothing accepted is lost, and
    both connections go on.
    """
    if soak.fileIdleTimeout is None or not soak.fileIdleTimeout:
        raise Skip()
    rng = soak.rng
    receiverName, senderName, thirdName = soak.msrpName(), soak.msrpName(), soak.msrpName()
    clients = []
    try:
        for name in (receiverName, senderName, thirdName):
            clients.append(await _msrpLogin(soak, name))
        receiver, sender, third = clients
        size = rng.randint(1024, 256 * 1024)
        part = rng.randint(0, 64)
        filename = f"stalled{rng.randrange(10**6)}.bin".encode()
        await sender.send(
            msrp.encodeFileHeader(receiverName.encode(), filename, size, 0, b"")
            + os.urandom(part)
        )
        await receiver.expect(lambda f: type(f) is msrp.FileHeader and f.filename == filename)
        texts = [soak.text().encode() for _ in range(rng.randint(1, 5))]
        for text in texts:
            await third.send(msrp.encodeMessage(receiverName.encode(), text))
        # Its list's answer comes after the server took the messages.
        refusals: list = []
        await third.send(msrp.encodeListRequest())
        await third.expect(lambda f: type(f) is msrp.ClientList, others=refusals)
        for frame in refusals:
            if type(frame) is msrp.Error and isLimit(frame.text.decode("utf-8", "replace")):
                raise Limited("a message to the receiver of a stalled file was refused")
            _allowedError(frame)
        await receiver.send(msrp.encodeListRequest())
        wait = soak.fileIdleTimeout + soak.timeout
        notice = (
            f"Error al recibir el archivo. {filename.decode()} no avanzó en"
            f" {soak.fileIdleTimeout:g} s; no se entregó."
        )
        frame = await sender.expect(lambda f: type(f) is msrp.Error, wait)
        text = frame.text.decode("utf-8", "replace")
        _expect(text == notice, f"msrp: the sender of a stalled file got {text!r}")
        # The receiver: the whole size, the notice, then what waited, in order
        # (broadcasts from others may come among the messages).
        got = 0
        while True:
            frame = await receiver.frame(wait)
            if type(frame) is msrp.FileEnd:
                break
            _expect(type(frame) is msrp.FileChunk, f"msrp: {frame!r} inside a file's content")
            got += len(frame.data)
        _expect(got == size, f"msrp: a stalled file of {size} bytes ended after {got}")
        frame = await receiver.frame(wait)
        text = frame.text.decode("utf-8", "replace") if type(frame) is msrp.Error else repr(frame)
        _expect(text == notice, f"msrp: after a stalled file the receiver got {text!r}")
        expected = list(texts)
        while True:
            frame = await receiver.frame(wait)
            if type(frame) is msrp.ClientList:
                break
            if type(frame) is msrp.Message and frame.name == thirdName.encode():
                _expect(
                    bool(expected) and frame.text == expected.pop(0),
                    f"msrp: a message that waited behind a stalled file came as {frame!r}",
                )
            else:
                _allowedError(frame)
        _expect(not expected, f"msrp: {len(expected)} messages that waited were lost")
        _expect(receiverName in parseClientList(frame.text), "msrp: the receiver is not in its list")
        # The sender goes on once the rest of its content (dropped) is sent.
        await sender.send(bytes(size - part))
        users = await sender.users()
        _expect(senderName in users, f"msrp: {senderName} is not in its own list")
    finally:
        for client in clients:
            client.connection.reset()


async def msrpLargeFileCut(soak: Soak) -> None:
    """
    A large file cut short (docs/msrp.md, "Large files"): more than FILL_MAX
    of it announced and never sent. While it streams, a third client's
    message to the receiver is refused at once; the receiver asks for the
    list, then the sender vanishes (an RST) or stalls for --file-idle-timeout
    (then it is told). The receiver is disconnected before the end of the
    file, never handed the missing bytes as zeros; the others go on.
    """
    rng = soak.rng
    receiverName, senderName, thirdName = soak.msrpName(), soak.msrpName(), soak.msrpName()
    stall = bool(soak.fileIdleTimeout) and rng.random() < 0.5
    clients = []
    try:
        for name in (receiverName, senderName, thirdName):
            clients.append(await _msrpLogin(soak, name))
        receiver, sender, third = clients
        size = rng.randint(FILL_MAX + 1, 8 * 1024 * 1024)
        part = rng.randint(0, min(64 * 1024, size - FILL_MAX - 1))
        filename = f"large{rng.randrange(10**6)}.bin".encode()
        await sender.send(
            msrp.encodeFileHeader(receiverName.encode(), filename, size, 0, b"")
            + os.urandom(part)
        )
        await receiver.expect(lambda f: type(f) is msrp.FileHeader and f.filename == filename)
        await third.send(msrp.encodeMessage(receiverName.encode(), soak.text().encode()))
        await third.send(msrp.encodeListRequest())
        before: list = []
        await third.expect(lambda f: type(f) is msrp.ClientList, others=before)
        busy = f"No se pudo entregar a {receiverName}: está recibiendo un archivo grande."
        texts = [f.text.decode("utf-8", "replace") for f in before if type(f) is msrp.Error]
        if busy not in texts and any(isLimit(text) for text in texts):
            raise Limited("a message to the receiver of a large file hit a limit first")
        _expect(
            busy in texts,
            f"msrp: a message to the receiver of a large file got {texts!r}, not the refusal",
        )
        for frame in before:
            if not (type(frame) is msrp.Error and frame.text.decode("utf-8", "replace") == busy):
                _allowedError(frame)
        await receiver.send(msrp.encodeListRequest())
        wait = soak.timeout
        if stall:
            wait += soak.fileIdleTimeout
            frame = await sender.expect(lambda f: type(f) is msrp.Error, wait)
            text = frame.text.decode("utf-8", "replace")
            notice = (
                f"Error al recibir el archivo. {filename.decode()} no avanzó en"
                f" {soak.fileIdleTimeout:g} s; no se entregó."
            )
            _expect(text == notice, f"msrp: the sender of a stalled large file got {text!r}")
        else:
            sender.connection.reset()
        got = 0
        while True:
            try:
                frame = await receiver.frame(wait)
            except Closed:
                break
            except NoAnswer:
                raise SoakFailure(
                    f"msrp: the receiver of a large file cut short got {got} of"
                    f" {size} bytes and was not closed"
                ) from None
            _expect(
                type(frame) is msrp.FileChunk,
                f"msrp: {frame!r} to the receiver of a large file cut short"
                f" ({got} of {size} bytes)",
            )
            got += len(frame.data)
        _expect(got <= part, f"msrp: {got} bytes of a large file of which {part} were sent")
        users = await third.users()
        _expect(receiverName not in users, f"msrp: {receiverName} is still listed after its close")
        if stall:
            # The sender goes on once the rest of its content (dropped) is sent.
            rest = size - part
            while rest:
                n = min(rest, 1024 * 1024)
                await sender.send(bytes(n))
                rest -= n
            users = await sender.users()
            _expect(senderName in users, f"msrp: {senderName} is not in its own list")
    finally:
        for client in clients:
            client.connection.reset()


async def msrpDeaf(soak: Soak) -> None:
    """
    A binary MSRP client that never reads, while others message it and send
    it files: its queue fills, messages to it are refused, files wait.
    """
    name = soak.msrpName()
    client = await _msrpLogin(soak, name, receiveBuffer=4096)
    soak.online[name] = "msrp"
    try:
        await soak.pause(1.0, 5.0)
    finally:
        soak.online.pop(name, None)
        client.connection.reset()


async def msrpVariant(soak: Soak) -> None:
    """
    A client of the peer-to-peer variant (docs/msrp.md): its name alone, a
    message to itself, the list, the un-opcoded line its client sends, and
    its last request repeated in a tight loop; every answer is plain text.
    """
    name = soak.msrpName()
    connection = await Connection.open(soak.ports["msrp"], soak.timeout)
    received = bytearray()

    async def answer(predicate) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + soak.timeout
        while not predicate(received.decode("utf-8", "replace")):
            received.extend(await connection.read(max(0.01, deadline - loop.time())))
        text = received.decode("utf-8", "replace")
        if text.startswith("\x00\x05") and isLimit(text):
            raise Limited(text)  # refused before the name, as any MSRP client
        # Plain text, but for file offers from others (00 02 + a header).
        _expect(
            b"\x00" not in received.replace(b"\x00\x02", b""),
            f"msrp variant: a 0x00 in {bytes(received)!r}",
        )
        received.clear()

    try:
        # Its client sends the name alone and a request when its user types
        # one; here they go together, as TCP may join them, so that the
        # session is the variant's from its login (a message for a 4-byte
        # name that came alone, before its first request, is the seed's
        # frame: docs/msrp.md, "How it is detected").
        await connection.send(
            name.encode() + f"\x00\x01{name} hola {name}".encode(), soak.timeout
        )
        await answer(lambda t: f"[{name}]: hola {name}" in t or isLimit(t))
        soak.online[name] = "msrp"
        await connection.send(b"\x00\x03", soak.timeout)
        # Others' messages may come first; a long list ends with how many
        # it left out (the newest users, this one among them).
        await answer(
            lambda t: "Lista de clientes:\n" in t and (f": {name}\n" in t or " más)\n" in t)
        )
        await connection.send("No se encontró el archivo.\n".encode(), soak.timeout)
        await answer(lambda t: "Código de operación incorrecto.\n" in t)
        # The end of its input: the last line again and again.
        await connection.send(f"\x00\x01{name} otra vez".encode() * 10, soak.timeout)
        await answer(lambda t: f"[{name}]: otra vez" in t or "Demasiados mensajes" in t)
    finally:
        soak.online.pop(name, None)
        await connection.end(soak.abrupt(0.5))
