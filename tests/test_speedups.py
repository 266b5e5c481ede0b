"""
The compiled hot path (chatd/protobuf/_speedups.c) against its pure-Python
reference (chatd/protobuf/framing.py): the same bytes in, the same results
out, for valid, mutated and arbitrary input; and the route it opens in the
protocol (framing.classifySend's messages, which skip protobuf's parse)
answering byte for byte as the general route does.

The comparisons need the module built (pip builds it); the suite's second
run, with CHATD_SPEEDUPS=off, still runs them, against the module imported
directly, while the server code around them is on the pure-Python path.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from chatd.presence import InMemoryPresenceService
from chatd.protobuf import chat_pb2, framing, speedups
from chatd.protobuf.framing import (
    E_FALLBACK,
    DelimitedFramer,
    RawRequestFramer,
    encodeDelimited,
    encodeVarint,
)
from chatd.protobuf.protocol import (
    DEFAULT_RAW_WAIT,
    FRAMINGS,
    ProtobufChatFactory,
    deliveryHead,
)
from tests.fuzzing import RecordingTransport, cut, cutPoints, hostileInput, mutate, mutations
from tests.support import login, message

try:
    compiled = importlib.import_module("chatd.protobuf._speedups")
except ImportError as e:  # pragma: no cover - pip builds it
    compiled = None
    notBuilt = f"chatd.protobuf._speedups is not built: {e}"
else:
    notBuilt = None

Q = chat_pb2.ClientRequest
R = chat_pb2.ServerResponse

# Varints that do not fit 64 bits (where C hands over to Python), ten-byte
# ones that do, and one that is too long to be a varint at all.
wideVarints = st.sampled_from(
    [
        b"\xff" * 9 + b"\x7f",
        b"\x80" * 9 + b"\x02",
        b"\xff" * 9 + b"\x01",
        b"\x80" * 9 + b"\x01",
        b"\xff" * 10 + b"\x01",
    ]
)


def rawMessage(receiver: bytes, text: bytes, sender: bytes | None = None) -> bytes:
    """A SEND_MESSAGE request built by hand: any bytes for the strings."""
    body = b"\x0a" + encodeVarint(len(receiver)) + receiver
    if sender is not None:
        body += b"\x12" + encodeVarint(len(sender)) + sender
    body += b"\x1a" + encodeVarint(len(text)) + text
    return b"\x08\x04\x2a" + encodeVarint(len(body)) + body


strings = st.one_of(
    st.text(max_size=20).map(lambda s: s.encode("utf-8")),
    st.binary(max_size=20),
    st.sampled_from([b"\xed\xa0\x80", b"\xc0\x80", b"\xf4\x90\x80\x80", "é".encode()]),
)

# Requests: what clients send, the same built by hand with any bytes, the
# other options, and any of them mutated.
requests = st.one_of(
    st.builds(
        lambda r, t, s: message(r, t, s).SerializeToString(),
        st.text(max_size=20),
        st.text(max_size=300),
        st.text(max_size=8),
    ),
    st.builds(rawMessage, strings, strings, st.none() | strings),
    st.builds(lambda n: login(n).SerializeToString(), st.text(max_size=10)),
    st.builds(lambda o: Q(option=o).SerializeToString(), st.integers(0, 4)),
)
frames = st.one_of(requests, st.builds(mutate, requests, mutations), st.binary(max_size=64))


def stream(framing_: str) -> st.SearchStrategy[bytes]:
    """Requests in C{framing_}, sometimes with a wide varint among them."""
    piece = st.one_of(
        frames.map(encodeDelimited if framing_ == "delimited" else (lambda f: f)),
        st.sampled_from([b"\x00"]) if framing_ == "raw" else st.nothing(),
        wideVarints,
        st.builds(lambda v: b"\x08" + v, wideVarints),
        st.builds(lambda v: b"\x2a" + v, wideVarints),
    )
    return st.lists(piece, max_size=8).map(b"".join).flatmap(
        lambda data: hostileInput(st.just(data))
    )


maxFrames = st.sampled_from([1, 5, 60, 127, 128, 300, 256 * 1024])


def compiledScanRaw(buf, state, maxFrame, classify):
    """C's scan_raw, carried on in Python where C hands over (as RawFramer.scan does)."""
    result = compiled.scan_raw(buf, *state, maxFrame, classify)
    if result[7] == E_FALLBACK:
        more = framing._scanRaw(buf, *result[1:6], maxFrame, classify)
        result = (result[0] + more[0], *more[1:6], result[6] or more[6], more[7], more[8])
    return result


def fed(framer, chunks: list[bytes], classify: bool) -> list:
    """Everything a framer makes of C{chunks}: items, errors, waits, flushes."""
    out: list = []
    for chunk in chunks:
        items, error = framer.scan(chunk, classify)
        out.append(items)
        if error is not None:
            out.append((type(error), str(error)))
            break
        out.append(("waiting", framer.waiting, framer.buffered()))
    out.append(("flush", framer.flush()))
    return out


class CompiledEqualsPythonTests(TestCase):
    """Each function of _speedups.c against its pure-Python twin."""

    skip = notBuilt

    @settings(max_examples=400, deadline=None)
    @given(stream("delimited"), maxFrames, st.booleans())
    def test_scanDelimited(self, data, maxFrame, classify) -> None:
        self.assertEqual(
            compiled.scan_delimited(bytearray(data), maxFrame, classify),
            framing._scanDelimited(bytearray(data), maxFrame, classify),
        )

    @settings(max_examples=400, deadline=None)
    @given(stream("raw"), maxFrames, st.booleans())
    def test_scanRaw(self, data, maxFrame, classify) -> None:
        state = (0, 0, 0, 0, 0)
        self.assertEqual(
            compiledScanRaw(bytearray(data), state, maxFrame, classify),
            framing._scanRaw(bytearray(data), *state, maxFrame, classify),
        )

    def test_scanRawHandsWideVarintsToPython(self) -> None:
        """
        A field number or option value above 64 bits: C stops before it
        with its state, and Python reads it exactly.
        """
        data = bytearray(b"\x08\x04" + b"\x08" + b"\xff" * 9 + b"\x7f" + b"\x2a\x00")
        result = compiled.scan_raw(data, 0, 0, 0, 0, 0, 1024, False)
        self.assertEqual(result[7], E_FALLBACK)
        self.assertEqual(result[0], [b"\x08\x04"])  # the option repeated: a new request
        self.assertEqual(
            compiledScanRaw(data, (0, 0, 0, 0, 0), 1024, False),
            framing._scanRaw(data, 0, 0, 0, 0, 0, 1024, False),
        )

    @settings(max_examples=400, deadline=None)
    @given(frames)
    def test_classifySend(self, frame) -> None:
        self.assertEqual(compiled.classify_send(frame), framing._classifySend(frame))

    @settings(max_examples=300, deadline=None)
    @given(st.text(max_size=20), st.text(max_size=20), st.text(max_size=20000), st.booleans())
    def test_encodeDelivery(self, receiver, sender, text, delimited) -> None:
        head = deliveryHead(receiver, sender)
        expected = R(
            option=R.SEND_MESSAGE,
            code=R.SUCCESSFUL_OPERATION,
            messg=chat_pb2.Message(receiver=receiver, sender=sender, text=text),
        ).SerializeToString()
        if delimited:
            expected = encodeDelimited(expected)
        self.assertEqual(compiled.encode_delivery(head, text, delimited), expected)
        self.assertEqual(framing._encodeDelivery(head, text, delimited), expected)

    def test_encodeDeliveryRefusesWhatIsNotUTF8(self) -> None:
        """A lone surrogate cannot be sent: both refuse it alike."""
        self.assertRaises(UnicodeEncodeError, compiled.encode_delivery, b"", "\udcff", False)
        self.assertRaises(UnicodeEncodeError, framing._encodeDelivery, b"", "\udcff", False)


class FramersEqualTests(TestCase):
    """
    The framers on the compiled path and on the pure-Python path make the
    same of any stream, however it is cut into reads.
    """

    skip = notBuilt

    def both(self, framerClass, name, data, points, maxFrame, classify):
        onC = fed(framerClass(maxFrame), cut(data, points), classify)
        self.patch(framing, name, getattr(framing, "_" + name))
        self.patch(framing, "classifySend", framing._classifySend)
        onPython = fed(framerClass(maxFrame), cut(data, points), classify)
        self.assertEqual(onC, onPython)

    @settings(max_examples=300, deadline=None)
    @given(stream("delimited"), cutPoints, maxFrames, st.booleans())
    def test_delimited(self, data, points, maxFrame, classify) -> None:
        self.patch(framing, "scanDelimited", compiled.scan_delimited)
        self.patch(framing, "classifySend", compiled.classify_send)
        self.both(DelimitedFramer, "scanDelimited", data, points, maxFrame, classify)

    @settings(max_examples=300, deadline=None)
    @given(stream("raw"), cutPoints, maxFrames, st.booleans())
    def test_raw(self, data, points, maxFrame, classify) -> None:
        self.patch(framing, "scanRaw", compiled.scan_raw)
        self.patch(framing, "classifySend", compiled.classify_send)
        self.both(RawRequestFramer, "scanRaw", data, points, maxFrame, classify)


class ClassifySendTests(TestCase):
    """
    framing.classifySend (whichever path is in use) says C{(receiver,
    text)} only for requests protobuf reads as exactly that message.
    """

    @settings(max_examples=500, deadline=None)
    @given(frames)
    def test_onlyWhatProtobufReadsSo(self, frame) -> None:
        found = framing.classifySend(frame)
        if found is None:
            return
        request = Q.FromString(frame)
        self.assertEqual(request.option, Q.SEND_MESSAGE)
        self.assertEqual(
            [field.name for field, _ in request.ListFields()], ["option", "messg"]
        )
        self.assertEqual(found, (request.messg.receiver, request.messg.text))
        self.assertTrue(found[0] and found[1])

    def test_whatClientsSend(self) -> None:
        frame = message("bob", "hola, ¿qué tal?", sender="alice").SerializeToString()
        self.assertEqual(framing.classifySend(frame), ("bob", "hola, ¿qué tal?"))

    def test_generalPathForTheRest(self) -> None:
        for frame in [
            message("bob", "").SerializeToString(),  # empty: refused there
            message("", "hi").SerializeToString(),
            rawMessage(b"b\xffob", b"hi"),  # not UTF-8: refused there
            rawMessage(b"bob", b"\xed\xa0\x80"),  # a surrogate is not UTF-8
            message("bob", "hi").SerializeToString() + b"\x10\x01",  # more fields
            b"\x08\x84\x00" + message("bob", "hi").SerializeToString()[2:],
        ]:
            self.assertIsNone(framing.classifySend(frame), frame)


def session(framing_: str, chunks: list[bytes], classify: bool) -> list[bytes]:
    """
    Every write to a client that sends C{chunks}, and to a bystander it may
    write to, with the route of simple messages on (C{classify}) or off.
    """
    clock = Clock()
    presence = InMemoryPresenceService()
    factory = ProtobufChatFactory(
        presence, clock, framing=framing_, maxFrameSize=1024, metrics=presence.metrics
    )
    carol = RecordingTransport("192.0.2.9")
    first = factory.buildProtocol(carol.getPeer())
    first.makeConnection(carol)
    first.dataReceived(
        (encodeDelimited if framing_ == "delimited" else bytes)(
            login("carol").SerializeToString()
        )
    )
    transport = RecordingTransport()
    client = factory.buildProtocol(transport.getPeer())
    client._classify = classify
    client.makeConnection(transport)
    for chunk in chunks:
        if transport.disconnecting:
            break
        client.dataReceived(chunk)
    clock.advance(DEFAULT_RAW_WAIT)
    client.connectionLost(None)
    first.connectionLost(None)
    return [transport.writes, carol.writes, transport.disconnecting]


def chatStream(framing_: str) -> st.SearchStrategy[bytes]:
    """A login, then requests (mostly messages to carol and to everyone)."""
    encode = encodeDelimited if framing_ == "delimited" else (lambda f: f)
    toCarol = st.builds(
        lambda r, t: message(r, t).SerializeToString(),
        st.sampled_from(["carol", "CAROL", "all", "nobody", "mallory"]),
        st.text(max_size=30),
    )
    pieces = st.lists(st.one_of(toCarol, toCarol, requests), max_size=10)
    return st.builds(
        lambda rest: b"".join(encode(f) for f in [login("mallory").SerializeToString(), *rest]),
        pieces,
    ).flatmap(lambda data: st.one_of(st.just(data), hostileInput(st.just(data))))


class RoutesAnswerAlikeTests(TestCase):
    """
    The route of simple messages (no protobuf parse) and the general route
    write the same bytes to the sender and to the receiver, for any stream
    cut at any points.
    """

    @settings(max_examples=250, deadline=None)
    @given(
        st.sampled_from(FRAMINGS).flatmap(lambda f: st.tuples(st.just(f), chatStream(f))),
        cutPoints,
    )
    def test_sameBytes(self, stream_, points) -> None:
        framing_, data = stream_
        chunks = cut(data, points)
        self.assertEqual(session(framing_, chunks, True), session(framing_, chunks, False))
        self.assertEqual(self.flushLoggedErrors(), [])


class SimpleMessagesSkipTheParseTests(TestCase):
    """
    Once logged in, a simple message is routed without protobuf's parse
    (the point of the route): only the login and the other requests are
    parsed, and the messages still arrive.
    """

    def test_onlyTheOthersParsed(self) -> None:
        from chatd.protobuf import protocol

        parsed = []
        real = protocol.Request

        class CountingRequest:
            @staticmethod
            def FromString(frame):
                parsed.append(frame)
                return real.FromString(frame)

        self.patch(protocol, "Request", CountingRequest)
        listUsers = Q(option=Q.CONNECTED_USERS).SerializeToString()
        chunks = [
            encodeDelimited(login("mallory").SerializeToString()),
            b"".join(
                encodeDelimited(f)
                for f in [
                    message("carol", "uno").SerializeToString(),
                    listUsers,
                    message("carol", "dos").SerializeToString(),
                ]
            ),
        ]
        writes = session("delimited", chunks, True)
        self.assertEqual(parsed, [login("carol").SerializeToString(), login("mallory").SerializeToString(), listUsers])
        delivered = [R.FromString(f).messg.text for w in writes[1] for f in DelimitedFramer().feed(w)]
        self.assertEqual([t for t in delivered if t], ["uno", "dos"])


def pathIn(environment: str | None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop(speedups.ENVIRONMENT, None)
    if environment is not None:
        env[speedups.ENVIRONMENT] = environment
    return subprocess.run(
        [sys.executable, "-c", "from chatd.protobuf import speedups; print(speedups.describe())"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


class ChoiceTests(TestCase):
    """CHATD_SPEEDUPS chooses the path (docs/performance.md)."""

    def test_off(self) -> None:
        result = pathIn("off")
        self.assertEqual(result.stdout, "pure Python: CHATD_SPEEDUPS=off\n")

    def test_autoAndRequired(self) -> None:
        if notBuilt:
            raise self.skipTest(notBuilt)
        for value in (None, "auto", "required", "REQUIRED"):
            result = pathIn(value)
            self.assertEqual(result.stdout, "compiled (chatd.protobuf._speedups)\n", value)

    def test_nonsense(self) -> None:
        result = pathIn("fast")
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("CHATD_SPEEDUPS='fast': expected one of auto, off, required", result.stderr)

    def test_thisProcess(self) -> None:
        """The path this run of the suite is on is the one it asked for."""
        wanted = os.environ.get(speedups.ENVIRONMENT, "auto").lower()
        if wanted == "off":
            self.assertIsNone(speedups.compiled)
            self.assertIs(framing.scanRaw, framing._scanRaw)
        elif wanted == "required" or not notBuilt:
            self.assertIs(speedups.compiled, compiled)
            self.assertIs(framing.scanRaw, compiled.scan_raw)
            self.assertIs(framing.encodeDelivery, compiled.encode_delivery)


class ScanOptionTests(TestCase):
    def test_fieldLongerThanFrame(self) -> None:
        """
        A frame that protobuf refuses, whose first field claims more bytes
        than the frame has, is answered as malformed: it used to close the
        connection as a frame too large.
        """
        self.assertIsNone(framing.scanOption(b"\x02\x03"))
        writes = session("delimited", [encodeDelimited(login("mallory").SerializeToString()), b"\x02\x02\x03"], True)
        answer = R.FromString(DelimitedFramer().scan(writes[0][-1])[0][0])
        self.assertEqual(answer.response, "malformed request: not a chat.ClientRequest")
        self.assertFalse(writes[2])


class ServerSaysWhichTests(TestCase):
    """twistd chatd logs the route it runs, as CHATD_SPEEDUPS chose it."""

    def started(self, value: str) -> str:
        from chatd.harness import ServerProcess, chatdCommand, environment

        directory = self.mktemp()
        os.makedirs(directory)
        argv, _ = chatdCommand(
            {"protobuf": "tcp:0:interface=127.0.0.1", "msrp": "none", "http": "none",
             "msgr": "none", "db": "none"},
            known=set(),
        )
        env = environment()
        env[speedups.ENVIRONMENT] = value
        server = ServerProcess(argv, ["protobuf"], cwd=directory, env=env)
        self.addCleanup(server.stop)
        server.start()
        return server.log()

    def test_off(self) -> None:
        self.assertIn("chatd protobuf hot path: pure Python: CHATD_SPEEDUPS=off\n", self.started("off"))

    def test_required(self) -> None:
        if notBuilt:
            raise self.skipTest(notBuilt)
        self.assertIn(
            "chatd protobuf hot path: compiled (chatd.protobuf._speedups)\n",
            self.started("required"),
        )
