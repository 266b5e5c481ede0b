"""
MSGR accounts in PostgreSQL (issue 16), on the test run's real PostgreSQL:
the schema reached from every older version, two nodes sharing one database
(names, revocations, migrations at once), the database going away and
coming back, chatd-admin's copy from SQLite.

The store tests that run on both databases are in
L{tests.test_msgr_accounts} (their C{Postgres*} classes).
"""

from __future__ import annotations

import io
import os
import threading
from urllib.parse import urlencode

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ProcessTerminated
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from chatd.msgr import accounts, admin
from chatd.msgr.accounts import SCHEMA_VERSION, AccountStore, prepareDatabase
from chatd.presence import NameProtected
from chatd.testservers import freePort, postgresServer

from tests.support import RecordingSession
from tests.test_msgr_accounts import sql
from tests.test_msgr_helpers import FAST_SCRYPT, MsgrHarness
from tests.twistd import ByteCollector, TwistdProcess


def adminRun(*argv: str, stdin: str = "") -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = admin.main(
        list(argv), stdin=io.StringIO(stdin), stdout=out, stderr=err, scrypt=FAST_SCRYPT
    )
    return status, out.getvalue(), err.getvalue()


class PostgresMigrationTests(unittest.TestCase):
    """Every schema version chatd ever wrote, brought to the current one."""

    def databaseAt(self, version: int) -> str:
        """A PostgreSQL database at schema C{version}, with Ana's account."""
        url = postgresServer().createDatabase()
        if version == 0:
            return url
        connection = accounts.connect(url)
        try:
            connection.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
            connection.execute("INSERT INTO schema_version VALUES (?)", (version,))
            cursor = connection.cursor()
            for step in range(1, version + 1):
                accounts.MIGRATIONS[step](cursor)
            connection.execute(
                "INSERT INTO accounts (name_key, name, password) VALUES (?, ?, ?)",
                ("ana", "Ana", accounts.hashPassword("clave", FAST_SCRYPT)),
            )
        finally:
            connection.close()
        return url

    @defer.inlineCallbacks
    def test_everyOlderVersion(self):
        for version in range(0, SCHEMA_VERSION):
            url = self.databaseAt(version)
            names = prepareDatabase(url)
            self.assertEqual(names, [] if version == 0 else ["Ana"], version)
            self.assertEqual(
                sql(url, "SELECT version FROM schema_version"), [(SCHEMA_VERSION,)]
            )
            store = AccountStore(url, names, reactor, FAST_SCRYPT)
            try:
                if version:
                    account = yield store.authenticate("ANA", "clave")
                    self.assertEqual(account.name, "Ana", version)
                    self.assertEqual((yield store.idsOf(["Ana"])), {"ana": 1})
                yield store.register("Bea", "pw", {})
                self.assertEqual(
                    (yield store.idsOf(["Bea"])), {"bea": 2 if version else 1}, version
                )
                self.assertTrue(store.isProtectedName("B\u0435a"))  # Cyrillic е
            finally:
                store.close()

    def test_twoNodesStartAtOnce(self):
        """
        Two nodes preparing one empty database at the same moment: both
        start, and the schema is made once.
        """
        url = postgresServer().createDatabase()
        start = threading.Barrier(2)
        results: list = [None, None]

        def node(index: int) -> None:
            start.wait()
            try:
                results[index] = accounts.prepareDatabaseWithId(url)
            except Exception as e:  # reported below
                results[index] = e

        threads = [threading.Thread(target=node, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        # One database id: the step that makes it ran once, under the lock.
        [(ident,)] = sql(url, "SELECT id FROM database_id")
        self.assertEqual(results, [([], ident), ([], ident)])
        self.assertEqual(
            sql(url, "SELECT version FROM schema_version"), [(SCHEMA_VERSION,)]
        )


class TwoNodesTests(unittest.TestCase):
    """
    Two MSGR services (two nodes of a cluster) on one PostgreSQL database;
    each reads what the other wrote at its poll (L{MsgrService.pollRevocations},
    every second in a running server).
    """

    @defer.inlineCallbacks
    def setUp(self):
        self.url = postgresServer().createDatabase()
        self.one = MsgrHarness(self, path=self.url)
        self.two = MsgrHarness(self, path=self.url)
        # The first poll of each notes where the revocations end.
        yield self.one.msgr.pollRevocations()
        yield self.two.msgr.pollRevocations()

    def protobufLogin(self, harness: MsgrHarness, name: str) -> defer.Deferred:
        return harness.presence.login(RecordingSession("protobuf"), name, "192.0.2.9")

    @defer.inlineCallbacks
    def test_registeredNameProtectedOnTheOtherNode(self):
        yield self.one.register("Ana")
        self.assertFalse(self.two.store.isProtectedName("Ana"))  # not read yet
        yield self.two.msgr.pollRevocations()
        # Read: the name and its look-alikes are kept from protobuf there.
        for name in ("Ana", "ANA", "An\u0430"):
            yield self.assertFailure(self.protobufLogin(self.two, name), NameProtected)
        yield self.protobufLogin(self.two, "Bea")

    @defer.inlineCallbacks
    def test_deletedNameFreedOnEveryNode(self):
        yield self.one.register("Ana")
        yield self.two.msgr.pollRevocations()
        status, out, _ = adminRun("--db", self.url, "delete", "Ana")
        self.assertEqual(status, admin.OK, out)
        yield self.one.msgr.pollRevocations()
        yield self.two.msgr.pollRevocations()
        yield self.protobufLogin(self.one, "Ana")
        yield self.protobufLogin(self.two, "ana")

    @defer.inlineCallbacks
    def test_passwordChangeEndsTokensOnTheOtherNode(self):
        """
        Ana changes her password on node one: her token on node two is
        revoked at its poll; the token she changed it with keeps working.
        """
        yield self.one.register("Ana", "clave")
        here = yield self.one.login("Ana", "clave")
        there = yield self.two.login("Ana", "clave")
        response = yield self.one.form(
            "/usuariomodificar", token=here, **{"pass": "nueva", "pass_actual": "clave"}
        )
        self.assertEqual(response.body, "702")
        yield self.one.msgr.pollRevocations()
        yield self.two.msgr.pollRevocations()
        response = yield self.two.form("/obtenerusuarios", token=there)
        self.assertEqual(response.body, "901")
        response = yield self.one.form("/obtenerusuarios", token=here)
        self.assertEqual(response.body.split("||")[0], "704")
        token = yield self.two.login("Ana", "nueva")
        self.assertTrue(token)

    @defer.inlineCallbacks
    def test_lookalikesRegisteredAtOnceOneWins(self):
        """
        The same moment, two nodes register names that look alike (Latin
        and Cyrillic a): exactly one account is made, every time.
        """
        for number in range(20):
            latin, cyrillic = f"Ana{number}", f"An\u0430{number}"
            outcomes = yield defer.DeferredList(
                [
                    self.one.store.register(latin, "pw", {}),
                    self.two.store.register(cyrillic, "pw", {}),
                ],
                consumeErrors=True,
            )
            made = [ok for ok, _ in outcomes if ok]
            self.assertEqual(len(made), 1, (number, outcomes))
        self.assertEqual(len(sql(self.url, "SELECT name FROM accounts")), 20)

    @defer.inlineCallbacks
    def test_adminRevokeReachesBothNodes(self):
        yield self.one.register("Ana")
        tokens = [(yield self.one.login("Ana"))]
        tokens.append((yield self.two.login("Ana")))
        self.assertEqual(adminRun("--db", self.url, "revoke", "ana")[0], admin.OK)
        for harness, token in zip((self.one, self.two), tokens):
            yield harness.msgr.pollRevocations()
            response = yield harness.form("/obtenerusuarios", token=token)
            self.assertEqual(response.body, "901")


class UnreachableTests(unittest.TestCase):
    """PostgreSQL stopped and started again under a running MSGR service."""

    timeout = 60

    @defer.inlineCallbacks
    def test_loginRefusedThenRecovers(self):
        server = postgresServer()
        h = MsgrHarness(self, path=server.createDatabase())
        yield h.register("Ana")
        server.stop()
        self.addCleanup(lambda: server.process is None and server.start())
        # The seed's answer to a login that cannot be checked, not a
        # traceback; a registration gets its own general code.
        response = yield h.form("/status", usr="Ana", **{"pass": "secreto"})
        self.assertEqual((response.status, response.body), (200, "901||internal error\n"))
        response = yield h.form("/usuariocrear", usr="Bea", **{"pass": "secreto"})
        self.assertEqual((response.status, response.body), (200, "902||internal error\n"))
        # The poll fails, is logged once however long it lasts, and stops
        # nothing.
        events: list = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        for _ in range(3):
            yield h.msgr.pollRevocations()
        # Other protocols do not need the database.
        yield h.presence.login(RecordingSession("protobuf"), "carla", "192.0.2.9")
        self.assertTrue(self.flushLoggedErrors())
        server.start()
        # Back by itself: the pool replaces its broken connection.
        token = yield h.login("Ana")
        self.assertTrue(token)
        yield h.msgr.pollRevocations()
        self.assertEqual(
            [e["event"] for e in events if e.get("event", "").startswith("revocations-")],
            ["revocations-failed", "revocations-recovered"],
        )
        self.flushLoggedErrors()


class CopyTests(unittest.TestCase):
    """chatd-admin copy: a SQLite account database into PostgreSQL."""

    @defer.inlineCallbacks
    def setUp(self):
        self.source = MsgrHarness(self)
        h = self.source
        for name in ("Ana", "Bea", "Cy", "Dan", "Eva"):
            yield h.register(name, f"clave-{name}", email=f"{name}@example.org")
        ta = yield h.login("Ana", "clave-Ana")
        tb = yield h.login("Bea", "clave-Bea")
        tc = yield h.login("Cy", "clave-Cy")
        yield h.befriend("Ana", "Bea", ta, tb)
        response = yield h.form("/enviarsolicitud", token=tc, para="Ana")
        self.assertEqual(response.body, "704")
        self.assertEqual(adminRun("--db", h.path, "block", "Dan")[0], admin.OK)
        # Eva's id (5) is never given again, in either database.
        self.assertEqual(adminRun("--db", h.path, "delete", "Eva")[0], admin.OK)
        h.close()
        self.target = postgresServer().createDatabase()

    @defer.inlineCallbacks
    def test_copyEverything(self):
        status, out, err = adminRun("copy", "--from", self.source.path, "--to", self.target)
        self.assertEqual(
            (status, out, err),
            (admin.OK, "copied 4 accounts, 1 friendships and 1 friend requests\n", ""),
        )
        h = MsgrHarness(self, path=self.target)
        ta = yield h.login("Ana", "clave-Ana")
        response = yield h.form("/obtenerusuarios", token=ta)
        self.assertEqual(response.body.split("||")[:2], ["704", "Bea offline"])
        response = yield h.form("/obtenersolicitudes", token=ta)
        self.assertIn("Cy", response.body)
        response = yield h.form("/status", usr="Dan", **{"pass": "clave-Dan"})
        self.assertEqual(response.body, "802")
        self.assertEqual(
            (yield h.store.idsOf(["Ana", "Bea", "Cy", "Dan"])),
            {"ana": 1, "bea": 2, "cy": 3, "dan": 4},
        )
        [(email,)] = sql(self.target, "SELECT email FROM accounts WHERE name = 'Cy'")
        self.assertEqual(email, "Cy@example.org")
        yield h.register("Fer")
        self.assertEqual((yield h.store.idsOf(["Fer"])), {"fer": 6})
        self.assertEqual(
            adminRun("--db", self.target, "list")[1].splitlines()[1:],
            [
                "Ana\tno\tAna@example.org\t1\t1",
                "Bea\tno\tBea@example.org\t1\t0",
                "Cy\tno\tCy@example.org\t0\t0",
                "Dan\tyes\tDan@example.org\t0\t0",
                "Fer\tno\t\t0\t0",
            ],
        )

    def test_refusedWhenTheTargetHasAccounts(self):
        self.assertEqual(
            adminRun("--db", self.target, "create", "Zoe", "--password-stdin", stdin="x\n")[0],
            admin.OK,
        )
        status, out, err = adminRun("copy", "--from", self.source.path, "--to", self.target)
        self.assertEqual(
            (status, out, err),
            (
                admin.FAILED,
                "",
                "chatd-admin: the target database has 1 accounts already;"
                " nothing was copied (copy only into an empty database)\n",
            ),
        )
        self.assertEqual(sql(self.target, "SELECT name FROM accounts"), [("Zoe",)])

    def test_noSource(self):
        status, _, err = adminRun("copy", "--from", self.mktemp(), "--to", self.target)
        self.assertEqual(status, admin.FAILED)
        self.assertIn("no database at", err)


class TwistdPostgresTests(unittest.TestCase):
    """Real C{twistd -n chatd --db postgresql://...} nodes."""

    timeout = 60

    def node(self, url: str) -> TwistdProcess:
        directory = self.mktemp()
        os.makedirs(directory)
        loopback = "tcp:0:interface=127.0.0.1"
        server = TwistdProcess(
            ["--http", loopback, "--protobuf", loopback, "--msgr", "none",
             "--msrp", "none", "--db", url],
            ["msgr-http", "protobuf"],
            directory,
        )
        self.addCleanup(server.stop)
        return server

    @defer.inlineCallbacks
    def post(self, port: int, path: str, **fields) -> defer.Deferred:
        """One form request over HTTP/1.0; the body of the answer."""
        client = ByteCollector()
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
        body = urlencode(fields).encode()
        client.transport.write(
            b"POST %s HTTP/1.0\r\nContent-Length: %d\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n\r\n%s"
            % (path.encode(), len(body), body)
        )
        yield client.closed
        return client.received.partition(b"\r\n\r\n")[2].decode()

    @defer.inlineCallbacks
    def test_registerOnOneNodeLogInOnAnother(self):
        url = postgresServer().createDatabase()
        one = yield self.node(url).start()
        two = yield self.node(url).start()
        answer = yield self.post(one["msgr-http"], "/usuariocrear", usr="Ana", **{"pass": "clave"})
        self.assertEqual(answer, "702")
        answer = yield self.post(two["msgr-http"], "/status", usr="ana", **{"pass": "clave"})
        code, _, token = answer.partition("||")
        self.assertEqual((code, len(token)), ("701", 43))
        answer = yield self.post(two["msgr-http"], "/usuariocrear", usr="ANA", **{"pass": "x"})
        self.assertEqual(answer.split("||")[0], "803")
        self.assertEqual(sql(url, "SELECT name FROM accounts"), [("Ana",)])

    @defer.inlineCallbacks
    def test_unreachableAtStartIsOneLine(self):
        server = postgresServer()
        port = freePort()  # nothing listens there
        process = self.node(f"postgresql://chatd:s3cret@127.0.0.1:{port}/chatd")
        process.ready.addErrback(lambda _: None)  # it never listens
        process.start()
        yield process.ended
        output = process.output.decode()
        self.assertIn(
            f"chatd: --db postgresql://chatd:***@127.0.0.1:{port}/chatd:"
            " cannot open the accounts database: connection failed: ",
            output,
        )
        self.assertNotIn("Traceback", output)
        self.assertNotIn("s3cret", output)
        self.assertIsInstance(process.exitStatus, ProcessTerminated)
        self.assertEqual(process.exitStatus.exitCode, 1)
        self.assertTrue(server.process.poll() is None)
