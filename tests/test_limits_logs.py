"""
Log lines caused by one connection's errors are limited: the first
ERROR_LOG_BURST in each ERROR_LOG_WINDOW seconds are logged, then one summary
line with how many were left out, when the window ends or the connection
closes. Every bad request is still answered.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from chatd.limits import ERROR_LOG_BURST, ERROR_LOG_WINDOW, UNLIMITED
from chatd.msrp.codec import encodeError
from chatd.msrp.protocol import MsrpFactory
from chatd.presence import InMemoryPresenceService
from chatd.protobuf import chat_pb2

from tests.support import ProtobufClient, login
from tests.test_limits_deadlines import HttpConnection
from tests.test_limits_protocols import protobufFactory
from tests.test_msgr_helpers import HttpResponse, MsgrHarness
from tests.test_msrp_protocol import MsrpClient

R = chat_pb2.ServerResponse

FLOOD = 500


class LogCapture:
    """Every log event published while the test runs."""

    def __init__(self, testCase: TestCase) -> None:
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        testCase.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def take(self, event: str) -> list[dict]:
        """The events with C{event=...} since the last call, taken out."""
        found = [e for e in self.events if e.get("event") == event]
        self.events[:] = [e for e in self.events if e.get("event") != event]
        return found

    def suppressed(self) -> list[tuple[str, int]]:
        return [(e["protocol"], e["suppressed"]) for e in self.take("log-suppressed")]


class MsgrSocketTests(TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        self.h = MsgrHarness(self, limits=UNLIMITED)
        yield self.h.register("Ana")
        self.ana, self.token = yield self.h.bound("Ana")
        self.ana.lines()
        self.logs = LogCapture(self)

    def test_badLineFlood(self):
        """
        A flood of bad 3-byte lines: each answered 903, ten logged, the rest
        counted in one line when the window ends; the next window logs ten
        again.
        """
        for _ in range(FLOOD):
            self.ana.send(b"#X\n")
        answers = self.ana.lines()
        self.assertEqual(len(answers), FLOOD)
        self.assertTrue(all(a.endswith("||#X||Ana||903") for a in answers))
        refused = self.logs.take("request-refused")
        self.assertEqual(len(refused), ERROR_LOG_BURST)
        self.assertEqual(refused[0]["reason"], "unknown command")
        self.assertEqual(self.logs.suppressed(), [])
        self.h.clock.advance(ERROR_LOG_WINDOW)
        self.assertEqual(self.logs.suppressed(), [("msgr", FLOOD - ERROR_LOG_BURST)])
        self.assertEqual(self.h.clock.getDelayedCalls(), [])
        # A new window.
        for _ in range(ERROR_LOG_BURST + 3):
            self.ana.send(b"#X\n")
        self.assertEqual(len(self.logs.take("request-refused")), ERROR_LOG_BURST)
        # The connection closes before the window ends: the summary is written
        # then, and no timer is left behind.
        self.ana.lose()
        self.assertEqual(self.logs.suppressed(), [("msgr", 3)])
        self.assertEqual(self.h.clock.getDelayedCalls(), [])

    def test_fewErrorsNoSummary(self):
        for _ in range(ERROR_LOG_BURST):
            self.ana.send(b"#X\n")
        self.assertEqual(len(self.logs.take("request-refused")), ERROR_LOG_BURST)
        self.ana.lose()
        self.h.clock.advance(ERROR_LOG_WINDOW)
        self.assertEqual(self.logs.suppressed(), [])

    def test_eachConnectionHasItsOwnLimit(self):
        for _ in range(FLOOD):
            self.ana.send(b"#X\n")
        # Another connection's first errors are logged.
        other = self.h.connect()
        other.sendLine("#Y")
        refusals = self.logs.take("login-refused")
        self.assertEqual(len(refusals), 1)
        self.assertEqual(other.lines(), ["#RESPUESTA||-||1||#Y||-||901"])


class ProtobufTests(TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.presence = InMemoryPresenceService()
        self.factory = protobufFactory(self.presence, self.clock, limits=UNLIMITED)
        self.logs = LogCapture(self)

    def test_loginFlood(self):
        """
        Logins refused again and again on one connection (a taken name by the
        presence service; an empty name, or a second login, by the protocol)
        are each answered, and logged within the limit.
        """
        ProtobufClient(self.factory).send(login("ana"))
        client = ProtobufClient(self.factory)
        for _ in range(FLOOD):
            client.send(login("ana"))
            client.send(login(""))
        answers = client.responses()
        self.assertEqual(len(answers), 2 * FLOOD)
        self.assertTrue(all(a.code == R.FAILED_OPERATION for a in answers))
        self.assertEqual(len(self.logs.take("login-refused")), ERROR_LOG_BURST)
        client.disconnect()
        self.assertEqual(
            self.logs.suppressed(), [("protobuf", 2 * FLOOD - ERROR_LOG_BURST)]
        )

        logged = ProtobufClient(self.factory)
        logged.send(login("bea"))
        for _ in range(FLOOD):
            logged.send(login("bea"))
        self.assertEqual(len(logged.responses()), FLOOD + 1)
        self.assertEqual(len(self.logs.take("login-refused")), ERROR_LOG_BURST)
        self.clock.advance(ERROR_LOG_WINDOW)
        self.assertEqual(self.logs.suppressed(), [("protobuf", FLOOD - ERROR_LOG_BURST)])


class MsrpTests(TestCase):
    def test_errorFrameFlood(self):
        """An MSRP client's ERROR frames are logged within the limit."""
        clock = Clock()
        factory = MsrpFactory(InMemoryPresenceService(), clock, limits=UNLIMITED)
        logs = LogCapture(self)
        client = MsrpClient(factory, b"ana1")
        for _ in range(FLOOD):
            client.send(encodeError(b"x"))
        sent = [e for e in logs.events if "sent an error" in e.get("log_format", "")]
        self.assertEqual(len(sent), ERROR_LOG_BURST)
        self.assertEqual(client.wire(), b"")  # nothing to answer
        self.assertFalse(client.closed)
        clock.advance(ERROR_LOG_WINDOW)
        self.assertEqual(logs.suppressed(), [("msrp", FLOOD - ERROR_LOG_BURST)])
        client.disconnect()


class HttpTests(TestCase):
    def test_notFoundFlood(self):
        """
        Answers 4xx on one kept-alive connection: each answered, and only the
        first access lines logged; answers 200 are not limited.
        """
        h = MsgrHarness(self)
        h.site.startFactory()  # its access log: twisted's log
        self.addCleanup(h.site.stopFactory)
        logs = LogCapture(self)
        connection = HttpConnection(h.site)
        self.addCleanup(connection.lose)
        for _ in range(100):
            connection.send(b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n")
            self.assertEqual(HttpResponse(connection.wire()).status, 404)
        for _ in range(20):
            connection.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            self.assertEqual(HttpResponse(connection.wire()).status, 200)
        access = [e["log_io"] for e in logs.events if "log_io" in e]
        self.assertEqual(
            ['"GET /nope HTTP/1.1" 404' in line for line in access],
            [True] * ERROR_LOG_BURST + [False] * 20,
        )
        connection.lose()
        self.assertEqual(logs.suppressed(), [("http", 100 - ERROR_LOG_BURST)])
