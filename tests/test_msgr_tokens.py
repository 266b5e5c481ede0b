"""MSGR tokens and the failed-login lockout, on a Clock."""

from twisted.internet.task import Clock
from twisted.trial import unittest

from chatd.msgr.lockout import LoginLockout
from chatd.msgr.tokens import TokenRegistry


class TokenTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.tokens = TokenRegistry(self.clock, idleTimeout=100)

    def test_issueAndValidate(self):
        token = self.tokens.issue("Ana")
        self.assertEqual(self.tokens.validate(token), "Ana")
        self.assertIsNone(self.tokens.validate("nope"))
        self.assertIsNone(self.tokens.validate(None))
        self.assertIsNone(self.tokens.validate(""))

    def test_tokensAreRandomAndLong(self):
        first, second = self.tokens.issue("Ana"), self.tokens.issue("Ana")
        self.assertNotEqual(first, second)
        self.assertGreaterEqual(len(first), 43)

    def test_idleExpiry(self):
        token = self.tokens.issue("Ana")
        self.clock.advance(99)
        self.assertEqual(self.tokens.validate(token), "Ana")  # use resets the time
        self.clock.advance(99)
        self.assertEqual(self.tokens.validate(token), "Ana")
        self.clock.advance(100)
        self.assertIsNone(self.tokens.validate(token))
        self.assertIsNone(self.tokens.validate(token))

    def test_heldTokenDoesNotExpire(self):
        token = self.tokens.issue("Ana")
        self.tokens.hold(token)
        self.clock.advance(10_000)
        self.assertEqual(self.tokens.validate(token), "Ana")
        self.tokens.release(token)
        self.clock.advance(99)
        self.assertEqual(self.tokens.validate(token), "Ana")
        self.clock.advance(100)
        self.assertIsNone(self.tokens.validate(token))

    def test_revoke(self):
        token = self.tokens.issue("Ana")
        other = self.tokens.issue("Bea")
        self.tokens.revoke(token)
        self.assertIsNone(self.tokens.validate(token))
        self.assertEqual(self.tokens.validate(other), "Bea")

    def test_revokeAll(self):
        a1, a2, b = self.tokens.issue("Ana"), self.tokens.issue("ana"), self.tokens.issue("Bea")
        self.tokens.revokeAll("ANA")
        self.assertIsNone(self.tokens.validate(a1))
        self.assertIsNone(self.tokens.validate(a2))
        self.assertEqual(self.tokens.validate(b), "Bea")

    def test_belongsTo(self):
        token = self.tokens.issue("Ana")
        self.assertTrue(self.tokens.belongsTo(token, "ANA"))
        self.assertFalse(self.tokens.belongsTo(token, "Bea"))

    def test_expiredTokensArePurged(self):
        for _ in range(5):
            self.tokens.issue("Ana")
        self.clock.advance(101)
        self.tokens.issue("Bea")
        self.assertEqual(len(self.tokens), 1)


class LockoutTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.lockout = LoginLockout(
            self.clock, accountFailures=3, addressFailures=5, window=60, lockTime=300
        )

    def test_accountLockedAfterFailures(self):
        for host in ("1.1.1.1", "2.2.2.2"):
            self.lockout.failed("Ana", host)
        self.assertFalse(self.lockout.isLocked("Ana", "3.3.3.3"))
        self.lockout.failed("ana", "3.3.3.3")
        self.assertTrue(self.lockout.isLocked("ANA", "9.9.9.9"))
        self.assertFalse(self.lockout.isLocked("Bea", "1.1.1.1"))
        self.clock.advance(299)
        self.assertTrue(self.lockout.isLocked("Ana", "9.9.9.9"))
        self.clock.advance(1)
        self.assertFalse(self.lockout.isLocked("Ana", "9.9.9.9"))

    def test_failuresOutsideTheWindowDoNotCount(self):
        self.lockout.failed("Ana", "1.1.1.1")
        self.lockout.failed("Ana", "1.1.1.1")
        self.clock.advance(61)
        self.lockout.failed("Ana", "1.1.1.1")
        self.assertFalse(self.lockout.isLocked("Ana", "1.1.1.1"))

    def test_addressLocked(self):
        for i in range(5):
            self.lockout.failed(f"user{i}", "6.6.6.6")
        self.assertTrue(self.lockout.isLocked("someone", "6.6.6.6"))
        self.assertFalse(self.lockout.isLocked("someone", "7.7.7.7"))

    def test_successClearsTheAccountCount(self):
        self.lockout.failed("Ana", "1.1.1.1")
        self.lockout.failed("Ana", "1.1.1.1")
        self.lockout.succeeded("Ana", "1.1.1.1")
        self.lockout.failed("Ana", "1.1.1.1")
        self.assertFalse(self.lockout.isLocked("Ana", "1.1.1.1"))
