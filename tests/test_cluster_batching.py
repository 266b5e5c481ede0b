"""
What a node publishes in one reactor turn goes as few PUBLISH commands as
keep the order (chatd.cluster.redis.Publisher, docs/cluster.md "Batches"),
on a real redis-server.
"""

from __future__ import annotations

import os
import struct

from twisted.internet import defer, reactor, task

from chatd.cluster.redis import ClusterConnection, parseClusterURL
from chatd.presence import BROADCAST, LOGIN, LOGOUT, ChatMessage
from tests.test_cluster_presence import ClusterTestCase, WaitingSession, events


def readMessages(frame) -> tuple[str, list[tuple[str, str, str]]]:
    """
    The sending node and the (sender, receiver, text) of a frame of direct
    messages, read as docs/cluster.md describes it.
    """
    if isinstance(frame, str):
        frame = frame.encode()  # as txredisapi hands what is valid UTF-8
    assert frame.startswith(b"\0msg\0"), frame
    node, count, rest = frame[5:].split(b"\0", 2)
    count = int(count)
    lengths = struct.unpack(f"<{3 * count}I", rest[:12 * count])
    fields = rest[12 * count:].decode()
    values, start = [], 0
    for length in lengths:
        values.append(fields[start:start + length])
        start += length
    assert start == len(fields)
    return node.decode(), [tuple(values[i:i + 3]) for i in range(0, len(values), 3)]


class BatchingTests(ClusterTestCase):
    @defer.inlineCallbacks
    def twoNodes(self):
        a = yield self.node("a")
        b = yield self.node("b")
        seen = events(a, LOGIN, "bob")
        alice = yield self.login(a, "alice")
        bob = yield self.login(b, "bob")
        yield seen
        return a, b, alice, bob

    @defer.inlineCallbacks
    def publishCount(self, node):
        info = yield node.connection.redis.execute_command("INFO", "commandstats")
        for line in info.splitlines():
            if line.startswith("cmdstat_publish:"):
                return int(line.split("calls=")[1].split(",")[0])
        return 0

    @defer.inlineCallbacks
    def spy(self, channel):
        """The payloads published on C{channel}, as Redis delivers them."""
        payloads = []
        connection = ClusterConnection(
            parseClusterURL(self.redis.url), "spy", self.prefix
        )
        connection.channels = [channel]
        connection.onMessage = lambda c, message: payloads.append(message)
        connection.startService()
        self.addCleanup(connection.stopService)
        yield connection.whenConnected()
        return payloads

    @defer.inlineCallbacks
    def test_burstWithBroadcastsInOrder(self):
        """
        A burst from one sender to a user of another node, interleaved with
        broadcasts, all in one turn, arrives in the order it was sent, in
        one PUBLISH per run of a channel.
        """
        a, b, alice, bob = yield self.twoNodes()
        before = yield self.publishCount(a)
        expected = []
        for i in range(60):
            a.sendMessage(alice, "bob", f"m{i}")
            expected.append(ChatMessage("alice", "bob", f"m{i}"))
            if i % 10 == 9:
                a.sendMessage(alice, BROADCAST, f"b{i}")
                expected.append(ChatMessage("alice", BROADCAST, f"b{i}"))
        received = yield bob.messagesArrived(len(expected))
        self.assertEqual(received, expected)
        after = yield self.publishCount(a)
        # Ten messages, then a broadcast, six times: 12 runs, not 66.
        self.assertEqual(after - before, 12)

    @defer.inlineCallbacks
    def test_otherNodesChannelsDoNotSplitARun(self):
        """
        Messages to two nodes interleaved go as one PUBLISH per node: a
        node sees nothing of the other's channel, so nothing is reordered.
        """
        a, b, alice, bob = yield self.twoNodes()
        c = yield self.node("c")
        seen = events(a, LOGIN, "carol")
        carol = yield self.login(c, "carol")
        yield seen
        before = yield self.publishCount(a)
        for i in range(20):
            a.sendMessage(alice, "bob", f"b{i}")
            a.sendMessage(alice, "carol", f"c{i}")
        toBob = yield bob.messagesArrived(20)
        toCarol = yield carol.messagesArrived(20)
        self.assertEqual([m.text for m in toBob], [f"b{i}" for i in range(20)])
        self.assertEqual([m.text for m in toCarol], [f"c{i}" for i in range(20)])
        after = yield self.publishCount(a)
        self.assertEqual(after - before, 2)

    @defer.inlineCallbacks
    def test_batchSplitAtTheLimit(self):
        """No PUBLISH carries more than the limit plus one message."""
        a, b, alice, bob = yield self.twoNodes()
        payloads = yield self.spy(b.connection.key("to", "b"))
        limit = a.connection.publisher.limit = 1000
        texts = [f"{i:03d}" + "x" * 97 for i in range(40)]
        for text in texts:
            a.sendMessage(alice, "bob", text)
        received = yield bob.messagesArrived(40)
        self.assertEqual([m.text for m in received], texts)
        yield b.connection.redis.ping()  # the spy's connection had its turn too
        batches = [readMessages(p)[1] for p in payloads]
        one = len(payloads[0]) // len(batches[0])
        self.assertGreater(len(batches), 1)
        for payload in payloads:
            self.assertLessEqual(len(payload.encode()), limit + 2 * one)
        self.assertEqual([m[2] for batch in batches for m in batch], texts)

    @defer.inlineCallbacks
    def test_rawFrameAloneAndInOrder(self):
        """
        A binary frame (sendRawToNode) goes alone in its PUBLISH, after
        the messages sent before it and before those sent after it.
        """
        a, b, alice, bob = yield self.twoNodes()
        order = []
        bob.deliverMessage = lambda message: order.append(message.text)
        b.rawInboxHandlers[b"probe"] = lambda payload: order.append(payload)
        before = yield self.publishCount(a)
        a.sendMessage(alice, "bob", "one")
        a.sendRawToNode("b", b"probe", b"\xff\x00bin")
        a.sendRawToNode("b", b"probe", "texto".encode())
        a.sendMessage(alice, "bob", "two")
        while len(order) < 4:
            yield task.deferLater(reactor, 0.002, lambda: None)
        self.assertEqual(order, ["one", b"\xff\x00bin", b"texto", "two"])
        after = yield self.publishCount(a)
        self.assertEqual(after - before, 4)

    @defer.inlineCallbacks
    def test_commandConnectionWithoutNagle(self):
        """
        The command connection sends each PUBLISH at once (TCP_NODELAY):
        the tail of a large one does not wait for Redis' delayed ACK.
        """
        import socket

        a = yield self.node("a")
        transport = a.connection._up["command"].transport
        handle = transport.getHandle()
        self.assertTrue(handle.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    @defer.inlineCallbacks
    def test_lowRateNotDelayedPastTheTurn(self):
        """
        A lone message is published when the turn that sent it ends: one
        call of delay 0 on the clock, scheduled once per turn.
        """
        a, b, alice, bob = yield self.twoNodes()
        clock = a.connection.publisher.clock = task.Clock()
        clock.advance(100)
        a.sendMessage(alice, "bob", "hello")
        a.sendMessage(alice, "bob", "again")
        calls = clock.getDelayedCalls()
        self.assertEqual([call.getTime() for call in calls], [100])
        clock.advance(0)
        received = yield bob.messagesArrived(2)
        self.assertEqual([m.text for m in received], ["hello", "again"])
        self.assertEqual(clock.getDelayedCalls(), [])

    @defer.inlineCallbacks
    def test_messageBeforeItsSendersLogout(self):
        """
        A script (here the sender's logout) publishes after what the node
        published before it in the same turn: the receiver's node has the
        message before it hears that the sender left.
        """
        a, b, alice, bob = yield self.twoNodes()
        order = []
        bob.deliverMessage = lambda message: order.append(("message", message.text))
        gone = events(b, LOGOUT, "alice")
        gone.addCallback(lambda info: order.append(("logout", info.name)))
        a.sendMessage(alice, "bob", "bye")
        a.logout(alice)
        yield gone
        self.assertEqual(order, [("message", "bye"), ("logout", "alice")])

    @defer.inlineCallbacks
    def test_wireFormat(self):
        """
        The bytes Redis carries for the direct messages of one turn (one
        frame of records: the sending node, the number of messages, the
        lengths of each one's sender, receiver and text in characters as
        32-bit little-endian integers, then those fields) and for
        a broadcast (a compact JSON array), as docs/cluster.md shows them.
        """
        a, b, alice, bob = yield self.twoNodes()
        inbox = yield self.spy(b.connection.key("to", "b"))
        broadcasts = yield self.spy(b.connection.key("broadcast"))
        text = 'h\u00e9llo "you"\n\\'
        a.sendMessage(alice, "bob", text)
        a.sendMessage(alice, "bob", "x\x00y")
        a.sendMessage(alice, BROADCAST, text)
        received = yield bob.messagesArrived(3)
        self.assertEqual(
            received,
            [
                ChatMessage("alice", "bob", text),
                ChatMessage("alice", "bob", "x\x00y"),
                ChatMessage("alice", BROADCAST, text),
            ],
        )
        yield b.connection.redis.ping()
        self.assertEqual(
            [p.encode() if isinstance(p, str) else p for p in inbox],
            [
                b"\x00msg\x00a\x002\x00"
                + struct.pack("<6I", 5, 3, 13, 5, 3, 3)
                + 'alicebobh\u00e9llo "you"\n\\alicebobx\x00y'.encode()
            ],
        )
        self.assertEqual(
            readMessages(inbox[0]),
            ("a", [("alice", "bob", text), ("alice", "bob", "x\x00y")]),
        )
        self.assertEqual(
            broadcasts,
            ['[{"node":"a","sender":"alice","text":"h\u00e9llo \\"you\\"\\n\\\\"}]'],
        )

    @defer.inlineCallbacks
    def test_docsExample(self):
        """
        docs/cluster.md's example of what Redis carries is what it carries:
        two messages from alice on node a to bob, then a broadcast.
        """
        with open(os.path.join(os.path.dirname(__file__), "..", "docs", "cluster.md")) as f:
            doc = f.read()
        start = doc.index("`bob`, then a broadcast, as Redis carries them")
        example = doc[start:].split("```\n")[1].splitlines()
        a, b, alice, bob = yield self.twoNodes()
        inbox = yield self.spy(b.connection.key("to", "b"))
        broadcasts = yield self.spy(b.connection.key("broadcast"))
        a.sendMessage(alice, "bob", "hi")
        a.sendMessage(alice, "bob", "hello")
        a.sendMessage(alice, BROADCAST, "hi all")
        yield bob.messagesArrived(3)
        yield b.connection.redis.ping()
        wire = [p.encode() if isinstance(p, str) else p for p in inbox + broadcasts]
        # The doc writes bytes as Python does, escaping the unprintable ones.
        self.assertEqual(
            wire, [line.encode().decode("unicode_escape").encode("latin-1") for line in example]
        )
