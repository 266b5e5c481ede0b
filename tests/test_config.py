"""
The command line of C{twistd chatd} as an operator meets it (docs/running.md):
usage errors that name the option, C{--config FILE}, the version, and the
example file contrib/chatd.toml.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import os
import re

from twisted.python import usage
from twisted.trial.unittest import TestCase

import chatd
from chatd.client.main import buildParser
from chatd.config import versionText
from chatd.msgr import admin
from chatd.exporter import MetricsExporter
from chatd.metrics import ChatdMetrics
from chatd.tap import Options

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "contrib", "chatd.toml")


def parseError(testCase: TestCase, arguments: list[str]) -> tuple[str, str]:
    """(the usage error of C{arguments}, the usage twistd prints before it)."""
    options = Options()
    error = testCase.assertRaises(usage.UsageError, options.parseOptions, arguments)
    return str(error), str(options)


class UsageErrorTests(TestCase):
    def test_misspeltOptionGetsAGuess(self) -> None:
        error, printed = parseError(self, ["--prtobuf", "tcp:5001"])
        self.assertEqual(error, "option --prtobuf not recognized; did you mean --protobuf?")
        # Not the whole help: one line that says where it is.
        self.assertEqual(printed.splitlines()[-1], "Every option: twistd chatd --help")

    def test_unknownOptionWithoutGuess(self) -> None:
        error, _ = parseError(self, ["--zzzzzz"])
        self.assertEqual(error, "option --zzzzzz not recognized")

    def test_badValueNamesTheOption(self) -> None:
        error, printed = parseError(self, ["--rate", "-3"])
        self.assertEqual(error, "--rate -3: must be a number, 0 for no limit")
        self.assertNotIn("--max-conns", printed)

    def test_notANumberNamesTheOption(self) -> None:
        error, _ = parseError(self, ["--max-conns", "many"])
        self.assertEqual(error, "--max-conns many: not a number")

    def test_helpIsStillWhole(self) -> None:
        # Without an error the usage is the full help, every option in it.
        text = str(Options())
        for option in ("--protobuf=", "--msgr-lockout-time=", "--config=", "--version"):
            self.assertIn(option, text)


class ConfigFileTests(TestCase):
    def write(self, text: str) -> str:
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def test_fileSetsOptions(self) -> None:
        path = self.write(
            'protobuf = "tcp:5001:interface=127.0.0.1"\n'
            "max-conns = 500\n"
            "rate = 2.5\n"
            'msrp = "none"\n'
        )
        options = Options()
        options.parseOptions(["--config", path])
        self.assertEqual(
            (options["protobuf"], options["max-conns"], options["rate"], options["msrp"]),
            ("tcp:5001:interface=127.0.0.1", 500, 2.5, "none"),
        )
        # What the file does not name keeps its default.
        self.assertEqual(options["http"], "tcp:8000")

    def test_commandLineOverridesFile(self) -> None:
        path = self.write("max-conns = 500\nrate = 3\n")
        options = Options()
        options.parseOptions(["--max-conns", "7", f"--config={path}"])
        self.assertEqual((options["max-conns"], options["rate"]), (7, 3.0))

    def test_unknownKeyNamesKeyAndFile(self) -> None:
        path = self.write("max-con = 5\n")
        error, _ = parseError(self, ["--config", path])
        self.assertEqual(error, f"{path}: unknown option 'max-con'; did you mean --max-conns?")

    def test_configIsNoKeyOfItself(self) -> None:
        path = self.write('config = "other.toml"\n')
        error, _ = parseError(self, ["--config", path])
        self.assertEqual(error, f"{path}: unknown option 'config'")

    def test_badValueNamesKeyAndFile(self) -> None:
        path = self.write("rate = -3\n")
        error, _ = parseError(self, ["--config", path])
        self.assertEqual(error, f"{path}: rate = -3: must be a number, 0 for no limit")

    def test_wrongTypeNamesKeyAndFile(self) -> None:
        path = self.write("protobuf = [5000]\n")
        error, _ = parseError(self, ["--config", path])
        self.assertEqual(error, f"{path}: protobuf = [5000]: must be a string or a number")

    def test_fileIsCheckedLikeTheCommandLine(self) -> None:
        # postOptions' checks hold for values from the file too.
        path = self.write('db = "none"\n')
        error, _ = parseError(self, ["--config", path])
        self.assertEqual(error, "--db none needs --http none and --msgr none")

    def test_notToml(self) -> None:
        path = self.write("rate = = 3\n")
        error, _ = parseError(self, ["--config", path])
        self.assertTrue(error.startswith(f"--config {path}: not valid TOML: "), error)

    def test_missingFile(self) -> None:
        error, _ = parseError(self, ["--config", "no-such-file.toml"])
        self.assertEqual(error, "--config no-such-file.toml: No such file or directory")

    def test_flagsFromFile(self) -> None:
        class WithFlag(Options):
            optFlags = [["quiet", None, "a flag"]]

        path = self.write("quiet = true\n")
        options = WithFlag()
        options.parseOptions(["--config", path])
        self.assertEqual(options["quiet"], 1)
        path = self.write('quiet = "yes"\n')
        options = WithFlag()
        error = self.assertRaises(usage.UsageError, options.parseOptions, ["--config", path])
        self.assertEqual(str(error), f"{path}: quiet = 'yes': must be true or false")


class ExampleFileTests(TestCase):
    """contrib/chatd.toml lists every option, commented, with its default."""

    def setUp(self) -> None:
        with open(EXAMPLE, encoding="utf-8") as f:
            self.text = f.read()

    def test_listsEveryOption(self) -> None:
        names, _ = Options().settableOptions()
        listed = re.findall(r"^# ([a-z0-9-]+) = ", self.text, re.M)
        self.assertEqual(sorted(listed), sorted(names))

    def test_parsesAsIsAndUncommented(self) -> None:
        # As shipped (every line a comment) it sets nothing.
        options = Options()
        options.parseOptions(["--config", EXAMPLE])
        self.assertEqual(dict(options), {**Options().defaults, "config": EXAMPLE})
        # Uncommented, every line is accepted and shows the default.
        uncommented = self.mktemp()
        with open(uncommented, "w", encoding="utf-8") as f:
            f.write(re.sub(r"^# ([a-z0-9-]+ = )", r"\1", self.text, flags=re.M))
        options = Options()
        options.parseOptions(["--config", uncommented])
        self.assertEqual(dict(options), {**Options().defaults, "config": uncommented})


class VersionTests(TestCase):
    def test_installedVersionIsChatds(self) -> None:
        # setup.cfg takes the version from chatd.__version__.
        self.assertEqual(importlib.metadata.version("chatd"), chatd.__version__)

    def test_buildInfoMetric(self) -> None:
        body, _ = MetricsExporter(ChatdMetrics()).exposition()
        line = re.search(rb"^chatd_build_info\{(.*)\} 1\.0$", body, re.M)
        self.assertIsNotNone(line, body)
        self.assertIn(f'version="{chatd.__version__}"'.encode(), line.group(1))

    def test_consoleScriptsShowTheVersion(self) -> None:
        out = io.StringIO()
        self.assertEqual(admin.main(["--version"], stdout=out), 0)
        self.assertEqual(out.getvalue(), versionText() + "\n")
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exited = self.assertRaises(SystemExit, buildParser().parse_args, ["--version"])
        self.assertEqual((exited.code, out.getvalue()), (0, versionText() + "\n"))
        self.assertTrue(versionText().startswith(f"chatd {chatd.__version__} (Twisted "))
