"""
chatd-client msrp in scripted mode against a real twistd (docs/client.md):
messages, the list, a file with its progress and ACK, and files from a
hostile sender.
"""

from __future__ import annotations

import os

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.trial.unittest import TestCase

from chatd.msrp import codec
from tests.test_client_support import ClientTestMixin
from tests.twistd import ByteCollector


def progressLines(text: str, label: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(label + " [")]


class MsrpClientTests(ClientTestMixin, TestCase):
    @defer.inlineCallbacks
    def rawSender(self, name: bytes) -> defer.Deferred:
        """A binary MSRP client written by hand with the codec, logged in as C{name}."""
        sender = ByteCollector()
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.ports["msrp"]), sender)
        self.addCleanup(lambda: (sender.transport.loseConnection(), sender.closed)[1])
        sender.transport.write(name + codec.encodeListRequest())
        yield sender.waitFor(lambda data: data.endswith(b"\n\x00"))
        sender.received = b""
        return sender

    @defer.inlineCallbacks
    def test_messagesAndFile(self):
        yield self.startServer(labels=["msrp"])
        content = os.urandom(300 * 1024)
        path = os.path.join(self.directory, "datos.bin")
        with open(path, "wb") as f:
            f.write(content)
        inbox = os.path.join(self.directory, "inbox")
        clt2 = yield self.loggedIn("msrp", "clt2", "--save-dir", inbox)

        clt1 = yield self.script(
            "msrp",
            "list\n"
            "info clt2\n"
            "msg clt2 hola, ¿qué tal?\n"
            "msg zzzz hola\n"
            "msg alberto hola\n"
            "all hola\n"
            f"send clt2 {path}\n",
            "--name", "clt1",
        )
        self.assertEqual(
            clt1.lines(),
            [
                "* logged in as clt1 (msrp, tcp:127.0.0.1:%d)" % self.ports["msrp"],
                "* 2 users online",
                "*   clt2",
                "*   clt1",
                "* clt2 is online",
                "* sent to clt2",
                "! Cliente objetivo no encontrado.",
                "! alberto is not online",
                "! all: MSRP binary clients cannot write to everyone",
                "* sent datos.bin to clt2 (307200 bytes)",
                # At the end of its input the client waited for the ACK.
                "* clt2 received datos.bin (ACK)",
            ],
        )
        self.assertExit(clt1, 1)
        # Progress on standard error: a bar at 0%, at milestones, and a last
        # line once everything was written.
        sent = progressLines(clt1.stderr, "send datos.bin -> clt2")
        self.assertRegex(sent[0], r"\[-{20}\]   0% 0 B/300\.0 KiB --/s ETA --:--$")
        self.assertRegex(sent[-1], r"\[#{20}\] 100% 300\.0 KiB/300\.0 KiB \S+ \S+/s in 0:0\d$")
        self.assertEqual(len(sent), len(set(sent)))

        yield clt2.waitFor("saved as")
        code = yield self.finish(clt2)
        self.assertEqual(code, 0)
        self.assertEqual(
            clt2.lines(),
            [
                "* logged in as clt2 (msrp, tcp:127.0.0.1:%d)" % self.ports["msrp"],
                "[clt1] hola, ¿qué tal?",
                f"[clt1] file datos.bin (307200 bytes) saved as {inbox}/datos.bin",
            ],
        )
        received = progressLines(clt2.stderr, "recv datos.bin <- clt1")
        self.assertRegex(received[0], r"   0% ")
        self.assertRegex(received[-1], r" 100% .* in \d+:\d\d$")
        self.assertEqual(self.saved(inbox), {"datos.bin": content})

    @defer.inlineCallbacks
    def test_hostileFileNames(self):
        """Whatever name the sender gives, the file lands inside --save-dir, never over another."""
        yield self.startServer(labels=["msrp"])
        inbox = os.path.join(self.directory, "inbox")
        clt2 = yield self.loggedIn("msrp", "clt2", "--save-dir", inbox)
        evil = yield self.rawSender(b"evil")
        names = [b"../../etc/x", b"/etc/passwd", b"..", b"..\\..\\boot.ini", b"x", b"a\x1b[2Jb"]
        for number, name in enumerate(names):
            evil.transport.write(codec.encodeFileHeader(b"clt2", name, 2) + b"%02d" % number)
        # clt2 acknowledges each, with the name as the sender wrote it.
        acks = b"".join(codec.encodeAck(name) for name in names)
        yield evil.waitFor(lambda data: len(data) >= len(acks))
        self.assertEqual(evil.received, acks)
        code = yield self.finish(clt2)
        self.assertEqual(code, 0)
        self.assertEqual(
            self.saved(inbox),
            {
                "x": b"00",
                "passwd": b"01",
                "file": b"02",
                "boot.ini": b"03",
                "x (1)": b"04",
                "a[2Jb": b"05",
            },
        )
        for outside in ("etc", "x", "passwd", os.path.join("..", "etc"), os.path.join("..", "x")):
            self.assertFalse(os.path.exists(os.path.join(inbox, "..", outside)), outside)
        self.assertIn(f"[evil] file ../../etc/x (2 bytes) saved as {inbox}/x", clt2.lines())
        # The escape sequence in the name is shown harmless.
        self.assertIn(f"[evil] file a\ufffd[2Jb (2 bytes) saved as {inbox}/a[2Jb", clt2.lines())

    @defer.inlineCallbacks
    def test_fileCutShort(self):
        """
        A sender that leaves mid-file: the server completes the file with
        zero bytes and says at once that it was not delivered (docs/msrp.md);
        the client leaves no file behind, partial or not, does not
        acknowledge it, and goes on.
        """
        yield self.startServer(labels=["msrp"])
        inbox = os.path.join(self.directory, "inbox")
        clt2 = yield self.loggedIn("msrp", "clt2", "--save-dir", inbox)
        evil = yield self.rawSender(b"evil")
        evil.transport.write(codec.encodeFileHeader(b"clt2", b"half.bin", 10) + b"abc")
        yield clt2.waitFor("recv half.bin <- evil", "err")
        evil.transport.loseConnection()
        notice = "Error al recibir el archivo. evil se desconectó; half.bin no se entregó."
        yield clt2.waitFor(f"! the file half.bin from evil was cut short: {notice}")
        code = yield self.finish(clt2, "list\n")
        self.assertEqual(code, 1)  # it saw an error
        self.assertEqual(
            clt2.lines()[1:],
            [
                f"! the file half.bin from evil was cut short: {notice}",
                "* 1 user online",
                "*   clt2",
            ],
        )
        self.assertRegex(progressLines(clt2.stderr, "recv half.bin <- evil")[-1], r"cut short$")
        self.assertEqual(self.saved(inbox), {})

    @defer.inlineCallbacks
    def test_readmeExample(self):
        """README.md: an MSRP user writes to 'ana', a protobuf user of a 3-byte name."""
        yield self.startServer(labels=["protobuf", "msrp"])
        ana = yield self.loggedIn("protobuf", "ana")
        bea1 = yield self.script("msrp", "msg ana hola\n", "--name", "bea1")
        self.assertExit(bea1, 0)
        self.assertEqual(
            bea1.lines(),
            [f"* logged in as bea1 (msrp, tcp:127.0.0.1:{self.ports['msrp']})", "* sent to ana"],
        )
        yield ana.waitFor("[bea1] hola")
        code = yield self.finish(ana)
        self.assertEqual(code, 0)

    @defer.inlineCallbacks
    def test_longNames(self):
        """
        Users whose names are longer than 4 bytes are written to, and sent
        files, by their full name or by the slot they appear under.
        """
        yield self.startServer()
        path = os.path.join(self.directory, "nota.txt")
        with open(path, "wb") as f:
            f.write(b"hola\n")
        inbox = os.path.join(self.directory, "inbox")
        carla = yield self.loggedIn("protobuf", "carla")
        lunaria = yield self.loggedIn(
            "msgr", "lunaria", "--password", "l", "--register", "--save-dir", inbox
        )
        bea1 = yield self.loggedIn("msrp", "bea1", "--ack-wait", "0")
        carla.write("msg bea1 hola bea1\n")
        yield bea1.waitFor("[carl] carla: hola bea1")
        code = yield self.finish(
            bea1,
            "list\n"
            "info carla\n"
            "msg carl hola\n"
            "msg CARLA qué tal\n"
            f"send lunaria {path}\n"
            f"send luna {path}\n"
            f"send carla {path}\n"
            "msg carlota hola\n",
        )
        self.assertEqual(code, 1)
        self.assertEqual(
            bea1.lines()[1:],
            [
                "[carl] carla: hola bea1",
                "* 3 users online",
                "*   carla (carl)",
                "*   lunaria (luna)",
                "*   bea1",
                "* carla (carl) is online",
                "* sent to carl",
                "* sent to CARLA",
                "* sent nota.txt to lunaria (5 bytes)",
                "* sent nota.txt to luna (5 bytes)",
                "! carla no puede recibir archivos.",
                "! carlota is not online",
                "* no ACK for nota.txt within 0 s (users of other protocols never send one)",
            ],
        )
        yield carla.waitFor("[bea1] qué tal")
        self.assertEqual(carla.lines()[-2:], ["[bea1] hola", "[bea1] qué tal"])
        yield lunaria.waitFor("nota (1).txt")
        self.assertEqual(self.saved(inbox), {"nota.txt": b"hola\n", "nota (1).txt": b"hola\n"})

    @defer.inlineCallbacks
    def test_nameTaken(self):
        yield self.startServer(labels=["msrp"])
        clt1 = yield self.loggedIn("msrp", "clt1")
        other = yield self.script("msrp", "list\n", "--name", "CLT1")
        self.assertExit(other, 1)
        self.assertEqual(other.lines(), ["! login refused: El nombre CLT1 ya está en uso."])
        code = yield self.finish(clt1)
        self.assertEqual(code, 0)

    @defer.inlineCallbacks
    def test_usage(self):
        """A name that is not 4 bytes is a usage error (exit status 2), before connecting."""
        process = self.client("msrp", "--name", "alberto", port="none")
        yield process.ended
        self.assertExit(process, 2)
        self.assertIn("MSRP names are exactly 4 bytes", process.stderr)
