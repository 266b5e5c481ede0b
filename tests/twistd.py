"""
Run the real C{twistd -n chatd} in a child process, for tests that prove the
plugin installs and that a whole server works.
"""

from __future__ import annotations

from twisted.internet import defer, protocol

# The harness lives beside the server (chatd/harness.py), shared with the soak
# and the benchmark; the tests' names for it stay importable from here.
from chatd.harness import TWISTD, TwistdProcess


class ByteCollector(protocol.Protocol):
    """A client that keeps what it receives and wakes waiters on a condition."""

    def __init__(self) -> None:
        self.received = b""
        self.closed: defer.Deferred = defer.Deferred()
        self._waiters: list[tuple] = []

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        for waiter in list(self._waiters):
            predicate, d = waiter
            result = predicate(self.received)
            if result:
                self._waiters.remove(waiter)
                d.callback(result)

    def waitFor(self, predicate) -> defer.Deferred:
        """Fire with C{predicate(received)} once it is true."""
        result = predicate(self.received)
        if result:
            return defer.succeed(result)
        d = defer.Deferred()
        self._waiters.append((predicate, d))
        return d

    def connectionLost(self, reason) -> None:
        for _, d in self._waiters:
            d.errback(reason)
        self._waiters = []
        self.closed.callback(None)


__all__ = ["TWISTD", "TwistdProcess", "ByteCollector"]
