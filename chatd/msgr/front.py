"""
MSGR UQ's part of C{twistd chatd} (seed 001): its options, the account
store, and its two listeners, the chat socket and the HTTP API, which share
one L{MsgrService} (docs/msgr.md).

The account store comes first: its names are protected in the presence
service. The database is prepared and the registered names are loaded
synchronously by L{openAccounts}, from C{makeService}, before the reactor
runs and so before any listener accepts a connection; after that every
database access goes through the store's database thread.
"""

from __future__ import annotations

import functools
import os

from twisted.logger import Logger
from twisted.python import usage
from zope.interface import implementer

from chatd.fronts import (
    DISABLED,
    IFront,
    addListener,
    limit,
    positiveFloat,
    positiveInt,
    size,
)
from chatd.msgr import lockout as msgr_lockout
from chatd.msgr.accounts import DEFAULT_SCRYPT, AccountStore
from chatd.msgr.cluster import (
    AccountsDatabaseCheck,
    RedisLoginLockout,
    RedisRegistrationLimit,
    RedisTokenRegistry,
)
from chatd.msgr.databases import databaseErrors, isPostgres, redacted
from chatd.msgr.http import makeSite
from chatd.msgr.lockout import LoginLockout, RegistrationLimit
from chatd.msgr.protocol import DEFAULT_MAX_FILE, DEFAULT_MAX_LINE, base64Length
from chatd.msgr.protocol import MsgrChatFactory
from chatd.msgr.service import MsgrService
from chatd.msgr.tokens import DEFAULT_TOKEN_IDLE, TokenRegistry
from chatd.msgr.uqjava import DIALECTS, SEED, UQ_JAVA, UqJavaChatFactory, UqJavaLogins
from chatd.sessions import CountedHTTPFactory

log = Logger()


def dialect(value: str) -> str:
    """The value of C{--msgr-dialect}."""
    if value not in DIALECTS:
        raise ValueError(f"not one of {', '.join(DIALECTS)}")
    return value


dialect.coerceDoc = "One of seed, uq-java."  # type: ignore[attr-defined]


#: What SQLite may create next to the database file.
_SQLITE_SUFFIXES = ("", "-wal", "-shm", "-journal")


def openAccounts(
    path: str,
    reactor,
    scrypt=DEFAULT_SCRYPT,
    owner: tuple[int, int] | None = None,
) -> AccountStore:
    """
    Create or migrate the database at C{path} (a SQLite file or a
    C{postgresql://} URL) and open its store.

    @param owner: the uid and gid the server will run as once twistd drops
        its privileges (C{--uid}/C{--gid}), or C{None}. The files this call
        creates are given to them: made while chatd still runs as root,
        they would otherwise belong to root, and the server could not
        write its own database after the switch.
    """
    if isPostgres(path):
        # No file to give to --uid; a server that cannot be reached or
        # refuses is one line at start-up, not a traceback.
        try:
            return AccountStore.open(path, reactor, scrypt)
        except databaseErrors() as e:
            message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise SystemExit(
                f"chatd: --db {redacted(path)}: cannot open the accounts database: {message}"
            ) from None
    files = [path + suffix for suffix in _SQLITE_SUFFIXES]
    existing = {name for name in files if os.path.lexists(name)}
    store = AccountStore.open(path, reactor, scrypt)
    if owner is not None and os.geteuid() == 0:
        uid, gid = owner
        for name in files:
            if name not in existing and os.path.exists(name):
                os.chown(name, uid, gid)
                log.info(
                    "{path} created as root, given to uid {uid} gid {gid}"
                    " (twistd --uid/--gid)",
                    path=name,
                    uid=uid,
                    gid=gid,
                )
    return store


def _inMemory(config, reactor):
    """The tokens, lockout and registration limit of one process."""
    return (
        TokenRegistry(reactor, config["msgr-token-idle"]),
        LoginLockout(
            reactor,
            accountFailures=config["msgr-lockout-failures"],
            addressFailures=config["msgr-lockout-address-failures"],
            window=config["msgr-lockout-window"],
            lockTime=config["msgr-lockout-time"],
        ),
        RegistrationLimit(
            reactor, config["msgr-register-per-ip"], config["msgr-register-window"]
        ),
    )


def _shared(config, reactor, cluster):
    """
    The same, in the cluster's Redis (C{ChatdService.cluster}: C{.redis},
    C{.prefix}, C{.nodeId}), counted and valid on every node.
    """
    redis, prefix = cluster.redis, cluster.prefix
    if config["msgr-dialect"] == UQ_JAVA:
        # uq-java binds a socket by the address of its /status login, kept
        # by the node that answered it (UqJavaLogins): its tokens stay on
        # that node, and a load balancer keeps an address on one node.
        log.warn(
            "MSGR dialect uq-java on a cluster: its logins are valid on the"
            " node that answered them only (docs/cluster.md)",
            event="uq-java-cluster",
        )
        tokens = TokenRegistry(reactor, config["msgr-token-idle"])
    else:
        tokens = RedisTokenRegistry(
            redis,
            prefix,
            reactor,
            config["msgr-token-idle"],
            nodeId=str(getattr(cluster, "nodeId", "") or ""),
        )
    return (
        tokens,
        RedisLoginLockout(
            redis,
            prefix,
            reactor,
            accountFailures=config["msgr-lockout-failures"],
            addressFailures=config["msgr-lockout-address-failures"],
            window=config["msgr-lockout-window"],
            lockTime=config["msgr-lockout-time"],
        ),
        RedisRegistrationLimit(
            redis,
            prefix,
            reactor,
            config["msgr-register-per-ip"],
            config["msgr-register-window"],
        ),
    )


@implementer(IFront)
class MsgrFront:
    """
    The C{--http}, C{--msgr} and C{--msgr-*} options; the C{msgr-accounts}
    service, the C{msgr-http} and C{msgr} listeners.
    """

    name = "msgr"
    endpointOptions = ("http", "msgr")

    def options(self) -> list:
        return [
            [
                "http",
                None,
                "tcp:8000",
                "Endpoint of the MSGR UQ HTTP API (login, accounts), or 'none'.",
            ],
            [
                "msgr",
                None,
                "tcp:1234",
                "Endpoint of the MSGR UQ chat socket, or 'none'.",
            ],
            [
                "msgr-token-idle",
                None,
                DEFAULT_TOKEN_IDLE,
                "Seconds an MSGR login token lives unused (a bound chat socket "
                "keeps it alive).",
                positiveFloat,
            ],
            [
                "msgr-max-line",
                None,
                DEFAULT_MAX_LINE,
                "Longest MSGR chat socket line in bytes; a longer one is skipped "
                "and answered with an error. 0 for no limit.",
                limit,
            ],
            [
                "msgr-max-file",
                None,
                DEFAULT_MAX_FILE,
                "Largest file in an MSGR #ARCHIVO/#IMG line, in decoded bytes; 0 "
                "for no limit (then --msgr-max-line 0 too).",
                limit,
            ],
            [
                "msgr-lockout-failures",
                None,
                msgr_lockout.DEFAULT_ACCOUNT_FAILURES,
                "Failed MSGR logins of one account, within the window, that lock it.",
                positiveInt,
            ],
            [
                "msgr-lockout-address-failures",
                None,
                msgr_lockout.DEFAULT_ADDRESS_FAILURES,
                "Failed MSGR logins from one address, within the window, that lock it.",
                positiveInt,
            ],
            [
                "msgr-lockout-window",
                None,
                msgr_lockout.DEFAULT_WINDOW,
                "Seconds a failed MSGR login counts for.",
                positiveFloat,
            ],
            [
                "msgr-lockout-time",
                None,
                msgr_lockout.DEFAULT_LOCK_TIME,
                "Seconds an MSGR lockout lasts.",
                positiveFloat,
            ],
            [
                "msgr-register-per-ip",
                None,
                msgr_lockout.DEFAULT_REGISTRATIONS,
                "MSGR accounts one address may register within the registration "
                "window; 0 for no limit.",
                limit,
            ],
            [
                "msgr-dialect",
                None,
                SEED,
                "What the MSGR HTTP form paths and chat socket speak: seed (the"
                " document's codes) or uq-java (the reference Java client's; see"
                " docs/msgr.md).",
                dialect,
            ],
            [
                "msgr-register-window",
                None,
                msgr_lockout.DEFAULT_REGISTRATION_WINDOW,
                "Seconds an MSGR registration counts for.",
                positiveFloat,
            ],
        ]

    def check(self, config) -> None:
        if config["db"] == DISABLED and DISABLED not in (config["http"], config["msgr"]):
            raise usage.UsageError("--db none needs --http none and --msgr none")
        # A file of --msgr-max-file bytes must fit in one line, in base64.
        maxLine, maxFile = config["msgr-max-line"], config["msgr-max-file"]
        if maxLine and (not maxFile or maxLine < base64Length(maxFile) + 1024):
            raise usage.UsageError(
                "--msgr-max-line must exceed the base64 size of --msgr-max-file"
                " by at least 1024 bytes"
            )

    def openAccounts(self, config, reactor, owner) -> AccountStore | None:
        if config["db"] == DISABLED:
            return None
        return openAccounts(config["db"], reactor, owner=owner)

    def build(self, config, services, reactor) -> None:
        store = services.accounts
        cluster = getattr(services, "cluster", None)
        if cluster is not None:
            # Names are protected cluster-wide only if every node reads
            # them from one database: a node on another refuses to serve.
            check = AccountsDatabaseCheck(
                cluster,
                None if store is None else store.databaseId,
                redacted(config["db"]),
            )
            check.setName("msgr-accounts-db")
            check.setServiceParent(services)
            services.addStartupCheck(check)
        if store is None:
            return  # --db none: check() made sure both listeners are off
        metrics, limits = services.metrics, services.limits
        if cluster is None:
            tokens, lockout, registrations = _inMemory(config, reactor)
        else:
            tokens, lockout, registrations = _shared(config, reactor, cluster)
        msgr = MsgrService(
            store, services.presence, reactor, tokens, lockout, metrics, registrations
        )
        msgr.setName("msgr-accounts")
        msgr.setServiceParent(services)  # stopping it closes the database
        if getattr(services.presence, "inboxHandlers", None) is not None:
            # Friend requests and answers for users bound on other nodes.
            msgr.joinCluster(services.presence)
        if isinstance(tokens, RedisTokenRegistry):
            tokens.onRevoked = msgr.revokedElsewhere
            tokens.setName("msgr-tokens")
            tokens.setServiceParent(services)
        logins = None
        if config["msgr-dialect"] == UQ_JAVA:
            logins = UqJavaLogins(msgr.tokens)
            log.warn(
                "MSGR dialect uq-java: its client sends passwords in clear and"
                " proves nothing but its address; an account id is trusted from"
                " the address of its last /status login (docs/msgr.md)",
                event="uq-java-dialect",
            )
        if config["http"] != DISABLED:
            # With a private --metrics listener, the public one keeps the
            # counts to itself (how many are online is nobody else's
            # business).
            site = makeSite(
                msgr,
                reactor=reactor,
                metrics=metrics,
                serveMetrics=config["metrics"] == DISABLED,
                uqJavaLogins=logins,
            )
            if limits.loginTimeout:
                site.timeOut = limits.loginTimeout
            site.requestTimeout = config["http-request-timeout"]
            counted = CountedHTTPFactory(
                site, reactor, limits, services.limiter, metrics
            )
            addListener(services, reactor, "msgr-http", "http", counted, metrics)
        if config["msgr"] != DISABLED:
            # The same options either way; uq-java only changes the lines.
            make = MsgrChatFactory
            if logins is not None:
                make = functools.partial(UqJavaChatFactory, logins=logins)
            factory = make(
                msgr,
                maxLine=size(config, "msgr-max-line"),
                maxFileSize=size(config, "msgr-max-file"),
                limits=limits,
                limiter=services.limiter,
                metrics=metrics,
            )
            addListener(services, reactor, "msgr", "msgr", factory, metrics)


front = MsgrFront()
