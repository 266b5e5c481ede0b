"""
Where chatd-client's output goes and where its input comes from.

  - L{ScriptConsole}: standard input is read as lines of commands; arrivals,
    results and errors are plain lines on standard output, progress goes to
    standard error. For pipes, files, shell scripts and tests.
  - L{TerminalConsole}: a person at a terminal. The line being typed is kept
    at the bottom with its prompt (and one status line per transfer above
    it); whatever arrives is printed above them, which are then redrawn, so
    the typed line is never garbled.

Output lines are of three kinds (docs/client.md): C{[sender] text} for what
arrives, C{* text} for results and notices, C{! text} for errors.
"""

from __future__ import annotations

import errno
import os
import select
import shutil
import signal
import sys
import termios
from typing import Callable

from twisted.internet import interfaces, stdio
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from chatd.client.files import Progress
from chatd.client.lineedit import (
    EndOfInput,
    Interrupt,
    LineEditor,
    Redraw,
    Submitted,
    printable,
)

STDIN, STDOUT, STDERR = 0, 1, 2

#: Percentages at which a progress line is printed when standard error is
#: not a terminal (and the last line, once the transfer ends).
MILESTONES = (0, 25, 50, 75)

#: Seconds between two redraws of a progress bar on a terminal.
REDRAW_INTERVAL = 0.1


def writeAll(fd: int, data: bytes) -> None:
    """
    Write all of C{data} to C{fd}, waiting when it is non-blocking and full
    (Twisted's stdio makes the terminal non-blocking). A closed reader
    (C{EPIPE}) is ignored: there is nobody left to tell.
    """
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except BlockingIOError:
            select.select([], [fd], [])
            continue
        except InterruptedError:
            continue
        except OSError as e:
            if e.errno == errno.EPIPE:
                return
            raise
        view = view[written:]


def indented(text: str) -> list[str]:
    """
    The display lines of C{text}: control characters made visible, and every
    line after the first indented by two spaces, so that text from someone
    else can never pass for a line of its own.
    """
    lines = text.replace("\r\n", "\n").split("\n")
    return [printable(lines[0])] + ["  " + printable(line) for line in lines[1:]]


class Console:
    """
    The output both faces share: it records every output line (for
    C{expect}), counts errors (for the exit status) and tells watchers.
    """

    def __init__(self, clock) -> None:
        self.clock = clock
        self.lines: list[str] = []
        self.errors = 0
        self._watchers: list[Callable[[str], None]] = []

    # What the clients call.

    def arrival(self, sender: str, text: str, receiver: str | None = None) -> None:
        """Something from C{sender}: C{[alice] hi}, C{[alice -> all] hi}."""
        who = printable(sender) if receiver is None else f"{printable(sender)} -> {printable(receiver)}"
        self._emit(indented(f"[{who}] {text}"))

    def result(self, text: str) -> None:
        """A result or notice: C{* text}."""
        self._emit(indented(f"* {text}"))

    def error(self, text: str) -> None:
        """An error: C{! text}. It makes the exit status 1."""
        self.errors += 1
        self._emit(indented(f"! {text}"))

    def progressChanged(self, progress: Progress) -> None:
        raise NotImplementedError()

    def watch(self, watcher: Callable[[str], None]) -> Callable[[], None]:
        """Call C{watcher(line)} for each output line; returns the undo."""
        self._watchers.append(watcher)
        return lambda: self._watchers.remove(watcher) if watcher in self._watchers else None

    def _emit(self, lines: list[str]) -> None:
        self.lines.extend(lines)
        self.write(lines)
        for line in lines:
            for watcher in list(self._watchers):
                watcher(line)

    # What the faces implement.

    def write(self, lines: list[str]) -> None:
        raise NotImplementedError()

    def startInput(self, runner) -> None:
        raise NotImplementedError()

    def close(self) -> None:
        """Put the terminal back as it was."""


class ScriptConsole(Console):
    """Plain lines: content on standard output, progress on standard error."""

    def __init__(self, clock, stdout: int = STDOUT, stderr: int = STDERR) -> None:
        super().__init__(clock)
        self.stdout = stdout
        self.stderr = stderr
        self.progressIsBar = os.isatty(stderr)
        self._milestone: dict[int, int] = {}
        self._drawn: dict[int, float] = {}
        self._stdio = None

    def write(self, lines: list[str]) -> None:
        writeAll(self.stdout, "".join(line + "\n" for line in lines).encode("utf-8", "replace"))

    def diagnostic(self, text: str) -> None:
        writeAll(self.stderr, (text + "\n").encode("utf-8", "replace"))

    def progressChanged(self, progress: Progress) -> None:
        key = id(progress)
        if self.progressIsBar:
            now = self.clock.seconds()
            if progress.finished is None and now - self._drawn.get(key, -1e9) < REDRAW_INTERVAL:
                return
            self._drawn[key] = now
            end = "\n" if progress.finished is not None else ""
            writeAll(self.stderr, f"\r{progress.render()}\x1b[K{end}".encode("utf-8", "replace"))
            if progress.finished is not None:
                self._drawn.pop(key, None)
            return
        if progress.finished is not None:
            self._milestone.pop(key, None)
            self.diagnostic(progress.render())
            return
        if progress.total and progress.done >= progress.total:
            return  # the last line follows, once the transfer is finished
        reached = self._milestone.get(key, 0)
        crossed = False
        while reached < len(MILESTONES) and progress.percent >= MILESTONES[reached]:
            reached += 1
            crossed = True
        self._milestone[key] = reached
        if crossed:
            self.diagnostic(progress.render())

    def startInput(self, runner) -> None:
        self._stdio = stdio.StandardIO(CommandLines(runner))


@implementer(interfaces.IHalfCloseableProtocol)
class CommandLines(Protocol):
    """Standard input as lines of commands, for L{ScriptConsole}."""

    def __init__(self, runner) -> None:
        self.runner = runner
        self._buffer = b""
        self._ended = False

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            self.runner.lineReceived(line.rstrip(b"\r").decode("utf-8", "replace"))

    def _end(self) -> None:
        if self._ended:
            return
        self._ended = True
        if self._buffer:
            line, self._buffer = self._buffer, b""
            self.runner.lineReceived(line.rstrip(b"\r").decode("utf-8", "replace"))
        self.runner.endOfInput()

    def readConnectionLost(self) -> None:
        self._end()

    def writeConnectionLost(self) -> None:
        # Nobody reads standard output any more: stop.
        self.runner.interrupt()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._end()


class TerminalConsole(Console):
    """
    A person at a terminal: a prompt with line editing at the bottom, output
    above it.
    """

    def __init__(self, clock, prompt: str, fd: int = STDIN, out: int = STDOUT) -> None:
        super().__init__(clock)
        self.fd = fd
        self.out = out
        self.editor = LineEditor(prompt)
        self.status: dict[int, str] = {}
        self._areaLines = 0  # status lines drawn above the prompt
        self._drawn: dict[int, float] = {}
        self._saved = None
        self._runner = None

    def startInput(self, runner) -> None:
        self._runner = runner
        self._saved = termios.tcgetattr(self.fd)
        attributes = termios.tcgetattr(self.fd)
        # Characters one by one, no echo, no signals from Ctrl-C; output is
        # still post-processed (\n moves to the start of the next line).
        attributes[0] &= ~(termios.ICRNL | termios.IXON | termios.INLCR | termios.IGNCR)
        attributes[3] &= ~(termios.ICANON | termios.ECHO | termios.ISIG | termios.IEXTEN)
        attributes[6][termios.VMIN] = 1
        attributes[6][termios.VTIME] = 0
        termios.tcsetattr(self.fd, termios.TCSANOW, attributes)
        try:
            signal.signal(signal.SIGWINCH, self._resized)
        except ValueError:  # not the main thread
            pass
        self._draw()
        stdio.StandardIO(Keyboard(self))

    def _resized(self, signum, frame) -> None:
        from twisted.internet import reactor

        reactor.callFromThread(self._redraw)

    def close(self) -> None:
        if self._saved is None:
            return
        self._erase()
        termios.tcsetattr(self.fd, termios.TCSANOW, self._saved)
        self._saved = None
        try:
            signal.signal(signal.SIGWINCH, signal.SIG_DFL)
        except ValueError:
            pass

    def keys(self, data: bytes) -> None:
        for event in self.editor.feed(data):
            if isinstance(event, Submitted):
                # The typed line stays in the transcript, above the output
                # it causes.
                self._erase()
                writeAll(self.out, (printable(self.editor.prompt + event.line) + "\n").encode("utf-8", "replace"))
                self._draw()
                self._runner.lineReceived(event.line)
            elif isinstance(event, EndOfInput):
                self._runner.endOfInput()
            elif isinstance(event, Interrupt):
                self._runner.interrupt()
            elif isinstance(event, Redraw):
                writeAll(self.out, b"\x1b[H\x1b[2J")
                self._areaLines = 0
                self._draw()
        if self._saved is not None:
            self._redraw()

    def write(self, lines: list[str]) -> None:
        self._erase()
        writeAll(self.out, "".join(line + "\n" for line in lines).encode("utf-8", "replace"))
        self._draw()

    def progressChanged(self, progress: Progress) -> None:
        key = id(progress)
        if progress.finished is not None:
            self.status.pop(key, None)
            self._drawn.pop(key, None)
            self.write([progress.render()])
            return
        now = self.clock.seconds()
        if key in self.status and now - self._drawn.get(key, -1e9) < REDRAW_INTERVAL:
            return
        self._drawn[key] = now
        self.status[key] = progress.render()
        self._redraw()

    def _width(self) -> int:
        try:
            columns = os.get_terminal_size(self.out).columns
        except OSError:
            columns = 0
        # A terminal that does not know its size says 0.
        return columns if columns > 0 else shutil.get_terminal_size().columns or 80

    def _erase(self) -> None:
        """Erase the status lines and the prompt; the cursor ends at their start."""
        if self._saved is None:
            return
        up = f"\x1b[{self._areaLines}A" if self._areaLines else ""
        writeAll(self.out, f"\r{up}\x1b[J".encode())
        self._areaLines = 0

    def _draw(self) -> None:
        """Draw the status lines and the prompt at the cursor."""
        if self._saved is None:
            return
        width = self._width()
        parts = []
        for text in self.status.values():
            parts.append(_fit(text, width) + "\n")
        text, column = self.editor.render(width)
        parts.append(text)
        parts.append("\r" + (f"\x1b[{column}C" if column else ""))
        self._areaLines = len(self.status)
        writeAll(self.out, "".join(parts).encode("utf-8", "replace"))

    def _redraw(self) -> None:
        self._erase()
        self._draw()


def _fit(text: str, width: int) -> str:
    """C{text} cut to fit one row of C{width} columns without wrapping."""
    from chatd.client.lineedit import cellWidth

    if cellWidth(text) < width:
        return text
    out, used = [], 0
    for ch in text:
        w = cellWidth(ch)
        if used + w > width - 2:
            break
        out.append(ch)
        used += w
    return "".join(out) + "…"


class Keyboard(Protocol):
    """Keystrokes from the terminal, for L{TerminalConsole}."""

    def __init__(self, console: TerminalConsole) -> None:
        self.console = console

    def dataReceived(self, data: bytes) -> None:
        self.console.keys(data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self.console._runner is not None:
            self.console._runner.endOfInput()


def isInteractive() -> bool:
    """Whether a person is at the keyboard: standard input and output are terminals."""
    return sys.stdin.isatty() and sys.stdout.isatty()
