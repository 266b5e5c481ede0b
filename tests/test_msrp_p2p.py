"""
The MSRP peer-to-peer variant (docs/msrp.md, "The peer-to-peer variant";
shared/notes/dialects.md section 2): byte-exact replays of what its client
sends, over in-memory transports that record each write.
"""

from __future__ import annotations

from twisted.internet import defer, reactor
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.usage import UsageError
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import TestCase

from chatd.msrp.codec import encodeFileHeader, encodeMessage
from chatd.msrp.p2p import MAX_REPLY, encodeList, splitRead
from chatd.msrp.protocol import BINARY, P2P, MsrpFactory
from chatd.presence import InMemoryPresenceService
from chatd.protobuf import chat_pb2
from chatd.protobuf.protocol import DELIMITED, ProtobufChatFactory
from chatd.tap import Options, makeService
from tests.fuzzing import cut, hostileInput
from tests.support import ProtobufClient, login, message
from tests.test_msrp_protocol import FlowTransport, MsrpClient

R = chat_pb2.ServerResponse

NOT_FOUND = "Cliente objetivo no encontrado.\n".encode("utf-8")
BAD_OPCODE = "Código de operación incorrecto.\n".encode("utf-8")
BAD_FORMAT = "Error en el formato del mensaje.\n".encode("utf-8")


class WritesTransport(FlowTransport):
    """A L{FlowTransport} that keeps each write apart, as the client reads them."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        super().write(data)

    def take(self) -> list[bytes]:
        """The writes since the last take."""
        writes, self.writes = self.writes, []
        self.read()
        return writes


class VariantClient(MsrpClient):
    """A client of the variant: each C{send} is one read on the server."""

    def __init__(self, factory: MsrpFactory, name: bytes | None = None) -> None:
        self.transport = WritesTransport()
        self.protocol = factory.buildProtocol(self.transport.getPeer())
        self.protocol.makeConnection(self.transport)
        if name is not None:
            self.send(name)

    def take(self) -> list[bytes]:
        """
        Every write, once what waits is written: a client of the variant
        gets one write per --msrp-p2p-gap, so the injected clock is moved on
        by that until nothing waits.
        """
        clock = self.protocol.clock
        gap = self.protocol.factory.p2pGap
        if gap and hasattr(clock, "advance"):
            for _ in range(10000):
                if self.protocol.closing or not self.protocol.outbound.blocked():
                    break
                clock.advance(gap)
        return self.transport.take()


class VariantTestMixin:
    variant = "auto"

    def setUp(self) -> None:
        self.clock = Clock()
        self.presence = InMemoryPresenceService()
        self.factory = MsrpFactory(
            self.presence,
            self.clock,
            maxFileSize=10**6,
            metrics=self.presence.metrics,
            variant=self.variant,
        )
        self.protobufFactory = ProtobufChatFactory(
            self.presence, self.clock, framing=DELIMITED, metrics=self.presence.metrics
        )

    def p2p(self, name: bytes) -> VariantClient:
        return VariantClient(self.factory, name)

    def seed(self, name: bytes) -> VariantClient:
        """A seed binary client, its name in its own read too."""
        return VariantClient(self.factory, name)

    def protobuf(self, name: str) -> ProtobufClient:
        client = ProtobufClient(self.protobufFactory)
        client.send(login(name))
        self.assertEqual(client.response().code, R.SUCCESSFUL_OPERATION)
        return client


class DetectionTests(VariantTestMixin, TestCase):
    """--msrp-variant auto: the variant is told from the seed per connection."""

    def test_fourByteNameThenMessage(self) -> None:
        """
        A 4-byte name in its own read, then C{00 01 "clt2 hola mundo"} with
        no terminator: the variant. The seed client gets an MSJE; the
        variant's client gets C{[clt2]: ...} as plain text.
        """
        clt2 = self.seed(b"clt2")
        abcd = self.p2p(b"abcd")
        abcd.send(b"\x00\x01clt2 hola mundo")
        self.assertEqual(abcd.protocol.mode, P2P)
        self.assertEqual(clt2.take(), [b"\x00\x01abcdhola mundo\x00"])
        clt2.send(encodeMessage(b"abcd", b"Hola"))
        self.assertEqual(clt2.protocol.mode, BINARY)
        self.assertEqual(abcd.take(), [b"[clt2]: Hola"])

    def test_shortNameThenRequest(self) -> None:
        """A name of 1 to 3 bytes in its own read, then C{00 03}: the variant's list."""
        clt2 = self.seed(b"clt2")
        bob = self.p2p(b"bob")
        self.assertEqual(bob.take(), [])
        bob.send(b"\x00\x03")
        self.assertEqual(bob.protocol.mode, P2P)
        self.assertEqual(
            bob.take(), [b"Lista de clientes:\nCliente 1: clt2\nCliente 2: bob\n"]
        )
        # The seed client sees bob as any short name, and writes to his
        # slot (the name padded with spaces).
        clt2.send(b"\x00\x03")
        self.assertEqual(
            clt2.take(),
            [b"\x00\x03Lista de clientes:\nCliente 1: clt2\nCliente 2: bob\n\x00"],
        )
        clt2.send(encodeMessage(b"bob ", b"hola"))
        self.assertEqual(bob.take(), [b"[clt2]: hola"])

    def test_docExample(self) -> None:
        """The example of docs/msrp.md, "What differs on the wire", byte for byte."""
        clt2 = self.seed(b"clt2")
        bob = self.p2p(bytes.fromhex("626f62"))
        bob.send(bytes.fromhex("0003"))
        self.assertEqual(
            bob.take(), [b"Lista de clientes:\nCliente 1: clt2\nCliente 2: bob\n"]
        )
        bob.send(bytes.fromhex("0001636c743220686f6c61"))
        self.assertEqual(clt2.take(), [bytes.fromhex("0001626f6220626f623a20686f6c6100")])
        clt2.send(bytes.fromhex("0001626f62207175c3a900"))
        self.assertEqual(bob.take(), [bytes.fromhex("5b636c74325d3a2071 75c3a9".replace(" ", ""))])
        self.assertEqual(clt2.take(), [])

    def test_nameJoinedWithRequest(self) -> None:
        """TCP may join the name and the first request: still the variant."""
        clt2 = self.seed(b"clt2")
        bob = self.p2p(b"bob\x00\x03")
        self.assertEqual(bob.protocol.mode, P2P)
        self.assertEqual(
            bob.take(), [b"Lista de clientes:\nCliente 1: clt2\nCliente 2: bob\n"]
        )
        abcd = self.p2p(b"abcd\x00\x01clt2 hola")
        self.assertEqual(abcd.protocol.mode, P2P)
        self.assertEqual(clt2.take(), [b"\x00\x01abcdhola\x00"])
        self.assertEqual(abcd.take(), [])

    def test_offerDetects(self) -> None:
        """An ASCII file header after the name: the variant."""
        abcd = self.p2p(b"abcd")
        abcd.send(b"\x00\x02zzzz f.txt 18 8081 127.0.0.1")
        self.assertEqual(abcd.protocol.mode, P2P)
        self.assertEqual(abcd.take(), [NOT_FOUND])

    def test_seedUnchanged(self) -> None:
        """The seed's MSJE after a name in its own read stays the seed's."""
        clt1 = self.seed(b"clt1")
        clt2 = self.seed(b"clt2")
        clt1.send(b"\x00\x01clt2hola mundo\x00")
        self.assertEqual(clt1.protocol.mode, BINARY)
        self.assertEqual(clt2.take(), [b"\x00\x01clt1hola mundo\x00"])


class ForcedTests(VariantTestMixin, TestCase):
    variant = "p2p"

    def test_nameTruncated(self) -> None:
        """Forced: the first read is the name at once, at most 4 bytes."""
        a = self.p2p(b"abc")
        self.assertEqual(a.protocol.mode, P2P)
        self.assertEqual([u.name for u in self.presence.users()], ["abc"])
        b = self.p2p(b"abcd\x00\x03")
        self.assertEqual([u.name for u in self.presence.users()], ["abc", "abcd"])
        self.assertEqual(
            b.take(), [b"Lista de clientes:\nCliente 1: abc\nCliente 2: abcd\n"]
        )
        self.assertEqual(a.take(), [])


class SeedForcedTests(VariantTestMixin, TestCase):
    variant = "seed"

    def test_neverVariant(self) -> None:
        """Forced seed: the variant's message is an unfinished MSJE; nothing is sent."""
        clt2 = self.seed(b"clt2")
        abcd = self.p2p(b"abcd")
        abcd.send(b"\x00\x01clt2 hola mundo")
        self.assertEqual(abcd.protocol.mode, BINARY)
        self.assertEqual((abcd.take(), clt2.take()), ([], []))


class RequestTests(VariantTestMixin, TestCase):
    """What the variant's client sends, and each answer in its own write."""

    def setUp(self) -> None:
        VariantTestMixin.setUp(self)
        self.bob = self.p2p(b"bob")
        self.bob.send(b"\x00\x03")
        self.ana = self.p2p(b"ana")
        self.ana.send(b"\x00\x03")
        self.bob.take()
        self.ana.take()

    def test_messageBetweenVariantClients(self) -> None:
        self.bob.send(b"\x00\x01ana hola mundo")
        self.assertEqual(self.ana.take(), [b"[bob]: hola mundo"])
        self.assertEqual(self.bob.take(), [])

    def test_spaced(self) -> None:
        """
        Two messages for a client of the variant: the second waits
        --msrp-p2p-gap seconds, so that its client reads them apart.
        """
        clt1 = self.seed(b"clt1")
        clt1.send(encodeMessage(b"bob ", b"uno") + encodeMessage(b"bob ", b"dos"))
        self.assertEqual(self.bob.transport.take(), [b"[clt1]: uno"])
        self.clock.advance(0.04)
        self.assertEqual(self.bob.transport.take(), [])
        self.clock.advance(0.02)
        self.assertEqual(self.bob.transport.take(), [b"[clt1]: dos"])

    def test_unknownTarget(self) -> None:
        self.bob.send(b"\x00\x01zzz hola")
        self.assertEqual(self.bob.take(), [NOT_FOUND])

    def test_emptyLine(self) -> None:
        """An empty line is C{00 01} alone: an error, not silence."""
        self.bob.send(b"\x00\x01")
        self.assertEqual(self.bob.take(), [NOT_FOUND])
        self.bob.send(b"\x00\x01ana")
        self.assertEqual(
            self.bob.take(),
            ["Error en el formato del mensaje. El texto está vacío.\n".encode()],
        )
        self.assertEqual(self.ana.take(), [])

    def test_unopcodedText(self) -> None:
        """The client's un-opcoded line: a text error, and the session goes on."""
        self.bob.send("No se encontró el archivo.\n".encode("utf-8"))
        self.assertEqual(self.bob.take(), [BAD_OPCODE])
        self.assertFalse(self.bob.closed)
        self.bob.send(b"\x00\x01ana sigo")
        self.assertEqual(self.ana.take(), [b"[bob]: sigo"])

    def test_listJoinedWithNext(self) -> None:
        """C{00 03} and the next request in one read: both answered, apart."""
        self.bob.send(b"\x00\x03\x00\x01ana hola")
        self.assertEqual(
            self.bob.take(), [b"Lista de clientes:\nCliente 1: bob\nCliente 2: ana\n"]
        )
        self.assertEqual(self.ana.take(), [b"[bob]: hola"])

    def test_tightLoop(self) -> None:
        """
        The client's input ended: its last line again and again, joined in
        reads. Each is a request; past --rate the sender is told, the
        session stays up and nothing else breaks.
        """
        self.bob.send(b"\x00\x01ana hola" * 100)
        delivered = self.ana.take()
        self.assertEqual(delivered, [b"[bob]: hola"] * 40)
        answers = self.bob.take()
        self.assertEqual(len(answers), 60)
        self.assertEqual(
            set(answers),
            {"Demasiados mensajes: como máximo 20 por segundo. No se entregó.\n".encode()},
        )
        self.assertFalse(self.bob.closed)
        self.clock.advance(1)
        self.bob.send(b"\x00\x01ana otra")
        self.assertEqual(self.ana.take(), [b"[bob]: otra"])

    def test_unknownOpcode(self) -> None:
        self.bob.send(b"\x00\x09xyz")
        self.assertEqual(self.bob.take(), [BAD_OPCODE])
        self.bob.send(b"\x00\x04f.txt")  # never sent by the client: logged only
        self.assertEqual(self.bob.take(), [])

    def test_offerBetweenVariantClients(self) -> None:
        """
        The offer goes to the receiver in its own write, with the sender's
        observed address in place of the one it named: the receiver
        connects there, never to a third host.
        """
        self.bob.send(b"\x00\x02ana f.txt 18 8081 10.9.9.9")
        self.assertEqual(self.ana.take(), [b"\x00\x02ana f.txt 18 8081 192.0.2.9"])
        self.assertEqual(self.bob.take(), [])

    def test_offerBadFormat(self) -> None:
        self.bob.send(b"\x00\x02ana f.txt 18")
        self.assertEqual(self.bob.take(), [BAD_FORMAT])
        self.assertEqual(self.ana.take(), [])

    def test_offerWithControlCharacter(self) -> None:
        """
        A control character in a field (0x01 here, between tabs; the fuzz
        found a 0x00) is a bad offer, not forwarded: a 0x00 would end the
        receiving client's C string.
        """
        self.bob.send(b"\x00\x02ana\t\x01\t18\t8081\th")
        self.assertEqual(self.bob.take(), [BAD_FORMAT])
        self.assertEqual(self.ana.take(), [])

    def test_offerTooLarge(self) -> None:
        self.bob.send(b"\x00\x02ana f.txt 2000000 8081 127.0.0.1")
        self.assertEqual(
            self.bob.take(),
            ["Archivo demasiado grande: 2000000 bytes (máximo 1000000).\n".encode()],
        )
        self.assertEqual(self.ana.take(), [])

    def test_longReplies(self) -> None:
        """Every reply fits the client's 2048-byte read with its 0x00."""
        clt1 = self.seed(b"clt1")
        clt1.send(encodeMessage(b"bob ", b"x" * 5000))
        (delivered,) = self.bob.take()
        self.assertEqual(delivered, b"[clt1]: " + b"x" * (MAX_REPLY - 8))
        names = [f"u{i:03d}" for i in range(300)]
        text = encodeList(names)
        self.assertLessEqual(len(text), MAX_REPLY)
        self.assertTrue(text.endswith("más)\n".encode()))
        self.assertNotIn(b"\x00", text)


class CrossProtocolTests(VariantTestMixin, TestCase):
    def test_protobuf(self) -> None:
        """A protobuf user and a client of the variant talk both ways, by full name."""
        bob = self.p2p(b"bob")
        bob.send(b"\x00\x03")
        bob.take()
        carla = self.protobuf("carla")
        carla.send(message("bob", "hola bob"))
        self.assertEqual(carla.response().code, R.SUCCESSFUL_OPERATION)
        self.assertEqual(bob.take(), [b"[carla]: hola bob"])
        bob.send(b"\x00\x01carla hola carla")
        response = carla.response()
        self.assertEqual(
            (response.messg.sender, response.messg.text), ("bob", "hola carla")
        )
        # By the first 4 characters too, as the variant's own server reads.
        bob.send(b"\x00\x01carl otra")
        self.assertEqual(carla.response().messg.text, "otra")
        bob.send(b"\x00\x03")
        self.assertEqual(
            bob.take(), [b"Lista de clientes:\nCliente 1: bob\nCliente 2: carla (carl)\n"]
        )

    def test_offerToOtherProtocol(self) -> None:
        """A protocol without files: the sender is told so in text."""
        bob = self.p2p(b"bob")
        bob.send(b"\x00\x03")
        bob.take()
        self.protobuf("carla")
        bob.send(b"\x00\x02carla f.txt 18 8081 127.0.0.1")
        self.assertEqual(bob.take(), [b"carla no puede recibir archivos.\n"])


class CodecTests(TestCase):
    def test_splitRead(self) -> None:
        self.assertEqual(
            splitRead(b"\x00\x03\x00\x02a f 1 2 h"), [(3, b""), (2, b"a f 1 2 h")]
        )
        self.assertEqual(splitRead(b"hola\n\x00\x03"), [(None, b"hola\n"), (3, b"")])
        self.assertEqual(splitRead(b"\x00"), [(None, b"\x00")])


class OptionTests(TestCase):
    def options(self, *args: str) -> Options:
        config = Options()
        config.parseOptions(
            ["--db", "none", "--http", "none", "--msgr", "none", "--protobuf", "none", *args]
        )
        return config

    def test_variantOption(self) -> None:
        config = self.options("--msrp", "tcp:0:interface=127.0.0.1")
        factory = makeService(config, reactor=Clock()).getServiceNamed("msrp").factory
        self.assertEqual(factory.variant, "auto")
        config = self.options("--msrp", "tcp:0:interface=127.0.0.1", "--msrp-variant", "p2p")
        factory = makeService(config, reactor=Clock()).getServiceNamed("msrp").factory
        self.assertEqual(factory.variant, "p2p")
        self.assertRaises(UsageError, self.options, "--msrp-variant", "bogus")


class LoopbackTransport(WritesTransport):
    """A chat connection from 127.0.0.1 to chatd's 127.0.0.1, whose writes can be awaited."""

    def __init__(self) -> None:
        StringTransport.__init__(
            self,
            hostAddress=IPv4Address("TCP", "127.0.0.1", 8080),
            peerAddress=IPv4Address("TCP", "127.0.0.1", 40001),
        )
        self.bufferSize = None
        self.full = False
        self.maxBuffered = 0
        self.writes = []
        self.waiting: list[defer.Deferred] = []

    def write(self, data: bytes) -> None:
        WritesTransport.write(self, data)
        waiting, self.waiting = self.waiting, []
        for d in waiting:
            d.callback(None)

    def nextWrite(self) -> defer.Deferred:
        d = defer.Deferred()
        self.waiting.append(d)
        return d


class LoopbackClient(VariantClient):
    def __init__(self, factory: MsrpFactory, name: bytes) -> None:
        self.transport = LoopbackTransport()
        self.protocol = factory.buildProtocol(self.transport.getPeer())
        self.protocol.makeConnection(self.transport)
        self.send(name)


class OfferingSender(Protocol):
    """The variant's sender: writes the raw file to whoever connects, and closes."""

    def connectionMade(self) -> None:
        self.factory.connections.append(self.transport.getPeer().host)
        self.transport.write(self.factory.content)
        self.transport.loseConnection()


class FileTests(TestCase):
    """Files between the variant and everyone else, over real loopback sockets."""

    def setUp(self) -> None:
        self.presence = InMemoryPresenceService()
        # One write a file: no gap on the real reactor's clock.
        self.factory = MsrpFactory(
            self.presence, reactor, maxFileSize=10**6, metrics=self.presence.metrics,
            p2pGap=0,
        )

    def client(self, name: bytes) -> LoopbackClient:
        client = LoopbackClient(self.factory, name)
        self.addCleanup(client.disconnect)
        return client

    def senderListening(self, content: bytes) -> int:
        factory = ServerFactory.forProtocol(OfferingSender)
        factory.content = content
        factory.connections = []
        self.sender = factory
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return port.getHost().port

    @defer.inlineCallbacks
    def test_variantToSeed(self) -> None:
        """
        chatd fetches the offered file from the sender's own address (not
        the one in the offer) and delivers an ARCH to the binary client.
        """
        clt2 = self.client(b"clt2")
        bob = self.client(b"bob")
        bob.send(b"\x00\x03")
        bob.take()
        content = b"hola desde bob!\n\x00\xff"
        port = self.senderListening(content)
        arrived = clt2.transport.nextWrite()
        bob.send(f"\x00\x02clt2 f.txt {len(content)} {port} 10.9.9.9".encode())
        yield arrived
        expected = encodeFileHeader(b"bob ", b"f.txt", len(content), 0, b"") + content
        while len(clt2.transport.value()) < len(expected):
            yield clt2.transport.nextWrite()
        self.assertEqual(clt2.transport.read(), expected)
        self.assertEqual(self.sender.connections, ["127.0.0.1"])
        self.assertEqual(bob.take(), [])

    @defer.inlineCallbacks
    def test_variantToSeedCutShort(self) -> None:
        """A sender that closes before the size: the file is not delivered, and it is told."""
        clt2 = self.client(b"clt2")
        bob = self.client(b"bob")
        bob.send(b"\x00\x03")
        bob.take()
        port = self.senderListening(b"corto")
        told = bob.transport.nextWrite()
        bob.send(f"\x00\x02clt2 f.txt 100 {port} 127.0.0.1".encode())
        yield told
        self.assertEqual(
            bob.take(),
            ["Error al recibir el archivo. f.txt no se pudo entregar a clt2.\n".encode()],
        )
        self.assertEqual(clt2.take(), [])

    @defer.inlineCallbacks
    def test_seedToVariant(self) -> None:
        """
        chatd offers the file from a port of its own; the receiver connects
        to it and reads the file; the port is closed after.
        """
        bob = self.client(b"bob")
        bob.send(b"\x00\x03")
        bob.take()
        clt1 = self.client(b"clt1")
        content = b"12345"
        clt1.send(
            encodeFileHeader(b"bob ", b"g file.txt", len(content), 0, b"") + content
        )
        (offer,) = bob.take()
        head, port, ip = offer.rsplit(b" ", 2)
        self.assertEqual((head, ip), (b"\x00\x02bob g_file.txt 5", b"127.0.0.1"))
        received = yield readAll(int(port))
        self.assertEqual(received, content)
        self.assertEqual(clt1.take(), [])
        # One transfer, one connection: the port is closed now.
        yield self.assertFailure(readAll(int(port)), ConnectionRefusedError)


def readAll(port: int) -> defer.Deferred:
    """Connect to 127.0.0.1:C{port}, as the variant's receiver, and read until closed."""

    class Reader(Protocol):
        def __init__(self) -> None:
            self.data = b""
            self.done = defer.Deferred()

        def dataReceived(self, data: bytes) -> None:
            self.data += data

        def connectionLost(self, reason=None) -> None:
            self.done.callback(self.data)

    reader = Reader()
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    return connectProtocol(endpoint, reader).addCallback(lambda _: reader.done)


class FetchLimitTests(TestCase):
    """chatd fetches one offered file at a time per sender (injected reactor)."""

    def test_oneAtATime(self) -> None:
        memory = MemoryReactorClock()
        presence = InMemoryPresenceService()
        factory = MsrpFactory(presence, memory, maxFileSize=10**6, metrics=presence.metrics)
        clt2 = LoopbackClient(factory, b"clt2")
        bob = LoopbackClient(factory, b"bob\x00\x03")
        bob.take()
        bob.send(b"\x00\x02clt2 a.txt 5 4000 10.9.9.9")
        ((host, port, _, _, _),) = memory.tcpClients
        self.assertEqual((host, port), ("127.0.0.1", 4000))
        bob.send(b"\x00\x02clt2 b.txt 5 4001 127.0.0.1")
        self.assertEqual(
            bob.take(),
            [
                "Error al recibir el archivo. b.txt: chatd aún recoge otro archivo"
                " tuyo; no se entregó.\n".encode()
            ],
        )
        self.assertEqual(len(memory.tcpClients), 1)
        self.assertEqual(clt2.take(), [])


class OfferTimeoutTests(TestCase):
    """An offer nobody fetches, and a connection from elsewhere, with an injected clock."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.presence = InMemoryPresenceService()
        self.factory = MsrpFactory(
            self.presence, self.reactor, maxFileSize=10**6, metrics=self.presence.metrics
        )
        self.bob = LoopbackClient(self.factory, b"bob")
        self.bob.send(b"\x00\x03")
        self.bob.take()
        self.clt1 = LoopbackClient(self.factory, b"clt1")
        self.clt1.send(encodeFileHeader(b"bob ", b"g.txt", 3, 0, b"") + b"abc")
        (self.offer,) = self.bob.take()
        ((_, self.offerFactory, _, interface),) = self.reactor.tcpServers
        self.assertEqual(interface, "127.0.0.1")

    def test_timeout(self) -> None:
        self.reactor.advance(29)
        self.assertEqual(self.clt1.take(), [])
        self.reactor.advance(1)
        self.assertEqual(
            self.clt1.take(),
            [b"\x00\x05Error al recibir el archivo. g.txt no se pudo entregar a bob.\x00"],
        )

    def test_otherAddress(self) -> None:
        """Only the receiver's address may fetch the file."""
        self.assertIsNone(
            self.offerFactory.buildProtocol(IPv4Address("TCP", "10.0.0.5", 5555))
        )
        self.assertIsNotNone(
            self.offerFactory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5555))
        )

    def test_offersCountAgainstTheQueue(self) -> None:
        """
        Files offered and not fetched are held: past --msrp-max-queue more are
        refused, so a sender cannot make chatd hold more than that for one user.
        """
        self.factory.maxQueued = 10
        self.bob.protocol.maxQueued = 10
        self.clt1.send(encodeFileHeader(b"bob ", b"h.txt", 8, 0, b"") + b"12345678")
        self.assertEqual(
            self.clt1.take(),
            [
                "\x00\x05Archivo demasiado grande para bob: 8 bytes (máximo 7).\x00".encode()
            ],
        )
        self.assertEqual(self.bob.take(), [])
        self.reactor.advance(30)  # the first offer ends: room again
        self.clt1.take()
        self.clt1.send(encodeFileHeader(b"bob ", b"h.txt", 8, 0, b"") + b"12345678")
        (offer,) = self.bob.take()
        self.assertTrue(offer.startswith(b"\x00\x02bob h.txt 8 "))

    def test_senderLeavesFirst(self) -> None:
        """The offer ends after its sender left: nobody is told, nothing breaks."""
        self.clt1.disconnect()
        self.reactor.advance(30)
        self.assertEqual(self.bob.take(), [])

    def test_receiverLeaves(self) -> None:
        self.bob.disconnect()
        self.assertEqual(
            self.clt1.take(),
            [b"\x00\x05Error al recibir el archivo. g.txt no se pudo entregar a bob.\x00"],
        )


#: What the variant's client sends: requests one per read, names of 1-4 bytes.
_variantRequests = st.lists(
    st.one_of(
        st.builds(lambda t, x: b"\x00\x01" + t + b" " + x, st.sampled_from([b"bob", b"ana", b"zz"]), st.binary(max_size=40)),
        st.just(b"\x00\x03"),
        st.builds(lambda n, p: b"\x00\x02bob " + n + b" " + str(p).encode() + b" 8081 1.2.3.4", st.binary(min_size=1, max_size=10), st.integers(0, 10**7)),
        st.just("No se encontró el archivo.\n".encode()),
    ),
    max_size=12,
).map(b"".join)


class FuzzTests(TestCase):
    """Whatever a client of the variant sends, chatd answers in its terms and survives."""

    @settings(max_examples=150, deadline=None)
    @given(
        st.sampled_from(["auto", "p2p"]),
        st.binary(min_size=1, max_size=4),
        hostileInput(_variantRequests),
        st.lists(st.integers(0, 1 << 16), max_size=6),
    )
    def test_hostileVariantClient(self, variant, name, data, points) -> None:
        presence = InMemoryPresenceService()
        factory = MsrpFactory(
            presence, MemoryReactorClock(), maxFileSize=10**6, metrics=presence.metrics,
            variant=variant,
        )
        bob = VariantClient(factory, b"bob")
        bob.send(b"\x00\x03")
        bob.take()
        hostile = VariantClient(factory, name)
        for chunk in cut(data, points):
            if hostile.closed or hostile.readingPaused:
                break
            hostile.send(chunk)
        self.assertEqual(self.flushLoggedErrors(), [])
        if hostile.protocol.mode == P2P:
            for write in hostile.take():
                self.assertLessEqual(len(write), MAX_REPLY)
                self.assertNotIn(b"\x00", write)
            for write in bob.take():
                self.assertLessEqual(len(write), MAX_REPLY)
                self.assertNotIn(b"\x00", write.replace(b"\x00\x02", b"", 1))
        # Others are still served.
        ana = VariantClient(factory, b"an\x00\x03")
        self.assertEqual(ana.protocol.mode, P2P)
        self.assertTrue(ana.take()[0].startswith(b"Lista de clientes:\n"))
