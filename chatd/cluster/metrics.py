"""
What a cluster node counts, beside L{chatd.metrics.ChatdMetrics}: plain
numbers, read by the exporter at scrape time (docs/observability.md).
"""

from __future__ import annotations


class ClusterMetrics:
    """
    One node's cluster counts.

    @ivar remoteSent: messages and files this node published for users on
        other nodes (a broadcast counts once).
    @ivar remoteDelivered: messages and files from other nodes this node
        put on its users' wires.
    @ivar bounced: messages from other nodes that this node could not
        deliver (the receiver busy or gone); their senders were told.
    @ivar lastRoundTrip: seconds the last heartbeat took to Redis and back.
    """

    def __init__(self, presence) -> None:
        self.presence = presence
        self.remoteSent = 0
        self.remoteDelivered = 0
        self.bounced = 0
        self.lastRoundTrip = 0.0
        self.roundTripSum = 0.0
        self.roundTripCount = 0

    def roundTrip(self, seconds: float) -> None:
        self.lastRoundTrip = seconds
        self.roundTripSum += seconds
        self.roundTripCount += 1

    @property
    def nodeId(self) -> str:
        return self.presence.nodeId

    @property
    def connected(self) -> bool:
        return self.presence.connection.connected

    @property
    def reconnects(self) -> int:
        return self.presence.connection.reconnects

    @property
    def directorySize(self) -> int:
        return len(self.presence.users())

    @property
    def localUsers(self) -> int:
        return len(self.presence.localSessions())
