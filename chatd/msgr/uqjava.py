"""
The MSGR UQ reference dialect (C{--msgr-dialect uq-java}): the HTTP answers
the reference Java server gives and its Swing client understands
(/work/shared/notes/dialects.md section 3; docs/msgr.md, "The uq-java
dialect").

The client names users by numeric id (L{chatd.msgr.accounts}, schema 4),
sends no real token, and reads the first three characters of the last line
of each answer. Since it proves nothing but its address, an id is trusted
only from the address of a live C{/status} login of that id
(L{UqJavaLogins}).

The operations are the seed's (L{MsgrService}); only the wire differs.
"""

from __future__ import annotations

from typing import Callable

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import resource, server

from chatd.msgr.http import MAX_BODY, BadBody, MsgrEndpoint, _Call
from chatd.msgr.service import (
    BLOCKED,
    LOGIN_OK,
    NO_SUCH_USER,
    REQUEST_MISSING,
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

#: The marker line of /obtenerusuarios.
LIST_MARKER = "#LISTA_USUARIOS"


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

    def loggedIn(self, uid: int, address: str, token: str) -> None:
        """Record a successful login of C{uid} from C{address}."""
        old = self._logins.get((uid, address))
        if old is not None and old != token:
            self.tokens.revoke(old)
        self._logins[(uid, address)] = token

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
            raise BadBody("multipart bodies are not accepted")
        request.content.seek(0)
        body = request.content.read(self.maxBody + 1)
        if len(body) > self.maxBody:
            raise BadBody(f"the body is larger than {self.maxBody} bytes")
        return self._formFields(body)

    def _serve(self, request: server.Request, readBody: bool):
        # The client ignores the status: a refusal is a code like any other.
        request.setResponseCode = lambda code, message=None: None  # type: ignore
        return super()._serve(request, readBody)

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
