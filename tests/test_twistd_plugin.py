"""
The installed plugin, as a user starts it: a real `twistd -n chatd` process
on free ports of 127.0.0.1, spoken to over real sockets.
"""

from __future__ import annotations

import os

from google.protobuf.message import DecodeError
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.utils import getProcessOutput
from twisted.trial.unittest import TestCase

from chatd.protobuf import chat_pb2
from tests.support import login, message
from tests.twistd import TWISTD, ByteCollector, TwistdProcess

R = chat_pb2.ServerResponse


def responseWith(field: str):
    """A predicate: the bytes parse as one ServerResponse that has C{field}."""

    def check(data: bytes):
        try:
            response = R.FromString(data)
        except DecodeError:
            return None
        return response if response.HasField(field) else None

    return check


class TwistdPluginTests(TestCase):
    timeout = 60

    def test_helpListsPlugin(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        d = getProcessOutput(TWISTD, ["--help"], path=directory, errortoo=True)
        d.addCallback(lambda out: self.assertRegex(out, rb"chatd +A multi-protocol chat server"))
        return d

    @defer.inlineCallbacks
    def test_protobufOverRealProcess(self):
        directory = self.mktemp()
        os.makedirs(directory)
        server = TwistdProcess(
            # Only the listener under test, on a free port: nothing else is bound.
            ["--protobuf", "tcp:0:interface=127.0.0.1", "--msrp", "none",
             "--http", "none", "--msgr", "none", "--db", "none"],
            ["protobuf"],
            directory,
        )
        self.addCleanup(server.stop)
        ports = yield server.start()

        clients = []
        for name in ["alice", "bob"]:
            client = ByteCollector()
            yield connectProtocol(
                TCP4ClientEndpoint(reactor, "127.0.0.1", ports["protobuf"]), client
            )
            self.addCleanup(lambda c=client: (c.transport.loseConnection(), c.closed)[1])
            client.transport.write(login(name).SerializeToString())
            response = yield client.waitFor(responseWith("user"))
            self.assertEqual(
                (response.option, response.code, response.user.username, response.user.ip),
                (R.USER_LOGIN, R.SUCCESSFUL_OPERATION, name, "127.0.0.1"),
            )
            client.received = b""
            clients.append(client)
        alice, bob = clients

        alice.transport.write(message("bob", "hola desde un proceso").SerializeToString())
        delivery = yield bob.waitFor(responseWith("messg"))
        self.assertEqual(
            (delivery.messg.sender, delivery.messg.receiver, delivery.messg.text),
            ("alice", "bob", "hola desde un proceso"),
        )
        answer = yield alice.waitFor(responseWith("response"))
        self.assertEqual(answer.response, "delivered to bob")

        # SIGTERM: every client is told why, in its protocol's terms, before
        # its connection closes, and the process shuts down in order.
        for client in clients:
            client.received = b""
        yield server.stop()
        for client in clients:
            yield client.closed
            goodbye = R.FromString(client.received)
            self.assertEqual(
                (goodbye.code, goodbye.response),
                (R.FAILED_OPERATION, "the server is shutting down"),
            )
        # twistd ends by re-raising the signal it stopped for, once it has
        # shut down in order.
        self.assertIn(b"Server Shut Down.", server.output)
        self.assertEqual(server.exitStatus.signal, 15)
