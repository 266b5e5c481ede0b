"""
The server under soak: a real ``twistd --nodaemon chatd`` child process, with
every listener on an ephemeral port of 127.0.0.1, its log in a file, and its
memory and file descriptors read from /proc.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import signal
import subprocess
import sys
import time

#: The listeners, by the label of their log line.
LABELS = ("protobuf", "msrp", "msgr-http", "msgr")

_LISTENING = re.compile(r"chatd (\S+) listening on (\w+):([^\s:]+):(\d+)")

#: Log lines that mean an error escaped somewhere in the server.
_BAD_LINE = re.compile(r"Traceback|Unhandled")

DEFAULT_TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")

_HOOK = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hook")


class ServerError(Exception):
    """The server could not be started, or misbehaved in a way that ends the soak."""


def _dieWithParent() -> None:
    # If the soak itself is killed (timeout -s KILL), take the server along
    # rather than leaving it listening. Linux only, as is /proc.
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass


def chatdOptions(twistd: str = DEFAULT_TWISTD) -> set[str]:
    """The long options ``twistd chatd --help`` lists (``--max-conns``, ...)."""
    out = subprocess.run(
        [twistd, "chatd", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    return set(re.findall(r"--([a-z][a-z0-9-]*)", out))


class ServerProcess:
    """
    ``twistd --nodaemon --pidfile= --logfile=- chatd ...`` in C{directory},
    its output in C{directory}/chatd.log.
    """

    def __init__(
        self,
        directory: str,
        args: list[str],
        twistd: str = DEFAULT_TWISTD,
        environment: dict[str, str] | None = None,
    ):
        self.directory = directory
        self.censusPath = os.path.join(directory, "census.json")
        # The census hook (soak/hook/sitecustomize.py) is loaded first.
        path = [_HOOK] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        self.environment = {
            **os.environ,
            **(environment or {}),
            "PYTHONPATH": os.pathsep.join(path),
            "CHATD_SOAK_CENSUS": self.censusPath,
        }
        self.twistd = twistd
        self.logPath = os.path.join(directory, "chatd.log")
        self.argv = [
            twistd,
            "--nodaemon",
            "--pidfile=",
            "--logfile=-",
            "chatd",
            *args,
        ]
        self.process: subprocess.Popen | None = None
        self.ports: dict[str, int] = {}

    @property
    def pid(self) -> int:
        return self.process.pid

    def start(self, timeout: float = 60.0) -> dict[str, int]:
        """Start the server; C{{label: port}} once every listener logged its address."""
        log = open(self.logPath, "wb")
        try:
            self.process = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
                env=self.environment,
                preexec_fn=_dieWithParent,
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for match in _LISTENING.finditer(self.log()):
                self.ports[match.group(1)] = int(match.group(4))
            if set(LABELS) <= set(self.ports):
                return dict(self.ports)
            if self.process.poll() is not None:
                raise ServerError(
                    f"twistd exited ({self.process.returncode}) before listening:\n"
                    + self.log()[-4000:]
                )
            time.sleep(0.05)
        raise ServerError(
            f"twistd did not log every listener within {timeout:g}s:\n"
            + self.log()[-4000:]
        )

    def log(self) -> str:
        with open(self.logPath, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def badLines(self) -> list[str]:
        """Log lines with a traceback or an unhandled error."""
        return [line for line in self.log().splitlines() if _BAD_LINE.search(line)]

    def firstError(self, limit: int = 60) -> list[str]:
        """
        The first log event with a traceback or an unhandled error: its
        line and the tab-indented lines that continue it.
        """
        lines = self.log().splitlines()
        for i, line in enumerate(lines):
            if _BAD_LINE.search(line):
                start = i
                while start > 0 and lines[start].startswith((" ", "\t")):
                    start -= 1
                end = i + 1
                while end < len(lines) and lines[end].startswith((" ", "\t")):
                    end += 1
                return lines[start : min(end, start + limit)]
        return []

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _status(self) -> dict[str, str]:
        with open(f"/proc/{self.pid}/status") as f:
            return dict(
                line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line
            )

    def rss(self) -> int:
        """Resident memory, in bytes (VmRSS)."""
        return int(self._status()["VmRSS"].split()[0]) * 1024

    def peakRss(self) -> int:
        """The highest resident memory so far, in bytes (VmHWM)."""
        return int(self._status()["VmHWM"].split()[0]) * 1024

    def threads(self) -> int:
        return int(self._status()["Threads"])

    def openFiles(self) -> int:
        """How many file descriptors the server has open."""
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def census(self, timeout: float = 30.0, mode: str = "collect") -> dict[str, int]:
        """
        The server's live objects by type, after a garbage collection; or,
        with C{mode} C{"off"}, after one that turns the collector off, or with
        C{"uncollected"}, without one (see soak/hook/sitecustomize.py).
        """
        try:
            os.unlink(self.censusPath)
        except FileNotFoundError:
            pass
        with open(self.censusPath + ".mode", "w") as f:
            f.write(mode)
        os.kill(self.pid, signal.SIGUSR2)
        deadline = time.monotonic() + timeout
        while not os.path.exists(self.censusPath):
            if time.monotonic() > deadline or not self.alive():
                raise ServerError("the server did not write its census (SIGUSR2)")
            time.sleep(0.05)
        with open(self.censusPath) as f:
            return json.load(f)

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
