"""
The MSRP (seed 004) wire format: bytes <-> frames, and nothing else.

No Twisted and no chat behaviour lives here, so that the codec can be fuzzed
and reused by a client. docs/msrp.md is the normative description; in short:

  - a frame starts with a 2-byte big-endian opcode, always below 256, so the
    first byte of every frame is C{0x00};
  - fixed-size fields are as in the seed (names are 4 bytes, the file size 8,
    the sender port 4; integers are big-endian);
  - every variable-length field ends with one C{0x00} byte;
  - an ARCH header is followed by exactly C{size} bytes of file content, which
    L{MsrpFrameDecoder} hands on as L{FileChunk}s without copying them when it
    can, then L{FileEnd}.

The same frames travel in both directions except LIST: a client sends
C{| 0x0003 |}, optionally followed by an instruction word and C{0x00}; the
server answers C{| 0x0003 | text 0x00 |}.

L{LineDecoder} splits the lines of the mode for people on nc/telnet.
"""

from __future__ import annotations

from typing import Iterator, Union

#: Opcodes (2 bytes, big-endian).
OP_MSJE = 0x0001
OP_ARCH = 0x0002
OP_LIST = 0x0003
OP_ACK = 0x0004
OP_ERROR = 0x0005

#: Length of a user name on the wire, in bytes.
NAME_LENGTH = 4

#: The size of the seed's read/write fragments. Fragments are how a client
#: reads and writes; on the stream they are invisible.
FRAGMENT_SIZE = 2048

#: Largest variable-length fields, in bytes (without the terminating 0x00).
MAX_TEXT = 65536
MAX_FILENAME = 255
MAX_IP = 64
MAX_WORD = 64

#: Largest values of the fixed integer fields.
MAX_SIZE = 2**64 - 1
MAX_PORT = 2**32 - 1

#: Longest line of the mode for people, in bytes, without its line ending.
MAX_LINE = 4096

_TERMINATOR = b"\x00"


class Message:
    """
    MSJE: a text message. From a client, C{name} is the recipient; from the
    server, the sender.
    """

    __slots__ = ("name", "text")

    def __init__(self, name: bytes, text: bytes) -> None:
        self.name = name
        self.text = text

    def __eq__(self, other: object) -> bool:
        return (
            type(other) is Message
            and other.name == self.name
            and other.text == self.text
        )

    def __repr__(self) -> str:
        return f"Message({self.name!r}, {self.text!r})"


class FileHeader:
    """
    ARCH: the header of a file; exactly C{size} bytes of content follow, as
    L{FileChunk}s and then one L{FileEnd}. From a client, C{name} is the
    recipient; from the server, the sender.
    """

    __slots__ = ("name", "filename", "size", "port", "ip")

    def __init__(
        self, name: bytes, filename: bytes, size: int, port: int, ip: bytes
    ) -> None:
        self.name = name
        self.filename = filename
        self.size = size
        self.port = port
        self.ip = ip

    def __eq__(self, other: object) -> bool:
        return type(other) is FileHeader and all(
            getattr(other, a) == getattr(self, a) for a in self.__slots__
        )

    def __repr__(self) -> str:
        return (
            f"FileHeader({self.name!r}, {self.filename!r}, {self.size},"
            f" {self.port}, {self.ip!r})"
        )


class FileChunk:
    """Some bytes of the content of the file being received."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __eq__(self, other: object) -> bool:
        return type(other) is FileChunk and other.data == self.data

    def __repr__(self) -> str:
        return f"FileChunk(<{len(self.data)} bytes>)"


class FileEnd:
    """The last byte of the file's content has been handed on."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        return type(other) is FileEnd

    def __hash__(self) -> int:
        return hash(FileEnd)

    def __repr__(self) -> str:
        return "FileEnd()"


class ListRequest:
    """LIST from a client: the list of online users is wanted."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        return type(other) is ListRequest

    def __hash__(self) -> int:
        return hash(ListRequest)

    def __repr__(self) -> str:
        return "ListRequest()"


class ClientList:
    """LIST from the server: the text of the list of online users."""

    __slots__ = ("text",)

    def __init__(self, text: bytes) -> None:
        self.text = text

    def __eq__(self, other: object) -> bool:
        return type(other) is ClientList and other.text == self.text

    def __repr__(self) -> str:
        return f"ClientList({self.text!r})"


class Ack:
    """ACK: the file C{filename} has been received whole."""

    __slots__ = ("filename",)

    def __init__(self, filename: bytes) -> None:
        self.filename = filename

    def __eq__(self, other: object) -> bool:
        return type(other) is Ack and other.filename == self.filename

    def __repr__(self) -> str:
        return f"Ack({self.filename!r})"


class Error:
    """ERROR: a human-readable (Spanish, UTF-8) error text."""

    __slots__ = ("text",)

    def __init__(self, text: bytes) -> None:
        self.text = text

    def __eq__(self, other: object) -> bool:
        return type(other) is Error and other.text == self.text

    def __repr__(self) -> str:
        return f"Error({self.text!r})"


Frame = Union[Message, FileHeader, FileChunk, FileEnd, ListRequest, ClientList, Ack, Error]


class DecodeError(Exception):
    """
    The stream cannot be framed any further: the connection cannot be
    resynchronised and should be closed. C{str()} is a Spanish sentence for
    the peer.
    """


class UnknownOpcode(DecodeError):
    """A frame starts with an opcode MSRP does not define."""

    def __init__(self, opcode: int) -> None:
        super().__init__("Código de operación incorrecto.")
        self.opcode = opcode


class FieldTooLong(DecodeError):
    """A variable-length field runs past its maximum without its 0x00."""

    def __init__(self, field: str, maximum: int) -> None:
        super().__init__(
            f"Error en el formato del mensaje. El campo {field} supera"
            f" {maximum} bytes."
        )
        self.field = field
        self.maximum = maximum


# Field layouts: (name of the field for errors, fixed size) for a fixed field,
# (name, None, maximum) for a field ended by 0x00.
_FIXED_NAME = ("nombre", NAME_LENGTH)
_LAYOUTS = {
    OP_MSJE: (_FIXED_NAME, ("texto", None, MAX_TEXT)),
    OP_ARCH: (
        _FIXED_NAME,
        ("nombre de archivo", None, MAX_FILENAME),
        ("tamaño", 8),
        ("puerto", 4),
        ("IP del remitente", None, MAX_IP),
    ),
    OP_LIST: (("lista", None, MAX_TEXT),),  # from the server only
    OP_ACK: (("nombre de archivo", None, MAX_FILENAME),),
    OP_ERROR: (("texto", None, MAX_TEXT),),
}
# A pseudo-opcode: the instruction word that may follow a client's LIST.
_WORD = -1
_WORD_LAYOUT = (("instrucción", None, MAX_WORD),)

_FILE_END = FileEnd()
_LIST_REQUEST = ListRequest()


class MsrpFrameDecoder:
    """
    Incremental decoder of a stream of MSRP frames, exact under any splitting
    or joining of the bytes.

    @param fromServer: C{False} (the default) to decode what a client sends
        (the server's side), C{True} to decode what the server sends (a
        client's side). Only LIST differs.
    """

    def __init__(self, fromServer: bool = False) -> None:
        self.fromServer = fromServer
        self._buffer = bytearray()
        self._opcode: int | None = None
        self._values: list[bytes] = []
        self._scanned = 0  # bytes of the current 0x00-ended field seen so far
        self._remaining = 0  # file content still to come
        self._afterList = False  # a client's LIST may be followed by a word

    @property
    def inContent(self) -> bool:
        """Whether the decoder is inside the content of a file."""
        return self._remaining > 0

    def buffered(self) -> int:
        """How many bytes are held for a frame not yet complete."""
        return len(self._buffer)

    def feed(self, data: bytes) -> Iterator[Frame]:
        """
        Add C{data} and yield every frame (and piece of file content) it
        completes, in order. A L{FileChunk} is C{data} itself or a slice of
        it whenever possible.

        @raise DecodeError: (after the frames before it) when the stream
            cannot be framed; the decoder is then unusable.
        """
        if self._remaining and not self._buffer:
            # Inside a file's content with nothing held: hand the bytes on as
            # they are.
            remaining = self._remaining
            if len(data) <= remaining:
                self._remaining = remaining - len(data)
                if data:
                    yield FileChunk(data)
                if not self._remaining:
                    yield _FILE_END
                return
            self._remaining = 0
            yield FileChunk(data[:remaining])
            yield _FILE_END
            data = data[remaining:]
        buf = self._buffer
        buf += data
        pos = 0
        try:
            while True:
                if self._remaining:
                    available = len(buf) - pos
                    if not available:
                        break
                    n = min(available, self._remaining)
                    chunk = bytes(buf[pos : pos + n])
                    pos += n
                    self._remaining -= n
                    yield FileChunk(chunk)
                    if not self._remaining:
                        yield _FILE_END
                    continue
                if self._opcode is None:
                    if self._afterList:
                        if pos == len(buf):
                            break
                        self._afterList = False
                        if buf[pos] != 0:
                            # A frame never starts with a non-zero byte: this
                            # is the LIST's instruction word.
                            self._opcode = _WORD
                            self._values = []
                        continue
                    if len(buf) - pos < 2:
                        break
                    opcode = (buf[pos] << 8) | buf[pos + 1]
                    if opcode not in _LAYOUTS:
                        raise UnknownOpcode(opcode)
                    pos += 2
                    if opcode == OP_LIST and not self.fromServer:
                        self._afterList = True
                        yield _LIST_REQUEST
                        continue
                    self._opcode = opcode
                    self._values = []
                frame, pos = self._fields(buf, pos)
                if frame is None:
                    if self._opcode is not None:
                        break  # more bytes needed
                    continue  # an instruction word, read and ignored
                yield frame
                if frame.__class__ is FileHeader:
                    if frame.size == 0:
                        yield _FILE_END
        finally:
            if pos:
                del buf[:pos]

    def _fields(self, buf: bytearray, pos: int) -> tuple[Frame | None, int]:
        """
        Read the fields of the frame under way from C{buf[pos:]}.

        @return: C{(frame, new position)}; the frame is C{None} when more
            bytes are needed (and the opcode is kept) or when the frame
            yields nothing (and the opcode is cleared).
        """
        opcode = self._opcode
        layout = _WORD_LAYOUT if opcode == _WORD else _LAYOUTS[opcode]
        values = self._values
        end = len(buf)
        while len(values) < len(layout):
            field = layout[len(values)]
            if len(field) == 2:
                size = field[1]
                if end - pos < size:
                    return None, pos
                values.append(bytes(buf[pos : pos + size]))
                pos += size
            else:
                maximum = field[2]
                stop = buf.find(_TERMINATOR, pos + self._scanned, pos + maximum + 1)
                if stop < 0:
                    if end - pos > maximum:
                        raise FieldTooLong(field[0], maximum)
                    self._scanned = end - pos
                    return None, pos
                self._scanned = 0
                values.append(bytes(buf[pos:stop]))
                pos = stop + 1
        self._opcode = None
        self._values = []
        if opcode == OP_MSJE:
            return Message(values[0], values[1]), pos
        if opcode == OP_ARCH:
            size = int.from_bytes(values[2], "big")
            self._remaining = size
            return (
                FileHeader(
                    values[0], values[1], size, int.from_bytes(values[3], "big"),
                    values[4],
                ),
                pos,
            )
        if opcode == OP_LIST:
            return ClientList(values[0]), pos
        if opcode == OP_ACK:
            return Ack(values[0]), pos
        if opcode == OP_ERROR:
            return Error(values[0]), pos
        return None, pos  # _WORD


# Encoders. They check their arguments, so a frame they return is always
# valid.


def _name(name: bytes) -> bytes:
    if len(name) != NAME_LENGTH:
        raise ValueError(f"a name on the wire is {NAME_LENGTH} bytes, not {len(name)}")
    return name


def _variable(value: bytes, maximum: int, field: str) -> bytes:
    if _TERMINATOR in value:
        raise ValueError(f"the {field} contains a 0x00 byte")
    if len(value) > maximum:
        raise ValueError(f"the {field} is longer than {maximum} bytes")
    return value + _TERMINATOR


def _opcode(opcode: int) -> bytes:
    return opcode.to_bytes(2, "big")


def encodeMessage(name: bytes, text: bytes) -> bytes:
    """C{| 0x0001 | name (4) | text 0x00 |}."""
    return _opcode(OP_MSJE) + _name(name) + _variable(text, MAX_TEXT, "text")


def encodeFileHeader(
    name: bytes, filename: bytes, size: int, port: int = 0, ip: bytes = b""
) -> bytes:
    """
    C{| 0x0002 | name (4) | filename 0x00 | size (8) | port (4) | ip 0x00 |};
    C{size} bytes of content must follow it.
    """
    if not 0 <= size <= MAX_SIZE:
        raise ValueError("the file size does not fit in 8 bytes")
    if not 0 <= port <= MAX_PORT:
        raise ValueError("the port does not fit in 4 bytes")
    return (
        _opcode(OP_ARCH)
        + _name(name)
        + _variable(filename, MAX_FILENAME, "file name")
        + size.to_bytes(8, "big")
        + port.to_bytes(4, "big")
        + _variable(ip, MAX_IP, "ip")
    )


def encodeListRequest(word: bytes = b"") -> bytes:
    """
    A client's C{| 0x0003 |}, or C{| 0x0003 | word 0x00 |} with a non-empty
    instruction word (which must not start with 0x00).
    """
    if not word:
        return _opcode(OP_LIST)
    return _opcode(OP_LIST) + _variable(word, MAX_WORD, "instruction word")


def encodeClientList(text: bytes) -> bytes:
    """The server's C{| 0x0003 | text 0x00 |}."""
    return _opcode(OP_LIST) + _variable(text, MAX_TEXT, "list")


def encodeAck(filename: bytes) -> bytes:
    """C{| 0x0004 | filename 0x00 |}."""
    return _opcode(OP_ACK) + _variable(filename, MAX_FILENAME, "file name")


def encodeError(text: bytes) -> bytes:
    """C{| 0x0005 | text 0x00 |}."""
    return _opcode(OP_ERROR) + _variable(text, MAX_TEXT, "text")


def clientListText(names: list[str]) -> str:
    """
    The seed's list text: C{"Lista de clientes:\\nCliente 1: clt1\\n..."},
    one line per name, each ended by a newline.
    """
    lines = ["Lista de clientes:\n"]
    for number, name in enumerate(names, 1):
        lines.append(f"Cliente {number}: {name}\n")
    return "".join(lines)


def parseClientListText(text: str) -> list[str]:
    """
    The names in a list text made by L{clientListText}, in order (for
    clients). Lines that are not C{Cliente <n>: <name>} are skipped.
    """
    names = []
    for line in text.split("\n"):
        head, separator, name = line.partition(": ")
        if separator and head.startswith("Cliente ") and head[8:].isdigit() and name:
            names.append(name)
    return names


def clientListEntry(name: str, slot: bytes) -> str:
    """
    The user C{name} in a binary client's list: the name alone when C{slot}
    is the name itself (padded with spaces when shorter than 4 bytes), else
    C{"<name> (<slot>)"}: the 4 bytes that stand for them in frames.
    """
    if slot.rstrip(b" ") == name.encode("utf-8"):
        return name
    return f"{name} ({slot.decode('utf-8', 'replace')})"


def parseClientListEntry(entry: str) -> tuple[str, bytes | None]:
    """
    The name and the 4-byte slot of an entry made by L{clientListEntry} (for
    clients); the slot is C{None} when the entry gives none and the name is
    longer than 4 bytes (no binary client can write to that user).
    """
    name, space, rest = entry.partition(" ")
    if space and rest.startswith("(") and rest.endswith(")"):
        slot = rest[1:-1].encode("utf-8")
        if len(slot) == NAME_LENGTH:
            return name, slot
    data = name.encode("utf-8")
    if len(data) > NAME_LENGTH:
        return name, None
    return name, data.ljust(NAME_LENGTH, b" ")


def wireText(text: str, maximum: int = MAX_TEXT) -> bytes:
    """
    C{text} as UTF-8 fit for a 0x00-ended field: any U+0000 becomes U+FFFD
    and the bytes are cut (on a character boundary) to C{maximum}.
    """
    data = text.replace("\x00", "\ufffd").encode("utf-8", "replace")
    if len(data) > maximum:
        data = data[:maximum].decode("utf-8", "ignore").encode("utf-8")
    return data


class LineTooLong:
    """A line of the mode for people ran past the maximum; it is dropped."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        return type(other) is LineTooLong

    def __hash__(self) -> int:
        return hash(LineTooLong)

    def __repr__(self) -> str:
        return "LineTooLong()"


LINE_TOO_LONG = LineTooLong()


class LineDecoder:
    """
    Splits typed lines: a line ends with C{\\n}, and one C{\\r} before it is
    dropped. A line longer than C{maxLength} bytes yields L{LINE_TOO_LONG}
    once and is dropped up to its end.
    """

    def __init__(self, maxLength: int = MAX_LINE) -> None:
        self.maxLength = maxLength
        self._buffer = bytearray()
        self._scanned = 0
        self._dropping = False

    def feed(self, data: bytes) -> Iterator[bytes | LineTooLong]:
        """Add C{data} and yield every line (without its ending) it completes."""
        buf = self._buffer
        buf += data
        pos = 0
        try:
            while pos < len(buf):
                stop = buf.find(b"\n", pos + self._scanned)
                if stop < 0:
                    self._scanned = len(buf) - pos
                    if self._scanned > self.maxLength + 1:  # +1: a "\r"
                        pos = len(buf)
                        self._scanned = 0
                        if not self._dropping:
                            self._dropping = True
                            yield LINE_TOO_LONG
                    break
                self._scanned = 0
                line = bytes(buf[pos:stop])
                pos = stop + 1
                if self._dropping:
                    self._dropping = False
                    continue
                if line.endswith(b"\r"):
                    line = line[:-1]
                if len(line) > self.maxLength:
                    yield LINE_TOO_LONG
                    continue
                yield line
        finally:
            if pos:
                del buf[:pos]
