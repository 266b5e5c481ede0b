"""
What the soak's clients do. Each behaviour is one short life of one client
(sometimes two connections), chosen at random by weight, again and again by
every client slot until the time is up:

  - well-behaved sessions on every protocol: log in, list, message
    themselves and others, change status, send files, log out or vanish (an
    RST, no logout);
  - hostile ones: partial frames left hanging then abrupt closes, random
    garbage, oversized length prefixes and fields, valid frames cut at random
    points, MSRP file transfers abandoned midway by either end, clients that
    never read, MSGR sockets racing to bind one account, HTTP requests cut
    short or with huge bodies.

L{BEHAVIOURS} lists them with their weights. L{Resident}s are the few
clients that stay online through the whole soak.

Where the docs say what the server answers, the behaviour checks it and
raises L{SoakFailure} (an "anomaly") when the answer differs, or when no
answer comes in time (a stall). Refusals that a configured limit explains
(rates, queues, connection counts) are counted, not failed.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import random
from dataclasses import dataclass, field

from chatd.msgr.codec import RawField, escape
from chatd.msrp import codec as msrp
from chatd.protobuf.framing import DEFAULT_MAX_FRAME, encodeVarint

from soak.wire import (
    Closed,
    Connection,
    MsgrClient,
    MsrpClient,
    NoAnswer,
    ProtobufClient,
    Request,
    Response,
    SoakFailure,
    behaviourConnections,
    http,
    infoRequest,
    limitSeen,
    listRequest,
    loginRequest,
    messageRequest,
    msgrLogin,
    parseClientList,
    protobufFrame,
    statusRequest,
)
from soak import wire

SUCCESSFUL = Response.SUCCESSFUL_OPERATION
FAILED = Response.FAILED_OPERATION

#: Words in a refusal that mean a limit of the server, not a wrong answer.
_LIMIT_WORDS = (
    "slow down",
    "too many",
    "not reading",
    "connection refused",
    "no login within",
    "limit",
    "demasiad",
    "límite",
    "cola de salida",
)

_BASE36 = "0123456789abcdefghijklmnopqrstuvwxyz"

#: MSGR names that never have an account: their failed logins exercise the
#: lockout without growing its tables.
GHOSTS = ("ghost0", "ghost1", "ghost2", "ghost3")


def isLimit(text: str) -> bool:
    lowered = text.lower()
    return any(word in lowered for word in _LIMIT_WORDS)


class Limited(Exception):
    """A limit of the server refused what the client did (counted, not failed)."""


class Skip(Exception):
    """The behaviour cannot run now (no MSGR account is free); pick another."""


@dataclass
class Tally:
    """What happened to one behaviour."""

    runs: int = 0
    ok: int = 0
    limited: int = 0
    anomalies: int = 0
    examples: list = field(default_factory=list)


class Soak:
    """
    The shared state of the clients: the server's ports, names, who is
    online (well-behaved sessions only), the MSGR accounts, the tallies.
    """

    def __init__(
        self,
        ports: dict[str, int],
        accounts: list[str],
        password: str,
        seed: int,
        timeout: float = 15.0,
    ):
        self.ports = ports
        self.timeout = timeout
        self.rng = random.Random(seed)
        self.password = password
        self.accountNames = list(accounts)
        self.accounts: asyncio.Queue = asyncio.Queue()
        for name in accounts:
            self.accounts.put_nowait(name)
        self.online: dict[str, str] = {}
        self.tallies: dict[str, Tally] = {}
        self._pbCounter = 0
        # MSRP names: 4 base-36 characters from a counter, never reused in a
        # run. Every other name has a character outside base 36 (protobuf
        # "pb-N", MSGR accounts "m-NN", the check clients a '#'), so no two
        # kinds of client ever want the same name.
        self._msrpCounter = self.rng.randrange(36**3)

    # Names.

    def pbName(self) -> str:
        self._pbCounter += 1
        return f"pb-{self._pbCounter}"

    def msrpName(self) -> str:
        self._msrpCounter += 1
        n, out = self._msrpCounter % 36**4, []
        for _ in range(4):
            n, digit = divmod(n, 36)
            out.append(_BASE36[digit])
        return "".join(reversed(out))

    def peer(self, me: str, fourBytes: bool = False) -> str | None:
        names = [
            n for n in self.online if n != me and (not fourBytes or len(n.encode()) == 4)
        ]
        return self.rng.choice(names) if names else None

    def text(self) -> str:
        rng = self.rng
        # Escapes and separators of every protocol, and more than ASCII.
        text = "".join(rng.choice("abcdefghij ñé€|&\\xyz") for _ in range(rng.randint(1, 60)))
        return text.strip() or "x"

    def junk(self, low: int, high: int) -> bytes:
        return os.urandom(self.rng.randint(low, high))

    def abrupt(self, chance: float = 0.5) -> bool:
        return self.rng.random() < chance

    async def pause(self, low: float, high: float) -> None:
        await asyncio.sleep(self.rng.uniform(low, high))

    # Running.

    def tally(self, name: str) -> Tally:
        return self.tallies.setdefault(name, Tally())

    async def run(self, name: str, behaviour) -> bool:
        """Run one behaviour and tally it; C{False} if it was skipped."""
        tally = self.tally(name)
        connections: list = []
        mine = behaviourConnections.set(connections)
        try:
            await asyncio.wait_for(behaviour(self), self.timeout * 4)
        except Skip:
            return False
        except Limited:
            tally.limited += 1
        except (SoakFailure, Closed, ConnectionError, OSError, asyncio.TimeoutError) as e:
            if limitSeen(connections):
                tally.limited += 1  # the server said which limit ended it
            elif isinstance(e, asyncio.TimeoutError):
                self._anomaly(tally, f"the whole behaviour took more than {self.timeout * 4:g}s")
            else:
                self._anomaly(tally, f"{type(e).__name__}: {e}")
        else:
            tally.ok += 1
        finally:
            behaviourConnections.reset(mine)
        tally.runs += 1
        return True

    @staticmethod
    def _anomaly(tally: Tally, text: str) -> None:
        tally.anomalies += 1
        if len(tally.examples) < 5:
            tally.examples.append(text)


def _expect(condition: bool, text: str) -> None:
    if not condition:
        raise SoakFailure(text)


def _expectPb(response, option: int, code: int, text: str | None = None) -> None:
    if response.code == FAILED and code == SUCCESSFUL and isLimit(response.response):
        raise Limited(response.response)
    _expect(
        response.option == option
        and response.code == code
        and (text is None or response.response == text),
        f"protobuf: expected option {option} code {code} {text!r}, got option"
        f" {response.option} code {response.code} {response.response!r}",
    )


# The protobuf chat.


async def pbSession(soak: Soak) -> None:
    """Log in, a few requests, then close (FIN) or vanish (RST)."""
    name = soak.pbName()
    client = await ProtobufClient.open(soak.ports["protobuf"], soak.timeout)
    rng = soak.rng
    try:
        _expectPb(await client.login(name), Request.USER_LOGIN, SUCCESSFUL, f"welcome, {name}")
        soak.online[name] = "protobuf"
        for _ in range(rng.randint(1, 6)):
            await soak.pause(0.0, 0.4)
            op = rng.randrange(7)
            if op == 0:
                users = await client.users()
                _expect(name in users, f"protobuf: {name} is not in its own list")
            elif op == 1:
                # No 0x00 after it: the server's short wait ends the request.
                response = await client.request(listRequest(), terminator=False)
                _expectPb(response, Request.CONNECTED_USERS, SUCCESSFUL)
            elif op == 2:
                response = await client.request(infoRequest(name))
                _expectPb(response, Request.USER_INFORMATION, SUCCESSFUL, f"{name} is online")
            elif op == 3:
                status = rng.choice(["ACTIVO", "OCUPADO", "INACTIVO"])
                response = await client.request(statusRequest(name, status))
                _expectPb(response, Request.STATUS_CHANGE, SUCCESSFUL, f"status is now {status}")
            elif op == 4:
                text = soak.text()
                response = await client.request(messageRequest(name, text))
                _expectPb(response, Request.SEND_MESSAGE, SUCCESSFUL, f"delivered to {name}")
                await client.delivery(
                    lambda d: d.messg.sender == name and d.messg.text == text
                    and d.messg.receiver == name
                )
            elif op == 5:
                peer = soak.peer(name)
                if peer is None:
                    continue
                response = await client.request(messageRequest(peer, soak.text()))
                if response.code == SUCCESSFUL:
                    _expectPb(response, Request.SEND_MESSAGE, SUCCESSFUL, f"delivered to {peer}")
                else:
                    _expect(
                        response.response.startswith("not delivered:")
                        or isLimit(response.response),
                        f"protobuf: a message to {peer} answered {response.response!r}",
                    )
            else:
                response = await client.request(messageRequest("all", soak.text()))
                _expectPb(response, Request.SEND_MESSAGE, SUCCESSFUL)
                _expect(
                    response.response.startswith("delivered to "),
                    f"protobuf: a broadcast answered {response.response!r}",
                )
    finally:
        soak.online.pop(name, None)
        await client.connection.end(soak.abrupt(0.4))


async def pbHalfClose(soak: Soak) -> None:
    """
    Log in and ask for the list with no 0x00 after it, then shut down the
    sending side (as `nc -q 1` does): both answers come, at once (no
    request is left waiting for bytes that cannot come), then the server
    closes.
    """
    name = soak.pbName()
    client = await ProtobufClient.open(soak.ports["protobuf"], soak.timeout)
    try:
        last = listRequest()
        if wire.protobufFraming != "raw":
            last = protobufFrame(last)
        client.connection.write(protobufFrame(loginRequest(name)) + last)
        client.connection.writer.write_eof()
        login = await client.response()
        if login.code == FAILED and isLimit(login.response):
            raise Limited(login.response)
        _expectPb(login, Request.USER_LOGIN, SUCCESSFUL, f"welcome, {name}")
        users = await client.response()
        _expectPb(users, Request.CONNECTED_USERS, SUCCESSFUL)
        _expect(
            name in [u.username for u in users.users.users],
            f"protobuf: {name} is not in the list it asked for before half-closing",
        )
        await client.connection.readUntilClosed(soak.timeout)
    finally:
        await client.connection.end(True)


async def pbPartial(soak: Soak) -> None:
    """A valid login cut at a random point, left hanging, then closed."""
    connection = await Connection.open(soak.ports["protobuf"], soak.timeout)
    try:
        frame = protobufFrame(loginRequest(soak.pbName()))
        connection.write(frame[: soak.rng.randrange(1, len(frame))])
        await soak.pause(0.2, 3.0)
    finally:
        await connection.end(soak.abrupt())


async def pbGarbage(soak: Soak) -> None:
    """Random bytes in a few writes; whatever comes back is drained."""
    connection = await Connection.open(soak.ports["protobuf"], soak.timeout)
    try:
        for _ in range(soak.rng.randint(1, 5)):
            connection.write(soak.junk(1, 4096))
            await soak.pause(0.0, 0.2)
        await connection.drainFor(soak.rng.uniform(0.0, 0.5))
    finally:
        await connection.end(soak.abrupt())


async def pbOversized(soak: Soak) -> None:
    """
    A length far over the maximum frame (of a field, or the delimited
    prefix), a request really over it, or a varint longer than ten bytes
    (malformed: the connection goes on).
    """
    client = await ProtobufClient.open(soak.ports["protobuf"], soak.timeout)
    connection = client.connection
    rng = soak.rng
    delimited = wire.protobufFraming == "delimited"
    try:
        kind = rng.randrange(3)
        if kind == 0:
            # Up to a terabyte announced: as the delimited prefix, or as the
            # length of newuser.
            huge = encodeVarint(rng.randint(DEFAULT_MAX_FRAME + 1, 1 << 40))
            await connection.send(huge if delimited else b"\x08\x00\x12" + huge, soak.timeout)
            response = await client.response()
        elif kind == 1:
            # A request really larger than the maximum: two string fields.
            # The server closes while bytes are still coming, which may reset
            # the connection before its answer is read: an answer is not
            # required then, only the close.
            payload = (
                b"\x08\x00\x12" + encodeVarint(200_000) + b"\x0a" * 200_000
                + b"\x1a" + encodeVarint(100_000) + b"\x0a" * 100_000
            )
            connection.write(protobufFrame(payload))
            try:
                response = await client.response()
            except Closed:
                return
        if kind in (0, 1):
            _expect(
                response.code == FAILED and "larger than the maximum frame" in response.response,
                f"protobuf: an oversized request answered {response.response!r}",
            )
            await connection.readUntilClosed(soak.timeout)
            return
        await connection.send(b"\xff" * 11 if delimited else b"\x08" + b"\xff" * 11, soak.timeout)
        response = await client.response()
        _expect(
            response.code == FAILED and response.response.startswith("malformed request"),
            f"protobuf: an 11-byte varint answered {response.response!r}",
        )
        # The connection goes on: a login is served.
        name = soak.pbName()
        _expectPb(await client.login(name), Request.USER_LOGIN, SUCCESSFUL, f"welcome, {name}")
    finally:
        await connection.end(soak.abrupt())


async def pbLoginThenCut(soak: Soak) -> None:
    """Log in, then a message cut at a random point, then vanish (no logout)."""
    name = soak.pbName()
    client = await ProtobufClient.open(soak.ports["protobuf"], soak.timeout)
    try:
        _expectPb(await client.login(name), Request.USER_LOGIN, SUCCESSFUL, f"welcome, {name}")
        frame = protobufFrame(messageRequest(soak.peer(name) or name, soak.text()))
        client.connection.write(frame[: soak.rng.randrange(1, len(frame))])
        await soak.pause(0.0, 2.0)
    finally:
        await client.connection.end(soak.abrupt(0.8))


async def pbDeaf(soak: Soak) -> None:
    """
    Log in, then never read again while asking for user lists and receiving
    others' messages; vanish after a few seconds.
    """
    name = soak.pbName()
    client = ProtobufClient(
        await Connection.open(soak.ports["protobuf"], soak.timeout, receiveBuffer=4096),
        soak.timeout,
    )
    try:
        _expectPb(await client.login(name), Request.USER_LOGIN, SUCCESSFUL, f"welcome, {name}")
        soak.online[name] = "protobuf"
        for _ in range(soak.rng.randint(20, 300)):
            client.connection.write(protobufFrame(listRequest()))
        await soak.pause(1.0, 5.0)
    finally:
        soak.online.pop(name, None)
        client.connection.reset()


# MSRP.


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
    receiver: MsrpClient, filename: bytes, size: int, timeout: float, started: asyncio.Event
) -> int:
    """
    The receiver of a file whose sender vanishes: the header, less than the
    whole content, then the server closes (never a complete-looking file).
    """
    await receiver.expect(lambda f: type(f) is msrp.FileHeader and f.filename == filename)
    started.set()
    got = 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            frame = await receiver.frame(max(0.01, deadline - loop.time()))
        except Closed:
            break
        except NoAnswer:
            raise SoakFailure(
                f"msrp: the receiver of an abandoned file was not closed ({got} of {size} bytes)"
            ) from None
        _expect(type(frame) is not msrp.FileEnd, "msrp: an abandoned file was ended as whole")
        _expect(type(frame) is msrp.FileChunk, f"msrp: {frame!r} inside a file's content")
        got += len(frame.data)
    _expect(got < size, f"msrp: all {size} bytes of an abandoned file arrived")
    return got


async def msrpAbandonedFile(soak: Soak) -> None:
    """
    A file between two MSRP clients abandoned midway: by its sender (an RST;
    the receiver must be cut off), by its receiver (the sender is told, and
    goes on), or sent to a receiver that never reads (then the sender gives
    up).
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
            receiving = asyncio.ensure_future(
                _receiveAbandoned(receiver, filename, size, soak.timeout, started)
            )
            try:
                await sender.send(header)
                # The header is through before the sender vanishes, so that
                # the receiver has a file to be cut off from.
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


# MSGR UQ.


def _account(soak: Soak) -> str:
    """A free MSGR account (each is used by one client at a time), or L{Skip}."""
    try:
        return soak.accounts.get_nowait()
    except asyncio.QueueEmpty:
        raise Skip() from None


async def _bound(soak: Soak, name: str, useJson: bool | None = None) -> MsgrClient:
    token = await msgrLogin(
        soak.ports["msgr-http"], name, soak.password, soak.timeout,
        soak.abrupt() if useJson is None else useJson,
    )
    client = await MsgrClient.open(soak.ports["msgr"], soak.timeout)
    try:
        code = await client.bind(name, token)
        _expect(code == 701, f"msgr: #HOLA of {name} answered {code}")
    except BaseException:
        client.connection.reset()
        raise
    return client


async def msgrSession(soak: Soak) -> None:
    """
    Log in over HTTP, bind the socket, messages (to itself, others, all), a
    meme, a file to itself, the friend list; then #DESCONECTAR or an RST.
    """
    name = _account(soak)
    rng = soak.rng
    client = None
    try:
        client = await _bound(soak, name)
        soak.online[name] = "msgr"
        token = client.token
        others: list = []
        for _ in range(rng.randint(1, 5)):
            await soak.pause(0.0, 0.4)
            op = rng.randrange(7)
            if op == 0:
                text = soak.text()
                await client.send("#MSJ", token, name, name, text)
                code = await client.answer("#MSJ", others)
                if code == 803:
                    raise Limited("#MSJ to oneself: 803")
                _expect(code == 704, f"msgr: #MSJ to oneself answered {code}")
                line = [f for f in others if f[0] == "#MSJ"]
                _expect(
                    any(f[2:5] == [name, name, escape(text)] for f in line),
                    f"msgr: the message to oneself did not come back ({line[-3:]!r})",
                )
            elif op == 1:
                peer = soak.peer(name) or "all"
                await client.send("#MSJ", token, name, peer, soak.text())
                code = await client.answer("#MSJ", others)
                _expect(code in (704, 804, 803), f"msgr: #MSJ to {peer} answered {code}")
            elif op == 2:
                content = os.urandom(rng.randint(1, 8192))
                encoded = base64.b64encode(content).decode()
                await client.send("#ARCHIVO", token, name, name, "soak.bin", RawField(encoded))
                code = await client.answer("#ARCHIVO", others)
                if code == 803:
                    raise Limited("#ARCHIVO to oneself: 803")
                _expect(code == 704, f"msgr: #ARCHIVO to oneself answered {code}")
                _expect(
                    any(f[0] == "#ARCHIVO" and f[-1] == encoded for f in others),
                    "msgr: the file to oneself did not come back",
                )
            elif op == 3:
                await client.send("#MEME", token, name, name, "gato")
                code = await client.answer("#MEME", others)
                _expect(code in (704, 803), f"msgr: #MEME answered {code}")
            elif op == 5:
                # A file to anyone: MSGR and MSRP users take it, protobuf
                # users and people on nc do not (803).
                peer = soak.peer(name)
                if peer is not None:
                    encoded = base64.b64encode(os.urandom(rng.randint(1, 20_000))).decode()
                    await client.send(
                        "#ARCHIVO", token, name, peer, "para-ti.bin", RawField(encoded)
                    )
                    code = await client.answer("#ARCHIVO", others)
                    _expect(code in (704, 803, 804), f"msgr: #ARCHIVO to {peer} answered {code}")
            elif op == 6:
                # The accounts are all friends already (set up by run.py).
                friend = rng.choice([n for n in soak.accountNames if n != name] or [name])
                await client.send("#SOLICITUD", token, name, friend)
                code = await client.answer("#SOLICITUD", others)
                _expect(
                    code in (602, 704, 803, 903),
                    f"msgr: #SOLICITUD to {friend} answered {code}",
                )
            else:
                status, body = await http(
                    soak.ports["msgr-http"], "POST", "/obtenerusuarios", soak.timeout,
                    form={"token": token},
                )
                _expect(
                    status == 200 and body.startswith(b"704"),
                    f"msgr: /obtenerusuarios answered {status} {body[:60]!r}",
                )
            others.clear()
        if soak.abrupt(0.4):
            soak.online.pop(name, None)
            client.connection.reset()
            if soak.abrupt():
                status, body = await http(
                    soak.ports["msgr-http"], "POST", "/api/logout", soak.timeout,
                    headers={"Authorization": f"Bearer {token}"},
                )
                _expect(status == 200, f"msgr: /api/logout answered {status} {body[:60]!r}")
        else:
            await client.send("#DESCONECTAR", token, name)
            code = await client.answer("#DESCONECTAR")
            _expect(code == 702, f"msgr: #DESCONECTAR answered {code}")
            soak.online.pop(name, None)
            await client.connection.readUntilClosed(soak.timeout)
    finally:
        soak.online.pop(name, None)
        if client is not None:
            client.connection.reset()
        soak.accounts.put_nowait(name)


async def msgrTakeover(soak: Soak) -> None:
    """A second socket binds the same account: the first is told and closed."""
    name = _account(soak)
    first = second = None
    try:
        first = await _bound(soak, name)
        second = await _bound(soak, name)
        await first.expect(
            lambda f: f[:4] == ["#RESPUESTA", "-", "0", "#DESCONECTAR"] and f[5:6] == ["803"]
        )
        await first.connection.readUntilClosed(soak.timeout)
        await second.send("#MSJ", second.token, name, name, "sigo aquí")
        code = await second.answer("#MSJ")
        _expect(code in (704, 803), f"msgr: #MSJ after a takeover answered {code}")
        await soak.pause(0.0, 1.0)
    finally:
        for client in (first, second):
            if client is not None:
                client.connection.reset()
        soak.accounts.put_nowait(name)


async def msgrUnbound(soak: Soak) -> None:
    """
    Before binding: garbage, a bad token, a line over the maximum, or a
    #HOLA cut short and left hanging.
    """
    client = await MsgrClient.open(soak.ports["msgr"], soak.timeout)
    connection = client.connection
    rng = soak.rng
    try:
        await _unbound(soak, client, rng.randrange(5))
    except Closed:
        # Every one of these ends with the server closing; it may do so
        # while bytes are still coming (a line over the maximum, the login
        # timeout), which can reset the connection before its answer is read.
        pass
    finally:
        await connection.end(soak.abrupt())


async def _unbound(soak: Soak, client: MsgrClient, kind: int) -> None:
    connection = client.connection
    if kind == 0:
        await connection.send(b"x" + soak.junk(0, 2048).replace(b"\n", b"") + b"\n", soak.timeout)
    elif kind == 1:
        token = base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=")
        await client.send("#HOLA", token, "m-00")
    elif kind == 2:
        # Over --msgr-max-line (2 MiB by default): refused, then closed.
        await connection.send(b"#HOLA||" + b"a" * (2 * 1024 * 1024 + 100) + b"\n", soak.timeout)
    elif kind == 3:
        connection.write(b"#HOLA||" + soak.junk(0, 40).replace(b"\n", b""))
        await soak.pause(0.2, 3.0)
        return
    else:
        await connection.send(b"\xff\xfe\n", soak.timeout)
    fields = await client.expect(lambda f: f[0] == "#RESPUESTA")
    _expect(
        fields[5:6] in (["901"], ["903"], ["803"]),
        f"msgr: an unbound socket's bad first line answered {fields!r}",
    )
    await connection.readUntilClosed(soak.timeout)


async def msgrBoundHostile(soak: Soak) -> None:
    """
    Bound: garbage lines, a line cut short left hanging, or a file line cut
    midway; then vanish.
    """
    name = _account(soak)
    rng = soak.rng
    client = None
    try:
        client = await _bound(soak, name)
        token = client.token
        kind = rng.randrange(3)
        if kind == 0:
            for _ in range(rng.randint(1, 5)):
                await client.connection.send(
                    b"#" + soak.junk(1, 512).replace(b"\n", b"") + b"\n", soak.timeout
                )
                await client.expect(lambda f: f[0] == "#RESPUESTA")
            # Still serving.
            await client.send("#MSJ", token, name, name, "después de la basura")
            code = await client.answer("#MSJ")
            _expect(code in (704, 803), f"msgr: #MSJ after garbage answered {code}")
        elif kind == 1:
            line = f"#MSJ||{token}||{name}||{name}||hola\n".encode()
            client.connection.write(line[: rng.randrange(1, len(line) - 1)])
            await soak.pause(0.2, 2.0)
        else:
            encoded = base64.b64encode(os.urandom(rng.randint(1000, 700_000)))
            line = f"#ARCHIVO||{token}||{name}||{name}||x.bin||".encode() + encoded
            client.connection.write(line[: rng.randrange(1, len(line))])
            await soak.pause(0.0, 1.0)
    finally:
        if client is not None:
            client.connection.reset()
        soak.accounts.put_nowait(name)


async def msgrBinding(soak: Soak) -> None:
    """
    The window while #HOLA waits for the database: vanish inside it, send
    lines behind it (kept and answered in order once bound), or bind the
    same account from two sockets at once (one of them wins).
    """
    name = _account(soak)
    rng = soak.rng
    port = soak.ports["msgr"]
    clients: list[MsgrClient] = []
    try:
        token = await msgrLogin(soak.ports["msgr-http"], name, soak.password, soak.timeout, False)
        kind = rng.randrange(3)
        if kind == 0:
            client = await MsgrClient.open(port, soak.timeout)
            clients.append(client)
            client.connection.write(f"#HOLA||{token}||{name}\n".encode())
            await soak.pause(0.0, 0.05)
            client.connection.reset()
        elif kind == 1:
            client = await MsgrClient.open(port, soak.timeout)
            clients.append(client)
            client.connection.write(
                f"#HOLA||{token}||{name}\n#MSJ||{token}||{name}||{name}||detrás\n"
                f"#DESCONECTAR||{token}||{name}\n".encode()
            )
            others: list = []
            codes = [await client.answer(c, others) for c in ("#HOLA", "#MSJ", "#DESCONECTAR")]
            _expect(
                codes[0] == 701 and codes[1] in (704, 803) and codes[2] == 702,
                f"msgr: #HOLA, #MSJ, #DESCONECTAR in one write answered {codes}",
            )
            await client.connection.readUntilClosed(soak.timeout)
        else:
            second = await msgrLogin(
                soak.ports["msgr-http"], name, soak.password, soak.timeout, True
            )
            for t in (token, second):
                client = await MsgrClient.open(port, soak.timeout)
                clients.append(client)
                client.user, client.token = name, t
            for client in clients:
                client.connection.write(f"#HOLA||{client.token}||{name}\n".encode())
            codes = [await client.answer("#HOLA") for client in clients]
            # Both may bind (the later takes over), or the later may be
            # refused while the first is still binding; never neither.
            _expect(701 in codes and set(codes) <= {701, 803}, f"msgr: two binds answered {codes}")
            await asyncio.sleep(0.2)
            winners = []
            for client in clients:
                try:
                    await client.send("#MSJ", client.token, name, name, "¿quién?")
                    if await client.answer("#MSJ") == 704:
                        winners.append(client)
                except (Closed, NoAnswer):
                    pass
            _expect(len(winners) == 1, f"msgr: {len(winners)} of two sockets of {name} are bound")
    finally:
        for client in clients:
            client.connection.reset()
        soak.accounts.put_nowait(name)


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


async def msgrDeaf(soak: Soak) -> None:
    """An MSGR socket that binds and never reads again, while others write to it."""
    name = _account(soak)
    client = None
    try:
        token = await msgrLogin(soak.ports["msgr-http"], name, soak.password, soak.timeout, False)
        client = MsgrClient(
            await Connection.open(soak.ports["msgr"], soak.timeout, receiveBuffer=4096),
            soak.timeout,
        )
        code = await client.bind(name, token)
        _expect(code == 701, f"msgr: #HOLA of {name} answered {code}")
        soak.online[name] = "msgr"
        await soak.pause(1.0, 5.0)
    finally:
        soak.online.pop(name, None)
        if client is not None:
            client.connection.reset()
        soak.accounts.put_nowait(name)


# MSGR HTTP.


async def httpHostile(soak: Soak) -> None:
    """
    Garbage, a request cut short and left hanging, a huge body abandoned
    midway, a login whose client is gone before the answer; and the
    documented errors (bad JSON, no token, unknown path, wrong method, body
    too large, failed login).
    """
    port = soak.ports["msgr-http"]
    rng = soak.rng
    kind = rng.randrange(10)
    if kind == 9:
        # A whole login, then gone before the password is checked.
        connection = await Connection.open(port, soak.timeout)
        body = f"usr={rng.choice(soak.accountNames)}&pass={soak.password}".encode()
        connection.write(
            b"POST /status HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode() + body
        )
        await soak.pause(0.0, 0.05)
        connection.reset()
        return
    if kind <= 2:
        connection = await Connection.open(port, soak.timeout)
        try:
            if kind == 0:
                connection.write(soak.junk(1, 4096))
                await connection.drainFor(rng.uniform(0.0, 1.0))
            elif kind == 1:
                request = (
                    b"POST /status HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    b"Content-Type: application/x-www-form-urlencoded\r\n"
                    b"Content-Length: 20\r\n\r\nusr=m-00&pass=xx"
                )
                connection.write(request[: rng.randrange(1, len(request))])
                await soak.pause(0.2, 3.0)
            else:
                connection.write(
                    b"POST /api/login HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    b"Content-Type: application/json\r\n"
                    b"Content-Length: 100000000\r\n\r\n"
                )
                sent, goal = 0, rng.randint(1, 600_000)
                try:
                    while sent < goal:
                        await connection.send(b"{" * min(65536, goal - sent), 2.0)
                        sent += 65536
                except NoAnswer:
                    pass
        except Closed:
            pass  # the server may close such a client, answered or not
        finally:
            await connection.end(soak.abrupt(0.7))
        return
    if kind == 3:
        status, body = await http(port, "POST", "/api/login", soak.timeout, body=b"{not json",
                                  headers={"Content-Type": "application/json"})
        expected = (400, b'"code": 901')
    elif kind == 4:
        status, body = await http(port, "POST", "/api/friends", soak.timeout, document={})
        expected = (401, b'"code": 901')
    elif kind == 5:
        status, body = await http(port, "GET", f"/nada{rng.randrange(100)}", soak.timeout)
        expected = (404, b"404")
    elif kind == 6:
        status, body = await http(port, "PUT", "/status", soak.timeout, body=b"")
        expected = (405, b"901")
    elif kind == 7:
        status, body = await http(port, "POST", "/usuariocrear", soak.timeout,
                                  form={"usr": "x", "pass": "y" * 70_000})
        expected = (400, b"902")
    else:
        status, body = await http(port, "POST", "/status", soak.timeout,
                                  form={"usr": rng.choice(GHOSTS), "pass": "wrong"})
        _expect(status == 200 and body in (b"801", b"802"),
                f"msgr: a failed login answered {status} {body[:60]!r}")
        return
    _expect(
        status == expected[0] and expected[1] in body,
        f"http: expected {expected}, got {status} {body[:80]!r}",
    )


# Residents: clients that stay online through the whole soak.


class Resident:
    """
    A client that logs in before the soak and stays, reading everything,
    while the soak's clients message it, send it files and vanish. What it
    still holds at the end shows state that long-lived sessions keep for
    clients long gone.
    """

    def __init__(self, name: str, connection: Connection, reader) -> None:
        self.name = name
        self.connection = connection
        self.failure: str | None = None
        self.task = asyncio.ensure_future(self._read(reader))

    async def _read(self, reader) -> None:
        try:
            while True:
                try:
                    await reader()
                except NoAnswer:
                    continue
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - reported, not raised
            if not limitSeen([self.connection]):
                self.failure = f"{type(e).__name__}: {e}"

    async def leave(self) -> str | None:
        """Log out (close); why it could not stay, if it could not."""
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.connection.close()
        return self.failure


async def startResidents(soak: Soak, msgrAccount: str) -> list[Resident]:
    """
    Two protobuf clients, two MSRP clients (one ACKs every file it receives,
    as the seed's clients should; the other never does, as many do not) and
    one MSGR client.
    """
    residents = []
    for name in ("pb-r1", "pb-r2"):
        client = await ProtobufClient.open(soak.ports["protobuf"], soak.timeout)
        _expectPb(await client.login(name), Request.USER_LOGIN, SUCCESSFUL, f"welcome, {name}")

        async def readProtobuf(client=client):
            await client._readSome(1.0)
            client.responses.clear()
            client.deliveries.clear()

        residents.append(Resident(name, client.connection, readProtobuf))
    for name, acks in (("rs!1", True), ("rs!2", False)):
        client = await _msrpLogin(soak, name)

        async def readMsrp(client=client, acks=acks, files=[]):
            frame = await client.frame(1.0)
            if type(frame) is msrp.FileHeader:
                files.append(frame.filename)
            elif type(frame) is msrp.FileEnd and acks and files:
                await client.send(msrp.encodeAck(files.pop()))

        residents.append(Resident(name, client.connection, readMsrp))
    client = await _bound(soak, msgrAccount)

    async def readMsgr(client=client):
        await client.line(1.0)
        client.lines.clear()

    residents.append(Resident(msgrAccount, client.connection, readMsgr))
    for resident in residents:
        soak.online[resident.name] = "resident"
    return residents


#: (name, behaviour, weight). Well-behaved sessions are about 40% of the runs.
BEHAVIOURS = [
    ("protobuf session", pbSession, 12),
    ("protobuf partial frame", pbPartial, 5),
    ("protobuf garbage", pbGarbage, 5),
    ("protobuf oversized", pbOversized, 3),
    ("protobuf login, cut, vanish", pbLoginThenCut, 5),
    ("protobuf deaf", pbDeaf, 2),
    ("protobuf half-close", pbHalfClose, 3),
    ("msrp session", msrpSession, 10),
    ("msrp person (nc)", msrpPerson, 3),
    ("msrp half-close (nc -q 1)", msrpHalfClose, 3),
    ("msrp partial", msrpPartial, 5),
    ("msrp garbage", msrpGarbage, 5),
    ("msrp oversized", msrpOversized, 2),
    ("msrp login, vanish", msrpLoginVanish, 4),
    ("msrp abandoned file", msrpAbandonedFile, 3),
    ("msrp deaf", msrpDeaf, 2),
    ("msgr session", msgrSession, 8),
    ("msgr takeover", msgrTakeover, 1),
    ("msgr unbound hostile", msgrUnbound, 4),
    ("msgr bound hostile", msgrBoundHostile, 3),
    ("msgr binding races", msgrBinding, 2),
    ("msgr deaf", msgrDeaf, 1),
    ("http hostile", httpHostile, 6),
]


def pick(rng: random.Random):
    names, behaviours, weights = zip(*BEHAVIOURS)
    index = rng.choices(range(len(BEHAVIOURS)), weights)[0]
    return names[index], behaviours[index]
