"""
The MSRP wire format (chatd.msrp.codec): exact bytes of every frame, decoding
under every split, and the limits.
"""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import TestCase

from chatd.msrp.codec import (
    LINE_TOO_LONG,
    MAX_FILENAME,
    MAX_IP,
    MAX_TEXT,
    MAX_WORD,
    Ack,
    ClientList,
    DecodeError,
    Error,
    FieldTooLong,
    FileChunk,
    FileEnd,
    FileHeader,
    LineDecoder,
    ListRequest,
    Message,
    MsrpFrameDecoder,
    UnknownOpcode,
    clientListEntry,
    clientListText,
    encodeAck,
    encodeClientList,
    encodeError,
    encodeFileHeader,
    encodeListRequest,
    encodeMessage,
    parseClientListEntry,
    wireText,
)


def decodeAll(data: bytes, fromServer: bool = False, step: int | None = None) -> list:
    """Decode C{data} fed whole, or C{step} bytes at a time."""
    decoder = MsrpFrameDecoder(fromServer)
    if step is None:
        return list(decoder.feed(data))
    frames = []
    for i in range(0, len(data), step):
        frames.extend(decoder.feed(data[i : i + step]))
    return frames


def mergeChunks(frames: list) -> list:
    """Join consecutive FileChunks, so that splits do not matter."""
    merged: list = []
    for frame in frames:
        if isinstance(frame, FileChunk) and merged and isinstance(merged[-1], FileChunk):
            merged[-1] = FileChunk(merged[-1].data + frame.data)
        else:
            merged.append(frame)
    return merged


class EncodeTests(TestCase):
    """Every frame's exact bytes, as docs/msrp.md shows them."""

    def test_message(self) -> None:
        self.assertEqual(
            encodeMessage(b"clt2", b"hola"),
            bytes.fromhex("0001 636c7432 686f6c61 00"),
        )

    def test_fileHeader(self) -> None:
        self.assertEqual(
            encodeFileHeader(b"clt2", b"a.txt", 12345, 40000, b"10.0.0.1"),
            bytes.fromhex(
                "0002 636c7432 612e74787400 0000000000003039 00009c40"
                " 31302e302e302e3100"
            ),
        )

    def test_fileHeaderDefaults(self) -> None:
        """Port 0 and an empty IP (just its 0x00) when not given."""
        self.assertEqual(
            encodeFileHeader(b"clt2", b"a", 0),
            bytes.fromhex("0002 636c7432 6100 0000000000000000 00000000 00"),
        )

    def test_listRequest(self) -> None:
        self.assertEqual(encodeListRequest(), b"\x00\x03")
        self.assertEqual(encodeListRequest(b"lista"), b"\x00\x03lista\x00")

    def test_clientList(self) -> None:
        self.assertEqual(
            encodeClientList(b"Lista de clientes:\n"),
            b"\x00\x03Lista de clientes:\n\x00",
        )

    def test_ack(self) -> None:
        self.assertEqual(encodeAck(b"a.txt"), bytes.fromhex("0004 612e747874 00"))

    def test_error(self) -> None:
        self.assertEqual(encodeError(b"x"), bytes.fromhex("0005 78 00"))

    def test_badArguments(self) -> None:
        """The encoders refuse what would make an invalid frame."""
        with self.assertRaises(ValueError):
            encodeMessage(b"abc", b"x")
        with self.assertRaises(ValueError):
            encodeMessage(b"abcde", b"x")
        with self.assertRaises(ValueError):
            encodeMessage(b"abcd", b"a\x00b")
        with self.assertRaises(ValueError):
            encodeMessage(b"abcd", b"x" * (MAX_TEXT + 1))
        with self.assertRaises(ValueError):
            encodeFileHeader(b"abcd", b"f", -1)
        with self.assertRaises(ValueError):
            encodeFileHeader(b"abcd", b"f", 2**64)
        with self.assertRaises(ValueError):
            encodeFileHeader(b"abcd", b"f", 1, 2**32)
        with self.assertRaises(ValueError):
            encodeFileHeader(b"abcd", b"f" * (MAX_FILENAME + 1), 1)
        with self.assertRaises(ValueError):
            encodeFileHeader(b"abcd", b"f", 1, 0, b"1" * (MAX_IP + 1))
        with self.assertRaises(ValueError):
            encodeListRequest(b"w" * (MAX_WORD + 1))
        with self.assertRaises(ValueError):
            encodeAck(b"a\x00")

    def test_maxima(self) -> None:
        """Fields of exactly the maximum length are fine, and decode back."""
        header = encodeFileHeader(
            b"abcd", b"f" * MAX_FILENAME, 2**64 - 1, 2**32 - 1, b"1" * MAX_IP
        )
        message = encodeMessage(b"abcd", b"t" * MAX_TEXT)
        frames = decodeAll(message + header)
        self.assertEqual(
            frames,
            [
                Message(b"abcd", b"t" * MAX_TEXT),
                FileHeader(b"abcd", b"f" * MAX_FILENAME, 2**64 - 1, 2**32 - 1, b"1" * MAX_IP),
            ],
        )


class HelperTests(TestCase):
    def test_clientListText(self) -> None:
        """The seed's exact list text, every line ended by a newline."""
        self.assertEqual(
            clientListText(["clt1", "clt2"]),
            "Lista de clientes:\nCliente 1: clt1\nCliente 2: clt2\n",
        )
        self.assertEqual(clientListText([]), "Lista de clientes:\n")

    def test_clientListEntry(self) -> None:
        """A user in a binary client's list, with the slot when it is not the name."""
        self.assertEqual(clientListEntry("alic", b"alic"), "alic")
        self.assertEqual(clientListEntry("bo", b"bo  "), "bo")
        self.assertEqual(clientListEntry("carla", b"carl"), "carla (carl)")
        self.assertEqual(clientListEntry("r53l_", b"r531"), "r53l_ (r531)")

    def test_parseClientListEntry(self) -> None:
        """Clients read back the name and the 4 bytes to write to."""
        self.assertEqual(parseClientListEntry("alic"), ("alic", b"alic"))
        self.assertEqual(parseClientListEntry("ñab"), ("ñab", "ñab".encode()))
        self.assertEqual(parseClientListEntry("bo"), ("bo", b"bo  "))
        self.assertEqual(parseClientListEntry("carla (carl)"), ("carla", b"carl"))
        self.assertEqual(parseClientListEntry("(ab)cd ((ab))"), ("(ab)cd", b"(ab)"))
        self.assertEqual(parseClientListEntry("ñañu (ña1)"), ("ñañu", "ña1".encode()))
        # No slot given for a long name: nobody can write to them.
        self.assertEqual(parseClientListEntry("alberto"), ("alberto", None))

    def test_wireText(self) -> None:
        """U+0000 cannot travel in a 0x00-ended field: it becomes U+FFFD."""
        self.assertEqual(wireText("a\x00b"), "a\ufffdb".encode())
        self.assertEqual(wireText("ñ" * 3, maximum=5), "ññ".encode())


class DecodeTests(TestCase):
    """Decoding what clients (and the server) send."""

    stream = (
        encodeMessage(b"clt2", "Hola, ¿cómo estás?".encode())
        + encodeListRequest()
        + encodeListRequest(b"clientes")
        + encodeFileHeader(b"clt2", b"documento.txt", 10, 5555, b"127.0.0.1")
        + b"0123456789"
        + encodeFileHeader(b"clt2", b"vacio", 0)
        + encodeAck(b"documento.txt")
        + encodeError(b"algo")
        + encodeListRequest()
    )
    expected = [
        Message(b"clt2", "Hola, ¿cómo estás?".encode()),
        ListRequest(),
        ListRequest(),
        FileHeader(b"clt2", b"documento.txt", 10, 5555, b"127.0.0.1"),
        FileChunk(b"0123456789"),
        FileEnd(),
        FileHeader(b"clt2", b"vacio", 0, 0, b""),
        FileEnd(),
        Ack(b"documento.txt"),
        Error(b"algo"),
        ListRequest(),
    ]

    def test_joined(self) -> None:
        """Every frame of one read, in order."""
        self.assertEqual(decodeAll(self.stream), self.expected)

    def test_byteByByte(self) -> None:
        """Fed one byte at a time, the same frames (content in 1-byte chunks)."""
        frames = decodeAll(self.stream, step=1)
        self.assertEqual(frames.count(FileChunk(b"0")), 1)
        self.assertEqual(mergeChunks(frames), self.expected)

    def test_everySplit(self) -> None:
        """Split in two at every position, the same frames."""
        for cut in range(len(self.stream) + 1):
            decoder = MsrpFrameDecoder()
            frames = list(decoder.feed(self.stream[:cut]))
            frames += decoder.feed(self.stream[cut:])
            self.assertEqual(mergeChunks(frames), self.expected, cut)

    def test_listRequestAnsweredAtOnce(self) -> None:
        """
        A bare LIST is decoded as soon as its 2 bytes arrive: a client that
        sends C{00 03} and waits gets its answer.
        """
        decoder = MsrpFrameDecoder()
        self.assertEqual(list(decoder.feed(b"\x00\x03")), [ListRequest()])
        # A word that follows later is read and ignored.
        self.assertEqual(list(decoder.feed(b"lista")), [])
        self.assertEqual(list(decoder.feed(b"\x00")), [])
        self.assertEqual(list(decoder.feed(b"\x00\x03")), [ListRequest()])

    def test_listWordTooLong(self) -> None:
        decoder = MsrpFrameDecoder()
        with self.assertRaises(FieldTooLong) as e:
            list(decoder.feed(b"\x00\x03" + b"w" * (MAX_WORD + 1)))
        self.assertEqual(
            str(e.exception),
            f"Error en el formato del mensaje. El campo instrucción supera"
            f" {MAX_WORD} bytes.",
        )

    def test_fromServer(self) -> None:
        """A client's decoder reads the server's LIST text."""
        data = encodeClientList(b"Lista de clientes:\nCliente 1: ab12\n")
        data += encodeMessage(b"ab12", b"x")
        self.assertEqual(
            decodeAll(data, fromServer=True),
            [ClientList(b"Lista de clientes:\nCliente 1: ab12\n"), Message(b"ab12", b"x")],
        )

    def test_unknownOpcode(self) -> None:
        """Frames before it are decoded; then UnknownOpcode."""
        for opcode in (b"\x00\x00", b"\x00\x06", b"\x00\xff", b"\x01\x01", b"ab"):
            decoder = MsrpFrameDecoder()
            frames = []
            with self.assertRaises(UnknownOpcode) as e:
                for frame in decoder.feed(encodeMessage(b"abcd", b"x") + opcode):
                    frames.append(frame)
            self.assertEqual(frames, [Message(b"abcd", b"x")])
            self.assertEqual(str(e.exception), "Código de operación incorrecto.")
            self.assertEqual(e.exception.opcode, int.from_bytes(opcode, "big"))

    def test_fieldTooLong(self) -> None:
        """A field that passes its maximum without 0x00 is an error at once."""
        cases = [
            (b"\x00\x01abcd" + b"t" * (MAX_TEXT + 1), "texto", MAX_TEXT),
            (b"\x00\x02abcd" + b"f" * (MAX_FILENAME + 1), "nombre de archivo", MAX_FILENAME),
            (
                b"\x00\x02abcdf\x00" + bytes(12) + b"1" * (MAX_IP + 1),
                "IP del remitente",
                MAX_IP,
            ),
            (b"\x00\x04" + b"f" * (MAX_FILENAME + 1), "nombre de archivo", MAX_FILENAME),
            (b"\x00\x05" + b"t" * (MAX_TEXT + 1), "texto", MAX_TEXT),
        ]
        for data, field, maximum in cases:
            with self.assertRaises(FieldTooLong) as e:
                decodeAll(data)
            self.assertEqual((e.exception.field, e.exception.maximum), (field, maximum))

    def test_fieldTooLongByteByByte(self) -> None:
        """Split reads find a too-long field as well, one byte past the maximum."""
        decoder = MsrpFrameDecoder()
        data = b"\x00\x01abcd" + b"t" * MAX_TEXT
        for i in range(len(data)):
            self.assertEqual(list(decoder.feed(data[i : i + 1])), [])
        self.assertEqual(decoder.buffered(), MAX_TEXT)  # the name is read already
        with self.assertRaises(FieldTooLong):
            list(decoder.feed(b"t"))

    def test_contentIsNotCopied(self) -> None:
        """Inside a file's content, each read is handed on as it is."""
        decoder = MsrpFrameDecoder()
        list(decoder.feed(encodeFileHeader(b"abcd", b"f", 100_000)))
        self.assertTrue(decoder.inContent)
        chunk = bytes(range(256)) * 100
        frames = list(decoder.feed(chunk))
        self.assertEqual(len(frames), 1)
        self.assertIs(frames[0].data, chunk)
        self.assertEqual(decoder.buffered(), 0)

    def test_contentEndInsideARead(self) -> None:
        """The end of the content and the next frame in one read."""
        decoder = MsrpFrameDecoder()
        list(decoder.feed(encodeFileHeader(b"abcd", b"f", 5) + b"01"))
        frames = list(decoder.feed(b"234" + encodeAck(b"f")))
        self.assertEqual(frames, [FileChunk(b"234"), FileEnd(), Ack(b"f")])
        self.assertFalse(decoder.inContent)

    def test_contentLooksLikeFrames(self) -> None:
        """Content is never parsed, whatever it contains."""
        content = encodeMessage(b"abcd", b"no") + b"\x00\x09"
        data = encodeFileHeader(b"abcd", b"f", len(content)) + content
        self.assertEqual(
            mergeChunks(decodeAll(data, step=3)),
            [FileHeader(b"abcd", b"f", len(content), 0, b""), FileChunk(content), FileEnd()],
        )


# Frames a client may send, for the round-trip property.
_names = st.binary(min_size=4, max_size=4)
_field = lambda n: st.binary(max_size=n).map(lambda b: b.replace(b"\x00", b"."))  # noqa: E731
_clientFrames = st.one_of(
    st.builds(lambda n, t: (encodeMessage(n, t), [Message(n, t)]), _names, _field(300)),
    st.builds(
        lambda n, f, c, p, ip: (
            encodeFileHeader(n, f, len(c), p, ip) + c,
            [FileHeader(n, f, len(c), p, ip)] + ([FileChunk(c)] if c else []) + [FileEnd()],
        ),
        _names,
        _field(MAX_FILENAME),
        st.binary(max_size=3000),
        st.integers(0, 2**32 - 1),
        _field(MAX_IP),
    ),
    st.builds(
        lambda w: (encodeListRequest(w), [ListRequest()]),
        _field(MAX_WORD).filter(lambda w: not w.startswith(b"\x00")),
    ),
    st.builds(lambda f: (encodeAck(f), [Ack(f)]), _field(MAX_FILENAME)),
    st.builds(lambda t: (encodeError(t), [Error(t)]), _field(300)),
)


class PropertyTests(TestCase):
    @settings(max_examples=300, deadline=None)
    @given(st.lists(_clientFrames, max_size=8), st.randoms(use_true_random=False))
    def test_roundTrip(self, frames, rnd) -> None:
        """Any sequence of frames, split anywhere, decodes to itself."""
        data = b"".join(encoded for encoded, _ in frames)
        expected = [event for _, events in frames for event in events]
        decoder = MsrpFrameDecoder()
        decoded = []
        pos = 0
        while pos < len(data):
            step = rnd.randint(1, 64)
            decoded.extend(decoder.feed(data[pos : pos + step]))
            pos += step
        self.assertEqual(mergeChunks(decoded), expected)
        self.assertEqual(decoder.buffered(), 0)

    @settings(max_examples=500, deadline=None)
    @given(st.binary(max_size=600), st.randoms(use_true_random=False))
    def test_garbage(self, data, rnd) -> None:
        """Arbitrary bytes yield frames or DecodeError, never anything else."""
        decoder = MsrpFrameDecoder()
        pos = 0
        try:
            while pos < len(data):
                step = rnd.randint(1, 40)
                for frame in decoder.feed(data[pos : pos + step]):
                    self.assertIsInstance(
                        frame,
                        (Message, FileHeader, FileChunk, FileEnd, ListRequest, Ack, Error),
                    )
                pos += step
        except DecodeError:
            pass

    def test_garbageSeeded(self) -> None:
        """Long random streams, fixed seed: only DecodeError escapes."""
        rnd = random.Random(4)
        errors = 0
        for _ in range(200):
            data = bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 3000)))
            if rnd.random() < 0.5:
                data = b"\x00" + data  # more likely to look like frames
            decoder = MsrpFrameDecoder()
            try:
                for i in range(0, len(data), 7):
                    list(decoder.feed(data[i : i + 7]))
            except DecodeError:
                errors += 1
        self.assertGreater(errors, 0)


class LineDecoderTests(TestCase):
    def test_lines(self) -> None:
        """C{\\n} ends a line; one C{\\r} before it is dropped."""
        decoder = LineDecoder()
        self.assertEqual(
            list(decoder.feed(b"uno\ndos\r\ntres\r\r\n\ncuat")),
            [b"uno", b"dos", b"tres\r", b""],
        )
        self.assertEqual(list(decoder.feed(b"ro\n")), [b"cuatro"])

    def test_byteByByte(self) -> None:
        decoder = LineDecoder()
        lines = []
        for byte in b"ab12 hola\r\nclientes\n":
            lines.extend(decoder.feed(bytes([byte])))
        self.assertEqual(lines, [b"ab12 hola", b"clientes"])

    def test_tooLong(self) -> None:
        """A long line is reported once and dropped through its end."""
        decoder = LineDecoder(maxLength=10)
        self.assertEqual(list(decoder.feed(b"x" * 10 + b"\r\nok\n")), [b"x" * 10, b"ok"])
        out = list(decoder.feed(b"y" * 11))
        out += decoder.feed(b"y" * 50)
        out += decoder.feed(b"yyy\nok\n")
        self.assertEqual(out, [LINE_TOO_LONG, b"ok"])
        self.assertEqual(list(decoder.feed(b"z" * 11 + b"\n")), [LINE_TOO_LONG])
