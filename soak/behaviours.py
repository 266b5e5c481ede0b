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
import re
from dataclasses import dataclass, field

from chatd.msgr.codec import RawField, escape
from chatd.msrp import codec as msrp
from chatd.msrp.protocol import FILL_MAX
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

# Base 33: no 'l', 'm' or 'o', which look like '1', 'rn' and '0' (chatd
# refuses a name that looks like one online).
_BASE33 = "0123456789abcdefghijknpqrstuvwxyz"

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
        # The server's --file-idle-timeout; None when it has none (an older
        # chatd), and the behaviours that need it are skipped.
        self.fileIdleTimeout: float | None = None
        self._pbCounter = 0
        # MSRP names: 4 base-33 characters from a counter, never reused in a
        # run. Every other name has a character outside base 33 (protobuf
        # "pb-N", MSGR accounts "m-NN", the check clients a '#'), so no two
        # kinds of client ever want the same name, or look-alike ones.
        self._msrpCounter = self.rng.randrange(33**3)

    # Names.

    def pbName(self) -> str:
        self._pbCounter += 1
        return f"pb-{self._pbCounter}"

    def msrpName(self) -> str:
        self._msrpCounter += 1
        n, out = self._msrpCounter % 33**4, []
        for _ in range(4):
            n, digit = divmod(n, 33)
            out.append(_BASE33[digit])
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


# Cyrillic letters that look like Latin ones (UTS #39 confusables).
_CYRILLIC = {"a": "\u0430", "c": "\u0441", "e": "\u0435", "o": "\u043e", "p": "\u0440", "x": "\u0445"}


def _lookalike(name: str, rng: random.Random) -> str:
    """C{name} with one character in another width or script."""
    spots = [i for i, ch in enumerate(name) if ch in _CYRILLIC]
    if spots and rng.random() < 0.5:
        i = rng.choice(spots)
        return name[:i] + _CYRILLIC[name[i]] + name[i + 1 :]
    spots = [i for i, ch in enumerate(name) if "!" <= ch <= "~"]
    i = rng.choice(spots)
    return name[:i] + chr(ord(name[i]) + 0xFEE0) + name[i + 1 :]  # full width


async def pbLookalike(soak: Soak) -> None:
    """
    Log in as a look-alike of someone online (a character in full width or
    in Cyrillic), or as their name with an invisible suffix: refused, as in
    use (or as an account's) or as breaking the name rule.
    """
    target = soak.peer("")
    if target is None:
        raise Skip()
    rng = soak.rng
    invisible = rng.random() < 0.3
    name = target + rng.choice("\u034f\u3164\u2800") if invisible else _lookalike(target, rng)
    client = await ProtobufClient.open(soak.ports["protobuf"], soak.timeout)
    try:
        response = await client.login(name)
        text = response.response
        if response.code == FAILED and isLimit(text):
            raise Limited(text)
        if invisible:
            _expect(
                response.code == FAILED and "which names may not have (RFC 8265)" in text,
                f"protobuf: {name!a} answered {text!r}",
            )
        else:
            # Let in only when the target left in the meantime.
            _expect(
                (response.code == FAILED and text.endswith(
                    ("is already online", "who is online", "belongs to a registered account")
                ))
                or (response.code == SUCCESSFUL and target not in soak.online),
                f"protobuf: a look-alike of {target!a}, {name!a}, answered {text!r}",
            )
    finally:
        await client.connection.end(soak.abrupt())


async def pbSlowReadersVanish(soak: Soak) -> None:
    """
    Slow readers that disconnect: 2 to 4 clients log in and never read
    again, one writer feeds them 10 to 30 messages of 16 KiB (as fast as
    the rate lets it), more than their socket buffers take, so the server
    holds bytes for them; then they vanish (RST) and the writer leaves. What the server held for them must go with them,
    without waiting for the garbage collector (check (h)).
    """
    rng = soak.rng
    writerName = soak.pbName()
    writer = await ProtobufClient.open(soak.ports["protobuf"], soak.timeout)
    readers: list[tuple[str, ProtobufClient]] = []
    try:
        _expectPb(
            await writer.login(writerName), Request.USER_LOGIN, SUCCESSFUL,
            f"welcome, {writerName}",
        )
        for _ in range(rng.randint(2, 4)):
            name = soak.pbName()
            reader = ProtobufClient(
                await Connection.open(soak.ports["protobuf"], soak.timeout, receiveBuffer=4096),
                soak.timeout,
            )
            readers.append((name, reader))
            _expectPb(await reader.login(name), Request.USER_LOGIN, SUCCESSFUL, f"welcome, {name}")
        # The readers are not in soak.online: nobody else counts on them.
        text = "s" * (16 * 1024)
        for _ in range(rng.randint(10, 30)):
            name = rng.choice(readers)[0]
            response = await writer.request(messageRequest(name, text))
            if response.code == SUCCESSFUL:
                _expectPb(response, Request.SEND_MESSAGE, SUCCESSFUL, f"delivered to {name}")
            elif isLimit(response.response):
                await soak.pause(0.05, 0.1)  # the rate: slow down
            else:
                # Past --max-sendq the reader is cut off: "not delivered".
                _expect(
                    response.response.startswith("not delivered:"),
                    f"protobuf: a message to a slow reader answered {response.response!r}",
                )
    finally:
        for _, reader in readers:
            reader.connection.reset()
        await writer.connection.end(soak.abrupt(0.5))


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


# MSGR UQ.


def _account(soak: Soak) -> str:
    """A free MSGR account (each is used by one client at a time), or L{Skip}."""
    try:
        return soak.accounts.get_nowait()
    except asyncio.QueueEmpty:
        raise Skip() from None


async def _msgrLogin(soak: Soak, name: str, useJson: bool) -> str:
    """
    L{msgrLogin}, with 802 as L{Limited}: a soak account is used by one
    client at a time, but an abandoned login of it (L{httpHostile}) may
    still be checked, and one check of a name runs at a time (the others
    are answered 802, docs/msgr.md "Lockout").
    """
    try:
        return await msgrLogin(soak.ports["msgr-http"], name, soak.password, soak.timeout, useJson)
    except SoakFailure as e:
        if re.search(r"answered 200 b'(802|\{\"code\": 802\})'", str(e)):
            raise Limited(str(e)) from None
        raise


async def _bound(soak: Soak, name: str, useJson: bool | None = None) -> MsgrClient:
    token = await _msgrLogin(soak, name, soak.abrupt() if useJson is None else useJson)
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
        token = await _msgrLogin(soak, name, False)
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
            second = await _msgrLogin(soak, name, True)
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
        token = await _msgrLogin(soak, name, False)
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
        _expect(status == 200 and _code(body) in (b"801", b"802"),
                f"msgr: a failed login answered {status} {body[:60]!r}")
        return
    _expect(
        status == expected[0] and expected[1] in body,
        f"http: expected {expected}, got {status} {body[:80]!r}",
    )


def _code(body: bytes) -> bytes:
    """The MSGR code of a form answer: what comes before its reason, if any."""
    return body.split(b"||", 1)[0]


async def httpConcurrentGuessing(soak: Soak) -> None:
    """
    10 to 30 wrong logins of one fresh name sent at once (issue 11): each is
    answered 801 or 802, and at most 5 (--msgr-lockout-failures) are
    checked, however many arrive together.
    """
    port = soak.ports["msgr-http"]
    name = f"gx-{soak.rng.randrange(36**6)}"
    guesses = [
        http(port, "POST", "/status", soak.timeout, form={"usr": name, "pass": f"mala{i}"})
        for i in range(soak.rng.randint(10, 30))
    ]
    answers = await asyncio.gather(*guesses)
    bodies = [_code(body) for status, body in answers if status == 200]
    _expect(
        len(bodies) == len(answers) and set(bodies) <= {b"801", b"802"},
        f"msgr: concurrent guesses answered {sorted(set(answers))!r}",
    )
    _expect(
        bodies.count(b"801") <= 5,
        f"msgr: {bodies.count(b'801')} of {len(bodies)} concurrent guesses were checked",
    )


async def httpMassRegistration(soak: Soak) -> None:
    """
    A burst of 5 to 20 registrations of fresh names from one address (issue
    11), while an existing account logs in: each registration is answered
    702 or 803 (--msgr-register-per-ip: every soak client is 127.0.0.1, so
    the limit is soon reached), and the login is answered 701.
    """
    port = soak.ports["msgr-http"]
    name = _account(soak)
    try:
        squats = [
            http(
                port, "POST", "/usuariocrear", soak.timeout,
                form={"usr": f"sq-{soak.rng.randrange(36**6)}", "pass": "x"},
            )
            for _ in range(soak.rng.randint(5, 20))
        ]
        token, *answers = await asyncio.gather(_msgrLogin(soak, name, False), *squats)
        _expect(
            all(status == 200 and _code(body) in (b"702", b"803") for status, body in answers),
            f"msgr: a burst of registrations answered {sorted(set(answers))!r}",
        )
        status, body = await http(
            port, "POST", "/api/logout", soak.timeout,
            headers={"Authorization": f"Bearer {token}"},
        )
        _expect(status == 200, f"msgr: /api/logout answered {status} {body[:60]!r}")
    finally:
        soak.accounts.put_nowait(name)


async def httpSlowloris(soak: Soak) -> None:
    """
    A login request trickled in one byte every one to two seconds
    (slowloris): the server answers 408 with the code 803 and closes at
    --http-request-timeout (10 s), however long the bytes keep coming.
    """
    connection = await Connection.open(soak.ports["msgr-http"], soak.timeout)
    request = (
        b"POST /status HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\n"
        b"Content-Length: 20\r\n\r\nusr=m-00&pass=xxxxxx"
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        for i in range(len(request)):
            await connection.send(request[i : i + 1], soak.timeout)
            if await connection.drainFor(soak.rng.uniform(1.0, 2.0)):
                break
            _expect(
                loop.time() - started < soak.timeout,
                f"http: a request trickled in for {soak.timeout:g}s was not cut off",
            )
        await connection.readUntilClosed(soak.timeout)
    except Closed:
        pass  # closed while a byte was on its way: the answer came before
    finally:
        await connection.end(True)
    answer = bytes(connection.head)
    _expect(
        answer.startswith(b"HTTP/1.1 408 ") and answer.endswith(b"\r\n\r\n803"),
        f"http: a trickled request answered {answer[:80]!r}",
    )


#: The line of L{msgrBadLineFlood}: three bytes, an unknown command.
FLOOD_LINE = b"#Q\n"
#: How many of them one flood sends.
FLOOD_LINES = 2000
#: Floods sent so far, for L{floodLogProblem}.
floods = 0


async def msgrBadLineFlood(soak: Soak) -> None:
    """
    Bound: thousands of bad 3-byte lines in one write. Every one is answered
    903 in order and the socket still serves; the server logs the first few
    only (L{floodLogProblem}).
    """
    global floods
    name = _account(soak)
    client = None
    try:
        client = await _bound(soak, name)
        floods += 1
        await client.connection.send(FLOOD_LINE * FLOOD_LINES, soak.timeout)
        for _ in range(FLOOD_LINES):
            fields = await client.expect(lambda f: f[0] == "#RESPUESTA")
            _expect(
                fields[3:] == ["#Q", name, "903"],
                f"msgr: a bad line of a flood answered {fields!r}",
            )
        await client.send("#MSJ", client.token, name, name, "tras la inundación")
        code = await client.answer("#MSJ")
        _expect(code in (704, 803), f"msgr: #MSJ after a flood answered {code}")
    finally:
        if client is not None:
            await client.connection.end(soak.abrupt())
        soak.accounts.put_nowait(name)


def floodLogProblem(log: str) -> str | None:
    """
    What is wrong with the log lines of the bad-line floods, if anything:
    one connection's error lines are limited (10 a minute, then a summary),
    so each flood may leave a few, never one a line.
    """
    lines = log.count("MSGR #Q from ")
    bound = 2 * 10 * floods  # two windows at most: a flood takes seconds
    if lines > bound:
        return (
            f"{floods} floods of {FLOOD_LINES} bad lines left {lines} log lines"
            f" (at most {bound} expected)"
        )
    return None


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
    ("protobuf look-alike", pbLookalike, 2),
    ("protobuf slow readers vanish", pbSlowReadersVanish, 1),
    ("protobuf half-close", pbHalfClose, 3),
    ("msrp session", msrpSession, 10),
    ("msrp person (nc)", msrpPerson, 3),
    ("msrp slot of a long name", msrpSlot, 2),
    ("msrp person waits for the prompt", msrpPersonWaits, 1),
    ("msrp half-close (nc -q 1)", msrpHalfClose, 3),
    ("msrp partial", msrpPartial, 5),
    ("msrp garbage", msrpGarbage, 5),
    ("msrp oversized", msrpOversized, 2),
    ("msrp login, vanish", msrpLoginVanish, 4),
    ("msrp abandoned file", msrpAbandonedFile, 3),
    ("msrp stalled file sender", msrpStalledFile, 1),
    ("msrp large file cut short", msrpLargeFileCut, 1),
    ("msrp deaf", msrpDeaf, 2),
    ("msgr session", msgrSession, 8),
    ("msgr takeover", msgrTakeover, 1),
    ("msgr unbound hostile", msgrUnbound, 4),
    ("msgr bound hostile", msgrBoundHostile, 3),
    ("msgr binding races", msgrBinding, 2),
    ("msgr deaf", msgrDeaf, 1),
    ("http hostile", httpHostile, 6),
    ("http concurrent guessing", httpConcurrentGuessing, 1),
    ("http mass registration", httpMassRegistration, 1),
    ("http slowloris", httpSlowloris, 1),
    ("msgr bad-line flood", msgrBadLineFlood, 1),
]


def pick(rng: random.Random):
    names, behaviours, weights = zip(*BEHAVIOURS)
    index = rng.choices(range(len(BEHAVIOURS)), weights)[0]
    return names[index], behaviours[index]
