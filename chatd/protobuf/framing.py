"""
Framing for the seed-000 protobuf chat: where one serialized request ends.

Two framings, both byte-oriented and independent of the protocol's behaviour,
so that they can be fuzzed and reused by clients (see docs/protobuf.md):

  - L{RawRequestFramer}: what the existing clients do, one serialized message
    per write with no prefix. Messages are told apart by the wire format
    itself (see the class docstring).
  - L{DelimitedFramer}: protobuf's standard varint length prefix, exact under
    any splitting.
"""

from __future__ import annotations

from typing import Iterator

# Protobuf wire types.
VARINT, I64, LEN, SGROUP, EGROUP, I32 = 0, 1, 2, 3, 4, 5

# The option field of both chat.ClientRequest and chat.ServerResponse.
OPTION_FIELD = 1

DEFAULT_MAX_FRAME = 256 * 1024


class FramingError(Exception):
    """The bytes cannot be framed; C{str()} says why, for the client."""


class MalformedFrame(FramingError):
    """
    The bytes are not protobuf. The framer drops what it had buffered and
    carries on with the next read.
    """


class FrameTooLarge(FramingError):
    """A frame is (or announces itself) longer than the maximum."""


def readVarint(data, pos: int) -> tuple[int, int] | None:
    """
    Decode the varint at C{data[pos:]}.

    @return: C{(value, position after it)}, or C{None} when C{data} ends
        inside it.
    @raise MalformedFrame: for a varint longer than ten bytes.
    """
    end = len(data)
    if pos < end:
        byte = data[pos]
        if byte < 0x80:  # most tags and lengths: one byte
            return byte, pos + 1
    result = 0
    shift = 0
    while pos < end:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise MalformedFrame("a varint is longer than ten bytes")
    return None


#: The varints of 0 to 127, one byte each (most lengths on the hot path).
_SMALL_VARINTS = [bytes((n,)) for n in range(0x80)]


def encodeVarint(value: int) -> bytes:
    """The varint encoding of the non-negative C{value}."""
    if value < 0x80:
        return _SMALL_VARINTS[value]
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def scanOption(frame: bytes) -> int | None:
    """
    The raw C{option} value of a serialized C{ClientRequest} (the last
    occurrence wins, as in protobuf), or C{None} when it has none. Tolerant:
    it stops at the first thing it cannot read.
    """
    option = None
    pos = 0
    try:
        while pos < len(frame):
            tag = readVarint(frame, pos)
            if tag is None:
                break
            value, pos = tag
            field, wireType = value >> 3, value & 7
            if wireType == VARINT:
                read = readVarint(frame, pos)
                if read is None:
                    break
                if field == OPTION_FIELD:
                    option = read[0]
                pos = read[1]
            else:
                end = _skipValue(frame, pos, wireType, len(frame))
                if end is None:
                    break
                pos = end
    except FramingError:  # (a field longer than the frame, say)
        pass
    return option


def _skipValue(data, pos: int, wireType: int, maxLength: int) -> int | None:
    """
    The position after the value of wire type C{wireType} at C{data[pos:]},
    or C{None} when C{data} ends inside it.
    """
    if wireType == VARINT:
        read = readVarint(data, pos)
        return None if read is None else read[1]
    if wireType == LEN:
        read = readVarint(data, pos)
        if read is None:
            return None
        length, pos = read
        if length > maxLength:
            raise FrameTooLarge(
                f"a field of {length} bytes is larger than the maximum frame"
                f" of {maxLength} bytes"
            )
        end = pos + length
        return end if end <= len(data) else None
    if wireType == I64:
        end = pos + 8
        return end if end <= len(data) else None
    if wireType == I32:
        end = pos + 4
        return end if end <= len(data) else None
    # Groups are not used by chat.proto (and are deprecated); 6 and 7 are
    # not wire types at all.
    raise MalformedFrame(f"wire type {wireType} is not used by chat.proto")


# The errors of the scanners (_speedups.c shares the numbers).
E_NONE, E_VARINT, E_TOO_LARGE, E_FIELD_ZERO, E_WIRE_TYPE = 0, 1, 2, 3, 4
E_FIELD_LARGE, E_REQUEST_LARGE, E_FALLBACK = 5, 6, 7

#: Values from here on do not fit the compiled scanner's 64 bits.
_WIDE = 1 << 64


def _rawError(code: int, buf, at: int, maxFrame: int) -> FramingError:
    """The exception of the raw scanner's error C{code} at C{buf[at:]}."""
    if code == E_VARINT:
        return MalformedFrame("a varint is longer than ten bytes")
    if code == E_FIELD_ZERO:
        return MalformedFrame("field number 0 is not valid")
    if code == E_WIRE_TYPE:
        return MalformedFrame(
            f"wire type {readVarint(buf, at)[0] & 7} is not used by chat.proto"
        )
    if code == E_FIELD_LARGE:
        return FrameTooLarge(
            f"a field of {readVarint(buf, at)[0]} bytes is larger than the"
            f" maximum frame of {maxFrame} bytes"
        )
    return FrameTooLarge(
        f"a request is larger than the maximum frame of {maxFrame} bytes"
    )


def _classifySend(frame) -> tuple[str, str] | None:
    """
    C{(receiver, text)} when C{frame} is a simple C{SEND_MESSAGE} request,
    which the protocol may route without parsing it with protobuf; C{None}
    for anything else, which takes the general path.

    Simple is: C{option} 4, then C{messg} and nothing else, C{messg} holding
    a non-empty C{receiver}, maybe a C{sender} (which chatd ignores), and a
    non-empty C{text}, in that order, each once, the receiver and text valid
    UTF-8. This is what every client's serializer writes for a message;
    whatever else protobuf would accept (fields repeated or out of order,
    unknown fields, other encodings of the option) goes the general way, so
    that the answer is the same either way (tests/test_speedups.py).
    """
    n = len(frame)
    if n < 4 or frame[0] != 0x08 or frame[1] != 0x04 or frame[2] != 0x2A:
        return None
    try:
        read = readVarint(frame, 3)
        if read is None or read[0] != n - read[1]:
            return None
        p = read[1]
        if p >= n or frame[p] != 0x0A:
            return None
        read = readVarint(frame, p + 1)
        if read is None or read[0] > n - read[1]:
            return None
        r, p = read[1], read[1] + read[0]
        lr = read[0]
        if p < n and frame[p] == 0x12:
            read = readVarint(frame, p + 1)
            if read is None or read[0] > n - read[1]:
                return None
            p = read[1] + read[0]
        if p >= n or frame[p] != 0x1A:
            return None
        read = readVarint(frame, p + 1)
        if read is None or read[0] != n - read[1]:
            return None
    except MalformedFrame:
        return None
    t = read[1]
    if not lr or t == n:
        return None
    try:
        return (bytes(frame[r : r + lr]).decode("utf-8"), bytes(frame[t:]).decode("utf-8"))
    except UnicodeDecodeError:
        return None


def _scanDelimited(buf, maxFrame: int, classify: bool) -> tuple[list, int, int, int]:
    """
    The delimited frames at the start of C{buf}: C{(items, consumed, error,
    at)}, where C{items} are the frames in order (simple C{SEND_MESSAGE}
    requests as L{classifySend}'s tuples when C{classify}), C{consumed} how
    many bytes they took, and C{error} an C{E_*} code found at C{buf[at:]}
    (after the frames before it), or C{E_NONE}.
    """
    end = len(buf)
    pos = 0
    items = []
    while pos < end:
        length = buf[pos]
        if length < 0x80:  # a request shorter than 128 bytes
            start = pos + 1
        else:
            try:
                read = readVarint(buf, pos)
            except MalformedFrame:
                return items, pos, E_VARINT, pos
            if read is None:
                break
            length, start = read
        if length > maxFrame:
            return items, pos, E_TOO_LARGE, pos
        stop = start + length
        if stop > end:
            break
        frame = bytes(buf[start:stop])
        items.append((_classifySend(frame) or frame) if classify else frame)
        pos = stop
    return items, pos, E_NONE, 0


def _scanRaw(
    buf, pos: int, start: int, lastField: int, fields: int, option: int,
    maxFrame: int, classify: bool,
) -> tuple:
    """
    Read fields of raw requests from C{buf[pos:]}, the request under way
    starting at C{buf[start:]} with the state C{lastField}, C{fields},
    C{option} (see L{RawFramer}), until the bytes run out or an error.

    @return: C{(items, pos, start, lastField, fields, option, endedByZero,
        error, at)}: the requests completed, in order (as in
        L{_scanDelimited}), the state to go on from, whether one ended at a
        C{0x00}, and an C{E_*} error code found at C{buf[at:]}, or C{E_NONE}.
    """
    end = len(buf)
    items = []
    endedByZero = False
    while pos < end:
        tag = buf[pos]
        if tag == 0:
            if pos != start:
                frame = bytes(buf[start:pos])
                items.append((_classifySend(frame) or frame) if classify else frame)
                lastField = fields = option = 0
                endedByZero = True
            # (Or a terminator after the previous message, or padding.)
            start = pos = pos + 1
            continue
        if tag < 0x80:  # a one-byte tag, as every field of chat.proto's
            valueStart = pos + 1
        else:
            try:
                read = readVarint(buf, pos)
            except MalformedFrame:
                return (items, pos, start, lastField, fields, option, endedByZero, E_VARINT, pos)
            if read is None:
                break
            tag, valueStart = read
        field, wireType = tag >> 3, tag & 7
        if field == 0:
            return (items, pos, start, lastField, fields, option, endedByZero, E_FIELD_ZERO, pos)
        if field <= lastField:
            # Not ascending: this tag starts the next message.
            frame = bytes(buf[start:pos])
            items.append((_classifySend(frame) or frame) if classify else frame)
            start = pos
            lastField = fields = option = 0
            continue
        if (
            wireType == LEN
            and valueStart < end
            and buf[valueStart] < 0x80
            and buf[valueStart] <= maxFrame
        ):
            # A field shorter than 128 bytes (_skipValue, inlined).
            valueEnd = valueStart + 1 + buf[valueStart]
            if valueEnd > end:
                break
        else:
            try:
                valueEnd = _skipValue(buf, valueStart, wireType, maxFrame)
            except MalformedFrame:
                code = E_VARINT if wireType in (VARINT, LEN) else E_WIRE_TYPE
                at = valueStart if code == E_VARINT else pos
                return (items, pos, start, lastField, fields, option, endedByZero, code, at)
            except FrameTooLarge:
                return (items, pos, start, lastField, fields, option, endedByZero, E_FIELD_LARGE, valueStart)
            if valueEnd is None:
                break
        if valueEnd - start > maxFrame:
            return (items, pos, start, lastField, fields, option, endedByZero, E_REQUEST_LARGE, pos)
        if field == OPTION_FIELD and wireType == VARINT:
            option = readVarint(buf, valueStart)[0]
        if field < 64:
            fields |= 1 << field
        lastField = field
        pos = valueEnd
    return (items, pos, start, lastField, fields, option, endedByZero, E_NONE, 0)


_SMALL_LENGTHS = [bytes((n,)) for n in range(0x80)]
# ServerResponse: option = SEND_MESSAGE (field 1, varint 4), code =
# SUCCESSFUL (field 2, varint 1), then messg (field 6).
DELIVERY_PREFIX = b"\x08\x04\x10\x01\x32"


def _encodeDelivery(head: bytes, text: str, delimited: bool) -> bytes:
    """
    The delivery of C{text}: C{ServerResponse(option=SEND_MESSAGE,
    code=SUCCESSFUL, messg=Message(<head>, text=text))}, with its varint
    length before it when C{delimited}. C{head} is the Message's C{receiver}
    and C{sender} fields, encoded (C{protocol.deliveryHead}).
    """
    t = text.encode("utf-8")
    lt = encodeVarint(len(t))
    size = len(head) + 1 + len(lt) + len(t)
    ls = encodeVarint(size)
    if delimited:
        return b"".join(
            (encodeVarint(5 + len(ls) + size), DELIVERY_PREFIX, ls, head, b"\x1a", lt, t)
        )
    return b"".join((DELIVERY_PREFIX, ls, head, b"\x1a", lt, t))


class _Framer:
    """What both framings share: L{feed}, in terms of their C{scan}."""

    def feed(self, data: bytes) -> Iterator[bytes]:
        """
        Add C{data} and yield every message it completes, in order.

        @raise FrameTooLarge: (after the messages before it) for a message
            longer than the maximum, or a length prefix above it; the
            connection cannot be resynchronised and should be closed.
        @raise MalformedFrame: (after the messages before it) for bytes that
            are not protobuf; what was buffered is dropped, and framing starts
            again with the next read.
        """
        frames, error = self.scan(data)
        yield from frames
        if error is not None:
            raise error


class RawFramer(_Framer):
    """
    Frames raw (unprefixed) serialized messages of one type (see
    L{RawRequestFramer} for the rules). Subclasses say which field each option
    value needs (C{neededFields}) and the highest field number of the type
    (C{lastField}).
    """

    neededFields: dict[int, int] = {}
    lastField = 0
    #: Set when a message ends at a C{0x00} terminator (never cleared here:
    #: the reader that cares clears it), so that a protocol can answer a
    #: client that ends its requests with C{0x00} in the same way.
    endedByZero = False

    def __init__(self, maxFrameSize: int = DEFAULT_MAX_FRAME) -> None:
        self.maxFrameSize = maxFrameSize
        self._buffer = bytearray()
        self._reset(0)

    def _reset(self, start: int) -> None:
        self._start = start  # where the message being read begins
        self._pos = start  # the next field tag to read
        self._lastField = 0
        self._option = 0  # proto2's default: USER_LOGIN
        self._fields = 0  # bit mask of the field numbers seen (1 to 63)

    @property
    def waiting(self) -> bool:
        """
        Whether a message is under way and every byte of it has been read up
        to a field boundary: the protocol should wait briefly, then L{flush}.
        """
        return self._pos > self._start and self._pos == len(self._buffer)

    def buffered(self) -> int:
        """How many bytes are held for the message under way."""
        return len(self._buffer) - self._start

    def flush(self) -> bytes | None:
        """Take the message under way as complete, if it is L{waiting}."""
        if not self.waiting:
            return None
        frame = bytes(self._buffer[self._start : self._pos])
        self._buffer.clear()
        self._reset(0)
        return frame

    def scan(self, data: bytes, classify: bool = False) -> tuple[list, FramingError | None]:
        """
        Add C{data}; the messages it completes, in order, and the error that
        ended the read (L{feed} says which), if any.

        @param classify: whether a simple C{SEND_MESSAGE} request is handed
            back as C{(receiver, text)} (see L{classifySend}) instead of its
            bytes.
        """
        buf = self._buffer
        buf += data
        option = self._option
        lastField = self._lastField
        (items, pos, start, lastField, fields, option, endedByZero, code, at) = scanRaw(
            buf, self._pos, self._start,
            lastField if lastField < _WIDE else _WIDE - 1,
            self._fields,
            option if option < _WIDE else _WIDE - 1,
            self.maxFrameSize, classify,
        )
        if code == E_FALLBACK:
            (more, pos, start, lastField, fields, option, zero, code, at) = _scanRaw(
                buf, pos, start, lastField, fields, option, self.maxFrameSize, classify
            )
            items += more
            endedByZero = endedByZero or zero
        if endedByZero:
            self.endedByZero = True
        if code:
            error = _rawError(code, buf, at, self.maxFrameSize)
            if isinstance(error, MalformedFrame):
                buf.clear()
                self._reset(0)
                return items, error
            # The connection is closed: the state no longer matters.
            return items, error
        if start:
            del buf[:start]
            pos -= start
            start = 0
        self._pos, self._start = pos, start
        self._lastField, self._fields, self._option = lastField, fields, option
        if len(buf) > self.maxFrameSize:
            return items, FrameTooLarge(
                f"a request is larger than the maximum frame of"
                f" {self.maxFrameSize} bytes"
            )
        if pos and pos == len(buf) and self._complete():
            frame = bytes(buf)
            buf.clear()
            self._reset(0)
            items.append((classifySend(frame) or frame) if classify else frame)
        return items, None

    def _complete(self) -> bool:
        needed = self.neededFields.get(self._option)
        if needed is not None and self._fields & (1 << needed):
            return True
        return self._lastField >= self.lastField


class RawRequestFramer(RawFramer):
    """
    Frames raw (unprefixed) serialized C{chat.ClientRequest} messages.

    A message is complete:
      - at a C{0x00} byte where a field tag would start (C{0x00} is never a
        valid tag; some clients end every request with one, and it is
        dropped);
      - at a field whose number does not increase (standard serializers write
        fields in ascending order, so it starts the next message);
      - at the end of a read that ends on a field boundary, once the message
        holds what its option needs (C{newuser} for a login, C{user} for user
        information, C{status} for a status change, C{messg} for a message),
        or holds field 5 (C{messg}, the last one), after which no field can
        follow.

    Otherwise, at the end of a read on a field boundary, L{waiting} is true
    and the protocol waits a short time for more bytes before it calls
    L{flush}. A read that ends inside a field simply waits for the rest.
    """

    neededFields = {
        0: 2,  # USER_LOGIN needs newuser
        2: 3,  # USER_INFORMATION needs user
        3: 4,  # STATUS_CHANGE needs status
        4: 5,  # SEND_MESSAGE needs messg
    }
    # Serializers write fields in ascending order: once field 5 has been read,
    # nothing more of the message can follow.
    lastField = 5


class RawResponseFramer(RawFramer):
    """
    Frames raw serialized C{chat.ServerResponse} messages, for clients. chatd
    writes each response with one write, so a client rarely has to wait; a
    response is complete at a non-ascending field, at a C{0x00} or after field
    7, and otherwise when the client's short wait ends (L{flush}).
    """

    lastField = 7


class DelimitedFramer(_Framer):
    """
    Frames messages prefixed with their length as a varint (protobuf's
    C{writeDelimitedTo} / C{parseDelimitedFrom}).
    """

    waiting = False
    endedByZero = False

    def __init__(self, maxFrameSize: int = DEFAULT_MAX_FRAME) -> None:
        self.maxFrameSize = maxFrameSize
        self._buffer = bytearray()

    def buffered(self) -> int:
        return len(self._buffer)

    def flush(self) -> None:
        return None

    def scan(self, data: bytes, classify: bool = False) -> tuple[list, FramingError | None]:
        """
        Add C{data}; the messages it completes, in order, and the error that
        ended the read (L{feed} says which), if any.

        @param classify: as for L{RawFramer.scan}.
        """
        buf = self._buffer
        buf += data
        # Frames are read at an offset and the buffer is cut once at the end,
        # not once per frame: a read of many small requests would move the
        # rest of the buffer for every one of them.
        items, pos, code, at = scanDelimited(buf, self.maxFrameSize, classify)
        error = None
        if code == E_VARINT:
            buf.clear()
            return items, MalformedFrame("a varint is longer than ten bytes")
        if code == E_TOO_LARGE:
            length = readVarint(buf, at)[0]
            error = FrameTooLarge(
                f"a request of {length} bytes is larger than the"
                f" maximum frame of {self.maxFrameSize} bytes"
            )
        if pos:
            del buf[:pos]
        return items, error


def encodeRaw(payload: bytes) -> bytes:
    """A raw frame is the serialized message itself."""
    return payload


def encodeDelimited(payload: bytes) -> bytes:
    """A delimited frame is the varint length, then the message."""
    length = len(payload)
    if length < 0x80:
        return _SMALL_VARINTS[length] + payload
    return encodeVarint(length) + payload


# The hot path: compiled (chatd/protobuf/_speedups.c) when it was built and
# CHATD_SPEEDUPS is not "off", else the pure-Python functions above, which
# stay the reference (docs/performance.md, "The compiled hot path").
from chatd.protobuf import speedups as _speedups  # noqa: E402

if _speedups.compiled is not None:
    scanDelimited = _speedups.compiled.scan_delimited
    scanRaw = _speedups.compiled.scan_raw
    classifySend = _speedups.compiled.classify_send
    encodeDelivery = _speedups.compiled.encode_delivery
else:
    scanDelimited = _scanDelimited
    scanRaw = _scanRaw
    classifySend = _classifySend
    encodeDelivery = _encodeDelivery
