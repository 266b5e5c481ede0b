"""
The MSRP peer-to-peer variant against a real C{twistd chatd}: a client of the
variant, a seed binary client and a protobuf client talk to each other over
real sockets on 127.0.0.1.
"""

from __future__ import annotations

import os

from google.protobuf.message import DecodeError
from twisted.internet import defer, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.trial.unittest import TestCase

from chatd.protobuf import chat_pb2
from tests.support import login, message
from tests.twistd import ByteCollector, TwistdProcess

R = chat_pb2.ServerResponse


def delivery(data: bytes):
    try:
        response = R.FromString(data)
    except DecodeError:
        return None
    return response if response.HasField("messg") else None


class VariantOverTwistdTests(TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def connect(self, port: int) -> defer.Deferred:
        client = ByteCollector()
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
        self.addCleanup(lambda: (client.transport.loseConnection(), client.closed)[1])
        return client

    @defer.inlineCallbacks
    def logged(self, server: TwistdProcess, text: bytes) -> defer.Deferred:
        """Wait until the server logged C{text} (the variant's name must arrive alone)."""
        while text not in server.output:
            yield task.deferLater(reactor, 0.02, lambda: None)

    @defer.inlineCallbacks
    def test_conversation(self):
        directory = self.mktemp()
        os.makedirs(directory)
        server = TwistdProcess(
            ["--protobuf", "tcp:0:interface=127.0.0.1", "--msrp", "tcp:0:interface=127.0.0.1",
             "--http", "none", "--msgr", "none", "--db", "none", "--msrp-greeting", "0"],
            ["protobuf", "msrp"],
            directory,
        )
        self.addCleanup(server.stop)
        ports = yield server.start()

        clt2 = yield self.connect(ports["msrp"])
        clt2.transport.write(b"clt2\x00\x03")
        yield clt2.waitFor(lambda data: data.endswith(b"Cliente 1: clt2\n\x00"))
        clt2.received = b""

        carla = yield self.connect(ports["protobuf"])
        carla.transport.write(login("carla").SerializeToString())
        yield carla.waitFor(lambda data: b"carla" in data)
        carla.received = b""

        abcd = yield self.connect(ports["msrp"])
        abcd.transport.write(b"abcd")
        yield self.logged(server, b"msrp abcd connected")
        abcd.transport.write(b"\x00\x01clt2 hola clt2")
        got = yield clt2.waitFor(lambda data: data.endswith(b"\x00") and data)
        self.assertEqual(got, b"\x00\x01abcdhola clt2\x00")

        clt2.transport.write(b"\x00\x01abcdbien\x00")
        got = yield abcd.waitFor(lambda data: len(data) >= 12 and data)
        self.assertEqual(got, b"[clt2]: bien")
        abcd.received = b""

        carla.transport.write(message("abcd", "hola abcd").SerializeToString())
        got = yield abcd.waitFor(lambda data: len(data) >= 18 and data)
        self.assertEqual(got, b"[carla]: hola abcd")
        abcd.received = b""

        abcd.transport.write(b"\x00\x01carla hola carla")
        response = yield carla.waitFor(delivery)
        self.assertEqual(
            (response.messg.sender, response.messg.text), ("abcd", "hola carla")
        )

        abcd.transport.write(b"\x00\x03")
        got = yield abcd.waitFor(lambda data: data.count(b"\n") >= 4 and data)
        self.assertEqual(
            got,
            b"Lista de clientes:\nCliente 1: clt2\nCliente 2: carla (carl)\n"
            b"Cliente 3: abcd\n",
        )
