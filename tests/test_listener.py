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
from twisted.trial.unittest import TestCase

from chatd.listener import ListenerService
from chatd.presence import InMemoryPresenceService
from chatd.protobuf import chat_pb2
from chatd.protobuf.protocol import ProtobufChatFactory
from tests.support import ProtobufClient, login


class ListenerServiceTests(TestCase):
    def setUp(self) -> None:
        self.presence = InMemoryPresenceService()
        self.factory = ProtobufChatFactory(self.presence, Clock())

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
        self.assertRaises(CannotListenError, service.privilegedStartService)

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
