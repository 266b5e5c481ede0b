"""
MSRP (seed 004): one connection's behaviour.

Frames are decoded by L{chatd.msrp.codec}; docs/msrp.md is the normative
description. The shape of a connection:

  - The first 4 bytes are the user's name. The byte after them says who is on
    the other end: C{0x00} (the first byte of every binary frame) means a
    binary client; anything else means a person typing lines on nc/telnet
    (see L{MsrpProtocol} for the exact rule).
  - Output to a session goes through its outbound queue: frames are written
    straight to the transport while nothing waits, and wait in order while a
    file streams to the session (nothing may be interleaved inside file
    content) or while the transport's buffer is full. Messages from other
    users are refused once the waiting bytes would pass C{maxQueued}.
  - A file between two MSRP users is streamed: each read's bytes go straight
    to the recipient's transport, and the sender's transport is paused while
    the recipient's transport is full or the file waits its turn. Memory use
    is bounded whatever the file size.
"""

from __future__ import annotations

import weakref
from collections import deque

from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
    IPushProducer,
    IReactorTime,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from chatd.limits import (
    DEFAULT_LOGIN_TIMEOUT,
    TOO_MANY_CONNECTIONS,
    TOO_MANY_FROM_ADDRESS,
    ConnectionLimiter,
    Limits,
)
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
    MAX_LINE,
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
from chatd.msrp.slots import SlotDirectory

MSRP = "msrp"

#: Default largest file a client may announce: 4 GiB.
DEFAULT_MAX_FILE = 4 * 1024**3

#: Default largest number of bytes waiting for one session: 1 MiB.
DEFAULT_MAX_QUEUED = 1024**2

#: Default seconds a new connection has to send its name (C{--login-timeout}).
DEFAULT_NAME_TIMEOUT = DEFAULT_LOGIN_TIMEOUT

#: How many received, not yet acknowledged files a session remembers for ACK
#: matching; the oldest are forgotten first.
MAX_UNACKED = 256

#: The most content of a file cut short that chatd completes with zero bytes
#: (1 MiB). A file that may need more (more than this of it is still to
#: arrive) is relayed with nothing queued behind it but its recipient's own
#: answers: others' messages and files are refused meanwhile, and if it is
#: cut with more than this missing its recipient is disconnected instead. So
#: one byte of an attacker's never costs its victim more than this.
FILL_MAX = 1024**2

BINARY = "binary"
HUMAN = "human"

# The error texts (Spanish, as the seed's users read). docs/msrp.md lists
# them all.
ERR_NOT_FOUND = "Cliente objetivo no encontrado."
ERR_OPCODE = "Código de operación incorrecto."
ERR_FORMAT = "Error en el formato del mensaje."
ERR_FILE = "Error al recibir el archivo."
ERR_NAME_LENGTH = (
    f"Nombre inválido: debe tener exactamente {NAME_LENGTH} bytes."
)
ERR_NAME_RULE = (
    "Nombre inválido: solo caracteres imprimibles UTF-8, sin espacios,"
    " '|', '&' ni '\\', y no puede ser 'all'."
)
ERR_NAME_TIMEOUT = "No se recibió el nombre a tiempo."
ERR_TOO_MANY_CONNECTIONS = "El servidor tiene demasiadas conexiones; inténtalo más tarde."
ERR_TOO_MANY_FROM_ADDRESS = "Demasiadas conexiones desde tu dirección."
ERR_INTERNAL = "Error interno del servidor."
ERR_SHUTDOWN = "El servidor se está apagando."
ERR_NOT_UTF8 = f"{ERR_FORMAT} El texto no es UTF-8 válido."
ERR_EMPTY = f"{ERR_FORMAT} El texto está vacío."
ERR_BAD_FILENAME = (
    f"{ERR_FORMAT} El nombre de archivo está vacío o no es UTF-8 válido."
)
ERR_CUT_SHORT = f"{ERR_FORMAT} La conexión terminó a mitad de una trama."
ERR_USAGE = "Escribe: <nombre> <texto>, all <texto>, clientes o salir."
ERR_LINE_TOO_LONG = f"Línea demasiado larga (máximo {MAX_LINE} bytes)."

HUMAN_BYE = "Adiós."

#: Seconds of silence after which a new connection is taken for a person at
#: nc/telnet and told what to type (C{--msrp-greeting}; 0: never). Binary
#: clients send their name as soon as they connect, so they never see it.
DEFAULT_GREET_AFTER = 2.0

#: What a person who connected and waits is told (a line of text, as in the
#: mode for people; the name is still read by the detection rule).
NAME_PROMPT = (
    f"Hola. Escribe tu nombre, de exactamente {NAME_LENGTH} bytes (por"
    " ejemplo ana1), y pulsa Enter. Después, help muestra la ayuda."
)

#: Words of the mode for people that ask for help.
CMD_HELP = ("help", "ayuda")

#: The answer to C{help} in the mode for people.
HUMAN_HELP = (
    "Escribe una orden por línea:",
    "  <nombre> <texto>  un mensaje a <nombre>, de cualquier protocolo",
    "  all <texto>       un mensaje a todos",
    "  clientes          quién está conectado",
    "  help              esta ayuda",
    "  salir             desconectarse",
)

# The typed commands of the mode for people (compared without case).
CMD_LIST = "clientes"
CMD_QUIT = "salir"


def errNameInUse(name: str) -> str:
    return f"El nombre {name} ya está en uso."


def errNameProtected(name: str) -> str:
    return f"El nombre {name} pertenece a una cuenta registrada; elige otro."


#: The connection limits' refusals, in Spanish.
_REFUSALS = {
    TOO_MANY_CONNECTIONS: ERR_TOO_MANY_CONNECTIONS,
    TOO_MANY_FROM_ADDRESS: ERR_TOO_MANY_FROM_ADDRESS,
}


def errRate(rate: float) -> str:
    return f"Demasiados mensajes: como máximo {rate:g} por segundo. No se entregó."


def errQueueFull(name: str) -> str:
    return f"No se pudo entregar a {name}: su cola de salida está llena."


def errReceivingFile(name: str) -> str:
    return f"No se pudo entregar a {name}: está recibiendo un archivo grande."


def errFileTooLarge(size: int, maximum: int) -> str:
    return f"Archivo demasiado grande: {size} bytes (máximo {maximum})."


def errNoFiles(name: str) -> str:
    return f"{name} no puede recibir archivos."


def errFileTooLargeFor(name: str, size: int, limit: int) -> str:
    return (
        f"Archivo demasiado grande para {name}: {size} bytes"
        f" (máximo {limit})."
    )


def errRecipientGone(name: str, filename: str) -> str:
    return f"{ERR_FILE} {name} se desconectó; {filename} no se entregó."


def errNotDelivered(name: str, filename: str) -> str:
    return f"{ERR_FILE} {filename} no se pudo entregar a {name}."


def errNoSuchAck(filename: str) -> str:
    return f"Ningún archivo {filename} espera confirmación."


def errAckSenderGone(filename: str) -> str:
    return f"El remitente de {filename} ya no está conectado."


def errFileStalled(filename: str, seconds: float) -> str:
    return f"{ERR_FILE} {filename} no avanzó en {seconds:g} s; no se entregó."


def humanGreeting(name: str) -> str:
    return f"Hola, {name}. {ERR_USAGE}"


#: What completes the content of a file cut short (see L{_FileStream}),
#: written a piece at a time as the recipient's transport takes it.
_PADDING = bytes(65536)


class RecipientReceivingFile(RecipientBusy):
    """
    The receiver is an MSRP session to which a file streams with more than
    L{FILL_MAX} of it still to arrive: nothing from others may wait behind
    it, since such a file cut short ends the session (docs/msrp.md).
    """


def _show(data: bytes) -> str:
    """Bytes from the wire, for an error text or a log line."""
    return data.decode("utf-8", "replace")


@implementer(IPushProducer)
class _OutboundValve:
    """
    Registered on a session's own transport as its streaming producer, so the
    transport tells the session when its write buffer is full
    (C{pauseProducing}) and when it has drained (C{resumeProducing}).
    """

    def __init__(self, session: MsrpProtocol) -> None:
        self.session = session

    def pauseProducing(self) -> None:
        self.session._transportPaused()

    def resumeProducing(self) -> None:
        self.session._transportResumed()

    def stopProducing(self) -> None:
        pass  # connectionLost does the cleaning up


class _FileStream:
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
    L{MsrpProtocol._largeStream}).
    """

    __slots__ = (
        "sender",
        "recipient",
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
            self.recipient._waitingBytes += len(data)
        if (
            self.recipient._largeStream is self
            and self.size - self.sent - self.heldBytes <= FILL_MAX
        ):
            # A cut could be completed now: others' frames may wait again.
            self.recipient._largeStream = None

    def finish(self) -> None:
        self.done = True
        self.sender._streamSent(self)
        if self.live:
            self.recipient._liveStreamEnded(self)

    def cut(self) -> None:
        """The sender is gone before the end of the content."""
        self.recipient._streamCut(self)


class _Discard:
    """Reads the announced content of a refused file and drops it."""

    __slots__ = ()

    def write(self, data: bytes) -> None:
        pass

    def finish(self) -> None:
        pass

    def cut(self) -> None:
        pass


_DISCARD = _Discard()


class _WholeFile:
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
        _stopWatching(self)
        self.sender._wholeFileReceived(self)

    def cut(self) -> None:
        _stopWatching(self)
        self.content = bytearray()


def _stopWatching(transfer: _FileStream | _WholeFile) -> None:
    """Cancel the idle timer of C{transfer}, if it has one."""
    idle, transfer.idle = transfer.idle, None
    if idle is not None and idle.active():
        idle.cancel()


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
        self._sink: _FileStream | _Discard | _WholeFile | None = None
        # Outbound (this session receiving).
        self._valve = _OutboundValve(self)
        self._transportFull = False
        self._live: _FileStream | None = None
        self._waiting: deque[bytes | _FileStream] = deque()
        self._waitingBytes = 0
        # The file for this session, live or waiting, with more than FILL_MAX
        # still to arrive (at most one: while there is one, others' messages
        # and files are refused, so nothing of theirs waits behind it).
        self._largeStream: _FileStream | None = None
        # (file name, weak reference to its MSRP sender, or None when it came
        # from another protocol): weak, so that a recipient that never ACKs
        # does not keep its senders' connections alive after they leave.
        self._unacked: deque[tuple[bytes, weakref.ref | None]] = deque()

    # IFileReceiver.

    @property
    def maxFileSize(self) -> int:
        """
        The largest whole file this session takes from another protocol now:
        none in the mode for people; otherwise what fits in its queue.
        """
        if self.mode == HUMAN or self._closing or self.user is None:
            return 0
        room = self.maxQueued - self._waitingBytes
        return max(0, min(self.fileSizeLimit, room))

    # Connection.

    def connectionMade(self) -> None:
        # The valve is the transport's producer before anything is written,
        # the refusal's ERROR too: the transport tells the session when its
        # buffer is full.
        self.transport.registerProducer(self._valve, True)
        SessionProtocol.connectionMade(self)

    def refuse(self, refusal: str) -> None:
        self._closeWith(_REFUSALS.get(refusal, refusal))

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
        self._valve.session = None
        self._pauseReasons.clear()
        self.factory.release(self)

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
            else:
                self._linesReceived(data)
        except Exception:
            self.log.failure("msrp connection failed on its input")
            self._closeWith(ERR_INTERNAL, ERROR)

    def _nameReceived(self, data: bytes) -> None:
        greeting = self._greeting
        greeting += data
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
            self.mode = BINARY if rest[0] == 0 else HUMAN
            if rest[0] not in b"\x00\r\n":
                self._refuseName(head, ERR_NAME_LENGTH)
                return
        try:
            name = head.decode("utf-8")
        except UnicodeDecodeError:
            self._refuseName(head, ERR_NAME_RULE)
            return
        self.wireName = head
        self._held += rest
        self._loggingIn = True
        self._pauseReading("login")
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
        self._resumeReading("login")
        if held:
            self.dataReceived(held)
        self._closeIfHalfClosed()

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
        else:
            self.log.failure("msrp login failed", failure)
            self._closeWith(ERR_INTERNAL, ERROR)

    def _decideMode(self, data: bytes) -> None:
        # Logged in after exactly 4 bytes; the next byte says who this is.
        if not data:
            return
        first = data[0]
        if first == 0:
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
        self._sink = _DISCARD  # until the file is accepted
        if not self.allowance.allowMessage():
            self._sendError(errRate(self.factory.limits.rate))
            return
        try:
            receiver = frame.name.decode("utf-8")
        except UnicodeDecodeError:
            self._sendError(ERR_NOT_FOUND)
            return
        target = self.presence.sessionFor(receiver)
        if target is None:
            owner = self.factory.slots.ownerOf(receiver)
            if owner is not None:
                receiver, target = owner, self.presence.sessionFor(owner)
        if target is None:
            self._sendError(ERR_NOT_FOUND)
            return
        try:
            filename = frame.filename.decode("utf-8")
        except UnicodeDecodeError:
            filename = ""
        if not filename:
            self._sendError(ERR_BAD_FILENAME)
            return
        if isinstance(target, MsrpProtocol):
            self._streamTo(target, receiver, frame, filename)
            return
        limit = self.presence.fileLimit(receiver) or 0
        if limit == 0:
            self._sendError(errNoFiles(receiver))
        elif size > limit:
            self._sendError(errFileTooLargeFor(receiver, size, limit))
        else:
            self._sink = _WholeFile(self, receiver, filename)
            self._watch(self._sink, self._wholeFileStalled)

    def _streamTo(
        self, target: MsrpProtocol, receiver: str, frame: FileHeader, filename: str
    ) -> None:
        if target.mode == HUMAN:
            self._sendError(errNoFiles(receiver))
            return
        header = encodeFileHeader(
            self.wireName, frame.filename, frame.size, frame.port, frame.ip
        )
        if target._largeStream is not None:
            self.factory.metrics.refused(MSRP, BUSY)
            self._sendError(errReceivingFile(receiver))
            return
        if not target._hasRoom(len(header)):
            self.factory.metrics.refused(MSRP, BUSY)
            self._sendError(errQueueFull(receiver))
            return
        stream = _FileStream(self, target, header, frame.filename, frame.size)
        self._sink = stream
        if frame.size > FILL_MAX:
            target._largeStream = stream
        self.log.info(
            "msrp file {filename!r} ({size} bytes) from {sender} to {receiver}",
            filename=filename,
            size=frame.size,
            sender=self.user.name,
            receiver=receiver,
        )
        target._enqueueStream(stream)
        self._updateFlow(stream)

    def _fileChunk(self, frame: FileChunk) -> None:
        self._sink.write(frame.data)

    def _fileEnd(self, frame: FileEnd) -> None:
        sink, self._sink = self._sink, None
        sink.finish()

    def _wholeFileReceived(self, whole: _WholeFile) -> None:
        try:
            taken = self.presence.sendFile(
                self, whole.receiver, whole.filename, bytes(whole.content)
            )
        except (NoSuchUser, FilesNotAccepted, RecipientBusy):
            self._sendError(errNotDelivered(whole.receiver, whole.filename))
            return
        if taken is not None:
            # The receiver is not reading: the file waits for it, and may be
            # dropped (--file-idle-timeout); then this sender is told.
            notice = errNotDelivered(whole.receiver, whole.filename)
            taken.addCallback(lambda ok: ok or self._sendError(notice))
            taken.addErrback(self._failed)

    def _listRequest(self, frame: ListRequest) -> None:
        # Binary clients see each user's slot, by which they write to them.
        slots = self.factory.slots
        text = clientListText([slots.listEntry(info.name) for info in self.presence.users()])
        self._send(encodeClientList(wireText(text)))

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
        if sender is None or sender._closing or self.presence.infoFor(sender) is None:
            self._sendError(errAckSenderGone(_show(filename)))
            return
        sender._send(encodeAck(filename))

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

    # Bytes out.

    def _render(self, message: ChatMessage) -> bytes:
        """C{message} as this session's wire shows it."""
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
        if self.mode == HUMAN:
            self._sendLine(f"ERROR: {text}")
        else:
            self._send(encodeError(wireText(text)))

    def _sendLine(self, line: str) -> None:
        self._send(line.encode("utf-8", "replace") + b"\n")

    def _blocked(self) -> bool:
        return self._live is not None or self._transportFull or bool(self._waiting)

    def _hasRoom(self, size: int) -> bool:
        """Whether another user's frame of C{size} bytes would be accepted."""
        if self._closing:
            return False
        return not self._blocked() or self._waitingBytes + size <= self.maxQueued

    def _send(self, frame: bytes) -> None:
        """Put C{frame} on the wire after everything that waits."""
        if self._closing:
            return
        if self._blocked():
            self._waiting.append(frame)
            self._waitingBytes += len(frame)
            self._checkQueue()
        else:
            self.transport.write(frame)

    def _checkQueue(self) -> None:
        # Our own replies are never refused; a client that keeps asking while
        # it does not read what waits for it is simply not read any more.
        if self._waitingBytes > self.maxQueued:
            self._pauseReading("queue")
        else:
            self._resumeReading("queue")

    def _enqueueStream(self, stream: _FileStream) -> None:
        if self._blocked():
            self._waiting.append(stream)
            self._waitingBytes += len(stream.header)
        else:
            self._goLive(stream)

    def _goLive(self, stream: _FileStream) -> None:
        self.transport.write(stream.header)
        for data in stream.held:
            self.transport.write(data)
        self.factory.metrics.bytesRelayed(MSRP, MSRP, stream.heldBytes)
        stream.sent = stream.heldBytes
        stream.held = []
        stream.heldBytes = 0
        stream.live = True
        self._live = stream
        if stream.done:
            # Held whole while it waited; whoever called drains on.
            self._finishLive(stream)
        else:
            self._watch(stream, self._streamStalled)
            stream.sender._updateFlow(stream)

    def _liveStreamEnded(self, stream: _FileStream) -> None:
        self._finishLive(stream)
        self._drain()
        self._closeIfHalfClosed()

    def _finishLive(self, stream: _FileStream) -> None:
        _stopWatching(stream)
        self._live = None
        if self._largeStream is stream:
            self._largeStream = None
        self._remember(stream.filename, stream.sender)
        self.factory.metrics.fileRelayed(MSRP, MSRP)
        self.log.info(
            "msrp file {filename!r} relayed from {sender} to {receiver}",
            filename=_show(stream.filename),
            sender=stream.sender.user.name if stream.sender.user else "?",
            receiver=self.user.name if self.user else "?",
        )

    def _remember(self, filename: bytes, sender: MsrpProtocol | None) -> None:
        """Remember a file received whole, for ACK matching."""
        self._unacked.append((filename, None if sender is None else weakref.ref(sender)))
        if len(self._unacked) > MAX_UNACKED:
            self._unacked.popleft()

    def _drain(self) -> None:
        """Write what waits, in order, until a file streams or the buffer fills."""
        while (
            self._waiting
            and self._live is None
            and not self._transportFull
            and not self._closing
        ):
            item = self._waiting.popleft()
            if item.__class__ is bytes:
                self._waitingBytes -= len(item)
                self.transport.write(item)
            else:
                self._waitingBytes -= item.queuedBytes()
                self._goLive(item)
        self._checkQueue()

    def _transportPaused(self) -> None:
        self._transportFull = True
        if self._live is not None:
            self._live.sender._updateFlow(self._live)

    def _transportResumed(self) -> None:
        self._transportFull = False
        if self._closing:
            return
        if self._live is not None:
            if self._live.cutText is not None:
                self._padLive()  # drains on once the file is complete
                return
            self._live.sender._updateFlow(self._live)
        self._drain()

    # Flow control of this session's input.

    def _pauseReading(self, reason: object) -> None:
        if not self._pauseReasons and not self._closing:
            self.transport.pauseProducing()
        self._pauseReasons.add(reason)

    def _resumeReading(self, reason: object) -> None:
        if reason in self._pauseReasons:
            self._pauseReasons.discard(reason)
            if not self._pauseReasons and not self._closing:
                self.transport.resumeProducing()

    def _updateFlow(self, stream: _FileStream) -> None:
        """Read the content of C{stream} only while its recipient can take it."""
        if stream.done or self._sink is not stream:
            self._resumeReading(stream)
        elif stream.live and not stream.recipient._transportFull:
            self._resumeReading(stream)
        else:
            self._pauseReading(stream)

    def _streamSent(self, stream: _FileStream) -> None:
        self._resumeReading(stream)

    # Failures around a file stream.

    def _streamCut(self, stream: _FileStream) -> None:
        """The sender of C{stream} (to this session) is gone before its end."""
        if stream.live and not self.factory.stopping:
            sender = stream.sender.user.name if stream.sender.user else "?"
            missing = stream.size - stream.sent
            large = missing > FILL_MAX
            self.log.info(
                "msrp {name}: the sender {sender} of {filename!r} left mid-file;"
                " {missing} bytes are missing: "
                + ("more than can be completed, so it is disconnected"
                   if large else "completed with zeros"),
                name=self.user.name if self.user else "?",
                sender=sender,
                filename=_show(stream.filename),
                missing=missing,
                disconnected=large,
                protocol=self.protocolName,
                event="file-cut",
            )
            text = errRecipientGone(sender, _show(stream.filename))
            if large:
                self._cutLarge(stream, text)
            else:
                # What waits for this session was accepted for it: complete
                # the file so the stream is in step again, say it was not
                # delivered, then deliver the rest.
                self._cutLive(stream, text)
            return
        if stream.live:
            # The server is stopping and this session with it: nothing else
            # may be written, and it must not be handed a file that looks
            # complete.
            self.log.info(
                "msrp {name}: the sender of {filename!r} left mid-file",
                name=self.user.name if self.user else "?",
                filename=_show(stream.filename),
            )
            self.factory.disconnecting(self, FILE_CUT)
            self._shutdown(None, abort=True)
            return
        if self._largeStream is stream:
            self._largeStream = None
        try:
            self._waiting.remove(stream)
        except ValueError:
            return
        self._waitingBytes -= stream.queuedBytes()
        self._drain()
        self._closeIfHalfClosed()

    def _cutLarge(self, stream: _FileStream, text: str) -> None:
        """
        End the live C{stream} with more than L{FILL_MAX} bytes missing: the
        recipient cannot be told in band without being sent them, so it is
        disconnected (a connection closed before C{size} bytes says the file
        is incomplete). Only its own answers waited behind the file; they
        go with the connection.
        """
        _stopWatching(stream)
        stream.cutText = text  # its sender was told, or is gone
        self.factory.disconnecting(self, FILE_CUT)
        self._shutdown(None, abort=True)

    def _cutLive(self, stream: _FileStream, text: str) -> None:
        """
        End the live C{stream} before its content is all here: complete it
        with zero bytes (the recipient counts C{size} bytes and no frame can
        be written before they are done), then ERROR C{text}, so that the
        recipient knows to throw the file away, then what waited for it.
        """
        _stopWatching(stream)
        stream.cutText = text
        self._padLive()

    def _padLive(self) -> None:
        """Go on completing the cut live file while the transport takes it."""
        stream = self._live
        size = len(_PADDING)
        while stream.sent < stream.size:
            if self._transportFull or self._closing:
                return  # resumed by _transportResumed
            n = min(size, stream.size - stream.sent)
            self.transport.write(_PADDING if n == size else _PADDING[:n])
            stream.sent += n
        self._live = None
        self.transport.write(encodeError(wireText(stream.cutText)))
        self._drain()

    def _watch(self, transfer: _FileStream | _WholeFile, onStall) -> None:
        """
        Call C{onStall(transfer)} once C{transfer} has gone
        C{--file-idle-timeout} seconds without progress (0: never).
        """
        timeout = self.factory.limits.fileIdleTimeout
        if timeout:
            transfer.lastProgress = self.clock.seconds()
            transfer.idle = self.clock.callLater(
                timeout, self._idleCheck, transfer, onStall
            )

    def _idleCheck(self, transfer: _FileStream | _WholeFile, onStall) -> None:
        # Progress only stamps the time (no timer work for every read); the
        # timer looks at the stamp and sleeps again for what is left.
        left = (
            transfer.lastProgress
            + self.factory.limits.fileIdleTimeout
            - self.clock.seconds()
        )
        if left > 0:
            transfer.idle = self.clock.callLater(
                left, self._idleCheck, transfer, onStall
            )
            return
        transfer.idle = None
        onStall(transfer)

    def _streamStalled(self, stream: _FileStream) -> None:
        """
        The live C{stream} to this session made no progress for the idle
        timeout (its sender stopped sending, or this session stopped
        reading): both sides are told and the sender's rest is dropped.
        """
        timeout = self.factory.limits.fileIdleTimeout
        text = errFileStalled(_show(stream.filename), timeout)
        sender = stream.sender
        missing = stream.size - stream.sent
        large = missing > FILL_MAX
        self.log.info(
            "msrp file {filename!r} from {sender} to {receiver} abandoned:"
            " no progress for {timeout} s; {missing} bytes are missing: "
            + ("more than can be completed, so the receiver is disconnected"
               if large else "completed with zeros"),
            filename=_show(stream.filename),
            sender=sender.user.name if sender.user else "?",
            receiver=self.user.name if self.user else "?",
            timeout=timeout,
            missing=missing,
            disconnected=large,
            protocol=self.protocolName,
            event="file-stalled",
        )
        if sender._sink is stream:
            sender._sink = _DISCARD  # the rest of its content is read and dropped
            sender._resumeReading(stream)
            sender._sendError(text)
        if large:
            self._cutLarge(stream, text)
        else:
            self._cutLive(stream, text)

    def _wholeFileStalled(self, whole: _WholeFile) -> None:
        """A file collected for another protocol stopped arriving: drop it."""
        if self._sink is not whole:
            return
        timeout = self.factory.limits.fileIdleTimeout
        self.log.info(
            "msrp file {filename!r} from {sender} to {receiver} abandoned:"
            " no progress for {timeout} s",
            filename=whole.filename,
            sender=self.user.name if self.user else "?",
            receiver=whole.receiver,
            timeout=timeout,
            protocol=self.protocolName,
            event="file-stalled",
        )
        self._sink = _DISCARD
        whole.content = bytearray()
        self._sendError(errFileStalled(whole.filename, timeout))

    def _recipientGone(self, stream: _FileStream) -> None:
        """The recipient of C{stream} (from this session) closed its connection."""
        self._resumeReading(stream)
        if self._sink is stream:
            self._sink = _DISCARD
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
        self._closeIfHalfClosed()

    def writeConnectionLost(self) -> None:
        self.transport.loseConnection()

    def _closeIfHalfClosed(self) -> None:
        if not self._readLost or self._closing or self._loggingIn:
            return
        if self._live is not None or any(
            item.__class__ is _FileStream for item in self._waiting
        ):
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
        # As a sender: a file under way can go no further.
        sink, self._sink = self._sink, None
        if sink is not None:
            sink.cut()
        # As a recipient: whatever waits is dropped; senders of files learn
        # that their file was not delivered.
        live, self._live = self._live, None
        self._largeStream = None
        waiting = list(self._waiting)
        self._waiting.clear()
        self._waitingBytes = 0
        if live is not None:
            _stopWatching(live)
        for item in ([live] if live is not None else []) + waiting:
            # A cut file's sender was told already (or is gone).
            if item.__class__ is _FileStream and item.cutText is None:
                item.sender._recipientGone(item)
        if transportGone:
            return
        if live is None:
            # Close after what waited (bounded by maxQueued), then the reason.
            for item in waiting:
                if item.__class__ is bytes:
                    self.transport.write(item)
        if text is not None and live is None:
            if self.mode == HUMAN:
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
        if self._largeStream is not None:
            raise RecipientReceivingFile(
                f"{message.receiver} is receiving a large file; try again later"
            )
        frame = self._render(message)
        if not self._hasRoom(len(frame)):
            raise RecipientBusy(
                f"{message.receiver} is not reading: too much waits for them"
            )
        self._send(frame)

    def disconnect(self, reason: str) -> None:
        self._closeWith(reason)

    # IFileReceiver.

    def deliverFile(self, sender: str, filename: str, content: bytes) -> None:
        if self.mode == HUMAN or self._closing:
            self.log.warn(
                "msrp {name}: a file from {sender} cannot be shown, dropped",
                name=self.user.name if self.user else "?",
                sender=sender,
            )
            return
        if self._largeStream is not None:
            raise RecipientReceivingFile(
                f"{self.user.name} is receiving a large file; try again later"
            )
        name = wireText(filename, maximum=255)
        self._send(encodeFileHeader(self.factory.slots.slotFor(sender), name, len(content)))
        if content:
            self._send(content)
        self._remember(name, None)


# frame type -> handler, shared by every connection (an idle session should
# cost little memory).
MsrpProtocol._frameHandlers = {
    Message: MsrpProtocol._message,
    FileHeader: MsrpProtocol._fileHeader,
    FileChunk: MsrpProtocol._fileChunk,
    FileEnd: MsrpProtocol._fileEnd,
    ListRequest: MsrpProtocol._listRequest,
    Ack: MsrpProtocol._ack,
    Error: MsrpProtocol._clientError,
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
    ) -> None:
        if metrics is None:
            metrics = getattr(presence, "metrics", None)
        SessionFactory.__init__(self, clock, limits, limiter, metrics)
        self.presence = presence
        self.maxFileSize = maxFileSize
        self.maxQueued = maxQueued
        #: The 4-byte slots of users whose names are not 4 bytes, shared by
        #: every connection.
        self.slots = SlotDirectory(presence)
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
            sink = connection._sink
            if sink.__class__ is _FileStream:
                streams.add(id(sink))
            elif sink.__class__ is _WholeFile:
                whole += 1
            if connection._live is not None:
                streams.add(id(connection._live))
            for item in connection._waiting:
                if item.__class__ is _FileStream:
                    streams.add(id(item))
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
