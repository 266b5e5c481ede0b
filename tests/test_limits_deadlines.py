"""
Deadlines that bytes trickling in cannot extend: a whole HTTP request within
C{--http-request-timeout} (slowloris), and a login within C{--login-timeout}
on every chat listener.
"""

from __future__ import annotations

from twisted.internet import defer, reactor, task
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from chatd.limits import ConnectionLimiter, Limits
from chatd.exporter import makeMetricsSite
from chatd.msrp.protocol import MsrpFactory
from chatd.msrp.texts import ERR_NAME_TIMEOUT
from chatd.presence import InMemoryPresenceService
from chatd.protobuf import chat_pb2
from chatd.sessions import CountedHTTPFactory, _CountedHTTPConnection
from chatd.tap import Options
from chatd.web import DeadlineHTTPChannel

from tests.support import ProtobufClient
from tests.test_limits_protocols import LIMITS, protobufFactory
from tests.test_limits_sockets import _Raw
from tests.test_msgr_helpers import HttpResponse, MsgrHarness
from tests.test_msrp_protocol import MsrpClient, errorFrame

R = chat_pb2.ServerResponse

TIMEOUT = 5.0

LOGIN = (
    b"POST /status HTTP/1.1\r\nHost: chatd.test\r\n"
    b"Content-Type: application/x-www-form-urlencoded\r\n"
    b"Content-Length: 22\r\n\r\nusr=ana&pass=secreto12"
)


class HttpConnection:
    """One connection to a site over a L{StringTransport}."""

    def __init__(self, site) -> None:
        self.transport = StringTransport(
            peerAddress=IPv4Address("TCP", "10.0.0.9", 50000)
        )
        self.channel = site.buildProtocol(self.transport.getPeer())
        self.channel.makeConnection(self.transport)

    def send(self, data: bytes) -> None:
        self.channel.dataReceived(data)

    def wire(self) -> bytes:
        data = self.transport.value()
        self.transport.clear()
        return data

    @property
    def closed(self) -> bool:
        return self.transport.disconnecting

    def lose(self) -> None:
        self.channel.connectionLost(Failure(ConnectionDone()))


class HttpRequestDeadlineTests(TestCase):
    """The MSGR HTTP site, its time from a L{Clock}."""

    def setUp(self) -> None:
        self.h = MsgrHarness(self)
        self.clock = self.h.clock
        self.site = self.h.site
        self.site.requestTimeout = TIMEOUT

    def connect(self, site=None) -> HttpConnection:
        connection = HttpConnection(site or self.site)
        self.addCleanup(connection.lose)
        return connection

    def trickle(self, connection: HttpConnection, data: bytes, every: float) -> None:
        """One byte every C{every} seconds, until closed or all sent."""
        for i in range(len(data)):
            if connection.closed:
                return
            connection.send(data[i : i + 1])
            self.clock.advance(every)

    def assert408(self, connection: HttpConnection, body: str = "803") -> None:
        response = HttpResponse(connection.wire())
        self.assertEqual((response.status, response.body), (408, body))
        self.assertEqual(response.headers["connection"], "close")
        self.assertTrue(connection.closed)

    def test_tricklingHeaders(self) -> None:
        """
        One byte every 2 seconds: the request line and headers never end
        within the deadline, and the bytes do not move it.
        """
        slow = self.connect()
        slow.send(b"P")
        self.clock.advance(TIMEOUT - 0.1)
        self.assertEqual(slow.wire(), b"")
        self.assertFalse(slow.closed)
        self.trickle(slow, LOGIN[1:], every=2.0)
        self.assert408(slow)
        self.assertEqual(self.h.msgr.metrics.httpRequests["msgr-http", "408"], 1)
        # The client that does not take its 408 is cut off.
        self.clock.advance(DeadlineHTTPChannel.abortTimeout)
        self.assertTrue(slow.transport.disconnected)

    def test_tricklingBody(self) -> None:
        """Headers at once, the body byte by byte: the same deadline."""
        slow = self.connect()
        head, _, body = LOGIN.partition(b"\r\n\r\n")
        slow.send(head + b"\r\n\r\n")
        self.trickle(slow, body, every=1.0)
        self.assert408(slow)

    def test_idleKeepAliveClosedQuietly(self) -> None:
        """
        A connection that sends nothing (at first, or after an answer) is
        closed at the deadline without a 408.
        """
        silent = self.connect()
        self.clock.advance(TIMEOUT)
        self.assertTrue(silent.closed)
        self.assertEqual(silent.wire(), b"")

        kept = self.connect()
        self.clock.advance(TIMEOUT - 1)
        kept.send(b"GET /healthz HTTP/1.1\r\nHost: chatd.test\r\n\r\n")
        self.assertEqual(HttpResponse(kept.wire()).body, "ok\n")
        # The deadline of the next request starts with the answer.
        self.clock.advance(TIMEOUT - 0.1)
        self.assertFalse(kept.closed)
        self.clock.advance(0.1)
        self.assertTrue(kept.closed)
        self.assertEqual(kept.wire(), b"")

    def test_eachRequestHasItsOwnDeadline(self) -> None:
        """Requests that each arrive in time are all served."""
        client = self.connect()
        for _ in range(5):
            self.clock.advance(TIMEOUT - 0.5)
            client.send(b"GET /healthz HTTP/1.1\r\nHost: chatd.test\r\n\r\n")
            self.assertEqual(HttpResponse(client.wire()).status, 200)
        self.assertFalse(client.closed)

    def test_pipelinedPartialRequest(self) -> None:
        """
        A whole request and the start of the next in one write: the first is
        answered, the second has its own deadline, and gets the 408.
        """
        client = self.connect()
        client.send(
            b"GET /healthz HTTP/1.1\r\nHost: chatd.test\r\n\r\n" + LOGIN[:40]
        )
        self.assertEqual(HttpResponse(client.wire()).body, "ok\n")
        self.clock.advance(TIMEOUT - 0.1)
        self.assertFalse(client.closed)
        self.clock.advance(0.1)
        self.assert408(client)

    def test_zeroIsNoDeadline(self) -> None:
        self.site.requestTimeout = 0
        slow = self.connect()
        self.trickle(slow, LOGIN[:40], every=2.0)
        self.assertFalse(slow.closed)
        self.assertEqual(slow.wire(), b"")

    def test_metricsSite(self) -> None:
        """The metrics listener has the deadline too; its 408 body is 408."""
        site = makeMetricsSite(self.h.msgr.metrics, reactor=self.clock)
        site.requestTimeout = TIMEOUT
        slow = self.connect(site)
        self.trickle(slow, b"GET /metrics HTTP/1.1\r\n", every=2.0)
        self.assert408(slow, body="408")

    def test_option(self) -> None:
        options = Options()
        options.parseOptions([])
        self.assertEqual(options["http-request-timeout"], 10.0)
        options.parseOptions(["--http-request-timeout", "0"])
        self.assertEqual(options["http-request-timeout"], 0)
        from twisted.python.usage import UsageError

        self.assertRaises(
            UsageError, Options().parseOptions, ["--http-request-timeout", "-1"]
        )


class _CountingBytes(_CountedHTTPConnection):
    """Counts the bytes the server has read, so the test knows when."""

    def dataReceived(self, data: bytes) -> None:
        self.factory.received += len(data)
        super().dataReceived(data)


class HttpRequestDeadlineSocketTests(TestCase):
    """Slowloris over a real socket: the deadline frees the connection's place."""

    @defer.inlineCallbacks
    def test_slowClientAnswered408AndItsPlaceFreed(self):
        harness = MsgrHarness(self)
        harness.site.requestTimeout = TIMEOUT
        limiter = ConnectionLimiter(0, 1)
        limits = Limits(maxConnections=0, maxConnectionsPerAddress=1, keepAlive=0)
        factory = CountedHTTPFactory(
            harness.site, harness.clock, limits, limiter, metrics=harness.site.metrics
        )
        factory.protocol = _CountingBytes
        factory.received = 0
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)

        slow = yield connectProtocol(endpoint, _Raw())
        slow.transport.write(LOGIN[:30])
        # Wait (on the reactor, not the clock) until the server has them.
        while factory.received < 30:
            yield task.deferLater(reactor, 0.001, lambda: None)
        self.assertEqual(limiter.total, 1)
        harness.clock.advance(TIMEOUT)
        # (Without the deadline nothing ever comes: fail in 10 s, not 120.)
        answer = yield slow.lost.addTimeout(10, reactor)
        response = HttpResponse(answer)
        self.assertEqual((response.status, response.body), (408, "803"))
        self.assertEqual(limiter.total, 0)
        # Its place is free: the next client is served.
        served = yield connectProtocol(endpoint, _Raw())
        served.transport.write(
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        answer = yield served.lost
        self.assertEqual(HttpResponse(answer).body, "ok\n")


class LoginDeadlineTricklingTests(TestCase):
    """
    The login deadline of the chat listeners counts from the connection, so
    a login trickled in one byte at a time does not extend it.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.presence = InMemoryPresenceService()

    def test_protobuf(self) -> None:
        client = ProtobufClient(protobufFactory(self.presence, self.clock))
        login = client.encode(
            chat_pb2.ClientRequest(
                option=chat_pb2.ClientRequest.USER_LOGIN,
                newuser=chat_pb2.UserRegistration(username="ana"),
            )
        )
        for i in range(len(login) - 1):
            client.sendBytes(login[i : i + 1])
            self.clock.advance(1.0)
            if client.transport.disconnecting:
                break
        self.assertEqual(
            client.responses(),
            [R(code=R.FAILED_OPERATION, response="no login within 5 seconds")],
        )
        self.assertTrue(client.transport.disconnecting)
        self.assertIsNone(self.presence.lookup("ana"))

    def test_msrp(self) -> None:
        factory = MsrpFactory(
            self.presence, self.clock, limits=LIMITS, metrics=self.presence.metrics
        )
        client = MsrpClient(factory)
        for byte in b"ana":
            client.send(bytes([byte]))
            self.clock.advance(2.0)
        self.assertEqual(client.wire(), errorFrame(ERR_NAME_TIMEOUT))
        self.assertTrue(client.closed)

    @defer.inlineCallbacks
    def test_msgrSocket(self):
        harness = MsgrHarness(self, limits=LIMITS)
        yield harness.register("Ana")
        token = yield harness.login("Ana")
        client = harness.connect()
        line = f"#HOLA||{token}||Ana||s3rv1d0r||Ana\n".encode()
        for i in range(len(line) - 1):
            client.send(line[i : i + 1])
            harness.clock.advance(1.0)
            if client.closed:
                break
        self.assertEqual(client.lines(), ["#RESPUESTA||-||0||#HOLA||-||901"])
        self.assertTrue(client.closed)
