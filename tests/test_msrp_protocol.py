"""
MSRP (seed 004) as its clients see it: names, text, lists, errors, the mode
for people on nc/telnet, and delivery to and from the protobuf chat, with
exact bytes on the wire over in-memory transports.
"""

from __future__ import annotations

import random

from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.python.usage import UsageError
from twisted.trial.unittest import TestCase

from chatd.msrp.codec import (
    MAX_LINE,
    MAX_TEXT,
    MsrpFrameDecoder,
    encodeError,
    encodeFileHeader,
    encodeListRequest,
    encodeMessage,
)
from chatd.msrp.protocol import (
    BINARY,
    DEFAULT_NAME_TIMEOUT,
    HUMAN,
    MsrpFactory,
    MsrpProtocol,
)
from chatd.msrp.texts import (
    ERR_CUT_SHORT,
    ERR_EMPTY,
    ERR_INTERNAL,
    ERR_LINE_TOO_LONG,
    ERR_NAME_LENGTH,
    ERR_NAME_RULE,
    ERR_NAME_TIMEOUT,
    ERR_NOT_FOUND,
    ERR_NOT_UTF8,
    ERR_OPCODE,
    ERR_USAGE,
    errNameInUse,
    errRecipientGone,
    errNameProtected,
    errNoFiles,
    humanGreeting,
)
from chatd.presence import InMemoryPresenceService
from chatd.protobuf import chat_pb2
from chatd.protobuf.protocol import DELIMITED, ProtobufChatFactory
from chatd.tap import NO_LIMIT, Options, makeService
from tests.support import ProtobufClient, login, message, request

Q = chat_pb2.ClientRequest
R = chat_pb2.ServerResponse


def errorFrame(text: str) -> bytes:
    """The exact ERROR frame for C{text}."""
    return b"\x00\x05" + text.encode("utf-8") + b"\x00"


def errorLine(text: str) -> bytes:
    """The exact error line of the mode for people."""
    return f"ERROR: {text}\n".encode("utf-8")


def listFrame(*names: str) -> bytes:
    text = "Lista de clientes:\n" + "".join(
        f"Cliente {i}: {name}\n" for i, name in enumerate(names, 1)
    )
    return b"\x00\x03" + text.encode("utf-8") + b"\x00"


class FlowTransport(StringTransport):
    """
    A L{StringTransport} with a bounded write buffer, like a real transport:
    past C{bufferSize} unread bytes it pauses its streaming producer, and
    L{read} empties it and resumes the producer. Its own C{producerState}
    says whether the protocol paused reading from it.
    """

    def __init__(self, bufferSize: int | None = None) -> None:
        super().__init__(peerAddress=IPv4Address("TCP", "192.0.2.9", 40000))
        self.bufferSize = bufferSize
        self.full = False
        self.maxBuffered = 0

    def write(self, data: bytes) -> None:
        super().write(data)
        buffered = len(self.value())
        self.maxBuffered = max(self.maxBuffered, buffered)
        if (
            self.bufferSize is not None
            and not self.full
            and self.producer is not None
            and buffered > self.bufferSize
        ):
            self.full = True
            self.producer.pauseProducing()

    def read(self) -> bytes:
        """Everything written since the last read; a full buffer drains."""
        data = self.value()
        self.clear()
        if self.full:
            self.full = False
            if self.producer is not None:
                self.producer.resumeProducing()
        return data


class MsrpClient:
    """An MSRP client over a L{FlowTransport}, driving a server protocol."""

    def __init__(
        self, factory: MsrpFactory, name: bytes | None = None, bufferSize: int | None = None
    ) -> None:
        self.transport = FlowTransport(bufferSize)
        self.protocol: MsrpProtocol = factory.buildProtocol(self.transport.getPeer())
        self.protocol.makeConnection(self.transport)
        if name is not None:
            self.send(name)

    def send(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def sendByteByByte(self, data: bytes) -> None:
        for i in range(len(data)):
            self.protocol.dataReceived(data[i : i + 1])

    def wire(self) -> bytes:
        return self.transport.read()

    def frames(self) -> list:
        return list(MsrpFrameDecoder(fromServer=True).feed(self.wire()))

    @property
    def closed(self) -> bool:
        return self.transport.disconnecting

    @property
    def readingPaused(self) -> bool:
        return self.transport.producerState == "paused"

    def disconnect(self) -> None:
        self.transport.disconnecting = True
        self.protocol.connectionLost(Failure(ConnectionDone()))


class MsrpTestMixin:
    maxQueued = 1024**2
    maxFileSize = 10**9

    def setUp(self) -> None:
        self.clock = Clock()
        self.presence = InMemoryPresenceService(
            isProtectedName=lambda name: name.casefold() == "acct"
        )
        self.factory = MsrpFactory(
            self.presence,
            self.clock,
            maxFileSize=self.maxFileSize,
            maxQueued=self.maxQueued, metrics=self.presence.metrics,
        )
        self.protobufFactory = ProtobufChatFactory(
            self.presence, self.clock, framing=DELIMITED, metrics=self.presence.metrics
        )

    def client(self, name: bytes | None = None, bufferSize: int | None = None) -> MsrpClient:
        return MsrpClient(self.factory, name, bufferSize)

    def human(self, name: bytes) -> MsrpClient:
        client = self.client(name + b"\n")
        self.assertEqual(
            client.wire(), (humanGreeting(name.decode()) + "\n").encode("utf-8")
        )
        return client

    def protobuf(self, name: str) -> ProtobufClient:
        client = ProtobufClient(self.protobufFactory)
        client.send(login(name))
        self.assertEqual(client.response().code, R.SUCCESSFUL_OPERATION)
        return client

    def assertClosedWith(self, client: MsrpClient, wire: bytes) -> None:
        self.assertEqual(client.wire(), wire)
        self.assertTrue(client.closed)
        self.assertIsNone(self.presence.infoFor(client.protocol))
        # Closed only after unregistering: a real transport would wait for
        # the producer otherwise.
        self.assertIsNone(client.transport.producer)


class NameTests(MsrpTestMixin, TestCase):
    def test_binaryLogin(self) -> None:
        """The first 4 bytes are the name; nothing is written back."""
        alic = self.client(b"alic")
        info = self.presence.lookup("alic")
        self.assertEqual((info.name, info.protocol, info.ip), ("alic", "msrp", "192.0.2.9"))
        self.assertEqual(alic.wire(), b"")
        self.assertFalse(alic.closed)
        self.assertIsNone(alic.protocol.mode)  # binary until the next byte

    def test_nameByteByByte(self) -> None:
        alic = self.client()
        alic.sendByteByByte(b"alic" + encodeListRequest())
        self.assertEqual(alic.protocol.mode, BINARY)
        self.assertEqual(alic.wire(), listFrame("alic"))

    def test_nameAndFrameJoined(self) -> None:
        """The name and the first frame in one read."""
        alic = self.client(b"alic" + encodeListRequest())
        self.assertEqual(alic.wire(), listFrame("alic"))
        self.assertEqual(alic.protocol.mode, BINARY)

    def test_utf8Name(self) -> None:
        """A name is 4 bytes of UTF-8: 'ñab' is 4 bytes."""
        self.client("ñab".encode())
        self.assertEqual(self.presence.lookup("ñab").protocol, "msrp")

    def test_invalidName(self) -> None:
        """Names breaking the presence rule get an ERROR frame and are closed."""
        for name in (b"a b\x00", b"a|bc", b"\xff\xfe\xfd\xfc", b"ab\x00c", b"ab\tc"):
            client = self.client(name)
            self.assertClosedWith(client, errorFrame(ERR_NAME_RULE))
        self.assertEqual(self.presence.users(), [])

    def test_nameInUse(self) -> None:
        """A name online in any protocol (any case) is refused."""
        self.client(b"alic")
        second = self.client(b"ALIC")
        self.assertClosedWith(second, errorFrame(errNameInUse("ALIC")))
        self.protobuf("bob_")
        third = self.client(b"bob_")
        self.assertClosedWith(third, errorFrame(errNameInUse("bob_")))

    def test_lookalikeNames(self) -> None:
        """
        Names are the same in any width or normal form, look-alikes are in
        use, and invisible or blank characters break the rule; in 4 bytes:
        'éx' online on protobuf refuses its NFD form, 'Jos' refuses 'Jоs'
        (Cyrillic о) and 'Ｊo' is 'Jo'.
        """
        self.protobuf("\u00e9x")
        self.protobuf("Jos")
        self.protobuf("Jo")
        for name in ["e\u0301x", "J\u043es", "\uff2ao"]:
            wire = name.encode("utf-8")
            self.assertEqual(len(wire), 4)
            client = self.client(wire)
            self.assertClosedWith(client, errorFrame(errNameInUse(name)))
        for name in ["ab\u034f", "a\u3164", "a\u2800"]:
            client = self.client(name.encode("utf-8"))
            self.assertClosedWith(client, errorFrame(ERR_NAME_RULE))
        self.assertEqual(
            [u.protocol for u in self.presence.users()], ["protobuf"] * 3
        )

    def test_protectedName(self) -> None:
        """An account's name needs its password, which MSRP cannot carry."""
        client = self.client(b"acct")
        self.assertClosedWith(client, errorFrame(errNameProtected("acct")))

    def test_nameTimeout(self) -> None:
        """A connection that does not send its name in time is closed."""
        client = self.client(b"al")
        self.clock.advance(DEFAULT_NAME_TIMEOUT - 0.1)
        self.assertFalse(client.closed)
        self.clock.advance(0.1)
        self.assertClosedWith(client, errorFrame(ERR_NAME_TIMEOUT))
        # What is left is the deadline of the close itself.
        self.assertEqual(
            [call.func for call in self.clock.getDelayedCalls()],
            [client.transport.abortConnection],
        )

    def test_noTimeoutOnceNamed(self) -> None:
        client = self.client(b"alic")
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(DEFAULT_NAME_TIMEOUT * 2)
        self.assertFalse(client.closed)

    def test_logoutOnDisconnect(self) -> None:
        client = self.client(b"alic")
        client.disconnect()
        self.assertIsNone(self.presence.lookup("alic"))

    def test_slowLogin(self) -> None:
        """
        With a presence service that answers later (a cluster), reading
        pauses and the bytes that arrive meanwhile are handled afterwards.
        """
        pending = []
        login = self.presence.login

        def slowLogin(*args, **kwargs):
            d = defer.Deferred()
            pending.append((d, args, kwargs))
            return d

        self.patch(self.presence, "login", slowLogin)
        alic = self.client(b"alic" + encodeListRequest())
        self.assertTrue(alic.readingPaused)
        alic.send(encodeListRequest())
        self.assertEqual(alic.wire(), b"")
        d, args, kwargs = pending.pop()
        login(*args, **kwargs).chainDeferred(d)
        self.assertFalse(alic.readingPaused)
        self.assertEqual(alic.wire(), listFrame("alic") * 2)

    def test_slowLoginLost(self) -> None:
        """A connection lost during a slow login leaves nobody logged in."""
        pending = []
        login = self.presence.login
        self.patch(self.presence, "login", lambda *a, **k: pending.append((a, k)) or d)
        d = defer.Deferred()
        alic = self.client(b"alic")
        alic.disconnect()
        a, k = pending.pop()
        login(*a, **k).chainDeferred(d)
        self.assertEqual(self.presence.users(), [])

    def test_disconnectBeforeName(self) -> None:
        """The name timer is cancelled when the connection goes early."""
        client = self.client(b"al")
        client.disconnect()
        self.assertEqual(self.clock.getDelayedCalls(), [])


class MessageTests(MsrpTestMixin, TestCase):
    def test_message(self) -> None:
        """MSJE to a user arrives with the sender's name in the slot."""
        alic, bob = self.client(b"alic"), self.client(b"bob_")
        alic.send(encodeMessage(b"bob_", "Hola, ¿cómo estás?".encode()))
        self.assertEqual(bob.wire(), b"\x00\x01alicHola, \xc2\xbfc\xc3\xb3mo est\xc3\xa1s?\x00")
        self.assertEqual(alic.wire(), b"")

    def test_recipientAnyCase(self) -> None:
        alic, bob = self.client(b"alic"), self.client(b"bob_")
        alic.send(encodeMessage(b"BOB_", b"x"))
        self.assertEqual(bob.wire(), b"\x00\x01alicx\x00")

    def test_joinedAndSplit(self) -> None:
        """Several frames in one read, then the same one byte at a time."""
        alic, bob = self.client(b"alic"), self.client(b"bob_")
        frames = encodeMessage(b"bob_", b"uno") + encodeMessage(b"bob_", b"dos")
        alic.send(frames)
        expected = b"\x00\x01alicuno\x00\x00\x01alicdos\x00"
        self.assertEqual(bob.wire(), expected)
        alic.sendByteByByte(frames)
        self.assertEqual(bob.wire(), expected)

    def test_toSelf(self) -> None:
        alic = self.client(b"alic")
        alic.send(encodeMessage(b"alic", b"yo"))
        self.assertEqual(alic.wire(), b"\x00\x01alicyo\x00")

    def test_notFound(self) -> None:
        """An unknown recipient: ERROR, and the connection goes on."""
        alic = self.client(b"alic")
        alic.send(encodeMessage(b"nadi", b"hola") + encodeListRequest())
        self.assertEqual(
            alic.wire(), errorFrame("Cliente objetivo no encontrado.") + listFrame("alic")
        )
        self.assertFalse(alic.closed)

    def test_recipientNotUtf8(self) -> None:
        alic = self.client(b"alic")
        alic.send(encodeMessage(b"\xff\xff\xff\xff", b"hola"))
        self.assertEqual(alic.wire(), errorFrame(ERR_NOT_FOUND))

    def test_textNotUtf8(self) -> None:
        alic, bob = self.client(b"alic"), self.client(b"bob_")
        alic.send(encodeMessage(b"bob_", b"\xc3") + encodeMessage(b"bob_", b"ok"))
        self.assertEqual(alic.wire(), errorFrame(ERR_NOT_UTF8))
        self.assertEqual(
            ERR_NOT_UTF8, "Error en el formato del mensaje. El texto no es UTF-8 válido."
        )
        self.assertEqual(bob.wire(), b"\x00\x01alicok\x00")

    def test_emptyText(self) -> None:
        alic, bob = self.client(b"alic"), self.client(b"bob_")
        alic.send(encodeMessage(b"bob_", b""))
        self.assertEqual(alic.wire(), errorFrame(ERR_EMPTY))
        self.assertEqual(bob.wire(), b"")

    def test_textTooLong(self) -> None:
        """A text past the maximum cannot be resynchronised: ERROR, close."""
        alic, bob = self.client(b"alic"), self.client(b"bob_")
        alic.send(b"\x00\x01bob_" + b"t" * (MAX_TEXT + 1))
        self.assertClosedWith(
            alic,
            errorFrame(
                f"Error en el formato del mensaje. El campo texto supera {MAX_TEXT} bytes."
            ),
        )
        self.assertEqual(bob.wire(), b"")

    def test_longestText(self) -> None:
        alic, bob = self.client(b"alic"), self.client(b"bob_")
        alic.send(encodeMessage(b"bob_", b"t" * MAX_TEXT))
        self.assertEqual(bob.wire(), b"\x00\x01alic" + b"t" * MAX_TEXT + b"\x00")


class ListTests(MsrpTestMixin, TestCase):
    def test_list(self) -> None:
        """The seed's exact text, every online user in login order."""
        alic = self.client(b"alic")
        self.client(b"bob_")
        alic.send(b"\x00\x03")
        self.assertEqual(
            alic.wire(),
            b"\x00\x03Lista de clientes:\nCliente 1: alic\nCliente 2: bob_\n\x00",
        )

    def test_instructionWord(self) -> None:
        """LIST may carry the seed's instruction word, ended by 0x00."""
        alic = self.client(b"alic")
        alic.send(encodeListRequest(b"clientes") + encodeListRequest())
        self.assertEqual(alic.wire(), listFrame("alic") * 2)
        alic.sendByteByByte(encodeListRequest(b"clientes") + encodeMessage(b"alic", b"x"))
        self.assertEqual(alic.wire(), listFrame("alic") + b"\x00\x01alicx\x00")

    def test_otherProtocolsListed(self) -> None:
        """Protobuf users are in MSRP's list, MSRP users in protobuf's."""
        alic = self.client(b"alic")
        pb = self.protobuf("alberto")
        alic.send(encodeListRequest())
        # With the slot under which binary clients see and address alberto.
        self.assertEqual(alic.wire(), listFrame("alic", "alberto (albe)"))
        pb.send(request(option=Q.CONNECTED_USERS))
        response = pb.response()
        self.assertEqual(
            [(u.username, u.ip) for u in response.users.users],
            [("alic", "192.0.2.9"), ("alberto", "192.0.2.7")],
        )

    def test_humanInList(self) -> None:
        alic = self.client(b"alic")
        self.human(b"hum1")
        alic.send(encodeListRequest())
        self.assertEqual(alic.wire(), listFrame("alic", "hum1"))


class ErrorTests(MsrpTestMixin, TestCase):
    def test_unknownOpcode(self) -> None:
        """ERROR, then the connection is closed: the stream is lost."""
        for n, opcode in enumerate((b"\x00\x00", b"\x00\x06", b"\x00\xff")):
            client = self.client(b"cli%d" % n)
            client.send(encodeListRequest() + opcode + encodeListRequest())
            self.assertClosedWith(
                client, listFrame(client.protocol.user.name) + errorFrame(ERR_OPCODE)
            )
            self.assertEqual(ERR_OPCODE, "Código de operación incorrecto.")

    def test_nonZeroFirstByte(self) -> None:
        """Once binary, a frame starting with a non-zero byte is an unknown opcode."""
        client = self.client(b"alic" + encodeListRequest() + b"\x00\x01alic\x00")
        client.wire()
        client.send(b"\x01\x01")
        self.assertClosedWith(client, errorFrame(ERR_OPCODE))

    def test_clientError(self) -> None:
        """An ERROR from a client is logged and otherwise ignored."""
        client = self.client(b"alic")
        client.send(encodeError(b"algo fue mal") + encodeListRequest())
        self.assertEqual(client.wire(), listFrame("alic"))

    def test_nothingAfterClose(self) -> None:
        """Bytes after a fatal error are ignored."""
        alic, bob = self.client(b"alic"), self.client(b"bob_")
        alic.send(b"\x00\x09" + encodeMessage(b"bob_", b"x"))
        alic.send(encodeMessage(b"bob_", b"y"))
        self.assertClosedWith(alic, errorFrame(ERR_OPCODE))
        self.assertEqual(bob.wire(), b"")

    def test_internalError(self) -> None:
        """An unexpected failure closes only that connection, with an ERROR."""
        alic = self.client(b"alic")

        def broken() -> None:
            raise RuntimeError("boom")

        self.patch(self.presence, "users", broken)
        alic.send(encodeListRequest())
        self.assertClosedWith(alic, errorFrame(ERR_INTERNAL))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_garbage(self) -> None:
        """
        Random bytes after a name never raise out of dataReceived; the
        session ends closed with an ERROR or is still usable.
        """
        rnd = random.Random(1234)
        bob = self.client(b"bob_")
        closed = 0
        for n in range(300):
            name = f"g{n:03d}".encode()
            client = self.client(name)
            data = b"\x00" + bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 400)))
            pos = 0
            while pos < len(data):
                step = rnd.randrange(1, 30)
                client.send(data[pos : pos + step])
                pos += step
            wire = client.wire()
            if client.closed:
                self.assertIn(b"\x00\x05", wire)
                self.assertTrue(wire.endswith(b"\x00"))
                closed += 1
            client.disconnect()
            bob.wire()
        self.assertEqual([u.name for u in self.presence.users()], ["bob_"])
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertGreater(closed, 0)


class GarbageFromTheStartTests(MsrpTestMixin, TestCase):
    def test_garbage(self) -> None:
        """
        Random bytes from the first byte on (names, typed lines, frames):
        nothing raises, nothing is logged as a failure, and every session
        ends either closed or usable.
        """
        rnd = random.Random(5678)
        for _ in range(300):
            alphabet = rnd.choice([b"\x00\x01\x02\x03\x04\x05ab \r\n", bytes(range(256))])
            data = bytes(rnd.choice(alphabet) for _ in range(rnd.randrange(1, 300)))
            client = self.client()
            pos = 0
            while pos < len(data):
                step = rnd.randrange(1, 20)
                client.send(data[pos : pos + step])
                pos += step
            client.wire()
            client.disconnect()
        self.assertEqual(self.presence.users(), [])
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertEqual(self.clock.getDelayedCalls(), [])


class TapTests(TestCase):
    """The MSRP options of C{twistd chatd} and its listener."""

    def options(self, *args: str) -> Options:
        config = Options()
        config.parseOptions(
            ["--db", "none", "--http", "none", "--msgr", "none", "--protobuf", "none", *args]
        )
        return config

    def test_defaults(self) -> None:
        config = self.options()
        self.assertEqual(config["msrp"], "tcp:8080")
        self.assertEqual(config["msrp-max-file"], 4 * 1024**3)
        self.assertEqual(config["msrp-max-queue"], 1024**2)
        listener = makeService(config, reactor=Clock()).getServiceNamed("msrp")
        self.assertIsInstance(listener.factory, MsrpFactory)
        self.assertEqual(listener.factory.maxFileSize, 4 * 1024**3)
        self.assertEqual(listener.factory.maxQueued, 1024**2)

    def test_options(self) -> None:
        config = self.options(
            "--msrp", "tcp:0:interface=127.0.0.1", "--msrp-max-file", "100",
            "--msrp-max-queue", "50",
        )
        top = makeService(config, reactor=Clock())
        factory = top.getServiceNamed("msrp").factory
        self.assertEqual((factory.maxFileSize, factory.maxQueued), (100, 50))
        self.assertIs(factory.presence, top.presence)

    def test_disabled(self) -> None:
        top = makeService(self.options("--msrp", "none"), reactor=Clock())
        self.assertRaises(KeyError, top.getServiceNamed, "msrp")

    def test_badSizes(self) -> None:
        for option in ("--msrp-max-file", "--msrp-max-queue"):
            for value in ("-1", "x"):
                self.assertRaises(UsageError, self.options, option, value)

    def test_zeroIsNoLimit(self) -> None:
        config = self.options(
            "--msrp", "tcp:0:interface=127.0.0.1", "--msrp-max-file", "0",
            "--msrp-max-queue", "0",
        )
        factory = makeService(config, reactor=Clock()).getServiceNamed("msrp").factory
        self.assertEqual((factory.maxFileSize, factory.maxQueued), (NO_LIMIT, NO_LIMIT))


class HumanTests(MsrpTestMixin, TestCase):
    def test_greeting(self) -> None:
        """Name and Enter (\\n or \\r\\n): a greeting line, mode for people."""
        hum = self.client(b"hum1\n")
        self.assertEqual(
            hum.wire(),
            "Hola, hum1. Escribe: <nombre> <texto>, all <texto>, clientes o salir.\n".encode(),
        )
        self.assertEqual(hum.protocol.mode, HUMAN)
        hum2 = self.client(b"hum2\r\n")
        self.assertEqual(hum2.wire(), (humanGreeting("hum2") + "\n").encode())

    def test_enterInALaterRead(self) -> None:
        """The name, then Enter in another read (telnet in character mode)."""
        hum = self.client()
        hum.sendByteByByte(b"hum1\r\nclientes\r\n")
        self.assertEqual(
            hum.wire(),
            (humanGreeting("hum1") + "\nLista de clientes:\nCliente 1: hum1\n").encode(),
        )

    def test_messageToBinary(self) -> None:
        hum, bob = self.human(b"hum1"), self.client(b"bob_")
        hum.send(b"bob_ hola, \xc2\xbfqu\xc3\xa9 tal?\n")
        self.assertEqual(bob.wire(), encodeMessage(b"hum1", "hola, ¿qué tal?".encode()))
        self.assertEqual(hum.wire(), b"")

    def test_messageFromBinary(self) -> None:
        hum, alic = self.human(b"hum1"), self.client(b"alic")
        alic.send(encodeMessage(b"hum1", b"hola"))
        self.assertEqual(hum.wire(), b"[alic]: hola\n")

    def test_multiLineText(self) -> None:
        """Lines inside a text are indented, so they cannot pass for messages."""
        hum, pb = self.human(b"hum1"), self.protobuf("alberto")
        pb.send(message("hum1", "uno\n[bob_]: falso\r\ndos"))
        self.assertEqual(hum.wire(), b"[alberto]: uno\n  [bob_]: falso\n  dos\n")

    def test_anyNameLength(self) -> None:
        """People can write to users whose names are not 4 bytes."""
        hum, pb = self.human(b"hum1"), self.protobuf("alberto")
        pb.responses()
        hum.send(b"ALBERTO   hola  a todos \n")
        response = pb.response()
        self.assertEqual(
            (response.messg.sender, response.messg.receiver, response.messg.text),
            ("hum1", "alberto", "hola  a todos"),
        )
        pb.send(message("hum1", "hola"))
        self.assertEqual(hum.wire(), b"[alberto]: hola\n")

    def test_broadcast(self) -> None:
        """all <text> writes to everyone else; people see who it was for."""
        hum, hum2, bob = self.human(b"hum1"), self.human(b"hum2"), self.client(b"bob_")
        pb = self.protobuf("alberto")
        pb.responses()
        hum.send(b"all hola\n")
        self.assertEqual(hum2.wire(), b"[hum1 -> all]: hola\n")
        self.assertEqual(bob.wire(), encodeMessage(b"hum1", b"hola"))
        self.assertEqual(pb.response().messg.receiver, "all")
        self.assertEqual(hum.wire(), b"")

    def test_clientes(self) -> None:
        hum = self.human(b"hum1")
        self.client(b"bob_")
        hum.send(b"CLIENTES\n")
        self.assertEqual(hum.wire(), b"Lista de clientes:\nCliente 1: hum1\nCliente 2: bob_\n")

    def test_salir(self) -> None:
        hum = self.human(b"hum1")
        hum.send(b"salir\nbob_ no\n")
        self.assertClosedWith(hum, "Adiós.\n".encode())

    def test_notFound(self) -> None:
        hum = self.human(b"hum1")
        hum.send(b"nadie hola\n")
        self.assertEqual(hum.wire(), b"ERROR: Cliente objetivo no encontrado.\n")

    def test_usage(self) -> None:
        """A word that is not a command, and empty lines."""
        hum = self.human(b"hum1")
        hum.send(b"hola\n\n   \r\n")
        self.assertEqual(hum.wire(), errorLine(ERR_USAGE))
        self.assertEqual(
            errorLine(ERR_USAGE),
            b"ERROR: Escribe: <nombre> <texto>, all <texto>, clientes o salir.\n",
        )

    def test_lineTooLong(self) -> None:
        """A long line is refused, dropped to its end, and the session goes on."""
        hum, bob = self.human(b"hum1"), self.client(b"bob_")
        hum.send(b"bob_ " + b"x" * MAX_LINE + b"\nbob_ ok\n")
        self.assertEqual(hum.wire(), errorLine(ERR_LINE_TOO_LONG))
        self.assertEqual(bob.wire(), encodeMessage(b"hum1", b"ok"))

    def test_byteByByte(self) -> None:
        hum, bob = self.client(), self.client(b"bob_")
        hum.sendByteByByte(b"hum1\nbob_ hola\r\n")
        self.assertEqual(bob.wire(), encodeMessage(b"hum1", b"hola"))

    def test_nameTooLong(self) -> None:
        """'alice' and Enter: an error line, closed, nobody logged in."""
        hum = self.client(b"alice\n")
        self.assertClosedWith(
            hum, b"ERROR: Nombre inv\xc3\xa1lido: debe tener exactamente 4 bytes.\n"
        )
        self.assertEqual(self.presence.users(), [])

    def test_nameTooLongLater(self) -> None:
        """'alic' in one read, 'e' and Enter in the next."""
        hum = self.client(b"alic")
        self.assertIsNotNone(self.presence.lookup("alic"))
        hum.send(b"e\n")
        self.assertClosedWith(hum, errorLine(ERR_NAME_LENGTH))
        self.assertEqual(self.presence.users(), [])

    def test_nameTooShort(self) -> None:
        for typed in (b"al\n", b"bob\r\n", b"\n"):
            hum = self.client(typed)
            self.assertClosedWith(hum, errorLine(ERR_NAME_LENGTH))
        hum = self.client()
        hum.sendByteByByte(b"al\n")
        self.assertClosedWith(hum, errorLine(ERR_NAME_LENGTH))

    def test_nameRuleAsLine(self) -> None:
        """Errors of a typed name are lines."""
        hum = self.client(b"a bc\n")
        self.assertClosedWith(hum, errorLine(ERR_NAME_RULE))
        self.client(b"bob_")
        hum = self.client(b"bob_\n")
        self.assertClosedWith(hum, errorLine(errNameInUse("bob_")))

    def test_filesRefused(self) -> None:
        """A person cannot be sent a file: ERROR to the sender, bytes dropped."""
        self.human(b"hum1")
        alic = self.client(b"alic")
        alic.send(encodeFileHeader(b"hum1", b"f.txt", 4) + b"\x00\x05ab" + encodeListRequest())
        self.assertEqual(alic.wire(), errorFrame(errNoFiles("hum1")) + listFrame("hum1", "alic"))
        self.assertEqual(errNoFiles("hum1"), "hum1 no puede recibir archivos.")


class CrossProtocolTests(MsrpTestMixin, TestCase):
    def test_protobufToMsrp(self) -> None:
        """A protobuf user with a 4-byte name: an ordinary MSJE."""
        alic = self.client(b"alic")
        pb = self.protobuf("bob_")
        pb.send(message("alic", "hola"))
        self.assertEqual(pb.response().code, R.SUCCESSFUL_OPERATION)
        self.assertEqual(alic.wire(), b"\x00\x01bob_hola\x00")

    def test_longNameSender(self) -> None:
        """The first 4 bytes in the slot, the full name at the start of the text."""
        alic = self.client(b"alic")
        pb = self.protobuf("alberto")
        pb.send(message("alic", "hola"))
        self.assertEqual(alic.wire(), b"\x00\x01albealberto: hola\x00")

    def test_shortNameSender(self) -> None:
        """A name shorter than 4 bytes is padded with spaces in the slot."""
        alic = self.client(b"alic")
        pb = self.protobuf("bo")
        pb.send(message("alic", "hola"))
        self.assertEqual(alic.wire(), b"\x00\x01bo  bo: hola\x00")

    def test_nulInText(self) -> None:
        """A protobuf text may hold U+0000; it cannot end the MSRP field early."""
        alic = self.client(b"alic")
        pb = self.protobuf("bob_")
        pb.send(message("alic", "a\x00b"))
        self.assertEqual(alic.wire(), b"\x00\x01bob_a\xef\xbf\xbdb\x00")

    def test_msrpToProtobuf(self) -> None:
        alic = self.client(b"alic")
        pb = self.protobuf("bob_")
        alic.send(encodeMessage(b"bob_", "¡hola!".encode()))
        response = pb.response()
        self.assertEqual(response.option, Q.SEND_MESSAGE)
        self.assertEqual(
            (response.messg.sender, response.messg.receiver, response.messg.text),
            ("alic", "bob_", "¡hola!"),
        )
        self.assertEqual(alic.wire(), b"")

    def test_protobufBroadcast(self) -> None:
        alic = self.client(b"alic")
        hum = self.human(b"hum1")
        pb = self.protobuf("bob_")
        pb.send(message("all", "hola"))
        self.assertEqual(alic.wire(), b"\x00\x01bob_hola\x00")
        self.assertEqual(hum.wire(), b"[bob_ -> all]: hola\n")

    def test_protobufSeesLogout(self) -> None:
        alic = self.client(b"alic")
        pb = self.protobuf("bob_")
        alic.disconnect()
        pb.send(message("alic", "hola"))
        self.assertEqual(pb.response().code, R.FAILED_OPERATION)


class HalfCloseTests(MsrpTestMixin, TestCase):
    """
    A client that shuts down its sending side after what it sent (`nc -q 1`
    does) gets every answer, then the server closes.
    """

    def test_docRecipeUnknownRecipient(self) -> None:
        """
        docs/msrp.md's recipe: a name, an MSJE to nobody, the half-close:
        the ERROR frame, then the close.
        """
        client = MsrpClient(self.factory)
        client.send(b"clt3\x00\x01zzzzHola\x00")
        client.protocol.readConnectionLost()
        self.assertEqual(client.wire(), errorFrame(ERR_NOT_FOUND))
        self.assertTrue(client.closed)
        self.assertIsNone(self.presence.lookup("clt3"))

    def test_lastTypedLineWithoutEnter(self) -> None:
        """
        A person's last line needs no Enter: `clientes` then the half-close
        is answered with the list.
        """
        client = MsrpClient(self.factory)
        client.send(b"alic\nclientes")
        client.protocol.readConnectionLost()
        self.assertEqual(
            client.wire(),
            humanGreeting("alic").encode("utf-8") + b"\n"
            b"Lista de clientes:\nCliente 1: alic\n",
        )
        self.assertTrue(client.closed)

    def test_frameCutShort(self) -> None:
        """
        An MSJE whose text never gets its 0x00: the half-close makes it an
        error the client is told, not silence.
        """
        client = MsrpClient(self.factory, b"clt1")
        client.send(b"\x00\x01clt1Hol")
        client.protocol.readConnectionLost()
        self.assertEqual(client.wire(), errorFrame(ERR_CUT_SHORT))
        self.assertTrue(client.closed)

    def test_fileCutShort(self) -> None:
        """
        A file whose content stops at the half-close: its sender is told,
        and its recipient gets the rest as zero bytes (under 1 MiB missing)
        and the ERROR that says it was not delivered, and stays.
        """
        receiver = MsrpClient(self.factory, b"clt1")
        sender = MsrpClient(self.factory, b"clt2")
        sender.send(encodeFileHeader(b"clt1", b"a.txt", 10, 0, b"10.0.0.1") + b"hola ")
        sender.protocol.readConnectionLost()
        self.assertEqual(sender.wire(), errorFrame(ERR_CUT_SHORT))
        self.assertTrue(sender.closed)
        self.assertEqual(
            receiver.wire(),
            encodeFileHeader(b"clt2", b"a.txt", 10, 0, b"10.0.0.1")
            + b"hola "
            + b"\x00" * 5
            + errorFrame(errRecipientGone("clt2", "a.txt")),
        )
        self.assertFalse(receiver.transport.disconnected)

    def test_nameCutShort(self) -> None:
        """Three bytes of a name and the half-close: the name is refused."""
        client = MsrpClient(self.factory)
        client.send(b"clt")
        client.protocol.readConnectionLost()
        self.assertEqual(client.wire(), errorFrame(ERR_NAME_LENGTH))
        self.assertTrue(client.closed)

    def test_waitingMessagesGoFirst(self) -> None:
        """
        What waits for a client whose buffer is full is written before the
        close: a half-close loses nothing sent to it.
        """
        reader = MsrpClient(self.factory, bufferSize=8)
        reader.send(b"clt1\x00\x03")
        sender = MsrpClient(self.factory, b"clt2")
        sender.send(b"\x00\x01clt1uno\x00\x00\x01clt1dos\x00")
        reader.protocol.readConnectionLost()
        self.assertEqual(
            reader.wire(),
            listFrame("clt1") + b"\x00\x01clt2uno\x00\x00\x01clt2dos\x00",
        )
        self.assertTrue(reader.closed)

    def test_fileToAHalfClosedClientIsFinished(self) -> None:
        """
        A file streaming to a client that half-closed is written to its end
        before the close (and its sender is not told of a failure).
        """
        receiver = MsrpClient(self.factory, b"clt1")
        sender = MsrpClient(self.factory, b"clt2")
        header = encodeFileHeader(b"clt1", b"a.txt", 10, 0, b"10.0.0.1")
        sender.send(header + b"hola ")
        receiver.protocol.readConnectionLost()
        self.assertFalse(receiver.closed)
        sender.send(b"mundo")
        self.assertTrue(receiver.closed)
        self.assertEqual(
            receiver.wire(),
            encodeFileHeader(b"clt2", b"a.txt", 10, 0, b"10.0.0.1") + b"hola mundo",
        )
        self.assertEqual(sender.wire(), b"")

    def test_stalledFileToAHalfClosedClientIsCut(self) -> None:
        """
        A file whose sender stalls does not keep a half-closed recipient
        (and its name) forever: after the close grace the connection is
        aborted, the name is free, and the sender learns the file was not
        delivered.
        """
        receiver = MsrpClient(self.factory, b"clt1")
        sender = MsrpClient(self.factory, b"clt2")
        sender.send(encodeFileHeader(b"clt1", b"a.txt", 10, 0, b"10.0.0.1") + b"hola ")
        receiver.protocol.readConnectionLost()
        self.clock.advance(self.factory.limits.closeGrace - 0.1)
        self.assertFalse(receiver.closed)
        self.clock.advance(0.1)
        self.assertTrue(receiver.transport.disconnected)  # aborted
        receiver.disconnect()
        self.assertIsNone(self.presence.lookup("clt1"))
        self.assertEqual(
            [f.text for f in sender.frames()],
            [b"Error al recibir el archivo. clt1 se desconect\xc3\xb3; a.txt no se entreg\xc3\xb3."],
        )
