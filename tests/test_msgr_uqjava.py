"""
The MSGR UQ reference dialect (C{--msgr-dialect uq-java}) over the real
twisted.web Site, with requests written byte for byte as the Swing client
writes them (HTTP/1.0, no Host), and answers read as it reads them
(/work/shared/notes/dialects.md section 3).
"""

from __future__ import annotations

import base64
import sqlite3
from urllib.parse import urlencode

from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial import unittest

from chatd.msgr import accounts, admin
from chatd.msgr.http import makeSite
from chatd.msgr.uqjava import GUEST_IDS, UqJavaChatFactory, UqJavaLogins

from tests.test_msgr_accounts import databaseBefore
from tests.test_msgr_helpers import FAST_SCRYPT, HttpResponse, MsgrHarness, RecordingSession

#: The codes the client's whitelist reader keeps (dialects.md 3.3).
WHITELIST = {"200", "202", "203", "301", "101", "102", "103"}


class JavaAnswer:
    """An answer as the Swing client reads it."""

    def __init__(self, raw: bytes, closed: bool) -> None:
        self.raw = raw
        self.closed = closed
        self.response = HttpResponse(raw)
        # BufferedReader.readLine until EOF.
        self.lines = self.response.body.split("\n")
        if self.lines and self.lines[-1] == "":
            self.lines.pop()

    @property
    def last(self) -> str:
        return self.lines[-1] if self.lines else ""

    def code(self) -> str:
        """The code reader: the first 3 characters of the last line."""
        last = self.last
        if len(last) < 3:
            raise AssertionError(f"the client throws on the last line {last!r}")
        return last[:3]

    def loginId(self) -> int:
        """The whitelist reader, then Integer.valueOf(line.substring(5))."""
        assert self.code() in WHITELIST, self.last
        assert self.code() == "101", self.last
        return int(self.last[5:])

    def users(self) -> list[tuple[int, str]]:
        """The list reader: the lines after #LISTA_USUARIOS, split on ||."""
        found, rows = False, []
        for line in self.lines:
            if found and line:
                data = [t for t in line.split("|") if t]
                rows.append((int(data[0]), data[1]))
            elif "#LISTA_USUARIOS" in line:
                found = True
        return rows


def clientReads(line: str) -> tuple[str, list[str]]:
    """
    What the Swing client's reader thread does with one server line, or an
    AssertionError where it would throw (and never read another line):
    StringTokenizer on "|" after appending "\\n", then per type.
    """
    tokens = [t for t in (line + "\n").split("|") if t]
    assert len(tokens) >= 4, f"under 4 tokens: {line!r}"
    kind = tokens[0]
    if kind in ("#MSJ", "#LISTA_USUARIOS", "#SOLICITUDES"):
        assert len(tokens) >= 5, f"{kind} under 5 tokens: {line!r}"
    if kind in ("#LISTA_USUARIOS", "#SOLICITUDES"):
        entries = tokens[4].split("&&")
        while entries and entries[-1] == "":
            entries.pop()
        assert entries[-1] == "\n", f"not &&-terminated: {line!r}"
        entries = entries[:-1]
        assert entries, f"an empty list: {line!r}"
        for entry in entries:
            int(entry)  # clicked, parsed as an int
        return kind, entries
    if kind == "#ARCHIVO":
        assert len(tokens) >= 6, f"#ARCHIVO under 6 tokens: {line!r}"
        base64.b64decode(tokens[5], validate=True)
        assert "/" not in tokens[4] and "\\" not in tokens[4], tokens[4]
    return kind, tokens[1:]


class UqJavaHarness(MsgrHarness):
    """L{MsgrHarness} whose HTTP site speaks uq-java."""

    def __init__(self, testCase, **kwargs) -> None:
        super().__init__(testCase, **kwargs)
        self.logins = UqJavaLogins(self.tokens)
        self.site = makeSite(
            self.msgr, reactor=self.clock, metrics=self.msgr.metrics, uqJavaLogins=self.logins
        )
        self.factory = UqJavaChatFactory(
            self.msgr, self.logins, maxLine=4096, maxFileSize=1024, metrics=self.msgr.metrics
        )

    def javaLines(self, client) -> list[tuple[str, list[str]]]:
        """The lines a client got, each read as the Swing client reads it."""
        return [clientReads(line) for line in client.lines()]

    @defer.inlineCallbacks
    def hola(self, uid: int, host: str):
        client = self.connect(host)
        client.send(f"#HOLA||FQLSHP||{uid}||s3rv1d0r||{uid}\n\n")
        yield self.settle()
        return client

    def java(
        self, path: str, host: str = "10.0.0.1", rawBody: bytes | None = None, **fields
    ) -> defer.Deferred:
        """One request as the client sends it; fires with a L{JavaAnswer}."""
        body = urlencode(fields).encode() if rawBody is None else rawBody
        transport = StringTransport(peerAddress=IPv4Address("TCP", host, 50000))
        channel = self.site.buildProtocol(transport.getPeer())
        finished: list[defer.Deferred] = []
        original = channel.requestFactory

        def capture(*args, **kwargs):
            request = original(*args, **kwargs)
            finished.append(request.notifyFinish())
            return request

        channel.requestFactory = capture
        channel.makeConnection(transport)
        channel.dataReceived(
            b"POST %s HTTP/1.0\r\nContent-Length: %d\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n\r\n%s"
            % (path.encode(), len(body), body)
        )

        def done(_):
            closed = transport.disconnecting
            channel.connectionLost(Failure(ConnectionDone()))
            return JavaAnswer(transport.value(), closed)

        return finished[0].addCallback(done)

    @defer.inlineCallbacks
    def create(self, name: str, password: str = "secreto", **profile):
        fields = {"usr": name, "pass": password, "nombres": "", "apellidos": ""}
        fields.update(profile)
        fields.update(estado="1", bloqueado="0", email=f"{name}@uq.edu.co")
        answer = yield self.java("/usuariocrear", **fields)
        assert answer.code() == "102", answer.raw
        return answer

    @defer.inlineCallbacks
    def javaLogin(self, name: str, password: str = "secreto", host: str = "10.0.0.1"):
        answer = yield self.java("/status", host=host, usr=name, **{"pass": password})
        return answer.loginId()


class TransportTests(unittest.TestCase):
    def setUp(self):
        self.h = UqJavaHarness(self)

    @defer.inlineCallbacks
    def test_registerAnswersHttp10ClosedWithTheCodeLast(self):
        answer = yield self.h.create("juan", nombres="Juan Carlos", apellidos="Perez")
        self.assertTrue(answer.raw.startswith(b"HTTP/1.0 200 OK\r\n"), answer.raw)
        self.assertEqual(answer.response.headers["content-type"], "text/plain")
        self.assertEqual(answer.response.headers["content-length"], "4")
        self.assertTrue(answer.raw.endswith(b"\r\n\r\n102\n"), answer.raw)
        self.assertTrue(answer.closed)

    @defer.inlineCallbacks
    def test_registerRefusedIs202(self):
        yield self.h.create("juan")
        answer = yield self.h.java("/usuariocrear", usr="JUAN", **{"pass": "x"})
        self.assertEqual(answer.code(), "202")
        answer = yield self.h.java("/usuariocrear", usr="", **{"pass": ""})
        self.assertEqual(answer.code(), "202")

    @defer.inlineCallbacks
    def test_badBodyIsACodeNotAPage(self):
        answer = yield self.h.java("/status", rawBody=b"usr=\xff\xfe&pass=%ZZ")
        self.assertEqual(answer.code(), "200")
        self.assertEqual(answer.response.status, 200)
        answer = yield self.h.java("/nada")
        self.assertEqual(answer.response.status, 404)

    @defer.inlineCallbacks
    def test_jsonApiUnchanged(self):
        yield self.h.create("juan")
        response = yield self.h.api("login", {"user": "juan", "password": "secreto"})
        self.assertEqual(response.json()["code"], 701)


class LoginTests(unittest.TestCase):
    def setUp(self):
        self.h = UqJavaHarness(self)
        return defer.gatherResults([self.h.create("juan"), self.h.create("ana")])

    @defer.inlineCallbacks
    def test_loginGivesTheNumericId(self):
        juan = yield self.h.javaLogin("juan")
        ana = yield self.h.javaLogin("ANA")
        self.assertEqual(sorted([juan, ana]), [1, 2])
        answer = yield self.h.java("/status", usr="juan", **{"pass": "secreto"})
        self.assertEqual(answer.last, f"101||{juan}")

    @defer.inlineCallbacks
    def test_wrongPasswordIs200NeverTheSeedCodes(self):
        for fields in (
            {"usr": "juan", "pass": "mala"},
            {"usr": "nadie", "pass": "secreto"},
            {"usr": "", "pass": ""},
            {},
        ):
            answer = yield self.h.java("/status", **fields)
            self.assertEqual(answer.last, "200", fields)
            self.assertIn(answer.code(), WHITELIST)

    @defer.inlineCallbacks
    def test_blockedIs301(self):
        connection = sqlite3.connect(self.h.path)
        admin.setBlocked(connection, "ana", True)
        connection.commit()
        connection.close()
        answer = yield self.h.java("/status", usr="ana", **{"pass": "secreto"})
        self.assertEqual(answer.last, "301")


class FriendTests(unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        self.h = UqJavaHarness(self)
        yield self.h.create("juan", nombres="Juan", apellidos="Perez")
        yield self.h.create("ana", nombres="Ana|Maria", apellidos="Gomez")
        self.juan = yield self.h.javaLogin("juan", host="10.0.0.5")
        self.ana = yield self.h.javaLogin("ana", host="10.0.0.7")

    @defer.inlineCallbacks
    def test_directoryListsOthersAsTheClientParsesThem(self):
        answer = yield self.h.java("/obtenerusuarios", host="10.0.0.5", usuario_id=str(self.juan))
        self.assertEqual(answer.lines[0], "#LISTA_USUARIOS")
        self.assertEqual(answer.users(), [(self.ana, "[ana] Ana Maria Gomez")])

    @defer.inlineCallbacks
    def test_directoryOfSomeoneElsesIdIsRefused(self):
        answer = yield self.h.java("/obtenerusuarios", host="10.0.0.9", usuario_id=str(self.juan))
        self.assertEqual(answer.users(), [])
        self.assertEqual(answer.code(), "903")

    @defer.inlineCallbacks
    def test_requestAndAcceptByRequestId(self):
        answer = yield self.h.java(
            "/enviarsolicitud", host="10.0.0.5", de=str(self.juan), para=str(self.ana)
        )
        self.assertEqual(answer.last, "704")
        [(requestId, requester)] = yield self.h.store.pendingRequestIds("ana")
        self.assertEqual(requester, "juan")
        # Juan cannot accept his own request; nobody answers from elsewhere.
        answer = yield self.h.java("/aceptarsolicitud", host="10.0.0.5", id=str(requestId))
        self.assertEqual(answer.last, "904")
        answer = yield self.h.java("/aceptarsolicitud", host="10.0.0.7", id=f" {requestId}\n")
        self.assertEqual(answer.last, "602")
        friends = yield self.h.store.friends("juan")
        self.assertEqual(friends, ["ana"])
        answer = yield self.h.java("/aceptarsolicitud", host="10.0.0.7", id=str(requestId))
        self.assertEqual(answer.last, "904")

    @defer.inlineCallbacks
    def test_reject(self):
        yield self.h.java("/enviarsolicitud", host="10.0.0.5", de=str(self.juan), para=str(self.ana))
        [(requestId, _)] = yield self.h.store.pendingRequestIds("ana")
        answer = yield self.h.java("/rechazarsolicitud", host="10.0.0.7", id=str(requestId))
        self.assertEqual(answer.last, "603")
        for blank in ("", "\n", "x", "0"):
            answer = yield self.h.java("/rechazarsolicitud", host="10.0.0.7", id=blank)
            self.assertEqual(answer.last, "904", blank)

    @defer.inlineCallbacks
    def test_requestCodes(self):
        answer = yield self.h.java("/enviarsolicitud", host="10.0.0.5", de=str(self.juan), para="99")
        self.assertEqual(answer.last, "804")
        answer = yield self.h.java(
            "/enviarsolicitud", host="10.0.0.9", de=str(self.juan), para=str(self.ana)
        )
        self.assertEqual(answer.last, "903")
        self.assertEqual((yield self.h.store.pendingRequestIds("ana")), [])

    @defer.inlineCallbacks
    def test_loginExpiresWithTheTokenIdle(self):
        self.h.clock.advance(self.h.tokens.idleTimeout + 1)
        answer = yield self.h.java(
            "/enviarsolicitud", host="10.0.0.5", de=str(self.juan), para=str(self.ana)
        )
        self.assertEqual(answer.last, "903")

    @defer.inlineCallbacks
    def test_revokedLoginNoLongerBinds(self):
        self.h.msgr.revokeTokens("juan")
        answer = yield self.h.java(
            "/enviarsolicitud", host="10.0.0.5", de=str(self.juan), para=str(self.ana)
        )
        self.assertEqual(answer.last, "903")

    @defer.inlineCallbacks
    def test_updateBothSpellings(self):
        for path in ("/usuarimodificar", "/usuariomodificar"):
            answer = yield self.h.java(
                path, host="10.0.0.5", usr="juan", **{"pass": "secreto"},
                nombres="Juan " + path[-6:], apellidos="P", estado="Conectado", bloqueado="0",
            )
            self.assertEqual(answer.last, "103", path)
            account = yield self.h.store.getAccount("juan")
            self.assertEqual(account.nombres, "Juan " + path[-6:])
        answer = yield self.h.java(
            "/usuarimodificar", host="10.0.0.9", usr="juan", nombres="Intruso"
        )
        self.assertEqual(answer.last, "203")


class OptionTests(unittest.TestCase):
    def test_dialectOption(self):
        from twisted.python import usage

        from chatd import tap

        options = tap.Options()
        options.parseOptions([])
        self.assertEqual(options["msgr-dialect"], "seed")
        options = tap.Options()
        options.parseOptions(["--msgr-dialect", "uq-java"])
        self.assertEqual(options["msgr-dialect"], "uq-java")
        with self.assertRaises(usage.UsageError) as caught:
            tap.Options().parseOptions(["--msgr-dialect", "java"])
        self.assertIn("seed, uq-java", str(caught.exception))


class LoginsTests(unittest.TestCase):
    def test_expiredLoginsAreSwept(self):
        from twisted.internet.task import Clock

        from chatd.msgr.tokens import TokenRegistry

        clock = Clock()
        tokens = TokenRegistry(clock, 10)
        logins = UqJavaLogins(tokens)
        for n in range(63):
            logins.loggedIn(1, f"10.0.{n}.1", tokens.issue("juan"))
        clock.advance(11)
        logins.loggedIn(1, "10.9.9.9", tokens.issue("juan"))
        self.assertEqual(len(logins), 1)
        self.assertEqual(logins.nameFor(1, "10.9.9.9"), "juan")
        self.assertIsNone(logins.nameFor(1, "10.0.0.1"))


class IdMigrationTests(unittest.TestCase):
    def test_existingAccountsGetIdsInRegistrationOrder(self):
        path = self.mktemp() + ".sqlite3"
        connection = databaseBefore(path, accounts._numericIds)
        cursor = connection.cursor()
        for name in ("zoe", "ana", "bea"):
            cursor.execute(
                "INSERT INTO accounts (name_key, name, password, skeleton)"
                " VALUES (?, ?, 'x', ?)",
                (name, name, accounts.nameSkeleton(name)),
            )
        cursor.execute("DELETE FROM accounts WHERE name = 'bea'")
        connection.close()
        self.assertEqual(sorted(accounts.prepareDatabase(path)), ["ana", "zoe"])
        connection = accounts.connect(path)
        self.addCleanup(connection.close)
        ids = dict(connection.execute("SELECT name, uid FROM accounts"))
        self.assertEqual(ids, {"zoe": 1, "ana": 2})
        # New accounts continue the sequence, also those chatd-admin makes,
        # and a deleted account's id is never given again.
        admin.createAccount(connection, "carl", "pw", {}, scrypt=FAST_SCRYPT)
        connection.execute("DELETE FROM accounts WHERE name = 'carl'")
        admin.createAccount(connection, "dani", "pw", {}, scrypt=FAST_SCRYPT)
        ids = dict(connection.execute("SELECT name, uid FROM accounts"))
        self.assertEqual(ids, {"zoe": 1, "ana": 2, "dani": 4})


class SocketTests(unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        self.h = UqJavaHarness(self)
        yield self.h.create("juan")
        yield self.h.create("ana")
        self.juan = yield self.h.javaLogin("juan", host="10.0.0.5")
        self.ana = yield self.h.javaLogin("ana", host="10.0.0.7")

    @defer.inlineCallbacks
    def befriend(self):
        yield self.h.java("/enviarsolicitud", host="10.0.0.5", de=str(self.juan), para=str(self.ana))
        [(requestId, _)] = yield self.h.store.pendingRequestIds("ana")
        answer = yield self.h.java("/aceptarsolicitud", host="10.0.0.7", id=str(requestId))
        assert answer.last == "602", answer.raw
        yield self.h.settle()

    @defer.inlineCallbacks
    def test_holaFromAnotherAddressIsRefused(self):
        client = yield self.h.hola(self.juan, "10.0.0.9")
        self.assertTrue(client.closed)
        self.assertIsNone(self.h.presence.lookup("juan"))
        client.lose()

    @defer.inlineCallbacks
    def test_holaAfterTheLoginExpiredIsRefused(self):
        self.h.clock.advance(self.h.tokens.idleTimeout + 1)
        client = yield self.h.hola(self.juan, "10.0.0.5")
        self.assertTrue(client.closed)
        client.lose()

    @defer.inlineCallbacks
    def test_noFriendsNoRequestsNoLine(self):
        client = yield self.h.hola(self.juan, "10.0.0.5")
        self.assertFalse(client.closed)
        self.assertEqual(self.h.presence.lookup("juan").protocol, "msgr")
        # Only the bind's answer, which the client ignores; no empty list.
        self.assertEqual([kind for kind, _ in self.h.javaLines(client)], ["#RESPUESTA"])
        client.send("\n\n\n")
        self.assertEqual(client.lines(), [])
        client.lose()

    @defer.inlineCallbacks
    def test_requestsThenFriendsArePushedWithIds(self):
        ana = yield self.h.hola(self.ana, "10.0.0.7")
        juan = yield self.h.hola(self.juan, "10.0.0.5")
        ana.lines(), juan.lines()
        yield self.h.java("/enviarsolicitud", host="10.0.0.5", de=str(self.juan), para=str(self.ana))
        yield self.h.settle()
        [(requestId, _)] = yield self.h.store.pendingRequestIds("ana")
        self.assertEqual(self.h.javaLines(ana), [("#SOLICITUDES", [str(requestId)])])
        yield self.h.java("/aceptarsolicitud", host="10.0.0.7", id=str(requestId))
        yield self.h.settle()
        self.assertIn(("#LISTA_USUARIOS", [str(self.juan)]), self.h.javaLines(ana))
        self.assertIn(("#LISTA_USUARIOS", [str(self.ana)]), self.h.javaLines(juan))
        ana.lose(), juan.lose()

    @defer.inlineCallbacks
    def test_messagesBothWays(self):
        yield self.befriend()
        ana = yield self.h.hola(self.ana, "10.0.0.7")
        juan = yield self.h.hola(self.juan, "10.0.0.5")
        ana.lines(), juan.lines()
        juan.send(f"#MSJ||FQLSHP||{self.juan}||{self.ana}||Hola ;) a|b\n\n")
        self.assertEqual(
            ana.lines(), [f"#MSJ||tokenOK||{self.juan}||{self.ana}||Hola ;) a|b"]
        )
        ana.send(f"#MSJ||FQLSHP||{self.ana}||{self.juan}||xD\n\n")
        self.assertEqual(self.h.javaLines(ana)[0][1][-1], "704\n")
        [line] = [l for l in juan.lines() if l.startswith("#MSJ")]
        self.assertEqual(clientReads(line), ("#MSJ", ["tokenOK", str(self.ana), str(self.juan), "xD\n"]))
        # An id that was not offered, or a sender id that is not yours: refused.
        juan.send(f"#MSJ||FQLSHP||{self.juan}||99||hola\n\n")
        juan.send(f"#MSJ||FQLSHP||{self.ana}||{self.juan}||hola\n\n")
        self.assertEqual(
            [fields[-1].strip() for _, fields in self.h.javaLines(juan)], ["804", "903"]
        )
        self.assertEqual(ana.lines(), [])
        ana.lose(), juan.lose()

    @defer.inlineCallbacks
    def test_latin1BothWays(self):
        """
        The client writes ISO-8859-1 bytes: "José ñ" reaches a protobuf user
        as such (it was refused as not UTF-8); text to the client goes out
        in ISO-8859-1, a character past U+00FF as "?".
        """
        tux = RecordingSession("protobuf")
        yield self.h.presence.login(tux, "tux", "10.1.1.1")
        juan = yield self.h.hola(self.juan, "10.0.0.5")
        juan.transport.clear()
        juan.send(f"#MSJ||FQLSHP||{self.juan}||{GUEST_IDS}||Jos\u00e9 \u00f1\n\n".encode("latin-1"))
        self.assertEqual([(m.sender, m.text) for m in tux.messages], [("juan", "Jos\u00e9 \u00f1")])
        juan.transport.clear()
        self.h.presence.sendMessage(tux, "juan", "ma\u00f1ana \u20ac")
        self.assertEqual(
            juan.transport.value(),
            f"#MSJ||tokenOK||{GUEST_IDS}||{self.juan}||ma\u00f1ana ?\n".encode("latin-1"),
        )
        juan.lose()

    @defer.inlineCallbacks
    def test_guestOfAnotherProtocol(self):
        tux = RecordingSession("protobuf")
        yield self.h.presence.login(tux, "tux", "10.1.1.1")
        juan = yield self.h.hola(self.juan, "10.0.0.5")
        lists = [fields for kind, fields in self.h.javaLines(juan) if kind == "#LISTA_USUARIOS"]
        self.assertEqual(lists, [[str(GUEST_IDS)]])
        juan.send(f"#MSJ||FQLSHP||{self.juan}||{GUEST_IDS}||hola tux\n\n")
        self.assertEqual([(m.sender, m.text) for m in tux.messages], [("juan", "hola tux")])
        self.h.presence.sendMessage(tux, "juan", "linea1\nlinea2")
        self.h.presence.sendMessage(tux, "juan", "|||")
        self.h.presence.sendFile(tux, "juan", "../fotos/a|b.png", b"\x89PNG")
        lines = juan.lines()
        self.assertEqual(
            lines[-3:],
            [
                f"#MSJ||tokenOK||{GUEST_IDS}||{self.juan}||linea1 linea2",
                f"#MSJ||tokenOK||{GUEST_IDS}||{self.juan}||///",
                f"#ARCHIVO||tokenOK||{GUEST_IDS}||{self.juan}||a_b.png||iVBORw==||",
            ],
        )
        for line in lines:
            clientReads(line)
        # Gone: the list is pushed without it (and so no line at all).
        self.h.presence.logout(tux)
        yield self.h.settle()
        self.assertEqual(juan.lines(), [])
        juan.send(f"#MSJ||FQLSHP||{self.juan}||{GUEST_IDS}||hola\n\n")
        self.assertEqual([f[-1].strip() for _, f in self.h.javaLines(juan)], ["804"])
        juan.lose()

    @defer.inlineCallbacks
    def test_desconectarEndsTheLogin(self):
        juan = yield self.h.hola(self.juan, "10.0.0.5")
        juan.send(f"#DESCONECTAR||FQLSHP||{self.juan}||s3rv1d0r||{self.juan}\n\n")
        self.assertTrue(juan.closed)
        juan.lose()
        again = yield self.h.hola(self.juan, "10.0.0.5")
        self.assertTrue(again.closed)
        again.lose()
