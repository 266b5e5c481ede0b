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
    """Answers each connection with the host it came from, then closes."""

    def __init__(self) -> None:
        self.hosts: list[str] = []

    def buildProtocol(self, addr):
        self.hosts.append(addr.host)
        return protocol.Protocol()


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
        endpoint = dualStack(reactor, endpoints.serverFromString(reactor, "tcp:0"))
        self.assertIsInstance(endpoint, DualStackServerEndpoint)
        peers = _Peers()
        port = yield endpoint.listen(peers)
        self.addCleanup(port.stopListening)
        self.assertEqual(port.getHost().host, "::")
        number = port.getHost().port
        yield self.connect("127.0.0.1", number)
        yield self.connect("::1", number)
        self.assertEqual(peers.hosts, ["::ffff:127.0.0.1", "::1"])
        self.assertEqual([plainHost(h) for h in peers.hosts], ["127.0.0.1", "::1"])

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
