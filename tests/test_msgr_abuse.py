"""
Abuse of the MSGR accounts (issue 11): concurrent password guessing, a
stolen token outliving a password change, operator revocations reaching a
running server, and mass registration. Driven through the real twisted.web
site and chat socket on a real SQLite file; the password computations are
held by the test (L{ControlledHashes}) so that it decides when each ends.
"""

from __future__ import annotations

import io
import sqlite3

from twisted.internet import defer
from twisted.trial import unittest

from chatd import tap
from chatd.msgr import accounts, admin
from chatd.msgr.accounts import hashPassword, verifyPassword
from chatd.msgr.lockout import RegistrationLimit
from chatd.msgr.service import REVOCATION_POLL

from tests.test_msgr_helpers import FAST_SCRYPT, MsgrHarness


class ControlledHashes:
    """
    Stands in for the store's thread hand-off: every password computation
    (a real C{hashPassword} or C{verifyPassword}) waits until the test
    finishes it, and the order in which they started is kept.
    """

    def __init__(self, store) -> None:
        self.started: list[tuple] = []
        self._pending: list[tuple] = []
        store._inThread = self

    def __call__(self, f, *args) -> defer.Deferred:
        d = defer.Deferred()
        call = (f, args, d)
        self.started.append(call)
        self._pending.append(call)
        return d

    def verifications(self) -> list[tuple]:
        return [c for c in self.started if c[0] is verifyPassword]

    def hashes(self) -> list[tuple]:
        return [c for c in self.started if c[0] is hashPassword]

    @property
    def pending(self) -> int:
        return len(self._pending)

    def finish(self, call=None) -> None:
        """End one computation (the oldest by default) with its real result."""
        call = self._pending[0] if call is None else call
        self._pending.remove(call)
        f, args, d = call
        d.callback(f(*args))


@defer.inlineCallbacks
def finishAll(h: MsgrHarness, hashes: ControlledHashes):
    """End every computation, and those they lead to, until none is left."""
    yield h.settle()
    while hashes.pending:
        hashes.finish()
        yield h.settle()


def codes(responses) -> list[str]:
    return [r.body.split("||")[0] for r in responses]


def adminRun(path: str, *argv) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    status = admin.main(
        ["--db", path, *argv], stdin=io.StringIO(""), stdout=out, stderr=err, scrypt=FAST_SCRYPT
    )
    return status, out.getvalue() + err.getvalue()


class ConcurrentGuessingTests(unittest.TestCase):
    """Item 1: the attempt counts before the slow hash runs."""

    @defer.inlineCallbacks
    def setUp(self):
        self.h = MsgrHarness(self, accountFailures=5, addressFailures=1000, window=900, lockTime=900)
        yield self.h.register("Ana", "clave")
        self.hashes = ControlledHashes(self.h.store)

    def guess(self, password: str, name: str = "Ana", host: str = "6.6.6.6"):
        return self.h.form("/status", host=host, usr=name, **{"pass": password})

    @defer.inlineCallbacks
    def test_concurrentGuessesCostAsManyChecksAsSequentialOnes(self):
        """
        Waves of 60 guesses sent at once: one password check per wave (the
        others are answered 802 without a check), and after 5 failed checks
        the name is locked, the right password included: 5 checks in all,
        as for 60 guesses one after another.
        """
        for wave in range(5):
            before = len(self.hashes.verifications())
            pending = [self.guess(f"mala{wave}-{i}") for i in range(60)]
            yield self.h.settle()
            self.assertEqual(len(self.hashes.verifications()) - before, 1, f"wave {wave}")
            yield finishAll(self.h, self.hashes)
            answers = yield defer.gatherResults(pending)
            self.assertEqual(sorted(codes(answers)), ["801"] + ["802"] * 59, f"wave {wave}")
        pending = [self.guess("clave")] + [self.guess(f"otra{i}") for i in range(59)]
        yield finishAll(self.h, self.hashes)
        answers = yield defer.gatherResults(pending)
        self.assertEqual(codes(answers), ["802"] * 60)
        self.assertEqual(len(self.hashes.verifications()), 5)

    @defer.inlineCallbacks
    def test_rightPasswordInFlightWins(self):
        """
        A login whose check is running makes a concurrent one of the same
        name wait its turn (802 now); once it succeeded the name is not
        held, and the next login is checked.
        """
        right = self.guess("clave", host="10.0.0.1")
        other = self.guess("clave", host="10.0.0.2")
        yield finishAll(self.h, self.hashes)
        answers = yield defer.gatherResults([right, other])
        self.assertEqual(codes(answers), ["701", "802"])
        again = self.guess("clave", host="10.0.0.2")
        yield finishAll(self.h, self.hashes)
        self.assertEqual(codes([(yield again)]), ["701"])
        self.assertEqual(len(self.hashes.verifications()), 2)

    @defer.inlineCallbacks
    def test_addressLimitCountsChecksInFlight(self):
        """
        One address guessing 20 names at once, with an address limit of 5:
        5 checks run (two at a time), 15 are answered 802 without one; then
        the address is locked and other addresses are not.
        """
        self.h.lockout.addresses.limit = 5
        pending = [self.guess("x", name=f"u{i}") for i in range(20)]
        yield finishAll(self.h, self.hashes)
        self.assertEqual(len(self.hashes.verifications()), 5)
        answers = yield defer.gatherResults(pending)
        self.assertEqual(sorted(codes(answers)), ["801"] * 5 + ["802"] * 15)
        locked = self.guess("clave")
        other = self.guess("clave", host="7.7.7.7")
        yield finishAll(self.h, self.hashes)
        self.assertEqual(codes([(yield locked), (yield other)]), ["802", "701"])

    @defer.inlineCallbacks
    def test_failedCheckThatErrsDoesNotHoldTheName(self):
        """An internal error during the check frees the name (901, logged)."""
        pending = self.guess("clave")
        yield self.h.settle()
        f, args, d = self.hashes.started[-1]
        self.hashes._pending.clear()
        d.errback(RuntimeError("scrypt on fire"))
        self.assertEqual((yield pending).body, "901||internal error\n")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        again = self.guess("clave")
        yield finishAll(self.h, self.hashes)
        self.assertEqual(codes([(yield again)]), ["701"])


class PasswordChangeTests(unittest.TestCase):
    """Item 2: a password change needs the current password and ends the other sessions."""

    @defer.inlineCallbacks
    def setUp(self):
        self.h = MsgrHarness(self, accountFailures=5, window=900, lockTime=900)
        yield self.h.register("Ana", "clave")
        self.owner = yield self.h.login("Ana", "clave")

    def change(self, token: str, **fields):
        return self.h.form("/usuariomodificar", token=token, **fields)

    @defer.inlineCallbacks
    def assertPassword(self, password: str):
        response = yield self.h.form("/status", host="10.9.9.9", usr="Ana", **{"pass": password})
        self.assertEqual(response.body.split("||")[0], "701", password)

    @defer.inlineCallbacks
    def test_currentPasswordRequired(self):
        response = yield self.change(self.owner, **{"pass": "robada"})
        self.assertEqual(response.body, "803||the current password is missing\n")
        response = yield self.change(self.owner, **{"pass": "robada", "pass_actual": "no"})
        self.assertEqual(codes([response]), ["803"])
        yield self.assertPassword("clave")
        response = yield self.change(self.owner, **{"pass": "nueva", "pass_actual": "clave"})
        self.assertEqual(response.body, "702")
        yield self.assertPassword("nueva")

    @defer.inlineCallbacks
    def test_json(self):
        response = yield self.h.api("account", {"password": "robada"}, token=self.owner)
        self.assertEqual(response.json()["code"], 803)
        response = yield self.h.api(
            "account", {"password": "nueva", "current_password": "clave"}, token=self.owner
        )
        self.assertEqual(response.json(), {"code": 702})
        yield self.assertPassword("nueva")

    @defer.inlineCallbacks
    def test_profileAloneNeedsNoPassword(self):
        response = yield self.change(self.owner, nombres="Ana")
        self.assertEqual(response.body, "702")

    @defer.inlineCallbacks
    def test_wrongCurrentPasswordCountsAsFailedLogin(self):
        """Five missing or wrong current passwords lock the name, as five failed logins."""
        for current in ("", "a", "b", "c", "d"):
            response = yield self.change(self.owner, **{"pass": "robada", "pass_actual": current})
            self.assertEqual(codes([response]), ["803"], current)
        response = yield self.change(self.owner, **{"pass": "robada", "pass_actual": "clave"})
        self.assertEqual(response.body, "802||locked out\n")
        response = yield self.h.form("/status", usr="Ana", **{"pass": "clave"})
        self.assertEqual(response.body, "802")

    @defer.inlineCallbacks
    def test_otherTokensRevokedAndTheirSocketClosed(self):
        """
        The thief's token (and the chat socket bound with it) dies when the
        owner changes the password; the owner's token lives on.
        """
        thief, stolen = yield self.h.bound("Ana", "clave")
        thief.lines()
        response = yield self.change(self.owner, **{"pass": "nueva", "pass_actual": "clave"})
        self.assertEqual(response.body, "702")
        self.assertEqual(thief.lines(), ["#RESPUESTA||-||0||#DESCONECTAR||Ana||901"])
        self.assertTrue(thief.closed)
        thief.lose()
        response = yield self.h.form("/obtenerusuarios", token=stolen)
        self.assertEqual((response.status, response.body), (401, "901"))
        response = yield self.change(stolen, **{"pass": "mia", "pass_actual": "nueva"})
        self.assertEqual((response.status, response.body), (401, "901"))
        response = yield self.h.form("/obtenerusuarios", token=self.owner)
        self.assertEqual((response.status, response.body), (200, "704||"))

    @defer.inlineCallbacks
    def test_socketOfTheCallersTokenStays(self):
        client = self.h.connect()
        client.sendLine(f"#HOLA||{self.owner}||Ana")
        yield self.h.settle()
        client.lines()
        other = yield self.h.login("Ana", "clave")
        response = yield self.change(self.owner, **{"pass": "nueva", "pass_actual": "clave"})
        self.assertEqual(response.body, "702")
        self.assertFalse(client.closed)
        client.sendLine(f"#MSJ||{self.owner}||Ana||Ana||sigo")
        self.assertIn("#RESPUESTA||-||2||#MSJ||Ana||704", client.lines())
        response = yield self.h.form("/obtenerusuarios", token=other)
        self.assertEqual(response.status, 401)
        client.lose()


class RevocationTests(unittest.TestCase):
    """Item 2: chatd-admin revoke and block reach a running server within a poll."""

    @defer.inlineCallbacks
    def setUp(self):
        self.h = MsgrHarness(self)
        yield self.h.register("Ana", "clave")
        self.h.msgr.watchRevocations()
        self.addCleanup(self.h.msgr.unwatchRevocations)
        yield self.h.settle()  # the first read: where the table ends
        self.client, self.token = yield self.h.bound("Ana", "clave")
        self.client.lines()
        self.addCleanup(self.client.lose)

    @defer.inlineCallbacks
    def poll(self):
        self.h.clock.advance(REVOCATION_POLL)
        yield self.h.settle()

    @defer.inlineCallbacks
    def assertSessionEnded(self):
        """The bound socket was told 901 and closed; the token is refused."""
        self.assertEqual(self.client.lines(), ["#RESPUESTA||-||0||#DESCONECTAR||Ana||901"])
        self.assertTrue(self.client.closed)
        response = yield self.h.form("/obtenerusuarios", token=self.token)
        self.assertEqual((response.status, response.body), (401, "901"))

    @defer.inlineCallbacks
    def test_revoke(self):
        self.assertEqual(adminRun(self.h.path, "revoke", "ana"), (0, "the tokens of Ana are revoked\n"))
        self.assertEqual(self.client.lines(), [])
        yield self.poll()
        yield self.assertSessionEnded()
        # Logging in again works: a revoke is not a block.
        yield self.h.login("Ana", "clave")

    @defer.inlineCallbacks
    def test_blockClosesTheSocketWithoutWaitingForACall(self):
        self.assertEqual(adminRun(self.h.path, "block", "Ana"), (0, "Ana blocked\n"))
        yield self.poll()
        self.assertEqual(self.client.lines(), ["#RESPUESTA||-||0||#DESCONECTAR||Ana||802"])
        self.assertTrue(self.client.closed)
        response = yield self.h.form("/status", usr="Ana", **{"pass": "clave"})
        self.assertEqual(response.body, "802")

    @defer.inlineCallbacks
    def test_resetPasswordEndsTheSessions(self):
        """A password reset (after a stolen password) ends what it opened."""
        status, text = adminRun(self.h.path, "reset-password", "Ana")
        self.assertEqual(status, 0, text)
        yield self.poll()
        yield self.assertSessionEnded()

    @defer.inlineCallbacks
    def test_deleteEndsTheSessions(self):
        self.assertEqual(adminRun(self.h.path, "delete", "Ana")[0], 0)
        yield self.poll()
        yield self.assertSessionEnded()

    @defer.inlineCallbacks
    def test_eachRevocationActedOnOnce(self):
        adminRun(self.h.path, "revoke", "Ana")
        yield self.poll()
        self.client.lose()
        client, token = yield self.h.bound("Ana", "clave")
        client.lines()
        yield self.poll()
        self.assertEqual(client.lines(), [])
        self.assertFalse(client.closed)
        client.lose()

    @defer.inlineCallbacks
    def test_unknownAccount(self):
        status, text = adminRun(self.h.path, "revoke", "nadie")
        self.assertEqual(status, admin.FAILED)
        self.assertIn("no account", text)
        yield self.poll()
        self.assertFalse(self.client.closed)

    @defer.inlineCallbacks
    def test_aFailedReadIsTriedAgain(self):
        real = self.h.store.revocationsSince
        self.patch(
            self.h.store, "revocationsSince", lambda seq: defer.fail(sqlite3.OperationalError("locked"))
        )
        adminRun(self.h.path, "revoke", "Ana")
        yield self.poll()
        self.assertEqual(len(self.flushLoggedErrors(sqlite3.OperationalError)), 1)
        self.assertFalse(self.client.closed)
        self.patch(self.h.store, "revocationsSince", real)
        yield self.poll()
        self.assertTrue(self.client.closed)

    def test_migrationAddsTheRevocationLog(self):
        """A database of the schema before the step gets the table, and keeps its accounts."""
        (step,) = [v for v, f in accounts.MIGRATIONS.items() if f is accounts._revocationLog]
        path = self.mktemp()
        connection = sqlite3.connect(path, isolation_level=None)
        connection.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        connection.execute("INSERT INTO schema_version VALUES (?)", (step - 1,))
        for version in range(1, step):
            accounts.MIGRATIONS[version](connection.cursor())
        connection.execute(
            "INSERT INTO accounts (name_key, name, password) VALUES ('bea', 'Bea', 'x')"
        )
        connection.close()
        self.assertEqual(accounts.prepareDatabase(path), ["Bea"])
        connection = sqlite3.connect(path)
        self.addCleanup(connection.close)
        self.assertEqual(connection.execute("SELECT COUNT(*) FROM revocations").fetchone(), (0,))
        self.assertEqual(accounts.schemaVersion(connection), accounts.SCHEMA_VERSION)


class MassRegistrationTests(unittest.TestCase):
    """Item 7: registrations per address, and logins never queue behind them."""

    def setUp(self):
        self.h = MsgrHarness(self)
        self.limit = RegistrationLimit(self.h.clock, 3, 60)
        self.h.msgr.registrations = self.limit

    def register(self, name: str, host: str = "6.6.6.6"):
        return self.h.form("/usuariocrear", host=host, usr=name, **{"pass": "x"})

    @defer.inlineCallbacks
    def test_perAddress(self):
        hashes = ControlledHashes(self.h.store)
        answers = []
        for i in range(5):
            pending = self.register(f"squat{i}")
            yield finishAll(self.h, hashes)
            answers.append((yield pending))
        self.assertEqual(codes(answers), ["702"] * 3 + ["803"] * 2)
        self.assertEqual(len(hashes.hashes()), 3, "a refused registration reached the hash")
        self.assertFalse(self.h.store.isProtectedName("squat3"))
        pending = self.register("vecina", host="7.7.7.7")
        yield finishAll(self.h, hashes)
        self.assertEqual((yield pending).body, "702")
        self.h.clock.advance(60)
        pending = self.register("squat3")
        yield finishAll(self.h, hashes)
        self.assertEqual((yield pending).body, "702")

    @defer.inlineCallbacks
    def test_concurrentRegistrationsCountBeforeTheHash(self):
        hashes = ControlledHashes(self.h.store)
        pending = [self.register(f"squat{i}") for i in range(10)]
        yield self.h.settle()
        yield finishAll(self.h, hashes)
        answers = yield defer.gatherResults(pending)
        self.assertEqual(sorted(codes(answers)), ["702"] * 3 + ["803"] * 7)
        self.assertEqual(len(hashes.hashes()), 3)

    @defer.inlineCallbacks
    def test_refusalsThatCostNothingDoNotCount(self):
        yield self.h.register("Ana")
        for fields in ({"usr": "a b"}, {"usr": "ANA"}, {"usr": "ok", "email": "no"}):
            response = yield self.h.form("/usuariocrear", host="6.6.6.6", **fields, **{"pass": "x"})
            self.assertEqual(codes([response]), ["803"], fields)
        for i in range(3):
            self.assertEqual((yield self.register(f"ok{i}")).body, "702")

    @defer.inlineCallbacks
    def test_jsonAndReason(self):
        for i in range(3):
            yield self.register(f"squat{i}", host="10.0.0.1")
        response = yield self.h.api("register", {"user": "squat3", "password": "x"})
        self.assertEqual(
            response.json(), {"code": 803, "reason": "too many registrations from your address"}
        )

    @defer.inlineCallbacks
    def test_zeroIsNoLimit(self):
        self.h.msgr.registrations = RegistrationLimit(self.h.clock, 0, 60)
        for i in range(6):
            self.assertEqual((yield self.register(f"n{i}")).body, "702")

    @defer.inlineCallbacks
    def test_loginsGoBeforeQueuedRegistrations(self):
        """
        Registrations from many addresses take one of the two hashing slots
        at most; a login's check starts at once in the other, and when a
        slot frees a waiting login goes before every waiting registration.
        """
        for name in ("Ana", "Bea", "Cy"):
            yield self.h.register(name, "clave")
        self.h.msgr.registrations = RegistrationLimit(self.h.clock, 0, 60)
        hashes = ControlledHashes(self.h.store)
        registrations = [self.register(f"r{i}", host=f"10.1.0.{i}") for i in range(5)]
        yield self.h.settle()
        self.assertEqual([c[0] for c in hashes.started], [hashPassword])
        first = self.h.form("/status", usr="Ana", **{"pass": "clave"})
        yield self.h.settle()
        self.assertEqual([c[0] for c in hashes.started], [hashPassword, verifyPassword])
        # Both slots are taken: two more logins wait, behind no registration.
        second = self.h.form("/status", usr="Bea", **{"pass": "clave"})
        third = self.h.form("/status", usr="Cy", **{"pass": "clave"})
        yield self.h.settle()
        self.assertEqual(len(hashes.started), 2)
        hashes.finish(hashes.started[0])  # the first registration ends
        yield self.h.settle()
        self.assertIs(hashes.started[2][0], verifyPassword)
        hashes.finish(hashes.started[1])  # the first login ends
        yield self.h.settle()
        self.assertIs(hashes.started[3][0], verifyPassword)
        yield finishAll(self.h, hashes)
        self.assertEqual(
            [c[0] for c in hashes.started[4:]], [hashPassword] * 4, "registrations last"
        )
        answers = yield defer.gatherResults([first, second, third] + registrations)
        self.assertEqual(codes(answers), ["701"] * 3 + ["702"] * 5)


class OptionTests(unittest.TestCase):
    def parse(self, *argv):
        options = tap.Options()
        options.parseOptions(["--protobuf", "none", "--msrp", "none", *argv])
        return options

    def test_defaults(self):
        options = self.parse()
        self.assertEqual(options["msgr-register-per-ip"], 50)
        self.assertEqual(options["msgr-register-window"], 3600.0)

    def test_wired(self):
        options = self.parse(
            "--db", self.mktemp(), "--http", "none", "--msgr", "none",
            "--msgr-register-per-ip", "0", "--msgr-register-window", "30",
        )
        from twisted.internet import reactor

        top = tap.makeService(options, reactor=reactor)
        self.addCleanup(top.accounts.close)
        limit = top.getServiceNamed("msgr-accounts").registrations
        self.assertEqual((limit.perAddress, limit.window), (0, 30.0))
