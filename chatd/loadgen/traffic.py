"""
Traffic between logged-in sessions of one worker, and what it measured.

  - An L{Outbox} sends one session's messages to one receiver (a name, or
    C{all}), each stamped with its send time, and counts the server's
    answers.
  - An L{Inbox} counts one session's deliveries (L{chatd.loadgen.records})
    and turns their stamps into latencies.
  - L{Traffic} drives them: pipelined pairs (each pair keeps C{window}
    messages in flight between its sender and receiver, both in this
    worker, so flow control needs no other process), paced pairs (a fixed
    rate, spread evenly), or broadcasts (C{window} broadcasts in flight,
    counted by the sender's answers; the receivers may be in any worker).

Before it is measured, every receiver is taught what its deliveries look
like by one calibration message, decoded whole with the protocol's codec.
"""

from __future__ import annotations

import resource
import time
from typing import Callable

from chatd.loadgen.loop import Loop, Session
from chatd.loadgen.records import (
    AnswerLineCounter,
    InterleavedRecordCounter,
    RecordCounter,
    template,
)
from chatd.loadgen.wire import (
    CALIBRATION_TEXT,
    STAMP_LENGTH,
    Answer,
    Ping,
    UnexpectedFrame,
    makeStamp,
    matches,
)

_NS = 1_000_000_000


def cpuSeconds() -> float:
    """CPU seconds this process has used (user and system)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Window:
    """
    The measured span of a run, in C{time.monotonic_ns}: deliveries and
    latencies count only when they arrive between C{start} and C{end}.
    """

    def __init__(self, start: int, end: int) -> None:
        self.start = start
        self.end = end
        self.delivered = 0
        self.sent = 0
        self.answered = 0
        self.latencies: list[int] = []

    def asDict(self) -> dict:
        return {
            "delivered": self.delivered,
            "sent": self.sent,
            "answered": self.answered,
            "seconds": (self.end - self.start) / _NS,
            "latencies_ns": self.latencies,
        }


class Inbox:
    """
    One receiving session: learns its deliveries' shape from the
    calibration message of C{sender} (C{None}: any sender), then counts.
    """

    def __init__(self, traffic: "Traffic", session: Session, sender: str | None) -> None:
        self.traffic = traffic
        self.session = session
        self.sender = sender
        self.reader = session.dialect.reader()
        self.counter: RecordCounter | None = None
        self.delivered = 0
        self.expected: int | None = None
        self.owner = None  # the Pair whose sender waits on these deliveries
        session.onClose = traffic.lost(session)
        traffic.loop.take(session, self._calibrate)

    def _calibrate(self, data: bytes) -> None:
        items = answerPings(self.traffic, self.session, self.reader.feed(data))
        if not items:
            return
        raw, item = items[0]
        if not matches(item, self.sender, CALIBRATION_TEXT):
            self.traffic.error(f"{self.session!r} expected the calibration message, got {item!r}")
            return
        record, offset = template(raw, CALIBRATION_TEXT)
        dialect = self.session.dialect
        if dialect.interleaves:
            self.counter = InterleavedRecordCounter(
                record, offset, self.traffic.mode, self._unasked
            )
        else:
            self.counter = RecordCounter(record, offset, self.traffic.mode)
        self.session.onData = self._count
        self.traffic.calibrated += 1
        for raw, item in items[1:]:
            self._count(raw)

    def _unasked(self, line: bytes) -> None:
        """Answer a line the server put between deliveries (IRC's PING)."""
        self.traffic.loop.write(self.session, self.session.dialect.unasked(line))
        self.traffic.pongs += 1

    def _count(self, data: bytes) -> None:
        try:
            count, stamps = self.counter.feed(data)
        except UnexpectedFrame as e:
            self.traffic.error(f"{self.session!r}: {e}")
            return
        self.delivered += count
        traffic = self.traffic
        now = time.monotonic_ns()
        window = traffic.window
        if window is not None and window.start <= now < window.end:
            window.delivered += count
            latencies = window.latencies
            for stamp in stamps:
                latencies.append(now - int(stamp, 16))
        if self.owner is not None and traffic.sending:
            self.owner.delivered(now)

    @property
    def complete(self) -> bool:
        return self.expected is not None and self.delivered >= self.expected


class Outbox:
    """
    One sending session's messages to C{receiver}, made once by the
    protocol's codec with a placeholder stamp, then stamped by slicing.
    """

    def __init__(self, traffic: "Traffic", session: Session, receiver: str) -> None:
        self.traffic = traffic
        self.session = session
        self.receiver = receiver
        message = session.dialect.message(
            session.name, receiver, CALIBRATION_TEXT, session.token
        )
        _, offset = template(message, CALIBRATION_TEXT)
        self.head = message[:offset]
        self.tail = message[offset + STAMP_LENGTH :]
        self.sent = 0
        self.answered = 0
        self.answers = session.dialect.answersMessages
        self.answerReader = session.dialect.reader()
        self.answerCounter = None
        self.calibrated = False
        self.owner = None  # the Broadcast waiting on the answers
        session.onClose = traffic.lost(session)
        traffic.loop.take(session, self._calibrate if self.answers else self._unexpected)

    def send(self, count: int, now: int) -> None:
        """Send C{count} messages stamped C{now}."""
        record = self.head + makeStamp(now) + self.tail
        self.traffic.loop.write(self.session, record * count if count > 1 else record)
        self.sent += count
        window = self.traffic.window
        if window is not None and window.start <= now < window.end:
            window.sent += count

    def calibrate(self) -> None:
        """Send the calibration message (not counted as sent)."""
        self.traffic.loop.write(self.session, self.head + CALIBRATION_TEXT[:STAMP_LENGTH] + self.tail)
        if not self.answers:
            self.calibrated = True
            self.traffic.calibrated += 1

    def _unexpected(self, data: bytes) -> None:
        items = self.answerReader.feed(data)
        if self.session.dialect.interleaves:
            # An IRC sender gets nothing but, when idle, a PING (and the
            # rest of a line comes in a later read).
            items = answerPings(self.traffic, self.session, items)
            if not items:
                return
        self.traffic.error(f"{self.session!r} got what it did not ask for: {items or data!r}"[:500])

    def _calibrate(self, data: bytes) -> None:
        items = self.answerReader.feed(data)
        if not items:
            return
        raw, item = items[0]
        if not isinstance(item, Answer) or not item.ok:
            self.traffic.error(f"{self.session!r}: the calibration message was answered {item!r}")
            return
        if self.answers == "records":
            self.answerCounter = RecordCounter(raw, None, self.traffic.mode)
        else:
            self.answerCounter = AnswerLineCounter()
        self.calibrated = True
        self.traffic.calibrated += 1
        self.session.onData = self._answered
        for raw, item in items[1:]:
            self._answered(raw)

    def _answered(self, data: bytes) -> None:
        try:
            result = self.answerCounter.feed(data)
        except UnexpectedFrame as e:
            self.traffic.error(f"{self.session!r}: {e}")
            return
        count = result[0] if isinstance(result, tuple) else result
        self.answered += count
        window = self.traffic.window
        if window is not None:
            now = time.monotonic_ns()
            if window.start <= now < window.end:
                window.answered += count
            if self.owner is not None and self.traffic.sending:
                self.owner.answered(now)

    @property
    def complete(self) -> bool:
        return self.answered >= self.sent if self.answers else True


def answerPings(traffic: "Traffic", session: Session, items: list) -> list:
    """C{items} but their L{Ping}s, each answered."""
    pings = [item for _, item in items if isinstance(item, Ping)]
    if not pings:
        return items
    traffic.loop.write(session, b"".join(session.dialect.pong(p) for p in pings))
    traffic.pongs += len(pings)
    return [(raw, item) for raw, item in items if not isinstance(item, Ping)]


class Pair:
    """A sender and its receiver, both in this worker."""

    def __init__(self, traffic: "Traffic", sender: Session, receiver: Session, receiverName: str | None = None) -> None:
        self.traffic = traffic
        self.inbox = Inbox(traffic, receiver, sender.name)
        self.outbox = Outbox(traffic, sender, receiverName or receiver.name)
        self.inbox.owner = self

    def delivered(self, now: int) -> None:
        """Top the pipeline up (pipelined mode) once half of it has arrived."""
        if self.traffic.windowSize is None:
            return
        room = self.traffic.windowSize - (self.outbox.sent - self.inbox.delivered)
        if room * 2 >= self.traffic.windowSize:
            self.outbox.send(room, now)

    @property
    def complete(self) -> bool:
        return self.inbox.delivered >= self.outbox.sent and self.outbox.complete


class Broadcast:
    """One sender to C{all}, C{window} broadcasts in flight by its answers."""

    def __init__(self, traffic: "Traffic", sender: Session) -> None:
        self.traffic = traffic
        self.outbox = Outbox(traffic, sender, "all")
        self.outbox.owner = self

    def answered(self, now: int) -> None:
        room = self.traffic.windowSize - (self.outbox.sent - self.outbox.answered)
        if room * 2 >= self.traffic.windowSize:
            self.outbox.send(room, now)


class Traffic:
    """
    The traffic of one worker. C{mode} is C{"sample"} or C{"all"} (see
    L{chatd.loadgen.records}); C{windowSize} the messages (or broadcasts)
    each sender keeps in flight, or C{None} for paced sending at C{rate}
    messages a second over this worker's pairs.
    """

    def __init__(
        self,
        loop: Loop,
        mode: str = "sample",
        windowSize: int | None = 64,
        rate: float | None = None,
    ) -> None:
        self.loop = loop
        self.mode = mode
        self.windowSize = windowSize
        self.rate = rate
        self.pairs: list[Pair] = []
        self.inboxes: list[Inbox] = []
        self.broadcasts: list[Broadcast] = []
        self.calibrated = 0
        self.errors: list[str] = []
        self.window: Window | None = None
        self.sending = False
        self.lags: list[int] = []
        self.cpu: dict = {}
        self.pongs = 0  # PINGs the server sent (IRC) and were answered

    # Setting up.

    def error(self, text: str) -> None:
        if len(self.errors) < 1000:
            self.errors.append(text)

    def lost(self, session: Session) -> Callable[[str], None]:
        def onClose(reason: str) -> None:
            self.error(f"{session!r} lost: {reason}")

        return onClose

    def addPair(self, sender: Session, receiver: Session, receiverName: str | None = None) -> Pair:
        pair = Pair(self, sender, receiver, receiverName)
        self.pairs.append(pair)
        self.inboxes.append(pair.inbox)
        return pair

    def addInbox(self, receiver: Session, sender: str | None) -> Inbox:
        inbox = Inbox(self, receiver, sender)
        self.inboxes.append(inbox)
        return inbox

    def addBroadcast(self, sender: Session) -> Broadcast:
        broadcast = Broadcast(self, sender)
        self.broadcasts.append(broadcast)
        return broadcast

    def _calibrations(self) -> int:
        outboxes = [p.outbox for p in self.pairs] + [b.outbox for b in self.broadcasts]
        return len(self.inboxes) + len(outboxes)

    def calibrate(self, timeout: float, sendOnly: bool = False) -> bool:
        """
        Send every sender's calibration message and wait (unless
        C{sendOnly}) until every inbox and outbox of this worker has
        learned its records. Inboxes whose senders are in another worker
        wait for those (L{waitCalibrated}).
        """
        for pair in self.pairs:
            pair.outbox.calibrate()
        for broadcast in self.broadcasts:
            broadcast.outbox.calibrate()
        if sendOnly:
            return True
        return self.waitCalibrated(timeout)

    def waitCalibrated(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        needed = self._calibrations()
        while self.calibrated < needed and not self.errors:
            left = deadline - time.monotonic()
            if left <= 0:
                self.error(f"{needed - self.calibrated} of {needed} calibrations missing after {timeout:g}s")
                return False
            self.loop.poll(min(left, 0.1))
        return not self.errors

    # Running.

    def run(self, start: float, warm: float, end: float) -> dict:
        """
        Send from C{start} to C{end} (C{time.monotonic} seconds), measuring
        from C{warm}; then stop sending (see L{drain}).
        """
        startNs, warmNs, endNs = (int(t * _NS) for t in (start, warm, end))
        self.window = Window(warmNs, endNs)
        loop = self.loop
        while time.monotonic_ns() < startNs:
            loop.poll(max(0.0, (startNs - time.monotonic_ns()) / _NS))
        self.sending = True
        now = time.monotonic_ns()
        if self.windowSize is not None:
            for pair in self.pairs:
                pair.outbox.send(self.windowSize, now)
            for broadcast in self.broadcasts:
                broadcast.outbox.send(self.windowSize, now)
        paced = self.windowSize is None and self.rate and self.pairs
        interval = int(_NS / self.rate) if paced else 0
        if paced:
            # The senders' answers wait in their sockets' buffers until the
            # drain: reading them as they come would double the load
            # generator's reads, and its own delays count as latency here.
            for pair in self.pairs:
                loop.setReading(pair.outbox.session, False)
        sequence = 0
        due = now
        cpuWarm = None
        lags = self.lags
        pairs = self.pairs
        while True:
            now = time.monotonic_ns()
            if cpuWarm is None and now >= warmNs:
                cpuWarm = (cpuSeconds(), now)
            if now >= endNs:
                break
            if paced:
                while due <= now:
                    pair = pairs[sequence % len(pairs)]
                    pair.outbox.send(1, now)
                    if warmNs <= now:
                        lags.append(now - due)
                    sequence += 1
                    due = startNs + sequence * interval
                    now = time.monotonic_ns()
                timeout = max(0, min(due, endNs) - now) / _NS
            else:
                timeout = min(0.05, (endNs - now) / _NS)
            loop.poll(timeout)
        self.sending = False
        cpuEnd = (cpuSeconds(), time.monotonic_ns())
        if cpuWarm is not None and cpuEnd[1] > cpuWarm[1]:
            self.cpu = {
                "cpu_seconds": cpuEnd[0] - cpuWarm[0],
                "wall_seconds": (cpuEnd[1] - cpuWarm[1]) / _NS,
            }
        return {"sent": self.sent()}

    def sent(self) -> int:
        return sum(p.outbox.sent for p in self.pairs) + sum(
            b.outbox.sent for b in self.broadcasts
        )

    def drain(self, timeout: float, expected: int | None = None) -> dict:
        """
        Wait until every message sent has been delivered (and answered),
        at most C{timeout} seconds; inboxes fed by another worker's
        broadcasts expect C{expected} deliveries each.
        """
        for inbox in self.inboxes:
            if inbox.owner is not None:
                inbox.expected = inbox.owner.outbox.sent
            elif expected is not None:
                inbox.expected = expected
        for pair in self.pairs:
            self.loop.setReading(pair.outbox.session, True)
        deadline = time.monotonic() + timeout

        def complete() -> bool:
            return (
                all(i.expected is None or i.complete for i in self.inboxes)
                and all(p.complete for p in self.pairs)
                and all(b.outbox.complete for b in self.broadcasts)
            )

        while not complete():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self.loop.poll(min(left, 0.1))
        missing = sum(
            max(0, i.expected - i.delivered) for i in self.inboxes if i.expected is not None
        )
        extra = sum(
            max(0, i.delivered - i.expected) for i in self.inboxes if i.expected is not None
        )
        unanswered = sum(
            max(0, o.sent - o.answered)
            for o in [p.outbox for p in self.pairs] + [b.outbox for b in self.broadcasts]
            if o.answers
        )
        if missing:
            self.error(f"{missing} deliveries missing after {timeout:g}s of draining")
        if extra:
            self.error(f"{extra} deliveries more than were sent")
        if unanswered:
            self.error(f"{unanswered} messages unanswered after {timeout:g}s of draining")
        return {
            "sent": self.sent(),
            "delivered": sum(i.delivered for i in self.inboxes),
            "answered": sum(p.outbox.answered for p in self.pairs)
            + sum(b.outbox.answered for b in self.broadcasts),
            "missing": missing,
            "unanswered": unanswered,
            "window": self.window.asDict() if self.window else None,
            "lags_ns": self.lags,
            "cpu": self.cpu,
            "errors": self.errors[:20],
            "error_count": len(self.errors),
            "pongs": self.pongs,
        }


__all__ = ["Traffic", "Pair", "Inbox", "Outbox", "Broadcast", "Window", "cpuSeconds"]
