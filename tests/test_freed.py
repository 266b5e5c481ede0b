"""
A closed connection is freed by reference counting alone (issue 11, item 3).

Sixty protobuf clients that never read, fed by one broadcaster, then
disconnected, left their protocols, transports, allowances and write buffers
in reference cycles: the server's memory stayed up, and grew with every such
round, until a full garbage collection happened to run. Every test here runs
with the garbage collector off (collected once before, turned back on in the
cleanup): once a connection is closed, weak references to its protocol and
its transport must be dead, on every listener, plain and TLS.
"""

from __future__ import annotations

import gc
import os
import socket
import sys
import tracemalloc
import types
import weakref

from twisted.internet import defer, reactor
from twisted.internet.endpoints import SSL4ClientEndpoint, TCP4ClientEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.testing import StringTransport
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import TestCase

from chatd import tap
from chatd.limits import UNLIMITED, Limits
from chatd.msrp import codec as msrp
from chatd.msrp.protocol import MsrpFactory
from chatd.presence import InMemoryPresenceService
from chatd.protobuf.protocol import ProtobufChatFactory
from tests.support import ProtobufClient, login, message
from tests.test_msgr_helpers import FAST_SCRYPT
from tests.tls import LOOPBACK, clientOptions, makePKI, serverDescription
from tests.twistd import ByteCollector

#: The command line option of each listener, by its service name.
OPTION = {
    "protobuf": "protobuf",
    "msrp": "msrp",
    "msgr": "msgr",
    "msgr-http": "http",
    "metrics": "metrics",
}


def collectorOff(testCase: TestCase) -> None:
    """
    Collect the garbage once, then turn the collector off until the test's
    cleanup: from here on, only reference counting frees anything.
    """
    gc.collect()
    if gc.isenabled():
        gc.disable()
        testCase.addCleanup(gc.enable)


def _describe(thing) -> str:
    kind = type(thing)
    text = f"{kind.__module__}.{kind.__qualname__}"
    if isinstance(thing, types.FrameType):
        text += f" ({thing.f_code.co_qualname})"
    elif isinstance(thing, types.MethodType):
        text += f" ({thing.__func__.__qualname__})"
    elif isinstance(thing, dict):
        text += f" (keys {sorted(map(str, thing))[:6]})"
    return text


def holders(thing, depth: int = 3) -> str:
    """What still refers to C{thing}, a few levels up: the failure message."""
    lines: list[str] = []
    seen = {id(thing)}

    def walk(target, level: int) -> None:
        referrers = gc.get_referrers(target)
        seen.add(id(referrers))  # (it refers to target too)
        for referrer in referrers:
            if id(referrer) in seen or referrer is sys._getframe():
                continue
            seen.add(id(referrer))
            lines.append("  " * level + _describe(referrer))
            if level + 1 < depth:
                walk(referrer, level + 1)

    walk(thing, 0)
    return "\n".join(lines[:60])


class Watched:
    """Weak references to the server-side objects of closed connections."""

    def __init__(self) -> None:
        self.refs: list[tuple[str, weakref.ref]] = []

    def add(self, label: str, thing) -> None:
        if thing is not None:
            self.refs.append((label, weakref.ref(thing)))

    def connection(self, label: str, protocol) -> None:
        """C{protocol}, its transport, and what lies under a TLS transport."""
        self.add(f"{label} protocol", protocol)
        transport = protocol.transport
        self.add(f"{label} transport", transport)
        under = getattr(transport, "transport", None)
        if under is not None:
            self.add(f"{label} TCP transport under TLS", under)

    def alive(self) -> list[str]:
        found = []
        for label, ref in self.refs:
            thing = ref()
            if thing is not None:
                found.append(f"{label} {_describe(thing)} is alive, held by:\n{holders(thing)}")
                del thing
        return found


def lines(count: int):
    """A predicate: the first C{count} complete lines, once they arrived."""

    def check(data: bytes):
        if data.count(b"\n") < count:
            return None
        return data.decode("utf-8").split("\n")[:count]

    return check


def containing(text: bytes):
    return lambda data: data if text in data else None


class ServerMixin:
    """chatd's whole service tree on 127.0.0.1, plain or TLS."""

    timeout = 60
    #: Whether the listeners are TLS.
    tls = False

    def startServer(self, labels, extra=()):
        collectorOff(self)
        self.pki = makePKI(self.mktemp()) if self.tls else None
        argv = []
        for label, option in OPTION.items():
            if label not in labels:
                value = "none"
            elif self.tls:
                value = serverDescription(self.pki)
            else:
                value = f"tcp:0:interface={LOOPBACK}"
            argv += [f"--{option}", value]
        if {"msgr", "msgr-http"} & set(labels):
            argv += ["--db", os.path.abspath(self.mktemp()) + ".sqlite3"]
        else:
            argv += ["--db", "none"]
        config = tap.Options()
        config.parseOptions(argv + list(extra))
        top = tap.makeService(config, reactor)
        if top.accounts is not None:
            top.accounts.scrypt = FAST_SCRYPT
        self.top = top
        self.clients: list[ByteCollector] = []
        self.ports = {}
        top.startService()
        self.addCleanup(self._stopServer)
        for label in labels:
            self.ports[label] = top.getServiceNamed(label).port.getHost().port
        return top

    @defer.inlineCallbacks
    def _stopServer(self):
        for client in self.clients:
            if client.transport is not None and client.transport.connected:
                client.transport.abortConnection()
        for client in self.clients:
            yield client.closed
        yield self.top.stopService()

    @defer.inlineCallbacks
    def connect(self, label: str):
        if self.tls:
            endpoint = SSL4ClientEndpoint(
                reactor, LOOPBACK, self.ports[label], clientOptions(self.pki)
            )
        else:
            endpoint = TCP4ClientEndpoint(reactor, LOOPBACK, self.ports[label])
        # (Not connectProtocol: it makes a class per connection, which only
        # the collector frees, with the client in it.)
        client = yield endpoint.connect(Factory.forProtocol(ByteCollector))
        self.clients.append(client)
        return client

    def sessions(self, label: str) -> list:
        return list(self.top.getServiceNamed(label).factory.connections)

    def httpConnections(self) -> list:
        """The counted HTTP connections (each wraps an HTTPChannel)."""
        return list(self.top.getServiceNamed("msgr-http").factory.protocols)

    @defer.inlineCallbacks
    def closeAll(self, labels):
        """Cut every client, and wait until the server has seen every close."""
        for client in self.clients:
            client.transport.abortConnection()
        for client in self.clients:
            yield client.closed
        for label in labels:
            if label == "msgr-http":
                while self.httpConnections():
                    yield deferLater(reactor, 0.01, lambda: None)
            else:
                yield self.top.getServiceNamed(label).factory.connections.whenEmpty()
        # whenEmpty fires inside the last connectionLost: let it return.
        yield deferLater(reactor, 0, lambda: None)
        self.clients = []

    @defer.inlineCallbacks
    def http(self, request: bytes) -> defer.Deferred:
        """One HTTP/1.1 request on a connection left open; the client."""
        client = yield self.connect("msgr-http")
        client.transport.write(request)
        yield client.waitFor(containing(b"\r\n\r\n"))
        return client

    def form(self, path: str, body: str) -> bytes:
        data = body.encode("utf-8")
        return (
            f"POST {path} HTTP/1.1\r\nHost: localhost\r\n"
            f"Content-Type: application/x-www-form-urlencoded\r\n"
            f"Content-Length: {len(data)}\r\n\r\n"
        ).encode("ascii") + data

    def recordBuilt(self, label: str, watched: Watched) -> None:
        """Watch every protocol C{label}'s factory builds from now on."""
        factory = self.top.getServiceNamed(label).factory
        build = factory.buildProtocol

        def buildProtocol(addr):
            protocol = build(addr)
            watched.add(f"{label} protocol", protocol)
            return protocol

        factory.buildProtocol = buildProtocol
        self.addCleanup(delattr, factory, "buildProtocol")

    @staticmethod
    def channel(counted):
        """The L{HTTPChannel} in a counted HTTP connection."""
        generic = counted.wrappedProtocol  # twisted.web's HTTP/1.1-or-2 switch
        return getattr(generic, "_channel", generic)

    def assertFreed(self, watched: Watched) -> None:
        alive = watched.alive()
        self.assertEqual(alive, [], "\n\n".join(alive))


class FreedOnEveryListener(ServerMixin):
    """Every protocol of every listener, closed, is freed without the collector."""

    @defer.inlineCallbacks
    def test_protobuf(self):
        """
        A broadcaster feeds two clients that never read, and a third that
        never logs in: once all are cut, every protocol and transport is gone.
        """
        self.startServer(["protobuf"], ["--max-sendq", "65536", "--rate", "0"])
        broadcaster = yield self.connect("protobuf")
        broadcaster.transport.write(login("caster").SerializeToString())
        yield broadcaster.waitFor(containing(b"welcome, caster"))
        for name in ("deaf1", "deaf2"):
            deaf = yield self.connect("protobuf")
            deaf.transport.write(login(name).SerializeToString())
            yield deaf.waitFor(containing(b"welcome, " + name.encode()))
            deaf.transport.pauseProducing()  # it reads no more
        yield self.connect("protobuf")  # never logs in: its deadline is pending
        for _ in range(40):
            broadcaster.transport.write(message("all", "x" * 2000).SerializeToString())
            yield deferLater(reactor, 0.005, lambda: None)
        watched = Watched()
        for session in self.sessions("protobuf"):
            watched.connection("protobuf", session)
            watched.add("outbound queue", session.outbound)
        del session
        yield self.closeAll(["protobuf"])
        self.assertFreed(watched)

    @defer.inlineCallbacks
    def test_msrp(self):
        """
        MSRP, both modes: a binary sender is in the middle of a file to a
        binary recipient that does not read, a person on nc is logged in; all
        are cut.
        """
        self.startServer(["msrp"])
        recipient = yield self.connect("msrp")
        recipient.transport.write(b"recv" + msrp.encodeListRequest())
        yield recipient.waitFor(containing(b"recv"))
        recipient.transport.pauseProducing()  # it reads no more
        sender = yield self.connect("msrp")
        sender.transport.write(b"send" + msrp.encodeListRequest())
        yield sender.waitFor(containing(b"send"))
        person = yield self.connect("msrp")
        person.transport.write(b"nc01\r\n")
        yield person.waitFor(containing(b"Hola, nc01"))
        size = 8 * 1024 * 1024
        sender.transport.write(msrp.encodeFileHeader(b"recv", b"big.bin", size))
        for _ in range(16):
            sender.transport.write(b"z" * 65536)
            yield deferLater(reactor, 0.005, lambda: None)
        streaming = [s for s in self.sessions("msrp") if s.sink is not None]
        self.assertEqual(len(streaming), 1, "the file is under way")
        del streaming
        watched = Watched()
        for session in self.sessions("msrp"):
            watched.connection(f"msrp {session.wireName!r}", session)
        del session
        yield self.closeAll(["msrp"])
        self.assertFreed(watched)

    @defer.inlineCallbacks
    def test_msgr(self):
        """
        The MSGR HTTP API (a kept-alive connection after a login) and chat
        socket (one bound, one not): all cut, all freed.
        """
        self.startServer(["msgr-http", "msgr"])
        client = yield self.http(self.form("/usuariocrear", "usr=Ana&pass=secreto"))
        yield client.waitFor(containing(b"702"))
        client = yield self.http(self.form("/status", "usr=Ana&pass=secreto"))
        body = yield client.waitFor(containing(b"701||"))
        token = body.split(b"701||", 1)[1].split(b"\r\n")[0].decode("ascii")
        chat = yield self.connect("msgr")
        chat.transport.write(f"#HOLA||{token}||Ana||s3rv1d0r||Ana\n".encode("utf-8"))
        answer = yield chat.waitFor(lines(1))
        self.assertEqual(answer, ["#RESPUESTA||-||1||#HOLA||Ana||701"])
        yield self.connect("msgr")  # never binds
        while len(self.sessions("msgr")) < 2:
            yield deferLater(reactor, 0.01, lambda: None)
        # A request whose body is cut short, left hanging.
        cut = yield self.connect("msgr-http")
        cut.transport.write(self.form("/status", "usr=Ana&pass=secreto" + "x" * 100)[:-50])
        while not any(
            channel.requests for channel in map(self.channel, self.httpConnections())
        ):
            yield deferLater(reactor, 0.01, lambda: None)
        watched = Watched()
        for session in self.sessions("msgr"):
            watched.connection("msgr", session)
            watched.add("outbound queue", session.outbound)
        for counted in self.httpConnections():
            watched.connection("http", counted)
            watched.add("http channel", counted.wrappedProtocol)
            channel = self.channel(counted)
            watched.add("http channel inside", channel)
            for request in channel.requests:
                watched.add("http request", request)
        del session, counted, channel, request
        yield self.closeAll(["msgr", "msgr-http"])
        self.assertFreed(watched)


    @defer.inlineCallbacks
    def test_metrics(self):
        """
        The metrics listener: a scrape on a kept-alive connection, and a
        request whose body is cut short; both cut, both freed.
        """
        self.startServer(["metrics"])
        built = Watched()
        self.recordBuilt("metrics", built)
        scraper = yield self.connect("metrics")
        scraper.transport.write(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        yield scraper.waitFor(containing(b"chatd_"))
        cut = yield self.connect("metrics")
        cut.transport.write(
            b"POST /metrics HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\nab"
        )
        def seen(kind: str) -> int:
            return sum(1 for label, _ in watched.refs if label == kind)

        watched = Watched()
        for _ in range(500):
            if seen("http channel protocol") == 2 and seen("http request") == 1:
                break
            watched = Watched()
            for label, ref in built.refs:
                generic = ref()
                channel = getattr(generic, "_channel", generic)
                if channel is not None and channel.transport is not None:
                    watched.add("http protocol", generic)
                    watched.connection("http channel", channel)
                    for request in channel.requests:
                        watched.add("http request", request)
                generic = channel = request = None
            yield deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(
            (seen("http channel protocol"), seen("http request")),
            (2, 1),
            "two connections, the request cut short under way",
        )
        for client in self.clients:
            client.transport.abortConnection()
            yield client.closed
        self.clients = []
        # The server sees each close on its next read of the socket.
        for _ in range(100):
            if not watched.alive():
                break
            yield deferLater(reactor, 0.01, lambda: None)
        self.assertFreed(watched)


class PlainTests(FreedOnEveryListener, TestCase):
    """Plain TCP listeners."""

    @defer.inlineCallbacks
    def test_refused(self):
        """
        Connections refused by the connection limit, on every listener, are
        told so in their protocol's terms and freed once closed.
        """
        labels = ["protobuf", "msrp", "msgr", "msgr-http"]
        self.startServer(labels, ["--max-conns", "1"])
        first = yield self.connect("msrp")
        first.transport.write(b"uno1")
        while not self.sessions("msrp"):
            yield deferLater(reactor, 0.01, lambda: None)
        watched = Watched()
        watched.connection("msrp", self.sessions("msrp")[0])
        for label in labels:
            self.recordBuilt(label, watched)
        expected = {
            "protobuf": b"connection refused",
            "msrp": "El servidor tiene demasiadas conexiones".encode("utf-8"),
            "msgr": b"#RESPUESTA||-||0||#HOLA||-||803",
            "msgr-http": b"503 Service Unavailable",
        }
        for label in labels:
            client = yield self.connect(label)
            yield client.closed
            self.assertIn(expected[label], client.received)
        self.assertEqual(len(watched.refs), 2 + len(labels), "each refused one was seen")
        yield self.closeAll(["protobuf", "msrp", "msgr"])
        self.assertFreed(watched)


class TLSTests(FreedOnEveryListener, TestCase):
    """The same, every listener behind an C{ssl:} endpoint."""

    tls = True


class SlowReadersMemoryTests(ServerMixin, TestCase):
    """
    The memory of slow readers with queued data is given back when they
    disconnect, by reference counting alone.
    """

    readers = 20

    @defer.inlineCallbacks
    def test_memoryBack(self):
        self.startServer(["protobuf"], ["--max-sendq", "262144", "--rate", "0"])
        tracemalloc.start()
        self.addCleanup(tracemalloc.stop)
        broadcaster = yield self.connect("protobuf")
        broadcaster.transport.write(login("caster").SerializeToString())
        yield broadcaster.waitFor(containing(b"welcome, caster"))
        baseline = tracemalloc.get_traced_memory()[0]
        for number in range(self.readers):
            deaf = yield self.connect("protobuf")
            deaf.transport.write(login(f"deaf{number}").SerializeToString())
            yield deaf.waitFor(containing(b"welcome"))
            deaf.transport.pauseProducing()  # it reads no more
        # Small kernel buffers on both ends, so that what is sent to the
        # readers waits in the server's memory, not the kernel's.
        for session in self.sessions("protobuf"):
            session.transport.getHandle().setsockopt(
                socket.SOL_SOCKET, socket.SO_SNDBUF, 4096
            )
        del session
        for client in self.clients:
            client.transport.getHandle().setsockopt(
                socket.SOL_SOCKET, socket.SO_RCVBUF, 4096
            )
        # Each reader gets its kernel buffers' worth, then up to --max-sendq
        # queued in the server; stop short of the queue limit, so they stay.
        for _ in range(60):
            broadcaster.transport.write(message("all", "q" * 2000).SerializeToString())
            yield deferLater(reactor, 0.005, lambda: None)
        while broadcaster.received.count(b"delivered to") < 60:
            yield deferLater(reactor, 0.01, lambda: None)
        loaded = tracemalloc.get_traced_memory()[0] - baseline
        self.assertGreater(loaded, self.readers * 60 * 1024, "the readers hold queued data")
        for client in self.clients[1:]:
            client.transport.abortConnection()
            yield client.closed
        # The test's own clients of them go too: the whole process is measured.
        del self.clients[1:], client, deaf
        while len(self.sessions("protobuf")) > 1:
            yield deferLater(reactor, 0.01, lambda: None)
        yield deferLater(reactor, 0, lambda: None)
        left = tracemalloc.get_traced_memory()[0] - baseline
        self.assertLess(left, loaded / 10, f"{left} of {loaded} bytes still held")


class StringTransportTests(TestCase):
    """The same with in-memory transports, for each session factory."""

    def setUp(self) -> None:
        collectorOff(self)
        self.clock = Clock()
        self.presence = InMemoryPresenceService()
        self.limits = Limits(maxSendQueue=1024, loginTimeout=30.0, closeGrace=10.0)

    def test_protobufSlowReader(self):
        """
        A protobuf client whose transport is paused, with bytes queued for
        it, and one that never logged in: both lost, both freed, and no timer
        is left on the clock.
        """
        factory = ProtobufChatFactory(
            self.presence, self.clock, limits=self.limits, metrics=self.presence.metrics
        )
        sender, slow, idle = (ProtobufClient(factory) for _ in range(3))
        sender.send(login("snd"))
        slow.send(login("slow"))
        slow.protocol.outbound.pauseProducing()
        sender.send(message("slow", "hola"))
        self.assertEqual(slow.protocol.outbound.queued > 0, True)
        watched = Watched()
        for client in (sender, slow, idle):
            watched.add("protocol", client.protocol)
            watched.add("transport", client.transport)
            watched.add("queue", client.protocol.outbound)
            client.disconnect()
        del sender, slow, idle, client
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(watched.alive(), [])

    def test_msrpFileUnderWay(self):
        """Two MSRP sessions with a file between them, both lost, are freed."""
        factory = MsrpFactory(
            self.presence, self.clock, limits=self.limits, metrics=self.presence.metrics
        )
        protocols = []
        for name in (b"recv", b"send"):
            transport = StringTransport()
            protocol = factory.buildProtocol(None)
            protocol.makeConnection(transport)
            protocol.dataReceived(name + msrp.encodeListRequest())
            protocols.append(protocol)
        recipient, sender = protocols
        recipient.outbound.pauseProducing()
        sender.dataReceived(msrp.encodeFileHeader(b"recv", b"f.bin", 100) + b"x" * 10)
        self.assertIsNotNone(sender.sink)
        watched = Watched()
        for protocol in protocols:
            watched.add("protocol", protocol)
            watched.add("transport", protocol.transport)
        for protocol in protocols:
            protocol.connectionLost(None)
        del protocols, protocol, recipient, sender, transport
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(watched.alive(), [])

    def test_unlimitedProtobuf(self):
        """With every limit off (no queue, no deadline) too."""
        factory = ProtobufChatFactory(
            self.presence, self.clock, limits=UNLIMITED, metrics=self.presence.metrics
        )
        client = ProtobufClient(factory)
        client.send(login("solo"))
        watched = Watched()
        watched.add("protocol", client.protocol)
        watched.add("transport", client.transport)
        client.disconnect()
        del client
        self.assertEqual(watched.alive(), [])
