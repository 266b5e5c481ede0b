"""
The fronts (chatd/fronts.py) and the service tree they build
(chatd/service.py): issue 13's shape, held by tests.
"""

from __future__ import annotations

import ast
import os

from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.python import usage
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from chatd import tap
from chatd.fronts import FRONTS, IFront, loadFronts
from chatd.presence import InMemoryPresenceService
from chatd.protobuf.protocol import DELIMITED, ProtobufChatFactory
from chatd.service import ChatdService
from tests.support import ProtobufClient, message

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: The protocol packages, which only the fronts may bring into chatd.tap.
PROTOCOLS = ("chatd.protobuf", "chatd.msrp", "chatd.msgr")


class FrontTests(TestCase):
    def test_everyFrontProvidesIFront(self) -> None:
        fronts = loadFronts()
        self.assertEqual(len(fronts), len(FRONTS))
        for front in fronts:
            self.assertTrue(verifyObject(IFront, front), front)

    def test_optionsNamedOnce(self) -> None:
        """No front declares an option another front or tap.py declares."""
        names = [row[0] for row in tap.Options.optParameters]
        self.assertEqual(len(names), len(set(names)))
        for front in loadFronts():
            for row in front.options():
                self.assertIn(row[0], tap.Options().defaults)
            for option in front.endpointOptions:
                self.assertIn(option, tap.Options.listenerOptions)

    def test_tapImportsNoProtocol(self) -> None:
        """chatd.tap reaches the protocols only through the list of fronts."""
        with open(os.path.join(ROOT, "chatd", "tap.py"), encoding="utf-8") as f:
            tree = ast.parse(f.read())
        imported = []
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.append(node.module)
                imported.extend(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                imported.extend(a.name for a in node.names)
        for name in imported:
            self.assertFalse(name.startswith(PROTOCOLS), name)

    def test_frontCheckIsAUsageError(self) -> None:
        """The MSGR rule, now the MSGR front's, still stops the parse."""
        with self.assertRaises(usage.UsageError) as cm:
            tap.Options().parseOptions(["--db", "none", "--protobuf", "tcp:0"])
        self.assertEqual(str(cm.exception), "--db none needs --http none and --msgr none")


class ServiceTreeTests(TestCase):
    def makeService(self, *argv) -> ChatdService:
        options = tap.Options()
        options.parseOptions(list(argv))
        top = tap.makeService(options, reactor=reactor)
        if top.accounts is not None:
            self.addCleanup(top.accounts.close)
        return top

    def test_declaredAttributes(self) -> None:
        top = self.makeService(
            "--db", self.mktemp(), "--http", "tcp:0", "--msgr", "tcp:0",
            "--protobuf", "tcp:0", "--msrp", "tcp:0", "--max-conns-per-ip", "3",
        )
        self.assertIsInstance(top, ChatdService)
        self.assertEqual(top.limits.maxConnectionsPerAddress, 3)
        self.assertEqual(top.limiter.maxPerAddress, 3)
        self.assertIs(top.presence.metrics, top.metrics)
        # The presence service protects the names of the accounts.
        self.assertIs(
            top.getServiceNamed("msgr-accounts").store, top.accounts
        )
        self.assertEqual(
            [s.name for s in top],
            ["msgr-accounts", "msgr-http", "msgr", "protobuf", "msrp"],
        )

    def test_noAccounts(self) -> None:
        top = self.makeService(
            "--db", "none", "--http", "none", "--msgr", "none",
            "--protobuf", "tcp:0", "--msrp", "none", "--metrics", "tcp:0",
        )
        self.assertIsNone(top.accounts)
        self.assertEqual([s.name for s in top], ["protobuf", "metrics"])


class ExplicitMetricsTests(TestCase):
    def test_factoryWithoutMetricsCountsInItsOwn(self) -> None:
        """
        A factory built without metrics counts in a ChatdMetrics of its own,
        not in its presence service's (no hidden fall-back).
        """
        presence = InMemoryPresenceService()
        factory = ProtobufChatFactory(
            presence, Clock(), framing=DELIMITED, maxFrameSize=64
        )
        client = ProtobufClient(factory)
        client.send(message("x", "y" * 100))
        self.assertTrue(client.transport.disconnecting)
        client.disconnect()
        self.assertIsNot(factory.metrics, presence.metrics)
        self.assertEqual(dict(factory.metrics.disconnects), {("protobuf", "too-large"): 1})
        self.assertEqual(dict(presence.metrics.disconnects), {})
