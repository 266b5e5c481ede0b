"""
The course revision of the protobuf chat (1-based, ../shared/notes/dialects.md
section 1) and the raw framing's one-message-per-write rule: the byte
sequences of the course's two clients replayed, every response checked byte
by byte.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase

from chatd.limits import Limits
from chatd.presence import InMemoryPresenceService
from chatd.protobuf import chat_pb2
from chatd.protobuf.protocol import (
    AUTO,
    COURSE,
    DELIMITED,
    RAW,
    SEED,
    ProtobufChatFactory,
)
from tests.fuzzing import cut, cutPoints, hostileInput
from tests.support import RecordingSession, login, request
from tests.test_fuzz_protobuf import validStream

H = bytes.fromhex


def s(field: int, value: str) -> bytes:
    """A string field, spelled out for the expected bytes."""
    data = value.encode()
    return bytes((field << 3 | 2, len(data))) + data


def sub(field: int, body: bytes) -> bytes:
    """A sub-message field."""
    return bytes((field << 3 | 2, len(body))) + body


class WritesTransport(StringTransport):
    """A L{StringTransport} that keeps each write apart."""

    def __init__(self, *a, **kw) -> None:
        StringTransport.__init__(self, *a, **kw)
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        StringTransport.write(self, data)

    def writeSequence(self, seq) -> None:
        for data in seq:
            self.write(data)


class Client:
    """A raw client over a L{WritesTransport}: what it gets, write by write."""

    def __init__(self, factory, host: str) -> None:
        self.transport = WritesTransport(peerAddress=IPv4Address("TCP", host, 40000))
        self.protocol = factory.buildProtocol(self.transport.getPeer())
        self.protocol.makeConnection(self.transport)

    def send(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def writes(self) -> list[bytes]:
        """The writes since the last call."""
        writes, self.transport.writes = self.transport.writes, []
        self.transport.clear()
        return writes


# The course clients' requests, as the note gives them.
A_LOGIN_BOB = H("0801 1213 0a03626f62 120c3139322e3136382e312e3136 1a00 2200 2a00")
A_BROADCAST = H("0805 1200 1a00 2200 2a15 0a03616c6c 1203626f62 1a0968656c6c6f20616c6c")
A_DM_ZED = H("0805 1200 1a00 2200 2a0e 0a037a6564 1203626f62 1a026869")

# Client A as alice, byte for byte the note's table.
NOTE_A_LOGIN = H("08 01 12 15 0a 05 61 6c 69 63 65 12 0c 31 39 32 2e 31 36 38 2e 31 2e 31 36 1a 00 22 00 2a 00")
NOTE_A_LIST_FIRST = H("08 02 12 15 0a 05 61 6c 69 63 65 12 0c 31 39 32 2e 31 36 38 2e 31 2e 31 36 1a 00 22 00 2a 00")
NOTE_A_LIST = H("08 02 12 00 1a 00 22 00 2a 00")
NOTE_A_INFO_BOB = H("08 03 12 00 1a 05 0a 03 62 6f 62 22 00 2a 00")
NOTE_A_STATUS_BUSY = H("08 04 12 00 1a 00 22 0d 0a 05 61 6c 69 63 65 12 04 42 55 53 59 2a 00")
NOTE_A_DM_BOB = H("08 05 12 00 1a 00 22 00 2a 14 0a 03 62 6f 62 12 05 61 6c 69 63 65 1a 06 68 69 20 62 6f 62")
NOTE_A_BROADCAST = H("08 05 12 00 1a 00 22 00 2a 17 0a 03 61 6c 6c 12 05 61 6c 69 63 65 1a 09 68 65 6c 6c 6f 20 61 6c 6c")

# Client B as alice on 127.0.0.1, byte for byte the note's table.
B_LOGIN_ALICE = H("0801 1212 0a05616c696365 1209 3132372e302e302e31 00")
B_LIST = H("0802 00")
B_INFO_BOB = H("0803 1a05 0a03626f62 00")
B_STATUS_ONLINE = H("0804 220f 0a05616c696365 1206 4f6e6c696e65 00")
B_BROADCAST = H("0805 2a13 0a03616c6c 1205616c696365 1a0568656c6c6f 00")
B_DM_BOB = H("0805 2a11 0a03626f62 1205616c696365 1a03686579 00")
B_INFO_ZED = H("0803 1a05 0a037a6564 00")

ALICE_INFO = s(1, "alice") + s(2, "127.0.0.1") + s(3, "ACTIVO")
BOB_INFO = s(1, "bob") + s(2, "192.0.2.8") + s(3, "ACTIVO")


class CourseMixin:
    dialect = AUTO
    framing = RAW
    rawGap = 0.0

    def setUp(self) -> None:
        self.clock = Clock()
        self.presence = InMemoryPresenceService()
        self.factory = ProtobufChatFactory(
            self.presence, self.clock, framing=self.framing, maxFrameSize=4096,
            metrics=self.presence.metrics, dialect=self.dialect, rawGap=self.rawGap,
        )

    def assertCourse(self, writes: list[bytes], nul: bool) -> None:
        """
        Every write is one course response: a code, no 0x00 inside, under
        1,024 bytes, ended by one 0x00 exactly when the client's are.
        """
        for data in writes:
            self.assertLess(len(data), 1024)
            body = data[:-1] if nul else data
            if nul:
                self.assertEqual(data[-1:], b"\x00", data.hex(" "))
            self.assertNotIn(b"\x00", body, data.hex(" "))
            self.assertIn(b"\x10", body[:3], "no code: " + data.hex(" "))

    def bob(self) -> Client:
        """Client A, logged in as bob."""
        bob = Client(self.factory, "192.0.2.8")
        bob.send(A_LOGIN_BOB)
        self.assertEqual(
            bob.writes(),
            [H("0801 1002") + s(3, "welcome, bob") + sub(5, BOB_INFO)],
        )
        return bob

    def alice(self) -> Client:
        """Client B, logged in as alice."""
        alice = Client(self.factory, "127.0.0.1")
        alice.send(B_LOGIN_ALICE)
        self.assertEqual(
            alice.writes(),
            [H("0801 1002") + s(3, "welcome, alice") + sub(5, ALICE_INFO) + b"\x00"],
        )
        return alice


class ClientBReplayTests(CourseMixin, TestCase):
    """Client B's requests (each ended with 0x00), answered ended with 0x00."""

    def test_session(self) -> None:
        bob = self.bob()
        alice = self.alice()

        alice.send(B_LIST)
        self.assertEqual(
            alice.writes(),
            [H("0802 1002") + s(3, "2 users online") + sub(4, sub(1, BOB_INFO) + sub(1, ALICE_INFO)) + b"\x00"],
        )

        alice.send(B_INFO_BOB)
        self.assertEqual(
            alice.writes(),
            [H("0803 1002") + s(3, "bob is online") + sub(5, BOB_INFO) + b"\x00"],
        )

        alice.send(B_STATUS_ONLINE)
        self.assertEqual(
            alice.writes(),
            [H("0804 1002") + s(3, "status is now Online") + sub(7, s(1, "alice") + s(2, "Online")) + b"\x00"],
        )

        alice.send(B_BROADCAST)
        self.assertEqual(alice.writes(), [])  # a delivered message: no answer
        self.assertEqual(
            bob.writes(),
            [H("0805 1002") + sub(6, s(1, "all") + s(2, "alice") + s(3, "hello"))],
        )

        alice.send(B_DM_BOB)
        self.assertEqual(alice.writes(), [])
        self.assertEqual(
            bob.writes(),
            [H("0805 1002") + sub(6, s(1, "bob") + s(2, "alice") + s(3, "hey"))],
        )

        alice.send(B_INFO_ZED)
        self.assertEqual(
            alice.writes(), [H("0803 1001") + s(3, "zed is not online") + b"\x00"]
        )

    def test_joinedRequestsSplitOnZero(self) -> None:
        """
        Requests joined in one read are split on their 0x00, and their
        answers go out in a write each.
        """
        self.factory.rawGap = 0.05
        self.bob()
        alice = self.alice()
        alice.send(B_LIST + B_INFO_BOB)
        self.clock.pump([0.05] * 2)
        writes = alice.writes()
        self.assertEqual(len(writes), 2)
        self.assertEqual(writes[0][:2], H("0802"))
        self.assertEqual(writes[1], H("0803 1002") + s(3, "bob is online") + sub(5, BOB_INFO)
                         + b"\x00")
        self.assertCourse(writes, nul=True)


class ClientAReplayTests(CourseMixin, TestCase):
    """
    Client A's requests, exactly the note's (user alice: every sub-message,
    no 0x00 at the end), with bob on client B.
    """

    def alice(self) -> Client:
        alice = Client(self.factory, "127.0.0.1")
        alice.send(NOTE_A_LOGIN)
        self.assertEqual(
            alice.writes(),
            [H("0801 1002") + s(3, "welcome, alice") + sub(5, ALICE_INFO)],
        )
        return alice

    def bobOnB(self) -> Client:
        bob = Client(self.factory, "192.0.2.8")
        bob.send(H("0801 1210 0a03626f62 1209 3139322e302e322e38 00"))
        self.assertEqual(
            bob.writes(),
            [H("0801 1002") + s(3, "welcome, bob") + sub(5, BOB_INFO) + b"\x00"],
        )
        return bob

    def test_session(self) -> None:
        bob = self.bobOnB()
        alice = self.alice()
        both = sub(4, sub(1, BOB_INFO) + sub(1, ALICE_INFO))

        # The first command still carries the login's newuser.
        alice.send(NOTE_A_LIST_FIRST)
        self.assertEqual(
            alice.writes(), [H("0802 1002") + s(3, "2 users online") + both]
        )
        alice.send(NOTE_A_LIST)
        self.assertEqual(
            alice.writes(), [H("0802 1002") + s(3, "2 users online") + both]
        )

        alice.send(NOTE_A_INFO_BOB)
        self.assertEqual(
            alice.writes(),
            [H("0803 1002") + s(3, "bob is online") + sub(5, BOB_INFO)],
        )

        alice.send(NOTE_A_STATUS_BUSY)
        self.assertEqual(
            alice.writes(),
            [H("0804 1002") + s(3, "status is now BUSY")
             + sub(7, s(1, "alice") + s(2, "BUSY"))],
        )

        alice.send(NOTE_A_DM_BOB)
        self.assertEqual(alice.writes(), [])
        self.assertEqual(
            bob.writes(),
            [H("0805 1002") + sub(6, s(1, "bob") + s(2, "alice") + s(3, "hi bob")) + b"\x00"],
        )

        alice.send(NOTE_A_BROADCAST)
        self.assertEqual(alice.writes(), [])
        self.assertEqual(
            bob.writes(),
            [H("0805 1002") + sub(6, s(1, "all") + s(2, "alice") + s(3, "hello all")) + b"\x00"],
        )

        alice.send(NOTE_A_DM_BOB.replace(b"\x0a\x03bob", b"\x0a\x03zed"))
        self.assertEqual(
            alice.writes(),
            [H("0805 1001") + s(3, "not delivered: zed is not online")],
        )

    def test_broadcastToNobody(self) -> None:
        """A message nobody got is answered FAILED, as the clients expect."""
        bob = self.bob()
        bob.send(A_BROADCAST)
        self.assertEqual(
            bob.writes(),
            [H("0805 1001") + s(3, "not delivered: nobody else is online")],
        )

    def test_ipIsThePeerAddress(self) -> None:
        """Client A always says 192.168.1.16; the peer address is stored."""
        self.bob()
        self.assertEqual(self.presence.lookup("bob").ip, "192.0.2.8")


class ResponseRuleTests(CourseMixin, TestCase):
    def test_longListSaysHowManyWereLeftOut(self) -> None:
        """A list that would not fit in 1,024 bytes says how many it left out."""
        for n in range(60):
            session = RecordingSession()
            self.presence.login(session, f"user{n:02d}_" + "x" * 20, "10.0.0.1")
        alice = self.alice()
        alice.send(B_LIST)
        writes = alice.writes()
        self.assertEqual(len(writes), 1)
        self.assertCourse(writes, nul=True)
        data = writes[0]
        shown = data.count(b"_xxxxxxxxxxxxxxxxxxxx")
        self.assertGreater(shown, 10)
        self.assertIn(
            f"61 users online; {61 - shown} left out (a response has under 1024 bytes)"
            .encode(),
            data,
        )

    def test_longMessageInPieces(self) -> None:
        """A long message arrives as consecutive deliveries, each under 1,024 bytes."""
        self.factory.rawGap = 0.05
        bob = self.bob()
        alice = self.alice()
        self.clock.advance(1)
        text = "ñ" * 1500
        bob.send(
            H("0805")
            + request(messg=chat_pb2.Message(receiver="alice", text=text)).SerializeToString()
        )
        self.clock.pump([0.05] * 3)
        writes = alice.writes()
        self.assertEqual(len(writes), 3)
        self.assertCourse(writes, nul=True)
        got = ""
        for data in writes:
            self.assertEqual(data[:5], H("0805 1002 32"))
            got += chat_pb2.Message.FromString(data[7:-1]).text
        self.assertEqual(got, text)

    def test_nulInTextIsShown(self) -> None:
        """A NUL from another protocol's user does not cut a response short."""
        sender = RecordingSession()
        self.presence.login(sender, "carol", "10.0.0.1")
        alice = self.alice()
        self.presence.sendMessage(sender, "alice", "a\x00b")
        self.assertEqual(
            alice.writes(),
            [H("0805 1002") + sub(6, s(1, "alice") + s(2, "carol")
             + H("1a05") + "a\ufffdb".encode()) + b"\x00"],
        )

    def test_seedUserReceivesFromCourseUser(self) -> None:
        """A seed (0-based) user gets a course user's message in seed terms."""
        seed = Client(self.factory, "192.0.2.9")
        seed.send(login("carol").SerializeToString())
        seed.writes()
        bob = self.bob()
        bob.send(A_DM_ZED.replace(b"zed", b"car").replace(b"\x2a\x0e\x0a\x03car", b"\x2a\x10\x0a\x05carol"))
        self.assertEqual(
            seed.writes(),
            [H("0804 1001") + sub(6, s(1, "carol") + s(2, "bob") + s(3, "hi"))],
        )


class DialectOptionTests(CourseMixin, TestCase):
    def test_seedForced(self) -> None:
        """With --protobuf-dialect seed, option 1 is CONNECTED_USERS."""
        self.factory.dialect = SEED
        client = Client(self.factory, "127.0.0.1")
        client.send(B_LOGIN_ALICE)
        self.assertEqual(
            client.writes(), [H("0801 1000") + s(3, "log in first (USER_LOGIN)")]
        )

    def test_courseForced(self) -> None:
        """
        With --protobuf-dialect course, a first request of option 0 is not a
        login: it is answered in course terms, with no option and no 0x00.
        """
        self.factory.dialect = COURSE
        client = Client(self.factory, "127.0.0.1")
        client.send(login("alice").SerializeToString())
        self.assertEqual(
            client.writes(),
            [H("1001") + s(3, "unknown option 0: this connection speaks the course"
                              " revision's 1-based options, USER_LOGIN=1 to SEND_MESSAGE=5")],
        )

    def test_courseAnswersBeforeLogin(self) -> None:
        """A course connection's other requests before a login are refused with code 1."""
        self.factory.dialect = COURSE
        client = Client(self.factory, "127.0.0.1")
        client.send(B_LIST)
        self.assertEqual(
            client.writes(), [H("0802 1001") + s(3, "log in first (USER_LOGIN)")]
        )


class DelimitedCourseTests(CourseMixin, TestCase):
    framing = DELIMITED

    def test_login(self) -> None:
        """The course login is recognised with delimited framing too."""
        client = Client(self.factory, "127.0.0.1")
        payload = B_LOGIN_ALICE[:-1]
        client.send(bytes((len(payload),)) + payload)
        expected = H("0801 1002") + s(3, "welcome, alice") + sub(5, ALICE_INFO)
        self.assertEqual(client.writes(), [bytes((len(expected),)) + expected])


class RawGapTests(CourseMixin, TestCase):
    """Raw connections: one message per write, spaced by the raw gap."""

    rawGap = 0.25

    def test_pipelinedSeedAnswersSpaced(self) -> None:
        """
        A seed client's pipelined requests are answered one write each, the
        second a gap after the first; nothing is lost or reordered.
        """
        client = Client(self.factory, "127.0.0.1")
        client.send(login("alice").SerializeToString() + b"\x00" + H("0801 00") + H("0802 00"))
        writes = client.writes()
        self.assertEqual(len(writes), 1)
        self.assertEqual(writes[0][:4], H("0800 1001"))
        self.clock.advance(0.24)
        self.assertEqual(client.writes(), [])
        self.clock.advance(0.01)
        self.assertEqual([w[:4] for w in client.writes()], [H("0801 1001")])
        self.clock.advance(0.25)
        self.assertEqual([w[:4] for w in client.writes()], [H("0802 1001")])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_deliveriesSpaced(self) -> None:
        """Two deliveries from one read of the sender go a gap apart."""
        receiver = self.alice()
        self.clock.advance(1)
        sender = Client(self.factory, "192.0.2.9")
        sender.send(login("carol").SerializeToString())
        msg = H("0804") + sub(5, s(1, "alice") + s(3, "hola"))
        sender.send(msg + msg)
        self.assertEqual(len(receiver.writes()), 1)
        self.clock.advance(0.25)
        self.assertEqual(len(receiver.writes()), 1)

    def test_clientAFirstRead(self) -> None:
        """
        Client A reads nothing for its first 4 s: nothing but the login
        answer goes to it before 4.5 s.
        """
        alice = self.alice()
        bob = self.bob()
        alice.send(B_DM_BOB)
        self.clock.advance(4.4)
        self.assertEqual(bob.writes(), [])
        self.clock.advance(0.1)
        self.assertEqual(
            bob.writes(),
            [H("0805 1002") + sub(6, s(1, "bob") + s(2, "alice") + s(3, "hey"))],
        )

    def test_halfCloseWaitsForTheLastAnswer(self) -> None:
        """A client that half-closed gets every answer, a gap apart, then the close."""
        client = Client(self.factory, "127.0.0.1")
        client.send(login("alice").SerializeToString() + b"\x00" + H("0801 00"))
        client.protocol.readConnectionLost()
        self.assertEqual(len(client.writes()), 1)
        self.assertFalse(client.transport.disconnecting)
        self.clock.advance(0.25)
        self.assertEqual(len(client.writes()), 1)
        self.assertTrue(client.transport.disconnecting)
        self.assertIsNone(self.presence.lookup("alice"))

    def test_gapCountsTowardsSendQueue(self) -> None:
        """What waits for its turn counts towards --max-sendq."""
        self.factory.limits = Limits(maxSendQueue=100)
        receiver = self.alice()
        sender = Client(self.factory, "192.0.2.9")
        sender.send(login("carol").SerializeToString())
        msg = H("0804") + sub(5, s(1, "alice") + s(3, "x" * 20))
        sender.send(msg * 4)
        writes = receiver.writes()
        self.assertIn(b"you are not reading", writes[-1])
        self.assertTrue(receiver.transport.disconnecting)


class DelimitedStaysCorkedTests(CourseMixin, TestCase):
    """The cork that joins a read's answers is the delimited framing's alone."""

    framing = DELIMITED
    rawGap = 0.25

    def test_oneWrite(self) -> None:
        client = Client(self.factory, "127.0.0.1")
        payload = login("alice").SerializeToString()
        client.send(bytes((len(payload),)) + payload + H("02 0801"))
        self.assertEqual(len(client.writes()), 1)


class CourseFuzzTests(TestCase):
    """
    Any bytes after a course login (either client's), cut anywhere: no
    failure logged, and every write is one course response by the rules.
    """

    @settings(max_examples=150, deadline=None)
    @given(
        st.sampled_from([NOTE_A_LOGIN, B_LOGIN_ALICE]),
        hostileInput(validStream(RAW)),
        cutPoints,
    )
    def test_hostileCourseClient(self, first, data, points) -> None:
        clock = Clock()
        presence = InMemoryPresenceService()
        factory = ProtobufChatFactory(
            presence, clock, maxFrameSize=4096, metrics=presence.metrics,
            dialect=AUTO, rawGap=0.25,
        )
        client = Client(factory, "127.0.0.1")
        nul = first.endswith(b"\x00") and not first.endswith(b"\x2a\x00")
        for chunk in [first] + cut(data, points):
            if client.transport.disconnecting:
                break
            client.send(chunk)
            clock.advance(0.05)
        clock.advance(60)
        self.assertEqual(self.flushLoggedErrors(), [])
        writes = client.writes()
        self.assertGreater(len(writes), 0)
        for write in writes:
            self.assertLess(len(write), 1024)
            body = write[:-1] if nul else write
            if nul:
                self.assertEqual(write[-1:], b"\x00")
            self.assertNotIn(b"\x00", body, write.hex(" "))
        client.protocol.connectionLost(None)
        self.assertEqual(presence.users(), [])
        self.assertEqual(clock.getDelayedCalls(), [])


class DocumentedBytesTests(CourseMixin, TestCase):
    """The byte examples of docs/protobuf.md, "The course revision"."""

    def test_examples(self) -> None:
        alice = self.alice()
        bob = self.bob()
        bob.send(H("08 03 12 00 1a 07 0a 05") + b"alice" + H("22 00 2a 00"))
        self.assertEqual(
            bob.writes(),
            [H("08 03 10 02 1a 0f") + b"alice is online" + H("2a 1a 0a 05") + b"alice"
             + H("12 09") + b"127.0.0.1" + H("1a 06") + b"ACTIVO"],
        )
        bob.send(H("08 05 12 00 1a 00 22 00 2a 12 0a 05") + b"alice" + H("12 03") + b"bob"
                 + H("1a 04") + b"hola")
        self.assertEqual(bob.writes(), [])
        self.assertEqual(
            alice.writes(),
            [H("08 05 10 02 32 12 0a 05") + b"alice" + H("12 03") + b"bob" + H("1a 04")
             + b"hola" + H("00")],
        )
