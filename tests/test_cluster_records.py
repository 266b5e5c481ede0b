"""
The frame of direct messages between nodes (docs/cluster.md, "What is in
Redis"): any text and any name make the round trip exactly, and a frame
that does not read is logged and dropped, without a traceback and without
costing what follows. Real redis-server, real nodes.
"""

from __future__ import annotations

import struct

from twisted.internet import defer
from twisted.logger import globalLogPublisher

from chatd.presence import LOGIN, ChatMessage
from tests.test_cluster_presence import ClusterTestCase, events


class MessageRecordTests(ClusterTestCase):
    @defer.inlineCallbacks
    def twoNodes(self, senders, receivers):
        a = yield self.node("a")
        b = yield self.node("b")
        seen = [events(a, LOGIN, name) for name in receivers]
        sessions = {}
        for name in senders:
            sessions[name] = yield self.login(a, name)
        for name in receivers:
            sessions[name] = yield self.login(b, name)
        yield defer.gatherResults(seen)
        return a, b, sessions

    def logged(self):
        """The events logged from now on (until the test's end)."""
        seen = []
        globalLogPublisher.addObserver(seen.append)
        self.addCleanup(globalLogPublisher.removeObserver, seen.append)
        return seen

    @defer.inlineCallbacks
    def test_roundTrip(self):
        """
        Texts with NULs, commas, quotes, non-ASCII and astral characters, and
        non-ASCII names, arrive as they were sent and in order, the
        receiver's name as the directory writes it.
        """
        a, b, users = yield self.twoNodes(["ñandú", "alice"], ["Zoë", "bob"])
        sent = [
            ("ñandú", "zoë", "\x00"),
            ("alice", "bob", "a\x00b\x00\x00,1,2,3\x00"),
            ("ñandú", "Zoë", "日本語 \U0001f600 \"q\" \\ \n"),
            ("alice", "Zoë", "5,3,2\x00alicebobhi"),
            ("ñandú", "bob", "\U0001f600" * 300),
        ]
        for sender, receiver, text in sent:
            self.assertEqual(a.sendMessage(users[sender], receiver, text), 1)
        toZoe = yield users["Zoë"].messagesArrived(3)
        toBob = yield users["bob"].messagesArrived(2)
        self.assertEqual(
            toZoe,
            [
                ChatMessage("ñandú", "Zoë", "\x00"),
                ChatMessage("ñandú", "Zoë", "日本語 \U0001f600 \"q\" \\ \n"),
                ChatMessage("alice", "Zoë", "5,3,2\x00alicebobhi"),
            ],
        )
        self.assertEqual(
            toBob,
            [
                ChatMessage("alice", "bob", "a\x00b\x00\x00,1,2,3\x00"),
                ChatMessage("ñandú", "bob", "\U0001f600" * 300),
            ],
        )

    @defer.inlineCallbacks
    def test_malformedFramesDropped(self):
        """
        Frames of messages that do not read (a count that is not a number
        or is negative, lengths cut short or not adding up to the fields, no
        count at all, bytes that are not UTF-8) are each logged as one
        warning and dropped whole, with no traceback; a good message after
        them is delivered.
        """
        a, b, users = yield self.twoNodes(["alice"], ["bob"])
        seen = self.logged()
        channel = b.connection.key("to", "b")
        lengths = struct.pack("<3I", 5, 3, 2)
        bad = [
            b"\x00msg\x00a\x00x\x00" + lengths + b"alicebobhi",  # count not a number
            b"\x00msg\x00a\x00-1\x00" + lengths + b"alicebobhi",  # count negative
            b"\x00msg\x00a\x002\x00" + lengths + b"alicebobhi",  # lengths cut short
            b"\x00msg\x00a\x001\x00" + lengths + b"alicebobhi!",  # fields too long
            b"\x00msg\x00a\x001\x00" + lengths + b"alicebob",  # fields too short
            b"\x00msg\x00a\x001\x00" + lengths[:10],  # lengths cut inside one
            b"\x00msg\x00a",  # no count
            b"\x00msg\x00a\x001\x00" + lengths + b"alice\xff\xfebhi",  # not UTF-8
        ]
        for payload in bad:
            yield a.connection.redis.publish(channel, payload)
        a.sendMessage(users["alice"], "bob", "still here")
        received = yield users["bob"].messagesArrived(1)
        self.assertEqual(received, [ChatMessage("alice", "bob", "still here")])
        dropped = [e for e in seen if e.get("event") == "cluster-malformed"]
        self.assertEqual(len(dropped), len(bad))
        self.assertEqual([e for e in seen if "log_failure" in e], [])
        self.assertEqual(b.clusterMetrics.bounced, 0)

    @defer.inlineCallbacks
    def test_failedDeliveryDoesNotCostTheRest(self):
        """
        A delivery that fails with an error of the receiver's session is
        logged; the messages after it in the same frame are delivered.
        """
        a, b, users = yield self.twoNodes(["alice"], ["bob", "carol"])
        bob = users["bob"]

        def broken(message):
            raise RuntimeError("a bug in bob's protocol")

        bob.deliverMessage = broken
        for receiver, text in [("carol", "one"), ("bob", "lost"), ("carol", "two")]:
            a.sendMessage(users["alice"], receiver, text)
        received = yield users["carol"].messagesArrived(2)
        self.assertEqual(
            received,
            [ChatMessage("alice", "carol", "one"), ChatMessage("alice", "carol", "two")],
        )
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
