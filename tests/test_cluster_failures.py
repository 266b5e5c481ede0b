"""
A cluster's Redis restarted or unreachable (docs/cluster.md, "Failures"):
nodes in one process on the test run's real redis-server, one of them
reaching it through a TCP link the test cuts and restores (a node cut off
from Redis while the others are not), and the rule that settles a name
claimed twice during the split.
"""

from __future__ import annotations

from twisted.internet import defer, protocol, reactor, task
from twisted.protocols import portforward

from chatd.cluster.presence import ClusterPresenceService, RemoteSession
from chatd.cluster.redis import ClusterConnection, parseClusterURL
from chatd.cluster.rejoin import conflictReason
from chatd.metrics import ChatdMetrics
from chatd.presence import LOGIN, LOGOUT, ClusterUnavailable, NameInUse
from tests.test_cluster_presence import ClusterTestCase, WaitingSession, events


def localSession(presence, name: str):
    """The session of C{name} if it is a user of this node, else C{None}."""
    session = presence.sessionFor(name)
    return None if isinstance(session, RemoteSession) else session



class _LinkServer(portforward.ProxyServer):
    def connectionMade(self) -> None:
        self.factory.link.open.add(self)
        super().connectionMade()

    def connectionLost(self, reason) -> None:
        self.factory.link.open.discard(self)
        super().connectionLost(reason)


class RedisLink:
    """
    A TCP link from a node to Redis on 127.0.0.1 that the test can cut
    (its connections dropped, new ones refused) and restore on the same
    port: one node loses Redis, the others keep it.
    """

    def __init__(self, port: int) -> None:
        self.factory = portforward.ProxyFactory("127.0.0.1", port)
        self.factory.protocol = _LinkServer
        self.factory.link = self
        self.factory.noisy = False
        self.open: set = set()
        self.listening = reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        self.port = self.listening.getHost().port

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def cut(self) -> defer.Deferred:
        d = defer.maybeDeferred(self.listening.stopListening)
        for server in list(self.open):
            server.transport.abortConnection()
        return d

    def restore(self) -> None:
        self.listening = reactor.listenTCP(self.port, self.factory, interface="127.0.0.1")

    def close(self) -> defer.Deferred:
        return self.cut() if self.listening.connected else defer.succeed(None)


def connectionIs(presence, state: bool) -> defer.Deferred:
    """Fires once C{presence}'s connection to Redis is up (True) or down."""
    if presence.connection.connected == state:
        return defer.succeed(None)
    d = defer.Deferred()

    def observer(connected):
        if connected == state and not d.called:
            presence.connection._observers.remove(observer)
            d.callback(None)

    presence.connection.addConnectionObserver(observer)
    return d


def until(presence, condition) -> defer.Deferred:
    """Fires once C{condition()} holds, checked now and after each event."""
    if condition():
        return defer.succeed(None)
    d = defer.Deferred()

    def observer(kind, info):
        if not d.called and condition():
            presence.removeObserver(observer)
            d.callback(None)

    presence.addObserver(observer)
    return d


class FailureTestCase(ClusterTestCase):
    timeout = 60

    def setUp(self) -> None:
        super().setUp()
        # A test that stopped Redis leaves it running for the next ones.
        self.addCleanup(self._redisRunning)

    def _redisRunning(self) -> None:
        if self.redis.process is None:
            self.redis.start()

    @defer.inlineCallbacks
    def linkedNode(self, nodeId: str, clock, ttl: float = 10.0):
        """A node reaching Redis through a L{RedisLink}."""
        link = RedisLink(self.redis.port)
        self.addCleanup(link.close)
        connection = ClusterConnection(parseClusterURL(link.url), nodeId, self.prefix)
        presence = ClusterPresenceService(
            connection, lambda name: False, ChatdMetrics(), ttl, clock
        )
        presence.startService()
        self.addCleanup(self.stop, presence)
        yield presence.whenReady()
        return presence, link

    def stored(self, key: str) -> str:
        return self.redis.command("HGET", self.prefix + "names", key)


class RedisStoppedTests(FailureTestCase):
    @defer.inlineCallbacks
    def test_outageServesLocalRefusesTheRest(self):
        """
        Redis stops: a node keeps its own users chatting and its directory
        as last known, refuses new logins and messages to other nodes' users
        (the sender is told), and takes status changes and logouts; when
        Redis is back (empty), every user still online is back on every
        node, with its status of now, and who left is gone.
        """
        a = yield self.node("a")
        b = yield self.node("b")
        alice = yield self.login(a, "alice")
        carol = yield self.login(a, "carol")
        yield self.login(b, "bob")
        yield until(a, lambda: a.lookup("bob") is not None)
        yield until(b, lambda: b.lookup("carol") is not None)

        self.redis.stop()
        yield connectionIs(a, False)
        yield connectionIs(b, False)
        failure = yield self.assertFailure(self.login(a, "dave"), ClusterUnavailable)
        self.assertEqual(str(failure), "the cluster cannot be reached")
        # Between users of one node: as ever.
        self.assertEqual(a.sendMessage(alice, "carol", "hola"), 1)
        self.assertEqual(carol.messages[-1].text, "hola")
        # To another node's user: refused, with the reason.
        error = self.assertRaises(ClusterUnavailable, a.sendMessage, alice, "bob", "¿bob?")
        self.assertEqual(
            str(error),
            "bob is on another node, and the cluster cannot be reached now",
        )
        # A broadcast reaches this node's users only, and counts them.
        self.assertEqual(a.sendMessage(alice, "all", "a todos"), 1)
        # The list is the last one known.
        self.assertEqual([u.name for u in a.users()], ["alice", "carol", "bob"])
        a.setStatus(alice, "fuera")
        a.logout(carol)

        self.redis.start()  # empty, on the same port
        yield a.whenInCluster()
        yield b.whenInCluster()
        yield until(
            b,
            lambda: b.lookup("alice") is not None
            and b.lookup("alice").status == "fuera"
            and b.lookup("carol") is None,
        )
        yield until(a, lambda: a.lookup("bob") is not None)
        self.assertIn('"status":"fuera"', self.stored("alice"))
        self.assertEqual(self.stored("carol").strip(), "")
        self.assertIn('"node":"b"', self.stored("bob"))
        self.assertEqual(a.metrics.cluster.reconnects, 2)
        # And everything works again.
        bob = b.sessionFor("bob")
        self.assertEqual(a.sendMessage(alice, "bob", "de vuelta"), 1)
        yield bob.messagesArrived(1)
        yield self.login(a, "dave")
        yield self.login(b, "carol")


class RestartedTests(FailureTestCase):
    @defer.inlineCallbacks
    def test_orderKeptAfterARestart(self):
        """
        After Redis restarted (its scripts forgotten), a node's changes
        still reach the others in the order it made them: a status change
        then a logout, when Redis has seen the logout's script again but not
        yet the status's.
        """
        a = yield self.node("a")
        b = yield self.node("b")
        alice = yield self.login(a, "alice")
        yield until(b, lambda: b.lookup("alice") is not None)
        self.redis.restart()
        yield connectionIs(a, False)
        yield a.whenInCluster()
        yield b.whenInCluster()
        other = yield self.login(a, "xavi")
        gone = events(b, LOGOUT, "xavi")
        a.logout(other)  # Redis knows the logout's script from now on
        yield gone
        seen = []
        b.addObserver(lambda kind, info: seen.append((kind, info.name, info.status)))
        loggedOut = events(b, LOGOUT, "alice")
        a.setStatus(alice, "fuera")
        a.logout(alice)
        yield loggedOut
        self.assertEqual(
            seen, [("status", "alice", "fuera"), ("logout", "alice", "fuera")]
        )


class SplitTests(FailureTestCase):
    """One node cut off from Redis while the other keeps it."""

    @defer.inlineCallbacks
    def test_reapedUsersAreReannounced(self):
        """
        The node's heartbeat lapses while it is cut off and another node
        reaps its users: when it is back it announces them again (it still
        has them), and nobody was disconnected.
        """
        clockA, clockB = task.Clock(), task.Clock()
        a, link = yield self.linkedNode("a", clockA)
        b = yield self.node("b", clock=clockB)
        alice = yield self.login(a, "alice")
        yield until(b, lambda: b.lookup("alice") is not None)

        yield link.cut()
        yield connectionIs(a, False)
        # a's heartbeat lapses (as its PX would make it); b reaps a.
        self.redis.command("DEL", self.prefix + "alive:a")
        gone = events(b, LOGOUT, "alice")
        clockB.advance(b.ttl / 3)
        yield gone
        # A node cut off reaps nobody, and beats nowhere.
        clockA.advance(a.ttl / 3)

        back = events(b, LOGIN, "alice")
        link.restore()
        yield a.whenInCluster()
        yield back
        self.assertEqual(alice.disconnected, [])
        self.assertIn('"node":"a"', self.stored("alice"))
        self.assertEqual(self.redis.command("EXISTS", self.prefix + "alive:a").strip(), "1")
        # The name is still alice's.
        yield self.assertFailure(self.login(b, "alice"), NameInUse)

    @defer.inlineCallbacks
    def test_noReapingRightAfterAnOutage(self):
        """
        Back from an outage, a node waits a TTL before it reaps others: they
        may have been cut off as long as it was, and need the time to beat.
        """
        clockA, clockB = task.Clock(), task.Clock()
        a, link = yield self.linkedNode("a", clockA)
        b = yield self.node("b", clock=clockB)
        yield self.login(b, "bob")
        yield until(a, lambda: a.lookup("bob") is not None)
        yield link.cut()
        yield connectionIs(a, False)
        link.restore()
        yield a.whenInCluster()
        # b's heartbeat is gone (b cut off too, say).
        self.redis.command("DEL", self.prefix + "alive:b")
        clockA.advance(a.ttl / 3)
        clockA.advance(a.ttl / 3)
        yield a.connection.redis.ping()
        yield a.connection.redis.ping()
        self.assertIn('"node":"b"', self.stored("bob"))
        # A TTL after its return, a reaps as usual.
        gone = events(a, LOGOUT, "bob")
        clockA.advance(a.ttl / 3 + 0.1)
        yield gone

    @defer.inlineCallbacks
    def conflict(self, aliceOnA: float, aliceOnB: float):
        """
        Redis restarts empty while a is cut off; b is back first and a new
        user logs in there as alice, whom a still has: then a comes back.
        The clocks say when each alice logged in.
        """
        clockA, clockB = task.Clock(), task.Clock()
        a, link = yield self.linkedNode("a", clockA)
        b = yield self.node("b", clock=clockB)
        clockA.advance(aliceOnA)
        first = yield self.login(a, "alice")
        watcher = yield self.login(b, "watcher")
        yield until(b, lambda: b.lookup("alice") is not None)

        yield link.cut()
        yield connectionIs(a, False)
        self.redis.restart()
        yield connectionIs(b, False)
        yield b.whenInCluster()
        yield until(b, lambda: b.lookup("alice") is None)
        clockB.advance(aliceOnB)
        second = yield self.login(b, "alice")
        link.restore()
        yield a.whenInCluster()
        return a, b, first, second, watcher

    @defer.inlineCallbacks
    def test_conflictEarlierLoginOnTheReturningNodeWins(self):
        a, b, first, second, watcher = yield self.conflict(100, 200)
        yield until(b, lambda: localSession(b, "alice") is None and b.lookup("alice"))
        self.assertEqual(second.disconnected, [conflictReason("alice")])
        self.assertEqual(
            second.disconnected[0],
            "the name alice was also taken on another node while the cluster"
            " was split; the earlier login keeps it",
        )
        self.assertEqual(first.disconnected, [])
        self.assertIs(a.sessionFor("alice"), first)
        self.assertIn('"node":"a"', self.stored("alice"))
        # Messages to alice reach the winner.
        b.sendMessage(watcher, "alice", "¿quién eres?")
        arrived = yield first.messagesArrived(1)
        self.assertEqual(arrived[0].text, "¿quién eres?")

    @defer.inlineCallbacks
    def test_conflictEarlierLoginOnTheOtherNodeWins(self):
        a, b, first, second, watcher = yield self.conflict(300, 200)
        self.assertEqual(first.disconnected, [conflictReason("alice")])
        self.assertIsNone(localSession(a, "alice"))
        yield until(a, lambda: a.lookup("alice") is not None)
        self.assertEqual(second.disconnected, [])
        self.assertIs(b.sessionFor("alice"), second)
        self.assertIn('"node":"b"', self.stored("alice"))

    @defer.inlineCallbacks
    def test_conflictTieGoesToTheFirstNodeId(self):
        # Both logged in at the same millisecond: node "a" sorts first.
        a, b, first, second, watcher = yield self.conflict(50, 50)
        yield until(b, lambda: localSession(b, "alice") is None and b.lookup("alice"))
        self.assertEqual(second.disconnected, [conflictReason("alice")])
        self.assertEqual(first.disconnected, [])

    @defer.inlineCallbacks
    def test_lookalikeConflict(self):
        """The rule holds for names that look alike as for one name."""
        clockA, clockB = task.Clock(), task.Clock()
        a, link = yield self.linkedNode("a", clockA)
        b = yield self.node("b", clock=clockB)
        clockA.advance(10)
        first = yield self.login(a, "alice")
        yield link.cut()
        yield connectionIs(a, False)
        self.redis.restart()
        yield connectionIs(b, False)
        yield b.whenInCluster()
        clockB.advance(20)
        second = yield self.login(b, "aIice")  # capital I
        link.restore()
        yield a.whenInCluster()
        yield until(b, lambda: localSession(b, "aIice") is None and b.lookup("alice"))
        self.assertEqual(second.disconnected, [conflictReason("aIice")])
        self.assertEqual(first.disconnected, [])
