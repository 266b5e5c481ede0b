"""
MSRP (seed 004): one connection's behaviour.

Frames are decoded by L{chatd.msrp.codec}; docs/msrp.md is the normative
description. The shape of a connection:

  - The first 4 bytes are the user's name. The byte after them says who is on
    the other end: C{0x00} (the first byte of every binary frame) means a
    binary client; anything else means a person typing lines on nc/telnet
    (see L{MsrpProtocol} for the exact rule).
  - Output to a session goes through its L{chatd.msrp.outbound.Outbound}:
    frames are written in order, and wait while a file streams to the session
    or while the transport's buffer is full.
  - A file between two MSRP users is streamed by L{chatd.msrp.relay}; what the
    server says to people, in Spanish, is in L{chatd.msrp.texts}.
"""

from __future__ import annotations

import weakref
from collections import deque

from twisted.internet.interfaces import IHalfCloseableProtocol, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from chatd.limits import DEFAULT_LOGIN_TIMEOUT, ConnectionLimiter, Limits
from chatd.metrics import (
    BUSY,
    ERROR,
    FILE_CUT,
    LOGIN_REFUSED,
    LOGIN_TIMEOUT,
    PROTOCOL_ERROR,
    TOO_LARGE,
    ChatdMetrics,
)
from chatd.sessions import SessionFactory, SessionProtocol
from chatd.presence import (
    BROADCAST,
    ChatMessage,
    ClusterUnavailable,
    FilesNotAccepted,
    IChatSession,
    IFileReceiver,
    InvalidName,
    IPresenceService,
    NameInUse,
    NameProtected,
    NoSuchUser,
    RecipientBusy,
    UserInfo,
    isBroadcast,
)
from chatd.msrp.codec import (
    LINE_TOO_LONG,
    NAME_LENGTH,
    Ack,
    DecodeError,
    Error,
    FileChunk,
    FileEnd,
    FileHeader,
    LineDecoder,
    ListRequest,
    Message,
    MsrpFrameDecoder,
    clientListText,
    encodeAck,
    encodeClientList,
    encodeError,
    encodeFileHeader,
    encodeMessage,
    wireText,
)
from chatd.msrp.outbound import Outbound
from chatd.msrp import p2p
from chatd.msrp.p2pfiles import FileOffer, fetchOffer
from chatd.msrp.relay import (
    DISCARD,
    FILL_MAX,
    MSRP,
    Discard,
    FileStream,
    WholeFile,
    stopWatching,
    watch,
)
from chatd.msrp.remote import RemoteFiles
from chatd.msrp.slots import SlotDirectory
from chatd.msrp.texts import (
    CMD_HELP,
    CMD_LIST,
    CMD_QUIT,
    ERR_BAD_FILENAME,
    ERR_CUT_SHORT,
    ERR_EMPTY,
    ERR_FORMAT,
    ERR_INTERNAL,
    ERR_CLUSTER_LOGIN,
    ERR_LINE_TOO_LONG,
    ERR_NAME_LENGTH,
    ERR_NAME_RULE,
    ERR_NAME_TIMEOUT,
    ERR_NOT_FOUND,
    ERR_NOT_UTF8,
    ERR_OPCODE,
    ERR_SHUTDOWN,
    ERR_USAGE,
    HUMAN_BYE,
    HUMAN_HELP,
    NAME_PROMPT,
    REFUSALS,
    errAckSenderGone,
    errClusterUnavailable,
    errFileTooLarge,
    errFetching,
    errFileTooLargeFor,
    errNameInUse,
    errNameProtected,
    errNoFiles,
    errNoSuchAck,
    errNotDelivered,
    errQueueFull,
    errRate,
    errRecipientGone,
    errReceivingFile,
    humanGreeting,
    show as _show,
)

#: Default largest file a client may announce: 4 GiB.
DEFAULT_MAX_FILE = 4 * 1024**3

#: Default largest number of bytes waiting for one session: 1 MiB.
DEFAULT_MAX_QUEUED = 1024**2

#: Default seconds a new connection has to send its name (C{--login-timeout}).
DEFAULT_NAME_TIMEOUT = DEFAULT_LOGIN_TIMEOUT

#: How many received, not yet acknowledged files a session remembers for ACK
#: matching; the oldest are forgotten first.
MAX_UNACKED = 256

BINARY = "binary"
HUMAN = "human"
#: The peer-to-peer variant (chatd.msrp.p2p), a mode of its own.
P2P = "p2p"

#: C{--msrp-variant}: detect the variant per connection, or force one.
AUTO = "auto"
SEED = "seed"
VARIANTS = (AUTO, SEED, P2P)

#: Seconds between two writes to a client of the peer-to-peer variant
#: (C{--msrp-p2p-gap}): its client reads one recv() as one message.
DEFAULT_P2P_GAP = 0.05

#: Seconds of silence after which a new connection is taken for a person at
#: nc/telnet and told what to type (C{--msrp-greeting}; 0: never). Binary
#: clients send their name as soon as they connect, so they never see it.
DEFAULT_GREET_AFTER = 2.0


class RecipientReceivingFile(RecipientBusy):
    """
    The receiver is an MSRP session to which a file streams with more than
    L{FILL_MAX} of it still to arrive: nothing from others may wait behind
    it, since such a file cut short ends the session (docs/msrp.md).
    """


@implementer(IChatSession, IFileReceiver, IHalfCloseableProtocol)
class MsrpProtocol(SessionProtocol):
    """
    One MSRP client, binary or a person on nc/telnet, adapted to
    L{IChatSession} (and L{IFileReceiver}, for whole files from other
    protocols).

    The mode is decided by the byte after the 4-byte name: C{0x00} (a binary
    frame always starts with it) means binary; C{\\r} or C{\\n} means a
    person who typed the name and Enter; anything else means a person who
    typed a name longer than 4 bytes, who gets an error line. A line ending
    among the first 4 bytes is a person with a name shorter than 4 bytes.
    Until the byte after the name arrives the session counts as binary.

    A client that shuts down its sending side gets the answers to what it
    sent (a typed line without its Enter counts as a line), and whatever
    waits for it, then the connection closes.
    """

    protocolName = "msrp"
    log = Logger()

    def __init__(
        self,
        presence: IPresenceService,
        clock: IReactorTime,
        maxFileSize: int = DEFAULT_MAX_FILE,
        maxQueued: int = DEFAULT_MAX_QUEUED,
    ) -> None:
        self.presence = presence
        self.clock = clock
        self.fileSizeLimit = maxFileSize
        self.maxQueued = maxQueued
        self.mode: str | None = None  # None until the byte after the name
        self.user: UserInfo | None = None
        self.wireName = b""
        self._greeting = bytearray()  # the name while it arrives
        self._loggingIn = False
        self._held = bytearray()  # bytes received during the login
        self._closing = False
        self._greetTimer = None  # the NAME_PROMPT after a silence
        self._readLost = False  # the client sends nothing more
        self._pauseReasons: set[object] = set()
        # Inbound (this session sending).
        self._decoder: MsrpFrameDecoder | None = None
        self._lines: LineDecoder | None = None
        self._nameLineOpen = False  # the rest of the typed name line is due
        self._sink: FileStream | Discard | WholeFile | None = None
        #: What waits to be written to this session (this session receiving).
        self.outbound = Outbound(self)
        # (file name, weak reference to its MSRP sender, or None when it came
        # from another protocol): weak, so that a recipient that never ACKs
        # does not keep its senders' connections alive after they leave.
        self._unacked: deque[tuple[bytes, weakref.ref | None]] = deque()
        #: Files offered to this client of the peer-to-peer variant from
        #: ports of their own, until it fetches them.
        self._offers: set[FileOffer] = set()
        #: Whether chatd is fetching a file this client of the variant
        #: offered (one at a time: its client serves one while it blocks).
        self._fetching = False

    # IFileReceiver.

    @property
    def maxFileSize(self) -> int:
        """
        The largest whole file this session takes from another protocol now:
        none in the mode for people; otherwise what fits in its queue.
        """
        if self.mode == HUMAN or self._closing or self.user is None:
            return 0
        if self.mode == P2P:
            # Held until the receiver connects for it: the files offered and
            # not fetched yet count against its queue like frames waiting.
            held = sum(offer.size for offer in self._offers)
            room = self.maxQueued - self.outbound.waitingBytes - held
            return max(0, min(self.fileSizeLimit, room))
        room = self.maxQueued - self.outbound.waitingBytes
        return max(0, min(self.fileSizeLimit, room))

    # Connection.

    def connectionMade(self) -> None:
        # The outbound queue is the transport's producer before anything is
        # written, the refusal's ERROR too: the transport tells it when its
        # buffer is full.
        self.transport.registerProducer(self.outbound, True)
        SessionProtocol.connectionMade(self)

    def refuse(self, refusal: str) -> None:
        self._closeWith(REFUSALS.get(refusal, refusal))

    def admitted(self) -> None:
        if self.factory.greetAfter:
            self._greetTimer = self.clock.callLater(
                self.factory.greetAfter, self._promptForName
            )

    def _promptForName(self) -> None:
        # Nothing arrived: most likely a person at nc/telnet, waiting.
        self._greetTimer = None
        if not self._closing and self.user is None and not self._greeting:
            self._sendLine(NAME_PROMPT)

    def _stopGreeting(self) -> None:
        if self._greetTimer is not None:
            if self._greetTimer.active():
                self._greetTimer.cancel()
            self._greetTimer = None

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._stopGreeting()
        if not self._closing:
            self._shutdown(None, transportGone=True)
        self.presence.logout(self)
        # Break the cycles through the valve and through the file streams
        # this session paused its reading for, so that the connection and its
        # buffers go by reference counting alone.
        self.outbound.detach()
        self._pauseReasons.clear()
        self.factory.release(self)

    @property
    def closing(self) -> bool:
        """Whether this session is closing (or closed): nothing more is sent."""
        return self._closing

    @property
    def sink(self) -> FileStream | Discard | WholeFile | None:
        """Where the content of the file this session sends goes, if any."""
        return self._sink

    def loginTimedOut(self) -> None:
        self._closeWith(ERR_NAME_TIMEOUT, LOGIN_TIMEOUT)

    # Bytes in.

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        if self._greetTimer is not None:
            self._stopGreeting()
        try:
            if self.user is None:
                if self._loggingIn:
                    self._held += data
                else:
                    self._nameReceived(data)
            elif self.mode is None:
                self._decideMode(data)
            elif self.mode == BINARY:
                self._framesReceived(data)
            elif self.mode == P2P:
                self._variantReceived(data)
            else:
                self._linesReceived(data)
        except Exception:
            self.log.failure("msrp connection failed on its input")
            self._closeWith(ERR_INTERNAL, ERROR)

    def _nameReceived(self, data: bytes) -> None:
        variant = self.factory.variant
        if variant == P2P and not self._greeting:
            # The variant's first read is its name, 1 to 4 bytes; what
            # follows is its first request (its client truncates the name).
            # A 0x00 ends it early: its first request, joined by TCP.
            end = data.find(b"\x00", 1, p2p.MAX_NAME)
            if end == -1:
                end = p2p.MAX_NAME
            self.mode = P2P
            self._login(data[:end], data[end:])
            return
        if variant == AUTO and self._greeting and data[:1] == b"\x00":
            # A name of 1 to 3 bytes in its own read, then a request: the
            # variant (a seed name never holds 0x00, nor is it short).
            head = bytes(self._greeting)
            if len(head) < NAME_LENGTH and min(head) > 0x20:
                self._greeting = bytearray()
                self.mode = P2P
                self._login(head, data)
                return
        greeting = self._greeting
        greeting += data
        if variant == AUTO:
            # The variant's name and first request joined in one read
            # (TCP may join them): a short name then 0x00 and an opcode.
            end = greeting.find(b"\x00", 1, NAME_LENGTH)
            if (
                end != -1
                and len(greeting) > end + 1
                and p2p.OP_MESSAGE <= greeting[end + 1] <= p2p.OP_ERROR
                and min(greeting[:end]) > 0x20
            ):
                head, rest = bytes(greeting[:end]), bytes(greeting[end:])
                self._greeting = bytearray()
                self.mode = P2P
                self._login(head, rest)
                return
        head = bytes(greeting[:NAME_LENGTH])
        if b"\n" in head or b"\r" in head:
            # Someone typed a name shorter than 4 bytes and Enter.
            self.mode = HUMAN
            self._refuseName(head, ERR_NAME_LENGTH)
            return
        if len(greeting) < NAME_LENGTH:
            return
        rest = bytes(greeting[NAME_LENGTH:])
        self._greeting = bytearray()
        if rest:
            if variant == AUTO and p2p.looksLikeVariant(rest):
                self.mode = P2P
            else:
                self.mode = BINARY if rest[0] == 0 else HUMAN
            if rest[0] not in b"\x00\r\n":
                self._refuseName(head, ERR_NAME_LENGTH)
                return
        self._login(head, rest)

    def _login(self, head: bytes, rest: bytes) -> None:
        """Log in as the name C{head}; C{rest} is what came after it."""
        try:
            name = head.decode("utf-8")
        except UnicodeDecodeError:
            self._refuseName(head, ERR_NAME_RULE)
            return
        self.wireName = head
        self._held += rest
        self._loggingIn = True
        self.pauseReading("login")
        d = self.presence.login(self, name, self.peerHost)
        d.addCallbacks(self._loggedIn, self._loginRefused)
        d.addErrback(self._failed)

    def _refuseName(self, head: bytes, text: str) -> None:
        """The name itself is wrong: log and count, tell the client, close."""
        self.factory.loginRefused(self, _show(head), text)
        self._closeWith(text, LOGIN_REFUSED)

    def _failed(self, failure: Failure) -> None:
        # What dataReceived's guard does, for code run from a Deferred.
        self.log.failure("msrp connection failed", failure)
        self._closeWith(ERR_INTERNAL, ERROR)

    def _loggedIn(self, info: UserInfo) -> None:
        self._loggingIn = False
        if self._closing:
            self.presence.logout(self)
            return
        self.user = info
        self.allowance.loggedIn()
        self.log.info(
            "msrp {name} connected ({mode})",
            name=info.name,
            mode=self.mode or "binary until the next byte",
        )
        if self.mode is not None:
            self._startMode()
        held, self._held = bytes(self._held), bytearray()
        self.resumeReading("login")
        if held:
            self.dataReceived(held)
        self.closeIfHalfClosed()

    def _loginRefused(self, failure: Failure) -> None:
        self._loggingIn = False
        if self._closing:
            return
        name = self.wireName.decode("utf-8", "replace")
        if failure.check(InvalidName):
            self._closeWith(ERR_NAME_RULE, LOGIN_REFUSED)
        elif failure.check(NameInUse):
            self._closeWith(errNameInUse(name), LOGIN_REFUSED)
        elif failure.check(NameProtected):
            self._closeWith(errNameProtected(name), LOGIN_REFUSED)
        elif failure.check(ClusterUnavailable):
            self._closeWith(ERR_CLUSTER_LOGIN, LOGIN_REFUSED)
        else:
            self.log.failure("msrp login failed", failure)
            self._closeWith(ERR_INTERNAL, ERROR)

    def _decideMode(self, data: bytes) -> None:
        # Logged in after exactly 4 bytes; the next byte says who this is.
        if not data:
            return
        first = data[0]
        if self.factory.variant == AUTO and p2p.looksLikeVariant(data):
            self.mode = P2P
        elif first == 0:
            self.mode = BINARY
        elif first in b"\r\n":
            self.mode = HUMAN
        else:
            self.mode = HUMAN
            self._closeWith(ERR_NAME_LENGTH, PROTOCOL_ERROR)
            return
        self._startMode()
        self.dataReceived(data)

    def _startMode(self) -> None:
        if self.mode == BINARY:
            self._decoder = MsrpFrameDecoder()
        elif self.mode == P2P:
            # Its reads are its requests; nothing is said on login. Its
            # client reads one recv() as one message: space the writes.
            self.outbound.gap = self.factory.p2pGap
        else:
            self._lines = LineDecoder()
            self._nameLineOpen = True
            self._sendLine(humanGreeting(self.user.name))

    def _framesReceived(self, data: bytes) -> None:
        handlers = self._frameHandlers
        try:
            for frame in self._decoder.feed(data):
                handlers[frame.__class__](self, frame)
                if self._closing:
                    return
        except DecodeError as e:
            self._closeWith(str(e), PROTOCOL_ERROR)

    # Binary frames.

    def _message(self, frame: Message) -> None:
        try:
            receiver = frame.name.decode("utf-8")
        except UnicodeDecodeError:
            self._sendError(ERR_NOT_FOUND)
            return
        try:
            text = frame.text.decode("utf-8")
        except UnicodeDecodeError:
            self._sendError(ERR_NOT_UTF8)
            return
        if not text:
            self._sendError(ERR_EMPTY)
            return
        self._sendText(receiver, text)

    def _sendText(self, receiver: str, text: str) -> None:
        """
        Send C{text} to the user C{receiver} (or everyone), or say why not.
        C{receiver} is a name, or else the slot of a user whose name is not
        4 bytes (chatd.msrp.slots).
        """
        if not self.allowance.allowMessage():
            self._sendError(errRate(self.factory.limits.rate))
            return
        try:
            try:
                self.presence.sendMessage(self, receiver, text)
            except NoSuchUser:
                # Names first, so the slot lookup costs nothing on the usual
                # path; a slot is never an online user's name.
                owner = self.factory.slots.ownerOf(receiver)
                if owner is None:
                    raise
                receiver = owner
                self.presence.sendMessage(self, receiver, text)
        except NoSuchUser:
            self._sendError(ERR_NOT_FOUND)
        except RecipientReceivingFile:
            self._sendError(errReceivingFile(receiver))
        except RecipientBusy:
            self._sendError(errQueueFull(receiver))
        except ClusterUnavailable:
            self._sendError(errClusterUnavailable(receiver))

    def _fileHeader(self, frame: FileHeader) -> None:
        size = frame.size
        if size > self.fileSizeLimit:
            self.log.info(
                "msrp connection of {user} closed: a file of {size} bytes"
                " announced, more than {limit}",
                user=self.user.name,
                peer=self.peerHost,
                size=size,
                limit=self.fileSizeLimit,
                protocol=self.protocolName,
                reason=TOO_LARGE,
                event="disconnect",
            )
            self._closeWith(errFileTooLarge(size, self.fileSizeLimit), TOO_LARGE)
            return
        self._sink = DISCARD  # until the file is accepted
        if not self.allowance.allowMessage():
            self._sendError(errRate(self.factory.limits.rate))
            return
        try:
            receiver = frame.name.decode("utf-8")
        except UnicodeDecodeError:
            self._sendError(ERR_NOT_FOUND)
            return
        receiver, target = self._fileTarget(receiver)
        # An MSRP user on another node (whose session here is the cluster's
        # stand-in, or none): streamed through the cluster, with credit.
        remote = self._remoteMsrpUser(receiver)
        if remote is None and target is None:
            info = self._remoteUser(receiver)
            if info is None:
                self._sendError(ERR_NOT_FOUND)
                return
            receiver = info.name  # collected whole, as below
        try:
            filename = frame.filename.decode("utf-8")
        except UnicodeDecodeError:
            filename = ""
        if not filename:
            self._sendError(ERR_BAD_FILENAME)
            return
        if remote is not None:
            # Streamed through the cluster with credit (chatd/msrp/remote.py).
            self._sink = self.factory.remoteFiles.open(self, remote, frame, filename)
            return
        if isinstance(target, MsrpProtocol) and target.mode != P2P:
            self._streamTo(target, receiver, frame, filename)
            return
        limit = self.presence.fileLimit(receiver) or 0
        if limit == 0:
            self._sendError(errNoFiles(receiver))
        elif size > limit:
            self._sendError(errFileTooLargeFor(receiver, size, limit))
        else:
            self._sink = WholeFile(self, receiver, filename)
            watch(self._sink, self.clock, self.factory)

    def _streamTo(
        self, target: MsrpProtocol, receiver: str, frame: FileHeader, filename: str
    ) -> None:
        if target.mode == HUMAN:
            self._sendError(errNoFiles(receiver))
            return
        header = encodeFileHeader(
            self.wireName, frame.filename, frame.size, frame.port, frame.ip
        )
        if target.outbound.largeStream is not None:
            self.factory.metrics.refused(MSRP, BUSY)
            self._sendError(errReceivingFile(receiver))
            return
        if not target.outbound.hasRoom(len(header)):
            self.factory.metrics.refused(MSRP, BUSY)
            self._sendError(errQueueFull(receiver))
            return
        stream = FileStream(self, target, header, frame.filename, frame.size)
        self._sink = stream
        if frame.size > FILL_MAX:
            target.outbound.largeStream = stream
        self.log.info(
            "msrp file {filename!r} ({size} bytes) from {sender} to {receiver}",
            filename=filename,
            size=frame.size,
            sender=self.user.name,
            receiver=receiver,
        )
        target.outbound.enqueueStream(stream)
        self.updateFlow(stream)

    def _fileChunk(self, frame: FileChunk) -> None:
        self._sink.write(frame.data)

    def _fileEnd(self, frame: FileEnd) -> None:
        sink, self._sink = self._sink, None
        sink.finish()

    def wholeFileReceived(self, whole: WholeFile) -> None:
        """The content of C{whole} is all here: hand it to its receiver."""
        self._handOver(whole.receiver, whole.filename, bytes(whole.content))

    def _handOver(self, receiver: str, filename: str, content: bytes) -> None:
        """Hand a whole file to a user of another protocol or variant."""
        try:
            taken = self.presence.sendFile(self, receiver, filename, content)
        except (NoSuchUser, FilesNotAccepted, RecipientBusy, ClusterUnavailable):
            self._sendError(errNotDelivered(receiver, filename))
            return
        if taken is not None:
            # The receiver is not reading, or must fetch the file: it waits,
            # and may be dropped (--file-idle-timeout); then this sender is
            # told.
            notice = errNotDelivered(receiver, filename)
            # This sender may have left meanwhile: then nobody is told.
            taken.addCallback(lambda ok: ok or self._closing or self._sendError(notice))
            taken.addErrback(self._failed)

    def _listRequest(self, frame: ListRequest | None) -> None:
        # Binary clients see each user's slot, by which they write to them.
        slots = self.factory.slots
        entries = [slots.listEntry(info.name) for info in self.presence.users()]
        if self.mode == P2P:
            self.outbound.send(p2p.encodeList(entries))
            return
        text = clientListText(entries)
        self.outbound.send(encodeClientList(wireText(text)))

    def _listText(self) -> str:
        return clientListText([info.name for info in self.presence.users()])

    def _ack(self, frame: Ack) -> None:
        filename = frame.filename
        for index, (name, senderRef) in enumerate(self._unacked):
            if name == filename:
                del self._unacked[index]
                break
        else:
            self._sendError(errNoSuchAck(_show(filename)))
            return
        if senderRef is None:
            return  # a whole file from another protocol: nobody to tell
        sender = senderRef()
        if sender is None or not sender.forwardAck(filename):
            self._sendError(errAckSenderGone(_show(filename)))

    def forwardAck(self, filename: bytes) -> bool:
        """
        A recipient acknowledged a file this session sent: forward its ACK;
        whether this session could take it.
        """
        if self.closing or self.presence.infoFor(self) is None:
            return False
        self.outbound.send(encodeAck(filename))
        return True

    def _clientError(self, frame: Error) -> None:
        if self.allowance.mayLogError():
            self.log.info(
                "msrp {name} sent an error: {text}",
                name=self.user.name,
                text=_show(frame.text),
            )

    # Typed lines.

    def _linesReceived(self, data: bytes) -> None:
        for line in self._lines.feed(data):
            if line is LINE_TOO_LONG:
                if self._nameLineOpen:
                    self._closeWith(ERR_NAME_LENGTH, PROTOCOL_ERROR)
                    return
                self._sendError(ERR_LINE_TOO_LONG)
                continue
            if self._nameLineOpen:
                # The rest of the line the name was typed on.
                self._nameLineOpen = False
                if line:
                    self._closeWith(ERR_NAME_LENGTH, PROTOCOL_ERROR)
                    return
                continue
            self._command(line.decode("utf-8", "replace").strip())
            if self._closing:
                return

    def _command(self, line: str) -> None:
        if not line:
            return
        word = line.casefold()
        if word == CMD_LIST:
            self._sendLine(self._listText().rstrip("\n"))
            return
        if word in CMD_HELP:
            self._sendLine("\n".join(HUMAN_HELP))
            return
        if word == CMD_QUIT:
            self._sendLine(HUMAN_BYE)
            self._shutdown(None)
            return
        parts = line.split(None, 1)
        if len(parts) < 2:
            self._sendError(ERR_USAGE)
            return
        receiver, text = parts
        self._sendText(BROADCAST if isBroadcast(receiver) else receiver, text)

    # The peer-to-peer variant (chatd.msrp.p2p).

    def _variantReceived(self, data: bytes) -> None:
        for opcode, payload in p2p.splitRead(data):
            if opcode == p2p.OP_MESSAGE:
                self._variantMessage(payload)
            elif opcode == p2p.OP_FILE:
                self._variantOffer(payload)
            elif opcode == p2p.OP_LIST:
                self._listRequest(None)
            elif opcode in (p2p.OP_ACK, p2p.OP_ERROR):
                # Never sent by the variant's client; its server only logs them.
                if self.allowance.mayLogError():
                    self.log.info(
                        "msrp {name} sent opcode {opcode}: {text}",
                        name=self.user.name,
                        opcode=opcode,
                        text=_show(payload),
                    )
            else:
                # An un-opcoded line (its client's "No se encontró el
                # archivo.") or an unknown opcode: said, and the session goes
                # on, as with the variant's own server.
                self._sendError(ERR_OPCODE)
            if self._closing:
                return

    def _variantTarget(self, word: str) -> str:
        """
        The receiver a variant's request names: an online user by the whole
        word, else by its first 4 characters (the variant's server reads
        C{%4s}), a name or a slot (_sendText and _fileTarget try slots).
        """
        if isBroadcast(word):
            return BROADCAST
        if self.presence.lookup(word) is not None:
            return word
        return word[: p2p.MAX_NAME]

    def _variantMessage(self, payload: bytes) -> None:
        try:
            word, text = p2p.parseMessage(payload)
        except UnicodeDecodeError:
            self._sendError(ERR_NOT_UTF8)
            return
        if not word:
            self._sendError(ERR_NOT_FOUND)
        elif not text:
            self._sendError(ERR_EMPTY)
        else:
            self._sendText(self._variantTarget(word), text)

    def _variantOffer(self, payload: bytes) -> None:
        offer = p2p.parseOffer(payload)
        if offer is None:
            self._sendError(ERR_FORMAT)
            return
        if not self.allowance.allowMessage():
            self._sendError(errRate(self.factory.limits.rate))
            return
        receiver, target = self._fileTarget(self._variantTarget(offer.target))
        if target is None and receiver != BROADCAST:
            # A user of another node: fetched here, handed over whole
            # through the cluster (up to its whole-file limit).
            info = self._remoteUser(receiver)
            if info is not None:
                if offer.size > self.fileSizeLimit:
                    self._sendError(errFileTooLarge(offer.size, self.fileSizeLimit))
                    return
                self._fetchOffer(info.name, offer)
                return
        if target is None or receiver == BROADCAST:
            self._sendError(ERR_NOT_FOUND)
            return
        if offer.size > self.fileSizeLimit:
            self._sendError(errFileTooLarge(offer.size, self.fileSizeLimit))
            return
        if not (isinstance(target, MsrpProtocol) and target.mode == P2P):
            self._fetchOffer(receiver, offer)
            return
        # The receiver connects to the address in the header: the sender's
        # address as chatd sees it, never one the header names, so no
        # client can send another to a third host.
        forwarded = p2p.OfferHeader(
            receiver, offer.filename, offer.size, offer.port, self.peerHost
        )
        if not target.deliverOffer(p2p.encodeOffer(forwarded)):
            self._sendError(errQueueFull(receiver))
            return
        self.log.info(
            "msrp file offer {filename!r} ({size} bytes) from {sender} to {receiver}",
            filename=offer.filename,
            size=offer.size,
            sender=self.user.name,
            receiver=receiver,
        )

    def _fetchOffer(self, receiver: str, offer: p2p.OfferHeader) -> None:
        """
        A file from this client of the variant to someone who cannot fetch
        it: chatd fetches it from the offered port, at this client's own
        address, and hands it over whole.
        """
        limit = self.presence.fileLimit(receiver) or 0
        if limit == 0:
            self._sendError(errNoFiles(receiver))
            return
        if offer.size > limit:
            self._sendError(errFileTooLargeFor(receiver, offer.size, limit))
            return
        if self._fetching:
            # What chatd holds for one sender stays one file.
            self._sendError(errFetching(offer.filename))
            return
        self._fetching = True
        self.log.info(
            "msrp fetching file {filename!r} ({size} bytes) from {sender}"
            " at {host}:{port} for {receiver}",
            filename=offer.filename,
            size=offer.size,
            sender=self.user.name,
            host=self.peerHost,
            port=offer.port,
            receiver=receiver,
        )
        d = fetchOffer(
            self.factory.clock,
            self.clock,
            self.peerHost,
            offer.port,
            offer.size,
            self.factory.limits.fileIdleTimeout,
        )

        def fetched(content: bytes) -> None:
            self._fetching = False
            if not self._closing:
                self._handOver(receiver, offer.filename, content)

        def notFetched(failure: Failure) -> None:
            self._fetching = False
            self.log.info(
                "msrp file {filename!r} from {sender} not fetched: {why}",
                filename=offer.filename,
                sender=self.user.name if self.user else "?",
                why=failure.getErrorMessage(),
            )
            if not self._closing:
                self._sendError(errNotDelivered(receiver, offer.filename))

        d.addCallbacks(fetched, notFetched)
        d.addErrback(self._failed)

    def deliverOffer(self, offer: bytes) -> bool:
        """
        Put a variant's file offer on this session's wire, in its own write;
        whether there was room for it.
        """
        if not self.outbound.hasRoom(len(offer)):
            return False
        self.outbound.send(offer)
        return True

    def _remoteUser(self, receiver: str) -> UserInfo | None:
        """The online user C{receiver} (name or slot) without a session here."""
        info = self.presence.lookup(receiver)
        if info is None:
            owner = self.factory.slots.ownerOf(receiver)
            if owner is not None:
                info = self.presence.lookup(owner)
        return info

    def _remoteMsrpUser(self, receiver: str) -> str | None:
        """The name of an MSRP user on another node a file streams to, if any."""
        remote = self.factory.remoteFiles
        if remote is None:
            return None
        found = remote.remoteMsrpUser(receiver)
        if found is None:
            owner = self.factory.slots.ownerOf(receiver)
            if owner is not None:
                found = remote.remoteMsrpUser(owner)
        return found

    def _fileTarget(self, receiver: str):
        """C{(receiver, session)} for a file's receiver, name or slot."""
        target = self.presence.sessionFor(receiver)
        if target is None:
            owner = self.factory.slots.ownerOf(receiver)
            if owner is not None:
                receiver, target = owner, self.presence.sessionFor(owner)
        return receiver, target

    # Bytes out.

    def _render(self, message: ChatMessage) -> bytes:
        """C{message} as this session's wire shows it."""
        if self.mode == P2P:
            return p2p.encodeChat(message.sender, message.text)
        if self.mode == HUMAN:
            text = message.text.replace("\r\n", "\n").replace("\r", "\n")
            text = text.replace("\n", "\n  ")
            if isBroadcast(message.receiver):
                return f"[{message.sender} -> all]: {text}\n".encode("utf-8", "replace")
            return f"[{message.sender}]: {text}\n".encode("utf-8", "replace")
        slot = self.factory.slots.slotFor(message.sender)
        text = message.text
        if slot != message.sender.encode("utf-8"):
            text = f"{message.sender}: {text}"
        return encodeMessage(slot, wireText(text))

    def _sendError(self, text: str) -> None:
        if self.mode == P2P:
            self.outbound.send(p2p.encodeErrorLine(text))
        elif self.mode == HUMAN:
            self._sendLine(f"ERROR: {text}")
        else:
            self.outbound.send(encodeError(wireText(text)))

    def _sendLine(self, line: str) -> None:
        self.outbound.send(line.encode("utf-8", "replace") + b"\n")

    # What the outbound queue and the file relay ask of this session.

    def streamStarted(self, stream: FileStream) -> None:
        """C{stream} to this session went live with content still to come."""
        watch(stream, self.clock, self.factory)
        stream.sender.updateFlow(stream)

    def streamRelayed(self, stream: FileStream) -> None:
        """C{stream}'s content was all written to this session."""
        self._remember(stream.filename, stream.sender)
        self.factory.metrics.fileRelayed(MSRP, MSRP)
        self.log.info(
            "msrp file {filename!r} relayed from {sender} to {receiver}",
            filename=_show(stream.filename),
            sender=stream.sender.user.name if stream.sender.user else "?",
            receiver=self.user.name if self.user else "?",
        )

    def streamEnded(self, stream: FileStream) -> None:
        """The last byte of the live C{stream} to this session arrived."""
        self.outbound.streamEnded(stream)
        self.closeIfHalfClosed()

    def cutOff(self) -> None:
        """
        A file to this session cannot be completed in band: disconnect it (a
        connection closed before the file's size says it is incomplete).
        """
        self.factory.disconnecting(self, FILE_CUT)
        self._shutdown(None, abort=True)

    def _remember(self, filename: bytes, sender: MsrpProtocol | None) -> None:
        """Remember a file received whole, for ACK matching."""
        if sender is None:
            ref = None
        elif isinstance(sender, MsrpProtocol):
            ref = weakref.ref(sender)
        else:
            # A sender on another node (chatd/msrp/remote.py): a small
            # stand-in that holds no connection, kept as it is.
            ref = lambda stand_in=sender: stand_in  # noqa: E731
        self._unacked.append((filename, ref))
        if len(self._unacked) > MAX_UNACKED:
            self._unacked.popleft()

    # Flow control of this session's input.

    def pauseReading(self, reason: object) -> None:
        """Stop reading from the client until every reason is resumed."""
        if not self._pauseReasons and not self._closing:
            self.transport.pauseProducing()
        self._pauseReasons.add(reason)

    def resumeReading(self, reason: object) -> None:
        """C{reason} to stop reading is gone."""
        if reason in self._pauseReasons:
            self._pauseReasons.discard(reason)
            if not self._pauseReasons and not self._closing:
                self.transport.resumeProducing()

    def updateFlow(self, stream: FileStream) -> None:
        """Read the content of C{stream} only while its recipient can take it."""
        if stream.done or self._sink is not stream:
            self.resumeReading(stream)
        elif stream.live and not stream.recipient.outbound.transportFull:
            self.resumeReading(stream)
        else:
            self.pauseReading(stream)

    # What the file relay tells the sender.

    def fileAbandoned(self, transfer: FileStream | WholeFile, text: str) -> None:
        """
        C{transfer}, from this session, made no progress: if its content is
        still being read, the rest is dropped, and this client is told C{text}.
        """
        if self._sink is transfer:
            self._sink = DISCARD  # the rest of its content is read and dropped
            self.resumeReading(transfer)
            self._sendError(text)

    def fileRefused(self, transfer, text: str) -> None:
        """
        C{transfer} (from this session to another node; C{None} once its
        content was all sent) was refused or not delivered there: the rest
        of its content is read and dropped, and this client is told C{text}.
        """
        if transfer is not None and self._sink is transfer:
            self._sink = DISCARD
        self.resumeReading(transfer)
        if not self._closing:
            self._sendError(text)

    def recipientGone(self, stream: FileStream) -> None:
        """The recipient of C{stream} (from this session) closed its connection."""
        self.resumeReading(stream)
        if self._sink is stream:
            self._sink = DISCARD
        if self._closing:
            return
        name = stream.recipient.user.name if stream.recipient.user else "?"
        self._sendError(errRecipientGone(name, _show(stream.filename)))

    # IHalfCloseableProtocol.

    def readConnectionLost(self) -> None:
        """
        The client sent its last byte: answer what it sent, then close once
        nothing is on its way to it (a login, a file).
        """
        self._readLost = True
        if self._closing:
            return
        if self.user is None and not self._loggingIn:
            if self._greeting:
                # A name that can never be 4 bytes long now.
                self.mode = self.mode or BINARY
                self._refuseName(bytes(self._greeting), ERR_NAME_LENGTH)
            else:
                self._shutdown(None)
            return
        if self.mode == HUMAN and self._lines is not None:
            # The last line needs no Enter: nothing else can follow it.
            self._linesReceived(b"\n")
        decoder = self._decoder
        if decoder is not None and (decoder.buffered() or decoder.inContent):
            # A frame (or a file's content) that can never be whole.
            self._sendError(ERR_CUT_SHORT)
        self.closeIfHalfClosed()

    def writeConnectionLost(self) -> None:
        self.transport.loseConnection()

    def closeIfHalfClosed(self) -> None:
        """Close once the client sent its last byte and nothing is under way."""
        if not self._readLost or self._closing or self._loggingIn:
            return
        if self.outbound.fileUnderWay():
            # A file to this client is under way; its end calls again. Its
            # sender may stall: the close grace bounds the wait, as for any
            # close (then the connection is aborted and the file cut).
            self.allowance.closing(self.transport)
            return
        self._shutdown(None)

    # Closing.

    def _closeWith(self, text: str, reason: str | None = None) -> None:
        """
        Tell the client C{text}, if the wire allows, and close; C{reason} is
        why, as chatd_disconnects_total counts it.
        """
        if reason is not None:
            self.factory.disconnecting(self, reason)
        self._stopGreeting()
        self._shutdown(text)

    def _shutdown(
        self, text: str | None, abort: bool = False, transportGone: bool = False
    ) -> None:
        if self._closing:
            return
        self._closing = True
        self.presence.logout(self)
        for offer in list(self._offers):
            offer.withdraw()
        # As a sender: a file under way can go no further.
        sink, self._sink = self._sink, None
        if sink is not None:
            sink.cut()
        # As a recipient: whatever waits is dropped; senders of files learn
        # that their file was not delivered.
        live, waiting = self.outbound.clear()
        if live is not None:
            stopWatching(live)
        for item in ([live] if live is not None else []) + waiting:
            # A cut file's sender was told already (or is gone).
            if item.__class__ is FileStream and item.cutText is None:
                item.sender.recipientGone(item)
        if transportGone:
            return
        if live is None:
            # Close after what waited (bounded by maxQueued), then the reason.
            for item in waiting:
                if item.__class__ is bytes:
                    self.transport.write(item)
        if text is not None and live is None:
            if self.mode == P2P:
                self.transport.write(p2p.encodeErrorLine(text))
            elif self.mode == HUMAN:
                self.transport.write(f"ERROR: {text}\n".encode("utf-8"))
            else:
                self.transport.write(encodeError(wireText(text)))
        self.transport.unregisterProducer()
        if abort or live is not None:
            self.transport.abortConnection()
        else:
            self.transport.loseConnection()
            self.allowance.closing(self.transport)

    # IChatSession.

    def deliverMessage(self, message: ChatMessage) -> None:
        if self.outbound.largeStream is not None:
            raise RecipientReceivingFile(
                f"{message.receiver} is receiving a large file; try again later"
            )
        frame = self._render(message)
        if not self.outbound.hasRoom(len(frame)):
            raise RecipientBusy(
                f"{message.receiver} is not reading: too much waits for them"
            )
        self.outbound.send(frame)

    def disconnect(self, reason: str) -> None:
        self._closeWith(reason)

    # IFileReceiver.

    def deliverFile(self, sender: str, filename: str, content: bytes):
        if self.mode == P2P and not self._closing:
            return self._offerFile(sender, filename, content)
        if self.mode == HUMAN or self._closing:
            self.log.warn(
                "msrp {name}: a file from {sender} cannot be shown, dropped",
                name=self.user.name if self.user else "?",
                sender=sender,
            )
            return
        if self.outbound.largeStream is not None:
            raise RecipientReceivingFile(
                f"{self.user.name} is receiving a large file; try again later"
            )
        name = wireText(filename, maximum=255)
        self.outbound.send(encodeFileHeader(self.factory.slots.slotFor(sender), name, len(content)))
        if content:
            self.outbound.send(content)
        self._remember(name, None)

    def _offerFile(self, sender: str, filename: str, content: bytes):
        """
        A whole file for this client of the variant: offered from a port of
        its own, on the address this client reached chatd at, for this
        client's address only. Fires with whether it was fetched.
        """
        offer = FileOffer(
            content, self.peerHost, self.clock, self.factory.limits.fileIdleTimeout
        )
        interface = self.transport.getHost().host
        port = offer.listen(self.factory.clock, interface)
        if interface.startswith("::ffff:") and "." in interface:
            interface = interface[len("::ffff:") :]  # what an IPv4 client reaches
        self._offers.add(offer)
        offer.done.addBoth(lambda written: self._offers.discard(offer) or written)
        # The client stores recibidos/<file>: a bare name, one word.
        name = "".join("_" if c.isspace() or c in "/\\" else c for c in filename)
        header = p2p.OfferHeader(self.user.name, name, len(content), port, interface)
        self.outbound.send(p2p.encodeOffer(header))
        self.log.info(
            "msrp file {filename!r} from {sender} offered to {receiver} on port {port}",
            filename=filename,
            sender=sender,
            receiver=self.user.name,
            port=port,
        )
        return offer.done

    # frame type -> handler, shared by every connection (an idle session
    # should cost little memory).
    _frameHandlers = {
        Message: _message,
        FileHeader: _fileHeader,
        FileChunk: _fileChunk,
        FileEnd: _fileEnd,
        ListRequest: _listRequest,
        Ack: _ack,
        Error: _clientError,
    }


class MsrpFactory(SessionFactory):
    """
    Builds L{MsrpProtocol}s that share one presence service.

    @param maxFileSize: the largest file a client may announce, in bytes; a
        larger announcement gets an ERROR and the connection is closed.
    @param maxQueued: the most bytes that may wait for one session (behind a
        file being streamed to it, or while its transport's buffer is full)
        before messages from other users to it are refused.
    @param limits: the server's L{Limits} (C{loginTimeout} is the time a new
        connection has to send its name).
    @param limiter: the L{ConnectionLimiter} shared by every listener.
    @param greetAfter: seconds of silence after which a new connection gets
        L{NAME_PROMPT}; 0 for never (C{--msrp-greeting}).
    @param variant: C{--msrp-variant}: L{AUTO} detects the peer-to-peer
        variant per connection, L{SEED} never takes a connection for it,
        L{P2P} takes every connection for it.
    @param p2pGap: seconds between two writes to a client of the variant
        (C{--msrp-p2p-gap}; 0 for none).
    """

    #: What clients are told when the server stops (an ERROR frame, or a
    #: line in the mode for people); a recipient in the middle of a file
    #: cannot be told in-band and is cut off instead.
    shutdownReason = ERR_SHUTDOWN

    #: Set when the server stops: a file whose sender is closed then is not
    #: completed for its recipient, who is being closed too.
    stopping = False

    def __init__(
        self,
        presence: IPresenceService,
        clock: IReactorTime,
        maxFileSize: int = DEFAULT_MAX_FILE,
        maxQueued: int = DEFAULT_MAX_QUEUED,
        limits: Limits | None = None,
        limiter: ConnectionLimiter | None = None,
        metrics: ChatdMetrics | None = None,
        greetAfter: float = 0,
        variant: str = AUTO,
        p2pGap: float = DEFAULT_P2P_GAP,
    ) -> None:
        SessionFactory.__init__(self, clock, limits, limiter, metrics)
        #: C{--msrp-variant}: AUTO, SEED or P2P.
        self.variant = variant
        #: C{--msrp-p2p-gap}: seconds between writes to a client of the variant.
        self.p2pGap = p2pGap
        self.presence = presence
        self.maxFileSize = maxFileSize
        self.maxQueued = maxQueued
        #: The 4-byte slots of users whose names are not 4 bytes, shared by
        #: every connection.
        self.slots = SlotDirectory(presence)
        #: Files to and from MSRP users of other nodes, on a cluster.
        self.remoteFiles = RemoteFiles.forPresence(self, presence)
        self.greetAfter = greetAfter

    def shutDown(self):
        self.stopping = True
        return SessionFactory.shutDown(self)

    def filesInFlight(self) -> int:
        """
        Files whose transfer has started (their header was accepted) and not
        ended: read by chatd_files_in_flight at scrape time.
        """
        streams: set[int] = set()
        whole = 0
        for connection in self.connections:
            sink = connection.sink
            if sink.__class__ is FileStream:
                streams.add(id(sink))
            elif sink.__class__ is WholeFile:
                whole += 1
            for stream in connection.outbound.streams():
                streams.add(id(stream))
        return len(streams) + whole

    def buildProtocol(self, addr) -> MsrpProtocol:
        protocol = MsrpProtocol(
            self.presence,
            self.clock,
            maxFileSize=self.maxFileSize,
            maxQueued=self.maxQueued,
        )
        protocol.factory = self
        return protocol
