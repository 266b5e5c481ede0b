"""
Files between the MSRP peer-to-peer variant and everyone else
(docs/msrp.md, "The peer-to-peer variant", Files).

The variant's clients send files to each other directly: the sender listens
and offers C{"<name> <file> <size> <port> <ip>"}, the receiver connects and
reads C{size} bytes. When only one side speaks the variant, chatd stands in
for the other:

  - L{fetchOffer}: a client of the variant offers a file to a user of
    another protocol; chatd connects to the offered port, at the sender's
    own observed address only (never an address the offer names, so no
    client can make chatd connect to a third host), and reads exactly
    C{size} bytes.
  - L{FileOffer}: a file for a client of the variant; chatd listens on a
    port of its own for that one transfer, takes one connection from the
    receiver's address only, writes the file and closes.

Both give up after C{--file-idle-timeout} seconds without progress.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger

#: Seconds to connect, and without progress, when --file-idle-timeout is 0.
NO_TIMEOUT_CONNECT = 30.0


class FileNotFetched(Exception):
    """The offered file could not be read whole."""


class _Fetch(Protocol):
    """Reads exactly C{size} bytes from an offering client, then closes."""

    def __init__(self, size: int, clock, idleTimeout: float) -> None:
        self.size = size
        self.clock = clock
        self.idleTimeout = idleTimeout
        self.content = bytearray()
        self.done: defer.Deferred[bytes] = defer.Deferred()
        self._timer = None

    def connectionMade(self) -> None:
        if self.size == 0:
            self._finish()
        else:
            self._arm()

    def _arm(self) -> None:
        if self.idleTimeout:
            if self._timer is not None and self._timer.active():
                self._timer.reset(self.idleTimeout)
            else:
                self._timer = self.clock.callLater(self.idleTimeout, self._stalled)

    def _stalled(self) -> None:
        self._timer = None
        self._fail(f"no progress in {self.idleTimeout:g} s")
        self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        # Exactly size bytes: what follows is not the file.
        self.content += data[: self.size - len(self.content)]
        if len(self.content) == self.size:
            self._finish()
        else:
            self._arm()

    def _finish(self) -> None:
        self._stop()
        if not self.done.called:
            self.done.callback(bytes(self.content))
        self.transport.loseConnection()

    def _fail(self, why: str) -> None:
        self._stop()
        if not self.done.called:
            self.done.errback(FileNotFetched(why))

    def _stop(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def connectionLost(self, reason=None) -> None:
        self._fail(f"closed after {len(self.content)} of {self.size} bytes")


def fetchOffer(
    reactor, clock, host: str, port: int, size: int, idleTimeout: float
) -> defer.Deferred[bytes]:
    """
    Connect to C{host:port} (the offering client's observed address) and
    read C{size} bytes; fails with L{FileNotFetched}.
    """
    timeout = idleTimeout or NO_TIMEOUT_CONNECT
    if ":" in host:
        endpoint = TCP6ClientEndpoint(reactor, host, port, timeout=timeout)
    else:
        endpoint = TCP4ClientEndpoint(reactor, host, port, timeout=timeout)
    fetch = _Fetch(size, clock, idleTimeout)
    connecting = connectProtocol(endpoint, fetch)

    def notConnected(failure):
        raise FileNotFetched(f"cannot connect: {failure.getErrorMessage()}")

    connecting.addErrback(notConnected)
    return connecting.addCallback(lambda _: fetch.done)


class _Serve(Protocol):
    def connectionMade(self) -> None:
        self.factory.served(self)


class FileOffer(Factory):
    """
    One file for one client of the variant, offered from a port of its own:
    one connection, from the receiver's address only; the file is written
    and the port closed, or the port is closed after C{timeout} seconds.

    @ivar done: fires with C{True} once the file was written, C{False} when
        nobody came in time or the offer was withdrawn.
    """

    log = Logger()

    def __init__(self, content: bytes, receiverHost: str, clock, timeout: float) -> None:
        self.content = content
        #: The bytes held until the receiver fetches them.
        self.size = len(content)
        self.receiverHost = receiverHost
        self.clock = clock
        self.timeout = timeout
        self.port = None
        self.done: defer.Deferred[bool] = defer.Deferred()
        self._timer = None

    def listen(self, reactor, interface: str) -> int:
        """Listen on a free port of C{interface}; the port number."""
        self.port = reactor.listenTCP(0, self, backlog=1, interface=interface)
        if self.timeout:
            self._timer = self.clock.callLater(self.timeout, self.withdraw)
        return self.port.getHost().port

    def buildProtocol(self, addr):
        host = addr.host
        if host.startswith("::ffff:") and "." in host:
            host = host[len("::ffff:") :]  # an IPv4 client on a dual-stack socket
        if self.done.called or host != self.receiverHost:
            self.log.info(
                "msrp file offer: connection from {peer} refused", peer=addr.host
            )
            return None  # closed at once
        return Factory.buildProtocol(self, addr)

    protocol = _Serve

    def served(self, connection: _Serve) -> None:
        connection.transport.write(self.content)
        connection.transport.loseConnection()
        self.content = b""
        self.size = 0
        self._end(True)

    def withdraw(self) -> None:
        """Nobody came, or the receiver left: close the port."""
        self._end(False)

    def _end(self, written: bool) -> None:
        self.content = b""
        self.size = 0
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self.port is not None:
            self.port.stopListening()
            self.port = None
        if not self.done.called:
            self.done.callback(written)
