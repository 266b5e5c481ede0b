"""
chatd-client for the protobuf chat of seed 000 (docs/protobuf.md), on the
server's own schema (L{chatd.protobuf.chat_pb2}) and framing
(L{chatd.protobuf.framing}).

Every request gets exactly one response, in order; a response with C{messg}
is a delivery instead, and one with no C{option} the server's last word
before it closes the connection.
"""

from __future__ import annotations

from collections import deque

from google.protobuf.message import DecodeError
from twisted.internet import defer
from twisted.internet.endpoints import connectProtocol
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

from chatd.client.base import ChatClient, WrongServer, describeError
from chatd.client.runner import Command, CommandError, arguments
from chatd.protobuf import chat_pb2
from chatd.protobuf.framing import (
    DelimitedFramer,
    FramingError,
    FrameTooLarge,
    RawResponseFramer,
    encodeDelimited,
    encodeRaw,
)

Request = chat_pb2.ClientRequest
Response = chat_pb2.ServerResponse

#: The server's default port.
DEFAULT_PORT = 5000

#: How long a raw response that may still grow is waited for, in seconds:
#: the server's own wait for raw requests (docs/protobuf.md).
RAW_WAIT = 0.05

#: Largest response read.
MAX_RESPONSE = 16 * 1024 * 1024

RAW = "raw"
DELIMITED = "delimited"


class ProtobufClientProtocol(Protocol):
    """Bytes to and from the server, framed; responses go to the client."""

    def __init__(self, client: "ProtobufChatClient", framing: str) -> None:
        self.client = client
        if framing == DELIMITED:
            self.framer = DelimitedFramer(MAX_RESPONSE)
            self.encode = encodeDelimited
        else:
            self.framer = RawResponseFramer(MAX_RESPONSE)
            self.encode = encodeRaw
        self._wait = None

    def send(self, request: chat_pb2.ClientRequest) -> None:
        self.transport.write(self.encode(request.SerializeToString()))

    def dataReceived(self, data: bytes) -> None:
        if not self.client.peerSent(data):
            return
        if self._wait is not None and self._wait.active():
            self._wait.cancel()
        self._wait = None
        try:
            for frame in self.framer.feed(data):
                self._frame(frame)
        except FrameTooLarge as e:
            self.client.console.error(f"the server sent too much: {e}")
            self.transport.abortConnection()
            return
        except FramingError as e:
            self.client.console.error(f"the server sent bytes that are not protobuf: {e}")
            return
        if self.framer.waiting:
            self._wait = self.client.reactor.callLater(RAW_WAIT, self._flush)

    def _flush(self) -> None:
        self._wait = None
        frame = self.framer.flush()
        if frame is not None:
            self._frame(frame)

    def _frame(self, frame: bytes) -> None:
        try:
            response = Response.FromString(frame)
        except DecodeError as e:
            self.client.console.error(f"the server sent an unreadable response: {e}")
            return
        self.client.responseReceived(response)

    def connectionLost(self, reason: Failure) -> None:
        if self._wait is not None and self._wait.active():
            self._wait.cancel()
            self._flush()
        self.client.connectionLost(reason)


def _text(value) -> str:
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


class ProtobufChatClient(ChatClient):
    """A user of the protobuf chat."""

    protocolName = "protobuf"
    serverKind = "a protobuf chat server"
    defaultPort = DEFAULT_PORT

    def __init__(self, options, console, reactor) -> None:
        super().__init__(options, console, reactor)
        self.protocol: ProtobufClientProtocol | None = None
        self._pending: deque[defer.Deferred] = deque()
        self.name = options.name

    def commands(self) -> list[Command]:
        return [
            Command("list", "the users online, in every protocol", self.listUsers),
            Command("info NAME", "one user's status and address", self.userInfo),
            Command("status TEXT", "change your status (ACTIVO, OCUPADO, INACTIVO or any text)", self.changeStatus),
            Command("msg NAME TEXT", "send TEXT to NAME", self.message),
            Command("all TEXT", "send TEXT to everyone online", self.broadcast),
        ]

    def unsupported(self) -> dict[str, str]:
        files = "the protobuf chat carries no files"
        friends = "friends are MSGR's; the protobuf chat has none"
        return {
            "send": files, "img": files, "meme": "the protobuf chat has no memes",
            "friend": friends, "accept": friends, "reject": friends, "requests": friends,
        }

    @defer.inlineCallbacks
    def connect(self):
        port = self.options.port or DEFAULT_PORT
        self.protocol = ProtobufClientProtocol(self, self.options.framing)
        try:
            yield connectProtocol(self.connectEndpoint(port), self.protocol)
        except Exception as e:
            raise CommandError(f"cannot connect to {self.describe(port)}: {e}") from None
        self.transport = self.protocol.transport
        request = Request(option=Request.USER_LOGIN)
        request.newuser.username = self.name
        if self.options.ip:
            request.newuser.ip = self.options.ip
        try:
            response = yield self.guardLogin(self.request(request), port)
        except WrongServer:
            raise
        except Exception as e:
            raise CommandError(f"login failed: {describeError(e)}") from None
        if response.code != Response.SUCCESSFUL_OPERATION:
            self.abort()
            raise CommandError(_text(response.response))
        self.name = response.user.username or self.name
        self.console.result(f"logged in as {self.name} (protobuf, {self.describe(port)})")

    def request(self, request: chat_pb2.ClientRequest) -> defer.Deferred:
        """Send C{request}; fires with its response."""
        if self.protocol is None or self.protocol.transport is None or self._closed:
            return defer.fail(CommandError("not connected"))
        d: defer.Deferred = defer.Deferred()
        self._pending.append(d)
        self.protocol.send(request)
        return d

    def responseReceived(self, response: chat_pb2.ServerResponse) -> None:
        if response.HasField("messg"):
            m = response.messg
            receiver = _text(m.receiver)
            broadcast = receiver.lower() == "all"
            self.console.arrival(_text(m.sender), _text(m.text), "all" if broadcast else None)
            return
        if not response.HasField("option") and not self._pending:
            # The server's last word before it closes the connection.
            self.console.error(f"server: {_text(response.response)}")
            return
        if self._pending:
            self._pending.popleft().callback(response)
        else:
            self.console.result(f"server: {_text(response.response)}")

    def connectionLost(self, reason: Failure) -> None:
        pending, self._pending = self._pending, deque()
        for d in pending:
            d.errback(reason)
        super().connectionLost(reason)

    def drain(self) -> defer.Deferred:
        return defer.DeferredList(
            [self._settled(d) for d in self._pending]
        )

    @staticmethod
    def _settled(d: defer.Deferred) -> defer.Deferred:
        done: defer.Deferred = defer.Deferred()

        def settle(result):
            done.callback(None)
            return result

        d.addBoth(settle)
        return done

    # Commands.

    def _answer(self, request) -> defer.Deferred:
        """The response's text; a failed response is a L{CommandError}."""

        def check(response):
            if response.code != Response.SUCCESSFUL_OPERATION:
                raise CommandError(_text(response.response))
            return response

        return self.request(request).addCallback(check)

    def listUsers(self, rest: str) -> defer.Deferred:
        def show(response):
            self.console.result(_text(response.response))
            for user in response.users.users:
                self.console.result(f"  {_text(user.username)} {_text(user.status)} {_text(user.ip)}")

        return self._answer(Request(option=Request.CONNECTED_USERS)).addCallback(show)

    def userInfo(self, rest: str) -> defer.Deferred:
        (name,) = arguments(rest, "info NAME")
        request = Request(option=Request.USER_INFORMATION)
        request.user.user = name

        def show(response):
            if response.HasField("user"):
                u = response.user
                self.console.result(
                    f"{_text(u.username)} is online, status {_text(u.status)}, ip {_text(u.ip)}"
                )
            else:  # "all": the list
                self.console.result(_text(response.response))
                for user in response.users.users:
                    self.console.result(f"  {_text(user.username)} {_text(user.status)} {_text(user.ip)}")

        return self._answer(request).addCallback(show)

    def changeStatus(self, rest: str) -> defer.Deferred:
        (status,) = arguments(rest, "status TEXT")
        request = Request(option=Request.STATUS_CHANGE)
        request.status.username = self.name
        request.status.status = status
        return self._answer(request).addCallback(
            lambda response: self.console.result(_text(response.response))
        )

    def message(self, rest: str) -> defer.Deferred:
        name, text = arguments(rest, "msg NAME TEXT")
        return self._send(name, text)

    def broadcast(self, rest: str) -> defer.Deferred:
        (text,) = arguments(rest, "all TEXT")
        return self._send("all", text)

    def _send(self, receiver: str, text: str) -> defer.Deferred:
        request = Request(option=Request.SEND_MESSAGE)
        request.messg.receiver = receiver
        request.messg.text = text
        return self._answer(request).addCallback(
            lambda response: self.console.result(_text(response.response))
        )
