"""
What every wire format's factory shares: the set of its open connections, and
saying goodbye to them when the server stops.
"""

from __future__ import annotations

from typing import Iterator

from twisted.internet import defer
from twisted.internet.protocol import Factory


class ConnectionSet:
    """
    The open connections of one factory. L{whenEmpty} lets a stopping server
    wait until the last one has closed.
    """

    def __init__(self) -> None:
        self._members: set = set()
        self._waiters: list[defer.Deferred] = []

    def add(self, connection) -> None:
        self._members.add(connection)

    def discard(self, connection) -> None:
        self._members.discard(connection)
        if not self._members and self._waiters:
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def __iter__(self) -> Iterator:
        return iter(list(self._members))

    def __len__(self) -> int:
        return len(self._members)

    def __contains__(self, connection) -> bool:
        return connection in self._members

    def whenEmpty(self) -> defer.Deferred:
        """A L{Deferred} that fires once no connection is open."""
        if not self._members:
            return defer.succeed(None)
        waiter = defer.Deferred()
        self._waiters.append(waiter)
        return waiter


class SessionFactory(Factory):
    """
    Base of chatd's protocol factories. Protocols add themselves to
    C{factory.connections} when connected and discard themselves when lost,
    and provide C{disconnect(reason)}, which tells the user C{reason} in the
    protocol's terms and closes.
    """

    noisy = False  # the listener logs its address; no per-factory chatter

    #: What users are told when the server stops.
    shutdownReason = "the server is shutting down"

    def __init__(self) -> None:
        self.connections = ConnectionSet()

    def shutDown(self) -> defer.Deferred:
        """
        Tell every connected user that the server is stopping, and close.

        @return: a L{Deferred} that fires once every connection has closed.
        """
        for connection in self.connections:
            connection.disconnect(self.shutdownReason)
        return self.connections.whenEmpty()
