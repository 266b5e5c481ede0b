"""
A micro-benchmark of what names cost on the message path: the RFC 8265 key
(C{nameKey}), the look-alike skeleton (C{nameSkeleton}) and a direct
message routed by the presence service to an ASCII and a non-ASCII
receiver among 1,000 online users.

    .venv/bin/python bench/names.py

Each figure is the best of several rounds (the machine may be shared), in
nanoseconds per call. C{str.casefold} is what the key was before RFC 8265.
"""

from __future__ import annotations

import os
import sys
import timeit

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from zope.interface import implementer  # noqa: E402

from chatd import presence  # noqa: E402

ROUNDS = 9


@implementer(presence.IChatSession)
class _Sink:
    protocolName = "bench"

    def deliverMessage(self, message) -> None:
        pass

    def disconnect(self, reason: str) -> None:
        pass


def best(call, number: int) -> float:
    """Nanoseconds per call, the best of L{ROUNDS}."""
    return min(timeit.repeat(call, number=number, repeat=ROUNDS)) / number * 1e9


def main() -> None:
    directory = presence.InMemoryPresenceService()
    sender = _Sink()
    directory.login(sender, "sender", "127.0.0.1")
    for i in range(1000):
        directory.login(_Sink(), f"user{i:04d}", "127.0.0.1")
    directory.login(_Sink(), "Jos\u00e987", "127.0.0.1")
    figures = [
        ("str.casefold('user0500') (the old key)", lambda: "user0500".casefold(), 10**6),
        ("nameKey('user0500'), ASCII fast path", lambda: presence.nameKey("user0500"), 10**6),
        ("nameKey('Jos\u00e987'), cached", lambda: presence.nameKey("Jos\u00e987"), 10**6),
        (
            "RFC 8265 enforce('Jos\u00e987'), uncached",
            lambda: presence._USERNAME.enforce("Jos\u00e987"),
            10**4,
        ),
        (
            "skeleton('Jos\u00e987'), uncached",
            lambda: presence.nameSkeleton.__wrapped__("Jos\u00e987"),
            10**4,
        ),
        (
            "sendMessage to 'user0500'",
            lambda: directory.sendMessage(sender, "user0500", "hola"),
            10**5,
        ),
        (
            "sendMessage to 'Jos\u00e987'",
            lambda: directory.sendMessage(sender, "Jos\u00e987", "hola"),
            10**5,
        ),
    ]
    for label, call, number in figures:
        print(f"{label:<44} {best(call, number):>8.0f} ns")


if __name__ == "__main__":
    main()
