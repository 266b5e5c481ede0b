"""
C{--workers N}: a real C{twistd chatd} parent on a port of its own, and N
worker processes serving it (docs/cluster.md, "Several processes on one
machine").

The servers run with L{workers.WITHOUT_CLUSTER} set (for tests only): the
option otherwise needs C{--cluster}, which this branch does not have; what
is checked here is the parent and its workers, as a client and an operator
see them (answers on the port, the log, the processes).
"""

from __future__ import annotations

import os
import re
import signal
import socket

from twisted.internet import defer, reactor, task
from twisted.internet.endpoints import (
    SSL4ClientEndpoint,
    TCP4ClientEndpoint,
    connectProtocol,
)
from twisted.internet.error import ProcessTerminated
from twisted.logger import LogLevel, eventAsJSON, formatEvent, globalLogPublisher
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from chatd import tap, workers
from chatd.harness import ServerError
from chatd.protobuf import chat_pb2
from tests.support import login
from tests.test_twistd_plugin import responseWith
from tests.tls import LOOPBACK, clientOptions, makePKI, serverDescription
from tests.twistd import ByteCollector, TwistdProcess

R = chat_pb2.ServerResponse

#: Only the protobuf listener, on a free port of 127.0.0.1.
PROTOBUF_ONLY = [
    "--msrp", "none", "--http", "none", "--msgr", "none", "--db", "none",
]

STARTED = re.compile(rb"chatd: worker (\d+) started \(pid (\d+)\)")


class WorkersProcess(TwistdProcess):
    """A L{TwistdProcess} that can wait for a line of its log."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._waiters: list[tuple[re.Pattern, int, defer.Deferred]] = []

    def outReceived(self, data: bytes) -> None:
        super().outReceived(data)
        for waiter in list(self._waiters):
            pattern, count, d = waiter
            if len(pattern.findall(self.output)) >= count:
                self._waiters.remove(waiter)
                d.callback(None)

    errReceived = outReceived

    def waitForLog(self, pattern: bytes, count: int = 1) -> defer.Deferred:
        """Fire once the log has C{count} lines matching C{pattern}."""
        compiled = re.compile(pattern)
        d = defer.Deferred()
        if len(compiled.findall(self.output)) >= count:
            d.callback(None)
        else:
            self._waiters.append((compiled, count, d))
        return d

    def workerPids(self) -> dict[int, int]:
        """The latest pid of each worker, from the parent's log."""
        return {int(n): int(pid) for n, pid in STARTED.findall(self.output)}


def alive(pid: int) -> bool:
    """Whether C{pid} is a process that has not ended (nor is a zombie)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in (b"Z", b"X")


def gone(pids, timeout: float = 20.0) -> defer.Deferred:
    """Fire once no process of C{pids} is alive; fail after C{timeout}."""
    deadline = reactor.seconds() + timeout

    def check():
        left = [pid for pid in pids if alive(pid)]
        if not left:
            return None
        if reactor.seconds() > deadline:
            raise AssertionError(f"processes still running: {left}")
        return task.deferLater(reactor, 0.05, check)

    return defer.maybeDeferred(check)


class WorkersTests(TestCase):
    timeout = 90

    def setUp(self) -> None:
        os.environ[workers.WITHOUT_CLUSTER] = "1"
        self.addCleanup(os.environ.pop, workers.WITHOUT_CLUSTER, None)

    def startServer(self, args, labels=("protobuf",)) -> WorkersProcess:
        directory = self.mktemp()
        os.makedirs(directory)
        server = WorkersProcess(args, list(labels), directory)
        self.addCleanup(self.stopServer, server)
        return server

    @defer.inlineCallbacks
    def stopServer(self, server: WorkersProcess):
        pids = list(server.workerPids().values())
        for pid in pids:
            if alive(pid):
                os.kill(pid, signal.SIGCONT)  # a test may have left one stopped
        yield server.stop()
        yield gone(pids)

    @defer.inlineCallbacks
    def logIn(self, port: int, name: str, endpoint=None):
        """A protobuf client logged in as C{name}; the response's user."""
        client = ByteCollector()
        if endpoint is None:
            endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        yield connectProtocol(endpoint, client)
        self.addCleanup(lambda: (client.transport.loseConnection(), client.closed)[1])
        client.transport.write(login(name).SerializeToString())
        response = yield client.waitFor(responseWith("user"))
        return response

    @defer.inlineCallbacks
    def test_bothWorkersServeThePort(self):
        """
        C{--workers 2} on C{tcp:0}: the port is logged as listening once,
        and each worker accepts on it: with one worker stopped (SIGSTOP),
        the other answers a login, and the other way round.
        """
        server = self.startServer(
            ["--workers", "2", "--protobuf", "tcp:0:interface=127.0.0.1", *PROTOBUF_ONLY]
        )
        ports = yield server.start()
        yield server.waitForLog(rb"worker 2: chatd protobuf serving tcp:127\.0\.0\.1:")
        self.assertEqual(server.output.count(b"chatd protobuf listening on"), 1)
        pids = server.workerPids()
        self.assertEqual(sorted(pids), [1, 2])
        for stopped, name in [(1, "ana"), (2, "beto")]:
            os.kill(pids[stopped], signal.SIGSTOP)
            try:
                response = yield self.logIn(ports["protobuf"], name)
            finally:
                os.kill(pids[stopped], signal.SIGCONT)
            self.assertEqual(
                (response.code, response.user.username),
                (R.SUCCESSFUL_OPERATION, name),
            )

    @defer.inlineCallbacks
    def test_workersAreNodesOfOneCluster(self):
        """
        With C{--cluster}, each worker is a node of the cluster: a user
        served by worker 1 writes to a user served by worker 2, and each
        sees the other in the list of users.
        """
        from chatd.testservers import redisServer
        from tests.support import message, request

        os.environ.pop(workers.WITHOUT_CLUSTER, None)
        redis = redisServer()
        server = self.startServer(
            [
                "--workers", "2", "--protobuf", "tcp:0:interface=127.0.0.1", *PROTOBUF_ONLY,
                "--cluster", redis.url, "--cluster-prefix", f"workers{os.getpid()}:",
                "--node-id", "w",
            ]
        )
        ports = yield server.start()
        yield server.waitForLog(rb"worker 2: chatd protobuf serving tcp:127\.0\.0\.1:")
        self.assertIn(b"cluster node w-w1 ready", server.output)
        self.assertIn(b"cluster node w-w2 ready", server.output)
        pids = server.workerPids()
        clients = {}
        for stopped, name in [(2, "ana"), (1, "beto")]:
            # The other worker is stopped: this login is the running one's.
            os.kill(pids[stopped], signal.SIGSTOP)
            try:
                client = ByteCollector()
                endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", ports["protobuf"])
                yield connectProtocol(endpoint, client)
                self.addCleanup(lambda c=client: (c.transport.loseConnection(), c.closed)[1])
                client.transport.write(login(name).SerializeToString())
                yield client.waitFor(responseWith("user"))
            finally:
                os.kill(pids[stopped], signal.SIGCONT)
            clients[name] = client
        yield server.waitForLog(rb"worker 1: .*ana logged in")
        yield server.waitForLog(rb"worker 2: .*beto logged in")
        # Worker 1 learns of beto's login from Redis a moment after worker 2
        # logged it: ask its list until it has him (each answer awaited).
        ana = clients["ana"]
        for _ in range(100):
            ana.received = b""
            ana.transport.write(
                request(option=chat_pb2.ClientRequest.CONNECTED_USERS).SerializeToString()
            )
            listed = yield ana.waitFor(responseWith("users"))
            if "beto" in [u.username for u in listed.users.users]:
                break
        ana.transport.write(message("beto", "hola desde w1").SerializeToString())
        yield clients["beto"].waitFor(lambda data: b"hola desde w1" in data)
        self.assertEqual(
            sorted(u.username for u in listed.users.users), ["ana", "beto"]
        )

    @defer.inlineCallbacks
    def test_killedWorkerIsRestarted(self):
        """
        A worker killed with SIGKILL: the port goes on serving, the parent
        logs it and starts the worker again, which serves the port too.
        """
        server = self.startServer(
            ["--workers", "2", "--protobuf", "tcp:0:interface=127.0.0.1", *PROTOBUF_ONLY]
        )
        ports = yield server.start()
        yield server.waitForLog(rb"worker 2: chatd protobuf serving")
        first = server.workerPids()[1]
        os.kill(first, signal.SIGKILL)
        response = yield self.logIn(ports["protobuf"], "ana")
        self.assertEqual(response.code, R.SUCCESSFUL_OPERATION)
        yield server.waitForLog(
            rb"chatd: worker 1 \(pid %d\) ended \(signal 9\); restarting it in 1(\.0)?s"
            % first
        )
        yield server.waitForLog(rb"worker 1: chatd protobuf serving", count=2)
        second = server.workerPids()[1]
        self.assertNotEqual(second, first)
        self.assertFalse(alive(first))
        # The new worker 1 serves: worker 2 stopped, a login is answered.
        os.kill(server.workerPids()[2], signal.SIGSTOP)
        try:
            response = yield self.logIn(ports["protobuf"], "beto")
        finally:
            os.kill(server.workerPids()[2], signal.SIGCONT)
        self.assertEqual(response.code, R.SUCCESSFUL_OPERATION)
        self.assertEqual(server.output.count(b"chatd protobuf listening on"), 1)

    @defer.inlineCallbacks
    def test_sigintIsTheParents(self):
        """
        Ctrl-C reaches every process of the terminal's group; a worker leaves
        it to the parent: SIGINT to worker 1 does not stop it, and it goes
        on serving (with worker 2 stopped, a login is answered by it).
        """
        server = self.startServer(
            ["--workers", "2", "--protobuf", "tcp:0:interface=127.0.0.1", *PROTOBUF_ONLY]
        )
        ports = yield server.start()
        yield server.waitForLog(rb"worker 2: chatd protobuf serving")
        pids = server.workerPids()
        os.kill(pids[1], signal.SIGINT)
        os.kill(pids[2], signal.SIGSTOP)
        try:
            response = yield self.logIn(ports["protobuf"], "ana")
        finally:
            os.kill(pids[2], signal.SIGCONT)
        self.assertEqual(response.code, R.SUCCESSFUL_OPERATION)
        self.assertEqual(server.workerPids(), pids)
        self.assertNotIn(b"Received SIGINT", server.output)

    @defer.inlineCallbacks
    def test_sigtermStopsEveryWorker(self):
        """
        SIGTERM to the parent: every worker says goodbye to its clients and
        ends, then the parent; no worker is left running.
        """
        server = self.startServer(
            ["--workers", "3", "--protobuf", "tcp:0:interface=127.0.0.1", *PROTOBUF_ONLY]
        )
        ports = yield server.start()
        yield server.waitForLog(rb"worker 3: chatd protobuf serving")
        pids = server.workerPids()
        self.assertEqual(len(pids), 3)
        client = ByteCollector()
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", ports["protobuf"]), client)
        client.transport.write(login("ana").SerializeToString())
        yield client.waitFor(responseWith("user"))
        client.received = b""
        yield server.stop()
        yield client.closed
        goodbye = R.FromString(client.received)
        self.assertEqual(goodbye.response, "the server is shutting down")
        self.assertEqual(server.exitStatus.signal, 15)
        for number in (1, 2, 3):
            self.assertIn(b"chatd: worker %d stopped" % number, server.output)
        self.assertEqual([pid for pid in pids.values() if alive(pid)], [])

    @defer.inlineCallbacks
    def test_parentKilledTakesWorkersAlong(self):
        """
        A parent killed with SIGKILL cannot stop its workers; they stop by
        themselves (their parent-death signal) instead of serving alone.
        """
        server = self.startServer(
            ["--workers", "2", "--protobuf", "tcp:0:interface=127.0.0.1", *PROTOBUF_ONLY]
        )
        yield server.start()
        yield server.waitForLog(rb"worker 2: chatd protobuf serving")
        pids = list(server.workerPids().values())
        yield server.signal("KILL")
        yield gone(pids)

    @defer.inlineCallbacks
    def test_workerThatCannotStart(self):
        """
        A worker that cannot start (its database cannot be created) stops
        the parent with exit status 1 and the reason, instead of restarting
        it for ever.
        """
        server = self.startServer(
            [
                "--workers", "2",
                "--http", "tcp:0:interface=127.0.0.1",
                "--msgr", "none", "--protobuf", "none", "--msrp", "none",
                "--db", "/nonexistent/chatd-test/chatd.sqlite3",
            ],
            labels=("msgr-http",),
        )
        yield self.assertFailure(server.start(), ServerError)
        yield server.ended
        self.assertEqual(server.exitStatus.exitCode, 1)
        self.assertIn(b"chatd: worker 1 could not start (exit status 1); stopping", server.output)
        self.assertNotIn(b"worker 2 started", server.output)
        self.assertEqual(len(STARTED.findall(server.output)), 1)

    @defer.inlineCallbacks
    def test_portInUse(self):
        """
        A port that cannot be bound stops the parent at start-up with the
        one line a single process says, exit status 1, and no worker started.
        """
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        server = self.startServer(
            ["--workers", "2", "--protobuf", f"tcp:{port}:interface=127.0.0.1", *PROTOBUF_ONLY]
        )
        yield self.assertFailure(server.start(), ServerError)
        yield server.ended
        self.assertEqual(server.exitStatus.exitCode, 1)
        self.assertIn(
            b"chatd: --protobuf tcp:%d:interface=127.0.0.1: address already in use" % port,
            server.output,
        )
        self.assertEqual(STARTED.findall(server.output), [])

    @defer.inlineCallbacks
    def test_tls(self):
        """
        An C{ssl:} listener under workers: the client gets the server's
        certificate through the handshake and its login is answered.
        """
        pki = makePKI(os.path.abspath(self.mktemp()))
        server = self.startServer(
            ["--workers", "2", "--protobuf", serverDescription(pki), *PROTOBUF_ONLY]
        )
        ports = yield server.start()
        self.assertIn(b"chatd protobuf listening on ssl:127.0.0.1:", server.output)
        yield server.waitForLog(rb"worker 2: chatd protobuf serving ssl:")
        pids = server.workerPids()
        for stopped, name in [(1, "ana"), (2, "beto")]:
            os.kill(pids[stopped], signal.SIGSTOP)
            try:
                response = yield self.logIn(
                    ports["protobuf"],
                    name,
                    SSL4ClientEndpoint(
                        reactor, LOOPBACK, ports["protobuf"], clientOptions(pki, "localhost")
                    ),
                )
            finally:
                os.kill(pids[stopped], signal.SIGCONT)
            self.assertEqual(
                (response.code, response.user.username, response.user.ip),
                (R.SUCCESSFUL_OPERATION, name, LOOPBACK),
            )


class WorkersOptionTests(TestCase):
    """What C{--workers} refuses, as the usage error says it."""

    def parse(self, argv):
        config = tap.Options()
        config.parseOptions(argv)
        return config

    def test_default(self):
        self.assertEqual(self.parse([])["workers"], 1)

    def test_needsCluster(self):
        os.environ.pop(workers.WITHOUT_CLUSTER, None)
        with self.assertRaises(usage.UsageError) as caught:
            self.parse(["--workers", "2"])
        self.assertEqual(
            str(caught.exception),
            "--workers 2 needs --cluster: without it each worker would have a "
            "directory of users of its own (docs/cluster.md)",
        )

    def test_notPositive(self):
        with self.assertRaises(usage.UsageError) as caught:
            self.parse(["--workers", "0"])
        self.assertEqual(str(caught.exception), "--workers 0: must be a positive whole number")

    def test_onlyTcpAndSsl(self):
        os.environ[workers.WITHOUT_CLUSTER] = "1"
        self.addCleanup(os.environ.pop, workers.WITHOUT_CLUSTER, None)
        with self.assertRaises(usage.UsageError) as caught:
            self.parse(["--workers", "2", "--msrp", "unix:/tmp/chatd-msrp.sock"])
        self.assertEqual(
            str(caught.exception),
            "--msrp unix:/tmp/chatd-msrp.sock: with --workers 2 every listener "
            "is tcp: or ssl: (the sockets the workers share)",
        )


class FakeProcessTransport:
    """What C{spawnProcess} returns: a pid, and the signals sent to it."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.signals: list[str] = []

    def signalProcess(self, name: str) -> None:
        self.signals.append(name)


class SpawningClock(task.Clock):
    """
    A clock whose C{spawnProcess} records the worker instead of starting
    it, so that the restart policy is checked second by second.
    """

    running = True

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[tuple] = []
        self.stopped = False

    def spawnProcess(self, processProtocol, executable, args, env, childFDs):
        transport = FakeProcessTransport(1000 + len(self.spawned))
        processProtocol.makeConnection(transport)
        self.spawned.append((processProtocol, args, env, childFDs))
        return transport

    def stop(self) -> None:
        self.stopped = True


class RestartPolicyTests(TestCase):
    """
    The parent's restart policy, on a clock: a worker that dies is started
    again after 1, 2, 4, 8, 16 s; the sixth death in a row stops chatd with
    exit status 1; a worker that ran 60 s starts a fresh count.
    """

    def setUp(self) -> None:
        self.clock = SpawningClock()
        self.events: list[dict] = []
        observe = self.events.append
        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        config = {
            "workers": 2,
            "shutdown-grace": 5.0,
            "protobuf": "tcp:0:interface=127.0.0.1",
            "msrp": "none",
        }
        self.supervisor = workers.WorkerSupervisor(
            config, self.clock, ["protobuf", "msrp"], ["--workers", "2"]
        )
        self.exits: list[int] = []
        self.supervisor.exitWith = self.exits.append
        self.supervisor.privilegedStartService()
        self.addCleanup(self.supervisor._closeSockets)

    def texts(self) -> list[str]:
        return [formatEvent(e) for e in self.events]

    def serve(self, index: int) -> None:
        """The worker spawned C{index}th logs that it serves protobuf."""
        line = eventAsJSON(
            {
                "log_format": workers.SERVING_FORMAT,
                "log_level": LogLevel.info,
                "log_namespace": "chatd.listener.ListenerService",
                "log_time": 0.0,
                "label": "protobuf",
                "address": "tcp:127.0.0.1:5000",
                "event": "worker-serving",
                "log_text": "chatd protobuf serving tcp:127.0.0.1:5000",
            }
        )
        self.clock.spawned[index][0].childDataReceived(1, line.encode() + b"\n")

    def die(self, index: int) -> None:
        self.clock.spawned[index][0].processEnded(Failure(ProcessTerminated(signal=9)))

    def test_startAndShare(self):
        """
        Worker 1 starts alone with the socket as its descriptor 3; worker 2
        once worker 1 serves; the listening line is logged once.
        """
        self.supervisor.startService()
        self.assertEqual(len(self.clock.spawned), 1)
        _, args, env, childFDs = self.clock.spawned[0]
        self.assertEqual(
            (env[workers.WORKER], env[workers.SOCKETS]), ("1", "protobuf=3")
        )
        self.assertEqual(childFDs[3], self.supervisor.sockets["protobuf"].fileno())
        self.assertEqual(args[-2:], ["--workers", "2"])
        self.serve(0)
        self.assertEqual(len(self.clock.spawned), 2)
        self.assertEqual(self.clock.spawned[1][2][workers.WORKER], "2")
        self.serve(1)
        self.assertEqual(
            [t for t in self.texts() if "listening on" in t],
            ["chatd protobuf listening on tcp:127.0.0.1:5000"],
        )
        self.assertIn("worker 2: chatd protobuf serving tcp:127.0.0.1:5000", self.texts())

    def test_nodeIdOfEachWorker(self):
        """
        With C{--node-id} (the cluster's option), worker k runs as
        C{NODE-wk}; without it, with the parent's options as they are.
        """
        self.assertEqual(self.supervisor.workerArgv(2)[-2:], ["--workers", "2"])
        self.supervisor.config["node-id"] = "paris"
        self.assertEqual(
            self.supervisor.workerArgv(2)[-4:], ["--workers", "2", "--node-id", "paris-w2"]
        )


    def test_nodeIdWithoutOption(self):
        """
        Without C{--node-id}, worker k runs as the parent's C{HOSTNAME-PID}
        followed by C{-wk}: ids stay unique across machines and restarts of
        the parent, and a worker restarted by the parent keeps its id (so it
        frees what its previous run left at once).
        """
        self.supervisor.config["node-id"] = ""
        argv = self.supervisor.workerArgv(2)
        self.assertEqual(argv[-2], "--node-id")
        self.assertEqual(
            argv[-1], f"{socket.gethostname()}-{os.getpid()}-w2"
        )
    def test_backoffThenGiveUp(self):
        self.supervisor.startService()
        self.serve(0)
        for delay in [1, 2, 4, 8, 16]:
            self.die(len(self.clock.spawned) - 1)
            spawned = len(self.clock.spawned)
            self.clock.advance(delay - 0.01)
            self.assertEqual(len(self.clock.spawned), spawned)
            self.clock.advance(0.01)
            self.assertEqual(len(self.clock.spawned), spawned + 1)
            self.assertEqual(self.clock.spawned[-1][2][workers.WORKER], "2")
        self.assertEqual((self.exits, self.clock.stopped), ([], False))
        self.die(len(self.clock.spawned) - 1)
        self.assertEqual((self.exits, self.clock.stopped), ([1], True))
        self.assertIn(
            "chatd: worker 2 ended (signal 9) 6 times in a row within 60.0s of"
            " its start; stopping",
            self.texts(),
        )
        # Stopping: the live worker 1 gets SIGTERM; once it ends, the
        # sockets are closed.
        stopped = self.supervisor.stopService()
        worker1 = self.clock.spawned[0][0]
        self.assertEqual(worker1.transport.signals, ["TERM"])
        self.die(0)
        self.successResultOf(stopped)
        self.assertEqual(self.supervisor.sockets, {})
        self.assertIn("chatd: every worker stopped", self.texts())

    def test_stableWorkerStartsAFreshCount(self):
        self.supervisor.startService()
        self.serve(0)
        self.die(1)
        self.clock.advance(1)
        self.die(2)
        self.clock.advance(2)
        self.clock.advance(60)  # the third worker 2 ran 60 s
        self.die(3)
        self.assertIn(
            "chatd: worker 2 (pid 1003) ended (signal 9); restarting it in 1.0s",
            self.texts(),
        )
