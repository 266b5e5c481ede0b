"""
The operator's view of a real C{twistd --nodaemon chatd} process, started
as docs/observability.md says: JSON log lines on standard output
(C{--logger chatd.tap.jsonLogObserver}), GET /metrics and GET /healthz on
the HTTP listener and on the --metrics listener, over real sockets on
127.0.0.1.
"""

from __future__ import annotations

import json
import os

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.trial.unittest import TestCase

from chatd.protobuf import chat_pb2
from tests.support import login, message
from tests.test_metrics import samples
from tests.test_msgr_helpers import HttpResponse
from tests.test_twistd_plugin import responseWith
from tests.twistd import ByteCollector, TwistdProcess

R = chat_pb2.ServerResponse

LOOPBACK = "tcp:0:interface=127.0.0.1"


class JsonTwistdProcess(TwistdProcess):
    """
    L{TwistdProcess} with twistd's own options of the docs
    (C{--logger chatd.tap.jsonLogObserver}), and a way to wait for a log
    event.
    """

    twistdOptions = ("--logger", "chatd.tap.jsonLogObserver")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._waiters: list = []

    def events(self) -> list[dict]:
        """Every complete line of standard output, parsed as JSON."""
        lines = self.output.split(b"\n")[:-1]
        return [json.loads(line) for line in lines if line.startswith(b"{")]

    def outReceived(self, data: bytes) -> None:
        super().outReceived(data)
        for waiter in list(self._waiters):
            predicate, d = waiter
            found = [e for e in self.events() if predicate(e)]
            if found:
                self._waiters.remove(waiter)
                d.callback(found[0])

    errReceived = outReceived

    def waitForEvent(self, predicate) -> defer.Deferred:
        d = defer.Deferred()
        self._waiters.append((predicate, d))
        self.outReceived(b"")
        return d


@defer.inlineCallbacks
def httpGet(port: int, path: str):
    """One HTTP/1.0 GET over a real socket; an L{HttpResponse}."""
    client = ByteCollector()
    yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
    client.transport.write(f"GET {path} HTTP/1.0\r\nHost: chatd\r\n\r\n".encode())
    yield client.closed
    return HttpResponse(client.received)


class ObservabilityTwistdTests(TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def test_metricsHealthAndJsonLogs(self):
        directory = self.mktemp()
        os.makedirs(directory)
        server = JsonTwistdProcess(
            [
                "--protobuf", LOOPBACK, "--msrp", "none", "--msgr", "none",
                "--http", LOOPBACK, "--db", "chatd.sqlite3",
                "--metrics", LOOPBACK,
            ],
            ["protobuf", "msgr-http", "metrics"],
            directory,
        )
        self.addCleanup(server.stop)
        ports = yield server.start()

        clients = []
        for name in ["alice", "bob"]:
            client = ByteCollector()
            yield connectProtocol(
                TCP4ClientEndpoint(reactor, "127.0.0.1", ports["protobuf"]), client
            )
            self.addCleanup(lambda c=client: (c.transport.loseConnection(), c.closed)[1])
            client.transport.write(login(name).SerializeToString())
            yield client.waitFor(responseWith("user"))
            client.received = b""
            clients.append(client)
        alice, bob = clients
        for i in range(3):
            alice.transport.write(message("bob", f"hola {i}").SerializeToString())
            yield alice.waitFor(responseWith("response"))
            alice.received = b""

        for label in ["msgr-http", "metrics"]:
            response = yield httpGet(ports[label], "/healthz")
            self.assertEqual((response.status, response.body), (200, "ok\n"), label)
        # With --metrics, the public listener keeps the counts to itself.
        response = yield httpGet(ports["msgr-http"], "/metrics")
        self.assertEqual((response.status, response.body), (404, "404"))
        for label in ["metrics"]:
            response = yield httpGet(ports[label], "/metrics")
            self.assertEqual(response.status, 200)
            found = samples(response.body)
            self.assertEqual(
                {
                    key: found[key]
                    for key in [
                        'chatd_messages_routed_total{from="protobuf",to="protobuf"}',
                        'chatd_sessions_online{protocol="protobuf"}',
                        'chatd_logins_total{protocol="protobuf",result="accepted"}',
                        'chatd_connections_open{listener="protobuf"}',
                    ]
                },
                {
                    'chatd_messages_routed_total{from="protobuf",to="protobuf"}': 3.0,
                    'chatd_sessions_online{protocol="protobuf"}': 2.0,
                    'chatd_logins_total{protocol="protobuf",result="accepted"}': 2.0,
                    'chatd_connections_open{listener="protobuf"}': 2.0,
                },
                label,
            )
        self.assertEqual(
            found['chatd_http_requests_total{code="200",listener="msgr-http"}'], 1.0
        )
        self.assertEqual(
            found['chatd_http_requests_total{code="404",listener="msgr-http"}'], 1.0
        )
        self.assertEqual(
            found['chatd_http_requests_total{code="200",listener="metrics"}'], 1.0
        )
        self.assertGreater(found["process_open_fds"], 0)

        # Every line of standard output is a JSON object; a login is one of
        # them, with its facts as fields.
        events = server.events()
        self.assertEqual(
            len(events), server.output.count(b"\n"), "a line that is not JSON"
        )
        logins = [e for e in events if e.get("event") == "login"]
        self.assertEqual(
            [(e["user"], e["protocol"], e["peer"]) for e in logins],
            [("alice", "protobuf", "127.0.0.1"), ("bob", "protobuf", "127.0.0.1")],
        )
        self.assertEqual(logins[0]["log_text"], "alice logged in (protobuf, 127.0.0.1)")

        bob.transport.loseConnection()
        logout = yield server.waitForEvent(lambda e: e.get("event") == "logout")
        self.assertEqual((logout["user"], logout["protocol"]), ("bob", "protobuf"))

        yield server.stop()
        self.assertEqual(server.events()[-1]["log_text"], "Server Shut Down.")
        self.assertEqual(server.exitStatus.signal, 15)
