"""C{make clean} leaves no trace of the tests (the Makefile, run for real)."""

from __future__ import annotations

import os
import shutil
import subprocess

from twisted.trial.unittest import SkipTest, TestCase

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class MakeCleanTests(TestCase):
    def test_cleanRemovesWhatTestsLeave(self) -> None:
        if shutil.which("make") is None:
            raise SkipTest("no make")
        # A copy of the checkout's shape, so the real .venv stays.
        checkout = os.path.abspath(self.mktemp())
        left = [".venv/bin", "_trial_temp/x", "_trial_temp-1", ".hypothesis/examples",
                "tests.test_limits/LimitTests/test_x/temp", "build", "chatd.egg-info"]
        kept = ["tests", "chatd", "docs"]
        for path in left + kept:
            os.makedirs(os.path.join(checkout, path))
        with open(os.path.join(checkout, "chatd.sqlite3"), "w") as f:
            f.write("the operator's accounts")
        subprocess.run(
            ["make", "--no-print-directory", "-f", os.path.join(ROOT, "Makefile"), "clean"],
            cwd=checkout, check=True, capture_output=True,
        )
        remaining = sorted(os.listdir(checkout))
        self.assertEqual(remaining, sorted(kept + ["chatd.sqlite3"]))
