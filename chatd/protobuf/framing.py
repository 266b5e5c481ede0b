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
    except MalformedFrame:
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


class RawFramer:
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

    def feed(self, data: bytes) -> Iterator[bytes]:
        """
        Add C{data} and yield every message it completes, in order.

        @raise FrameTooLarge: (after the messages before it) for a message
            longer than the maximum; the connection cannot be resynchronised
            and should be closed.
        @raise MalformedFrame: (after the messages before it) for bytes that
            are not protobuf; what was buffered is dropped, and framing starts
            again with the next read.
        """
        buf = self._buffer
        buf += data
        while True:
            try:
                frame = self._next(buf)
            except MalformedFrame:
                buf.clear()
                self._reset(0)
                raise
            if frame is None:
                break
            yield frame
        if self._start:
            del buf[: self._start]
            self._pos -= self._start
            self._start = 0
        if len(buf) > self.maxFrameSize:
            raise FrameTooLarge(
                f"a request is larger than the maximum frame of"
                f" {self.maxFrameSize} bytes"
            )
        if self.waiting and self._complete():
            frame = bytes(buf[: self._pos])
            buf.clear()
            self._reset(0)
            yield frame

    def _complete(self) -> bool:
        needed = self.neededFields.get(self._option)
        if needed is not None and self._fields & (1 << needed):
            return True
        return self._lastField >= self.lastField

    def _next(self, buf: bytearray) -> bytes | None:
        """
        Read fields until a message is known to have ended before or at the
        current position, and return it; C{None} when the bytes run out first.
        """
        end = len(buf)
        maxFrame = self.maxFrameSize
        # The state in locals while the loop runs (this is every raw
        # request's path); saved back when the bytes run out.
        pos, start = self._pos, self._start
        lastField, fields = self._lastField, self._fields
        while pos < end:
            tag = buf[pos]
            if tag == 0:
                if pos == start:
                    # A terminator after the previous message, or padding.
                    start = pos = pos + 1
                    continue
                frame = bytes(buf[start:pos])
                self._reset(pos + 1)
                self.endedByZero = True
                return frame
            if tag < 0x80:  # a one-byte tag, as every field of chat.proto's
                valueStart = pos + 1
            else:
                read = readVarint(buf, pos)
                if read is None:
                    break
                tag, valueStart = read
            field, wireType = tag >> 3, tag & 7
            if field == 0:
                raise MalformedFrame("field number 0 is not valid")
            if field <= lastField:
                # Not ascending: this tag starts the next message.
                frame = bytes(buf[start:pos])
                self._reset(pos)
                return frame
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
                valueEnd = _skipValue(buf, valueStart, wireType, maxFrame)
                if valueEnd is None:
                    break
            if valueEnd - start > maxFrame:
                raise FrameTooLarge(
                    f"a request is larger than the maximum frame of"
                    f" {maxFrame} bytes"
                )
            if field == OPTION_FIELD and wireType == VARINT:
                self._option = readVarint(buf, valueStart)[0]
            if field < 64:
                fields |= 1 << field
            lastField = field
            pos = valueEnd
        self._pos, self._start = pos, start
        self._lastField, self._fields = lastField, fields
        return None


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


class DelimitedFramer:
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

    def feed(self, data: bytes) -> Iterator[bytes]:
        """
        Add C{data} and yield every message it completes, in order.

        @raise FrameTooLarge: for a length prefix above the maximum.
        @raise MalformedFrame: for a length prefix that is not a varint.
        """
        buf = self._buffer
        buf += data
        end = len(buf)
        maxFrame = self.maxFrameSize
        # Frames are read at an offset and the buffer is cut once at the end,
        # not once per frame: a read of many small requests would move the
        # rest of the buffer for every one of them.
        pos = 0
        try:
            while pos < end:
                length = buf[pos]
                if length < 0x80:  # a request shorter than 128 bytes
                    start = pos + 1
                else:
                    try:
                        read = readVarint(buf, pos)
                    except MalformedFrame:
                        buf.clear()
                        pos = 0
                        raise
                    if read is None:
                        return
                    length, start = read
                if length > maxFrame:
                    raise FrameTooLarge(
                        f"a request of {length} bytes is larger than the"
                        f" maximum frame of {maxFrame} bytes"
                    )
                stop = start + length
                if stop > end:
                    return
                pos = stop
                yield bytes(buf[start:stop])
        finally:
            if pos:
                del buf[:pos]


def encodeRaw(payload: bytes) -> bytes:
    """A raw frame is the serialized message itself."""
    return payload


def encodeDelimited(payload: bytes) -> bytes:
    """A delimited frame is the varint length, then the message."""
    length = len(payload)
    if length < 0x80:
        return _SMALL_VARINTS[length] + payload
    return encodeVarint(length) + payload
