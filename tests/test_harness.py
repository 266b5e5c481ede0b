"""
The twistd harness (chatd/harness.py) that the tests, the soak and the
benchmark share: it reads the ports from the very line a listener logs.
"""

from __future__ import annotations

import sys

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.task import Clock
from twisted.logger import Logger, formatEvent
from twisted.trial.unittest import SynchronousTestCase, TestCase

from chatd.harness import (
    LISTENING_FORMAT,
    ServerError,
    ServerProcess,
    chatdArgv,
    listeningPorts,
)
from chatd.listener import ListenerService
from chatd.presence import InMemoryPresenceService
from chatd.protobuf.protocol import ProtobufChatFactory


class ListeningLineTests(TestCase):
    def test_readsWhatTheListenerLogs(self) -> None:
        """
        The line a listener logs once it listens is the harness's format,
        and the harness reads the listener's real port from it.
        """
        events: list[dict] = []
        factory = ProtobufChatFactory(InMemoryPresenceService(), Clock())
        service = ListenerService(
            "protobuf", TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"), factory
        )
        service.log = Logger(observer=events.append)
        service.startService()
        self.addCleanup(service.stopService)
        [event] = events
        self.assertEqual(event["log_format"], LISTENING_FORMAT)
        line = formatEvent(event)
        self.assertEqual(line, f"chatd protobuf listening on tcp:127.0.0.1:{service.port.getHost().port}")
        self.assertEqual(listeningPorts(line), {"protobuf": service.port.getHost().port})
        self.assertEqual(listeningPorts(line.encode()), {"protobuf": service.port.getHost().port})

    def test_everyLabelOfALog(self) -> None:
        """
        Every listener of a log, TLS and IPv6 ones too, and the
        benchmark's own servers (no C{chatd} before the label).
        """
        log = (
            "2026-11-30T00:00:00+0000 [-] chatd protobuf listening on tcp:127.0.0.1:4001\n"
            "2026-11-30T00:00:00+0000 [-] chatd msgr-http listening on ssl:::1:4443\n"
            "relay listening on tcp:127.0.0.1:5001\n"
            "chatd msrp could not listen\n"
        )
        self.assertEqual(
            listeningPorts(log), {"protobuf": 4001, "msgr-http": 4443, "relay": 5001}
        )


class ServerProcessTests(SynchronousTestCase):
    def test_exitedBeforeListening(self) -> None:
        """A server that ends before it listens is reported with its output."""
        server = ServerProcess(
            [sys.executable, "-c", "print('no port for you', flush=True); raise SystemExit(3)"],
            ["relay"],
        )
        self.addCleanup(server.stop)
        with self.assertRaises(ServerError) as caught:
            server.start(timeout=60)
        self.assertIn("exited (3)", str(caught.exception))
        self.assertIn("no port for you", str(caught.exception))

    def test_chatdArgv(self) -> None:
        """twistd in the foreground, no pid file, its options before chatd's."""
        self.assertEqual(
            chatdArgv(["--protobuf", "tcp:0"], "/bin/twistd"),
            ["/bin/twistd", "--nodaemon", "--pidfile=", "--logfile=-", "chatd", "--protobuf", "tcp:0"],
        )
