"""
What one client may cost: connection counts, message rates, and bytes queued
for a client that does not read. Shared by every wire format; each protocol
words the refusals in its own terms.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Callable

from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from chatd.writethrough import sendNow


#: Defaults of the limits; docs/operations.md lists each with its option.
DEFAULT_MAX_CONNECTIONS = 10000
DEFAULT_MAX_CONNECTIONS_PER_ADDRESS = 100
DEFAULT_RATE = 20.0
DEFAULT_BURST = 40.0
DEFAULT_MAX_SEND_QUEUE = 4 * 1024 * 1024
DEFAULT_LOGIN_TIMEOUT = 60.0
DEFAULT_KEEPALIVE = 60
DEFAULT_CLOSE_GRACE = 10.0
#: Seconds a file transfer may go without progress before it is abandoned.
DEFAULT_FILE_IDLE_TIMEOUT = 30.0


@dataclass(frozen=True)
class Limits:
    """
    What one client may cost, for every wire format. C{0} turns a limit off.

    @ivar maxConnections: open connections in total, every listener counted.
    @ivar maxConnectionsPerAddress: open connections from one IP address.
    @ivar rate: messages a second one user may send, on average.
    @ivar burst: messages one user may send at once after a quiet spell.
    @ivar maxSendQueue: bytes that may wait for a client that does not read
        before it is disconnected (protobuf and MSGR; MSRP refuses messages
        to such a user instead, see C{--msrp-max-queue}).
    @ivar loginTimeout: seconds a new connection has to log in.
    @ivar keepAlive: seconds of silence before TCP keepalive probes a peer.
    @ivar closeGrace: seconds a connection the server closes has to take its
        last bytes before it is aborted.
    @ivar fileIdleTimeout: seconds a file on its way to a user (MSRP content
        streaming, an MSGR file waiting for its receiver to read) may go
        without progress before it is abandoned and its sender told.
    """

    maxConnections: int = DEFAULT_MAX_CONNECTIONS
    maxConnectionsPerAddress: int = DEFAULT_MAX_CONNECTIONS_PER_ADDRESS
    rate: float = DEFAULT_RATE
    burst: float = DEFAULT_BURST
    maxSendQueue: int = DEFAULT_MAX_SEND_QUEUE
    loginTimeout: float = DEFAULT_LOGIN_TIMEOUT
    keepAlive: int = DEFAULT_KEEPALIVE
    closeGrace: float = DEFAULT_CLOSE_GRACE
    fileIdleTimeout: float = DEFAULT_FILE_IDLE_TIMEOUT

    def bucket(self, clock: IReactorTime) -> "TokenBucket | None":
        """A new user's message bucket, or C{None} when the rate is free."""
        if not self.rate:
            return None
        return TokenBucket(self.rate, max(self.burst, 1.0), clock)


#: No limit at all (what tests of other behaviour use, and C{make bench}).
UNLIMITED = Limits(0, 0, 0.0, 0.0, 0, 0.0, 0, DEFAULT_CLOSE_GRACE, 0.0)


class TokenBucket:
    """
    A token bucket: C{rate} tokens a second, at most C{burst} saved up.
    Time comes from C{clock}.
    """

    __slots__ = ("rate", "burst", "clock", "_tokens", "_stamp")

    def __init__(self, rate: float, burst: float, clock: IReactorTime) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self._tokens = burst
        self._stamp = clock.seconds()

    def allow(self, cost: float = 1.0) -> bool:
        """Take C{cost} tokens if there are that many; whether it could."""
        now = self.clock.seconds()
        tokens = self._tokens + (now - self._stamp) * self.rate
        self._tokens = tokens if tokens < self.burst else self.burst
        self._stamp = now
        if self._tokens >= cost:
            self._tokens -= cost
            return True
        return False


#: Log lines one connection's errors (bad lines, refused requests) may cause
#: in L{ERROR_LOG_WINDOW} seconds; past them, one summary line.
ERROR_LOG_BURST = 10
ERROR_LOG_WINDOW = 60.0


class ErrorLogLimit:
    """
    How many log lines one connection's errors may cause: the first
    C{burst} in each window of C{window} seconds are logged; the others
    are counted, and one summary line (C{event="log-suppressed"}) gives
    their number when the window ends or the connection closes.

    Without it a client sending one bad 3-byte line after another made
    chatd write a 130-byte log line for each: megabytes of log a second
    from one connection. The caller asks L{allow} before it logs.
    """

    __slots__ = (
        "clock",
        "protocol",
        "peer",
        "burst",
        "window",
        "_start",
        "_logged",
        "_suppressed",
        "_timer",
    )

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        protocol: str,
        peer: str,
        burst: int = ERROR_LOG_BURST,
        window: float = ERROR_LOG_WINDOW,
    ) -> None:
        self.clock = clock
        self.protocol = protocol
        self.peer = peer
        self.burst = burst
        self.window = window
        self._start: float | None = None
        self._logged = 0
        self._suppressed = 0
        self._timer: IDelayedCall | None = None

    def allow(self) -> bool:
        """Whether one more error line of this connection may be logged now."""
        now = self.clock.seconds()
        if self._start is None or now - self._start >= self.window:
            self._start = now
            self._logged = 0
        if self._logged < self.burst:
            self._logged += 1
            return True
        self._suppressed += 1
        if self._timer is None:
            self._timer = self.clock.callLater(
                self._start + self.window - now, self._windowEnded
            )
        return False

    def _windowEnded(self) -> None:
        self._timer = None
        self._summarize()

    def _summarize(self) -> None:
        if not self._suppressed:
            return
        self.log.info(
            "{protocol} connection from {peer}: {suppressed} more error lines"
            " not logged (at most {burst} every {window:g} seconds)",
            protocol=self.protocol,
            peer=self.peer,
            suppressed=self._suppressed,
            burst=self.burst,
            window=self.window,
            event="log-suppressed",
        )
        self._suppressed = 0

    def close(self) -> None:
        """The connection closed: say how many lines were left out, if any."""
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()
        self._summarize()


#: A L{ConnectionLimiter}'s refusals; each protocol words them its own way.
TOO_MANY_CONNECTIONS = "the server has too many connections"
TOO_MANY_FROM_ADDRESS = "too many connections from your address"


class ConnectionLimiter:
    """
    Counts open connections in total and per address. C{0} means no limit.
    One limiter is shared by every listener, so the limits hold across all
    protocols at once.
    """

    def __init__(self, maxTotal: int = 0, maxPerAddress: int = 0) -> None:
        self.maxTotal = maxTotal
        self.maxPerAddress = maxPerAddress
        self.total = 0
        self._perAddress: dict[str, int] = {}

    def acquire(self, address: str) -> str | None:
        """
        Count a new connection from C{address}, or refuse it.

        @return: C{None} when it is counted (call L{release} when it closes),
            or the reason it is refused (nothing is counted then).
        """
        if self.maxTotal and self.total >= self.maxTotal:
            return TOO_MANY_CONNECTIONS
        count = self._perAddress.get(address, 0)
        if self.maxPerAddress and count >= self.maxPerAddress:
            return TOO_MANY_FROM_ADDRESS
        self.total += 1
        self._perAddress[address] = count + 1
        return None

    def release(self, address: str) -> None:
        count = self._perAddress.get(address, 0)
        if count <= 0:
            return
        self.total -= 1
        if count == 1:
            del self._perAddress[address]
        else:
            self._perAddress[address] = count - 1

    def count(self, address: str) -> int:
        return self._perAddress.get(address, 0)


def _closed() -> None:
    """The overflow callback of a detached L{OutboundQueue}: nothing to do."""


@implementer(IPushProducer)
class OutboundQueue:
    """
    Bytes on their way to one client, bounded.

    Writes go straight to the transport while it accepts them. When the
    transport's own buffer fills (it pauses us, its producer), further writes
    wait here, in order; when it drains (it resumes us), they follow. If what
    waits here would pass C{maxBytes} (C{0}: no limit), C{onOverflow} is
    called once instead and nothing more is queued: the client is not reading
    and is disconnected by the protocol.

    Memory for one slow client is bounded by the transport's buffer plus
    C{maxBytes}.
    """

    #: Called after what waited was handed to the transport (it drained, or
    #: L{finish}); set only by a protocol that waits for that.
    onDrained: Callable[[], None] | None = None

    def __init__(
        self, transport, maxBytes: int, onOverflow: Callable[[], None]
    ) -> None:
        self.transport = transport
        self.maxBytes = maxBytes
        self.onOverflow = onOverflow
        self.queued = 0
        self.overflowed = False
        # A list, not a deque: it is only ever appended to and emptied whole,
        # and an empty list is a tenth of an empty deque (idle sessions).
        self._waiting: list[bytes] = []
        self._paused = False
        transport.registerProducer(self, True)

    def write(self, data: bytes) -> bool:
        """Send or queue C{data}; C{False} when it was dropped (overflow)."""
        if self.overflowed:
            return False
        if not self._paused:
            # Sent at once when the transport's buffer is empty (see
            # chatd.writethrough); the transport still pauses us when full.
            sendNow(self.transport, data)
            return True
        if self.maxBytes and self.queued + len(data) > self.maxBytes:
            self.overflowed = True
            self.onOverflow()
            return False
        self._waiting.append(data)
        self.queued += len(data)
        return True

    def finish(self) -> None:
        """
        Hand everything that waits to the transport and stop being its
        producer, before the protocol closes the connection: a TLS transport
        does not close while a producer is registered.
        """
        waiting = self._waiting
        if waiting:
            self.transport.writeSequence(waiting)
            self._waiting = []
            self.queued = 0
        self.overflowed = True  # nothing more is taken
        self.transport.unregisterProducer()
        if self.onDrained is not None:
            self.onDrained()

    def retract(self, data: bytes) -> bool:
        """
        Take C{data} (that very object, as it was written) back out of the
        queue; C{False} when it does not wait here (any more).
        """
        for index, item in enumerate(self._waiting):
            if item is data:
                del self._waiting[index]
                self.queued -= len(data)
                return True
        return False

    def detach(self) -> None:
        """
        The connection is closed: drop what waits and the protocol's
        overflow callback, so that the protocol (which holds this queue) and
        its transport are freed by reference counting alone.
        """
        self._waiting = []
        self.queued = 0
        self.overflowed = True  # nothing more is taken
        self.onOverflow = _closed
        # A TLS transport keeps its producer after the connection is lost,
        # and this queue refers to the transport: a cycle, unless undone.
        try:
            self.transport.unregisterProducer()
        except RuntimeError:
            pass  # none is registered any more (an in-memory test transport)

    @property
    def paused(self) -> bool:
        """Whether the transport's buffer is full (what is written waits)."""
        return self._paused

    # IPushProducer, called by the transport.

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._drain()

    def stopProducing(self) -> None:
        self._waiting.clear()
        self.queued = 0

    def _drain(self) -> None:
        waiting = self._waiting
        if self._paused and not self.overflowed:
            return
        if waiting:
            self.transport.writeSequence(waiting)
            self._waiting = []
            self.queued = 0
            if self.onDrained is not None:
                self.onDrained()


def enableKeepAlive(
    transport, idle: int = DEFAULT_KEEPALIVE, interval: int = 15, count: int = 4
) -> None:
    """
    Turn on TCP keepalive with short timers where the platform allows it, so
    a peer that vanished (power off, cable out) is noticed in about
    C{idle + interval * count} seconds and its name freed.
    """
    try:
        transport.setTcpKeepAlive(True)
    except (AttributeError, OSError):
        return
    handle = getattr(transport, "getHandle", lambda: None)()
    setsockopt = getattr(handle, "setsockopt", None)
    if setsockopt is None:
        return
    for option, value in [
        ("TCP_KEEPIDLE", idle),
        ("TCP_KEEPINTVL", interval),
        ("TCP_KEEPCNT", count),
    ]:
        number = getattr(socket, option, None)
        if number is not None:
            try:
                setsockopt(socket.IPPROTO_TCP, number, value)
            except OSError:
                pass
