"""
What an operator sees on day one from the real C{twistd chatd} process
(docs/running.md): a port in use, a misspelt option, C{--version}, a
configuration file, the version in the start-up log.
"""

from __future__ import annotations

import os
import socket

from twisted.internet import defer, reactor, task
from twisted.internet.error import ProcessTerminated
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

import chatd
from tests.twistd import TWISTD, TwistdProcess

#: Every listener but the one under test turned off.
ONLY = ["--msrp", "none", "--http", "none", "--msgr", "none", "--db", "none"]


class OperatorTwistdTests(TestCase):
    timeout = 60

    def directory(self) -> str:
        path = self.mktemp()
        os.makedirs(path)
        return path

    def twistd(self, *arguments: str) -> defer.Deferred:
        """C{twistd ARGUMENTS}: fires with (output, status)."""
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        d = getProcessOutputAndValue(
            TWISTD, list(arguments), env=env, path=self.directory()
        )
        return d.addCallback(lambda r: ((r[0] + r[1]).decode(), r[2]))

    @defer.inlineCallbacks
    def test_portInUseIsOneLine(self):
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        endpoint = f"tcp:{taken.getsockname()[1]}:interface=127.0.0.1"
        server = TwistdProcess(["--protobuf", endpoint, *ONLY], ["protobuf"], self.directory())
        server.ready.addErrback(lambda _: None)  # it never listens: that is the point
        server.start()
        yield server.ended
        output = server.output.decode()
        self.assertIn(f"chatd: --protobuf {endpoint}: address already in use\n", output)
        self.assertNotIn("Traceback", output)
        self.assertNotIn("CannotListenError", output)
        self.assertIsInstance(server.exitStatus, ProcessTerminated)
        self.assertEqual(server.exitStatus.exitCode, 1)

    @defer.inlineCallbacks
    def test_portInUseDaemonized(self):
        # A daemonizing twistd waits for its child's word: it must get it
        # (and end), and the log has the one line, no traceback.
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        endpoint = f"tcp:{taken.getsockname()[1]}:interface=127.0.0.1"
        directory = os.path.abspath(self.directory())
        log = os.path.join(directory, "twistd.log")
        output, status = yield self.twistd(
            f"--pidfile={directory}/twistd.pid", f"--logfile={log}",
            "chatd", "--protobuf", endpoint, *ONLY,
        )
        self.assertEqual(status, 1)
        self.assertIn("An error has occurred: b'chatd.listener.ListenFailed: chatd: --protobuf", output)
        # The daemon writes its last line just after it told its parent, and
        # is no child of ours to wait for: the log is read until it is there
        # (a traceback instead would never match).
        line = f"chatd: --protobuf {endpoint}: address already in use\n"
        for _ in range(100):
            with open(log) as f:
                logged = f.read()
            if line in logged:
                break
            yield task.deferLater(reactor, 0.1)
        self.assertIn(line, logged)
        self.assertNotIn("Traceback", logged)

    @defer.inlineCallbacks
    def test_misspeltOption(self):
        output, status = yield self.twistd("chatd", "--prtobuf", "tcp:5001")
        self.assertEqual(status, 1)
        lines = output.strip().splitlines()
        self.assertEqual(len(lines), 3, output)
        self.assertEqual(
            lines[:2], ["Usage: twistd [options] chatd [options]", "Every option: twistd chatd --help"]
        )
        self.assertTrue(
            lines[2].endswith(": option --prtobuf not recognized; did you mean --protobuf?"),
            output,
        )

    @defer.inlineCallbacks
    def test_badValueNamesOption(self):
        output, status = yield self.twistd("chatd", "--rate", "-3")
        self.assertEqual(status, 1)
        self.assertTrue(
            output.strip().endswith(": --rate -3: must be a number, 0 for no limit"), output
        )

    @defer.inlineCallbacks
    def test_version(self):
        output, status = yield self.twistd("chatd", "--version")
        self.assertEqual(status, 0)
        self.assertRegex(output, rf"^chatd {chatd.__version__} \(Twisted [^,]+, Python [^)]+\)\n$")

    @defer.inlineCallbacks
    def test_configFileAndVersionInStartupLog(self):
        directory = self.directory()
        path = os.path.abspath(os.path.join(directory, "chatd.toml"))
        with open(path, "w") as f:
            f.write('protobuf = "tcp:0:interface=127.0.0.1"\nmsrp = "none"\n'
                    'http = "none"\nmsgr = "none"\ndb = "none"\n')
        # The file turns MSRP off; the command line turns it back on.
        server = TwistdProcess(
            ["--config", path, "--msrp", "tcp:0:interface=127.0.0.1"],
            ["protobuf", "msrp"],
            directory,
        )
        self.addCleanup(server.stop)
        ports = yield server.start()
        self.assertEqual(set(ports), {"protobuf", "msrp"})
        self.assertIn(f"chatd {chatd.__version__} (Twisted ".encode(), server.output)
        self.assertNotIn(b"msgr-http listening", server.output)
