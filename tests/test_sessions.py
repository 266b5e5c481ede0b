"""
The connection start every protocol shares (L{chatd.sessions.SessionProtocol})
and what a factory expects of its protocols (L{ISessionProtocol}): a new wire
format gets the connection limits, the login deadline and the goodbye at
shutdown by saying only its own words.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from chatd.limits import Limits
from chatd.metrics import CONN_LIMIT, LOGIN_TIMEOUT, SHUTDOWN
from chatd.msrp.protocol import MsrpFactory
from chatd.presence import InMemoryPresenceService
from chatd.protobuf.protocol import DELIMITED, ProtobufChatFactory
from chatd.sessions import ISessionProtocol, SessionFactory, SessionProtocol

from tests.support import ProtobufClient
from tests.test_msgr_helpers import MsgrHarness
from tests.test_msrp_protocol import MsrpClient

#: Two connections from one address; five seconds to log in.
LIMITS = Limits(
    maxConnections=0,
    maxConnectionsPerAddress=2,
    rate=0.0,
    burst=0.0,
    maxSendQueue=0,
    loginTimeout=5.0,
    keepAlive=0,
    closeGrace=10.0,
)


class KnockProtocol(SessionProtocol):
    """
    The smallest wire format: a line C{name} logs in; the server's words are
    lines starting with C{!}. Everything else is L{SessionProtocol}'s.
    """

    protocolName = "knock"

    def admitted(self) -> None:
        self.transport.write(b"who?\n")

    def dataReceived(self, data: bytes) -> None:
        self.user = data.strip().decode()

    def refuse(self, refusal: str) -> None:
        self.disconnect(f"refused: {refusal}")

    def loginTimedOut(self) -> None:
        self.disconnect("too slow")

    def disconnect(self, reason: str) -> None:
        if not self._closing:
            self._closing = True
            self.transport.write(b"!%s\n" % reason.encode())
            self.transport.loseConnection()

    def connectionLost(self, reason=None) -> None:
        self.factory.release(self)


class KnockFactory(SessionFactory):
    protocol = KnockProtocol


class SessionProtocolTests(TestCase):
    """A protocol built on L{SessionProtocol}, over in-memory transports."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.factory = KnockFactory(self.clock, LIMITS)

    def connect(self, host: str = "192.0.2.7") -> tuple[KnockProtocol, StringTransport]:
        transport = StringTransport(peerAddress=IPv4Address("TCP", host, 40000))
        protocol = self.factory.buildProtocol(transport.getPeer())
        protocol.makeConnection(transport)
        return protocol, transport

    def close(self, protocol: KnockProtocol) -> None:
        protocol.connectionLost(None)

    def test_providesTheInterface(self) -> None:
        protocol, _ = self.connect()
        self.assertTrue(verifyObject(ISessionProtocol, protocol))
        self.assertEqual(protocol.peerHost, "192.0.2.7")

    def test_admitted(self) -> None:
        """An admitted connection is greeted, counted, and awaits its login."""
        protocol, transport = self.connect()
        self.assertEqual(transport.value(), b"who?\n")
        self.assertFalse(transport.disconnecting)
        self.assertIn(protocol, self.factory.connections)
        self.assertTrue(protocol.awaitingLogin)

    def test_refusedInItsOwnWords(self) -> None:
        """
        Past a connection limit the client is told why, in the protocol's
        words only (never greeted), closed, and counted as refused.
        """
        first, _ = self.connect()
        second, _ = self.connect()
        third, transport = self.connect()
        self.assertEqual(
            transport.value(), b"!refused: too many connections from your address\n"
        )
        self.assertTrue(transport.disconnecting)
        self.close(third)
        self.assertEqual(self.factory.metrics.disconnects, {("knock", CONN_LIMIT): 1})
        # Its place was never taken: one more may come once one leaves.
        self.close(first)
        _, fourth = self.connect()
        self.assertEqual(fourth.value(), b"who?\n")

    def test_loginDeadline(self) -> None:
        """
        A connection that has not logged in within the limit is told so and
        closed; one that logged in is left alone.
        """
        late, lateTransport = self.connect()
        prompt, promptTransport = self.connect("192.0.2.8")
        prompt.dataReceived(b"alice\n")
        self.assertFalse(prompt.awaitingLogin)
        self.clock.advance(LIMITS.loginTimeout)
        self.assertEqual(lateTransport.value(), b"who?\n!too slow\n")
        self.assertTrue(lateTransport.disconnecting)
        self.assertEqual(promptTransport.value(), b"who?\n")
        self.assertFalse(promptTransport.disconnecting)
        self.close(late)
        self.assertEqual(
            self.factory.metrics.disconnects, {("knock", LOGIN_TIMEOUT): 1}
        )
        self.close(prompt)

    def test_shutDown(self) -> None:
        """The server stopping tells every connection the factory's reason."""
        protocol, transport = self.connect()
        stopped = self.factory.shutDown()
        self.assertEqual(transport.value(), b"who?\n!the server is shutting down\n")
        self.assertNoResult(stopped)
        self.close(protocol)
        self.successResultOf(stopped)
        self.assertEqual(self.factory.metrics.disconnects, {("knock", SHUTDOWN): 1})


class WireFormatsTests(TestCase):
    """Each of chatd's protocols provides what its factory expects."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.presence = InMemoryPresenceService()

    def test_protobuf(self) -> None:
        factory = ProtobufChatFactory(
            self.presence, self.clock, framing=DELIMITED, limits=LIMITS
        )
        client = ProtobufClient(factory)
        self.assertTrue(verifyObject(ISessionProtocol, client.protocol))
        self.assertIsInstance(client.protocol, SessionProtocol)
        client.disconnect()

    def test_msrp(self) -> None:
        factory = MsrpFactory(self.presence, self.clock, limits=LIMITS)
        client = MsrpClient(factory)
        self.assertTrue(verifyObject(ISessionProtocol, client.protocol))
        self.assertIsInstance(client.protocol, SessionProtocol)
        client.protocol.connectionLost(None)

    def test_msgr(self) -> None:
        harness = MsgrHarness(self, limits=LIMITS)
        client = harness.connect()
        self.assertTrue(verifyObject(ISessionProtocol, client.protocol))
        self.assertIsInstance(client.protocol, SessionProtocol)
        client.protocol.connectionLost(None)
