"""
MSRP files streamed between MSRP users on different nodes of a cluster
(docs/cluster.md, "Files across nodes").

A file from a user of node A to an MSRP user of node B is not collected
whole: A publishes its content on B's channel (C{<prefix>to:B}, the channel
of B's messages, so a message sent after the file arrives after it) in
pieces of at most L{CHUNK} bytes, and B hands them to a L{FileStream} as if
the sender were local. Flow control is by credit:

  - B grants A a window of L{WINDOW} bytes when the file goes live (its
    turn in the recipient's queue), and tops it up again only while the
    recipient's transport takes what it is written (the same rule a local
    L{FileStream} follows to pause its sender);
  - A pauses the sender's transport once the credit is spent (at most one
    read over) and resumes it when B grants more.

So each node holds about a window plus one read per file, and Redis' pub/sub
output buffer for B never holds more than a window.

The messages, JSON on the node channels (C{"t"}) but for C{fs-data}:

  - C{fs-open} A→B: the header (id, sender, receiver, filename, size,
    port, ip);
  - C{fs-grant} B→A: C{n} more bytes may be sent (the first, perhaps of 0,
    says the file was accepted);
  - C{fs-data} A→B: a piece of content, a binary frame (C{sendRawToNode}:
    the file's id, NUL, the content as it is); C{fs-end} A→B: all of it was sent;
  - C{fs-cut} A→B: the sender left before the end (C{stalled}: or A's idle
    watch fired);
  - C{fs-stop} B→A: the file was refused or not delivered, with the text
    for the sender (B's words: the texts of one node);
  - C{fs-ack} B→A: the recipient's ACK, for the sender.

A node that dies mid-file is noticed by the other through its users'
logouts (the heartbeat's reaping), or by the idle watch
(C{--file-idle-timeout}), whichever comes first.
"""

from __future__ import annotations

import base64
import itertools
from collections import deque
from types import SimpleNamespace
from typing import TYPE_CHECKING

from twisted.logger import Logger

from chatd.metrics import BUSY
from chatd.msrp.codec import encodeFileHeader
from chatd.msrp.relay import FILL_MAX, MSRP, FileStream, stopWatching, watch
from chatd.msrp.texts import (
    ERR_NOT_FOUND,
    errFileStalled,
    errNoFiles,
    errQueueFull,
    errReceivingFile,
    errRecipientGone,
    errRemoteVariant,
    show,
)
from chatd.presence import LOGOUT, nameKey

if TYPE_CHECKING:  # pragma: no cover
    from chatd.msrp.protocol import MsrpFactory, MsrpProtocol

#: The most content in one message through Redis (256 KiB): fewer, larger
#: messages cost each node's Redis client and JSON less per byte.
CHUNK = 256 * 1024

#: The kind of the binary frames of a file's content, and what ends the
#: file's id in them (ids never hold a NUL).
FS_DATA = b"fs-data"
RAW_SEP = b"\x00"

#: How many files all sent a node remembers, for a late "not delivered".
MAX_FINISHED = 1024

#: The credit the receiving node grants: what may be on its way (8 MiB).
#: Large enough to cover the round trip of a grant through two reactors
#: and Redis at full rate, well under the 32 MiB a node may grow by.
WINDOW = 8 * 1024 * 1024


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text)


class SenderCredit:
    """
    What the sending node may still publish of one file: granted by the
    receiving node, spent by each read of the sender's content.
    """

    __slots__ = ("credit", "accepted")

    def __init__(self) -> None:
        self.credit = 0
        self.accepted = False

    def grant(self, n: int) -> None:
        self.accepted = True
        self.credit += n

    def spend(self, n: int) -> None:
        # A read is sent whole even past the credit: the sender is paused
        # at once, so it overshoots by one read at most.
        self.credit -= n

    def mayRead(self) -> bool:
        return self.accepted and self.credit > 0


class ReceiverWindow:
    """
    The receiving node's side of one file's credit: how much it granted,
    how much arrived, and what to grant next so that at most C{window} is
    ever on its way.
    """

    __slots__ = ("window", "granted", "received")

    def __init__(self, window: int = WINDOW) -> None:
        self.window = window
        self.granted = 0
        self.received = 0

    def arrived(self, n: int) -> None:
        self.received += n

    def outstanding(self) -> int:
        return self.granted - self.received

    def topUp(self, size: int) -> int:
        """
        What to grant now (0: nothing) while the recipient takes what it
        is written, C{size} being the file's size: the window back to full
        once a quarter of it arrived (early, so that the grant's round trip
        overlaps the rest of the window), never past the end of the file.
        """
        left = size - self.granted
        if left <= 0:
            return 0
        outstanding = self.outstanding()
        if outstanding > self.window - self.window // 4:
            return 0
        n = min(self.window - outstanding, left)
        self.granted += n
        return n


class OutgoingFile:
    """
    The sink of an MSRP sender whose file goes to an MSRP user on another
    node (node A's side). It publishes each read as it arrives, and keeps
    the sender paused while it has no credit (from the header until B's
    first grant, and whenever the credit is spent): at most one read over.
    """

    __slots__ = (
        "files", "id", "sender", "recipient", "receiverKey", "node",
        "filename", "size", "credit", "done", "ended", "idle",
        "lastProgress",
    )

    def __init__(self, files: RemoteFiles, fileId: str, sender: MsrpProtocol,
                 receiver: str, node: str, filename: bytes, size: int) -> None:
        self.files = files
        self.id = fileId
        self.sender = sender
        # What the sender's recipientGone and logs read of a recipient.
        self.recipient = SimpleNamespace(user=SimpleNamespace(name=receiver))
        self.receiverKey = nameKey(receiver)
        self.node = node
        self.filename = filename
        self.size = size
        self.credit = SenderCredit()
        self.done = False
        self.ended = False
        self.idle = None
        self.lastProgress = 0.0

    def write(self, data: bytes) -> None:
        if self.ended:
            return
        # Published at once, even before the file is accepted: what the
        # sender sends after the file (in the same read, even) must follow
        # it. Before the first grant the sender is paused after one read;
        # a refused file's content is dropped by B.
        self._publish(data)
        self._flow()

    def _publish(self, data: bytes) -> None:
        for start in range(0, len(data), CHUNK):
            self.files.sendData(self.node, self.id, data[start:start + CHUNK])
        self.credit.spend(len(data))
        self.files.factory.metrics.bytesRelayed(MSRP, MSRP, len(data))
        if self.idle is not None:
            self.lastProgress = self.sender.clock.seconds()

    def finish(self) -> None:
        self.done = True
        stopWatching(self)
        if not self.ended:
            self._sendEnd()
        self._flow()

    def _sendEnd(self) -> None:
        self.files.send(self.node, {"t": "fs-end", "id": self.id})
        # Nothing more goes to B; a late fs-stop (the recipient left before
        # the content was written to it) finds the sender by name.
        self._forget()
        self.files.remember(self.id)

    def cut(self) -> None:
        """The sender left before the end."""
        if self.ended:
            return
        self.files.send(self.node, {"t": "fs-cut", "id": self.id})
        self._forget()

    def stalled(self) -> None:
        """No credit and no content for --file-idle-timeout: give up."""
        if self.ended:
            return
        timeout = self.files.factory.limits.fileIdleTimeout
        self.files.send(self.node, {"t": "fs-cut", "id": self.id, "stalled": True})
        self.stop(errFileStalled(show(self.filename), timeout))

    def granted(self, n: int) -> None:
        self.credit.grant(n)
        if n and not self.done:
            if self.idle is None:
                watch(self, self.sender.clock, self.files.factory)
            else:
                self.lastProgress = self.sender.clock.seconds()
        self._flow()

    def stop(self, text: str) -> None:
        """Refused or not delivered: the sender is told C{text}."""
        if self.ended:
            return
        self._forget()
        self.sender.fileRefused(self, text)

    def _flow(self) -> None:
        if self.ended or self.done or self.credit.mayRead():
            self.sender.resumeReading(self)
        else:
            self.sender.pauseReading(self)

    def _forget(self) -> None:
        self.ended = True
        stopWatching(self)
        self.files.outgoing.pop(self.id, None)
        self.sender.resumeReading(self)


class RemoteSender:
    """
    Node B's stand-in for the sender, on node A, of a L{FileStream} to one
    of B's MSRP sessions: what the stream and its recipient ask of a sender
    (C{updateFlow}, C{fileAbandoned}, C{recipientGone}, C{forwardAck}, ...)
    becomes a message to A.
    """

    __slots__ = ("files", "id", "node", "user", "senderKey", "stream", "window", "ended")

    def __init__(self, files: RemoteFiles, fileId: str, node: str, sender: str) -> None:
        self.files = files
        self.id = fileId
        self.node = node
        self.user = SimpleNamespace(name=sender)
        self.senderKey = nameKey(sender)
        self.stream: FileStream | None = None
        self.window = ReceiverWindow(files.window)
        self.ended = False

    closing = False

    def pauseReading(self, reason) -> None:
        pass

    def resumeReading(self, reason) -> None:
        pass

    def updateFlow(self, stream: FileStream) -> None:
        """Grant more while the recipient's transport takes what it gets."""
        if self.ended or stream.done or not stream.live:
            return
        if stream.recipient.outbound.transportFull:
            return
        n = self.window.topUp(stream.size)
        if n:
            self._grant(n)

    def _grant(self, n: int) -> None:
        self.files.send(self.node, {"t": "fs-grant", "id": self.id, "n": n})

    def received(self, data: bytes) -> None:
        stream = self.stream  # released if the write ends it
        self.window.arrived(len(data))
        stream.write(data)
        if self.stream is stream and stream.sent + stream.heldBytes >= stream.size:
            # The last byte: the file ends here, as on one node, not when A's
            # fs-end comes. The recipient may have it and ACK it before then
            # (the two cross Redis apart), and an ACK is only taken for a
            # file that ended.
            self.files.release(self).finish()
            return
        self.updateFlow(stream)

    def fileAbandoned(self, stream: FileStream, text: str) -> None:
        self._stop(text)

    def recipientGone(self, stream: FileStream) -> None:
        name = stream.recipient.user.name if stream.recipient.user else "?"
        self._stop(errRecipientGone(name, show(stream.filename)))

    def _stop(self, text: str) -> None:
        if self.ended:
            return  # told already, or A ended it (and told its sender)
        self.files.release(self)
        self.ended = True
        self.files.send(self.node, {"t": "fs-stop", "id": self.id,
                                    "sender": self.user.name, "text": text})

    def forwardAck(self, filename: bytes) -> bool:
        """The recipient's ACK: to the sender on A, if still online."""
        if self.files.presence.lookup(self.user.name) is None:
            return False
        self.files.send(self.node, {"t": "fs-ack", "sender": self.user.name,
                                    "filename": _b64(filename)})
        return True


class RemoteFiles:
    """
    The MSRP front's files to and from MSRP users on other nodes (see the
    module), for one L{MsrpFactory} on a cluster presence service (one that
    has C{inboxHandlers}, C{nodeOf} and C{sendToNode}).
    """

    log = Logger()

    def __init__(self, factory: MsrpFactory, presence, window: int = WINDOW) -> None:
        self.factory = factory
        self.presence = presence
        self.window = window
        self.outgoing: dict[str, OutgoingFile] = {}
        #: The ids of the last files all sent from here (bounded).
        self.finished: deque[str] = deque(maxlen=MAX_FINISHED)
        self.incoming: dict[str, RemoteSender] = {}
        self._ids = itertools.count(1)
        presence.inboxHandlers.update({
            "fs-open": self._opened,
            "fs-grant": self._granted,
            "fs-data": self._data,
            "fs-end": self._ended,
            "fs-cut": self._cut,
            "fs-stop": self._stopped,
            "fs-ack": self._acked,
        })
        presence.rawInboxHandlers[FS_DATA] = self._data
        presence.addObserver(self._presenceEvent)

    @classmethod
    def forPresence(cls, factory: MsrpFactory, presence) -> RemoteFiles | None:
        """A L{RemoteFiles} when C{presence} is a cluster's, else C{None}."""
        if getattr(presence, "inboxHandlers", None) is None:
            return None
        return cls(factory, presence)

    def remember(self, fileId: str) -> None:
        """C{fileId} was all sent: a late fs-stop for it tells its sender."""
        self.finished.append(fileId)

    def send(self, node: str, data: dict) -> None:
        self.presence.sendToNode(node, data)

    def sendData(self, node: str, fileId: str, content: bytes) -> None:
        # Binary: base64 in JSON cost each node more than all the rest of
        # a piece's way (docs/performance.md, scenario 7).
        self.presence.sendRawToNode(node, FS_DATA, fileId.encode() + RAW_SEP + content)

    def remoteMsrpUser(self, name: str) -> str | None:
        """The name, as written, of C{name} if an MSRP user of another node."""
        if self.presence.nodeOf(name) is None:
            return None
        info = self.presence.lookup(name)
        return info.name if info is not None and info.protocol == MSRP else None

    # Node A: the sender's side.

    def open(self, sender: MsrpProtocol, receiver: str, frame, filename: str) -> OutgoingFile:
        """Start C{frame}'s file to C{receiver}, an MSRP user of another node."""
        node = self.presence.nodeOf(receiver)
        fileId = f"{self.presence.nodeId}/{next(self._ids)}"
        out = OutgoingFile(self, fileId, sender, receiver, node, frame.filename, frame.size)
        self.outgoing[fileId] = out
        self.log.info(
            "msrp file {filename!r} ({size} bytes) from {sender} to {receiver}"
            " on node {node}",
            filename=filename,
            size=frame.size,
            sender=sender.user.name,
            receiver=receiver,
            node=node,
            event="file-remote",
        )
        self.send(node, {
            "t": "fs-open", "id": fileId, "from": self.presence.nodeId,
            "sender": sender.user.name, "receiver": receiver,
            "filename": _b64(frame.filename), "size": frame.size,
            "port": frame.port, "ip": _b64(frame.ip),
        })
        sender.pauseReading(out)  # until it is accepted
        return out

    def _granted(self, data: dict) -> None:
        out = self.outgoing.get(data["id"])
        if out is not None:
            out.granted(int(data["n"]))

    def _stopped(self, data: dict) -> None:
        out = self.outgoing.get(data["id"])
        if out is not None:
            out.stop(data["text"])
            return
        if data["id"] not in self.finished:
            return  # ended here already, and its sender told
        # The file was all sent already: its sender is told, if still here.
        session = self.presence.sessionFor(data["sender"])
        if session is not None and hasattr(session, "fileRefused"):
            session.fileRefused(None, data["text"])

    def _acked(self, data: dict) -> None:
        session = self.presence.sessionFor(data["sender"])
        if session is not None and hasattr(session, "forwardAck"):
            session.forwardAck(_unb64(data["filename"]))

    # Node B: the recipient's side.

    def _opened(self, data: dict) -> None:
        from chatd.msrp.protocol import HUMAN, P2P, MsrpProtocol

        proxy = RemoteSender(self, data["id"], data["from"], data["sender"])
        receiver = data["receiver"]
        session = self.presence.sessionFor(receiver)
        if not isinstance(session, MsrpProtocol) or session.closing or session.user is None:
            proxy._stop(ERR_NOT_FOUND)
            return
        if session.mode == HUMAN:
            proxy._stop(errNoFiles(receiver))
            return
        if session.mode == P2P:
            proxy._stop(errRemoteVariant(receiver))
            return
        filename = _unb64(data["filename"])
        size = int(data["size"])
        header = encodeFileHeader(
            self.factory.slots.slotFor(data["sender"]), filename, size,
            int(data["port"]), _unb64(data["ip"]),
        )
        outbound = session.outbound
        if outbound.largeStream is not None:
            self.factory.metrics.refused(MSRP, BUSY)
            proxy._stop(errReceivingFile(receiver))
            return
        if not outbound.hasRoom(len(header)):
            self.factory.metrics.refused(MSRP, BUSY)
            proxy._stop(errQueueFull(receiver))
            return
        stream = FileStream(proxy, session, header, filename, size)
        proxy.stream = stream
        self.incoming[proxy.id] = proxy
        if size > FILL_MAX:
            outbound.largeStream = stream
        self.log.info(
            "msrp file {filename!r} ({size} bytes) from {sender} on node {node}"
            " to {receiver}",
            filename=show(filename),
            size=size,
            sender=data["sender"],
            node=data["from"],
            receiver=receiver,
            event="file-remote",
        )
        outbound.enqueueStream(stream)  # live now: updateFlow grants the window
        if proxy.window.granted == 0 and not proxy.ended:
            proxy._grant(0)  # accepted; the credit comes when it goes live

    def _data(self, frame: bytes) -> None:
        end = frame.find(RAW_SEP)
        if end < 0:
            self.log.warn("cluster fs-data frame without an id dropped")
            return
        proxy = self.incoming.get(frame[:end].decode("utf-8", "replace"))
        if proxy is not None:
            proxy.received(frame[end + 1:])

    def release(self, proxy: RemoteSender) -> FileStream | None:
        """
        Nothing more comes from A for C{proxy}'s file: forget it, and let
        go of its stream (the recipient may keep C{proxy} for an ACK, and
        must not keep itself alive through it).
        """
        self.incoming.pop(proxy.id, None)
        stream, proxy.stream = proxy.stream, None
        return stream

    def _ended(self, data: dict) -> None:
        proxy = self.incoming.get(data["id"])
        if proxy is not None:
            self.release(proxy).finish()

    def _cut(self, data: dict) -> None:
        proxy = self.incoming.get(data["id"])
        if proxy is None:
            return
        proxy.ended = True  # A told its sender already
        stream = self.release(proxy)
        if data.get("stalled") and stream.live:
            stream.stalled()
        else:
            stream.cut()

    # Both: a user of another node gone (its node stopped or died).

    def _presenceEvent(self, kind: str, info) -> None:
        if kind != LOGOUT:
            return
        key = nameKey(info.name)
        for out in list(self.outgoing.values()):
            if out.receiverKey == key:
                out.stop(errRecipientGone(info.name, show(out.filename)))
        for proxy in list(self.incoming.values()):
            if proxy.senderKey == key:
                proxy.ended = True
                self.release(proxy).cut()
