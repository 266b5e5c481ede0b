"""
The limits over real sockets on 127.0.0.1: a client that stops reading
cannot make the server's memory grow, its name is freed and it is cut off
after the close grace; accepted sockets get TCP keepalive; the HTTP listener
counts its connections with the others.
"""

from __future__ import annotations

import socket
import tracemalloc
from dataclasses import replace

from twisted.internet import defer, protocol, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase
from twisted.web import resource, server

from chatd.limits import UNLIMITED, ConnectionLimiter, Limits
from chatd.presence import InMemoryPresenceService
from chatd.protobuf import chat_pb2
from chatd.protobuf.framing import DelimitedFramer, encodeDelimited
from chatd.protobuf.protocol import DELIMITED, ProtobufChatFactory
from chatd.sessions import CountedHTTPFactory

from tests.support import login, message

R = chat_pb2.ServerResponse


class _Client(protocol.Protocol):
    """A delimited protobuf client on a real socket, keeping what arrives."""

    def __init__(self) -> None:
        self.framer = DelimitedFramer(1 << 20)
        self.responses: list[R] = []
        self._waiting: list[tuple[object, defer.Deferred]] = []
        self.lost = defer.Deferred()

    def send(self, request: chat_pb2.ClientRequest) -> None:
        self.transport.write(encodeDelimited(request.SerializeToString()))

    def dataReceived(self, data: bytes) -> None:
        for frame in self.framer.feed(data):
            self.responses.append(R.FromString(frame))
        for item in list(self._waiting):
            count, d = item
            if len(self.responses) >= count:
                self._waiting.remove(item)
                d.callback(self.responses[count - 1])

    def response(self, number: int) -> defer.Deferred:
        """The C{number}th response (1-based), when it has arrived."""
        if len(self.responses) >= number:
            return defer.succeed(self.responses[number - 1])
        d = defer.Deferred()
        self._waiting.append((number, d))
        return d

    def connectionLost(self, reason=None) -> None:
        self.lost.callback(None)


class SlowReaderTests(TestCase):
    """
    One client stops reading while another sends it 32 KiB messages: past
    C{--max-sendq} it is disconnected, and the memory the server holds for
    it stays near the limit although far more was sent.
    """

    maxSendQueue = 256 * 1024
    text = "z" * (32 * 1024)
    #: Enough to pass the kernel's socket buffers many times over.
    most = 2000  # 64 MiB

    def setUp(self) -> None:
        self.clock = Clock()  # the login, rate and close deadlines
        self.presence, self.factory, self.port = self.listen(self.maxSendQueue)

    def listen(self, maxSendQueue: int):
        """A delimited protobuf server with C{maxSendQueue} (0: no limit)."""
        presence = InMemoryPresenceService()
        factory = ProtobufChatFactory(
            presence,
            self.clock,
            framing=DELIMITED,
            limits=replace(UNLIMITED, maxSendQueue=maxSendQueue, closeGrace=10.0),
            metrics=presence.metrics,
        )
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return presence, factory, port

    @defer.inlineCallbacks
    def connect(self, name: str, port=None):
        port = self.port if port is None else port
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        client = yield connectProtocol(endpoint, _Client())
        self.addCleanup(lambda: client.lost if client.lost.called else (
            client.transport.loseConnection() or client.lost))
        client.send(login(name))
        answer = yield client.response(1)
        self.assertEqual(answer.code, R.SUCCESSFUL_OPERATION)
        return client

    @defer.inlineCallbacks
    def flood(self, fast, count: int, to: str = "slow"):
        """
        C{fast} sends C{to} up to C{count} messages, one at a time, until
        one is refused; how many it sent, the last answer, and the peak of
        memory traced meanwhile over what was traced before.
        """
        tracemalloc.start()
        self.addCleanup(tracemalloc.stop)
        baseline = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        answer = None
        for n in range(1, count + 1):
            fast.send(message(to, self.text))
            answer = yield fast.response(n + 1)
            if answer.code != R.SUCCESSFUL_OPERATION:
                break
        peak = tracemalloc.get_traced_memory()[1] - baseline
        tracemalloc.stop()
        return n, answer, peak

    @defer.inlineCallbacks
    def unlimitedPeak(self):
        """
        The peak of traced memory while a server without a send queue limit
        takes a quarter of the flood for a reader that does not read: it
        holds all of it but what the kernel's buffers took.
        """
        presence, factory, port = self.listen(0)
        fast = yield self.connect("u-fast", port)
        slow = yield self.connect("u-slow", port)
        slow.transport.pauseProducing()
        serverGone = [self.serverLost(presence, name) for name in ("u-fast", "u-slow")]
        n, answer, peak = yield self.flood(fast, self.most // 4, "u-slow")
        self.assertEqual((n, answer.code), (self.most // 4, R.SUCCESSFUL_OPERATION))
        # Let the server's side go: the reader closes without reading.
        slow.transport.abortConnection()
        fast.transport.loseConnection()
        yield defer.gatherResults([slow.lost, fast.lost, *serverGone])
        return peak

    @staticmethod
    def serverLost(presence, name: str) -> defer.Deferred:
        """Fires once the server's side of C{name}'s connection is gone."""
        serverSide = presence.sessionFor(name)
        gone = defer.Deferred()
        connectionLost = serverSide.connectionLost

        def lost(reason):
            connectionLost(reason)
            gone.callback(None)

        serverSide.connectionLost = lost
        return gone

    @defer.inlineCallbacks
    def test_memoryBounded(self):
        fast = yield self.connect("fast")
        slow = yield self.connect("slow")
        other = yield self.connect("other")
        slow.transport.pauseProducing()  # it stops reading
        serverSide = self.presence.sessionFor("slow")
        serverLost = defer.Deferred()
        connectionLost = serverSide.connectionLost

        def lost(reason):
            connectionLost(reason)
            serverLost.callback(None)

        serverSide.connectionLost = lost

        # The same flood without the limit, measured the same way under
        # the same load of the machine: what the limit is compared with.
        unlimited = yield self.unlimitedPeak()
        n, answer, peak = yield self.flood(fast, self.most)

        self.assertEqual(
            (answer.code, answer.response),
            (R.FAILED_OPERATION, "not delivered: slow is not reading; disconnected"),
            f"still delivering after {n} messages",
        )
        # The kernel's buffers took some; the server held at most its
        # queue, its transport's buffer and a message or two more.
        self.assertLess(n, self.most // 4)
        self.assertLess(
            peak,
            unlimited / 4,
            f"peak traced memory {peak} bytes, {unlimited} without --max-sendq",
        )
        # The name is free at once, and everyone else is served.
        self.assertIsNone(self.presence.lookup("slow"))
        fast.send(message("other", "still here"))
        delivered = yield other.response(2)
        self.assertEqual(delivered.messg.text, "still here")

        # The slow client never reads its last bytes: after the close grace
        # the server cuts it off.
        self.assertFalse(serverLost.called)
        self.clock.advance(10.0)
        yield serverLost
        self.assertEqual(len(self.factory.connections), 2)
        slow.transport.resumeProducing()
        yield slow.lost

    @defer.inlineCallbacks
    def test_readerThatCatchesUpGetsEverything(self):
        """A slow reader within the limit loses nothing."""
        fast = yield self.connect("fast")
        slow = yield self.connect("slow")
        slow.transport.pauseProducing()
        count = 40  # 1.3 MB: past the socket buffers, within kernel + queue
        for n in range(1, count + 1):
            fast.send(message("slow", self.text))
        last = yield fast.response(count + 1)
        self.assertEqual(last.code, R.SUCCESSFUL_OPERATION)
        slow.transport.resumeProducing()
        yield slow.response(count + 1)
        self.assertEqual(
            [r.messg.text for r in slow.responses[1:]], [self.text] * count
        )


class KeepAliveTests(TestCase):
    @defer.inlineCallbacks
    def test_acceptedSocketsProbeDeadPeersAndSendAtOnce(self):
        accepted = []

        class Factory(ProtobufChatFactory):
            def buildProtocol(self, addr):
                p = ProtobufChatFactory.buildProtocol(self, addr)
                accepted.append(p)
                return p

        factory = Factory(
            InMemoryPresenceService(),
            Clock(),
            framing=DELIMITED,
            limits=replace(UNLIMITED, keepAlive=42),
        )
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        client = yield connectProtocol(endpoint, _Client())
        client.send(login("ana"))
        yield client.response(1)
        handle = accepted[0].transport.getHandle()
        self.assertEqual(handle.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE), 1)
        if hasattr(socket, "TCP_KEEPIDLE"):
            self.assertEqual(
                handle.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE), 42
            )
        # Nagle's algorithm is off: a delivery is not held back.
        self.assertEqual(handle.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), 1)
        client.transport.loseConnection()
        yield client.lost


class _Hello(resource.Resource):
    isLeaf = True

    def render_GET(self, request):
        return b"hello"


class _Raw(protocol.Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.lost = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason=None) -> None:
        self.lost.callback(self.data)


class HttpCountedTests(TestCase):
    @defer.inlineCallbacks
    def test_overTheLimitIs503(self):
        limiter = ConnectionLimiter(0, 1)
        limits = Limits(maxConnections=0, maxConnectionsPerAddress=1, keepAlive=0)
        site = server.Site(_Hello())
        factory = CountedHTTPFactory(site, Clock(), limits, limiter)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)

        first = yield connectProtocol(endpoint, _Raw())
        second = yield connectProtocol(endpoint, _Raw())
        refused = yield second.lost
        self.assertTrue(refused.startswith(b"HTTP/1.1 503 Service Unavailable\r\n"))
        self.assertTrue(refused.endswith(b"\r\n\r\n803"), refused)
        # The first is served, and once it closes, its place is free.
        first.transport.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        served = yield first.lost
        self.assertTrue(served.startswith(b"HTTP/1.1 200 OK\r\n"), served)
        self.assertEqual(limiter.total, 0)
        third = yield connectProtocol(endpoint, _Raw())
        third.transport.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        served = yield third.lost
        self.assertTrue(served.startswith(b"HTTP/1.1 200 OK\r\n"), served)


class HttpBodyTests(TestCase):
    size = 8 * 1024 * 1024

    @defer.inlineCallbacks
    def post(self, site):
        """
        POST an 8 MiB form to C{site} at the pace it reads; its answer, and
        the peak of memory traced meanwhile over what was traced before.
        """
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        chunk = b"usr=" + b"a" * (64 * 1024 - 4)

        tracemalloc.start()
        self.addCleanup(tracemalloc.stop)
        baseline = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        client = yield connectProtocol(endpoint, _Raw())
        client.transport.write(
            b"POST /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: %d\r\n\r\n" % self.size
        )
        for _ in range(self.size // len(chunk)):
            client.transport.write(chunk)
            # Send at the pace the server reads, so the test client's own
            # buffer is not what is measured.
            yield task.deferLater(reactor, 0, lambda: None)
        answer = yield client.lost
        peak = tracemalloc.get_traced_memory()[1] - baseline
        tracemalloc.stop()
        return answer, peak

    @defer.inlineCallbacks
    def test_largeBodyNotHeld(self):
        """
        A body past the limit is refused with the operation's code once it
        has arrived, and the server never holds more than the limit of it.
        """
        from chatd.msgr.http import makeSite
        from tests.test_msgr_helpers import MsgrHarness

        harness = MsgrHarness(self)
        # The same request to a site whose limit lets the whole body in,
        # measured the same way under the same load of the machine: what
        # the limit is compared with.
        _, unlimited = yield self.post(
            makeSite(harness.msgr, reactor=harness.clock, maxBody=self.size)
        )
        answer, peak = yield self.post(harness.site)
        self.assertTrue(answer.startswith(b"HTTP/1.1 400 "), answer[:100])
        self.assertTrue(answer.endswith(b"\r\n\r\n901"), answer[-100:])
        # Without the limit the body is held whole, and parsed.
        self.assertLess(
            peak,
            unlimited / 4,
            f"peak traced memory {peak} bytes, {unlimited} with the whole body let in",
        )
