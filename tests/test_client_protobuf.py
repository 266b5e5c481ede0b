"""
chatd-client protobuf in scripted mode against a real twistd (docs/client.md).
"""

from __future__ import annotations

import os

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from tests.test_client_support import ClientTestMixin
from tests.tls import makePKI, serverDescription


class ProtobufClientTests(ClientTestMixin, TestCase):
    @defer.inlineCallbacks
    def test_commandsAndArrivals(self):
        yield self.startServer(labels=["protobuf"])
        bob = yield self.loggedIn("protobuf", "bob")
        alice = yield self.script(
            "protobuf",
            "list\n"
            "info bob\n"
            "# a comment, and an empty line\n"
            "\n"
            "status OCUPADO\n"
            "msg bob hola, bob\n"
            "all hola a todos\n"
            "msg zed hi\n"
            "bogus\n"
            "msg bob\n",
            "--name", "alice",
        )
        self.assertEqual(
            alice.lines(),
            [
                "* logged in as alice (protobuf, tcp:127.0.0.1:%d)" % self.ports["protobuf"],
                "* 2 users online",
                "*   bob ACTIVO 127.0.0.1",
                "*   alice ACTIVO 127.0.0.1",
                "* bob is online, status ACTIVO, ip 127.0.0.1",
                "* status is now OCUPADO",
                "* delivered to bob",
                "* delivered to 1 user",
                "! not delivered: zed is not online",
                "! unknown command: bogus (help lists the commands)",
                "! usage: msg NAME TEXT",
            ],
        )
        # Something failed: the exit status says so.
        self.assertExit(alice, 1)

        yield bob.waitFor("[alice -> all] hola a todos")
        code = yield self.finish(bob, "list\n")
        self.assertEqual(code, 0)
        self.assertEqual(
            bob.lines(),
            [
                "* logged in as bob (protobuf, tcp:127.0.0.1:%d)" % self.ports["protobuf"],
                "[alice] hola, bob",
                "[alice -> all] hola a todos",
                "* 1 user online",
                "*   bob ACTIVO 127.0.0.1",
            ],
        )
        self.assertEqual(bob.stderr, "")

    @defer.inlineCallbacks
    def test_delimitedFraming(self):
        yield self.startServer("--protobuf-framing", "delimited", labels=["protobuf"])
        alice = yield self.script(
            "protobuf", "msg alice a mí mismo\nhelp msg\n", "--name", "alice", "--framing", "delimited"
        )
        self.assertExit(alice, 0)
        self.assertEqual(
            alice.lines()[1:],
            ["[alice] a mí mismo", "* delivered to alice", "* msg NAME TEXT: send TEXT to NAME"],
        )

    @defer.inlineCallbacks
    def test_expectAndQuit(self):
        """expect waits for an arrival; quit ends the script there."""
        yield self.startServer(labels=["protobuf"])
        bob = yield self.loggedIn("protobuf", "bob")
        bob.write("expect [alice] ping\nmsg alice pong\nquit\nmsg alice never\n")
        alice = yield self.loggedIn("protobuf", "alice")
        alice.write("msg bob ping\nexpect [bob] pong\n")
        code = yield bob.ended
        self.assertEqual(code, 0)
        self.assertEqual(bob.lines()[1:], ["[alice] ping", "* delivered to alice"])
        code = yield self.finish(alice)
        self.assertEqual(code, 0)
        self.assertEqual(alice.lines()[1:], ["* delivered to bob", "[bob] pong"])

    @defer.inlineCallbacks
    def test_loginRefused(self):
        yield self.startServer(labels=["protobuf"])
        alice = yield self.script("protobuf", "list\n", "--name", "all")
        self.assertExit(alice, 1)
        self.assertEqual(
            alice.lines(), ["! login refused: the name 'all' is reserved for broadcasts"]
        )

    @defer.inlineCallbacks
    def test_serverStops(self):
        """A client whose server goes away says so and exits with 1."""
        yield self.startServer(labels=["protobuf"])
        alice = yield self.loggedIn("protobuf", "alice")
        yield self.server.stop()
        code = yield alice.ended
        self.assertEqual(code, 1)
        self.assertEqual(
            alice.lines()[1:],
            ["! server: the server is shutting down", "! the connection was closed by the server"],
        )

    @defer.inlineCallbacks
    def test_tls(self):
        """--ca-file: TLS, with the server's certificate checked against that CA."""
        pki = makePKI(os.path.join(self.directory, "pki"))
        yield self.startServer(labels=["protobuf"], endpoints={"protobuf": serverDescription(pki)})
        alice = yield self.script("protobuf", "list\n", "--name", "alice", "--ca-file", pki.root)
        self.assertExit(alice, 0)
        self.assertEqual(
            alice.lines(),
            [
                "* logged in as alice (protobuf, tls:127.0.0.1:%d)" % self.ports["protobuf"],
                "* 1 user online",
                "*   alice ACTIVO 127.0.0.1",
            ],
        )
        # Another CA: the certificate is refused, nothing is logged in.
        other = makePKI(os.path.join(self.directory, "other"), rootName="another root")
        alice = yield self.script("protobuf", "list\n", "--name", "alice", "--ca-file", other.root)
        self.assertExit(alice, 1)
        self.assertEqual(alice.lines(), ["! login failed: TLS: certificate verify failed"])

    @defer.inlineCallbacks
    def test_noServer(self):
        """A port nobody listens on (the server's, once it is stopped)."""
        yield self.startServer(labels=["protobuf"])
        port = self.ports["protobuf"]
        yield self.server.stop()
        alice = yield self.script("protobuf", "list\n", "--name", "alice")
        self.assertExit(alice, 1)
        self.assertEqual(len(alice.lines()), 1)
        self.assertTrue(
            alice.lines()[0].startswith(f"! cannot connect to tcp:127.0.0.1:{port}: "),
            alice.lines(),
        )
