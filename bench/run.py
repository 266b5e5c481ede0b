"""
C{make bench}: every scenario of docs/performance.md against a real
C{twistd -n chatd} on 127.0.0.1, with its baselines in the same run.

    python bench/run.py [--quick] [--only 1,5] [--profile] [--output DIR]

Each scenario starts its own server (and baseline), drives it with
C{chatd.loadgen} worker processes, and stops it. The figures go to a table
on stdout, to C{DIR/latest.json} and a timestamped copy, and to a chart
(C{docs/bench.png} for a full run, C{DIR/latest-quick.png} for C{--quick}).
C{--profile} also samples the server with py-spy during scenario 1 (and
both nodes during scenario 7's pairs and file across nodes) and writes the hottest
functions to C{DIR/profile-*.txt}. Scenario 7 starts its own redis-server
(installed with apt-get when missing and root, as socat is for scenario 5),
and scenario 1 its own ngircd, the C IRC server of its second baseline
(installed the same way; without it, scenario 1 runs without that baseline
and says so).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import inspect
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

from chatd.loadgen import accounts, scenarios  # noqa: E402
from chatd.loadgen.scenarios import Target  # noqa: E402
from chatd.harness import (  # noqa: E402
    ServerError,
    ServerProcess,
    chatdCommand,
    chatdOptions,
    machineBusySeconds,
    readStats,
)
from chatd.testservers import RedisServer  # noqa: E402

#: Every listener on a free loopback port; a long backlog, so that
#: thousands of connections at once are not dropped and retried.
ENDPOINT = "tcp:0:interface=127.0.0.1:backlog=1024"
OFF = "none"
PASSWORD = "loadgen-password"

#: What each scenario does, full and quick (--quick).
SIZES = {
    "full": {
        "pairs": 100, "window": 64, "warmup": 2.0, "duration": 8.0,
        # Scenario 1: three rounds of relay, ngircd, delimited, raw, median ratios.
        "rounds": 3, "round_warmup": 1.0, "round_duration": 3.0,
        "rate": 10000.0, "rate_duration": 8.0,
        "broadcast_users": 1000, "broadcast_window": 4,
        "idle": {"protobuf": 7000, "msrp": 2500, "msgr": 500}, "hold": 3.0,
        "file_bytes": 1 << 30,
        "msgr_duration": 5.0, "msgr_pairs": 20, "cross_pairs": 5,
        # Scenario 7: the cluster.
        "cluster_pairs": 100, "cluster_window": 64, "cluster_warmup": 1.0,
        "cluster_duration": 5.0, "cluster_rate": 5000.0, "cluster_rate_duration": 5.0,
        "cluster_file_bytes": 256 << 20, "redis_publishes": 1_000_000,
    },
    "quick": {
        "pairs": 100, "window": 64, "warmup": 0.5, "duration": 1.5,
        "rounds": 1, "round_warmup": 0.5, "round_duration": 1.5,
        "rate": 10000.0, "rate_duration": 1.5,
        "broadcast_users": 1000, "broadcast_window": 4,
        "idle": {"protobuf": 700, "msrp": 250, "msgr": 50}, "hold": 0.5,
        "file_bytes": 128 << 20,
        "msgr_duration": 1.5, "msgr_pairs": 20, "cross_pairs": 5,
        "cluster_pairs": 100, "cluster_window": 64, "cluster_warmup": 0.5,
        "cluster_duration": 1.5, "cluster_rate": 5000.0, "cluster_rate_duration": 1.5,
        "cluster_file_bytes": 64 << 20, "redis_publishes": 200_000,
    },
}

#: The targets of issue 6. Scenario 1's (chatd's messages a second against
#: the relay's) is shown for information since issue 17 (below).
TARGET_RATIO_1 = 0.5
TARGET_P99_2_MS = 5.0
TARGET_KIB_4 = 10.0
TARGET_SESSIONS_4 = 10000
TARGET_RATIO_5 = 0.6
TARGET_PEAK_5_MIB = 32.0

#: The targets of issue 16 (scenario 7): a cross-node message costs the
#: nodes at most twice the CPU of a same-node one; cross-node p99 at 5,000
#: messages a second; a cross-node file at 30% of a same-node one's rate,
#: each node's RSS growing less than 32 MiB.
TARGET_CPU_RATIO_7 = 2.0
TARGET_P99_7_MS = 10.0
TARGET_FILE_RATIO_7 = 0.3
TARGET_PEAK_7_MIB = 32.0

#: The targets of issue 17 (scenario 1): messages per CPU-second of the
#: server (its messages a second divided by the share of a core it used),
#: chatd against ngircd and against the relay.
TARGET_CPU_VS_NGIRCD_1 = {"delimited": 0.6, "raw": 0.5}
TARGET_CPU_VS_RELAY_1 = {"delimited": 0.75}

#: ngircd's configuration for scenario 1 (ngircd.conf(5)): loopback only,
#: no DNS or ident lookups, no PAM, no connection, join or nick-length
#: limits that the pairs would meet, and no flood penalty: with its
#: penalty (one more second per command once a client is ahead), a
#: pipelined sender gets one message a second through. PingTimeout is
#: ngircd's default, said here because receivers, which never speak, are
#: sent a PING after it (the load generator answers). Nothing is written
#: outside the directory it runs in (no PID file; the message of the day
#: is a phrase; IncludeDir is that directory, which holds no *.conf).
NGIRCD_CONF = """\
[Global]
Name = bench.chatd.invalid
Info = chatd make bench: the ngircd baseline of scenario 1
AdminInfo1 = chatd make bench
AdminEMail = nobody@chatd.invalid
Listen = 127.0.0.1
Ports = {port}
MotdPhrase = chatd make bench
[Limits]
MaxConnections = 0
MaxConnectionsIP = 0
MaxJoins = 0
MaxNickLength = 30
MaxPenaltyTime = 0
PingTimeout = 120
[Options]
DNS = no
Ident = no
PAM = no
IncludeDir = {directory}
"""


def ngircdConfig(directory: str, port: int) -> str:
    """Write L{NGIRCD_CONF} into C{directory}; its path."""
    path = os.path.join(directory, "ngircd.conf")
    with open(path, "w") as f:
        f.write(NGIRCD_CONF.format(port=port, directory=directory))
    return path


def freePort() -> int:
    """A port of 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def startNgircd(
    program: str, directory: str, logPath: str, timeout: float = 30.0
) -> tuple[ServerProcess, int]:
    """
    ngircd in the foreground (C{-n}, so that the process whose CPU is read
    is the one that routes) with L{ngircdConfig} in C{directory}, once it
    listens: the server and its port.

    @raise ServerError: when it exits first or does not listen in time.
    """
    os.makedirs(directory, exist_ok=True)
    port = freePort()
    config = ngircdConfig(directory, port)
    server = ServerProcess([program, "-n", "-f", config], [], cwd=directory, logPath=logPath)
    server.start()
    deadline = time.monotonic() + timeout
    # "Now listening on [127.0.0.1]:PORT (socket 6)."
    while f"]:{port} " not in server.log():
        if not server.alive() or time.monotonic() > deadline:
            output = server.log()[-2000:]
            server.stop()
            raise ServerError(f"ngircd did not listen on 127.0.0.1:{port}:\n{output}")
        time.sleep(0.05)
    return server, port


#: How long scenario 7's receiver waits for a file's header: longer means
#: the server refused the file to its sender (the build does not carry
#: large files across nodes).
FILE_HEADER_TIMEOUT_7 = 5.0

#: A measurement during which other processes used more than this (percent
#: of one core) is run again (--retries), the machine permitting.
NOISY_PERCENT = 25.0

#: No retry starts after this many seconds of a full run (make bench must
#: end within 10 minutes).
RETRY_BUDGET = 330.0


class Bench:
    """One run of the benchmark: servers, scenarios, results."""

    def __init__(self, args) -> None:
        self.args = args
        self.quick = args.quick
        self.size = SIZES["quick" if args.quick else "full"]
        self.output = args.output
        os.makedirs(self.output, exist_ok=True)
        self.logs = os.path.join(self.output, "logs")
        os.makedirs(self.logs, exist_ok=True)
        self.work = tempfile.mkdtemp(prefix="chatd-bench-")
        # --checkout: the server's code comes from another tree (an older
        # commit, to compare); the load generator is this one's.
        self.serverEnv = None
        if args.checkout:
            self.serverEnv = dict(os.environ, PYTHONPATH=os.path.abspath(args.checkout))
        self.known = chatdOptions(env=self.serverEnv)
        self.results: dict = {"scenarios": {}, "targets": [], "warnings": []}
        self.retryUntil = time.monotonic() + RETRY_BUDGET

    # Servers.

    def chatd(self, name: str, options: dict, labels: list[str], wrapper=None) -> ServerProcess:
        argv, off = chatdCommand(options, self.known, wrapper)
        self.results.setdefault("server_limits_off", off)
        server = ServerProcess(
            argv, labels, cwd=self.work, logPath=os.path.join(self.logs, f"{name}.log"),
            env=self.serverEnv,
        )
        server.start()
        return server

    def protobufOnly(self, name: str, framing: str) -> ServerProcess:
        return self.chatd(
            name,
            {
                "protobuf": ENDPOINT, "protobuf-framing": framing,
                "msrp": OFF, "http": OFF, "msgr": OFF, "db": OFF,
            },
            ["protobuf"],
        )

    def everything(self, name: str, accountCount: int) -> ServerProcess:
        db = os.path.join(self.work, f"{name}.sqlite3")
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(db + suffix):
                os.remove(db + suffix)
        accounts.seedDatabase(db, scenarios.msgrNames(accountCount), PASSWORD)
        return self.chatd(
            name,
            {"protobuf": ENDPOINT, "msrp": ENDPOINT, "http": ENDPOINT, "msgr": ENDPOINT, "db": db},
            ["protobuf", "msrp", "msgr", "msgr-http"],
        )

    def relay(self) -> ServerProcess:
        server = ServerProcess(
            [sys.executable, os.path.join(HERE, "relay.py"), "--port", ENDPOINT],
            ["relay"],
            cwd=self.work,
            logPath=os.path.join(self.logs, "relay.log"),
        )
        server.start()
        return server

    @staticmethod
    def target(server: ServerProcess, framing: str = "raw") -> Target:
        return Target(ports=dict(server.ports), pid=server.pid, framing=framing, password=PASSWORD)

    # Scenarios.

    def ngircd(self) -> tuple[ServerProcess | None, dict]:
        """
        Scenario 1's second baseline: ngircd, started (L{startNgircd}), and
        what it is (C{version}, C{port}); or C{None} and why it is missing.
        """
        program = findProgram("ngircd", "ngircd", "the second baseline of scenario 1")
        if program is None:
            return None, {"missing": "ngircd is not installed, and cannot be installed (not root,"
                                     " or no apt-get)"}
        try:
            server, port = startNgircd(
                program, os.path.join(self.work, "ngircd"), os.path.join(self.logs, "ngircd.log"),
            )
        except ServerError as e:
            return None, {"missing": f"ngircd did not start: {str(e).splitlines()[0]}"}
        return server, {"version": programVersion(program), "port": port}

    def scenario1(self) -> dict:
        """
        The relay, ngircd and chatd with each framing, one after the other,
        as many times as --repeat says: the servers stay up, and the ratios
        of each round are kept. Each ratio shown is the median of the
        rounds'; the figures shown are the round's whose ratio of chatd to
        its main baseline (per CPU-second) is the median.
        """
        s = self.size
        common = dict(
            count=s["pairs"], window=s["window"], warmup=s["round_warmup"],
            duration=s["round_duration"],
        )
        rounds = []
        with contextlib.ExitStack() as stack:
            ngircd, ngircdInfo = self.ngircd()
            if ngircd is not None:
                stack.enter_context(ngircd)
            servers = {"relay": stack.enter_context(self.relay())}
            if ngircd is not None:
                servers["ngircd"] = ngircd
            servers["delimited"] = stack.enter_context(self.protobufOnly("s1-delimited", "delimited"))
            servers["raw"] = stack.enter_context(self.protobufOnly("s1-raw", "raw"))
            for number in range(self.args.repeat or s["rounds"]):
                figures = {}
                for kind, server in servers.items():
                    if kind == "relay":
                        target, protocol = self.target(server), "relay"
                    elif kind == "ngircd":
                        target = Target(ports={"irc": ngircdInfo["port"]}, pid=server.pid)
                        protocol = "irc"
                    else:
                        target, protocol = self.target(server, kind), "protobuf"
                    figures[kind] = self.measure(
                        scenarios.pairs, target, protocol=protocol, prefix=f"p{number}x", **common
                    )
                rounds.append(scenario1Ratios(figures))
            out = {}
            if self.args.profile:
                for framing in FRAMINGS:
                    out[f"profile_{framing}"] = self.profile(servers[framing], framing, common)
        out.update(scenario1Summary(rounds))
        out["ngircd_baseline"] = ngircdInfo
        if "missing" in ngircdInfo:
            self.results["warnings"].append(f"scenario 1: no ngircd baseline: {ngircdInfo['missing']}")
        for name, value, op, threshold, info in scenario1Targets(out):
            self.addTarget("1", name, value, op, threshold, "ratio", info=info)
        return out

    def scenario2(self) -> dict:
        s = self.size
        out = {}
        for framing in ("delimited", "raw"):
            with self.protobufOnly(f"s2-{framing}", framing) as server:
                out[framing] = self.measure(
                    scenarios.pairs,
                    self.target(server, framing), count=s["pairs"], rate=s["rate"],
                    mode="all", warmup=s["warmup"], duration=s["rate_duration"], workers=1,
                )
            self.addTarget(
                "2", f"protobuf {framing}: p99 at {s['rate']:.0f} msg/s",
                out[framing]["latency_ms"].get("p99"), "<", TARGET_P99_2_MS, "ms",
            )
        return out

    def scenario3(self) -> dict:
        s = self.size
        with self.protobufOnly("s3", "raw") as server:
            return self.measure(
                scenarios.broadcast,
                self.target(server), users=s["broadcast_users"], window=s["broadcast_window"],
                warmup=s["warmup"], duration=s["duration"],
            )

    def scenario4(self) -> dict:
        s = self.size
        counts = s["idle"]
        with self.everything("s4", counts["msgr"] + 1) as server:
            out = scenarios.idle(self.target(server), counts, workers=4, hold=s["hold"])
        self.addTarget(
            "4", "server RSS per idle session", out.get("kib_per_session"), "<", TARGET_KIB_4, "KiB",
        )
        total = sum(counts.values())
        self.addTarget(
            "4", f"{total} sessions held without errors",
            out["open_after_hold"] if out["ok"] else 0, ">=",
            total if self.quick else TARGET_SESSIONS_4, "sessions",
        )
        return out

    def scenario5(self) -> dict:
        size = self.size["file_bytes"]
        out = {}
        pipe = self.pipe()
        out["baseline_kind"] = pipe[0]
        with pipe[1] as server:
            target = Target(ports={"pipe-in": pipe[2], "pipe-out": pipe[3]}, pid=server.pid)
            out["baseline"] = scenarios.fileTransfer(target, size, via="pipe")
        with self.chatd(
            "s5",
            {"msrp": ENDPOINT, "protobuf": OFF, "http": OFF, "msgr": OFF, "db": OFF},
            ["msrp"],
        ) as server:
            out["chatd"] = scenarios.fileTransfer(self.target(server), size, via="chatd")
        out["ratio"] = out["chatd"]["mb_per_s"] / out["baseline"]["mb_per_s"]
        self.addTarget("5", "MB/s vs baseline", out["ratio"], ">=", TARGET_RATIO_5, "ratio")
        self.addTarget(
            "5", "server peak RSS growth", out["chatd"]["server"]["peak_growth_mib"],
            "<", TARGET_PEAK_5_MIB, "MiB",
        )
        return out

    def scenario6(self) -> dict:
        s = self.size
        out = {}
        attempts = 1 + self.args.retries
        needed = max(
            64,
            scenarios.msgrAccountsNeeded((("msgr", "msgr"),), s["msgr_pairs"], attempts),
            scenarios.msgrAccountsNeeded(scenarios.CROSS, s["cross_pairs"], attempts),
        )
        with self.everything("s6", needed) as server:
            target = self.target(server)
            out["http_logins"] = self.measure(
                scenarios.msgrLogins,
                target, accounts=64, warmup=s["warmup"] / 2, duration=s["msgr_duration"],
            )
            out["socket"] = self.measure(
                scenarios.msgrMessages,
                target, pairsPerDirection=s["msgr_pairs"], warmup=s["warmup"] / 2,
                duration=s["msgr_duration"],
            )
            out["cross"] = self.measure(
                scenarios.msgrMessages,
                target, directions=scenarios.CROSS, pairsPerDirection=s["cross_pairs"],
                warmup=s["warmup"] / 2, duration=s["msgr_duration"],
            )
        return out

    def clusterNode(self, name: str, redis: RedisServer, prefix: str, nodeId: str) -> ServerProcess:
        """A node of scenario 7's cluster: protobuf and MSRP, on C{redis}."""
        return self.chatd(
            name,
            {
                "protobuf": ENDPOINT, "msrp": ENDPOINT, "http": OFF, "msgr": OFF, "db": OFF,
                "cluster": redis.url, "cluster-prefix": prefix, "node-id": nodeId,
                "metrics": ENDPOINT,
            },
            ["protobuf", "msrp", "metrics"],
        )

    def scenario7(self) -> dict:
        """
        The cluster: the same pipelined pairs on one process without
        --cluster (for reference), on one node with --cluster, and on two
        nodes with every pair on one node or every pair across the two;
        then paced at 5,000 messages a second across and within nodes; then
        an MSRP file within a node and across nodes.
        """
        s = self.size
        if "cluster" not in self.known:
            return {"unsupported": "this chatd has no --cluster"}
        program = findProgram("redis-server", "redis-server", "the cluster of scenario 7")
        if program is None:
            raise RuntimeError("redis-server is not installed, and cannot be installed (not root)")
        redis = RedisServer(program)
        redis.start()
        watched = {"redis": redis.process.pid}
        out: dict = {"redis_version": programVersion(program)}
        # Threads instead of worker processes: the tests' tiny runs.
        threads = s.get("threads", False)
        pipelined = dict(
            count=s["cluster_pairs"], window=s["cluster_window"], warmup=s["cluster_warmup"],
            duration=s["cluster_duration"], threads=threads,
        )
        paced = dict(
            count=s["cluster_pairs"], rate=s["cluster_rate"], mode="all", workers=1,
            warmup=s["cluster_warmup"], duration=s["cluster_rate_duration"], threads=threads,
        )
        try:
            with self.protobufOnly("s7-embedded", "raw") as server:
                out["embedded"] = self.measure(
                    scenarios.pairs, self.target(server), prefix="e", **pipelined
                )
            with self.clusterNode("s7-one", redis, "bench7one:", "one") as one:
                out["one_node"] = self.measure(
                    scenarios.pairs, self.target(one), prefix="o", processes=watched,
                    settle=lambda users: waitDirectory([one], users), **pipelined
                )
            with self.clusterNode("s7-a", redis, "bench7:", "a") as a, \
                    self.clusterNode("s7-b", redis, "bench7:", "b") as b:
                nodes = [self.target(a), self.target(b)]
                both = {"b": b.pid, **watched}

                def settle(users: int) -> None:
                    waitDirectory([a, b], users)

                runs = [(layout, 2, pipelined, "x") for layout in scenarios.LAYOUTS]
                runs += [(layout, 1, paced, "r") for layout in scenarios.LAYOUTS]
                for layout, workers, figures, letter in runs:
                    # Each run starts once the last one's users are gone
                    # from every node's directory.
                    settle(0)
                    senders, receivers = scenarios.clusterLayout(nodes, layout, workers)
                    out[layout + ("_paced" if letter == "r" else "")] = self.measure(
                        scenarios.pairs, nodes[0], prefix=f"{layout[:2]}{letter}",
                        senderTargets=senders, receiverTargets=receivers, processes=both,
                        settle=settle, **figures,
                    )
                if self.args.profile:
                    settle(0)
                    senders, receivers = scenarios.clusterLayout(nodes, "split", 2)
                    out["profile_split"] = self.sampleMany(
                        {"s7-split-a": a.pid, "s7-split-b": b.pid},
                        lambda: scenarios.pairs(
                            nodes[0], prefix="pfx", senderTargets=senders,
                            receiverTargets=receivers, settle=settle, **pipelined,
                        ),
                    )
                settle(0)
                out["files"] = self.clusterFiles(nodes, settle)
                if self.args.profile and out["files"].get("supported"):
                    settle(0)
                    out["profile_file"] = self.sampleMany(
                        {"s7-file-a": a.pid, "s7-file-b": b.pid},
                        lambda: scenarios.fileTransfer(
                            nodes[0], out["files"]["bytes"], receiverTarget=nodes[1],
                            headerTimeout=FILE_HEADER_TIMEOUT_7, settle=settle,
                            threads=threads,
                        ),
                        figure="mb_per_s",
                    )
            out["redis_benchmark"] = redisPublishRate(redis, s.get("redis_publishes", 100_000))
        finally:
            redis.cleanup()
        for key in ("embedded", "one_node", *scenarios.LAYOUTS, "same_paced", "split_paced"):
            out[key].update(clusterCosts(out[key]))
        same, split = out["same"], out["split"]
        out["cpu_per_msg_ratio"] = (
            same["msgs_per_cpu_s"] / split["msgs_per_cpu_s"] if split.get("msgs_per_cpu_s") else None
        )
        # The same ratio at the paced rate, where neither layout batches
        # (one message per read): shown, not a target.
        same, split = out["same_paced"], out["split_paced"]
        out["cpu_per_msg_ratio_paced"] = (
            same["msgs_per_cpu_s"] / split["msgs_per_cpu_s"]
            if split.get("msgs_per_cpu_s") and same.get("msgs_per_cpu_s") else None
        )
        self.addTarget(
            "7", "cross-node CPU per message vs same-node", out["cpu_per_msg_ratio"], "<=",
            TARGET_CPU_RATIO_7, "ratio",
        )
        self.addTarget(
            "7", f"cross-node p99 at {s['cluster_rate']:.0f} msg/s",
            out["split_paced"]["latency_ms"].get("p99"), "<", TARGET_P99_7_MS, "ms",
        )
        files = out["files"]
        if files.get("supported"):
            self.addTarget(
                "7", f"cross-node {files['bytes'] >> 20} MiB file: MB/s vs same-node",
                files["ratio"], ">=", TARGET_FILE_RATIO_7, "ratio",
            )
            for node, figures in files["cross_node"]["servers"].items():
                self.addTarget(
                    "7", f"cross-node file: {node.replace('_', ' ')} peak RSS growth",
                    figures["peak_growth_mib"], "<", TARGET_PEAK_7_MIB, "MiB",
                )
        else:
            self.results["warnings"].append(
                f"scenario 7: the cross-node file was not measured: {files['not_supported']}"
            )
        return out

    def clusterFiles(self, nodes: list, settle) -> dict:
        """
        Scenario 7's MSRP file within node A, then from A to B. A build
        that does not carry such a file across nodes refuses it to the
        sender: then the result says so (C{supported} false, and why).
        """
        size = self.size["cluster_file_bytes"]
        threads = self.size.get("threads", False)
        out = {"bytes": size}
        out["same_node"] = scenarios.fileTransfer(nodes[0], size, settle=settle, threads=threads)
        settle(0)
        out["cross_node"] = scenarios.fileTransfer(
            nodes[0], size, receiverTarget=nodes[1], headerTimeout=FILE_HEADER_TIMEOUT_7,
            settle=settle, threads=threads,
        )
        refused = out["cross_node"].get("refused")
        if refused is not None:
            out["supported"] = False
            out["not_supported"] = f"not supported by this build (the sender got: {refused})"
        else:
            out["supported"] = True
            out["ratio"] = out["cross_node"]["mb_per_s"] / out["same_node"]["mb_per_s"]
        return out

    def measure(self, scenario, *args, **kwargs) -> dict:
        """
        Run C{scenario}; while other processes took more than
        C{NOISY_PERCENT} of a core during it, and retries and time are
        left, wait for quiet and run it again. The least disturbed run
        counts; every attempt's disturbance is kept.
        """
        attempts = []
        best = None
        for attempt in range(1 + self.args.retries):
            if attempt:
                waitQuiet(self.args.wait_quiet)
            if "attempt" in inspect.signature(scenario).parameters:
                kwargs["attempt"] = attempt
            result = scenario(*args, **kwargs)
            other = result.get("other_cpu_percent", 0.0)
            attempts.append(round(other, 1))
            if best is None or other < best.get("other_cpu_percent", 0.0):
                best = result
            if other <= NOISY_PERCENT or time.monotonic() > self.retryUntil:
                break
        best["other_cpu_percent_attempts"] = attempts
        return best

    # Baselines and profiles.

    def pipe(self) -> tuple:
        """The baseline pipe of scenario 5: socat, else bench/pipe.py."""
        ports = []
        for _ in range(2):
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                ports.append(probe.getsockname()[1])
        socat = findSocat()
        if socat:
            version = subprocess.run([socat, "-V"], capture_output=True, text=True).stdout
            kind = next((l.split()[2] for l in version.splitlines() if "socat version" in l), "?")
            argv = [
                socat, "-b", "65536",
                f"TCP-LISTEN:{ports[0]},bind=127.0.0.1,reuseaddr",
                f"TCP-LISTEN:{ports[1]},bind=127.0.0.1,reuseaddr",
            ]
            kind = f"socat {kind}"
            labels = []
        else:
            argv = [sys.executable, os.path.join(HERE, "pipe.py"), str(ports[0]), str(ports[1])]
            kind = "bench/pipe.py (socat not found)"
            labels = ["pipe"]
        server = ServerProcess(argv, labels, cwd=self.work, logPath=os.path.join(self.logs, "pipe.log"))
        server.start()
        return kind, server, ports[0], ports[1]

    def profile(self, server: ServerProcess, framing: str, common: dict) -> dict:
        """Sample the server with py-spy during another run of scenario 1."""
        return self.sample(
            server.pid, f"s1-{framing}",
            lambda: scenarios.pairs(self.target(server, framing), prefix="x", **common),
        )

    def sample(self, pid: int, name: str, run) -> dict:
        """Sample process C{pid} with py-spy while C{run()} runs."""
        return self.sampleMany({name: pid}, run)[name]

    def sampleMany(self, pids: dict[str, int], run, figure: str = "msgs_per_s") -> dict:
        """
        Sample each of C{pids} (name to process id) with py-spy while
        C{run()} runs; a summary per name, with C{run()}'s C{figure}.
        """
        pyspy = os.path.join(os.path.dirname(sys.executable), "py-spy")
        if not os.path.exists(pyspy):
            return {name: {"error": "py-spy is not installed (pip install '.[bench]')"} for name in pids}
        raws = {name: os.path.join(self.output, f"profile-{name}.raw") for name in pids}
        # py-spy samples from before the logins to after the drain (the
        # logins take a fraction of a second of the run); SIGINT stops it,
        # and it writes what it has.
        recorders = {
            name: subprocess.Popen(
                [pyspy, "record", "--pid", str(pid), "--duration", "600",
                 "--rate", "200", "--function", "--format", "raw", "--output", raws[name]],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )
            for name, pid in pids.items()
        }
        try:
            result = run()
        finally:
            for recorder in recorders.values():
                recorder.send_signal(signal.SIGINT)
        out = {}
        for name, recorder in recorders.items():
            _, error = recorder.communicate(timeout=120)
            if recorder.returncode != 0 or not os.path.exists(raws[name]):
                out[name] = {"error": error.decode("utf-8", "replace")[-500:]}
                continue
            table = summarizeProfile(raws[name])
            path = os.path.join(self.output, f"profile-{name}.txt")
            with open(path, "w") as f:
                f.write(table["text"])
            out[name] = {f"{figure}_while_sampled": result[figure], "top": table["top"], "file": path}
        return out

    # Targets.

    def addTarget(
        self, scenario: str, name: str, value, op: str, threshold, unit: str, info: bool = False
    ) -> None:
        """
        A target and whether C{value} meets it; C{info}: shown for
        information, not a target any more (C{pass} is then C{None}).
        """
        if info:
            passed = None
        elif value is None:
            passed = False
        elif op == ">=":
            passed = value >= threshold
        elif op == "<=":
            passed = value <= threshold
        else:
            passed = value < threshold
        self.results["targets"].append(
            {
                "scenario": scenario, "name": name, "value": value, "op": op,
                "threshold": threshold, "unit": unit, "pass": passed, "info": info,
            }
        )

    # The whole run.

    def run(self) -> dict:
        started = time.monotonic()
        self.results["meta"] = meta(self.quick, self.args.checkout)
        only = set(self.args.only.split(",")) if self.args.only else None
        for number in ("1", "2", "3", "4", "5", "6", "7"):
            if only and number not in only:
                continue
            quiet = waitQuiet(self.args.wait_quiet)
            speed = speedProbe()
            print(f"scenario {number} ...", flush=True)
            began = time.monotonic()
            try:
                figures = getattr(self, f"scenario{number}")()
            except Exception:
                figures = {"error": traceback.format_exc()}
                print(figures["error"], file=sys.stderr)
            figures["wall_seconds"] = time.monotonic() - began
            figures["machine_busy_before_percent"] = quiet
            figures["speed_probe_ms"] = speed
            if quiet > 25:
                self.results["warnings"].append(
                    f"scenario {number}: the machine was {quiet:.0f}% busy (of one core)"
                    " before it started: other processes compete with the benchmark"
                )
            self.results["scenarios"][number] = figures
        self.results["wall_seconds"] = time.monotonic() - started
        shutil.rmtree(self.work, ignore_errors=True)
        return self.results


#: Scenario 1's chatd servers, one per framing.
FRAMINGS = ("delimited", "raw")


def perCpuSecond(result: dict) -> float | None:
    """
    Messages per CPU-second of the server: its messages a second divided
    by the share of one core it used (from /proc) meanwhile.
    """
    cpu = result.get("server", {}).get("cpu_percent")
    return result["msgs_per_s"] / (cpu / 100.0) if cpu else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def scenario1Ratios(figures: dict) -> dict:
    """
    One round of scenario 1: C{figures} (each server's result, by kind:
    C{relay}, C{ngircd} when there is one, C{delimited}, C{raw}), each
    given its C{msgs_per_cpu_s}, and chatd's ratios to the baselines:
    C{ratio_<framing>} (messages a second against the relay's, issue 6),
    C{ratio_<framing>_cpu} (per CPU-second, against the relay's),
    C{ratio_<framing>_vs_ngircd} and C{ratio_<framing>_vs_ngircd_cpu}.
    """
    for result in figures.values():
        result["msgs_per_cpu_s"] = perCpuSecond(result)
    out = dict(figures)
    for framing in FRAMINGS:
        chatd = figures[framing]
        for baseline, suffix in (("relay", ""), ("ngircd", "_vs_ngircd")):
            if baseline not in figures:
                continue
            other = figures[baseline]
            out[f"ratio_{framing}{suffix}"] = _ratio(chatd["msgs_per_s"], other["msgs_per_s"])
            out[f"ratio_{framing}{suffix}_cpu"] = _ratio(chatd["msgs_per_cpu_s"], other["msgs_per_cpu_s"])
    return out


def _median(values: list) -> float | None:
    known = sorted(v for v in values if v is not None)
    return known[len(known) // 2] if known else None


def scenario1Summary(rounds: list[dict]) -> dict:
    """
    Scenario 1's figures from its rounds (L{scenario1Ratios}): each ratio
    the median of the rounds'; each chatd server's figures those of the
    round whose ratio to its main baseline per CPU-second (ngircd's, else
    the relay's) is the median, and the baselines' those of delimited's
    round; C{rounds}, every round's figures, rounded.
    """
    kinds = [k for k in ("relay", "ngircd", *FRAMINGS) if k in rounds[0]]
    ratios = sorted(k for k in rounds[0] if k.startswith("ratio_"))
    out = {key: _median([r.get(key) for r in rounds]) for key in ratios}
    main = "_vs_ngircd_cpu" if "ngircd" in kinds else "_cpu"
    for framing in FRAMINGS:
        key = f"ratio_{framing}{main}"
        ordered = sorted(rounds, key=lambda r: (r.get(key) is None, r.get(key) or 0.0))
        known = [r for r in ordered if r.get(key) is not None] or ordered
        median = known[len(known) // 2]
        out[framing] = median[framing]
        if framing == "delimited":
            for baseline in ("relay", "ngircd"):
                if baseline in median:
                    out[baseline] = median[baseline]
    out["rounds"] = [
        {kind: round(r[kind]["msgs_per_s"]) for kind in kinds}
        | {f"{kind}_per_cpu_s": round(r[kind]["msgs_per_cpu_s"] or 0) for kind in kinds}
        | {key: round(r[key], 3) for key in ratios if r.get(key) is not None}
        | {f"other_cpu_{kind}": round(r[kind].get("other_cpu_percent", 0.0)) for kind in kinds}
        for r in rounds
    ]
    return out


def scenario1Targets(out: dict) -> list[tuple]:
    """
    Scenario 1's targets, as C{(name, value, op, threshold, info)}: issue
    17's per CPU-second (C{None} where the baseline is missing: not met),
    then issue 6's messages a second against the relay, for information.
    """
    targets = []
    for framing, threshold in TARGET_CPU_VS_NGIRCD_1.items():
        targets.append((f"protobuf {framing}: msg per CPU-s vs ngircd",
                        out.get(f"ratio_{framing}_vs_ngircd_cpu"), ">=", threshold, False))
    for framing, threshold in TARGET_CPU_VS_RELAY_1.items():
        targets.append((f"protobuf {framing}: msg per CPU-s vs relay",
                        out.get(f"ratio_{framing}_cpu"), ">=", threshold, False))
    for framing in FRAMINGS:
        targets.append((f"protobuf {framing}: msg/s vs relay (issue 6)",
                        out.get(f"ratio_{framing}"), ">=", TARGET_RATIO_1, True))
    return targets


def findSocat() -> str | None:
    """socat, installed with apt-get when missing and we are root."""
    return findProgram("socat", "socat", "the baseline of scenario 5")


def findProgram(command: str, package: str, why: str) -> str | None:
    """C{command}, installed (Debian C{package}) with apt-get when missing and we are root."""
    found = shutil.which(command)
    if found or os.geteuid() != 0 or not shutil.which("apt-get"):
        return found
    print(f"installing {package} ({why}) ...", flush=True)
    for steps in ([["apt-get", "install", "-y", "-qq", package]],
                  [["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", package]]):
        try:
            for step in steps:
                subprocess.run(step, check=True, capture_output=True, timeout=300,
                               env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
            break
        except (subprocess.SubprocessError, OSError):
            continue
    return shutil.which(command)


def directorySize(server: ServerProcess) -> int | None:
    """How many users a cluster node's directory holds (its /metrics)."""
    url = f"http://127.0.0.1:{server.ports['metrics']}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        for line in response.read().decode("utf-8").splitlines():
            if line.startswith("chatd_cluster_directory_users{"):
                return int(float(line.rsplit(" ", 1)[1]))
    return None


def waitDirectory(servers: list[ServerProcess], users: int, timeout: float = 30.0) -> None:
    """
    Wait until every node's directory holds C{users} users: a node learns
    of another's logins and logouts a moment after they happen.
    """
    deadline = time.monotonic() + timeout
    while True:
        sizes = [directorySize(server) for server in servers]
        if all(size == users for size in sizes):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the nodes' directories hold {sizes} users, not {users}")
        time.sleep(0.02)


def _publishedSize() -> int:
    """
    The size of what one message to another node is on its channel: a
    frame of one record (docs/cluster.md, "msg"), from node C{a}, between
    two pair names, with a 64-byte text, as chatd's own Publisher writes it.
    """
    from twisted.internet import defer
    from twisted.internet.task import Clock

    from chatd.cluster.presence import MSG_FRAME, RAW_MARK
    from chatd.cluster.redis import Publisher

    sent = []
    publisher = Publisher(lambda channel, payload: sent.append(payload) or defer.succeed(None), Clock())
    sender, receiver, text = "pxs0001", "pxr0001", "x" * 64
    fields = sender + receiver + text
    publisher.publishRecord(
        "to-b", MSG_FRAME + b"a" + RAW_MARK, (len(sender), len(receiver), len(text)),
        fields, 12 + len(fields),
    )
    publisher.flush()
    return len(sent[0])


#: A PUBLISH of the size of one message to another node, for
#: redis-benchmark (which takes its payload as an argument, so no NUL: the
#: size is what matters to Redis).
PUBLISHED = "x" * _publishedSize()


def redisPublishRate(redis: RedisServer, publishes: int) -> dict:
    """
    What one Redis core carries of scenario 7's traffic alone:
    C{redis-benchmark} sending C{publishes} PUBLISHes of L{PUBLISHED}
    (50 connections, 16 commands pipelined each) to a channel that one
    C{redis-cli} subscribes to, so that Redis writes every message out once,
    as it does for a node.
    """
    benchmark, cli = shutil.which("redis-benchmark"), shutil.which("redis-cli")
    if not benchmark or not cli:
        return {"error": "redis-benchmark or redis-cli is not installed (Debian redis-tools)"}
    channel = "bench7:capacity"
    subscriber = subprocess.Popen(
        [cli, "-p", str(redis.port), "subscribe", channel],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while redis.command("pubsub", "numsub", channel).split()[-1] != "1":
            if time.monotonic() > deadline:
                return {"error": "redis-cli did not subscribe"}
            time.sleep(0.02)
        before = readStats(redis.process.pid)
        output = subprocess.run(
            [benchmark, "-p", str(redis.port), "-n", str(publishes), "-c", "50", "-P", "16",
             "-q", "publish", channel, PUBLISHED],
            capture_output=True, text=True, timeout=300,
        ).stdout
        after = readStats(redis.process.pid)
    finally:
        subscriber.kill()
        subscriber.wait()
    # "PUBLISH bench7:capacity ...: 812345.67 requests per second, p50=..."
    found = re.search(r"([\d.]+) requests per second", output)
    if found is None:
        return {"error": output[-300:]}
    cpu = after.cpu - before.cpu
    return {
        "publishes": publishes,
        "publishes_per_s": float(found.group(1)),
        "redis_cpu_us_per_publish": 1e6 * cpu / publishes,
        "bytes": len(PUBLISHED),
    }


def programVersion(program: str) -> str | None:
    """The first line of C{PROGRAM --version}."""
    try:
        return subprocess.run(
            [program, "--version"], capture_output=True, text=True, timeout=10,
        ).stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


def clusterCosts(result: dict) -> dict:
    """
    What a run of scenario 7 cost: the chatd processes' CPU (the server,
    and node C{b} when there is one) and Redis' apart, in % of one core;
    messages per CPU-second of the chatd processes; Redis' CPU
    microseconds per message, and so how many such messages one Redis
    core would carry.
    """
    processes = result.get("processes", {})
    chatd = result["server"]["cpu_percent"] + processes.get("b", {}).get("cpu_percent", 0.0)
    out = {"chatd_cpu_percent": chatd}
    rate = result["msgs_per_s"]
    out["msgs_per_cpu_s"] = rate / (chatd / 100.0) if chatd > 0 else None
    if "redis" in processes:
        redis = processes["redis"]["cpu_percent"]
        out["redis_cpu_percent"] = redis
        out["redis_us_per_msg"] = 1e6 * redis / 100.0 / rate if rate else None
        out["redis_msgs_per_cpu_s"] = rate / (redis / 100.0) if redis > 0 else None
    return out


def speedProbe() -> float:
    """
    Milliseconds a fixed piece of pure Python takes now: this machine's
    speed varies (a VM shares its host), and runs are compared through it.
    """
    began = time.perf_counter()
    total = 0
    for i in range(300_000):
        total += i * i
    table = {str(i): i for i in range(30_000)}
    del table, total
    return 1000.0 * (time.perf_counter() - began)


def waitQuiet(limit: float) -> float:
    """
    How busy the machine is (percent of one core, over 0.3 seconds);
    waits up to C{limit} seconds for it to fall under 25%.
    """
    deadline = time.monotonic() + limit
    while True:
        before, at = machineBusySeconds()[0], time.monotonic()
        time.sleep(0.3)
        busy = 100.0 * (machineBusySeconds()[0] - before) / (time.monotonic() - at)
        if busy <= 25 or time.monotonic() >= deadline:
            return busy


def describe(tree: str) -> str | None:
    """C{git describe --always --dirty} of C{tree}, if it is a git checkout."""
    try:
        return subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=tree, capture_output=True,
            text=True, timeout=10,
        ).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def meta(quick: bool, checkout: str | None = None) -> dict:
    import twisted

    commit = describe(ROOT)
    return {
        "server_checkout": os.path.abspath(checkout) if checkout else None,
        "server_commit": describe(checkout) if checkout else commit,
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "quick": quick,
        "commit": commit,
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "twisted": twisted.__version__,
        "kernel": platform.release(),
    }


def summarizeProfile(path: str, top: int = 40) -> dict:
    """
    py-spy's raw (collapsed) stacks as the functions with the most samples:
    own (the function itself running) and total (it or what it called).
    """
    own: dict[str, int] = {}
    total: dict[str, int] = {}
    samples = 0
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            count = int(count)
            samples += count
            frames = stack.split(";")
            own[frames[-1]] = own.get(frames[-1], 0) + count
            for frame in set(frames):
                total[frame] = total.get(frame, 0) + count
    def rows(table):
        return [
            {"function": name, "percent": 100.0 * n / samples}
            for name, n in sorted(table.items(), key=lambda kv: -kv[1])[:top]
        ]
    topOwn, topTotal = rows(own), rows(total)
    lines = [f"{samples} samples\n", "own time (the function itself):"]
    lines += [f"  {r['percent']:5.1f}%  {r['function']}" for r in topOwn]
    lines += ["", "total time (the function and what it calls):"]
    lines += [f"  {r['percent']:5.1f}%  {r['function']}" for r in topTotal]
    return {"top": {"own": topOwn, "total": topTotal, "samples": samples}, "text": "\n".join(lines) + "\n"}


# The table.


def _fmt(value, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def rows(results: dict) -> list[list[str]]:
    """The table's rows: scenario, figure, chatd, baseline, ratio, p50, p99, CPU, RSS."""
    out = []
    sc = results["scenarios"]

    def lat(r, key):
        return _fmt(r.get("latency_ms", {}).get(key), 2)

    def srv(r):
        server = r.get("server", {})
        return (
            _fmt(server.get("cpu_percent")),
            _fmt(server.get("rss_max_mib", server.get("rss_mib"))),
            _fmt(r.get("other_cpu_percent")),
        )

    for number, figures in sc.items():
        if "error" in figures:
            out.append([number, "FAILED: " + figures["error"].strip().splitlines()[-1][:60]] + [""] * 8)
    if "1" in sc and "relay" in sc["1"]:
        out += scenario1Rows(sc["1"], lat, srv)
    if "2" in sc and "delimited" in sc["2"]:
        for framing in ("delimited", "raw"):
            r = sc["2"][framing]
            out.append(["2", f"{framing} at {_fmt(r['offered_per_s'])} msg/s (max {_fmt(r['latency_ms'].get('max'), 1)} ms)",
                        _fmt(r["msgs_per_s"]), "", "", lat(r, "p50"), lat(r, "p99"), *srv(r)])
    if "3" in sc and "deliveries_per_s" in sc["3"]:
        r = sc["3"]
        out.append(["3", f"broadcast to {r['users']}: deliveries/s ({_fmt(r['broadcasts_per_s'])} bcasts/s)",
                    _fmt(r["deliveries_per_s"]), "", "", lat(r, "p50"), lat(r, "p99"), *srv(r)])
    if "4" in sc and "sessions" in sc["4"]:
        r = sc["4"]
        server = r.get("server", {})
        out.append(["4", f"{_fmt(r['sessions'])} idle sessions: logins/s", _fmt(r["logins_per_s"]), "", "", "", "",
                    "", _fmt(server.get("rss_after_hold_mib")), ""])
        for protocol, phase in r["phases"].items():
            label = f"  {protocol}: {_fmt(phase['logged_in'])} logins/s, KiB/session"
            if "kib_per_session_socket" in phase:
                label += f" ({_fmt(phase['kib_per_session_socket'], 1)} without HTTP logins)"
            out.append(["4", label, _fmt(phase["per_s"]), "", "",
                        _fmt(phase["login_ms"].get("p50"), 2), _fmt(phase["login_ms"].get("p99"), 2), "",
                        _fmt(phase.get("kib_per_session"), 1), ""])
        out.append(["4", "  all: KiB per session", _fmt(r.get("kib_per_session"), 1), "", "", "", "", "", "", ""])
    if "5" in sc and "chatd" in sc["5"]:
        s = sc["5"]
        r, b = s["chatd"], s["baseline"]
        out.append(["5", f"MSRP {r['bytes'] >> 20} MiB file: MB/s", _fmt(r["mb_per_s"]), _fmt(b["mb_per_s"]),
                    _fmt(s["ratio"], 2), "", "", _fmt(r["server"].get("cpu_percent")),
                    f"peak +{r['server']['peak_growth_mib']:.1f}", ""])
    if "6" in sc and "http_logins" in sc["6"]:
        s = sc["6"]
        r = s["http_logins"]
        out.append(["6", "MSGR HTTP logins/s", _fmt(r["logins_per_s"]), "", "", lat(r, "p50"), lat(r, "p99"), *srv(r)])
        r = s["socket"]
        out.append(["6", "MSGR socket msg/s", _fmt(r["msgs_per_s"]), "", "", lat(r, "p50"), lat(r, "p99"), *srv(r)])
        r = s["cross"]
        out.append(["6", f"cross-protocol msg/s ({len(r['directions'])} directions, {'all' if r['ok'] else 'NOT all'} delivered)",
                    _fmt(r["msgs_per_s"]), "", "", lat(r, "p50"), lat(r, "p99"), *srv(r)])
    if "7" in sc and "split" in sc["7"]:
        s = sc["7"]
        labels = {
            "embedded": "1 process, no --cluster",
            "one_node": "1 node (--cluster)",
            "same": "2 nodes, pairs within a node",
            "split": "2 nodes, pairs across nodes",
        }
        for key, label in labels.items():
            r = s[key]
            costs = f"{_fmt(r.get('msgs_per_cpu_s'))} per chatd CPU-s"
            if "redis_cpu_percent" in r:
                costs += f", Redis {_fmt(r['redis_cpu_percent'])}%"
            cpu, rss, other = srv(r)
            out.append(["7", f"{label}: msg/s ({costs})", _fmt(r["msgs_per_s"]),
                        _fmt(s["same"]["msgs_per_cpu_s"]) if key == "split" else "",
                        _fmt(s.get("cpu_per_msg_ratio"), 2) if key == "split" else "",
                        lat(r, "p50"), lat(r, "p99"), _fmt(r["chatd_cpu_percent"]), rss, other])
        for layout in ("same", "split"):
            r = s[f"{layout}_paced"]
            across = layout == "split"
            cpu, rss, other = srv(r)
            out.append(["7", f"  {labels[layout][9:]} at {_fmt(r['offered_per_s'])} msg/s"
                        f" (max {_fmt(r['latency_ms'].get('max'), 1)} ms;"
                        f" {_fmt(r.get('msgs_per_cpu_s'))} per chatd CPU-s)",
                        _fmt(r["msgs_per_s"]),
                        _fmt(s["same_paced"].get("msgs_per_cpu_s")) if across else "",
                        _fmt(s.get("cpu_per_msg_ratio_paced"), 2) if across else "",
                        lat(r, "p50"), lat(r, "p99"), _fmt(r.get("chatd_cpu_percent")), rss, other])
        bench = s.get("redis_benchmark", {})
        if "publishes_per_s" in bench:
            out.append(["7", f"Redis alone: PUBLISH/s, 1 subscriber (redis-benchmark;"
                        f" {bench['redis_cpu_us_per_publish']:.1f} µs of Redis CPU each)",
                        _fmt(bench["publishes_per_s"]), "", "", "", "", "", "", ""])
        files = s.get("files", {})
        if "same_node" in files:
            r = files["same_node"]
            out.append(["7", f"MSRP {files['bytes'] >> 20} MiB file within a node: MB/s",
                        _fmt(r.get("mb_per_s")), "", "", "", "",
                        _fmt(r.get("server", {}).get("cpu_percent")),
                        f"peak +{r['server']['peak_growth_mib']:.1f}" if "server" in r else "", ""])
            if files.get("supported"):
                r = files["cross_node"]
                peaks = "/".join(f"+{v['peak_growth_mib']:.1f}" for v in r["servers"].values())
                out.append(["7", "  across nodes: MB/s", _fmt(r["mb_per_s"]), _fmt(files["same_node"]["mb_per_s"]),
                            _fmt(files["ratio"], 2), "", "", "", f"peak {peaks}", ""])
            else:
                out.append(["7", "  across nodes: not supported by this build", "-", "", "", "", "", "", "", ""])
    return out


def scenario1Rows(s: dict, lat, srv) -> list[list[str]]:
    """
    Scenario 1's rows: each server's messages a second and, under it, per
    CPU-second; chatd's against each baseline's (the ratio column: the
    median of the rounds').
    """
    out = []
    blank = [""] * 5
    baselines = {"relay": s["relay"]}
    if "ngircd" in s:
        baselines["ngircd"] = s["ngircd"]
    for kind, r in baselines.items():
        label = f"{kind} baseline msg/s"
        if kind == "ngircd":
            label += f" ({(s.get('ngircd_baseline', {}).get('version') or '?').split('-')[0]})"
        out.append(["1", label, _fmt(r["msgs_per_s"]), "", "", lat(r, "p50"), lat(r, "p99"), *srv(r)])
        out.append(["1", "  per CPU-second", _fmt(r.get("msgs_per_cpu_s")), *[""] * 7])
    if "ngircd" not in s:
        missing = s.get("ngircd_baseline", {}).get("missing", "not measured")
        out.append(["1", f"ngircd baseline: MISSING ({missing})"[:100], "-", *[""] * 7])
    rounds = len(s.get("rounds", []))
    for framing in FRAMINGS:
        if framing not in s:
            continue
        r = s[framing]
        label = f"protobuf {framing} msg/s" + (f" (median of {rounds} rounds)" if rounds > 1 else "")
        out.append(["1", label, _fmt(r["msgs_per_s"]), _fmt(s["relay"]["msgs_per_s"]),
                    _fmt(s.get(f"ratio_{framing}"), 2), lat(r, "p50"), lat(r, "p99"), *srv(r)])
        for baseline, suffix in (("relay", ""), ("ngircd", "_vs_ngircd")):
            if baseline in s:
                out.append(["1", f"  per CPU-second, vs {baseline}", _fmt(r.get("msgs_per_cpu_s")),
                            _fmt(s[baseline].get("msgs_per_cpu_s")),
                            _fmt(s.get(f"ratio_{framing}{suffix}_cpu"), 2), *blank])
    return out


def table(results: dict) -> str:
    header = ["#", "figure", "chatd", "baseline", "ratio", "p50 ms", "p99 ms", "srv CPU%", "srv RSS MiB", "other CPU%"]
    body = rows(results)
    widths = [max(len(str(r[i])) for r in [header] + body) for i in range(len(header))]

    def line(r):
        return "  ".join(
            str(c).ljust(w) if i < 2 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths))
        )

    lines = [line(header), line(["-" * w for w in widths])] + [line(r) for r in body]
    lines += ["", "targets:"]
    for t in results["targets"]:
        value = _fmt(t["value"], 2) if t["value"] is not None else "-"
        verdict = "info" if t.get("info") else "pass" if t["pass"] else "FAIL"
        lines.append(
            f"  [{verdict}] {t['scenario']}: {t['name']} = {value} {t['unit']}"
            f" ({'was a target' if t.get('info') else 'target'} {t['op']} {t['threshold']})"
        )
    for warning in results.get("warnings", []):
        lines.append(f"warning: {warning}")
    errors = []
    for number, figures in results["scenarios"].items():
        for key, r in figures.items():
            if isinstance(r, dict) and r.get("ok") is False:
                errors.append(f"scenario {number} {key}: {r.get('errors') or r.get('check_samples')}")
        if figures.get("ok") is False:
            errors.append(f"scenario {number}: {figures.get('errors') or figures.get('check_samples')}")
    for error in errors:
        lines.append(f"error: {error}")
    lines.append(
        "other CPU%: what the rest of the machine did meanwhile, in % of one core, beyond the"
        " server, the load generator and the kernel's interrupts; a figure measured with much"
        " of it is less trustworthy"
    )
    lines.append(f"wall time: {results['wall_seconds']:.0f} s")
    return "\n".join(lines)


# The chart.


def chart(results: dict, path: str) -> str | None:
    """Throughput and latency per scenario, as a PNG; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    sc = results["scenarios"]
    panels = []  # (title, unit, [(label, value, is_baseline)], [(label, p50, p99)])
    if "1" in sc and "relay" in sc["1"]:
        s = sc["1"]
        kinds = [k for k in ("relay", "ngircd", "delimited", "raw") if k in s]
        baseline = {"relay", "ngircd"}
        bars = [(k, s[k]["msgs_per_s"], k in baseline) for k in kinds]
        lats = [(k, s[k]["latency_ms"].get("p50"), s[k]["latency_ms"].get("p99")) for k in kinds]
        panels.append(("1: direct messages, pipelined", "msg/s", bars, lats))
        panels.append(("1: msg per CPU-second of the server", "msg / CPU-s",
                       [(k, s[k].get("msgs_per_cpu_s") or 0, k in baseline) for k in kinds], []))
    if "2" in sc and "delimited" in sc["2"]:
        s = sc["2"]
        bars = [(f, s[f]["msgs_per_s"], False) for f in ("delimited", "raw")]
        lats = [(f, s[f]["latency_ms"].get("p50"), s[f]["latency_ms"].get("p99"), s[f]["latency_ms"].get("max"))
                for f in ("delimited", "raw")]
        panels.append((f"2: latency at {s['delimited']['offered_per_s']:.0f} msg/s", "msg/s", bars, lats))
    if "3" in sc and "deliveries_per_s" in sc["3"]:
        r = sc["3"]
        panels.append((f"3: broadcast to {r['users']}", "deliveries/s",
                       [("chatd", r["deliveries_per_s"], False)],
                       [("chatd", r["latency_ms"].get("p50"), r["latency_ms"].get("p99"))]))
    if "4" in sc and "phases" in sc["4"]:
        r = sc["4"]
        panels.append((f"4: {r['sessions']:,} idle sessions", "logins/s",
                       [(p, ph["per_s"] or 0, False) for p, ph in r["phases"].items()],
                       [(p, ph["login_ms"].get("p50"), ph["login_ms"].get("p99")) for p, ph in r["phases"].items()]))
    if "5" in sc and "chatd" in sc["5"]:
        s = sc["5"]
        panels.append((f"5: MSRP {s['chatd']['bytes'] >> 20} MiB file", "MB/s",
                       [("pipe", s["baseline"]["mb_per_s"], True), ("chatd", s["chatd"]["mb_per_s"], False)], []))
    if "6" in sc and "socket" in sc["6"]:
        s = sc["6"]
        panels.append(("6: MSGR", "per second",
                       [("HTTP logins", s["http_logins"]["logins_per_s"], False),
                        ("socket msg", s["socket"]["msgs_per_s"], False),
                        ("cross msg", s["cross"]["msgs_per_s"], False)],
                       [(k, s[k]["latency_ms"].get("p50"), s[k]["latency_ms"].get("p99"))
                        for k in ("http_logins", "socket", "cross")]))
    if "7" in sc and "split" in sc["7"]:
        s = sc["7"]
        keys = (("embedded", "1 proc"), ("one_node", "1 node"), ("same", "within"), ("split", "across"))
        panels.append(("7: cluster, msg per chatd CPU-s", "msg / CPU-s",
                       [(label, s[key].get("msgs_per_cpu_s") or 0, key == "embedded") for key, label in keys],
                       [(label, s[f"{layout}_paced"]["latency_ms"].get("p50"),
                         s[f"{layout}_paced"]["latency_ms"].get("p99"))
                        for layout, label in (("same", "within"), ("split", "across"))]))
    if not panels:
        return None
    fig, axes = plt.subplots(2, len(panels), figsize=(3.2 * len(panels), 6.5), squeeze=False)
    for column, (title, unit, bars, lats) in enumerate(panels):
        ax = axes[0][column]
        labels = [b[0] for b in bars]
        values = [b[1] for b in bars]
        colors = ["#999999" if b[2] else "#3465a4" for b in bars]
        ax.bar(labels, values, color=colors)
        positive = [v for v in values if v > 0]
        if positive and max(positive) > 100 * min(positive):
            ax.set_yscale("log")
        ax.set_title(title, fontsize=9)
        ax.set_ylabel(unit, fontsize=8)
        ax.tick_params(labelsize=7)
        for i, v in enumerate(values):
            ax.annotate(f"{v:,.0f}", (i, v), ha="center", va="bottom", fontsize=7)
        ax = axes[1][column]
        if lats:
            x = list(range(len(lats)))
            series = [("p50", 1, "#73d216"), ("p99", 2, "#cc0000")]
            if all(len(l) > 3 for l in lats):
                series.append(("max", 3, "#5c3566"))
            width = 0.8 / len(series)
            for n, (label, index, color) in enumerate(series):
                offset = (n - (len(series) - 1) / 2) * width
                ax.bar([i + offset for i in x], [l[index] or 0 for l in lats], width=width,
                       label=label, color=color)
            ax.set_xticks(x)
            ax.set_xticklabels([l[0] for l in lats])
            ax.set_yscale("log")
            smallest = [l[i] for l in lats for _, i, _ in series if l[i]]
            if smallest:
                ax.set_ylim(bottom=min(smallest) / 2)
            ax.set_ylabel("login time, ms" if title.startswith("4:") else "latency, ms", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.legend(fontsize=7)
        else:
            ax.axis("off")
    meta = results.get("meta", {})
    fig.suptitle(
        f"chatd make bench{' QUICK' if meta.get('quick') else ''} — {meta.get('started', '')},"
        f" server {meta.get('server_commit') or '?'}, {meta.get('cpus')} cores (grey: baseline)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="make bench: every scenario of docs/performance.md against a real"
        " twistd -n chatd on 127.0.0.1, with its baselines in the same run."
    )
    parser.add_argument("--quick", action="store_true", help="the short run (about a minute and a half)")
    parser.add_argument("--only", help="scenarios to run, e.g. 1,5")
    parser.add_argument("--profile", action="store_true",
                        help="also sample the server with py-spy during scenario 1, and both"
                             " nodes during scenario 7's pairs and file across nodes")
    parser.add_argument("--output", default=os.path.join(HERE, "results"),
                        help="where the JSON, logs and profiles go (default: %(default)s)")
    parser.add_argument("--chart", help="the PNG chart (default: docs/bench.png, or OUTPUT/latest-quick.png)")
    parser.add_argument("--wait-quiet", type=float, default=None, metavar="SECONDS",
                        help="before each scenario, wait up to this long for the machine to be"
                             " quiet (under 25%% of a core busy); default 15, 0 with --quick")
    parser.add_argument("--checkout", metavar="DIR",
                        help="run the server from another chatd source tree (e.g. a git worktree"
                             " of an older commit), to compare; the load generator stays this one")
    parser.add_argument("--repeat", type=int, default=None, metavar="N",
                        help="rounds of scenario 1 (relay, ngircd, delimited, raw in turn), whose median"
                             " ratio counts (default 3, 1 with --quick): a 2-core VM's speed varies"
                             " by 10-20%% from one second to the next")
    parser.add_argument("--retries", type=int, default=None,
                        help="runs again a measurement disturbed by other processes, at most"
                             " this many times; default 2, 0 with --quick")
    args = parser.parse_args(argv)
    if args.wait_quiet is None:
        args.wait_quiet = 0.0 if args.quick else 15.0
    if args.retries is None:
        args.retries = 0 if args.quick else 2
    bench = Bench(args)
    results = bench.run()
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    suffix = "-quick" if args.quick else ""
    # Only a full run of every scenario draws the README's chart.
    complete = not args.quick and not args.only
    chartPath = args.chart or (
        os.path.join(ROOT, "docs", "bench.png") if complete
        else os.path.join(args.output, f"latest{suffix or '-partial'}.png")
    )
    results["chart"] = chart(results, chartPath)
    for name in (f"latest{suffix}.json", f"{stamp}{suffix}.json"):
        with open(os.path.join(args.output, name), "w") as f:
            json.dump(results, f, indent=1, default=str)
    print()
    print(table(results))
    print(f"results: {os.path.join(args.output, f'latest{suffix}.json')}"
          + (f", chart: {results['chart']}" if results["chart"] else " (no chart: matplotlib missing)"))
    failed = any("error" in s for s in results["scenarios"].values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
