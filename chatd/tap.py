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

from chatd.listener import ListenerService
from chatd.presence import InMemoryPresenceService
from chatd.protobuf.framing import DEFAULT_MAX_FRAME
from chatd.protobuf.protocol import DEFAULT_RAW_WAIT, FRAMINGS, ProtobufChatFactory
from chatd.msrp.protocol import DEFAULT_MAX_FILE, DEFAULT_MAX_QUEUED, MsrpFactory

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

    def postOptions(self) -> None:
        if self["protobuf-framing"] not in FRAMINGS:
            raise usage.UsageError(
                f"--protobuf-framing must be one of {', '.join(FRAMINGS)}"
            )


def _listener(reactor, label: str, description: str, factory) -> ListenerService:
    endpoint = endpoints.serverFromString(reactor, description)
    listener = ListenerService(label, endpoint, factory)
    listener.setName(label)
    return listener


def makeService(config: Options, reactor=None) -> service.MultiService:
    """
    Build chatd's service tree: one presence service shared by a listening
    service per wire format.
    """
    if reactor is None:
        from twisted.internet import reactor
    presence = InMemoryPresenceService()
    top = service.MultiService()
    top.presence = presence
    if config["protobuf"] != DISABLED:
        factory = ProtobufChatFactory(
            presence,
            reactor,
            framing=config["protobuf-framing"],
            maxFrameSize=config["protobuf-max-frame"],
            rawWait=config["protobuf-raw-wait"],
        )
        _listener(reactor, "protobuf", config["protobuf"], factory).setServiceParent(
            top
        )
    if config["msrp"] != DISABLED:
        factory = MsrpFactory(
            presence,
            reactor,
            maxFileSize=config["msrp-max-file"],
            maxQueued=config["msrp-max-queue"],
        )
        _listener(reactor, "msrp", config["msrp"], factory).setServiceParent(top)
    return top
