"""
What a newcomer meets with chatd-client (docs/client.md): a new MSGR
account's password asked twice; and the client pointed at the wrong port: a
server that stays
silent, or answers in another protocol, is named within
L{chatd.client.base.LOGIN_WAIT} seconds instead of a hang. The clients run
over an in-memory connection with an injected clock; the bytes the other
servers send are the ones chatd's servers write.
"""

from __future__ import annotations

import contextlib
import io
import os

from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase

from chatd.client import main as clientMain
from chatd.client.base import LOGIN_WAIT, WrongServer
from chatd.client.console import ScriptConsole
from chatd.msrp.codec import encodeClientList, encodeError
from chatd.protobuf import chat_pb2


class MemoryEndpoint:
    """A client endpoint that connects at once to a L{StringTransport}."""

    def __init__(self) -> None:
        self.protocol = None
        self.transport = None

    def connect(self, factory):
        self.protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 5000))
        self.protocol.makeConnection(self.transport)
        return defer.succeed(self.protocol)


class WrongServerTests(TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        self.out = open(os.path.join(folder, "out"), "w+b")
        self.addCleanup(self.out.close)
        self.console = ScriptConsole(self.clock, self.out.fileno(), self.out.fileno())

    def client(self, protocol: str, *arguments: str):
        options = clientMain.buildParser().parse_args([protocol, *arguments])
        client = clientMain.CLIENTS[protocol](options, self.console, self.clock)
        endpoint = MemoryEndpoint()
        client.connectEndpoint = lambda port: endpoint
        if protocol == "msgr":
            # The HTTP login went well (the chat socket is what is wrong).
            client._httpCall = lambda path, body, token=True: defer.succeed(
                {"code": 701, "token": "t0k3n", "user": "ana"}
            )
        return client, endpoint

    def failure(self, d: defer.Deferred) -> str:
        failure = self.failureResultOf(d, WrongServer)
        return failure.getErrorMessage()

    def assertSilenceNamed(self, protocol: str, arguments: list[str], expected: str) -> None:
        client, endpoint = self.client(protocol, *arguments)
        d = client.connect()
        self.assertNoResult(d)
        self.assertNotEqual(endpoint.transport.value(), b"")  # it did log in
        self.clock.advance(LOGIN_WAIT - 0.1)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.assertEqual(self.failure(d), expected)
        self.assertTrue(endpoint.transport.disconnecting)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_msrpSilence(self) -> None:
        # MSRP at the protobuf port: the protobuf chat waits for more.
        self.assertSilenceNamed(
            "msrp",
            ["--name", "ana1", "--port", "5000"],
            "tcp:localhost:5000: this does not look like an MSRP server: no answer"
            " within 5 s (is the port right? the default is 8080)",
        )

    def test_msgrSilence(self) -> None:
        self.assertSilenceNamed(
            "msgr",
            ["--name", "ana", "--password", "x", "--port", "5000"],
            "tcp:localhost:5000: this does not look like an MSGR chat socket: no"
            " answer within 5 s (is the port right? the default is 1234)",
        )

    def test_protobufSilence(self) -> None:
        # The protobuf chat at the HTTP port: twisted.web waits for a line.
        self.assertSilenceNamed(
            "protobuf",
            ["--name", "ana", "--port", "8000"],
            "tcp:localhost:8000: this does not look like a protobuf chat server: no"
            " answer within 5 s (is the port right? the default is 5000)",
        )

    def test_protobufAtMsrp(self) -> None:
        # What chatd's MSRP server answers a name that is no name.
        client, endpoint = self.client("protobuf", "--name", "ana", "--port", "8080")
        d = client.connect()
        endpoint.protocol.dataReceived(encodeError("El nombre debe tener 4 bytes.".encode()))
        self.assertEqual(
            self.failure(d),
            "tcp:localhost:8080: this does not look like a protobuf chat server: it"
            " answers like an MSRP server (is the port right? the default is 5000)",
        )
        self.assertEqual(self.clock.getDelayedCalls(), [])
        # No empty "! " line: nothing of the MSRP bytes was shown.
        self.assertEqual(self.console.lines, [])

    def test_protobufAtMsrpPeople(self) -> None:
        # A protobuf login is, to chatd's MSRP server, a person's name of
        # the wrong length: it answers with a line of text.
        client, endpoint = self.client("protobuf", "--name", "ana", "--port", "8080")
        d = client.connect()
        endpoint.protocol.dataReceived(
            "ERROR: Nombre inválido: debe tener exactamente 4 bytes.\n".encode()
        )
        self.assertEqual(
            self.failure(d),
            "tcp:localhost:8080: this does not look like a protobuf chat server: it"
            " answers like an MSRP server (in its mode for people) (is the port right?"
            " the default is 5000)",
        )
        self.assertEqual(self.console.lines, [])

    def test_msrpAtHttp(self) -> None:
        client, endpoint = self.client("msrp", "--name", "ana1", "--port", "8000")
        d = client.connect()
        endpoint.protocol.dataReceived(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        self.assertEqual(
            self.failure(d),
            "tcp:localhost:8000: this does not look like an MSRP server: it answers"
            " like an HTTP server (is the port right? the default is 8080)",
        )

    def test_msgrAtProtobuf(self) -> None:
        # An answer that is none of chatd's known others is still not ours.
        client, endpoint = self.client("msgr", "--name", "ana", "--password", "x", "--port", "5000")
        d = client.connect()
        response = chat_pb2.ServerResponse(
            code=chat_pb2.ServerResponse.FAILED_OPERATION, response="bad request"
        )
        endpoint.protocol.dataReceived(response.SerializeToString())
        self.assertEqual(
            self.failure(d),
            "tcp:localhost:5000: this does not look like an MSGR chat socket: it"
            " answers like something else (is the port right? the default is 1234)",
        )

    def test_rightServerIsNoWrongServer(self) -> None:
        # The MSRP server's own answer to the login's LIST: logged in, and
        # the deadline is gone.
        client, endpoint = self.client("msrp", "--name", "ana1")
        d = client.connect()
        endpoint.protocol.dataReceived(encodeClientList(b"ana1"))
        self.successResultOf(d)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.console.lines, ["* logged in as ana1 (msrp, tcp:localhost:8080)"])


class RegisterPasswordTests(TestCase):
    """chatd-client msgr --register at a terminal asks for the password twice."""

    def setUp(self) -> None:
        self.prompts: list[str] = []
        self.answers: list[str] = []
        self.patch(os, "environ", {k: v for k, v in os.environ.items() if k != clientMain.PASSWORD_VARIABLE})

        def ask(prompt: str) -> str:
            self.prompts.append(prompt)
            return self.answers.pop(0)

        self.patch(clientMain.getpass, "getpass", ask)

    def test_registerAsksTwice(self) -> None:
        self.answers = ["secreto", "secreto"]
        options = clientMain.parseArguments(
            ["msgr", "--name", "ana", "--register", "--save-dir", self.mktemp()], interactive=True
        )
        self.assertEqual(options.password, "secreto")
        self.assertEqual(self.prompts, ["password for ana: ", "password for ana again: "])

    def test_registerPasswordsDiffer(self) -> None:
        self.answers = ["secreto", "secretp"]
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            exited = self.assertRaises(
                SystemExit,
                clientMain.parseArguments,
                ["msgr", "--name", "ana", "--register"],
                True,
            )
        self.assertEqual(exited.code, 2)
        self.assertIn("the two passwords differ; the account was not created", err.getvalue())

    def test_loginAsksOnce(self) -> None:
        self.answers = ["secreto"]
        options = clientMain.parseArguments(
            ["msgr", "--name", "ana", "--save-dir", self.mktemp()], interactive=True
        )
        self.assertEqual((options.password, self.prompts), ("secreto", ["password for ana: "]))
