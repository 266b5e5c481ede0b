"""
How a cluster node plugs into the service tree: the options, the tree's
C{cluster}, listeners that wait for the directory, /healthz and /metrics.
"""

from __future__ import annotations

from twisted.application import service
from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.python import usage
from twisted.trial.unittest import TestCase
from twisted.web.test.requesthelper import DummyRequest

from chatd.cluster.presence import ClusterPresenceService
from chatd.exporter import HealthResource, MetricsExporter
from chatd.listener import ListenerService
from chatd.metrics import ChatdMetrics
from chatd.presence import InMemoryPresenceService
from chatd.tap import Options, makeService
from chatd.testservers import redisServer
from chatd.presence import LOGIN
from tests.test_cluster_presence import ClusterTestCase, events
from tests.test_metrics import samples
from tests.twistd import ByteCollector


def options(*args: str) -> Options:
    config = Options()
    config.parseOptions(
        ["--protobuf", "none", "--msrp", "none", "--msgr", "none", "--http", "none",
         "--db", "none", *args]
    )
    return config


class OptionTests(TestCase):
    def test_embeddedByDefault(self) -> None:
        top = makeService(options())
        self.assertIsInstance(top.presence, InMemoryPresenceService)
        self.assertNotIsInstance(top.presence, ClusterPresenceService)
        self.assertIsNone(top.cluster)
        self.assertTrue(top.whenReady().called)

    def test_clusterNode(self) -> None:
        redis = redisServer()
        top = makeService(
            options("--cluster", redis.url + "/3", "--node-id", "n1", "--cluster-prefix", "x:")
        )
        self.assertIsInstance(top.presence, ClusterPresenceService)
        self.assertEqual((top.cluster.nodeId, top.cluster.prefix), ("n1", "x:"))
        self.assertEqual(top.cluster.address.db, 3)
        self.assertFalse(top.cluster.connected)
        self.assertIs(top.getServiceNamed("presence"), top.presence)

    def test_defaultNodeId(self) -> None:
        import os
        import socket

        top = makeService(options("--cluster", "redis://127.0.0.1:1"))
        self.assertEqual(top.cluster.nodeId, f"{socket.gethostname()}-{os.getpid()}")

    def test_badOptions(self) -> None:
        for args, error in [
            (["--cluster", "http://x"], "--cluster http://x: 'http://x' is not"),
            (["--cluster-ttl", "0"], "--cluster-ttl 0: must be a positive number"),
            (["--node-id", "a b"], "--node-id a b: must be printable, without spaces"),
        ]:
            e = self.assertRaises(usage.UsageError, options, *args)
            self.assertTrue(str(e).startswith(error), str(e))


class _Counting(protocol.Factory):
    def __init__(self) -> None:
        self.built = 0

    def buildProtocol(self, addr):
        self.built += 1
        return protocol.Protocol()


class ListenerWaitsTests(TestCase):
    @defer.inlineCallbacks
    def test_acceptsOnceReady(self):
        ready = defer.Deferred()
        parent = service.MultiService()
        parent.whenReady = lambda: ready
        factory = _Counting()
        listener = ListenerService(
            "protobuf", TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"), factory
        )
        listener.setServiceParent(parent)
        logged = []
        from twisted.logger import globalLogPublisher

        observer = lambda event: logged.append(event.get("log_format"))
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        parent.startService()
        self.addCleanup(parent.stopService)
        port = listener.port
        # Bound, but not accepting: connections wait in the backlog.
        self.assertNotIn(port, reactor.getReaders())
        self.assertNotIn("chatd {label} listening on {address}", logged)
        client = ByteCollector()
        yield connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), client
        )
        self.addCleanup(lambda: (client.transport.loseConnection(), client.closed)[1])
        self.assertEqual(factory.built, 0)
        ready.callback(None)
        self.assertIn(port, reactor.getReaders())
        self.assertIn("chatd {label} listening on {address}", logged)


class ObservabilityTests(ClusterTestCase):
    @defer.inlineCallbacks
    def test_healthz(self):
        a = yield self.node("a")
        request = DummyRequest([b""])
        body = HealthResource(a.metrics).render_GET(request)
        self.assertEqual(body, b"ok\ncluster: connected (node a)\n")
        yield a.connection.stopService()
        request = DummyRequest([b""])
        body = HealthResource(a.metrics).render_GET(request)
        self.assertEqual((request.responseCode, body), (503, b"unavailable\ncluster: disconnected (node a)\n"))
        # Without a cluster, as ever.
        self.assertEqual(HealthResource(ChatdMetrics()).render_GET(DummyRequest([b""])), b"ok\n")

    @defer.inlineCallbacks
    def test_metrics(self):
        a = yield self.node("a")
        b = yield self.node("b")
        seen = events(a, LOGIN, "bob")
        alice = yield self.login(a, "alice")
        bob = yield self.login(b, "bob")
        yield seen
        a.sendMessage(alice, "bob", "hi")
        yield bob.messagesArrived(1)
        a._beat()  # one heartbeat: one round trip measured
        yield a.connection.redis.ping()
        found = samples(MetricsExporter(a.metrics).exposition()[0].decode())
        self.assertEqual(found['chatd_cluster_connected{node="a"}'], 1.0)
        self.assertEqual(found['chatd_cluster_directory_users{node="a"}'], 2.0)
        self.assertEqual(found['chatd_cluster_local_users{node="a"}'], 1.0)
        self.assertEqual(found['chatd_cluster_remote_sent_total{node="a"}'], 1.0)
        self.assertEqual(found['chatd_cluster_reconnects_total{node="a"}'], 0.0)
        self.assertGreaterEqual(found['chatd_cluster_redis_round_trip_seconds_count{node="a"}'], 1.0)
        self.assertEqual(found['chatd_sessions_online{protocol="protobuf"}'], 2.0)
        found = samples(MetricsExporter(b.metrics).exposition()[0].decode())
        self.assertEqual(found['chatd_cluster_remote_delivered_total{node="b"}'], 1.0)
