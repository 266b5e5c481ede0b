"""
MSRP's part of C{twistd chatd} (seed 004): its options and its listener
(docs/msrp.md).
"""

from __future__ import annotations

from zope.interface import implementer

from chatd.fronts import DISABLED, IFront, addListener, limit, rate, size
from chatd.msrp.protocol import (
    AUTO,
    DEFAULT_GREET_AFTER,
    DEFAULT_P2P_GAP,
    VARIANTS,
    DEFAULT_MAX_FILE,
    DEFAULT_MAX_QUEUED,
    MsrpFactory,
)


@implementer(IFront)
class MsrpFront:
    """The C{--msrp*} options and the C{msrp} listener."""

    name = "msrp"
    endpointOptions = ("msrp",)

    def options(self) -> list:
        return [
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
                limit,
            ],
            [
                "msrp-max-queue",
                None,
                DEFAULT_MAX_QUEUED,
                "Bytes that may wait for one MSRP user (behind a file streaming "
                "to them, or while they read slowly) before messages to them are "
                "refused. 0 for no limit.",
                limit,
            ],
            [
                "msrp-greeting",
                None,
                DEFAULT_GREET_AFTER,
                "Seconds of silence after which a new MSRP connection (a person "
                "on nc/telnet, most likely) is told what to type; 0 for never.",
                rate,
            ],
            [
                "msrp-variant",
                None,
                AUTO,
                "auto: tell the MSRP peer-to-peer variant from the seed's "
                "clients per connection; seed or p2p: take every connection "
                "for one of them.",
                variant,
            ],
            [
                "msrp-p2p-gap",
                None,
                DEFAULT_P2P_GAP,
                "Seconds between two writes to a client of the MSRP "
                "peer-to-peer variant, which reads one recv() as one message; "
                "0 for none.",
                rate,
            ],
        ]

    def check(self, config) -> None:
        pass

    def openAccounts(self, config, reactor, owner) -> None:
        return None

    def build(self, config, services, reactor) -> None:
        if config["msrp"] == DISABLED:
            return
        factory = MsrpFactory(
            services.presence,
            reactor,
            maxFileSize=size(config, "msrp-max-file"),
            maxQueued=size(config, "msrp-max-queue"),
            limits=services.limits,
            limiter=services.limiter,
            metrics=services.metrics,
            greetAfter=config["msrp-greeting"],
            variant=config["msrp-variant"],
            p2pGap=config["msrp-p2p-gap"],
        )
        addListener(services, reactor, "msrp", "msrp", factory, services.metrics)


def variant(value: str) -> str:
    if value not in VARIANTS:
        raise ValueError("must be one of " + ", ".join(VARIANTS))
    return value


front = MsrpFront()
