"""
The baseline of scenario 1: the least a Twisted chat relay can do.

Frames are C{| length (4, big-endian) | name length (1) | name | payload |},
the length counting everything after itself. A connection's first frame
names it (and is sent back to it, as the proof); every later frame is
written unchanged, with one C{transport.write}, to the connection its name
names, and dropped when there is none. Nothing else is parsed, checked,
logged or answered: this is the ceiling for a Twisted server routing
messages by name on this machine, which chatd's figures are divided by.

    python bench/relay.py [--port ENDPOINT]

It logs C{relay listening on tcp:HOST:PORT} once it listens (port 0 picks
a free port) and runs until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import sys

from twisted.internet import endpoints, reactor
from twisted.internet.protocol import Factory, Protocol


class RelayProtocol(Protocol):
    """One connection of the relay."""

    def __init__(self, routes: dict) -> None:
        self.routes = routes
        self.name: bytes | None = None
        self.buffer = b""

    def dataReceived(self, data: bytes) -> None:
        buf = self.buffer + data if self.buffer else data
        end = len(buf)
        pos = 0
        routes = self.routes
        while end - pos >= 4:
            stop = pos + 4 + int.from_bytes(buf[pos : pos + 4], "big")
            if stop > end:
                break
            size = buf[pos + 4]
            name = buf[pos + 5 : pos + 5 + size]
            if self.name is None:
                self.name = name
                routes[name] = self
            target = routes.get(name)
            if target is not None:
                target.transport.write(buf[pos:stop])
            pos = stop
        self.buffer = buf[pos:] if pos < end else b""

    def connectionLost(self, reason=None) -> None:
        if self.name is not None and self.routes.get(self.name) is self:
            del self.routes[self.name]


class RelayFactory(Factory):
    """Connections of the relay, sharing one table of names."""

    noisy = False

    def __init__(self) -> None:
        self.routes: dict[bytes, RelayProtocol] = {}

    def buildProtocol(self, addr) -> RelayProtocol:
        protocol = RelayProtocol(self.routes)
        protocol.factory = self
        return protocol


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="The relay baseline of make bench's scenario 1: frames forwarded by name."
    )
    parser.add_argument(
        "--port",
        default="tcp:0:interface=127.0.0.1",
        help="a Twisted server endpoint (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    endpoint = endpoints.serverFromString(reactor, args.port)

    def listening(port) -> None:
        host = port.getHost()
        print(f"relay listening on tcp:{host.host}:{host.port}", flush=True)

    def failed(failure) -> None:
        print(f"relay could not listen: {failure.getErrorMessage()}", flush=True)
        reactor.stop()

    endpoint.listen(RelayFactory()).addCallbacks(listening, failed)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
