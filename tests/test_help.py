"""
C{twistd chatd --help} keeps every option and its text.

tests/data/help.txt is the help of the code before the options moved into
the fronts (issue 13), as C{twistd chatd --help} printed it at 80 columns;
usage.Options sorts the options by name, so the text is compared whole.
"""

from __future__ import annotations

import os

from twisted.trial.unittest import TestCase

from chatd.tap import Options

HELP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "help.txt")


def optionsSection(text: str) -> list[str]:
    """The lines from C{Options:} on: what chatd's options print."""
    lines = text.rstrip("\n").splitlines()
    return lines[lines.index("Options:") :]


class HelpTests(TestCase):
    def test_everyOptionAndItsText(self) -> None:
        with open(HELP, encoding="utf-8") as f:
            expected = optionsSection(f.read())
        self.assertEqual(optionsSection(Options().getUsage(width=80)), expected)

    def test_fixtureHasEveryOption(self) -> None:
        # The fixture is not empty or cut short: every option is in it.
        with open(HELP, encoding="utf-8") as f:
            text = f.read()
        for name in Options().defaults:
            self.assertIn(f"--{name}=", text)
