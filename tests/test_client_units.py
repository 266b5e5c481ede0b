"""
chatd-client's parts without a server: saved file names, progress, the line
editor, the command language and the console's output.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase

from chatd.client.base import WriteQueue
from chatd.client.console import ScriptConsole, indented
from chatd.client.files import IncomingFile, Progress, formatDuration, formatSize, safeFileName
from chatd.client.lineedit import EndOfInput, Interrupt, LineEditor, Submitted, cellWidth
from chatd.client.msrp import MsrpChatClient, MsrpClientProtocol
from chatd.client.runner import Command, CommandError, CommandRunner, arguments
from chatd.msrp import codec
from chatd.msrp.codec import clientListText, parseClientListText


class SafeFileNameTests(TestCase):
    def test_names(self) -> None:
        for given, saved in [
            ("doc.txt", "doc.txt"),
            ("../../etc/x", "x"),
            ("/etc/passwd", "passwd"),
            ("..\\..\\boot.ini", "boot.ini"),
            ("C:\\temp\\a b.txt", "a b.txt"),
            ("..", "file"),
            (".", "file"),
            ("", "file"),
            ("dir/", "file"),
            (".bashrc", "bashrc"),
            ("a\x1b[2Jb\x00c", "a[2Jbc"),
            ("bi\u202edi", "bidi"),
            ("  spaced  ", "spaced"),
            ("ñandú.jpg", "ñandú.jpg"),
        ]:
            self.assertEqual(safeFileName(given), saved, given)

    def test_long(self) -> None:
        name = safeFileName("á" * 300 + ".tar")
        self.assertTrue(name.endswith(".tar"))
        self.assertLessEqual(len(name.encode("utf-8")), 200)
        name.encode("utf-8")  # cut on a character boundary


class IncomingFileTests(TestCase):
    def setUp(self) -> None:
        self.folder = os.path.abspath(self.mktemp())
        os.makedirs(self.folder)

    def receive(self, name: str, content: bytes) -> str:
        incoming = IncomingFile(self.folder, name)
        incoming.write(content)
        return incoming.finish()

    def test_neverReplaces(self) -> None:
        self.assertEqual(self.receive("a.txt", b"1"), os.path.join(self.folder, "a.txt"))
        self.assertEqual(self.receive("../a.txt", b"2"), os.path.join(self.folder, "a (1).txt"))
        self.assertEqual(self.receive("a.txt", b"3"), os.path.join(self.folder, "a (2).txt"))
        self.assertEqual(self.receive("x", b"4"), os.path.join(self.folder, "x"))
        self.assertEqual(self.receive("x", b"5"), os.path.join(self.folder, "x (1)"))
        self.assertEqual(sorted(os.listdir(self.folder)), ["a (1).txt", "a (2).txt", "a.txt", "x", "x (1)"])

    def test_symbolicLinkNotFollowed(self) -> None:
        target = os.path.abspath(self.mktemp())
        os.symlink(target, os.path.join(self.folder, "link"))
        self.assertEqual(self.receive("link", b"data"), os.path.join(self.folder, "link (1)"))
        self.assertFalse(os.path.exists(target))

    def test_whileReceivingOnlyAHiddenFile(self) -> None:
        incoming = IncomingFile(self.folder, "big.bin")
        incoming.write(b"part")
        (name,) = os.listdir(self.folder)
        self.assertTrue(name.startswith(".chatd-") and name.endswith(".part"), name)
        incoming.discard()
        self.assertEqual(os.listdir(self.folder), [])


class Recorder:
    def __init__(self) -> None:
        self.seen: list[str] = []

    def progressChanged(self, progress: Progress) -> None:
        self.seen.append(progress.render())


class ProgressTests(TestCase):
    def test_render(self) -> None:
        clock = Clock()
        recorder = Recorder()
        progress = Progress("send a -> b", 4 * 1024 * 1024, clock, recorder)
        self.assertEqual(
            recorder.seen[-1], "send a -> b [--------------------]   0% 0 B/4.0 MiB --/s ETA --:--"
        )
        clock.advance(2)
        progress.advance(1024 * 1024)
        self.assertEqual(
            recorder.seen[-1],
            "send a -> b [#####---------------]  25% 1.0 MiB/4.0 MiB 512.0 KiB/s ETA 0:06",
        )
        clock.advance(2)
        progress.finish()
        self.assertEqual(
            recorder.seen[-1],
            "send a -> b [####################] 100% 4.0 MiB/4.0 MiB 1.0 MiB/s in 0:04",
        )

    def test_cutShort(self) -> None:
        clock = Clock()
        recorder = Recorder()
        progress = Progress("recv a <- b", 10, clock, recorder)
        progress.advance(3)
        progress.finish(False)
        self.assertTrue(recorder.seen[-1].endswith(" 30% 3 B/10 B --/s cut short"), recorder.seen[-1])

    def test_empty(self) -> None:
        recorder = Recorder()
        Progress("send e -> b", 0, Clock(), recorder).finish()
        self.assertIn(" 100% 0 B/0 B ", recorder.seen[-1])

    def test_formats(self) -> None:
        self.assertEqual(
            [formatSize(n) for n in (0, 1023, 1024, 1536, 5 * 1024**3)],
            ["0 B", "1023 B", "1.0 KiB", "1.5 KiB", "5.0 GiB"],
        )
        self.assertEqual([formatDuration(s) for s in (0, 59.6, 61, 3723)], ["0:00", "1:00", "1:01", "1:02:03"])


class ScriptConsoleTests(TestCase):
    def setUp(self) -> None:
        self.folder = os.path.abspath(self.mktemp())
        os.makedirs(self.folder)
        self.out = open(os.path.join(self.folder, "out"), "w+b")
        self.err = open(os.path.join(self.folder, "err"), "w+b")
        self.addCleanup(self.out.close)
        self.addCleanup(self.err.close)
        self.clock = Clock()
        self.console = ScriptConsole(self.clock, self.out.fileno(), self.err.fileno())

    def read(self, f) -> str:
        f.seek(0)
        return f.read().decode("utf-8")

    def test_lines(self) -> None:
        self.console.arrival("alice", "hola\nsegunda línea")
        self.console.arrival("alice", "todos", "all")
        self.console.result("2 users online")
        self.console.error("zed is not online")
        self.console.arrival("evil\x1b[2J", "\x1b]0;owned\x07text")
        self.assertEqual(
            self.read(self.out),
            "[alice] hola\n  segunda línea\n[alice -> all] todos\n* 2 users online\n"
            "! zed is not online\n[evil\ufffd[2J] \ufffd]0;owned\ufffdtext\n",
        )
        self.assertEqual(self.console.errors, 1)
        self.assertEqual(self.read(self.err), "")

    def test_progressMilestones(self) -> None:
        """Not on a terminal: a line at 0, 25, 50 and 75 percent, and the last one."""
        progress = Progress("send f -> b", 100, self.clock, self.console)
        for _ in range(10):
            self.clock.advance(1)
            progress.advance(10)
        progress.finish()
        percents = [line.split("]")[1].split("%")[0].strip() for line in self.read(self.err).splitlines()]
        self.assertEqual(percents, ["0", "30", "50", "80", "100"])
        self.assertTrue(self.read(self.err).splitlines()[-1].endswith("in 0:10"))


class LineEditorTests(TestCase):
    def test_typingAndEditing(self) -> None:
        editor = LineEditor("> ")
        self.assertEqual(editor.feed("msg bob hólá".encode()), [])
        self.assertEqual(editor.line, "msg bob hólá")
        # Left twice, Backspace, Delete, Home, Ctrl-E (end).
        editor.feed(b"\x1b[D\x1b[D\x7f\x1b[3~")
        self.assertEqual(editor.line, "msg bob há")
        editor.feed(b"\x1b[HX\x05Y")
        self.assertEqual(editor.line, "Xmsg bob háY")
        # Ctrl-W deletes the word before the cursor; Ctrl-U the whole start.
        editor.feed(b"\x17")
        self.assertEqual(editor.line, "Xmsg bob ")
        self.assertEqual(editor.feed(b"hi\r\n"), [Submitted("Xmsg bob hi")])
        self.assertEqual(editor.line, "")

    def test_utf8SplitAcrossReads(self) -> None:
        editor = LineEditor()
        data = "ñ".encode()
        editor.feed(data[:1])
        editor.feed(data[1:])
        self.assertEqual(editor.line, "ñ")

    def test_history(self) -> None:
        editor = LineEditor()
        editor.feed(b"one\rtwo\rdraft")
        editor.feed(b"\x1b[A")
        self.assertEqual(editor.line, "two")
        editor.feed(b"\x1bOA\x1bOA")  # SS3 arrows; no further than the oldest
        self.assertEqual(editor.line, "one")
        editor.feed(b"\x1b[B\x1b[B")
        self.assertEqual(editor.line, "draft")

    def test_controlKeys(self) -> None:
        editor = LineEditor()
        self.assertEqual(editor.feed(b"\x04"), [EndOfInput()])
        self.assertEqual(editor.feed(b"ab\x03"), [Interrupt()])
        editor.feed(b"\x01\x04")  # Ctrl-D on a line deletes
        self.assertEqual(editor.line, "b")
        editor.feed(b"\x1b[200~pasted\x1b[201~")
        self.assertEqual(editor.line, "pastedb")

    def test_renderFitsOneRow(self) -> None:
        editor = LineEditor("alice> ")
        editor.feed(b"x" * 100)
        text, column = editor.render(40)
        self.assertLessEqual(cellWidth(text), 39)
        self.assertTrue(text.startswith("alice> <"))
        self.assertEqual(column, cellWidth(text))
        editor.feed(b"\x01")
        text, column = editor.render(40)
        self.assertEqual(column, 8)
        self.assertTrue(text.endswith(">"))

    def test_wideCharacters(self) -> None:
        editor = LineEditor("> ")
        editor.feed("日本".encode())
        self.assertEqual(editor.render(80), ("> 日本", 6))

    def test_emojiJoinedByZwj(self) -> None:
        """
        A family emoji (man, ZWJ, woman, ZWJ, girl) is one glyph of two
        columns: the cursor after it is drawn two columns on, not six.
        """
        family = "\U0001F468\u200d\U0001F469\u200d\U0001F467"
        self.assertEqual(cellWidth(family), 2)
        self.assertEqual(cellWidth("e\u0301"), 1)
        editor = LineEditor("> ")
        editor.feed((family + "x").encode())
        self.assertEqual(editor.render(80), ("> " + family + "x", 5))


class ArgumentsTests(TestCase):
    def test_arguments(self) -> None:
        self.assertEqual(arguments("bob  hola  que tal ", "msg NAME TEXT"), ["bob", "hola  que tal "])
        self.assertEqual(arguments("x", "info NAME"), ["x"])
        self.assertEqual(arguments("", "list"), [])
        with self.assertRaises(CommandError) as raised:
            arguments("bob", "msg NAME TEXT")
        self.assertEqual(str(raised.exception), "usage: msg NAME TEXT")

    def test_indented(self) -> None:
        self.assertEqual(indented("a\r\nb\nc"), ["a", "  b", "  c"])

    def test_msrpListText(self) -> None:
        names = ["clt1", "ñab", "alberto"]
        self.assertEqual(parseClientListText(clientListText(names)), names)
        self.assertEqual(parseClientListText("Lista de clientes:\n"), [])


class FakeClient:
    protocolName = "fake"
    closedByUs = False

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.pending: list[defer.Deferred] = []
        self.drained = False
        self._closed = defer.Deferred()

    def commands(self):
        return [Command("msg NAME TEXT", "send", self.message)]

    def unsupported(self):
        return {"send": "no files here"}

    def message(self, rest: str):
        self.sent.append(rest)
        d = defer.Deferred()
        self.pending.append(d)
        return d

    def whenClosed(self):
        d = defer.Deferred()
        self._closed.addCallback(lambda r: (d.callback(r), r)[1])
        return d

    def drain(self):
        self.drained = True

    def quit(self):
        self.closedByUs = True
        self._closed.callback(None)
        return defer.succeed(None)

    def abort(self):
        self.quit()


class Lines:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.errors = 0
        self._watchers = []

    def error(self, text: str) -> None:
        self.errors += 1
        self.lines.append("! " + text)

    def result(self, text: str) -> None:
        self.lines.append("* " + text)

    def watch(self, watcher):
        self._watchers.append(watcher)
        return lambda: self._watchers.remove(watcher)

    def emit(self, line: str) -> None:
        self.lines.append(line)
        for watcher in list(self._watchers):
            watcher(line)


class RunnerTests(TestCase):
    def setUp(self) -> None:
        self.client = FakeClient()
        self.console = Lines()
        self.clock = Clock()
        self.runner = CommandRunner(self.client, self.console, self.clock, sequential=True, timeout=5)

    def test_sequentialAndEndOfInput(self) -> None:
        """Each command finishes before the next starts; the end drains, then quits."""
        self.runner.lineReceived("msg a 1")
        self.runner.lineReceived("MSG b 2")
        self.runner.endOfInput()
        self.assertEqual(self.client.sent, ["a 1"])
        self.client.pending[0].callback(None)
        self.assertEqual(self.client.sent, ["a 1", "b 2"])
        self.assertFalse(self.client.drained)
        self.client.pending[1].errback(CommandError("b is not online"))
        self.assertTrue(self.client.drained)
        self.assertEqual(self.successResultOf(self.runner.finished), 1)
        self.assertEqual(self.console.lines, ["! b is not online"])

    def test_unknownAndUnsupported(self) -> None:
        self.runner.lineReceived("send bob x")
        self.runner.lineReceived("frobnicate")
        self.runner.lineReceived("  # comment")
        self.assertEqual(
            self.console.lines,
            ["! send: no files here", "! unknown command: frobnicate (help lists the commands)"],
        )

    def test_expect(self) -> None:
        self.console.emit("[bob] old")
        self.runner.lineReceived("expect [bob] old")  # already printed: at once
        self.runner.lineReceived("expect [bob] new")
        self.runner.lineReceived("msg bob after")
        self.assertEqual(self.client.sent, [])
        self.console.emit("[bob] new")
        self.assertEqual(self.client.sent, ["bob after"])

    def test_expectTimesOut(self) -> None:
        self.runner.lineReceived("expect never")
        self.runner.lineReceived("msg bob not sent")
        self.clock.advance(5)
        self.assertEqual(self.client.sent, [])
        self.assertEqual(self.console.lines, ["! expect: no line contained 'never' within 5 s"])
        self.assertEqual(self.successResultOf(self.runner.finished), 1)

    def test_connectionClosed(self) -> None:
        self.client._closed.callback(None)
        self.assertEqual(self.console.lines, ["! the connection was closed by the server"])
        self.assertEqual(self.successResultOf(self.runner.finished), 1)


class MsrpCutFileTests(TestCase):
    """
    chatd-client (MSRP) and a file the server cut short: completed with zero
    bytes and followed at once by an ERROR naming it (docs/msrp.md). It is
    neither kept nor acknowledged.
    """

    def setUp(self) -> None:
        self.folder = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(self.folder, "inbox"))
        self.out = open(os.path.join(self.folder, "out"), "w+b")
        self.err = open(os.path.join(self.folder, "err"), "w+b")
        self.addCleanup(self.out.close)
        self.addCleanup(self.err.close)
        clock = Clock()
        console = ScriptConsole(clock, self.out.fileno(), self.err.fileno())
        options = SimpleNamespace(name="clt2", save_dir=os.path.join(self.folder, "inbox"))
        self.client = MsrpChatClient(options, console, clock)
        self.sent = StringTransport()
        self.client.outbound = WriteQueue(self.sent)
        self.wire = MsrpClientProtocol(self.client)

    def saved(self) -> list[str]:
        return sorted(os.listdir(os.path.join(self.folder, "inbox")))

    def lines(self) -> list[str]:
        self.out.seek(0)
        return self.out.read().decode("utf-8").splitlines()

    def file(self, content: bytes) -> bytes:
        return codec.encodeFileHeader(b"evil", b"half.bin", len(content)) + content

    def notice(self) -> bytes:
        return codec.encodeError(
            "Error al recibir el archivo. evil se desconectó; half.bin no se entregó.".encode()
        )

    def test_noticeInTheSameRead(self) -> None:
        self.wire.dataReceived(self.file(b"abc\x00\x00\x00") + self.notice())
        self.assertEqual(self.saved(), [])
        self.assertEqual(self.sent.value(), b"")  # no ACK
        self.assertEqual(
            self.lines(),
            ["! the file half.bin from evil was cut short: Error al recibir el archivo."
             " evil se desconectó; half.bin no se entregó."],
        )

    def test_noticeInARead(self) -> None:
        """The notice split from the file by TCP: the file saved is removed."""
        self.wire.dataReceived(self.file(b"abc\x00\x00\x00"))
        self.assertEqual(self.saved(), ["half.bin"])
        self.assertEqual(self.sent.value(), codec.encodeAck(b"half.bin"))
        self.wire.dataReceived(self.notice())
        self.assertEqual(self.saved(), [])

    def test_wholeFileKept(self) -> None:
        """A whole file followed by anything else (even an ERROR about another file) is kept."""
        other = codec.encodeError(
            "Error al recibir el archivo. bob_ se desconectó; otro.bin no se entregó.".encode()
        )
        self.wire.dataReceived(self.file(b"abcdef") + other)
        self.wire.dataReceived(codec.encodeMessage(b"evil", b"hola"))
        self.assertEqual(self.saved(), ["half.bin"])
        with open(os.path.join(self.folder, "inbox", "half.bin"), "rb") as f:
            self.assertEqual(f.read(), b"abcdef")
        self.assertEqual(self.sent.value(), codec.encodeAck(b"half.bin"))
