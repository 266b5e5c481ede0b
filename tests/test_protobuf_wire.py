"""
The responses the protobuf chat encodes by hand on its hot path are byte for
byte what protobuf itself serializes.
"""

from hypothesis import given, strategies as st
from twisted.trial.unittest import TestCase

from chatd.protobuf import chat_pb2
from chatd.protobuf.protocol import encodeDelivery, encodeSent

R = chat_pb2.ServerResponse
SEND = chat_pb2.ServerResponse.SEND_MESSAGE
OK = chat_pb2.ServerResponse.SUCCESSFUL_OPERATION

texts = st.text(max_size=300)


class HandEncodingTests(TestCase):
    @given(texts)
    def test_sent(self, text):
        expected = R(option=SEND, code=OK, response=text).SerializeToString()
        self.assertEqual(encodeSent(text), expected)

    @given(texts, texts, texts)
    def test_delivery(self, receiver, sender, text):
        expected = R(
            option=SEND,
            code=OK,
            messg=chat_pb2.Message(receiver=receiver, sender=sender, text=text),
        ).SerializeToString()
        self.assertEqual(encodeDelivery(receiver, sender, text), expected)

    def test_longAndEmpty(self):
        for text in ("", "x" * 127, "x" * 128, "ñ" * 100, "y" * 20000):
            expected = R(
                option=SEND,
                code=OK,
                messg=chat_pb2.Message(receiver="bob", sender="", text=text),
            ).SerializeToString()
            self.assertEqual(encodeDelivery("bob", "", text), expected)
            self.assertEqual(
                encodeSent(text),
                R(option=SEND, code=OK, response=text).SerializeToString(),
            )


class BatchedWriteTests(TestCase):
    """
    The answers to one read go out in one write per connection, in order;
    answers to a read that asks one thing go out at once.
    """

    def setUp(self):
        from twisted.internet.task import Clock

        from chatd.limits import UNLIMITED
        from chatd.presence import InMemoryPresenceService
        from chatd.protobuf.framing import encodeDelimited
        from chatd.protobuf.protocol import DELIMITED, ProtobufChatFactory
        from tests.fuzzing import RecordingTransport
        from tests.support import login

        self.encode = lambda request: encodeDelimited(request.SerializeToString())
        self.factory = ProtobufChatFactory(
            InMemoryPresenceService(), Clock(), framing=DELIMITED, limits=UNLIMITED
        )
        self.clients = {}
        for name, host in (("ana", "192.0.2.1"), ("bob", "192.0.2.2")):
            transport = RecordingTransport(host)
            protocol = self.factory.buildProtocol(transport.getPeer())
            protocol.makeConnection(transport)
            protocol.dataReceived(self.encode(login(name)))
            transport.writes.clear()
            self.clients[name] = (protocol, transport)

    def test_pipelinedMessages(self):
        from tests.support import message

        ana, anaWire = self.clients["ana"]
        bob, bobWire = self.clients["bob"]
        ana.dataReceived(b"".join(self.encode(message("bob", f"m{n}")) for n in range(3)))
        self.assertEqual(
            bobWire.writes,
            [b"".join(encodeDelimitedDelivery("bob", "ana", f"m{n}") for n in range(3))],
        )
        self.assertEqual(
            anaWire.writes,
            [b"".join(encodeDelimitedSent("delivered to bob") for _ in range(3))],
        )
        # One request, one write, at once.
        bob.dataReceived(self.encode(message("ana", "hola")))
        self.assertEqual(anaWire.writes[1:], [encodeDelimitedDelivery("ana", "bob", "hola")])


def encodeDelimitedDelivery(receiver, sender, text):
    from chatd.protobuf.framing import encodeDelimited

    return encodeDelimited(encodeDelivery(receiver, sender, text))


def encodeDelimitedSent(text):
    from chatd.protobuf.framing import encodeDelimited

    return encodeDelimited(encodeSent(text))
