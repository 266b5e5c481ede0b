"""
The protobuf framers alone: bytes in, frames out.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import TestCase

from chatd.protobuf import chat_pb2
from chatd.protobuf.framing import (
    DelimitedFramer,
    FrameTooLarge,
    MalformedFrame,
    RawRequestFramer,
    encodeDelimited,
    encodeVarint,
    readVarint,
    scanOption,
)

Q = chat_pb2.ClientRequest

names = st.text(min_size=1, max_size=8)

# Requests that hold what their option needs: under raw framing they are
# exact however the stream is cut.
complete_requests = st.one_of(
    names.map(lambda n: Q(option=Q.USER_LOGIN, newuser=chat_pb2.UserRegistration(username=n))),
    st.tuples(names, st.text(max_size=300)).map(
        lambda t: Q(option=Q.SEND_MESSAGE, messg=chat_pb2.Message(receiver=t[0], text=t[1]))
    ),
    names.map(lambda n: Q(option=Q.STATUS_CHANGE, status=chat_pb2.ChangeStatus(status=n))),
    names.map(lambda n: Q(option=Q.USER_INFORMATION, user=chat_pb2.UserRequest(user=n))),
)


def cut(data: bytes, points: list[int]) -> list[bytes]:
    points = sorted({p % (len(data) + 1) for p in points})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(edges, edges[1:])]


class VarintTests(TestCase):
    def test_roundTrip(self) -> None:
        for value in [0, 1, 127, 128, 300, 2**32, 2**63]:
            encoded = encodeVarint(value)
            self.assertEqual(readVarint(encoded, 0), (value, len(encoded)))

    def test_incomplete(self) -> None:
        self.assertIsNone(readVarint(b"\x80\x80", 0))

    def test_tooLong(self) -> None:
        self.assertRaises(MalformedFrame, readVarint, b"\xff" * 11, 0)

    def test_scanOption(self) -> None:
        self.assertEqual(scanOption(bytes.fromhex("0804")), 4)
        self.assertEqual(scanOption(bytes.fromhex("12020a00" "0809")), 9)
        self.assertIsNone(scanOption(bytes.fromhex("12020a00")))
        self.assertIsNone(scanOption(b"\x0f"))


class RawRequestFramerTests(TestCase):
    def test_completeAtNeededField(self) -> None:
        framer = RawRequestFramer()
        data = Q(option=Q.SEND_MESSAGE, messg=chat_pb2.Message(receiver="b", text="t")).SerializeToString()
        self.assertEqual(list(framer.feed(data)), [data])
        self.assertFalse(framer.waiting)

    def test_waitsWithoutNeededField(self) -> None:
        framer = RawRequestFramer()
        self.assertEqual(list(framer.feed(bytes.fromhex("0801"))), [])
        self.assertTrue(framer.waiting)
        self.assertEqual(framer.flush(), bytes.fromhex("0801"))
        self.assertIsNone(framer.flush())

    def test_insideFieldIsNotWaiting(self) -> None:
        framer = RawRequestFramer()
        self.assertEqual(list(framer.feed(bytes.fromhex("0804" "2a05" "0a"))), [])
        self.assertFalse(framer.waiting)
        self.assertIsNone(framer.flush())

    def test_zeroTerminators(self) -> None:
        framer = RawRequestFramer()
        self.assertEqual(
            list(framer.feed(bytes.fromhex("00" "0801" "00" "00" "0802" "00"))),
            [bytes.fromhex("0801"), bytes.fromhex("0802")],
        )
        self.assertEqual(framer.buffered(), 0)

    def test_nonAscendingFieldStartsNextMessage(self) -> None:
        framer = RawRequestFramer()
        self.assertEqual(
            list(framer.feed(bytes.fromhex("0801" "0801"))), [bytes.fromhex("0801")]
        )
        self.assertEqual(framer.flush(), bytes.fromhex("0801"))

    def test_announcedLengthTooLarge(self) -> None:
        framer = RawRequestFramer(maxFrameSize=100)
        with self.assertRaises(FrameTooLarge):
            list(framer.feed(bytes.fromhex("0804" "2a") + encodeVarint(101)))

    def test_framesBeforeAnErrorAreKept(self) -> None:
        framer = RawRequestFramer()
        frames = []
        with self.assertRaises(MalformedFrame):
            for frame in framer.feed(bytes.fromhex("0801" "00" "0f")):
                frames.append(frame)
        self.assertEqual(frames, [bytes.fromhex("0801")])
        self.assertEqual(framer.buffered(), 0)

    @settings(max_examples=200, deadline=None)
    @given(st.lists(complete_requests, min_size=1, max_size=5), st.lists(st.integers(0, 10_000), max_size=12))
    def test_anyCutGivesTheSameFrames(self, requests, points) -> None:
        payloads = [r.SerializeToString() for r in requests]
        framer = RawRequestFramer()
        frames = []
        for chunk in cut(b"".join(payloads), points):
            frames.extend(framer.feed(chunk))
        self.assertEqual(frames, payloads)
        self.assertEqual(framer.buffered(), 0)


class DelimitedFramerTests(TestCase):
    def test_emptyMessage(self) -> None:
        self.assertEqual(list(DelimitedFramer().feed(b"\x00")), [b""])

    def test_tooLarge(self) -> None:
        with self.assertRaises(FrameTooLarge):
            list(DelimitedFramer(maxFrameSize=10).feed(encodeVarint(11)))

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.binary(max_size=300), max_size=6), st.lists(st.integers(0, 10_000), max_size=12))
    def test_anyCutGivesTheSameFrames(self, payloads, points) -> None:
        framer = DelimitedFramer()
        frames = []
        for chunk in cut(b"".join(map(encodeDelimited, payloads)), points):
            frames.extend(framer.feed(chunk))
        self.assertEqual(frames, payloads)
        self.assertEqual(framer.buffered(), 0)
