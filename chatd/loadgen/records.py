"""
Counting what the server delivers, at a cost per read rather than per
message, so that the load generator stays far from being the bottleneck.

Every delivery from one sender to one receiver (in the load generator's
messages) has the same bytes but for the send-time stamp inside its text: a
receiver first decodes one whole delivery with the protocol's codec
(L{chatd.loadgen.wire}), then keeps its bytes as a template and counts the
rest of its stream in records of that size. In C{"sample"} mode it checks
and stamps one record per read; in C{"all"} mode, every record (what the
tests and C{--verify} use, and the latency scenario, whose rate is low).
A record that is not the template but for its stamp raises
L{UnexpectedFrame}: the stream holds something the load generator did not
ask for, and the figures would be wrong.
"""

from __future__ import annotations

from chatd.loadgen.wire import STAMP_LENGTH, UnexpectedFrame


def template(raw: bytes, stampText: bytes) -> tuple[bytes, int]:
    """
    C{(raw, offset of the stamp in raw)} for a delivery whose text is
    C{stampText} (which starts with the stamp).

    @raise UnexpectedFrame: when the text is not in C{raw} exactly once.
    """
    offset = raw.find(stampText)
    if offset < 0 or raw.find(stampText, offset + 1) >= 0:
        raise UnexpectedFrame(f"cannot find the stamp in {raw!r}")
    return raw, offset


class RecordCounter:
    """
    Counts records that are copies of C{template} with a stamp at
    C{stampOffset} (C{None}: no stamp, every record equal to the template).

    @param mode: C{"sample"} or C{"all"} (see the module docstring).
    """

    def __init__(self, template: bytes, stampOffset: int | None, mode: str = "sample") -> None:
        if mode not in ("sample", "all"):
            raise ValueError(f"mode must be sample or all, not {mode!r}")
        self.template = template
        self.size = len(template)
        self.stampOffset = stampOffset
        if stampOffset is None:
            self.head, self.tail = template, b""
        else:
            self.head = template[:stampOffset]
            self.tail = template[stampOffset + STAMP_LENGTH :]
        self.all = mode == "all"
        self.count = 0
        self._partial = 0  # bytes seen of the record under way
        self._carry = b""  # those bytes, in "all" mode

    @property
    def pending(self) -> int:
        """Bytes seen of the record under way (0 at a record's start)."""
        return len(self._carry) if self.all else self._partial

    def _check(self, record: bytes) -> bytes | None:
        offset = self.stampOffset
        if offset is None:
            if record != self.template:
                raise UnexpectedFrame(f"expected {self.template!r}, got {record!r}")
            return None
        stop = offset + STAMP_LENGTH
        if record[:offset] != self.head or record[stop:] != self.tail:
            raise UnexpectedFrame(f"expected {self.template!r} but its stamp, got {record!r}")
        return record[offset:stop]

    def feed(self, data: bytes) -> tuple[int, list[bytes]]:
        """
        Count the records C{data} completes.

        @return: C{(how many, stamps)}: the stamps of the records checked
            (none when the records have no stamp).
        @raise UnexpectedFrame: for a record that is not the template.
        """
        size = self.size
        stamps = []
        if self.all:
            buf = self._carry + data if self._carry else data
            count, rest = divmod(len(buf), size)
            check = self._check
            for start in range(0, count * size, size):
                stamp = check(buf[start : start + size])
                if stamp is not None:
                    stamps.append(stamp)
            self._carry = buf[len(buf) - rest :] if rest else b""
        else:
            partial = self._partial
            total = partial + len(data)
            count, self._partial = divmod(total, size)
            first = (size - partial) % size
            if first + size <= len(data):
                stamp = self._check(data[first : first + size])
                if stamp is not None:
                    stamps.append(stamp)
        self.count += count
        return count, stamps


class InterleavedRecordCounter:
    """
    A L{RecordCounter} for a line protocol whose server may put a line of
    its own between two deliveries, which the client must answer (IRC's
    C{PING}). Every record starts with the template's first byte (C{:} in
    IRC: a prefix); where a record should start and another byte is there,
    a line of the server's starts instead: it is cut out of the stream up to
    its newline and handed to C{unasked} (which answers it, or raises
    L{UnexpectedFrame}), and counting goes on after it.

    Which byte starts each record is checked with one slice per read
    (C{data[first::size]}), so the cost stays per read, not per record.
    """

    #: The longest line of the server's own (RFC 2812's 512 bytes).
    LINE_LIMIT = 512

    def __init__(self, template: bytes, stampOffset: int | None, mode: str, unasked) -> None:
        self.records = RecordCounter(template, stampOffset, mode)
        self.size = len(template)
        self.lead = template[:1]
        self.unasked = unasked
        self._line: bytes | None = None  # a line of the server's under way

    @property
    def count(self) -> int:
        return self.records.count

    def feed(self, data: bytes) -> tuple[int, list[bytes]]:
        """
        Count the records C{data} completes, answering the lines between.

        @return: C{(how many, stamps)}, as L{RecordCounter.feed}.
        @raise UnexpectedFrame: for a record that is not the template, or
            a line C{unasked} does not accept.
        """
        count = 0
        stamps: list[bytes] = []
        size = self.size
        while data:
            if self._line is not None:
                end = data.find(b"\n")
                if end < 0:
                    self._line += data
                    if len(self._line) > self.LINE_LIMIT:
                        raise UnexpectedFrame(f"expected a delivery, got {self._line[:80]!r}...")
                    break
                line, data = self._line + data[: end + 1], data[end + 1 :]
                self._line = None
                self.unasked(line)
                continue
            first = (size - self.records.pending) % size
            starts = data[first::size]
            good = len(starts) - len(starts.lstrip(self.lead))
            if good == len(starts):
                more, sampled = self.records.feed(data)
                count += more
                stamps += sampled
                break
            # Records up to the line, then the line itself.
            cut = first + good * size
            more, sampled = self.records.feed(data[:cut])
            count += more
            stamps += sampled
            self._line = b""
            data = data[cut:]
        return count, stamps


class AnswerLineCounter:
    """
    Counts MSGR answer lines, each of which must end with C{okEnding}
    (C{||704}): their ids grow, so their sizes vary, and lines are counted
    by their ends.
    """

    def __init__(self, okEnding: bytes = b"||704\n") -> None:
        self.okEnding = okEnding
        self.count = 0
        self._carry = b""

    def feed(self, data: bytes) -> int:
        """
        @return: how many lines C{data} completes.
        @raise UnexpectedFrame: when one of them is not a success.
        """
        buf = self._carry + data
        lines = data.count(b"\n")
        if buf.count(self.okEnding) != lines:
            for line in buf.split(b"\n")[:-1]:
                if not (line + b"\n").endswith(self.okEnding):
                    raise UnexpectedFrame(f"expected an answer ending {self.okEnding!r}, got {line!r}")
        last = buf.rfind(b"\n")
        self._carry = buf[last + 1 :][-len(self.okEnding) :]
        self.count += lines
        return lines


__all__ = ["RecordCounter", "InterleavedRecordCounter", "AnswerLineCounter", "template"]
