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


def _postgresPrograms() -> tuple[str, str] | None:
    """Debian's C{initdb} and C{postgres}, newest version first, or C{None}."""
    import glob

    def version(path: str) -> float:
        try:
            return float(path.split("/")[-3])
        except ValueError:
            return 0.0

    for initdb in sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=version, reverse=True
    ):
        postgres = os.path.join(os.path.dirname(initdb), "postgres")
        if os.access(postgres, os.X_OK):
            return initdb, postgres
    return None


def _unprivilegedUser() -> tuple[int, int] | None:
    """
    The uid and gid to run PostgreSQL as: C{None} (ourselves) unless we are
    root, which PostgreSQL refuses to run as; then the C{postgres} account
    that Debian's package creates, or C{nobody}.
    """
    if os.geteuid() != 0:
        return None
    import pwd

    for name in ("postgres", "nobody"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return entry.pw_uid, entry.pw_gid
    raise RuntimeError("running as root and no unprivileged user to run PostgreSQL as")


class PostgresServer:
    """
    A PostgreSQL server on 127.0.0.1, its cluster made by C{initdb} in its
    own temporary directory (where its Unix socket is too), trust
    authentication, no fsync (a test's data need not survive a crash).
    When the tests run as root it runs as an unprivileged user.

    @ivar port: its TCP port (the same after L{restart}).
    @ivar url: C{postgresql://chatd@127.0.0.1:PORT/postgres}, the
        maintenance database; tests use L{createDatabase}.
    """

    user = "chatd"

    def __init__(self, initdb: str, postgres: str) -> None:
        self.initdb = initdb
        self.postgres = postgres
        self.directory = tempfile.mkdtemp(prefix="chatd-postgres-")
        self.data = os.path.join(self.directory, "data")
        self.port = freePort()
        self.process: subprocess.Popen | None = None
        self._owner = _unprivilegedUser()
        self._databases = 0
        if self._owner is not None:
            os.chown(self.directory, *self._owner)
        self._run([
            initdb,
            "-D", self.data,
            "-U", self.user,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        ])

    def _as(self) -> dict:
        if self._owner is None:
            return {}
        uid, gid = self._owner
        return {"user": uid, "group": gid, "extra_groups": []}

    def _run(self, argv: list[str]) -> None:
        result = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            cwd=self.directory,
            **self._as(),
        )
        if result.returncode:
            raise RuntimeError(f"{argv[0]} failed: {result.stderr.strip()}")

    @property
    def url(self) -> str:
        return self.databaseURL("postgres")

    def databaseURL(self, database: str) -> str:
        """The URL of C{database} on this server."""
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        """Start it; return once it accepts connections."""
        log = open(os.path.join(self.directory, "postgres.log"), "ab")
        try:
            self.process = subprocess.Popen(
                [
                    self.postgres,
                    "-D", self.data,
                    "-p", str(self.port),
                    "-h", "127.0.0.1",
                    "-k", self.directory,
                    "-c", "fsync=off",
                    "-c", "synchronous_commit=off",
                    "-c", "full_page_writes=off",
                    "-c", "max_connections=200",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=self.directory,
                **self._as(),
            )
        finally:
            log.close()
        _waitForPort(self.port, self.process, "postgres")
        # Listening is not yet accepting logins (the start-up recovery).
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                self.execute("SELECT 1")
                return
            except Exception:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError("postgres did not start; see " + self.directory)
                time.sleep(0.05)

    def stop(self) -> None:
        """Stop it (a fast shutdown: its connections are cut)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(START_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def restart(self) -> None:
        """Stop it and start it again on the same port, its data kept."""
        self.stop()
        self.start()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def execute(self, sql: str, database: str = "postgres") -> list[tuple]:
        """Run one statement (autocommit) and return its rows, if any."""
        import psycopg

        with psycopg.connect(
            self.databaseURL(database), autocommit=True, connect_timeout=5
        ) as connection:
            cursor = connection.execute(sql)
            return cursor.fetchall() if cursor.description else []

    def createDatabase(self) -> str:
        """A new, empty database of its own; returns its URL."""
        self._databases += 1
        name = f"test_{os.getpid()}_{self._databases}"
        self.execute(f"CREATE DATABASE {name}")
        return self.databaseURL(name)


_postgres: PostgresServer | None = None


def postgresServer() -> PostgresServer:
    """
    The test run's one L{PostgresServer}, started on first use and stopped
    at exit.

    @raise SkipTest: when PostgreSQL is not installed.
    """
    global _postgres
    if _postgres is None or _postgres.process is None or _postgres.process.poll() is not None:
        if _postgres is None:
            programs = _postgresPrograms()
            if programs is None:
                raise SkipTest(
                    "PostgreSQL is not installed (Debian package postgresql;"
                    " make test installs it when run as root)"
                )
            _postgres = PostgresServer(*programs)
            atexit.register(_postgres.cleanup)
        _postgres.start()
    return _postgres
