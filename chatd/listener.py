"""
A service that listens on one endpoint for one wire format.
"""

from __future__ import annotations

import os
import sys

from twisted.application import service
from twisted.application.internet import StreamServerEndpointService
from twisted.internet import defer
from twisted.internet.interfaces import (
    IListeningPort,
    IReactorTime,
    IStreamServerEndpoint,
)
from twisted.logger import Logger


#: Seconds a stopping listener waits for its connections to write their last
#: bytes and close before it aborts them.
DEFAULT_SHUTDOWN_GRACE = 5.0


#: What a listener logs once it listens, with C{label} and C{address} (as
#: L{describeAddress} writes it: C{tcp:127.0.0.1:5000}). The harnesses that
#: start a real twistd read the ports from it (L{chatd.harness.LISTENING}).
LISTENING_FORMAT = "chatd {label} listening on {address}"


def describeAddress(address, secure: bool = False) -> str:
    """
    C{IPv4Address(TCP, '127.0.0.1', 5000)} -> C{'tcp:127.0.0.1:5000'}, or
    C{'ssl:127.0.0.1:5000'} for a TLS listener; an IPv6 host in brackets,
    C{'tcp:[::]:5000'}.
    """
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if host is None or port is None:
        return str(address)
    kind = "ssl" if secure else getattr(address, "type", "TCP").lower()
    if ":" in host:
        host = f"[{host}]"  # IPv6: tcp:[::]:5000
    return f"{kind}:{host}:{port}"


class ListenFailed(Exception):
    """
    A listener could not listen at start-up (a port in use, no permission);
    C{str()} is one line naming the option and the reason
    (C{chatd: --http tcp:8000: address already in use}).
    """

    def __init__(self, what: str, reason: str) -> None:
        super().__init__(f"chatd: {what}: {reason}")
        self.what, self.reason = what, reason


def _sayListenFailedInOneLine() -> None:
    """
    Make an uncaught L{ListenFailed} print its one line instead of a
    traceback (the exit status stays 1).

    twistd lets an exception from privilegedStartService escape to Python's
    top level, which prints a traceback ending in CannotListenError. It has
    to stay an Exception all the way up: a daemonizing twistd tells its
    waiting parent about the failure only for an Exception (a SystemExit
    would leave the parent waiting for ever).
    """
    previous = sys.excepthook
    if getattr(previous, "chatdListenFailed", False):
        return

    def excepthook(kind, value, tb):
        if isinstance(value, ListenFailed):
            sys.stderr.write(f"{value}\n")
            sys.stderr.flush()
        else:
            previous(kind, value, tb)

    excepthook.chatdListenFailed = True
    sys.excepthook = excepthook


def _reason(error: BaseException) -> str:
    """C{address already in use}, from a C{CannotListenError} or an C{OSError}."""
    cause = getattr(error, "socketError", error)
    errno = getattr(cause, "errno", None)
    if errno:
        return os.strerror(errno).lower()
    return str(cause) or type(cause).__name__


class ListenerService(StreamServerEndpointService):
    """
    Listen on C{endpoint} with C{factory} while the service runs: Twisted's
    L{StreamServerEndpointService}, with three things of chatd's own.

    Once listening it logs C{"chatd {label} listening on tcp:HOST:PORT"} (the
    tests and operators read the port from it when they ask for port 0). A
    failure to listen that is known at start-up (a port in use) is raised as
    L{ListenFailed}, so C{twistd} stops with the reason in one line instead
    of running without the listener. Stopping lets the factory say goodbye
    to its connections, for at most C{grace} seconds (L{stopService}).
    """

    log = Logger()

    #: Whether the endpoint is TLS (C{ssl:}), for the log line.
    secure = False

    #: How the operator asked for this listener (C{--http tcp:8000}), for
    #: the line that says it could not listen.
    configuredAs: str | None = None

    #: A failure to listen known at start-up stops twistd.
    _raiseSynchronously = True

    #: In a worker of C{--workers} (chatd/workers.py), its number: the
    #: listener serves a socket the parent opened, which the parent logs as
    #: listening, so the worker logs another line (C{SERVING_FORMAT}).
    worker: int | None = None

    def __init__(
        self,
        label: str,
        endpoint: IStreamServerEndpoint,
        factory,
        clock: IReactorTime | None = None,
        grace: float = DEFAULT_SHUTDOWN_GRACE,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        super().__init__(endpoint, factory)
        self.label = label
        self.clock = clock
        self.grace = grace
        #: The listening port, once there is one.
        self.port: IListeningPort | None = None

    def privilegedStartService(self) -> None:
        # Bind before twistd drops privileges, as Twisted's own service does.
        try:
            super().privilegedStartService()
        except Exception as e:
            self._waitingForPort = None
            _sayListenFailedInOneLine()
            raise ListenFailed(self.configuredAs or self.label, _reason(e)) from e
        self._waitingForPort.addCallback(self._listened)

    def _listened(self, port: IListeningPort | None) -> IListeningPort | None:
        if port is None:
            return None  # cancelled, or failed later (Twisted logged why)
        self.port = port
        whenReady = getattr(self.parent, "whenReady", None)
        ready = defer.succeed(None) if whenReady is None else whenReady()
        if not ready.called:
            # A cluster node loads the directory first: the port is bound
            # (before twistd drops privileges) but connections wait in its
            # backlog until then.
            stopReading = getattr(port, "stopReading", None)
            if stopReading is not None:
                stopReading()
        ready.addCallback(lambda _: self._accepting(port))
        return port

    def _accepting(self, port: IListeningPort) -> None:
        if self.port is not port:
            return  # stopped meanwhile
        startReading = getattr(port, "startReading", None)
        if startReading is not None and not getattr(port, "disconnected", False):
            startReading()
        address = describeAddress(port.getHost(), self.secure)
        if self.worker is not None:
            from chatd.workers import SERVING_FORMAT

            # The parent logged the listening line once, for every worker.
            self.log.info(
                SERVING_FORMAT,
                label=self.label,
                address=address,
                worker=self.worker,
                event="worker-serving",
            )
            return
        self.log.info(LISTENING_FORMAT, label=self.label, address=address)

    def stopService(self) -> defer.Deferred:
        """
        Stop accepting, then let the factory say goodbye to its connections
        in its protocol's terms (its C{shutDown()}, if it has one), and wait
        for them to close while their last bytes are written: at most
        C{grace} seconds, after which those still open are aborted.
        """
        waits = []
        if self._waitingForPort is None:
            service.Service.stopService(self)  # never listened
        else:
            waits.append(super().stopService())
            self._waitingForPort = None
        self.port = None
        shutDown = getattr(self.factory, "shutDown", None)
        if shutDown is not None:
            closed = shutDown()
            if not closed.called:
                timer = self.clock.callLater(self.grace, self._abortRemaining)

                def stopTimer(result):
                    if timer.active():
                        timer.cancel()
                    return result

                waits.append(closed.addBoth(stopTimer))
        return defer.gatherResults(waits)

    def _abortRemaining(self) -> None:
        remaining = list(self.factory.connections)
        self.log.info(
            "chatd {label}: {count} connections still open after {grace}s, aborted",
            label=self.label,
            count=len(remaining),
            grace=self.grace,
        )
        for connection in remaining:
            connection.transport.abortConnection()
