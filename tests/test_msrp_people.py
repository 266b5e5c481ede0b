"""
The MSRP mode for people, as someone at nc/telnet meets it (docs/msrp.md,
"The mode for people"): told what to type after a short silence, and `help`.
Binary clients, which send their name at once, never see the prompt.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from chatd.msrp.codec import MsrpFrameDecoder, encodeListRequest
from chatd.msrp.protocol import DEFAULT_GREET_AFTER, MsrpFactory
from chatd.presence import InMemoryPresenceService
from chatd.tap import Options, makeService

from tests.test_msrp_protocol import MsrpClient

PROMPT = (
    b"Hola. Escribe tu nombre, de exactamente 4 bytes (por ejemplo ana1), y pulsa"
    b" Enter. Despu\xc3\xa9s, help muestra la ayuda.\n"
)

HELP = (
    "Escribe una orden por línea:\n"
    "  <nombre> <texto>  un mensaje a <nombre>, de cualquier protocolo\n"
    "  all <texto>       un mensaje a todos\n"
    "  clientes          quién está conectado\n"
    "  help              esta ayuda\n"
    "  salir             desconectarse\n"
).encode()


class GreetingTests(TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.presence = InMemoryPresenceService()
        self.factory = MsrpFactory(
            self.presence, self.clock, greetAfter=2.0, metrics=self.presence.metrics
        )

    def test_personWaitingIsPrompted(self) -> None:
        person = MsrpClient(self.factory)
        self.clock.advance(1.9)
        self.assertEqual(person.wire(), b"")
        self.clock.advance(0.1)
        self.assertEqual(person.wire(), PROMPT)
        # Then the name typed as usual: the mode for people.
        person.send(b"ana1\r\n")
        self.assertEqual(
            person.wire(),
            "Hola, ana1. Escribe: <nombre> <texto>, all <texto>, clientes o salir.\n".encode(),
        )
        person.send(b"help\n")
        self.assertEqual(person.wire(), HELP)
        person.send(b"AYUDA\r\n")
        self.assertEqual(person.wire(), HELP)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_binaryClientNeverSeesIt(self) -> None:
        client = MsrpClient(self.factory, b"clt1" + encodeListRequest())
        self.clock.advance(60)
        frames = list(MsrpFrameDecoder(fromServer=True).feed(client.wire()))
        self.assertEqual([type(f).__name__ for f in frames], ["ClientList"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_partOfANameStopsIt(self) -> None:
        # A binary client whose name arrives in pieces is no person.
        client = MsrpClient(self.factory, b"cl")
        self.clock.advance(10)
        self.assertEqual(client.wire(), b"")
        client.send(b"t1\x00\x03")
        (answer,) = MsrpFrameDecoder(fromServer=True).feed(client.wire())
        self.assertEqual(answer.text, b"Lista de clientes:\nCliente 1: clt1\n")

    def test_closedBeforeTheSilenceEnds(self) -> None:
        person = MsrpClient(self.factory)
        person.protocol.connectionLost(None)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_offWithZero(self) -> None:
        person = MsrpClient(
            MsrpFactory(
                self.presence, self.clock, greetAfter=0, metrics=self.presence.metrics
            )
        )
        self.clock.advance(30)
        self.assertEqual(person.wire(), b"")


class GreetingOptionTests(TestCase):
    def test_option(self) -> None:
        for arguments, expected in ([], DEFAULT_GREET_AFTER), (["--msrp-greeting", "0"], 0):
            options = Options()
            options.parseOptions(
                ["--db", "none", "--http", "none", "--msgr", "none", "--protobuf", "none",
                 "--msrp", "tcp:0:interface=127.0.0.1", *arguments]
            )
            top = makeService(options, Clock())
            self.assertEqual(top.getServiceNamed("msrp").factory.greetAfter, expected)
