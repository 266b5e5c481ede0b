"""
What was committed survives a crash: a real `twistd -n chatd` is killed with
SIGKILL after accounts and a friendship were made over HTTP, and a new process
on the same database still has them.
"""

from __future__ import annotations

import os
from urllib.parse import urlencode

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.trial.unittest import TestCase

from tests.twistd import ByteCollector, TwistdProcess


def _response(data: bytes):
    """A whole HTTP/1.0-style response (the server closes after it): its body."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return None
    return head.split(b" ", 2)[1], body


class DurabilityTests(TestCase):
    timeout = 120

    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.db = os.path.join(self.directory, "accounts.sqlite3")

    def start(self) -> defer.Deferred:
        server = TwistdProcess(
            [
                "--db", self.db,
                "--http", "tcp:0:interface=127.0.0.1",
                "--protobuf", "none", "--msrp", "none", "--msgr", "none",
            ],
            ["msgr-http"],
            self.directory,
        )
        self.addCleanup(server.signal, "KILL")
        self.server = server
        return server.start()

    @defer.inlineCallbacks
    def post(self, path: str, **fields):
        """POST a form with HTTP/1.0 (one request, then close); (status, body)."""
        client = ByteCollector()
        yield connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", self.port), client
        )
        body = urlencode(fields).encode()
        client.transport.write(
            b"POST " + path.encode() + b" HTTP/1.0\r\nHost: localhost\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        yield client.closed
        status, body = _response(client.received)
        return status, body.decode()

    @defer.inlineCallbacks
    def login(self, name: str, password: str):
        status, body = yield self.post("/status", **{"usr": name, "pass": password})
        self.assertEqual(status, b"200")
        code, _, token = body.partition("||")
        self.assertEqual(code, "701", body)
        return token

    @defer.inlineCallbacks
    def test_killNineKeepsAccountsAndFriends(self):
        ports = yield self.start()
        self.port = ports["msgr-http"]
        for name in ["ana", "bea"]:
            status, body = yield self.post("/usuariocrear", **{"usr": name, "pass": "clave-" + name})
            self.assertEqual((status, body), (b"200", "702"))
        ana = yield self.login("ana", "clave-ana")
        self.assertEqual((yield self.post("/enviarsolicitud", token=ana, para="bea")), (b"200", "704"))
        bea = yield self.login("bea", "clave-bea")
        self.assertEqual((yield self.post("/aceptarsolicitud", token=bea, id="ana")), (b"200", "602"))

        yield self.server.signal("KILL")
        self.assertEqual(self.server.exitStatus.signal, 9)

        ports = yield self.start()
        self.port = ports["msgr-http"]
        ana = yield self.login("ana", "clave-ana")
        self.assertEqual(
            (yield self.post("/obtenerusuarios", token=ana)), (b"200", "704||bea offline")
        )
        # The old token died with the process; the password still guards.
        self.assertEqual((yield self.post("/status", usr="bea", **{"pass": "mala"})), (b"200", "801"))
        yield self.server.stop()
