"""
The curl recipes of docs/msgr.md that change a password, run with curl as
they are written (only the address changes: the server listens on
127.0.0.1, port 0), against the real site, and checked against the answers
the page shows.
"""

from __future__ import annotations

import json
import os
import re
import shutil

from twisted.internet import defer, reactor, utils
from twisted.python.filepath import FilePath
from twisted.trial import unittest

from tests.test_doc_commands import markedBlock
from tests.test_msgr_helpers import MsgrHarness

DOC = FilePath(__file__).parent().sibling("docs").child("msgr.md")
DOC_ADDRESS = "http://localhost:8000"

#: What introduces the block of password-change recipes.
MARKER = "Changing the password (`tests/test_msgr_recipes.py`"
#: The marker of that block (tests/test_doc_commands.py).
PASSWORD_CHANGE = "msgr-password-change"


def shBlockAfter(text: str, marker: str) -> str:
    start = text.index(marker)
    begin = text.index("```sh\n", start) + len("```sh\n")
    return text[begin : text.index("```", begin)]


def recipes(block: str) -> list[tuple[str, str]]:
    """(command line, the answer shown: its own comment or the next line's)."""
    lines = block.splitlines()
    out = []
    for i, line in enumerate(lines):
        if not line.startswith("curl "):
            continue
        inline = re.search(r"\s+#\s*(.+)$", line)
        if inline:
            out.append((line, inline.group(1).strip()))
        else:
            following = lines[i + 1] if i + 1 < len(lines) else ""
            assert following.startswith("# "), line
            out.append((line, following[2:].strip()))
    return out


class PasswordRecipeTests(unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        if shutil.which("curl") is None:
            raise unittest.SkipTest("curl is not installed")
        self.h = MsgrHarness(self)
        yield self.h.register("ana", "secreto")
        self.token = yield self.h.login("ana", "secreto")
        lost: list[defer.Deferred] = []
        build = self.h.site.buildProtocol

        def tracked(addr):
            # Every connection curl opened is closed before the test ends.
            protocol = build(addr)
            done = defer.Deferred()
            lost.append(done)
            connectionLost = protocol.connectionLost

            def closed(reason):
                connectionLost(reason)
                done.callback(None)

            protocol.connectionLost = closed
            return protocol

        self.h.site.buildProtocol = tracked
        port = reactor.listenTCP(0, self.h.site, interface="127.0.0.1")
        self.address = f"http://127.0.0.1:{port.getHost().port}"

        def stop():
            return defer.gatherResults(lost).addCallback(lambda _: port.stopListening())

        self.addCleanup(stop)

    @defer.inlineCallbacks
    def curl(self, command: str) -> defer.Deferred:
        out, err, status = yield utils.getProcessOutputAndValue(
            "/bin/sh",
            ("-c", command.replace(DOC_ADDRESS, self.address)),
            env={"TOKEN": self.token, "PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        )
        self.assertEqual(status, 0, err)
        return out.decode("utf-8")

    def check(self, command: str, shown: str, body: str) -> None:
        if shown.startswith("{"):
            self.assertEqual(json.loads(body), json.loads(shown), command)
        elif shown.startswith("701||"):
            code, _, token = body.partition("||")
            self.assertEqual((code, len(token)), ("701", 43), command)
        else:
            # A form answer with a reason ends its line (docs/msgr.md).
            self.assertEqual(body, shown + "\n" if "||" in shown else shown, command)

    @defer.inlineCallbacks
    def test_passwordChangeBlock(self):
        block = shBlockAfter(DOC.getContent().decode("utf-8"), MARKER)
        self.assertEqual(markedBlock(self, PASSWORD_CHANGE).text, block)
        steps = recipes(block)
        self.assertEqual(len(steps), 5)
        for command, shown in steps:
            body = yield self.curl(command)
            self.check(command, shown, body)

    @defer.inlineCallbacks
    def test_jsonAccountExample(self):
        """The /api/account line of the main curl example, which sends the current password."""
        (line,) = [
            line
            for line in DOC.getContent().decode("utf-8").splitlines()
            if line.startswith("curl") and "/api/account" in line and "names" in line
        ]
        body = yield self.curl(line)
        self.assertEqual(json.loads(body), {"code": 702})
