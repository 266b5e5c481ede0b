"""
The MSGR UQ reference dialect (C{--msgr-dialect uq-java}): the HTTP answers
the reference Java server gives and its Swing client understands
(/work/shared/notes/dialects.md section 3; docs/msgr.md, "The uq-java
dialect").

The client names users by numeric id (L{chatd.msgr.accounts._numericIds}),
sends no real token, and reads the first three characters of the last line
of each answer. Since it proves nothing but its address, an id is trusted
only from the address of a live C{/status} login of that id
(L{UqJavaLogins}).

The operations are the seed's (L{MsgrService}); only the wire differs.
"""

from __future__ import annotations

import base64
import binascii
from typing import Callable

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import resource, server

from chatd.msgr.http import MAX_BODY, BadBody, MsgrEndpoint, _Call
from chatd.msgr.protocol import (
    ARCHIVO,
    DESCONECTAR,
    HOLA,
    IMG,
    LISTA_USUARIOS,
    MEME,
    MEME_TEXT,
    MSJ,
    SOLICITUDES,
    MsgrChatFactory,
    MsgrChatProtocol,
)
from chatd.presence import LOGIN, LOGOUT, NoSuchUser, PresenceError, UserInfo, nameKey
from chatd.msgr.service import (
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
from chatd.msgr.tokens import TokenRegistry
from chatd.web import Directory

log = Logger()

SEED = "seed"
UQ_JAVA = "uq-java"
DIALECTS = (SEED, UQ_JAVA)

# The reference server's codes (dialects.md section 3.4).
#: /status: logged in, followed by ||<id>.
UQ_LOGIN_OK = 101
#: /status: general error; also what chatd answers for a wrong password (the
#: client shows no dialog for the reference's 201).
UQ_LOGIN_ERROR = 200
#: /status: blocked (or locked out).
UQ_BLOCKED = 301
#: /usuariocrear.
UQ_CREATED, UQ_NOT_CREATED = 102, 202
#: /usuarimodificar, /usuariomodificar.
UQ_MODIFIED, UQ_NOT_MODIFIED = 103, 203
#: /aceptarsolicitud, /rechazarsolicitud: no such request.
UQ_NO_SUCH_REQUEST = 904

#: The first id of users of other protocols (who have no account); account
#: ids stay below it.
GUEST_IDS = 1_000_000_000

#: The token and the sender of the lines chatd pushes (the client ignores
#: both).
PUSH_TOKEN = "tokenOK"
SERVER_NAME = "s3rv1d0r"

#: The marker line of /obtenerusuarios.
LIST_MARKER = "#LISTA_USUARIOS"


#: How many logins are kept before the first sweep of expired ones.
_FIRST_SWEEP = 64


class UqJavaLogins:
    """
    Which address logged in as which account id, through C{/status}.

    Each login gets a token of the shared L{TokenRegistry}, so it expires
    after C{--msgr-token-idle} unused and is revoked with the account's other
    tokens (password change, C{chatd-admin revoke} or C{block}); while it
    lives, the address it came from may act as that id.
    """

    def __init__(self, tokens: TokenRegistry) -> None:
        self.tokens = tokens
        # (account id, address) -> token of the latest login from there.
        self._logins: dict[tuple[int, str], str] = {}
        self._accountIds: dict[str, int] = {}
        self._guests: dict[str, int] = {}
        self._guestNames: dict[int, str] = {}
        self._nextGuest = GUEST_IDS - 1
        self._sweepAt = _FIRST_SWEEP

    def loggedIn(self, uid: int, address: str, token: str) -> None:
        """Record a successful login of C{uid} from C{address}."""
        old = self._logins.get((uid, address))
        if old is not None and old != token:
            self.tokens.revoke(old)
        self._logins[(uid, address)] = token
        self.remember(self.tokens.validate(token) or "", uid)
        if len(self._logins) >= self._sweepAt:
            # Logins that expired unused are only dropped when looked up:
            # sweep now and then, so that addresses that never come back
            # cost nothing for ever (the registry drops expired tokens).
            self._logins = {k: t for k, t in self._logins.items() if t in self.tokens}
            self._sweepAt = max(_FIRST_SWEEP, 2 * len(self._logins))

    def __len__(self) -> int:
        return len(self._logins)

    def tokenFor(self, uid: int, address: str) -> str | None:
        """The live token of C{uid}'s login from C{address}, or C{None}."""
        if self.nameFor(uid, address) is None:
            return None
        return self._logins.get((uid, address))

    # Ids of the users the chat socket names: accounts' (from the database,
    # cached here once seen) and, for users of other protocols who have no
    # account, ids from GUEST_IDS on, kept while they are online.

    def remember(self, name: str, uid: int) -> None:
        if name:
            self._accountIds[nameKey(name)] = uid

    def idOf(self, name: str) -> int | None:
        """The id C{name} shows as, if known without the database."""
        key = nameKey(name)
        uid = self._accountIds.get(key)
        return uid if uid is not None else self._guests.get(key)

    def guestJoined(self, name: str) -> int:
        key = nameKey(name)
        if key not in self._guests:
            self._nextGuest += 1
            self._guests[key] = self._nextGuest
            self._guestNames[self._nextGuest] = name
        return self._guests[key]

    def guestLeft(self, name: str) -> None:
        uid = self._guests.pop(nameKey(name), None)
        if uid is not None:
            self._guestNames.pop(uid, None)

    def guests(self) -> list[tuple[int, str]]:
        """The online users of other protocols: [(id, name)], by id."""
        return sorted(self._guestNames.items())

    def nameFor(self, uid: int, address: str) -> str | None:
        """
        The account name that C{address} may act as under C{uid}, or C{None}
        when it has no live login of that id. A use keeps the login alive.
        """
        token = self._logins.get((uid, address))
        if token is None:
            return None
        name = self.tokens.validate(token)
        if name is None:
            del self._logins[(uid, address)]
        return name


def parseId(value: str | None) -> int | None:
    """A positive decimal id as the client sends it (trimmed), or C{None}."""
    if value is None:
        return None
    value = value.strip()
    if not value.isascii() or not value.isdigit() or len(value) > 18:
        return None
    number = int(value)
    return number if number > 0 else None


def _oneLine(text: str) -> str:
    # A directory line is split on "||" and lines by the client: neither a
    # line break nor a "|" may come from a user's profile.
    return " ".join(text.replace("|", " ").split())


class UqJavaEndpoint(MsgrEndpoint):
    """
    One path of the reference server: a form in, C{<code>\\n} (or the
    directory) out as C{text/plain} with a C{Content-Length}, and the
    connection closed after the answer, since the client reads to EOF.

    Every answer is C{200 OK} (the client ignores the status line) and its
    last line is a code the client can read: bad input, a refusal or an
    internal error never produce an HTML page or a short last line.
    """

    def __init__(
        self,
        msgr: MsgrService,
        operation: Callable[[dict[str, str], str], defer.Deferred],
        errorCode: int,
        maxBody: int = MAX_BODY,
    ) -> None:
        super().__init__(msgr, _Call(operation, errorCode, False), "uq-java", maxBody=maxBody)

    def _fields(self, request: server.Request) -> dict[str, str]:
        if getattr(request, "multipart", False):
            log.info("bad uq-java request body: multipart")
            return {}
        request.content.seek(0)
        body = request.content.read(self.maxBody + 1)
        try:
            if len(body) > self.maxBody:
                raise BadBody(f"the body is larger than {self.maxBody} bytes")
            return self._formFields(body)
        except BadBody as e:
            # A 400 would be a page to this client: the operation runs
            # without fields and refuses in its own code (200, 202, ...).
            log.info("bad uq-java request body: {reason}", reason=str(e))
            return {}

    def _methodNotAllowed(self, request):
        return self._encode(request, Outcome(self.call.missingCode))

    def _encode(self, request: server.Request, outcome: Outcome) -> bytes:
        text = outcome.data.get("text")
        body = (text if text is not None else f"{outcome.code}\n").encode("utf-8")
        request.setHeader(b"content-type", b"text/plain")
        request.setHeader(b"content-length", b"%d" % len(body))
        request.setHeader(b"cache-control", b"no-store")
        # The client reads until EOF: close even if it asked for keep-alive.
        request.setHeader(b"connection", b"close")
        request.channel.persistent = False
        return body


class UqJavaApi:
    """The operations of the reference server's paths, over L{MsgrService}."""

    def __init__(self, msgr: MsgrService, logins: UqJavaLogins) -> None:
        self.msgr = msgr
        self.store = msgr.store
        self.logins = logins

    def _caller(self, value: str | None, address: str) -> str | None:
        uid = parseId(value)
        if uid is None:
            return None
        name = self.logins.nameFor(uid, address)
        if name is None:
            log.info(
                "uq-java: id {uid} named from {peer}, which has no live login of it;"
                " refused",
                uid=uid,
                peer=address,
                event="uq-java-id-refused",
            )
        return name

    @defer.inlineCallbacks
    def login(self, fields: dict[str, str], address: str):
        outcome = yield self.msgr.login(fields.get("usr"), fields.get("pass"), address)
        if outcome.code == BLOCKED:
            return Outcome(UQ_BLOCKED)
        if outcome.code != LOGIN_OK:
            return Outcome(UQ_LOGIN_ERROR)
        name, token = outcome.data["user"], outcome.data["token"]
        ids = yield self.store.idsOf([name])
        uid = next(iter(ids.values()), None)
        if uid is None:  # deleted meanwhile
            self.msgr.tokens.revoke(token)
            return Outcome(UQ_LOGIN_ERROR)
        self.logins.loggedIn(uid, address, token)
        return Outcome(UQ_LOGIN_OK, {"text": f"{UQ_LOGIN_OK}||{uid}\n"})

    @defer.inlineCallbacks
    def register(self, fields: dict[str, str], address: str):
        # estado (always 1) and bloqueado (always 0) mean nothing to chatd.
        wanted = {f: fields[f] for f in ("usr", "pass", "nombres", "apellidos", "email") if f in fields}
        outcome = yield self.msgr.register(wanted, address)
        return Outcome(UQ_CREATED if outcome.code == UPDATE_OK else UQ_NOT_CREATED)

    @defer.inlineCallbacks
    def update(self, fields: dict[str, str], address: str):
        # No id is sent: the account is found by usr, and only its own live
        # login may change it. The password is not changed here (the client
        # sends the one it logged in with, and no current one to check).
        name = fields.get("usr")
        account = None
        if name:
            ids = yield self.store.idsOf([name])
            uid = next(iter(ids.values()), None)
            if uid is not None and self.logins.nameFor(uid, address) is not None:
                account = yield self.store.getAccount(name)
        if account is None:
            return Outcome(UQ_NOT_MODIFIED)
        profile = {f: fields[f] for f in ("nombres", "apellidos", "email") if f in fields}
        if not profile:
            return Outcome(UQ_NOT_MODIFIED)
        outcome = yield self.msgr.update(account, profile, None, address)
        return Outcome(UQ_MODIFIED if outcome.code == UPDATE_OK else UQ_NOT_MODIFIED)

    @defer.inlineCallbacks
    def users(self, fields: dict[str, str], address: str):
        caller = self._caller(fields.get("usuario_id"), address)
        if caller is None:
            return Outcome(REQUEST_MISSING)
        rows = yield self.store.directory()
        lines = [
            f"{uid}||[{_oneLine(name)}] {_oneLine(nombres)} {_oneLine(apellidos)}".rstrip()
            for uid, name, nombres, apellidos in rows
            if uid is not None and name != caller
        ]
        if not lines:
            # No marker and no code line: the client shows nothing.
            return Outcome(REQUEST_MISSING, {"text": ""})
        return Outcome(0, {"text": "\n".join([LIST_MARKER, *lines]) + "\n"})

    @defer.inlineCallbacks
    def send(self, fields: dict[str, str], address: str):
        caller = self._caller(fields.get("de"), address)
        if caller is None:
            return Outcome(REQUEST_MISSING)
        para = parseId(fields.get("para"))
        receiver = None if para is None else (yield self.store.nameOfId(para))
        if receiver is None:
            return Outcome(NO_SUCH_USER)
        outcome = yield self.msgr.requestFriend(caller, receiver)
        return Outcome(outcome.code)

    def accept(self, fields: dict[str, str], address: str):
        return self._answer(fields, address, True)

    def reject(self, fields: dict[str, str], address: str):
        return self._answer(fields, address, False)

    @defer.inlineCallbacks
    def _answer(self, fields: dict[str, str], address: str, accept: bool):
        requestId = parseId(fields.get("id"))
        row = None if requestId is None else (yield self.store.requestById(requestId))
        if row is None:
            return Outcome(UQ_NO_SUCH_REQUEST)
        requester, receiver = row
        ids = yield self.store.idsOf([receiver])
        uid = next(iter(ids.values()), None)
        # Only the requested user, from the address of its login, answers;
        # anyone else learns nothing more than "no such request".
        if uid is None or self.logins.nameFor(uid, address) is None:
            return Outcome(UQ_NO_SUCH_REQUEST)
        outcome = yield self.msgr.answerRequest(receiver, requester, accept)
        if outcome.code == NO_SUCH_USER:
            return Outcome(UQ_NO_SUCH_REQUEST)
        return Outcome(outcome.code)


def makeUqJavaResource(
    msgr: MsgrService, logins: UqJavaLogins, api: resource.Resource, maxBody: int = MAX_BODY
) -> resource.Resource:
    """
    The root of the HTTP listener in the uq-java dialect: the reference
    server's paths, and C{api} (the JSON API, unchanged) under C{/api/}.
    """
    ops = UqJavaApi(msgr, logins)
    paths = {
        b"status": (ops.login, UQ_LOGIN_ERROR),
        b"usuariocrear": (ops.register, UQ_NOT_CREATED),
        b"usuarimodificar": (ops.update, UQ_NOT_MODIFIED),  # the client's spelling
        b"usuariomodificar": (ops.update, UQ_NOT_MODIFIED),
        b"obtenerusuarios": (ops.users, REQUEST_MISSING),
        b"enviarsolicitud": (ops.send, REQUEST_MISSING),
        b"aceptarsolicitud": (ops.accept, UQ_NO_SUCH_REQUEST),
        b"rechazarsolicitud": (ops.reject, UQ_NO_SUCH_REQUEST),
    }
    root = Directory()
    for path, (operation, errorCode) in paths.items():
        root.putChild(path, UqJavaEndpoint(msgr, operation, errorCode, maxBody))
    root.putChild(b"api", api)
    return root


def javaTokens(line: str) -> list[str]:
    """
    A line's fields as the client's C{StringTokenizer(line, "||")} cuts them:
    every C{|} separates, and empty tokens are dropped.
    """
    return [token for token in line.split("|") if token]


def safeText(text: str) -> str | None:
    """
    Text for a C{#MSJ} line to this client: one line (a line break would be a
    line of its own, which kills the client's reader), and never empty once
    its C{|}s are dropped (an empty token shifts the fields left). C{None}
    for text with nothing left to show.
    """
    text = text.replace("\r", " ").replace("\n", " ")
    if not text.replace("|", ""):
        text = text.replace("|", "/")
    return text or None


def safeFileName(filename: str) -> str:
    """A bare file name without separators (the client writes it in its
    working directory)."""
    name = filename.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join("_" if c in "|&" or not c.isprintable() else c for c in name)
    name = name.strip()
    return name if name not in ("", ".", "..") else "archivo"


class UqJavaChatProtocol(MsgrChatProtocol):
    """
    The chat socket in the uq-java dialect (docs/msgr.md, "The uq-java
    dialect"): C{#HOLA} names an account id, which must have a live
    C{/status} login from this address; C{#MSJ} names its receiver by id,
    among those last pushed in C{#LISTA_USUARIOS}; the pushes carry ids and
    request ids, C{&&}-terminated, and no line it cannot parse is ever
    written.

    The answers of the seed dialect (C{#RESPUESTA}, six non-empty fields)
    are kept: this client ignores them, and a person on C{nc} sees them.
    """

    def __init__(self, msgr: MsgrService, maxLine: int, maxFileSize: int, logins: UqJavaLogins):
        super().__init__(msgr, maxLine, maxFileSize)
        self.logins = logins
        self.uid: int | None = None
        # id -> name of what the last #LISTA_USUARIOS offered: the ids #MSJ
        # may name.
        self.contacts: dict[int, str] = {}
        self._pushes: defer.Deferred = defer.succeed(None)

    def _bind(self, line: str) -> None:
        if self._loggingIn:
            return
        fields = javaTokens(line)
        uid = parseId(fields[2]) if len(fields) >= 3 and fields[0] == HOLA else None
        token = None if uid is None else self.logins.tokenFor(uid, self.peerHost)
        if token is None:
            self._refuse(
                HOLA, NO_CREDENTIALS, "#HOLA without the id of a live login from this address"
            )
            return
        self.uid = uid
        self.token = token
        self.msgr.tokens.hold(token)
        self._loggingIn = True
        lineId = self.lineNumber
        self.transport.pauseProducing()
        d = self.msgr.store.sessionData(self.msgr.tokens.validate(token))
        d.addCallback(self._gotSessionData, lineId)
        d.addErrback(self._bindFailed, lineId)
        d.addBoth(self._bound)

    def _loggedIn(self, info: UserInfo, data, lineId: int) -> None:
        self.factory.watchGuests()
        super()._loggedIn(info, data, lineId)

    def _dispatch(self, line: str) -> None:
        fields = javaTokens(line)
        command = fields[0] if fields else ""
        if command == DESCONECTAR:
            self._logout(command, fields)
            return
        if command == HOLA:
            self._rebind(command, fields)
            return
        if command != MSJ:
            self._refuse(command or None, REQUEST_MISSING, "unknown command")
            return
        parts = line.split("||", 4)
        if len(fields) < 5 or len(parts) < 5 or parseId(fields[2]) != self.uid:
            self._refuse(command, REQUEST_MISSING, "#MSJ||<token>||<your id>||<id>||<text>")
            return
        to = self.contacts.get(parseId(fields[3]) or 0)
        if to is None:
            self._refuse(command, NO_SUCH_USER, "no such id in your list")
            return
        if not self.allowance.allowMessage():
            self._answer(command, UPDATE_FAILED)
            return
        text = parts[4]
        try:
            self.presence.sendMessage(self, to, text)
        except NoSuchUser as e:
            self._refuse(command, NO_SUCH_USER, str(e))
            return
        except PresenceError as e:
            self._refuse(command, UPDATE_FAILED, str(e))
            return
        self._answer(command, SENT_OK)

    # The client writes each character's low byte (ISO-8859-1 up to U+00FF)
    # and reads bytes in its platform's charset (dialects.md 3.5): its lines
    # are read as ISO-8859-1, which takes every byte, so "José" from it is
    # "José" to everyone else, never a refused line; and its lines are
    # written back the same way, a character past U+00FF as "?".

    def _decodeLine(self, raw: bytes) -> str:
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        return raw.decode("latin-1")

    # Lines out, as the client parses them.

    def _writeJava(self, *fields: str, trailing: bool = False) -> bool:
        if self._closing:
            return False
        line = "||".join(fields) + ("||" if trailing else "") + "\n"
        data = line.encode("latin-1", "replace")
        if self.outbound is None:
            self.transport.write(data)
            return True
        return self.outbound.write(data)

    def _push(self, work) -> None:
        # One push at a time, in order: each replaces the client's list.
        def run(ignored):
            if self.user is None or self._closing:
                return None
            return work()

        self._pushes.addCallback(run)
        self._pushes.addErrback(
            lambda f: self.log.failure("uq-java push to {user} failed", f, user=self.uid)
        )

    def pushFriends(self, online: list[str]) -> None:
        if self.user is None:
            return
        name = self.user.name

        @defer.inlineCallbacks
        def push():
            friends = yield self.msgr.store.friends(name)
            ids = yield self.msgr.store.idsOf(friends)
            contacts = {}
            for friend in friends:
                uid = ids.get(nameKey(friend))
                if uid is not None:
                    self.logins.remember(friend, uid)
                    contacts[uid] = friend
            for uid, guest in self.logins.guests():
                contacts[uid] = guest
            self.contacts = contacts
            if contacts:  # an empty list would kill the client's reader
                listing = "".join(f"{uid}&&" for uid in contacts)
                self._writeJava(LISTA_USUARIOS, PUSH_TOKEN, SERVER_NAME, str(self.uid), listing)

        self._push(push)

    def pushRequests(self, pending: list[str]) -> None:
        if self.user is None:
            return
        name = self.user.name

        @defer.inlineCallbacks
        def push():
            requests = yield self.msgr.store.pendingRequestIds(name)
            if requests:
                listing = "".join(f"{rid}&&" for rid, _ in requests)
                self._writeJava(SOLICITUDES, PUSH_TOKEN, SERVER_NAME, str(self.uid), listing)

        self._push(push)

    def _fromId(self, sender: str, then: Callable[[int], None]) -> None:
        uid = self.logins.idOf(sender)
        if uid is not None:
            then(uid)
            return

        def found(ids):
            uid = ids.get(nameKey(sender))
            if uid is None:
                self.log.info(
                    "uq-java: a line from {sender}, who has no id, not shown to {user}",
                    sender=sender,
                    user=self.uid,
                )
                return
            self.logins.remember(sender, uid)
            then(uid)

        self.msgr.store.idsOf([sender]).addCallback(found).addErrback(
            lambda f: self.log.failure("uq-java: id of {sender}", f, sender=sender)
        )

    def deliverMessage(self, message) -> None:
        text = safeText(message.text)
        if text is None or self.user is None:
            return
        uid = self.uid

        def write(fromId: int) -> None:
            self._writeJava(MSJ, PUSH_TOKEN, str(fromId), str(uid), text)

        self._fromId(message.sender, write)

    def deliverFile(self, sender: str, filename: str, content: bytes):
        if self.user is None:
            return None
        name = safeFileName(filename)
        encoded = base64.b64encode(content).decode("ascii")
        uid = self.uid

        def write(fromId: int) -> None:
            # The trailing separator keeps the line end out of the base64
            # field, which the client's decoder would refuse.
            self._writeJava(
                ARCHIVO, PUSH_TOKEN, str(fromId), str(uid), name, encoded, trailing=True
            )

        self._fromId(sender, write)
        return None

    def deliverLine(self, command: str, sender: str, *fields: str) -> None:
        # From a seed-dialect MSGR user: files as files, memes as text.
        if command in (ARCHIVO, IMG):
            filename, encoded = fields
            try:
                content = base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError):
                return None
            return self.deliverFile(sender, filename, content)
        if command == MEME:
            self._fromId(
                sender,
                lambda fromId: self._writeJava(
                    MSJ, PUSH_TOKEN, str(fromId), str(self.uid),
                    safeText(MEME_TEXT.format(name=fields[0])) or "[meme]",
                ),
            )
        return None


class UqJavaChatFactory(MsgrChatFactory):
    """
    Builds L{UqJavaChatProtocol}s; keeps the ids of online users of other
    protocols and pushes new lists when they come and go.
    """

    def __init__(self, msgr: MsgrService, logins: UqJavaLogins, **kwargs) -> None:
        super().__init__(msgr, **kwargs)
        self.logins = logins
        self._watching = False

    def watchGuests(self) -> None:
        """Follow presence (from the first bind on), for guests' ids."""
        if not self._watching:
            self._watching = True
            for info in self.msgr.presence.users():
                self._presenceChanged(LOGIN, info, push=False)
            self.msgr.presence.addObserver(self._presenceChanged)

    def _presenceChanged(self, kind: str, info: UserInfo, push: bool = True) -> None:
        if kind not in (LOGIN, LOGOUT) or self.msgr.store.isProtectedName(info.name):
            return
        if kind == LOGIN:
            self.logins.guestJoined(info.name)
        else:
            self.logins.guestLeft(info.name)
        if push:
            for session in list(self.sessions()):
                session.pushFriends([])

    def sessions(self):
        for info in self.msgr.presence.users():
            session = self.msgr.presence.sessionFor(info.name)
            if isinstance(session, UqJavaChatProtocol):
                yield session

    def buildProtocol(self, addr) -> UqJavaChatProtocol:
        protocol = UqJavaChatProtocol(self.msgr, self.maxLine, self.maxFileSize, self.logins)
        protocol.factory = self
        return protocol
