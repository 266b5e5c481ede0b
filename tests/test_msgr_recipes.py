"""
The curl recipes of docs/msgr.md (the curl examples, and the block that
changes a password), run with curl as they are written (only the address
changes: the server listens on 127.0.0.1, port 0), against the real site,
and checked against the answers the page shows.
"""

from __future__ import annotations

import json
import os
import re
import shutil

from twisted.internet import defer, reactor, utils
from twisted.python.filepath import FilePath
from twisted.trial import unittest

from chatd.msgr.tokens import DEFAULT_TOKEN_IDLE
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


def serve(testCase: unittest.TestCase, site) -> str:
    """
    Listen with C{site} on 127.0.0.1, port 0, until C{testCase} ends; the
    address curl is given in place of the docs' C{http://localhost:8000}.
    Every connection curl opened is closed before the test ends.
    """
    lost: list[defer.Deferred] = []
    build = site.buildProtocol

    def tracked(addr):
        protocol = build(addr)
        done = defer.Deferred()
        lost.append(done)
        connectionLost = protocol.connectionLost

        def closed(reason):
            connectionLost(reason)
            done.callback(None)

        protocol.connectionLost = closed
        return protocol

    site.buildProtocol = tracked
    port = reactor.listenTCP(0, site, interface="127.0.0.1")

    def stop():
        return defer.gatherResults(lost).addCallback(lambda _: port.stopListening())

    testCase.addCleanup(stop)
    return f"http://127.0.0.1:{port.getHost().port}"


class PasswordRecipeTests(unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        if shutil.which("curl") is None:
            raise unittest.SkipTest("curl is not installed")
        self.h = MsgrHarness(self)
        yield self.h.register("ana", "secreto")
        self.token = yield self.h.login("ana", "secreto")
        self.address = serve(self, self.h.site)

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


#: The marker of the first curl block (tests/test_doc_commands.py).
CURL_EXAMPLES = "msgr-curl-examples"
_ASSIGNMENT = re.compile(r"^(\w+)=\$\((.*)\)$")


def steps(block: str) -> list[tuple[str, str | None]]:
    """
    The commands of a block in order, each with the answer shown (its own
    C{# ...} or the C{# ...} line right after it), C{None} for an
    assignment (C{TOKEN=$(...)}), which shows nothing.
    """
    lines = block.splitlines()
    out: list[tuple[str, str | None]] = []
    for i, line in enumerate(lines):
        if not line.strip() or line.startswith("#"):
            continue
        if _ASSIGNMENT.match(line):
            out.append((line, None))
            continue
        inline = re.search(r"\s+#\s*(.+)$", line)
        following = lines[i + 1] if i + 1 < len(lines) else ""
        if inline:
            out.append((line[: inline.start()], inline.group(1).strip()))
        else:
            assert following.startswith("# "), f"{line}: no answer shown"
            out.append((line, following[2:].strip()))
    return out


def sameJSON(shown, got) -> bool:
    """C{got} is C{shown}, where C{"..."} in C{shown} stands for any value."""
    if shown == "...":
        return True
    if isinstance(shown, dict):
        return (
            isinstance(got, dict)
            and shown.keys() == got.keys()
            and all(sameJSON(shown[k], got[k]) for k in shown)
        )
    if isinstance(shown, list):
        return (
            isinstance(got, list)
            and len(shown) == len(got)
            and all(sameJSON(a, b) for a, b in zip(shown, got))
        )
    return shown == got


class CurlExamplesTests(unittest.TestCase):
    """
    docs/msgr.md's first curl block, run in order as written (the address
    changed), in the state the sentence before it names: C{bea}, C{cy} and
    C{dee} have accounts, and C{cy} and C{dee} ask C{ana} to be friends as
    soon as she has registered.
    """

    @defer.inlineCallbacks
    def setUp(self):
        if shutil.which("curl") is None:
            raise unittest.SkipTest("curl is not installed")
        self.h = MsgrHarness(self)
        for name in ("bea", "cy", "dee"):
            yield self.h.register(name, "secreto")
        # The server's default token lifetime, which the JSON login shows.
        self.h.tokens.idleTimeout = DEFAULT_TOKEN_IDLE
        self.address = serve(self, self.h.site)
        # The HTTP status of each answer, in order (curl shows only the body).
        self.statuses: list[int] = []
        log = self.h.site.log

        def logged(request):
            self.statuses.append(request.code)
            return log(request)

        self.h.site.log = logged

    @defer.inlineCallbacks
    def askAna(self):
        for name in ("cy", "dee"):
            token = yield self.h.login(name, "secreto")
            response = yield self.h.form("/enviarsolicitud", token=token, para="ana")
            self.assertEqual(response.body, "704")

    @defer.inlineCallbacks
    def test_curlExamples(self):
        block = markedBlock(self, CURL_EXAMPLES).text
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        answered = 0
        for command, shown in steps(block):
            local = command.replace(DOC_ADDRESS, self.address)
            assignment = _ASSIGNMENT.match(command)
            if assignment:
                local += f'; printf %s "${assignment.group(1)}"'
            before = len(self.statuses)
            out, err, status = yield utils.getProcessOutputAndValue(
                "/bin/bash", ("-c", local), env=env
            )
            self.assertEqual(status, 0, f"{command}: {err!r}")
            body = out.decode("utf-8")
            if assignment:
                env[assignment.group(1)] = body
                continue
            answer = self.statuses[before:]
            self.assertEqual(len(answer), 1, command)
            self.check(command, shown, body, answer[0])
            answered += 1
            if "/usuariocrear" in command and "usr=ana" in command:
                yield self.askAna()
        self.assertEqual(answered, 17)

    def check(self, command: str, shown: str, body: str, status: int) -> None:
        """C{body} (and C{status}) is the answer the page shows."""
        http = re.match(r"HTTP (\d{3}), (.*)$", shown)
        if http:
            self.assertEqual(status, int(http.group(1)), command)
            shown = http.group(2)
        else:
            self.assertEqual(status, 200, command)
        if shown.startswith("{"):
            self.assertTrue(sameJSON(json.loads(shown), json.loads(body)), (command, body))
        elif shown == "701||Zr3...43 characters":
            code, _, token = body.partition("||")
            self.assertEqual((code, len(token)), ("701", 43), command)
        else:
            # Only a form answer with a reason ends its line (docs/msgr.md).
            reason = "||" in shown and not shown.startswith(("701||", "704||"))
            self.assertEqual(body, shown + "\n" if reason else shown, command)
