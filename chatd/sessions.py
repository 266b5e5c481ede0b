"""
What every wire format shares: the set of a factory's open connections, the
server's limits on what one client may cost, the start of a connection
(L{SessionProtocol}: admitted or refused, the login deadline), and saying
goodbye to the connections when the server stops.
"""

from __future__ import annotations

from typing import Callable, Iterator

from twisted.internet import defer
from twisted.internet.interfaces import (
    IDelayedCall,
    IHalfCloseableProtocol,
    IProtocolNegotiationFactory,
    IReactorTime,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from zope.interface import Attribute, Interface, implementer

from chatd.limits import (
    ConnectionLimiter,
    ErrorLogLimit,
    Limits,
    OutboundQueue,
    enableKeepAlive,
)
from chatd.metrics import CLIENT, CONN_LIMIT, LOGIN_TIMEOUT, RATE, SHUTDOWN, ChatdMetrics

#: Seconds between two log lines about one connection's refused messages
#: (a client that floods would otherwise flood the log).
RATE_LOG_INTERVAL = 60.0


def mayLogError(session) -> bool:
    """
    Whether a log line about an error of C{session}'s client may be written
    now: its allowance's L{ErrorLogLimit} says, when it has one.
    """
    allowance = getattr(session, "allowance", None)
    return allowance is None or allowance.mayLogError()


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


class Allowance:
    """
    One connection's share of the server's limits: its place in the
    connection counts, its deadline to log in, its message rate, and how long
    a close the server started may take.

    Made by L{SessionFactory.admit}; the protocol calls L{loggedIn},
    L{allowMessage} and L{closing}, and the factory's L{SessionFactory.release}
    ends it.

    @ivar refusal: why the connection is refused (it is not counted then), or
        C{None}.
    """

    __slots__ = (
        "factory",
        "session",
        "address",
        "refusal",
        "_loginTimer",
        "_bucket",
        "_abortTimer",
        "_rateLogged",
        "_rateRefused",
        "_errorLog",
    )

    def __init__(
        self, factory: "SessionFactory", session, address: str, login: bool = True
    ) -> None:
        self.factory = factory
        self.session = session
        self.address = address
        self._loginTimer: IDelayedCall | None = None
        self._abortTimer: IDelayedCall | None = None
        self._bucket = None
        self._rateLogged: float | None = None
        self._rateRefused = 0
        self._errorLog: ErrorLogLimit | None = None  # made at the first error
        self.refusal = factory.limiter.acquire(address)
        if self.refusal is not None:
            return
        limits = factory.limits
        # Chat is small messages that must not wait for Nagle's algorithm
        # (it added tens of milliseconds to a delivery under load); writes
        # are already batched per read.
        try:
            session.transport.setTcpNoDelay(True)
        except (AttributeError, OSError):
            pass  # not TCP (a test transport, a UNIX socket)
        if limits.keepAlive:
            enableKeepAlive(session.transport, idle=limits.keepAlive)
        if login and limits.loginTimeout:
            self._loginTimer = factory.clock.callLater(
                limits.loginTimeout, factory.loginTimedOut, session
            )

    def loggedIn(self) -> None:
        """The user logged in: no login deadline any more; messages counted."""
        if self._loginTimer is not None:
            if self._loginTimer.active():
                self._loginTimer.cancel()
            self._loginTimer = None
        if self._bucket is None:
            self._bucket = self.factory.limits.bucket(self.factory.clock)

    def allowMessage(self) -> bool:
        """
        Whether the user may send one more message now. A refusal is counted,
        and logged at most once every L{RATE_LOG_INTERVAL} seconds.
        """
        bucket = self._bucket
        if bucket is None or bucket.allow():
            return True
        self._refusedByRate()
        return False

    def _refusedByRate(self) -> None:
        factory, session = self.factory, self.session
        if session is None:
            return  # the connection is closed (see end)
        factory.metrics.refused(session.protocolName, RATE)
        self._rateRefused += 1
        now = factory.clock.seconds()
        if self._rateLogged is not None and now - self._rateLogged < RATE_LOG_INTERVAL:
            return
        user = getattr(session, "user", None)
        factory.log.info(
            "{protocol} messages of {user} over the rate of {rate:g} a second:"
            " {refused} refused",
            protocol=session.protocolName,
            user=user.name if user is not None else session.peerHost,
            peer=session.peerHost,
            refused=self._rateRefused,
            rate=factory.limits.rate,
            reason=RATE,
            event="message-refused",
        )
        self._rateLogged = now
        self._rateRefused = 0

    def mayLogError(self) -> bool:
        """
        Whether a log line about this connection's errors (a bad line, a
        refused request) may be written now (L{ErrorLogLimit}).
        """
        errors = self._errorLog
        if errors is None:
            errors = self._errorLog = ErrorLogLimit(
                self.factory.clock, self.session.protocolName, self.address
            )
        return errors.allow()

    def closing(self, transport) -> None:
        """
        The server is closing this connection: if the client does not take
        its last bytes within the close grace, abort it.
        """
        if self._abortTimer is None and self.factory.limits.closeGrace:
            self._abortTimer = self.factory.clock.callLater(
                self.factory.limits.closeGrace, transport.abortConnection
            )

    def end(self) -> None:
        """
        The connection is closed: stop its timers, free its count, and let go
        of the session, which holds this allowance: a closed connection must
        be freed by reference counting alone, not wait (with its write
        buffers) for a full garbage collection.
        """
        for timer in (self._loginTimer, self._abortTimer):
            if timer is not None and timer.active():
                timer.cancel()
        self._loginTimer = self._abortTimer = None
        if self._errorLog is not None:
            self._errorLog.close()
            self._errorLog = None
        self.session = None
        if self.refusal is None:
            self.refusal = "closed"
            self.factory.limiter.release(self.address)


class ISessionProtocol(Interface):
    """
    What a L{SessionFactory} (and the L{Allowance} it makes) expects of each
    of its protocols: exactly what they read and call.
    L{SessionProtocol} provides the connection start; a protocol adds the
    words of its refusals and its goodbyes.
    """

    protocolName = Attribute(
        "The wire format's name (C{protobuf}, C{msrp}, C{msgr}): the"
        " C{protocol} of metrics and log events."
    )
    peerHost = Attribute("The client's address, as the connection limits count it.")
    transport = Attribute(
        "The connection's transport (the allowance sets TCP_NODELAY and"
        " keepalive on it, and aborts it after the close grace)."
    )
    allowance = Attribute(
        "The L{Allowance} that L{SessionFactory.admit} returned for it."
    )
    closeReason = Attribute(
        "Why the server closes it (a reason of L{chatd.metrics}), or C{None}:"
        " set by the factory, counted by L{SessionFactory.release}."
    )
    user = Attribute(
        "Who logged in on it (a L{chatd.presence.UserInfo}), or C{None}; named"
        " in the log line of refused messages."
    )
    awaitingLogin = Attribute(
        "Whether it is still to log in: no user, no login being checked, not"
        " closing. Read when the login deadline passes."
    )

    def refuse(refusal: str) -> None:
        """
        A connection limit refused it (C{refusal} is the limiter's reason):
        tell the client so in the protocol's terms, and close.
        """

    def loginTimedOut() -> None:
        """
        No login came within C{--login-timeout}: tell the client in the
        protocol's terms and close (the factory logged and counted it).
        """

    def disconnect(reason: str) -> None:
        """Tell the user C{reason} in the protocol's terms, and close."""


@implementer(ISessionProtocol)
class SessionProtocol(Protocol):
    """
    The start every chatd connection shares: note the client's address, be
    admitted by the factory (counted against the connection limits, given a
    login deadline) or refused (L{refuse}), and whether it still awaits its
    login.

    A subclass sets C{user} when its client has logged in, C{_loggingIn}
    while a login is being checked, and C{_closing} once it closes; it
    provides L{refuse}, L{loginTimedOut} and L{disconnect}, in its own
    words, and may extend L{admitted}.
    """

    protocolName = ""
    peerHost = ""
    user = None
    closeReason = None
    _loggingIn = False
    _closing = False

    def connectionMade(self) -> None:
        self.peerHost = getattr(self.transport.getPeer(), "host", "")
        self.allowance = self.factory.admit(self)
        if self.allowance.refusal is not None:
            self.refuse(self.allowance.refusal)
        else:
            self.admitted()

    def admitted(self) -> None:
        """The connection limits let it in: set up what it needs to talk."""

    @property
    def awaitingLogin(self) -> bool:
        return self.user is None and not self._loggingIn and not self._closing

    def refuse(self, refusal: str) -> None:
        raise NotImplementedError(f"{type(self).__name__} must say why it refuses")

    def loginTimedOut(self) -> None:
        raise NotImplementedError(f"{type(self).__name__} must say it timed out")

    def disconnect(self, reason: str) -> None:
        raise NotImplementedError(f"{type(self).__name__} must say goodbye")


class SessionFactory(Factory):
    """
    Base of chatd's protocol factories.

    Its protocols provide L{ISessionProtocol} (L{SessionProtocol} does
    most of it). They call L{admit} when connected (it adds them to
    C{connections} and counts them against the limits;
    L{SessionProtocol.connectionMade} does) and L{release} when lost; the
    factory calls their C{loginTimedOut()} when no login came within the
    limit (it logs and counts it) and their C{disconnect(reason)} when the
    server stops.

    @param clock: time for the login deadline, rates and close deadlines.
    @param limits: the server's L{Limits}.
    @param limiter: the L{ConnectionLimiter} shared by every listener; one of
        this factory's own when not given.
    @param metrics: the server's L{ChatdMetrics}; one of this factory's own
        when not given.
    """

    noisy = False  # the listener logs its address; no per-factory chatter
    log = Logger()

    #: What users are told when the server stops.
    shutdownReason = "the server is shutting down"

    def __init__(
        self,
        clock: IReactorTime,
        limits: Limits | None = None,
        limiter: ConnectionLimiter | None = None,
        metrics: ChatdMetrics | None = None,
    ) -> None:
        self.connections = ConnectionSet()
        self.metrics = metrics if metrics is not None else ChatdMetrics()
        self.clock = clock
        self.limits = limits if limits is not None else Limits()
        if limiter is None:
            limiter = ConnectionLimiter(
                self.limits.maxConnections, self.limits.maxConnectionsPerAddress
            )
        self.limiter = limiter

    def admit(self, session) -> Allowance:
        """
        A new connection: count it. If a connection limit refuses it, the
        returned allowance's C{refusal} says why, and the protocol tells the
        client so and closes.
        """
        self.connections.add(session)
        session.closeReason = None
        allowance = Allowance(self, session, session.peerHost)
        if allowance.refusal is not None:
            session.closeReason = CONN_LIMIT
            self.log.info(
                "{protocol} connection from {peer} refused: {refusal}",
                protocol=session.protocolName,
                peer=session.peerHost,
                refusal=allowance.refusal,
                reason=CONN_LIMIT,
                event="connection-refused",
            )
        return allowance

    def loginTimedOut(self, session) -> None:
        """No login within C{--login-timeout}: log, count, and close."""
        if not session.awaitingLogin:
            return
        self.log.info(
            "{protocol} connection from {peer} closed: no login within"
            " {timeout:g} seconds",
            protocol=session.protocolName,
            peer=session.peerHost,
            timeout=self.limits.loginTimeout,
            reason=LOGIN_TIMEOUT,
            event="disconnect",
        )
        self.disconnecting(session, LOGIN_TIMEOUT)
        session.loginTimedOut()

    def disconnecting(self, session, reason: str) -> None:
        """
        The server is closing C{session} because of C{reason} (one of the
        reasons of L{chatd.metrics}); the first reason given is the one
        counted when the connection is gone.
        """
        if getattr(session, "closeReason", None) is None:
            session.closeReason = reason

    def loginRefused(self, session, name: str, reason: str) -> None:
        """
        Log and count a login the protocol refused before asking the
        presence service (which logs and counts its own refusals).
        """
        self.metrics.loginRefused(session.protocolName)
        if not mayLogError(session):
            return
        self.log.info(
            "{protocol} login of {user!r} from {peer} refused: {reason}",
            protocol=session.protocolName,
            user=name,
            peer=session.peerHost,
            reason=reason,
            event="login-refused",
        )

    def release(self, session) -> None:
        """A connection closed: count it, by why it closed."""
        session.allowance.end()
        self.connections.discard(session)
        self.metrics.disconnected(
            session.protocolName, getattr(session, "closeReason", None) or CLIENT
        )

    def outbound(self, transport, onOverflow: Callable[[], None]) -> OutboundQueue | None:
        """
        The bounded queue of bytes to one client, or C{None} when
        C{--max-sendq} is 0 (write to the transport directly).
        """
        if not self.limits.maxSendQueue:
            return None
        return OutboundQueue(transport, self.limits.maxSendQueue, onOverflow)

    def shutDown(self) -> defer.Deferred:
        """
        Tell every connected user that the server is stopping, and close.

        @return: a L{Deferred} that fires once every connection has closed.
        """
        for connection in self.connections:
            self.disconnecting(connection, SHUTDOWN)
            connection.disconnect(self.shutdownReason)
        return self.connections.whenEmpty()


@implementer(IHalfCloseableProtocol)
class _CountedHTTPConnection(ProtocolWrapper):
    """
    An HTTP connection counted against the connection limits; over a limit
    it is answered C{503} with the MSGR code C{803} and closed unread.

    A client that half-closes after a request gets its response, then the
    connection closes (twisted.web's channel does not handle half-closes).
    """

    protocolName = "http"

    def makeConnection(self, transport) -> None:
        self.peerHost = getattr(transport.getPeer(), "host", "")
        self.transport = transport
        self.allowance = Allowance(self.factory, self, self.peerHost, login=False)
        if self.allowance.refusal is None:
            ProtocolWrapper.makeConnection(self, transport)
            return
        self.factory.log.info(
            "http connection from {peer} refused: {refusal}",
            protocol=self.protocolName,
            peer=self.peerHost,
            refusal=self.allowance.refusal,
            reason=CONN_LIMIT,
            event="connection-refused",
        )
        metrics = self.factory.metrics
        metrics.disconnected(self.protocolName, CONN_LIMIT)
        metrics.httpRequest(self.factory.label, 503)
        body = b"803"
        transport.write(
            b"HTTP/1.1 503 Service Unavailable\r\n"
            b"Content-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: %d\r\n"
            b"Retry-After: 10\r\n"
            b"Connection: close\r\n\r\n%s" % (len(body), body)
        )
        transport.loseConnection()
        self.allowance.closing(transport)

    def readConnectionLost(self) -> None:
        if self.allowance.refusal is not None:
            return  # answered 503 and closing already
        channel = getattr(self.wrappedProtocol, "_channel", self.wrappedProtocol)
        if getattr(channel, "_handlingRequest", False):
            # A request is being answered: close once it is (requestDone).
            channel.persistent = False
        else:
            # Nothing asked, or a request that can never be whole now. (The
            # channel's own close unregisters it as the transport's
            # producer, without which a TLS transport never closes.)
            getattr(channel, "loseConnection", self.transport.loseConnection)()

    def writeConnectionLost(self) -> None:
        self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        if self.allowance.refusal is None:
            ProtocolWrapper.dataReceived(self, data)

    def connectionLost(self, reason) -> None:
        refused = self.allowance.refusal is not None
        self.allowance.end()
        if not refused:
            ProtocolWrapper.connectionLost(self, reason)


@implementer(IProtocolNegotiationFactory)
class CountedHTTPFactory(WrappingFactory):
    """
    Wraps a twisted.web site so that its connections count against the
    server's connection limits (shared with every other listener), get TCP
    keepalive, and are refused in HTTP's terms past a limit.

    Over TLS it offers the site's protocols in ALPN (C{http/1.1}), as the
    site would unwrapped: TLS asks the factory it wraps, which is this one.
    """

    protocol = _CountedHTTPConnection
    noisy = False
    log = Logger()

    def __init__(
        self,
        site,
        clock: IReactorTime,
        limits: Limits,
        limiter: ConnectionLimiter,
        metrics: ChatdMetrics | None = None,
        label: str = "msgr-http",
    ) -> None:
        WrappingFactory.__init__(self, site)
        self.clock = clock
        self.limits = limits
        self.limiter = limiter
        self.metrics = metrics if metrics is not None else ChatdMetrics()
        self.label = label

    def acceptableProtocols(self) -> list[bytes]:
        negotiation = IProtocolNegotiationFactory(self.wrappedFactory, None)
        if negotiation is None:
            return []
        return negotiation.acceptableProtocols()
