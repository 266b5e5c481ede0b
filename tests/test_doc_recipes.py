"""
Every C{nc} recipe in docs/*.md, run exactly as written against a real
C{twistd chatd}, must print exactly what the document shows.

What a recipe is: in a fenced code block, a line starting with C{$ } whose
command pipes its input into C{nc} (C{... | nc ...}), with the lines that
continue it (a line ending in C{\\}). What it shows: the lines after it, up
to the next C{$ } line or the end of the block. A C{$ nc HOST PORT} line
with nothing piped in is a session a person types, shown for reading, and
is not run.

How it runs: one twistd per document, every listener on a free port of
127.0.0.1. In the command, C{localhost PORT} with chatd's default port of a
listener (5000 protobuf, 8080 MSRP, 1234 MSGR socket, 8000 HTTP) becomes
C{localhost} and that listener's port; nothing else is changed. Commands
run with bash, in the document's order, each once the one before it has
ended, except one that keeps its input open with C{sleep} (a client waiting
for another's messages): the next starts as soon as twistd logs that it
logged in.

It needs bash, C{nc} (Debian's netcat-openbsd) and C{xxd}; C{make test}
installs them on Debian when they are missing.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
from dataclasses import dataclass
from unittest import SkipTest

from twisted.internet import defer, reactor, task
from twisted.internet.error import ProcessDone
from twisted.internet.protocol import ProcessProtocol
from twisted.trial.unittest import TestCase

from tests.twistd import TwistdProcess

DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs")

#: chatd's default port of each listener -> the listener's label.
DEFAULT_PORTS = {"5000": "protobuf", "8080": "msrp", "1234": "msgr", "8000": "msgr-http"}

_FENCE = re.compile(r"^```")
_PIPED_INTO_NC = re.compile(r"\|\s*nc\s")
_LOCALHOST_PORT = re.compile(r"\blocalhost (\d+)\b")


@dataclass
class Recipe:
    """One command of a document and the output it shows."""

    document: str
    line: int
    command: str
    output: str

    def __str__(self) -> str:
        return f"{os.path.basename(self.document)}:{self.line}"


def recipes(path: str) -> list[Recipe]:
    """The C{nc} recipes of the document at C{path}, in order."""
    found: list[Recipe] = []
    inBlock = False
    current: Recipe | None = None
    continued = False
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    for number, line in enumerate(lines, 1):
        if _FENCE.match(line):
            inBlock = not inBlock
            current = None
            continue
        if not inBlock:
            continue
        if continued:
            current.command += "\n" + line
            continued = line.endswith("\\")
            continue
        if line.startswith("$ "):
            current = Recipe(path, number, line[2:], "")
            found.append(current)
            continued = line.endswith("\\")
            continue
        if current is not None:
            current.output += line + "\n"
    # A command that pipes nothing into nc (a typed session, curl) is not run.
    return [recipe for recipe in found if _PIPED_INTO_NC.search(recipe.command)]


def localize(command: str, ports: dict[str, int]) -> str:
    """C{command} with each default port replaced by the test server's."""
    return _LOCALHOST_PORT.sub(
        lambda m: f"localhost {ports[DEFAULT_PORTS[m.group(1)]]}", command
    )


class Shell(ProcessProtocol):
    """A bash command with its input closed; its output and exit status."""

    def __init__(self) -> None:
        self.output = b""
        self.errors = b""
        self.ended: defer.Deferred = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self.output += data

    def errReceived(self, data: bytes) -> None:
        self.errors += data

    def processEnded(self, reason) -> None:
        self.status = 0 if reason.check(ProcessDone) else reason.value.exitCode
        self.ended.callback(None)


def tool(name: str) -> None:
    if shutil.which(name) is None:
        raise SkipTest(f"{name} is not installed (make test installs it on Debian)")


class DocumentedRecipeTests(TestCase):
    """The recipes of each document, against a twistd of its own."""

    timeout = 90

    def setUp(self) -> None:
        for name in ("bash", "nc", "xxd"):
            tool(name)

    def documents(self) -> list[str]:
        """The documents with recipes: every docs/*.md is searched."""
        return sorted(
            os.path.basename(path)
            for path in glob.glob(os.path.join(DOCS, "*.md"))
            if recipes(path)
        )

    def test_recipesAreFound(self) -> None:
        """The recipes known today are found (the others are run too)."""
        self.assertLessEqual({"msrp.md", "protobuf.md"}, set(self.documents()))
        self.assertEqual(len(recipes(os.path.join(DOCS, "msrp.md"))), 5)

    @defer.inlineCallbacks
    def runDocument(self, name: str):
        path = os.path.join(DOCS, name)
        found = recipes(path)
        self.assertTrue(found, f"{name} has no nc recipe")
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        loopback = "tcp:0:interface=127.0.0.1"
        server = TwistdProcess(
            ["--protobuf", loopback, "--msrp", loopback, "--msgr", loopback,
             "--http", loopback, "--db", os.path.join(directory, "chatd.sqlite3")],
            list(DEFAULT_PORTS.values()),
            directory,
        )
        self.addCleanup(server.stop)
        ports = yield server.start()
        running = []
        for recipe in found:
            shell = Shell()
            seen = len(server.output)
            reactor.spawnProcess(
                shell, "/bin/bash", ["bash", "-c", localize(recipe.command, ports)],
                env=dict(os.environ), path=directory,
            )
            running.append((recipe, shell))
            if "sleep" in recipe.command:
                # Started when twistd logs the login, not when it ends.
                while b" logged in (" not in server.output[seen:]:
                    yield task.deferLater(reactor, 0.05, lambda: None)
            else:
                yield shell.ended
        # Every command ends on its own (none is left running on failure).
        yield defer.DeferredList([shell.ended for _, shell in running])
        for recipe, shell in running:
            self.assertEqual(
                shell.output.decode("utf-8", "replace"),
                recipe.output,
                f"{recipe}: {recipe.command}\n{shell.errors.decode(errors='replace')}",
            )
            self.assertEqual(shell.status, 0, str(recipe))

    @defer.inlineCallbacks
    def test_everyRecipe(self):
        for name in self.documents():
            yield self.runDocument(name)
