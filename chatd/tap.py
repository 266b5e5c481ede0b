"""
C{twistd chatd}: the options and the service tree.

C{makeService} builds one presence service and hands it to one listener per
wire format; every listener takes a Twisted endpoint string (so C{ssl:},
C{unix:} and systemd sockets work as well as C{tcp:}), and the word C{none}
turns it off. docs/running.md documents every option.
"""

from __future__ import annotations

import resource
import sys

from twisted.application import service
from twisted.internet import endpoints
from twisted.logger import Logger
from twisted.python import usage

from chatd import __version__, limits as L
from chatd.config import ConfiguredOptions, versionText
from chatd.limits import ConnectionLimiter, Limits
from chatd.listener import DEFAULT_SHUTDOWN_GRACE, ListenerService
from chatd.exporter import makeMetricsSite
from chatd.metrics import ChatdMetrics
from chatd.presence import InMemoryPresenceService
from chatd.protobuf.framing import DEFAULT_MAX_FRAME
from chatd.protobuf.protocol import DEFAULT_RAW_WAIT, FRAMINGS, ProtobufChatFactory
from chatd.msrp.protocol import (
    DEFAULT_GREET_AFTER,
    DEFAULT_MAX_FILE,
    DEFAULT_MAX_QUEUED,
    MsrpFactory,
)
from chatd.msgr import lockout as msgr_lockout
from chatd.msgr.protocol import DEFAULT_MAX_FILE as MSGR_MAX_FILE
from chatd.msgr.protocol import DEFAULT_MAX_LINE as MSGR_MAX_LINE
from chatd.msgr.protocol import base64Length
from chatd.msgr.tokens import DEFAULT_TOKEN_IDLE as MSGR_TOKEN_IDLE
from chatd.sessions import CountedHTTPFactory
from chatd.web import DEFAULT_REQUEST_TIMEOUT
from chatd.tls import tlsEndpoint

DISABLED = "none"

#: What a size or count of C{0} ("no limit") becomes.
NO_LIMIT = sys.maxsize

#: File descriptors kept beyond C{--max-conns} for the listeners, the
#: database and the logs.
SPARE_FILES = 64

log = Logger()


def _positiveInt(value: str) -> int:
    number = int(value)
    if number <= 0:
        raise ValueError("must be a positive whole number")
    return number


def _limit(value: str) -> int:
    number = int(value)
    if number < 0:
        raise ValueError("must be a whole number, 0 for no limit")
    return number


def _rate(value: str) -> float:
    number = float(value)
    if not number >= 0:
        raise ValueError("must be a number, 0 for no limit")
    return number


def _positiveFloat(value: str) -> float:
    number = float(value)
    if not number > 0:
        raise ValueError("must be a positive number")
    return number


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
            "metrics",
            None,
            DISABLED,
            "Endpoint of a listener of its own for GET /metrics, GET /healthz "
            "and GET /online, or 'none'. Given, /metrics is served there only (the "
            "--http listener keeps /healthz). Not counted against the "
            "connection limits: bind it to a private address.",
        ],
        # MSGR UQ (seed 001); docs/msgr.md.
        [
            "http",
            None,
            "tcp:8000",
            "Endpoint of the MSGR UQ HTTP API (login, accounts), or 'none'.",
        ],
        ["msgr", None, "tcp:1234", "Endpoint of the MSGR UQ chat socket, or 'none'."],
        [
            "db",
            None,
            "chatd.sqlite3",
            "SQLite file of the MSGR accounts (created on first run), or 'none' "
            "for no accounts (then --http and --msgr must be 'none').",
        ],
        [
            "msgr-token-idle",
            None,
            MSGR_TOKEN_IDLE,
            "Seconds an MSGR login token lives unused (a bound chat socket "
            "keeps it alive).",
            _positiveFloat,
        ],
        [
            "msgr-max-line",
            None,
            MSGR_MAX_LINE,
            "Longest MSGR chat socket line in bytes; a longer one is skipped "
            "and answered with an error. 0 for no limit.",
            _limit,
        ],
        [
            "msgr-max-file",
            None,
            MSGR_MAX_FILE,
            "Largest file in an MSGR #ARCHIVO/#IMG line, in decoded bytes; 0 "
            "for no limit (then --msgr-max-line 0 too).",
            _limit,
        ],
        [
            "msgr-lockout-failures",
            None,
            msgr_lockout.DEFAULT_ACCOUNT_FAILURES,
            "Failed MSGR logins of one account, within the window, that lock it.",
            _positiveInt,
        ],
        [
            "msgr-lockout-address-failures",
            None,
            msgr_lockout.DEFAULT_ADDRESS_FAILURES,
            "Failed MSGR logins from one address, within the window, that lock it.",
            _positiveInt,
        ],
        [
            "msgr-lockout-window",
            None,
            msgr_lockout.DEFAULT_WINDOW,
            "Seconds a failed MSGR login counts for.",
            _positiveFloat,
        ],
        [
            "msgr-lockout-time",
            None,
            msgr_lockout.DEFAULT_LOCK_TIME,
            "Seconds an MSGR lockout lasts.",
            _positiveFloat,
        ],
        [
            "msgr-register-per-ip",
            None,
            msgr_lockout.DEFAULT_REGISTRATIONS,
            "MSGR accounts one address may register within the registration "
            "window; 0 for no limit.",
            _limit,
        ],
        [
            "msgr-register-window",
            None,
            msgr_lockout.DEFAULT_REGISTRATION_WINDOW,
            "Seconds an MSGR registration counts for.",
            _positiveFloat,
        ],
        [
            "protobuf",
            None,
            "tcp:5000",
            "Endpoint of the protobuf chat (seed 000), or 'none'.",
        ],
        [
            "protobuf-framing",
            None,
            "raw",
            "Framing of the protobuf chat: 'raw' (one message per write, as "
            "the existing clients do) or 'delimited' (varint length prefix).",
        ],
        [
            "protobuf-max-frame",
            None,
            DEFAULT_MAX_FRAME,
            "Largest protobuf request in bytes; a larger one closes the "
            "connection after an error response. 0 for no limit.",
            _limit,
        ],
        [
            "protobuf-raw-wait",
            None,
            DEFAULT_RAW_WAIT,
            "Seconds a raw request that may still grow is waited for.",
            _positiveFloat,
        ],
        [
            "msrp",
            None,
            "tcp:8080",
            "Endpoint of MSRP (seed 004), binary clients and people on "
            "nc/telnet, or 'none'.",
        ],
        [
            "msrp-max-file",
            None,
            DEFAULT_MAX_FILE,
            "Largest file an MSRP client may announce, in bytes; a larger "
            "announcement gets an ERROR and the connection is closed. 0 for "
            "no limit.",
            _limit,
        ],
        [
            "msrp-max-queue",
            None,
            DEFAULT_MAX_QUEUED,
            "Bytes that may wait for one MSRP user (behind a file streaming "
            "to them, or while they read slowly) before messages to them are "
            "refused. 0 for no limit.",
            _limit,
        ],
        [
            "msrp-greeting",
            None,
            DEFAULT_GREET_AFTER,
            "Seconds of silence after which a new MSRP connection (a person "
            "on nc/telnet, most likely) is told what to type; 0 for never.",
            _rate,
        ],
    ]

    #: The options that name a listener's endpoint.
    listenerOptions = ("protobuf", "msrp", "http", "msgr", "metrics")

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
        if self["db"] == DISABLED and DISABLED not in (self["http"], self["msgr"]):
            raise usage.UsageError("--db none needs --http none and --msgr none")
        # A file of --msgr-max-file bytes must fit in one line, in base64.
        maxLine, maxFile = self["msgr-max-line"], self["msgr-max-file"]
        if maxLine and (not maxFile or maxLine < base64Length(maxFile) + 1024):
            raise usage.UsageError(
                "--msgr-max-line must exceed the base64 size of --msgr-max-file"
                " by at least 1024 bytes"
            )
        if self["protobuf-framing"] not in FRAMINGS:
            raise usage.UsageError(
                f"--protobuf-framing must be one of {', '.join(FRAMINGS)}"
            )


def _size(config: Options, option: str) -> int:
    """A size or count option, with 0 ("no limit") as L{NO_LIMIT}."""
    return config[option] or NO_LIMIT


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


def _listener(
    reactor,
    label: str,
    description: str,
    factory,
    grace: float,
    metrics: ChatdMetrics | None = None,
) -> ListenerService:
    # An ssl: endpoint gets chatd's TLS layer (chatd/tls.py: ALPN, failed
    # handshakes logged, half-closes passed on).
    endpoint = tlsEndpoint(
        reactor, endpoints.serverFromString(reactor, description), label
    )
    listener = ListenerService(label, endpoint, factory, reactor, grace)
    listener.secure = description.split(":", 1)[0].lower() == "ssl"
    option = "http" if label == "msgr-http" else label
    listener.configuredAs = f"--{option} {description}"
    listener.setName(label)
    if metrics is not None:
        metrics.addListener(label, factory)
    return listener


def _addMsgr(
    top,
    config: Options,
    presence,
    store,
    reactor,
    limits: Limits,
    limiter,
    metrics: ChatdMetrics,
) -> None:
    from chatd.msgr import wiring

    grace = config["shutdown-grace"]
    msgr = wiring.makeMsgrService(
        store,
        presence,
        reactor,
        tokenIdle=config["msgr-token-idle"],
        lockoutAccountFailures=config["msgr-lockout-failures"],
        lockoutAddressFailures=config["msgr-lockout-address-failures"],
        lockoutWindow=config["msgr-lockout-window"],
        lockoutTime=config["msgr-lockout-time"],
        metrics=metrics,
        registerPerAddress=config["msgr-register-per-ip"],
        registerWindow=config["msgr-register-window"],
    )
    msgr.setName("msgr-accounts")
    msgr.setServiceParent(top)  # stopping it closes the database
    top.msgr = msgr
    if config["http"] != DISABLED:
        # With a private --metrics listener, the public one keeps the counts
        # to itself (how many are online is nobody else's business).
        site = wiring.makeHttpFactory(
            msgr, reactor, metrics, serveMetrics=config["metrics"] == DISABLED
        )
        if limits.loginTimeout:
            site.timeOut = limits.loginTimeout
        site.requestTimeout = config["http-request-timeout"]
        counted = CountedHTTPFactory(site, reactor, limits, limiter, metrics)
        _listener(
            reactor, "msgr-http", config["http"], counted, grace, metrics
        ).setServiceParent(top)
    if config["msgr"] != DISABLED:
        factory = wiring.makeChatFactory(
            msgr,
            _size(config, "msgr-max-line"),
            _size(config, "msgr-max-file"),
            limits,
            limiter,
            metrics,
        )
        _listener(
            reactor, "msgr", config["msgr"], factory, grace, metrics
        ).setServiceParent(top)


def makeService(config: Options, reactor=None) -> service.MultiService:
    """
    Build chatd's service tree: one presence service shared by a listening
    service per wire format.
    """
    if reactor is None:
        from twisted.internet import reactor
    log.info(
        "{versions} starting", versions=versionText(), version=__version__, event="start"
    )
    # What operators see (GET /metrics): one set of counts per service tree,
    # on a registry of its own.
    metrics = ChatdMetrics()
    # MSGR accounts first: their names are protected in the presence service.
    # openAccounts prepares the database and loads the names synchronously,
    # before the reactor runs (docs/msgr.md, "Accounts").
    accountStore = None
    if config["db"] != DISABLED:
        from chatd.msgr.wiring import openAccounts

        accountStore = openAccounts(config["db"], reactor, owner=_twistdOwner(config))
        presence = InMemoryPresenceService(accountStore.isProtectedName, metrics)
    else:
        presence = InMemoryPresenceService(metrics=metrics)
    top = service.MultiService()
    top.presence = presence
    top.metrics = metrics
    grace = config["shutdown-grace"]
    # One limiter for every listener: the connection limits hold across all
    # protocols at once.
    limits = _limits(config)
    limiter = ConnectionLimiter(limits.maxConnections, limits.maxConnectionsPerAddress)
    top.limits, top.limiter = limits, limiter
    _ensureFileLimit(limits.maxConnections)
    _returnFreedMemory()
    if accountStore is not None:
        _addMsgr(
            top, config, presence, accountStore, reactor, limits, limiter, metrics
        )
    if config["protobuf"] != DISABLED:
        factory = ProtobufChatFactory(
            presence,
            reactor,
            framing=config["protobuf-framing"],
            maxFrameSize=_size(config, "protobuf-max-frame"),
            rawWait=config["protobuf-raw-wait"],
            limits=limits,
            limiter=limiter,
            metrics=metrics,
        )
        _listener(
            reactor, "protobuf", config["protobuf"], factory, grace, metrics
        ).setServiceParent(top)
    if config["msrp"] != DISABLED:
        factory = MsrpFactory(
            presence,
            reactor,
            maxFileSize=_size(config, "msrp-max-file"),
            maxQueued=_size(config, "msrp-max-queue"),
            limits=limits,
            limiter=limiter,
            metrics=metrics,
            greetAfter=config["msrp-greeting"],
        )
        _listener(
            reactor, "msrp", config["msrp"], factory, grace, metrics
        ).setServiceParent(top)
    if config["metrics"] != DISABLED:
        site = makeMetricsSite(metrics, reactor)
        if limits.loginTimeout:
            site.timeOut = limits.loginTimeout  # idle scrapers, as on --http
        site.requestTimeout = config["http-request-timeout"]
        _listener(
            reactor, "metrics", config["metrics"], site, grace
        ).setServiceParent(top)
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
