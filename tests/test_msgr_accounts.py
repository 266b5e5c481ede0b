"""
The MSGR account store and chatd-admin, on a real SQLite file and on a real
PostgreSQL database: each test class that touches the database runs on both
(a mixin of tests, and one subclass per database).
"""

import io
import sqlite3

from twisted.internet import defer, reactor, threads
from twisted.internet.protocol import Factory
from twisted.trial import unittest

from chatd.msgr import accounts, admin
from chatd.msgr.accounts import (
    SCHEMA_VERSION,
    AccountStore,
    InvalidAccountData,
    NameTaken,
    hashPassword,
    prepareDatabase,
    verifyPassword,
)
from chatd.exporter import makeMetricsSite
from chatd.metrics import ChatdMetrics
from chatd.presence import InMemoryPresenceService, InvalidName

from chatd.testservers import postgresServer

from tests.support import RecordingSession
from tests.test_msgr_helpers import FAST_SCRYPT, MsgrHarness


class PasswordHashTests(unittest.TestCase):
    def test_defaultParametersRoundTrip(self):
        """The real (slow) parameters, once."""
        stored = hashPassword("contraseña")
        scheme, n, r, p, salt, digest = stored.split("$")
        self.assertEqual((scheme, int(n), int(r), int(p)), ("scrypt", 2**14, 8, 1))
        self.assertTrue(verifyPassword("contraseña", stored))
        self.assertFalse(verifyPassword("contrasena", stored))

    def test_salted(self):
        self.assertNotEqual(hashPassword("x", FAST_SCRYPT), hashPassword("x", FAST_SCRYPT))

    def test_malformedStoredHashNeverMatches(self):
        for stored in ("", "plain", "md5$1$1$1$AA==$AA==", "scrypt$x$8$1$AA==$AA=="):
            self.assertFalse(verifyPassword("x", stored))


class SQLiteFile:
    """The test's account database: a new SQLite file."""

    def newDatabase(self) -> str:
        return self.mktemp() + ".sqlite3"


class PostgresDatabase:
    """The test's account database: a new database on the run's PostgreSQL."""

    def newDatabase(self) -> str:
        return postgresServer().createDatabase()


def sql(target: str, query: str, params: tuple = ()) -> list:
    """Run C{query} on the database C{target} (autocommit); its rows, if any."""
    connection = accounts.connect(target)
    try:
        cursor = connection.execute(query, params)
        try:
            return cursor.fetchall()
        except Exception:  # a statement without rows
            return []
    finally:
        connection.close()


class StoreTestsMixin:
    def setUp(self):
        self.path = self.newDatabase()
        self.store = AccountStore.open(self.path, reactor, FAST_SCRYPT)
        self.addCleanup(self.store.close)

    @defer.inlineCallbacks
    def test_registerAndAuthenticate(self):
        account = yield self.store.register(
            "Ana", "pw", {"nombres": "Ana María", "email": "ana@example.org"}
        )
        self.assertEqual(account.name, "Ana")
        self.assertTrue(self.store.isProtectedName("ANA"))
        found = yield self.store.authenticate("ana", "pw")
        self.assertEqual(found.name, "Ana")
        self.assertEqual(found.nombres, "Ana María")
        wrong = yield self.store.authenticate("Ana", "PW")
        self.assertIsNone(wrong)
        missing = yield self.store.authenticate("Nadie", "pw")
        self.assertIsNone(missing)

    @defer.inlineCallbacks
    def test_passwordIsStoredHashed(self):
        yield self.store.register("Ana", "secreto-unico", {})
        [(stored,)] = sql(self.path, "SELECT password FROM accounts")
        self.assertNotIn("secreto-unico", stored)
        self.assertTrue(stored.startswith("scrypt$16$1$1$"))

    @defer.inlineCallbacks
    def test_nameTakenInAnyCase(self):
        yield self.store.register("Ana", "pw", {})
        yield self.assertFailure(self.store.register("aNA", "pw", {}), NameTaken)

    @defer.inlineCallbacks
    def test_invalidInput(self):
        yield self.assertFailure(self.store.register("a b", "pw", {}), InvalidName)
        yield self.assertFailure(self.store.register("a|b", "pw", {}), InvalidName)
        yield self.assertFailure(self.store.register("ok", "", {}), InvalidAccountData)
        yield self.assertFailure(
            self.store.register("ok", "pw", {"email": "nope"}), InvalidAccountData
        )
        self.assertFalse(self.store.isProtectedName("ok"))

    @defer.inlineCallbacks
    def test_failedRegisterFreesTheName(self):
        """A name reserved for an insert that fails is not protected."""
        sql(
            self.path,
            "INSERT INTO accounts (name_key, name, password) VALUES ('eve', 'Eve', 'x')",
        )
        yield self.assertFailure(self.store.register("Eve", "pw", {}), NameTaken)
        self.assertFalse(self.store.isProtectedName("Eve"))

    @defer.inlineCallbacks
    def test_update(self):
        yield self.store.register("Ana", "pw", {"nombres": "A"})
        account = yield self.store.update("ANA", {"nombres": "B", "estado": "OCUPADO"}, "new")
        self.assertEqual((account.nombres, account.estado), ("B", "OCUPADO"))
        self.assertIsNone((yield self.store.authenticate("Ana", "pw")))
        self.assertIsNotNone((yield self.store.authenticate("Ana", "new")))
        self.assertIsNone((yield self.store.update("Nadie", {"nombres": "x"})))

    @defer.inlineCallbacks
    def test_friendRequests(self):
        for name in ("Ana", "Bea", "Cy"):
            yield self.store.register(name, "pw", {})
        outcome = yield self.store.requestFriend("Ana", "bea")
        self.assertEqual((outcome.result, outcome.receiver), (accounts.REQUEST_SENT, "Bea"))
        outcome = yield self.store.requestFriend("Ana", "Bea")
        self.assertEqual(outcome.result, accounts.REQUEST_SENT)
        self.assertEqual((yield self.store.pendingRequests("Bea")), ["Ana"])
        self.assertEqual(outcome.pending, ("Ana",))
        outcome = yield self.store.requestFriend("Ana", "Zed")
        self.assertEqual(outcome.result, accounts.REQUEST_NO_SUCH_USER)
        outcome = yield self.store.requestFriend("Ana", "ana")
        self.assertEqual(outcome.result, accounts.REQUEST_SELF)
        answered = yield self.store.answerRequest("Bea", "ana", True)
        self.assertEqual(answered, accounts.AnswerOutcome("Ana", ()))
        self.assertEqual((yield self.store.friends("Bea")), ["Ana"])
        self.assertEqual((yield self.store.friends("Ana")), ["Bea"])
        self.assertEqual((yield self.store.pendingRequests("Bea")), [])
        self.assertIsNone((yield self.store.answerRequest("Bea", "Ana", True)))
        outcome = yield self.store.requestFriend("Bea", "Ana")
        self.assertEqual(outcome.result, accounts.REQUEST_ALREADY_FRIENDS)
        # Crossed requests make friends.
        yield self.store.requestFriend("Cy", "Ana")
        outcome = yield self.store.requestFriend("Ana", "Cy")
        self.assertEqual(outcome.result, accounts.REQUEST_CROSSED)
        self.assertEqual((yield self.store.friends("Ana")), ["Bea", "Cy"])
        # Rejection.
        yield self.store.requestFriend("Cy", "Bea")
        yield self.store.requestFriend("Ana", "Bea")  # already friends: not stored
        answered = yield self.store.answerRequest("Bea", "Cy", False)
        self.assertEqual(answered, accounts.AnswerOutcome("Cy", ()))
        self.assertEqual((yield self.store.pendingRequests("Bea")), [])
        self.assertEqual((yield self.store.friends("Bea")), ["Ana"])

    @defer.inlineCallbacks
    def test_restartKeepsAccountsAndFriendships(self):
        yield self.store.register("Ana", "pw", {"email": "a@b.c"})
        yield self.store.register("Bea", "pw2", {})
        yield self.store.register("Cy", "pw3", {})
        yield self.store.requestFriend("Ana", "Bea")
        yield self.store.answerRequest("Bea", "Ana", True)
        yield self.store.requestFriend("Cy", "Ana")
        self.store.close()

        self.store = AccountStore.open(self.path, reactor, FAST_SCRYPT)
        self.addCleanup(self.store.close)
        self.assertTrue(self.store.isProtectedName("ana"))
        self.assertTrue(self.store.isProtectedName("BEA"))
        self.assertFalse(self.store.isProtectedName("Dee"))
        account = yield self.store.authenticate("Ana", "pw")
        self.assertEqual(account.email, "a@b.c")
        self.assertEqual((yield self.store.friends("Bea")), ["Ana"])
        self.assertEqual((yield self.store.pendingRequests("Ana")), ["Cy"])

    def test_schemaVersion(self):
        connection = accounts.connect(self.path)
        self.addCleanup(connection.close)
        self.assertEqual(accounts.schemaVersion(connection), SCHEMA_VERSION)
        # Migrating again is a no-op.
        self.assertEqual(accounts.migrate(connection), SCHEMA_VERSION)

    def test_newerSchemaRefused(self):
        sql(self.path, "UPDATE schema_version SET version = 99")
        self.assertRaises(RuntimeError, prepareDatabase, self.path)


class StoreTests(SQLiteFile, StoreTestsMixin, unittest.TestCase):
    def test_walMode(self):
        connection = accounts.connect(self.path)
        self.addCleanup(connection.close)
        (mode,) = connection.execute("PRAGMA journal_mode").fetchone()
        self.assertEqual(mode, "wal")


class PostgresStoreTests(PostgresDatabase, StoreTestsMixin, unittest.TestCase):
    pass


class AdminTestsMixin:
    def setUp(self):
        self.harness = MsgrHarness(self, path=self.newDatabase())
        self.path = self.harness.path

    def run_admin(self, *argv, stdin=""):
        out, err = io.StringIO(), io.StringIO()
        status = admin.main(
            ["--db", self.path, *argv],
            stdin=io.StringIO(stdin),
            stdout=out,
            stderr=err,
            scrypt=FAST_SCRYPT,
        )
        return status, out.getvalue(), err.getvalue()

    @defer.inlineCallbacks
    def test_blockAndUnblock(self):
        h = self.harness
        yield h.register("Ana", email="ana@example.org")
        status, out, err = self.run_admin("block", "ana")
        self.assertEqual((status, out), (0, "Ana blocked\n"))
        response = yield h.form("/status", usr="Ana", **{"pass": "secreto"})
        self.assertEqual(response.body, "802")
        status, out, _ = self.run_admin("list", "--blocked")
        self.assertEqual(out, "name\tblocked\temail\tfriends\tpending\nAna\tyes\tana@example.org\t0\t0\n")
        self.assertEqual(self.run_admin("unblock", "Ana")[:2], (0, "Ana unblocked\n"))
        response = yield h.form("/status", usr="Ana", **{"pass": "secreto"})
        self.assertEqual(response.body.split("||")[0], "701")

    @defer.inlineCallbacks
    def test_list(self):
        h = self.harness
        yield h.register("Ana")
        yield h.register("Bea")
        ta, tb = (yield h.login("Ana")), (yield h.login("Bea"))
        yield h.befriend("Ana", "Bea", ta, tb)
        yield h.form("/enviarsolicitud", token=ta, para="Bea")
        status, out, _ = self.run_admin("list")
        self.assertEqual(status, 0)
        self.assertEqual(
            out.splitlines()[1:], ["Ana\tno\t\t1\t0", "Bea\tno\t\t1\t0"]
        )

    @defer.inlineCallbacks
    def test_resetPasswordGenerated(self):
        h = self.harness
        yield h.register("Ana")
        status, out, _ = self.run_admin("reset-password", "ANA")
        self.assertEqual(status, 0)
        prefix = "new password for Ana: "
        self.assertTrue(out.startswith(prefix), out)
        password = out[len(prefix) :].strip()
        response = yield h.form("/status", usr="Ana", **{"pass": "secreto"})
        self.assertEqual(response.body, "801")
        token = yield h.login("Ana", password)
        self.assertTrue(token)

    @defer.inlineCallbacks
    def test_resetPasswordFromStdin(self):
        h = self.harness
        yield h.register("Ana")
        status, out, _ = self.run_admin(
            "reset-password", "Ana", "--password-stdin", stdin="otra clave\n"
        )
        self.assertEqual((status, out), (0, "password of Ana reset\n"))
        yield h.login("Ana", "otra clave")

    def test_errors(self):
        status, _, err = self.run_admin("block", "nadie")
        self.assertEqual(status, 1)
        self.assertIn("no account 'nadie'", err)
        err = io.StringIO()
        status = admin.main(["--db", self.mktemp(), "list"], stdout=io.StringIO(), stderr=err)
        self.assertEqual(status, 1)
        self.assertIn("no database", err.getvalue())
        status, _, err = self.run_admin("frobnicate")
        self.assertEqual(status, 2)
        self.assertIn("invalid choice", err)


class AdminTests(SQLiteFile, AdminTestsMixin, unittest.TestCase):
    pass


class PostgresAdminTests(PostgresDatabase, AdminTestsMixin, unittest.TestCase):
    pass


class AdminCreateDeleteTestsMixin:
    """chatd-admin create and delete, seen through the MSGR HTTP API."""

    def setUp(self):
        self.harness = MsgrHarness(self, path=self.newDatabase())
        self.path = self.harness.path
        self.prompts: list[str] = []

    def run_admin(self, *argv, stdin="", typed=()):
        answers = list(typed)

        def ask(prompt: str) -> str:
            self.prompts.append(prompt)
            return answers.pop(0)

        out, err = io.StringIO(), io.StringIO()
        status = admin.main(
            ["--db", self.path, *argv],
            stdin=io.StringIO(stdin),
            stdout=out,
            stderr=err,
            scrypt=FAST_SCRYPT,
            ask=ask,
        )
        return status, out.getvalue(), err.getvalue()

    @defer.inlineCallbacks
    def test_createAsksTwice(self):
        status, out, err = self.run_admin(
            "create", "Ana", "--email", "ana@example.org", typed=["clave 1", "clave 1"]
        )
        self.assertEqual((status, out, err), (0, "Ana created\n", ""))
        self.assertEqual(self.prompts, ["password for Ana: ", "password for Ana again: "])
        token = yield self.harness.login("Ana", "clave 1")
        self.assertTrue(token)
        self.assertEqual(
            self.run_admin("list")[1].splitlines()[1], "Ana\tno\tana@example.org\t0\t0"
        )

    def test_createPasswordsDiffer(self):
        status, out, err = self.run_admin("create", "Ana", typed=["uno", "dos"])
        self.assertEqual((status, out), (1, ""))
        self.assertEqual(err, "chatd-admin: the two passwords differ; nothing was changed\n")
        self.assertEqual(self.run_admin("list")[1], "name\tblocked\temail\tfriends\tpending\n")

    @defer.inlineCallbacks
    def test_createFromStdin(self):
        status, out, _ = self.run_admin("create", "Bea", "--password-stdin", stdin="otra clave\n")
        self.assertEqual((status, out), (0, "Bea created\n"))
        self.assertEqual(self.prompts, [])
        yield self.harness.login("Bea", "otra clave")

    @defer.inlineCallbacks
    def test_createRefusesWhatRegistrationRefuses(self):
        yield self.harness.register("Ana")
        status, _, err = self.run_admin("create", "ANA", "--password-stdin", stdin="x\n")
        self.assertEqual((status, err), (1, "chatd-admin: the name ANA is taken (by the account 'Ana')\n"))
        status, _, err = self.run_admin("create", "Cy", "--password-stdin", stdin="\n")
        self.assertEqual((status, err), (1, "chatd-admin: the password is empty\n"))
        # A look-alike of an account (Cyrillic о), refused as registration
        # refuses it; and the account created is protected in every spelling.
        status, _, err = self.run_admin("create", "An\u0430", "--password-stdin", stdin="x\n")
        self.assertEqual((status, err), (1, "chatd-admin: the name An\u0430 looks like the account 'Ana'\n"))
        self.assertEqual(self.run_admin("create", "Bea", "--password-stdin", stdin="x\n")[0], 0)
        connection = accounts.connect(self.path)
        self.addCleanup(connection.close)
        self.assertEqual(
            connection.execute("SELECT skeleton FROM accounts WHERE name = 'Bea'").fetchone(),
            (accounts.nameSkeleton("Bea"),),
        )
        status, _, err = self.run_admin("create", "a b", "--password-stdin", stdin="x\n")
        self.assertEqual(status, 1)
        self.assertTrue(err.startswith("chatd-admin: "), err)

    @defer.inlineCallbacks
    def test_deleteWithFriendsAndRequests(self):
        h = self.harness
        for name in ("Ana", "Bea", "Cy", "Dan"):
            yield h.register(name)
        tokens = []
        for name in ("Ana", "Bea", "Cy", "Dan"):
            tokens.append((yield h.login(name)))
        ta, tb, tc, _ = tokens
        yield h.befriend("Ana", "Bea", ta, tb)
        yield h.form("/enviarsolicitud", token=tc, para="Ana")  # to Ana, pending
        yield h.form("/enviarsolicitud", token=ta, para="Dan")  # from Ana, pending
        status, out, _ = self.run_admin("delete", "ana")
        self.assertEqual(
            (status, out), (0, "Ana deleted, with 1 friendships and 2 friend requests\n")
        )
        # Nobody keeps a friend or a request that names Ana.
        self.assertEqual(
            self.run_admin("list")[1].splitlines()[1:],
            ["Bea\tno\t\t0\t0", "Cy\tno\t\t0\t0", "Dan\tno\t\t0\t0"],
        )
        response = yield h.form("/status", usr="Ana", **{"pass": "secreto"})
        self.assertEqual(response.body, "801")
        status, _, err = self.run_admin("delete", "Ana")
        self.assertEqual((status, err), (1, "chatd-admin: no account 'Ana'\n"))


class AdminCreateDeleteTests(SQLiteFile, AdminCreateDeleteTestsMixin, unittest.TestCase):
    pass


class PostgresAdminCreateDeleteTests(
    PostgresDatabase, AdminCreateDeleteTestsMixin, unittest.TestCase
):
    pass


class AdminOnlineTests(unittest.TestCase):
    """chatd-admin online, against a real --metrics listener on 127.0.0.1."""

    @defer.inlineCallbacks
    def test_online(self):
        metrics = ChatdMetrics()
        presence = InMemoryPresenceService(metrics=metrics)
        presence.login(RecordingSession("protobuf"), "alice", "192.0.2.7")
        presence.login(RecordingSession("msrp"), "bobo", "192.0.2.8")
        port = reactor.listenTCP(0, makeMetricsSite(metrics, reactor), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        url = f"http://127.0.0.1:{port.getHost().port}"
        out, err = io.StringIO(), io.StringIO()
        # chatd-admin blocks on its request: in a thread, so the reactor
        # can answer it.
        status = yield threads.deferToThread(
            admin.main, ["online", "--url", url], stdout=out, stderr=err
        )
        self.assertEqual((status, err.getvalue()), (0, ""))
        self.assertEqual(
            out.getvalue().splitlines(),
            ["name\tprotocol\tip\tstatus", "alice\tprotobuf\t192.0.2.7\tACTIVO", "bobo\tmsrp\t192.0.2.8\tACTIVO"],
        )

    @defer.inlineCallbacks
    def test_onlineOnlyOnTheMetricsListener(self):
        # The MSGR HTTP listener serves /metrics, not the list of who is on.
        harness = MsgrHarness(self)
        response = yield harness.request("GET", "/online")
        self.assertEqual(response.status, 404)

    @defer.inlineCallbacks
    def test_onlineNoServer(self):
        # A port that was free a moment ago: nothing listens there.
        probe = reactor.listenTCP(0, Factory(), interface="127.0.0.1")
        free = probe.getHost().port
        yield probe.stopListening()
        err = io.StringIO()
        status = yield threads.deferToThread(
            admin.main,
            ["online", "--url", f"http://127.0.0.1:{free}"],
            stdout=io.StringIO(),
            stderr=err,
        )
        self.assertEqual(status, 1)
        self.assertIn("is chatd running with --metrics?", err.getvalue())
        self.assertIn("Connection refused", err.getvalue())


# Look-alike names (issue 11 item 5).
JOSE = "Jos\u00e987"
JOSE_NFD = "Jose\u030187"
JOSE_FULLWIDTH = "\uff2aos\u00e987"
JOSE_CYRILLIC_O = "J\u043es\u00e987"
JOSE_GREEK_O = "J\u03bfs\u00e987"


class LookalikeStoreTestsMixin:
    def setUp(self):
        self.path = self.newDatabase()
        self.store = AccountStore.open(self.path, reactor, FAST_SCRYPT)
        self.addCleanup(self.store.close)
        return self.store.register(JOSE, "pw", {})

    @defer.inlineCallbacks
    def test_registerRefused(self):
        """
        Another spelling of a registered name, or a name that looks like it,
        is taken; a name with an invisible or blank character is invalid.
        """
        for name in (JOSE_NFD, JOSE_FULLWIDTH, JOSE_CYRILLIC_O, JOSE_GREEK_O):
            yield self.assertFailure(self.store.register(name, "pw", {}), NameTaken)
        for suffix in ("\u034f", "\u3164", "\u2800"):
            yield self.assertFailure(
                self.store.register(JOSE + suffix, "pw", {}), InvalidName
            )
        self.assertEqual(sql(self.path, "SELECT name FROM accounts"), [(JOSE,)])

    def test_lookalikesAreProtected(self):
        for name in (JOSE_NFD, JOSE_FULLWIDTH, JOSE_CYRILLIC_O, "JOS\u00c987"):
            self.assertTrue(self.store.isProtectedName(name), ascii(name))
        self.assertFalse(self.store.isProtectedName("Jose87"))

    @defer.inlineCallbacks
    def test_authenticateAnySpelling(self):
        for name in (JOSE_NFD, JOSE_FULLWIDTH):
            account = yield self.store.authenticate(name, "pw")
            self.assertEqual(account.name, JOSE)
        self.assertIsNone((yield self.store.authenticate(JOSE_CYRILLIC_O, "pw")))

    @defer.inlineCallbacks
    def test_databaseRefusesLookalike(self):
        """
        A look-alike written to the database by another process since the
        names were loaded is found when registering.
        """
        sql(
            self.path,
            "INSERT INTO accounts (name_key, name, password, skeleton)"
            " VALUES ('bob', 'Bob', 'x', ?)",
            (accounts.nameSkeleton("Bob"),),
        )
        yield self.assertFailure(self.store.register("B\u043eb", "pw", {}), NameTaken)
        self.assertFalse(self.store.isProtectedName("B\u043eb"))


class LookalikeStoreTests(SQLiteFile, LookalikeStoreTestsMixin, unittest.TestCase):
    pass


class PostgresLookalikeStoreTests(
    PostgresDatabase, LookalikeStoreTestsMixin, unittest.TestCase
):
    pass


def _stepVersion(step) -> int:
    # Not a fixed number: steps of parallel branches are renumbered at merge.
    return next(v for v, f in accounts.MIGRATIONS.items() if f is step)


def databaseBefore(path: str, step):
    """A database at the schema version just before C{step}."""
    version = _stepVersion(step)
    connection = accounts.connect(path)
    connection.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    connection.execute("INSERT INTO schema_version VALUES (?)", (version - 1,))
    cursor = connection.cursor()
    for earlier in range(1, version):
        accounts.MIGRATIONS[earlier](cursor)
    return connection


class SkeletonMigrationTestsMixin:
    """
    The step that adds skeletons (L{accounts._addSkeletons}) on a database
    written by the code before it, where keys were C{casefold()} alone and
    look-alikes could register.
    """

    def setUp(self):
        self.path = self.newDatabase()
        connection = databaseBefore(self.path, accounts._addSkeletons)
        # In registration order; keys as the old code wrote them.
        self.old = [
            (JOSE, "pw-jose"),
            (JOSE_NFD, "pw-nfd"),
            (JOSE_FULLWIDTH, "pw-wide"),
            (JOSE_CYRILLIC_O, "pw-cyr"),
            ("Ana", "pw-ana"),
            ("\uff22ea", "pw-bea"),
            ("Zoe\u034f", "pw-zoe"),
        ]
        for name, password in self.old:
            connection.execute(
                "INSERT INTO accounts (name_key, name, password) VALUES (?, ?, ?)",
                (name.casefold(), name, hashPassword(password, FAST_SCRYPT)),
            )
        ana, bea = "ana", "\uff22ea".casefold()
        connection.execute("INSERT INTO friendships VALUES (?, ?)", (ana, bea))
        connection.execute("INSERT INTO friendships VALUES (?, ?)", (bea, ana))
        connection.execute(
            "INSERT INTO friend_requests VALUES (?, ?)", (JOSE.casefold(), bea)
        )
        connection.close()

    def open(self) -> AccountStore:
        store = AccountStore.open(self.path, reactor, FAST_SCRYPT)
        self.addCleanup(store.close)
        return store

    def test_noAccountLost(self):
        names = prepareDatabase(self.path)
        self.assertEqual(sorted(names), sorted(name for name, _ in self.old))
        connection = accounts.connect(self.path)
        self.addCleanup(connection.close)
        self.assertEqual(accounts.schemaVersion(connection), SCHEMA_VERSION)
        skeletons = dict(connection.execute("SELECT name, skeleton FROM accounts"))
        for name, _ in self.old:
            self.assertEqual(skeletons[name], accounts.nameSkeleton(name), ascii(name))
        self.checkIndexAndKeys(connection)

    def checkIndexAndKeys(self, connection):
        self.assertIn(
            "accounts_skeleton",
            [row[1] for row in connection.execute("PRAGMA index_list(accounts)")],
        )
        plan = " ".join(
            str(row)
            for row in connection.execute(
                "EXPLAIN QUERY PLAN SELECT 1 FROM accounts WHERE skeleton = 'x'"
            )
        )
        self.assertIn("accounts_skeleton", plan)
        self.assertEqual(connection.execute("PRAGMA foreign_key_check").fetchall(), [])

    def connectRaw(self):
        # A bare stdlib connection in its default mode, as an operator's
        # script would pass chatd-admin's functions.
        return sqlite3.connect(self.path)

    @defer.inlineCallbacks
    def test_lookalikeAccountsKeepWorking(self):
        """
        José87 and its old Cyrillic look-alike both log in with their own
        passwords; José87 keeps its key, so its other spellings now find it.
        """
        store = self.open()
        for name, password in [(JOSE, "pw-jose"), (JOSE_CYRILLIC_O, "pw-cyr")]:
            account = yield store.authenticate(name, password)
            self.assertEqual(account.name, name)
        account = yield store.authenticate(JOSE_NFD, "pw-jose")
        self.assertEqual(account.name, JOSE)
        # The later NFD and full-width accounts are kept but not found.
        self.assertIsNone((yield store.authenticate(JOSE_NFD, "pw-nfd")))
        self.assertIsNone((yield store.authenticate(JOSE_FULLWIDTH, "pw-wide")))
        yield self.assertFailure(store.register(JOSE_GREEK_O, "pw", {}), NameTaken)

    @defer.inlineCallbacks
    def test_friendsFollowNewKeys(self):
        """Ｂea's key became 'bea': her friendship and request followed."""
        store = self.open()
        self.assertEqual((yield store.friends("Bea")), ["Ana"])
        self.assertEqual((yield store.friends("Ana")), ["\uff22ea"])
        self.assertEqual((yield store.pendingRequests("bea")), [JOSE])
        account = yield store.authenticate("BEA", "pw-bea")
        self.assertEqual(account.name, "\uff22ea")

    @defer.inlineCallbacks
    def test_invalidNameKept(self):
        """An account the rule refuses now is kept, and chatd-admin finds it."""
        store = self.open()
        self.assertTrue(store.isProtectedName("Zoe\u034f"))
        connection = self.connectRaw()
        self.addCleanup(connection.close)
        self.assertEqual(admin.setBlocked(connection, "zoe\u034f", True), "Zoe\u034f")
        connection.commit()
        account = yield store.authenticate("Zoe\u034f", "pw-zoe")
        self.assertTrue(account.bloqueado)


class SkeletonMigrationTests(SQLiteFile, SkeletonMigrationTestsMixin, unittest.TestCase):
    pass


class PostgresSkeletonMigrationTests(
    PostgresDatabase, SkeletonMigrationTestsMixin, unittest.TestCase
):
    def checkIndexAndKeys(self, connection):
        [(index,)] = connection.execute(
            "SELECT indexdef FROM pg_indexes WHERE indexname = 'accounts_skeleton'"
        ).fetchall()
        self.assertIn("(skeleton)", index)
        # Every friendship and request points at an account (the foreign
        # keys were deferred during the step, and held at its commit).
        self.assertEqual(
            connection.execute(
                "SELECT COUNT(*) FROM friendships f LEFT JOIN accounts a"
                " ON a.name_key = f.a_key OR a.name_key = f.b_key"
                " WHERE a.name_key IS NULL"
            ).fetchall(),
            [(0,)],
        )

    def connectRaw(self):
        return accounts.connect(self.path)


class DatabaseIdTestsMixin:
    """
    The database's identity (schema step L{accounts._databaseId}): a random
    id made once per database, by which a cluster's nodes make sure they
    share one (docs/cluster.md, "One account database").
    """

    def test_existingDatabaseGetsOneAtMigration(self):
        """
        A database of the step before keeps its accounts and gets an id,
        which a store opened on it says and a restart reads back unchanged.
        """
        path = self.newDatabase()
        connection = databaseBefore(path, accounts._databaseId)
        connection.execute(
            "INSERT INTO accounts (name_key, name, password) VALUES (?, ?, ?)",
            ("ana", "Ana", hashPassword("pw", FAST_SCRYPT)),
        )
        connection.close()
        store = AccountStore.open(path, reactor, FAST_SCRYPT)
        store.close()
        self.assertRegex(store.databaseId, "^[0-9a-f]{32}$")
        self.assertTrue(store.isProtectedName("ana"))
        again = AccountStore.open(path, reactor, FAST_SCRYPT)
        again.close()
        self.assertEqual(again.databaseId, store.databaseId)
        self.assertEqual(sql(path, "SELECT id FROM database_id"), [(store.databaseId,)])

    def test_eachDatabaseItsOwn(self):
        first, second = self.newDatabase(), self.newDatabase()
        self.assertNotEqual(
            accounts.prepareDatabaseWithId(first)[1],
            accounts.prepareDatabaseWithId(second)[1],
        )


class DatabaseIdTests(SQLiteFile, DatabaseIdTestsMixin, unittest.TestCase):
    pass


class PostgresDatabaseIdTests(PostgresDatabase, DatabaseIdTestsMixin, unittest.TestCase):
    pass
