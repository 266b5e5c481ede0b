"""
The server under soak: a real ``twistd --nodaemon chatd`` child process, with
every listener on an ephemeral port of 127.0.0.1, its log in a file, and its
memory and file descriptors read from /proc (L{chatd.harness.ServerProcess});
what only the soak needs is here: the census hook, and the log read for
errors.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time

from chatd.harness import TWISTD, ServerError, ServerProcess, chatdArgv, chatdOptions

#: The listeners, by the label of their log line.
LABELS = ("protobuf", "msrp", "msgr-http", "msgr")

#: Log lines that mean an error escaped somewhere in the server.
_BAD_LINE = re.compile(r"Traceback|Unhandled")

DEFAULT_TWISTD = TWISTD

_HOOK = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hook")


class SoakServer(ServerProcess):
    """
    ``twistd --nodaemon --pidfile= --logfile=- chatd ...`` in C{directory},
    its output in C{directory}/chatd.log, with the census hook
    (soak/hook/sitecustomize.py) loaded first; killed if the soak dies.
    """

    def __init__(
        self,
        directory: str,
        args: list[str],
        twistd: str = DEFAULT_TWISTD,
        environment: dict[str, str] | None = None,
    ):
        self.directory = directory
        self.censusPath = os.path.join(directory, "census.json")
        path = [_HOOK] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        super().__init__(
            chatdArgv(args, twistd),
            LABELS,
            cwd=directory,
            logPath=os.path.join(directory, "chatd.log"),
            env={
                **os.environ,
                **(environment or {}),
                "PYTHONPATH": os.pathsep.join(path),
                "CHATD_SOAK_CENSUS": self.censusPath,
            },
            dieWithParent=True,
        )
        self.twistd = twistd

    def badLines(self) -> list[str]:
        """Log lines with a traceback or an unhandled error."""
        return [line for line in self.log().splitlines() if _BAD_LINE.search(line)]

    def firstError(self, limit: int = 60) -> list[str]:
        """
        The first log event with a traceback or an unhandled error: its
        line and the tab-indented lines that continue it.
        """
        lines = self.log().splitlines()
        for i, line in enumerate(lines):
            if _BAD_LINE.search(line):
                start = i
                while start > 0 and lines[start].startswith((" ", "\t")):
                    start -= 1
                end = i + 1
                while end < len(lines) and lines[end].startswith((" ", "\t")):
                    end += 1
                return lines[start : min(end, start + limit)]
        return []

    def census(self, timeout: float = 30.0, mode: str = "collect") -> dict[str, int]:
        """
        The server's live objects by type, after a garbage collection; or,
        with C{mode} C{"off"}, after one that turns the collector off, or with
        C{"uncollected"}, without one (see soak/hook/sitecustomize.py).
        """
        try:
            os.unlink(self.censusPath)
        except FileNotFoundError:
            pass
        with open(self.censusPath + ".mode", "w") as f:
            f.write(mode)
        os.kill(self.pid, signal.SIGUSR2)
        deadline = time.monotonic() + timeout
        while not os.path.exists(self.censusPath):
            if time.monotonic() > deadline or not self.alive():
                raise ServerError("the server did not write its census (SIGUSR2)")
            time.sleep(0.05)
        with open(self.censusPath) as f:
            return json.load(f)


__all__ = ["SoakServer", "ServerError", "chatdOptions", "DEFAULT_TWISTD", "LABELS"]
