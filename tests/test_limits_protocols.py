"""
The limits wired into every protocol: connection counts (per address and in
total, across listeners), the login deadline, the message rate and the
bounded outbound queue, each answered in the protocol's own terms.
"""

from __future__ import annotations

from dataclasses import replace

from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from chatd.limits import UNLIMITED, ConnectionLimiter, Limits
from chatd.msrp.protocol import MsrpFactory
from chatd.msrp.texts import (
    ERR_NAME_TIMEOUT,
    ERR_TOO_MANY_CONNECTIONS,
    ERR_TOO_MANY_FROM_ADDRESS,
    errRate,
)
from chatd.presence import InMemoryPresenceService
from chatd.protobuf import chat_pb2
from chatd.protobuf.framing import encodeDelimited
from chatd.protobuf.protocol import DELIMITED, ProtobufChatFactory
from chatd.tap import Options

from tests.support import ProtobufClient, login, message
from tests.test_msgr_helpers import MsgrHarness
from tests.test_msrp_protocol import MsrpClient, errorFrame

R = chat_pb2.ServerResponse

#: Small limits, each easy to reach in a test.
LIMITS = Limits(
    maxConnections=0,
    maxConnectionsPerAddress=2,
    rate=2.0,
    burst=3.0,
    maxSendQueue=1000,
    loginTimeout=5.0,
    keepAlive=0,
    closeGrace=10.0,
)


def protobufFactory(presence, clock, limits=LIMITS, limiter=None):
    return ProtobufChatFactory(
        presence, clock, framing=DELIMITED, limits=limits, limiter=limiter,
        metrics=presence.metrics
    )


class ProtobufLimitTests(TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.presence = InMemoryPresenceService()
        self.factory = protobufFactory(self.presence, self.clock)

    def client(self, host: str = "192.0.2.7") -> ProtobufClient:
        return ProtobufClient(self.factory, host)

    def loggedIn(self, name: str, host: str = "192.0.2.7") -> ProtobufClient:
        client = self.client(host)
        client.send(login(name))
        self.assertEqual(client.response().code, R.SUCCESSFUL_OPERATION)
        return client

    def assertFailedAndClosed(self, client: ProtobufClient, text: str) -> None:
        self.assertEqual(client.responses(), [R(code=R.FAILED_OPERATION, response=text)])
        self.assertTrue(client.transport.disconnecting)

    def test_connectionsPerAddress(self) -> None:
        """The third connection from one address is told why and closed."""
        first, second = self.client(), self.client()
        third = self.client()
        self.assertFailedAndClosed(
            third, "connection refused: too many connections from your address"
        )
        self.assertFalse(first.transport.disconnecting)
        # Another address is not affected.
        self.loggedIn("other", host="192.0.2.8")
        # A refused connection frees nothing; a closed one frees its place.
        third.disconnect()
        self.assertFailedAndClosed(
            self.client(), "connection refused: too many connections from your address"
        )
        first.disconnect()
        self.loggedIn("again")
        second.disconnect()

    def test_loginTimeout(self) -> None:
        idle = self.client()
        self.clock.advance(LIMITS.loginTimeout - 0.1)
        self.assertEqual(idle.wire(), b"")
        self.clock.advance(0.1)
        self.assertFailedAndClosed(idle, "no login within 5 seconds")

    def test_loggedInMayIdle(self) -> None:
        client = self.loggedIn("ana")
        self.clock.advance(LIMITS.loginTimeout * 100)
        self.assertEqual(client.wire(), b"")
        self.assertFalse(client.transport.disconnecting)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_rate(self) -> None:
        """A burst passes; past it, messages are refused, not dropped silently."""
        ana, bea = self.loggedIn("ana"), self.loggedIn("bea", host="192.0.2.8")
        for n in range(4):
            ana.send(message("bea", f"m{n}"))
        answers = ana.responses()
        self.assertEqual(
            [a.code for a in answers], [R.SUCCESSFUL_OPERATION] * 3 + [R.FAILED_OPERATION]
        )
        self.assertEqual(
            answers[3].response,
            "slow down: at most 2 messages a second (not delivered)",
        )
        self.assertEqual(answers[3].option, chat_pb2.ClientRequest.SEND_MESSAGE)
        self.assertEqual([r.messg.text for r in bea.responses()], ["m0", "m1", "m2"])
        # Two a second: half a second later, one more.
        self.clock.advance(0.5)
        ana.send(message("bea", "later"))
        ana.send(message("bea", "too soon"))
        self.assertEqual(
            [a.code for a in ana.responses()],
            [R.SUCCESSFUL_OPERATION, R.FAILED_OPERATION],
        )
        self.assertEqual([r.messg.text for r in bea.responses()], ["later"])

    def test_slowReaderDisconnected(self) -> None:
        """
        Past --max-sendq bytes waiting for a client that does not read, it
        gets what waited and the reason, and is closed; the sender is told
        the message did not arrive; everyone else is served.
        """
        self.factory = protobufFactory(
            self.presence, self.clock, limits=replace(UNLIMITED, maxSendQueue=1000)
        )
        ana, bea = self.loggedIn("ana"), self.loggedIn("bea")
        cy = self.loggedIn("cy")
        bea.protocol.outbound.pauseProducing()  # bea's socket buffer is full
        text = "x" * 300
        for _ in range(3):
            ana.send(message("bea", text))
        self.assertEqual(bea.wire(), b"")
        delivery = R(
            option=chat_pb2.ClientRequest.SEND_MESSAGE,
            code=R.SUCCESSFUL_OPERATION,
            messg=chat_pb2.Message(receiver="bea", sender="ana", text=text),
        )
        frame = encodeDelimited(delivery.SerializeToString())
        self.assertEqual(bea.protocol.outbound.queued, 3 * len(frame))
        ana.send(message("bea", text))
        last = ana.responses()[-1]
        self.assertEqual(
            (last.code, last.response),
            (R.FAILED_OPERATION, "not delivered: bea is not reading; disconnected"),
        )
        arrived = bea.responses()
        self.assertEqual([r.messg.text for r in arrived[:3]], [text] * 3)
        self.assertEqual(
            arrived[3],
            R(
                code=R.FAILED_OPERATION,
                response="disconnected: you are not reading; more than 1000 bytes"
                " were waiting for you",
            ),
        )
        self.assertTrue(bea.transport.disconnecting)
        self.assertIsNone(bea.transport.producer)
        # A client that does not take even that is cut off after the grace.
        self.clock.advance(LIMITS.closeGrace)
        self.assertTrue(bea.transport.disconnecting)
        bea.disconnect()
        self.assertIsNone(self.presence.lookup("bea"))
        ana.send(message("cy", "still here"))
        self.assertEqual(ana.response().code, R.SUCCESSFUL_OPERATION)
        self.assertEqual(cy.response().messg.text, "still here")

    def test_noSendqLimit(self) -> None:
        """--max-sendq 0: no queue of ours, the transport takes everything."""
        self.factory = protobufFactory(self.presence, self.clock, limits=UNLIMITED)
        ana, bea = self.loggedIn("ana"), self.loggedIn("bea")
        self.assertIsNone(bea.protocol.outbound)
        for _ in range(20):
            ana.send(message("bea", "x" * 300))
        self.assertEqual(len(bea.responses()), 20)


class AcrossProtocolsTests(TestCase):
    """One limiter is shared by every listener."""

    def test_totalAcrossListeners(self) -> None:
        clock = Clock()
        presence = InMemoryPresenceService()
        limits = Limits(maxConnections=2, maxConnectionsPerAddress=0, keepAlive=0)
        limiter = ConnectionLimiter(2, 0)
        protobuf = protobufFactory(presence, clock, limits, limiter)
        msrp = MsrpFactory(
            presence, clock, limits=limits, limiter=limiter, metrics=presence.metrics
        )
        first = ProtobufClient(protobuf, "192.0.2.1")
        second = MsrpClient(msrp, b"alic")
        third = MsrpClient(msrp, b"bobb")
        self.assertEqual(third.wire(), errorFrame(ERR_TOO_MANY_CONNECTIONS))
        self.assertTrue(third.closed)
        self.assertIsNone(presence.lookup("bobb"))
        fourth = ProtobufClient(protobuf, "192.0.2.4")
        self.assertEqual(
            fourth.response(),
            R(
                code=R.FAILED_OPERATION,
                response="connection refused: the server has too many connections",
            ),
        )
        first.disconnect()
        MsrpClient(msrp, b"bobb")
        self.assertEqual(presence.lookup("bobb").name, "bobb")
        self.assertIsNotNone(second)


class MsrpLimitTests(TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.presence = InMemoryPresenceService()
        self.factory = MsrpFactory(
            self.presence, self.clock, limits=LIMITS, metrics=self.presence.metrics
        )

    def test_perAddressInSpanish(self) -> None:
        MsrpClient(self.factory, b"ana1")
        MsrpClient(self.factory, b"ana2")
        third = MsrpClient(self.factory, b"ana3")
        self.assertEqual(third.wire(), errorFrame(ERR_TOO_MANY_FROM_ADDRESS))
        self.assertTrue(third.closed)

    def test_nameTimeoutIsTheLoginTimeout(self) -> None:
        client = MsrpClient(self.factory, b"an")
        self.clock.advance(LIMITS.loginTimeout)
        self.assertEqual(client.wire(), errorFrame(ERR_NAME_TIMEOUT))
        self.assertTrue(client.closed)

    def test_rate(self) -> None:
        from chatd.msrp.codec import encodeMessage

        ana = MsrpClient(self.factory, b"ana1")
        bea = MsrpClient(self.factory, b"bea1")
        for n in range(4):
            ana.send(encodeMessage(b"bea1", f"m{n}".encode()))
        self.assertEqual(ana.wire(), errorFrame(errRate(2)))
        self.assertEqual(
            errRate(2), "Demasiados mensajes: como máximo 2 por segundo. No se entregó."
        )
        self.assertEqual(
            bea.wire(), b"".join(encodeMessage(b"ana1", f"m{n}".encode()) for n in range(3))
        )


class MsgrLimitTests(TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        limits = Limits(
            maxConnections=0,
            maxConnectionsPerAddress=3,
            rate=2.0,
            burst=3.0,
            maxSendQueue=1000,
            loginTimeout=5.0,
            keepAlive=0,
        )
        self.h = MsgrHarness(self, maxLine=300, maxFile=100, limits=limits)
        yield self.h.register("Ana")
        yield self.h.register("Bea")

    def test_perAddress(self):
        self.h.connect(), self.h.connect(), self.h.connect()
        fourth = self.h.connect()
        self.assertEqual(fourth.lines(), ["#RESPUESTA||-||0||#HOLA||-||803"])
        self.assertTrue(fourth.closed)

    def test_unboundSocketTimesOut(self):
        client = self.h.connect()
        self.h.clock.advance(4.9)
        self.assertFalse(client.closed)
        self.h.clock.advance(0.1)
        self.assertEqual(client.lines(), ["#RESPUESTA||-||0||#HOLA||-||901"])
        self.assertTrue(client.closed)

    @defer.inlineCallbacks
    def test_boundSocketMayIdle(self):
        ana, _ = yield self.h.bound("Ana")
        ana.lines()
        self.h.clock.advance(100)
        self.assertFalse(ana.closed)
        self.assertEqual(ana.lines(), [])

    @defer.inlineCallbacks
    def test_rate(self):
        ana, token = yield self.h.bound("Ana")
        bea, _ = yield self.h.bound("Bea")
        ana.lines(), bea.lines()
        for n in range(4):
            ana.sendLine(f"#MSJ||{token}||Ana||Bea||m{n}")
        self.assertEqual(
            ana.lines(),
            [f"#RESPUESTA||-||{n}||#MSJ||Ana||704" for n in (2, 3, 4)]
            + ["#RESPUESTA||-||5||#MSJ||Ana||803"],
        )
        self.assertEqual(bea.lines(), [f"#MSJ||-||Ana||Bea||m{n}" for n in range(3)])

    @defer.inlineCallbacks
    def test_slowReaderDisconnected(self):
        ana, token = yield self.h.bound("Ana")
        bea, _ = yield self.h.bound("Bea")
        ana.lines(), bea.lines()
        self.h.clock.advance(100)  # a full bucket; rate is not what is tested
        bea.protocol.outbound.pauseProducing()
        # The queue holds two of the longest lines (2 * 301 < 1000 here).
        self.assertEqual(bea.protocol.outbound.maxBytes, 1000)
        text = "y" * 200
        sent = 0
        while not bea.closed:
            ana.sendLine(f"#MSJ||{token}||Ana||Bea||{text}")
            sent += 1
            self.h.clock.advance(1)
        answers = ana.lines()
        self.assertEqual(answers[-1], f"#RESPUESTA||-||{sent + 1}||#MSJ||Ana||803")
        self.assertTrue(all(a.endswith("||704") for a in answers[:-1]))
        lines = bea.lines()
        self.assertEqual(lines[:-1], [f"#MSJ||-||Ana||Bea||{text}"] * (sent - 1))
        self.assertEqual(lines[-1], "#RESPUESTA||-||0||#DESCONECTAR||Bea||803")
        self.assertIsNone(self.h.presence.lookup("Bea"))


class OptionTests(TestCase):
    def test_defaultsAndZero(self) -> None:
        options = Options()
        options.parseOptions([])
        self.assertEqual(
            (
                options["max-conns"],
                options["max-conns-per-ip"],
                options["rate"],
                options["rate-burst"],
                options["max-sendq"],
                options["login-timeout"],
                options["keepalive"],
            ),
            (10000, 100, 20.0, 40.0, 4 * 1024 * 1024, 60.0, 60),
        )
        options = Options()
        options.parseOptions(
            ["--max-conns", "0", "--max-conns-per-ip", "0", "--rate", "0",
             "--max-sendq", "0", "--login-timeout", "0", "--keepalive", "0"]
        )
        self.assertEqual(options["max-conns"], 0)

    def test_everyListenerSharesTheLimits(self) -> None:
        from chatd.tap import makeService

        options = Options()
        options.parseOptions(
            ["--max-conns-per-ip", "7", "--rate", "3", "--max-sendq", "0",
             "--db", self.mktemp(), "--protobuf", "tcp:0", "--msrp", "tcp:0",
             "--http", "tcp:0", "--msgr", "tcp:0"]
        )
        # Nothing is started: no port is opened.
        top = makeService(options, reactor=reactor)
        self.addCleanup(top.accounts.close)
        self.assertEqual(top.limiter.maxPerAddress, 7)
        for label in ("protobuf", "msrp", "msgr", "msgr-http"):
            factory = top.getServiceNamed(label).factory
            self.assertIs(factory.limiter, top.limiter, label)
            self.assertEqual((factory.limits.rate, factory.limits.maxSendQueue), (3.0, 0))

    def test_fileIdleTimeout(self) -> None:
        """--file-idle-timeout: 30 s by default, shared by MSRP and MSGR."""
        from twisted.python.usage import UsageError

        from chatd.tap import makeService

        options = Options()
        options.parseOptions([])
        self.assertEqual(options["file-idle-timeout"], 30.0)
        options = Options()
        options.parseOptions(
            ["--file-idle-timeout", "0", "--db", self.mktemp(), "--protobuf", "none",
             "--msrp", "tcp:0", "--http", "none", "--msgr", "tcp:0"]
        )
        top = makeService(options, reactor=reactor)
        self.addCleanup(top.accounts.close)
        for label in ("msrp", "msgr"):
            self.assertEqual(top.getServiceNamed(label).factory.limits.fileIdleTimeout, 0)
        for value in ("-1", "x"):
            self.assertRaises(UsageError, Options().parseOptions, ["--file-idle-timeout", value])

    def test_negativeRefused(self) -> None:
        from twisted.python.usage import UsageError

        for option in ("--max-conns", "--max-conns-per-ip", "--rate", "--max-sendq",
                       "--login-timeout", "--keepalive"):
            options = Options()
            self.assertRaises(UsageError, options.parseOptions, [option, "-1"])

