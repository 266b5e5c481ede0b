"""
Hostile input for the protobuf chat (issue 5): the framers alone, and the
protocol over in-memory transports, fed arbitrary bytes and mutated valid
streams cut at arbitrary points.
"""

from __future__ import annotations

from hypothesis import event, given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from chatd.presence import InMemoryPresenceService
from chatd.protobuf import chat_pb2
from chatd.protobuf.framing import (
    DelimitedFramer,
    FrameTooLarge,
    FramingError,
    MalformedFrame,
    RawRequestFramer,
    RawResponseFramer,
    encodeDelimited,
    encodeVarint,
)
from chatd.protobuf.protocol import (
    DEFAULT_RAW_WAIT,
    DELIMITED,
    FRAMINGS,
    RAW,
    ProtobufChatFactory,
)
from tests.fuzzing import RecordingTransport, cut, cutPoints, hostileInput
from tests.support import ProtobufClient, login, message

Q = chat_pb2.ClientRequest
R = chat_pb2.ServerResponse
OK = R.SUCCESSFUL_OPERATION

MAX_FRAME = 1024

texts = st.text(max_size=40)
targets = st.sampled_from(["carol", "mallory", "all", "ALL", "nobody", "", "a|b"])

# Requests a hostile client might build from the real message types.
requests = st.one_of(
    st.builds(lambda n, ip: login(n, ip), st.sampled_from(["mallory", "", "carol", "x y"]), texts),
    st.builds(lambda: Q(option=Q.CONNECTED_USERS)),
    st.builds(lambda u: Q(option=Q.USER_INFORMATION, user=chat_pb2.UserRequest(user=u)), targets),
    st.builds(
        lambda u, s: Q(option=Q.STATUS_CHANGE, status=chat_pb2.ChangeStatus(username=u, status=s)),
        st.sampled_from(["", "mallory", "carol"]),
        texts,
    ),
    st.builds(lambda r, t: message(r, t), targets, texts),
    st.builds(lambda o: Q(option=o), st.integers(0, 4)),
).map(lambda req: req.SerializeToString())

# What a client of another version might send: an option chat.proto does not
# define, alone or before the other fields.
payloads = st.one_of(
    requests,
    st.builds(lambda o, rest: b"\x08" + encodeVarint(o) + rest, st.integers(5, 300), st.sampled_from([b"", b"\x12\x02\x0a\x00"])),
)


def validStream(framing: str) -> st.SearchStrategy[bytes]:
    def encode(items: list[tuple[bytes, bool]]) -> bytes:
        out = b""
        for payload, terminator in items:
            if framing == RAW:
                out += payload + (b"\x00" if terminator else b"")
            else:
                out += encodeDelimited(payload)
        return out

    # Mostly a login first, so that the requests after it get past the
    # "log in first" refusal.
    first = st.sampled_from([[(login("mallory").SerializeToString(), False)]] * 3 + [[]])
    return st.builds(
        lambda head, rest: encode(head + rest),
        first,
        st.lists(st.tuples(payloads, st.booleans()), max_size=6),
    )


hostileStreams = st.sampled_from(FRAMINGS).flatmap(
    lambda framing: st.tuples(st.just(framing), hostileInput(validStream(framing)))
)


def framesOf(framer, chunks: list[bytes]) -> tuple[list[bytes], type | None]:
    """
    Feed C{chunks} to C{framer}: the frames, and the class of the first error
    (feeding stops there), or C{None}.
    """
    frames: list[bytes] = []
    for chunk in chunks:
        try:
            for frame in framer.feed(chunk):
                frames.append(frame)
        except FramingError as e:
            return frames, type(e)
    return frames, None


class FramerFuzzTests(TestCase):
    """The framers alone raise nothing but their documented errors."""

    @settings(max_examples=300, deadline=None)
    @given(hostileInput(validStream(RAW)), cutPoints, st.lists(st.booleans(), max_size=12))
    def test_rawFramerArbitraryBytes(self, data, points, flushes) -> None:
        """
        Any bytes, any cuts, a flush (the protocol's wait ending) after any
        read: only L{MalformedFrame} (after which framing carries on) and
        L{FrameTooLarge}; nothing buffered past the maximum.
        """
        framer = RawRequestFramer(MAX_FRAME)
        for i, chunk in enumerate(cut(data, points)):
            try:
                for frame in framer.feed(chunk):
                    self.assertIsInstance(frame, bytes)
                    self.assertLessEqual(len(frame), MAX_FRAME)
            except MalformedFrame:
                self.assertEqual(framer.buffered(), 0)
                continue
            except FrameTooLarge:
                return
            self.assertLessEqual(framer.buffered(), MAX_FRAME)
            if i < len(flushes) and flushes[i]:
                frame = framer.flush()
                if frame is not None:
                    self.assertLessEqual(len(frame), MAX_FRAME)
                self.assertFalse(framer.waiting)

    @settings(max_examples=300, deadline=None)
    @given(hostileInput(validStream(DELIMITED)), cutPoints, cutPoints)
    def test_delimitedFramerExactUnderAnyCut(self, data, pointsA, pointsB) -> None:
        """
        Any bytes: the frames up to the first error, and that error, are the
        same however the stream is cut (delimited framing is exact).
        """
        whole = framesOf(DelimitedFramer(MAX_FRAME), [data])
        self.assertEqual(framesOf(DelimitedFramer(MAX_FRAME), cut(data, pointsA)), whole)
        self.assertEqual(framesOf(DelimitedFramer(MAX_FRAME), cut(data, pointsB)), whole)
        for frame in whole[0]:
            self.assertLessEqual(len(frame), MAX_FRAME)


class ProtocolFuzzTests(TestCase):
    """
    A hostile client of the protobuf chat never makes C{dataReceived} raise or
    log a failure, only gets well-framed responses, and leaves the server
    serving everyone else.
    """

    def hostileSession(self, framing: str, chunks: list[bytes], waits: list[bool]):
        clock = Clock()
        presence = InMemoryPresenceService()
        factory = ProtobufChatFactory(
            presence, clock, framing=framing, maxFrameSize=MAX_FRAME, metrics=presence.metrics
        )

        # A bystander, online before, that the hostile client may write to.
        carol = ProtobufClient(factory)
        carol.send(login("carol"))
        self.assertEqual(carol.response().code, OK)

        transport = RecordingTransport()
        hostile = factory.buildProtocol(transport.getPeer())
        hostile.makeConnection(transport)
        for i, chunk in enumerate(chunks):
            if transport.disconnecting:
                break  # a real transport reads nothing more once closing
            hostile.dataReceived(chunk)
            if i < len(waits) and waits[i]:
                clock.advance(DEFAULT_RAW_WAIT)
        clock.advance(DEFAULT_RAW_WAIT)
        self.assertEqual(self.flushLoggedErrors(), [])

        event(f"hostile logged in: {presence.infoFor(hostile) is not None}")
        # Every write is whole well-formed chat.ServerResponses (several
        # when the answers to one read were written together).
        for write in transport.writes:
            if framing == DELIMITED:
                framer = DelimitedFramer()
                frames = list(framer.feed(write))
                self.assertEqual(framer.buffered(), 0, write)
            else:
                framer = RawResponseFramer()
                frames = list(framer.feed(write))
                last = framer.flush()
                frames += [] if last is None else [last]
            self.assertGreater(len(frames), 0, write)
            for frame in frames:
                response = R.FromString(frame)
                self.assertTrue(response.HasField("code"), frame)
                self.assertTrue(response.response or response.HasField("messg"), frame)
        for response in carol.responses():
            self.assertEqual(response.code, OK)
            self.assertEqual(response.messg.receiver in ("carol", "all"), True)

        # Well-behaved clients on other connections are served exactly.
        # The hostile client may hold one of these names, or a look-alike.
        taken = any(presence.lookalike(name) for name in ("alice", "bob"))
        a, b = ("alice2", "bob2") if taken else ("alice", "bob")
        alice = ProtobufClient(factory)
        alice.send(login(a))
        self.assertEqual(
            alice.response(),
            R(
                option=Q.USER_LOGIN,
                code=OK,
                response=f"welcome, {a}",
                user=chat_pb2.UserInformation(username=a, ip="192.0.2.7", status="ACTIVO"),
            ),
        )
        bob = ProtobufClient(factory)
        bob.send(login(b))
        self.assertEqual(bob.response().response, f"welcome, {b}")
        alice.send(message(b, "hola, ¿qué tal?"))
        self.assertEqual(
            alice.response(),
            R(option=Q.SEND_MESSAGE, code=OK, response=f"delivered to {b}"),
        )
        self.assertEqual(
            bob.response(),
            R(
                option=Q.SEND_MESSAGE,
                code=OK,
                messg=chat_pb2.Message(receiver=b, sender=a, text="hola, ¿qué tal?"),
            ),
        )

        # Once gone, the hostile client's name (if it got one) is free.
        hostile.connectionLost(None)
        self.assertIsNone(presence.infoFor(hostile))
        self.assertEqual([u.name for u in presence.users()], ["carol", a, b])
        self.assertNotIn(hostile, factory.connections)
        for client in (carol, alice, bob):
            client.disconnect()
        self.assertEqual(presence.users(), [])
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual(self.flushLoggedErrors(), [])

    @settings(max_examples=200, deadline=None)
    @given(hostileStreams, cutPoints, st.lists(st.booleans(), max_size=12))
    def test_hostileClient(self, stream, points, waits) -> None:
        framing, data = stream
        self.hostileSession(framing, cut(data, points), waits)

    @settings(max_examples=50, deadline=None)
    @given(st.sampled_from(FRAMINGS), hostileInput(validStream(RAW)))
    def test_hostileClientByteByByte(self, framing, data) -> None:
        """The smallest reads, with the raw wait ending between some."""
        chunks = [data[i : i + 1] for i in range(len(data))]
        self.hostileSession(framing, chunks, [i % 3 == 0 for i in range(len(chunks))])
