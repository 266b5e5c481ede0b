"""
Deliveries of a batch from the cluster's Redis are corked (chatd.cork): a
protobuf user on the receiving node gets one write per batch, not one per
message, and what the cork never holds (a paused, full send queue) is still
found at once and told to the sender. Real redis-server, real nodes.
"""

from __future__ import annotations

from twisted.internet import defer, task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from chatd.cluster.presence import notDeliveredText
from chatd.limits import Limits
from chatd.presence import LOGIN, ChatMessage
from chatd.protobuf import chat_pb2
from chatd.protobuf.framing import DelimitedFramer
from chatd.protobuf.protocol import DELIMITED, ProtobufChatFactory
from tests.support import ProtobufClient, login
from tests.test_cluster_presence import ClusterTestCase, events


class WriteCountingTransport(StringTransport):
    """A StringTransport that keeps each C{write} apart, and can be waited on."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.writes: list[bytes] = []
        self._waiting: list[tuple[int, defer.Deferred]] = []

    def write(self, data: bytes) -> None:
        super().write(data)
        self.writes.append(data)
        for entry in list(self._waiting):
            if deliveries(b"".join(self.writes)) >= entry[0]:
                self._waiting.remove(entry)
                entry[1].callback(None)

    def deliveriesArrived(self, count: int) -> defer.Deferred:
        """Fires once C{count} responses were written in all."""
        d = defer.Deferred()
        self._waiting.append((count, d))
        return d


def deliveries(wire: bytes) -> int:
    return len(list(DelimitedFramer().feed(wire)))


def responses(wire: bytes) -> list[chat_pb2.ServerResponse]:
    return [chat_pb2.ServerResponse.FromString(f) for f in DelimitedFramer().feed(wire)]


class CorkedBatchTests(ClusterTestCase):
    @defer.inlineCallbacks
    def protobufUser(self, node, name: str, limits: Limits | None = None):
        """A protobuf user of C{node}, logged in, over a write-counting transport."""
        factory = ProtobufChatFactory(
            node, task.Clock(), framing=DELIMITED, limits=limits, metrics=node.metrics
        )
        client = ProtobufClient.__new__(ProtobufClient)
        client.framing = DELIMITED
        client.transport = WriteCountingTransport(
            peerAddress=IPv4Address("TCP", "192.0.2.7", 40000)
        )
        client.protocol = factory.buildProtocol(client.transport.getPeer())
        client.protocol.makeConnection(client.transport)
        answered = client.transport.deliveriesArrived(1)
        client.send(login(name))
        yield answered
        self.assertEqual(client.response().code, chat_pb2.ServerResponse.SUCCESSFUL_OPERATION)
        del client.transport.writes[:]
        self.addCleanup(client.disconnect)
        return client

    @defer.inlineCallbacks
    def twoNodes(self, limits: Limits | None = None):
        a = yield self.node("a")
        b = yield self.node("b")
        seen = events(a, LOGIN, "bob")
        alice = yield self.login(a, "alice")
        bob = yield self.protobufUser(b, "bob", limits)
        yield seen
        return a, b, alice, bob

    @defer.inlineCallbacks
    def test_oneWritePerBatch(self):
        """
        Fifty messages from a user of another node, sent in one turn, reach
        a protobuf user of this node in one batch and so in one write, in
        the order they were sent.
        """
        a, b, alice, bob = yield self.twoNodes()
        arrived = bob.transport.deliveriesArrived(50)
        for i in range(50):
            a.sendMessage(alice, "bob", f"m{i}")
        yield arrived
        self.assertEqual(len(bob.transport.writes), 1)
        received = responses(bob.transport.writes[0])
        self.assertEqual(
            [(r.messg.sender, r.messg.receiver, r.messg.text) for r in received],
            [("alice", "bob", f"m{i}") for i in range(50)],
        )
        self.assertEqual(b.clusterMetrics.remoteDelivered, 50)

    @defer.inlineCallbacks
    def test_fullQueueStillBouncesAtOnce(self):
        """
        A receiver whose send queue is paused and full is not held for by
        the cork: the overflow is found within the batch, the receiver is
        disconnected, and the sender is told, in its own protocol, that its
        message was not delivered because the receiver is busy.
        """
        a, b, alice, bob = yield self.twoNodes(Limits(maxSendQueue=100))
        bob.protocol.outbound.pauseProducing()  # bob does not read
        for i in range(5):
            a.sendMessage(alice, "bob", "x" * 40)
        received = yield alice.messagesArrived(1)
        self.assertEqual(
            received,
            [ChatMessage("bob", "alice", notDeliveredText("bob", "is busy"))],
        )
        self.assertTrue(bob.transport.disconnecting)
