"""
MSRP files between MSRP users on two real C{twistd chatd} nodes sharing a
real redis-server: byte for byte with the ACK back, memory bounded on both
nodes for a 64 MiB file, and what each side sees when the other leaves
mid-file.
"""

from __future__ import annotations

import hashlib
import os

from twisted.internet import defer, protocol, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IPullProducer
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from chatd.harness import readStats, resetPeak
from chatd.msrp.codec import (
    Ack,
    MsrpFrameDecoder,
    encodeAck,
    encodeError,
    encodeFileHeader,
    encodeListRequest,
    wireText,
)
from chatd.msrp.texts import errRecipientGone
from chatd.testservers import redisServer
from tests import test_cluster_twistd as cluster
from tests.test_client_support import ClientTestMixin
from tests.twistd import ByteCollector, TwistdProcess

MiB = 1024 * 1024


class StreamReceiver(protocol.Protocol):
    """
    Hashes everything it receives without keeping it (a 64 MiB file), and
    keeps the last bytes; fires waiters once C{count} bytes arrived.
    """

    def __init__(self) -> None:
        self.digest = hashlib.sha256()
        self.count = 0
        self.tail = b""
        self.closed = defer.Deferred()
        self._waiters: list[tuple[int, defer.Deferred]] = []

    def dataReceived(self, data: bytes) -> None:
        self.digest.update(data)
        self.count += len(data)
        self.tail = (self.tail + data)[-4096:]
        for waiter in list(self._waiters):
            if self.count >= waiter[0]:
                self._waiters.remove(waiter)
                waiter[1].callback(None)

    def waitForCount(self, count: int) -> defer.Deferred:
        if self.count >= count:
            return defer.succeed(None)
        d = defer.Deferred()
        self._waiters.append((count, d))
        return d

    def connectionLost(self, reason) -> None:
        self.closed.callback(None)


@implementer(IPullProducer)
class PieceProducer:
    """Writes C{piece} C{times} times as its transport takes them."""

    def __init__(self, transport, piece: bytes, times: int) -> None:
        self.transport = transport
        self.piece = piece
        self.left = times
        self.done = defer.Deferred()

    def resumeProducing(self) -> None:
        if self.left:
            self.left -= 1
            self.transport.write(self.piece)
        if not self.left:
            self.transport.unregisterProducer()
            self.done.callback(None)

    def stopProducing(self) -> None:
        pass


class CrossNodeFileTests(ClientTestMixin, TestCase):
    timeout = 120

    def setUp(self) -> None:
        super().setUp()
        self.redis = redisServer()
        self.prefix = f"files{os.getpid()}-{next(cluster._prefixes)}:"
        self.nodes: dict[str, dict[str, int]] = {}
        self.servers: dict[str, TwistdProcess] = {}

    # The cluster's twistd tests start their nodes the same way.
    startNode = cluster.TwoNodeTests.startNode

    @defer.inlineCallbacks
    def connect(self, nodeId: str, name: bytes, kind=ByteCollector):
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.nodes[nodeId]["msrp"])
        client = yield connectProtocol(endpoint, kind())
        self.addCleanup(self._close, client)
        client.transport.write(name)
        return client

    def _close(self, client):
        if client.transport.connected:
            client.transport.abortConnection()
            return client.closed

    @defer.inlineCallbacks
    def seen(self, client: ByteCollector, name: bytes):
        """Ask C{client}'s node for its list until C{name} is in it."""
        while True:
            client.received = b""
            client.transport.write(encodeListRequest())
            yield client.waitFor(lambda r: r.endswith(b"\x00") and len(r) > 4)
            if name in client.received:
                client.received = b""
                return
            yield task.deferLater(reactor, 0.05, lambda: None)

    @defer.inlineCallbacks
    def test_fileOfSeveralMiBAndItsAck(self):
        yield self.startNode("a")
        yield self.startNode("b")
        bobb = yield self.connect("b", b"bobb")
        alic = yield self.connect("a", b"alic")
        yield self.seen(alic, b"bobb")
        content = os.urandom(5 * MiB + 123)
        alic.transport.write(encodeFileHeader(b"bobb", b"cinco.bin", len(content)) + content)
        header = encodeFileHeader(b"alic", b"cinco.bin", len(content))
        yield bobb.waitFor(lambda r: len(r) >= len(header) + len(content))
        self.assertEqual(bobb.received, header + content)
        bobb.transport.write(encodeAck(b"cinco.bin"))
        yield alic.waitFor(lambda r: len(r) >= len(encodeAck(b"cinco.bin")))
        self.assertEqual(list(MsrpFrameDecoder(fromServer=True).feed(alic.received)), [Ack(b"cinco.bin")])

    @defer.inlineCallbacks
    def test_64MiBWithBoundedMemory(self):
        a = yield self.startNode("a")
        b = yield self.startNode("b")
        bobb = yield self.connect("b", b"bobb", StreamReceiver)
        alic = yield self.connect("a", b"alic")
        yield self.seen(alic, b"bobb")
        piece = os.urandom(64 * 1024)
        times = 1024  # 64 MiB
        expected = hashlib.sha256()
        header = encodeFileHeader(b"alic", b"grande.bin", len(piece) * times)
        expected.update(header)
        for _ in range(times):
            expected.update(piece)
        pids = {"a": a.transport.pid, "b": b.transport.pid}
        before = {}
        for node, pid in pids.items():
            resetPeak(pid)
            before[node] = readStats(pid).rss
        alic.transport.write(encodeFileHeader(b"bobb", b"grande.bin", len(piece) * times))
        producer = PieceProducer(alic.transport, piece, times)
        alic.transport.registerProducer(producer, False)
        # bobb stops reading a quarter of the way: the credit must stop
        # alic within a window, whatever is left of the file.
        yield bobb.waitForCount(16 * MiB)
        bobb.transport.pauseProducing()
        yield self.stalled(producer)
        self.assertGreater(producer.left, times // 4)
        for node, pid in pids.items():
            growth = readStats(pid).peak - before[node]
            self.assertLess(growth, 32 * MiB, f"node {node} grew {growth} bytes")
        bobb.transport.resumeProducing()
        yield bobb.waitForCount(len(header) + len(piece) * times)
        self.assertEqual(bobb.digest.hexdigest(), expected.hexdigest())
        for node, pid in pids.items():
            growth = readStats(pid).peak - before[node]
            self.assertLess(growth, 32 * MiB, f"node {node} grew {growth} bytes")

    @defer.inlineCallbacks
    def stalled(self, producer: PieceProducer):
        """Fire once C{producer} has written nothing for half a second."""
        left = producer.left
        while True:
            yield task.deferLater(reactor, 0.5, lambda: None)
            if producer.left == left:
                return
            left = producer.left

    @defer.inlineCallbacks
    def test_senderLeavesMidFile(self):
        yield self.startNode("a")
        yield self.startNode("b")
        bobb = yield self.connect("b", b"bobb")
        alic = yield self.connect("a", b"alic")
        yield self.seen(alic, b"bobb")
        alic.transport.write(encodeFileHeader(b"bobb", b"f.txt", 100000) + b"x" * 1000)
        yield bobb.waitFor(lambda r: r.endswith(b"x" * 1000))
        alic.transport.loseConnection()
        cut = encodeError(wireText(errRecipientGone("alic", "f.txt")))
        yield bobb.waitFor(lambda r: r.endswith(cut))
        header = encodeFileHeader(b"alic", b"f.txt", 100000)
        self.assertEqual(bobb.received, header + b"x" * 1000 + bytes(99000) + cut)

    @defer.inlineCallbacks
    def test_receiverLeavesMidFile(self):
        yield self.startNode("a")
        yield self.startNode("b")
        bobb = yield self.connect("b", b"bobb")
        alic = yield self.connect("a", b"alic")
        yield self.seen(alic, b"bobb")
        alic.transport.write(encodeFileHeader(b"bobb", b"f.txt", 100000) + b"x" * 1000)
        yield bobb.waitFor(lambda r: r.endswith(b"x" * 1000))
        bobb.transport.loseConnection()
        gone = encodeError(wireText(errRecipientGone("bobb", "f.txt")))
        yield alic.waitFor(lambda r: r.endswith(gone))
        self.assertEqual(alic.received, gone)

    @defer.inlineCallbacks
    def test_filesBetweenMsrpAndMsgrAcrossNodes(self):
        """Whole files, both ways, between an MSRP user on a and an MSGR user on b."""
        yield self.startNode("a")
        yield self.startNode("b")
        msrpFile = os.path.join(self.directory, "de-msrp.txt")
        msgrFile = os.path.join(self.directory, "de-msgr.txt")
        with open(msrpFile, "wb") as f:
            f.write(b"hola desde MSRP en a\n")
        with open(msgrFile, "wb") as f:
            f.write(b"hola desde MSGR en b\n")
        clt2Inbox = os.path.join(self.directory, "clt2")
        lunaInbox = os.path.join(self.directory, "luna")
        self.ports = self.nodes["b"]
        luna = yield self.loggedIn("msgr", "luna", "--password", "l", "--register", "--save-dir", lunaInbox)
        self.ports = self.nodes["a"]
        clt2 = yield self.loggedIn("msrp", "clt2", "--save-dir", clt2Inbox, "--ack-wait", "0")
        clt2.write(f"send luna {msrpFile}\n")
        yield luna.waitFor("[clt2] file de-msrp.txt")
        yield clt2.waitFor("* sent de-msrp.txt to luna (21 bytes)")
        luna.write(f"send clt2 {msgrFile}\n")
        yield clt2.waitFor(f"[luna] file de-msgr.txt (21 bytes) saved as {clt2Inbox}/de-msgr.txt")
        self.assertEqual(self.saved(clt2Inbox), {"de-msgr.txt": b"hola desde MSGR en b\n"})
        self.assertEqual(self.saved(lunaInbox), {"de-msrp.txt": b"hola desde MSRP en a\n"})

    @defer.inlineCallbacks
    def test_peerToPeerOfferToAnotherNode(self):
        """
        A client of the peer-to-peer variant on a offers a file to a binary
        client on b: a fetches it from the offered port and hands it over whole.
        """
        a = yield self.startNode("a")
        yield self.startNode("b")
        bobb = yield self.connect("b", b"bobb")
        content = os.urandom(100000)

        class Serve(protocol.Protocol):
            def connectionMade(self):
                self.transport.write(content)
                self.transport.loseConnection()

        factory = protocol.ServerFactory.forProtocol(Serve)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        abcd = yield self.connect("a", b"abcd")
        while b"msrp abcd connected" not in a.output:
            yield task.deferLater(reactor, 0.02, lambda: None)
        offer = f"bobb f.bin {len(content)} {port.getHost().port} 10.9.9.9"
        abcd.transport.write(b"\x00\x02" + offer.encode())
        header = encodeFileHeader(b"abcd", b"f.bin", len(content))
        yield bobb.waitFor(lambda r: len(r) >= len(header) + len(content))
        self.assertEqual(bobb.received, header + content)
        self.assertEqual(abcd.received, b"")

    @defer.inlineCallbacks
    def test_senderNodeKilledMidFile(self):
        """
        kill -9 of the sender's node: the recipient's file is cut once the
        node's users are reaped (--cluster-ttl), before the idle timeout.
        """
        yield self.startNode("a", "--cluster-ttl", "1.5")
        yield self.startNode("b", "--cluster-ttl", "1.5")
        bobb = yield self.connect("b", b"bobb")
        alic = yield self.connect("a", b"alic")
        yield self.seen(alic, b"bobb")
        alic.transport.write(encodeFileHeader(b"bobb", b"f.txt", 100000) + b"x" * 1000)
        yield bobb.waitFor(lambda r: r.endswith(b"x" * 1000))
        yield self.servers["a"].signal("KILL")
        cut = encodeError(wireText(errRecipientGone("alic", "f.txt")))
        yield bobb.waitFor(lambda r: r.endswith(cut))
        header = encodeFileHeader(b"alic", b"f.txt", 100000)
        self.assertEqual(bobb.received, header + b"x" * 1000 + bytes(99000) + cut)
        self.assertIn(b"freed 1 names of nodes whose heartbeat is gone", self.servers["b"].output)
