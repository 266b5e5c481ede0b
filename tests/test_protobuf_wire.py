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
