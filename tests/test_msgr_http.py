"""
The MSGR HTTP API, driven through the real twisted.web Site (raw HTTP/1.1
over an in-memory transport) on a real SQLite file.
"""

import sqlite3

from twisted.internet import defer
from twisted.trial import unittest

from chatd.msgr import admin
from chatd.presence import NameProtected

from tests.test_msgr_helpers import TOKEN_IDLE, MsgrHarness, RecordingSession


def setBlocked(path: str, name: str, blocked: bool) -> None:
    connection = sqlite3.connect(path)
    try:
        admin.setBlocked(connection, name, blocked)
        connection.commit()
    finally:
        connection.close()


class LoginTests(unittest.TestCase):
    def setUp(self):
        self.h = MsgrHarness(self, accountFailures=3, addressFailures=5, window=60, lockTime=300)
        return self.h.register("Ana", "clave")

    def login(self, host="10.0.0.1", **fields):
        return self.h.form("/status", host=host, **fields)

    @defer.inlineCallbacks
    def test_success(self):
        response = yield self.login(usr="ana", **{"pass": "clave"})
        self.assertEqual(response.status, 200)
        self.assertEqual(response.headers["content-type"], "text/plain; charset=utf-8")
        code, sep, token = response.body.partition("||")
        self.assertEqual((code, sep), ("701", "||"))
        self.assertEqual(self.h.tokens.validate(token), "Ana")

    @defer.inlineCallbacks
    def test_fieldsNotSent(self):
        for fields in ({}, {"usr": "Ana"}, {"pass": "clave"}):
            response = yield self.login(**fields)
            self.assertEqual((response.status, response.body), (200, "901"), fields)

    @defer.inlineCallbacks
    def test_fieldsEmpty(self):
        for fields in ({"usr": "", "pass": "clave"}, {"usr": "Ana", "pass": ""}):
            response = yield self.login(**fields)
            self.assertEqual(response.body, "601", fields)

    @defer.inlineCallbacks
    def test_wrongPasswordAndUnknownUserLookTheSame(self):
        wrong = yield self.login(usr="Ana", **{"pass": "CLAVE"})
        unknown = yield self.login(usr="Nadie", **{"pass": "clave"})
        self.assertEqual((wrong.status, wrong.body), (200, "801"))
        self.assertEqual((unknown.status, unknown.body), (200, "801"))

    @defer.inlineCallbacks
    def test_blocked(self):
        setBlocked(self.h.path, "Ana", True)
        response = yield self.login(usr="Ana", **{"pass": "clave"})
        self.assertEqual(response.body, "802")
        # A wrong password on a blocked account does not reveal the block.
        response = yield self.login(usr="Ana", **{"pass": "mala"})
        self.assertEqual(response.body, "801")

    @defer.inlineCallbacks
    def test_accountLockout(self):
        for host in ("1.0.0.1", "1.0.0.2", "1.0.0.3"):
            response = yield self.login(host=host, usr="Ana", **{"pass": "mala"})
            self.assertEqual(response.body, "801")
        response = yield self.login(host="1.0.0.4", usr="Ana", **{"pass": "clave"})
        self.assertEqual(response.body, "802")
        self.h.clock.advance(300)
        response = yield self.login(host="1.0.0.4", usr="Ana", **{"pass": "clave"})
        self.assertEqual(response.body.split("||")[0], "701")

    @defer.inlineCallbacks
    def test_addressLockout(self):
        for i in range(5):
            yield self.login(host="6.6.6.6", usr=f"u{i}", **{"pass": "x"})
        response = yield self.login(host="6.6.6.6", usr="Ana", **{"pass": "clave"})
        self.assertEqual(response.body, "802")
        response = yield self.login(host="7.7.7.7", usr="Ana", **{"pass": "clave"})
        self.assertEqual(response.body.split("||")[0], "701")

    @defer.inlineCallbacks
    def test_jsonLogin(self):
        response = yield self.h.api("login", {"user": "Ana", "password": "clave"})
        body = response.json()
        self.assertEqual(response.headers["content-type"], "application/json")
        self.assertEqual(body["code"], 701)
        self.assertEqual(body["user"], "Ana")
        self.assertEqual(body["idle_timeout"], TOKEN_IDLE)
        self.assertEqual(self.h.tokens.validate(body["token"]), "Ana")
        response = yield self.h.api("login", {"user": "Ana", "password": "no"})
        self.assertEqual(response.json(), {"code": 801})
        response = yield self.h.api("login", {"user": "Ana"})
        self.assertEqual(response.json(), {"code": 901})
        response = yield self.h.api("login", {"user": "", "password": "x"})
        self.assertEqual(response.json(), {"code": 601})

    @defer.inlineCallbacks
    def test_badBodies(self):
        response = yield self.h.request("POST", "/api/login", b"{not json", {})
        self.assertEqual((response.status, response.json()), (400, {"code": 901}))
        response = yield self.h.request("POST", "/api/login", b"[1]", {})
        self.assertEqual((response.status, response.json()), (400, {"code": 901}))
        response = yield self.h.request("POST", "/status", b"usr=%ff&pass=x", {})
        self.assertEqual((response.status, response.body), (400, "901"))
        response = yield self.h.request("POST", "/status", b"x" * 70000, {})
        self.assertEqual((response.status, response.body), (400, "901"))

    @defer.inlineCallbacks
    def test_wrongMethodAndPath(self):
        response = yield self.h.request("GET", "/status")
        self.assertEqual((response.status, response.body), (405, "901"))
        self.assertEqual(response.headers["allow"], "POST")
        response = yield self.h.request("POST", "/nothing/here")
        self.assertEqual((response.status, response.body), (404, "404"))

    @defer.inlineCallbacks
    def test_anyOtherMethodIs405WithCode(self):
        """Not twisted.web's 501 HTML page: a 405 with the seed's code."""
        response = yield self.h.request("PUT", "/status")
        self.assertEqual((response.status, response.body), (405, "901"))
        response = yield self.h.request("DELETE", "/api/friends")
        self.assertEqual((response.status, response.json()), (405, {"code": 903}))

    @defer.inlineCallbacks
    def test_multipartIs400WithCode(self):
        """
        A multipart body (well-formed or not) is not read: 400 with the
        operation's missing code, not twisted.web's bare 400.
        """
        for body in [b"usr=", b"--x\r\nContent-Disposition: form-data; name=usr\r\n\r\nana\r\n--x--\r\n"]:
            response = yield self.h.request(
                "POST", "/status", body, {"Content-Type": "multipart/form-data; boundary=x"}
            )
            self.assertEqual((response.status, response.body), (400, "901"))


class RegisterTests(unittest.TestCase):
    def setUp(self):
        self.h = MsgrHarness(self)

    def register(self, **fields):
        return self.h.form("/usuariocrear", **fields)

    @defer.inlineCallbacks
    def test_register(self):
        response = yield self.register(
            usr="Ana",
            nombres="Ana",
            apellidos="Pérez",
            estado="ACTIVO",
            email="ana@example.org",
            **{"pass": "clave"},
        )
        self.assertEqual((response.status, response.body), (200, "702"))
        self.assertTrue(self.h.store.isProtectedName("ana"))
        account = yield self.h.store.getAccount("Ana")
        self.assertEqual(account.apellidos, "Pérez")
        yield self.h.login("Ana", "clave")

    @defer.inlineCallbacks
    def test_missing(self):
        for fields in ({}, {"usr": "Ana"}, {"pass": "x"}, {"usr": "", "pass": "x"}):
            response = yield self.register(**fields)
            self.assertEqual(response.body, "902", fields)

    @defer.inlineCallbacks
    def test_taken(self):
        yield self.h.register("Ana")
        response = yield self.register(usr="ANA", **{"pass": "x"})
        self.assertEqual(response.body, "803||the name ANA is taken\n")

    @defer.inlineCallbacks
    def test_badValues(self):
        for fields in (
            {"usr": "a b"},
            {"usr": "a&&b"},
            {"usr": "all"},
            {"usr": "x" * 33},
            {"usr": "ok", "email": "not an email"},
        ):
            response = yield self.register(**fields, **{"pass": "x"})
            # The code first, then the reason for people, and a newline.
            self.assertRegex(response.body, r"^803\|\|[^|\n]+\n$", fields)

    @defer.inlineCallbacks
    def test_nameOnlineElsewhereRefused(self):
        yield self.h.presence.login(RecordingSession("protobuf"), "Zoe", "1.2.3.4")
        response = yield self.register(usr="zoe", **{"pass": "x"})
        self.assertEqual(response.body, "803||the name is online\n")
        self.assertFalse(self.h.store.isProtectedName("Zoe"))

    @defer.inlineCallbacks
    def test_lookalikeOfOnlineNameRefused(self):
        """
        While José87 chats on protobuf, its other spellings and look-alikes
        cannot be registered (803), nor names with invisible characters.
        """
        yield self.h.presence.login(
            RecordingSession("protobuf"), "Jos\u00e987", "1.2.3.4"
        )
        for name in (
            "Jose\u030187",  # NFD
            "\uff2aos\u00e987",  # full-width J
            "J\u043es\u00e987",  # Cyrillic o
            "Jos\u00e987\u034f",
            "Jos\u00e987\u3164",
            "Jos\u00e987\u2800",
        ):
            response = yield self.register(usr=name, **{"pass": "x"})
            self.assertEqual(
                (response.status, response.body.split("||")[0]), (200, "803"), ascii(name)
            )
            self.assertFalse(self.h.store.isProtectedName(name), ascii(name))

    @defer.inlineCallbacks
    def test_lookalikeOfAccountRefused(self):
        yield self.h.register("Jos\u00e987")
        for name in ("Jose\u030187", "\uff2aos\u00e987", "J\u043es\u00e987"):
            response = yield self.register(usr=name, **{"pass": "x"})
            self.assertEqual(
                (response.status, response.body.split("||")[0]), (200, "803"), ascii(name)
            )
            # Nor may a client without its password chat under it.
            self.failureResultOf(
                self.h.presence.login(RecordingSession("protobuf"), name, "1.2.3.4"),
                NameProtected,
            )

    @defer.inlineCallbacks
    def test_clientCannotBlock(self):
        response = yield self.register(usr="Ana", bloqueado="true", **{"pass": "x"})
        self.assertEqual(response.body, "702")
        account = yield self.h.store.getAccount("Ana")
        self.assertFalse(account.bloqueado)

    @defer.inlineCallbacks
    def test_jsonRegister(self):
        response = yield self.h.api(
            "register", {"user": "Bea", "password": "pw", "names": "Bea", "status": "OCUPADO"}
        )
        self.assertEqual(response.json(), {"code": 702})
        account = yield self.h.store.getAccount("bea")
        self.assertEqual((account.nombres, account.estado), ("Bea", "OCUPADO"))
        response = yield self.h.api("register", {"user": "Bea", "password": "pw"})
        self.assertEqual(response.json()["code"], 803)
        response = yield self.h.api("register", {"user": "Cy"})
        self.assertEqual(response.json(), {"code": 902})


class TokenTests(unittest.TestCase):
    def setUp(self):
        self.h = MsgrHarness(self)
        return self.h.register("Ana")

    @defer.inlineCallbacks
    def test_everyCallNeedsAToken(self):
        for path in (
            "/usuariomodificar",
            "/obtenerusuarios",
            "/enviarsolicitud",
            "/aceptarsolicitud",
            "/rechazarsolicitud",
        ):
            response = yield self.h.form(path, usr="Ana", para="Bea", id="Bea")
            self.assertEqual((response.status, response.body), (401, "901"), path)
            response = yield self.h.form(path, token="forged", para="Bea")
            self.assertEqual((response.status, response.body), (401, "901"), path)
        for path in ("account", "friends", "friend-requests", "send-friend-request", "logout"):
            response = yield self.h.api(path, {"to": "Bea"})
            self.assertEqual((response.status, response.json()), (401, {"code": 901}), path)

    @defer.inlineCallbacks
    def test_tokenInFieldOrHeaderNotQuery(self):
        token = yield self.h.login("Ana")
        response = yield self.h.form("/obtenerusuarios", token=token)
        self.assertEqual((response.status, response.body), (200, "704||"))
        response = yield self.h.form(
            "/obtenerusuarios", headers={"Authorization": f"Bearer {token}"}
        )
        self.assertEqual((response.status, response.body), (200, "704||"))
        response = yield self.h.form(f"/obtenerusuarios?token={token}")
        self.assertEqual(response.status, 401)

    @defer.inlineCallbacks
    def test_tokenExpiresWhenIdle(self):
        token = yield self.h.login("Ana")
        self.h.clock.advance(TOKEN_IDLE - 1)
        response = yield self.h.form("/obtenerusuarios", token=token)
        self.assertEqual(response.status, 200)
        self.h.clock.advance(TOKEN_IDLE - 1)
        response = yield self.h.form("/obtenerusuarios", token=token)
        self.assertEqual(response.status, 200)
        self.h.clock.advance(TOKEN_IDLE)
        response = yield self.h.form("/obtenerusuarios", token=token)
        self.assertEqual((response.status, response.body), (401, "901"))

    @defer.inlineCallbacks
    def test_blockedAccountTokenRefused(self):
        token = yield self.h.login("Ana")
        setBlocked(self.h.path, "Ana", True)
        response = yield self.h.form("/obtenerusuarios", token=token)
        self.assertEqual((response.status, response.body), (403, "802"))
        setBlocked(self.h.path, "Ana", False)
        response = yield self.h.form("/obtenerusuarios", token=token)
        self.assertEqual((response.status, response.body), (401, "901"), "tokens revoked")

    @defer.inlineCallbacks
    def test_jsonLogout(self):
        token = yield self.h.login("Ana")
        response = yield self.h.api("logout", token=token)
        self.assertEqual(response.json(), {"code": 702})
        response = yield self.h.api("friends", token=token, method="GET")
        self.assertEqual(response.status, 401)

    @defer.inlineCallbacks
    def test_internalErrorAnswersACode(self):
        token = yield self.h.login("Ana")
        self.patch(self.h.store, "friends", lambda name: defer.fail(RuntimeError("disk on fire")))
        response = yield self.h.form("/obtenerusuarios", token=token)
        self.assertEqual((response.status, response.body), (200, "903||internal error\n"))
        self.assertNotIn("disk", response.body)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class UpdateTests(unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        self.h = MsgrHarness(self)
        yield self.h.register("Ana", nombres="Ana")
        yield self.h.register("Bea")
        self.token = yield self.h.login("Ana")

    def update(self, **fields):
        return self.h.form("/usuariomodificar", token=self.token, **fields)

    @defer.inlineCallbacks
    def test_update(self):
        response = yield self.update(usr="Ana", nombres="Ana María", email="a@b.co")
        self.assertEqual(response.body, "702")
        account = yield self.h.store.getAccount("Ana")
        self.assertEqual((account.nombres, account.email), ("Ana María", "a@b.co"))

    @defer.inlineCallbacks
    def test_changePassword(self):
        response = yield self.update(**{"pass": "nueva", "pass_actual": "secreto"})
        self.assertEqual(response.body, "702")
        response = yield self.h.form("/status", usr="Ana", **{"pass": "secreto"})
        self.assertEqual(response.body, "801")
        yield self.h.login("Ana", "nueva")

    @defer.inlineCallbacks
    def test_nothingToUpdate(self):
        for fields in ({}, {"usr": "Ana"}, {"bloqueado": "1"}, {"pass": ""}):
            response = yield self.update(**fields)
            self.assertEqual(response.body, "902", fields)

    @defer.inlineCallbacks
    def test_couldNot(self):
        response = yield self.update(usr="Bea", nombres="hacked")
        self.assertEqual(response.body, "803||you can only update your own account\n")
        account = yield self.h.store.getAccount("Bea")
        self.assertEqual(account.nombres, "")
        response = yield self.update(email="no-at-sign")
        self.assertEqual(response.body, "803||email is not an address\n")
        response = yield self.update(estado="x" * 65)
        self.assertEqual(response.body, "803||the status is longer than 64 characters\n")

    @defer.inlineCallbacks
    def test_json(self):
        response = yield self.h.api("account", {"surnames": "Pérez"}, token=self.token)
        self.assertEqual(response.json(), {"code": 702})
        response = yield self.h.api("account", {}, token=self.token)
        self.assertEqual(response.json(), {"code": 902})


class FriendTests(unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        self.h = MsgrHarness(self)
        self.tokens = {}
        for name in ("Ana", "Bea", "Cy"):
            yield self.h.register(name)
            self.tokens[name] = yield self.h.login(name)

    def call(self, path, who, **fields):
        return self.h.form(path, token=self.tokens[who], **fields)

    @defer.inlineCallbacks
    def test_sendAndAccept(self):
        response = yield self.call("/enviarsolicitud", "Ana", para="bea")
        self.assertEqual(response.body, "704")
        response = yield self.call("/obtenersolicitudes", "Bea")
        self.assertEqual(response.body, "704||Ana")
        response = yield self.call("/aceptarsolicitud", "Bea", id="Ana")
        self.assertEqual(response.body, "602")
        response = yield self.call("/obtenerusuarios", "Bea")
        self.assertEqual(response.body, "704||Ana offline")
        response = yield self.call("/obtenerusuarios", "Ana")
        self.assertEqual(response.body, "704||Bea offline")
        response = yield self.call("/aceptarsolicitud", "Bea", id="Ana")
        self.assertEqual(response.body, "804", "nothing pending any more")
        response = yield self.call("/enviarsolicitud", "Bea", para="Ana")
        self.assertEqual(response.body, "803||already friends\n")

    @defer.inlineCallbacks
    def test_reject(self):
        yield self.call("/enviarsolicitud", "Ana", para="Bea")
        response = yield self.call("/rechazarsolicitud", "Bea", de="Ana")
        self.assertEqual(response.body, "603")
        response = yield self.call("/obtenerusuarios", "Bea")
        self.assertEqual(response.body, "704||")
        response = yield self.call("/obtenersolicitudes", "Bea")
        self.assertEqual(response.body, "704||")

    @defer.inlineCallbacks
    def test_codes(self):
        response = yield self.call("/enviarsolicitud", "Ana", para="Nadie")
        self.assertEqual(response.body, "804")
        response = yield self.call("/enviarsolicitud", "Ana")
        self.assertEqual(response.body, "903")
        response = yield self.call("/enviarsolicitud", "Ana", para="Ana")
        self.assertEqual(response.body, "903||a request to oneself\n")
        response = yield self.call("/aceptarsolicitud", "Ana")
        self.assertEqual(response.body, "903")
        response = yield self.call("/rechazarsolicitud", "Ana", id="Cy")
        self.assertEqual(response.body, "804")

    @defer.inlineCallbacks
    def test_crossedRequestsMakeFriends(self):
        yield self.call("/enviarsolicitud", "Ana", para="Cy")
        response = yield self.call("/enviarsolicitud", "Cy", para="Ana")
        self.assertEqual(response.body, "602")
        response = yield self.call("/obtenerusuarios", "Ana")
        self.assertEqual(response.body, "704||Cy offline")

    @defer.inlineCallbacks
    def test_friendsWithPresence(self):
        yield self.h.befriend("Ana", "Bea", self.tokens["Ana"], self.tokens["Bea"])
        yield self.h.befriend("Ana", "Cy", self.tokens["Ana"], self.tokens["Cy"])
        yield self.h.store.update("Cy", {"estado": "OCUPADO"})
        client, _ = yield self.h.bound("Cy")
        response = yield self.call("/obtenerusuarios", "Ana")
        self.assertEqual(response.body, "704||Bea offline&&Cy online OCUPADO")
        response = yield self.h.api("friends", token=self.tokens["Ana"], method="GET")
        self.assertEqual(
            response.json(),
            {
                "code": 704,
                "friends": [
                    {"user": "Bea", "online": False, "status": None},
                    {"user": "Cy", "online": True, "status": "OCUPADO"},
                ],
            },
        )
        client.lose()

    @defer.inlineCallbacks
    def test_json(self):
        api, t = self.h.api, self.tokens
        response = yield api("send-friend-request", {"to": "Bea"}, token=t["Ana"])
        self.assertEqual(response.json(), {"code": 704})
        response = yield api("friend-requests", token=t["Bea"], method="GET")
        self.assertEqual(response.json(), {"code": 704, "requests": ["Ana"]})
        response = yield api("accept-friend-request", {"from": "Ana"}, token=t["Bea"])
        self.assertEqual(response.json(), {"code": 602})
        response = yield api("send-friend-request", {"to": "Bea"}, token=t["Cy"])
        response = yield api("reject-friend-request", {"from": "Cy"}, token=t["Bea"])
        self.assertEqual(response.json(), {"code": 603})
        response = yield api("send-friend-request", {}, token=t["Cy"])
        self.assertEqual(response.json(), {"code": 903})
        response = yield api("friends", token=t["Bea"])
        self.assertEqual(
            response.json(),
            {"code": 704, "friends": [{"user": "Ana", "online": False, "status": None}]},
        )
