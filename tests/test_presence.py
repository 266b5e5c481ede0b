"""
The presence service shared by every listener.
"""

from __future__ import annotations

from twisted.trial.unittest import TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from chatd.presence import (
    LOGIN,
    LOGOUT,
    STATUS,
    AlreadyLoggedIn,
    ChatMessage,
    FilesNotAccepted,
    IFileReceiver,
    InMemoryPresenceService,
    InvalidName,
    InvalidStatus,
    IPresenceService,
    NameInUse,
    NameProtected,
    NoSuchUser,
    RecipientBusy,
    checkName,
    nameKey,
)
from tests.support import RecordingSession

#: The look-alikes of issue 11 item 5, for a registered or online José87.
JOSE = "Jos\u00e987"
JOSE_NFD = "Jose\u030187"
JOSE_FULLWIDTH = "\uff2aos\u00e987"
JOSE_CYRILLIC_O = "J\u043es\u00e987"
#: Invisible or blank suffixes: combining grapheme joiner, Hangul filler,
#: Braille blank.
JOSE_SUFFIXED = [JOSE + "\u034f", JOSE + "\u3164", JOSE + "\u2800"]


@implementer(IFileReceiver)
class FileSession(RecordingSession):
    maxFileSize = 10

    def __init__(self) -> None:
        super().__init__("files")
        self.files: list[tuple[str, str, bytes]] = []

    def deliverFile(self, sender: str, filename: str, content: bytes) -> None:
        self.files.append((sender, filename, content))


class BrokenSession(RecordingSession):
    def deliverMessage(self, message: ChatMessage) -> None:
        raise RuntimeError("this session's transport is gone")


class NameRuleTests(TestCase):
    def test_valid(self) -> None:
        for name in [
            "a", "clt1", "Ñandú", "x" * 32, "user.name-1_2", "alli", "ballot",
            JOSE, JOSE_NFD, JOSE_FULLWIDTH, JOSE_CYRILLIC_O, "ñab", "\u674e\u56db",
        ]:
            checkName(name)

    def test_invalid(self) -> None:
        for name, reason in [
            ("", "empty"),
            ("x" * 33, "longer than 32"),
            ("all", "reserved"),
            ("aLL", "reserved"),
            ("a b", "space"),
            ("a\tb", "space"),
            ("a\x00b", "control"),
            ("a\u200bb", "control"),
            ("a|b", "'|'"),
            ("a&b", "'&'"),
            ("a\\b", "'\\\\'"),
            # RFC 8265 refuses them: ignorable, blank or symbol characters,
            # compatibility forms.
            (JOSE + "\u034f", "U+034F"),
            (JOSE + "\u3164", "U+3164"),
            (JOSE + "\u2800", "U+2800"),
            ("\U0001f600", "U+1F600"),
            ("\ufb01x", "U+FB01"),
            (JOSE_NFD + "\u034f", "U+034F"),
            ("abc\u05e9\u05dc\u05d5\u05dd", "right-to-left"),
            # 'all' in another width, or looking like it.
            ("\uff41\uff4c\uff4c", "reserved"),
            ("aII", "reserved"),
            ("\u0430ll", "reserved"),
        ]:
            with self.assertRaises(InvalidName, msg=repr(name)) as cm:
                checkName(name)
            self.assertIn(reason, str(cm.exception))


class PresenceTests(TestCase):
    def setUp(self) -> None:
        self.presence = InMemoryPresenceService()

    def login(self, name: str, session=None, **kw):
        session = session or RecordingSession()
        info = self.successResultOf(self.presence.login(session, name, "10.0.0.1", **kw))
        return session, info

    def test_interface(self) -> None:
        self.assertTrue(verifyObject(IPresenceService, self.presence))

    def test_loginAndLookup(self) -> None:
        session, info = self.login("Alice")
        self.assertEqual(
            (info.name, info.protocol, info.ip, info.status),
            ("Alice", "test", "10.0.0.1", "ACTIVO"),
        )
        self.assertEqual(self.presence.lookup("alice"), info)
        self.assertIs(self.presence.sessionFor("ALICE"), session)
        self.assertEqual(self.presence.infoFor(session), info)

    def test_uniqueIgnoringCase(self) -> None:
        self.login("Alice")
        self.failureResultOf(
            self.presence.login(RecordingSession(), "aLiCe", "x"), NameInUse
        )

    def test_invalidName(self) -> None:
        self.failureResultOf(
            self.presence.login(RecordingSession(), "all", "x"), InvalidName
        )

    def test_oneNamePerSession(self) -> None:
        session, _ = self.login("alice")
        self.failureResultOf(self.presence.login(session, "bob", "x"), AlreadyLoggedIn)
        self.assertIsNone(self.presence.lookup("bob"))

    def test_protectedNames(self) -> None:
        self.presence.isProtectedName = lambda name: name.lower() == "carol"
        self.failureResultOf(
            self.presence.login(RecordingSession(), "Carol", "x"), NameProtected
        )
        self.login("Carol", authenticated=True)

    def test_logout(self) -> None:
        session, _ = self.login("alice")
        self.presence.logout(session)
        self.presence.logout(session)
        self.assertIsNone(self.presence.lookup("alice"))
        self.assertEqual(self.presence.users(), [])
        self.login("alice")

    def test_usersInLoginOrder(self) -> None:
        for name in ["c", "a", "b"]:
            self.login(name)
        self.assertEqual([u.name for u in self.presence.users()], ["c", "a", "b"])

    def test_status(self) -> None:
        session, _ = self.login("alice")
        info = self.presence.setStatus(session, "OCUPADO")
        self.assertEqual(info.status, "OCUPADO")
        self.assertEqual(self.presence.lookup("alice").status, "OCUPADO")
        self.assertRaises(InvalidStatus, self.presence.setStatus, session, "")
        self.assertRaises(NoSuchUser, self.presence.setStatus, RecordingSession(), "x")

    def test_direct(self) -> None:
        alice, _ = self.login("alice")
        bob, _ = self.login("Bob")
        self.assertEqual(self.presence.sendMessage(alice, "bob", "hi"), 1)
        self.assertEqual(bob.messages, [ChatMessage("alice", "Bob", "hi")])
        self.assertEqual(alice.messages, [])

    def test_unknownReceiver(self) -> None:
        alice, _ = self.login("alice")
        self.assertRaises(NoSuchUser, self.presence.sendMessage, alice, "zed", "hi")

    def test_senderMustBeLoggedIn(self) -> None:
        self.login("bob")
        self.assertRaises(
            NoSuchUser, self.presence.sendMessage, RecordingSession(), "bob", "hi"
        )

    def test_broadcast(self) -> None:
        alice, _ = self.login("alice")
        others = [self.login(name)[0] for name in ["b", "c"]]
        self.assertEqual(self.presence.sendMessage(alice, "ALL", "hey"), 2)
        for other in others:
            self.assertEqual(other.messages, [ChatMessage("alice", "all", "hey")])
        self.assertEqual(alice.messages, [])

    def test_failingSessionCostsNobodyElse(self) -> None:
        alice, _ = self.login("alice")
        self.login("broken", session=BrokenSession())
        carl, _ = self.login("carl")
        self.assertEqual(self.presence.sendMessage(alice, "all", "hey"), 2)
        self.assertEqual([m.text for m in carl.messages], ["hey"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_observers(self) -> None:
        events = []
        observer = lambda kind, info: events.append((kind, info.name, info.status))
        self.presence.addObserver(observer)
        session, _ = self.login("alice")
        self.presence.setStatus(session, "OCUPADO")
        self.presence.logout(session)
        self.presence.removeObserver(observer)
        self.login("bob")
        self.assertEqual(
            events,
            [
                (LOGIN, "alice", "ACTIVO"),
                (STATUS, "alice", "OCUPADO"),
                (LOGOUT, "alice", "OCUPADO"),
            ],
        )

    def test_files(self) -> None:
        alice, _ = self.login("alice")
        files = FileSession()
        self.login("bob", session=files)
        self.login("carl")
        self.assertEqual(self.presence.fileLimit("bob"), 10)
        self.assertEqual(self.presence.fileLimit("carl"), 0)
        self.assertIsNone(self.presence.fileLimit("zed"))
        self.presence.sendFile(alice, "BOB", "a.txt", b"0123456789")
        self.assertEqual(files.files, [("alice", "a.txt", b"0123456789")])
        self.assertRaises(
            FilesNotAccepted, self.presence.sendFile, alice, "bob", "b", b"x" * 11
        )
        self.assertRaises(
            FilesNotAccepted, self.presence.sendFile, alice, "carl", "c", b"x"
        )
        self.assertRaises(NoSuchUser, self.presence.sendFile, alice, "zed", "d", b"x")


class LookalikeTests(TestCase):
    """
    Names are compared by RFC 8265 (one key for the NFD and full-width
    spellings) and by their TR39 skeleton (one for look-alike letters).
    """

    def setUp(self) -> None:
        self.presence = InMemoryPresenceService()
        self.jose = RecordingSession()
        self.successResultOf(self.presence.login(self.jose, JOSE, "10.0.0.1"))

    def refused(self, name: str, error=NameInUse, **kw) -> str:
        failure = self.failureResultOf(
            self.presence.login(RecordingSession(), name, "10.0.0.2", **kw), error
        )
        return str(failure.value)

    def test_sameKeyIsInUse(self) -> None:
        for name in [JOSE_NFD, JOSE_FULLWIDTH, JOSE.upper()]:
            self.assertEqual(nameKey(name), nameKey(JOSE), ascii(name))
            self.assertIn("is already online", self.refused(name))

    def test_lookalikeIsInUse(self) -> None:
        self.assertEqual(
            self.refused(JOSE_CYRILLIC_O),
            f"the name {JOSE_CYRILLIC_O} looks like {JOSE}, who is online",
        )
        self.assertEqual(self.presence.lookalike(JOSE_CYRILLIC_O).name, JOSE)
        self.assertEqual([u.name for u in self.presence.users()], [JOSE])

    def test_invisibleSuffixIsInvalid(self) -> None:
        for name in JOSE_SUFFIXED:
            self.assertIn("which names may not have", self.refused(name, InvalidName))

    def test_lookalikeInAnyCase(self) -> None:
        self.successResultOf(self.presence.login(RecordingSession(), "alice", "x"))
        for name in ["aIice", "ALICE", "\u0430lice"]:
            self.refused(name)

    def test_freedByLogout(self) -> None:
        self.presence.logout(self.jose)
        self.assertIsNone(self.presence.lookalike(JOSE_CYRILLIC_O))
        self.successResultOf(
            self.presence.login(RecordingSession(), JOSE_CYRILLIC_O, "x")
        )
        self.refused(JOSE)

    def test_lookupByAnySpelling(self) -> None:
        for name in [JOSE_NFD, JOSE_FULLWIDTH, "jos\u00c987"]:
            self.assertIs(self.presence.sessionFor(name), self.jose)
        self.assertIsNone(self.presence.lookup(JOSE_CYRILLIC_O))
        self.assertIsNone(self.presence.lookup(JOSE + "\u034f"))

    def test_messageToAnySpelling(self) -> None:
        alice = RecordingSession()
        self.successResultOf(self.presence.login(alice, "alice", "x"))
        self.assertEqual(self.presence.sendMessage(alice, JOSE_NFD, "hola"), 1)
        self.assertEqual(self.jose.messages, [ChatMessage("alice", JOSE, "hola")])
        self.assertRaises(
            NoSuchUser, self.presence.sendMessage, alice, JOSE_CYRILLIC_O, "x"
        )

    def test_authenticatedLookalikePair(self) -> None:
        """
        Two registered accounts that already looked alike both keep working:
        with their passwords, both may be online at once; nobody else may
        take a third look-alike.
        """
        presence = InMemoryPresenceService()
        self.successResultOf(
            presence.login(RecordingSession(), JOSE, "x", authenticated=True)
        )
        self.successResultOf(
            presence.login(
                RecordingSession(), JOSE_CYRILLIC_O, "x", authenticated=True
            )
        )
        self.failureResultOf(
            presence.login(RecordingSession(), "J\u03bfs\u00e987", "x"), NameInUse
        )

    def test_unauthenticatedLookalikeOfAccount(self) -> None:
        """An account's password does not open a look-alike of a guest."""
        self.refused(JOSE_CYRILLIC_O, authenticated=True)


class BusySession(RecordingSession):
    def deliverMessage(self, message: ChatMessage) -> None:
        raise RecipientBusy(f"{message.receiver} is busy")


class RecipientBusyTests(TestCase):
    def setUp(self) -> None:
        self.presence = InMemoryPresenceService()
        self.alice = RecordingSession()
        self.presence.login(self.alice, "alice", "x")
        self.presence.login(BusySession(), "busy", "x")
        self.carl = RecordingSession()
        self.presence.login(self.carl, "carl", "x")

    def test_directIsRefused(self) -> None:
        with self.assertRaises(RecipientBusy) as cm:
            self.presence.sendMessage(self.alice, "busy", "hi")
        self.assertEqual(str(cm.exception), "busy is busy")

    def test_broadcastSkipsBusy(self) -> None:
        self.assertEqual(self.presence.sendMessage(self.alice, "all", "hi"), 1)
        self.assertEqual([m.text for m in self.carl.messages], ["hi"])
