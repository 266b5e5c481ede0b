"""
Two real C{twistd chatd} nodes on one real redis-server that stops and
starts again empty (docs/cluster.md, "Failures"): what users of each
protocol see while it is away and once it is back; and an MSGR login on one
node whose chat socket binds on the other.
"""

from __future__ import annotations

import itertools
import os

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from chatd.msrp.texts import ERR_CLUSTER_LOGIN
from chatd.testservers import redisServer
from tests.test_client_support import ClientTestMixin
from tests.test_cluster_failures import RedisLink
from tests.test_metrics import samples
from tests.test_observability_twistd import httpGet
from tests import test_cluster_twistd

_prefixes = itertools.count()

#: What a user is told of a message to a user of the other node meanwhile.
UNREACHABLE = "bob is on another node, and the cluster cannot be reached now"


class TwoNodes(ClientTestMixin):
    """Two twistd nodes on the run's redis-server, which tests may stop."""

    timeout = 120

    # test_cluster_twistd's nodes (its class is not imported by name, so
    # that its tests are not collected again here).
    startNode = test_cluster_twistd.TwoNodeTests.startNode
    on = test_cluster_twistd.TwoNodeTests.on
    directoriesHold = test_cluster_twistd.TwoNodeTests.directoriesHold

    def setUp(self) -> None:
        super().setUp()
        self.redis = redisServer()
        self.prefix = f"failures{os.getpid()}-{next(_prefixes)}:"
        self.nodes: dict[str, dict[str, int]] = {}
        self.servers: dict = {}

    def tearDown(self) -> None:
        # The next tests need the run's redis-server.
        if self.redis.process is None:
            self.redis.start()

    @defer.inlineCallbacks
    def outage(self):
        """Stop Redis; fires once both nodes have seen it go."""
        self.redis.stop()
        for node in ("a", "b"):
            yield self.servers[node].waitForOutput(
                b"cluster command connection to " + self.redis.url.encode() + b"/0 lost"
            )

    @defer.inlineCallbacks
    def comeBack(self):
        """Start Redis again, empty; fires once both nodes are back."""
        self.redis.start()
        for node in ("a", "b"):
            yield self.servers[node].waitForOutput(f"cluster node {node} back:".encode())


class RedisOutageTests(TwoNodes, TestCase):
    @defer.inlineCallbacks
    def test_redisRestartedUnderTraffic(self):
        yield self.startNode("a")
        yield self.startNode("b")
        alice = yield self.on("a", "protobuf", "alice")
        carol = yield self.on("a", "protobuf", "carol")
        mara = yield self.on("a", "msrp", "mara")
        bob = yield self.on("b", "protobuf", "bob")
        luna = yield self.on("b", "msgr", "luna")
        yield self.directoriesHold(5)
        alice.write("msg bob antes\n")
        yield bob.waitFor("[alice] antes")

        yield self.outage()
        health = yield httpGet(self.nodes["a"]["msgr-http"], "/healthz")
        self.assertEqual(
            (health.status, health.body),
            (503, "unavailable\ncluster: disconnected (node a)\n"),
        )
        # Users of one node go on chatting.
        alice.write("msg carol durante\n")
        yield carol.waitFor("[alice] durante")
        mara.write("msg alice hola desde msrp\n")
        yield alice.waitFor("[mara] hola desde msrp")
        # A message to the other node is refused, and its sender told why.
        alice.write("msg bob durante\n")
        yield alice.waitFor(UNREACHABLE)
        luna.write("msg alice durante\n")
        # MSGR answers #MSJ with a code only: 803, as for a busy receiver.
        yield luna.waitFor("not delivered to alice")
        mara.write("msg bob durante\n")
        yield mara.waitFor("No se pudo entregar a bob: está en otro nodo")
        # The list is the last one known: everyone, as before.
        alice.write("list\n")
        yield alice.waitFor("* 5 users online")
        # A status changed meanwhile, a user who leaves meanwhile.
        alice.write("status fuera\n")
        yield alice.waitFor("fuera")
        yield self.finish(carol)

        yield self.comeBack()
        for process, text in [(alice, "list\n"), (bob, "list\n")]:
            process.write(text)
        # carol left during the outage: gone on both nodes.
        yield alice.waitFor("* 4 users online")
        yield bob.waitFor("* 4 users online")
        self.assertEqual(self.redis.command("HEXISTS", self.prefix + "names", "carol").strip(), "0")
        self.assertIn('"status":"fuera"', self.redis.command("HGET", self.prefix + "names", "alice"))
        # Across nodes, both ways and every protocol, as before the outage.
        alice.write("msg bob después\n")
        yield bob.waitFor("[alice] después")
        bob.write("msg mara de vuelta\n")
        yield mara.waitFor("de vuelta")
        luna.write("msg alice otra vez\n")
        yield alice.waitFor("[luna] otra vez")
        # And new logins.
        yield self.on("b", "protobuf", "dave")
        health = yield httpGet(self.nodes["a"]["msgr-http"], "/healthz")
        self.assertEqual(
            (health.status, health.body), (200, "ok\ncluster: connected (node a)\n")
        )
        metrics = yield httpGet(self.nodes["a"]["msgr-http"], "/metrics")
        found = samples(metrics.body)
        # Both connections (commands, subscriber) came back once.
        self.assertEqual(found['chatd_cluster_reconnects_total{node="a"}'], 2.0)
        self.assertEqual(found['chatd_cluster_connected{node="a"}'], 1.0)

    @defer.inlineCallbacks
    def test_newLoginsRefusedWhileRedisIsAway(self):
        yield self.startNode("a")
        yield self.startNode("b")
        self.ports = self.nodes["a"]
        registered = yield self.script("msgr", "", "--name", "luna", "--password", "pw", "--register")
        self.assertIn("logged in as luna", registered.stdout)
        yield self.outage()
        protobuf = yield self.script("protobuf", "", "--name", "dave")
        self.assertIn(
            "login refused: the cluster cannot be reached",
            protobuf.stdout + protobuf.stderr,
        )
        msrp = yield self.script("msrp", "", "--name", "dav1")
        self.assertIn(ERR_CLUSTER_LOGIN, msrp.stdout + msrp.stderr)
        # MSGR: the HTTP login cannot be counted by the lockout, so it is
        # refused with the login's general code once Redis' deadline passed.
        msgr = yield self.script("msgr", "", "--name", "luna", "--password", "pw")
        self.assertIn("901", msgr.stdout + msgr.stderr)

        yield self.comeBack()
        yield self.on("a", "protobuf", "dave")
        yield self.on("b", "msrp", "dav1")
        self.ports = self.nodes["a"]
        yield self.loggedIn("msgr", "luna", "--password", "pw")


class MsgrAcrossNodesTests(TwoNodes, TestCase):
    """An MSGR login over HTTP on node a, its chat socket bound on node b."""

    @defer.inlineCallbacks
    def test_loginOnASocketOnB(self):
        # The nodes share one account database, as a cluster must.
        shared = os.path.join(self.directory, "accounts.sqlite3")
        yield self.startNode("a", "--db", shared)
        yield self.startNode("b", "--db", shared)
        alice = yield self.on("a", "protobuf", "alice")
        # The client logs in (registers) over node a's HTTP API and binds
        # the chat socket on node b with the token a gave it.
        self.ports = {"msgr-http": self.nodes["a"]["msgr-http"], "msgr": self.nodes["b"]["msgr"]}
        luna = yield self.loggedIn("msgr", "luna", "--password", "pw", "--register")
        self.assertIn(b"luna bound the MSGR socket", self.servers["b"].output)
        self.assertNotIn(b"luna bound the MSGR socket", self.servers["a"].output)
        yield self.directoriesHold(2)
        luna.write("msg alice hola desde b\n")
        yield alice.waitFor("[luna] hola desde b")
        alice.write("msg luna hola desde a\n")
        yield luna.waitFor("hola desde a")


class ConflictTwistdTests(TwoNodes, TestCase):
    """The rule of a name claimed twice, seen by real clients."""

    @defer.inlineCallbacks
    def test_laterLoginLosesTheName(self):
        """
        Redis restarts empty while node a is cut off from it; on node b,
        back first, a new user takes the name alice, which a's alice (who
        logged in earlier) still holds. When a is back, a's alice keeps the
        name, and b's is told why and disconnected.
        """
        link = RedisLink(self.redis.port)
        self.addCleanup(link.close)
        yield self.startNode("a", "--cluster", link.url)
        yield self.startNode("b")
        first = yield self.on("a", "protobuf", "alice")
        watcher = yield self.on("b", "protobuf", "watcher")
        yield link.cut()
        yield self.servers["a"].waitForOutput(b"cluster command connection to " + link.url.encode() + b"/0 lost")
        self.redis.restart()
        yield self.servers["b"].waitForOutput(b"cluster node b back:")
        second = yield self.on("b", "protobuf", "alice")
        link.restore()
        yield self.servers["a"].waitForOutput(b"cluster node a back:")
        yield second.ended
        self.assertIn(
            "the name alice was also taken on another node while the cluster"
            " was split; the earlier login keeps it",
            second.stdout,
        )
        watcher.write("msg alice ¿quién eres?\n")
        yield first.waitFor("[watcher] ¿quién eres?")
        self.assertIn('"node":"a"', self.redis.command("HGET", self.prefix + "names", "alice"))
