"""
One account database per cluster (docs/cluster.md, "One account
database"): L{AccountsDatabaseCheck} on a real redis-server records the
first node's database id as the cluster's, lets nodes with the same one
serve, and refuses the others before their listeners accept.
"""

from __future__ import annotations

import itertools
import os

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from chatd.cluster.redis import ClusterConnection, parseClusterURL
from chatd.limits import ConnectionLimiter, Limits
from chatd.metrics import ChatdMetrics
from chatd.msgr.cluster import AccountsDatabaseCheck
from chatd.presence import InMemoryPresenceService
from chatd.service import ChatdService
from chatd.testservers import redisServer

_prefixes = itertools.count()

OTHER_DATABASE = (
    "chatd: --db b.sqlite3 is not this cluster's account database"
    " (the cluster's nodes share one: docs/cluster.md)"
)


class AccountsDatabaseCheckTests(TestCase):
    timeout = 15

    def setUp(self) -> None:
        self.redis = redisServer()
        self.prefix = f"accountsdb{os.getpid()}-{next(_prefixes)}:"
        self.refused: list[str] = []

    def connection(self, nodeId: str) -> ClusterConnection:
        connection = ClusterConnection(parseClusterURL(self.redis.url), nodeId, self.prefix)
        connection.startService()
        self.addCleanup(connection.stopService)
        return connection

    def check(self, nodeId: str, databaseId, option: str) -> AccountsDatabaseCheck:
        check = AccountsDatabaseCheck(
            self.connection(nodeId), databaseId, option, self.refused.append
        )
        check.startService()
        self.addCleanup(check.stopService)
        return check

    def recorded(self) -> str:
        return self.redis.command("GET", self.prefix + "accounts-db").strip()

    @defer.inlineCallbacks
    def test_sameDatabaseServes(self):
        yield self.check("a", "1" * 32, "a.sqlite3").whenReady()
        yield self.check("b", "1" * 32, "a.sqlite3").whenReady()
        self.assertEqual(self.refused, [])
        self.assertEqual(self.recorded(), "1" * 32)

    @defer.inlineCallbacks
    def test_otherDatabaseRefused(self):
        yield self.check("a", "1" * 32, "a.sqlite3").whenReady()
        b = self.check("b", "2" * 32, "b.sqlite3")
        ready = b.whenReady()
        yield b.cluster.whenConnected()
        yield self.waitForRefusal()
        self.assertEqual(self.refused, [OTHER_DATABASE])
        self.assertFalse(ready.called)
        self.assertEqual(self.recorded(), "1" * 32)  # the cluster's stays

    @defer.inlineCallbacks
    def test_noDatabaseInAClusterWithOne(self):
        yield self.check("a", "1" * 32, "a.sqlite3").whenReady()
        self.check("b", None, "none")
        yield self.waitForRefusal()
        self.assertEqual(
            self.refused,
            [
                "chatd: --db none: this cluster's nodes share an account database,"
                " whose names a node without it cannot protect (docs/cluster.md)"
            ],
        )

    @defer.inlineCallbacks
    def test_databaseInAClusterWithNone(self):
        yield self.check("a", None, "none").whenReady()
        yield self.check("b", None, "none").whenReady()
        self.check("c", "1" * 32, "c.sqlite3")
        yield self.waitForRefusal()
        self.assertEqual(
            self.refused,
            [
                "chatd: --db c.sqlite3: this cluster's nodes run with --db none,"
                " and would not protect its names (docs/cluster.md)"
            ],
        )
        self.assertEqual(self.recorded(), "none")

    @defer.inlineCallbacks
    def test_recordedAgainAfterRedisLostIt(self):
        """A serving node records its id again on its next connection."""
        check = self.check("a", "1" * 32, "a.sqlite3")
        yield check.whenReady()
        self.redis.command("DEL", self.prefix + "accounts-db")
        seen = defer.Deferred()
        check.cluster.addConnectionObserver(
            lambda up: up and not seen.called and seen.callback(None)
        )
        self.redis.command("CLIENT", "KILL", "TYPE", "normal")
        yield seen
        # The check's observer ran before the test's: wait for its SET.
        yield check.cluster.redis.execute_command("PING")
        self.assertEqual(self.recorded(), "1" * 32)

    def waitForRefusal(self) -> defer.Deferred:
        """Fires once the check refused (a real Redis answers in its time)."""
        from twisted.internet import reactor, task

        def poll():
            if self.refused:
                loop.stop()

        loop = task.LoopingCall(poll)
        loop.clock = reactor
        return loop.start(0.01)


class TreeWaitsForTheCheckTests(TestCase):
    """The listeners' C{whenReady} waits for the tree's start-up checks."""

    def test_whenReadyWaits(self):
        limits = Limits()
        top = ChatdService(
            {},
            InMemoryPresenceService(),
            ChatdMetrics(),
            limits,
            ConnectionLimiter(0, 0),
        )
        self.assertTrue(top.whenReady().called)

        class Check:
            def __init__(self):
                self.ready = defer.Deferred()

            def whenReady(self):
                d = defer.Deferred()
                self.ready.addCallback(lambda r: (d.callback(None), r)[1])
                return d

        check = Check()
        top.addStartupCheck(check)
        ready = top.whenReady()
        self.assertFalse(ready.called)
        check.ready.callback(None)
        self.assertTrue(ready.called)
