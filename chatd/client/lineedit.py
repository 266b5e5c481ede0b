"""
A small line editor for a terminal in raw mode: the keys a person expects
(arrows, Home/End, Backspace/Delete, history, Ctrl-A/E/K/U/W), any Unicode
text, and a rendering that fits one terminal row whatever the line's length,
so that output printed above it can always erase and redraw it exactly.

L{LineEditor} is pure: bytes from the keyboard in, L{Submitted} lines and
key events out, and L{LineEditor.render} to draw it. No terminal I/O here.
"""

from __future__ import annotations

import codecs
import unicodedata
from dataclasses import dataclass

from wcwidth import iter_graphemes, wcswidth, wcwidth


def cellWidth(text: str) -> int:
    """
    How many terminal columns C{text} takes (the C{wcwidth} package: wide
    East Asian = 2, marks = 0, an emoji sequence joined by ZWJ = 2).
    """
    width = wcswidth(text)
    if width >= 0:
        return width
    # wcswidth gives -1 for a string with a control character; count the
    # others (a control character takes no column of its own).
    return sum(max(wcwidth(ch), 0) for ch in text)


def clusterWidths(chars: list[str]) -> list[int]:
    """
    The columns each of C{chars} (one code point each) adds: a grapheme
    cluster's width on its first code point, 0 on the others, so that the
    widths of a line's code points add up to the line's width.
    """
    widths: list[int] = []
    for cluster in iter_graphemes("".join(chars)):
        widths.append(cellWidth(cluster))
        widths.extend([0] * (len(cluster) - 1))
    return widths


#: Bidirectional embeddings, overrides and isolates: they could make text
#: on the screen read differently from what was sent.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def printable(text: str) -> str:
    """
    C{text} safe to print: every control character (escape sequences
    start with one) and bidirectional control shown as U+FFFD.
    """
    return "".join(
        "\ufffd" if ch in _BIDI_CONTROLS or unicodedata.category(ch) == "Cc" else ch
        for ch in text
    )


@dataclass(frozen=True)
class Submitted:
    """Enter was pressed on C{line}."""

    line: str


@dataclass(frozen=True)
class Interrupt:
    """Ctrl-C."""


@dataclass(frozen=True)
class EndOfInput:
    """Ctrl-D on an empty line."""


@dataclass(frozen=True)
class Redraw:
    """Ctrl-L: the screen should be cleared and redrawn."""


# Escape sequences' final bytes (CSI "ESC [ ... X" and SS3 "ESC O X").
_CSI_KEYS = {
    "A": "up", "B": "down", "C": "right", "D": "left", "H": "home", "F": "end",
}
_TILDE_KEYS = {"1": "home", "7": "home", "4": "end", "8": "end", "3": "delete"}


class LineEditor:
    """
    The line being typed, its cursor and its history.

    @ivar prompt: drawn before the line.
    """

    def __init__(self, prompt: str = "> ", historySize: int = 500) -> None:
        self.prompt = prompt
        self.buffer: list[str] = []
        self.cursor = 0
        self.history: list[str] = []
        self.historySize = historySize
        self._historyIndex = 0
        self._draft: list[str] = []
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._escape: str | None = None  # an escape sequence under way
        self._afterCR = False
        self._scroll = 0  # first character shown when the line is too long

    @property
    def line(self) -> str:
        return "".join(self.buffer)

    def feed(self, data: bytes) -> list:
        """Handle typed bytes; return the events they caused, in order."""
        events: list = []
        for ch in self._decoder.decode(data):
            if self._escape is not None:
                self._escapeChar(ch)
                continue
            afterCR, self._afterCR = self._afterCR, False
            if ch == "\x1b":
                self._escape = ""
            elif ch == "\r" or ch == "\n":
                if ch == "\n" and afterCR:
                    continue  # the \n of a \r\n
                self._afterCR = ch == "\r"
                events.append(self._submit())
            elif ch == "\x03":
                events.append(Interrupt())
            elif ch == "\x04":
                if not self.buffer:
                    events.append(EndOfInput())
                else:
                    self._delete()
            elif ch in ("\x7f", "\x08"):
                self._backspace()
            elif ch == "\x01":
                self.cursor = 0
            elif ch == "\x05":
                self.cursor = len(self.buffer)
            elif ch == "\x02":
                self._move(-1)
            elif ch == "\x06":
                self._move(1)
            elif ch == "\x0b":
                del self.buffer[self.cursor :]
            elif ch == "\x15":
                del self.buffer[: self.cursor]
                self.cursor = 0
            elif ch == "\x17":
                self._deleteWord()
            elif ch == "\x0c":
                events.append(Redraw())
            elif ch == "\x10":
                self._historyMove(-1)
            elif ch == "\x0e":
                self._historyMove(1)
            elif ch == "\t":
                self._insert(" ")
            elif unicodedata.category(ch) == "Cc":
                pass  # other control characters are ignored
            else:
                self._insert(ch)
        return events

    def _escapeChar(self, ch: str) -> None:
        sequence = self._escape + ch
        if sequence in ("[", "O"):
            self._escape = sequence
            return
        if sequence[0] not in "[O":
            self._escape = None  # ESC + a key (Alt-key): ignored
            return
        if not ("@" <= ch <= "~") or (sequence[0] == "[" and len(sequence) == 1):
            if len(sequence) > 16:
                self._escape = None  # not a sequence we understand
            else:
                self._escape = sequence
            return
        self._escape = None
        body = sequence[1:]
        if ch == "~":
            key = _TILDE_KEYS.get(body[:-1].split(";")[0])
        else:
            key = _CSI_KEYS.get(ch)
        if key == "left":
            self._move(-1)
        elif key == "right":
            self._move(1)
        elif key == "home":
            self.cursor = 0
        elif key == "end":
            self.cursor = len(self.buffer)
        elif key == "delete":
            self._delete()
        elif key == "up":
            self._historyMove(-1)
        elif key == "down":
            self._historyMove(1)

    def _insert(self, ch: str) -> None:
        self.buffer.insert(self.cursor, ch)
        self.cursor += 1

    def _move(self, step: int) -> None:
        self.cursor = max(0, min(len(self.buffer), self.cursor + step))

    def _backspace(self) -> None:
        if self.cursor:
            self.cursor -= 1
            del self.buffer[self.cursor]

    def _delete(self) -> None:
        if self.cursor < len(self.buffer):
            del self.buffer[self.cursor]

    def _deleteWord(self) -> None:
        start = self.cursor
        while start and self.buffer[start - 1] == " ":
            start -= 1
        while start and self.buffer[start - 1] != " ":
            start -= 1
        del self.buffer[start : self.cursor]
        self.cursor = start

    def _submit(self) -> Submitted:
        line = self.line
        if line.strip() and (not self.history or self.history[-1] != line):
            self.history.append(line)
            del self.history[: -self.historySize]
        self.buffer = []
        self.cursor = 0
        self._scroll = 0
        self._historyIndex = len(self.history)
        self._draft = []
        return Submitted(line)

    def _historyMove(self, step: int) -> None:
        index = self._historyIndex + step
        if index < 0 or index > len(self.history):
            return
        if self._historyIndex == len(self.history):
            self._draft = list(self.buffer)
        self._historyIndex = index
        self.buffer = list(self.history[index]) if index < len(self.history) else list(self._draft)
        self.cursor = len(self.buffer)

    def render(self, width: int) -> tuple[str, int]:
        """
        The prompt and as much of the line as fits in C{width} columns
        (scrolled sideways to keep the cursor in view, with C{<} / C{>} where
        it is cut), and the column of the cursor. Never wider than
        C{width - 1}, so the terminal never wraps it.
        """
        prompt = printable(self.prompt)
        promptWidth = cellWidth(prompt)
        room = max(4, width - 1 - promptWidth)
        chars = [printable(ch) for ch in self.buffer]
        widths = clusterWidths(chars)
        if sum(widths) <= room:
            self._scroll = 0
            return prompt + "".join(chars), promptWidth + sum(widths[: self.cursor])
        # Keep the cursor within the shown window, one column kept for the
        # markers on either side.
        inner = room - 2
        if self.cursor < self._scroll:
            self._scroll = self.cursor
        while sum(widths[self._scroll : self.cursor]) > inner - 1:
            self._scroll += 1
        start = self._scroll
        shown, used = [], 0
        for ch, w in zip(chars[start:], widths[start:]):
            if used + w > inner:
                break
            shown.append(ch)
            used += w
        left = "<" if start > 0 else " "
        right = ">" if start + len(shown) < len(chars) else ""
        text = prompt + left + "".join(shown) + right
        column = promptWidth + 1 + sum(widths[start : self.cursor])
        return text, column
