"""
The listening service each wire format runs under, and what its users see
when it stops.
"""

from __future__ import annotations

import socket

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.error import CannotListenError
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase

from chatd.listener import ListenerService, ListenFailed
from chatd.presence import InMemoryPresenceService
from chatd.protobuf import chat_pb2
from chatd.protobuf.protocol import ProtobufChatFactory
from tests.support import ProtobufClient, login
from tests.twistd import ByteCollector
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure


class StuckTransport(StringTransport):
    """A transport whose peer never reads: closing waits until it is aborted."""

    aborted = False

    def abortConnection(self) -> None:
        self.aborted = True
        self.protocol.connectionLost(Failure(ConnectionDone()))


class ListenerServiceTests(TestCase):
    def setUp(self) -> None:
        self.presence = InMemoryPresenceService()
        self.factory = ProtobufChatFactory(self.presence, Clock(), metrics=self.presence.metrics)

    def test_listensAndStops(self) -> None:
        service = ListenerService(
            "protobuf", TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"), self.factory
        )
        service.startService()
        address = service.port.getHost()
        self.assertEqual(address.host, "127.0.0.1")
        self.assertNotEqual(address.port, 0)
        return service.stopService()

    def test_portInUseIsRaised(self) -> None:
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        service = ListenerService(
            "protobuf",
            TCP4ServerEndpoint(reactor, taken.getsockname()[1], interface="127.0.0.1"),
            self.factory,
        )
        service.configuredAs = f"--protobuf tcp:{taken.getsockname()[1]}"
        failed = self.assertRaises(ListenFailed, service.privilegedStartService)
        # One line naming the option, for twistd to print instead of a
        # traceback; the CannotListenError stays its cause.
        self.assertEqual(
            str(failed),
            f"chatd: --protobuf tcp:{taken.getsockname()[1]}: address already in use",
        )
        self.assertIsInstance(failed.__cause__, CannotListenError)

    def test_stopSaysGoodbye(self) -> None:
        """
        Stopping the service tells every protobuf client why, with one final
        FAILED_OPERATION response, and closes the connection; names are freed.
        """
        service = ListenerService(
            "protobuf", TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"), self.factory
        )
        service.startService()
        alice = ProtobufClient(self.factory)
        alice.send(login("alice"))
        alice.wire()
        d = service.stopService()
        response = alice.response()
        self.assertEqual(response.code, chat_pb2.ServerResponse.FAILED_OPERATION)
        self.assertFalse(response.HasField("option"))
        self.assertEqual(response.response, "the server is shutting down")
        self.assertTrue(alice.transport.disconnecting)
        alice.disconnect()
        self.assertEqual(self.presence.users(), [])
        return d

    @defer.inlineCallbacks
    def test_stopOverRealSocket(self):
        """
        A client on a real socket gets the goodbye, then the connection
        closes, and only then has the service stopped.
        """
        service = ListenerService(
            "protobuf", TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"), self.factory
        )
        service.startService()
        client = ByteCollector()
        yield connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", service.port.getHost().port), client
        )
        client.transport.write(login("alice").SerializeToString())
        yield client.waitFor(lambda data: b"welcome, alice" in data)
        client.received = b""
        stopped = service.stopService()
        yield client.closed
        yield stopped
        response = chat_pb2.ServerResponse.FromString(client.received)
        self.assertEqual(response.response, "the server is shutting down")
        self.assertEqual(self.presence.users(), [])

    def test_stuckClientIsAbortedAfterGrace(self) -> None:
        """
        A client that does not read cannot hold the stop up: after the grace
        period its connection is aborted.
        """
        clock = Clock()
        service = ListenerService(
            "protobuf",
            TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"),
            self.factory,
            clock=clock,
            grace=5,
        )
        service.startService()
        transport = StuckTransport()
        protocol = self.factory.buildProtocol(None)
        transport.protocol = protocol
        protocol.makeConnection(transport)
        protocol.dataReceived(login("alice").SerializeToString())
        stopped = service.stopService()
        self.assertTrue(transport.disconnecting)
        self.assertFalse(transport.aborted)
        clock.advance(4.9)
        self.assertFalse(transport.aborted)
        clock.advance(0.1)
        self.assertTrue(transport.aborted)
        self.assertEqual(self.presence.users(), [])
        return stopped


class EndpointOptionTests(TestCase):
    def test_badEndpointIsUsageError(self) -> None:
        """A wrong endpoint names its option instead of a start-up traceback."""
        from twisted.python.usage import UsageError

        from chatd.tap import Options

        for args, option in [
            (["--protobuf", "ssl:0:privateKey=/nonexistent/key.pem"], "--protobuf"),
            (["--msrp", "tcp:0:nosuchoption=1"], "--msrp"),
            (["--http", "nonsense:1"], "--http"),
        ]:
            with self.assertRaises(UsageError) as cm:
                Options().parseOptions(["--db", "none", "--msgr", "none", *args])
            self.assertTrue(str(cm.exception).startswith(option + " "), str(cm.exception))

    def test_tlsListenerLogsSsl(self) -> None:
        from chatd.listener import describeAddress
        from twisted.internet.address import IPv4Address

        address = IPv4Address("TCP", "127.0.0.1", 8080)
        self.assertEqual(describeAddress(address), "tcp:127.0.0.1:8080")
        self.assertEqual(describeAddress(address, secure=True), "ssl:127.0.0.1:8080")
