"""
C{twistd chatd}: the options and the service tree.

C{makeService} builds one presence service and hands it to one listener per
wire format; every listener takes a Twisted endpoint string (so C{ssl:},
C{unix:} and systemd sockets work as well as C{tcp:}), and the word C{none}
turns it off. docs/running.md documents every option.
"""

from __future__ import annotations

from twisted.application import service
from twisted.internet import endpoints
from twisted.python import usage

from chatd.listener import DEFAULT_SHUTDOWN_GRACE, ListenerService
from chatd.presence import InMemoryPresenceService
from chatd.protobuf.framing import DEFAULT_MAX_FRAME
from chatd.protobuf.protocol import DEFAULT_RAW_WAIT, FRAMINGS, ProtobufChatFactory
from chatd.msrp.protocol import DEFAULT_MAX_FILE, DEFAULT_MAX_QUEUED, MsrpFactory
from chatd.msgr import lockout as msgr_lockout
from chatd.msgr.protocol import DEFAULT_MAX_FILE as MSGR_MAX_FILE
from chatd.msgr.protocol import DEFAULT_MAX_LINE as MSGR_MAX_LINE
from chatd.msgr.protocol import base64Length
from chatd.msgr.tokens import DEFAULT_TOKEN_IDLE as MSGR_TOKEN_IDLE

DISABLED = "none"


def _positiveInt(value: str) -> int:
    number = int(value)
    if number <= 0:
        raise ValueError("must be a positive whole number")
    return number


def _positiveFloat(value: str) -> float:
    number = float(value)
    if not number > 0:
        raise ValueError("must be a positive number")
    return number


class Options(usage.Options):
    """The command line of C{twistd chatd}."""

    synopsis = "[options]"
    longdesc = (
        "chatd: one chat with several wire formats. Each listener takes a "
        "Twisted endpoint string (tcp:PORT, tcp:PORT:interface=ADDR, "
        "ssl:PORT:privateKey=KEY:certKey=CERT, ...) or 'none' to turn it off."
    )

    optParameters = [
        [
            "shutdown-grace",
            None,
            DEFAULT_SHUTDOWN_GRACE,
            "Seconds a stopping server gives its clients to receive their "
            "last bytes before it cuts them off.",
            _positiveFloat,
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
            "and answered with an error.",
            _positiveInt,
        ],
        [
            "msgr-max-file",
            None,
            MSGR_MAX_FILE,
            "Largest file in an MSGR #ARCHIVO/#IMG line, in decoded bytes.",
            _positiveInt,
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
            "connection after an error response.",
            _positiveInt,
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
            "announcement gets an ERROR and the connection is closed.",
            _positiveInt,
        ],
        [
            "msrp-max-queue",
            None,
            DEFAULT_MAX_QUEUED,
            "Bytes that may wait for one MSRP user (behind a file streaming "
            "to them, or while they read slowly) before messages to them are "
            "refused.",
            _positiveInt,
        ],
    ]

    #: The options that name a listener's endpoint.
    listenerOptions = ("protobuf", "msrp", "http", "msgr")

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
        if self["msgr-max-line"] < base64Length(self["msgr-max-file"]) + 1024:
            raise usage.UsageError(
                "--msgr-max-line must exceed the base64 size of --msgr-max-file"
                " by at least 1024 bytes"
            )
        if self["protobuf-framing"] not in FRAMINGS:
            raise usage.UsageError(
                f"--protobuf-framing must be one of {', '.join(FRAMINGS)}"
            )


def _listener(
    reactor, label: str, description: str, factory, grace: float
) -> ListenerService:
    endpoint = endpoints.serverFromString(reactor, description)
    listener = ListenerService(label, endpoint, factory, reactor, grace)
    listener.secure = description.split(":", 1)[0].lower() == "ssl"
    listener.setName(label)
    return listener


def _addMsgr(top, config: Options, presence, store, reactor) -> None:
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
    )
    msgr.setName("msgr-accounts")
    msgr.setServiceParent(top)  # stopping it closes the database
    top.msgr = msgr
    if config["http"] != DISABLED:
        site = wiring.makeHttpFactory(msgr, reactor)
        _listener(reactor, "msgr-http", config["http"], site, grace).setServiceParent(
            top
        )
    if config["msgr"] != DISABLED:
        factory = wiring.makeChatFactory(
            msgr, config["msgr-max-line"], config["msgr-max-file"]
        )
        _listener(reactor, "msgr", config["msgr"], factory, grace).setServiceParent(top)


def makeService(config: Options, reactor=None) -> service.MultiService:
    """
    Build chatd's service tree: one presence service shared by a listening
    service per wire format.
    """
    if reactor is None:
        from twisted.internet import reactor
    # MSGR accounts first: their names are protected in the presence service.
    # openAccounts prepares the database and loads the names synchronously,
    # before the reactor runs (docs/msgr.md, "Accounts").
    accountStore = None
    if config["db"] != DISABLED:
        from chatd.msgr.wiring import openAccounts

        accountStore = openAccounts(config["db"], reactor)
        presence = InMemoryPresenceService(accountStore.isProtectedName)
    else:
        presence = InMemoryPresenceService()
    top = service.MultiService()
    top.presence = presence
    grace = config["shutdown-grace"]
    if accountStore is not None:
        _addMsgr(top, config, presence, accountStore, reactor)
    if config["protobuf"] != DISABLED:
        factory = ProtobufChatFactory(
            presence,
            reactor,
            framing=config["protobuf-framing"],
            maxFrameSize=config["protobuf-max-frame"],
            rawWait=config["protobuf-raw-wait"],
        )
        _listener(
            reactor, "protobuf", config["protobuf"], factory, grace
        ).setServiceParent(top)
    if config["msrp"] != DISABLED:
        factory = MsrpFactory(
            presence,
            reactor,
            maxFileSize=config["msrp-max-file"],
            maxQueued=config["msrp-max-queue"],
        )
        _listener(reactor, "msrp", config["msrp"], factory, grace).setServiceParent(top)
    return top
