"""
The command language of chatd-client: one command a line, the word first
(C{msg bob hola}), and the loop that runs the lines from a person or from a
script (docs/client.md).

Scripted, each command is finished (its answer arrived, its file written)
before the next one starts, and at the end of the input the client waits for
its pending work (L{ChatClient.drain}) before it logs out. At a terminal,
commands run as they are typed: a long file transfer does not hold the
prompt.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Callable

from twisted.internet import defer, task
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.python.failure import Failure


class CommandError(Exception):
    """A command failed; C{str()} is what the user reads after C{! }."""


class ScriptAborted(CommandError):
    """A failure after which the script does not go on (C{expect} timed out)."""


@dataclass(frozen=True)
class Command:
    """
    One command: C{usage} (C{"msg NAME TEXT"}, the first word is the name),
    a one-line C{help}, and C{run(rest)} called with what follows the name,
    returning a L{defer.Deferred} when it finishes later (or C{None}).
    """

    usage: str
    help: str
    run: Callable[[str], "defer.Deferred | None"]

    @property
    def name(self) -> str:
        return self.usage.split()[0]


def arguments(rest: str, usage: str) -> list[str]:
    """
    Split C{rest} as C{usage} says: one word per argument, the last argument
    the rest of the line.

    @raise CommandError: C{usage: ...} when arguments are missing.
    """
    wanted = len(usage.split()) - 1
    if not wanted:
        return []
    parts = rest.split(None, wanted - 1)
    if len(parts) < wanted:
        raise CommandError(f"usage: {usage}")
    return parts


class CommandRunner:
    """
    Runs command lines against a client and says when to exit.

    @ivar finished: fires with the exit status once the client has quit:
        C{0}, or C{1} when anything failed (an C{!} line was printed).
    """

    def __init__(self, client, console, clock, sequential: bool, timeout: float) -> None:
        self.client = client
        self.console = console
        self.clock = clock
        self.sequential = sequential
        self.timeout = timeout
        self.finished: defer.Deferred = defer.Deferred()
        self._queue: deque[str] = deque()
        self._busy = False
        self._ended = False
        self._stopping = False
        self._expectFrom = 0
        builtins = [
            Command("help [COMMAND]", "list the commands, or explain one", self._help),
            Command("quit", "log out and exit", self._quit),
            Command("expect TEXT", "wait until an output line contains TEXT (at most --timeout seconds)", self._expect),
            Command("wait SECONDS", "pause, showing what arrives meanwhile", self._wait),
        ]
        self.commands: dict[str, Command] = {}
        for command in list(client.commands()) + builtins:
            self.commands[command.name] = command
        client.whenClosed().addCallback(self._connectionClosed)

    # Input.

    def lineReceived(self, line: str) -> None:
        if self._stopping:
            return
        self._queue.append(line)
        self._next()

    def endOfInput(self) -> None:
        self._ended = True
        self._next()

    def interrupt(self) -> None:
        """Stop now (Ctrl-C, or nobody reads the output any more)."""
        self._queue.clear()
        self._stop(drain=False, polite=False)

    # The loop.

    def _next(self) -> None:
        while not self._busy and self._queue and not self._stopping:
            line = self._queue.popleft()
            d = self._run(line)
            if d is not None and self.sequential:
                self._busy = True
                d.addBoth(self._done)
        if not self._busy and not self._queue and self._ended and not self._stopping:
            self._stop(drain=True)

    def _done(self, ignored) -> None:
        self._busy = False
        self._next()

    def _run(self, line: str) -> defer.Deferred | None:
        line = line.strip()
        if not line or line.startswith("#"):
            return None
        word, _, rest = line.partition(" ")
        command = self.commands.get(word.lower())
        if command is None:
            reason = self.client.unsupported().get(word.lower())
            if reason is not None:
                self.console.error(f"{word}: {reason}")
            else:
                self.console.error(f"unknown command: {word} (help lists the commands)")
            return None
        try:
            d = command.run(rest.strip())
        except ScriptAborted as e:
            self._abort(str(e))
            return None
        except CommandError as e:
            self.console.error(str(e))
            return None
        except Exception as e:  # a bug: say it, and go on with the next line
            self.console.error(f"{word}: {type(e).__name__}: {e}")
            return None
        if d is None:
            return None
        return d.addErrback(self._failed)

    def _failed(self, failure: Failure) -> None:
        if failure.check(ScriptAborted):
            self._abort(failure.getErrorMessage())
        elif failure.check(CommandError):
            self.console.error(failure.getErrorMessage())
        elif failure.check(ConnectionDone, ConnectionLost):
            pass  # said once, by _connectionClosed
        else:
            self.console.error(f"{failure.type.__name__}: {failure.getErrorMessage()}")

    def _abort(self, text: str) -> None:
        self.console.error(text)
        self._queue.clear()
        self._stop(drain=False)

    # The end.

    def _stop(self, drain: bool, polite: bool = True) -> None:
        if self._stopping:
            return
        self._stopping = True
        if not polite:
            self.client.abort()
            d = self.client.whenClosed()
        elif drain:
            d = defer.maybeDeferred(self.client.drain)
            d.addErrback(self._failed)
            d.addCallback(lambda _: self.client.quit())
        else:
            d = defer.maybeDeferred(self.client.quit)
        d.addErrback(self._failed)
        d.addBoth(lambda _: self._finish())

    def _finish(self) -> None:
        if not self.finished.called:
            self.finished.callback(1 if self.console.errors else 0)

    def _connectionClosed(self, reason: BaseException | None) -> None:
        if self.client.closedByUs:
            return
        self._queue.clear()
        if reason is None or isinstance(reason, ConnectionDone):
            text = "the connection was closed by the server"
        elif isinstance(reason, ConnectionLost):
            text = "the connection was cut (by the server or the network)"
        else:
            text = f"the connection was lost: {reason}"
        self.console.error(text)
        if not self._stopping:
            self._stopping = True
            self._finish()

    # Built-in commands.

    def _help(self, rest: str) -> None:
        if rest:
            command = self.commands.get(rest.split()[0].lower())
            if command is None:
                raise CommandError(f"unknown command: {rest.split()[0]}")
            self.console.result(f"{command.usage}: {command.help}")
            return
        width = max(len(c.usage) for c in self.commands.values())
        self.console.result(f"commands ({self.client.protocolName}):")
        for command in self.commands.values():
            self.console.result(f"  {command.usage.ljust(width)}  {command.help}")

    def _quit(self, rest: str) -> None:
        self._queue.clear()
        self._stop(drain=False)

    def _expect(self, rest: str) -> defer.Deferred | None:
        if not rest:
            raise CommandError("usage: expect TEXT")
        lines = self.console.lines
        for index in range(self._expectFrom, len(lines)):
            if rest in lines[index]:
                self._expectFrom = index + 1
                return None
        d: defer.Deferred = defer.Deferred()

        def seen(line: str) -> None:
            if rest in line and not d.called:
                self._expectFrom = len(self.console.lines)
                stop()
                timer.cancel()
                d.callback(None)

        def timedOut() -> None:
            stop()
            d.errback(ScriptAborted(f"expect: no line contained {rest!r} within {self.timeout:g} s"))

        stop = self.console.watch(seen)
        timer = self.clock.callLater(self.timeout, timedOut)

        def closed(reason) -> None:
            if not d.called:
                stop()
                timer.cancel()
                d.errback(CommandError(f"expect: the connection closed before a line contained {rest!r}"))

        self.client.whenClosed().addCallback(closed)
        return d

    def _wait(self, rest: str) -> defer.Deferred:
        try:
            seconds = float(rest)
        except ValueError:
            raise CommandError("usage: wait SECONDS") from None
        if not 0 <= seconds <= 86400:
            raise CommandError("wait: SECONDS must be between 0 and 86400")
        return task.deferLater(self.clock, seconds)
