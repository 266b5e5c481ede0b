"""
The MSGR UQ chat socket: one connection's behaviour.

Lines are cut and escaped by L{chatd.msgr.codec}; accounts, tokens and friend
requests are L{chatd.msgr.service.MsgrService}'s; delivery to other users,
whatever their protocol, goes through the presence service. docs/msgr.md is
the normative description.
"""

from __future__ import annotations

import base64
import binascii

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from chatd.msgr import codec
from chatd.msgr.accounts import SessionData
from chatd.msgr.codec import NO_TOKEN, RawField, buildLine, joinList, unescape
from chatd.msgr.service import (
    BAD_CREDENTIALS,
    BLOCKED,
    LOGIN_OK,
    NO_CREDENTIALS,
    NO_SUCH_USER,
    REQUEST_MISSING,
    SENT_OK,
    UPDATE_FAILED,
    UPDATE_OK,
    MsgrService,
    Outcome,
)
from chatd.limits import ConnectionLimiter, Limits, OutboundQueue
from chatd.metrics import (
    BLOCKED as BLOCKED_REASON,
    BUSY,
    LOGIN_REFUSED,
    REVOKED,
    SENDQ,
    TAKEN_OVER,
    ChatdMetrics,
)
from chatd.sessions import SessionFactory, SessionProtocol
from chatd.presence import (
    DEFAULT_STATUS,
    ChatMessage,
    FilesNotAccepted,
    IChatSession,
    IFileReceiver,
    NoSuchUser,
    PresenceError,
    RecipientBusy,
    UserInfo,
    checkStatus,
    nameKey,
)

#: Longest line read, in bytes, without its C{\n}.
DEFAULT_MAX_LINE = 2 * 1024 * 1024

#: Largest file (decoded) accepted in C{#ARCHIVO} / C{#IMG}, in bytes.
DEFAULT_MAX_FILE = 1024 * 1024

#: Longest file name, in characters.
MAX_FILENAME = 255

HOLA = "#HOLA"
MSJ = "#MSJ"
ARCHIVO = "#ARCHIVO"
IMG = "#IMG"
MEME = "#MEME"
SOLICITUD = "#SOLICITUD"
ACEPTAR = "#ACEPTAR"
RECHAZAR = "#RECHAZAR"
DESCONECTAR = "#DESCONECTAR"
RESPUESTA = "#RESPUESTA"
LISTA_USUARIOS = "#LISTA_USUARIOS"
SOLICITUDES = "#SOLICITUDES"

#: How text from a C{#MEME} reaches users of other protocols.
MEME_TEXT = "[meme] {name}"

# command -> how many fields it has (the last one takes the rest of the line
# when the command carries free text).
_FIELDS = {
    MSJ: 5,
    ARCHIVO: 6,
    IMG: 6,
    MEME: 5,
    SOLICITUD: 4,
    ACEPTAR: 4,
    RECHAZAR: 4,
    DESCONECTAR: 3,
}
_REST_IS_TEXT = {MSJ}

#: The commands that count against the message rate (C{--rate}).
_RATED = {MSJ, ARCHIVO, IMG, MEME, SOLICITUD, ACEPTAR, RECHAZAR}

#: The id of a C{#RESPUESTA} that answers no line of the client.
UNSOLICITED = 0


def base64Length(size: int) -> int:
    """How many base64 characters C{size} bytes take."""
    return 4 * ((size + 2) // 3)


@implementer(IChatSession, IFileReceiver, IHalfCloseableProtocol)
class MsgrChatProtocol(SessionProtocol):
    """
    One client of the MSGR UQ chat socket, adapted to L{IChatSession} and
    L{IFileReceiver}.

    A client that shuts down its sending side gets the answer to every line
    it sent (the last one needs no line end), then the connection closes.
    """

    protocolName = "msgr"
    log = Logger()

    #: Files from other users that wait for this client to read:
    #: (line, Deferred for the sender's answer, idle timer or None). None
    #: until there is one (an idle session should cost little memory).
    _heldFiles: list | None = None

    def __init__(self, msgr: MsgrService, maxLine: int, maxFileSize: int) -> None:
        self.msgr = msgr
        self.presence = msgr.presence
        self.decoder = codec.LineDecoder(maxLine)
        self.maxFileSize = maxFileSize
        self.user: UserInfo | None = None
        self.token: str | None = None
        self.lineNumber = 0
        self._loggingIn = False
        self._queue: list = []
        self._closing = False
        self._readLost = False  # the client sends nothing more
        self._answersDue = 0  # answers waiting for the database
        self.peerHost = ""
        self.outbound: OutboundQueue | None = None

    # Bytes in.

    def refuse(self, refusal: str) -> None:
        # 803 "could not", as for any other refused #HOLA; 901 would tell
        # the client its token is bad.
        self._answer(HOLA, UPDATE_FAILED, UNSOLICITED)
        self._close()

    def admitted(self) -> None:
        self.outbound = self.factory.outbound(self.transport, self._sendQueueFull)

    def dataReceived(self, data: bytes) -> None:
        for item in self.decoder.feed(data):
            if self._closing:
                return
            if self._loggingIn:
                self._queue.append(item)
            else:
                self._handle(item)

    def _handle(self, item: bytes | codec.LineTooLong) -> None:
        if isinstance(item, bytes) and not item.strip():
            return  # blank lines (keep-alives) are ignored
        self.lineNumber += 1
        try:
            if isinstance(item, codec.LineTooLong):
                self._refuse(None, UPDATE_FAILED, str(item))
                return
            line = self._decodeLine(item)
            if self.user is None:
                self._bind(line)
            else:
                self._dispatch(line)
        except codec.NotUtf8 as e:
            self._refuse(None, REQUEST_MISSING, str(e))
        except Exception:
            if self.allowance.mayLogError():
                self.log.failure("MSGR line from {peer} failed", peer=self.peerHost)
            self._answer(None, REQUEST_MISSING)

    def _decodeLine(self, raw: bytes) -> str:
        """The text of one line's bytes (UTF-8; L{codec.NotUtf8} if not)."""
        return codec.decodeLine(raw)

    def _refuse(self, command: str | None, code: int, reason: str) -> None:
        """Answer an error; before binding, close the connection too."""
        if self.user is None:
            why = f"{command or 'line'} ({code}): {reason}"
            self.factory.loginRefused(self, "-", why)
            self._answer(command, code)
            self.factory.disconnecting(self, LOGIN_REFUSED)
            self._close()
            return
        # One line per bad line would let a client write the log for us.
        if self.allowance.mayLogError():
            self.log.info(
                "MSGR {command} from {user} refused ({code}): {reason}",
                command=command or "line",
                user=self.user.name,
                code=code,
                protocol=self.protocolName,
                reason=reason,
                event="request-refused",
            )
        self._answer(command, code)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._closing = True
        self._queue.clear()
        self._dropHeldFiles()
        self._unbind()
        # Break the cycle through the queue's overflow callback, so the
        # connection and its buffers go by reference counting alone.
        outbound, self.outbound = self.outbound, None
        if outbound is not None:
            outbound.detach()
        self.factory.release(self)

    def loginTimedOut(self) -> None:
        self._answer(HOLA, NO_CREDENTIALS, UNSOLICITED)
        self._close()

    def _sendQueueFull(self) -> None:
        self.log.info(
            "MSGR socket of {user} closed: not reading, more than {limit} bytes"
            " waiting",
            user=self.user.name if self.user else self.peerHost,
            peer=self.peerHost,
            limit=self.outbound.maxBytes,
            protocol=self.protocolName,
            reason=SENDQ,
            event="disconnect",
        )
        # What waits goes out first, then the notice, past the queue's limit.
        outbound, self.outbound = self.outbound, None
        outbound.finish()
        self._endSession(UPDATE_FAILED, "not reading", SENDQ, logged=True)

    def _unbind(self) -> None:
        if self.user is not None:
            self.msgr.detach(self, self.user.name)
            self.user = None
        self.presence.logout(self)
        if self.token is not None:
            self.msgr.tokens.release(self.token)
            self.token = None

    def _close(self) -> None:
        if not self._closing:
            self._closing = True
            outbound, self.outbound = self.outbound, None
            if outbound is not None:
                outbound.finish()
            self.transport.loseConnection()
            self.allowance.closing(self.transport)

    # Lines out.

    def _write(self, command: str, *fields: str) -> bool:
        """
        Write a line; C{False} when it was not written: the connection is
        closing, or the line overflowed the outbound queue (which disconnects
        this client).
        """
        if self._closing:
            return False
        line = buildLine(command, *fields)
        if self.outbound is None:
            self.transport.write(line)
            return True
        return self.outbound.write(line)

    def _deliver(self, command: str, *fields: str) -> None:
        """
        Write a line from another user; L{RecipientBusy}, for its sender, when
        it overflowed the outbound queue.
        """
        outbound = self.outbound
        if not self._write(command, *fields) and outbound is not None:
            raise RecipientBusy(f"{fields[2]} is not reading; disconnected")

    def _answer(self, command: str | None, code: int, lineId: int | None = None) -> None:
        to = self.user.name if self.user is not None else NO_TOKEN
        self._write(
            RESPUESTA,
            NO_TOKEN,
            str(self.lineNumber if lineId is None else lineId),
            command or NO_TOKEN,
            to,
            str(code),
        )

    # Binding.

    def _bind(self, line: str) -> None:
        fields = codec.splitFields(line)
        command = fields[0]
        if self._loggingIn:
            return
        if command != HOLA:
            self._refuse(command, NO_CREDENTIALS, "the first line must be #HOLA")
            return
        if len(fields) < 3:
            self._refuse(HOLA, NO_CREDENTIALS, "#HOLA needs a token and a user")
            return
        token, claimed = unescape(fields[1]), unescape(fields[2])
        self._loggingIn = True
        lineId = self.lineNumber
        self.transport.pauseProducing()
        # In memory the token is checked at once; on a cluster in Redis, and
        # the lines that follow wait for the answer.
        d = defer.maybeDeferred(self.msgr.tokens.validate, token)
        d.addCallback(self._gotOwner, token, claimed, lineId)
        d.addErrback(self._bindFailed, lineId)
        d.addBoth(self._bound)

    def _gotOwner(self, owner: str | None, token: str, claimed: str, lineId: int):
        if self._closing:
            return None
        if owner is None:
            self._bindRefused(lineId, NO_CREDENTIALS, "unknown or expired token")
            return None
        if nameKey(owner) != nameKey(claimed):
            self._bindRefused(lineId, BAD_CREDENTIALS, f"the token is not {claimed!r}'s")
            return None
        self.token = token
        self.msgr.tokens.hold(token, owner)
        d = self.msgr.store.sessionData(owner)
        d.addCallback(self._gotSessionData, lineId)
        return d

    def _gotSessionData(self, data: SessionData | None, lineId: int):
        if self._closing:
            return None
        if data is None:
            self._bindRefused(lineId, BAD_CREDENTIALS, "the account is gone")
            return None
        account = data.account
        if account.bloqueado:
            self._bindRefused(lineId, BLOCKED, "the account is blocked", account.name)
            return None
        previous = self.msgr.boundSession(account.name)
        if previous is not None and previous is not self:
            # A reconnect: the newer socket wins.
            previous.takenOver()
        status = DEFAULT_STATUS
        if account.estado:
            try:
                checkStatus(account.estado)
                status = account.estado
            except PresenceError:
                pass
        d = self.presence.login(
            self, account.name, self.peerHost, status, authenticated=True
        )
        d.addCallback(self._loggedIn, data, lineId)
        d.addErrback(self._loginRefused, lineId)
        return d

    def _loggedIn(self, info: UserInfo, data: SessionData, lineId: int) -> None:
        if self._closing:
            self.presence.logout(self)
            return
        self.user = info
        self.allowance.loggedIn()
        self.log.info(
            "{user} bound the MSGR socket from {peer}",
            user=info.name,
            peer=self.peerHost,
            protocol=self.protocolName,
            event="msgr-bound",
        )
        self._answer(HOLA, LOGIN_OK, lineId)
        self.msgr.attach(self, data)

    def _loginRefused(self, failure: Failure, lineId: int) -> None:
        failure.trap(PresenceError)
        # The presence service logged and counted its refusal.
        self._bindRefused(lineId, UPDATE_FAILED, str(failure.value), counted=True)

    def _bindFailed(self, failure: Failure, lineId: int) -> None:
        self.log.failure("MSGR bind failed", failure)
        self._bindRefused(lineId, NO_CREDENTIALS, "internal error")

    def _bindRefused(
        self,
        lineId: int,
        code: int,
        reason: str,
        name: str = "-",
        counted: bool = False,
    ) -> None:
        if not counted:
            self.factory.loginRefused(self, name, f"#HOLA ({code}): {reason}")
        self._answer(HOLA, code, lineId)
        self.factory.disconnecting(self, LOGIN_REFUSED)
        self._close()
        self._unbind()

    def _bound(self, ignored) -> None:
        self._loggingIn = False
        queued, self._queue = self._queue, []
        for item in queued:
            if self._closing:
                return
            self._handle(item)
        if not self._closing:
            self.transport.resumeProducing()
            self._closeIfHalfClosed()

    # Commands of a bound socket.

    def _dispatch(self, line: str) -> None:
        command = codec.splitFields(line, 2)[0]
        handler = self._handlers.get(command)
        if handler is None:
            self._refuse(command, REQUEST_MISSING, "unknown command")
            return
        count = _FIELDS.get(command)
        fields = codec.splitFields(line, count if command in _REST_IS_TEXT else None)
        if count is not None and len(fields) < count:
            self._refuse(command, REQUEST_MISSING, f"{command} needs {count} fields")
            return
        if command != HOLA:
            if not self.msgr.tokens.belongsTo(unescape(fields[1]), self.user.name):
                self._refuse(command, NO_CREDENTIALS, "wrong token")
                return
            if nameKey(unescape(fields[2])) != nameKey(self.user.name):
                self._refuse(command, BAD_CREDENTIALS, "the sender is not you")
                return
        if command in _RATED and not self.allowance.allowMessage():
            # Logged (at most once a minute) and counted by the allowance.
            self._answer(command, UPDATE_FAILED)
            return
        handler(self, command, fields)

    def _rebind(self, command: str, fields: list[str]) -> None:
        self._refuse(command, UPDATE_FAILED, "already bound")

    def _message(self, command: str, fields: list[str]) -> None:
        to, text = unescape(fields[3]), unescape(fields[4])
        if not to or not text:
            self._refuse(command, REQUEST_MISSING, "#MSJ needs a receiver and text")
            return
        try:
            self.presence.sendMessage(self, to, text)
        except NoSuchUser as e:
            self._refuse(command, NO_SUCH_USER, str(e))
            return
        except PresenceError as e:  # RecipientBusy: too much waits for them
            self._refuse(command, UPDATE_FAILED, str(e))
            return
        self._answer(command, SENT_OK)

    def _file(self, command: str, fields: list[str]) -> None:
        to, filename, encoded = unescape(fields[3]), unescape(fields[4]), fields[5]
        if not to or not filename or not encoded:
            self._refuse(command, REQUEST_MISSING, f"{command} needs to, name, data")
            return
        if len(filename) > MAX_FILENAME or not filename.isprintable():
            self._refuse(command, REQUEST_MISSING, "bad file name")
            return
        if len(encoded) > base64Length(self.maxFileSize):
            self._refuse(command, UPDATE_FAILED, "the file is too large")
            return
        try:
            content = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            self._refuse(command, REQUEST_MISSING, "the data is not base64")
            return
        if len(content) > self.maxFileSize:
            self._refuse(command, UPDATE_FAILED, "the file is too large")
            return
        target = self.presence.sessionFor(to)
        if isinstance(target, MsgrChatProtocol) and target.user is not None:
            # Same protocol: keep #IMG an image.
            if len(content) > target.maxFileSize:
                self._refuse(command, UPDATE_FAILED, "the file is too large")
                return
            try:
                held = target.deliverLine(command, self.user.name, filename, encoded)
            except RecipientBusy as e:
                self.factory.metrics.refused(self.protocolName, BUSY)
                self._refuse(command, UPDATE_FAILED, str(e))
                return
            self.factory.metrics.fileRelayed("msgr", "msgr", len(content))
        else:
            try:
                held = self.presence.sendFile(self, to, filename, content)
            except NoSuchUser as e:
                self._refuse(command, NO_SUCH_USER, str(e))
                return
            except (FilesNotAccepted, PresenceError) as e:
                self._refuse(command, UPDATE_FAILED, str(e))
                return
        if held is not None:
            # The receiver is not reading: answered when it takes the file,
            # or 803 when the file was dropped.
            self._answerWhenTaken(held, command, to, filename)
            return
        self._answer(command, SENT_OK)

    def _answerWhenTaken(
        self, held: Deferred, command: str, to: str, filename: str
    ) -> None:
        lineId = self.lineNumber

        def answer(taken: bool) -> None:
            if self.user is None:
                return
            if not taken:
                self.log.info(
                    "MSGR {command} {filename!r} from {user} to {to} dropped:"
                    " not taken within {timeout} s",
                    command=command,
                    filename=filename,
                    user=self.user.name,
                    to=to,
                    timeout=self.factory.limits.fileIdleTimeout,
                    protocol=self.protocolName,
                    event="file-stalled",
                )
            self._answer(command, SENT_OK if taken else UPDATE_FAILED, lineId)

        held.addCallback(answer)
        held.addErrback(
            lambda f: self.log.failure("MSGR {command} answer failed", f, command=command)
        )

    def _meme(self, command: str, fields: list[str]) -> None:
        to, name = unescape(fields[3]), unescape(fields[4])
        if not to or not name:
            self._refuse(command, REQUEST_MISSING, "#MEME needs a receiver and a name")
            return
        target = self.presence.sessionFor(to)
        if isinstance(target, MsgrChatProtocol) and target.user is not None:
            try:
                target.deliverLine(MEME, self.user.name, name)
            except RecipientBusy as e:
                self.factory.metrics.refused(self.protocolName, BUSY)
                self._refuse(command, UPDATE_FAILED, str(e))
                return
            self.factory.metrics.messageRouted("msgr", "msgr")
        else:
            try:
                self.presence.sendMessage(self, to, MEME_TEXT.format(name=name))
            except NoSuchUser as e:
                self._refuse(command, NO_SUCH_USER, str(e))
                return
            except PresenceError as e:
                self._refuse(command, UPDATE_FAILED, str(e))
                return
        self._answer(command, SENT_OK)

    def _friendRequest(self, command: str, fields: list[str]) -> None:
        d = self.msgr.requestFriend(self.user.name, unescape(fields[3]))
        self._answerLater(d, command)

    def _acceptRequest(self, command: str, fields: list[str]) -> None:
        d = self.msgr.answerRequest(self.user.name, unescape(fields[3]), True)
        self._answerLater(d, command)

    def _rejectRequest(self, command: str, fields: list[str]) -> None:
        d = self.msgr.answerRequest(self.user.name, unescape(fields[3]), False)
        self._answerLater(d, command)

    def _answerLater(self, d, command: str) -> None:
        lineId = self.lineNumber
        self._answersDue += 1

        def answer(outcome: Outcome) -> None:
            if self.user is not None:
                self._answer(command, outcome.code, lineId)

        def answered(ignored) -> None:
            self._answersDue -= 1
            self._closeIfHalfClosed()

        d.addCallback(answer)
        d.addErrback(lambda f: self.log.failure("MSGR {command} failed", f, command=command))
        d.addBoth(answered)

    # IHalfCloseableProtocol.

    def readConnectionLost(self) -> None:
        """
        The client sent its last byte: its last line needs no line end;
        once every line is answered (a #HOLA or a friend request waits for
        the database), close.
        """
        self._readLost = True
        if not self._closing:
            self.dataReceived(b"\n")
        self._closeIfHalfClosed()

    def writeConnectionLost(self) -> None:
        self.transport.loseConnection()

    def _closeIfHalfClosed(self) -> None:
        if not self._readLost or self._closing:
            return
        if self._loggingIn or self._answersDue:
            # The close grace bounds the wait for the database.
            self.allowance.closing(self.transport)
            return
        self._close()
        self._unbind()

    def _logout(self, command: str, fields: list[str]) -> None:
        self.log.info(
            "{user} disconnected (#DESCONECTAR)",
            protocol=self.protocolName,
            user=self.user.name,
            peer=self.peerHost,
            event="msgr-quit",
        )
        self._answer(command, UPDATE_OK)
        if self.token is not None:
            revoked = defer.maybeDeferred(self.msgr.tokens.revoke, self.token)
            revoked.addErrback(lambda f: self.log.failure("revoking a token failed", f))
        self._close()
        self._unbind()

    # Pushes from the service.

    def pushFriends(self, online: list[str]) -> None:
        if self.user is not None:
            self._write(LISTA_USUARIOS, NO_TOKEN, self.user.name, RawField(joinList(online)))

    def pushRequests(self, pending: list[str]) -> None:
        if self.user is not None:
            self._write(SOLICITUDES, NO_TOKEN, self.user.name, RawField(joinList(pending)))

    def accountBlocked(self) -> None:
        self._endSession(BLOCKED, "the account was blocked", BLOCKED_REASON)

    def tokenRevoked(self) -> None:
        # 901, as for any line with a token that is no longer valid.
        self._endSession(NO_CREDENTIALS, "its token was revoked", REVOKED)

    def takenOver(self) -> None:
        self._endSession(UPDATE_FAILED, "the account bound another socket", TAKEN_OVER)

    def _endSession(
        self, code: int, text: str, reason: str | None = None, logged: bool = False
    ) -> None:
        if reason is not None:
            self.factory.disconnecting(self, reason)
        if not logged:
            self.log.info(
                "MSGR socket of {user} closed: {text}",
                user=self.user.name if self.user else "-",
                peer=self.peerHost,
                text=text,
                protocol=self.protocolName,
                reason=self.closeReason,
                event="disconnect",
            )
        self._answer(DESCONECTAR, code, UNSOLICITED)
        self._close()
        self._unbind()

    def deliverLine(self, command: str, sender: str, *fields: str) -> None:
        """
        Put a C{#ARCHIVO}, C{#IMG} or C{#MEME} from another MSGR user on the
        wire (the last field of a file is its base64, written as it is).

        @return: for a file that has to wait for this client to read, a
            L{Deferred} saying whether it was taken (see L{_holdFile});
            otherwise C{None}.
        """
        if self.user is None:
            return None
        out = list(fields)
        if command in (ARCHIVO, IMG):
            out[-1] = RawField(out[-1])
            outbound = self.outbound
            if outbound is not None and outbound.paused and not self._closing:
                return self._holdFile(command, sender, out)
        self._deliver(command, NO_TOKEN, sender, self.user.name, *out)
        return None

    def _holdFile(self, command: str, sender: str, fields: list) -> Deferred:
        """
        Queue a file line for this client, whose socket is not taking what
        is written: the L{Deferred} fires C{True} when the socket takes it,
        C{False} when it is dropped, after C{--file-idle-timeout} seconds
        without being taken or with the connection. A file may hold up to
        C{--msgr-max-line} bytes, so it is not kept for a client that does
        not read.
        """
        line = buildLine(command, NO_TOKEN, sender, self.user.name, *fields)
        if not self.outbound.write(line):
            raise RecipientBusy(f"{self.user.name} is not reading; disconnected")
        if self._heldFiles is None:
            self._heldFiles = []
            self.outbound.onDrained = self._heldFilesTaken
        taken = Deferred()
        timeout = self.factory.limits.fileIdleTimeout
        timer = None
        if timeout:
            timer = self.factory.clock.callLater(timeout, self._heldFileStalled, line)
        self._heldFiles.append((line, taken, timer))
        return taken

    def _heldFilesTaken(self) -> None:
        """The socket took everything that waited."""
        held, self._heldFiles = self._heldFiles, []
        for line, taken, timer in held or ():
            if timer is not None and timer.active():
                timer.cancel()
            taken.callback(True)

    def _heldFileStalled(self, line: bytes) -> None:
        """A file waited C{--file-idle-timeout} seconds: drop it."""
        for index, (waiting, taken, timer) in enumerate(self._heldFiles or ()):
            if waiting is line:
                del self._heldFiles[index]
                break
        else:
            return
        outbound = self.outbound
        if outbound is not None:
            outbound.retract(line)
        taken.callback(False)

    def _dropHeldFiles(self) -> None:
        """The connection is gone: what waited for it was not taken."""
        held, self._heldFiles = self._heldFiles, None
        for line, taken, timer in held or ():
            if timer is not None and timer.active():
                timer.cancel()
            taken.callback(False)

    # IChatSession and IFileReceiver.

    def deliverMessage(self, message: ChatMessage) -> None:
        self._deliver(MSJ, NO_TOKEN, message.sender, message.receiver, message.text)

    def deliverFile(self, sender: str, filename: str, content: bytes):
        if self.user is None:
            return None
        encoded = RawField(base64.b64encode(content).decode("ascii"))
        outbound = self.outbound
        if outbound is not None and outbound.paused and not self._closing:
            return self._holdFile(ARCHIVO, sender, [filename, encoded])
        self._deliver(ARCHIVO, NO_TOKEN, sender, self.user.name, filename, encoded)
        return None

    def disconnect(self, reason: str) -> None:
        self._endSession(UPDATE_FAILED, reason)


# command -> handler, shared by every connection (an idle session should cost
# little memory).
MsgrChatProtocol._handlers = {
    MSJ: MsgrChatProtocol._message,
    ARCHIVO: MsgrChatProtocol._file,
    IMG: MsgrChatProtocol._file,
    MEME: MsgrChatProtocol._meme,
    SOLICITUD: MsgrChatProtocol._friendRequest,
    ACEPTAR: MsgrChatProtocol._acceptRequest,
    RECHAZAR: MsgrChatProtocol._rejectRequest,
    DESCONECTAR: MsgrChatProtocol._logout,
    HOLA: MsgrChatProtocol._rebind,
}


class MsgrChatFactory(SessionFactory):
    """
    Builds L{MsgrChatProtocol}s sharing one L{MsgrService}. When the server
    stops, every client is told
    C{#RESPUESTA||-||0||#DESCONECTAR||<user>||803} and closed.

    @param metrics: the server's L{ChatdMetrics}, passed by the front;
        without one (a test's factory) it counts in a L{ChatdMetrics} of its
        own (L{SessionFactory}).
    """

    def __init__(
        self,
        msgr: MsgrService,
        maxLine: int = DEFAULT_MAX_LINE,
        maxFileSize: int = DEFAULT_MAX_FILE,
        limits: Limits | None = None,
        limiter: ConnectionLimiter | None = None,
        metrics: ChatdMetrics | None = None,
    ) -> None:
        SessionFactory.__init__(self, msgr.clock, limits, limiter, metrics)
        self.msgr = msgr
        self.maxLine = maxLine
        self.maxFileSize = maxFileSize

    def outbound(self, transport, onOverflow) -> OutboundQueue | None:
        """
        As for every protocol, but room for at least two of the longest
        lines: a client that reads is never cut off for being sent two files
        at once.
        """
        if not self.limits.maxSendQueue:
            return None
        limit = max(self.limits.maxSendQueue, 2 * (self.maxLine + 1))
        return OutboundQueue(transport, limit, onOverflow)

    def buildProtocol(self, addr) -> MsgrChatProtocol:
        protocol = MsgrChatProtocol(self.msgr, self.maxLine, self.maxFileSize)
        protocol.factory = self
        return protocol
