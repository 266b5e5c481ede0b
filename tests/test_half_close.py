"""
Clients that shut down their sending side after their requests (C{nc -q 1}
and C{nc -N} do, at the end of their input) get every answer, then chatd
closes: on every listener, over plain TCP and over TLS, through real
sockets on 127.0.0.1.
"""

from __future__ import annotations

import os
import ssl

from twisted.internet import defer, reactor
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site

from chatd import tap
from chatd.limits import ConnectionLimiter, Limits
from chatd.sessions import CountedHTTPFactory
from tests.test_msgr_helpers import FAST_SCRYPT
from tests.test_tls import OPTION, ServerConnections, listFrame
from tests.tls import LOOPBACK, PKI, makePKI, serverDescription

#: docs/protobuf.md's recipe: log in as alice, then list users.
PROTOBUF_RECIPE = b"\x08\x00\x12\x07\x0a\x05alice\x00\x08\x01\x00"


class HalfClosingClient(Protocol):
    """
    Sends C{request}, shuts down its sending side, and keeps what arrives
    until the server closes. With C{context}, it speaks TLS itself (Python's
    ssl over memory buffers, as a TLS library does over a socket): the
    half-close is a TCP FIN, with no TLS close_notify before it.
    """

    def __init__(self, request: bytes, context: ssl.SSLContext | None = None) -> None:
        self.request = request
        self.received = b""
        self.closed: defer.Deferred = defer.Deferred()
        self.tls = None
        if context is not None:
            self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
            self.tls = context.wrap_bio(
                self.incoming, self.outgoing, server_hostname="localhost"
            )
        self.handshaken = False

    def connectionMade(self) -> None:
        if self.tls is None:
            self.transport.write(self.request)
            self.transport.loseWriteConnection()
        else:
            self._handshake()

    def _pump(self) -> None:
        data = self.outgoing.read()
        if data:
            self.transport.write(data)

    def _handshake(self) -> None:
        try:
            self.tls.do_handshake()
        except ssl.SSLWantReadError:
            self._pump()
            return
        self.handshaken = True
        self.tls.write(self.request)
        self._pump()
        self.transport.loseWriteConnection()

    def dataReceived(self, data: bytes) -> None:
        if self.tls is None:
            self.received += data
            return
        self.incoming.write(data)
        if not self.handshaken:
            self._handshake()
            if not self.handshaken:
                return
        while True:
            try:
                chunk = self.tls.read(65536)
            except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                break
            if not chunk:
                break
            self.received += chunk

    def connectionLost(self, reason) -> None:
        self.closed.callback(self.received)


class HalfCloseMixin:
    """Each listener answers a client that half-closes, then closes."""

    secure = False
    timeout = 30

    def startServer(self, labels) -> None:
        pki = self.pki = makePKI(self.mktemp()) if self.secure else None
        argv = []
        for label, option in OPTION.items():
            if label not in labels:
                value = "none"
            elif self.secure:
                value = serverDescription(pki)
            else:
                value = f"tcp:0:interface={LOOPBACK}"
            argv += [f"--{option}", value]
        needsDb = {"msgr", "msgr-http"} & set(labels)
        argv += ["--db", os.path.abspath(self.mktemp()) + ".sqlite3" if needsDb else "none"]
        config = tap.Options()
        config.parseOptions(argv)
        self.top = tap.makeService(config, reactor)
        if needsDb:
            self.top.accounts.scrypt = FAST_SCRYPT
        self.top.startService()
        self.ports = {}
        self.connections = []
        for label in labels:
            port = self.top.getServiceNamed(label).port
            self.ports[label] = port.getHost().port
            if self.secure:
                self.connections.append(ServerConnections(port.factory))
        self.addCleanup(self._stop)

    @defer.inlineCallbacks
    def _stop(self):
        for connections in self.connections:
            yield connections.whenEmpty()
        yield self.top.stopService()

    @defer.inlineCallbacks
    def exchange(self, label: str, request: bytes):
        """Send C{request} to C{label}, half-close; all that came back."""
        context = None
        if self.secure:
            context = ssl.create_default_context(cafile=self.pki.root)
        client = HalfClosingClient(request, context)
        endpoint = TCP4ClientEndpoint(reactor, LOOPBACK, self.ports[label])
        yield connectProtocol(endpoint, client)
        received = yield client.closed
        return received

    @defer.inlineCallbacks
    def test_protobuf(self):
        """
        docs/protobuf.md's recipe gets both answers, even the raw list
        request, which would otherwise wait for more bytes.
        """
        self.startServer(["protobuf"])
        received = yield self.exchange("protobuf", PROTOBUF_RECIPE)
        self.assertIn(b"welcome, alice", received)
        self.assertIn(b"1 user online", received)
        self.assertIsNone(self.top.presence.lookup("alice"))

    @defer.inlineCallbacks
    def test_msrp(self):
        """A binary MSRP client's list request, then the half-close."""
        self.startServer(["msrp"])
        received = yield self.exchange("msrp", b"clt1\x00\x03")
        self.assertEqual(received, listFrame("clt1"))

    @defer.inlineCallbacks
    def test_msgrSocket(self):
        """`#HOLA` waits for the database; its answer comes before the close."""
        self.startServer(["msgr"])
        yield self.top.accounts.register("Ana", "secreto", {})
        token = self.top.getServiceNamed("msgr-accounts").tokens.issue("Ana")
        received = yield self.exchange("msgr", f"#HOLA||{token}||Ana\n".encode())
        self.assertEqual(
            received.decode("utf-8").splitlines(),
            [
                "#RESPUESTA||-||1||#HOLA||Ana||701",
                "#LISTA_USUARIOS||-||Ana||",
                "#SOLICITUDES||-||Ana||",
            ],
        )

    @defer.inlineCallbacks
    def test_http(self):
        """An HTTP request, then the half-close: the whole response."""
        self.startServer(["msgr-http"])
        received = yield self.exchange(
            "msgr-http", b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n"
        )
        self.assertTrue(received.startswith(b"HTTP/1.1 200 OK\r\n"), received)
        self.assertTrue(received.endswith(b"\r\n\r\nok\n"), received)


class PlainHalfCloseTests(HalfCloseMixin, TestCase):
    secure = False


class TLSHalfCloseTests(HalfCloseMixin, TestCase):
    secure = True


class RefusedHTTPHalfCloseTests(TestCase):
    """An HTTP connection refused by a limit, then half-closed."""

    def test_refusedThenHalfClosed(self):
        """
        The 503 is all it gets; its half-close changes nothing (twisted.web
        never saw the connection).
        """
        clock = Clock()
        factory = CountedHTTPFactory(
            Site(Resource(), reactor=clock), clock, Limits(), ConnectionLimiter(1, 0)
        )
        peer = IPv4Address("TCP", "192.0.2.1", 40000)
        first = StringTransport(peerAddress=peer)
        factory.buildProtocol(peer).makeConnection(first)
        second = StringTransport(peerAddress=peer)
        refused = factory.buildProtocol(peer)
        refused.makeConnection(second)
        refused.readConnectionLost()
        self.assertTrue(second.value().startswith(b"HTTP/1.1 503 "), second.value())
        self.assertTrue(second.value().endswith(b"\r\n\r\n803"))
        self.assertTrue(second.disconnecting)
