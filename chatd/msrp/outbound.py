"""
What waits to be written to one MSRP session, in order, and the flow control
around it.

Frames are written straight to the transport while nothing waits, and wait
in order while a file streams to the session (nothing may be interleaved
inside file content) or while the transport's buffer is full. Messages from
other users are refused once the waiting bytes would pass C{maxQueued}; the
session's own answers never are, but past that its reading is paused.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Iterator

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from chatd.msrp.codec import encodeError, wireText
from chatd.msrp.relay import MSRP, PADDING, FileStream, stopWatching

if TYPE_CHECKING:  # pragma: no cover
    from chatd.msrp.protocol import MsrpProtocol


@implementer(IPushProducer)
class Outbound:
    """
    The outbound queue of one L{MsrpProtocol}: bytes and L{FileStream}s, one
    of which at a time may be I{live} (its content going straight to the
    transport).

    It is registered on the session's own transport as its streaming
    producer, so the transport tells it when its write buffer is full
    (C{pauseProducing}) and when it has drained (C{resumeProducing}).

    What it asks of its session: C{transport}, C{factory.metrics},
    C{maxQueued}, C{closing}, C{pauseReading}/C{resumeReading} (the queue
    pauses the session's own reading past C{maxQueued}), C{streamStarted}
    (a file went live with content still to come) and C{streamRelayed} (a
    file was written whole).

    @ivar transportFull: the transport's buffer is full.
    @ivar live: the file whose content is being written, or L{None}.
    @ivar largeStream: the file for this session, live or waiting, with more
        than L{chatd.msrp.relay.FILL_MAX} still to arrive (at most one: while
        there is one, others' messages and files are refused, so nothing of
        theirs waits behind it).
    @ivar waitingBytes: the bytes waiting, counted against C{maxQueued}.
    @ivar gap: seconds between two writes, 0 for none. A client of the
        peer-to-peer variant reads one C{recv()} as one message, and a
        transport joins the writes of one reactor turn: spaced, each
        message reaches it alone (C{--msrp-p2p-gap}).
    """

    def __init__(self, session: MsrpProtocol) -> None:
        self.session = session
        self.transportFull = False
        self.live: FileStream | None = None
        self.largeStream: FileStream | None = None
        self.waitingBytes = 0
        self._waiting: deque[bytes | FileStream] = deque()
        self.gap = 0.0
        self._spacer = None  # the gap's timer, while one runs

    def detach(self) -> None:
        """
        The connection is gone: break the cycle through the transport (which
        holds this as its producer) so that it goes by reference counting.
        """
        self._stopSpacer()
        self.session = None

    # What others may ask.

    def blocked(self) -> bool:
        """Whether a frame sent now would wait."""
        return (
            self.live is not None
            or self.transportFull
            or bool(self._waiting)
            or self._spacer is not None
        )

    def hasRoom(self, size: int) -> bool:
        """Whether another user's frame of C{size} bytes would be accepted."""
        if self.session.closing:
            return False
        return not self.blocked() or self.waitingBytes + size <= self.session.maxQueued

    def fileUnderWay(self) -> bool:
        """Whether a file to this session is live or waits its turn."""
        return self.live is not None or any(
            item.__class__ is FileStream for item in self._waiting
        )

    def streams(self) -> Iterator[FileStream]:
        """The files for this session, live or waiting (for filesInFlight)."""
        if self.live is not None:
            yield self.live
        for item in self._waiting:
            if item.__class__ is FileStream:
                yield item

    # Writing.

    def send(self, frame: bytes) -> None:
        """Put C{frame} on the wire after everything that waits."""
        session = self.session
        if session.closing:
            return
        if self.blocked():
            self._waiting.append(frame)
            self.waitingBytes += len(frame)
            self._checkQueue()
        else:
            session.transport.write(frame)
            self._space()

    def _space(self) -> None:
        """After a write, hold the next one back for C{gap} seconds."""
        if self.gap:
            self._spacer = self.session.clock.callLater(self.gap, self._spaced)

    def _spaced(self) -> None:
        self._spacer = None
        if self.session is not None:
            self.drain()

    def _stopSpacer(self) -> None:
        if self._spacer is not None:
            if self._spacer.active():
                self._spacer.cancel()
            self._spacer = None

    def enqueueStream(self, stream: FileStream) -> None:
        """Start C{stream} now, or once what waits before it is written."""
        if self.blocked():
            self._waiting.append(stream)
            self.waitingBytes += len(stream.header)
        else:
            self._goLive(stream)

    def held(self, size: int) -> None:
        """A waiting stream holds C{size} more bytes of its content."""
        self.waitingBytes += size

    def withdraw(self, stream: FileStream) -> bool:
        """Drop the waiting C{stream}; whether it was waiting."""
        if self.largeStream is stream:
            self.largeStream = None
        try:
            self._waiting.remove(stream)
        except ValueError:
            return False
        self.waitingBytes -= stream.queuedBytes()
        return True

    def streamEnded(self, stream: FileStream) -> None:
        """The live C{stream}'s content is all written: on to what waits."""
        self._finishLive(stream)
        self.drain()

    def cutLive(self, stream: FileStream, text: str) -> None:
        """
        End the live C{stream} before its content is all here: complete it
        with zero bytes (the recipient counts C{size} bytes and no frame can
        be written before they are done), then ERROR C{text}, so that the
        recipient knows to throw the file away, then what waited for it.
        """
        stopWatching(stream)
        stream.cutText = text
        self._pad()

    def clear(self) -> tuple[FileStream | None, list[bytes | FileStream]]:
        """The session closes: drop and return the live file and what waits."""
        live, self.live = self.live, None
        self.largeStream = None
        self._stopSpacer()
        waiting = list(self._waiting)
        self._waiting.clear()
        self.waitingBytes = 0
        return live, waiting

    def drain(self) -> None:
        """Write what waits, in order, until a file streams or the buffer fills."""
        while (
            self._waiting
            and self.live is None
            and not self.transportFull
            and not self.session.closing
            and self._spacer is None
        ):
            item = self._waiting.popleft()
            if item.__class__ is bytes:
                self.waitingBytes -= len(item)
                self.session.transport.write(item)
                self._space()
            else:
                self.waitingBytes -= item.queuedBytes()
                self._goLive(item)
        self._checkQueue()

    def _checkQueue(self) -> None:
        # Our own replies are never refused; a client that keeps asking while
        # it does not read what waits for it is simply not read any more.
        if self.waitingBytes > self.session.maxQueued:
            self.session.pauseReading("queue")
        else:
            self.session.resumeReading("queue")

    def _goLive(self, stream: FileStream) -> None:
        session = self.session
        transport = session.transport
        transport.write(stream.header)
        for data in stream.held:
            transport.write(data)
        session.factory.metrics.bytesRelayed(MSRP, MSRP, stream.heldBytes)
        stream.sent = stream.heldBytes
        stream.held = []
        stream.heldBytes = 0
        stream.live = True
        self.live = stream
        if stream.done:
            # Held whole while it waited; whoever called drains on.
            self._finishLive(stream)
        else:
            session.streamStarted(stream)

    def _finishLive(self, stream: FileStream) -> None:
        stopWatching(stream)
        self.live = None
        if self.largeStream is stream:
            self.largeStream = None
        self.session.streamRelayed(stream)

    def _pad(self) -> None:
        """Go on completing the cut live file while the transport takes it."""
        stream = self.live
        transport = self.session.transport
        size = len(PADDING)
        while stream.sent < stream.size:
            if self.transportFull or self.session.closing:
                return  # resumed by resumeProducing
            n = min(size, stream.size - stream.sent)
            transport.write(PADDING if n == size else PADDING[:n])
            stream.sent += n
        self.live = None
        transport.write(encodeError(wireText(stream.cutText)))
        self.drain()

    # IPushProducer, for the session's own transport.

    def pauseProducing(self) -> None:
        self.transportFull = True
        if self.live is not None:
            self.live.sender.updateFlow(self.live)

    def resumeProducing(self) -> None:
        self.transportFull = False
        if self.session.closing:
            return
        if self.live is not None:
            if self.live.cutText is not None:
                self._pad()  # drains on once the file is complete
                return
            self.live.sender.updateFlow(self.live)
        self.drain()

    def stopProducing(self) -> None:
        pass  # connectionLost does the cleaning up
