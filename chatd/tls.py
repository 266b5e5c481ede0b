"""
What chatd puts around Twisted's TLS on an C{ssl:} listener (docs/tls.md).

Twisted's C{ssl:} endpoint is kept for parsing the operator's string (every
option of docs/tls.md still means the same); L{tlsEndpoint} takes what it
parsed and listens with L{ChatdTLSFactory}, which differs from Twisted's own
TLS layer in three ways:

  - ALPN: a client that offers protocols the listener does not speak (curl
    and browsers offer C{h2} and C{http/1.1}; C{openssl s_client -alpn})
    gets a connection without a negotiated protocol, as RFC 7301 allows.
    Twisted answers such a client with alert 80 ("internal error").
  - A handshake that fails is logged, with the peer and OpenSSL's reason, at
    most once a L{HANDSHAKE_LOG_INTERVAL} per listener (with a count of
    those not logged), so a misconfigured client shows in the log and a
    scanner does not flood it.
  - A client that half-closes (shuts down its sending side) is told to the
    protocol on top (C{IHalfCloseableProtocol.readConnectionLost}), which
    answers what it received and then closes.

The key and certificates are handed to OpenSSL as C{cryptography} objects,
not the deprecated pyOpenSSL ones.
"""

from __future__ import annotations

from typing import Sequence

from OpenSSL import SSL
from twisted.internet import defer
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
    IProtocolNegotiationFactory,
    IReactorTime,
    IStreamServerEndpoint,
)
from twisted.logger import Logger
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOFactory
from zope.interface import implementer

from chatd.dualstack import hasIPv6, listenDualStack

#: Seconds between two log lines about failed TLS handshakes on one listener.
HANDSHAKE_LOG_INTERVAL = 60.0


def _modern(value):
    """A pyOpenSSL key or certificate as its C{cryptography} object."""
    for name in ("to_cryptography", "to_cryptography_key"):
        convert = getattr(value, name, None)
        if convert is not None:
            return convert()
    return value


def negotiationTolerantContext(options) -> SSL.Context:
    """
    Give C{options} (Twisted's C{CertificateOptions}, not yet used) its key
    and certificates as C{cryptography} objects, build its context, and
    replace its ALPN selection with L{_selectProtocol}.
    """
    options.privateKey = _modern(options.privateKey)
    options.certificate = _modern(options.certificate)
    options.extraCertChain = [_modern(c) for c in options.extraCertChain]
    context = options.getContext()
    context.set_alpn_select_callback(_selectProtocol)
    return context


def _selectProtocol(connection: SSL.Connection, offered: Sequence[bytes]):
    """
    The first protocol the listener's factory accepts that the client
    offered, or none at all: a client offering only others is still served
    (Twisted returns C{b""} there, which OpenSSL turns into alert 80).
    """
    tlsProtocol = connection.get_app_data()
    negotiation = IProtocolNegotiationFactory(
        tlsProtocol.factory.wrappedFactory, None
    )
    if negotiation is not None:
        for candidate in negotiation.acceptableProtocols():
            if candidate in offered:
                return candidate
    return SSL.NO_OVERLAPPING_PROTOCOLS


class HandshakeFailureLog:
    """
    Logs failed TLS handshakes of one listener: the first of each
    L{HANDSHAKE_LOG_INTERVAL} with its peer and reason, and how many were
    not logged since the previous line.
    """

    log = Logger()

    def __init__(self, label: str, clock: IReactorTime) -> None:
        self.label = label
        self.clock = clock
        self.failures = 0
        self._unlogged = 0
        self._logged: float | None = None

    def failed(self, peer: str, reason: str) -> None:
        self.failures += 1
        now = self.clock.seconds()
        if self._logged is not None and now - self._logged < HANDSHAKE_LOG_INTERVAL:
            self._unlogged += 1
            return
        self.log.info(
            "chatd {protocol}: TLS handshake with {peer} failed: {reason}"
            " ({unlogged} more not logged since the last such line)",
            protocol=self.label,
            peer=peer,
            reason=reason,
            unlogged=self._unlogged,
            event="tls-handshake-failed",
        )
        self._logged = now
        self._unlogged = 0


def describeTLSError(failure) -> str:
    """OpenSSL's reasons in a failure of the handshake, as one line."""
    value = failure.value
    if isinstance(value, SSL.Error) and value.args and isinstance(value.args[0], list):
        reasons = [entry[-1] for entry in value.args[0] if entry and entry[-1]]
        if reasons:
            return "; ".join(reasons)
    return str(value) or type(value).__name__


@implementer(IHalfCloseableProtocol)
class ChatdTLSProtocol(BufferingTLSTransport):
    """
    Twisted's TLS layer (the buffering one its C{ssl:} endpoint uses), plus
    handshake failures reported to the factory, half-closes passed to the
    protocol on top, and failures that do not keep a closed connection alive.
    """

    _readLost = False

    def connectionLost(self, reason) -> None:
        if not self._handshakeDone:
            failure = self._reason or reason
            if failure is not None and failure.check(SSL.Error):
                peer = getattr(self.transport.getPeer(), "host", "?")
                self.factory.handshakes.failed(peer, describeTLSError(failure))
        BufferingTLSTransport.connectionLost(self, reason)

    # IHalfCloseableProtocol: the TCP peer sent its FIN.

    def readConnectionLost(self) -> None:
        self._readLost = True
        halfCloseable = IHalfCloseableProtocol(self.wrappedProtocol, None)
        # Every record that arrived whole was decrypted and delivered as it
        # came (dataReceived), so the protocol has had all there is.
        if (
            not self._handshakeDone
            or self._lostTLSConnection
            or halfCloseable is None
        ):
            self.transport.loseConnection()
            return
        halfCloseable.readConnectionLost()

    def writeConnectionLost(self) -> None:
        self.transport.loseConnection()

    def _tlsShutdownFinished(self, reason) -> None:
        # When a peer vanishes (a reset, a client cut off mid-record), the TLS
        # layer makes a Failure in a frame that also holds it as a local:
        # failure -> traceback -> frame -> failure, a cycle that kept this
        # layer, the TCP transport and its write buffer until a full garbage
        # collection. Cleaned as it is made (its traceback turned into text,
        # as a Deferred does), a closed connection goes by reference counting
        # alone. (_tlsShutdownFinished is Twisted's private hook through which
        # every such failure passes; tests/test_freed.py notices a change.)
        if reason is not None:
            reason.cleanFailure()
        BufferingTLSTransport._tlsShutdownFinished(self, reason)

    def _shutdownTLS(self) -> None:
        BufferingTLSTransport._shutdownTLS(self)
        if self._readLost:
            # The peer can send nothing more, not even its close_notify,
            # which is what Twisted waits for before it closes the socket.
            self.transport.loseConnection()


class ChatdTLSFactory(TLSMemoryBIOFactory):
    """A server-side L{TLSMemoryBIOFactory} of L{ChatdTLSProtocol}s."""

    protocol = ChatdTLSProtocol
    noisy = False

    def __init__(self, options, wrappedFactory, handshakes: HandshakeFailureLog) -> None:
        TLSMemoryBIOFactory.__init__(self, options, False, wrappedFactory)
        self.handshakes = handshakes


@implementer(IStreamServerEndpoint)
class TLSServerEndpoint:
    """
    Listens like the C{ssl:} endpoint it is made from, with
    L{ChatdTLSFactory} as the TLS layer.
    """

    def __init__(self, reactor, port: int, options, backlog: int, interface: str, label: str) -> None:
        self.reactor = reactor
        self.port = port
        self.options = options
        self.backlog = backlog
        self.interface = interface
        self.handshakes = HandshakeFailureLog(label, reactor)
        negotiationTolerantContext(options)

    def listen(self, factory) -> defer.Deferred:
        tlsFactory = ChatdTLSFactory(self.options, factory, self.handshakes)
        if self.interface == "" and hasIPv6():
            # No interface: every address of both families (chatd/dualstack.py).
            return defer.execute(
                listenDualStack, self.reactor, self.port, tlsFactory, self.backlog
            )
        return defer.execute(
            self.reactor.listenTCP, self.port, tlsFactory, self.backlog, self.interface
        )


def tlsEndpoint(reactor, endpoint, label: str):
    """
    C{endpoint} itself, unless it is Twisted's C{ssl:} endpoint: then a
    L{TLSServerEndpoint} with the same port, certificates, backlog and
    interface. (Twisted's endpoint keeps them in private attributes; it has
    no public way to give its listener another TLS factory.)
    """
    if not isinstance(endpoint, SSL4ServerEndpoint):
        return endpoint
    return TLSServerEndpoint(
        reactor,
        endpoint._port,
        endpoint._sslContextFactory,
        endpoint._backlog,
        endpoint._interface,
        label,
    )
