"""
chatd-client at a terminal (a pseudo-terminal here): what arrives is printed
above the prompt, and the line being typed is redrawn intact below it.
"""

from __future__ import annotations

import os

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from tests.test_client_support import CLIENT, ClientProcess, ClientTestMixin


class TerminalClientTests(ClientTestMixin, TestCase):
    @defer.inlineCallbacks
    def test_arrivalKeepsTheTypedLine(self):
        yield self.startServer(labels=["protobuf"])
        bob = yield self.loggedIn("protobuf", "bob")
        zoe = ClientProcess()
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "COLUMNS")}
        reactor.spawnProcess(
            zoe,
            CLIENT,
            [CLIENT, "protobuf", "--name", "zoe", "--host", "127.0.0.1", "--port", str(self.ports["protobuf"])],
            env=env,
            path=self.directory,
            usePTY=True,
        )
        self.addCleanup(zoe.kill)
        yield zoe.waitFor("zoe> ")

        zoe.write("msg bob hóla")
        yield zoe.waitFor("zoe> msg bob hóla")
        bob.write("msg zoe hey\n")
        # The prompt and the typed text are erased, the message printed,
        # then both are drawn again with the cursor where it was (column 17).
        yield zoe.waitFor("\r\x1b[J[bob] hey\r\nzoe> msg bob hóla\r\x1b[17C")

        zoe.write("\r")
        yield zoe.waitFor("* delivered to bob")
        yield bob.waitFor("[zoe] hóla")

        zoe.write("\x04")  # Ctrl-D on an empty line: log out
        code = yield zoe.ended
        self.assertEqual(code, 0)
        code = yield self.finish(bob)
        self.assertEqual(code, 0)
