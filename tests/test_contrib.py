"""
The deployment files under contrib/ and the Containerfile: their chatd
command lines are valid, and the systemd unit passes systemd-analyze verify
(when the machine has it). Building the container is a manual check
(docs/running.md, "In a container").
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess

from twisted.trial.unittest import SkipTest, TestCase

from chatd.tap import Options
from tests.twistd import TWISTD

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNIT = os.path.join(ROOT, "contrib", "chatd.service")
EXAMPLE = os.path.join(ROOT, "contrib", "chatd.toml")


def execStart() -> list[str]:
    with open(UNIT, encoding="utf-8") as f:
        text = f.read().replace("\\\n", " ")
    (line,) = re.findall(r"^ExecStart=(.*)$", text, re.M)
    return shlex.split(line)


class UnitTests(TestCase):
    def test_chatdOptionsParse(self) -> None:
        argv = execStart()
        self.assertEqual(argv[0], "/opt/chatd/.venv/bin/twistd")
        twistdOptions, chatdOptions = argv[1 : argv.index("chatd")], argv[argv.index("chatd") + 1 :]
        self.assertEqual(
            twistdOptions, ["--nodaemon", "--pidfile=", "--logger", "chatd.tap.jsonLogObserver"]
        )
        # The unit's file is the example, as installed.
        config = chatdOptions.index("--config")
        self.assertEqual(chatdOptions[config + 1], "/etc/chatd/chatd.toml")
        chatdOptions[config + 1] = EXAMPLE
        options = Options()
        options.parseOptions(chatdOptions)
        self.assertEqual(
            (options["db"], options["metrics"]),
            ("/var/lib/chatd/chatd.sqlite3", "tcp:9108:interface=127.0.0.1"),
        )

    def test_systemdAnalyzeVerify(self) -> None:
        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            raise SkipTest("no systemd-analyze")
        # The installed path of the docs, made this checkout's twistd.
        copy = os.path.abspath(self.mktemp())
        os.makedirs(copy)
        with open(UNIT, encoding="utf-8") as f:
            text = f.read().replace("/opt/chatd/.venv/bin/twistd", TWISTD)
        path = os.path.join(copy, "chatd.service")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        result = subprocess.run([analyze, "verify", path], capture_output=True, text=True)
        self.assertEqual((result.returncode, result.stderr), (0, ""))


class ContainerfileTests(TestCase):
    def test_commandParses(self) -> None:
        with open(os.path.join(ROOT, "Containerfile"), encoding="utf-8") as f:
            text = f.read()
        entrypoint = json.loads(re.search(r"^ENTRYPOINT (.*)$", text, re.M).group(1))
        command = json.loads(re.search(r"^CMD (.*)$", text, re.M).group(1))
        self.assertEqual(
            entrypoint, ["/opt/chatd/.venv/bin/twistd", "--nodaemon", "--pidfile=", "chatd"]
        )
        options = Options()
        options.parseOptions(command)
        self.assertEqual(options["db"], "/var/lib/chatd/chatd.sqlite3")
        # The checkout's virtualenv stays out of the image.
        with open(os.path.join(ROOT, ".dockerignore"), encoding="utf-8") as f:
            self.assertIn(".venv", f.read().split())
