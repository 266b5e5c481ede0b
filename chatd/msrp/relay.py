"""
MSRP's file relay (seed 004): a file on its way from one MSRP session to
another, a refused file's content being read and dropped, and a file
collected whole for a user of another protocol.

A file between two MSRP users is streamed: each read's bytes go straight to
the recipient's transport (through its L{chatd.msrp.outbound.Outbound}), and
the sender's transport is paused while the recipient's transport is full or
the file waits its turn. Memory use is bounded whatever the file size. A file
cut short is completed with at most L{FILL_MAX} zero bytes; docs/msrp.md
says what each side sees.

The sessions here are L{chatd.msrp.protocol.MsrpProtocol}s, used only through
their public methods.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from chatd.msrp.texts import errFileStalled, errRecipientGone, show

if TYPE_CHECKING:  # pragma: no cover
    from chatd.msrp.protocol import MsrpFactory, MsrpProtocol

#: The protocol's name, as the metrics count it.
MSRP = "msrp"

#: The most content of a file cut short that chatd completes with zero bytes
#: (1 MiB). A file that may need more (more than this of it is still to
#: arrive) is relayed with nothing queued behind it but its recipient's own
#: answers: others' messages and files are refused meanwhile, and if it is
#: cut with more than this missing its recipient is disconnected instead. So
#: one byte of an attacker's never costs its victim more than this.
FILL_MAX = 1024**2

#: What completes the content of a file cut short (see L{FileStream}),
#: written a piece at a time as the recipient's transport takes it.
PADDING = bytes(65536)


def _nameOf(session: MsrpProtocol) -> str:
    return session.user.name if session.user else "?"


class FileStream:
    """
    A file on its way from one MSRP session to another. It waits in the
    recipient's outbound queue until everything before it is written; then it
    is I{live}: its header is written and its content goes straight to the
    recipient's transport as it arrives. Until then, the content that arrives
    is held (the sender's transport is paused, so at most about one read).

    A live file whose sender leaves, or that makes no progress for
    C{--file-idle-timeout} seconds, is I{cut}: the recipient expects C{size}
    bytes and cannot be told anything before them, so the rest is completed
    with zero bytes, and an ERROR saying the file was not delivered follows
    at once; then whatever waited for the recipient. When more than
    L{FILL_MAX} bytes are missing the recipient is disconnected instead;
    nothing from others waited behind such a file (see
    L{chatd.msrp.outbound.Outbound.largeStream}).
    """

    __slots__ = (
        "sender",
        "recipient",
        "outbound",
        "header",
        "filename",
        "size",
        "sent",
        "live",
        "done",
        "held",
        "heldBytes",
        "idle",
        "lastProgress",
        "cutText",
    )

    def __init__(
        self,
        sender: MsrpProtocol,
        recipient: MsrpProtocol,
        header: bytes,
        filename: bytes,
        size: int,
    ) -> None:
        self.sender = sender
        self.recipient = recipient
        self.outbound = recipient.outbound
        self.header = header
        self.filename = filename
        self.size = size
        self.sent = 0  # content bytes written to the recipient
        self.live = False
        self.done = False  # every byte of the content has arrived
        self.held: list[bytes] = []
        self.heldBytes = 0
        self.idle = None  # the idle timer while live (None: no timeout)
        self.lastProgress = 0.0
        self.cutText: str | None = None  # the ERROR that follows a cut

    def queuedBytes(self) -> int:
        return len(self.header) + self.heldBytes

    def write(self, data: bytes) -> None:
        outbound = self.outbound
        if self.live:
            recipient = self.recipient
            recipient.transport.write(data)
            recipient.factory.metrics.bytesRelayed(MSRP, MSRP, len(data))
            self.sent += len(data)
            if self.idle is not None:
                self.lastProgress = recipient.clock.seconds()
        else:
            self.held.append(data)
            self.heldBytes += len(data)
            outbound.held(len(data))
        if (
            outbound.largeStream is self
            and self.size - self.sent - self.heldBytes <= FILL_MAX
        ):
            # A cut could be completed now: others' frames may wait again.
            outbound.largeStream = None

    def finish(self) -> None:
        self.done = True
        self.sender.resumeReading(self)
        if self.live:
            self.recipient.streamEnded(self)

    def cut(self) -> None:
        """The sender is gone before the end of the content."""
        recipient = self.recipient
        if self.live and not recipient.factory.stopping:
            sender = _nameOf(self.sender)
            missing = self.size - self.sent
            large = missing > FILL_MAX
            recipient.log.info(
                "msrp {name}: the sender {sender} of {filename!r} left mid-file;"
                " {missing} bytes are missing: "
                + ("more than can be completed, so it is disconnected"
                   if large else "completed with zeros"),
                name=_nameOf(recipient),
                sender=sender,
                filename=show(self.filename),
                missing=missing,
                disconnected=large,
                protocol=recipient.protocolName,
                event="file-cut",
            )
            # What waits for the recipient was accepted for it: complete the
            # file so the stream is in step again, say it was not delivered,
            # then deliver the rest (or, too much missing, disconnect it).
            self._abandon(errRecipientGone(sender, show(self.filename)), large)
            return
        if self.live:
            # The server is stopping and the recipient with it: nothing else
            # may be written, and it must not be handed a file that looks
            # complete.
            recipient.log.info(
                "msrp {name}: the sender of {filename!r} left mid-file",
                name=_nameOf(recipient),
                filename=show(self.filename),
            )
            recipient.cutOff()
            return
        if self.outbound.withdraw(self):
            self.outbound.drain()
            recipient.closeIfHalfClosed()

    def stalled(self) -> None:
        """
        The live stream made no progress for the idle timeout (its sender
        stopped sending, or its recipient stopped reading): both sides are
        told and the sender's rest is dropped.
        """
        recipient = self.recipient
        timeout = recipient.factory.limits.fileIdleTimeout
        text = errFileStalled(show(self.filename), timeout)
        missing = self.size - self.sent
        large = missing > FILL_MAX
        recipient.log.info(
            "msrp file {filename!r} from {sender} to {receiver} abandoned:"
            " no progress for {timeout} s; {missing} bytes are missing: "
            + ("more than can be completed, so the receiver is disconnected"
               if large else "completed with zeros"),
            filename=show(self.filename),
            sender=_nameOf(self.sender),
            receiver=_nameOf(recipient),
            timeout=timeout,
            missing=missing,
            disconnected=large,
            protocol=recipient.protocolName,
            event="file-stalled",
        )
        self.sender.fileAbandoned(self, text)
        self._abandon(text, large)

    def _abandon(self, text: str, large: bool) -> None:
        """
        End this live stream before its content is all here. With more than
        L{FILL_MAX} bytes missing the recipient cannot be told in band
        without being sent them, so it is disconnected (a connection closed
        before C{size} bytes says the file is incomplete); only its own
        answers waited behind the file, and they go with the connection.
        Otherwise the rest is completed with zeros, then ERROR C{text}.
        """
        if large:
            stopWatching(self)
            self.cutText = text  # its sender was told, or is gone
            self.recipient.cutOff()
        else:
            self.outbound.cutLive(self, text)


class Discard:
    """Reads the announced content of a refused file and drops it."""

    __slots__ = ()

    def write(self, data: bytes) -> None:
        pass

    def finish(self) -> None:
        pass

    def cut(self) -> None:
        pass


DISCARD = Discard()


class WholeFile:
    """
    Collects a file for a user of another protocol, who can only be handed
    whole files; bounded by that user's file limit, checked on the header,
    and abandoned when its content stops arriving for C{--file-idle-timeout}.
    """

    __slots__ = ("sender", "receiver", "filename", "content", "idle", "lastProgress")

    def __init__(self, sender: MsrpProtocol, receiver: str, filename: str) -> None:
        self.sender = sender
        self.receiver = receiver
        self.filename = filename
        self.content = bytearray()
        self.idle = None
        self.lastProgress = 0.0

    def write(self, data: bytes) -> None:
        self.content += data
        if self.idle is not None:
            self.lastProgress = self.sender.clock.seconds()

    def finish(self) -> None:
        stopWatching(self)
        self.sender.wholeFileReceived(self)

    def cut(self) -> None:
        stopWatching(self)
        self.content = bytearray()

    def stalled(self) -> None:
        """The file stopped arriving: drop it and tell its sender."""
        sender = self.sender
        if sender.sink is not self:
            return
        timeout = sender.factory.limits.fileIdleTimeout
        sender.log.info(
            "msrp file {filename!r} from {sender} to {receiver} abandoned:"
            " no progress for {timeout} s",
            filename=self.filename,
            sender=_nameOf(sender),
            receiver=self.receiver,
            timeout=timeout,
            protocol=sender.protocolName,
            event="file-stalled",
        )
        self.content = bytearray()
        sender.fileAbandoned(self, errFileStalled(self.filename, timeout))


def watch(transfer: FileStream | WholeFile, clock, factory: MsrpFactory) -> None:
    """
    Call C{transfer.stalled()} once C{transfer} has gone
    C{--file-idle-timeout} seconds without progress (0: never).
    """
    timeout = factory.limits.fileIdleTimeout
    if timeout:
        transfer.lastProgress = clock.seconds()
        transfer.idle = clock.callLater(timeout, _idleCheck, transfer, clock, factory)


def _idleCheck(transfer: FileStream | WholeFile, clock, factory: MsrpFactory) -> None:
    # Progress only stamps the time (no timer work for every read); the
    # timer looks at the stamp and sleeps again for what is left.
    left = transfer.lastProgress + factory.limits.fileIdleTimeout - clock.seconds()
    if left > 0:
        transfer.idle = clock.callLater(left, _idleCheck, transfer, clock, factory)
        return
    transfer.idle = None
    transfer.stalled()


def stopWatching(transfer: FileStream | WholeFile) -> None:
    """Cancel the idle timer of C{transfer}, if it has one."""
    idle, transfer.idle = transfer.idle, None
    if idle is not None and idle.active():
        idle.cancel()
