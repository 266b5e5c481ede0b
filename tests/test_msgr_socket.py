"""
The MSGR chat socket: binding, token and sender checks, delivery across
protocols, files, friend requests and pushes, limits. Lines are asserted
exactly as the client reads them.
"""

import base64
import sqlite3

from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from chatd.msgr import admin
from chatd.msgr.codec import splitFields, unescape
from chatd.msrp.codec import encodeFileHeader
from chatd.msrp.protocol import FILL_MAX, MsrpFactory
from chatd.msrp.texts import errNotDelivered
from chatd.presence import NameProtected, RecipientBusy
from chatd.protobuf import chat_pb2
from chatd.protobuf.framing import DelimitedFramer, encodeDelimited
from chatd.protobuf.protocol import DELIMITED, ProtobufChatFactory

from tests.test_msgr_helpers import TOKEN_IDLE, MsgrHarness, RecordingSession
from tests.test_msrp_protocol import MsrpClient, errorFrame


class ProtobufClient:
    """A client of the real protobuf listener (delimited framing)."""

    def __init__(self, harness):
        factory = ProtobufChatFactory(
            harness.presence, harness.clock, framing=DELIMITED, metrics=harness.presence.metrics
        )
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "10.9.9.9", 1))
        self.protocol = factory.buildProtocol(None)
        self.protocol.makeConnection(self.transport)

    def send(self, **fields):
        request = chat_pb2.ClientRequest(**fields)
        self.protocol.dataReceived(encodeDelimited(request.SerializeToString()))

    def login(self, name):
        self.send(
            option=chat_pb2.ClientRequest.USER_LOGIN,
            newuser=chat_pb2.UserRegistration(username=name, ip="10.9.9.9"),
        )
        return self.responses()[-1]

    def responses(self):
        data = self.transport.value()
        self.transport.clear()
        return [
            chat_pb2.ServerResponse.FromString(frame)
            for frame in DelimitedFramer(1 << 20).feed(data)
        ]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class BindTests(unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        self.h = MsgrHarness(self)
        yield self.h.register("Ana")
        yield self.h.register("Bea")
        self.token = yield self.h.login("Ana")

    @defer.inlineCallbacks
    def test_bind(self):
        client = self.h.connect()
        client.sendLine(f"#HOLA||{self.token}||Ana||s3rv1d0r||Ana")
        yield self.h.settle()
        self.assertEqual(
            client.lines(),
            [
                "#RESPUESTA||-||1||#HOLA||Ana||701",
                "#LISTA_USUARIOS||-||Ana||",
                "#SOLICITUDES||-||Ana||",
            ],
        )
        self.assertFalse(client.closed)
        info = self.h.presence.lookup("ana")
        self.assertEqual((info.name, info.protocol, info.ip), ("Ana", "msgr", "10.0.0.2"))

    @defer.inlineCallbacks
    def test_bindWithCrlfAndOtherCase(self):
        client = self.h.connect()
        client.send(f"#HOLA||{self.token}||ANA\r\n")
        yield self.h.settle()
        self.assertEqual(client.lines()[0], "#RESPUESTA||-||1||#HOLA||Ana||701")

    def assertRefused(self, client, line):
        self.assertEqual(client.lines(), [line])
        self.assertTrue(client.closed)

    @defer.inlineCallbacks
    def test_firstLineMustBeHola(self):
        client = self.h.connect()
        client.sendLine(f"#MSJ||{self.token}||Ana||Bea||hola")
        self.assertRefused(client, "#RESPUESTA||-||1||#MSJ||-||901")
        yield self.h.settle()
        self.assertIsNone(self.h.presence.lookup("Ana"))

    def test_wrongToken(self):
        client = self.h.connect()
        client.sendLine("#HOLA||forged-token||Ana")
        self.assertRefused(client, "#RESPUESTA||-||1||#HOLA||-||901")

    def test_missingFields(self):
        client = self.h.connect()
        client.sendLine(f"#HOLA||{self.token}")
        self.assertRefused(client, "#RESPUESTA||-||1||#HOLA||-||901")

    def test_tokenOfSomeoneElse(self):
        client = self.h.connect()
        client.sendLine(f"#HOLA||{self.token}||Bea")
        self.assertRefused(client, "#RESPUESTA||-||1||#HOLA||-||801")
        self.assertIsNone(self.h.presence.lookup("Bea"))

    def test_expiredToken(self):
        self.h.clock.advance(TOKEN_IDLE)
        client = self.h.connect()
        client.sendLine(f"#HOLA||{self.token}||Ana")
        self.assertRefused(client, "#RESPUESTA||-||1||#HOLA||-||901")

    @defer.inlineCallbacks
    def test_blocked(self):
        connection = sqlite3.connect(self.h.path)
        admin.setBlocked(connection, "Ana", True)
        connection.commit()
        connection.close()
        client = self.h.connect()
        client.sendLine(f"#HOLA||{self.token}||Ana")
        yield self.h.settle()
        self.assertRefused(client, "#RESPUESTA||-||1||#HOLA||-||802")
        self.assertIsNone(self.h.presence.lookup("Ana"))

    def test_notUtf8BeforeBinding(self):
        client = self.h.connect()
        client.send(b"\xff\xfe\n")
        self.assertRefused(client, "#RESPUESTA||-||1||-||-||903")

    def test_tooLongBeforeBinding(self):
        client = self.h.connect()
        client.send(b"#HOLA||" + b"x" * 5000 + b"\n")
        self.assertRefused(client, "#RESPUESTA||-||1||-||-||803")

    @defer.inlineCallbacks
    def test_linesDuringBindingWait(self):
        """Lines that arrive while the account loads are handled after it."""
        bea, _ = yield self.h.bound("Bea")
        bea.lines()
        client = self.h.connect()
        client.send(
            f"#HOLA||{self.token}||Ana\n#MSJ||{self.token}||Ana||Bea||primero\n"
        )
        yield self.h.settle()
        self.assertEqual(
            client.lines(),
            [
                "#RESPUESTA||-||1||#HOLA||Ana||701",
                "#LISTA_USUARIOS||-||Ana||",
                "#SOLICITUDES||-||Ana||",
                "#RESPUESTA||-||2||#MSJ||Ana||704",
            ],
        )
        self.assertEqual(bea.lines(), ["#MSJ||-||Ana||Bea||primero"])

    @defer.inlineCallbacks
    def test_newerSocketTakesOver(self):
        first, _ = yield self.h.bound("Ana")
        first.lines()
        second = self.h.connect()
        second.sendLine(f"#HOLA||{self.token}||Ana")
        yield self.h.settle()
        self.assertEqual(first.lines(), ["#RESPUESTA||-||0||#DESCONECTAR||Ana||803"])
        self.assertTrue(first.closed)
        self.assertEqual(second.lines()[0], "#RESPUESTA||-||1||#HOLA||Ana||701")
        self.assertIs(self.h.presence.sessionFor("Ana"), second.protocol)
        first.lose()  # its connectionLost must not log the new socket out
        self.assertIs(self.h.presence.sessionFor("Ana"), second.protocol)

    @defer.inlineCallbacks
    def test_boundTokenDoesNotExpire(self):
        client, token = yield self.h.bound("Ana")
        bea, beaToken = yield self.h.bound("Bea")
        client.lines()
        self.h.clock.advance(TOKEN_IDLE * 10)
        client.sendLine(f"#MSJ||{token}||Ana||Bea||sigo aquí")
        self.assertEqual(client.lines(), ["#RESPUESTA||-||2||#MSJ||Ana||704"])
        client.lose()
        self.h.clock.advance(TOKEN_IDLE - 1)
        self.assertEqual(self.h.tokens.validate(token), "Ana")
        self.h.clock.advance(TOKEN_IDLE)
        self.assertIsNone(self.h.tokens.validate(token))
        bea.lose()


class BoundTests(unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        self.h = MsgrHarness(self, maxLine=4096, maxFile=1024)
        for name in ("Ana", "Bea", "Cy"):
            yield self.h.register(name)
        self.ana, self.anaToken = yield self.h.bound("Ana")
        self.bea, self.beaToken = yield self.h.bound("Bea")
        self.ana.lines()
        self.bea.lines()

    def tearDown(self):
        self.ana.lose()
        self.bea.lose()

    def test_message(self):
        self.ana.sendLine(f"#MSJ||{self.anaToken}||Ana||Bea||Hola :)")
        self.assertEqual(self.ana.lines(), ["#RESPUESTA||-||2||#MSJ||Ana||704"])
        self.assertEqual(self.bea.lines(), ["#MSJ||-||Ana||Bea||Hola :)"])

    def test_recipientNeverSeesTheToken(self):
        self.ana.sendLine(f"#MSJ||{self.anaToken}||Ana||bea||x")
        self.assertNotIn(self.anaToken, self.bea.transport.value().decode())
        self.assertEqual(self.bea.lines(), ["#MSJ||-||Ana||Bea||x"])

    def test_escapingRoundTrip(self):
        text = "a || b && c\nnueva línea \\ fin | & \r"
        escaped = "a \\|\\| b \\&\\& c\\nnueva línea \\\\ fin \\| \\& \\r"
        self.ana.sendLine(f"#MSJ||{self.anaToken}||Ana||Bea||{escaped}")
        self.assertEqual(self.ana.lines(), ["#RESPUESTA||-||2||#MSJ||Ana||704"])
        (line,) = self.bea.lines()
        self.assertEqual(line, f"#MSJ||-||Ana||Bea||{escaped}")
        self.assertEqual(unescape(splitFields(line)[4]), text)

    def test_unescapedSeparatorsInTextKept(self):
        """A client that does not escape still gets its whole text across."""
        self.ana.sendLine(f"#MSJ||{self.anaToken}||Ana||Bea||x||y&&z")
        (line,) = self.bea.lines()
        self.assertEqual(unescape(splitFields(line)[4]), "x||y&&z")

    def test_messageCodes(self):
        self.ana.sendLine(f"#MSJ||{self.anaToken}||Ana||Nadie||hola")
        self.ana.sendLine(f"#MSJ||{self.anaToken}||Ana||Bea||")
        self.ana.sendLine(f"#MSJ||{self.anaToken}||Ana||Bea")
        self.ana.sendLine("#NADA||x")
        self.assertEqual(
            self.ana.lines(),
            [
                "#RESPUESTA||-||2||#MSJ||Ana||804",
                "#RESPUESTA||-||3||#MSJ||Ana||903",
                "#RESPUESTA||-||4||#MSJ||Ana||903",
                "#RESPUESTA||-||5||#NADA||Ana||903",
            ],
        )
        self.assertEqual(self.bea.lines(), [])
        self.assertFalse(self.ana.closed)

    def test_wrongTokenRefused(self):
        self.ana.sendLine("#MSJ||forged||Ana||Bea||hola")
        self.ana.sendLine(f"#MSJ||{self.beaToken}||Ana||Bea||hola")
        self.assertEqual(
            self.ana.lines(),
            ["#RESPUESTA||-||2||#MSJ||Ana||901", "#RESPUESTA||-||3||#MSJ||Ana||901"],
        )
        self.assertEqual(self.bea.lines(), [])
        self.assertFalse(self.ana.closed)

    def test_claimingAnotherSenderRefused(self):
        self.ana.sendLine(f"#MSJ||{self.anaToken}||Bea||Cy||soy Bea")
        self.ana.sendLine(f"#SOLICITUD||{self.anaToken}||Bea||Cy")
        self.assertEqual(
            self.ana.lines(),
            ["#RESPUESTA||-||2||#MSJ||Ana||801", "#RESPUESTA||-||3||#SOLICITUD||Ana||801"],
        )

    @defer.inlineCallbacks
    def test_anotherTokenOfTheSameUserAccepted(self):
        fresh = yield self.h.login("Ana")
        self.ana.sendLine(f"#MSJ||{fresh}||ana||Bea||hola")
        self.assertEqual(self.ana.lines(), ["#RESPUESTA||-||2||#MSJ||Ana||704"])

    def test_blankLinesIgnored(self):
        self.ana.send("\n\r\n")
        self.ana.sendLine(f"#MSJ||{self.anaToken}||Ana||Bea||x")
        self.assertEqual(self.ana.lines(), ["#RESPUESTA||-||2||#MSJ||Ana||704"])

    def test_holaAgain(self):
        self.ana.sendLine(f"#HOLA||{self.anaToken}||Ana")
        self.assertEqual(self.ana.lines(), ["#RESPUESTA||-||2||#HOLA||Ana||803"])

    def test_tooLongLineSurvives(self):
        self.ana.send(b"#MSJ||" + b"x" * 5000 + b"\n")
        self.ana.sendLine(f"#MSJ||{self.anaToken}||Ana||Bea||sigo")
        self.assertEqual(
            self.ana.lines(),
            ["#RESPUESTA||-||2||-||Ana||803", "#RESPUESTA||-||3||#MSJ||Ana||704"],
        )
        self.assertFalse(self.ana.closed)
        self.assertEqual(self.bea.lines(), ["#MSJ||-||Ana||Bea||sigo"])

    def test_notUtf8Survives(self):
        self.ana.send(b"#MSJ||\xff\n")
        self.assertEqual(self.ana.lines(), ["#RESPUESTA||-||2||-||Ana||903"])
        self.assertFalse(self.ana.closed)

    # Files.

    def test_fileToMsgrKeepsItsKind(self):
        data = b64(b"\x89PNG...")
        self.ana.sendLine(f"#IMG||{self.anaToken}||Ana||Bea||ARIK.jpeg||{data}")
        self.ana.sendLine(f"#ARCHIVO||{self.anaToken}||Ana||Bea||redes.zip||{data}")
        self.assertEqual(
            self.ana.lines(),
            ["#RESPUESTA||-||2||#IMG||Ana||704", "#RESPUESTA||-||3||#ARCHIVO||Ana||704"],
        )
        self.assertEqual(
            self.bea.lines(),
            [
                f"#IMG||-||Ana||Bea||ARIK.jpeg||{data}",
                f"#ARCHIVO||-||Ana||Bea||redes.zip||{data}",
            ],
        )

    def test_fileWaitsForReceiverThatDoesNotRead(self):
        """
        A file for a receiver whose socket takes nothing waits for it; the
        sender's answer waits too: 704 when the socket takes the file.
        """
        data = b64(b"hola")
        self.bea.protocol.outbound.pauseProducing()  # bea's socket buffer is full
        self.ana.sendLine(f"#ARCHIVO||{self.anaToken}||Ana||Bea||a.txt||{data}")
        self.ana.sendLine(f"#MSJ||{self.anaToken}||Ana||Bea||hola")
        self.assertEqual(self.ana.lines(), ["#RESPUESTA||-||3||#MSJ||Ana||704"])
        self.h.clock.advance(29)
        self.assertEqual(self.ana.lines(), [])
        self.bea.protocol.outbound.resumeProducing()  # bea reads
        self.assertEqual(self.ana.lines(), ["#RESPUESTA||-||2||#ARCHIVO||Ana||704"])
        self.assertEqual(
            self.bea.lines(),
            [f"#ARCHIVO||-||Ana||Bea||a.txt||{data}", "#MSJ||-||Ana||Bea||hola"],
        )
        self.h.clock.advance(60)
        self.assertEqual(self.ana.lines(), [])

    def test_fileNotTakenIsDropped(self):
        """
        A file the receiver's socket has not taken within --file-idle-timeout
        (30 s) is dropped, and its sender answered 803; what else waited is
        still delivered.
        """
        data = b64(b"x" * 1000)
        self.bea.protocol.outbound.pauseProducing()
        self.ana.sendLine(f"#IMG||{self.anaToken}||Ana||Bea||foto.png||{data}")
        self.h.clock.advance(10)
        self.ana.sendLine(f"#MSJ||{self.anaToken}||Ana||Bea||sigo")
        self.ana.sendLine(f"#ARCHIVO||{self.anaToken}||Ana||Bea||b.txt||{b64(b'b')}")
        self.assertEqual(self.ana.lines(), ["#RESPUESTA||-||3||#MSJ||Ana||704"])
        self.h.clock.advance(19.9)
        self.assertEqual(self.ana.lines(), [])
        self.h.clock.advance(0.1)
        self.assertEqual(self.ana.lines(), ["#RESPUESTA||-||2||#IMG||Ana||803"])
        self.assertEqual(self.bea.protocol.outbound.queued, len("#MSJ||-||Ana||Bea||sigo\n")
                         + len(f"#ARCHIVO||-||Ana||Bea||b.txt||{b64(b'b')}\n"))
        self.h.clock.advance(10)
        self.assertEqual(self.ana.lines(), ["#RESPUESTA||-||4||#ARCHIVO||Ana||803"])
        self.bea.protocol.outbound.resumeProducing()
        self.assertEqual(self.bea.lines(), ["#MSJ||-||Ana||Bea||sigo"])
        self.assertFalse(self.bea.closed)
        self.assertEqual(self.h.clock.getDelayedCalls(), [])

    def test_fileForReceiverThatLeaves(self):
        """A receiver gone before taking a file: its sender is answered 803."""
        self.bea.protocol.outbound.pauseProducing()
        self.ana.sendLine(f"#ARCHIVO||{self.anaToken}||Ana||Bea||a.txt||{b64(b'a')}")
        self.bea.lose()
        self.assertEqual(self.ana.lines(), ["#RESPUESTA||-||2||#ARCHIVO||Ana||803"])
        self.assertEqual(self.h.clock.getDelayedCalls(), [])

    def test_msrpReceiverOfLargeFile(self):
        """
        An MSRP user to which a file streams with more than FILL_MAX still
        to arrive takes nothing from others meanwhile: #MSJ and #ARCHIVO to
        it are answered 803 at once; once FILL_MAX or less is to come, they
        are taken again (704) and follow the file.
        """
        factory = MsrpFactory(self.h.presence, self.h.clock, metrics=self.h.presence.metrics)
        alic, bob = MsrpClient(factory, b"alic"), MsrpClient(factory, b"bob_")
        self.addCleanup(alic.disconnect)
        self.addCleanup(bob.disconnect)
        alic.send(encodeFileHeader(b"bob_", b"f", FILL_MAX + 1, 0, b""))
        self.ana.sendLine(f"#MSJ||{self.anaToken}||Ana||bob_||hola")
        self.ana.sendLine(f"#ARCHIVO||{self.anaToken}||Ana||bob_||a.txt||{b64(b'a')}")
        self.assertEqual(
            self.ana.lines(),
            ["#RESPUESTA||-||2||#MSJ||Ana||803", "#RESPUESTA||-||3||#ARCHIVO||Ana||803"],
        )
        alic.send(b"x")
        self.ana.sendLine(f"#MSJ||{self.anaToken}||Ana||bob_||hola")
        self.ana.sendLine(f"#ARCHIVO||{self.anaToken}||Ana||bob_||a.txt||{b64(b'a')}")
        self.assertEqual(
            self.ana.lines(),
            ["#RESPUESTA||-||4||#MSJ||Ana||704", "#RESPUESTA||-||5||#ARCHIVO||Ana||704"],
        )
        self.assertEqual(bob.wire(), encodeFileHeader(b"alic", b"f", FILL_MAX + 1, 0, b"") + b"x")
        alic.send(b"y" * FILL_MAX)
        self.assertEqual(
            bob.wire(),
            b"y" * FILL_MAX
            + b"\x00\x01Ana Ana: hola\x00"
            + encodeFileHeader(b"Ana ", b"a.txt", 1, 0, b"")
            + b"a",
        )

    @defer.inlineCallbacks
    def test_fileFromMsrpForReceiverThatDoesNotRead(self):
        """
        A file from an MSRP user for an MSGR receiver that takes nothing
        waits at most --file-idle-timeout; then it is dropped and the MSRP
        sender gets the ERROR of a failed hand-over. Taken in time, it
        arrives and the sender hears nothing.
        """
        yield self.h.register("Dani")
        dani, _ = yield self.h.bound("Dani")
        dani.lines()
        alic = MsrpClient(
            MsrpFactory(self.h.presence, self.h.clock, metrics=self.h.presence.metrics
        ), b"alic")
        self.assertIsNotNone(self.h.presence.lookup("alic"))
        dani.protocol.outbound.pauseProducing()
        alic.send(encodeFileHeader(b"Dani", b"a.txt", 4, 0, b"") + b"hola")
        self.h.clock.advance(29)
        self.assertEqual(alic.wire(), b"")
        self.h.clock.advance(1)
        self.assertEqual(alic.wire(), errorFrame(errNotDelivered("Dani", "a.txt")))
        alic.send(encodeFileHeader(b"Dani", b"b.txt", 4, 0, b"") + b"chau")
        self.h.clock.advance(29)
        dani.protocol.outbound.resumeProducing()
        self.assertEqual(dani.lines(), [f"#ARCHIVO||-||alic||Dani||b.txt||{b64(b'chau')}"])
        self.h.clock.advance(60)
        self.assertEqual(alic.wire(), b"")
        alic.disconnect()
        dani.lose()

    @defer.inlineCallbacks
    def test_fileToAnotherProtocol(self):
        other = RecordingSession("msrp", maxFileSize=100)
        yield self.h.presence.login(other, "Tux", "10.1.1.1")
        self.ana.sendLine(f"#ARCHIVO||{self.anaToken}||Ana||Tux||a.txt||{b64(b'hola')}")
        self.ana.sendLine(f"#IMG||{self.anaToken}||Ana||Tux||b.png||{b64(b'x' * 101)}")
        self.assertEqual(
            self.ana.lines(),
            ["#RESPUESTA||-||2||#ARCHIVO||Ana||704", "#RESPUESTA||-||3||#IMG||Ana||803"],
        )
        self.assertEqual(other.files, [("Ana", "a.txt", b"hola")])

    def test_fileToProtobufRefused(self):
        pb = ProtobufClient(self.h)
        self.assertEqual(pb.login("pablo").code, chat_pb2.ServerResponse.SUCCESSFUL_OPERATION)
        self.ana.sendLine(f"#ARCHIVO||{self.anaToken}||Ana||pablo||a.txt||{b64(b'x')}")
        self.assertEqual(self.ana.lines(), ["#RESPUESTA||-||2||#ARCHIVO||Ana||803"])
        self.assertEqual(pb.responses(), [])

    def test_fileCodes(self):
        t = self.anaToken
        self.ana.sendLine(f"#ARCHIVO||{t}||Ana||Bea||a.txt||not base64!")
        self.ana.sendLine(f"#ARCHIVO||{t}||Ana||Bea||a.txt||{b64(b'x' * 1025)}")
        self.ana.sendLine(f"#ARCHIVO||{t}||Ana||Nadie||a.txt||{b64(b'x')}")
        self.ana.sendLine(f"#ARCHIVO||{t}||Ana||Bea||a.txt")
        self.ana.sendLine(f"#ARCHIVO||{t}||Ana||Bea||||{b64(b'x')}")
        self.assertEqual(
            self.ana.lines(),
            [
                "#RESPUESTA||-||2||#ARCHIVO||Ana||903",
                "#RESPUESTA||-||3||#ARCHIVO||Ana||803",
                "#RESPUESTA||-||4||#ARCHIVO||Ana||804",
                "#RESPUESTA||-||5||#ARCHIVO||Ana||903",
                "#RESPUESTA||-||6||#ARCHIVO||Ana||903",
            ],
        )
        self.assertEqual(self.bea.lines(), [])

    def test_fileLimitIsExact(self):
        self.ana.sendLine(f"#ARCHIVO||{self.anaToken}||Ana||Bea||a.bin||{b64(b'y' * 1024)}")
        self.assertEqual(self.ana.lines(), ["#RESPUESTA||-||2||#ARCHIVO||Ana||704"])
        self.assertEqual(len(self.bea.lines()), 1)

    @defer.inlineCallbacks
    def test_fileFromAnotherProtocol(self):
        other = RecordingSession("msrp")
        yield self.h.presence.login(other, "Tux", "10.1.1.1")
        self.h.presence.sendFile(other, "Bea", "notas||v1.txt", b"\x00\x01")
        self.assertEqual(
            self.bea.lines(),
            [f"#ARCHIVO||-||Tux||Bea||notas\\|\\|v1.txt||{b64(bytes([0, 1]))}"],
        )
        self.assertEqual(self.h.presence.fileLimit("Bea"), 1024)

    # Memes.

    @defer.inlineCallbacks
    def test_meme(self):
        other = RecordingSession("msrp")
        yield self.h.presence.login(other, "Tux", "10.1.1.1")
        self.ana.sendLine(f"#MEME||{self.anaToken}||Ana||Bea||meme02.png")
        self.ana.sendLine(f"#MEME||{self.anaToken}||Ana||Tux||meme02.png")
        self.ana.sendLine(f"#MEME||{self.anaToken}||Ana||Nadie||meme02.png")
        self.assertEqual(
            self.ana.lines(),
            [
                "#RESPUESTA||-||2||#MEME||Ana||704",
                "#RESPUESTA||-||3||#MEME||Ana||704",
                "#RESPUESTA||-||4||#MEME||Ana||804",
            ],
        )
        self.assertEqual(self.bea.lines(), ["#MEME||-||Ana||Bea||meme02.png"])
        self.assertEqual(
            [(m.sender, m.receiver, m.text) for m in other.messages],
            [("Ana", "Tux", "[meme] meme02.png")],
        )

    # Other protocols.

    def test_messagesToAndFromProtobuf(self):
        pb = ProtobufClient(self.h)
        pb.login("pablo")
        self.ana.sendLine(f"#MSJ||{self.anaToken}||Ana||pablo||hola || pablo")
        self.assertEqual(self.ana.lines(), ["#RESPUESTA||-||2||#MSJ||Ana||704"])
        (delivery,) = pb.responses()
        self.assertEqual(delivery.option, chat_pb2.ClientRequest.SEND_MESSAGE)
        self.assertEqual(
            (delivery.messg.sender, delivery.messg.receiver, delivery.messg.text),
            ("Ana", "pablo", "hola || pablo"),
        )
        self.assertNotIn(self.anaToken.encode(), delivery.SerializeToString())
        pb.send(
            option=chat_pb2.ClientRequest.SEND_MESSAGE,
            messg=chat_pb2.Message(receiver="Ana", sender="pablo", text="a&&b\nc"),
        )
        self.assertEqual(self.ana.lines(), ["#MSJ||-||pablo||Ana||a\\&\\&b\\nc"])
        pb.send(
            option=chat_pb2.ClientRequest.SEND_MESSAGE,
            messg=chat_pb2.Message(receiver="all", sender="pablo", text="todos"),
        )
        self.assertEqual(self.ana.lines(), ["#MSJ||-||pablo||all||todos"])
        self.assertEqual(self.bea.lines(), ["#MSJ||-||pablo||all||todos"])

    @defer.inlineCallbacks
    def test_busyRecipient(self):
        busy = RecordingSession("msrp")

        def refuse(message):
            raise RecipientBusy("too much waits for Tux")

        busy.deliverMessage = refuse
        yield self.h.presence.login(busy, "Tux", "10.1.1.1")
        self.ana.sendLine(f"#MSJ||{self.anaToken}||Ana||Tux||hola")
        self.ana.sendLine(f"#MEME||{self.anaToken}||Ana||Tux||m.png")
        self.assertEqual(
            self.ana.lines(),
            ["#RESPUESTA||-||2||#MSJ||Ana||803", "#RESPUESTA||-||3||#MEME||Ana||803"],
        )
        self.assertFalse(self.ana.closed)

    def test_shutDownSaysGoodbye(self):
        unbound = self.h.connect()
        self.h.factory.shutDown()
        self.assertEqual(self.ana.lines(), ["#RESPUESTA||-||0||#DESCONECTAR||Ana||803"])
        self.assertEqual(self.bea.lines(), ["#RESPUESTA||-||0||#DESCONECTAR||Bea||803"])
        self.assertEqual(unbound.lines(), ["#RESPUESTA||-||0||#DESCONECTAR||-||803"])
        self.assertTrue(self.ana.closed and self.bea.closed and unbound.closed)
        self.assertEqual(self.h.presence.users(), [])
        unbound.lose()

    def test_accountNamesProtectedFromProtobuf(self):
        pb = ProtobufClient(self.h)
        response = pb.login("cy")  # registered, not online
        self.assertEqual(response.code, chat_pb2.ServerResponse.FAILED_OPERATION)
        self.assertIsNone(self.h.presence.lookup("Cy"))

    @defer.inlineCallbacks
    def test_accountNamesProtectedFromUnauthenticatedLogins(self):
        """What MSRP (no passwords) meets: presence refuses account names."""
        yield self.assertFailure(
            self.h.presence.login(RecordingSession("msrp"), "CY", "1.1.1.1"), NameProtected
        )
        yield self.h.register("Dee")
        yield self.assertFailure(
            self.h.presence.login(RecordingSession("msrp"), "dee", "1.1.1.1"), NameProtected
        )
        info = yield self.h.presence.login(RecordingSession("msrp"), "Eve", "1.1.1.1")
        self.assertEqual(info.name, "Eve")

    # Friends and pushes.

    @defer.inlineCallbacks
    def test_friendRequestOverSocketAcceptedOverHttp(self):
        self.ana.sendLine(f"#SOLICITUD||{self.anaToken}||Ana||Bea")
        yield self.h.settle()
        self.assertEqual(self.ana.lines(), ["#RESPUESTA||-||2||#SOLICITUD||Ana||704"])
        self.assertEqual(self.bea.lines(), ["#SOLICITUDES||-||Bea||Ana"])
        self.ana.sendLine(f"#SOLICITUD||{self.anaToken}||Ana||Bea")
        yield self.h.settle()
        self.assertEqual(self.ana.lines(), ["#RESPUESTA||-||3||#SOLICITUD||Ana||704"])
        self.assertEqual(self.bea.lines(), ["#SOLICITUDES||-||Bea||Ana"], "stored once")
        response = yield self.h.form("/aceptarsolicitud", token=self.beaToken, id="Ana")
        self.assertEqual(response.body, "602")
        yield self.h.settle()
        self.assertEqual(self.ana.lines(), ["#LISTA_USUARIOS||-||Ana||Bea"])
        self.assertEqual(
            self.bea.lines(), ["#LISTA_USUARIOS||-||Bea||Ana", "#SOLICITUDES||-||Bea||"]
        )

    @defer.inlineCallbacks
    def test_friendRequestOverHttpAnsweredOverSocket(self):
        cy = yield self.h.login("Cy")
        response = yield self.h.form("/enviarsolicitud", token=cy, para="Ana")
        self.assertEqual(response.body, "704")
        yield self.h.settle()
        self.assertEqual(self.ana.lines(), ["#SOLICITUDES||-||Ana||Cy"])
        response = yield self.h.form("/enviarsolicitud", token=self.beaToken, para="Ana")
        yield self.h.settle()
        self.assertEqual(self.ana.lines(), ["#SOLICITUDES||-||Ana||Bea&&Cy"])
        self.ana.sendLine(f"#RECHAZAR||{self.anaToken}||Ana||Cy")
        self.ana.sendLine(f"#ACEPTAR||{self.anaToken}||Ana||bea")
        self.ana.sendLine(f"#ACEPTAR||{self.anaToken}||Ana||Nadie")
        yield self.h.settle()
        self.assertEqual(
            self.ana.lines(),
            [
                "#SOLICITUDES||-||Ana||Bea",
                "#RESPUESTA||-||2||#RECHAZAR||Ana||603",
                "#LISTA_USUARIOS||-||Ana||Bea",
                "#SOLICITUDES||-||Ana||",
                "#RESPUESTA||-||3||#ACEPTAR||Ana||602",
                "#RESPUESTA||-||4||#ACEPTAR||Ana||804",
            ],
        )
        self.assertEqual(self.bea.lines(), ["#LISTA_USUARIOS||-||Bea||Ana"])
        response = yield self.h.form("/obtenerusuarios", token=self.beaToken)
        self.assertEqual(response.body, "704||Ana online ACTIVO")

    @defer.inlineCallbacks
    def test_friendRequestCodesOverSocket(self):
        t = self.anaToken
        self.ana.sendLine(f"#SOLICITUD||{t}||Ana||Nadie")
        self.ana.sendLine(f"#SOLICITUD||{t}||Ana||")
        self.ana.sendLine(f"#SOLICITUD||{t}||Ana")
        yield self.h.settle()
        self.assertEqual(
            self.ana.lines(),
            [
                # Answers carry the line's id: those that need no database
                # come first.
                "#RESPUESTA||-||3||#SOLICITUD||Ana||903",
                "#RESPUESTA||-||4||#SOLICITUD||Ana||903",
                "#RESPUESTA||-||2||#SOLICITUD||Ana||804",
            ],
        )

    @defer.inlineCallbacks
    def test_presencePushes(self):
        cyToken = yield self.h.login("Cy")
        yield self.h.befriend("Ana", "Cy", self.anaToken, cyToken)
        yield self.h.settle()
        self.ana.lines()
        cy = self.h.connect()
        cy.sendLine(f"#HOLA||{cyToken}||Cy")
        yield self.h.settle()
        self.assertEqual(self.ana.lines(), ["#LISTA_USUARIOS||-||Ana||Cy"])
        self.assertEqual(
            cy.lines(),
            [
                "#RESPUESTA||-||1||#HOLA||Cy||701",
                "#LISTA_USUARIOS||-||Cy||Ana",
                "#SOLICITUDES||-||Cy||",
            ],
        )
        self.assertEqual(self.bea.lines(), [], "Bea is no friend of Cy")
        cy.lose()
        self.assertEqual(self.ana.lines(), ["#LISTA_USUARIOS||-||Ana||"])

    @defer.inlineCallbacks
    def test_disconnect(self):
        yield self.h.befriend("Ana", "Bea", self.anaToken, self.beaToken)
        yield self.h.settle()
        self.ana.lines()
        self.bea.lines()
        self.ana.sendLine(f"#DESCONECTAR||{self.anaToken}||Ana")
        self.assertEqual(self.ana.lines(), ["#RESPUESTA||-||2||#DESCONECTAR||Ana||702"])
        self.assertTrue(self.ana.closed)
        self.assertIsNone(self.h.presence.lookup("Ana"))
        self.assertIsNone(self.h.tokens.validate(self.anaToken))
        self.assertEqual(self.bea.lines(), ["#LISTA_USUARIOS||-||Bea||"])
        self.ana.lose()

    @defer.inlineCallbacks
    def test_blockedAccountLosesItsSocket(self):
        connection = sqlite3.connect(self.h.path)
        admin.setBlocked(connection, "Ana", True)
        connection.commit()
        connection.close()
        response = yield self.h.form("/obtenerusuarios", token=self.anaToken)
        self.assertEqual(response.body, "802")
        self.assertEqual(self.ana.lines(), ["#RESPUESTA||-||0||#DESCONECTAR||Ana||802"])
        self.assertTrue(self.ana.closed)
        self.assertIsNone(self.h.presence.lookup("Ana"))

    def test_statusUpdatePropagates(self):
        d = self.h.form("/usuariomodificar", token=self.anaToken, estado="OCUPADO")

        def check(response):
            self.assertEqual(response.body, "702")
            self.assertEqual(self.h.presence.lookup("Ana").status, "OCUPADO")

        return d.addCallback(check)


class RestartTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_restartKeepsAccountsFriendsAndProtection(self):
        first = MsgrHarness(self)
        yield first.register("Ana", "pw-ana")
        yield first.register("Bea", "pw-bea")
        ta, tb = (yield first.login("Ana", "pw-ana")), (yield first.login("Bea", "pw-bea"))
        yield first.befriend("Ana", "Bea", ta, tb)
        yield first.register("Cy", "pw-cy")
        tc = yield first.login("Cy", "pw-cy")
        yield first.form("/enviarsolicitud", token=tc, para="Ana")
        first.close()

        second = MsgrHarness(self, path=first.path)
        response = yield second.form("/obtenerusuarios", token=ta)
        self.assertEqual(response.status, 401, "tokens do not survive a restart")
        pb = ProtobufClient(second)
        self.assertEqual(pb.login("bea").code, chat_pb2.ServerResponse.FAILED_OPERATION)
        ana, token = yield second.bound("Ana", "pw-ana")
        self.assertEqual(
            ana.lines(),
            [
                "#RESPUESTA||-||1||#HOLA||Ana||701",
                "#LISTA_USUARIOS||-||Ana||",
                "#SOLICITUDES||-||Ana||Cy",
            ],
        )
        bea, _ = yield second.bound("Bea", "pw-bea")
        self.assertEqual(ana.lines(), ["#LISTA_USUARIOS||-||Ana||Bea"])
        response = yield second.form("/obtenerusuarios", token=token)
        self.assertEqual(response.body, "704||Bea online ACTIVO")
        ana.lose()
        bea.lose()


class HalfCloseTests(unittest.TestCase):
    """
    A client that shuts down its sending side after its lines gets every
    answer, including those that wait for the database, then the close.
    """

    @defer.inlineCallbacks
    def setUp(self):
        self.h = MsgrHarness(self)
        yield self.h.register("Ana")
        yield self.h.register("Bea")
        self.token = yield self.h.login("Ana")

    @defer.inlineCallbacks
    def test_holaThenHalfClose(self):
        """
        `#HOLA` (without its line end) and the half-close: the bind waits
        for the database, is answered with the lists, and then the socket
        closes and the name is free.
        """
        client = self.h.connect()
        client.send(f"#HOLA||{self.token}||Ana")
        client.protocol.readConnectionLost()
        self.assertFalse(client.closed)
        yield self.h.settle()
        self.assertEqual(
            client.lines(),
            [
                "#RESPUESTA||-||1||#HOLA||Ana||701",
                "#LISTA_USUARIOS||-||Ana||",
                "#SOLICITUDES||-||Ana||",
            ],
        )
        self.assertTrue(client.closed)
        self.assertIsNone(self.h.presence.lookup("Ana"))

    @defer.inlineCallbacks
    def test_friendRequestAnsweredBeforeTheClose(self):
        """A #SOLICITUD answered by the database is written before the close."""
        client, token = yield self.h.bound("Ana")
        client.lines()
        client.sendLine(f"#SOLICITUD||{token}||Ana||Bea")
        client.protocol.readConnectionLost()
        self.assertFalse(client.closed)
        yield self.h.settle()
        self.assertEqual(client.lines(), ["#RESPUESTA||-||2||#SOLICITUD||Ana||704"])
        self.assertTrue(client.closed)

    def test_nothingSent(self):
        client = self.h.connect()
        client.protocol.readConnectionLost()
        self.assertEqual(client.lines(), [])
        self.assertTrue(client.closed)
