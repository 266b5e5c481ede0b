"""
The benchmark scenarios of docs/performance.md, against any server.

Each function takes a L{Target} (where the server listens, and its process
id when it is local, to read its CPU and memory) and returns a dict of
figures, ready for JSON. None of them starts a server: C{bench/run.py}
starts one per scenario, and C{chatd-loadgen} points them at a deployment.

Throughputs are deliveries counted by receivers between the end of the
warm-up and the end of the run, divided by that time; latencies are from
the send-time stamp in each text to its arrival (every message in the paced
scenario, one per read otherwise). After the run every sender stops and the
receivers wait for what is still on its way: a message that never arrives
is an error, not a lower figure.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from chatd.harness import ProcessStats, Watch, readStats, resetPeak
from chatd.loadgen.worker import WorkerError, WorkerPool

_NS = 1_000_000_000
# Base 33: digits and lower-case letters but 'l', 'm' and 'o', which look like
# '1', 'rn' and '0' (chatd refuses a name that looks like one online).
_DIGITS = "0123456789abcdefghijknpqrstuvwxyz"


@dataclass
class Target:
    """
    Where the server under test listens: C{ports} by label (C{protobuf},
    C{msrp}, C{msgr}, C{msgr-http}, or C{relay} and C{irc} for the baselines), on
    C{host}. C{pid} is the server's process id when it runs on this machine.
    """

    host: str = "127.0.0.1"
    ports: dict[str, int] = field(default_factory=dict)
    pid: int | None = None
    framing: str = "raw"
    password: str = "loadgen-password"

    def address(self, label: str) -> tuple[str, int]:
        if label not in self.ports:
            raise ValueError(f"no {label} port given for {self.host}")
        return (self.host, self.ports[label])


def shortName(letter: str, index: int) -> str:
    """
    A 4-character name: C{letter} and C{index} in 3 base-33 digits, none of
    which looks like another.
    """
    base = len(_DIGITS)
    if not 0 <= index < base**3:
        raise ValueError("index out of range for a 4-byte name")
    digits = ""
    for _ in range(3):
        index, digit = divmod(index, base)
        digits = _DIGITS[digit] + digits
    return letter + digits


def msgrNames(count: int) -> list[str]:
    """The MSGR account names the scenarios use (4 bytes, so MSRP can write to them)."""
    return [shortName("g", i) for i in range(count)]


def percentiles(values: list[int]) -> dict:
    """p50, p90, p99, p99.9 and max of nanosecond C{values}, in milliseconds."""
    if not values:
        return {"samples": 0}
    ordered = sorted(values)
    count = len(ordered)

    def rank(q: float) -> float:
        return ordered[min(count - 1, max(0, int(q * count + 0.5) - 1))] / 1e6

    return {
        "samples": count,
        "p50": rank(0.50),
        "p90": rank(0.90),
        "p99": rank(0.99),
        "p999": rank(0.999),
        "max": ordered[-1] / 1e6,
    }


def _split(items: list, parts: int) -> list[list]:
    return [items[i::parts] for i in range(parts)]


class ScenarioFailed(Exception):
    """The scenario could not be run (logins refused, calibration failed)."""


def _login(
    pool: WorkerPool,
    target: "Target | list[Target]",
    group: str,
    protocol: str,
    namesPerWorker: list[list[str]],
    concurrency: int = 64,
    timeout: float = 120.0,
    afterTokens: Callable[[], None] | None = None,
) -> dict:
    """
    Log C{namesPerWorker[i]} in from worker C{i}, as C{group}, to
    C{target} (or to C{target[i]}: a node of a cluster per worker); MSGR
    names log in over HTTP first (then C{afterTokens} is called). Returns
    C{elapsed} (wall seconds of the whole step), C{http_elapsed},
    C{logged_in}, C{failed}, C{errors}.
    """
    start = time.monotonic()
    targets = target if isinstance(target, list) else [target] * len(namesPerWorker)
    tokens: list[dict] = [{} for _ in namesPerWorker]
    errors: list[str] = []
    httpElapsed = 0.0
    httpSeconds: list[float] = []
    if protocol == "msgr":
        results = pool.callAll(
            "msgrTokens",
            perWorker=[
                {"names": names, "address": targets[i].address("msgr-http")}
                for i, names in enumerate(namesPerWorker)
            ],
            password=targets[0].password,
            timeout=timeout,
        )
        tokens = [r["tokens"] for r in results]
        for r in results:
            errors += r["errors"]
            httpSeconds += r["login_seconds"]
        httpElapsed = time.monotonic() - start
        if afterTokens is not None:
            afterTokens()
    label = "protobuf" if protocol == "protobuf" else protocol
    results = pool.callAll(
        "login",
        perWorker=[
            {"names": names, "tokens": tokens[i], "address": targets[i].address(label)}
            for i, names in enumerate(namesPerWorker)
        ],
        group=group,
        protocol=protocol,
        framing=targets[0].framing,
        concurrency=concurrency,
        timeout=timeout,
    )
    loggedIn = sum(r["logged_in"] for r in results)
    for r in results:
        errors += r["error_samples"]
    extra = {}
    if protocol == "msgr":
        extra["http_login_ms"] = percentiles([int(s * _NS) for s in httpSeconds])
    return {
        **extra,
        "elapsed": time.monotonic() - start,
        "http_elapsed": httpElapsed,
        "logged_in": loggedIn,
        "failed": sum(len(names) for names in namesPerWorker) - loggedIn,
        "errors": errors[:10],
        "login_ms": percentiles(
            [int(s * _NS) for r in results for s in r["login_seconds"]]
        ),
    }


def _loginOrFail(*args, **kwargs) -> dict:
    result = _login(*args, **kwargs)
    if result["errors"]:
        raise ScenarioFailed(f"logins failed: {result['errors']}")
    return result


def _measure(
    pool: WorkerPool,
    target: Target,
    warmup: float,
    duration: float,
    drainTimeout: float = 30.0,
    broadcaster: int | None = None,
    processes: dict[str, int] | None = None,
) -> dict:
    """
    Run the workers' traffic and add everything up. Besides the server
    (C{target.pid}), the C{processes} (label to pid: another node of a
    cluster, its Redis) are sampled too, each in C{result["processes"]}.
    """
    # Every worker must have the command before the start.
    start = time.monotonic() + (0.02 if pool.threads else 0.2)
    warm = start + warmup
    end = warm + duration
    watch = Watch(target.pid) if target.pid else None
    others = {label: Watch(pid) for label, pid in (processes or {}).items()}
    for each in [watch, *others.values()]:
        if each:
            each.__enter__()
    try:
        runs = pool.callAll("run", start=start, warm=warm, end=end)
        expected = runs[broadcaster]["sent"] if broadcaster is not None else None
        drains = pool.callAll("drain", timeout=drainTimeout, expected=expected)
    finally:
        for each in [watch, *others.values()]:
            if each:
                each.__exit__(None, None, None)
    windows = [d["window"] for d in drains]
    seconds = duration
    delivered = sum(w["delivered"] for w in windows)
    answered = sum(w["answered"] for w in windows)
    sent = sum(w["sent"] for w in windows)
    latencies = [v for w in windows for v in w["latencies_ns"]]
    lags = [v for d in drains for v in d["lags_ns"]]
    cpu = sum(d["cpu"].get("cpu_seconds", 0.0) for d in drains)
    errors = [e for d in drains for e in d["errors"]]
    result = {
        "msgs_per_s": delivered / seconds,
        "answers_per_s": answered / seconds,
        "sent_per_s": sent / seconds,
        "seconds": seconds,
        "latency_ms": percentiles(latencies),
        "loadgen_cpu_percent": 100.0 * cpu / seconds,
        "total_sent": sum(d["sent"] for d in drains),
        "total_delivered": sum(d["delivered"] for d in drains),
        "missing": sum(d["missing"] for d in drains),
        "unanswered": sum(d["unanswered"] for d in drains),
        "errors": errors[:10],
        "error_count": sum(d["error_count"] for d in drains),
        "pongs": sum(d.get("pongs", 0) for d in drains),
    }
    if lags:
        result["send_lag_ms"] = percentiles(lags)
    if others:
        result["processes"] = {label: w.span(warm, end) for label, w in others.items()}
    if watch:
        result["server"] = watch.span(warm, end)
        # What neither the server nor the workers did: the kernel's
        # softirq work for loopback TCP, the parent, and any other process
        # of the machine (which makes the figures less trustworthy).
        server = result["server"]
        # Time the hypervisor gave to other machines counts as disturbance
        # too: those cores did not run this one's processes.
        result["other_cpu_percent"] = max(
            0.0,
            server["machine_cpu_percent"]
            - server["interrupt_cpu_percent"]
            - server["cpu_percent"]
            - sum(p["cpu_percent"] for p in result.get("processes", {}).values())
            - result["loadgen_cpu_percent"],
        )
    result["ok"] = result["error_count"] == 0 and not result["missing"] and not result["unanswered"]
    return result


def _calibrate(pool: WorkerPool) -> None:
    results = pool.callAll("calibrate")
    bad = [e for r in results for e in r["errors"]]
    if bad or not all(r["ok"] for r in results):
        raise ScenarioFailed(f"calibration failed: {bad}")


def pairs(
    target: Target,
    protocol: str = "protobuf",
    count: int = 100,
    workers: int = 2,
    window: int = 64,
    warmup: float = 2.0,
    duration: float = 10.0,
    mode: str = "sample",
    rate: float | None = None,
    prefix: str = "p",
    threads: bool = False,
    attempt: int = 0,
    senderTargets: list[Target] | None = None,
    receiverTargets: list[Target] | None = None,
    processes: dict[str, int] | None = None,
    settle: Callable[[int], None] | None = None,
) -> dict:
    """
    Scenarios 1 and 2: C{count} sender/receiver pairs of C{protocol}
    (C{protobuf}, or a baseline: C{relay}, C{irc}) sending 64-byte texts: pipelined, C{window}
    messages in flight per pair; or, with C{rate}, paced at C{rate}
    messages a second in all, evenly spread.

    Scenario 7 spreads them over the nodes of a cluster: worker C{i}'s
    senders log in to C{senderTargets[i]} and its receivers to
    C{receiverTargets[i]} (L{clusterLayout}); C{processes} are sampled
    besides C{target}'s (L{_measure}). C{settle(users)} is called once
    every session logged in: a node learns of another's logins a moment
    later, so it waits until every node's directory has them.

    Each C{attempt} uses other names, so that running a scenario again
    never meets the names of the last run, which the server may still be
    logging out.
    """
    if attempt:
        prefix += str(attempt)
    receivers = [f"{prefix}r{i:04d}" for i in range(count)]
    senders = [f"{prefix}s{i:04d}" for i in range(count)]
    with WorkerPool(workers, threads) as pool:
        _loginOrFail(pool, receiverTargets or target, "recv", protocol, _split(receivers, workers))
        logins = _loginOrFail(
            pool, senderTargets or target, "send", protocol, _split(senders, workers)
        )
        if settle is not None:
            settle(2 * count)
        if rate:
            pool.callAll("traffic", mode=mode, window=None, rate=rate / workers)
        else:
            pool.callAll("traffic", mode=mode, window=window)
        pool.callAll("pairs", senders="send", receivers="recv")
        _calibrate(pool)
        result = _measure(pool, target, warmup, duration, processes=processes)
        pool.callAll("closeAll")
    result.update(
        {
            "protocol": protocol,
            "framing": target.framing if protocol == "protobuf" else None,
            "pairs": count,
            "window": None if rate else window,
            "offered_per_s": rate,
            "workers": workers,
            "login_ms": logins["login_ms"],
        }
    )
    return result


#: Scenario 7's layouts of sender/receiver pairs over two nodes.
LAYOUTS = ("same", "split")


def clusterLayout(
    nodes: list[Target], layout: str, workers: int = 2
) -> tuple[list[Target], list[Target]]:
    """
    Where each worker's senders and receivers log in, for L{pairs}, on the
    C{nodes} of a cluster: C{"same"}, every pair on one node (worker C{i}'s
    on node C{i % len(nodes)}), so no message crosses Redis; C{"split"},
    every pair across two nodes (worker C{i}'s senders on node C{i}, its
    receivers on the next), so every message does, in both directions.

    @return: the senders' targets and the receivers' targets, per worker.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, not {layout!r}")
    if layout == "split" and len(nodes) < 2:
        raise ValueError("a split layout needs two nodes")
    senders = [nodes[i % len(nodes)] for i in range(workers)]
    shift = 1 if layout == "split" else 0
    receivers = [nodes[(i + shift) % len(nodes)] for i in range(workers)]
    return senders, receivers


def broadcast(
    target: Target,
    users: int = 1000,
    workers: int = 2,
    window: int = 4,
    warmup: float = 2.0,
    duration: float = 10.0,
    mode: str = "sample",
    prefix: str = "b",
    threads: bool = False,
    attempt: int = 0,
) -> dict:
    """
    Scenario 3: C{users} logged-in protobuf users and one more who sends to
    C{all}, keeping C{window} broadcasts in flight (counted by its answers).
    """
    if attempt:
        prefix += str(attempt)
    receivers = [f"{prefix}{i:04d}" for i in range(users)]
    with WorkerPool(workers, threads) as pool:
        logins = _loginOrFail(pool, target, "recv", "protobuf", _split(receivers, workers))
        _loginOrFail(
            pool, target, "bsend", "protobuf",
            [[f"{prefix}sender"]] + [[] for _ in range(workers - 1)],
        )
        pool.callAll("traffic", mode=mode, window=window)
        sender = pool.call(0, "broadcast", group="bsend")
        pool.callAll("inboxes", group="recv", sender=sender)
        pool.call(0, "calibrate", sendOnly=True)
        results = pool.callAll("waitCalibrated")
        bad = [e for r in results for e in r["errors"]]
        if bad:
            raise ScenarioFailed(f"calibration failed: {bad}")
        result = _measure(pool, target, warmup, duration, broadcaster=0)
        pool.callAll("closeAll")
    result.update(
        {
            "users": users,
            "window": window,
            "broadcasts_per_s": result["answers_per_s"],
            "deliveries_per_s": result["msgs_per_s"],
            "login_ms": logins["login_ms"],
            "logins_per_s": users / logins["elapsed"] if logins["elapsed"] else None,
        }
    )
    return result


def idle(
    target: Target,
    counts: dict[str, int],
    workers: int = 4,
    hold: float = 2.0,
    concurrency: int = 64,
    prefix: str = "i",
    threads: bool = False,
) -> dict:
    """
    Scenario 4: log in C{counts[protocol]} sessions of each protocol (in
    that order, each protocol a phase), keep them idle for C{hold} seconds,
    check that every one is still open and got nothing, and measure the
    server's memory per session.
    """
    protocols = [p for p in ("protobuf", "msrp", "msgr") if counts.get(p)]
    names = {
        "protobuf": [f"{prefix}{i:05d}" for i in range(counts.get("protobuf", 0))],
        "msrp": [shortName("m", i) for i in range(counts.get("msrp", 0))],
        # The first MSGR account logs in first, as the warm-up.
        "msgr": msgrNames(counts.get("msgr", 0) + 1)[1:],
    }
    warmNames = {"protobuf": [f"{prefix}warm"], "msrp": ["mwrm"], "msgr": msgrNames(1)}
    result: dict = {"counts": dict(counts), "phases": {}, "workers": workers}
    with WorkerPool(workers, threads) as pool:
        # One session of each protocol first, so that what is loaded once
        # (modules, caches) is not counted per session.
        for protocol in protocols:
            split = [warmNames[protocol]] + [[] for _ in range(workers - 1)]
            _loginOrFail(pool, target, "warm", protocol, split)
        before = readStats(target.pid) if target.pid else None
        total = failed = 0
        start = time.monotonic()
        for protocol in protocols:
            rss = {"before": readStats(target.pid).rss if target.pid else None}

            def afterTokens() -> None:
                if target.pid:
                    rss["tokens"] = readStats(target.pid).rss

            phase = _login(
                pool,
                target,
                protocol,
                protocol,
                _split(names[protocol], workers),
                concurrency,
                afterTokens=afterTokens,
            )
            phase["per_s"] = phase["logged_in"] / phase["elapsed"] if phase["elapsed"] else None
            if target.pid:
                # What each protocol's sessions cost, phase by phase; for
                # MSGR, the HTTP logins (token, scrypt) apart from the
                # sockets.
                grown = readStats(target.pid).rss - rss["before"]
                phase["rss_growth_mib"] = grown / 2**20
                if phase["logged_in"]:
                    phase["kib_per_session"] = grown / 1024 / phase["logged_in"]
                if "tokens" in rss:
                    http = rss["tokens"] - rss["before"]
                    phase["rss_growth_http_mib"] = http / 2**20
                    if phase["logged_in"]:
                        phase["kib_per_session_socket"] = (grown - http) / 1024 / phase["logged_in"]
            result["phases"][protocol] = phase
            total += phase["logged_in"]
            failed += phase["failed"]
        elapsed = time.monotonic() - start
        loggedIn = readStats(target.pid) if target.pid else None
        time.sleep(hold)
        checks = pool.callAll("check")
        after = readStats(target.pid) if target.pid else None
        pool.callAll("closeAll")
    opened = sum(c["open"] for c in checks) - len(protocols)  # not the warm-up
    result.update(
        {
            "sessions": total,
            "failed": failed,
            "open_after_hold": opened,
            "closed": sum(c["closed"] for c in checks),
            "noisy": sum(c["noisy"] for c in checks),
            "check_samples": [s for c in checks for s in c["samples"]][:5],
            "logins_per_s": total / elapsed if elapsed else None,
            "hold_seconds": hold,
        }
    )
    if before is not None:
        grown = after.rss - before.rss
        result["server"] = {
            "rss_before_mib": before.rss / 2**20,
            "rss_logged_in_mib": loggedIn.rss / 2**20,
            "rss_after_hold_mib": after.rss / 2**20,
            "rss_peak_mib": after.peak / 2**20,
        }
        result["kib_per_session"] = grown / 1024 / total if total else None
    result["ok"] = not failed and opened == total and not result["noisy"]
    return result


def _memoryBefore(pid: int) -> tuple[bool, ProcessStats]:
    return resetPeak(pid), readStats(pid)


def _memoryDuring(peakReset: bool, before, after, watch: Watch, span: dict) -> dict:
    sampledPeak = max(s.rss for s in watch.samples)
    peak = after.peak if peakReset else sampledPeak
    return {
        "rss_before_mib": before.rss / 2**20,
        "rss_peak_mib": peak / 2**20,
        "peak_growth_mib": (peak - before.rss) / 2**20,
        "peak_from": "VmHWM" if peakReset else "samples every 20 ms",
        "cpu_percent": span["cpu_percent"],
        "machine_cpu_percent": span["machine_cpu_percent"],
    }


def fileTransfer(
    target: Target,
    size: int,
    via: str = "chatd",
    timeout: float = 300.0,
    threads: bool = False,
    verify: bool = False,
    receiverTarget: Target | None = None,
    headerTimeout: float | None = None,
    settle: Callable[[int], None] | None = None,
) -> dict:
    """
    Scenario 5: one MSRP client sends C{size} bytes to another, through
    chatd (C{via="chatd"}, port C{msrp}) or a plain pipe (C{via="pipe"},
    ports C{pipe-in} for the sender and C{pipe-out} for the receiver).
    C{verify} compares every byte received (for small files: it keeps them).

    Scenario 7: the receiver logs in to C{receiverTarget} (another node of
    a cluster), and both nodes' memory is read (C{result["servers"]}:
    C{sender_node}, C{receiver_node}). A file the server refuses is not an
    exception: C{result["refused"]} holds the ERROR the sender got, and
    the receiver gives up once nothing came for C{headerTimeout} seconds.
    C{settle(2)} is called once both are logged in (L{pairs}).
    """
    sender, receiver, filename = "fsnd", "frcv", "loadgen.bin"
    if via == "chatd":
        senderAddress = target.address("msrp")
        receiverAddress = (receiverTarget or target).address("msrp")
    else:
        senderAddress, receiverAddress = target.address("pipe-in"), target.address("pipe-out")
    watched = {"sender_node": target.pid}
    if receiverTarget is not None and receiverTarget.pid != target.pid:
        watched["receiver_node"] = receiverTarget.pid
    watched = {label: pid for label, pid in watched.items() if pid}
    with WorkerPool(2, threads) as pool:
        # A pipe's second port listens once its first has a connection.
        order = [(1, "receiver"), (0, "sender")] if via == "chatd" else [(0, "sender"), (1, "receiver")]
        for index, role in order:
            pool.call(
                index,
                "fileConnect",
                role=role,
                address=receiverAddress if role == "receiver" else senderAddress,
                name=receiver if role == "receiver" else sender,
                via=via,
            )
        if settle is not None:
            settle(2)
        before = {label: _memoryBefore(pid) for label, pid in watched.items()}
        watches = {label: Watch(pid, 0.02) for label, pid in watched.items()}
        for watch in watches.values():
            watch.__enter__()
        refused = None
        try:
            pool.send(
                1, "fileReceive", filename=filename, size=size, via=via, timeout=timeout,
                verify=verify, headerTimeout=headerTimeout,
            )
            pool.send(0, "fileSend", receiver=receiver, filename=filename, size=size, via=via, timeout=timeout)
            try:
                sent = pool.receive(0)
            except WorkerError as e:
                # The server's ERROR ends the sender's traceback.
                refused = str(e).strip().splitlines()[-1]
            try:
                received = pool.receive(1)
            except WorkerError:
                if refused is None:
                    raise
        finally:
            for watch in watches.values():
                watch.__exit__(None, None, None)
        after = {label: readStats(pid) for label, pid in watched.items()}
        pool.callAll("closeAll")
    if refused is not None:
        return {"via": via, "bytes": size, "ok": False, "refused": refused}
    seconds = (received["last_ns"] - sent["start_ns"]) / _NS
    result = {
        "via": via,
        "bytes": size,
        "seconds": seconds,
        "mb_per_s": size / seconds / 1e6,
        "ack_seconds": (sent["ack_ns"] - sent["start_ns"]) / _NS,
        "ok": received["bytes"] == size and received.get("intact", True),
    }
    if verify:
        result["intact"] = received["intact"]
    servers = {}
    for label, watch in watches.items():
        span = watch.span(sent["start_ns"] / _NS, received["last_ns"] / _NS)
        peakReset, stats = before[label]
        servers[label] = _memoryDuring(peakReset, stats, after[label], watch, span)
    if "sender_node" in servers:
        result["server"] = servers["sender_node"]
    if receiverTarget is not None:
        result["servers"] = servers
    return result


def msgrLogins(
    target: Target,
    accounts: int = 64,
    workers: int = 2,
    threadsPerWorker: int = 8,
    warmup: float = 1.0,
    duration: float = 5.0,
    threads: bool = False,
) -> dict:
    """
    Scenario 6a: MSGR HTTP logins a second, C{workers} x
    C{threadsPerWorker} keep-alive connections logging in over and over.
    """
    names = msgrNames(accounts)
    start = time.monotonic() + 0.3
    warm = start + warmup
    end = warm + duration
    with WorkerPool(workers, threads) as pool:
        watch = Watch(target.pid) if target.pid else None
        if watch:
            watch.__enter__()
        try:
            results = pool.callAll(
                "httpLogins",
                perWorker=[{"names": n} for n in _split(names, workers)],
                address=target.address("msgr-http"),
                password=target.password,
                threads=threadsPerWorker,
                start=start,
                warm=warm,
                end=end,
            )
        finally:
            if watch:
                watch.__exit__(None, None, None)
    logins = sum(r["logins"] for r in results)
    result = {
        "logins_per_s": logins / duration,
        "logins": logins,
        "connections": workers * threadsPerWorker,
        "latency_ms": percentiles([v for r in results for v in r["latencies_ns"]]),
        "errors": [e for r in results for e in r["errors"]][:10],
        "error_count": sum(r["error_count"] for r in results),
    }
    if watch:
        result["server"] = watch.span(warm, end)
    result["ok"] = not result["error_count"]
    return result


def msgrAccountsNeeded(directions: tuple, pairsPerDirection: int, attempts: int = 1) -> int:
    """How many MSGR accounts L{msgrMessages} may use."""
    return 2 * pairsPerDirection * len(directions) * attempts


#: The directions of scenario 6's cross-protocol traffic.
CROSS = (
    ("protobuf", "msgr"),
    ("msgr", "protobuf"),
    ("msrp", "msgr"),
    ("msgr", "msrp"),
    ("protobuf", "msrp"),
    ("msrp", "protobuf"),
)


def msgrMessages(
    target: Target,
    directions: tuple = (("msgr", "msgr"),),
    pairsPerDirection: int = 20,
    workers: int = 2,
    window: int = 32,
    warmup: float = 1.0,
    duration: float = 5.0,
    mode: str = "sample",
    threads: bool = False,
    attempt: int = 0,
) -> dict:
    """
    Scenario 6b and 6c: pipelined pairs whose senders and receivers speak
    the protocols of C{directions} (MSGR to MSGR; or across protocols). The
    names are 4 bytes, so that MSRP can write to everyone; MSGR's are the
    accounts L{msgrNames} (L{msgrAccountsNeeded} of them; each C{attempt}
    uses the next ones).
    """
    needed = 2 * pairsPerDirection * len(directions)
    accountNames = iter(msgrNames(needed * (attempt + 1))[needed * attempt :])
    counters = {"protobuf": needed * attempt, "msrp": needed * attempt}
    letters = {"protobuf": "q", "msrp": "r"}

    def names(protocol: str, count: int) -> list[str]:
        if protocol == "msgr":
            return [next(accountNames) for _ in range(count)]
        first = counters[protocol]
        counters[protocol] += count
        return [shortName(letters[protocol], first + i) for i in range(count)]

    with WorkerPool(workers, threads) as pool:
        groups = []
        for index, (sending, receiving) in enumerate(directions):
            receivers = names(receiving, pairsPerDirection)
            senders = names(sending, pairsPerDirection)
            _loginOrFail(pool, target, f"r{index}", receiving, _split(receivers, workers))
            _loginOrFail(pool, target, f"s{index}", sending, _split(senders, workers))
            groups.append((f"s{index}", f"r{index}"))
        pool.callAll("traffic", mode=mode, window=window)
        for senders, receivers in groups:
            pool.callAll("pairs", senders=senders, receivers=receivers)
        _calibrate(pool)
        result = _measure(pool, target, warmup, duration)
        pool.callAll("closeAll")
    result.update(
        {
            "directions": [f"{s}->{r}" for s, r in directions],
            "pairs": pairsPerDirection * len(directions),
            "window": window,
        }
    )
    return result


__all__ = [
    "Target",
    "ScenarioFailed",
    "pairs",
    "clusterLayout",
    "LAYOUTS",
    "broadcast",
    "idle",
    "fileTransfer",
    "msgrLogins",
    "msgrMessages",
    "msgrNames",
    "msgrAccountsNeeded",
    "shortName",
    "percentiles",
    "CROSS",
]
