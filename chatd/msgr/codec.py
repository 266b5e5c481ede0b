"""
The MSGR UQ line codec: bytes <-> lines <-> fields, with no behaviour.

A line is UTF-8 text ending in C{\\n} (a C{\\r} before it is dropped); its
fields are separated by C{||} and list items inside a field by C{&&}. User
text is escaped with a backslash so that it can hold any character:

    ====== ===========
    text   on the wire
    ====== ===========
    C{\\}  C{\\\\}
    C{|}   C{\\|}
    C{&}   C{\\&}
    LF     C{\\n}
    CR     C{\\r}
    ====== ===========

Every C{|} and C{&} is escaped, not just doubled ones, so an escaped field
never contains a separator. Decoding is lenient, for clients that do not
escape: a backslash before any other character, or at the end, stands for
itself, and a lone C{|} or C{&} (not doubled) is text. docs/msgr.md is the
normative description.

Everything here is pure and total: it raises only L{LineError} subclasses,
never anything else, whatever bytes it is given.
"""

from __future__ import annotations

from typing import Iterable, Iterator

FIELD_SEPARATOR = "||"
LIST_SEPARATOR = "&&"

#: The token slot of every line the server writes.
NO_TOKEN = "-"

_ESCAPES = {"\\": "\\\\", "|": "\\|", "&": "\\&", "\n": "\\n", "\r": "\\r"}
_UNESCAPES = {"\\": "\\", "|": "|", "&": "&", "n": "\n", "r": "\r"}
_ESCAPE_TABLE = str.maketrans(_ESCAPES)


class LineError(Exception):
    """A line that cannot be read; C{str(error)} says why."""


class LineTooLong(LineError):
    """A line longer than the limit; it was skipped up to its end."""


class NotUtf8(LineError):
    """A line that is not valid UTF-8."""


def escape(text: str) -> str:
    """Escape C{text} so that it can be one field (or one list item)."""
    return text.translate(_ESCAPE_TABLE)


def unescape(field: str) -> str:
    """
    Undo L{escape}. Lenient: a backslash that does not start a known escape
    stands for itself.
    """
    if "\\" not in field:
        return field
    out: list[str] = []
    i, end = 0, len(field)
    while i < end:
        ch = field[i]
        if ch == "\\" and i + 1 < end and field[i + 1] in _UNESCAPES:
            out.append(_UNESCAPES[field[i + 1]])
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def _split(text: str, separator: str, maxParts: int | None) -> list[str]:
    """
    Split C{text} on unescaped C{separator} (a doubled character) without
    unescaping; with C{maxParts}, the last part is the rest of the text.
    """
    parts: list[str] = []
    start = i = 0
    end = len(text)
    while i < end:
        if maxParts is not None and len(parts) == maxParts - 1:
            break
        ch = text[i]
        if ch == "\\":
            i += 2  # the escaped character can never separate
        elif text.startswith(separator, i):
            parts.append(text[start:i])
            i += len(separator)
            start = i
        else:
            i += 1
    parts.append(text[start:])
    return parts


def splitFields(line: str, maxFields: int | None = None) -> list[str]:
    """
    Split a decoded line (without its end of line) into its raw, still
    escaped fields. With C{maxFields}, the last field holds the rest of the
    line, separators and all: a client that does not escape C{||} in its text
    loses nothing.
    """
    return _split(line, FIELD_SEPARATOR, maxFields)


def joinList(items: Iterable[str]) -> str:
    """A list field: escaped items joined by C{&&} (empty for no items)."""
    return LIST_SEPARATOR.join(escape(item) for item in items)


def splitList(field: str) -> list[str]:
    """Undo L{joinList} on a raw field: the unescaped items."""
    if not field:
        return []
    return [unescape(item) for item in _split(field, LIST_SEPARATOR, None)]


def buildLine(command: str, *fields: str) -> bytes:
    """
    The bytes of one line: C{command}, then each field escaped, separated by
    C{||}, ending in C{\\n}. Use L{RawField} for a field that is already
    encoded (a list from L{joinList}, base64).
    """
    parts = [command]
    for field in fields:
        parts.append(field if isinstance(field, RawField) else escape(field))
    return (FIELD_SEPARATOR.join(parts) + "\n").encode("utf-8")


class RawField(str):
    """A field L{buildLine} writes as it is (already escaped or encoded)."""

    __slots__ = ()


def decodeLine(raw: bytes) -> str:
    """
    The text of one line's bytes (without the C{\\n}); a trailing C{\\r} is
    dropped.

    @raise NotUtf8: when the bytes are not UTF-8.
    """
    if raw.endswith(b"\r"):
        raw = raw[:-1]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise NotUtf8("the line is not valid UTF-8") from None


class LineDecoder:
    """
    Cut a byte stream into lines of at most C{maxLine} bytes (not counting
    the C{\\n}).

    A longer line is never buffered: its bytes are dropped as they come, and
    once its C{\\n} arrives L{feed} yields a L{LineTooLong} in its place, so
    the stream stays in step and the next line is read normally.
    """

    def __init__(self, maxLine: int) -> None:
        self.maxLine = maxLine
        self._buffer = bytearray()
        self._skipping = False

    def feed(self, data: bytes) -> Iterator[bytes | LineTooLong]:
        """
        Yield each complete line (bytes, without C{\\n}), or a L{LineTooLong}
        for each line that was over the limit.
        """
        start = 0
        while True:
            newline = data.find(b"\n", start)
            if newline < 0:
                self._keep(data[start:])
                return
            piece = data[start:newline]
            start = newline + 1
            if self._skipping or len(self._buffer) + len(piece) > self.maxLine:
                self._skipping = False
                self._buffer.clear()
                yield LineTooLong(f"the line is longer than {self.maxLine} bytes")
                continue
            self._buffer += piece
            line = bytes(self._buffer)
            self._buffer.clear()
            yield line

    def _keep(self, tail: bytes) -> None:
        if self._skipping:
            return
        if len(self._buffer) + len(tail) > self.maxLine:
            self._skipping = True
            self._buffer.clear()
        else:
            self._buffer += tail

    @property
    def pending(self) -> int:
        """Bytes of an unfinished line held in the buffer."""
        return len(self._buffer)
