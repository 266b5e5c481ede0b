"""
Listeners with no interface take IPv4 and IPv6 clients (issue 12 item 8).

The dual-stack tests bind C{::} on port 0 (that is the feature: every
address of both families) and connect only through loopback, 127.0.0.1 and
::1.
"""

from __future__ import annotations

from twisted.internet import defer, endpoints, protocol, reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.trial.unittest import SkipTest, TestCase

from chatd.dualstack import (
    DualStackServerEndpoint,
    dualStack,
    hasIPv6,
    plainHost,
)


class _Peers(protocol.Factory):
    """Notes the address of each connection, as built and as its transport says."""

    def __init__(self) -> None:
        self.hosts: list[str] = []
        self.peers: list = []
        self.hostsReached: list[str] = []
        self.accepted: defer.DeferredQueue = defer.DeferredQueue()

    def buildProtocol(self, addr):
        self.hosts.append(addr.host)
        peer = _Peer()
        peer.factory = self
        return peer


class _Peer(protocol.Protocol):
    def connectionMade(self) -> None:
        self.factory.peers.append(self.transport.getPeer())
        self.factory.hostsReached.append(self.transport.getHost().host)
        self.factory.accepted.put(self)


class _Read(protocol.Protocol):
    def connectionMade(self) -> None:
        self.factory.connected.callback(self)


class DualStackTests(TestCase):
    def setUp(self) -> None:
        if not hasIPv6():
            raise SkipTest("this machine cannot listen on IPv6")

    @defer.inlineCallbacks
    def connect(self, host: str, port: int):
        factory = protocol.ClientFactory()
        factory.protocol = _Read
        factory.connected = defer.Deferred()
        connector = reactor.connectTCP(host, port, factory)
        self.addCleanup(connector.disconnect)
        yield factory.connected

    @defer.inlineCallbacks
    def test_bothFamilies(self):
        """A tcp:PORT endpoint takes a client over 127.0.0.1 and one over ::1."""
        peers = _Peers()
        endpoint = dualStack(reactor, endpoints.serverFromString(reactor, "tcp:0"))
        self.assertIsInstance(endpoint, DualStackServerEndpoint)
        port = yield endpoint.listen(peers)
        self.addCleanup(port.stopListening)
        self.assertEqual(port.getHost().host, "::")
        number = port.getHost().port
        for host in ("127.0.0.1", "::1"):
            yield self.connect(host, number)
            served = yield peers.accepted.get()
            self.addCleanup(served.transport.loseConnection)
        # The IPv4 client is seen as such, not as ::ffff:127.0.0.1, by the
        # factory and through its transport.
        self.assertEqual(peers.hosts, ["127.0.0.1", "::1"])
        self.assertEqual(
            [(type(a).__name__, a.host) for a in peers.peers],
            [("IPv4Address", "127.0.0.1"), ("IPv6Address", "::1")],
        )
        self.assertEqual(peers.hostsReached, ["127.0.0.1", "::1"])

    def test_namedInterfaceKept(self):
        """An endpoint that names its interface listens there, as Twisted's does."""
        for description in ("tcp:0:interface=127.0.0.1", "tcp:0:interface=0.0.0.0"):
            endpoint = endpoints.serverFromString(reactor, description)
            self.assertIs(dualStack(reactor, endpoint), endpoint)
        endpoint = endpoints.serverFromString(reactor, "tcp6:0:interface=\\:\\:1")
        self.assertIs(dualStack(reactor, endpoint), endpoint)


class NoIPv6Tests(TestCase):
    def test_ipv4Only(self):
        """Without IPv6, tcp:PORT is Twisted's IPv4 listener, as before."""
        endpoint = endpoints.serverFromString(reactor, "tcp:0")
        self.assertIs(dualStack(reactor, endpoint, ipv6=False), endpoint)
        self.assertIsInstance(endpoint, TCP4ServerEndpoint)


class PlainHostTests(TestCase):
    def test_mapped(self):
        self.assertEqual(plainHost("::ffff:192.0.2.7"), "192.0.2.7")
        self.assertEqual(plainHost("::FFFF:c000:0207".lower()), "192.0.2.7")

    def test_others(self):
        for host in ("192.0.2.7", "::1", "2001:db8::7", "::ffff:zz", ""):
            self.assertEqual(plainHost(host), host)


class TwistdDualStackTests(TestCase):
    """
    A real twistd whose protobuf listener names no interface: a client over
    127.0.0.1 and one over ::1 both log in and talk, each seen by its own
    address.
    """

    timeout = 60

    def setUp(self) -> None:
        if not hasIPv6():
            raise SkipTest("this machine cannot listen on IPv6")

    @defer.inlineCallbacks
    def test_protobufBothFamilies(self):
        import os

        from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
        from twisted.internet.endpoints import connectProtocol

        from chatd.protobuf import chat_pb2
        from tests.support import login, message
        from tests.test_twistd_plugin import responseWith
        from tests.twistd import ByteCollector, TwistdProcess

        R = chat_pb2.ServerResponse
        directory = self.mktemp()
        os.makedirs(directory)
        server = TwistdProcess(
            ["--protobuf", "tcp:0", "--msrp", "none", "--http", "none",
             "--msgr", "none", "--db", "none"],
            ["protobuf"],
            directory,
        )
        self.addCleanup(server.stop)
        ports = yield server.start()
        self.assertIn(b"chatd protobuf listening on tcp:[::]:", server.output)
        clients = {}
        for name, endpoint in [
            ("alice", TCP4ClientEndpoint(reactor, "127.0.0.1", ports["protobuf"])),
            ("bob", TCP6ClientEndpoint(reactor, "::1", ports["protobuf"])),
        ]:
            client = ByteCollector()
            yield connectProtocol(endpoint, client)
            self.addCleanup(lambda c=client: (c.transport.loseConnection(), c.closed)[1])
            client.transport.write(login(name).SerializeToString())
            response = yield client.waitFor(responseWith("user"))
            clients[name] = (client, response.user.ip)
            client.received = b""
        self.assertEqual(
            {name: ip for name, (_, ip) in clients.items()},
            {"alice": "127.0.0.1", "bob": "::1"},
        )
        alice, bob = clients["alice"][0], clients["bob"][0]
        alice.transport.write(message("bob", "hola por IPv6").SerializeToString())
        delivery = yield bob.waitFor(responseWith("messg"))
        self.assertEqual((delivery.messg.sender, delivery.messg.text), ("alice", "hola por IPv6"))
