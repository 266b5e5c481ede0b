"""
One way to run a real C{twistd chatd} as a child process: start it, learn
its ports from its "listening on" log lines, read its CPU time and memory
from C{/proc}, stop it.

The tests (L{TwistdProcess}, driven by the reactor), the soak and the
benchmark (L{ServerProcess}, blocking, with threads) all use this module, so
that the log line is parsed by one regular expression, L{LISTENING}, built
from the line's format, L{LISTENING_FORMAT}.

L{ServerProcess} runs any command that logs C{<label> listening on
tcp:HOST:PORT} lines (chatd's listeners do, C{bench/relay.py} and
C{bench/pipe.py} too). L{chatdCommand} builds the C{twistd -n chatd} command
line of a benchmark, and L{chatdOptions} reads which options this chatd has
(C{twistd chatd --help}), so that a harness passes only those that exist.
"""

from __future__ import annotations

import ctypes
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

from twisted.internet import defer, protocol
from twisted.python.failure import Failure

from chatd.listener import LISTENING_FORMAT


def _listeningPattern(format: str) -> re.Pattern:
    """
    The regular expression for L{LISTENING_FORMAT}'s lines, built from it:
    the words around C{{label}} and C{{address}} as they are, the address
    taken apart into kind, host and port. The text before C{{label}}
    (C{"chatd "}) is optional, so that other servers of the benchmark
    (C{relay listening on ...}) are read by it too.
    """
    before, rest = format.split("{label}")
    between, after = rest.split("{address}")
    return re.compile(
        f"(?:{re.escape(before)})?(?P<label>\\S+){re.escape(between)}"
        f"(?P<kind>\\w+):(?P<host>\\S+):(?P<port>\\d+){re.escape(after)}"
    )


#: A "listening on" line: groups C{label}, C{kind}, C{host}, C{port}.
LISTENING = _listeningPattern(LISTENING_FORMAT)


def listeningPorts(output: str | bytes) -> dict[str, int]:
    """C{{label: port}} for every "listening on" line in C{output}."""
    if isinstance(output, bytes):
        output = output.decode("utf-8", "replace")
    return {m.group("label"): int(m.group("port")) for m in LISTENING.finditer(output)}


def twistd() -> str:
    """The C{twistd} beside this Python."""
    return os.path.join(os.path.dirname(sys.executable), "twistd")


#: The C{twistd} beside this Python.
TWISTD = twistd()


def environment() -> dict[str, str]:
    """
    This process's environment without C{PYTHONPATH}: a child twistd finds
    chatd through the installed package only.
    """
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def chatdArgv(
    args: list[str],
    twistdPath: str | None = None,
    twistdOptions: tuple[str, ...] | list[str] = ("--logfile=-",),
) -> list[str]:
    """
    C{twistd --nodaemon --pidfile= TWISTDOPTIONS chatd ARGS}: in the
    foreground, without a pid file, logging to standard output by default.
    """
    return [
        twistdPath or TWISTD,
        "--nodaemon",
        "--pidfile=",
        *twistdOptions,
        "chatd",
        *args,
    ]


_OPTION = re.compile(r"^\s+(?:-\w, )?--([a-z0-9-]+)[=\s]", re.MULTILINE)


def chatdOptions(twistdPath: str | None = None, env: dict | None = None) -> set[str]:
    """
    The long options C{twistd chatd --help} lists (without C{--}), run with
    C{env} (default: L{environment}).
    """
    output = subprocess.run(
        [twistdPath or TWISTD, "chatd", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=environment() if env is None else env,
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
    # Not a limit but a pace: a load generator is not a human-paced client
    # reading one recv() per message (docs/protobuf.md).
    "protobuf-raw-gap",
)

#: Limits that have no "off" but a value a load generator never reaches,
#: given when this chatd has them. The MSGR address lockout counts a login
#: whose password check is still running as a failure of its address
#: (docs/msgr.md, "Lockout"): one address logging hundreds of accounts in
#: at once is locked out after 20, as a guesser would be.
RAISED_LIMITS = {
    "msgr-lockout-address-failures": "1000000",
}


def chatdCommand(
    options: dict[str, str],
    known: set[str] | None = None,
    wrapper: list[str] | None = None,
) -> tuple[list[str], list[str]]:
    """
    C{twistd -n chatd} with C{options} (option name to value), plus C{0}
    for every one of L{LIMIT_OPTIONS}, and L{RAISED_LIMITS}' values, that
    C{known} lists and C{options} does not set. C{wrapper} goes before
    C{twistd} (a profiler).

    @return: the command, and the limit options that were turned off (or
        raised out of reach).
    """
    known = chatdOptions() if known is None else known
    args = []
    off = []
    for name in LIMIT_OPTIONS:
        if name in known and name not in options:
            args += [f"--{name}", "0"]
            off.append(name)
    for name, value in RAISED_LIMITS.items():
        if name in known and name not in options:
            args += [f"--{name}", value]
            off.append(name)
    for name, value in options.items():
        args += [f"--{name}", str(value)]
    return list(wrapper or []) + chatdArgv(args, twistdOptions=()), off


# /proc

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def procStatus(pid: int) -> dict[str, str]:
    """C{/proc/PID/status} as C{{field: value}} (C{"VmRSS": "1234 kB"})."""
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def _kiB(value: str) -> int:
    """C{"1234 kB"} -> bytes."""
    return int(value.split()[0]) * 1024


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
    status = procStatus(pid)
    rss = _kiB(status["VmRSS"]) if "VmRSS" in status else 0
    peak = _kiB(status["VmHWM"]) if "VmHWM" in status else 0
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


# The child process


class ServerError(RuntimeError):
    """The server could not be started, or misbehaved in a way that ends the run."""


def _dieWithParent() -> None:
    # If the harness itself is killed (timeout -s KILL), take the server
    # along rather than leaving it listening. Linux only, as is /proc.
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass


class ServerProcess:
    """
    A server run as a child process (C{argv}, in C{cwd}), for a harness that
    blocks: the soak and the benchmark.

    Its output (stdout and stderr) goes straight into a file, C{logPath} if
    given (a temporary file otherwise, removed by L{stop}), so that the
    server never waits for the harness to read it; L{start} reads the file
    for the "listening on" lines until every label in C{labels} has its
    port. It gets the environment L{environment}, or C{env} as it is. With
    C{dieWithParent}, it is killed when the harness dies.
    """

    def __init__(
        self,
        argv: list[str],
        labels: list[str] | tuple[str, ...],
        cwd: str | None = None,
        logPath: str | None = None,
        env: dict | None = None,
        dieWithParent: bool = False,
    ) -> None:
        self.argv = argv
        self.labels = set(labels)
        self.cwd = cwd
        self.logPath = logPath
        self._ownLog = logPath is None
        self.env = env
        self.dieWithParent = dieWithParent
        self.ports: dict[str, int] = {}
        self.process: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def start(self, timeout: float = 60.0) -> dict[str, int]:
        """
        Start the server; C{{label: port}} once it listens on every label.

        @raise ServerError: it exited first, or did not listen in time.
        """
        if self.logPath is None:
            fd, self.logPath = tempfile.mkstemp(prefix="chatd-harness-", suffix=".log")
            os.close(fd)
        log = open(self.logPath, "wb")
        try:
            self.process = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.cwd,
                env=environment() if self.env is None else dict(self.env),
                preexec_fn=_dieWithParent if self.dieWithParent else None,
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while True:
            self.ports.update(listeningPorts(self.log()))
            if self.labels <= set(self.ports):
                return dict(self.ports)
            if self.process.poll() is not None:
                raise ServerError(
                    f"{' '.join(self.argv)} exited ({self.process.returncode})"
                    f" before listening on {sorted(self.labels)}:\n" + self.log()[-4000:]
                )
            if time.monotonic() >= deadline:
                output = self.log()[-4000:]
                self.stop()
                raise ServerError(
                    f"{' '.join(self.argv)} did not listen on {sorted(self.labels)}"
                    f" within {timeout:g}s:\n{output}"
                )
            time.sleep(0.05)

    def log(self) -> str:
        """Everything the server wrote so far."""
        try:
            with open(self.logPath, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except (OSError, TypeError):
            return ""

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stats(self) -> ProcessStats:
        return readStats(self.pid)

    def watch(self, interval: float = 0.05) -> Watch:
        return Watch(self.pid, interval)

    def rss(self) -> int:
        """Resident memory, in bytes (VmRSS)."""
        return _kiB(procStatus(self.pid)["VmRSS"])

    def peakRss(self) -> int:
        """The highest resident memory so far, in bytes (VmHWM)."""
        return _kiB(procStatus(self.pid)["VmHWM"])

    def threads(self) -> int:
        return int(procStatus(self.pid)["Threads"])

    def openFiles(self) -> int:
        """How many file descriptors the server has open."""
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def terminate(self, timeout: float) -> int | None:
        """
        SIGTERM, then wait; the exit status (negative: the signal), or
        C{None} if it did not exit in time (it is killed then).
        """
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, then SIGKILL after C{timeout} seconds; the exit status."""
        if self.process is None:
            return None
        self.terminate(timeout)
        if self._ownLog and self.logPath is not None:
            try:
                os.unlink(self.logPath)
            except OSError:
                pass
        return self.process.returncode

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class OutputWaiter:
    """
    Keeps a child process's output (out and err) in C{output}, and lets a
    test wait for a text in it (L{waitForOutput}).
    """

    def _outputArrived(self, data: bytes) -> None:
        self.output += data
        for entry in list(self._waiting):
            if entry[0] in self.output:
                self._waiting.remove(entry)
                entry[1].callback(None)

    def waitForOutput(self, text: bytes) -> defer.Deferred:
        """Fires once the process's output (out and err) holds C{text}."""
        if text in self.output:
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred()
        self._waiting.append((text, d))
        return d


class TwistdProcess(OutputWaiter, protocol.ProcessProtocol):
    """
    C{twistd --nodaemon chatd ARGS} in C{directory}, driven by the
    reactor, for the tests. L{ready} fires with C{{label: port}} once
    every listener in C{labels} logged its address; L{ended} once the
    process is gone; L{waitForOutput} when its output holds a text.
    """

    #: twistd's own options, before C{chatd}.
    twistdOptions: tuple[str, ...] = ("--logfile=-",)

    def __init__(self, args: list[str], labels: list[str], directory: str) -> None:
        self.args = args
        self.labels = set(labels)
        self.directory = directory
        self.output = b""
        self.ports: dict[str, int] = {}
        self.ready: defer.Deferred = defer.Deferred()
        self.ended: defer.Deferred = defer.Deferred()
        self.exitStatus = None
        self._waiting: list[tuple[bytes, defer.Deferred]] = []

    def start(self) -> defer.Deferred:
        # Imported here, not above: the soak (asyncio) imports this module
        # and must not get a Twisted reactor installed by it.
        from twisted.internet import reactor

        argv = chatdArgv(self.args, twistdOptions=self.twistdOptions)
        # The working directory is a fresh one, so the plugin can only
        # be found through the installed package.
        reactor.spawnProcess(
            self, TWISTD, argv, env=environment(), path=self.directory
        )
        return self.ready

    def outReceived(self, data: bytes) -> None:
        self._outputArrived(data)
        self.ports.update(listeningPorts(self.output))
        if not self.ready.called and self.labels <= set(self.ports):
            self.ready.callback(dict(self.ports))

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        self.exitStatus = reason.value
        if not self.ready.called:
            self.ready.errback(
                ServerError(
                    "twistd ended before listening:\n"
                    + self.output.decode(errors="replace")
                )
            )
        self.ended.callback(None)

    def signal(self, name: str) -> defer.Deferred:
        """Send a signal (C{"TERM"}, C{"KILL"}) and wait for the process to end."""
        if not self.ended.called:
            try:
                self.transport.signalProcess(name)
            except Exception:
                # It ended between the check and the signal.
                pass
        return self.ended

    def stop(self) -> defer.Deferred:
        return self.signal("TERM")



__all__ = [
    "LISTENING_FORMAT",
    "LISTENING",
    "listeningPorts",
    "TWISTD",
    "twistd",
    "environment",
    "chatdArgv",
    "chatdOptions",
    "chatdCommand",
    "LIMIT_OPTIONS",
    "procStatus",
    "ProcessStats",
    "readStats",
    "resetPeak",
    "machineBusySeconds",
    "Watch",
    "ServerError",
    "ServerProcess",
    "TwistdProcess",
]
