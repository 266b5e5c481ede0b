"""
MSRP files streamed between MSRP users on two cluster nodes
(chatd/msrp/remote.py): two nodes in one process on a real redis-server,
each with its own MSRP factory, the clients over bounded in-memory
transports (so a recipient that does not read fills its transport) and the
factories on an injected clock (the idle timeout).
"""

from __future__ import annotations

import gc
import itertools
import weakref
import os

import txredisapi

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import TestCase

from chatd.cluster.presence import ClusterPresenceService
from chatd.cluster.redis import ClusterConnection, parseClusterURL
from chatd.limits import Limits
from chatd.metrics import ChatdMetrics
from chatd.msrp.codec import (
    Message,
    encodeAck,
    encodeError,
    encodeFileHeader,
    encodeMessage,
    wireText,
)
from chatd.msrp.protocol import P2P, MsrpFactory
from chatd.msrp.relay import FILL_MAX
from chatd.msrp.remote import CHUNK, WINDOW, ReceiverWindow, SenderCredit
from chatd.msrp.texts import (
    errAckSenderGone,
    errFileStalled,
    errNoFiles,
    errRecipientGone,
    errRemoteVariant,
)
from chatd.testservers import redisServer
from tests.test_msrp_protocol import MsrpClient

_prefixes = itertools.count()


class CreditTests(TestCase):
    """The credit's arithmetic on each side."""

    def test_senderPausedUntilAcceptedAndWhenSpent(self) -> None:
        credit = SenderCredit()
        self.assertFalse(credit.mayRead())
        credit.grant(0)  # accepted, waiting its turn
        self.assertFalse(credit.mayRead())
        credit.grant(WINDOW)
        self.assertTrue(credit.mayRead())
        credit.spend(WINDOW - 1)
        self.assertTrue(credit.mayRead())
        credit.spend(CHUNK)  # one read past the credit, then paused
        self.assertFalse(credit.mayRead())
        credit.grant(WINDOW)
        self.assertTrue(credit.mayRead())

    def test_windowToppedUpAtAQuarter(self) -> None:
        window = ReceiverWindow(1000)
        self.assertEqual(window.topUp(10**6), 1000)
        self.assertEqual(window.topUp(10**6), 0)  # all of it on its way
        window.arrived(249)
        self.assertEqual(window.topUp(10**6), 0)  # more than 3/4 still due
        window.arrived(1)
        self.assertEqual(window.topUp(10**6), 250)
        self.assertEqual(window.outstanding(), 1000)

    def test_windowNeverPastTheEnd(self) -> None:
        window = ReceiverWindow(1000)
        self.assertEqual(window.topUp(300), 300)
        window.arrived(300)
        self.assertEqual(window.topUp(300), 0)


class TwoNodes(TestCase):
    """Nodes a and b, each with an MSRP factory on a clock of its own."""

    timeout = 60

    @defer.inlineCallbacks
    def setUp(self):
        self.redis = redisServer()
        self.prefix = f"remote{os.getpid()}-{next(_prefixes)}:"
        self.nodes = {}
        for nodeId in ("a", "b"):
            connection = ClusterConnection(parseClusterURL(self.redis.url), nodeId, self.prefix)
            metrics = ChatdMetrics()
            presence = ClusterPresenceService(connection, lambda n: False, metrics, 10.0, task.Clock())
            presence.startService()
            self.addCleanup(self._stop, presence)
            yield presence.whenReady()
            clock = task.Clock()
            factory = MsrpFactory(
                presence, clock, maxFileSize=10**9, maxQueued=1024**2,
                limits=Limits(fileIdleTimeout=30), metrics=metrics,
            )
            self.nodes[nodeId] = (presence, factory, clock)

    def _stop(self, presence):
        if presence.running:
            return presence.stopService()

    def until(self, predicate):
        """Fire once C{predicate()} is true (Redis answers on the reactor)."""

        def check():
            if predicate():
                return defer.succeed(None)
            return task.deferLater(reactor, 0.002, check)

        return check()

    @defer.inlineCallbacks
    def client(self, nodeId, name: bytes, bufferSize=None):
        presence, factory, _ = self.nodes[nodeId]
        client = MsrpClient(factory, name, bufferSize)
        self.addCleanup(lambda: client.closed or client.disconnect())
        yield self.until(lambda: presence.infoFor(client.protocol) is not None)
        other = self.nodes["b" if nodeId == "a" else "a"][0]
        yield self.until(lambda: other.lookup(name.decode().strip()) is not None)
        return client

    def received(self, client) -> bytearray:
        if not hasattr(client, "got"):
            client.got = bytearray()
        client.got += client.wire()
        return client.got


class CrossNodeTests(TwoNodes):
    @defer.inlineCallbacks
    def test_fileArrivesWholeAndAckComesBack(self):
        alic = yield self.client("a", b"alic")
        pepe = yield self.client("a", b"pepe")
        bobb = yield self.client("b", b"bobb")
        content = os.urandom(3 * WINDOW + 12345)
        alic.send(encodeFileHeader(b"bobb", b"f.bin", len(content), 7, b"10.0.0.1"))
        for start in range(0, len(content), 65536):
            alic.send(content[start:start + 65536])
        # Its sender's message after the file follows it.
        alic.send(encodeMessage(b"bobb", b"after"))
        header = encodeFileHeader(b"alic", b"f.bin", len(content), 7, b"10.0.0.1")
        after = encodeMessage(b"alic", b"after")
        yield self.until(lambda: len(self.received(bobb)) >= len(header) + len(content) + len(after))
        self.assertEqual(bytes(bobb.got), header + content + after)
        bobb.send(encodeAck(b"f.bin"))
        yield self.until(lambda: self.received(alic))
        self.assertEqual(bytes(alic.got), encodeAck(b"f.bin"))
        self.assertFalse(alic.closed)
        # Another user's message sent after a file of at most 1 MiB waits
        # behind it, as on one node.
        small = os.urandom(FILL_MAX)
        alic.send(encodeFileHeader(b"bobb", b"s", len(small)) + small[:1000])
        yield self.until(lambda: len(self.received(bobb)) > len(header) + len(content) + len(after))
        pepe.send(encodeMessage(b"bobb", b"behind"))
        alic.send(small[1000:])
        whole = encodeFileHeader(b"alic", b"s", len(small)) + small + encodeMessage(b"pepe", b"behind")
        yield self.until(lambda: bytes(self.received(bobb)).endswith(whole))

    @defer.inlineCallbacks
    def test_ackBeforeTheEndNotice(self):
        """
        The recipient has the whole file, and ACKs it, before node A's
        "all sent" notice reaches node B (they are separate messages through
        Redis): the ACK still reaches the sender. B ends the file at its
        last byte, as a single node does, instead of waiting for the notice;
        the ACK used to be refused ("no file ... to acknowledge") and the
        sender waited for it for ever.
        """
        presenceB = self.nodes["b"][0]
        held = []
        ended = presenceB.inboxHandlers["fs-end"]
        presenceB.inboxHandlers["fs-end"] = held.append
        alic = yield self.client("a", b"alic")
        bobb = yield self.client("b", b"bobb")
        content = os.urandom(WINDOW // 2)
        alic.send(encodeFileHeader(b"bobb", b"f.bin", len(content)) + content)
        header = encodeFileHeader(b"alic", b"f.bin", len(content))
        yield self.until(lambda: len(self.received(bobb)) >= len(header) + len(content))
        yield self.until(lambda: held)
        bobb.send(encodeAck(b"f.bin"))
        for data in held:
            ended(data)
        yield self.until(lambda: self.received(alic) or self.received(bobb)[len(header) + len(content):])
        self.assertEqual(bytes(bobb.got), header + content)
        self.assertEqual(bytes(alic.got), encodeAck(b"f.bin"))

    @defer.inlineCallbacks
    def spy(self, channel):
        """The payloads published on C{channel}, as Redis delivers them."""
        payloads = []
        connection = ClusterConnection(parseClusterURL(self.redis.url), "spy", self.prefix)
        connection.channels = [channel]
        connection.onMessage = lambda c, message: payloads.append(message)
        connection.startService()
        self.addCleanup(connection.stopService)
        yield connection.whenConnected()
        return payloads

    @defer.inlineCallbacks
    def test_contentGoesThroughRedisAsItIs(self):
        """
        A file's content crosses Redis as it is (not in base64 in JSON):
        what B's channel carries holds the sender's bytes; content that
        happens to be text arrives just as well, in order with a message.
        """
        presenceB = self.nodes["b"][0]
        payloads = yield self.spy(presenceB.connection.key("to", "b"))
        alic = yield self.client("a", b"alic")
        bobb = yield self.client("b", b"bobb")
        binary = os.urandom(200000)
        text = ("¡hola, nodo! " * 20000).encode()
        expected = b""
        for name, content in ((b"bin", binary), (b"txt", text)):
            alic.send(encodeFileHeader(b"bobb", name, len(content)) + content)
            expected += encodeFileHeader(b"alic", name, len(content)) + content
        alic.send(encodeMessage(b"bobb", b"after"))
        expected += encodeMessage(b"alic", b"after")
        yield self.until(lambda: len(self.received(bobb)) >= len(expected))
        self.assertEqual(bytes(bobb.got), expected)
        carried = b"".join(p if isinstance(p, bytes) else p.encode() for p in payloads)
        # assertTrue: assertIn would print megabytes of payloads.
        self.assertTrue(binary[:4096] in carried, "the binary content is not on the wire as it is")
        self.assertTrue(text[:4096] in carried, "the text content is not on the wire as it is")

    @defer.inlineCallbacks
    def test_creditBoundsWhatIsOnItsWay(self):
        """A recipient that does not read: the sender is paused within a window."""
        alic = yield self.client("a", b"alic")
        bobb = yield self.client("b", b"bobb", bufferSize=64 * 1024)
        size = 8 * WINDOW
        alic.send(encodeFileHeader(b"bobb", b"big", size))
        piece = bytes(range(256)) * 256  # 64 KiB
        sent = 0
        while sent < size and not alic.readingPaused:
            alic.send(piece)
            sent += len(piece)
            yield self.until(lambda: True)
        yield self.until(lambda: alic.readingPaused)
        # Whatever was sent reaches b; nothing more is granted while b's
        # transport stays full.
        while sent < size and not alic.readingPaused:
            alic.send(piece)
            sent += len(piece)
            yield task.deferLater(reactor, 0.01, lambda: None)
        self.assertLessEqual(sent, WINDOW + len(piece))
        self.assertLessEqual(bobb.transport.maxBuffered, WINDOW + 2 * len(piece))
        # b reads: the credit comes back and the whole file flows.
        while sent < size:
            if alic.readingPaused:
                self.received(bobb)
                yield task.deferLater(reactor, 0.001, lambda: None)
                continue
            alic.send(piece)
            sent += len(piece)
        yield self.until(lambda: len(self.received(bobb)) >= size + 20)
        frames = bobb.frames()  # the rest, if any
        got = bytes(bobb.got)
        self.assertEqual(got[-size:], piece * (size // len(piece)))
        self.assertEqual(frames, [])

    @defer.inlineCallbacks
    def test_senderGoneMidFileFilledWithZeros(self):
        alic = yield self.client("a", b"alic")
        bobb = yield self.client("b", b"bobb")
        alic.send(encodeFileHeader(b"bobb", b"f", 1000) + b"x" * 400)
        yield self.until(lambda: self.received(bobb).endswith(b"x" * 400))
        alic.disconnect()
        cut = encodeError(wireText(errRecipientGone("alic", "f")))
        yield self.until(lambda: self.received(bobb).endswith(cut))
        self.assertTrue(bytes(bobb.got).endswith(b"x" * 400 + bytes(600) + cut))
        self.assertFalse(bobb.closed)

    @defer.inlineCallbacks
    def test_senderGoneMidLargeFileClosesReceiver(self):
        alic = yield self.client("a", b"alic")
        bobb = yield self.client("b", b"bobb")
        alic.send(encodeFileHeader(b"bobb", b"f", FILL_MAX + 5000) + b"x" * 400)
        yield self.until(lambda: self.received(bobb).endswith(b"x" * 400))
        alic.disconnect()
        yield self.until(lambda: bobb.closed)

    @defer.inlineCallbacks
    def test_receiverGoneMidFileTellsSender(self):
        alic = yield self.client("a", b"alic")
        bobb = yield self.client("b", b"bobb")
        alic.send(encodeFileHeader(b"bobb", b"f", 1000) + b"x" * 400)
        yield self.until(lambda: self.received(bobb).endswith(b"x" * 400))
        bobb.disconnect()
        gone = encodeError(wireText(errRecipientGone("bobb", "f")))
        yield self.until(lambda: self.received(alic).endswith(gone))
        self.assertEqual(bytes(alic.got), gone)
        # The rest of its content is read and dropped; it goes on.
        alic.send(b"y" * 600 + encodeMessage(b"alic", b"yo"))
        self.assertEqual(alic.frames(), [Message(b"alic", b"yo")])

    @defer.inlineCallbacks
    def test_typedReceiverRefused(self):
        alic = yield self.client("a", b"alic")
        bobb = yield self.client("b", b"bobb\n")
        alic.send(encodeFileHeader(b"bobb", b"f", 10) + b"0123456789")
        refused = encodeError(wireText(errNoFiles("bobb")))
        yield self.until(lambda: self.received(alic).endswith(refused))
        self.assertNotIn(b"0123456789", bytes(self.received(bobb)))

    @defer.inlineCallbacks
    def test_senderNodeSilentIdleTimeout(self):
        """
        Node a stops talking mid-file (its Redis connection gone, as when it
        is killed): b's recipient gets the file cut by the idle timeout.
        """
        alic = yield self.client("a", b"alic")
        bobb = yield self.client("b", b"bobb")
        alic.send(encodeFileHeader(b"bobb", b"f", 1000) + b"x" * 400)
        yield self.until(lambda: self.received(bobb).endswith(b"x" * 400))
        presence = self.nodes["a"][0]
        yield presence.connection.stopService()  # no goodbye: like kill -9
        self.nodes["b"][2].advance(30)
        stalled = encodeError(wireText(errFileStalled("f", 30)))
        self.assertTrue(bytes(self.received(bobb)).endswith(bytes(600) + stalled))
        self.assertFalse(bobb.closed)
        # alic's node cannot reach Redis: what it publishes fails, logged.
        alic.disconnect()
        yield task.deferLater(reactor, 0, lambda: None)
        self.flushLoggedErrors(txredisapi.ConnectionError)

    @defer.inlineCallbacks
    def test_receiverNodeGoneTellsSender(self):
        """Node b leaves the cluster mid-file: its users' logouts end it on a."""
        alic = yield self.client("a", b"alic")
        bobb = yield self.client("b", b"bobb")
        alic.send(encodeFileHeader(b"bobb", b"f", 10**6) + b"x" * 400)
        yield self.until(lambda: self.received(bobb).endswith(b"x" * 400))
        yield self.nodes["b"][0].stopService()
        gone = encodeError(wireText(errRecipientGone("bobb", "f")))
        yield self.until(lambda: self.received(alic).endswith(gone))
        self.assertFalse(alic.readingPaused)
        bobb.disconnect()
        yield task.deferLater(reactor, 0, lambda: None)
        self.flushLoggedErrors(txredisapi.ConnectionError)

    @defer.inlineCallbacks
    def test_senderNodeGoneCutsTheFile(self):
        """Node a leaves the cluster mid-file: b sees its sender go, and cuts."""
        alic = yield self.client("a", b"alic")
        bobb = yield self.client("b", b"bobb")
        alic.send(encodeFileHeader(b"bobb", b"f", 1000) + b"x" * 400)
        yield self.until(lambda: self.received(bobb).endswith(b"x" * 400))
        yield self.nodes["a"][0].stopService()
        cut = encodeError(wireText(errRecipientGone("alic", "f")))
        yield self.until(lambda: self.received(bobb).endswith(cut))
        self.assertTrue(bytes(bobb.got).endswith(b"x" * 400 + bytes(600) + cut))
        alic.disconnect()
        yield task.deferLater(reactor, 0, lambda: None)
        self.flushLoggedErrors(txredisapi.ConnectionError)

    @defer.inlineCallbacks
    def test_peerToPeerReceiverRefused(self):
        """
        A client of the peer-to-peer variant on another node is offered files
        from a port of its own node; a streamed file cannot be: refused.
        """
        self.nodes["b"][1].variant = P2P
        alic = yield self.client("a", b"alic")
        bobb = yield self.client("b", b"bobb")
        self.assertEqual(bobb.protocol.mode, P2P)
        alic.send(encodeFileHeader(b"bobb", b"f", 10) + b"0123456789")
        refused = encodeError(wireText(errRemoteVariant("bobb")))
        yield self.until(lambda: self.received(alic).endswith(refused))
        self.assertEqual(bytes(alic.got), refused)
        self.assertEqual(bytes(self.received(bobb)), b"")

    @defer.inlineCallbacks
    def test_recipientFreedWithoutTheCollector(self):
        """
        A recipient that kept a remote sender's stand-in for an ACK is freed
        by reference counting once it closes (docs/architecture.md).
        """
        alic = yield self.client("a", b"alic")
        bobb = yield self.client("b", b"bobb")
        alic.send(encodeFileHeader(b"bobb", b"f", 10) + b"0123456789")
        yield self.until(lambda: self.received(bobb).endswith(b"0123456789"))
        gc.disable()
        self.addCleanup(gc.enable)
        recipient = weakref.ref(bobb.protocol)
        bobb.disconnect()
        bobb.protocol = None
        # Its logout's script in Redis holds its entry until it answers.
        yield self.until(lambda: self.nodes["a"][0].lookup("bobb") is None)
        yield task.deferLater(reactor, 0.01, lambda: None)
        self.assertIsNone(recipient())

    @defer.inlineCallbacks
    def test_ackForSenderGone(self):
        alic = yield self.client("a", b"alic")
        bobb = yield self.client("b", b"bobb")
        alic.send(encodeFileHeader(b"bobb", b"f", 10) + b"0123456789")
        yield self.until(lambda: self.received(bobb).endswith(b"0123456789"))
        alic.disconnect()
        yield self.until(lambda: self.nodes["b"][0].lookup("alic") is None)
        bobb.got = bytearray()
        bobb.send(encodeAck(b"f"))
        self.assertEqual(bobb.wire(), encodeError(wireText(errAckSenderGone("f"))))
