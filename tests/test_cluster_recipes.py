"""
The recipes of docs/cluster.md, run as written (only addresses and ports
put in place of the page's), and its HAProxy example behind a real HAProxy.

  - The quick start starts its two C{twistd} nodes as the page writes them,
    with free loopback ports for its ports, and the test run's
    C{redis-server} (L{chatd.testservers.redisServer}, a fresh
    C{--cluster-prefix}) for the page's Redis; what a node logs as it
    starts is checked against the page; then the two users of the page
    talk across the nodes, each printing what the page shows.
  - C{haproxy.cfg} is checked by C{haproxy -c}, then run (C{haproxy -f FILE
    -db}) in front of two real nodes on 127.0.0.1 and 127.0.0.2: clients
    through it land on both nodes and talk, and a node stopped is marked
    down by the health check, so the next client goes to the other.
  - The lines that would start chatd on this machine's default ports, or
    on other machines, are checked as their twin (the options parse, as
    twistd parses them, to the values the page says); C{chatd-admin copy}
    runs against the test run's PostgreSQL.
"""

from __future__ import annotations

import itertools
import os
import re
import shlex
import shutil
import socket
import sys

from twisted.internet import defer, protocol, reactor, task
from twisted.trial.unittest import SkipTest, TestCase

from chatd.harness import OutputWaiter, TwistdProcess, environment
from chatd.testservers import freePort, redisServer
from tests.test_client_support import LISTENERS, ClientTestMixin
from tests.test_cluster_twistd import directoriesHold
from tests.test_doc_commands import (
    DOC_POSTGRES,
    ROOT,
    OpenShell,
    TypedShell,
    linesMatch,
    markedBlocks,
    run,
    shellSteps,
    withoutComment,
)

DOCUMENT = os.path.join(ROOT, "docs", "cluster.md")

#: The Redis of the page's examples on one machine.
DOC_REDIS = "redis://127.0.0.1:6379/0"

_prefixes = itertools.count()


def freshPrefix() -> str:
    """A C{--cluster-prefix} no other test uses on the shared test Redis."""
    return f"recipes{os.getpid()}-{next(_prefixes)}:"


def documentBlock(name: str) -> list[str]:
    """
    The lines of the fenced block right after the marker naming C{name}
    (for blocks that are not shell recipes, such as C{haproxy.cfg}).
    """
    with open(DOCUMENT, encoding="utf-8") as f:
        lines = f.read().split("\n")
    marker = f"<!-- run by tests/test_cluster_recipes.py: {name} -->"
    start = lines.index(marker) + 1
    assert lines[start].startswith("```"), lines[start]
    end = lines.index("```", start + 1)
    return lines[start + 1 : end]


def blockAfter(sentence: str) -> list[str]:
    """The lines of the first fenced block after the line C{sentence}."""
    with open(DOCUMENT, encoding="utf-8") as f:
        lines = f.read().split("\n")
    start = lines.index(sentence)
    fence = next(i for i in range(start, len(lines)) if lines[i].startswith("```"))
    end = lines.index("```", fence + 1)
    return lines[fence + 1 : end]


def twistdWords(command: str) -> list[str]:
    """The words after C{twistd} of a documented command, as bash passes them."""
    words = shlex.split(withoutComment(command.replace("\\\n", " ")))
    if words and words[-1] == "&":
        words = words[:-1]
    assert os.path.basename(words[0]) == "twistd", command
    return words[1:]


def chatdOptionsOf(testCase: TestCase, command: str):
    """C{command}'s chatd options, parsed as twistd parses them."""
    from twisted.scripts.twistd import ServerOptions

    options = ServerOptions()
    options.parseOptions(twistdWords(command))
    testCase.assertEqual(options.subCommand, "chatd", command)
    return options.subOptions


class ShellTwistd(TwistdProcess):
    """
    A documented C{twistd} command line, run by bash as written (with
    C{exec}, so that its signals reach twistd), its ports learnt from its
    "listening on" lines.
    """

    def __init__(self, command: str, labels: list[str], directory: str) -> None:
        super().__init__([], labels, directory)
        self.command = command

    def start(self) -> defer.Deferred:
        env = environment()
        # The venv's twistd and chatd-client, as the page's commands name them.
        env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
        reactor.spawnProcess(
            self, "/bin/bash", ["bash", "-c", "exec " + self.command], env=env, path=self.directory
        )
        return self.ready


#: A twistd listener option of the page -> its label in the log.
LABELS = {option: label for label, option in LISTENERS.items()}


class QuickStartTests(TestCase):
    """The quick start, as written: two nodes, a user on each, talking."""

    timeout = 120

    def setUp(self) -> None:
        self.redis = redisServer()
        self.prefix = freshPrefix()
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        #: The page's port -> the test's, for every listener of both nodes.
        self.ports: dict[int, int] = {}

    @defer.inlineCallbacks
    def startNode(self, command: str) -> defer.Deferred:
        """One documented node line with free ports and the test Redis."""
        self.assertTrue(command.endswith(" &"), command)
        self.assertIn(DOC_REDIS, command)
        command = command[:-2].replace(DOC_REDIS, f"{self.redis.url}/0 --cluster-prefix {self.prefix}")
        documented: dict[str, int] = {}

        def loopback(match: re.Match) -> str:
            documented[LABELS[match.group(1)]] = int(match.group(2))
            return f"{match.group(1)} tcp:0:interface=127.0.0.1"

        command = re.sub(r"(--\w+) tcp:(\d+)", loopback, command)
        self.assertEqual(set(documented), {"protobuf", "msrp", "msgr", "msgr-http"}, command)
        node = ShellTwistd(command, list(documented), self.directory)
        self.addCleanup(node.signal, "KILL")
        ports = yield node.start()
        for label, port in documented.items():
            self.ports[port] = ports[label]
        return node

    def localCommand(self, command: str) -> str:
        """A chatd-client line with the test node's port for the page's."""
        port = int(re.search(r"--port (\d+)", command).group(1))
        return command.replace(f"--port {port}", f"--port {self.ports[port]}")

    def asDocumented(self, output: bytes) -> str:
        """What a client printed, with the page's ports for the test's."""
        text = output.decode("utf-8")
        for doc, test in self.ports.items():
            text = text.replace(f"localhost:{test}", f"localhost:{doc}")
        return text

    def spawn(self, shell, command: str):
        """Run a chatd-client line of the page in bash, the venv's first on PATH."""
        env = {k: v for k, v in environment().items() if k != "CHATD_PASSWORD"}
        env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
        reactor.spawnProcess(
            shell, "/bin/bash", ["bash", "-c", self.localCommand(command)], env=env, path=self.directory
        )

        def kill():
            if not shell.ended.called:
                shell.transport.signalProcess("KILL")
            return shell.ended

        self.addCleanup(kill)
        return shell

    @defer.inlineCallbacks
    def waitFor(self, shell, text: bytes):
        while text not in shell.output:
            if shell.ended.called:
                self.fail(f"ended before printing {text!r}: {shell.output!r} {shell.errors!r}")
            yield task.deferLater(reactor, 0.05, lambda: None)

    @defer.inlineCallbacks
    def test_quickStart(self):
        [block] = markedBlocks(self, "cluster-quick-start")
        steps = [command for command, _ in shellSteps(block)]
        self.assertEqual(len(steps), 3, steps)
        # The test run's redis-server stands for the page's, on 6379 as the URL says.
        self.assertEqual(steps[0], "redis-server --port 6379 --save '' &")
        self.assertIn("redis://127.0.0.1:6379/", steps[1])
        nodeA = yield self.startNode(steps[1])
        nodeB = yield self.startNode(steps[2])
        self.assertIn(b"cluster node b ready: 0 users online in the cluster", nodeB.output)

        # What node a logs as it starts, with the test's Redis, prefix and port.
        logged = [
            re.sub(r"^\S+ \[[^\]]*\] ", "", line)
            for line in nodeA.output.decode("utf-8").splitlines()
        ]
        shown = [
            line.replace(DOC_REDIS, f"{self.redis.url}/0")
            .replace("'chatd:'", repr(self.prefix))
            .replace("tcp:[::]:5000", f"tcp:127.0.0.1:{self.ports[5000]}")
            for line in blockAfter("Each node logs, as it starts:")
        ]
        found = [line for line in logged if line in shown]
        self.assertEqual(sorted(found), sorted(shown), nodeA.output)
        # In the page's order, but that the command and subscriber
        # connections come up in either order (they rank as one).
        together = min(i for i, line in enumerate(shown) if " connection to " in line)
        ranks = [together if " connection to " in line else shown.index(line) for line in found]
        self.assertEqual(ranks, sorted(ranks), nodeA.output)

        # The two users: ana waits (her input open, as at a terminal), beto
        # types what its comment says.
        [users] = markedBlocks(self, "cluster-quick-start-users")
        (first, firstShown), (second, secondShown) = shellSteps(users)
        typed = re.search(r"#\s*then:\s*(.*)$", second).group(1)
        ana = self.spawn(OpenShell(b""), first)
        yield self.waitFor(ana, b"* logged in as ana ")
        beto = self.spawn(TypedShell(f"{typed}\n".encode()), second)
        yield beto.ended
        self.assertEqual(beto.status, 0, beto.errors)
        self.assertTrue(linesMatch(secondShown, self.asDocumented(beto.output)), beto.output)
        yield self.waitFor(ana, b"[beto] hola")
        yield ana.close()
        self.assertEqual(ana.status, 0, ana.errors)
        self.assertTrue(linesMatch(firstShown, self.asDocumented(ana.output)), ana.output)
        # Each user was served by the node the page says.
        self.assertIn(b"ana logged in (", nodeA.output)
        self.assertIn(b"beto logged in (", nodeB.output)
        yield nodeA.signal("TERM")
        yield nodeB.signal("TERM")


class TwinTests(TestCase):
    """
    The page's lines that would start chatd on other machines or on this
    one's default ports: their options parse to what the page says.
    """

    def test_severalMachines(self):
        [block] = markedBlocks(self, "cluster-several-machines")
        commands = [command for command, _ in shellSteps(block)]
        self.assertEqual(len(commands), 2)
        ids = []
        for command in commands:
            options = chatdOptionsOf(self, command)
            self.assertEqual(options["cluster"], "redis://10.0.0.10:6379/0")
            self.assertEqual(options["db"], "postgresql://chatd@10.0.0.10/chatd")
            self.assertEqual(options["max-conns-per-ip"], 0)
            ids.append(options["node-id"])
        self.assertEqual(ids, ["chat1", "chat2"])

    def test_workers(self):
        [block] = markedBlocks(self, "cluster-workers")
        [(command, _)] = shellSteps(block)
        options = chatdOptionsOf(self, command)
        self.assertEqual(options["workers"], 4)
        self.assertEqual(options["cluster"], DOC_REDIS)


class PostgresRecipeTests(TestCase):
    """
    The PostgreSQL block: a new database of the test run's PostgreSQL for
    C{createdb}'s, the copy run as written (its URL that database's) from a
    SQLite database with one account, the node's line as its twin.
    """

    timeout = 90

    @defer.inlineCallbacks
    def test_postgresBlock(self):
        from chatd.testservers import postgresServer

        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        [block] = markedBlocks(self, "cluster-postgres")
        (createdb, _), (copy, _), (node, _) = shellSteps(block)
        self.assertEqual(withoutComment(createdb), "createdb -O chatd chatd")
        url = postgresServer().createDatabase()
        # An existing SQLite database, as the line says: chatd's schema (as
        # its first run creates it), with one account.
        from chatd.msgr.accounts import migrate
        from chatd.msgr.databases import dialectFor

        sqlite = os.path.join(directory, "chatd.sqlite3")
        connection = dialectFor(sqlite).connect(sqlite)
        migrate(connection)
        connection.close()
        out, err, status = yield run(
            "echo 'su clave' | chatd-admin --db chatd.sqlite3 create bea --password-stdin", directory
        )
        self.assertEqual(status, 0, err)
        self.assertIn(DOC_POSTGRES, copy)
        out, err, status = yield run(withoutComment(copy).replace(DOC_POSTGRES, url), directory)
        self.assertEqual((status, out), (0, "copied 1 accounts, 0 friendships and 0 friend requests\n"), err)
        out, err, status = yield run(f"chatd-admin --db {url} list", directory)
        self.assertIn("bea", out, err)
        self.assertEqual(chatdOptionsOf(self, node)["db"], DOC_POSTGRES)


class HAProxyProcess(OutputWaiter, protocol.ProcessProtocol):
    """C{haproxy -f FILE -db}: in the foreground, its messages on stderr."""

    def __init__(self) -> None:
        self.output = b""
        self.ended: defer.Deferred = defer.Deferred()
        self._waiting: list[tuple[bytes, defer.Deferred]] = []

    def outReceived(self, data: bytes) -> None:
        self._outputArrived(data)

    errReceived = outReceived

    def processEnded(self, reason) -> None:
        self.ended.callback(None)
        for _, d in self._waiting:
            d.errback(AssertionError("haproxy ended:\n" + self.output.decode(errors="replace")))
        self._waiting = []

    def stop(self) -> defer.Deferred:
        if not self.ended.called:
            try:
                self.transport.signalProcess("KILL")
            except Exception:
                pass
        return self.ended


def haproxy() -> str:
    path = shutil.which("haproxy") or (os.path.exists("/usr/sbin/haproxy") and "/usr/sbin/haproxy")
    if not path:
        raise SkipTest("haproxy is not installed (make test installs it on Debian as root: package haproxy)")
    return path


def accepts(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


class HAProxyTests(ClientTestMixin, TestCase):
    """The page's haproxy.cfg, checked by haproxy, then run in front of two nodes."""

    timeout = 120

    @defer.inlineCallbacks
    def test_configIsValid(self):
        """C{haproxy -c} accepts the page's file as written, without a warning."""
        program = haproxy()
        path = os.path.join(self.directory, "haproxy.cfg")
        with open(path, "w") as f:
            f.write("\n".join(documentBlock("haproxy-cfg")) + "\n")
        out, err, status = yield run(f"{program} -c -f {path}", self.directory)
        self.assertEqual(status, 0, out + err)
        self.assertNotIn("WARNING", out + err)
        self.assertNotIn("ALERT", out + err)

    @defer.inlineCallbacks
    def startNode(self, nodeId: str, host: str, ports: dict[str, int] | None = None):
        """A node on C{host}, on C{ports} (or free ones), as the page runs it."""
        directory = os.path.join(self.directory, nodeId)
        os.makedirs(directory)
        args = []
        for label, option in LISTENERS.items():
            port = ports[label] if ports else 0
            args += [option, f"tcp:{port}:interface={host}"]
        args += [
            "--db", self.database,
            "--cluster", f"{self.redis.url}/0",
            "--cluster-prefix", self.prefix,
            "--node-id", nodeId,
            "--max-conns-per-ip", "0",
        ]
        node = ShellTwistd(
            shlex.join(["twistd", "-n", "--pidfile=", "chatd", *args]), list(LISTENERS), directory
        )
        node.host = host
        self.addCleanup(node.signal, "KILL")
        found = yield node.start()
        self.nodes[nodeId] = node
        return found

    def localConfig(self, nodePorts: dict[str, int]) -> tuple[str, dict[str, int]]:
        """
        The page's haproxy.cfg with 127.0.0.1 and 127.0.0.2 for its two
        nodes (whose ports are C{nodePorts}, the same on both), and free
        ports of 127.0.0.1 for its frontends. Fires with the text and the
        frontends' ports by label.
        """
        documented = {"5000": "protobuf", "8080": "msrp", "1234": "msgr", "8000": "msgr-http"}
        frontends: dict[str, int] = {}
        text = "\n".join(documentBlock("haproxy-cfg")) + "\n"

        def bind(match: re.Match) -> str:
            label = documented[match.group(1)]
            frontends[label] = freePort()
            return f"bind 127.0.0.1:{frontends[label]}"

        def server(match: re.Match) -> str:
            host = {"10.0.0.1": "127.0.0.1", "10.0.0.2": "127.0.0.2"}[match.group(1)]
            return f"{host}:{nodePorts[documented[match.group(2)]]}"

        text = re.sub(r"bind :(\d+)", bind, text)
        text = re.sub(r"\b(10\.0\.0\.[12]):(\d+)", server, text)
        text = text.replace("check port 8000", f"check port {nodePorts['msgr-http']}")
        self.assertEqual(set(frontends), set(documented.values()))
        self.assertNotIn("10.0.0.", text)
        return text, frontends

    @defer.inlineCallbacks
    def test_clientsThroughHAProxy(self):
        """
        Two users through HAProxy's protobuf port land on both nodes and
        write to each other; an MSGR user logs in through it and writes to
        one of them; a node stopped is marked down, and the next
        user, whom leastconn would give to it, is sent to the other.
        """
        program = haproxy()
        self.redis = redisServer()
        self.prefix = freshPrefix()
        self.nodes: dict[str, ShellTwistd] = {}
        # The nodes share their MSGR accounts, as the page's do.
        from chatd.testservers import postgresServer

        self.database = postgresServer().createDatabase()
        nodePorts = yield self.startNode("chat1", "127.0.0.1")
        # The same ports on 127.0.0.2: one health-check port for both, as
        # on two machines.
        yield self.startNode("chat2", "127.0.0.2", nodePorts)
        text, frontends = self.localConfig(nodePorts)
        path = os.path.join(self.directory, "haproxy.cfg")
        with open(path, "w") as f:
            f.write(text)
        proxy = HAProxyProcess()
        reactor.spawnProcess(proxy, program, [program, "-f", path, "-db"], env=environment(), path=self.directory)
        self.addCleanup(proxy.stop)
        while not all(accepts(port) for port in frontends.values()):
            if proxy.ended.called:
                self.fail(proxy.output.decode())
            yield task.deferLater(reactor, 0.05, lambda: None)

        self.ports = frontends
        ana = yield self.loggedIn("protobuf", "ana")
        bea = yield self.loggedIn("protobuf", "bea")
        # leastconn: the second connection to a port goes to the other node.
        served = {
            name: [nodeId for nodeId, node in self.nodes.items() if f"{name} logged in (".encode() in node.output]
            for name in ("ana", "bea")
        }
        self.assertEqual(sorted(served["ana"] + served["bea"]), ["chat1", "chat2"], served)
        yield directoriesHold(self, self.nodes.values(), 2)
        ana.write("msg bea hola bea\n")
        yield bea.waitFor("[ana] hola bea")
        bea.write("msg ana hola ana\n")
        yield ana.waitFor("[bea] hola ana")

        # An MSGR user through HAProxy: its HTTP calls and its chat socket
        # may each go to either node (the accounts and tokens are shared).
        dora = yield self.loggedIn("msgr", "dora", "--password", "pw", "--register")
        yield directoriesHold(self, self.nodes.values(), 3)
        dora.write("msg ana hola desde msgr\n")
        yield ana.waitFor("[dora] hola desde msgr")
        yield dora.kill()

        # The node without ana stops: the health check marks it down in
        # every section (they all check its HTTP port).
        [other] = served["bea"]
        yield self.nodes[other].signal("TERM")
        yield proxy.waitForOutput(f"protobuf/{other} is DOWN".encode())
        carla = yield self.loggedIn("protobuf", "carla")
        [kept] = served["ana"]
        self.assertIn(b"carla logged in (", self.nodes[kept].output)
        carla.write("msg ana hola\n")
        yield ana.waitFor("[carla] hola")
        for client in (ana, bea, carla):
            yield client.kill()
        yield proxy.stop()
