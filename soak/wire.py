"""
Clients of every chatd protocol for the soak, on asyncio streams, built on
the project's own codecs (chatd.protobuf.framing and chat_pb2,
chatd.msrp.codec, chatd.msgr.codec) so that what they send is what the docs
describe, byte for byte.

Every wait has a time limit: a server that does not answer raises
L{NoAnswer}, one that closes raises L{Closed}.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import socket
import struct
from collections import deque
from urllib.parse import urlencode

from google.protobuf.message import DecodeError

from chatd.msgr import codec as msgr_codec
from chatd.msrp import codec as msrp_codec
from chatd.protobuf import chat_pb2
from chatd.protobuf.framing import (
    DelimitedFramer,
    FramingError,
    RawResponseFramer,
    encodeDelimited,
)

HOST = "127.0.0.1"

Request = chat_pb2.ClientRequest
Response = chat_pb2.ServerResponse


class SoakFailure(Exception):
    """The server did something the docs say it does not."""


class NoAnswer(SoakFailure):
    """Nothing came from the server within the time limit."""


class Closed(Exception):
    """The server closed the connection."""


#: Bytes by which the server says a limit of its own refused or ended a
#: connection (docs/operations.md): a connection count, the login timeout,
#: the queue of a client that does not read.
LIMIT_MARKS = (
    b"connection refused: ",
    b"no login within",
    b"you are not reading",
    "Demasiadas conexiones".encode(),
    "demasiadas conexiones".encode(),
    "No se recibió el nombre a tiempo.".encode(),
    b"#RESPUESTA||-||0||#HOLA||-||803",
    b"#RESPUESTA||-||0||#HOLA||-||901",
    b"#RESPUESTA||-||0||#DESCONECTAR||",
    b"HTTP/1.1 503 ",
)

#: The connections of the behaviour under way (each runs in its own task).
behaviourConnections: contextvars.ContextVar = contextvars.ContextVar(
    "behaviourConnections", default=None
)


def limitSeen(connections) -> bool:
    """Whether the server told one of C{connections} that a limit ended it."""
    return any(
        mark in connection.head or mark in connection.tail
        for connection in connections
        for mark in LIMIT_MARKS
    )


class Connection:
    """
    One TCP connection to the server. The first and the last bytes received
    are kept (L{head}, L{tail}) to tell a limit's refusal from a failure.
    """

    #: Every connection not yet closed, so that none outlives the soak.
    live: set = set()
    #: How many were opened, and the most open at once.
    opened = 0
    peak = 0

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer
        self.head = bytearray()
        self.tail = b""
        mine = behaviourConnections.get()
        if mine is not None:
            mine.append(self)
        Connection.opened += 1
        Connection.live.add(self)
        Connection.peak = max(Connection.peak, len(Connection.live))

    @classmethod
    def resetAll(cls) -> None:
        for connection in list(cls.live):
            connection.reset()

    @classmethod
    async def open(cls, port: int, timeout: float, receiveBuffer: int = 0) -> "Connection":
        if receiveBuffer:
            # A small receive buffer, set before connecting so that the
            # window is small from the start: a client that does not read
            # fills up fast.
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receiveBuffer)
            sock.setblocking(False)
            try:
                await asyncio.wait_for(
                    asyncio.get_running_loop().sock_connect(sock, (HOST, port)), timeout
                )
            except BaseException:
                sock.close()
                raise
            opening = asyncio.open_connection(sock=sock, limit=receiveBuffer)
        else:
            opening = asyncio.open_connection(HOST, port)
        try:
            reader, writer = await asyncio.wait_for(opening, timeout)
        except asyncio.TimeoutError:
            raise NoAnswer(f"connect to port {port} took more than {timeout:g}s") from None
        return cls(reader, writer)

    async def send(self, data: bytes, timeout: float) -> None:
        """Write C{data}; L{NoAnswer} if the server does not take it in time."""
        if self.writer.transport.is_closing():
            raise Closed("the connection is closed")
        self.writer.write(data)
        try:
            await asyncio.wait_for(self.writer.drain(), timeout)
        except asyncio.TimeoutError:
            raise NoAnswer(f"the server did not read {len(data)} bytes in {timeout:g}s") from None
        except (ConnectionError, OSError) as e:
            await self._salvage()
            raise Closed(str(e)) from None

    async def _salvage(self) -> None:
        """Read what the server said before it closed (why, perhaps)."""
        try:
            while True:
                await self.read(0.2)
        except (NoAnswer, Closed):
            pass

    def write(self, data: bytes) -> None:
        """Write without waiting (for clients that do not care)."""
        if not self.writer.transport.is_closing():
            self.writer.write(data)

    async def read(self, timeout: float) -> bytes:
        """Some bytes; L{Closed} at the end of the stream, L{NoAnswer} after C{timeout}."""
        try:
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
        except asyncio.TimeoutError:
            raise NoAnswer(f"nothing came in {timeout:g}s") from None
        except (ConnectionError, OSError) as e:
            raise Closed(str(e)) from None
        if not data:
            raise Closed("end of stream")
        if len(self.head) < 512:
            self.head += data[: 512 - len(self.head)]
        self.tail = (self.tail + data[-512:])[-512:]
        return data

    async def readUntilClosed(self, timeout: float, keep: int = 1 << 20) -> bytes:
        """Everything until the server closes (at most C{keep} bytes kept)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        received = bytearray()
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise NoAnswer(f"the server did not close within {timeout:g}s")
            try:
                data = await self.read(remaining)
            except Closed:
                return bytes(received)
            if len(received) < keep:
                received += data[: keep - len(received)]

    async def drainFor(self, seconds: float) -> bytes:
        """Read whatever comes for C{seconds}; stops early if the server closes."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        received = bytearray()
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return bytes(received)
            try:
                received += await self.read(remaining)
            except (NoAnswer, Closed):
                return bytes(received)

    def reset(self) -> None:
        """Close abruptly: SO_LINGER 0, so the server gets an RST, not a FIN."""
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        self.writer.transport.abort()
        Connection.live.discard(self)

    async def close(self) -> None:
        """Close politely (FIN), without waiting long."""
        Connection.live.discard(self)
        self.writer.close()
        try:
            await asyncio.wait_for(self.writer.wait_closed(), 2)
        except (asyncio.TimeoutError, ConnectionError, OSError):
            self.writer.transport.abort()

    async def end(self, abrupt: bool) -> None:
        if abrupt:
            self.reset()
        else:
            await self.close()


# The protobuf chat (docs/protobuf.md).

#: The server's --protobuf-framing: "raw" (its default) or "delimited".
protobufFraming = "raw"


def protobufFrame(payload: bytes) -> bytes:
    """
    One request on the wire: raw, ended with C{0x00} so that the server
    never waits to see whether it grows; or with its varint length first.
    """
    if protobufFraming == "delimited":
        return encodeDelimited(payload)
    return payload + b"\x00"



def loginRequest(name: str) -> bytes:
    return Request(
        option=Request.USER_LOGIN,
        newuser=chat_pb2.UserRegistration(username=name, ip="127.0.0.1"),
    ).SerializeToString()


def listRequest() -> bytes:
    return Request(option=Request.CONNECTED_USERS).SerializeToString()


def infoRequest(name: str) -> bytes:
    return Request(
        option=Request.USER_INFORMATION, user=chat_pb2.UserRequest(user=name)
    ).SerializeToString()


def statusRequest(name: str, status: str) -> bytes:
    return Request(
        option=Request.STATUS_CHANGE,
        status=chat_pb2.ChangeStatus(username=name, status=status),
    ).SerializeToString()


def messageRequest(receiver: str, text: str) -> bytes:
    return Request(
        option=Request.SEND_MESSAGE,
        messg=chat_pb2.Message(receiver=receiver, text=text),
    ).SerializeToString()


class ProtobufClient:
    """
    A client of the protobuf chat in the server's framing (L{protobufFrame});
    raw responses are split with L{RawResponseFramer}. Deliveries (responses
    with C{messg}) are kept apart.
    """

    def __init__(self, connection: Connection, timeout: float):
        self.connection = connection
        self.timeout = timeout
        self.framer = (
            DelimitedFramer(1 << 30) if protobufFraming == "delimited" else RawResponseFramer()
        )
        self.responses: deque = deque()
        self.deliveries: list = []
        self.closed = False

    @classmethod
    async def open(cls, port: int, timeout: float) -> "ProtobufClient":
        return cls(await Connection.open(port, timeout), timeout)

    def _take(self, frame: bytes) -> None:
        try:
            response = Response.FromString(frame)
        except DecodeError:
            raise SoakFailure(f"protobuf: a response that does not parse: {frame[:60]!r}") from None
        if response.HasField("messg"):
            self.deliveries.append(response)
        else:
            self.responses.append(response)

    async def _readSome(self, timeout: float) -> None:
        if self.closed:
            raise Closed("end of stream")
        try:
            data = await self.connection.read(timeout)
        except (NoAnswer, Closed) as e:
            # The end of the stream, like a pause, completes what is under way.
            if isinstance(e, Closed):
                self.closed = True
            frame = self.framer.flush()
            if frame is None:
                raise
            self._take(frame)
            return
        try:
            for frame in self.framer.feed(data):
                self._take(frame)
        except FramingError as e:
            raise SoakFailure(f"protobuf: the server's bytes do not frame: {e}") from None

    async def response(self, timeout: float | None = None) -> Response:
        """The next response that is not a delivery."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (timeout or self.timeout)
        while not self.responses:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise NoAnswer("protobuf: no response")
            # A response that might still grow is complete after a short
            # silence, as the server's own raw framer decides.
            await self._readSome(min(remaining, 0.1) if self.framer.waiting else remaining)
        return self.responses.popleft()

    async def request(self, payload: bytes, terminator: bool = True) -> Response:
        """
        Send a request and wait for its response; C{terminator=False} sends
        a raw request without its C{0x00}, for the server's short wait.
        """
        if terminator or protobufFraming == "delimited":
            payload = protobufFrame(payload)
        await self.connection.send(payload, self.timeout)
        return await self.response()

    async def delivery(self, predicate, timeout: float | None = None):
        """The first delivery for which C{predicate} is true."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (timeout or self.timeout)
        while True:
            for d in self.deliveries:
                if predicate(d):
                    self.deliveries.remove(d)
                    return d
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise NoAnswer("protobuf: the delivery did not come")
            await self._readSome(min(remaining, 0.1) if self.framer.waiting else remaining)

    async def login(self, name: str) -> Response:
        return await self.request(loginRequest(name))

    async def users(self) -> list[str]:
        response = await self.request(listRequest())
        if response.code != Response.SUCCESSFUL_OPERATION:
            raise SoakFailure(f"protobuf: CONNECTED_USERS refused: {response.response!r}")
        return [u.username for u in response.users.users]


# MSRP (docs/msrp.md), binary clients.


class MsrpClient:
    """A binary MSRP client: frames from the server decoded with the project's codec."""

    def __init__(self, connection: Connection, timeout: float):
        self.connection = connection
        self.timeout = timeout
        self.decoder = msrp_codec.MsrpFrameDecoder(fromServer=True)
        self.frames: deque = deque()

    @classmethod
    async def open(cls, port: int, timeout: float, receiveBuffer: int = 0) -> "MsrpClient":
        return cls(await Connection.open(port, timeout, receiveBuffer), timeout)

    async def frame(self, timeout: float | None = None):
        """The next frame (or piece of file content) from the server."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (timeout or self.timeout)
        while not self.frames:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise NoAnswer("msrp: no frame")
            data = await self.connection.read(remaining)
            try:
                self.frames.extend(self.decoder.feed(data))
            except msrp_codec.DecodeError as e:
                raise SoakFailure(f"msrp: the server's bytes do not decode: {e}") from None
        return self.frames.popleft()

    async def expect(self, predicate, timeout: float | None = None, others=None):
        """
        The first frame for which C{predicate} is true; the frames before it
        go to C{others} (a list) or are dropped.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (timeout or self.timeout)
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise NoAnswer("msrp: the expected frame did not come")
            frame = await self.frame(remaining)
            if predicate(frame):
                return frame
            if others is not None:
                others.append(frame)

    async def send(self, data: bytes) -> None:
        await self.connection.send(data, self.timeout)

    async def users(self) -> list[str]:
        """The names in the answer to LIST."""
        await self.send(msrp_codec.encodeListRequest())
        frame = await self.expect(lambda f: type(f) is msrp_codec.ClientList)
        return parseClientList(frame.text)


def parseClientList(text: bytes) -> list[str]:
    lines = text.decode("utf-8").split("\n")
    if lines[0] != "Lista de clientes:" or lines[-1] != "":
        raise SoakFailure(f"msrp: a LIST answer not in the seed's format: {text[:80]!r}")
    names = []
    for number, line in enumerate(lines[1:-1], 1):
        prefix = f"Cliente {number}: "
        if not line.startswith(prefix):
            raise SoakFailure(f"msrp: LIST line {line!r} is not {prefix!r}...")
        names.append(line[len(prefix) :])
    return names


# MSGR UQ (docs/msgr.md): the HTTP API and the chat socket.


async def http(
    port: int,
    method: str,
    path: str,
    timeout: float,
    form: dict | None = None,
    document: dict | None = None,
    body: bytes | None = None,
    headers: dict | None = None,
) -> tuple[int, bytes]:
    """One HTTP/1.1 request with C{Connection: close}; C{(status, body)}."""
    extra = dict(headers or {})
    if form is not None:
        body = urlencode(form).encode()
        extra.setdefault("Content-Type", "application/x-www-form-urlencoded")
    elif document is not None:
        body = json.dumps(document).encode()
        extra.setdefault("Content-Type", "application/json")
    head = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    if body is not None:
        head.append(f"Content-Length: {len(body)}")
    head += [f"{k}: {v}" for k, v in extra.items()]
    data = ("\r\n".join(head) + "\r\n\r\n").encode() + (body or b"")
    connection = await Connection.open(port, timeout)
    try:
        await connection.send(data, timeout)
        raw = await connection.readUntilClosed(timeout)
    finally:
        connection.reset()
    return parseHttpResponse(raw)


def parseHttpResponse(raw: bytes) -> tuple[int, bytes]:
    head, sep, rest = raw.partition(b"\r\n\r\n")
    if not sep:
        raise SoakFailure(f"http: not a whole response: {raw[:80]!r}")
    lines = head.split(b"\r\n")
    try:
        status = int(lines[0].split(b" ", 2)[1])
    except (IndexError, ValueError):
        raise SoakFailure(f"http: bad status line {lines[0][:80]!r}") from None
    fields = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        fields[name.strip().lower()] = value.strip()
    if b"content-length" in fields:
        rest = rest[: int(fields[b"content-length"])]
    elif fields.get(b"transfer-encoding", b"").lower() == b"chunked":
        rest = _unchunk(rest)
    return status, rest


def _unchunk(data: bytes) -> bytes:
    out = bytearray()
    while data:
        size, _, data = data.partition(b"\r\n")
        n = int(size.split(b";")[0], 16)
        if n == 0:
            break
        out += data[:n]
        data = data[n + 2 :]
    return bytes(out)


async def msgrLogin(port: int, name: str, password: str, timeout: float, useJson: bool) -> str:
    """Log in over HTTP (the Java path or the JSON one); the token."""
    if useJson:
        status, body = await http(
            port, "POST", "/api/login", timeout, document={"user": name, "password": password}
        )
        answer = json.loads(body)
        if status != 200 or answer.get("code") != 701:
            raise SoakFailure(f"msgr: login of {name} answered {status} {body[:100]!r}")
        return answer["token"]
    status, body = await http(
        port, "POST", "/status", timeout, form={"usr": name, "pass": password}
    )
    code, _, token = body.decode().partition("||")
    if status != 200 or code != "701":
        raise SoakFailure(f"msgr: login of {name} answered {status} {body[:100]!r}")
    return token


class MsgrClient:
    """A client of the MSGR chat socket: lines split and read with the project's codec."""

    def __init__(self, connection: Connection, timeout: float):
        self.connection = connection
        self.timeout = timeout
        self.decoder = msgr_codec.LineDecoder(4 * 1024 * 1024)
        self.lines: deque = deque()
        self.user: str | None = None
        self.token: str | None = None

    @classmethod
    async def open(cls, port: int, timeout: float) -> "MsgrClient":
        return cls(await Connection.open(port, timeout), timeout)

    async def line(self, timeout: float | None = None) -> list[str]:
        """The next line from the server, as its raw (escaped) fields."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (timeout or self.timeout)
        while not self.lines:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise NoAnswer("msgr: no line")
            data = await self.connection.read(remaining)
            for item in self.decoder.feed(data):
                if isinstance(item, msgr_codec.LineError):
                    raise SoakFailure(f"msgr: a server line that does not read: {item}")
                try:
                    text = msgr_codec.decodeLine(item)
                except msgr_codec.NotUtf8:
                    raise SoakFailure(
                        f"msgr: a server line that is not UTF-8: {item[:80]!r}"
                    ) from None
                self.lines.append(msgr_codec.splitFields(text))
        return self.lines.popleft()

    async def expect(self, predicate, timeout: float | None = None, others=None) -> list[str]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (timeout or self.timeout)
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise NoAnswer("msgr: the expected line did not come")
            fields = await self.line(remaining)
            if predicate(fields):
                return fields
            if others is not None:
                others.append(fields)

    async def answer(self, command: str, others=None) -> int:
        """The code of the next C{#RESPUESTA} to C{command}."""
        fields = await self.expect(
            lambda f: f[0] == "#RESPUESTA" and len(f) >= 6 and f[3] == command, others=others
        )
        return int(fields[5])

    async def send(self, command: str, *fields: str) -> None:
        await self.connection.send(msgr_codec.buildLine(command, *fields), self.timeout)

    async def bind(self, name: str, token: str) -> int:
        """C{#HOLA}; the code it is answered with."""
        self.user, self.token = name, token
        await self.send("#HOLA", token, name)
        return await self.answer("#HOLA")
