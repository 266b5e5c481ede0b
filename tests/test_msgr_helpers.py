"""
Shared fixtures of the MSGR tests (no tests here): a real account store on a
SQLite file in the test's temporary directory, the real twisted.web site
driven over an in-memory transport, and chat sockets on StringTransports.
"""

from __future__ import annotations

import json
from urllib.parse import urlencode

from twisted.internet import defer, reactor
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from chatd.msgr.accounts import AccountStore
from chatd.msgr.http import makeSite
from chatd.msgr.lockout import LoginLockout
from chatd.msgr.protocol import MsgrChatFactory
from chatd.msgr.service import MsgrService
from chatd.msgr.tokens import TokenRegistry
from chatd.presence import ChatMessage, IChatSession, IFileReceiver, InMemoryPresenceService

#: Cheap scrypt parameters for tests (the stored hash records them).
FAST_SCRYPT = (16, 1, 1)

TOKEN_IDLE = 600.0


class HttpResponse:
    def __init__(self, raw: bytes) -> None:
        head, _, body = raw.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        self.status = int(lines[0].split()[1])
        self.headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            self.headers[name.strip().lower().decode()] = value.strip().decode()
        if self.headers.get("transfer-encoding") == "chunked":
            body = _dechunk(body)
        self.body = body.decode("utf-8")

    def json(self):
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<HttpResponse {self.status} {self.body!r}>"


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size, _, rest = data.partition(b"\r\n")
        length = int(size.split(b";")[0], 16)
        if length == 0:
            break
        out += rest[:length]
        data = rest[length + 2 :]
    return out


class ChatClient:
    """One MSGR chat socket over a StringTransport."""

    def __init__(self, harness: "MsgrHarness", host: str = "10.0.0.2") -> None:
        self.harness = harness
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", host, 40000))
        self.protocol = harness.factory.buildProtocol(self.transport.getPeer())
        self.protocol.makeConnection(self.transport)

    def send(self, line: str | bytes) -> None:
        if isinstance(line, str):
            line = line.encode("utf-8")
        self.protocol.dataReceived(line)

    def sendLine(self, line: str) -> None:
        self.send(line + "\n")

    def lines(self) -> list[str]:
        """The lines written since the last call."""
        data = self.transport.value()
        self.transport.clear()
        text = data.decode("utf-8")
        assert text == "" or text.endswith("\n"), text
        return text.splitlines()

    @property
    def closed(self) -> bool:
        return self.transport.disconnecting

    def lose(self) -> None:
        self.protocol.connectionLost(Failure(ConnectionDone()))


@implementer(IChatSession, IFileReceiver)
class RecordingSession:
    """A session of some other protocol, recording what reaches it."""

    def __init__(self, protocolName: str = "other", maxFileSize: int = 0) -> None:
        self.protocolName = protocolName
        self.maxFileSize = maxFileSize
        self.messages: list[ChatMessage] = []
        self.files: list[tuple[str, str, bytes]] = []
        self.disconnected: list[str] = []

    def deliverMessage(self, message: ChatMessage) -> None:
        self.messages.append(message)

    def deliverFile(self, sender: str, filename: str, content: bytes) -> None:
        self.files.append((sender, filename, content))

    def disconnect(self, reason: str) -> None:
        self.disconnected.append(reason)


class MsgrHarness:
    """
    The MSGR stack on a real SQLite file: store, presence, service, site and
    chat factory. Time for tokens and lockouts comes from C{self.clock}.
    """

    def __init__(
        self,
        testCase,
        path: str | None = None,
        maxLine: int = 4096,
        maxFile: int = 1024,
        limits=None,
        **lockout,
    ) -> None:
        self.testCase = testCase
        self.clock = Clock()
        self.path = path if path is not None else testCase.mktemp() + ".sqlite3"
        self.store = AccountStore.open(self.path, reactor, scrypt=FAST_SCRYPT)
        self._closed = False
        testCase.addCleanup(self.close)
        self.presence = InMemoryPresenceService(self.store.isProtectedName)
        self.tokens = TokenRegistry(self.clock, TOKEN_IDLE)
        self.lockout = LoginLockout(self.clock, **lockout)
        self.msgr = MsgrService(
            self.store,
            self.presence,
            self.clock,
            self.tokens,
            self.lockout,
            metrics=self.presence.metrics,
        )
        self.msgr.watch()
        self.site = makeSite(self.msgr, reactor=self.clock, metrics=self.msgr.metrics)
        self.factory = MsgrChatFactory(
            self.msgr,
            maxLine=maxLine,
            maxFileSize=maxFile,
            limits=limits,
            metrics=self.msgr.metrics,
        )

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.msgr.unwatch()
            self.store.close()

    # HTTP over the real Site.

    def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        host: str = "10.0.0.1",
    ) -> defer.Deferred:
        """Send one raw HTTP/1.1 request; fires with an L{HttpResponse}."""
        transport = StringTransport(peerAddress=IPv4Address("TCP", host, 50000))
        channel = self.site.buildProtocol(transport.getPeer())
        finished: list[defer.Deferred] = []
        originalFactory = channel.requestFactory

        def capture(*args, **kwargs):
            request = originalFactory(*args, **kwargs)
            finished.append(request.notifyFinish())
            return request

        channel.requestFactory = capture
        channel.makeConnection(transport)
        head = [f"{method} {path} HTTP/1.1", "Host: chatd.test", "Connection: close"]
        for name, value in (headers or {}).items():
            head.append(f"{name}: {value}")
        head.append(f"Content-Length: {len(body)}")
        channel.dataReceived(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        assert len(finished) == 1, "the site did not make a request"

        def done(_):
            channel.connectionLost(Failure(ConnectionDone()))
            return HttpResponse(transport.value())

        return finished[0].addCallback(done)

    def form(self, path: str, headers=None, host="10.0.0.1", **fields) -> defer.Deferred:
        body = urlencode(fields).encode()
        headers = {"Content-Type": "application/x-www-form-urlencoded", **(headers or {})}
        return self.request("POST", path, body, headers, host)

    def api(self, path: str, document=None, token: str | None = None, method="POST"):
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        body = b"" if document is None else json.dumps(document).encode()
        return self.request(method, "/api/" + path, body, headers)

    @defer.inlineCallbacks
    def register(self, name: str, password: str = "secreto", **profile):
        response = yield self.form("/usuariocrear", usr=name, **{"pass": password}, **profile)
        assert response.body == "702", response
        return response

    @defer.inlineCallbacks
    def login(self, name: str, password: str = "secreto"):
        """The token of a successful form login."""
        response = yield self.form("/status", usr=name, **{"pass": password})
        code, _, token = response.body.partition("||")
        assert code == "701", response
        return token

    @defer.inlineCallbacks
    def befriend(self, a: str, b: str, tokenA: str, tokenB: str):
        r = yield self.form("/enviarsolicitud", token=tokenA, para=b)
        assert r.body == "704", r
        r = yield self.form("/aceptarsolicitud", token=tokenB, id=a)
        assert r.body == "602", r

    # Chat sockets.

    def connect(self, host: str = "10.0.0.2") -> ChatClient:
        return ChatClient(self, host)

    @defer.inlineCallbacks
    def bound(self, name: str, password: str = "secreto"):
        """A chat socket bound to C{name} (registered already); (client, token)."""
        token = yield self.login(name, password)
        client = self.connect()
        client.sendLine(f"#HOLA||{token}||{name}||s3rv1d0r||{name}")
        yield self.settle()
        return client, token

    @defer.inlineCallbacks
    def settle(self, rounds: int = 4):
        """
        Let queued database work and its callbacks finish: the store runs
        queries one at a time in order, so each no-op round drains one more
        level of chained queries.
        """
        for _ in range(rounds):
            yield self.store._pool.runInteraction(lambda cursor: None)
