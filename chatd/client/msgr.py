"""
chatd-client for MSGR UQ (seed 001, docs/msgr.md): an account over the HTTP
API (register, log in, friends, status), then the chat socket bound with the
token, on the server's own line codec (L{chatd.msgr.codec}).

Every socket line is answered by a C{#RESPUESTA} carrying the line's number,
so each command knows its own answer even when friend operations are
answered out of order.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from io import BytesIO

from twisted.internet import defer
from twisted.internet.endpoints import connectProtocol
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, FileBodyProducer, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers

from chatd.client.base import (
    ChatClient,
    WriteQueue,
    WrongServer,
    describeError,
    loadTrustRoot,
)
from chatd.client.files import FileContentSender, Progress, saveWhole
from chatd.client.runner import Command, CommandError, arguments
from chatd.msgr import codec

#: The server's default ports: the chat socket and the HTTP API.
DEFAULT_PORT = 1234
DEFAULT_HTTP_PORT = 8000

#: Longest line read from the socket (a file is one line).
MAX_LINE = 64 * 1024 * 1024

#: Largest file sent (the server's own limit is usually lower: --msgr-max-file).
MAX_FILE = 48 * 1024 * 1024

# The seed's codes (docs/msgr.md).
REQUEST_ACCEPTED, REQUEST_REJECTED = 602, 603
LOGIN_OK, UPDATE_OK, SENT_OK = 701, 702, 704

_GENERAL = {
    601: "the name or the password is empty",
    801: "refused: wrong token or sender",
    802: "refused: the account is blocked",
    803: "refused",
    804: "no such user online",
    901: "refused: not logged in (no valid token)",
    902: "refused: information missing",
    903: "refused: missing or malformed information",
}


def _failed(code: int, specific: dict[int, str] | None = None) -> CommandError:
    text = (specific or {}).get(code) or _GENERAL.get(code) or "refused"
    return CommandError(f"{text} ({code})")


def _hostForUrl(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class MsgrHttp:
    """The JSON face of the MSGR HTTP API (C{/api/...})."""

    def __init__(self, reactor, baseUrl: str, caFile: str | None) -> None:
        self.baseUrl = baseUrl.rstrip("/")
        pool = HTTPConnectionPool(reactor, persistent=False)
        if self.baseUrl.startswith("https:"):
            policy = BrowserLikePolicyForHTTPS(trustRoot=loadTrustRoot(caFile))
            self.agent = Agent(reactor, contextFactory=policy, pool=pool)
        else:
            self.agent = Agent(reactor, pool=pool)

    @defer.inlineCallbacks
    def call(self, path: str, body: dict, token: str | None = None):
        """POST C{body} as JSON to C{path}; fires with the answer's JSON object."""
        headers = Headers({b"Content-Type": [b"application/json"]})
        if token is not None:
            headers.addRawHeader(b"Authorization", b"Bearer " + token.encode("ascii"))
        url = (self.baseUrl + path).encode("utf-8")
        try:
            response = yield self.agent.request(
                b"POST", url, headers, FileBodyProducer(BytesIO(json.dumps(body).encode("utf-8")))
            )
            data = yield readBody(response)
        except Exception as e:
            raise CommandError(f"HTTP {path}: {describeError(e)}") from None
        try:
            answer = json.loads(data)
            int(answer["code"])
        except (ValueError, KeyError, TypeError):
            raise CommandError(f"HTTP {path}: answered {response.code} without a code") from None
        return answer


class MsgrClientProtocol(Protocol):
    """Lines to and from the chat socket."""

    def __init__(self, client: "MsgrChatClient") -> None:
        self.client = client
        self.decoder = codec.LineDecoder(MAX_LINE)

    def dataReceived(self, data: bytes) -> None:
        if not self.client.peerSent(data):
            return
        for item in self.decoder.feed(data):
            if isinstance(item, codec.LineTooLong):
                self.client.console.error(f"a line from the server was dropped: {item}")
                continue
            try:
                line = codec.decodeLine(item)
            except codec.NotUtf8:
                self.client.console.error("a line from the server was dropped: not UTF-8")
                continue
            if line:
                self.client.lineReceived(line)

    def connectionLost(self, reason: Failure) -> None:
        self.client.connectionLost(reason)


class MsgrChatClient(ChatClient):
    """An MSGR UQ account, logged in and bound to the chat socket."""

    protocolName = "msgr"
    serverKind = "an MSGR chat socket"
    defaultPort = DEFAULT_PORT

    def __init__(self, options, console, reactor) -> None:
        super().__init__(options, console, reactor)
        self.name = options.name
        self.token: str | None = None
        self.protocol: MsgrClientProtocol | None = None
        self.outbound: WriteQueue | None = None
        self._lineId = 0
        self._answers: dict[int, defer.Deferred] = {}
        self._http: set[defer.Deferred] = set()
        scheme = "https" if options.tls else "http"
        url = options.http_url or f"{scheme}://{_hostForUrl(options.host)}:{options.http_port or DEFAULT_HTTP_PORT}"
        self.http = MsgrHttp(reactor, url, options.ca_file)

    def commands(self) -> list[Command]:
        return [
            Command("list", "your friends, online or not, with their status", self.listFriends),
            Command("info NAME", "whether your friend NAME is online, and their status", self.friendInfo),
            Command("status TEXT", "change your status", self.changeStatus),
            Command("msg NAME TEXT", "send TEXT to NAME", self.message),
            Command("all TEXT", "send TEXT to everyone online", self.broadcast),
            Command("send NAME PATH", "send the file PATH to NAME", self.sendFile),
            Command("img NAME PATH", "send the image PATH to NAME", self.sendImage),
            Command("meme NAME MEME", "send the meme called MEME to NAME", self.meme),
            Command("friend NAME", "ask NAME to be your friend", self.friendRequest),
            Command("accept NAME", "accept NAME's friend request", self.accept),
            Command("reject NAME", "reject NAME's friend request", self.reject),
            Command("requests", "who asked to be your friend", self.requests),
        ]

    def speaksOurs(self, data: bytes) -> bool:
        return data[:1] == b"#"  # every MSGR socket line

    # Logging in.

    def _httpCall(self, path: str, body: dict, token: bool = True) -> defer.Deferred:
        d = self.http.call(path, body, self.token if token else None)
        self._http.add(d)

        def done(result):
            self._http.discard(d)
            return result

        return d.addBoth(done)

    @defer.inlineCallbacks
    def connect(self):
        o = self.options
        credentials = {"user": self.name, "password": o.password}
        if o.register:
            answer = yield self._httpCall("/api/register", credentials, token=False)
            code = answer["code"]
            if code == UPDATE_OK:
                self.console.result(f"registered {self.name}")
            elif code == 803:
                self.console.result(f"{self.name} is registered already (or the name is taken); logging in")
            else:
                raise _failed(code, {902: "cannot register: information missing"})
        answer = yield self._httpCall("/api/login", credentials, token=False)
        code = answer["code"]
        if code != LOGIN_OK:
            raise CommandError(
                "login refused: "
                + str(_failed(code, {801: "no such user or wrong password", 802: "the account is blocked or locked out"}))
            )
        self.token = answer["token"]
        self.name = answer.get("user") or self.name
        port = o.port or DEFAULT_PORT
        self.protocol = MsgrClientProtocol(self)
        try:
            yield connectProtocol(self.connectEndpoint(port), self.protocol)
        except Exception as e:
            raise CommandError(f"cannot connect to {self.describe(port)}: {e}") from None
        self.transport = self.protocol.transport
        self.outbound = WriteQueue(self.transport)
        try:
            code = yield self.guardLogin(
                self._line("#HOLA", self.token, self.name, own=False), port
            )
        except WrongServer:
            raise
        except Exception as e:
            raise CommandError(f"binding the chat socket failed: {describeError(e)}") from None
        if code != LOGIN_OK:
            self.abort()
            raise CommandError(f"binding the chat socket failed: {_failed(code)}")
        self.console.result(f"logged in as {self.name} (msgr, {self.describe(port)}, {self.http.baseUrl})")

    # Lines.

    def _line(self, command: str, *fields: str, own: bool = True) -> defer.Deferred:
        """Send a line (C{own}: with the token and our name first); fires with its answer's code."""
        return self._writeLine(self._build(command, *fields, own=own))

    def _build(self, command: str, *fields: str, own: bool = True) -> bytes:
        if own:
            fields = (codec.RawField(self.token), self.name) + fields
        return codec.buildLine(command, *fields)

    def _writeLine(self, line: bytes, stream=None) -> defer.Deferred:
        if self._closed or self.outbound is None:
            return defer.fail(CommandError("not connected"))
        self._lineId += 1
        d: defer.Deferred = defer.Deferred()
        self._answers[self._lineId] = d
        if stream is None:
            self.outbound.write(line)
        else:
            self.outbound.stream(stream).addErrback(lambda f: None)
        return d

    def lineReceived(self, line: str) -> None:
        command = codec.splitFields(line, 2)[0]
        if command == "#RESPUESTA":
            self._answer(codec.splitFields(line))
        elif command == "#MSJ":
            fields = codec.splitFields(line, 5)
            if len(fields) == 5:
                sender, receiver, text = (codec.unescape(f) for f in fields[2:5])
                self.console.arrival(sender, text, "all" if receiver.lower() == "all" else None)
        elif command in ("#ARCHIVO", "#IMG"):
            self._fileArrived(command, codec.splitFields(line, 6))
        elif command == "#MEME":
            fields = codec.splitFields(line, 5)
            if len(fields) == 5:
                self.console.arrival(codec.unescape(fields[2]), f"meme {codec.unescape(fields[4])}")
        elif command == "#LISTA_USUARIOS":
            fields = codec.splitFields(line)
            names = codec.splitList(fields[3]) if len(fields) > 3 else []
            self.console.result("friends online: " + (", ".join(names) or "none"))
        elif command == "#SOLICITUDES":
            fields = codec.splitFields(line)
            names = codec.splitList(fields[3]) if len(fields) > 3 else []
            self.console.result("friend requests: " + (", ".join(names) or "none"))
        else:
            self.console.result(f"server: {line}")

    def _answer(self, fields: list[str]) -> None:
        try:
            lineId, command, code = int(fields[2]), codec.unescape(fields[3]), int(fields[5])
        except (IndexError, ValueError):
            self.console.error(f"an unreadable answer: {'||'.join(fields)}")
            return
        d = self._answers.pop(lineId, None)
        if d is not None:
            d.callback(code)
        elif command == "#DESCONECTAR" and code == 802:
            self.console.error("the account was blocked: the server closes the connection (802)")
        elif command == "#DESCONECTAR" and code == 901:
            self.console.error(
                "the session was revoked (the password was changed with another login,"
                " or an operator revoked it): the server closes the connection (901)"
            )
        elif command == "#DESCONECTAR":
            self.console.error(
                f"the server closes the connection: another login took this account over,"
                f" or the server is shutting down ({code})"
            )
        else:
            self.console.result(f"server: {command} answered {code}")

    def _fileArrived(self, command: str, fields: list[str]) -> None:
        if len(fields) != 6:
            self.console.error(f"an unreadable {command} line")
            return
        sender, filename = codec.unescape(fields[2]), codec.unescape(fields[4])
        try:
            content = base64.b64decode(fields[5], validate=True)
        except (binascii.Error, ValueError):
            self.console.error(f"{command} {filename} from {sender}: the content is not base64")
            return
        try:
            path = saveWhole(self.options.save_dir, filename, content)
        except OSError as e:
            self.console.error(f"cannot save {filename} from {sender}: {e.strerror}")
            return
        kind = "image" if command == "#IMG" else "file"
        self.console.arrival(sender, f"{kind} {filename} ({len(content)} bytes) saved as {path}")

    def connectionLost(self, reason: Failure) -> None:
        answers, self._answers = self._answers, {}
        for d in answers.values():
            d.errback(reason)
        if self.outbound is not None:
            self.outbound.fail(reason)
        super().connectionLost(reason)

    # Commands.

    def _expect(self, d: defer.Deferred, success: dict[int, str], failures: dict[int, str] | None = None) -> defer.Deferred:
        def check(code: int) -> None:
            if code in success:
                self.console.result(success[code])
            else:
                raise _failed(code, failures)

        return d.addCallback(check)

    def message(self, rest: str) -> defer.Deferred:
        name, text = arguments(rest, "msg NAME TEXT")
        return self._expect(
            self._line("#MSJ", name, text),
            {SENT_OK: f"delivered to {name}" if name.lower() != "all" else "sent to everyone online"},
            {804: f"{name} is not online", 803: f"not delivered to {name}: they are busy, or you send too fast", 903: "the message is empty"},
        )

    def broadcast(self, rest: str) -> defer.Deferred:
        (text,) = arguments(rest, "all TEXT")
        return self.message(f"all {text}")

    def sendFile(self, rest: str) -> defer.Deferred:
        name, path = arguments(rest, "send NAME PATH")
        return self._sendFile("#ARCHIVO", "file", name, path)

    def sendImage(self, rest: str) -> defer.Deferred:
        name, path = arguments(rest, "img NAME PATH")
        return self._sendFile("#IMG", "image", name, path)

    def _sendFile(self, command: str, kind: str, name: str, path: str) -> defer.Deferred:
        path = os.path.expanduser(path)
        filename = os.path.basename(path.rstrip("/"))
        if not filename:
            raise CommandError(f"send: no file name in {path}")
        if os.path.exists(path) and not os.path.isfile(path):
            raise CommandError(f"send: {path} is not a file")
        try:
            with open(path, "rb") as f:
                content = f.read(MAX_FILE + 1)
        except OSError as e:
            raise CommandError(f"send: cannot read {path}: {e.strerror}") from None
        if len(content) > MAX_FILE:
            raise CommandError(f"send: {path} is larger than {MAX_FILE} bytes")
        size = len(content)
        line = self._build(command, name, filename, codec.RawField(base64.b64encode(content).decode("ascii")))
        meters: list[Progress] = []

        def job(transport) -> defer.Deferred:
            meter = Progress(f"send {filename} -> {name}", size, self.reactor, self.console)
            meters.append(meter)
            sent = [0]

            def written(count: int) -> None:
                sent[0] += count
                meter.advance(sent[0] * size // len(line) - meter.done)

            d = FileContentSender(BytesIO(line), len(line), transport, written).start()

            def ended(result):
                meter.finish(not isinstance(result, Failure))
                return result

            return d.addBoth(ended)

        return self._expect(
            self._writeLine(line, stream=job),
            {SENT_OK: f"sent {filename} to {name} ({size} bytes)"},
            {
                803: f"{name} cannot take {filename}: too large, or their protocol takes no files",
                804: f"{name} is not online",
                903: f"{filename} was refused: a bad name or content",
            },
        )

    def meme(self, rest: str) -> defer.Deferred:
        name, meme = arguments(rest, "meme NAME MEME")
        return self._expect(
            self._line("#MEME", name, meme),
            {SENT_OK: f"sent meme {meme} to {name}"},
            {804: f"{name} is not online", 803: f"not delivered to {name}: they are busy, or you send too fast"},
        )

    def friendRequest(self, rest: str) -> defer.Deferred:
        (name,) = arguments(rest, "friend NAME")
        return self._expect(
            self._line("#SOLICITUD", name),
            {SENT_OK: f"friend request sent to {name}", REQUEST_ACCEPTED: f"{name} and you are friends now"},
            {803: f"cannot ask {name}: already friends, or not possible", 804: f"no such user: {name}", 903: f"cannot ask {name}"},
        )

    def accept(self, rest: str) -> defer.Deferred:
        (name,) = arguments(rest, "accept NAME")
        return self._expect(
            self._line("#ACEPTAR", name),
            {REQUEST_ACCEPTED: f"{name} and you are friends now"},
            {804: f"no friend request from {name}"},
        )

    def reject(self, rest: str) -> defer.Deferred:
        (name,) = arguments(rest, "reject NAME")
        return self._expect(
            self._line("#RECHAZAR", name),
            {REQUEST_REJECTED: f"rejected the friend request of {name}"},
            {804: f"no friend request from {name}"},
        )

    @defer.inlineCallbacks
    def _friends(self):
        answer = yield self._httpCall("/api/friends", {})
        if answer["code"] != SENT_OK:
            raise _failed(answer["code"])
        return answer.get("friends") or []

    @staticmethod
    def _describe(friend: dict) -> str:
        if friend.get("online"):
            return f"{friend.get('user')} online {friend.get('status')}"
        return f"{friend.get('user')} offline"

    def listFriends(self, rest: str) -> defer.Deferred:
        def show(friends) -> None:
            self.console.result(f"{len(friends)} friend{'' if len(friends) == 1 else 's'}")
            for friend in friends:
                self.console.result("  " + self._describe(friend))

        return self._friends().addCallback(show)

    def friendInfo(self, rest: str) -> defer.Deferred:
        (name,) = arguments(rest, "info NAME")

        def show(friends) -> None:
            for friend in friends:
                if str(friend.get("user", "")).casefold() == name.casefold():
                    self.console.result(self._describe(friend))
                    return
            raise CommandError(f"{name} is not your friend (MSGR tells about friends only)")

        return self._friends().addCallback(show)

    def requests(self, rest: str) -> defer.Deferred:
        def show(answer) -> None:
            if answer["code"] != SENT_OK:
                raise _failed(answer["code"])
            self.console.result("friend requests: " + (", ".join(answer.get("requests") or []) or "none"))

        return self._httpCall("/api/friend-requests", {}).addCallback(show)

    def changeStatus(self, rest: str) -> defer.Deferred:
        (status,) = arguments(rest, "status TEXT")

        def show(answer) -> None:
            if answer["code"] != UPDATE_OK:
                raise _failed(answer["code"], {803: f"the status {status!r} was refused"})
            self.console.result(f"status is now {status}")

        return self._httpCall("/api/account", {"status": status}).addCallback(show)

    # The end.

    def drain(self) -> defer.Deferred:
        waits = list(self._answers.values()) + list(self._http)
        if self.outbound is not None:
            waits.append(self.outbound.whenIdle())
        settled = []
        for d in waits:
            done: defer.Deferred = defer.Deferred()
            d.addBoth(lambda result, done=done: (done.callback(None), result)[1])
            settled.append(done)
        return defer.DeferredList(settled)

    @defer.inlineCallbacks
    def quit(self):
        """#DESCONECTAR: the server answers 702, revokes the token and closes."""
        if self._closed:
            return
        self.closedByUs = True
        try:
            yield self._line("#DESCONECTAR")
        except Exception:
            pass
        if not self._closed:
            self.transport.loseConnection()
        yield self.whenClosed()
