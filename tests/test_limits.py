"""
The shared limits: token buckets, connection counts, bounded outbound queues.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase

from chatd.limits import ConnectionLimiter, OutboundQueue, TokenBucket


class TokenBucketTests(TestCase):
    def test_burstThenRate(self) -> None:
        clock = Clock()
        bucket = TokenBucket(rate=2, burst=3, clock=clock)
        self.assertEqual([bucket.allow() for _ in range(4)], [True, True, True, False])
        clock.advance(0.5)
        self.assertEqual([bucket.allow(), bucket.allow()], [True, False])
        clock.advance(100)
        self.assertEqual(sum(bucket.allow() for _ in range(10)), 3)


class ConnectionLimiterTests(TestCase):
    def test_perAddress(self) -> None:
        limiter = ConnectionLimiter(maxPerAddress=2)
        self.assertIsNone(limiter.acquire("10.0.0.1"))
        self.assertIsNone(limiter.acquire("10.0.0.1"))
        self.assertEqual(limiter.acquire("10.0.0.1"), "too many connections from your address")
        self.assertIsNone(limiter.acquire("10.0.0.2"))
        limiter.release("10.0.0.1")
        self.assertIsNone(limiter.acquire("10.0.0.1"))

    def test_total(self) -> None:
        limiter = ConnectionLimiter(maxTotal=2)
        self.assertIsNone(limiter.acquire("a"))
        self.assertIsNone(limiter.acquire("b"))
        self.assertEqual(limiter.acquire("c"), "the server has too many connections")
        limiter.release("a")
        self.assertIsNone(limiter.acquire("c"))
        self.assertEqual(limiter.total, 2)

    def test_noLimits(self) -> None:
        limiter = ConnectionLimiter()
        for _ in range(1000):
            self.assertIsNone(limiter.acquire("a"))
        self.assertEqual(limiter.count("a"), 1000)

    def test_releaseUnknownIsHarmless(self) -> None:
        limiter = ConnectionLimiter(maxTotal=1)
        limiter.release("nobody")
        self.assertEqual(limiter.total, 0)


class OutboundQueueTests(TestCase):
    def setUp(self) -> None:
        self.transport = StringTransport()
        self.overflows = []
        self.queue = OutboundQueue(self.transport, 10, lambda: self.overflows.append(1))

    def test_writesThroughWhileReading(self) -> None:
        self.queue.write(b"abc")
        self.assertEqual(self.transport.value(), b"abc")
        self.assertIs(self.transport.producer, self.queue)

    def test_queuesWhilePausedInOrder(self) -> None:
        self.queue.write(b"1")
        self.queue.pauseProducing()
        self.queue.write(b"2")
        self.queue.write(b"3")
        self.assertEqual(self.transport.value(), b"1")
        self.assertEqual(self.queue.queued, 2)
        self.queue.resumeProducing()
        self.assertEqual(self.transport.value(), b"123")
        self.assertEqual(self.queue.queued, 0)

    def test_overflow(self) -> None:
        self.queue.pauseProducing()
        self.assertTrue(self.queue.write(b"x" * 10))
        self.assertFalse(self.queue.write(b"y"))
        self.assertFalse(self.queue.write(b"z"))
        self.assertEqual(self.overflows, [1])
        self.assertEqual(self.transport.value(), b"")
        # The protocol closes: what waited goes out, then its last words.
        self.queue.finish()
        self.transport.write(b"bye")
        self.assertEqual(self.transport.value(), b"x" * 10 + b"bye")
        self.assertIsNone(self.transport.producer)
        self.assertFalse(self.queue.write(b"late"))
        self.assertEqual(self.transport.value(), b"x" * 10 + b"bye")
