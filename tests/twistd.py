"""
Run the real C{twistd -n chatd} in a child process, for tests that prove the
plugin installs and that a whole server works.
"""

from __future__ import annotations

import os
import re
import sys

from twisted.internet import defer, protocol, reactor
from twisted.python.failure import Failure

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")

_LISTENING = re.compile(rb"chatd (\S+) listening on \w+:([^\s]+):(\d+)")


class TwistdProcess(protocol.ProcessProtocol):
    """
    C{twistd --nodaemon chatd ARGS} in C{directory}. L{ready} fires with
    C{{label: port}} once every listener in C{labels} logged its address.
    """

    def __init__(self, args: list[str], labels: list[str], directory: str) -> None:
        self.args = args
        self.labels = set(labels)
        self.directory = directory
        self.output = b""
        self.ports: dict[str, int] = {}
        self.ready: defer.Deferred = defer.Deferred()
        self.ended: defer.Deferred = defer.Deferred()
        self.exitStatus = None

    def start(self) -> defer.Deferred:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        argv = [TWISTD, "--nodaemon", "--pidfile=", "--logfile=-", "chatd", *self.args]
        # The working directory is a fresh one, so the plugin can only be
        # found through the installed package.
        reactor.spawnProcess(self, TWISTD, argv, env=env, path=self.directory)
        return self.ready

    def outReceived(self, data: bytes) -> None:
        self.output += data
        for match in _LISTENING.finditer(self.output):
            self.ports[match.group(1).decode()] = int(match.group(3))
        if not self.ready.called and self.labels <= set(self.ports):
            self.ready.callback(dict(self.ports))

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        self.exitStatus = reason.value
        if not self.ready.called:
            self.ready.errback(
                RuntimeError(f"twistd ended before listening:\n{self.output.decode(errors='replace')}")
            )
        self.ended.callback(None)

    def signal(self, name: str) -> defer.Deferred:
        """Send a signal (C{"TERM"}, C{"KILL"}) and wait for the process to end."""
        if not self.ended.called:
            try:
                self.transport.signalProcess(name)
            except Exception:
                pass
        return self.ended

    def stop(self) -> defer.Deferred:
        return self.signal("TERM")


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


__all__ = ["TwistdProcess", "ByteCollector"]
