"""
A local server under test: start it, learn its ports from its log, read its
CPU time and memory from C{/proc}, stop it.

L{ServerProcess} runs any command that logs C{<label> listening on
tcp:HOST:PORT} lines (chatd's listeners do, C{bench/relay.py} too).
L{chatdCommand} builds the C{twistd -n chatd} command line, and
L{chatdOptions} reads which options this chatd has (C{twistd chatd --help}),
so that a benchmark passes only those that exist.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

_LISTENING = re.compile(rb"(\S+) listening on \w+:(\S+):(\d+)")
_OPTION = re.compile(r"^\s+(?:-\w, )?--([a-z0-9-]+)[=\s]", re.MULTILINE)

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def twistd() -> str:
    """The C{twistd} beside this Python."""
    return os.path.join(os.path.dirname(sys.executable), "twistd")


def chatdOptions(command: list[str] | None = None, env: dict | None = None) -> set[str]:
    """
    The long options C{twistd chatd --help} lists (without C{--}), run with
    C{env} (default: this environment without C{PYTHONPATH}).
    """
    command = command or [twistd(), "chatd", "--help"]
    if env is None:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    output = subprocess.run(
        command, capture_output=True, text=True, timeout=60, check=False, env=env
    ).stdout
    return set(_OPTION.findall(output))


#: Limits that issue 5 gives chatd, which a benchmark turns off (0 = no
#: limit) when this chatd has them: a load generator is one address that
#: sends as fast as it can.
LIMIT_OPTIONS = (
    "max-conns",
    "max-conns-per-ip",
    "rate",
    "max-sendq",
    "max-connections",
    "max-connections-per-ip",
    "max-send-queue",
)


def chatdCommand(
    options: dict[str, str],
    known: set[str] | None = None,
    wrapper: list[str] | None = None,
) -> tuple[list[str], list[str]]:
    """
    C{twistd -n chatd} with C{options} (option name to value), plus C{0}
    for every one of L{LIMIT_OPTIONS} that C{known} lists and C{options}
    does not set. C{wrapper} goes before C{twistd} (a profiler).

    @return: the command, and the limit options that were turned off.
    """
    known = chatdOptions() if known is None else known
    argv = list(wrapper or []) + [twistd(), "--nodaemon", "--pidfile=", "chatd"]
    off = []
    for name in LIMIT_OPTIONS:
        if name in known and name not in options:
            argv += [f"--{name}", "0"]
            off.append(name)
    for name, value in options.items():
        argv += [f"--{name}", str(value)]
    return argv, off


class ProcessStats:
    """
    One reading of a process: CPU seconds, resident and peak memory; and
    the CPU seconds the whole machine had spent busy (every core) by then.
    """

    __slots__ = ("at", "cpu", "rss", "peak", "machine", "interrupts", "steal")

    def __init__(
        self,
        at: float,
        cpu: float,
        rss: int,
        peak: int,
        machine: float = 0.0,
        interrupts: float = 0.0,
        steal: float = 0.0,
    ) -> None:
        self.at = at
        self.cpu = cpu
        self.rss = rss
        self.peak = peak
        self.machine = machine
        self.interrupts = interrupts
        self.steal = steal


def machineBusySeconds() -> tuple[float, float, float]:
    """
    CPU seconds every core of this machine has spent not idle; of those,
    in interrupts (loopback TCP's receive work is softirq time, which no
    process is charged for); and stolen by the hypervisor for other
    machines (C{/proc/stat}).
    """
    with open("/proc/stat", "rb") as f:
        fields = f.readline().split()
    # user nice system idle iowait irq softirq steal ...
    values = [int(v) for v in fields[1:9]]
    busy = sum(values) - values[3] - values[4]
    return (
        busy / _CLOCK_TICKS,
        (values[5] + values[6]) / _CLOCK_TICKS,
        values[7] / _CLOCK_TICKS,
    )


def readStats(pid: int) -> ProcessStats:
    """C{pid}'s CPU seconds and resident / peak resident bytes now."""
    at = time.monotonic()
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    # Fields 14 and 15 of stat (utime, stime) are the 12th and 13th after
    # the command name.
    cpu = (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
    rss = peak = 0
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            if line.startswith(b"VmRSS:"):
                rss = int(line.split()[1]) * 1024
            elif line.startswith(b"VmHWM:"):
                peak = int(line.split()[1]) * 1024
    return ProcessStats(at, cpu, rss, peak, *machineBusySeconds())


def resetPeak(pid: int) -> bool:
    """Reset C{pid}'s peak resident size (VmHWM); whether it could."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class Watch:
    """
    Samples a process every C{interval} seconds in a thread, so that CPU
    use over a span and the largest resident size can be read afterwards.
    """

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self.samples: list[ProcessStats] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "Watch":
        self.samples.append(readStats(self.pid))
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        try:
            self.samples.append(readStats(self.pid))
        except OSError:
            pass

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.samples.append(readStats(self.pid))
            except OSError:
                return

    def span(self, start: float, end: float) -> dict:
        """CPU use and memory between C{start} and C{end} (monotonic)."""
        inside = [s for s in self.samples if start <= s.at <= end]
        if len(inside) < 2:
            inside = self.samples[-2:] if len(self.samples) >= 2 else self.samples * 2
        first, last = inside[0], inside[-1]
        wall = max(last.at - first.at, 1e-9)
        return {
            "cpu_percent": 100.0 * (last.cpu - first.cpu) / wall,
            # Every process of the machine, this one included, in percent of
            # one core (200 is both cores of a 2-core machine).
            "machine_cpu_percent": 100.0 * (last.machine - first.machine) / wall,
            "interrupt_cpu_percent": 100.0 * (last.interrupts - first.interrupts) / wall,
            "steal_cpu_percent": 100.0 * (last.steal - first.steal) / wall,
            "rss_mib": last.rss / 2**20,
            "rss_max_mib": max(s.rss for s in inside) / 2**20,
        }


class ServerProcess:
    """
    A server run as a child process, whose log (stdout and stderr) is read
    by a thread: into C{logPath} if given, and for C{<label> listening on}
    lines, until every label in C{labels} has its port. It gets this
    process's environment without C{PYTHONPATH}, or C{env} as it is.
    """

    def __init__(
        self,
        argv: list[str],
        labels: list[str],
        cwd: str | None = None,
        logPath: str | None = None,
        env: dict | None = None,
    ) -> None:
        self.argv = argv
        self.labels = set(labels)
        self.cwd = cwd
        self.logPath = logPath
        self.env = env
        self.ports: dict[str, int] = {}
        self.tail: list[bytes] = []
        self.process: subprocess.Popen | None = None
        self._ready = threading.Event()
        self._reader: threading.Thread | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def start(self, timeout: float = 60.0) -> dict[str, int]:
        """Start the server; its ports by label, once it listens on them all."""
        if self.env is None:
            env = dict(os.environ)
            env.pop("PYTHONPATH", None)
        else:
            env = dict(self.env)
        self.process = subprocess.Popen(
            self.argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=self.cwd,
            env=env,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self.labels:
            return {}
        if not self._ready.wait(timeout) or not self.labels <= set(self.ports):
            output = b"".join(self.tail[-40:]).decode("utf-8", "replace")
            self.stop()
            raise RuntimeError(
                f"{' '.join(self.argv)} did not listen on {sorted(self.labels)}"
                f" within {timeout:g}s:\n{output}"
            )
        return dict(self.ports)

    def _read(self) -> None:
        log = open(self.logPath, "wb") if self.logPath else None
        try:
            for line in self.process.stdout:
                if log is not None:
                    log.write(line)
                if not self._ready.is_set():
                    self.tail.append(line)
                    match = _LISTENING.search(line)
                    if match:
                        self.ports[match.group(1).decode()] = int(match.group(3))
                        if self.labels <= set(self.ports):
                            self._ready.set()
                else:
                    # Keep the last lines for error reports.
                    self.tail.append(line)
                    if len(self.tail) > 200:
                        del self.tail[:100]
        finally:
            self._ready.set()
            if log is not None:
                log.close()

    def stats(self) -> ProcessStats:
        return readStats(self.pid)

    def watch(self, interval: float = 0.05) -> Watch:
        return Watch(self.pid, interval)

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, then SIGKILL after C{timeout} seconds; the exit status."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        if self._reader is not None:
            self._reader.join(10)
        self.process.stdout.close()
        return self.process.returncode

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


__all__ = [
    "ServerProcess",
    "Watch",
    "ProcessStats",
    "readStats",
    "resetPeak",
    "machineBusySeconds",
    "chatdCommand",
    "chatdOptions",
    "twistd",
    "LIMIT_OPTIONS",
]
