"""
C{--workers N}: N processes on one machine serving the same ports
(docs/cluster.md, "Several processes on one machine").

The parent (L{WorkerSupervisor}) opens every listening socket itself, before
twistd drops its privileges, and starts N C{twistd chatd} workers with the
same options; each gets the sockets as inherited file descriptors and adopts
them (L{AdoptedEndpoint}), so the kernel hands each new connection to one of
the workers accepting on the shared socket. The parent accepts nothing: it
logs the listening lines once, passes every worker's log on with the
worker's number, restarts a worker that dies (with a backoff), and on
SIGTERM stops the workers (each with its usual goodbye to its clients) and
exits.

A worker knows it is one by its environment (L{WORKER}, L{SOCKETS},
L{PARENT}), set by the parent; nothing an operator types.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import signal
import socket
import sys

from twisted.application import service
from twisted.internet import defer, endpoints, error, protocol, tcp
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.logger import LogLevel, Logger, eventFromJSON, globalLogPublisher
from twisted.python import usage
from zope.interface import implementer

from chatd.dualstack import ANY, DualStackPort, hasIPv6
from chatd.listener import (
    LISTENING_FORMAT,
    ListenFailed,
    _reason,
    _sayListenFailedInOneLine,
)

#: The environment of a worker: its number (1 to N), ...
WORKER = "CHATD_WORKER"
#: ... the listening sockets it inherits (C{protobuf=3,http=4}: option, file
#: descriptor), ...
SOCKETS = "CHATD_WORKER_SOCKETS"
#: ... and its parent's pid (a worker whose parent is gone stops).
PARENT = "CHATD_WORKER_PARENT"

#: For tests only: lets C{--workers N>1} run without C{--cluster}, which a
#: real chat must not do (each worker would have its own directory of who is
#: online). The tests check the supervisor, not the directory.
WITHOUT_CLUSTER = "CHATD_TEST_WORKERS_WITHOUT_CLUSTER"

#: What a worker logs for each listener it adopted, instead of
#: L{LISTENING_FORMAT} (which the parent logs once, and harnesses read).
SERVING_FORMAT = "chatd {label} serving {address}"

#: Seconds before the first restart of a worker that died; doubled for each
#: death in a row, up to L{MAX_RESTART_DELAY}.
RESTART_DELAY = 1.0
MAX_RESTART_DELAY = 30.0
#: A worker that ran this many seconds before it died starts a fresh count.
STABLE_AFTER = 60.0
#: Deaths in a row (each within L{STABLE_AFTER} of its start) after which
#: the parent gives up: it stops every worker and exits with status 1.
MAX_RESTARTS = 5
#: Seconds past C{--shutdown-grace} a stopping worker gets before SIGKILL.
STOP_MARGIN = 10.0

log = Logger()


def workerNumber() -> int | None:
    """This process's worker number, or C{None} when it is not a worker."""
    number = os.environ.get(WORKER)
    return int(number) if number else None


def inheritedSockets() -> dict[str, int]:
    """C{{option: file descriptor}} of the sockets a worker inherited."""
    sockets = {}
    for item in filter(None, os.environ.get(SOCKETS, "").split(",")):
        option, fd = item.rsplit("=", 1)
        sockets[option] = int(fd)
    return sockets


def supervises(config) -> bool:
    """Whether this twistd is the parent of C{--workers} workers."""
    return config["workers"] > 1 and workerNumber() is None


def check(config, listenerOptions) -> None:
    """
    Refuse C{--workers N>1} where it cannot work: without C{--cluster} (each
    worker would have its own directory of users: names not unique, users
    of one worker invisible to the others), or with a listener that is not
    C{tcp:} or C{ssl:} (the only sockets the parent shares).
    """
    count = config["workers"]
    if count <= 1 or workerNumber() is not None:
        return
    if config.get("cluster", "none") == "none" and not os.environ.get(WITHOUT_CLUSTER):
        raise usage.UsageError(
            f"--workers {count} needs --cluster: without it each worker would "
            "have a directory of users of its own (docs/cluster.md)"
        )
    from twisted.internet import reactor

    for option in listenerOptions:
        description = config[option]
        if description == "none":
            continue
        endpoint = endpoints.serverFromString(reactor, description)
        if not isinstance(
            endpoint, (endpoints._TCPServerEndpoint, endpoints.SSL4ServerEndpoint)
        ):
            raise usage.UsageError(
                f"--{option} {description}: with --workers {count} every "
                "listener is tcp: or ssl: (the sockets the workers share)"
            )


def openListeningSocket(reactor, option: str, description: str) -> socket.socket:
    """
    A listening, non-blocking socket for the C{tcp:} or C{ssl:} endpoint
    C{description}, bound as the single process binds it (no interface:
    dual stack where the machine has IPv6, chatd/dualstack.py).

    @raise ListenFailed: it cannot be bound (a port in use).
    """
    endpoint = endpoints.serverFromString(reactor, description)
    port, backlog, interface = endpoint._port, endpoint._backlog, endpoint._interface
    if interface == "" and hasIPv6():
        family, interface = socket.AF_INET6, ANY
    elif ":" in interface:
        family = socket.AF_INET6
    else:
        family = socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    try:
        # As Twisted's own listeners: a restarted chatd binds at once.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6 and interface == ANY:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.bind((interface, port))
        s.listen(backlog)
    except OSError as e:
        s.close()
        _sayListenFailedInOneLine()
        raise ListenFailed(f"--{option} {description}", _reason(e)) from e
    # The workers adopt it as it is: Twisted needs it non-blocking.
    s.setblocking(False)
    return s


@implementer(IStreamServerEndpoint)
class AdoptedEndpoint:
    """
    Listens on a socket a worker inherited from its parent, as the endpoint
    it replaces would have: chatd's TLS layer (chatd/tls.py) for C{ssl:},
    and IPv4 peers by their plain address on a dual-stack socket.
    """

    def __init__(self, reactor, fd: int, endpoint, label: str) -> None:
        self.reactor = reactor
        self.fd = fd
        self.label = label
        self.tlsOptions = None
        if isinstance(endpoint, endpoints.SSL4ServerEndpoint):
            from chatd.tls import negotiationTolerantContext

            self.tlsOptions = endpoint._sslContextFactory
            negotiationTolerantContext(self.tlsOptions)

    def listen(self, factory) -> defer.Deferred:
        return defer.execute(self._adopt, factory)

    def _adopt(self, factory):
        if self.tlsOptions is not None:
            from chatd.tls import ChatdTLSFactory, HandshakeFailureLog

            factory = ChatdTLSFactory(
                self.tlsOptions, factory, HandshakeFailureLog(self.label, self.reactor)
            )
        inherited = socket.socket(fileno=os.dup(self.fd))
        family = inherited.family
        dualStack = family == socket.AF_INET6 and not inherited.getsockopt(
            socket.IPPROTO_IPV6, socket.IPV6_V6ONLY
        )
        inherited.close()
        # reactor.adoptStreamPort makes a plain tcp.Port; a dual-stack
        # socket needs DualStackPort, which gives IPv4 peers as IPv4.
        portClass = DualStackPort if dualStack else tcp.Port
        port = portClass._fromListeningDescriptor(self.reactor, self.fd, family, factory)
        port.startListening()
        # The port listens on its own duplicate of the descriptor.
        os.close(self.fd)
        return port


def adoptedEndpoint(reactor, option: str, description: str, label: str):
    """
    In a worker, the L{AdoptedEndpoint} of C{--option}'s inherited socket;
    otherwise (or for a socket the parent did not pass) C{None}.
    """
    fd = inheritedSockets().get(option)
    if fd is None:
        return None
    return AdoptedEndpoint(
        reactor, fd, endpoints.serverFromString(reactor, description), label
    )


def becomeWorker(reactor) -> None:
    """
    Stop when the parent says so: SIGINT is ignored (Ctrl-C in a terminal
    reaches every process of the group; the parent then stops its workers
    with SIGTERM, and a second signal would find the worker stopping
    already), and a worker gets SIGTERM when its parent dies (even of
    SIGKILL), so no worker is left serving alone (Linux only).
    """
    # After twistd's own handlers are installed.
    reactor.callWhenRunning(signal.signal, signal.SIGINT, signal.SIG_IGN)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    parent = os.environ.get(PARENT)
    if parent and os.getppid() != int(parent):
        # The parent died before the signal was asked for.
        os.kill(os.getpid(), signal.SIGTERM)


class WorkerProcess(protocol.ProcessProtocol):
    """One worker, as its parent sees it: its log lines and its end."""

    def __init__(self, supervisor: "WorkerSupervisor", number: int, started: float) -> None:
        self.supervisor = supervisor
        self.number = number
        self.started = started
        self.serving: set[str] = set()
        #: Its pid, kept after it ends (for the log).
        self.pid: int | None = None
        self.ended: defer.Deferred = defer.Deferred()
        self._partial = {1: b"", 2: b""}

    def childDataReceived(self, fd: int, data: bytes) -> None:
        lines = (self._partial.get(fd, b"") + data).split(b"\n")
        self._partial[fd] = lines.pop()
        for line in lines:
            if line.strip():
                self.supervisor.workerLogged(self, line, fd)

    def processEnded(self, reason) -> None:
        for fd, rest in self._partial.items():
            if rest.strip():
                self.supervisor.workerLogged(self, rest, fd)
        self._partial = {}
        self.supervisor.workerEnded(self, reason.value)
        self.ended.callback(None)


def describeEnd(value) -> str:
    """C{exit status 1}, C{signal 9}, from a process's end."""
    if isinstance(value, error.ProcessDone):
        return "exit status 0"
    signal_ = getattr(value, "signal", None)
    if signal_ is not None:
        return f"signal {signal_}"
    return f"exit status {getattr(value, 'exitCode', '?')}"


class WorkerSupervisor(service.Service):
    """
    The parent of C{--workers N}: opens the listeners' sockets, runs N
    workers that serve them, passes on their logs, restarts those that die,
    and stops them all when it stops.

    @ivar workers: the live workers, by number.
    """

    @staticmethod
    def exitWith(status: int) -> None:
        """Make twistd exit with C{status} once it has stopped."""
        atexit.register(_exitWithStatus, status)

    def __init__(self, config, reactor, listenerOptions, argv: list[str]) -> None:
        self.config = config
        self.reactor = reactor
        self.count = config["workers"]
        self.listenerOptions = [o for o in listenerOptions if config[o] != "none"]
        self.argv = argv
        self.sockets: dict[str, socket.socket] = {}
        self.workers: dict[int, WorkerProcess] = {}
        self.failures: dict[int, int] = {}
        self.restarts: dict[int, object] = {}
        self.listening: set[str] = set()
        self.ready = False
        self.stopping = False
        self.gaveUp = False

    def privilegedStartService(self) -> None:
        # Bound here, before twistd drops its privileges, as a listener is.
        for option in self.listenerOptions:
            try:
                self.sockets[option] = openListeningSocket(
                    self.reactor, option, self.config[option]
                )
            except ListenFailed:
                self._closeSockets()
                raise
        service.Service.privilegedStartService(self)

    def startService(self) -> None:
        service.Service.startService(self)
        log.info(
            "chatd: starting {count} workers", count=self.count, event="workers-start"
        )
        if not self.sockets:
            # Nothing to serve, so no line to wait for.
            self.ready = True
            for number in range(1, self.count + 1):
                self.spawn(number)
            return
        # One at a time until the first serves: the first creates and
        # migrates the database alone, and a worker that cannot start
        # stops the parent before others are started.
        self.spawn(1)

    # The workers

    def workerArgv(self, number: int) -> list[str]:
        args = list(self.argv)
        if "node-id" in self.config:
            # Without --node-id, the parent's HOSTNAME-PID: a bare "-wK"
            # would be the same id on every machine, and a node that starts
            # under another's id takes its names over.
            from chatd.cluster.redis import defaultNodeId

            base = self.config["node-id"] or defaultNodeId()
            args += ["--node-id", f"{base}-w{number}"]
        return [
            sys.executable,
            "-c",
            "from twisted.scripts.twistd import run; run()",
            "--nodaemon",
            "--pidfile=",
            "--logger",
            "chatd.tap.jsonLogObserver",
            "chatd",
            *args,
        ]

    def spawn(self, number: int) -> None:
        self.restarts.pop(number, None)
        if self.stopping:
            return
        childFDs = {0: "w", 1: "r", 2: "r"}
        passed = []
        for index, (option, s) in enumerate(sorted(self.sockets.items())):
            childFDs[3 + index] = s.fileno()
            passed.append(f"{option}={3 + index}")
        env = dict(os.environ)
        env.update({WORKER: str(number), SOCKETS: ",".join(passed), PARENT: str(os.getpid())})
        worker = WorkerProcess(self, number, self.reactor.seconds())
        self.workers[number] = worker
        transport = self.reactor.spawnProcess(
            worker, sys.executable, self.workerArgv(number), env=env, childFDs=childFDs
        )
        worker.pid = transport.pid
        log.info(
            "chatd: worker {worker} started (pid {pid})",
            worker=number,
            pid=worker.pid,
            event="worker-started",
        )

    def workerLogged(self, worker: WorkerProcess, line: bytes, fd: int) -> None:
        """Pass a line of a worker's log on, as an event of this log."""
        try:
            event = eventFromJSON(line.decode("utf-8"))
            if not isinstance(event, dict) or "log_format" not in event:
                raise ValueError(line)
        except ValueError:
            # Not a log event: what Python wrote before logging began (a
            # usage error, a traceback).
            log.emit(
                LogLevel.warn if fd == 2 else LogLevel.info,
                "worker {worker}: {line}",
                worker=worker.number,
                line=line.decode("utf-8", "replace"),
            )
            return
        text = event.get("log_text", "")
        # Formatted again here from the worker's text: its fields came
        # through JSON, some only as placeholders.
        for key in ("log_flattened", "log_logger", "log_source"):
            event.pop(key, None)
        event["worker"] = worker.number
        event["log_format"] = "worker {worker}: {log_text}"
        event["log_text"] = text
        globalLogPublisher(event)
        if event.get("event") == "worker-serving":
            self.workerServing(worker, event.get("label"), event.get("address"))

    def workerServing(self, worker: WorkerProcess, label, address) -> None:
        worker.serving.add(label)
        if label not in self.listening:
            self.listening.add(label)
            log.info(LISTENING_FORMAT, label=label, address=address)
        if not self.ready and len(worker.serving) >= len(self.sockets):
            self.ready = True
            for number in range(2, self.count + 1):
                self.spawn(number)

    def workerEnded(self, worker: WorkerProcess, value) -> None:
        if self.workers.get(worker.number) is worker:
            del self.workers[worker.number]
        how = describeEnd(value)
        if self.stopping:
            log.info(
                "chatd: worker {worker} stopped ({how})",
                worker=worker.number,
                how=how,
                event="worker-stopped",
            )
            return
        if not self.ready:
            log.critical(
                "chatd: worker {worker} could not start ({how}); stopping",
                worker=worker.number,
                how=how,
                event="worker-failed",
            )
            self.giveUp()
            return
        ran = self.reactor.seconds() - worker.started
        failures = 1 if ran >= STABLE_AFTER else self.failures.get(worker.number, 0) + 1
        self.failures[worker.number] = failures
        if failures > MAX_RESTARTS:
            log.critical(
                "chatd: worker {worker} ended ({how}) {failures} times in a row"
                " within {stable}s of its start; stopping",
                worker=worker.number,
                how=how,
                failures=failures,
                stable=STABLE_AFTER,
                event="worker-failed",
            )
            self.giveUp()
            return
        delay = min(RESTART_DELAY * 2 ** (failures - 1), MAX_RESTART_DELAY)
        log.warn(
            "chatd: worker {worker} (pid {pid}) ended ({how}); restarting it in {delay}s",
            worker=worker.number,
            pid=worker.pid,
            how=how,
            delay=delay,
            event="worker-restart",
        )
        self.restarts[worker.number] = self.reactor.callLater(
            delay, self.spawn, worker.number
        )

    def giveUp(self) -> None:
        """Stop every worker and exit with status 1."""
        if self.gaveUp:
            return
        self.gaveUp = True
        self.exitWith(1)
        if self.reactor.running:
            self.reactor.stop()
        else:
            self.reactor.callWhenRunning(self.reactor.stop)

    # Stopping

    def stopService(self) -> defer.Deferred:
        """
        SIGTERM to every worker (each says goodbye to its clients within
        C{--shutdown-grace}), SIGKILL to those still running after
        L{STOP_MARGIN} more seconds; then close the sockets.
        """
        service.Service.stopService(self)
        self.stopping = True
        for call in self.restarts.values():
            if call.active():
                call.cancel()
        self.restarts.clear()
        workers = list(self.workers.values())
        for worker in workers:
            _signal(worker, "TERM")
        killer = self.reactor.callLater(
            self.config["shutdown-grace"] + STOP_MARGIN, self._killRemaining
        )

        def stopped(_):
            if killer.active():
                killer.cancel()
            self._closeSockets()
            log.info("chatd: every worker stopped", event="workers-stopped")

        return defer.gatherResults([w.ended for w in workers]).addCallback(stopped)

    def _killRemaining(self) -> None:
        for worker in list(self.workers.values()):
            log.warn(
                "chatd: worker {worker} did not stop in time; killed",
                worker=worker.number,
            )
            _signal(worker, "KILL")

    def _closeSockets(self) -> None:
        for s in self.sockets.values():
            s.close()
        self.sockets.clear()


def _signal(worker: WorkerProcess, name: str) -> None:
    try:
        worker.transport.signalProcess(name)
    except error.ProcessExitedAlready:
        pass


def _exitWithStatus(status: int) -> None:
    # twistd has no way to set its exit status; this runs after it has
    # finished (the reactor stopped, the log written).
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(status)
