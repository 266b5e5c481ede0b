"""
The uq-java dialect against a real C{twistd -n chatd --msgr-dialect uq-java}:
two desktop-client conversations as the Swing client writes them (raw
HTTP/1.0 requests, the chat socket's lines with their blank line), with a
protobuf user and an MSRP user, and every server line checked against the
client's parsing rules (L{tests.test_msgr_uqjava.clientReads}).
"""

from __future__ import annotations

import base64
import os
from urllib.parse import urlencode

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.trial.unittest import TestCase

from chatd.msrp.codec import encodeFileHeader
from tests.support import login, message
from tests.test_msgr_uqjava import JavaAnswer, clientReads
from tests.twistd import ByteCollector, TwistdProcess


class JavaSocket:
    """The client's chat socket: its lines, each read as the client reads it."""

    def __init__(self, collector: ByteCollector) -> None:
        self.collector = collector
        self.seen = 0

    def send(self, line: str) -> None:
        # The client appends "\n" to a line already ending in one.
        self.collector.transport.write(line.encode() + b"\n\n")

    def lines(self) -> list[str]:
        text = self.collector.received.decode()
        return text.split("\n")[:-1]

    def waitFor(self, kind: str, predicate=lambda fields: True) -> defer.Deferred:
        """The next line of C{kind} (after those already returned) matching."""

        def check(data: bytes):
            lines = data.decode().split("\n")[:-1]
            for index in range(self.seen, len(lines)):
                got, fields = clientReads(lines[index])  # every line, parsed
                if got == kind and predicate(fields):
                    self.seen = index + 1
                    return (got, fields)
            return None

        return self.collector.waitFor(check)


class UqJavaOverTwistdTests(TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def connect(self, port: int, source: str = "127.0.0.1"):
        client = ByteCollector()
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, bindAddress=(source, 0))
        yield connectProtocol(endpoint, client)
        self.addCleanup(lambda: (client.transport.loseConnection(), client.closed)[1])
        return client

    @defer.inlineCallbacks
    def post(self, path: str, source: str = "127.0.0.1", **fields):
        """One request as the client writes it; the answer once chatd closes."""
        body = urlencode(fields).encode()
        client = yield self.connect(self.ports["msgr-http"], source)
        client.transport.write(
            b"POST %s HTTP/1.0\r\nContent-Length: %d\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n\r\n%s"
            % (path.encode(), len(body), body)
        )
        yield client.closed  # the client reads until EOF
        return JavaAnswer(client.received, True)

    @defer.inlineCallbacks
    def desktopClient(self, name: str):
        """Register, log in and open the chat window: (id, socket)."""
        answer = yield self.post(
            "/usuariocrear", usr=name, **{"pass": "secreto"}, nombres=name.title(),
            apellidos="UQ", estado="1", bloqueado="0", email=f"{name}@uq.edu.co",
        )
        self.assertEqual(answer.code(), "102")
        answer = yield self.post("/status", usr=name, **{"pass": "secreto"})
        uid = answer.loginId()
        socket = JavaSocket((yield self.connect(self.ports["msgr"])))
        socket.send(f"#HOLA||FQLSHP||{uid}||s3rv1d0r||{uid}\n")
        return uid, socket

    @defer.inlineCallbacks
    def test_classroom(self):
        directory = self.mktemp()
        os.makedirs(directory)
        loopback = "tcp:0:interface=127.0.0.1"
        server = TwistdProcess(
            ["--http", loopback, "--msgr", loopback, "--protobuf", loopback,
             "--msrp", loopback, "--msrp-greeting", "0", "--db", "chatd.sqlite3",
             "--msgr-dialect", "uq-java"],
            ["msgr-http", "msgr", "protobuf", "msrp"],
            directory,
        )
        self.addCleanup(server.stop)
        self.ports = yield server.start()
        self.assertIn(b"MSGR dialect uq-java: its client sends passwords in clear", server.output)

        juan, juanSocket = yield self.desktopClient("juan")
        ana, anaSocket = yield self.desktopClient("ana")

        # Someone at another address cannot take Juan's id.
        thief = yield self.connect(self.ports["msgr"], source="127.0.0.2")
        thief.transport.write(f"#HOLA||FQLSHP||{juan}||s3rv1d0r||{juan}\n\n".encode())
        yield thief.closed
        answer = yield self.post("/obtenerusuarios", source="127.0.0.2", usuario_id=str(juan))
        self.assertEqual(answer.users(), [])

        # Juan finds Ana and asks her; she gets the request id and accepts.
        answer = yield self.post("/obtenerusuarios", usuario_id=str(juan))
        self.assertEqual(answer.users(), [(ana, "[ana] Ana UQ")])
        answer = yield self.post("/enviarsolicitud", de=str(juan), para=str(ana))
        self.assertEqual(answer.last, "704")
        _, [requestId] = yield anaSocket.waitFor("#SOLICITUDES")
        answer = yield self.post("/aceptarsolicitud", id=requestId)
        self.assertEqual(answer.last, "602")
        yield juanSocket.waitFor("#LISTA_USUARIOS", lambda ids: str(ana) in ids)
        yield anaSocket.waitFor("#LISTA_USUARIOS", lambda ids: str(juan) in ids)

        # #MSJ both ways.
        juanSocket.send(f"#MSJ||FQLSHP||{juan}||{ana}||Hola ;)\n")
        _, fields = yield anaSocket.waitFor("#MSJ")
        self.assertEqual(fields, ["tokenOK", str(juan), str(ana), "Hola ;)\n"])
        anaSocket.send(f"#MSJ||FQLSHP||{ana}||{juan}||xD")
        _, fields = yield juanSocket.waitFor("#MSJ")
        self.assertEqual(fields, ["tokenOK", str(ana), str(juan), "xD\n"])

        # Carla, on protobuf, appears under an id of her own and chats.
        carla = yield self.connect(self.ports["protobuf"])
        carla.transport.write(login("carla").SerializeToString())
        _, ids = yield juanSocket.waitFor("#LISTA_USUARIOS", lambda ids: len(ids) == 2)
        carlaId = next(i for i in ids if i != str(ana))
        self.assertGreater(int(carlaId), 999_999_999)
        carla.transport.write(message("juan", "hola juan").SerializeToString())
        _, fields = yield juanSocket.waitFor("#MSJ")
        self.assertEqual(fields, ["tokenOK", carlaId, str(juan), "hola juan\n"])
        juanSocket.send(f"#MSJ||FQLSHP||{juan}||{carlaId}||hola carla")
        yield carla.waitFor(lambda data: b"hola carla" in data)

        # A file from an MSRP user.
        tuxa = yield self.connect(self.ports["msrp"])
        tuxa.transport.write(b"tuxa\x00\x03")
        yield tuxa.waitFor(lambda data: b"tuxa" in data)
        _, ids = yield juanSocket.waitFor("#LISTA_USUARIOS", lambda ids: len(ids) == 3)
        tuxaId = next(i for i in ids if i not in (str(ana), carlaId))
        content = b"\x89PNG\r\n\x1a\n"
        tuxa.transport.write(encodeFileHeader(b"juan", b"foto.png", len(content)) + content)
        _, fields = yield juanSocket.waitFor("#ARCHIVO")
        self.assertEqual(
            fields[:5], ["tokenOK", tuxaId, str(juan), "foto.png", base64.b64encode(content).decode()]
        )

        # Leaving ends the login: the id cannot be bound again without one.
        juanSocket.send(f"#DESCONECTAR||FQLSHP||{juan}||s3rv1d0r||{juan}")
        yield juanSocket.collector.closed
        again = yield self.connect(self.ports["msgr"])
        again.transport.write(f"#HOLA||FQLSHP||{juan}||s3rv1d0r||{juan}\n\n".encode())
        yield again.closed
