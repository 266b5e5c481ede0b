"""
Hostile input for MSRP (issue 5): the frame and line decoders alone, and the
protocol (binary and the mode for people) over in-memory transports, fed
arbitrary bytes and mutated valid streams cut at arbitrary points.
"""

from __future__ import annotations

from hypothesis import event, given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from chatd.msrp.codec import (
    LINE_TOO_LONG,
    MAX_TEXT,
    DecodeError,
    FileChunk,
    LineDecoder,
    MsrpFrameDecoder,
    encodeAck,
    encodeClientList,
    encodeError,
    encodeFileHeader,
    encodeListRequest,
    encodeMessage,
)
from chatd.msrp.protocol import HUMAN, P2P, MsrpFactory
from chatd.presence import InMemoryPresenceService
from tests.fuzzing import cut, cutPoints, hostileInput, mergeChunks
from tests.test_msrp_protocol import MsrpClient

names = st.sampled_from([b"cary", b"mall", b"all ", b"ALL ", b"nobo", b"acct", b"\xff\xfe\xfd\xfc"])
fieldText = st.binary(max_size=30).map(lambda b: b.replace(b"\x00", b""))


def fileFrame(name: bytes, filename: bytes, content: bytes, announced: int) -> bytes:
    """An ARCH header announcing C{announced} bytes, then C{content}."""
    return encodeFileHeader(name, filename, announced, 0, b"192.0.2.1") + content


def _fileFrames():
    def build(name, filename, content, delta):
        return fileFrame(name, filename, content, max(0, len(content) + delta))

    return st.builds(
        build,
        names,
        st.sampled_from([b"a.txt", b"", b"\xff.bin"]),
        st.binary(max_size=40),
        st.sampled_from([0, 0, 0, -3, 5]),
    )


clientFrames = st.one_of(
    st.builds(encodeMessage, names, fieldText),
    st.builds(encodeListRequest, st.sampled_from([b"", b"clientes", b"x"])),
    _fileFrames(),
    st.builds(encodeAck, st.sampled_from([b"a.txt", b"b"])),
    st.builds(encodeError, fieldText),
)

serverFrames = st.one_of(
    st.builds(encodeMessage, names, fieldText),
    st.builds(encodeClientList, fieldText),
    _fileFrames(),
    st.builds(encodeAck, fieldText),
    st.builds(encodeError, fieldText),
)

exactServerFrames = st.one_of(
    st.builds(encodeMessage, names, fieldText),
    st.builds(encodeClientList, fieldText),
    st.builds(lambda n, f, c: fileFrame(n, f, c, len(c)), names, fieldText, st.binary(max_size=40)),
    st.builds(encodeAck, fieldText),
    st.builds(encodeError, fieldText),
)

greetings = st.sampled_from([b"mall", b"mall", b"mall", b"acct", b"cary", b"ma\xff\xfe"])

binaryStreams = st.builds(
    lambda greeting, frames: greeting + b"".join(frames),
    greetings,
    st.lists(clientFrames, max_size=6),
)

typedLines = st.one_of(
    st.sampled_from(
        [b"clientes", b"CLIENTES", b"salir", b"cary hola", b"all hola a todos", b"x", b"", b"nobo hola"]
    ),
    st.binary(max_size=20).map(lambda b: b.replace(b"\n", b"")),
    st.just(b"a" * 4100),
)

humanStreams = st.builds(
    lambda name, ending, lines: name + ending + b"".join(line + ending for line in lines),
    st.sampled_from([b"mall", b"ma", b"mallory"]),
    st.sampled_from([b"\n", b"\r\n"]),
    st.lists(typedLines, max_size=6),
)

hostileStreams = st.one_of(hostileInput(binaryStreams), hostileInput(humanStreams))


def decodeAll(decoder, chunks: list[bytes]) -> tuple[list, str | None]:
    """
    Feed C{chunks}: the frames (file content merged), and the type and text
    of the first error (feeding stops there), or C{None}.
    """
    frames: list = []
    for chunk in chunks:
        try:
            for frame in decoder.feed(chunk):
                frames.append(frame)
        except DecodeError as e:
            return mergeChunks(frames, FileChunk), f"{type(e).__name__}: {e}"
    return mergeChunks(frames, FileChunk), None


def modelLines(data: bytes, maxLength: int) -> list:
    """What L{LineDecoder} must yield for C{data}, however it is cut."""
    *lines, partial = data.split(b"\n")
    out: list = []
    for line in lines:
        if line.endswith(b"\r"):
            line = line[:-1]
        out.append(LINE_TOO_LONG if len(line) > maxLength else line)
    # An unfinished line is flagged as soon as it cannot fit any more, even
    # with a "\r" before its end.
    if len(partial) > maxLength + 1:
        out.append(LINE_TOO_LONG)
    return out


class DecoderFuzzTests(TestCase):
    @settings(max_examples=300, deadline=None)
    @given(
        st.booleans(),
        st.one_of(
            hostileInput(st.lists(clientFrames, max_size=6).map(b"".join)),
            hostileInput(st.lists(serverFrames, max_size=6).map(b"".join)),
        ),
        cutPoints,
        cutPoints,
    )
    def test_frameDecoderExactUnderAnyCut(self, fromServer, data, pointsA, pointsB) -> None:
        """
        Any bytes, either direction: only L{DecodeError}, and the same frames
        (up to the same error) however the stream is cut.
        """
        whole = decodeAll(MsrpFrameDecoder(fromServer), [data])
        for points in (pointsA, pointsB):
            decoder = MsrpFrameDecoder(fromServer)
            self.assertEqual(decodeAll(decoder, cut(data, points)), whole)
            self.assertLessEqual(decoder.buffered(), MAX_TEXT + 8)

    @settings(max_examples=300, deadline=None)
    @given(st.lists(exactServerFrames, max_size=6), cutPoints)
    def test_validFramesRoundTrip(self, frames, points) -> None:
        """
        Valid frames (file content as long as announced) decode, under any
        cut, to what each decodes to alone.
        """
        expected: list = []
        for frame in frames:
            got, error = decodeAll(MsrpFrameDecoder(fromServer=True), [frame])
            self.assertIsNone(error)
            expected = mergeChunks(expected + got, FileChunk)
        decoder = MsrpFrameDecoder(fromServer=True)
        self.assertEqual(decodeAll(decoder, cut(b"".join(frames), points)), (expected, None))
        self.assertEqual((decoder.buffered(), decoder.inContent), (0, False))

    @settings(max_examples=300, deadline=None)
    @given(
        st.integers(0, 12),
        st.one_of(
            st.binary(max_size=200),
            st.lists(st.sampled_from([b"ab", b"\r", b"\n", b"\r\n", b"x" * 13, b"\xff"]), max_size=20).map(b"".join),
        ),
        cutPoints,
    )
    def test_lineDecoderMatchesModel(self, maxLength, data, points) -> None:
        """Lines, one C{\\r} dropped, too long ones flagged once: under any cut."""
        decoder = LineDecoder(maxLength)
        got: list = []
        for chunk in cut(data, points):
            got.extend(decoder.feed(chunk))
        self.assertEqual(got, modelLines(data, maxLength))


class ProtocolFuzzTests(TestCase):
    """
    A hostile MSRP client never makes C{dataReceived} raise or log a failure,
    only gets well-formed frames (or lines, in the mode for people), and
    leaves the server serving everyone else.
    """

    def hostileSession(self, chunks: list[bytes], bufferSize: int | None) -> None:
        clock = Clock()
        presence = InMemoryPresenceService(isProtectedName=lambda name: name.casefold() == "acct")
        factory = MsrpFactory(
            presence, clock, maxFileSize=64, maxQueued=256, metrics=presence.metrics
        )

        # A binary bystander, online before, the hostile client may write to.
        cary = MsrpClient(factory, b"cary" + encodeListRequest())
        caryWire = cary.wire()

        hostile = MsrpClient(factory, bufferSize=bufferSize)
        wire = b""
        for chunk in chunks:
            if hostile.closed:
                break  # a real transport reads nothing more once closing
            if hostile.readingPaused:
                wire += hostile.wire()
                caryWire += cary.wire()
                if hostile.readingPaused:
                    break  # nothing more is read: this is a real transport's rule
            hostile.send(chunk)
        wire += hostile.wire()
        caryWire += cary.wire()
        clock.advance(3600)  # any timer fires
        wire += hostile.wire()
        self.assertEqual(self.flushLoggedErrors(), [])

        event(f"hostile logged in: {presence.infoFor(hostile.protocol) is not None}")
        # What the hostile client got parses under MSRP's own rules.
        if hostile.protocol.mode == HUMAN:
            text = wire.decode("utf-8")
            self.assertTrue(text == "" or text.endswith("\n"), text)
        elif hostile.protocol.mode == P2P:
            # The peer-to-peer variant reads plain text (no 0x00), and file
            # offers, which nobody here sends it.
            self.assertNotIn(b"\x00", wire)
        else:
            decoder = MsrpFrameDecoder(fromServer=True)
            list(decoder.feed(wire))
            self.assertEqual(decoder.buffered(), 0, wire)
        list(MsrpFrameDecoder(fromServer=True).feed(caryWire))

        # Well-behaved clients on other connections are served exactly.
        # The hostile client may hold one of these names, or a look-alike.
        taken = any(presence.lookalike(name) for name in ("alic", "bobb"))
        a, b = (b"alc2", b"bob2") if taken else (b"alic", b"bobb")
        alice = MsrpClient(factory, a)
        bob = MsrpClient(factory, b)
        alice.send(encodeMessage(b, "hola, ¿qué tal?".encode()))
        self.assertEqual(alice.wire(), b"")
        self.assertEqual(bob.wire(), encodeMessage(a, "hola, ¿qué tal?".encode()))
        self.assertFalse(alice.closed or bob.closed)

        # Once gone, the hostile client's name (if it got one) is free.
        hostile.disconnect()
        self.assertIsNone(presence.infoFor(hostile.protocol))
        online = [u.name for u in presence.users()]
        self.assertEqual(online, (["cary"] if not cary.closed else []) + [a.decode(), b.decode()])
        self.assertNotIn(hostile.protocol, factory.connections)
        for client in (cary, alice, bob):
            client.disconnect()
        self.assertEqual(presence.users(), [])
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual(self.flushLoggedErrors(), [])

    @settings(max_examples=250, deadline=None)
    @given(hostileStreams, cutPoints, st.sampled_from([None, None, 16]))
    def test_hostileClient(self, data, points, bufferSize) -> None:
        self.hostileSession(cut(data, points), bufferSize)

    @settings(max_examples=40, deadline=None)
    @given(hostileStreams)
    def test_hostileClientByteByByte(self, data) -> None:
        self.hostileSession([data[i : i + 1] for i in range(len(data))], None)
