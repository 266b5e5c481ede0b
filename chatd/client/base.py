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

from chatd.client.runner import Command, CommandError

#: Seconds to wait for a TCP connection.
CONNECT_TIMEOUT = 30

#: Seconds the server has to answer the login before chatd-client says it
#: does not look like the protocol's server (a wrong --port: another
#: protocol's server, or one that waits for something else, stays silent).
LOGIN_WAIT = 5.0


def otherProtocol(data: bytes) -> str | None:
    """
    Which of chatd's other servers sent C{data} first, if its first bytes say
    so: C{"an HTTP server"}, C{"an MSGR chat socket"}, C{"an MSRP server"}.
    """
    if data.startswith(b"HTTP/"):
        return "an HTTP server"
    if data.startswith(b"#"):
        return "an MSGR chat socket"
    # What MSRP says to a person at nc (chatd.msrp.protocol): another
    # protocol's login bytes are a name of the wrong length there.
    if data.startswith((b"ERROR: ", b"Hola. ")):
        return "an MSRP server (in its mode for people)"
    # Every MSRP frame starts with a 2-byte opcode from 1 to 5; no protobuf
    # message or MSGR line starts with a 0 byte.
    if len(data) >= 2 and data[0] == 0 and 1 <= data[1] <= 5:
        return "an MSRP server"
    return None


class WrongServer(CommandError):
    """The peer does not speak the client's protocol (a wrong --port)."""


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


class WriteQueue:
    """
    Writes to a transport in order. A streamed job (a file's content) owns
    the connection until it is done; what is written meanwhile waits behind
    it, so it never lands inside the content. (The server's bounded queue
    for slow readers is L{chatd.limits.OutboundQueue}, another thing.)
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

    #: What the server is called in "this does not look like ...".
    serverKind = "a chatd server"

    #: The default port of the protocol, for the hint after a wrong one.
    defaultPort = 0

    def __init__(self, options, console, reactor) -> None:
        self.options = options
        self.console = console
        self.reactor = reactor
        self.transport = None
        self.closedByUs = False
        self.closeReason: BaseException | None = None
        self._closed = False
        self._closedWaiters: list[defer.Deferred] = []
        self._login: defer.Deferred | None = None
        self._loginPort = 0

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

    # A server that is not the protocol's.

    def guardLogin(self, answer: defer.Deferred, port: int) -> defer.Deferred:
        """
        C{answer} (the server's answer to the login), failing instead with
        L{WrongServer} when nothing came within L{LOGIN_WAIT} seconds or the
        first bytes are another protocol's (L{peerSent}); the connection is
        then closed.
        """
        guarded: defer.Deferred = defer.Deferred()
        self._login, self._loginPort = guarded, port

        def timedOut() -> None:
            self._wrongServer(port, f"no answer within {LOGIN_WAIT:g} s")

        timer = self.reactor.callLater(LOGIN_WAIT, timedOut)

        def relay(result):
            if not guarded.called:
                if isinstance(result, Failure):
                    guarded.errback(result)
                else:
                    guarded.callback(result)
            return None  # an answer after WrongServer is of no interest

        def settled(result):
            self._login = None
            if timer.active():
                timer.cancel()
            return result

        guarded.addBoth(settled)
        answer.addBoth(relay)
        return guarded

    def speaksOurs(self, data: bytes) -> bool:
        """Whether C{data}, the first bytes from the server, may be ours."""
        return True

    def peerSent(self, data: bytes) -> bool:
        """
        Called by the protocol with the bytes it receives; C{False} when the
        login failed on them (they are another protocol's), so that the
        protocol drops them.
        """
        if self._login is None or self._login.called:
            return True
        other = otherProtocol(data)
        if other == self.serverKind or (other is None and self.speaksOurs(data)):
            return True
        self._wrongServer(
            self._loginPort, f"it answers like {other or 'something else'}"
        )
        return False

    def _wrongServer(self, port: int, why: str) -> None:
        login, self._login = self._login, None
        if login is None or login.called:
            return
        hint = f" (is the port right? the default is {self.defaultPort})"
        login.errback(
            WrongServer(
                f"{self.describe(port)}: this does not look like {self.serverKind}:"
                f" {why}{hint}"
            )
        )
        self.abort()

    # Helpers.

    def connectEndpoint(self, port: int):
        o = self.options
        return clientEndpoint(self.reactor, o.host, port, o.tls, o.ca_file)

    def describe(self, port: int) -> str:
        scheme = "tls" if self.options.tls else "tcp"
        return f"{scheme}:{self.options.host}:{port}"
