"""
The root of chatd's service tree, and what every front shares.
"""

from __future__ import annotations

from twisted.application import service
from twisted.internet import defer

from chatd.limits import ConnectionLimiter, Limits
from chatd.metrics import ChatdMetrics
from chatd.presence import IPresenceService


class ChatdService(service.MultiService):
    """
    The root service of C{twistd chatd}: the services every front shares,
    and as children the listeners (and the services they need, such as
    MSGR's C{msgr-accounts}), each named by its label.

    @ivar config: the parsed options (C{chatd.tap.Options}), which the
        fronts read their own options from.
    @ivar presence: the one presence service behind every wire format.
    @ivar metrics: the counts of this tree (C{GET /metrics}), handed to
        every factory explicitly.
    @ivar limits: what one client may cost (L{Limits}), for every listener.
    @ivar limiter: the one L{ConnectionLimiter}: the connection limits hold
        across all listeners at once.
    @ivar accounts: the account store whose names C{presence} protects
        (MSGR's, from C{--db}), or C{None} with C{--db none}.
    @ivar cluster: C{None} for one process on its own; with C{--cluster},
        this node's L{chatd.cluster.redis.ClusterConnection} (C{.nodeId},
        C{.prefix}, C{.redis}, C{.connected}, C{.whenConnected()}), for the
        parts of chatd that keep state in the cluster's Redis.
    """

    def __init__(
        self,
        config,
        presence: IPresenceService,
        metrics: ChatdMetrics,
        limits: Limits,
        limiter: ConnectionLimiter,
        accounts=None,
        cluster=None,
    ) -> None:
        super().__init__()
        self.config = config
        self.presence = presence
        self.metrics = metrics
        self.limits = limits
        self.limiter = limiter
        self.accounts = accounts
        self.cluster = cluster
        # What else must be ready before the listeners accept (see
        # addStartupCheck).
        self._startupChecks: list = []
        if service.IService.providedBy(presence):
            # A cluster's presence service connects and loads the directory
            # as a child, started before (and stopped after) the listeners.
            presence.setName("presence")
            presence.setServiceParent(self)

    def addStartupCheck(self, check) -> None:
        """
        Make the listeners wait for C{check.whenReady()} too: a start-up
        step of a front (on a cluster, MSGR's check that the node's account
        database is the cluster's). A check that never fires keeps every
        listener from accepting.
        """
        self._startupChecks.append(check)

    def whenReady(self) -> defer.Deferred:
        """
        Fires when the listeners may accept connections: at once in one
        process; once a cluster node has loaded the directory and passed
        its start-up checks (L{addStartupCheck}).
        """
        waits = [check.whenReady() for check in self._startupChecks]
        whenReady = getattr(self.presence, "whenReady", None)
        if whenReady is not None:
            waits.insert(0, whenReady())
        if not waits:
            return defer.succeed(None)
        return defer.gatherResults(waits).addCallback(lambda _: None)
