"""
Worker processes of the load generator, and the commands they obey.

A L{WorkerPool} starts workers (processes, or threads for quick tests) and
sends each of them commands over a pipe: log these sessions in, pair them,
calibrate, run from this time to that, drain, check, close. Each worker owns
its sockets and its selector loop (L{chatd.loadgen.loop}); the parent only
coordinates, and samples the server while the workers run.
"""

from __future__ import annotations

import multiprocessing
import resource
import socket
import subprocess
import sys
import threading
import time
import traceback
from multiprocessing.connection import Connection
from typing import Any, Callable

from chatd.loadgen import accounts, files
from chatd.loadgen.loop import Loop, Session, logIn
from chatd.loadgen.traffic import Traffic
from chatd.loadgen.wire import dialect


class WorkerError(Exception):
    """A worker's command failed; C{str()} holds its traceback."""


def raiseFileLimit() -> int:
    """Raise this process's open-file limit to its hard limit; return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


class Worker:
    """
    The state of one worker: its loop, its groups of logged-in sessions, its
    traffic. Each C{cmd_*} method is a command (L{WorkerPool.call}).
    """

    def __init__(self, index: int) -> None:
        self.index = index
        self.loop = Loop()
        self.groups: dict[str, list[Session]] = {}
        self.traffic: Traffic | None = None
        self.fileSocket = None

    def cmd_ping(self) -> dict:
        return {"index": self.index, "nofile": raiseFileLimit()}

    def cmd_login(
        self,
        group: str,
        protocol: str,
        names: list[str],
        address: tuple[str, int],
        framing: str = "raw",
        tokens: dict[str, str] | None = None,
        concurrency: int = 64,
        timeout: float = 60.0,
        source: str | None = None,
    ) -> dict:
        """Log C{names} in over C{protocol}, as the group C{group}."""
        speaker = dialect(protocol, framing)
        tokens = tokens or {}
        sessions = [Session(name, speaker, tokens.get(name)) for name in names]
        if speaker.loginConcurrency is not None:
            concurrency = min(concurrency, speaker.loginConcurrency)
        result = logIn(self.loop, sessions, tuple(address), concurrency, timeout, source)
        self.groups.setdefault(group, []).extend(result.loggedIn)
        return result.asDict()

    def cmd_msgrTokens(
        self,
        address: tuple[str, int],
        names: list[str],
        password: str,
        threads: int = 8,
        timeout: float = 120.0,
    ) -> dict:
        """Log C{names} in over MSGR's HTTP API; their tokens, and how long."""
        return accounts.loginMany(tuple(address), names, password, threads, timeout)

    def cmd_httpLogins(
        self,
        address: tuple[str, int],
        names: list[str],
        password: str,
        threads: int,
        start: float,
        warm: float,
        end: float,
    ) -> dict:
        """MSGR HTTP logins in a loop from C{start} to C{end}."""
        return accounts.loginLoop(tuple(address), names, password, threads, start, warm, end)

    def cmd_traffic(self, mode: str = "sample", window: int | None = 64, rate: float | None = None) -> None:
        """Start describing traffic (the pairs and inboxes that follow)."""
        self.traffic = Traffic(self.loop, mode, window, rate)

    def cmd_pairs(
        self,
        senders: str,
        receivers: str,
        receiverNames: list[str] | None = None,
    ) -> int:
        """
        Pair the sessions of group C{senders} with those of C{receivers},
        in order (the receivers' names as the senders write them, if
        different: C{receiverNames}).
        """
        send, receive = self.groups.get(senders, []), self.groups.get(receivers, [])
        if len(send) != len(receive):
            raise ValueError(f"{len(send)} senders for {len(receive)} receivers")
        for index, (s, r) in enumerate(zip(send, receive)):
            self.traffic.addPair(s, r, receiverNames[index] if receiverNames else None)
        return len(send)

    def cmd_inboxes(self, group: str, sender: str | None) -> int:
        """Count deliveries from C{sender} to every session of C{group}."""
        for session in self.groups.get(group, []):
            self.traffic.addInbox(session, sender)
        return len(self.groups.get(group, []))

    def cmd_broadcast(self, group: str) -> str:
        """The first session of C{group} broadcasts; returns its name."""
        session = self.groups[group][0]
        self.traffic.addBroadcast(session)
        return session.name

    def cmd_calibrate(self, timeout: float = 30.0, sendOnly: bool = False) -> dict:
        ok = self.traffic.calibrate(timeout, sendOnly)
        return {"ok": ok, "errors": self.traffic.errors[:10]}

    def cmd_waitCalibrated(self, timeout: float = 30.0) -> dict:
        ok = self.traffic.waitCalibrated(timeout)
        return {"ok": ok, "errors": self.traffic.errors[:10]}

    def cmd_run(self, start: float, warm: float, end: float) -> dict:
        return self.traffic.run(start, warm, end)

    def cmd_drain(self, timeout: float = 30.0, expected: int | None = None) -> dict:
        return self.traffic.drain(timeout, expected)

    def cmd_check(self) -> dict:
        """
        How many sessions are still open, and which got anything while
        nobody was listening (an idle session should get nothing).
        """
        self.loop.poll(0)
        open_ = closed = noisy = 0
        samples = []
        for group in self.groups.values():
            for session in group:
                if session.closed is not None:
                    closed += 1
                    if len(samples) < 5:
                        samples.append(f"{session!r}: {session.closed}")
                else:
                    open_ += 1
                if session.backlog:
                    noisy += 1
                    if len(samples) < 5:
                        samples.append(f"{session!r} got {bytes(session.backlog[:80])!r}")
        return {"open": open_, "closed": closed, "noisy": noisy, "samples": samples}

    def cmd_closeAll(self) -> int:
        if self.fileSocket is not None:
            self.fileSocket.close()
            self.fileSocket = None
        count = len(self.loop.open)
        self.loop.closeAll()
        self.groups.clear()
        self.traffic = None
        return count

    # MSRP files (scenario 5): one blocking socket per worker.

    def cmd_fileConnect(self, role: str, address: tuple[str, int], name: str, via: str, timeout: float = 30.0) -> dict:
        self.fileSocket = files.connect(role, tuple(address), name, via, timeout)
        return {"ok": True}

    def cmd_fileReceive(
        self, filename: str, size: int, via: str, timeout: float, verify: bool = False,
        headerTimeout: float | None = None,
    ) -> dict:
        return files.receive(self.fileSocket, filename, size, via, timeout, verify, headerTimeout)

    def cmd_fileSend(self, receiver: str, filename: str, size: int, via: str, timeout: float) -> dict:
        sock, self.fileSocket = self.fileSocket, None
        return files.send(sock, receiver, filename, size, via, timeout)


def serve(connection, index: int) -> None:
    """A worker's main loop: obey commands from C{connection} until C{exit}."""
    raiseFileLimit()
    worker = Worker(index)
    try:
        while True:
            try:
                command, arguments = connection.recv()
            except EOFError:
                break
            if command == "exit":
                break
            try:
                result = getattr(worker, "cmd_" + command)(**arguments)
            except Exception:
                connection.send(("error", traceback.format_exc()))
            else:
                connection.send(("ok", result))
    finally:
        worker.loop.closeAll()
        connection.close()


class WorkerPool:
    """
    C{count} workers: processes (the default), or threads of this process
    (C{threads=True}, for tests: no start-up cost, no parallelism).

    Worker processes are fresh interpreters (C{python -m
    chatd.loadgen.worker FD INDEX}) talking over a socket pair, not
    C{multiprocessing} children: those would import the caller's main
    module again.
    """

    def __init__(self, count: int, threads: bool = False) -> None:
        self.count = count
        self.threads = threads
        self.connections: list[Connection] = []
        self.handles: list = []
        try:
            for index in range(count):
                if threads:
                    ours, theirs = multiprocessing.Pipe()
                    handle = threading.Thread(target=serve, args=(theirs, index), daemon=True)
                    handle.start()
                else:
                    ours, handle = self._spawn(index)
                self.connections.append(ours)
                self.handles.append(handle)
            self.callAll("ping")
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _spawn(index: int) -> tuple[Connection, subprocess.Popen]:
        ours, theirs = socket.socketpair()
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "chatd.loadgen.worker", str(theirs.fileno()), str(index)],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
            )
        finally:
            theirs.close()
        return Connection(ours.detach()), process

    def _alive(self, index: int) -> bool:
        handle = self.handles[index]
        if isinstance(handle, threading.Thread):
            return handle.is_alive()
        return handle.poll() is None

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def send(self, index: int, command: str, **arguments: Any) -> None:
        self.connections[index].send((command, arguments))

    def receive(self, index: int, timeout: float | None = None, tick: Callable[[], None] | None = None) -> Any:
        """
        The result of worker C{index}'s command; C{tick} is called about
        every 50 ms while waiting.

        @raise WorkerError: when the command failed or the worker died.
        """
        connection = self.connections[index]
        deadline = None if timeout is None else time.monotonic() + timeout
        while not connection.poll(0.05):
            if tick is not None:
                tick()
            if not self._alive(index):
                raise WorkerError(f"worker {index} died")
            if deadline is not None and time.monotonic() > deadline:
                raise WorkerError(f"worker {index} did not answer within {timeout:g}s")
        try:
            status, result = connection.recv()
        except EOFError:
            raise WorkerError(f"worker {index} died") from None
        if status != "ok":
            raise WorkerError(f"worker {index}:\n{result}")
        return result

    def call(self, index: int, command: str, **arguments: Any) -> Any:
        self.send(index, command, **arguments)
        return self.receive(index)

    def callAll(
        self,
        command: str,
        perWorker: list[dict] | None = None,
        tick: Callable[[], None] | None = None,
        **arguments: Any,
    ) -> list:
        """
        Send C{command} to every worker (with C{perWorker[i]} added to the
        arguments of worker C{i}) and return their results in order.
        """
        for index in range(self.count):
            extra = perWorker[index] if perWorker else {}
            self.send(index, command, **arguments, **extra)
        return [self.receive(index, tick=tick) for index in range(self.count)]

    def close(self) -> None:
        for connection in self.connections:
            try:
                connection.send(("exit", {}))
            except OSError:
                pass
        for handle in self.handles:
            if isinstance(handle, threading.Thread):
                handle.join(10)
                continue
            try:
                handle.wait(10)
            except subprocess.TimeoutExpired:
                handle.kill()
                handle.wait(5)
        for connection in self.connections:
            connection.close()
        self.connections = []
        self.handles = []


def main(argv: list[str] | None = None) -> int:
    """C{python -m chatd.loadgen.worker FD INDEX}: one worker process."""
    argv = sys.argv[1:] if argv is None else argv
    serve(Connection(int(argv[0])), int(argv[1]))
    return 0


__all__ = ["WorkerPool", "Worker", "WorkerError", "serve", "raiseFileLimit"]


if __name__ == "__main__":
    sys.exit(main())
