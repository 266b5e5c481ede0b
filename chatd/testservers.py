"""
Real database servers for the tests and the benchmark: a C{redis-server}
(and, for MSGR accounts, PostgreSQL) started on a free loopback port in a
temporary directory, and stopped when the process that started it exits.

A cluster test needs the real engine, not a mock: its atomic claims are Lua
scripts, its routing is Redis pub/sub, and both are what runs in production.
The servers are Debian's packages (C{make test} installs them when missing
and it may: see the Makefile's C{test-tools}). A test that needs one calls
L{redisServer}; when the program is missing it raises L{SkipTest} with the
package to install, so that a developer without root still runs the rest.

One server of each kind serves the whole test run (starting one costs tens
of milliseconds for Redis and seconds for PostgreSQL); each test separates
its data with its own database number or key prefix, or flushes what it
used. L{RedisServer.restart} stops and starts the same server on the same
port, for the tests of a Redis restart under traffic.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from unittest import SkipTest

#: How long a server may take to accept connections after it starts.
START_TIMEOUT = 30.0


def freePort() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _waitForPort(port: int, process: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with status {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not listen on port {port}")
            time.sleep(0.02)


class RedisServer:
    """
    A C{redis-server} on 127.0.0.1, in its own temporary directory, with no
    persistence (a restart starts empty, as after a crash of a cache-only
    Redis).

    @ivar port: its TCP port.
    @ivar url: C{redis://127.0.0.1:PORT}, as C{--cluster} takes it.
    """

    def __init__(self, program: str) -> None:
        self.program = program
        self.directory = tempfile.mkdtemp(prefix="chatd-redis-")
        self.port = freePort()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    @property
    def unixSocket(self) -> str:
        """The path of its Unix socket (C{redis+unix://} or C{unix://} URLs)."""
        return os.path.join(self.directory, "redis.sock")

    def start(self) -> None:
        """Start it; return once it accepts connections."""
        for attempt in range(5):
            self.process = subprocess.Popen(
                [
                    self.program,
                    "--port", str(self.port),
                    "--bind", "127.0.0.1",
                    "--unixsocket", self.unixSocket,
                    "--unixsocketperm", "700",
                    "--dir", self.directory,
                    "--save", "",
                    "--appendonly", "no",
                    "--daemonize", "no",
                    "--loglevel", "warning",
                    "--logfile", os.path.join(self.directory, "redis.log"),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                _waitForPort(self.port, self.process, "redis-server")
                return
            except RuntimeError:
                # Another program took the port between freePort and bind.
                self._kill()
                self.port = freePort()
        raise RuntimeError("redis-server did not start; see " + self.directory)

    def stop(self) -> None:
        """Stop it at once (SIGKILL: the data is thrown away anyway)."""
        self._kill()

    def restart(self) -> None:
        """Stop it and start it again, empty, on the same port."""
        self._kill()
        self.start()

    def _kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
        self.process = None

    def cleanup(self) -> None:
        self._kill()
        shutil.rmtree(self.directory, ignore_errors=True)

    def command(self, *args: str) -> str:
        """Run C{redis-cli} against it (for tests that inspect the keys)."""
        cli = shutil.which("redis-cli")
        if cli is None:
            raise SkipTest("redis-cli is not installed (Debian package redis-tools)")
        return subprocess.run(
            [cli, "-p", str(self.port), *args],
            check=True,
            capture_output=True,
            text=True,
        ).stdout


_redis: RedisServer | None = None


def redisServer() -> RedisServer:
    """
    The test run's one L{RedisServer}, started on first use and stopped at
    exit.

    @raise SkipTest: when C{redis-server} is not installed.
    """
    global _redis
    if _redis is None or _redis.process is None or _redis.process.poll() is not None:
        program = shutil.which("redis-server")
        if program is None:
            raise SkipTest(
                "redis-server is not installed (Debian package redis-server;"
                " make test installs it when run as root)"
            )
        if _redis is None:
            _redis = RedisServer(program)
            atexit.register(_redis.cleanup)
        _redis.start()
    return _redis
