"""
The operator's view: GET /metrics after known traffic through real protocol
objects (the counts are exact), GET /healthz, the --metrics listener, and
the structured log events (one JSON line each with
C{twistd --logger chatd.tap.jsonLogObserver}).
"""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys

from prometheus_client import REGISTRY
from twisted.internet import defer, reactor
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.logger import Logger, globalLogPublisher
from twisted.python import usage
from twisted.trial.unittest import TestCase
from twisted.web import server

from chatd import tap
from chatd.limits import UNLIMITED, ConnectionLimiter
from chatd.exporter import MetricsExporter, makeMetricsSite
from chatd.metrics import ChatdMetrics
from chatd.msrp.codec import encodeFileHeader, encodeMessage
from chatd.msrp.protocol import MsrpFactory
from chatd.presence import InMemoryPresenceService
from chatd.protobuf import chat_pb2
from chatd.protobuf.protocol import DELIMITED, ProtobufChatFactory
from chatd.sessions import CountedHTTPFactory, RATE_LOG_INTERVAL

from tests.support import ProtobufClient, login, message
from tests.test_msgr_helpers import MsgrHarness
from tests.test_limits_protocols import LIMITS
from tests.test_msrp_protocol import MsrpClient

R = chat_pb2.ServerResponse



def samples(body: str) -> dict[str, float]:
    """C{name{labels}} -> value, for every sample line of an exposition."""
    found = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            found[key] = float(value)
    return found


def sampleLines(body: str, prefix: str) -> list[str]:
    """The sample lines of C{body} that start with C{prefix}, in order."""
    return [line for line in body.splitlines() if line.startswith(prefix)]


#: The core: what counts, and what holds the users and their connections.
#: None of it may depend on the HTTP exporter.
CORE_MODULES = (
    "chatd.metrics",
    "chatd.presence",
    "chatd.sessions",
    "chatd.protobuf.protocol",
    "chatd.msrp.protocol",
    "chatd.msgr.protocol",
)

#: What only the exporter (chatd.exporter) and the HTTP sites import.
EXPORTER_MODULES = ("twisted.web", "prometheus_client")


def importedBy(module: str) -> list[str]:
    """
    Which of L{EXPORTER_MODULES} a fresh Python process has loaded once it
    has imported C{module} (and nothing else).
    """
    probe = (
        f"import sys, {module}\n"
        f"print(' '.join(n for n in {EXPORTER_MODULES!r} if n in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120
    )
    if result.returncode:
        raise AssertionError(f"importing {module} failed:\n{result.stderr}")
    return result.stdout.split()


class LayeringTests(TestCase):
    """Counting is apart from exporting."""

    def test_coreDoesNotImportTheExporter(self) -> None:
        """
        Importing the presence service, the counters, the sessions' base or
        a protocol loads neither C{twisted.web} nor C{prometheus_client}:
        only C{chatd.exporter} (and the HTTP sites) do.
        """
        found = {module: importedBy(module) for module in CORE_MODULES}
        self.assertEqual(found, {module: [] for module in CORE_MODULES})

    def test_exporterImportsThem(self) -> None:
        """The probe sees an import when there is one."""
        self.assertEqual(importedBy("chatd.exporter"), list(EXPORTER_MODULES))


class ExpositionTests(TestCase):
    """A L{ChatdMetrics} on its own."""

    def test_ownRegistry(self) -> None:
        """
        Each L{ChatdMetrics} exports on a registry of its own: two servers in
        one process do not see each other's counts, and the process-wide
        default registry has none of them.
        """
        one, two = ChatdMetrics(), ChatdMetrics()
        one.messageRouted("msgr", "msgr")
        key = 'chatd_messages_routed_total{from="msgr",to="msgr"}'
        one, two = MetricsExporter(one), MetricsExporter(two)
        self.assertEqual(samples(one.exposition()[0].decode())[key], 1.0)
        self.assertEqual(samples(two.exposition()[0].decode())[key], 0.0)
        self.assertIsNot(one.registry, two.registry)
        self.assertIsNone(REGISTRY.get_sample_value("chatd_messages_routed_total"))

    def test_seriesAtZero(self) -> None:
        """
        The series of every protocol (and pair) are there from the start,
        at 0, so that rates over them are defined.
        """
        body, contentType = MetricsExporter(ChatdMetrics()).exposition()
        self.assertEqual(contentType, "text/plain; version=0.0.4; charset=utf-8")
        body = body.decode()
        self.assertEqual(
            sampleLines(body, "chatd_sessions_online"),
            [
                'chatd_sessions_online{protocol="msgr"} 0.0',
                'chatd_sessions_online{protocol="msrp"} 0.0',
                'chatd_sessions_online{protocol="protobuf"} 0.0',
            ],
        )
        self.assertEqual(len(sampleLines(body, "chatd_messages_routed_total")), 9)
        self.assertEqual(len(sampleLines(body, "chatd_logins_total")), 8)
        self.assertIn("chatd_files_in_flight 0.0", body.splitlines())
        self.assertIn("process_open_fds", body)

    def test_openMetrics(self) -> None:
        """A scraper that asks for OpenMetrics gets it."""
        body, contentType = MetricsExporter(ChatdMetrics()).exposition(
            "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"
        )
        self.assertTrue(contentType.startswith("application/openmetrics-text"))
        self.assertTrue(body.endswith(b"# EOF\n"))


class TrafficTests(TestCase):
    """
    Every protocol on one presence service (the MSGR stack on a real SQLite
    file), driven through real protocol objects over in-memory transports;
    /metrics is read through the real twisted.web site.
    """

    maxDiff = None

    def setUp(self) -> None:
        self.h = MsgrHarness(self, limits=UNLIMITED)
        self.clock = self.h.clock
        self.metrics = self.h.presence.metrics
        self.protobufFactory = ProtobufChatFactory(
            self.h.presence, self.clock, framing=DELIMITED, limits=LIMITS,
            metrics=self.h.presence.metrics
        )
        self.msrpFactory = MsrpFactory(
            self.h.presence, self.clock, limits=LIMITS, metrics=self.h.presence.metrics
        )
        self.metrics.addListener("protobuf", self.protobufFactory)
        self.metrics.addListener("msrp", self.msrpFactory)
        self.metrics.addListener("msgr", self.h.factory)

    @defer.inlineCallbacks
    def scrape(self):
        response = yield self.h.request("GET", "/metrics")
        self.assertEqual(response.status, 200)
        self.assertEqual(
            response.headers["content-type"], "text/plain; version=0.0.4; charset=utf-8"
        )
        return samples(response.body)

    def protobuf(self, name: str | None = None, host: str = "192.0.2.7") -> ProtobufClient:
        client = ProtobufClient(self.protobufFactory, host)
        if name is not None:
            client.send(login(name))
            self.assertEqual(client.response().code, R.SUCCESSFUL_OPERATION)
        return client

    def assertSamples(self, found: dict[str, float], expected: dict[str, float]) -> None:
        self.assertEqual({key: found.get(key) for key in expected}, expected)

    @defer.inlineCallbacks
    def test_messagesRoutedPerProtocolPair(self):
        """
        Each message handed to a receiver counts once for its pair of
        protocols; a broadcast counts each receiver; an MSGR #MEME to an
        MSGR user (which does not go through the presence service) counts
        too. Refused messages do not.
        """
        pepe = self.protobuf("pepe")
        bobo = MsrpClient(self.msrpFactory, b"bobo")
        yield self.h.register("anna")
        yield self.h.register("beat")
        anna, token = yield self.h.bound("anna")
        yield self.h.bound("beat")
        for i in range(3):
            pepe.send(message("bobo", f"hola {i}"))
        for i in range(2):
            bobo.send(encodeMessage(b"pepe", f"hola {i}".encode()))
        self.clock.advance(10)  # within --rate (the burst is 3)
        pepe.send(message("all", "a todos"))
        anna.sendLine(f"#MSJ||{token}||anna||pepe||hola")
        anna.sendLine(f"#MEME||{token}||anna||bobo||gato")
        anna.sendLine(f"#MEME||{token}||anna||beat||gato")
        pepe.send(message("nadie", "no llega"))
        self.assertEqual(pepe.responses()[-1].code, R.FAILED_OPERATION)

        found = yield self.scrape()
        routed = 'chatd_messages_routed_total{{from="{}",to="{}"}}'.format
        self.assertSamples(
            found,
            {
                routed("protobuf", "msrp"): 4.0,
                routed("protobuf", "msgr"): 2.0,
                routed("protobuf", "protobuf"): 0.0,
                routed("msrp", "protobuf"): 2.0,
                routed("msrp", "msrp"): 0.0,
                routed("msrp", "msgr"): 0.0,
                routed("msgr", "protobuf"): 1.0,
                routed("msgr", "msrp"): 1.0,
                routed("msgr", "msgr"): 1.0,
                'chatd_sessions_online{protocol="protobuf"}': 1.0,
                'chatd_sessions_online{protocol="msrp"}': 1.0,
                'chatd_sessions_online{protocol="msgr"}': 2.0,
                'chatd_logins_total{protocol="protobuf",result="accepted"}': 1.0,
                'chatd_logins_total{protocol="msrp",result="accepted"}': 1.0,
                'chatd_logins_total{protocol="msgr",result="accepted"}': 2.0,
                'chatd_logins_total{protocol="msgr-http",result="accepted"}': 2.0,
                'chatd_connections_open{listener="protobuf"}': 1.0,
                'chatd_connections_open{listener="msrp"}': 1.0,
                'chatd_connections_open{listener="msgr"}': 2.0,
            },
        )

        pepe.disconnect()
        bobo.disconnect()
        found = yield self.scrape()
        self.assertSamples(
            found,
            {
                'chatd_sessions_online{protocol="protobuf"}': 0.0,
                'chatd_sessions_online{protocol="msrp"}': 0.0,
                'chatd_logouts_total{protocol="protobuf"}': 1.0,
                'chatd_logouts_total{protocol="msrp"}': 1.0,
                'chatd_logouts_total{protocol="msgr"}': 0.0,
                'chatd_disconnects_total{protocol="protobuf",reason="client"}': 1.0,
                'chatd_disconnects_total{protocol="msrp",reason="client"}': 1.0,
                'chatd_connections_open{listener="protobuf"}': 0.0,
            },
        )

    @defer.inlineCallbacks
    def test_loginsRefused(self):
        """
        Logins the presence service refuses and logins the protocol refuses
        before asking it are counted once each, per protocol; so are MSGR
        HTTP logins with a wrong password.
        """
        self.protobuf("pepe")
        again = self.protobuf()
        again.send(login("PEPE"))  # the name is online (presence)
        again.send(login(""))  # no name (the protocol)
        self.assertEqual(
            [r.code for r in again.responses()], [R.FAILED_OPERATION] * 2
        )
        taken = MsrpClient(self.msrpFactory, b"pepe")  # presence
        short = MsrpClient(self.msrpFactory, b"ab\n")  # the protocol
        self.assertTrue(taken.closed and short.closed)
        taken.disconnect()
        short.disconnect()
        yield self.h.register("anna")
        response = yield self.h.form("/status", usr="anna", **{"pass": "mal"})
        self.assertEqual(response.body, "801")
        socket = self.h.connect()
        socket.sendLine("#HOLA||not-a-token||anna")
        self.assertTrue(socket.closed)
        socket.lose()

        found = yield self.scrape()
        self.assertSamples(
            found,
            {
                'chatd_logins_total{protocol="protobuf",result="accepted"}': 1.0,
                'chatd_logins_total{protocol="protobuf",result="refused"}': 2.0,
                'chatd_logins_total{protocol="msrp",result="accepted"}': 0.0,
                'chatd_logins_total{protocol="msrp",result="refused"}': 2.0,
                'chatd_logins_total{protocol="msgr",result="refused"}': 1.0,
                'chatd_logins_total{protocol="msgr-http",result="refused"}': 1.0,
                'chatd_logins_total{protocol="msgr-http",result="accepted"}': 0.0,
                'chatd_disconnects_total{protocol="msrp",reason="login-refused"}': 2.0,
                'chatd_disconnects_total{protocol="msgr",reason="login-refused"}': 1.0,
            },
        )

    @defer.inlineCallbacks
    def test_disconnectsByReason(self):
        """
        Every closed connection counts once, with the first reason the
        server had to close it, or C{client} when the client did.
        """
        # No login in time.
        idle = self.protobuf(host="192.0.2.1")
        self.clock.advance(LIMITS.loginTimeout)
        self.assertTrue(idle.transport.disconnecting)
        # Over --max-conns-per-ip (2 here).
        crowd = [MsrpClient(self.msrpFactory, b"c%03d" % i) for i in range(3)]
        self.assertTrue(crowd[2].closed)
        # A request over --protobuf-max-frame.
        small = ProtobufChatFactory(
            self.h.presence, self.clock, framing=DELIMITED, maxFrameSize=64,
            limits=UNLIMITED, metrics=self.h.presence.metrics,
        )
        large = ProtobufClient(small)
        large.send(message("x", "y" * 100))
        self.assertTrue(large.transport.disconnecting)
        # A client that does not read (--max-sendq).
        pepe, lent = self.protobuf("pepe", "192.0.2.2"), self.protobuf("lent", "192.0.2.3")
        lent.protocol.outbound.pauseProducing()
        self.clock.advance(10)  # a full bucket: the rate is not what is tested
        for _ in range(3):
            pepe.send(message("lent", "z" * 400))
        self.assertTrue(lent.transport.disconnecting)
        # The server stops.
        self.msrpFactory.shutDown()
        for client in [idle, large, lent]:
            client.disconnect()
        for client in crowd:
            client.disconnect()

        found = yield self.scrape()
        reason = 'chatd_disconnects_total{{protocol="{}",reason="{}"}}'.format
        self.assertSamples(
            found,
            {
                reason("protobuf", "login-timeout"): 1.0,
                reason("protobuf", "too-large"): 1.0,
                reason("protobuf", "sendq"): 1.0,
                reason("msrp", "conn-limit"): 1.0,
                reason("msrp", "shutdown"): 2.0,
            },
        )
        self.assertEqual(
            sorted(k for k in found if k.startswith("chatd_disconnects_total")),
            sorted(
                [
                    reason("protobuf", "login-timeout"),
                    reason("protobuf", "too-large"),
                    reason("protobuf", "sendq"),
                    reason("msrp", "conn-limit"),
                    reason("msrp", "shutdown"),
                ]
            ),
        )
        self.assertEqual(
            found['chatd_refusals_total{protocol="protobuf",reason="busy"}'], 1.0
        )

    @defer.inlineCallbacks
    def test_rateRefusals(self):
        """
        Messages refused by --rate are counted each; the log says so once,
        then at most once a minute per connection, with how many.
        """
        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        pepe = self.protobuf("pepe")
        MsrpClient(self.msrpFactory, b"bobo")
        for _ in range(5):  # a burst of 3 goes through
            pepe.send(message("bobo", "hola"))
        self.clock.advance(RATE_LOG_INTERVAL)
        for _ in range(5):
            pepe.send(message("bobo", "hola"))

        found = yield self.scrape()
        self.assertSamples(
            found,
            {
                'chatd_refusals_total{protocol="protobuf",reason="rate"}': 4.0,
                'chatd_messages_routed_total{from="protobuf",to="msrp"}': 6.0,
            },
        )
        logged = [e for e in events if e.get("event") == "message-refused"]
        self.assertEqual(
            [(e["protocol"], e["user"], e["reason"], e["refused"]) for e in logged],
            [("protobuf", "pepe", "rate", 1), ("protobuf", "pepe", "rate", 2)],
        )

    @defer.inlineCallbacks
    def test_files(self):
        """
        Files handed on and their bytes, per pair of protocols; an MSRP
        stream is in flight from its header to its last byte, and its
        bytes count as they go on.
        """
        bobo = MsrpClient(self.msrpFactory, b"bobo")
        caro = MsrpClient(self.msrpFactory, b"caro")
        bobo.send(encodeFileHeader(b"caro", b"doc.txt", 10) + b"01234")
        found = yield self.scrape()
        self.assertSamples(
            found,
            {
                "chatd_files_in_flight": 1.0,
                'chatd_relayed_bytes_total{from="msrp",to="msrp"}': 5.0,
            },
        )
        self.assertNotIn('chatd_files_relayed_total{from="msrp",to="msrp"}', found)
        bobo.send(b"56789")
        self.assertTrue(caro.wire().endswith(b"0123456789"))

        yield self.h.register("anna")
        yield self.h.register("beat")
        anna, token = yield self.h.bound("anna")
        yield self.h.bound("beat")
        bobo.send(encodeFileHeader(b"anna", b"f.bin", 7) + b"1234567")
        encoded = base64.b64encode(b"abcd").decode()
        anna.sendLine(f"#ARCHIVO||{token}||anna||beat||a.txt||{encoded}")
        encoded = base64.b64encode(b"xyz").decode()
        anna.sendLine(f"#IMG||{token}||anna||bobo||b.png||{encoded}")
        self.assertEqual(anna.lines()[-2:], [
            "#RESPUESTA||-||2||#ARCHIVO||anna||704",
            "#RESPUESTA||-||3||#IMG||anna||704",
        ])

        found = yield self.scrape()
        pair = '{{from="{}",to="{}"}}'.format
        self.assertSamples(
            found,
            {
                "chatd_files_in_flight": 0.0,
                "chatd_files_relayed_total" + pair("msrp", "msrp"): 1.0,
                "chatd_relayed_bytes_total" + pair("msrp", "msrp"): 10.0,
                "chatd_files_relayed_total" + pair("msrp", "msgr"): 1.0,
                "chatd_relayed_bytes_total" + pair("msrp", "msgr"): 7.0,
                "chatd_files_relayed_total" + pair("msgr", "msgr"): 1.0,
                "chatd_relayed_bytes_total" + pair("msgr", "msgr"): 4.0,
                "chatd_files_relayed_total" + pair("msgr", "msrp"): 1.0,
                "chatd_relayed_bytes_total" + pair("msgr", "msrp"): 3.0,
            },
        )

    @defer.inlineCallbacks
    def test_httpRequestsByCode(self):
        """
        Every HTTP response counts by its status code, including the 503 of
        a connection over the limits, which the site never sees.
        """
        for method, path, status in [
            ("GET", "/healthz", 200),
            ("GET", "/healthz", 200),
            ("POST", "/healthz", 405),
            ("GET", "/nada", 404),
            ("GET", "/status", 405),
            ("POST", "/obtenerusuarios", 401),
        ]:
            response = yield self.h.request(method, path)
            self.assertEqual(response.status, status, path)
        counted = CountedHTTPFactory(
            self.h.site, self.clock, LIMITS, ConnectionLimiter(0, 1), metrics=self.h.site.metrics
        )
        transports = []
        for _ in range(2):
            transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.8", 1))
            connection = counted.buildProtocol(transport.getPeer())
            connection.makeConnection(transport)
            transports.append((connection, transport))
        self.assertTrue(transports[1][1].value().startswith(b"HTTP/1.1 503 "))
        for connection, transport in transports:
            connection.connectionLost(None)

        yield self.scrape()  # a scrape counts once it is answered
        found = yield self.scrape()
        code = 'chatd_http_requests_total{{code="{}",listener="msgr-http"}}'.format
        self.assertSamples(
            found,
            {
                code(200): 3.0,
                code(401): 1.0,
                code(404): 1.0,
                code(405): 2.0,
                code(503): 1.0,
                'chatd_disconnects_total{protocol="http",reason="conn-limit"}': 1.0,
            },
        )

    @defer.inlineCallbacks
    def test_healthz(self):
        """GET /healthz: 200 and C{ok}, at once; HEAD: no body."""
        response = yield self.h.request("GET", "/healthz")
        self.assertEqual(
            (response.status, response.body, response.headers["content-type"]),
            (200, "ok\n", "text/plain; charset=utf-8"),
        )
        self.assertEqual(response.headers["cache-control"], "no-store")
        response = yield self.h.request("HEAD", "/healthz")
        self.assertEqual((response.status, response.body), (200, ""))
        response = yield self.h.request("PUT", "/metrics")
        self.assertEqual((response.status, response.headers["allow"]), (405, "GET, HEAD"))


class JsonLogTests(TestCase):
    """The structured events, as C{chatd.tap.jsonLogObserver} writes them."""

    def jsonLines(self, action) -> list[dict]:
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        observer = tap.jsonLogObserver()
        globalLogPublisher.addObserver(observer)
        try:
            action()
        finally:
            globalLogPublisher.removeObserver(observer)
        lines = out.getvalue().splitlines()
        return [json.loads(line) for line in lines]

    def test_loginLogoutRefusal(self) -> None:
        """
        A login, a refused login and a logout are one JSON object a line
        each, with C{event} naming what happened and the facts as fields.
        """
        presence = InMemoryPresenceService(metrics=ChatdMetrics())
        factory = ProtobufChatFactory(
            presence, reactor, framing=DELIMITED, limits=UNLIMITED, metrics=presence.metrics
        )

        def traffic():
            pepe = ProtobufClient(factory, "192.0.2.7")
            pepe.send(login("pepe", "10.1.2.3"))
            other = ProtobufClient(factory, "192.0.2.9")
            other.send(login("Pepe"))
            other.disconnect()
            pepe.disconnect()

        events = [
            e for e in self.jsonLines(traffic) if e.get("event") is not None
        ]
        self.assertEqual(
            [
                (e["event"], e["protocol"], e["user"], e.get("peer"), e["log_text"])
                for e in events
            ],
            [
                ("login", "protobuf", "pepe", "10.1.2.3",
                 "pepe logged in (protobuf, 10.1.2.3)"),
                ("login-refused", "protobuf", "Pepe", "192.0.2.9",
                 "protobuf login of 'Pepe' from 192.0.2.9 refused:"
                 " the name Pepe is already online"),
                ("logout", "protobuf", "pepe", None, "pepe logged out (protobuf)"),
            ],
        )
        self.assertEqual(events[0]["log_level"]["name"], "info")
        self.assertEqual(events[0]["log_namespace"], "chatd.presence.InMemoryPresenceService")
        self.assertIsInstance(events[0]["log_time"], float)

    def test_traceback(self) -> None:
        """An error's line carries its traceback as text."""

        def fail():
            try:
                1 / 0
            except ZeroDivisionError:
                Logger(namespace="chatd.test").failure("it broke")

        [event] = self.jsonLines(fail)
        self.flushLoggedErrors(ZeroDivisionError)
        self.assertEqual(
            (event["log_level"]["name"], event["log_text"]), ("critical", "it broke")
        )
        self.assertIn("ZeroDivisionError: division by zero", event["log_traceback"])


class TapTests(TestCase):
    """The wiring of C{makeService}: one L{ChatdMetrics} per service tree."""

    def makeService(self, *argv):
        options = tap.Options()
        options.parseOptions(list(argv))
        top = tap.makeService(options, reactor=reactor)
        if top.accounts is not None:
            self.addCleanup(top.accounts.close)
        return top

    def test_oneMetricsPerService(self) -> None:
        argv = [
            "--db", self.mktemp(), "--http", "tcp:0", "--msgr", "tcp:0",
            "--protobuf", "tcp:0", "--msrp", "tcp:0", "--metrics", "tcp:0",
        ]
        top = self.makeService(*argv)
        metrics = top.metrics
        self.assertIs(top.presence.metrics, metrics)
        self.assertIs(top.getServiceNamed("msgr-accounts").metrics, metrics)
        for name in ["protobuf", "msrp", "msgr", "msgr-http"]:
            self.assertIs(top.getServiceNamed(name).factory.metrics, metrics, name)
        site = top.getServiceNamed("msgr-http").factory.wrappedFactory
        self.assertIs(site.metrics, metrics)
        # /metrics is the private listener's only (test_metricsPrivate).
        self.assertIn(b"healthz", site.resource.children)
        self.assertEqual(
            sorted(metrics.listeners), ["msgr", "msgr-http", "msrp", "protobuf"]
        )
        metricsSite = top.getServiceNamed("metrics").factory
        self.assertIsInstance(metricsSite, server.Site)
        self.assertIs(metricsSite.metrics, metrics)
        argv[1] = self.mktemp()
        self.assertIsNot(self.makeService(*argv).metrics, metrics)

    def test_metricsOption(self) -> None:
        options = tap.Options()
        options.parseOptions([])
        self.assertEqual(options["metrics"], "none")
        self.assertRaises(
            usage.UsageError, tap.Options().parseOptions, ["--metrics", "tcp:notaport"]
        )
        top = self.makeService("--db", "none", "--http", "none", "--msgr", "none")
        self.assertNotIn("metrics", {child.name for child in top})

    @defer.inlineCallbacks
    def test_metricsPrivate(self):
        """
        With --metrics, /metrics is served there only: the public --http
        listener answers 404 for it and keeps /healthz. Without, --http
        serves it.
        """
        harness = MsgrHarness(self)
        listeners = ["--msgr", "none", "--protobuf", "none", "--msrp", "none"]
        top = self.makeService(
            "--db", self.mktemp(), "--http", "tcp:0", "--metrics", "tcp:0", *listeners
        )
        harness.site = top.getServiceNamed("msgr-http").factory.wrappedFactory
        response = yield harness.request("GET", "/metrics")
        self.assertEqual((response.status, response.body), (404, "404"))
        response = yield harness.request("GET", "/healthz")
        self.assertEqual((response.status, response.body), (200, "ok\n"))
        harness.site = top.getServiceNamed("metrics").factory
        response = yield harness.request("GET", "/metrics")
        self.assertEqual(response.status, 200)
        self.assertIn(
            'chatd_http_requests_total{code="404",listener="msgr-http"} 1.0',
            response.body.splitlines(),
        )

        top = self.makeService("--db", self.mktemp(), "--http", "tcp:0", *listeners)
        harness.site = top.getServiceNamed("msgr-http").factory.wrappedFactory
        response = yield harness.request("GET", "/metrics")
        self.assertEqual(response.status, 200)
        self.assertIn("chatd_sessions_online", response.body)

    @defer.inlineCallbacks
    def test_metricsSite(self):
        """The --metrics listener: /metrics, /healthz, and 404 elsewhere."""
        metrics = ChatdMetrics()
        site = makeMetricsSite(metrics, reactor)
        harness = MsgrHarness(self)
        harness.site = site  # its request() drives any site
        for path, status in [("/healthz", 200), ("/", 404), ("/status", 404)]:
            response = yield harness.request("GET", path)
            self.assertEqual(response.status, status, path)
        response = yield harness.request("GET", "/metrics")
        self.assertIn(
            'chatd_http_requests_total{code="404",listener="metrics"} 2.0',
            response.body.splitlines(),
        )

