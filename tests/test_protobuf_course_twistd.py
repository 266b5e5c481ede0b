"""
The course revision of the protobuf chat against a real C{twistd -n chatd},
with its defaults (C{--protobuf-dialect auto}, the raw gap on): a course
client (client B's bytes) talks with a seed protobuf client and an MSRP
client, and every byte the course client gets is checked.
"""

from __future__ import annotations

import os

from google.protobuf.message import DecodeError
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.trial.unittest import TestCase

from chatd.msrp.codec import encodeListRequest
from chatd.protobuf import chat_pb2
from tests.support import login, message
from tests.test_protobuf_course import H, s, sub
from tests.twistd import ByteCollector, TwistdProcess

R = chat_pb2.ServerResponse

CARLA_INFO = s(1, "carla") + s(2, "127.0.0.1") + s(3, "ACTIVO")
BOB_INFO = s(1, "bob") + s(2, "127.0.0.1") + s(3, "ACTIVO")
CLT1_INFO = s(1, "clt1") + s(2, "127.0.0.1") + s(3, "ACTIVO")


def seedResponseWith(field: str):
    """A predicate: the bytes parse as one seed ServerResponse with C{field}."""

    def check(data: bytes):
        try:
            response = R.FromString(data)
        except DecodeError:
            return None
        return response if response.HasField(field) else None

    return check


class CourseOverTwistdTests(TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def connect(self, port: int):
        client = ByteCollector()
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
        self.addCleanup(lambda: (client.transport.loseConnection(), client.closed)[1])
        return client

    @defer.inlineCallbacks
    def exactly(self, client: ByteCollector, expected: bytes):
        """Wait for C{expected}, and check that it is all that came."""
        yield client.waitFor(lambda data: len(data) >= len(expected))
        self.assertEqual(client.received.hex(" "), expected.hex(" "))
        client.received = b""

    @defer.inlineCallbacks
    def test_courseSeedAndMsrp(self):
        directory = self.mktemp()
        os.makedirs(directory)
        loopback = "tcp:0:interface=127.0.0.1"
        server = TwistdProcess(
            ["--protobuf", loopback, "--msrp", loopback, "--http", "none",
             "--msgr", "none", "--db", "none"],
            ["protobuf", "msrp"],
            directory,
        )
        self.addCleanup(server.stop)
        ports = yield server.start()

        # carla, a course client B: requests and responses end with 0x00.
        carla = yield self.connect(ports["protobuf"])
        carla.transport.write(H("0801 1212 0a05") + b"carla" + H("1209") + b"127.0.0.1" + H("00"))
        yield self.exactly(
            carla, H("0801 1002") + s(3, "welcome, carla") + sub(5, CARLA_INFO) + H("00")
        )

        bob = yield self.connect(ports["protobuf"])
        bob.transport.write(login("bob").SerializeToString())
        response = yield bob.waitFor(seedResponseWith("user"))
        self.assertEqual((response.option, response.code), (R.USER_LOGIN, R.SUCCESSFUL_OPERATION))
        bob.received = b""

        clt1 = yield self.connect(ports["msrp"])
        clt1.transport.write(b"clt1")
        # MSRP says nothing to a name accepted; its list shows the course
        # user (under her slot) once it is in.
        clt1.transport.write(encodeListRequest())
        yield clt1.waitFor(lambda data: b"carla" in data and data.endswith(b"\x00"))
        clt1.received = b""

        carla.transport.write(H("0802 00"))
        yield self.exactly(
            carla,
            H("0802 1002") + s(3, "3 users online")
            + sub(4, sub(1, CARLA_INFO) + sub(1, BOB_INFO) + sub(1, CLT1_INFO)) + H("00"),
        )

        # carla -> bob (seed): a seed delivery; carla gets no answer.
        carla.transport.write(
            H("0805") + sub(5, s(1, "bob") + s(2, "carla") + s(3, "hola bob")) + H("00")
        )
        delivery = yield bob.waitFor(seedResponseWith("messg"))
        self.assertEqual(
            (delivery.option, delivery.code, delivery.messg.receiver,
             delivery.messg.sender, delivery.messg.text),
            (R.SEND_MESSAGE, R.SUCCESSFUL_OPERATION, "bob", "carla", "hola bob"),
        )
        bob.received = b""

        # bob -> carla: a course delivery, ended with 0x00.
        bob.transport.write(message("carla", "hola carla").SerializeToString())
        yield self.exactly(
            carla,
            H("0805 1002") + sub(6, s(1, "carla") + s(2, "bob") + s(3, "hola carla")) + H("00"),
        )

        # carla -> clt1 (MSRP): an MSJE from her slot "carl".
        carla.transport.write(
            H("0805") + sub(5, s(1, "clt1") + s(2, "carla") + s(3, "hola clt1")) + H("00")
        )
        yield self.exactly(clt1, H("0001") + b"carl" + b"carla: hola clt1" + H("00"))

        # clt1 -> carla, by her slot.
        clt1.transport.write(H("0001") + b"carl" + b"hola carla" + H("00"))
        yield self.exactly(
            carla,
            H("0805 1002") + sub(6, s(1, "carla") + s(2, "clt1") + s(3, "hola carla")) + H("00"),
        )

        # A broadcast reaches both, each in its own terms.
        carla.transport.write(
            H("0805") + sub(5, s(1, "all") + s(2, "carla") + s(3, "hola a todos")) + H("00")
        )
        delivery = yield bob.waitFor(seedResponseWith("messg"))
        self.assertEqual(
            (delivery.messg.receiver, delivery.messg.sender, delivery.messg.text),
            ("all", "carla", "hola a todos"),
        )
        yield self.exactly(clt1, H("0001") + b"carl" + b"carla: hola a todos" + H("00"))
        self.assertEqual(carla.received, b"")
