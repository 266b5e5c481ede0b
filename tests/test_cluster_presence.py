"""
ClusterPresenceService against a real redis-server: two or three nodes in
one process, each with its own connections, sharing one key prefix per test.
"""

from __future__ import annotations

import itertools
import os

from twisted.internet import defer, task
from twisted.trial.unittest import SkipTest, TestCase
from zope.interface import implementer

from chatd.cluster.presence import (
    REMOTE_FILE_LIMIT,
    ClusterPresenceService,
    ClusterUnavailable,
    RemoteSession,
    notDeliveredText,
)
from chatd.cluster.redis import ClusterConnection, parseClusterURL
from chatd.metrics import ChatdMetrics
from chatd.presence import (
    LOGIN,
    LOGOUT,
    STATUS,
    ChatMessage,
    IFileReceiver,
    InvalidName,
    IPresenceService,
    NameInUse,
    NameProtected,
    NoSuchUser,
    RecipientBusy,
    UserInfo,
)
from chatd.testservers import redisServer
from tests.support import RecordingSession

_prefixes = itertools.count()


class WaitingSession(RecordingSession):
    """A session whose messages can be waited for."""

    def __init__(self, protocolName: str = "protobuf") -> None:
        super().__init__(protocolName)
        self._waiting: list[tuple[int, defer.Deferred]] = []

    def deliverMessage(self, message: ChatMessage) -> None:
        super().deliverMessage(message)
        for entry in list(self._waiting):
            count, d = entry
            if len(self.messages) >= count:
                self._waiting.remove(entry)
                d.callback(self.messages[:count])

    def messagesArrived(self, count: int) -> defer.Deferred:
        """Fires with the first C{count} messages once they are here."""
        if len(self.messages) >= count:
            return defer.succeed(self.messages[:count])
        d = defer.Deferred()
        self._waiting.append((count, d))
        return d


class BusySession(RecordingSession):
    def deliverMessage(self, message: ChatMessage) -> None:
        raise RecipientBusy("too much waits for this user")


@implementer(IFileReceiver)
class FileSession(RecordingSession):
    maxFileSize = 100

    def __init__(self) -> None:
        super().__init__("msgr")
        self.files: list[tuple[str, str, bytes]] = []

    def deliverFile(self, sender: str, filename: str, content: bytes) -> None:
        self.files.append((sender, filename, content))


def events(presence, kind: str, name: str) -> defer.Deferred:
    """Fires with the UserInfo of the next C{kind} event about C{name}."""
    d = defer.Deferred()

    def observer(k, info):
        if k == kind and info.name == name and not d.called:
            presence.removeObserver(observer)
            d.callback(info)

    presence.addObserver(observer)
    return d


class ClusterTestCase(TestCase):
    """Nodes on the test run's redis-server, under a prefix of this test's."""

    def setUp(self) -> None:
        self.redis = redisServer()
        self.prefix = f"test{os.getpid()}-{next(_prefixes)}:"

    @defer.inlineCallbacks
    def node(self, nodeId: str, ttl: float = 10.0, clock=None, protect=None, start=True):
        connection = ClusterConnection(
            parseClusterURL(self.redis.url), nodeId, self.prefix
        )
        presence = ClusterPresenceService(
            connection,
            protect or (lambda name: False),
            ChatdMetrics(),
            ttl,
            clock if clock is not None else task.Clock(),
        )
        if start:
            presence.startService()
            self.addCleanup(self.stop, presence)
            yield presence.whenReady()
        return presence

    def stop(self, presence):
        if presence.running:
            return presence.stopService()

    def login(self, presence, name: str, session=None, **kw):
        session = session or WaitingSession()
        return presence.login(session, name, "127.0.0.1", **kw).addCallback(
            lambda info: session
        )


class ClaimTests(ClusterTestCase):
    def test_interface(self) -> None:
        connection = ClusterConnection(parseClusterURL(self.redis.url), "x", self.prefix)
        self.assertTrue(
            IPresenceService.providedBy(ClusterPresenceService(connection))
        )

    @defer.inlineCallbacks
    def test_loginSeenByTheOtherNode(self):
        a = yield self.node("a")
        b = yield self.node("b")
        seen = events(b, LOGIN, "alice")
        yield self.login(a, "alice")
        info = yield seen
        self.assertEqual(info, UserInfo("alice", "protobuf", "127.0.0.1", "ACTIVO"))
        self.assertEqual(b.lookup("ALICE"), info)
        # Protocols see a user of another protocol, reached through b.
        remote = b.sessionFor("alice")
        self.assertIsInstance(remote, RemoteSession)
        self.assertEqual(remote.protocolName, "protobuf")
        self.assertEqual(remote.maxFileSize, 0)  # a WaitingSession takes no files
        self.assertIsNone(b.infoFor(remote))
        failure = yield self.assertFailure(self.login(b, "Alice"), NameInUse)
        self.assertEqual(str(failure), "the name Alice is already online")

    @defer.inlineCallbacks
    def test_concurrentClaimsOneWins(self):
        """
        Both nodes claim one name in the same reactor turn, before either
        can see the other's event: Redis decides, exactly one wins.
        """
        a = yield self.node("a")
        b = yield self.node("b")
        for name, other in [("carol", "CAROL"), ("dave", "dAve"), ("alice", "aIice")]:
            results = yield defer.DeferredList(
                [self.login(a, name), self.login(b, other)], consumeErrors=True
            )
            won = [ok for ok, _ in results]
            self.assertEqual(sorted(won), [False, True], name)
            lost = [r for ok, r in results if not ok][0]
            self.assertTrue(lost.check(NameInUse), lost)

    @defer.inlineCallbacks
    def test_lookalikeAcrossNodes(self):
        a = yield self.node("a")
        b = yield self.node("b")
        seen = events(b, LOGIN, "José87")
        yield self.login(a, "José87")
        yield seen
        failure = yield self.assertFailure(self.login(b, "Jоsé87"), NameInUse)
        self.assertEqual(
            str(failure), "the name Jоsé87 looks like José87, who is online"
        )
        self.assertEqual(b.lookalike("JOSE\u030187").name, "José87")

    @defer.inlineCallbacks
    def test_lookalikeRefusedByRedis(self):
        """The look-alike check of the claim script itself (replicas empty)."""
        a = yield self.node("a")
        b = yield self.node("b")
        results = yield defer.DeferredList(
            [self.login(a, "alice"), self.login(b, "aIice")], consumeErrors=True
        )
        lost = [r for ok, r in results if not ok]
        self.assertEqual(len(lost), 1)
        self.assertIn("looks like", str(lost[0].value))

    @defer.inlineCallbacks
    def test_authenticatedLookalikePair(self):
        """Two accounts that look alike, both with passwords: both online."""
        a = yield self.node("a")
        b = yield self.node("b")
        results = yield defer.DeferredList(
            [
                self.login(a, "alice", authenticated=True),
                self.login(b, "aIice", authenticated=True),
            ],
            consumeErrors=True,
        )
        self.assertEqual([ok for ok, _ in results], [True, True])
        # A third, without a password, is refused by the script too.
        c = yield self.node("c")
        results = yield defer.DeferredList(
            [self.login(c, "aIIce")], consumeErrors=True
        )
        self.assertTrue(results[0][1].check(NameInUse))

    @defer.inlineCallbacks
    def test_localChecksFirst(self):
        a = yield self.node("a", protect=lambda name: name == "admin")
        yield self.assertFailure(self.login(a, "all"), InvalidName)
        yield self.assertFailure(self.login(a, "admin"), NameProtected)
        session = yield self.login(a, "admin", authenticated=True)
        self.assertEqual(a.infoFor(session).name, "admin")
        self.assertEqual(a.metrics.logins["protobuf", "refused"], 2)

    @defer.inlineCallbacks
    def test_replicaLoadedAtStart(self):
        a = yield self.node("a")
        for name in ["one", "two", "three"]:
            yield self.login(a, name)
        a.setStatus(a.localSessions()[1], "lunch")
        b = yield self.node("b")
        # The status change may still be on its way: the replica converges.
        if b.lookup("two").status != "lunch":
            yield events(b, STATUS, "two")
        self.assertEqual(
            [(u.name, u.status) for u in b.users()],
            [("one", "ACTIVO"), ("two", "lunch"), ("three", "ACTIVO")],
        )

    @defer.inlineCallbacks
    def test_eventsToObservers(self):
        a = yield self.node("a")
        b = yield self.node("b")
        seen = []
        b.addObserver(lambda kind, info: seen.append((kind, info.name, info.status)))
        loggedOut = events(b, LOGOUT, "alice")
        session = yield self.login(a, "alice")
        a.setStatus(session, "fuera 😀 ñ")
        a.logout(session)
        yield loggedOut
        self.assertEqual(
            seen,
            [
                (LOGIN, "alice", "ACTIVO"),
                (STATUS, "alice", "fuera 😀 ñ"),
                (LOGOUT, "alice", "fuera 😀 ñ"),
            ],
        )
        self.assertIsNone(b.lookup("alice"))
        # The name is free again, on either node.
        yield self.login(b, "alice")

    @defer.inlineCallbacks
    def test_stopRemovesUsers(self):
        a = yield self.node("a")
        b = yield self.node("b")
        seen = events(b, LOGIN, "alice")
        yield self.login(a, "alice")
        yield seen
        gone = events(b, LOGOUT, "alice")
        yield a.stopService()
        yield gone
        self.assertEqual(b.users(), [])
        self.assertEqual(self.redis.command("HLEN", self.prefix + "names").strip(), "0")
        # A stopped node claims nothing more.
        failure = yield self.assertFailure(self.login(a, "carol"), ClusterUnavailable)
        self.assertEqual(str(failure), "the cluster cannot be reached")


class ReapTests(ClusterTestCase):
    @defer.inlineCallbacks
    def test_reapNodeWithoutHeartbeat(self):
        """
        A node that stops beating (killed) loses its users at the next
        reaping round of any other node.
        """
        clock = task.Clock()
        a = yield self.node("a", clock=clock)
        b = yield self.node("b")
        seen = events(a, LOGIN, "bob")
        yield self.login(b, "bob")
        yield seen
        # b dies: no goodbye, its connections just go.
        b._heartbeat.stop()
        yield b.connection.stopService()
        clock.advance(a.ttl / 3)  # a's round: b's heartbeat is still there
        yield a.connection.redis.ping()
        self.assertIsNotNone(a.lookup("bob"))
        # b's heartbeat expires (as PX would make it).
        yield a.connection.redis.delete(self.prefix + "alive:b")
        gone = events(a, LOGOUT, "bob")
        clock.advance(a.ttl / 3)
        yield gone
        yield self.login(a, "bob")

    @defer.inlineCallbacks
    def test_restartUnderTheSameId(self):
        """A node that starts with a dead node's id frees its names first."""
        a = yield self.node("a")
        b = yield self.node("b")
        seen = events(b, LOGIN, "alice")
        yield self.login(a, "alice")
        yield seen
        a._heartbeat.stop()
        yield a.connection.stopService()  # died, its heartbeat still alive
        gone = events(b, LOGOUT, "alice")
        again = yield self.node("a")
        yield gone
        self.assertEqual(again.users(), [])
        yield self.login(again, "alice")

    @defer.inlineCallbacks
    def test_realTTL(self):
        """With a short TTL the heartbeat key really expires in Redis."""
        from twisted.internet import reactor

        a = yield self.node("a", ttl=0.3, clock=reactor)
        b = yield self.node("b", ttl=0.3, clock=reactor)
        seen = events(a, LOGIN, "bob")
        yield self.login(b, "bob")
        yield seen
        gone = events(a, LOGOUT, "bob")
        b._heartbeat.stop()
        yield b.connection.stopService()
        yield gone
        self.assertIsNone(a.lookup("bob"))


class RoutingTests(ClusterTestCase):
    @defer.inlineCallbacks
    def test_directInOrder(self):
        a = yield self.node("a")
        b = yield self.node("b")
        seen = events(a, LOGIN, "bob")
        alice = yield self.login(a, "alice")
        bob = yield self.login(b, "bob", WaitingSession("msrp"))
        yield seen
        for i in range(50):
            self.assertEqual(a.sendMessage(alice, "BOB", f"m{i}"), 1)
        received = yield bob.messagesArrived(50)
        self.assertEqual(
            received, [ChatMessage("alice", "bob", f"m{i}") for i in range(50)]
        )
        self.assertEqual(a.metrics.routed["protobuf"]["msrp"], 50)
        self.assertEqual(a.clusterMetrics.remoteSent, 50)
        yield b.connection.redis.ping()  # the last delivery's turn is over
        self.assertEqual(b.clusterMetrics.remoteDelivered, 50)

    @defer.inlineCallbacks
    def test_localMessagesStayLocal(self):
        a = yield self.node("a")
        alice = yield self.login(a, "alice")
        carol = yield self.login(a, "carol")
        self.assertEqual(a.sendMessage(alice, "carol", "hi"), 1)
        # Delivered before sendMessage returned: no round trip to Redis.
        self.assertEqual(carol.messages, [ChatMessage("alice", "carol", "hi")])
        self.assertEqual(a.clusterMetrics.remoteSent, 0)
        self.assertRaises(NoSuchUser, a.sendMessage, alice, "nobody", "hi")

    @defer.inlineCallbacks
    def test_broadcastOncePerUser(self):
        a = yield self.node("a")
        b = yield self.node("b")
        c = yield self.node("c")
        sessions = {}
        for node, name in [(a, "alice"), (a, "amy"), (b, "bob"), (b, "ben"), (c, "carl")]:
            sessions[name] = yield self.login(node, name)
        while len(a.users()) < 5:
            yield events(a, LOGIN, [n for n in sessions if a.lookup(n) is None][0])
        self.assertEqual(a.sendMessage(sessions["alice"], "all", "hello"), 4)
        for name in ["amy", "bob", "ben", "carl"]:
            got = yield sessions[name].messagesArrived(1)
            self.assertEqual(got, [ChatMessage("alice", "all", "hello")])
        # A direct message after it arrives after it: nothing else came.
        a.sendMessage(sessions["alice"], "carl", "after")
        got = yield sessions["carl"].messagesArrived(2)
        self.assertEqual(got[1].text, "after")
        self.assertEqual(sessions["alice"].messages, [])
        self.assertEqual(a.clusterMetrics.remoteSent, 2)

    @defer.inlineCallbacks
    def test_busyRemoteReceiverTellsSender(self):
        a = yield self.node("a")
        b = yield self.node("b")
        seen = events(a, LOGIN, "bob")
        alice = yield self.login(a, "alice")
        yield self.login(b, "bob", BusySession())
        yield seen
        self.assertEqual(a.sendMessage(alice, "bob", "hi"), 1)
        notice = yield alice.messagesArrived(1)
        self.assertEqual(
            notice, [ChatMessage("bob", "alice", notDeliveredText("bob", "is busy"))]
        )
        self.assertEqual(b.clusterMetrics.bounced, 1)

    @defer.inlineCallbacks
    def test_goneRemoteReceiverTellsSender(self):
        a = yield self.node("a")
        b = yield self.node("b")
        seen = events(a, LOGIN, "bob")
        alice = yield self.login(a, "alice")
        bob = yield self.login(b, "bob")
        yield seen
        # bob leaves b while the message is on its way.
        b.logout(bob)
        a.sendMessage(alice, "bob", "hi")
        notice = yield alice.messagesArrived(1)
        self.assertEqual(notice[0].text, notDeliveredText("bob", "is not online any more"))

    @defer.inlineCallbacks
    def test_fileToRemoteUser(self):
        a = yield self.node("a")
        b = yield self.node("b")
        seen = events(a, LOGIN, "bob")
        alice = yield self.login(a, "alice")
        bob = yield self.login(b, "bob", FileSession())
        yield seen
        self.assertEqual(a.fileLimit("bob"), REMOTE_FILE_LIMIT)
        self.assertEqual(IFileReceiver(a.sessionFor("bob")).maxFileSize, REMOTE_FILE_LIMIT)
        taken = yield a.sendFile(alice, "bob", "a.txt", b"\x00\xffdata")
        self.assertTrue(taken)
        self.assertEqual(bob.files, [("alice", "a.txt", b"\x00\xffdata")])
        # Handed to the session protocols see (as MSRP does), the same.
        taken = yield a.sessionFor("bob").deliverFile("alice", "b.txt", b"b")
        self.assertTrue(taken)
        self.assertEqual(bob.files[-1], ("alice", "b.txt", b"b"))
        del bob.files[-1]
        # Too large for the receiver itself: not taken, and the sender knows.
        taken = yield a.sendFile(alice, "bob", "big.bin", b"x" * 101)
        self.assertFalse(taken)
        self.assertEqual(len(bob.files), 1)


class URLTests(TestCase):
    def test_urls(self) -> None:
        tcp = parseClusterURL("redis://10.0.0.5:6380/2")
        self.assertEqual((tcp.kind, tcp.host, tcp.port, tcp.db), ("tcp", "10.0.0.5", 6380, 2))
        self.assertEqual(parseClusterURL("redis://h").port, 6379)
        tls = parseClusterURL("rediss://:s3cret@redis.example:6390/1")
        self.assertEqual((tls.kind, tls.password, tls.db), ("tls", "s3cret", 1))
        self.assertNotIn("s3cret", tls.describe())
        unix = parseClusterURL("unix:///run/redis.sock?db=3")
        self.assertEqual((unix.kind, unix.path, unix.db), ("unix", "/run/redis.sock", 3))
        self.assertEqual(parseClusterURL("redis+unix:///r.sock").path, "/r.sock")
        self.assertEqual(parseClusterURL("rediss://h/0?ca=/etc/ca.pem").ca, "/etc/ca.pem")
        for bad in [
            "http://h", "redis://", "redis://h/x", "unix://", "redis://h:99999",
            "redis://h/0?ca=/etc/ca.pem",
        ]:
            self.assertRaises(ValueError, parseClusterURL, bad)

    @defer.inlineCallbacks
    def test_unixSocket(self):
        redis = redisServer()
        connection = ClusterConnection(
            parseClusterURL(f"unix://{redis.unixSocket}?db=1"), "u", "unix:"
        )
        connection.startService()
        self.addCleanup(connection.stopService)
        yield connection.whenConnected()
        yield connection.redis.set("unix:probe", "1")
        self.assertEqual(redis.command("-n", "1", "GET", "unix:probe").strip(), "1")


class TLSTests(TestCase):
    """rediss://: a node talks to a Redis that only speaks TLS."""

    def setUp(self) -> None:
        import shutil
        import subprocess

        from chatd.testservers import _waitForPort, freePort
        from tests.tls import makePKI

        program = shutil.which("redis-server")
        if program is None:
            raise SkipTest("redis-server is not installed")
        directory = os.path.abspath(self.mktemp())
        self.pki = makePKI(os.path.join(directory, "pki"))
        self.port = freePort()
        self.process = subprocess.Popen(
            [
                program, "--port", "0", "--tls-port", str(self.port),
                "--bind", "127.0.0.1", "--tls-cert-file", self.pki.cert,
                "--tls-key-file", self.pki.key, "--tls-auth-clients", "no",
                "--save", "", "--appendonly", "no", "--dir", directory,
                "--logfile", os.path.join(directory, "redis.log"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.addCleanup(self.process.wait)
        self.addCleanup(self.process.kill)
        _waitForPort(self.port, self.process, "redis-server (TLS)")

    @defer.inlineCallbacks
    def test_loginOverTLS(self):
        url = f"rediss://localhost:{self.port}/0?ca={self.pki.root}"
        presence = ClusterPresenceService(
            ClusterConnection(parseClusterURL(url), "tls", "tls:"), clock=task.Clock()
        )
        presence.startService()
        self.addCleanup(presence.stopService)
        yield presence.whenReady()
        session = WaitingSession()
        info = yield presence.login(session, "alice", "127.0.0.1")
        self.assertEqual(info.name, "alice")
        stored = yield presence.connection.redis.hget("tls:names", "alice")
        self.assertIn('"node":"tls"', stored)
