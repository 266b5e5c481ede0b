"""
The command line of C{twistd chatd}, made for operators: a configuration
file (C{--config chatd.toml}), C{--version}, and usage errors that fit on a
line and name the option (docs/running.md).

L{ConfiguredOptions} is generic over the options of the class that derives
from it: every long option of C{optParameters} and C{optFlags} is a key of
the file, spelt exactly as on the command line, so an option added later is
settable there without touching this module.
"""

from __future__ import annotations

import difflib
import platform
import re
import sys

from twisted.python import reflect, usage

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 (setup.cfg installs tomli there)
    import tomli as tomllib

from chatd import __version__

#: The option that names the file.
CONFIG = "config"

#: What a usage error prints before twistd's own line with the error: the
#: synopsis (twistd's, made to name chatd) and where the help is.
SYNOPSIS = "Usage: twistd [options] chatd [options]"
SHORT_USAGE = "Every option: twistd chatd --help"

_UNKNOWN = re.compile(r"option (--?)([^\s]+) not recognized")


def versionText() -> str:
    """C{chatd 0.1.0 (Twisted 24.11.0, Python 3.11.7)}."""
    from twisted import version as twistedVersion

    return (
        f"chatd {__version__} (Twisted {twistedVersion.short()},"
        f" Python {platform.python_version()})"
    )


class OptionValueError(usage.UsageError):
    """A value an option does not take; C{str()} names the option."""

    def __init__(self, name: str, value: str, reason: str) -> None:
        super().__init__(f"--{name} {value}: {reason}")
        self.name, self.value, self.reason = name, value, reason


def _named(name: str, coerce):
    """C{coerce}, raising L{OptionValueError} that names C{--name}."""

    def coerceNamed(value: str):
        try:
            return coerce(value)
        except ValueError as e:
            reason = str(e)
            # int() and float() explain themselves in Python's terms.
            if reason.startswith(("invalid literal", "could not convert")):
                reason = "not a number"
            raise OptionValueError(name, value, reason) from None

    coerceNamed.coerceDoc = getattr(coerce, "coerceDoc", "")
    return coerceNamed


def _configPath(arguments: list[str]) -> str | None:
    """The last C{--config FILE} (or C{--config=FILE}) of C{arguments}."""
    path = None
    for index, argument in enumerate(arguments):
        if argument == "--":
            break
        if argument == f"--{CONFIG}" and index + 1 < len(arguments):
            path = arguments[index + 1]
        elif argument.startswith(f"--{CONFIG}="):
            path = argument.split("=", 1)[1]
    return path


def readConfigFile(path: str) -> dict:
    """The TOML table of C{path}; a usage error naming the file if unreadable."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise usage.UsageError(f"--config {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise usage.UsageError(f"--config {path}: not valid TOML: {e}") from None


class ConfiguredOptions(usage.Options):
    """
    C{usage.Options} whose values may also come from a TOML file given with
    C{--config}; the command line overrides the file. A usage error is one
    line naming the option, with a guess for a misspelt one, instead of the
    whole help.
    """

    optParameters = [
        [
            CONFIG,
            None,
            None,
            "TOML file of options, one 'option = value' a line with the long "
            "option's name (max-conns = 500); the command line overrides it.",
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self._failed = False
        for name, handler in self._dispatch.items():
            if isinstance(handler, usage.CoerceParameter):
                handler.coerce = _named(name, handler.coerce)

    def settableOptions(self) -> tuple[list[str], set[str]]:
        """(every option a file may set, in order; the ones that are flags)."""
        flags: list = []
        reflect.accumulateClassList(type(self), "optFlags", flags)
        flagNames = {flag[0] for flag in flags}
        names = [name for name in self.defaults if name != CONFIG]
        return names, flagNames

    def opt_version(self) -> None:
        """Show chatd's version and exit."""
        print(versionText())
        sys.exit(0)

    def parseOptions(self, options=None) -> None:
        arguments = list(sys.argv[1:] if options is None else options)
        try:
            path = _configPath(arguments)
            if path is not None:
                self.loadConfigFile(path)
            super().parseOptions(arguments)
        except usage.UsageError as e:
            self._failed = True
            parent = getattr(self, "parent", None)
            if parent is not None:  # twistd's options, which print its synopsis
                parent.synopsis = SYNOPSIS
            raise usage.UsageError(self._explain(str(e))) from None

    def loadConfigFile(self, path: str) -> None:
        """Set every option the file at C{path} names."""
        names, flags = self.settableOptions()
        for key, value in readConfigFile(path).items():
            if key not in names:
                guess = self._guess(key, names)
                hint = f"; did you mean {guess}?" if guess else ""
                raise usage.UsageError(f"{path}: unknown option {key!r}{hint}")
            where = f"{path}: {key} = {value!r}"
            if key in flags:
                if not isinstance(value, bool):
                    raise usage.UsageError(f"{where}: must be true or false")
                self.opts[key] = 1 if value else 0
                continue
            if isinstance(value, bool) or not isinstance(value, (str, int, float)):
                raise usage.UsageError(f"{where}: must be a string or a number")
            try:
                self._dispatch[key].dispatch(key, str(value))
            except OptionValueError as e:
                raise usage.UsageError(f"{where}: {e.reason}") from None

    def _guess(self, word: str, names) -> str | None:
        close = difflib.get_close_matches(word.lstrip("-"), list(names), n=1, cutoff=0.6)
        return f"--{close[0]}" if close else None

    def _explain(self, message: str) -> str:
        unknown = _UNKNOWN.search(message)
        if unknown is not None and unknown.group(1) == "--":
            guess = self._guess(unknown.group(2), self.defaults)
            if guess is not None:
                return f"{message}; did you mean {guess}?"
        return message

    def getUsage(self, width=None) -> str:
        # twistd prints the whole help, then the error, after a usage
        # error: a short line points at --help instead.
        if self._failed:
            return SHORT_USAGE
        return super().getUsage(width)
