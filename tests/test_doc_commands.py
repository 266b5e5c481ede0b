"""
Every shell recipe in README.md and docs/*.md is run by a test, as written.

A recipe is a line of a fenced C{sh} block, or a C{$ } line of any fenced
block, that runs C{nc}, C{curl}, C{openssl s_client}, C{chatd-client},
C{chatd-admin}, C{twistd} or pipes C{printf} into something. A block with
one is claimed by a test in one of three ways:

  - tests/test_doc_recipes.py runs every C{$ ... | nc} recipe it finds;
  - the line right before the block's fence is a marker,
    C{<!-- run by tests/FILE.py: NAME -->}, and FILE holds the runner
    named C{"NAME"} (which finds its block by that marker, so a marker
    cannot outlive its runner);
  - it is in L{NOT_RUN}, with the reason it cannot run here.

So a new recipe nobody runs fails L{CoverageTests}.

The runners of this module (the others are in the modules their markers
name: tests/test_msgr_recipes.py, tests/test_tls.py,
tests/test_cluster_recipes.py for docs/cluster.md):

  - C{twistd} lines that start a server are checked as their twin: their
    options, parsed as twistd parses them, chatd's included (files under
    C{/etc/chatd/} become test files of the same kind); starting them
    would take this machine's default ports. C{twistd chatd --help},
    C{--version} and the usage errors run as they are.
  - docs/observability.md's curl lines, C{chatd-admin} (docs/msgr.md,
    docs/running.md) and C{chatd-client} (docs/client.md, README.md) run
    as written against a real twistd on 127.0.0.1, with only its ports
    (and a host that is not localhost) put in place of the recipe's, in
    the state the sentence before each block names; what each prints is
    compared with the block's C{# ...} lines under it.
"""

from __future__ import annotations

import glob
import os
import platform
import re
import shlex
import shutil
import sys
from dataclasses import dataclass, field

from twisted import version as twistedVersion
from twisted.internet import defer, utils
from twisted.python import usage
from twisted.trial.unittest import SkipTest, TestCase

from chatd import __version__ as chatdVersion
from chatd.harness import TWISTD
from tests import test_doc_recipes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


#: A command that makes a block a recipe.
COMMAND = re.compile(
    r"(?:^|[\s|;(&$])"
    r"(?:\S*/)?(?:nc|curl|openssl\s+s_client|chatd-client|chatd-admin|twistd)"
    r"(?=\s|$)"
    r"|\bprintf\b.*\|"
)
MARKER = re.compile(r"^<!-- run by (tests/\w+\.py): ([\w-]+) -->$")
SHELL_BLOCKS = {"sh", "bash", "shell", "console"}

#: Recipes no test can run here, by document and first command line, and
#: why. Keep it short: a recipe that can run gets a runner instead.
NOT_RUN = {
    ("docs/msrp.md", "$ nc localhost 8080"):
        "a session a person types, shown for reading; its piped twin, "
        "\"$ printf 'alic\\nclientes\\nsalir\\n' | nc -q 1 localhost 8080\", "
        "runs in tests/test_doc_recipes.py",
    ("docs/observability.md", "twistd --nodaemon --pidfile= --logger chatd.tap.jsonLogObserver chatd [chatd's options]"):
        "a synopsis with a placeholder; the next block's twistd line is its runnable form",
    ("docs/observability.md", "sudo useradd --system --home-dir /var/lib/chatd --shell /usr/sbin/nologin chatd"):
        "installs a systemd unit as root (tests/test_contrib.py checks the unit file)",
}


def documents() -> list[str]:
    """README.md and docs/*.md, relative to the checkout."""
    found = ["README.md"] + sorted(
        os.path.relpath(path, ROOT) for path in glob.glob(os.path.join(ROOT, "docs", "*.md"))
    )
    return found


@dataclass
class Block:
    """A fenced block of a document with at least one recipe in it."""

    document: str
    line: int
    marker: tuple[str, str] | None
    lines: list[str] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return f"{self.document}:{self.line}"

    @property
    def text(self) -> str:
        return "".join(line + "\n" for line in self.lines)


def blocks(document: str) -> list[Block]:
    """The fenced blocks of C{document} that hold a recipe."""
    with open(os.path.join(ROOT, document), encoding="utf-8") as f:
        lines = f.read().split("\n")
    found: list[Block] = []
    current: Block | None = None
    shell = False
    recipe = False
    continued = False
    for number, line in enumerate(lines, 1):
        if line.startswith("```"):
            if current is None:
                before = MARKER.match(lines[number - 2]) if number > 1 else None
                current = Block(document, number, before.groups() if before else None)
                shell = line[3:].strip() in SHELL_BLOCKS
                recipe = continued = False
            else:
                if recipe:
                    found.append(current)
                current = None
            continue
        if current is None:
            continue
        current.lines.append(line)
        if continued:
            current.commands[-1] += "\n" + line
        elif line.startswith("$ "):
            current.commands.append(line)
        elif shell and line.strip() and not line.lstrip().startswith("#"):
            current.commands.append(line)
        else:
            continue
        continued = line.endswith("\\")
        # What runs is the command without its trailing comment.
        if COMMAND.search(re.sub(r"\s#\s.*$", "", line)):
            recipe = True
    return found


def allBlocks() -> list[Block]:
    return [block for document in documents() for block in blocks(document)]


def markedBlock(testCase: TestCase, name: str) -> Block:
    """The one block whose marker names C{name}."""
    found = [block for block in allBlocks() if block.marker and block.marker[1] == name]
    testCase.assertEqual(len(found), 1, f"one block is marked {name!r}: {found}")
    return found[0]


def ncRecipeLines(document: str) -> set[int]:
    """The lines of C{document} where tests/test_doc_recipes.py runs a recipe."""
    return {recipe.line for recipe in test_doc_recipes.recipes(os.path.join(ROOT, document))}


class CoverageTests(TestCase):
    """Every recipe block is claimed by a runner (or excused, with a reason)."""

    def test_everyBlockIsClaimed(self) -> None:
        unclaimed = []
        for block in allBlocks():
            first = block.commands[0]
            inBlock = set(range(block.line, block.line + len(block.lines) + 1))
            if block.marker is not None:
                continue
            if ncRecipeLines(block.document) & inBlock:
                continue
            if (block.document, first) in NOT_RUN:
                continue
            unclaimed.append(f"{block}: {first}")
        self.assertEqual(unclaimed, [], "recipes no test runs: give each a runner and a marker")

    def test_markersNameARunner(self) -> None:
        for block in allBlocks():
            if block.marker is None:
                continue
            path, name = block.marker
            with open(os.path.join(ROOT, path), encoding="utf-8") as f:
                self.assertIn(f'"{name}"', f.read(), f"{block}: {path} has no runner {name}")

    def test_excusesAreStillThere(self) -> None:
        """An excuse whose recipe left the docs goes too."""
        present = {(block.document, block.commands[0]) for block in allBlocks()}
        self.assertEqual(set(NOT_RUN) - present, set())

    def test_findsRecipes(self) -> None:
        """The finder sees the kinds of recipe the docs have (it cannot miss them all)."""
        found = {str(block): block.commands[0] for block in allBlocks()}
        text = "\n".join(found.values())
        for command in ("curl ", "| nc ", "chatd-admin ", "chatd-client ", "twistd ", "openssl s_client"):
            self.assertIn(command, text)
        self.assertNotIn("docs/architecture.md", "".join(found))


def markedBlocks(testCase: TestCase, name: str) -> list[Block]:
    """The blocks whose marker names C{name} (a runner may take several)."""
    found = [block for block in allBlocks() if block.marker and block.marker[1] == name]
    testCase.assertTrue(found, f"no block is marked {name!r}")
    return found


def withoutComment(command: str) -> str:
    """A command line without its trailing C{# ...} comment."""
    return re.sub(r"\s+#\s.*$", "", command)


def run(command: str, cwd: str, env: dict | None = None, stdin: bytes = b""):
    """C{bash -c COMMAND} in C{cwd}; fires with (stdout, stderr, status)."""
    environ = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # The venv's commands (twistd, chatd-client, chatd-admin) come first.
    environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + environ.get("PATH", "")
    environ.update(env or {})
    d = utils.getProcessOutputAndValue("/bin/bash", ["-c", command], env=environ, path=cwd)
    return d.addCallback(lambda r: (r[0].decode("utf-8"), r[1].decode("utf-8"), r[2]))


class TwistdCommandLineTests(TestCase):
    """
    The C{twistd} command lines of the docs: each one's options, parsed as
    twistd parses them, chatd's included.
    """

    timeout = 60

    def setUp(self) -> None:
        from tests.tls import makePKI

        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        pki = makePKI(self.directory, intermediate=True)
        # What /etc/chatd holds in the docs, as test files of the same kind.
        self.files = {
            "/etc/chatd/key.pem": pki.key,
            "/etc/chatd/cert.pem": pki.cert,
            "/etc/chatd/chain.pem": pki.chain,
            "/etc/chatd/chatd.toml": os.path.join(ROOT, "contrib", "chatd.toml"),
        }
        # makePKI wrote key.pem and cert.pem here, where tls.md's $PWD recipe runs.
        self.assertEqual(os.path.dirname(pki.key), self.directory)

    def argv(self, command: str) -> list[str]:
        """The words of C{command} after C{twistd}, as bash would pass them."""
        command = withoutComment(command.replace("\\\n", " "))
        for path, local in self.files.items():
            command = command.replace(path, local)
        # The recipe runs in the directory with key.pem and cert.pem.
        command = command.replace("$PWD", self.directory)
        words = shlex.split(command)
        if ">" in words:
            words = words[: words.index(">")]
        self.assertEqual(os.path.basename(words[0]), "twistd", command)
        return words[1:]

    def test_serverCommandLines(self) -> None:
        """Each line that starts a server parses: twistd's options, then chatd's."""
        from twisted.scripts.twistd import ServerOptions

        checked = 0
        for block in markedBlocks(self, "twistd-command-lines"):
            for command in block.commands:
                if not command.startswith("twistd "):
                    continue  # jq reading the log it writes: not run
                words = self.argv(command)
                if "--help" in words or "--version" in words:
                    continue
                options = ServerOptions()
                try:
                    options.parseOptions(words)
                except usage.UsageError as e:
                    self.fail(f"{block}: {command}: {e}")
                self.assertEqual(options.subCommand, "chatd", f"{block}: {command}")
                checked += 1
        self.assertGreaterEqual(checked, 10)

    @defer.inlineCallbacks
    def test_helpAndVersion(self):
        """C{twistd chatd --help} and C{--version} run as they are written."""
        ran = set()
        for block in markedBlocks(self, "twistd-command-lines"):
            for command in block.commands:
                if not command.startswith("twistd "):
                    continue
                words = self.argv(command)
                if "--help" not in words and "--version" not in words:
                    continue
                out, err, status = yield run(withoutComment(command), self.directory)
                self.assertEqual(status, 0, f"{block}: {command}: {err}")
                if "--help" in words:
                    self.assertTrue(out.startswith("Usage: twistd [options] chatd [options]"), out)
                    self.assertIn("--max-conns=", out)
                    ran.add("--help")
                else:
                    # "chatd's version (and Twisted's, Python's)"
                    self.assertRegex(out, r"^chatd \S+ \(Twisted \S+, Python \S+\)\n$")
                    ran.add("--version")
        self.assertEqual(ran, {"--help", "--version"})

    @defer.inlineCallbacks
    def test_usageErrors(self):
        """
        The usage errors of docs/running.md, run as written: what twistd
        prints, with C{/usr/bin/twistd} as the path this twistd has, and
        C{...} for lines left out.
        """
        [block] = markedBlocks(self, "twistd-usage-errors")
        shown: list[tuple[str, list[str]]] = []
        for line in block.lines:
            if line.startswith("$ "):
                shown.append((line[2:], []))
            else:
                shown[-1][1].append(line.replace("/usr/bin/twistd", TWISTD))
        self.assertEqual(len(shown), 2)
        for command, expected in shown:
            out, err, status = yield run(command, self.directory)
            lines = (out + err).splitlines()
            self.assertEqual(status, 1, command)
            if expected[0] == "...":
                lines = lines[len(lines) - len(expected) + 1 :]
                expected = expected[1:]
            self.assertEqual(lines, expected, command)


LOOPBACK = "tcp:0:interface=127.0.0.1"
#: chatd's default port of each listener in the docs' addresses -> its label.
DEFAULT_PORTS = {"5000": "protobuf", "8080": "msrp", "1234": "msgr", "8000": "msgr-http", "9108": "metrics"}


def localize(command: str, ports: dict[str, int]) -> str:
    """C{command} with C{localhost:PORT} (a default port) on the test server's port."""
    return re.sub(
        r"\blocalhost:(\d+)\b",
        lambda m: f"127.0.0.1:{ports[DEFAULT_PORTS[m.group(1)]]}",
        command,
    )


def shownAnswer(command: str) -> tuple[str, str | None]:
    """(the command, its trailing C{# ...} comment or None)."""
    found = re.search(r"\s+#\s(.*)$", command)
    if found is None:
        return command, None
    return command[: found.start()], found.group(1)


class ObservabilityRecipeTests(TestCase):
    """
    docs/observability.md's curl recipes against a real twistd, every
    listener on 127.0.0.1, with the limits its example scrape names.
    """

    timeout = 90

    @defer.inlineCallbacks
    def setUp(self):
        from tests.twistd import TwistdProcess

        if shutil.which("curl") is None:
            raise SkipTest("curl is not installed")
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.server = TwistdProcess(
            ["--protobuf", LOOPBACK, "--msrp", LOOPBACK, "--msgr", LOOPBACK,
             "--http", LOOPBACK, "--db", "chatd.sqlite3", "--rate", "2", "--rate-burst", "3"],
            ["protobuf", "msrp", "msgr", "msgr-http"],
            self.directory,
        )
        self.addCleanup(self.server.stop)
        self.ports = yield self.server.start()

    def connect(self, label: str):
        from twisted.internet import reactor
        from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

        from tests.twistd import ByteCollector

        client = ByteCollector()
        self.addCleanup(lambda: (client.transport.loseConnection(), client.closed)[1])
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.ports[label])
        return connectProtocol(endpoint, client).addCallback(lambda _: client)

    @defer.inlineCallbacks
    def test_healthAndMetrics(self):
        """The two lines of the first block: C{ok}, and chatd's metrics on --http."""
        [block] = markedBlocks(self, "observability-curl")
        health, metrics = block.commands
        command, shown = shownAnswer(health)
        out, err, status = yield run(localize(command, self.ports), self.directory)
        self.assertEqual((out, status), (shown + "\n", 0), err)
        command, _ = shownAnswer(metrics)
        out, err, status = yield run(localize(command, self.ports), self.directory)
        self.assertEqual(status, 0, err)
        lines = out.splitlines()
        self.assertIn('chatd_sessions_online{protocol="protobuf"} 0.0', lines)
        self.assertTrue(all(line.startswith("chatd_") for line in lines), out)

    @defer.inlineCallbacks
    def test_exampleScrape(self):
        """
        The example scrape, after what the sentence before it says happened:
        the same lines, with this chatd's, Twisted's and Python's versions.
        """
        from tests.support import login, message
        from tests.test_twistd_plugin import responseWith

        [block] = markedBlocks(self, "observability-scrape")
        [command] = block.commands
        shown = [line for line in block.lines if not line.startswith("$ ")]

        alice = yield self.connect("protobuf")
        alice.transport.write(login("alice").SerializeToString())
        yield alice.waitFor(responseWith("user"))
        bobo = yield self.connect("msrp")
        bobo.transport.write(b"bobo\n")
        yield bobo.waitFor(lambda data: b"Hola, bobo." in data)
        # Five messages within a second under --rate 2 --rate-burst 3.
        alice.received = b""
        alice.transport.write(b"".join(message("bobo", f"hola {i}").SerializeToString() for i in range(5)))
        yield bobo.waitFor(lambda data: data.count(b"hola ") == 3)
        bobo.transport.write(b"alic bien\n")
        yield alice.waitFor(lambda data: b"bien" in data)
        second = yield self.connect("msrp")
        second.transport.write(b"bobo\n")
        yield second.closed
        # An MSGR login over HTTP with a wrong password.
        out, err, status = yield run(
            localize("curl -s -d usr=nadie -d pass=mala localhost:8000/status", self.ports),
            self.directory,
        )
        self.assertEqual(out, "801")

        out, err, status = yield run(localize(command[2:], self.ports), self.directory)
        self.assertEqual(status, 0, err)
        # The versions are the ones this test runs on.
        versions = dict(
            python=platform.python_version(), twisted=twistedVersion.short(), version=chatdVersion
        )
        build = "chatd_build_info{%s} 1.0" % ",".join(f'{k}="{v}"' for k, v in sorted(versions.items()))
        shown = [build if line.startswith("chatd_build_info{") else line for line in shown]
        self.maxDiff = None
        self.assertEqual("\n".join(out.splitlines()), "\n".join(shown))


def commandsAndOutputs(block: Block) -> list[tuple[str, list[str]]]:
    """
    Each command of a block with what it prints, as the block shows it: the
    C{# ...} lines right under it (its own trailing comment is a remark).
    """
    out: list[tuple[str, list[str]]] = []
    for line in block.lines:
        if line.startswith("# ") and out:
            out[-1][1].append(line[2:])
        elif line.strip() and not line.startswith("#"):
            out.append((withoutComment(line), []))
    return out


def printed(shown: list[str], output: str) -> bool:
    """
    C{output} is what C{shown} shows: its lines in order, with tabs shown as
    spaces, and C{...} standing for the rest of a line (a random password).
    """
    lines = output.replace("\t", " ").splitlines()
    if len(lines) != len(shown):
        return False
    return all(
        re.fullmatch(re.escape(want).replace(re.escape("..."), ".+"), got) is not None
        for want, got in zip(shown, lines)
    )


class TypedShell(test_doc_recipes.Shell):
    """A command with C{typed} as its input (what a person types), then closed."""

    def __init__(self, typed: bytes) -> None:
        super().__init__()
        self.typed = typed

    def connectionMade(self) -> None:
        self.transport.write(self.typed)
        self.transport.closeStdin()


class OpenShell(TypedShell):
    """A command with C{typed} as its input, which stays open until L{close}."""

    def connectionMade(self) -> None:
        self.transport.write(self.typed)

    def close(self) -> defer.Deferred:
        self.transport.closeStdin()
        return self.ended


class AdminRecipeTests(TestCase):
    """
    The C{chatd-admin} blocks (docs/msgr.md, docs/running.md), run in order
    as written beside a real twistd with C{--metrics} on the same database,
    while the protobuf user C{alice} is online.
    """

    timeout = 90

    @defer.inlineCallbacks
    def setUp(self):
        from twisted.internet import reactor
        from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

        from tests.support import login
        from tests.test_twistd_plugin import responseWith
        from tests.twistd import ByteCollector, TwistdProcess

        if shutil.which("setsid") is None:
            raise SkipTest("setsid is not installed (util-linux)")
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        server = TwistdProcess(
            ["--protobuf", LOOPBACK, "--msrp", "none", "--msgr", LOOPBACK,
             "--http", LOOPBACK, "--db", "chatd.sqlite3", "--metrics", LOOPBACK],
            ["protobuf", "msgr", "msgr-http", "metrics"],
            self.directory,
        )
        self.addCleanup(server.stop)
        self.ports = yield server.start()
        alice = ByteCollector()
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.ports["protobuf"])
        yield connectProtocol(endpoint, alice)
        self.addCleanup(lambda: (alice.transport.loseConnection(), alice.closed)[1])
        alice.transport.write(login("alice").SerializeToString())
        yield alice.waitFor(responseWith("user"))

    def admin(self, command: str, stdin: bytes) -> defer.Deferred:
        """
        C{command} in bash, in a session of its own: with no terminal,
        chatd-admin's password prompt reads what C{stdin} types.
        """
        from twisted.internet import reactor

        command = command.replace(".venv/bin/", os.path.dirname(sys.executable) + "/")
        command = command.replace("http://127.0.0.1:9108", f"http://127.0.0.1:{self.ports['metrics']}")
        shell = TypedShell(stdin)
        environ = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + environ.get("PATH", "")
        reactor.spawnProcess(
            shell, "setsid", ["setsid", "-w", "/bin/bash", "-c", command],
            env=environ, path=self.directory,
        )
        return shell.ended.addCallback(lambda _: shell)

    @defer.inlineCallbacks
    def runBlock(self, name: str, count: int, url: str | None = None):
        [block] = markedBlocks(self, name)
        steps = commandsAndOutputs(block)
        self.assertEqual(len(steps), count)
        for command, shown in steps:
            if url is not None:
                command = command.replace(DOC_POSTGRES, url)
            shell = yield self.admin(command, b"clave\nclave\n")
            output = shell.output.decode("utf-8")
            self.assertEqual(shell.status, 0, f"{command}: {shell.errors!r}")
            self.assertTrue(printed(shown, output), f"{block}: {command}:\n{output}")

    def test_msgrBlock(self):
        return self.runBlock("chatd-admin", 11)

    def test_runningBlock(self):
        return self.runBlock("chatd-admin-running", 3)

    @defer.inlineCallbacks
    def test_postgresBlock(self):
        """
        The PostgreSQL block, after the SQLite one (which leaves C{bea}),
        against a new database of the test run's PostgreSQL in place of the
        page's URL.
        """
        from chatd.testservers import postgresServer

        url = postgresServer().createDatabase()
        yield self.runBlock("chatd-admin", 11)
        yield self.runBlock("chatd-admin-postgres", 2, url)


#: The PostgreSQL URL of docs/msgr.md's chatd-admin examples.
DOC_POSTGRES = "postgresql://chatd@db.example.org/chatd"

#: The default port of each listener, as chatd-client's options name them.
CLIENT_PORTS = {"protobuf": 5000, "msrp": 8080, "msgr": 1234, "msgr-http": 8000}


def clientCommand(command: str, ports: dict[str, int]) -> tuple[str, list[tuple[str, str]]]:
    """
    C{command} against the test server: each C{chatd-client PROTOCOL} gets
    the test server's port for its protocol (C{--port}, and C{--http-port}
    for MSGR) where the recipe relies on the default, or in place of the
    port it names; a host other than localhost becomes 127.0.0.1. With it,
    what to write back in the output so that it reads as the docs' (the
    test's address -> the recipe's).
    """
    back: list[tuple[str, str]] = []

    def one(match: re.Match) -> str:
        protocol, rest = match.group(1), match.group(2)
        host = re.search(r"--host (\S+)", rest)
        docHost = host.group(1) if host else "localhost"
        testHost = docHost if docHost == "localhost" else "127.0.0.1"
        rest = rest.replace(f"--host {docHost}", f"--host {testHost}")
        port = ports[protocol]
        named = re.search(r"--port (\d+)", rest)
        if named:
            rest = rest.replace(named.group(0), f"--port {port}")
            added = ""
        else:
            added = f" --port {port}"
        back.append((f"{testHost}:{port}", f"{docHost}:{named.group(1) if named else CLIENT_PORTS[protocol]}"))
        if protocol == "msgr":
            added += f" --http-port {ports['msgr-http']}"
            back.append((f"{testHost}:{ports['msgr-http']}", f"{docHost}:{CLIENT_PORTS['msgr-http']}"))
        return f"chatd-client {protocol}{added}{rest}"

    command = command.replace(".venv/bin/", os.path.dirname(sys.executable) + "/")
    return re.sub(r"chatd-client (protobuf|msrp|msgr)([^|&;\n]*)", one, command), back


def linesMatch(shown: list[str], output: str) -> bool:
    """
    C{output} is what C{shown} shows: its lines in order; C{...} in a line
    stands for any text, and a line C{...} for any lines (what comes at a
    moment the recipe does not fix).
    """
    pattern = ""
    for line in shown:
        if line == "...":
            pattern += r"(?:.*\n)*?"
        else:
            pattern += re.escape(line).replace(re.escape("..."), ".*") + r"\n"
    return re.fullmatch(pattern, output) is not None


def shellSteps(block: Block) -> list[tuple[str, list[str]]]:
    """
    The block's commands, each whole (continued lines, a here-document),
    with the C{# ...} lines right under it: what it prints.
    """
    steps: list[tuple[str, list[str]]] = []
    lines = iter(block.lines)
    for line in lines:
        if line.startswith("# ") and steps:
            steps[-1][1].append(line[2:])
            continue
        if not line.strip() or line.startswith("#"):
            continue
        command = line
        while command.endswith("\\"):
            command += "\n" + next(lines)
        heredoc = re.search(r"<<'(\w+)'", command)
        if heredoc:
            for body in lines:
                command += "\n" + body
                if body == heredoc.group(1):
                    break
        steps.append((command, []))
    return steps


class ClientRecipeTests(TestCase):
    """
    The chatd-client recipes of docs/client.md and README.md, run as
    written (the test server's ports given, L{clientCommand}) against a real
    twistd, in a folder with the files they send; what each prints is
    compared with the lines the block shows under it, the test server's
    ports written as the defaults.
    """

    timeout = 120

    def setUp(self) -> None:
        from tests.test_client_support import ClientTestMixin

        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.mixin = ClientTestMixin()
        self.mixin.directory = self.directory
        self.mixin.addCleanup = self.addCleanup
        # The files the recipes send, of the sizes the blocks show.
        for name, size in (("informe.pdf", 30000), ("foto.jpg", 20000)):
            with open(os.path.join(self.directory, name), "wb") as f:
                f.write((bytes(range(256)) * (size // 256 + 1))[:size])

    @defer.inlineCallbacks
    def startServer(self, **kwargs):
        self.ports = yield self.mixin.startServer(**kwargs)
        self.server = self.mixin.server

    def spawn(self, command: str, env: dict, typed: bytes = b"", closeInput: bool = True):
        """Start C{command} (made to use the test server) in bash."""
        from twisted.internet import reactor

        shell = TypedShell(typed) if closeInput else OpenShell(typed)
        environ = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CHATD_PASSWORD")}
        environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + environ.get("PATH", "")
        environ.update(env)
        local, shell.back = clientCommand(command, self.ports)
        reactor.spawnProcess(
            shell, "/bin/bash", ["bash", "-c", local], env=environ, path=self.directory
        )
        return shell

    def check(self, shell, command: str, shown: list[str]) -> None:
        """The command ended well and printed what the block shows."""
        output = shell.output.decode("utf-8")
        for test, doc in shell.back:
            output = output.replace(test, doc)
        self.assertEqual(shell.status, 0, f"{command}: {shell.errors.decode()}")
        self.assertTrue(linesMatch(shown, output), f"{command}:\n{output}")

    @defer.inlineCallbacks
    def loggedIn(self, seen: int):
        """Wait until twistd logs a login after C{seen} bytes of its output."""
        from twisted.internet import reactor, task

        while b" logged in (" not in self.server.output[seen:]:
            yield task.deferLater(reactor, 0.05, lambda: None)

    @defer.inlineCallbacks
    def runBlock(self, name: str, env: dict[str, str] | None = None):
        """Run the block's steps in order; fires with how many commands ran."""
        [block] = markedBlocks(self, name)
        env = dict(env or {})
        background = []
        results = []
        for command, shown in shellSteps(block):
            exported = re.fullmatch(r"export (\w+)=(\S+)", command)
            if exported:
                env[exported.group(1)] = exported.group(2)
                continue
            if re.fullmatch(r"sleep \d+", command):
                # It gives the client started before it time to log in: the
                # runner waits for that login (in twistd's log) instead.
                continue
            if command == "wait":
                for shell, _, _ in background:
                    yield shell.ended
                continue
            if command.endswith("&"):
                seen = len(self.server.output)
                shell = self.spawn(command[:-1], env)
                background.append((shell, command, shown))
                results.append((shell, command, shown))
                yield self.loggedIn(seen)
                continue
            shell = self.spawn(command, env)
            results.append((shell, command, shown))
            yield shell.ended
        for shell, _, _ in background:
            yield shell.ended
        for shell, command, shown in results:
            self.check(shell, command, shown)
        return len(results)

    @defer.inlineCallbacks
    def bobOnline(self):
        """The protobuf user C{bob}, online until the test ends."""
        bob = self.mixin.client("protobuf", "--name", "bob")
        yield bob.waitFor("* logged in as bob ")
        return bob

    @defer.inlineCallbacks
    def test_protobuf(self):
        """Alice's session and her script, while bob is online; he gets it."""
        yield self.startServer()
        bob = yield self.bobOnline()
        ran = yield self.runBlock("client-protobuf")
        self.assertEqual(ran, 2)
        yield bob.waitFor("[alice] hi")

    @defer.inlineCallbacks
    def test_scriptFile(self):
        """The script file, with chat.example.org:5001 the test server."""
        yield self.startServer()
        bob = yield self.bobOnline()
        ran = yield self.runBlock("client-script-file")
        self.assertEqual(ran, 2)
        yield bob.waitFor("[alice -> all] ¡hola a todos!")

    @defer.inlineCallbacks
    def test_msrp(self):
        """Two MSRP users: a message and a file, saved whole."""
        yield self.startServer()
        ran = yield self.runBlock("client-msrp")
        self.assertEqual(ran, 2)
        with open(os.path.join(self.directory, "informe.pdf"), "rb") as sent:
            with open(os.path.join(self.directory, "inbox", "informe.pdf"), "rb") as saved:
                self.assertEqual(saved.read(), sent.read())

    @defer.inlineCallbacks
    def test_msgr(self):
        """Two MSGR accounts become friends, talk, and send a file."""
        yield self.startServer()
        ran = yield self.runBlock("client-msgr")
        self.assertEqual(ran, 2)
        with open(os.path.join(self.directory, "foto (1).jpg"), "rb") as saved:
            self.assertEqual(len(saved.read()), 20000)

    @defer.inlineCallbacks
    def test_tls(self):
        """
        Over TLS with the test CA as ca.pem, in the state the MSGR example
        left: ana's account, and CHATD_PASSWORD in the environment.
        """
        from tests.tls import makePKI, serverDescription

        pki = makePKI(os.path.join(self.directory, "pki"))
        shutil.copy(pki.root, os.path.join(self.directory, "ca.pem"))
        tls = serverDescription(pki)
        yield self.startServer(
            labels=["protobuf", "msgr", "msgr-http"],
            endpoints={"protobuf": tls, "msgr": tls, "msgr-http": tls},
        )
        register = self.mixin.client(
            "msgr", "--name", "ana", "--register", "--password", "secreto", "--ca-file", "ca.pem"
        )
        register.closeStdin()
        self.assertEqual((yield register.ended), 0, register.stderr)
        ran = yield self.runBlock("client-tls", {"CHATD_PASSWORD": "secreto"})
        self.assertEqual(ran, 2)

    @defer.inlineCallbacks
    def test_readme(self):
        """
        README.md's two terminals: ana waits (her input open, as at a
        terminal), bea1 types what its comment says and ana gets it.
        """
        yield self.startServer()
        [block] = markedBlocks(self, "readme-client")
        (first, firstShown), (second, secondShown) = shellSteps(block)
        typed = re.search(r"#\s*then:\s*(.*)$", second).group(1)
        seen = len(self.server.output)
        ana = self.spawn(first, {}, closeInput=False)
        yield self.loggedIn(seen)
        bea = self.spawn(second, {}, typed=f"{typed}\n".encode())
        yield bea.ended
        self.check(bea, second, secondShown)
        yield ana.close()
        self.check(ana, first, firstShown)
