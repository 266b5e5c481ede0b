"""
Helpers for the chatd-client tests (no tests here): a real C{twistd -n chatd}
on free ports of 127.0.0.1, and C{chatd-client} processes in scripted mode
whose standard input the test writes and whose output it waits for.
"""

from __future__ import annotations

import os
import sys

from twisted.internet import defer, protocol, reactor
from twisted.python.failure import Failure

from tests.twistd import TwistdProcess

CLIENT = os.path.join(os.path.dirname(sys.executable), "chatd-client")

LOOPBACK = "tcp:0:interface=127.0.0.1"

#: The listener labels and their options.
LISTENERS = {"protobuf": "--protobuf", "msrp": "--msrp", "msgr": "--msgr", "msgr-http": "--http"}


class ClientProcess(protocol.ProcessProtocol):
    """
    One C{chatd-client} process. L{waitFor} fires once its standard output
    (or error) holds a text; L{ended} fires with its exit status.
    """

    def __init__(self) -> None:
        self.out = b""
        self.err = b""
        self.ended: defer.Deferred = defer.Deferred()
        self.exitCode: int | None = None
        self._waiters: list[tuple[str, bytes, defer.Deferred, int]] = []

    @property
    def stdout(self) -> str:
        return self.out.decode("utf-8")

    @property
    def stderr(self) -> str:
        return self.err.decode("utf-8")

    def lines(self) -> list[str]:
        return self.stdout.splitlines()

    def outReceived(self, data: bytes) -> None:
        self.out += data
        self._check()

    def errReceived(self, data: bytes) -> None:
        self.err += data
        self._check()

    def _check(self) -> None:
        for waiter in list(self._waiters):
            stream, text, d, count = waiter
            if (self.out if stream == "out" else self.err).count(text) >= count:
                self._waiters.remove(waiter)
                d.callback(None)

    def waitFor(self, text: str, stream: str = "out") -> defer.Deferred:
        return self.waitForCount(text, 1, stream)

    def waitForCount(self, text: str, count: int, stream: str = "out") -> defer.Deferred:
        """Fires once the output holds C{text} C{count} times."""
        data = text.encode("utf-8")
        if (self.out if stream == "out" else self.err).count(data) >= count:
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred()
        self._waiters.append((stream, data, d, count))
        return d

    def write(self, text: str) -> None:
        self.transport.write(text.encode("utf-8"))

    def closeStdin(self) -> None:
        self.transport.closeStdin()

    def processEnded(self, reason: Failure) -> None:
        self.exitCode = reason.value.exitCode
        waiters, self._waiters = self._waiters, []
        for stream, text, d in waiters:
            d.errback(
                AssertionError(
                    f"chatd-client ended (status {self.exitCode}) before {stream} held"
                    f" {text!r}:\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}"
                )
            )
        self.ended.callback(self.exitCode)

    def kill(self) -> defer.Deferred:
        if not self.ended.called:
            try:
                self.transport.signalProcess("KILL")
            except Exception:
                pass
        return self.ended


class ClientTestMixin:
    """For trial TestCases: start a server and clients, clean them all up."""

    timeout = 90

    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)

    @defer.inlineCallbacks
    def startServer(self, *extra: str, labels=("protobuf", "msrp", "msgr", "msgr-http"), endpoints=None):
        """twistd with the listeners in C{labels} on free ports; fires with {label: port}."""
        endpoints = endpoints or {}
        args = []
        for label, option in LISTENERS.items():
            args += [option, endpoints.get(label, LOOPBACK) if label in labels else "none"]
        if "msgr" in labels:
            args += ["--db", os.path.join(self.directory, "accounts.sqlite3")]
        else:
            args += ["--db", "none"]
        server = TwistdProcess([*args, *extra], list(labels), self.directory)
        self.addCleanup(server.signal, "KILL")
        self.ports = yield server.start()
        self.server = server
        return self.ports

    def client(self, protocolName: str, *args: str, port: str | None = None) -> ClientProcess:
        """Start C{chatd-client PROTOCOL --host 127.0.0.1 --port PORT ARGS} in scripted mode."""
        process = ClientProcess()
        argv = [CLIENT, protocolName, "--host", "127.0.0.1"]
        if port is None and protocolName in self.ports:
            argv += ["--port", str(self.ports[protocolName])]
        if protocolName == "msgr" and "msgr-http" in self.ports:
            argv += ["--http-port", str(self.ports["msgr-http"])]
        argv += list(args)
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CHATD_PASSWORD")}
        reactor.spawnProcess(process, CLIENT, argv, env=env, path=self.directory)
        self.addCleanup(process.kill)
        return process

    @defer.inlineCallbacks
    def script(self, protocolName: str, commands: str, *args: str):
        """Run a client with C{commands} as its whole input; fires with the process once it ended."""
        process = self.client(protocolName, *args)
        process.write(commands)
        process.closeStdin()
        yield process.ended
        return process

    @defer.inlineCallbacks
    def loggedIn(self, protocolName: str, name: str, *args: str):
        """A client that logged in and waits for commands (its input stays open)."""
        process = self.client(protocolName, "--name", name, *args)
        yield process.waitFor(f"* logged in as {name} ")
        return process

    @defer.inlineCallbacks
    def finish(self, process: ClientProcess, commands: str = ""):
        """Give C{process} its last commands and the end of its input; fires with its status."""
        if commands:
            process.write(commands)
        process.closeStdin()
        code = yield process.ended
        return code

    def saved(self, folder: str) -> dict[str, bytes]:
        """Every file in C{folder}, hidden ones too: {name: content}."""
        result = {}
        for name in sorted(os.listdir(folder)):
            with open(os.path.join(folder, name), "rb") as f:
                result[name] = f.read()
        return result

    def assertExit(self, process: ClientProcess, code: int) -> None:
        self.assertEqual(
            process.exitCode, code, f"stdout:\n{process.stdout}\nstderr:\n{process.stderr}"
        )


__all__ = ["ClientProcess", "ClientTestMixin", "CLIENT"]
