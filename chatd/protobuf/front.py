"""
The protobuf chat's part of C{twistd chatd} (seed 000): its options and its
listener (docs/protobuf.md).
"""

from __future__ import annotations

from twisted.python import usage
from zope.interface import implementer

from chatd.fronts import DISABLED, IFront, addListener, limit, positiveFloat, size
from chatd.protobuf.framing import DEFAULT_MAX_FRAME
from chatd.protobuf.protocol import DEFAULT_RAW_WAIT, FRAMINGS, ProtobufChatFactory


@implementer(IFront)
class ProtobufFront:
    """The C{--protobuf*} options and the C{protobuf} listener."""

    name = "protobuf"
    endpointOptions = ("protobuf",)

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
        ]

    def check(self, config) -> None:
        if config["protobuf-framing"] not in FRAMINGS:
            raise usage.UsageError(
                f"--protobuf-framing must be one of {', '.join(FRAMINGS)}"
            )

    def openAccounts(self, config, reactor, owner) -> None:
        return None

    def build(self, config, services, reactor) -> None:
        if config["protobuf"] == DISABLED:
            return
        factory = ProtobufChatFactory(
            services.presence,
            reactor,
            framing=config["protobuf-framing"],
            maxFrameSize=size(config, "protobuf-max-frame"),
            rawWait=config["protobuf-raw-wait"],
            limits=services.limits,
            limiter=services.limiter,
            metrics=services.metrics,
        )
        addListener(services, reactor, "protobuf", "protobuf", factory, services.metrics)


front = ProtobufFront()
