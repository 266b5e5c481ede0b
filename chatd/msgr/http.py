"""
The MSGR UQ HTTP API on twisted.web.

Two faces of the same operations (L{chatd.msgr.service.MsgrService}):

  - the public Java server's paths (C{/status}, C{/usuariocrear}, ...):
    form-encoded C{POST}s answered with the seed's code, then C{||} and data
    where there is any, as C{text/plain};
  - English paths under C{/api/}: JSON objects in, JSON objects out, each
    with the same C{code}.

Every call but login and register needs a token, from the form field (or
JSON member) C{token} or an C{Authorization: Bearer} header; without a valid
one the answer is HTTP 401 with code C{901}. docs/msgr.md is the normative
description.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from io import BytesIO
from typing import Callable
from urllib.parse import parse_qsl

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import resource, server

from chatd.exporter import CountingSite, addResources
from chatd.metrics import MSGR_HTTP, ChatdMetrics
from chatd.msgr import codec
from chatd.msgr.accounts import Account
from chatd.msgr.service import (
    NO_CREDENTIALS,
    REQUEST_MISSING,
    UPDATE_MISSING,
    UPDATE_OK,
    FriendPresence,
    MsgrService,
    Outcome,
)
from chatd.web import Directory

log = Logger()

#: Largest request body read, in bytes.
MAX_BODY = 64 * 1024

#: Most form fields read from one body.
_MAX_FIELDS = 64

FORM = "form"
JSON = "json"

# English JSON member -> the Spanish field the operations use.
_ENGLISH = {
    "user": "usr",
    "password": "pass",
    "current_password": "pass_actual",
    "names": "nombres",
    "surnames": "apellidos",
    "email": "email",
    "status": "estado",
    "to": "para",
    "from": "de",
    "token": "token",
}


class BadBody(Exception):
    """A body that cannot be read as the call's format."""


def _friendItem(friend: FriendPresence) -> str:
    if friend.info is None:
        return f"{friend.name} offline"
    return f"{friend.name} online {friend.info.status}"


def _formBody(outcome: Outcome) -> str:
    data = outcome.data
    if "token" in data:
        return f"{outcome.code}||{data['token']}"
    if "friends" in data:
        return f"{outcome.code}||" + codec.joinList(map(_friendItem, data["friends"]))
    if "requests" in data:
        return f"{outcome.code}||" + codec.joinList(data["requests"])
    if "reason" in data:
        # The code stays first, as every seed client reads it (the Java
        # client: the first 3 characters of the last line; others split on
        # ||); the reason, for people, follows as a field of its own.
        return f"{outcome.code}||{codec.escape(data['reason'])}\n"
    return str(outcome.code)


def _jsonBody(outcome: Outcome, idleTimeout: float) -> dict:
    body: dict = {"code": outcome.code}
    data = outcome.data
    if "token" in data:
        body["token"] = data["token"]
        body["user"] = data["user"]
        body["idle_timeout"] = idleTimeout
    if "friends" in data:
        body["friends"] = [
            {
                "user": f.name,
                "online": f.info is not None,
                "status": None if f.info is None else f.info.status,
            }
            for f in data["friends"]
        ]
    if "requests" in data:
        body["requests"] = list(data["requests"])
    if "reason" in data:
        body["reason"] = data["reason"]
    return body


@dataclass
class _Call:
    """What an endpoint does: its operation and the code for missing input."""

    operation: Callable[..., defer.Deferred]
    missingCode: int
    authenticated: bool
    #: Whether the operation also takes the caller's token and address.
    withCaller: bool = False


class MsgrEndpoint(resource.Resource):
    """
    One MSGR call at one path, in one format (L{FORM} or L{JSON}).

    The answer is always a code: bad input, a bad token or an internal
    error never produce an HTML error page or a traceback.
    """

    isLeaf = True

    def __init__(
        self,
        msgr: MsgrService,
        call: _Call,
        style: str,
        allowGet: bool = False,
        maxBody: int = MAX_BODY,
    ) -> None:
        super().__init__()
        self.msgr = msgr
        self.call = call
        self.style = style
        self.allowGet = allowGet
        self.maxBody = maxBody

    def render(self, request: server.Request):
        # twisted.web answers a method without a render_ method with an HTML
        # page (501); here every other method gets a 405 with a seed code.
        method = request.method.decode("ascii", "replace")
        if not hasattr(self, "render_" + method):
            return self._methodNotAllowed(request)
        return resource.Resource.render(self, request)

    def render_POST(self, request: server.Request):
        return self._serve(request, readBody=True)

    def render_GET(self, request: server.Request):
        if not self.allowGet:
            return self._methodNotAllowed(request)
        return self._serve(request, readBody=False)

    def render_HEAD(self, request: server.Request):
        return self._methodNotAllowed(request)

    def _methodNotAllowed(self, request):
        request.setResponseCode(405)
        request.setHeader(b"allow", b"GET, POST" if self.allowGet else b"POST")
        return self._encode(request, Outcome(self.call.missingCode))

    def _serve(self, request: server.Request, readBody: bool):
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda f: gone.append(True))
        try:
            fields = self._fields(request) if readBody else {}
        except BadBody as e:
            log.info("bad MSGR request body: {reason}", reason=str(e))
            request.setResponseCode(400)
            return self._encode(request, Outcome(self.call.missingCode))
        d = defer.maybeDeferred(self._run, request, fields)

        def answer(result) -> None:
            if gone:
                return
            status, outcome = result
            request.setResponseCode(status)
            request.write(self._encode(request, outcome))
            request.finish()

        def failed(failure: Failure) -> None:
            log.failure("MSGR HTTP call failed", failure)
            if not gone:
                request.setResponseCode(500)
                request.write(self._encode(request, Outcome(self.call.missingCode)))
                request.finish()

        d.addCallback(answer).addErrback(failed)
        return server.NOT_DONE_YET

    @defer.inlineCallbacks
    def _run(self, request: server.Request, fields: dict[str, str]):
        call = self.call
        address = getattr(request.getClientAddress(), "host", "")
        if not call.authenticated:
            outcome = yield call.operation(fields, address)
            return 200, outcome
        token = self._token(request, fields)
        account = yield self.msgr.authenticateToken(token)
        if isinstance(account, Outcome):
            return (401 if account.code == NO_CREDENTIALS else 403), account
        if call.withCaller:
            outcome = yield call.operation(account, fields, token, address)
        else:
            outcome = yield call.operation(account, fields)
        return 200, outcome

    @staticmethod
    def _token(request: server.Request, fields: dict[str, str]) -> str | None:
        header = request.getHeader(b"authorization")
        if header:
            scheme, _, value = header.decode("latin-1").strip().partition(" ")
            if scheme.lower() == "bearer" and value.strip():
                return value.strip()
        return fields.get("token") or None

    def _fields(self, request: server.Request) -> dict[str, str]:
        if getattr(request, "multipart", False):
            raise BadBody("multipart bodies are not accepted")
        request.content.seek(0)
        body = request.content.read(self.maxBody + 1)
        if len(body) > self.maxBody:
            raise BadBody(f"the body is larger than {self.maxBody} bytes")
        if self.style == FORM:
            return self._formFields(body)
        return self._jsonFields(body)

    @staticmethod
    def _formFields(body: bytes) -> dict[str, str]:
        try:
            pairs = parse_qsl(
                body.decode("ascii"),
                keep_blank_values=True,
                strict_parsing=False,
                encoding="utf-8",
                errors="strict",
                max_num_fields=_MAX_FIELDS,
            )
        except (UnicodeDecodeError, ValueError) as e:
            raise BadBody(f"not a form: {e}") from None
        fields: dict[str, str] = {}
        for name, value in pairs:
            fields.setdefault(name, value)  # the first of repeated fields wins
        return fields

    @staticmethod
    def _jsonFields(body: bytes) -> dict[str, str]:
        if not body.strip():
            return {}
        try:
            document = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise BadBody(f"not JSON: {e}") from None
        if not isinstance(document, dict):
            raise BadBody("the JSON body is not an object")
        fields: dict[str, str] = {}
        for member, value in document.items():
            field = _ENGLISH.get(member)
            if field is not None and isinstance(value, str):
                fields[field] = value
        return fields

    def _encode(self, request: server.Request, outcome: Outcome) -> bytes:
        request.setHeader(b"cache-control", b"no-store")
        if self.style == FORM:
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return _formBody(outcome).encode("utf-8")
        request.setHeader(b"content-type", b"application/json")
        body = _jsonBody(outcome, self.msgr.tokens.idleTimeout)
        return json.dumps(body, ensure_ascii=False).encode("utf-8")


def makeResource(msgr: MsgrService, maxBody: int = MAX_BODY) -> resource.Resource:
    """The root resource of the MSGR HTTP API."""

    def login(fields, address):
        return msgr.login(fields.get("usr"), fields.get("pass"), address)

    def register(fields, address):
        return msgr.register(fields, address)

    def update(account: Account, fields, token, address):
        return msgr.update(account, fields, token, address)

    def friends(account: Account, fields):
        return msgr.friendsWithPresence(account)

    def pending(account: Account, fields):
        return msgr.pendingRequests(account)

    def send(account: Account, fields):
        return msgr.requestFriend(account.name, fields.get("para"))

    def requester(fields) -> str | None:
        # The Java client sends the requester's name as "id".
        return fields.get("id") or fields.get("de")

    def accept(account: Account, fields):
        return msgr.answerRequest(account.name, requester(fields), True)

    def reject(account: Account, fields):
        return msgr.answerRequest(account.name, requester(fields), False)

    calls = {
        "login": _Call(login, NO_CREDENTIALS, False),
        "register": _Call(register, UPDATE_MISSING, False),
        "update": _Call(update, UPDATE_MISSING, True, withCaller=True),
        "friends": _Call(friends, REQUEST_MISSING, True),
        "pending": _Call(pending, REQUEST_MISSING, True),
        "send": _Call(send, REQUEST_MISSING, True),
        "accept": _Call(accept, REQUEST_MISSING, True),
        "reject": _Call(reject, REQUEST_MISSING, True),
    }

    root = Directory()
    javaPaths = {
        b"status": "login",
        b"usuariocrear": "register",
        b"usuariomodificar": "update",
        b"obtenerusuarios": "friends",
        b"obtenersolicitudes": "pending",
        b"enviarsolicitud": "send",
        b"aceptarsolicitud": "accept",
        b"rechazarsolicitud": "reject",
    }
    for path, name in javaPaths.items():
        root.putChild(path, MsgrEndpoint(msgr, calls[name], FORM, maxBody=maxBody))

    api = Directory()
    root.putChild(b"api", api)
    englishPaths = {
        b"login": ("login", False),
        b"register": ("register", False),
        b"account": ("update", False),
        b"friends": ("friends", True),
        b"friend-requests": ("pending", True),
        b"send-friend-request": ("send", False),
        b"accept-friend-request": ("accept", False),
        b"reject-friend-request": ("reject", False),
    }
    for path, (name, allowGet) in englishPaths.items():
        api.putChild(
            path, MsgrEndpoint(msgr, calls[name], JSON, allowGet=allowGet, maxBody=maxBody)
        )
    api.putChild(b"logout", _LogoutEndpoint(msgr, maxBody=maxBody))
    return root


class _LogoutEndpoint(MsgrEndpoint):
    """C{POST /api/logout}: revoke the token the call carries."""

    def __init__(self, msgr: MsgrService, maxBody: int = MAX_BODY) -> None:
        # The operation needs the token itself, so _run is overridden.
        call = _Call(lambda account, fields: None, NO_CREDENTIALS, True)
        super().__init__(msgr, call, JSON, maxBody=maxBody)

    @defer.inlineCallbacks
    def _run(self, request, fields):
        token = self._token(request, fields)
        account = yield self.msgr.authenticateToken(token)
        if isinstance(account, Outcome):
            return (401 if account.code == NO_CREDENTIALS else 403), account
        yield defer.maybeDeferred(self.msgr.tokens.revoke, token)
        log.info(
            "{user} logged out over HTTP",
            protocol=MSGR_HTTP,
            user=account.name,
            event="logout",
        )
        return 200, Outcome(UPDATE_OK)


class MsgrRequest(server.Request):
    """
    A request whose multipart body twisted.web does not parse: a malformed one
    would be answered there with a bare 400 and no seed code. MSGR takes
    forms and JSON only, so such a request is answered 400 with the
    operation's code by L{MsgrEndpoint}.
    """

    multipart = False

    def gotLength(self, length: int | None) -> None:
        # The body is kept in memory, never in a temporary file, and only its
        # first maxBody + 1 bytes: a larger one is refused when it has
        # arrived (400 with the operation's code), whatever was sent.
        site = getattr(self.channel, "site", None)
        self._bodyRoom = getattr(site, "maxBody", MAX_BODY) + 1
        self.content = BytesIO()

    def handleContentChunk(self, data: bytes) -> None:
        room = self._bodyRoom
        if room > 0:
            self.content.write(data[:room])
            self._bodyRoom = room - len(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        contentType = self.requestHeaders.getRawHeaders(b"content-type", [b""])[0]
        if contentType.split(b";")[0].strip().lower() == b"multipart/form-data":
            self.multipart = True
            self.requestHeaders.setRawHeaders(
                b"content-type", [b"application/octet-stream"]
            )
        server.Request.requestReceived(self, command, path, version)


def makeSite(
    msgr: MsgrService,
    reactor=None,
    maxBody: int = MAX_BODY,
    metrics: ChatdMetrics | None = None,
    serveMetrics: bool = True,
    uqJavaLogins=None,
) -> server.Site:
    """
    A L{server.Site} serving L{makeResource}, without tracebacks, and
    C{/healthz} and (if C{serveMetrics}) C{/metrics} (L{chatd.exporter}); it
    counts its responses in C{metrics}: the server's, passed by the front,
    or (a test's site) a L{ChatdMetrics} of its own.

    With C{uqJavaLogins} (a L{chatd.msgr.uqjava.UqJavaLogins}), the form
    paths speak the uq-java dialect and the JSON API stays under C{/api/}.
    """
    if metrics is None:
        metrics = ChatdMetrics()
    root = makeResource(msgr, maxBody)
    if uqJavaLogins is not None:
        from chatd.msgr.uqjava import makeUqJavaResource

        root = makeUqJavaResource(msgr, uqJavaLogins, root.children[b"api"], maxBody)
    addResources(root, metrics, serveMetrics)
    site = CountingSite(
        root, metrics, "msgr-http", requestFactory=MsgrRequest, reactor=reactor
    )
    site.displayTracebacks = False
    site.noisy = False
    site.maxBody = maxBody
    site.requestTimeoutBody = b"803"  # MSGR's "could not", as for a 503
    return site
