"""
The load generator (chatd.loadgen) and the relay baseline (bench/relay.py):
its pieces on their own, and tiny runs of the benchmark scenarios against a
real `twistd -n chatd` on free ports of 127.0.0.1. They check counts and
bytes, never times: how fast anything went is `make bench`'s business.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from chatd.loadgen import accounts, scenarios, wire
from chatd.loadgen.loop import Loop, Session
from chatd.loadgen.traffic import Traffic
from chatd.loadgen.records import (
    AnswerLineCounter,
    InterleavedRecordCounter,
    RecordCounter,
    template,
)
from chatd.harness import ServerProcess, chatdCommand, chatdOptions
from chatd.msgr import codec as msgr
from chatd.msrp import codec as msrp
from chatd.presence import nameSkeleton
from chatd.protobuf import chat_pb2
from chatd.protobuf.framing import DelimitedFramer, RawRequestFramer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELAY = os.path.join(ROOT, "bench", "relay.py")
ENDPOINT = "tcp:0:interface=127.0.0.1"
OFF = "none"

_known: list[set] = []


def knownOptions() -> set:
    """chatd's options, read once (each read starts a twistd --help)."""
    if not _known:
        _known.append(chatdOptions())
    return _known[0]


class ServerCase(SynchronousTestCase):
    """Starts servers that are stopped when the test ends."""

    def chatd(self, options: dict, labels: list[str]) -> scenarios.Target:
        directory = self.mktemp()
        os.makedirs(directory)
        argv, _ = chatdCommand(options, knownOptions())
        server = ServerProcess(argv, labels, cwd=directory)
        self.addCleanup(server.stop)
        ports = server.start()
        framing = options.get("protobuf-framing", "raw")
        return scenarios.Target(ports=ports, pid=server.pid, framing=framing)

    def protobuf(self, framing: str) -> scenarios.Target:
        return self.chatd(
            {"protobuf": ENDPOINT, "protobuf-framing": framing, "msrp": OFF,
             "http": OFF, "msgr": OFF, "db": OFF},
            ["protobuf"],
        )

    def everything(self, accountCount: int) -> scenarios.Target:
        directory = self.mktemp()
        os.makedirs(directory)
        db = os.path.abspath(os.path.join(directory, "accounts.sqlite3"))
        accounts.seedDatabase(db, scenarios.msgrNames(accountCount), "loadgen-password")
        return self.chatd(
            {"protobuf": ENDPOINT, "msrp": ENDPOINT, "http": ENDPOINT, "msgr": ENDPOINT, "db": db},
            ["protobuf", "msrp", "msgr", "msgr-http"],
        )

    def assertAllDelivered(self, result: dict) -> None:
        self.assertEqual(
            (result["errors"], result["missing"], result["unanswered"], result["ok"]),
            ([], 0, 0, True),
        )
        self.assertGreater(result["total_sent"], 0)


#: Runs are short; they prove correctness, not speed.
TINY = {"warmup": 0.0, "duration": 0.1, "mode": "all", "threads": True}


class RecordCounterTests(SynchronousTestCase):
    """Counting fixed-size deliveries without parsing each one."""

    def setUp(self) -> None:
        self.record, self.offset = template(
            b"head:" + wire.CALIBRATION_TEXT + b":tail", wire.CALIBRATION_TEXT
        )

    def stream(self, stamps: list[int]) -> bytes:
        return b"".join(
            self.record[: self.offset] + wire.makeStamp(s)
            + self.record[self.offset + wire.STAMP_LENGTH :]
            for s in stamps
        )

    def test_everySplit(self) -> None:
        """However the stream is cut, every record is counted and stamped once."""
        data = self.stream([1, 2, 3])
        for cut in range(len(data) + 1):
            counter = RecordCounter(self.record, self.offset, "all")
            first = counter.feed(data[:cut])
            second = counter.feed(data[cut:])
            self.assertEqual(first[0] + second[0], 3)
            self.assertEqual([wire.readStamp(s) for s in first[1] + second[1]], [1, 2, 3])

    def test_sampleMode(self) -> None:
        """In sample mode every record is counted, one stamp per read."""
        data = self.stream([5, 6, 7, 8])
        size = len(self.record)
        counter = RecordCounter(self.record, self.offset, "sample")
        count, stamps = counter.feed(data[: size + 3])
        self.assertEqual((count, [wire.readStamp(s) for s in stamps]), (1, [5]))
        count, stamps = counter.feed(data[size + 3 :])
        self.assertEqual((count, [wire.readStamp(s) for s in stamps]), (3, [7]))

    def test_unexpected(self) -> None:
        """A record that is not the template but for its stamp is an error."""
        data = bytearray(self.stream([1, 2]))
        data[-1:] = b"X"
        counter = RecordCounter(self.record, self.offset, "all")
        self.assertRaises(wire.UnexpectedFrame, counter.feed, bytes(data))
        sample = RecordCounter(self.record, self.offset, "sample")
        self.assertRaises(wire.UnexpectedFrame, sample.feed, b"X" + bytes(data))

    def test_answerLines(self) -> None:
        """MSGR answers are counted by their ends; a refusal is an error."""
        lines = b"#RESPUESTA||-||2||#MSJ||g000||704\n#RESPUESTA||-||10||#MSJ||g000||704\n"
        for cut in range(len(lines) + 1):
            counter = AnswerLineCounter()
            self.assertEqual(counter.feed(lines[:cut]) + counter.feed(lines[cut:]), 2)
        counter = AnswerLineCounter()
        self.assertRaises(
            wire.UnexpectedFrame, counter.feed, b"#RESPUESTA||-||2||#MSJ||g000||804\n"
        )


class DialectTests(SynchronousTestCase):
    """What the load generator writes is what chatd's own decoders read."""

    def test_protobuf(self) -> None:
        for framing, framer in (("raw", RawRequestFramer()), ("delimited", DelimitedFramer())):
            speaker = wire.dialect("protobuf", framing)
            data = speaker.login("ana") + speaker.message("ana", "bea", wire.CALIBRATION_TEXT)
            requests = [chat_pb2.ClientRequest.FromString(f) for f in framer.feed(data)]
            self.assertEqual(
                [(r.option, r.newuser.username, r.messg.receiver, r.messg.text) for r in requests],
                [(0, "ana", "", ""), (4, "", "bea", wire.CALIBRATION_TEXT.decode())],
            )

    def test_msrp(self) -> None:
        speaker = wire.dialect("msrp")
        data = speaker.login("ana1") + speaker.message("ana1", "bea1", b"hola")
        self.assertEqual(data[:4], b"ana1")
        frames = list(msrp.MsrpFrameDecoder().feed(data[4:]))
        self.assertEqual(
            frames,
            [msrp.Message(b"ana1", speaker.LOGIN_TEXT), msrp.Message(b"bea1", b"hola")],
        )

    def test_msgr(self) -> None:
        speaker = wire.dialect("msgr")
        line = speaker.message("g000", "g001", b"hola", token="TOKEN")
        self.assertEqual(
            msgr.splitFields(msgr.decodeLine(line.rstrip(b"\n"))),
            ["#MSJ", "TOKEN", "g000", "g001", "hola"],
        )
        self.assertRaises(wire.LoginFailed, speaker.login, "g000", None)

    def test_shortNames(self) -> None:
        self.assertEqual(
            [scenarios.shortName("m", i) for i in (0, 32, 33, 33**3 - 1)],
            ["m000", "m00z", "m010", "mzzz"],
        )
        self.assertRaises(ValueError, scenarios.shortName, "m", 33**3)

    def test_shortNamesNeverLookAlike(self) -> None:
        """Scenario 4 logs in thousands at once: no name may look like another."""
        names = [scenarios.shortName("r", i) for i in range(5000)]
        self.assertEqual(len({nameSkeleton(n) for n in names}), len(names))

    def test_limitsTurnedOff(self) -> None:
        """The limits this chatd has are given 0 (no limit), and no others."""
        argv, off = chatdCommand({"rate": "5"}, {"rate", "max-conns", "protobuf"})
        self.assertEqual(off, ["max-conns"])
        self.assertEqual(argv[argv.index("chatd") + 1 :], ["--max-conns", "0", "--rate", "5"])

    def test_addressLockoutRaised(self) -> None:
        """
        The MSGR address lockout has no "off": it is raised out of the load
        generator's reach (scenario 4 logs 500 accounts in from one address,
        and a login being checked counts against it).
        """
        argv, off = chatdCommand({}, {"msgr-lockout-address-failures", "msgr"})
        self.assertEqual(off, ["msgr-lockout-address-failures"])
        self.assertEqual(
            argv[argv.index("chatd") + 1 :], ["--msgr-lockout-address-failures", "1000000"]
        )
        argv, off = chatdCommand({"msgr-lockout-address-failures": "3"}, {"msgr-lockout-address-failures"})
        self.assertEqual((off, argv[-1]), ([], "3"))


class IrcWireTests(SynchronousTestCase):
    """The load generator's IRC, for the ngircd baseline of scenario 1, on bytes."""

    #: ngircd's welcome, as it sends it (shortened: 002 to 005, LUSERS).
    WELCOME = (
        b":irc.test 001 ana :Welcome to the Internet Relay Network ana!~ana@127.0.0.1\r\n"
        b":irc.test 005 ana NICKLEN=30 :are supported on this server\r\n"
        b":irc.test 251 ana :There are 2 users and 0 services on 1 servers\r\n"
        b":irc.test 375 ana :- irc.test message of the day\r\n"
        b":irc.test 372 ana :- chatd bench\r\n"
        b":irc.test 376 ana :End of MOTD command\r\n"
    )

    def setUp(self) -> None:
        self.irc = wire.dialect("irc")

    def delivery(self, stamp: int, sender: bytes = b"ana") -> bytes:
        return b":%s!~%s@127.0.0.1 PRIVMSG bea :%s\r\n" % (
            sender, sender, wire.makeText(wire.makeStamp(stamp))
        )

    def test_registrationAndMessage(self) -> None:
        """NICK and USER register; a message is a PRIVMSG with the text as its last parameter."""
        self.assertEqual(self.irc.login("ana"), b"NICK ana\r\nUSER ana 0 * :ana\r\n")
        self.assertEqual(
            self.irc.message("ana", "bea", wire.CALIBRATION_TEXT),
            b"PRIVMSG bea :" + wire.CALIBRATION_TEXT + b"\r\n",
        )

    def test_loggedInAtTheWelcomesEnd(self) -> None:
        """
        A client is logged in at the end of the welcome (376, or 422 when
        the server has no message of the day), not at 001: nothing of the
        welcome may arrive among deliveries. What follows is kept.
        """
        for end in (b":irc.test 376 ana :End of MOTD command\r\n",
                    b":irc.test 422 ana :MOTD file is missing\r\n"):
            welcome = self.WELCOME.rpartition(b":irc.test 376")[0] + end
            after = self.delivery(1)
            reader = self.irc.loginReader("ana")
            self.assertFalse(reader.feed(welcome[:-len(end) - 3]))
            self.assertTrue(reader.feed(welcome[-len(end) - 3:] + after))
            self.assertEqual(reader.rest, after)

    def test_refusedRegistration(self) -> None:
        """An error numeric or ERROR while registering is a refused login, with the server's words."""
        for line in (b":irc.test 433 * ana :Nickname already in use\r\n",
                     b":irc.test 432 * 1ana :Erroneous nickname\r\n",
                     b"ERROR :Closing connection\r\n"):
            reader = self.irc.loginReader("ana")
            with self.assertRaises(wire.LoginFailed) as caught:
                reader.feed(line)
            self.assertEqual(str(caught.exception), line.decode().rstrip("\r\n"))

    def test_reader(self) -> None:
        """A PRIVMSG is a delivery from its prefix's nick; PING, errors and the rest are told apart."""
        data = (self.delivery(7) + b"PING :irc.test\r\n"
                + b":irc.test 401 ana nobody :No such nick or channel name\r\n"
                + b":irc.test NOTICE ana :hello\r\n")
        for cut in range(len(data) + 1):
            reader = self.irc.reader()
            items = reader.feed(data[:cut]) + reader.feed(data[cut:])
            self.assertEqual(b"".join(raw for raw, _ in items), data)
            delivery, ping, error, other = (item for _, item in items)
            self.assertEqual(
                (delivery.sender, delivery.receiver, delivery.text),
                ("ana", "bea", wire.makeText(wire.makeStamp(7))),
            )
            self.assertEqual(self.irc.pong(ping), b"PONG :irc.test\r\n")
            self.assertEqual((error.ok, error.detail),
                             (False, ":irc.test 401 ana nobody :No such nick or channel name"))
            self.assertEqual(other.value, ":irc.test NOTICE ana :hello")
        self.assertRaises(wire.UnexpectedFrame, self.irc.reader().feed, b":" + b"x" * 600)

    def counter(self, mode: str, answers: list) -> InterleavedRecordCounter:
        record, offset = template(
            b":ana!~ana@127.0.0.1 PRIVMSG bea :" + wire.CALIBRATION_TEXT + b"\r\n",
            wire.CALIBRATION_TEXT,
        )
        return InterleavedRecordCounter(
            record, offset, mode, lambda line: answers.append(self.irc.unasked(line))
        )

    def test_pingsAmongDeliveries(self) -> None:
        """
        However the stream is cut, and in both modes, a PING between
        deliveries is answered with PONG, once, and is not counted;
        every delivery is.
        """
        data = (self.delivery(1) + b"PING :irc.test\r\n" + self.delivery(2) + self.delivery(3)
                + b"PING :again\r\n" + b"PING :and again\r\n" + self.delivery(4))
        for mode in ("all", "sample"):
            for cut in range(len(data) + 1):
                answers: list = []
                counter = self.counter(mode, answers)
                first, second = counter.feed(data[:cut]), counter.feed(data[cut:])
                self.assertEqual((first[0] + second[0], counter.count), (4, 4), (mode, cut))
                self.assertEqual(
                    answers, [b"PONG :irc.test\r\n", b"PONG :again\r\n", b"PONG :and again\r\n"]
                )
                if mode == "all":
                    self.assertEqual([wire.readStamp(s) for s in first[1] + second[1]], [1, 2, 3, 4])

    def test_anythingElseIsAnError(self) -> None:
        """An error numeric or a notice among deliveries is an error, not a lower figure."""
        for line in (b":irc.test 401 ana nobody :No such nick or channel name\r\n",
                     b"ERROR :Closing connection\r\n",
                     b":irc.test NOTICE bea :hello\r\n"):
            counter = self.counter("all", [])
            self.assertRaises(wire.UnexpectedFrame, counter.feed, self.delivery(1) + line + self.delivery(2))
        counter = self.counter("sample", [])
        self.assertRaises(wire.UnexpectedFrame, counter.feed, self.delivery(1) + b"P" * 600)


class LoopTests(SynchronousTestCase):
    """The load generator's sockets."""

    def test_refusedSaysWhere(self) -> None:
        """A refused connection says which address refused it (a scenario has several servers)."""
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            address = probe.getsockname()  # nothing listens there once it is closed
        loop = Loop()
        self.addCleanup(loop.closeAll)
        session = Session("ana", wire.dialect("irc"))
        loop.connect(session, address)
        deadline = time.monotonic() + 10
        while session.closed is None and time.monotonic() < deadline:
            loop.poll(0.1)
        self.assertEqual(session.closed, f"connect to 127.0.0.1:{address[1]} failed: ECONNREFUSED")


class IrcTrafficTests(SynchronousTestCase):
    """
    A receiver and a sender of the load generator's IRC against a server
    played by this test on a real loopback socket: a PING wherever it comes
    is answered, and counts stay right.
    """

    def setUp(self) -> None:
        listener = socket.socket()
        self.addCleanup(listener.close)
        listener.bind(("127.0.0.1", 0))
        listener.listen(2)
        self.loop = Loop()
        self.addCleanup(self.loop.closeAll)
        irc = wire.dialect("irc")
        self.peers = {}
        self.sessions = {}
        for name in ("ana", "bea"):
            session = Session(name, irc)
            self.loop.connect(session, listener.getsockname())
            peer, _ = listener.accept()
            self.addCleanup(peer.close)
            peer.settimeout(10)
            self.peers[name], self.sessions[name] = peer, session
        while any(s.connecting for s in self.sessions.values()):
            self.loop.poll(0.1)
        self.traffic = Traffic(self.loop, mode="all", windowSize=4)
        self.traffic.addPair(self.sessions["ana"], self.sessions["bea"])

    def serverReads(self, name: str, size: int) -> bytes:
        """What the client C{name} wrote, C{size} bytes, while the loop runs."""
        data = b""
        self.peers[name].setblocking(False)
        deadline = time.monotonic() + 10
        while len(data) < size and time.monotonic() < deadline:
            self.loop.poll(0.01)
            try:
                data += self.peers[name].recv(size - len(data))
            except BlockingIOError:
                pass
        return data

    def test_pings(self) -> None:
        """
        The calibration PRIVMSG goes out as IRC; a PING to the receiver
        before the calibration delivery, between deliveries, and split over
        two reads, and a PING to the sender, are each answered PONG; every
        delivery is counted, nothing is an error.
        """
        self.traffic.calibrate(0.0, sendOnly=True)
        privmsg = b"PRIVMSG bea :" + wire.CALIBRATION_TEXT + b"\r\n"
        self.assertEqual(self.serverReads("ana", len(privmsg)), privmsg)

        def delivery(text: bytes) -> bytes:
            return b":ana!~ana@127.0.0.1 PRIVMSG bea :" + text + b"\r\n"

        bea, ana = self.peers["bea"], self.peers["ana"]
        bea.sendall(b"PING :one\r\n" + delivery(wire.CALIBRATION_TEXT))
        self.assertEqual(self.serverReads("bea", 11), b"PONG :one\r\n")
        self.assertTrue(self.traffic.waitCalibrated(10))

        stamped = [delivery(wire.makeText(wire.makeStamp(n))) for n in (1, 2, 3)]
        bea.sendall(stamped[0] + b"PING :two\r\n" + stamped[1] + b"PI")
        self.assertEqual(self.serverReads("bea", 11), b"PONG :two\r\n")
        bea.sendall(b"NG :three\r\n" + stamped[2])
        ana.sendall(b"PING :four\r\n")
        self.assertEqual(self.serverReads("bea", 13), b"PONG :three\r\n")
        self.assertEqual(self.serverReads("ana", 12), b"PONG :four\r\n")
        self.assertEqual(
            (self.traffic.inboxes[0].delivered, self.traffic.pongs, self.traffic.errors),
            (3, 4, []),
        )

    def test_errorNumericToTheSender(self) -> None:
        """A sender told 401 (no such nick) is an error of the run."""
        self.peers["ana"].sendall(b":irc.test 401 ana bea :No such nick or channel name\r\n")
        deadline = time.monotonic() + 10
        while not self.traffic.errors and time.monotonic() < deadline:
            self.loop.poll(0.05)
        self.assertEqual(len(self.traffic.errors), 1)
        self.assertIn("401 ana bea :No such nick", self.traffic.errors[0])


class RelayTests(ServerCase):
    """bench/relay.py, the baseline of scenario 1."""

    def test_relay(self) -> None:
        """
        A frame goes, unchanged, to the connection its name names (one to
        a name nobody has is dropped); scenario 1's pairs run over it.
        """
        server = ServerProcess([sys.executable, RELAY, "--port", ENDPOINT], ["relay"])
        self.addCleanup(server.stop)
        target = scenarios.Target(ports=server.start(), pid=server.pid)
        clients = {}
        for name in (b"ana", b"bea"):
            sock = socket.create_connection(target.address("relay"), timeout=10)
            self.addCleanup(sock.close)
            hello = wire.relayFrame(name, b"")
            sock.sendall(hello)
            self.assertEqual(self.receive(sock, len(hello)), hello)
            clients[name] = sock
        lost = wire.relayFrame(b"nobody", b"dropped")
        frame = wire.relayFrame(b"bea", b"hola")
        clients[b"ana"].sendall(lost + frame[:3])
        clients[b"ana"].sendall(frame[3:])
        self.assertEqual(self.receive(clients[b"bea"], len(frame)), frame)

        result = scenarios.pairs(target, protocol="relay", count=3, workers=1, window=4, **TINY)
        self.assertAllDelivered(result)
        self.assertEqual(result["total_delivered"], result["total_sent"])

    @staticmethod
    def receive(sock: socket.socket, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = sock.recv(size - len(data))
            if not chunk:
                break
            data += chunk
        return data


class NgircdTests(ServerCase):
    """
    ngircd, the second baseline of scenario 1, as bench/run.py starts it
    (its configuration in a temporary directory, in the foreground), driven
    by the load generator's IRC.
    """

    def setUp(self) -> None:
        program = shutil.which("ngircd")
        if program is None:
            raise SkipTest("ngircd is not installed (Debian ngircd; make bench installs it as root)")
        from tests.test_bench_cluster import loadBench

        directory = os.path.abspath(self.mktemp())
        server, port = loadBench().startNgircd(
            program, directory, directory + "-ngircd.log"
        )
        self.addCleanup(server.stop)
        self.pid = server.pid
        self.target = scenarios.Target(ports={"irc": port}, pid=server.pid)

    def test_pairs(self) -> None:
        """Scenario 1's pairs through ngircd: every PRIVMSG arrives, the server's CPU is read."""
        result = scenarios.pairs(self.target, protocol="irc", count=3, workers=1, window=4, **TINY)
        self.assertAllDelivered(result)
        self.assertEqual(result["total_delivered"], result["total_sent"])
        self.assertIn("cpu_percent", result["server"])

    def test_noFloodPenalty(self) -> None:
        """
        The configuration turns the flood penalty off: 300 PRIVMSGs written
        at once all arrive within seconds (with ngircd's penalty, about one
        a second once the sender is ahead).
        """
        clients = {}
        for name in ("ana", "bea"):
            sock = socket.create_connection(self.target.address("irc"), timeout=10)
            self.addCleanup(sock.close)
            sock.sendall(wire.dialect("irc").login(name))
            clients[name] = sock
            self.readUntil(sock, b" 376 " + name.encode())
        messages = 300
        clients["ana"].sendall(b"PRIVMSG bea :hola\r\n" * messages)
        received = self.readUntil(
            clients["bea"], b"", count=messages, deadline=time.monotonic() + 10
        )
        self.assertEqual(received.count(b":ana!~ana@127.0.0.1 PRIVMSG bea :hola\r\n"), messages)

    def test_docRecipe(self) -> None:
        """
        docs/performance.md's chatd-loadgen line (the block marked
        "ngircd-loadgen"), as written but for the server's port: every
        message of the 100 pairs arrives, and it says so.
        """
        with open(os.path.join(ROOT, "docs", "performance.md"), encoding="utf-8") as f:
            lines = f.read().split("\n")
        block = lines.index("<!-- run by tests/test_loadgen.py: ngircd-loadgen -->")
        end = lines.index("```", block + 2)
        [line] = [l for l in lines[block + 2 : end] if l.startswith("chatd-loadgen ")]
        self.assertIn(" --irc-port 6667 ", line)
        argv = shlex.split(line.replace(" --irc-port 6667 ", f" --irc-port {self.target.ports['irc']} "))
        program = os.path.join(os.path.dirname(sys.executable), argv[0])
        done = subprocess.run([program, *argv[1:]], capture_output=True, timeout=300)
        self.assertEqual(done.returncode, 0, done.stderr.decode("utf-8", "replace")[-2000:])
        result = json.loads(done.stdout)
        self.assertEqual(
            (result["protocol"], result["pairs"], result["window"], result["ok"], result["errors"]),
            ("irc", 100, 64, True, []),
        )
        self.assertEqual(result["total_delivered"], result["total_sent"])
        self.assertGreater(result["msgs_per_s"], 0)

    @staticmethod
    def readUntil(sock: socket.socket, end: bytes, count: int = 0,
                  deadline: float | None = None) -> bytes:
        """Read until C{end} has arrived, or C{count} lines; at most until C{deadline}."""
        data = b""
        deadline = deadline or time.monotonic() + 10
        while (end not in data if end else data.count(b"\n") < count):
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            data += chunk
        return data


class ProtobufScenarioTests(ServerCase):
    """Scenarios 1 to 3 against a real chatd (one server per framing)."""

    def test_delimited(self) -> None:
        """
        Scenario 1 from two worker processes: every message is delivered and
        answered, and the server's CPU and memory are read. Scenario 2: at
        a fixed rate, every message's latency is measured.
        """
        target = self.protobuf("delimited")
        result = scenarios.pairs(target, count=4, workers=2, window=8, **dict(TINY, threads=False))
        self.assertAllDelivered(result)
        self.assertEqual(result["total_delivered"], result["total_sent"])
        self.assertIn("cpu_percent", result["server"])

        result = scenarios.pairs(target, count=2, workers=1, rate=200, prefix="q", **TINY)
        self.assertAllDelivered(result)
        self.assertEqual(result["latency_ms"]["samples"], result["total_delivered"])

    def test_raw(self) -> None:
        """Scenario 1 with the raw framing; scenario 3: everyone gets every broadcast."""
        target = self.protobuf("raw")
        result = scenarios.pairs(target, count=3, workers=1, window=8, **TINY)
        self.assertAllDelivered(result)

        result = scenarios.broadcast(target, users=5, workers=2, window=2, **TINY)
        self.assertAllDelivered(result)
        self.assertEqual(result["total_delivered"], 5 * result["total_sent"])


class MixedScenarioTests(ServerCase):
    """Scenarios 4 to 6 against a real chatd with MSGR accounts."""

    def test_mixed(self) -> None:
        """
        Scenario 4: sessions of every protocol log in and stay quiet.
        Scenario 6: messages between every pair of protocols arrive.
        Scenario 5: an MSRP file arrives whole.
        """
        target = self.everything(12)
        result = scenarios.idle(
            target, {"protobuf": 6, "msrp": 4, "msgr": 2}, workers=2, hold=0, threads=True,
        )
        self.assertEqual(
            (result["sessions"], result["failed"], result["open_after_hold"], result["noisy"], result["ok"]),
            (12, 0, 12, 0, True),
        )
        self.assertIn("kib_per_session", result)

        result = scenarios.msgrMessages(
            target, directions=scenarios.CROSS, pairsPerDirection=1, workers=1, window=4, **TINY,
        )
        self.assertAllDelivered(result)
        self.assertEqual(len(result["directions"]), 6)

        result = scenarios.fileTransfer(target, 3 * 1024 * 1024 + 5, threads=True, verify=True)
        self.assertEqual((result["ok"], result["intact"]), (True, True))
        self.assertIn("peak_growth_mib", result["server"])
