"""The MSGR line codec: escaping, fields, lists, line cutting."""

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from chatd.msgr import codec
from chatd.msgr.codec import (
    LineDecoder,
    LineTooLong,
    RawField,
    buildLine,
    decodeLine,
    escape,
    joinList,
    splitFields,
    splitList,
    unescape,
)


class EscapeTests(unittest.TestCase):
    def test_examples(self):
        self.assertEqual(escape("a||b"), "a\\|\\|b")
        self.assertEqual(escape("x&&y"), "x\\&\\&y")
        self.assertEqual(escape("1\n2\r3"), "1\\n2\\r3")
        self.assertEqual(escape("C:\\dir"), "C:\\\\dir")
        self.assertEqual(escape("plain text ñ"), "plain text ñ")

    def test_unescapeExamples(self):
        self.assertEqual(unescape("a\\|\\|b"), "a||b")
        self.assertEqual(unescape("1\\n2"), "1\n2")
        self.assertEqual(unescape("\\\\n"), "\\n")

    def test_unescapeIsLenient(self):
        """Unknown escapes and a trailing backslash stand for themselves."""
        self.assertEqual(unescape("C:\\dir\\"), "C:\\dir\\")
        self.assertEqual(unescape("a|b&c"), "a|b&c")

    @given(st.text())
    def test_roundTrip(self, text):
        self.assertEqual(unescape(escape(text)), text)

    @given(st.text())
    def test_escapedHasNoSeparatorsOrNewlines(self, text):
        escaped = escape(text)
        for bad in ("||", "&&", "\n", "\r"):
            self.assertNotIn(bad, escaped.replace("\\\\", ""))
        self.assertEqual(splitFields(escaped), [escaped])


class FieldTests(unittest.TestCase):
    def test_split(self):
        self.assertEqual(
            splitFields("#MSJ||t||a||b||hola"), ["#MSJ", "t", "a", "b", "hola"]
        )

    def test_escapedSeparatorDoesNotSplit(self):
        self.assertEqual(splitFields("#MSJ||a\\|\\|b||c"), ["#MSJ", "a\\|\\|b", "c"])

    def test_maxFieldsKeepsTheRest(self):
        """A client that does not escape loses nothing of its text."""
        self.assertEqual(
            splitFields("#MSJ||t||a||b||x || y||z", 5), ["#MSJ", "t", "a", "b", "x || y||z"]
        )

    def test_emptyFields(self):
        self.assertEqual(splitFields("#X||||"), ["#X", "", ""])
        self.assertEqual(splitFields(""), [""])

    @given(st.lists(st.text(), min_size=1, max_size=6))
    def test_buildThenSplitRoundTrip(self, fields):
        line = buildLine("#CMD", *fields)
        self.assertTrue(line.endswith(b"\n"))
        self.assertEqual(line.count(b"\n"), 1)
        text = decodeLine(line[:-1])
        parts = splitFields(text)
        self.assertEqual(parts[0], "#CMD")
        self.assertEqual([unescape(p) for p in parts[1:]], fields)

    def test_rawFieldIsNotEscaped(self):
        self.assertEqual(
            buildLine("#LISTA_USUARIOS", "-", "ana", RawField(joinList(["a", "b"]))),
            b"#LISTA_USUARIOS||-||ana||a&&b\n",
        )


class ListTests(unittest.TestCase):
    def test_join(self):
        self.assertEqual(joinList(["JUAN", "GERMAN"]), "JUAN&&GERMAN")
        self.assertEqual(joinList([]), "")

    def test_split(self):
        self.assertEqual(splitList("MARIA&&KIRA"), ["MARIA", "KIRA"])
        self.assertEqual(splitList(""), [])

    @given(st.lists(st.text(min_size=1), min_size=1))
    def test_roundTrip(self, items):
        self.assertEqual(splitList(joinList(items)), items)


class DecodeLineTests(unittest.TestCase):
    def test_crlf(self):
        self.assertEqual(decodeLine(b"#HOLA||t||u\r"), "#HOLA||t||u")

    def test_notUtf8(self):
        self.assertRaises(codec.NotUtf8, decodeLine, b"\xff\xfe")


class LineDecoderTests(unittest.TestCase):
    def test_linesAcrossChunks(self):
        decoder = LineDecoder(100)
        self.assertEqual(list(decoder.feed(b"ab")), [])
        self.assertEqual(list(decoder.feed(b"c\nde\nf")), [b"abc", b"de"])
        self.assertEqual(list(decoder.feed(b"\n")), [b"f"])
        self.assertEqual(decoder.pending, 0)

    def test_tooLongLineIsSkippedAndStreamStaysInStep(self):
        decoder = LineDecoder(5)
        out = list(decoder.feed(b"123456789"))
        self.assertEqual(out, [])
        self.assertEqual(decoder.pending, 0, "an over-long line must not be buffered")
        out = list(decoder.feed(b"0123\nok\n"))
        self.assertEqual(len(out), 2)
        self.assertIsInstance(out[0], LineTooLong)
        self.assertEqual(out[1], b"ok")

    def test_tooLongInOneChunk(self):
        out = list(LineDecoder(3).feed(b"abcd\nabc\n"))
        self.assertIsInstance(out[0], LineTooLong)
        self.assertEqual(out[1], b"abc")

    @settings(max_examples=200)
    @given(st.lists(st.binary(max_size=20), max_size=10), st.data())
    def test_chunkingDoesNotMatter(self, lines, data):
        lines = [line.replace(b"\n", b"") for line in lines]
        stream = b"".join(line + b"\n" for line in lines)
        cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=5)))
        decoder = LineDecoder(10)
        out = []
        previous = 0
        for cut in cuts + [len(stream)]:
            out.extend(decoder.feed(stream[previous:cut]))
            previous = cut
        expected = [line if len(line) <= 10 else "long" for line in lines]
        got = [item if isinstance(item, bytes) else "long" for item in out]
        self.assertEqual(got, expected)
