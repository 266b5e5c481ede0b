"""The MSGR options of twistd chatd and their wiring in makeService."""

import sqlite3

from twisted.internet import reactor
from twisted.python import usage
from twisted.trial import unittest

from chatd import tap
from chatd.msgr.accounts import hashPassword, prepareDatabase
from chatd.msgr.http import MsgrEndpoint
from chatd.msgr.protocol import MsgrChatFactory
from chatd.presence import NameProtected

from tests.test_msgr_helpers import FAST_SCRYPT, RecordingSession


class OptionsTests(unittest.TestCase):
    def parse(self, *argv):
        options = tap.Options()
        options.parseOptions(list(argv))
        return options

    def test_defaults(self):
        options = self.parse()
        self.assertEqual(options["http"], "tcp:8000")
        self.assertEqual(options["msgr"], "tcp:1234")
        self.assertEqual(options["db"], "chatd.sqlite3")
        self.assertEqual(options["msgr-token-idle"], 1800.0)
        self.assertEqual(options["msgr-lockout-failures"], 5)

    def test_values(self):
        options = self.parse(
            "--msgr-token-idle", "60", "--msgr-max-file", "10", "--msgr-max-line", "2000"
        )
        self.assertEqual(
            (options["msgr-token-idle"], options["msgr-max-file"], options["msgr-max-line"]),
            (60.0, 10, 2000),
        )

    def test_dbNoneNeedsMsgrOff(self):
        self.assertRaises(usage.UsageError, self.parse, "--db", "none")
        options = self.parse("--db", "none", "--http", "none", "--msgr", "none")
        self.assertEqual(options["db"], "none")

    def test_lineMustHoldAFile(self):
        self.assertRaises(
            usage.UsageError, self.parse, "--msgr-max-file", "3000", "--msgr-max-line", "4000"
        )

    def test_positive(self):
        self.assertRaises(usage.UsageError, self.parse, "--msgr-lockout-time", "0")


class MakeServiceTests(unittest.TestCase):
    def makeService(self, *argv):
        options = tap.Options()
        options.parseOptions(["--protobuf", "none", "--msrp", "none", *argv])
        # Nothing is started: no port is opened.
        top = tap.makeService(options, reactor=reactor)
        if top.accounts is not None:
            self.addCleanup(top.accounts.close)
        return top

    def test_registeredNamesProtectedFromTheStart(self):
        path = self.mktemp()
        prepareDatabase(path)
        connection = sqlite3.connect(path)
        connection.execute(
            "INSERT INTO accounts (name_key, name, password) VALUES ('ana', 'Ana', ?)",
            (hashPassword("x", FAST_SCRYPT),),
        )
        connection.commit()
        connection.close()
        top = self.makeService("--db", path, "--http", "tcp:0", "--msgr", "tcp:0")
        self.assertTrue(top.presence.isProtectedName("ANA"))
        self.assertFalse(top.presence.isProtectedName("Bea"))
        d = top.presence.login(RecordingSession(), "ana", "1.1.1.1")
        return self.assertFailure(d, NameProtected)

    def test_listeners(self):
        top = self.makeService(
            "--db", self.mktemp(), "--http", "tcp:0", "--msgr", "tcp:0",
            "--msgr-max-line", "5000", "--msgr-max-file", "100",
        )
        names = {child.name for child in top}
        self.assertTrue({"msgr-accounts", "msgr-http", "msgr"} <= names, names)
        chat = top.getServiceNamed("msgr").factory
        self.assertIsInstance(chat, MsgrChatFactory)
        self.assertEqual((chat.maxLine, chat.maxFileSize), (5000, 100))
        counted = top.getServiceNamed("msgr-http").factory
        self.assertIs(counted.limiter, top.limiter)
        site = counted.wrappedFactory
        self.assertFalse(site.displayTracebacks)
        self.assertIsInstance(site.resource.children[b"status"], MsgrEndpoint)

    def test_listenersOff(self):
        top = self.makeService("--db", self.mktemp(), "--http", "none", "--msgr", "none")
        names = {child.name for child in top}
        self.assertIn("msgr-accounts", names)
        self.assertNotIn("msgr", names)
        self.assertNotIn("msgr-http", names)

    def test_noDatabase(self):
        top = self.makeService("--db", "none", "--http", "none", "--msgr", "none")
        self.assertFalse(top.presence.isProtectedName("ana"))
        self.assertFalse(hasattr(top, "msgr"))
