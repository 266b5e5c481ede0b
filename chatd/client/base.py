"""
What every chatd-client protocol client shares: connecting (TCP or TLS),
knowing when the connection closed, and an outbound queue that keeps a
streamed file's bytes together on the wire.
"""

from __future__ import annotations

from collections import deque
from typing import Callable

from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.error import ConnectionDone
from twisted.internet.ssl import Certificate, optionsForClientTLS, trustRootFromCertificates
from twisted.python.failure import Failure

from chatd.client.runner import Command

#: Seconds to wait for a TCP connection.
CONNECT_TIMEOUT = 30


def loadTrustRoot(caFile: str | None):
    """
    The certificates of C{caFile} (PEM, one or more) as a trust root, or
    C{None} (the system's CAs) without a file.
    """
    if caFile is None:
        return None
    with open(caFile, "rb") as f:
        data = f.read()
    marker = b"-----END CERTIFICATE-----"
    blocks = [block + marker for block in data.split(marker) if b"-----BEGIN CERTIFICATE-----" in block]
    if not blocks:
        raise ValueError(f"{caFile} holds no PEM certificate")
    return trustRootFromCertificates([Certificate.loadPEM(block) for block in blocks])


def clientEndpoint(reactor, host: str, port: int, tls: bool, caFile: str | None):
    """
    A TCP endpoint to C{host:port} (IPv4 or IPv6, whatever the name resolves
    to); with C{tls}, wrapped in TLS that checks the server's certificate
    against C{caFile} (or the system's CAs) and the name C{host}.
    """
    endpoint = HostnameEndpoint(reactor, host, port, timeout=CONNECT_TIMEOUT)
    if tls:
        options = optionsForClientTLS(host, trustRoot=loadTrustRoot(caFile))
        endpoint = wrapClientTLS(options, endpoint)
    return endpoint


def describeError(error: BaseException | Failure | None) -> str:
    """A short sentence for why a connection or request failed."""
    if isinstance(error, Failure):
        error = error.value
    if error is None or isinstance(error, ConnectionDone):
        return "the server closed the connection"
    reasons = getattr(error, "reasons", None)  # twisted.web's wrapped failures
    if reasons:
        return "; ".join(describeError(reason) for reason in reasons)
    try:
        from OpenSSL import SSL
    except ImportError:  # pragma: no cover
        SSL = None
    if SSL is not None and isinstance(error, SSL.Error):
        details = [
            part[-1] for part in (error.args[0] if error.args and isinstance(error.args[0], list) else [])
            if isinstance(part, tuple) and part
        ]
        return "TLS: " + ("; ".join(d for d in details if d) or str(error))
    text = str(error)
    return text or type(error).__name__


class OutboundQueue:
    """
    Writes to a transport in order. A streamed job (a file's content) owns
    the connection until it is done; what is written meanwhile waits behind
    it, so it never lands inside the content.
    """

    def __init__(self, transport) -> None:
        self.transport = transport
        self._queue: deque = deque()
        self._busy = False
        self._idle: list[defer.Deferred] = []

    def write(self, data: bytes) -> None:
        if self._busy:
            self._queue.append(data)
        else:
            self.transport.write(data)

    def stream(self, job: Callable[[object], defer.Deferred]) -> defer.Deferred:
        """
        Run C{job(transport)} (it returns a Deferred that fires once it wrote
        everything) when the connection is free; fires with its result.
        """
        done: defer.Deferred = defer.Deferred()
        self._queue.append((job, done))
        self._pump()
        return done

    @property
    def busy(self) -> bool:
        return self._busy or bool(self._queue)

    def whenIdle(self) -> defer.Deferred:
        if not self.busy:
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred()
        self._idle.append(d)
        return d

    def _pump(self) -> None:
        while not self._busy and self._queue:
            item = self._queue.popleft()
            if isinstance(item, bytes):
                self.transport.write(item)
                continue
            job, done = item
            self._busy = True
            d = defer.maybeDeferred(job, self.transport)

            def finished(result, done=done):
                self._busy = False
                if isinstance(result, Failure):
                    done.errback(result)
                else:
                    done.callback(None)
                self._pump()

            d.addBoth(finished)
        if not self.busy:
            idle, self._idle = self._idle, []
            for d in idle:
                d.callback(None)

    def fail(self, reason: Failure) -> None:
        """The connection is gone: every job still waiting fails."""
        queue, self._queue = self._queue, deque()
        for item in queue:
            if not isinstance(item, bytes):
                item[1].errback(reason)
        idle, self._idle = self._idle, []
        for d in idle:
            d.errback(reason)


class ChatClient:
    """
    A logged-in user of one chatd protocol, driven by commands.

    @ivar closedByUs: whether the client itself closed (or asked the server
        to close) the connection.
    """

    protocolName = ""

    def __init__(self, options, console, reactor) -> None:
        self.options = options
        self.console = console
        self.reactor = reactor
        self.transport = None
        self.closedByUs = False
        self.closeReason: BaseException | None = None
        self._closed = False
        self._closedWaiters: list[defer.Deferred] = []

    def commands(self) -> list[Command]:
        raise NotImplementedError()

    def unsupported(self) -> dict[str, str]:
        """Commands of other protocols this one cannot do, and why."""
        return {}

    def connect(self) -> defer.Deferred:
        """Connect and log in; fires once logged in."""
        raise NotImplementedError()

    def drain(self) -> defer.Deferred | None:
        """Fires once the work under way is done (answers, files, ACKs)."""
        return None

    def quit(self) -> defer.Deferred:
        """Log out politely; fires once the connection is closed."""
        self.abort(polite=True)
        return self.whenClosed()

    def abort(self, polite: bool = False) -> None:
        """Close the connection now."""
        self.closedByUs = True
        if self.transport is not None and not self._closed:
            if polite:
                self.transport.loseConnection()
            else:
                self.transport.abortConnection()

    def whenClosed(self) -> defer.Deferred:
        """Fires with the reason (an exception, or C{None}) once the connection closed."""
        if self._closed:
            return defer.succeed(self.closeReason)
        d: defer.Deferred = defer.Deferred()
        self._closedWaiters.append(d)
        return d

    def connectionLost(self, reason: Failure) -> None:
        """Called by the protocol."""
        self._closed = True
        self.closeReason = None if reason.check(ConnectionDone) else reason.value
        waiters, self._closedWaiters = self._closedWaiters, []
        for d in waiters:
            d.callback(self.closeReason)

    # Helpers.

    def connectEndpoint(self, port: int):
        o = self.options
        return clientEndpoint(self.reactor, o.host, port, o.tls, o.ca_file)

    def describe(self, port: int) -> str:
        scheme = "tls" if self.options.tls else "tcp"
        return f"{scheme}:{self.options.host}:{port}"
