"""
chatd-client msgr in scripted mode against a real twistd (docs/client.md):
accounts over HTTP, friends, messages, a file with its progress, and a file
name chosen by a hostile sender.
"""

from __future__ import annotations

import base64
import json
import os

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.trial.unittest import TestCase

from chatd.msgr import codec
from tests.test_client_support import ClientTestMixin
from tests.tls import makePKI, serverDescription
from tests.twistd import ByteCollector


class MsgrClientTests(ClientTestMixin, TestCase):
    def account(self, name: str, *args: str) -> tuple[str, ...]:
        return ("--name", name, "--password", f"clave-{name}", *args)

    @defer.inlineCallbacks
    def post(self, path: str, body: dict) -> dict:
        """One JSON call to the HTTP API (HTTP/1.0: the server closes after it)."""
        client = ByteCollector()
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.ports["msgr-http"]), client)
        data = json.dumps(body).encode()
        client.transport.write(
            b"POST " + path.encode() + b" HTTP/1.0\r\nHost: localhost\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(data) + data
        )
        yield client.closed
        return json.loads(client.received.partition(b"\r\n\r\n")[2])

    @defer.inlineCallbacks
    def test_friendsMessagesAndFile(self):
        ports = yield self.startServer(labels=["msgr", "msgr-http"])
        content = os.urandom(200 * 1024)
        path = os.path.join(self.directory, "foto.jpg")
        with open(path, "wb") as f:
            f.write(content)
        inbox = os.path.join(self.directory, "inbox")
        bea = yield self.loggedIn("msgr", "bea", "--password", "clave-bea", "--register", "--save-dir", inbox)
        ana = yield self.loggedIn("msgr", "ana", "--password", "clave-ana", "--register")
        ana.write(
            "friend bea\n"
            "expect friends online: bea\n"
            "list\n"
            "info bea\n"
            "info zed\n"
            "status OCUPADO\n"
            "msg bea hola || bea\n"
            "msg zed hola\n"
            f"send bea {path}\n"
            "meme bea gato\n"
            "all hola a todos\n"
        )
        yield bea.waitFor("* friend requests: ana")
        bea.write("accept ana\n")
        yield bea.waitFor("[ana -> all] hola a todos")
        code = yield self.finish(ana)
        self.assertEqual(code, 1)
        http = f"http://127.0.0.1:{ports['msgr-http']}"
        self.assertEqual(
            ana.lines(),
            [
                "* registered ana",
                f"* logged in as ana (msgr, tcp:127.0.0.1:{ports['msgr']}, {http})",
                "* friends online: none",
                "* friend requests: none",
                "* friend request sent to bea",
                "* friends online: bea",
                "* 1 friend",
                "*   bea online ACTIVO",
                "* bea online ACTIVO",
                "! zed is not your friend (MSGR tells about friends only)",
                "* status is now OCUPADO",
                "* delivered to bea",
                "! zed is not online (804)",
                "* sent foto.jpg to bea (204800 bytes)",
                "* sent meme gato to bea",
                "* sent to everyone online",
            ],
        )
        sent = [line for line in ana.stderr.splitlines() if line.startswith("send foto.jpg -> bea [")]
        self.assertRegex(sent[0], r"   0% 0 B/200\.0 KiB --/s ETA --:--$")
        self.assertRegex(sent[-1], r"\[#{20}\] 100% 200\.0 KiB/200\.0 KiB .* in \d+:\d\d$")

        code = yield self.finish(bea, "list\nrequests\n")
        self.assertEqual(code, 0)
        self.assertEqual(
            bea.lines(),
            [
                "* registered bea",
                f"* logged in as bea (msgr, tcp:127.0.0.1:{ports['msgr']}, {http})",
                "* friends online: none",
                "* friend requests: none",
                "* friend requests: ana",
                "* friends online: ana",
                "* friend requests: none",
                "* ana and you are friends now",
                "[ana] hola || bea",
                f"[ana] file foto.jpg (204800 bytes) saved as {inbox}/foto.jpg",
                "[ana] meme gato",
                "[ana -> all] hola a todos",
                # ana logged out at the end of its input.
                "* friends online: none",
                "* 1 friend",
                "*   ana offline",
                "* friend requests: none",
            ],
        )
        self.assertEqual(self.saved(inbox), {"foto.jpg": content})
        # Logging out revoked ana's token: the account is still there.
        self.assertEqual((yield self.post("/api/login", {"user": "ana", "password": "clave-ana"}))["code"], 701)

    @defer.inlineCallbacks
    def test_hostileFileName(self):
        yield self.startServer(labels=["msgr", "msgr-http"])
        inbox = os.path.join(self.directory, "inbox")
        bea = yield self.loggedIn("msgr", "bea", "--password", "b", "--register", "--save-dir", inbox)
        self.assertEqual((yield self.post("/api/register", {"user": "evil", "password": "e"}))["code"], 702)
        token = (yield self.post("/api/login", {"user": "evil", "password": "e"}))["token"]
        evil = ByteCollector()
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.ports["msgr"]), evil)
        self.addCleanup(lambda: (evil.transport.loseConnection(), evil.closed)[1])
        evil.transport.write(codec.buildLine("#HOLA", token, "evil"))
        for name in ["../../etc/x", "..", "/x"]:
            evil.transport.write(
                codec.buildLine(
                    "#ARCHIVO", codec.RawField(token), "evil", "bea", name,
                    codec.RawField(base64.b64encode(name.encode()).decode()),
                )
            )
        yield bea.waitFor(f"[evil] file /x (2 bytes) saved as {inbox}/x (1)")
        code = yield self.finish(bea)
        self.assertEqual(code, 0)
        self.assertEqual(self.saved(inbox), {"x": b"../../etc/x", "file": b"..", "x (1)": b"/x"})
        self.assertIn(f"[evil] file ../../etc/x (11 bytes) saved as {inbox}/x", bea.lines())

    @defer.inlineCallbacks
    def test_sessionRevokedByAPasswordChange(self):
        """
        The owner changes the password from another login: the client's
        socket is closed with 901, and the client says why.
        """
        yield self.startServer(labels=["msgr", "msgr-http"])
        thief = yield self.loggedIn("msgr", "ana", "--password", "clave-ana", "--register")
        owner = (yield self.post("/api/login", {"user": "ana", "password": "clave-ana"}))["token"]
        changed = yield self.post(
            "/api/account",
            {"token": owner, "password": "nueva", "current_password": "clave-ana"},
        )
        self.assertEqual(changed, {"code": 702})
        yield thief.waitFor(
            "! the session was revoked (the password was changed with another login,"
            " or an operator revoked it): the server closes the connection (901)"
        )
        yield self.finish(thief)

    @defer.inlineCallbacks
    def test_loginRefused(self):
        yield self.startServer(labels=["msgr", "msgr-http"])
        ana = yield self.script("msgr", "list\n", *self.account("ana"))
        self.assertExit(ana, 1)
        self.assertEqual(ana.lines(), ["! login refused: no such user or wrong password (801)"])
        # --register, then a second run: the account exists, it logs in.
        ana = yield self.script("msgr", "", *self.account("ana", "--register"))
        self.assertExit(ana, 0)
        ana = yield self.script("msgr", "send\nfriend ana\n", *self.account("ana", "--register"))
        self.assertExit(ana, 1)
        # The server's two pushes after the login come when they come:
        # before or among the answers to what the script typed.
        pushes = ["* friends online: none", "* friend requests: none"]
        lines = ana.lines()
        self.assertEqual(sorted(line for line in lines if line in pushes), sorted(pushes))
        self.assertEqual(
            [line for line in lines if line not in pushes],
            [
                "* ana is registered already (or the name is taken); logging in",
                f"* logged in as ana (msgr, tcp:127.0.0.1:{self.ports['msgr']}, http://127.0.0.1:{self.ports['msgr-http']})",
                "! usage: send NAME PATH",
                "! cannot ask ana (903)",
            ],
        )
        self.assertGreater(lines.index(pushes[0]), 1)  # after the login

    @defer.inlineCallbacks
    def test_tls(self):
        """--ca-file: HTTPS for the API and TLS for the socket, both checked against that CA."""
        pki = makePKI(os.path.join(self.directory, "pki"))
        tls = serverDescription(pki)
        yield self.startServer(labels=["msgr", "msgr-http"], endpoints={"msgr": tls, "msgr-http": tls})
        ana = yield self.script("msgr", "list\n", *self.account("ana", "--register", "--ca-file", pki.root))
        self.assertExit(ana, 0)
        self.assertEqual(
            ana.lines(),
            [
                "* registered ana",
                f"* logged in as ana (msgr, tls:127.0.0.1:{self.ports['msgr']}, https://127.0.0.1:{self.ports['msgr-http']})",
                "* friends online: none",
                "* friend requests: none",
                "* 0 friends",
            ],
        )
