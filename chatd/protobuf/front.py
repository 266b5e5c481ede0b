"""
The protobuf chat's part of C{twistd chatd} (seed 000): its options and its
listener (docs/protobuf.md).
"""

from __future__ import annotations

from twisted.logger import Logger
from twisted.python import usage
from zope.interface import implementer

from chatd.fronts import DISABLED, IFront, addListener, limit, positiveFloat, size
from chatd.protobuf import speedups
from chatd.protobuf.framing import DEFAULT_MAX_FRAME
from chatd.protobuf.protocol import (
    AUTO,
    DEFAULT_RAW_GAP,
    DEFAULT_RAW_WAIT,
    DIALECTS,
    FRAMINGS,
    ProtobufChatFactory,
)


@implementer(IFront)
class ProtobufFront:
    """The C{--protobuf*} options and the C{protobuf} listener."""

    name = "protobuf"
    endpointOptions = ("protobuf",)
    log = Logger()

    def options(self) -> list:
        return [
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
                limit,
            ],
            [
                "protobuf-raw-wait",
                None,
                DEFAULT_RAW_WAIT,
                "Seconds a raw request that may still grow is waited for.",
                positiveFloat,
            ],
            [
                "protobuf-dialect",
                None,
                AUTO,
                "Revision of the protobuf chat: 'auto' (told per connection by "
                "its first request), 'seed' (0-based) or 'course' (1-based).",
            ],
            [
                "protobuf-raw-gap",
                None,
                DEFAULT_RAW_GAP,
                "Seconds between two messages to one raw connection (its "
                "clients read one recv() as one message). 0 for none.",
                float,
            ],
        ]

    def check(self, config) -> None:
        if config["protobuf-framing"] not in FRAMINGS:
            raise usage.UsageError(
                f"--protobuf-framing must be one of {', '.join(FRAMINGS)}"
            )
        if config["protobuf-dialect"] not in DIALECTS:
            raise usage.UsageError(
                f"--protobuf-dialect must be one of {', '.join(DIALECTS)}"
            )
        if config["protobuf-raw-gap"] < 0:
            raise usage.UsageError("--protobuf-raw-gap must be 0 or more")

    def openAccounts(self, config, reactor, owner) -> None:
        return None

    def build(self, config, services, reactor) -> None:
        if config["protobuf"] == DISABLED:
            return
        # Which of the two equivalent hot paths runs (docs/performance.md).
        self.log.info(
            "chatd protobuf hot path: {path}",
            path=speedups.describe(),
            compiled=speedups.compiled is not None,
            event="hot-path",
        )
        factory = ProtobufChatFactory(
            services.presence,
            reactor,
            framing=config["protobuf-framing"],
            maxFrameSize=size(config, "protobuf-max-frame"),
            rawWait=config["protobuf-raw-wait"],
            limits=services.limits,
            limiter=services.limiter,
            metrics=services.metrics,
            dialect=config["protobuf-dialect"],
            rawGap=config["protobuf-raw-gap"],
        )
        addListener(services, reactor, "protobuf", "protobuf", factory, services.metrics)


front = ProtobufFront()
