"""
MSRP's 4-byte name slots (docs/msrp.md, "Users of other protocols"): users
whose names are not 4 bytes appear to binary clients under a slot that is
unique, never an online user's name, and addressable by messages and files.
"""

from __future__ import annotations

from itertools import islice

from twisted.trial.unittest import TestCase

from chatd.msrp.codec import encodeFileHeader, encodeListRequest, encodeMessage
from chatd.msrp.protocol import MsrpFactory
from chatd.msrp.texts import ERR_NOT_FOUND, errNoFiles
from chatd.msrp.slots import slotCandidates
from chatd.presence import InMemoryPresenceService, NameInUse
from chatd.protobuf import chat_pb2
from tests.support import RecordingSession, message
from tests.test_msrp_files import WholeFileSession
from tests.test_msrp_protocol import MsrpClient, MsrpTestMixin, errorFrame, listFrame

R = chat_pb2.ServerResponse


class CandidateTests(TestCase):
    def test_order(self) -> None:
        """The first 4 bytes, then 3 and a digit, 2 and two, 1 and three, four digits."""
        candidates = list(slotCandidates("carla"))
        self.assertEqual(candidates[:3], ["carl", "car1", "car2"])
        self.assertEqual(candidates[9:12], ["car9", "ca01", "ca02"])
        self.assertEqual(candidates[108:110], ["ca99", "c001"])
        self.assertEqual(candidates[1107:1109], ["c999", "0001"])
        self.assertEqual(candidates[-1], "9999")
        self.assertEqual(len(candidates), 1 + 9 + 99 + 999 + 9999)

    def test_shortName(self) -> None:
        """A shorter name is padded with spaces, which no name contains."""
        self.assertEqual(next(slotCandidates("bo")), "bo  ")
        self.assertEqual(next(slotCandidates("ana")), "ana ")

    def test_wholeCharacters(self) -> None:
        """A slot never cuts a character: every candidate is 4 bytes of UTF-8."""
        # "ña" is 3 bytes and the next "ñ" does not fit: no 4-byte head.
        self.assertEqual(list(islice(slotCandidates("ñañu"), 2)), ["ña1", "ña2"])
        self.assertEqual(list(islice(slotCandidates("ñañu"), 8, 10)), ["ña9", "ñ01"])
        # A 3-byte character: then three digits.
        self.assertEqual(list(islice(slotCandidates("日本語"), 2)), ["日1", "日2"])
        for name in ("ñañu", "日本語", "alberto", "x", "ab", "🙂🙂"):
            for candidate in slotCandidates(name):
                self.assertEqual(len(candidate.encode("utf-8")), 4, (name, candidate))


class SpoofTests(MsrpTestMixin, TestCase):
    """Issue 11 item 9: a protobuf r53l_ must not pass for the MSRP user r53l."""

    def test_msrpUserFirst(self) -> None:
        r53l, bea1 = self.client(b"r53l"), self.client(b"bea1")
        pb = self.protobuf("r53l_")
        pb.send(message("bea1", "hola"))
        self.assertEqual(pb.response().code, R.SUCCESSFUL_OPERATION)
        # Not r53l's slot: the first free one.
        self.assertEqual(bea1.wire(), b"\x00\x01r532r53l_: hola\x00")
        bea1.send(encodeListRequest())
        self.assertEqual(bea1.wire(), listFrame("r53l", "bea1", "r53l_ (r532)"))
        # A reply to r53l reaches the MSRP user, one to r532 the protobuf one (r531 looks like r53l).
        bea1.send(encodeMessage(b"r53l", b"para r53l"))
        self.assertEqual(r53l.wire(), b"\x00\x01bea1para r53l\x00")
        self.assertEqual(pb.responses(), [])
        bea1.send(encodeMessage(b"r532", b"para r53l_"))
        messg = pb.response().messg
        self.assertEqual(
            (messg.sender, messg.receiver, messg.text), ("bea1", "r53l_", "para r53l_")
        )
        self.assertEqual(r53l.wire(), b"")
        self.assertEqual(bea1.wire(), b"")

    def test_realNameWins(self) -> None:
        """
        r53l_ had the slot r53l; when r53l logs in, the real name wins and
        r53l_ moves to its next free slot.
        """
        bea1 = self.client(b"bea1")
        pb = self.protobuf("r53l_")
        pb.send(message("bea1", "uno"))
        self.assertEqual(bea1.wire(), b"\x00\x01r53lr53l_: uno\x00")
        r53l = self.client(b"r53l")
        pb.send(message("bea1", "dos"))
        self.assertEqual(bea1.wire(), b"\x00\x01r532r53l_: dos\x00")
        pb.responses()
        bea1.send(encodeListRequest())
        self.assertEqual(bea1.wire(), listFrame("bea1", "r53l_ (r532)", "r53l"))
        bea1.send(encodeMessage(b"r53l", b"hola"))
        self.assertEqual(r53l.wire(), b"\x00\x01bea1hola\x00")
        self.assertEqual(pb.responses(), [])
        bea1.send(encodeMessage(b"r532", b"hola"))
        self.assertEqual(pb.response().messg.receiver, "r53l_")

    def test_anyCaseAndAnyProtocol(self) -> None:
        """
        A slot is never an online name, nor looks like one, in any case and
        any protocol: with CARL and car2 online, car1 (which looks like
        carl) is skipped too.
        """
        bea1 = self.client(b"bea1")
        self.client(b"CARL")
        self.protobuf("car2")
        carla = self.protobuf("carla")
        carla.send(message("bea1", "hola"))
        self.assertEqual(bea1.wire(), b"\x00\x01car3carla: hola\x00")

    def test_slotsDoNotLookAlike(self) -> None:
        """
        Two long names with one head: the second gets car2, not car1, which
        looks like the first one's carl; and a user whose name looks like a
        slot (carI, capital i) wins it, its holder moving on.
        """
        bea1 = self.client(b"bea1")
        carla, carlos = self.protobuf("carla"), self.protobuf("carlos")
        carla.send(message("bea1", "a"))
        carlos.send(message("bea1", "b"))
        self.assertEqual(bea1.wire(), b"\x00\x01carlcarla: a\x00\x00\x01car2carlos: b\x00")
        self.client(b"carI")
        carla.send(message("bea1", "c"))
        self.assertEqual(bea1.wire(), b"\x00\x01car3carla: c\x00")


class AddressingTests(MsrpTestMixin, TestCase):
    """Issue 12 item 3: binary clients write to the slot they see."""

    def test_messageToSlot(self) -> None:
        bea1 = self.client(b"bea1")
        carla = self.protobuf("carla")
        carla.send(message("bea1", "hola bea1"))
        self.assertEqual(bea1.wire(), b"\x00\x01carlcarla: hola bea1\x00")
        carla.responses()
        for slot in (b"carl", b"CARL"):
            bea1.send(encodeMessage(slot, b"hola"))
            messg = carla.response().messg
            self.assertEqual((messg.sender, messg.receiver, messg.text), ("bea1", "carla", "hola"))
        self.assertEqual(bea1.wire(), b"")

    def test_shortNames(self) -> None:
        """'ana' is 'ana ' in frames; a C client's 0x00 padding is read as spaces."""
        bea1 = self.client(b"bea1")
        ana = self.protobuf("ana")
        bea1.send(encodeListRequest())
        self.assertEqual(bea1.wire(), listFrame("bea1", "ana"))
        for slot in (b"ana ", b"ana\x00", b"ANA "):
            bea1.send(encodeMessage(slot, b"hola"))
            self.assertEqual(ana.response().messg.text, "hola")
        bea1.send(encodeMessage(b"an\x00\x00", b"hola"))
        self.assertEqual(bea1.wire(), errorFrame(ERR_NOT_FOUND))

    def test_uniqueAmongLongNames(self) -> None:
        """Names alike get distinct slots, each reaching its own user; logout frees them."""
        bea1 = self.client(b"bea1")
        carla, carlos = self.protobuf("carla"), self.protobuf("carlos")
        carlito = self.protobuf("CARLITO")
        bea1.send(encodeListRequest())
        self.assertEqual(
            bea1.wire(),
            listFrame("bea1", "carla (carl)", "carlos (car2)", "CARLITO (CAR3)"),
        )
        for slot, user, name in (
            (b"carl", carla, "carla"), (b"car2", carlos, "carlos"), (b"car3", carlito, "CARLITO"),
        ):
            bea1.send(encodeMessage(slot, b"hola"))
            self.assertEqual(user.response().messg.receiver, name)
        # The slot stays with carlos while he is online; carla's is freed.
        carla.disconnect()
        carlota = self.protobuf("carlota")
        bea1.send(encodeListRequest())
        self.assertEqual(
            bea1.wire(),
            listFrame("bea1", "carlos (car2)", "CARLITO (CAR3)", "carlota (carl)"),
        )
        bea1.send(encodeMessage(b"carl", b"hola"))
        self.assertEqual(carlota.response().messg.receiver, "carlota")

    def test_docExamples(self) -> None:
        """The exact bytes docs/msrp.md shows for slots."""
        clt1 = self.client(b"clt1")
        carla = self.protobuf("carla")
        self.protobuf("ana")
        clt1.send(bytes.fromhex("0003"))
        self.assertEqual(
            clt1.wire(),
            b"\x00\x03Lista de clientes:\nCliente 1: clt1\nCliente 2: carla (carl)"
            b"\nCliente 3: ana\n\x00",
        )
        bea1 = self.client(b"bea1")
        carla.send(message("bea1", "hola bea1"))
        self.assertEqual(
            bea1.wire(),
            bytes.fromhex(
                "00 01 63 61 72 6c 63 61 72 6c 61 3a 20 68 6f 6c 61 20 62 65 61 31 00"
            ),
        )
        carla.responses()
        bea1.send(bytes.fromhex("00 01 63 61 72 6c 68 6f 6c 61 00"))
        messg = carla.response().messg
        self.assertEqual((messg.sender, messg.text), ("bea1", "hola"))

    def test_freedSlotIsNotFound(self) -> None:
        bea1 = self.client(b"bea1")
        carla = self.protobuf("carla")
        carla.disconnect()
        bea1.send(encodeMessage(b"carl", b"hola"))
        self.assertEqual(bea1.wire(), errorFrame(ERR_NOT_FOUND))

    def test_typedSlotAndFullName(self) -> None:
        """People may write to the full name or to the slot."""
        hum = self.human(b"hum1")
        carla = self.protobuf("carla")
        hum.send(b"carla uno\ncarl dos\n")
        self.assertEqual(
            [(r.messg.sender, r.messg.receiver, r.messg.text) for r in carla.responses()],
            [("hum1", "carla", "uno"), ("hum1", "carla", "dos")],
        )
        # People see full names, as before.
        carla.send(message("hum1", "hola"))
        self.assertEqual(hum.wire(), b"[carla]: hola\n")
        hum.send(b"clientes\n")
        self.assertEqual(hum.wire(), b"Lista de clientes:\nCliente 1: hum1\nCliente 2: carla\n")

    def test_slotOfUsersOnlineBefore(self) -> None:
        """A factory made while users of other protocols are online: they get slots at once."""
        presence = InMemoryPresenceService()
        presence.login(RecordingSession("other"), "carla", "")
        factory = MsrpFactory(presence, self.clock, metrics=presence.metrics)
        bea1 = MsrpClient(factory, b"bea1")
        bea1.send(encodeMessage(b"carl", b"hola") + encodeListRequest())
        self.assertEqual(bea1.wire(), listFrame("carla (carl)", "bea1"))
        self.assertEqual(presence.sessionFor("carla").messages[0].text, "hola")


    def test_noFreeSlot(self) -> None:
        """
        With every candidate taken, a user gets no slot: 4 spaces, which no
        binary client can write to, and the name alone in LIST.
        """
        for candidate in slotCandidates("carla"):
            # One that looks like a candidate online already is refused; it
            # is not free either.
            self.presence.login(RecordingSession("other"), candidate, "").addErrback(
                lambda f: f.trap(NameInUse)
            )
        bea1 = self.client(b"bea1")
        carla = self.protobuf("carla")
        carla.send(message("bea1", "hola"))
        self.assertEqual(bea1.wire(), b"\x00\x01    carla: hola\x00")
        bea1.send(encodeMessage(b"    ", b"hola") + encodeMessage(b"\x00\x00\x00\x00", b"hola"))
        self.assertEqual(bea1.wire(), errorFrame(ERR_NOT_FOUND) * 2)
        self.assertEqual(self.factory.slots.listEntry("carla"), "carla")
        # One candidate freed: the next login of a long name takes it.
        self.presence.logout(self.presence.sessionFor("c123"))
        self.protobuf("carlos").send(message("bea1", "hola"))
        self.assertEqual(bea1.wire(), b"\x00\x01c123carlos: hola\x00")


class FileTests(MsrpTestMixin, TestCase):
    def test_fileToSlot(self) -> None:
        """ARCH to a slot reaches the user of another protocol whose slot it is."""
        bea1 = self.client(b"bea1")
        everest = WholeFileSession(maxFileSize=10)
        self.presence.login(everest, "everest", "")
        bea1.send(encodeFileHeader(b"ever", b"f.txt", 4) + b"hola" + encodeListRequest())
        self.assertEqual(everest.files, [("bea1", "f.txt", b"hola")])
        self.assertEqual(bea1.wire(), listFrame("bea1", "everest (ever)"))

    def test_fileFromOtherAndBack(self) -> None:
        """A file from a long name carries its slot; a file back to that slot reaches them."""
        bea1 = self.client(b"bea1")
        self.client(b"ever")
        everest = WholeFileSession(maxFileSize=10)
        self.presence.login(everest, "everest", "")
        self.presence.sendFile(everest, "bea1", "foto.png", b"PNG")
        self.assertEqual(bea1.wire(), encodeFileHeader(b"eve1", b"foto.png", 3) + b"PNG")
        bea1.send(encodeFileHeader(b"eve1", b"r.txt", 2) + b"ok")
        self.assertEqual(everest.files, [("bea1", "r.txt", b"ok")])

    def test_fileToSlotRefusedInFullName(self) -> None:
        """A protocol without files: the error names the user, not the slot."""
        bea1 = self.client(b"bea1")
        self.protobuf("carla")
        bea1.send(encodeFileHeader(b"carl", b"f.txt", 2) + b"ab" + encodeListRequest())
        self.assertEqual(
            bea1.wire(),
            errorFrame(errNoFiles("carla")) + listFrame("bea1", "carla (carl)"),
        )
