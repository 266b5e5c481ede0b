"""
L{chatd.writethrough.writeThrough} over real sockets on 127.0.0.1: a write
to an idle TCP transport is on its way in the call that makes it; whatever
the kernel refuses waits in the transport, in order; a peer that is gone, a
transport that is closing, and transports that are not plain TCP (in memory,
TLS) see exactly what C{transport.write} would do. And
L{chatd.limits.OutboundQueue} keeps its promises on a real socket whose
reader stops reading.
"""

from __future__ import annotations

import sys
from functools import partial
from array import array

from twisted.internet import defer, error, protocol, reactor, tcp
from twisted.internet.endpoints import (
    SSL4ClientEndpoint,
    TCP4ClientEndpoint,
    connectProtocol,
    serverFromString,
)
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.testing import StringTransport
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from chatd.limits import OutboundQueue
from chatd.tls import tlsEndpoint
from chatd.writethrough import sendNow
from tests.tls import LOOPBACK, clientOptions, makePKI, serverDescription
from tests.twistd import ByteCollector


def writeThrough(transport):
    """
    What a connection writes with: L{sendNow} on its transport (as
    C{ProtobufChatProtocol._out} and C{OutboundQueue.write} call it).
    """
    return partial(sendNow, transport)


def counted(size: int) -> bytes:
    """
    C{size} bytes of consecutive big-endian 32-bit counters: any byte lost,
    repeated or moved makes the received stream differ from this one.
    """
    counters = array("I", range(size // 4))
    if sys.byteorder == "little":
        counters.byteswap()
    return counters.tobytes()


def firstDifference(got: bytes, expected: bytes) -> str:
    """Where C{got} departs from C{expected}, for a readable failure."""
    for offset, (a, b) in enumerate(zip(got, expected)):
        if a != b:
            return f"first difference at byte {offset} of {len(expected)}"
    return f"{len(got)} bytes received, {len(expected)} expected"


def buffered(transport) -> bool:
    """Whether a TCP transport holds bytes the kernel has not taken yet."""
    return bool(transport._tempDataLen or transport.dataBuffer)


def received(size: int):
    """A L{ByteCollector} predicate: what arrived, once C{size} bytes did."""
    return lambda data: data if len(data) >= size else None


class _Server(protocol.Protocol):
    """
    The server's side of one connection: runs the test's C{onMade} in
    C{connectionMade}; C{lost} fires when it ended, C{reason} says why.
    """

    def __init__(self, onMade) -> None:
        self.onMade = onMade
        self.lost: defer.Deferred = defer.Deferred()
        self.reason = None

    def connectionMade(self) -> None:
        self.onMade(self)

    def connectionLost(self, reason) -> None:
        self.reason = reason
        self.lost.callback(None)


class _ServerFactory(protocol.ServerFactory):
    """Builds L{_Server}s; C{made} fires with the first, once connected."""

    def __init__(self, onMade=lambda server: None) -> None:
        self.made: defer.Deferred = defer.Deferred()
        self._onMade = onMade

    def buildProtocol(self, addr):
        def made(server):
            self._onMade(server)
            self.made.callback(server)

        return _Server(made)


@implementer(IHalfCloseableProtocol)
class _HalfCloseableCollector(ByteCollector):
    """A L{ByteCollector} that sees the server's half-close (C{halfClosed})."""

    def __init__(self) -> None:
        super().__init__()
        self.halfClosed: defer.Deferred = defer.Deferred()

    def readConnectionLost(self) -> None:
        self.halfClosed.callback(None)

    def writeConnectionLost(self) -> None:
        pass


class _LoopbackMixin:
    """One server and one client on 127.0.0.1, both gone when a test ends."""

    timeout = 60

    @defer.inlineCallbacks
    def connect(self, onMade=lambda server: None, tls: bool = False, client=None):
        """
        Listen on 127.0.0.1 port 0 (over TLS when C{tls}), connect C{client}
        (a new L{ByteCollector} by default) to it; C{onMade(server)} runs in the server
        protocol's C{connectionMade}. Returns C{(server, client)}.
        """
        factory = _ServerFactory(onMade)
        if tls:
            pki = makePKI(self.mktemp())
            # As chatd's listeners are: its own TLS layer on the ssl: endpoint.
            endpoint = tlsEndpoint(
                reactor, serverFromString(reactor, serverDescription(pki)), "test"
            )
            port = yield endpoint.listen(factory)
            endpoint = SSL4ClientEndpoint(
                reactor, LOOPBACK, port.getHost().port, clientOptions(pki)
            )
        else:
            port = reactor.listenTCP(0, factory, interface=LOOPBACK)
            endpoint = TCP4ClientEndpoint(reactor, LOOPBACK, port.getHost().port)
        self.addCleanup(port.stopListening)
        client = ByteCollector() if client is None else client
        _, server = yield defer.gatherResults(
            [connectProtocol(endpoint, client), factory.made]
        )
        self.addCleanup(self._closeBoth, server, client)
        return server, client

    @defer.inlineCallbacks
    def _closeBoth(self, server, client):
        if not client.closed.called:
            client.transport.resumeProducing()
            client.transport.loseConnection()
        yield client.closed
        yield server.lost


class SentInTheCallTests(_LoopbackMixin, TestCase):
    """An idle connection: the bytes leave in the call that writes them."""

    @defer.inlineCallbacks
    def sendInConnectionMade(self, makeWrite):
        """
        Write a greeting with C{makeWrite(transport)} in the server's
        C{connectionMade}; what the transport held right after the call (is
        anything buffered, is it registered for writing) and what the client
        received.
        """
        greeting = b"+OK chatd ready\r\n"
        seen = {}

        def onMade(server):
            transport = server.transport
            makeWrite(transport)(greeting)
            seen["buffered"] = buffered(transport)
            seen["registered"] = transport in reactor.getWriters()

        server, client = yield self.connect(onMade)
        data = yield client.waitFor(received(len(greeting)))
        self.assertEqual(data, greeting)
        return seen

    @defer.inlineCallbacks
    def test_sentInTheCall(self):
        """
        Through L{writeThrough}, nothing waits in the transport and the
        reactor is not asked to watch the socket for writing.
        """
        seen = yield self.sendInConnectionMade(writeThrough)
        self.assertEqual(seen, {"buffered": False, "registered": False})

    @defer.inlineCallbacks
    def test_plainWriteWaitsForTheReactor(self):
        """
        What L{writeThrough} saves: Twisted's own C{write} queues the same
        bytes and registers the socket, to send them in a later iteration.
        """
        seen = yield self.sendInConnectionMade(lambda transport: transport.write)
        self.assertEqual(seen, {"buffered": True, "registered": True})


class OrderTests(_LoopbackMixin, TestCase):
    """A reader that stops: what the kernel refuses waits, in order."""

    size = 8 * 1024 * 1024

    @defer.inlineCallbacks
    def test_orderKeptWhenTheKernelRefuses(self):
        """
        8 MiB in writes of uneven sizes through L{writeThrough}, every
        seventh one with plain C{transport.write}, to a client that does
        not read: the first go straight out, then the socket fills and the
        rest waits in the transport. Once the client reads again, it gets
        every byte, in order.
        """
        server, client = yield self.connect()
        client.transport.pauseProducing()
        transport = server.transport
        send = writeThrough(transport)
        stream = counted(self.size)
        offset = 0
        calls = []  # (through writeThrough?, buffered after the call?)
        sizes = [1, 4093, 65536, 1000, 131072 + 3, 77, 250000]
        while offset < len(stream):
            size = sizes[len(calls) % len(sizes)]
            chunk = stream[offset : offset + size]
            offset += len(chunk)
            through = len(calls) % 7 != 6
            (send if through else transport.write)(chunk)
            calls.append((through, buffered(transport)))

        # Some went straight to the kernel, then it refused and the rest
        # waited in the transport: both paths were taken.
        self.assertEqual(calls[0], (True, False))
        self.assertIn((True, True), calls)
        self.assertIn((False, True), calls)

        client.transport.resumeProducing()
        data = yield client.waitFor(received(len(stream)))
        self.assertTrue(data == stream, firstDifference(data, stream))


    @defer.inlineCallbacks
    def test_kernelFullTransportEmpty(self):
        """
        The socket's buffers are full while the transport holds nothing
        (what the reactor had was all taken): the kernel refuses the whole
        write, and all of it waits in the transport, ahead of what follows.
        """
        server, client = yield self.connect()
        client.transport.pauseProducing()
        transport = server.transport
        stream = counted(self.size)
        # Fill the kernel's buffers by hand, from the start of the stream.
        handle = transport.getHandle()
        offset = 0
        while offset < len(stream):
            try:
                offset += handle.send(stream[offset : offset + 65536])
            except BlockingIOError:
                break
        self.assertLess(offset, len(stream), "the kernel took it all")
        self.assertFalse(buffered(transport))
        send = writeThrough(transport)
        send(stream[offset : offset + 1000])
        self.assertEqual(transport._tempDataLen, 1000)
        send(stream[offset + 1000 :])
        client.transport.resumeProducing()
        data = yield client.waitFor(received(len(stream)))
        self.assertTrue(data == stream, firstDifference(data, stream))

class PeerGoneTests(_LoopbackMixin, TestCase):
    """
    The client is gone before the server writes: the write raises nothing,
    the server's side is closed as Twisted closes it, nothing is logged.
    """

    @defer.inlineCallbacks
    def writeAfter(self, close):
        server, client = yield self.connect()
        close(client.transport)
        # The client's socket is closed before its connectionLost runs, and
        # the server has not read yet: it learns from its own writes.
        yield client.closed
        send = writeThrough(server.transport)
        for _ in range(3):
            send(b"x" * 100000)
        yield server.lost
        # Closed as a lost connection, not by an exception in a handler.
        self.assertTrue(
            server.reason.check(error.ConnectionDone, error.ConnectionLost),
            server.reason,
        )
        self.assertEqual(self.flushLoggedErrors(), [])

    @defer.inlineCallbacks
    def test_reset(self):
        """The client aborts: its RST arrived before the server writes."""
        yield self.writeAfter(lambda transport: transport.abortConnection())

    @defer.inlineCallbacks
    def test_closed(self):
        """The client closes in order (FIN), then the server writes."""
        yield self.writeAfter(lambda transport: transport.loseConnection())


class ClosingTests(_LoopbackMixin, TestCase):
    """
    A transport that is closing takes a L{writeThrough} write as it takes
    C{transport.write}: the same bytes reach the client, or none.
    """

    @defer.inlineCallbacks
    def afterLoseConnection(self, makeWrite):
        """All the client gets when the server writes after C{loseConnection}."""
        server, client = yield self.connect()
        server.transport.write(b"before|")
        server.transport.loseConnection()
        makeWrite(server.transport)(b"after")
        yield client.closed
        yield server.lost
        return client.received

    @defer.inlineCallbacks
    def test_afterLoseConnection(self):
        """
        Twisted still sends what is written before the close has happened:
        so does L{writeThrough}.
        """
        plain = yield self.afterLoseConnection(lambda transport: transport.write)
        self.assertEqual(plain, b"before|after")
        through = yield self.afterLoseConnection(writeThrough)
        self.assertEqual(through, plain)

    @defer.inlineCallbacks
    def afterAbort(self, makeWrite):
        """All the client gets when the server writes after C{abortConnection}."""
        server, client = yield self.connect()
        server.transport.write(b"before|")
        yield client.waitFor(received(len(b"before|")))
        server.transport.abortConnection()
        makeWrite(server.transport)(b"after")
        yield client.closed
        yield server.lost
        return client.received

    @defer.inlineCallbacks
    def test_afterAbort(self):
        """
        Twisted drops what is written after C{abortConnection} ("dropping
        any buffered data"): so does L{writeThrough} (it sent it, before
        it looked at C{_aborting}).
        """
        plain = yield self.afterAbort(lambda transport: transport.write)
        self.assertEqual(plain, b"before|")
        through = yield self.afterAbort(writeThrough)
        self.assertEqual(through, plain)

    @defer.inlineCallbacks
    def afterHalfClose(self, makeWrite):
        """
        All the client gets when the server writes after its half-close went
        out (the client has seen the end of the stream).
        """
        server, client = yield self.connect(client=_HalfCloseableCollector())
        server.transport.write(b"before|")
        server.transport.loseWriteConnection()
        yield client.halfClosed
        makeWrite(server.transport)(b"after")
        client.transport.loseConnection()
        yield client.closed
        yield server.lost
        self.assertEqual(self.flushLoggedErrors(), [])
        return client.received

    @defer.inlineCallbacks
    def test_afterHalfClose(self):
        """
        Twisted drops what is written once the sending side is shut down:
        so does L{writeThrough}, without an error.
        """
        plain = yield self.afterHalfClose(lambda transport: transport.write)
        self.assertEqual(plain, b"before|")
        through = yield self.afterHalfClose(writeThrough)
        self.assertEqual(through, plain)


class NotTCPTests(_LoopbackMixin, TestCase):
    """Transports that are not Twisted's TCP connections are left alone."""

    def test_inMemory(self):
        """A L{StringTransport}'s own C{write}: the bytes are in C{value()}."""
        transport = StringTransport()
        writeThrough(transport)(b"hello")
        self.assertEqual(transport.value(), b"hello")

    @defer.inlineCallbacks
    def test_tls(self):
        """
        Over TLS the write is the TLS transport's own: 1 MiB written through
        it in pieces arrives as the same plaintext, in order.
        """
        stream = counted(1024 * 1024)
        kinds = []

        def onMade(server):
            transport = server.transport
            kinds.append(type(transport))
            write = writeThrough(transport)
            kinds.append(not isinstance(transport, tcp.Connection))
            for start in range(0, len(stream), 50000):
                write(stream[start : start + 50000])

        server, client = yield self.connect(onMade, tls=True)
        self.assertTrue(issubclass(kinds[0], TLSMemoryBIOProtocol), kinds)
        self.assertTrue(kinds[1], "not the TLS transport's own write")
        data = yield client.waitFor(received(len(stream)))
        self.assertTrue(data == stream, firstDifference(data, stream))


class OutboundQueueTests(_LoopbackMixin, TestCase):
    """
    L{OutboundQueue} on a real socket whose reader stops reading: the
    transport pauses it once its buffer fills, what passes C{maxBytes}
    overflows once, and what was taken arrives whole, in order.
    """

    maxBytes = 256 * 1024
    chunk = 16 * 1024
    #: More than the kernel's buffers and the transport's take.
    most = 32 * 1024 * 1024

    @defer.inlineCallbacks
    def test_pausedThenOverflowThenDrained(self):
        server, client = yield self.connect()
        client.transport.pauseProducing()
        overflows = []
        queue = OutboundQueue(
            server.transport, self.maxBytes, lambda: overflows.append(queue.queued)
        )
        stream = counted(self.most)
        offset = 0
        # Until the transport's buffer fills and it pauses the queue.
        while not queue.paused and offset < len(stream):
            self.assertTrue(queue.write(stream[offset : offset + self.chunk]))
            offset += self.chunk
        self.assertTrue(queue.paused, f"never paused after {offset} bytes")
        self.assertEqual(queue.queued, 0)
        # Then it queues, up to maxBytes, and refuses the write past it.
        while queue.write(stream[offset : offset + self.chunk]):
            offset += self.chunk
            self.assertLessEqual(queue.queued, self.maxBytes)
        self.assertEqual(overflows, [self.maxBytes])
        self.assertFalse(queue.write(b"more"))
        self.assertEqual(overflows, [self.maxBytes])

        # The reader catches up: everything taken, and nothing after.
        client.transport.resumeProducing()
        data = yield client.waitFor(received(offset))
        self.assertTrue(data == stream[:offset], firstDifference(data, stream[:offset]))
        self.assertEqual(queue.queued, 0)
        self.assertFalse(queue.paused)
        self.assertEqual(overflows, [self.maxBytes])
        queue.detach()


class OtherTwistedTests(TestCase):
    def test_transportWithoutTheAttributes(self):
        """
        A TCP transport that does not keep the state sendNow looks at (a
        Twisted of another shape) is written to with its own write.
        """
        transport = tcp.Connection.__new__(tcp.Connection)  # no __init__: no state
        written = []
        transport.write = written.append
        sendNow(transport, b"as it is")
        self.assertEqual(written, [b"as it is"])
