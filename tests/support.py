"""
Helpers shared by the tests: in-memory clients of each protocol and a
recording session for the presence service.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from zope.interface import implementer

from chatd.presence import ChatMessage, IChatSession
from chatd.protobuf import chat_pb2
from chatd.protobuf.framing import (
    DelimitedFramer,
    RawResponseFramer,
    encodeDelimited,
)
from chatd.protobuf.protocol import RAW


@implementer(IChatSession)
class RecordingSession:
    """An L{IChatSession} that keeps what it is handed."""

    def __init__(self, protocolName: str = "test") -> None:
        self.protocolName = protocolName
        self.messages: list[ChatMessage] = []
        self.disconnected: list[str] = []

    def deliverMessage(self, message: ChatMessage) -> None:
        self.messages.append(message)

    def disconnect(self, reason: str) -> None:
        self.disconnected.append(reason)


def request(**fields) -> chat_pb2.ClientRequest:
    return chat_pb2.ClientRequest(**fields)


def login(name: str, ip: str = "") -> chat_pb2.ClientRequest:
    return request(
        option=chat_pb2.ClientRequest.USER_LOGIN,
        newuser=chat_pb2.UserRegistration(username=name, ip=ip),
    )


def message(receiver: str, text: str, sender: str = "") -> chat_pb2.ClientRequest:
    return request(
        option=chat_pb2.ClientRequest.SEND_MESSAGE,
        messg=chat_pb2.Message(receiver=receiver, text=text, sender=sender),
    )


class ProtobufClient:
    """
    A client of the protobuf chat over a L{StringTransport}: what it sends goes
    into the server protocol's C{dataReceived}; what the server writes is
    parsed back into C{chat.ServerResponse}s.
    """

    def __init__(self, factory, host: str = "192.0.2.7") -> None:
        self.framing = factory.framing
        self.transport = StringTransport(
            peerAddress=IPv4Address("TCP", host, 40000)
        )
        self.protocol = factory.buildProtocol(self.transport.getPeer())
        self.protocol.makeConnection(self.transport)

    def sendBytes(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def encode(self, req: chat_pb2.ClientRequest) -> bytes:
        payload = req.SerializeToString()
        return payload if self.framing == RAW else encodeDelimited(payload)

    def send(self, req: chat_pb2.ClientRequest) -> None:
        self.sendBytes(self.encode(req))

    def wire(self) -> bytes:
        """The bytes written since the last call."""
        data = self.transport.value()
        self.transport.clear()
        return data

    def responses(self) -> list[chat_pb2.ServerResponse]:
        """The responses written since the last call."""
        data = self.wire()
        if self.framing == RAW:
            framer = RawResponseFramer()
            frames = list(framer.feed(data))
            last = framer.flush()
            if last is not None:
                frames.append(last)
        else:
            framer = DelimitedFramer()
            frames = list(framer.feed(data))
            assert framer.buffered() == 0, "a partial delimited response"
        return [chat_pb2.ServerResponse.FromString(frame) for frame in frames]

    def response(self) -> chat_pb2.ServerResponse:
        """The one response written since the last call."""
        responses = self.responses()
        assert len(responses) == 1, f"expected one response, got {responses}"
        return responses[0]

    def disconnect(self) -> None:
        self.protocol.connectionLost(None)
