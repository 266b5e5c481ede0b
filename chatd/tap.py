"""
C{twistd chatd}: the options and the service tree.

C{Options} holds the common options (limits, TLS, logging, the database, the
metrics listener, the graces, C{--config}) and adds each front's own
(chatd/fronts.py); C{makeService} builds one L{ChatdService}, whose presence
service every front's listeners share. Every listener takes a Twisted
endpoint string (so C{ssl:}, C{unix:} and systemd sockets work as well as
C{tcp:}), and the word C{none} turns it off. docs/running.md documents every
option.
"""

from __future__ import annotations

import resource
import sys

from twisted.internet import endpoints
from twisted.logger import Logger
from twisted.python import usage

from chatd import __version__, cluster, limits as L
from chatd.config import ConfiguredOptions, versionText
from chatd.fronts import (
    DISABLED,
    NO_LIMIT,
    addListener,
    limit as _limit,
    loadFronts,
    positiveFloat as _positiveFloat,
    positiveInt as _positiveInt,
    rate as _rate,
)
from chatd.limits import ConnectionLimiter, Limits
from chatd.listener import DEFAULT_SHUTDOWN_GRACE
from chatd.exporter import makeMetricsSite
from chatd.metrics import ChatdMetrics
from chatd.service import ChatdService
from chatd.web import DEFAULT_REQUEST_TIMEOUT
from chatd import workers as _workers

__all__ = ["DISABLED", "NO_LIMIT", "Options", "makeService", "jsonLogObserver"]

#: Every front (chatd/fronts.py), in the order they are built.
FRONTS = loadFronts()

#: File descriptors kept beyond C{--max-conns} for the listeners, the
#: database and the logs.
SPARE_FILES = 64

log = Logger()


class Options(ConfiguredOptions):
    """The command line of C{twistd chatd} (and of its C{--config} file)."""

    synopsis = "[options]"
    longdesc = (
        "chatd: one chat with several wire formats. Each listener takes a "
        "Twisted endpoint string (tcp:PORT, tcp:PORT:interface=ADDR, "
        "ssl:PORT:privateKey=KEY:certKey=CERT, ...) or 'none' to turn it off."
    )

    optParameters = [
        # What one client may cost (docs/operations.md); 0 is no limit.
        [
            "max-conns",
            None,
            L.DEFAULT_MAX_CONNECTIONS,
            "Open connections in total, every listener counted; 0 for no limit.",
            _limit,
        ],
        [
            "max-conns-per-ip",
            None,
            L.DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
            "Open connections from one IP address; 0 for no limit.",
            _limit,
        ],
        [
            "rate",
            None,
            L.DEFAULT_RATE,
            "Messages a second one user may send, on average; 0 for no limit.",
            _rate,
        ],
        [
            "rate-burst",
            None,
            L.DEFAULT_BURST,
            "Messages one user may send at once after a quiet spell.",
            _rate,
        ],
        [
            "max-sendq",
            None,
            L.DEFAULT_MAX_SEND_QUEUE,
            "Bytes that may wait for a protobuf or MSGR client that does not "
            "read before it is disconnected; 0 for no limit.",
            _limit,
        ],
        [
            "login-timeout",
            None,
            L.DEFAULT_LOGIN_TIMEOUT,
            "Seconds a new connection has to log in (MSRP: send its name; "
            "MSGR socket: #HOLA); also how long an idle HTTP connection "
            "stays open. 0 for no limit.",
            _rate,
        ],
        [
            "http-request-timeout",
            None,
            DEFAULT_REQUEST_TIMEOUT,
            "Seconds an HTTP connection (--http, --metrics) has to send a "
            "whole request, from when it opens or its last answer was sent; "
            "bytes trickling in do not extend it. 0 for no limit.",
            _rate,
        ],
        [
            "keepalive",
            None,
            L.DEFAULT_KEEPALIVE,
            "Seconds of silence after which TCP keepalive probes a peer, so "
            "dead peers are found and their names freed; 0 turns it off.",
            _limit,
        ],
        [
            "file-idle-timeout",
            None,
            L.DEFAULT_FILE_IDLE_TIMEOUT,
            "Seconds a file on its way to a user may make no progress (MSRP "
            "content not arriving or not read; an MSGR file not read by its "
            "receiver) before it is abandoned and both sides are told. 0 "
            "for no limit.",
            _rate,
        ],
        [
            "close-grace",
            None,
            L.DEFAULT_CLOSE_GRACE,
            "Seconds a connection the server closes (a limit, a timeout) has "
            "to take its last bytes before it is cut off.",
            _positiveFloat,
        ],
        [
            "shutdown-grace",
            None,
            DEFAULT_SHUTDOWN_GRACE,
            "Seconds a stopping server gives its clients to receive their "
            "last bytes before it cuts them off.",
            _positiveFloat,
        ],
        [
            "workers",
            None,
            1,
            "Processes serving the same ports: a parent opens them and runs "
            "this many workers, restarting one that dies. More than 1 needs "
            "--cluster.",
            _positiveInt,
        ],
        [
            "metrics",
            None,
            DISABLED,
            "Endpoint of a listener of its own for GET /metrics, GET /healthz "
            "and GET /online, or 'none'. Given, /metrics is served there only (the "
            "--http listener keeps /healthz). Not counted against the "
            "connection limits: bind it to a private address.",
        ],
        [
            "db",
            None,
            "chatd.sqlite3",
            "SQLite file of the MSGR accounts (created on first run), a "
            "postgresql://USER@HOST:PORT/DATABASE URL (a cluster's shared "
            "accounts), or 'none' for no accounts (then --http and --msgr must "
            "be 'none').",
        ],
    ] + cluster.options() + [option for front in FRONTS for option in front.options()]

    #: The options that name a listener's endpoint: the fronts', then the
    #: metrics listener's.
    listenerOptions = tuple(
        option for front in FRONTS for option in front.endpointOptions
    ) + ("metrics",)

    def parseOptions(self, options=None) -> None:
        # Kept as given: the workers of --workers run with the same ones.
        self.arguments = list(sys.argv[1:] if options is None else options)
        super().parseOptions(options)

    def postOptions(self) -> None:
        # A misspelled endpoint option or a missing key file is a usage
        # error that names the option, not a traceback at start-up.
        from twisted.internet import reactor

        for option in self.listenerOptions:
            if self[option] == DISABLED:
                continue
            try:
                endpoints.serverFromString(reactor, self[option])
            except Exception as e:
                raise usage.UsageError(f"--{option} {self[option]}: {e}")
        cluster.check(self)
        for front in FRONTS:
            front.check(self)
        _workers.check(self, self.listenerOptions)


def _limits(config: Options) -> Limits:
    return Limits(
        maxConnections=config["max-conns"],
        maxConnectionsPerAddress=config["max-conns-per-ip"],
        rate=config["rate"],
        burst=config["rate-burst"],
        maxSendQueue=config["max-sendq"],
        loginTimeout=config["login-timeout"],
        keepAlive=config["keepalive"],
        closeGrace=config["close-grace"],
        fileIdleTimeout=config["file-idle-timeout"],
    )


def _twistdOwner(config: Options) -> tuple[int, int] | None:
    """
    The uid and gid twistd switches to after starting the services
    (C{twistd --uid/--gid}, options of twistd's own, before C{chatd}), or
    C{None}. C{-1} stands for one that does not change.
    """
    twistd = getattr(config, "parent", None)
    if twistd is None:
        return None
    uid, gid = twistd.get("uid"), twistd.get("gid")
    if uid is None and gid is None:
        return None
    if gid is None:
        # What twistd does: the uid's own group.
        import pwd

        gid = pwd.getpwuid(uid).pw_gid
    return (-1 if uid is None else uid), gid


def _returnFreedMemory() -> None:
    """
    Make glibc give large freed blocks back to the system at once.

    Each password check allocates 16 MiB for scrypt. glibc serves such
    blocks with mmap, but after the first one is freed it raises its mmap
    threshold above that size, and later ones come from the heap, which
    keeps them after they are freed: a burst of logins left chatd 177 MiB
    larger for good. A fixed threshold (which also stops the raising) keeps
    them mmapped and returned.
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        libc.mallopt(M_MMAP_THRESHOLD, 128 * 1024)
    except (OSError, AttributeError):
        pass  # not glibc: nothing to tune


#: glibc's mallopt parameter for the mmap threshold.
M_MMAP_THRESHOLD = -3


def _ensureFileLimit(maxConnections: int) -> None:
    """
    Raise the soft limit on open files to what C{--max-conns} needs, as far
    as the hard limit allows; say so when it cannot.
    """
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return
    wanted = maxConnections + SPARE_FILES if maxConnections else hard
    if soft == resource.RLIM_INFINITY or (soft >= wanted and maxConnections):
        return
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (OSError, ValueError):
            pass
    if maxConnections and soft < wanted:
        log.warn(
            "chatd: --max-conns {max} needs {wanted} open files but this "
            "process may open only {soft}; raise the limit (ulimit -n, "
            "LimitNOFILE=) or lower --max-conns",
            max=maxConnections,
            wanted=wanted,
            soft=soft,
        )


def makeService(config: Options, reactor=None):
    """
    Build chatd's service tree: one presence service shared by the
    listeners of every front (chatd/fronts.py), and the metrics listener.
    With C{--workers N} (N > 1), the parent's L{_workers.WorkerSupervisor}
    instead: each of its workers builds the tree.
    """
    if reactor is None:
        from twisted.internet import reactor
    log.info(
        "{versions} starting", versions=versionText(), version=__version__, event="start"
    )
    if _workers.supervises(config):
        # The parent of --workers: it opens the ports and runs the workers,
        # each of which builds the tree below (chatd/workers.py).
        return _workers.WorkerSupervisor(
            config, reactor, Options.listenerOptions, config.arguments
        )
    if _workers.workerNumber() is not None:
        _workers.becomeWorker(reactor)
    # What operators see (GET /metrics): one set of counts per service tree,
    # on a registry of its own.
    metrics = ChatdMetrics()
    # The accounts first: their names are protected in the presence service.
    # A front opens them synchronously, before the reactor runs
    # (docs/msgr.md, "Accounts").
    owner = _twistdOwner(config)
    accounts = None
    for front in FRONTS:
        accounts = front.openAccounts(config, reactor, owner) or accounts
    # In memory, or a node of a cluster (--cluster): chatd/cluster/.
    presence, clusterConnection = cluster.makePresence(
        config,
        reactor,
        accounts.isProtectedName if accounts is not None else None,
        metrics,
    )
    # One limiter for every listener: the connection limits hold across all
    # protocols at once.
    limits = _limits(config)
    limiter = ConnectionLimiter(limits.maxConnections, limits.maxConnectionsPerAddress)
    top = ChatdService(
        config, presence, metrics, limits, limiter, accounts, clusterConnection
    )
    _ensureFileLimit(limits.maxConnections)
    _returnFreedMemory()
    for front in FRONTS:
        front.build(config, top, reactor)
    if config["metrics"] != DISABLED:
        site = makeMetricsSite(metrics, reactor)
        if limits.loginTimeout:
            site.timeOut = limits.loginTimeout  # idle scrapers, as on --http
        site.requestTimeout = config["http-request-timeout"]
        addListener(top, reactor, "metrics", "metrics", site)
    return top


def jsonLogObserver():
    """
    A log observer writing one JSON object a line to standard output, for
    C{twistd --logger chatd.tap.jsonLogObserver} (docs/observability.md):
    twisted.logger's own JSON (readable back with
    C{twisted.logger.eventsFromJSONLogFile}) plus C{log_text}, the line as
    text, and for an error C{log_traceback}, its traceback as text.
    """
    from twisted.logger import ILogObserver, formatEvent, jsonFileLogObserver
    from zope.interface import provider

    observer = jsonFileLogObserver(sys.stdout, recordSeparator="")

    @provider(ILogObserver)
    def observe(event: dict) -> None:
        extra = {"log_text": formatEvent(event)}
        failure = event.get("log_failure")
        if failure is not None:
            try:
                extra["log_traceback"] = failure.getTraceback()
            except Exception:
                extra["log_traceback"] = repr(failure)
        observer({**event, **extra})

    return observe
