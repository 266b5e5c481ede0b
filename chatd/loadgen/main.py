"""
C{chatd-loadgen}: load-test a chatd deployment with real clients of every
protocol, from several worker processes.

    chatd-loadgen --host HOST [--protobuf-port 5000 ...] SCENARIO [options]

Every scenario prints its figures as JSON (C{--json FILE} writes them to a
file too). docs/performance.md describes what each measures.
"""

from __future__ import annotations

import argparse
import json
import sys

from chatd.loadgen import accounts, scenarios
from chatd.loadgen.scenarios import Target


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chatd-loadgen",
        description="Load-test a chatd deployment with real clients of every protocol,"
        " from several worker processes. Every scenario prints its figures as JSON;"
        " docs/performance.md says what each one measures.",
        epilog="A deployment's limits apply to the load generator too: it is one address"
        " sending as fast as it can (see --max-conns-per-ip and --rate in"
        " docs/running.md). Send load only to servers you run.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="the server's address (default: %(default)s)")
    parser.add_argument("--protobuf-port", type=int, default=5000)
    parser.add_argument("--msrp-port", type=int, default=8080)
    parser.add_argument("--http-port", type=int, default=8000, help="MSGR's HTTP API")
    parser.add_argument("--msgr-port", type=int, default=1234, help="MSGR's chat socket")
    parser.add_argument("--relay-port", type=int, default=None, help="bench/relay.py, for --protocol relay")
    parser.add_argument("--irc-port", type=int, default=None, help="an IRC server (ngircd), for --protocol irc")
    parser.add_argument("--framing", choices=("raw", "delimited"), default="raw",
                        help="the protobuf listener's --protobuf-framing (default: %(default)s)")
    parser.add_argument("--password", default="loadgen-password",
                        help="the password of the MSGR accounts g000, g001, ... (see 'register')")
    parser.add_argument("--pid", type=int, default=None,
                        help="the server's process id, when it runs on this machine: its CPU and memory are read")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default: %(default)s)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring (default: %(default)s)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured (default: %(default)s)")
    parser.add_argument("--verify", action="store_true",
                        help="check every delivery's bytes, not one per read (costs the load generator more)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE")
    sub = parser.add_subparsers(dest="scenario", required=True, metavar="SCENARIO")

    p = sub.add_parser("pairs", help="1 and 2: direct messages between sender/receiver pairs")
    p.add_argument("--protocol", choices=("protobuf", "relay", "irc"), default="protobuf")
    p.add_argument("--pairs", type=int, default=100)
    p.add_argument("--window", type=int, default=64, help="messages in flight per pair (pipelined)")
    p.add_argument("--rate", type=float, default=None,
                   help="send at this many messages a second in all instead of pipelining (scenario 2)")

    p = sub.add_parser("broadcast", help="3: one sender to 'all'")
    p.add_argument("--users", type=int, default=1000)
    p.add_argument("--window", type=int, default=4, help="broadcasts in flight")

    p = sub.add_parser("idle", help="4: many idle logged-in sessions")
    p.add_argument("--protobuf", type=int, default=7000, help="protobuf sessions")
    p.add_argument("--msrp", type=int, default=2500, help="MSRP sessions")
    p.add_argument("--msgr", type=int, default=500, help="MSGR sessions (accounts g001 on)")
    p.add_argument("--hold", type=float, default=3.0, help="seconds to hold them")
    p.add_argument("--concurrency", type=int, default=64, help="logins under way per worker")

    p = sub.add_parser("file", help="5: one MSRP file between two clients")
    p.add_argument("--size", type=int, default=1 << 30, help="bytes (default: 1 GiB)")

    p = sub.add_parser("msgr-logins", help="6: MSGR HTTP logins a second")
    p.add_argument("--accounts", type=int, default=64)
    p.add_argument("--threads", type=int, default=8, help="connections per worker")

    p = sub.add_parser("msgr", help="6: MSGR socket messages, or across protocols")
    p.add_argument("--pairs", type=int, default=20, help="pairs per direction")
    p.add_argument("--window", type=int, default=32)
    p.add_argument("--cross", action="store_true",
                   help="every direction between protobuf, MSRP and MSGR instead of MSGR to MSGR")

    p = sub.add_parser("register", help="create the MSGR accounts the scenarios use, over HTTP")
    p.add_argument("--accounts", type=int, default=600)
    return parser


def run(args) -> dict:
    """Run the scenario C{args} names."""
    ports = {
        "protobuf": args.protobuf_port,
        "msrp": args.msrp_port,
        "msgr-http": args.http_port,
        "msgr": args.msgr_port,
    }
    if args.relay_port:
        ports["relay"] = args.relay_port
    if args.irc_port:
        ports["irc"] = args.irc_port
    target = Target(args.host, ports, args.pid, args.framing, args.password)
    mode = "all" if args.verify else "sample"
    timing = {"warmup": args.warmup, "duration": args.duration}
    if args.scenario == "pairs":
        return scenarios.pairs(
            target, protocol=args.protocol, count=args.pairs, workers=args.workers,
            window=args.window, rate=args.rate, mode="all" if args.rate else mode, **timing,
        )
    if args.scenario == "broadcast":
        return scenarios.broadcast(
            target, users=args.users, workers=args.workers, window=args.window, mode=mode, **timing
        )
    if args.scenario == "idle":
        counts = {"protobuf": args.protobuf, "msrp": args.msrp, "msgr": args.msgr}
        return scenarios.idle(
            target, counts, workers=args.workers, hold=args.hold, concurrency=args.concurrency
        )
    if args.scenario == "file":
        return scenarios.fileTransfer(target, args.size)
    if args.scenario == "msgr-logins":
        return scenarios.msgrLogins(
            target, accounts=args.accounts, workers=args.workers,
            threadsPerWorker=args.threads, **timing,
        )
    if args.scenario == "msgr":
        directions = scenarios.CROSS if args.cross else (("msgr", "msgr"),)
        return scenarios.msgrMessages(
            target, directions=directions, pairsPerDirection=args.pairs,
            workers=args.workers, window=args.window, mode=mode, **timing,
        )
    if args.scenario == "register":
        return accounts.register(
            target.address("msgr-http"), scenarios.msgrNames(args.accounts), args.password
        )
    raise ValueError(args.scenario)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        result = run(args)
    except scenarios.ScenarioFailed as e:
        print(f"chatd-loadgen: {e}", file=sys.stderr)
        return 1
    text = json.dumps(result, indent=1, default=str)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    return 0 if result.get("ok", not result.get("errors")) else 1


if __name__ == "__main__":
    sys.exit(main())
