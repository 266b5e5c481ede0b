"""
MSRP file transfer: relayed with flow control, ordering behind a file, ACK
matching, every failure, whole files to and from other protocols, and a
50 MB transfer between real sockets with bounded server memory.
"""

from __future__ import annotations

import gc
import hashlib
import os
import tracemalloc
import weakref

from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IPullProducer
from twisted.logger import Logger, formatEvent
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from chatd.limits import Limits
from chatd.msrp.codec import (
    Ack,
    FileChunk,
    FileEnd,
    FileHeader,
    MsrpFrameDecoder,
    encodeAck,
    encodeFileHeader,
    encodeListRequest,
    encodeMessage,
)
from chatd.metrics import FILE_CUT
from chatd.msrp.protocol import FILL_MAX, MsrpFactory, MsrpProtocol
from chatd.msrp.texts import (
    errAckSenderGone,
    errFileTooLarge,
    errFileStalled,
    errFileTooLargeFor,
    errNoFiles,
    errNoSuchAck,
    errNotDelivered,
    errQueueFull,
    errReceivingFile,
    errRecipientGone,
)
from chatd.presence import (
    LOGIN,
    ChatMessage,
    IChatSession,
    IFileReceiver,
    InMemoryPresenceService,
    RecipientBusy,
)
from tests.support import message
from tests.test_limits_logs import LogCapture
from tests.test_msrp_protocol import MsrpTestMixin, errorFrame, listFrame


@implementer(IChatSession, IFileReceiver)
class WholeFileSession:
    """A session of another protocol that takes whole files (as MSGR does)."""

    protocolName = "other"

    def __init__(self, maxFileSize: int) -> None:
        self.maxFileSize = maxFileSize
        self.messages: list[ChatMessage] = []
        self.files: list[tuple[str, str, bytes]] = []

    def deliverMessage(self, message: ChatMessage) -> None:
        self.messages.append(message)

    def disconnect(self, reason: str) -> None:
        pass

    def deliverFile(self, sender: str, filename: str, content: bytes) -> None:
        self.files.append((sender, filename, content))


def header(sender: bytes, filename: bytes, size: int, port: int = 0, ip: bytes = b"") -> bytes:
    return encodeFileHeader(sender, filename, size, port, ip)


class RelayTests(MsrpTestMixin, TestCase):
    def test_file(self) -> None:
        """
        The recipient gets the header with the sender's name in the slot,
        then the content; its ACK goes to the sender.
        """
        alic, bob = self.client(b"alic"), self.client(b"bob_")
        alic.send(header(b"bob_", b"documento.txt", 10, 4321, b"10.0.0.5") + b"01234")
        alic.send(b"56789")
        self.assertEqual(
            bob.wire(),
            header(b"alic", b"documento.txt", 10, 4321, b"10.0.0.5") + b"0123456789",
        )
        bob.send(encodeAck(b"documento.txt"))
        self.assertEqual(alic.wire(), b"\x00\x04documento.txt\x00")
        self.assertEqual(bob.wire(), b"")

    def test_byteByByte(self) -> None:
        alic, bob = self.client(b"alic"), self.client(b"bob_")
        content = bytes(range(256))
        alic.sendByteByByte(
            header(b"bob_", b"f", len(content)) + content + encodeMessage(b"bob_", b"fin")
        )
        self.assertEqual(
            bob.wire(), header(b"alic", b"f", 256) + content + b"\x00\x01alicfin\x00"
        )
        bob.sendByteByByte(encodeAck(b"f"))
        self.assertEqual(alic.wire(), encodeAck(b"f"))

    def test_contentPassedThrough(self) -> None:
        """The bytes of a read reach the recipient's transport as they are."""
        alic, bob = self.client(b"alic"), self.client(b"bob_")
        alic.send(header(b"bob_", b"f", 3 * 65536))
        written = []
        self.patch(bob.transport, "write", written.append)
        chunk = b"x" * 65536
        alic.send(chunk)
        self.assertEqual(len(written), 1)
        self.assertIs(written[0], chunk)

    def test_emptyFile(self) -> None:
        alic, bob = self.client(b"alic"), self.client(b"bob_")
        alic.send(header(b"bob_", b"vacio", 0) + encodeMessage(b"bob_", b"x"))
        self.assertEqual(bob.wire(), header(b"alic", b"vacio", 0) + b"\x00\x01alicx\x00")
        bob.send(encodeAck(b"vacio"))
        self.assertEqual(alic.wire(), encodeAck(b"vacio"))

    def test_toSelf(self) -> None:
        alic = self.client(b"alic")
        alic.send(header(b"alic", b"f", 3) + b"abc" + encodeAck(b"f"))
        self.assertEqual(alic.wire(), header(b"alic", b"f", 3) + b"abc" + encodeAck(b"f"))

    def test_framesWaitBehindFile(self) -> None:
        """
        While a file streams to a user, messages and replies for them wait
        and follow it in order; nothing is interleaved inside the content.
        """
        alic, bob, carl = self.client(b"alic"), self.client(b"bob_"), self.client(b"carl")
        pb = self.protobuf("dave")
        alic.send(header(b"bob_", b"f", 6) + b"abc")
        carl.send(encodeMessage(b"bob_", b"uno"))
        pb.send(message("bob_", "dos"))
        bob.send(encodeListRequest() + encodeMessage(b"nadi", b"x"))
        carl.send(encodeMessage(b"bob_", b"tres"))
        self.assertEqual(bob.wire(), header(b"alic", b"f", 6) + b"abc")
        alic.send(b"def")
        self.assertEqual(
            bob.wire(),
            b"def"
            + b"\x00\x01carluno\x00"
            + b"\x00\x01davedos\x00"
            + listFrame("alic", "bob_", "carl", "dave")
            + errorFrame("Cliente objetivo no encontrado.")
            + b"\x00\x01carltres\x00",
        )
        # Others are not held up by bob's file.
        carl.send(encodeMessage(b"alic", b"hola"))
        self.assertEqual(alic.wire(), b"\x00\x01carlhola\x00")

    def test_queueLimit(self) -> None:
        """
        Past the limit of what waits for a user, messages to them are refused
        to their senders; the user is not disconnected.
        """
        self.factory.maxQueued = 30
        alic, bob, carl = self.client(b"alic"), self.client(b"bob_"), self.client(b"carl")
        pb = self.protobuf("dave")
        alic.send(header(b"bob_", b"f", 4) + b"ab")
        carl.send(encodeMessage(b"bob_", b"x" * 10))  # 17 bytes wait
        carl.send(encodeMessage(b"bob_", b"y" * 10))  # 34 would: refused
        self.assertEqual(carl.wire(), errorFrame(errQueueFull("bob_")))
        self.assertEqual(
            errQueueFull("bob_"), "No se pudo entregar a bob_: su cola de salida está llena."
        )
        pb.send(message("bob_", "z" * 20))
        refusal = pb.response()
        self.assertEqual(refusal.code, refusal.FAILED_OPERATION)
        self.assertEqual(
            refusal.response, "not delivered: bob_ is not reading: too much waits for them"
        )
        pb.send(message("all", "w" * 20))
        self.assertEqual(pb.response().response, "delivered to 2 users")  # not bob_
        self.assertEqual(alic.wire(), b"\x00\x01dave" + b"w" * 20 + b"\x00")
        carl.wire()
        alic.send(b"cd")
        self.assertEqual(
            bob.wire(), header(b"alic", b"f", 4) + b"abcd" + b"\x00\x01carl" + b"x" * 10 + b"\x00"
        )
        self.assertFalse(bob.closed)
        carl.send(encodeMessage(b"bob_", b"y" * 10))
        self.assertEqual(bob.wire(), b"\x00\x01carl" + b"y" * 10 + b"\x00")

    def test_secondFileWaits(self) -> None:
        """
        A second file to a busy user waits its turn: its sender is paused,
        and its header and content follow the first file.
        """
        alic, bob, carl = self.client(b"alic"), self.client(b"bob_"), self.client(b"carl")
        alic.send(header(b"bob_", b"a", 4) + b"12")
        carl.send(header(b"bob_", b"c", 4) + b"xy")
        self.assertTrue(carl.readingPaused)
        self.assertFalse(alic.readingPaused)
        self.assertEqual(bob.wire(), header(b"alic", b"a", 4) + b"12")
        alic.send(b"34")
        self.assertFalse(carl.readingPaused)
        self.assertEqual(bob.wire(), b"34" + header(b"carl", b"c", 4) + b"xy")
        carl.send(b"zw" + encodeMessage(b"bob_", b"ok"))
        self.assertEqual(bob.wire(), b"zw\x00\x01carlok\x00")
        # ACKs go to the right senders.
        bob.send(encodeAck(b"c") + encodeAck(b"a"))
        self.assertEqual(carl.wire(), encodeAck(b"c"))
        self.assertEqual(alic.wire(), encodeAck(b"a"))

    def test_waitingFileHeldWhole(self) -> None:
        """A small file that arrived whole while waiting is written in one go."""
        alic, bob, carl = self.client(b"alic"), self.client(b"bob_"), self.client(b"carl")
        alic.send(header(b"bob_", b"a", 2) + b"1")
        carl.send(header(b"bob_", b"c", 2) + b"xy" + encodeMessage(b"alic", b"hey"))
        self.assertFalse(carl.readingPaused)  # its file is all here
        self.assertEqual(alic.wire(), b"\x00\x01carlhey\x00")
        alic.send(b"2")
        self.assertEqual(bob.wire(), header(b"alic", b"a", 2) + b"12" + header(b"carl", b"c", 2) + b"xy")

    def test_backpressure(self) -> None:
        """
        A recipient whose transport is full pauses the sender's transport;
        when it drains, the sender is resumed. The server holds about one
        read beyond the transport's buffer.
        """
        alic, bob = self.client(b"alic"), self.client(b"bob_", bufferSize=1000)
        alic.send(header(b"bob_", b"f", 10_000))
        received = bob.wire()
        alic.send(b"a" * 600)
        self.assertFalse(alic.readingPaused)
        alic.send(b"b" * 600)
        self.assertTrue(alic.readingPaused)
        received += bob.wire()
        self.assertFalse(alic.readingPaused)
        for _ in range(14):
            alic.send(b"c" * 600)
            if alic.readingPaused:
                received += bob.wire()
        alic.send(b"d" * 400 + encodeListRequest())
        received += bob.wire()
        self.assertEqual(
            received,
            header(b"alic", b"f", 10_000) + b"a" * 600 + b"b" * 600 + b"c" * 8400 + b"d" * 400,
        )
        self.assertLessEqual(bob.transport.maxBuffered, 1000 + 600)
        self.assertEqual(alic.wire(), listFrame("alic", "bob_"))

    def test_messagesWaitForFullTransport(self) -> None:
        """
        Messages to a user who does not read wait in the queue once the
        transport's buffer is full, and are refused past the limit.
        """
        self.factory.maxQueued = 100
        alic, bob = self.client(b"alic"), self.client(b"bob_", bufferSize=50)
        alic.send(encodeMessage(b"bob_", b"x" * 60))  # fills the buffer
        for _ in range(5):
            alic.send(encodeMessage(b"bob_", b"y" * 40))  # 47 bytes each
        self.assertEqual(alic.wire(), errorFrame(errQueueFull("bob_")) * 3)
        self.assertEqual(bob.protocol.outbound.waitingBytes, 94)
        self.assertEqual(
            bob.wire(), b"\x00\x01alic" + b"x" * 60 + b"\x00"
        )  # read: the queue drains into the transport
        self.assertEqual(bob.wire(), (b"\x00\x01alic" + b"y" * 40 + b"\x00") * 2)

    def test_ownRepliesPauseReading(self) -> None:
        """
        A user's own replies are never refused, but once more than the limit
        waits for them, the server stops reading their requests.
        """
        self.factory.maxQueued = 100
        alic, bob = self.client(b"alic"), self.client(b"bob_")
        alic.send(header(b"bob_", b"f", 2) + b"1")
        bob.send(encodeListRequest() * 3)
        self.assertTrue(bob.readingPaused)
        alic.send(b"2")
        self.assertFalse(bob.readingPaused)
        self.assertEqual(bob.wire(), header(b"alic", b"f", 2) + b"12" + listFrame("alic", "bob_") * 3)


class AckTests(MsrpTestMixin, TestCase):
    def test_oldestFirst(self) -> None:
        """Two files of one name: the first ACK goes to the first sender."""
        alic, bob, carl = self.client(b"alic"), self.client(b"bob_"), self.client(b"carl")
        alic.send(header(b"bob_", b"f", 1) + b"a")
        carl.send(header(b"bob_", b"f", 1) + b"c")
        bob.wire()
        bob.send(encodeAck(b"f"))
        self.assertEqual((alic.wire(), carl.wire()), (encodeAck(b"f"), b""))
        bob.send(encodeAck(b"f"))
        self.assertEqual((alic.wire(), carl.wire()), (b"", encodeAck(b"f")))
        bob.send(encodeAck(b"f"))
        self.assertEqual(bob.wire(), errorFrame(errNoSuchAck("f")))
        self.assertEqual(errNoSuchAck("f"), "Ningún archivo f espera confirmación.")

    def test_noMatch(self) -> None:
        """An ACK for a file not received, or not received whole, is an error."""
        alic, bob = self.client(b"alic"), self.client(b"bob_")
        bob.send(encodeAck(b"nada"))
        self.assertEqual(bob.wire(), errorFrame(errNoSuchAck("nada")))
        alic.send(header(b"bob_", b"f", 2) + b"a")
        bob.send(encodeAck(b"f"))
        self.assertEqual(bob.wire(), header(b"alic", b"f", 2) + b"a")  # the ERROR waits
        alic.send(b"b")
        self.assertEqual(bob.wire(), b"b" + errorFrame(errNoSuchAck("f")))
        self.assertEqual(alic.wire(), b"")

    def test_matchedPerRecipient(self) -> None:
        """Only the recipient of a file can acknowledge it."""
        alic, bob, carl = self.client(b"alic"), self.client(b"bob_"), self.client(b"carl")
        alic.send(header(b"bob_", b"f", 1) + b"a")
        carl.send(encodeAck(b"f"))
        self.assertEqual(carl.wire(), errorFrame(errNoSuchAck("f")))
        self.assertEqual(alic.wire(), b"")

    def test_unackedFilesDoNotKeepSendersAlive(self) -> None:
        """
        A recipient that never ACKs holds no sender that has left: their
        connections (transport, buffers) are freed, and a late ACK is told
        the sender is gone.
        """
        # Log events name their source; keep them out of the global buffer
        # (which would hold the sender here, not in a running server).
        self.patch(MsrpProtocol, "log", Logger(observer=lambda event: None))
        bob = self.client(b"bob_")
        alic = self.client(b"alic")
        alic.send(header(b"bob_", b"f", 1) + b"a")
        gone = weakref.ref(alic.protocol)
        alic.disconnect()
        del alic
        gc.collect()
        self.assertIsNone(gone())
        bob.wire()
        bob.send(encodeAck(b"f"))
        self.assertEqual(bob.wire(), errorFrame(errAckSenderGone("f")))

    def test_senderGone(self) -> None:
        alic, bob = self.client(b"alic"), self.client(b"bob_")
        alic.send(header(b"bob_", b"f", 1) + b"a")
        alic.disconnect()
        self.client(b"alic")  # someone else of the same name
        bob.wire()
        bob.send(encodeAck(b"f"))
        self.assertEqual(bob.wire(), errorFrame(errAckSenderGone("f")))


class FailureTests(MsrpTestMixin, TestCase):
    def test_recipientUnknown(self) -> None:
        """ERROR, and the announced bytes are read and dropped."""
        alic = self.client(b"alic")
        content = encodeMessage(b"alic", b"no soy un mensaje")
        alic.send(header(b"nadi", b"f", len(content)) + content + encodeListRequest())
        self.assertEqual(
            alic.wire(), errorFrame("Cliente objetivo no encontrado.") + listFrame("alic")
        )

    def test_recipientGoneMidFile(self) -> None:
        """ERROR to the sender, the rest dropped, the stream in sync."""
        alic, bob = self.client(b"alic"), self.client(b"bob_")
        alic.send(header(b"bob_", b"f.bin", 6) + b"abc")
        bob.disconnect()
        self.assertEqual(
            alic.wire(),
            errorFrame("Error al recibir el archivo. bob_ se desconectó; f.bin no se entregó."),
        )
        self.assertEqual(errRecipientGone("bob_", "f.bin")[:28], "Error al recibir el archivo.")
        alic.send(b"def" + encodeListRequest())
        self.assertEqual(alic.wire(), listFrame("alic"))

    def test_recipientGoneWhileSenderPaused(self) -> None:
        """A sender paused behind a full recipient is resumed when it leaves."""
        alic, bob = self.client(b"alic"), self.client(b"bob_", bufferSize=10)
        alic.send(header(b"bob_", b"f", 100) + b"x" * 50)
        self.assertTrue(alic.readingPaused)
        bob.disconnect()
        self.assertFalse(alic.readingPaused)
        self.assertEqual(alic.wire(), errorFrame(errRecipientGone("bob_", "f")))

    def test_recipientGoneWhileFileWaits(self) -> None:
        alic, bob, carl = self.client(b"alic"), self.client(b"bob_"), self.client(b"carl")
        alic.send(header(b"bob_", b"a", 4) + b"12")
        carl.send(header(b"bob_", b"c", 2) + b"x")
        self.assertTrue(carl.readingPaused)
        bob.disconnect()
        self.assertFalse(carl.readingPaused)
        self.assertEqual(carl.wire(), errorFrame(errRecipientGone("bob_", "c")))
        self.assertEqual(alic.wire(), errorFrame(errRecipientGone("bob_", "a")))
        carl.send(b"y" + encodeListRequest())
        self.assertEqual(carl.wire(), listFrame("alic", "carl"))

    def test_recipientClosedByError(self) -> None:
        """A recipient closed for its own fault mid-file: the sender is told."""
        alic, bob = self.client(b"alic"), self.client(b"bob_")
        alic.send(header(b"bob_", b"f", 4) + b"ab")
        bob.send(b"\x00\x63")  # unknown opcode
        # No ERROR can be written inside the content: bob is just cut off.
        self.assertEqual(bob.wire(), header(b"alic", b"f", 4) + b"ab")
        self.assertTrue(bob.closed)
        self.assertTrue(bob.transport.disconnected)  # aborted
        self.assertEqual(alic.wire(), errorFrame(errRecipientGone("bob_", "f")))

    def test_senderGoneMidFile(self) -> None:
        """
        The recipient stays connected: the file is completed with zero bytes
        and followed at once by an ERROR saying it was not delivered (so it
        is never taken for a whole one), then by everything that waited for
        the recipient, its own answers included. The file cannot be
        acknowledged.
        """
        alic, bob, carl = self.client(b"alic"), self.client(b"bob_"), self.client(b"carl")
        alic.send(header(b"bob_", b"f", 6) + b"abc")
        carl.send(encodeMessage(b"bob_", b"espera"))
        bob.send(encodeListRequest())
        self.assertEqual(bob.wire(), header(b"alic", b"f", 6) + b"abc")
        alic.disconnect()
        self.assertEqual(
            bob.wire(),
            b"\x00\x00\x00"
            + errorFrame("Error al recibir el archivo. alic se desconectó; f no se entregó.")
            + b"\x00\x01carlespera\x00"
            + listFrame("alic", "bob_", "carl"),
        )
        self.assertFalse(bob.closed)
        self.assertIsNotNone(self.presence.lookup("bob_"))
        bob.send(encodeAck(b"f"))
        self.assertEqual(bob.wire(), errorFrame(errNoSuchAck("f")))
        self.assertEqual(carl.wire(), b"")
        carl.send(encodeMessage(b"bob_", b"sigo"))
        self.assertEqual(bob.wire(), b"\x00\x01carlsigo\x00")

    def test_senderGoneMidFileSlowReader(self) -> None:
        """
        The completion goes out only as fast as the recipient reads: the
        server holds about one piece beyond the transport's buffer.
        """
        alic, bob = self.client(b"alic"), self.client(b"bob_", bufferSize=1000)
        size = 300_000
        alic.send(header(b"bob_", b"big", size) + b"0123456789")
        bob.send(encodeListRequest())
        alic.disconnect()
        received = b""
        for _ in range(10):
            received += bob.wire()
        self.assertLessEqual(bob.transport.maxBuffered, 1000 + 65536)
        self.assertEqual(
            received,
            header(b"alic", b"big", size)
            + b"0123456789"
            + bytes(size - 10)
            + errorFrame(errRecipientGone("alic", "big"))
            + listFrame("alic", "bob_"),  # answered when asked
        )

    def test_senderGoneWhileFileWaits(self) -> None:
        """A file that never started is dropped; the recipient does not notice."""
        alic, bob, carl = self.client(b"alic"), self.client(b"bob_"), self.client(b"carl")
        alic.send(header(b"bob_", b"a", 2) + b"1")
        carl.send(header(b"bob_", b"c", 4) + b"xy")
        carl.disconnect()
        alic.send(b"2")
        self.assertEqual(bob.wire(), header(b"alic", b"a", 2) + b"12")
        self.assertFalse(bob.closed)
        self.assertEqual(bob.protocol.outbound.waitingBytes, 0)

    def test_serverShutdown(self) -> None:
        """Stopping the server loses every connection: the same rules hold."""
        alic, bob = self.client(b"alic"), self.client(b"bob_")
        alic.send(header(b"bob_", b"f", 6) + b"abc")
        bob.wire()
        for client in (alic, bob):
            client.disconnect()
        self.assertEqual(self.presence.users(), [])
        # bob was still there when alic's connection went: the sender-gone rule.
        self.assertEqual(bob.wire(), b"\x00\x00\x00" + errorFrame(errRecipientGone("alic", "f")))

    def test_serverStopSaysGoodbye(self) -> None:
        """
        When the service stops, clients are told in their mode's terms; the
        recipient of a file under way is cut off instead, never handed a file
        that looks complete.
        """
        alic, bob, carl = self.client(b"alic"), self.client(b"bob_"), self.client(b"carl")
        human = self.human(b"hugo")
        alic.send(header(b"bob_", b"f", 6) + b"abc")
        bob.wire()
        self.factory.shutDown()
        self.assertClosedWith(carl, errorFrame("El servidor se está apagando."))
        self.assertClosedWith(human, "ERROR: El servidor se está apagando.\n".encode())
        self.assertTrue(bob.closed)
        self.assertEqual(bob.wire(), b"")
        self.assertTrue(alic.closed)
        self.assertEqual(self.presence.users(), [])

    def test_tooLarge(self) -> None:
        """A file over the maximum: ERROR and the connection is closed."""
        alic, bob = self.client(b"alic"), self.client(b"bob_")
        alic.send(header(b"bob_", b"f", self.maxFileSize + 1) + b"abc")
        self.assertClosedWith(
            alic, errorFrame(errFileTooLarge(self.maxFileSize + 1, self.maxFileSize))
        )
        self.assertEqual(
            errFileTooLarge(5, 4), "Archivo demasiado grande: 5 bytes (máximo 4)."
        )
        self.assertEqual(bob.wire(), b"")

    def test_largestAccepted(self) -> None:
        alic, bob = self.client(b"alic"), self.client(b"bob_")
        alic.send(header(b"bob_", b"f", self.maxFileSize))
        self.assertFalse(alic.closed)
        self.assertEqual(bob.wire(), header(b"alic", b"f", self.maxFileSize))

    def test_badFilename(self) -> None:
        alic, bob = self.client(b"alic"), self.client(b"bob_")
        alic.send(header(b"bob_", b"", 1) + b"x" + header(b"bob_", b"\xff", 1) + b"x")
        expected = errorFrame(
            "Error en el formato del mensaje. El nombre de archivo está vacío o no es UTF-8 válido."
        )
        self.assertEqual(alic.wire(), expected * 2)
        self.assertEqual(bob.wire(), b"")

    def test_queueFullForHeader(self) -> None:
        self.factory.maxQueued = 20
        alic, bob, carl = self.client(b"alic"), self.client(b"bob_"), self.client(b"carl")
        alic.send(header(b"bob_", b"a", 2) + b"1")
        carl.send(header(b"bob_", b"a-long-name.txt", 2) + b"xy" + encodeListRequest())
        self.assertEqual(
            carl.wire(), errorFrame(errQueueFull("bob_")) + listFrame("alic", "bob_", "carl")
        )


class StalledFileTests(MsrpTestMixin, TestCase):
    """
    A file that makes no progress for --file-idle-timeout seconds (30 by
    default) is abandoned: its sender and its recipient are told, and the
    recipient gets what waited for it.
    """

    def test_stalledSender(self) -> None:
        """
        The attack: a file is announced and a few bytes sent, then nothing.
        The recipient is held up for the timeout, not longer; what was
        accepted for it meanwhile (others' messages, its own LIST answer)
        follows the ERROR; the sender's rest is read and dropped.
        """
        alic, bob = self.client(b"alic"), self.client(b"bob_", bufferSize=1000)
        carl = self.client(b"carl")
        size = 200_000
        alic.send(header(b"bob_", b"f.bin", size) + b"0123456789")
        for i in range(17):
            carl.send(encodeMessage(b"bob_", b"mensaje %d" % i))
        bob.send(encodeListRequest())
        self.clock.advance(29.9)
        self.assertEqual(alic.wire(), b"")
        self.assertEqual(carl.wire(), b"")  # all 17 accepted
        received = bob.wire()
        self.assertEqual(received, header(b"alic", b"f.bin", size) + b"0123456789")
        self.clock.advance(0.1)
        stalled = "Error al recibir el archivo. f.bin no avanzó en 30 s; no se entregó."
        self.assertEqual(errFileStalled("f.bin", 30), stalled)
        self.assertEqual(alic.wire(), errorFrame(stalled))
        while not received.endswith(listFrame("alic", "bob_", "carl")):
            more = bob.wire()
            self.assertNotEqual(more, b"")
            received += more
        self.assertEqual(
            received,
            header(b"alic", b"f.bin", size)
            + b"0123456789"
            + bytes(size - 10)
            + errorFrame(stalled)
            + b"".join(b"\x00\x01carlmensaje %d\x00" % i for i in range(17))
            + listFrame("alic", "bob_", "carl"),
        )
        self.assertLessEqual(bob.transport.maxBuffered, 1000 + 65536)
        # The sender goes on: the rest of its content is read and dropped.
        alic.send(b"x" * (size - 10) + encodeListRequest())
        self.assertEqual(alic.wire(), listFrame("alic", "bob_", "carl"))
        self.assertEqual(bob.wire(), b"")
        # It leaving now changes nothing for bob.
        alic.disconnect()
        self.assertEqual(bob.wire(), b"")
        self.assertFalse(bob.closed)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_attackerLeaves(self) -> None:
        """
        The report's case: 10**9 bytes announced, 10 sent, then the sender
        leaves. Completing that with zero bytes would cost the recipient
        10**9 bytes for 10: instead, while the file streams, a third user's
        17 messages are refused at once, each with an ERROR; the
        recipient's own LIST waits behind the file; when the sender leaves,
        the recipient is disconnected (its LIST answer goes with its
        connection), and nothing any other user sent was taken for it.
        """
        logs = LogCapture(self)
        alic, bob = self.client(b"alic"), self.client(b"bob_", bufferSize=65536)
        carl = self.client(b"carl")
        size = 10**9
        alic.send(header(b"bob_", b"big.iso", size) + b"0123456789")
        for i in range(17):
            carl.send(encodeMessage(b"bob_", b"mensaje %d" % i))
        busy = "No se pudo entregar a bob_: está recibiendo un archivo grande."
        self.assertEqual(errReceivingFile("bob_"), busy)
        self.assertEqual(carl.wire(), errorFrame(busy) * 17)
        bob.send(encodeListRequest())
        self.clock.advance(10)
        self.assertEqual(bob.wire(), header(b"alic", b"big.iso", size) + b"0123456789")
        alic.disconnect()
        self.assertTrue(bob.closed)
        self.assertTrue(bob.transport.disconnected)  # aborted: nothing passes for content
        self.assertEqual(bob.wire(), b"")
        self.assertIsNone(self.presence.lookup("bob_"))
        self.assertEqual(bob.protocol.closeReason, FILE_CUT)
        (cut,) = logs.take("file-cut")
        self.assertEqual(
            (cut["name"], cut["sender"], cut["missing"], cut["disconnected"]),
            ("bob_", "alic", size - 10, True),
        )
        self.assertEqual(
            formatEvent(cut),
            "msrp bob_: the sender alic of 'big.iso' left mid-file; 999999990"
            " bytes are missing: more than can be completed, so it is disconnected",
        )
        self.assertEqual(carl.wire(), b"")
        carl.send(encodeListRequest())
        self.assertEqual(carl.wire(), listFrame("carl"))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_largeStalledFile(self) -> None:
        """
        A file that stalls with one byte more than FILL_MAX missing: its
        sender gets the ERROR and goes on; its recipient, to which nothing
        from others was let wait, is disconnected instead of completed.
        """
        logs = LogCapture(self)
        alic, bob, carl = self.client(b"alic"), self.client(b"bob_"), self.client(b"carl")
        size = FILL_MAX + 11
        alic.send(header(b"bob_", b"f.bin", size) + b"0123456789")
        carl.send(encodeMessage(b"bob_", b"hola"))
        self.assertEqual(carl.wire(), errorFrame(errReceivingFile("bob_")))
        bob.send(encodeListRequest())
        self.assertEqual(bob.wire(), header(b"alic", b"f.bin", size) + b"0123456789")
        self.clock.advance(30)
        self.assertEqual(alic.wire(), errorFrame(errFileStalled("f.bin", 30)))
        self.assertTrue(bob.closed)
        self.assertTrue(bob.transport.disconnected)
        self.assertEqual(bob.protocol.closeReason, FILE_CUT)
        (stalled,) = logs.take("file-stalled")
        self.assertEqual((stalled["missing"], stalled["disconnected"]), (FILL_MAX + 1, True))
        self.assertEqual(
            formatEvent(stalled),
            "msrp file 'f.bin' from alic to bob_ abandoned: no progress for 30.0 s;"
            " 1048577 bytes are missing: more than can be completed, so the"
            " receiver is disconnected",
        )
        self.assertEqual(bob.wire(), b"")
        self.assertIsNone(self.presence.lookup("bob_"))
        # The sender is told once; its rest is read and dropped.
        alic.send(b"x" * (size - 10) + encodeListRequest())
        self.assertEqual(alic.wire(), listFrame("alic", "carl"))
        self.assertEqual(carl.wire(), b"")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_refusedUntilTheRestFits(self) -> None:
        """
        While more than FILL_MAX of a file for a user is still to arrive,
        messages and files for that user are refused at once, in each
        sender's terms; once FILL_MAX or less is to come they wait behind
        the file again, and a cut then completes it with zeros, the ERROR,
        then all of them.
        """
        alic, bob, carl = self.client(b"alic"), self.client(b"bob_"), self.client(b"carl")
        pb = self.protobuf("dave")
        hugo = self.human(b"hugo")
        other = WholeFileSession(maxFileSize=0)
        self.presence.login(other, "everest", "")
        size = FILL_MAX + 100
        alic.send(header(b"bob_", b"f", size) + b"a" * 99)  # FILL_MAX + 1 to come
        busy = errReceivingFile("bob_")
        carl.send(encodeMessage(b"bob_", b"uno"))
        carl.send(header(b"bob_", b"g", 1) + b"x" + encodeListRequest())
        self.assertEqual(
            carl.wire(),
            errorFrame(busy) * 2 + listFrame("alic", "bob_", "carl", "dave", "hugo", "everest (ever)"),
        )
        pb.send(message("bob_", "dos"))
        refusal = pb.response()
        self.assertEqual(refusal.code, refusal.FAILED_OPERATION)
        self.assertEqual(
            refusal.response, "not delivered: bob_ is receiving a large file; try again later"
        )
        pb.send(message("all", "a todos"))
        self.assertEqual(pb.response().response, "delivered to 4 users")  # not bob_
        for client in (alic, carl):
            self.assertEqual(client.wire(), b"\x00\x01davea todos\x00")
        self.assertEqual(hugo.wire(), b"[dave -> all]: a todos\n")
        self.assertEqual(other.messages, [ChatMessage("dave", "all", "a todos")])
        hugo.send(b"bob_ hola\n")
        self.assertEqual(hugo.wire(), f"ERROR: {busy}\n".encode())
        with self.assertRaises(RecipientBusy):
            self.presence.sendFile(other, "bob_", "foto.png", b"PNG")
        self.assertEqual(bob.wire(), header(b"alic", b"f", size) + b"a" * 99)
        # One more byte: FILL_MAX to come, which a cut can complete.
        alic.send(b"a")
        carl.send(encodeMessage(b"bob_", b"tres"))
        carl.send(header(b"bob_", b"g", 1) + b"x")
        pb.send(message("bob_", "cuatro"))
        self.assertEqual(pb.response().response, "delivered to bob_")
        hugo.send(b"bob_ cinco\n")
        self.presence.sendFile(other, "bob_", "foto.png", b"PNG")
        self.assertEqual(carl.wire() + hugo.wire(), b"")
        logs = LogCapture(self)
        alic.disconnect()
        self.assertFalse(bob.closed)
        (cut,) = logs.take("file-cut")
        self.assertEqual((cut["missing"], cut["disconnected"]), (FILL_MAX, False))
        self.assertEqual(
            formatEvent(cut),
            "msrp bob_: the sender alic of 'f' left mid-file; 1048576 bytes are"
            " missing: completed with zeros",
        )
        self.assertEqual(
            bob.wire(),
            b"a"
            + bytes(FILL_MAX)
            + errorFrame(errRecipientGone("alic", "f"))
            + b"\x00\x01carltres\x00"
            + header(b"carl", b"g", 1)
            + b"x"
            + b"\x00\x01davecuatro\x00"
            + b"\x00\x01hugocinco\x00"
            + header(b"ever", b"foto.png", 3)
            + b"PNG",
        )
        bob.send(encodeAck(b"g"))
        self.assertEqual(carl.wire(), encodeAck(b"g"))

    def test_largeFileWaitingItsTurn(self) -> None:
        """
        A large file that waits behind another has others' frames refused
        already: once it starts, nothing of theirs may be behind it.
        """
        alic, bob, carl = self.client(b"alic"), self.client(b"bob_"), self.client(b"carl")
        dave = self.client(b"dave")
        alic.send(header(b"bob_", b"a", 2) + b"1")
        carl.send(header(b"bob_", b"c", FILL_MAX + 2) + b"x")
        self.assertTrue(carl.readingPaused)
        dave.send(encodeMessage(b"bob_", b"hola"))
        self.assertEqual(dave.wire(), errorFrame(errReceivingFile("bob_")))
        alic.send(b"2")
        self.assertEqual(
            bob.wire(), header(b"alic", b"a", 2) + b"12" + header(b"carl", b"c", FILL_MAX + 2) + b"x"
        )
        carl.disconnect()
        self.assertTrue(bob.closed)
        self.assertEqual(bob.wire(), b"")
        self.assertEqual(alic.wire() + dave.wire(), b"")

    def test_progressKeepsItAlive(self) -> None:
        """The timeout counts from the last content that arrived."""
        alic, bob = self.client(b"alic"), self.client(b"bob_")
        alic.send(header(b"bob_", b"f", 4) + b"a")
        for part in (b"b", b"c"):
            self.clock.advance(29)
            alic.send(part)
        self.clock.advance(29)
        alic.send(b"d")
        self.clock.advance(60)
        self.assertEqual(bob.wire(), header(b"alic", b"f", 4) + b"abcd")
        self.assertEqual(alic.wire(), b"")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_recipientNotReading(self) -> None:
        """
        A recipient that does not read holds the sender up for the timeout
        only: then the sender is told, resumed, and its rest is dropped.
        """
        alic, bob = self.client(b"alic"), self.client(b"bob_", bufferSize=10)
        alic.send(header(b"bob_", b"f", 100) + b"x" * 50)
        self.assertTrue(alic.readingPaused)
        self.clock.advance(30)
        self.assertFalse(alic.readingPaused)
        self.assertEqual(alic.wire(), errorFrame(errFileStalled("f", 30)))
        alic.send(b"y" * 50 + encodeListRequest())
        self.assertEqual(alic.wire(), listFrame("alic", "bob_"))
        received = b""
        for _ in range(3):
            received += bob.wire()
        self.assertEqual(
            received,
            header(b"alic", b"f", 100) + b"x" * 50 + bytes(50)
            + errorFrame(errFileStalled("f", 30)),
        )

    def test_waitingFileNotTimed(self) -> None:
        """
        A file waiting its turn behind one that makes progress is not
        abandoned; its own timeout starts when it goes out.
        """
        alic, bob, carl = self.client(b"alic"), self.client(b"bob_"), self.client(b"carl")
        alic.send(header(b"bob_", b"a", 4) + b"1")
        carl.send(header(b"bob_", b"c", 2) + b"x")
        for part in (b"2", b"3", b"4"):
            self.clock.advance(20)
            alic.send(part)
        self.assertEqual(
            bob.wire(), header(b"alic", b"a", 4) + b"1234" + header(b"carl", b"c", 2) + b"x"
        )
        self.clock.advance(29)
        carl.send(b"y")
        self.assertEqual(bob.wire(), b"y")
        self.assertEqual(alic.wire() + carl.wire(), b"")

    def test_off(self) -> None:
        """--file-idle-timeout 0: a stalled file waits as long as it likes."""
        self.factory.limits = Limits(fileIdleTimeout=0)
        alic, bob = self.client(b"alic"), self.client(b"bob_")
        alic.send(header(b"bob_", b"f", 4) + b"ab")
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(10**6)
        self.assertEqual(alic.wire(), b"")
        alic.send(b"cd")
        self.assertEqual(bob.wire(), header(b"alic", b"f", 4) + b"abcd")

    def test_recipientLeavesAfterStall(self) -> None:
        """The sender of an abandoned file is told once, not again."""
        alic, bob = self.client(b"alic"), self.client(b"bob_", bufferSize=10)
        alic.send(header(b"bob_", b"f", 100_000) + b"x" * 50)
        self.clock.advance(30)
        self.assertEqual(alic.wire(), errorFrame(errFileStalled("f", 30)))
        bob.disconnect()
        self.assertEqual(alic.wire(), b"")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_wholeFileForOtherProtocol(self) -> None:
        """
        A file collected for another protocol that stops arriving is
        dropped (its bytes freed) and its sender told.
        """
        alic = self.client(b"alic")
        other = WholeFileSession(maxFileSize=1000)
        self.presence.login(other, "eve_", "")
        alic.send(header(b"eve_", b"f", 1000) + b"x" * 500)
        self.clock.advance(29)
        alic.send(b"x" * 100)
        self.clock.advance(29)
        self.assertEqual(alic.wire(), b"")
        self.clock.advance(1)
        self.assertEqual(alic.wire(), errorFrame(errFileStalled("f", 30)))
        alic.send(b"x" * 400 + encodeListRequest())
        self.assertEqual(alic.wire(), listFrame("alic", "eve_"))
        self.assertEqual(other.files, [])
        self.assertEqual(self.factory.filesInFlight(), 0)


class OtherProtocolTests(MsrpTestMixin, TestCase):
    def test_noFiles(self) -> None:
        """Protobuf has no files: ERROR, content dropped."""
        alic = self.client(b"alic")
        self.protobuf("dave")
        alic.send(header(b"dave", b"f", 3) + b"abc" + encodeListRequest())
        self.assertEqual(alic.wire(), errorFrame(errNoFiles("dave")) + listFrame("alic", "dave"))

    def test_wholeFileToOtherProtocol(self) -> None:
        """Collected (within the receiver's limit), then handed over whole."""
        alic = self.client(b"alic")
        other = WholeFileSession(maxFileSize=10)
        self.presence.login(other, "eve_", "")
        alic.send(header(b"eve_", "año.txt".encode(), 10) + b"01234")
        self.assertEqual(other.files, [])
        alic.send(b"56789")
        self.assertEqual(other.files, [("alic", "año.txt", b"0123456789")])
        self.assertEqual(alic.wire(), b"")

    def test_tooLargeForOtherProtocol(self) -> None:
        alic = self.client(b"alic")
        other = WholeFileSession(maxFileSize=10)
        self.presence.login(other, "eve_", "")
        alic.send(header(b"eve_", b"f", 11) + b"x" * 11 + encodeListRequest())
        self.assertEqual(
            alic.wire(),
            errorFrame(errFileTooLargeFor("eve_", 11, 10)) + listFrame("alic", "eve_"),
        )
        self.assertEqual(other.files, [])

    def test_otherReceiverGoneBeforeEnd(self) -> None:
        alic = self.client(b"alic")
        other = WholeFileSession(maxFileSize=10)
        self.presence.login(other, "eve_", "")
        alic.send(header(b"eve_", b"f", 4) + b"ab")
        self.presence.logout(other)
        alic.send(b"cd")
        self.assertEqual(alic.wire(), errorFrame(errNotDelivered("eve_", "f")))

    def test_wholeFileFromOtherProtocol(self) -> None:
        """
        A whole file from another protocol arrives as ARCH + content, queued
        in order like any frame; its ACK is taken without error.
        """
        alic, bob = self.client(b"alic"), self.client(b"bob_")
        other = WholeFileSession(maxFileSize=0)
        self.presence.login(other, "everest", "")
        alic.send(header(b"bob_", b"a", 2) + b"1")
        self.presence.sendFile(other, "bob_", "foto\x00.png", b"PNG")
        alic.send(b"2")
        self.assertEqual(
            bob.wire(),
            header(b"alic", b"a", 2) + b"12" + header(b"ever", "foto\ufffd.png".encode(), 3) + b"PNG",
        )
        bob.send(encodeAck("foto\ufffd.png".encode()))
        self.assertEqual(bob.wire(), b"")

    def test_fileLimitOfMsrp(self) -> None:
        """
        What other protocols may hand an MSRP user: what fits its queue; a
        person takes none.
        """
        self.factory.maxQueued = 1000
        self.client(b"bob_")
        self.human(b"hum1")
        self.assertEqual(self.presence.fileLimit("bob_"), 1000)
        self.assertEqual(self.presence.fileLimit("hum1"), 0)


class _Pattern:
    """A deterministic byte pattern, generated in 64 KiB pieces."""

    piece = hashlib.sha256(b"chatd").digest() * 2048  # 64 KiB

    def __init__(self, size: int) -> None:
        self.size = size

    def chunks(self):
        sent = 0
        while sent < self.size:
            n = min(len(self.piece), self.size - sent)
            yield self.piece if n == len(self.piece) else self.piece[:n]
            sent += n

    def sha256(self) -> str:
        digest = hashlib.sha256()
        for chunk in self.chunks():
            digest.update(chunk)
        return digest.hexdigest()


@implementer(IPullProducer)
class _PatternProducer:
    """Writes the pattern into a transport only as fast as it drains."""

    def __init__(self, transport, pattern: _Pattern, done: defer.Deferred) -> None:
        self.transport = transport
        self.chunks = pattern.chunks()
        self.done = done

    def resumeProducing(self) -> None:
        chunk = next(self.chunks, None)
        if chunk is None:
            self.transport.unregisterProducer()
            self.done.callback(None)
        else:
            self.transport.write(chunk)

    def stopProducing(self) -> None:
        pass


class _TestClient(protocol.Protocol):
    """A real-socket MSRP client that decodes what the server sends."""

    def __init__(self) -> None:
        self.decoder = MsrpFrameDecoder(fromServer=True)
        self.frames: list = []
        self.digest = hashlib.sha256()
        self.contentBytes = 0
        self.waiters: list[tuple[type, defer.Deferred]] = []
        self.lost = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        for frame in self.decoder.feed(data):
            if isinstance(frame, FileChunk):
                self.digest.update(frame.data)
                self.contentBytes += len(frame.data)
                continue
            self.frames.append(frame)
            for waiter in list(self.waiters):
                if isinstance(frame, waiter[0]):
                    self.waiters.remove(waiter)
                    waiter[1].callback(frame)

    def waitFor(self, kind: type) -> defer.Deferred:
        for frame in self.frames:
            if isinstance(frame, kind):
                return defer.succeed(frame)
        d = defer.Deferred()
        self.waiters.append((kind, d))
        return d

    def connectionLost(self, reason) -> None:
        self.lost.callback(None)


class _RecordingFactory(MsrpFactory):
    """Keeps, for each server-side connection, a Deferred of its end."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.ended: list[defer.Deferred] = []

    def buildProtocol(self, addr):
        server = super().buildProtocol(addr)
        ended = defer.Deferred()
        self.ended.append(ended)
        connectionLost = server.connectionLost

        def lost(reason=None):
            connectionLost(reason)
            ended.callback(None)

        server.connectionLost = lost
        return server


class LargeFileTests(TestCase):
    """
    50 MB between two real sockets on 127.0.0.1, through the server: the
    bytes, the ACK, and server memory that does not grow with the file.
    """

    size = 50 * 1024 * 1024

    def setUp(self) -> None:
        self.presence = InMemoryPresenceService()
        self.factory = _RecordingFactory(self.presence, reactor)
        self.port = reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        # Runs after the clients' own clean-ups (clean-ups run last first).
        self.addCleanup(lambda: defer.gatherResults(self.factory.ended))

    @defer.inlineCallbacks
    def connect(self, name: bytes):
        loggedIn = defer.Deferred()

        def observe(kind, info):
            if kind == LOGIN and info.name == name.decode():
                self.presence.removeObserver(observe)
                loggedIn.callback(info)

        self.presence.addObserver(observe)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port.getHost().port)
        client = yield connectProtocol(endpoint, _TestClient())
        self.addCleanup(lambda: client.transport.loseConnection() or client.lost)
        client.transport.write(name)
        yield loggedIn
        return client

    @defer.inlineCallbacks
    def test_fiftyMegabytes(self):
        # Count how often the server pauses the sender: the recipient does
        # not read at first, so flow control must engage.
        from chatd.msrp import protocol as msrpProtocol
        from chatd.msrp.relay import FileStream

        pauses = []
        paused = defer.Deferred()
        original = msrpProtocol.MsrpProtocol.pauseReading

        def pauseReading(session, reason):
            if isinstance(reason, FileStream):
                pauses.append(reason)
                if not paused.called:
                    paused.callback(None)
            original(session, reason)

        self.patch(msrpProtocol.MsrpProtocol, "pauseReading", pauseReading)

        sender = yield self.connect(b"send")
        recipient = yield self.connect(b"recv")
        recipient.transport.pauseProducing()  # a slow reader, at first

        pattern = _Pattern(self.size)
        tracemalloc.start()
        self.addCleanup(tracemalloc.stop)
        baseline = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()

        sender.transport.write(encodeFileHeader(b"recv", b"big.bin", self.size, 0, b""))
        sent = defer.Deferred()
        sender.transport.registerProducer(_PatternProducer(sender.transport, pattern, sent), False)
        # Without flow control the sender would finish at once, the server
        # holding the file: then the assertions below fail instead of a wait.
        yield defer.DeferredList([paused, sent], fireOnOneCallback=True)
        recipient.transport.resumeProducing()
        yield sent
        end = yield recipient.waitFor(FileEnd)
        self.assertEqual(end, FileEnd())
        peak = tracemalloc.get_traced_memory()[1] - baseline
        tracemalloc.stop()

        self.assertEqual(
            recipient.frames[0], FileHeader(b"send", b"big.bin", self.size, 0, b"")
        )
        self.assertEqual(recipient.contentBytes, self.size)
        self.assertEqual(recipient.digest.hexdigest(), pattern.sha256())
        self.assertGreater(len(pauses), 0)
        # The whole file passed through; the server (and both test clients,
        # all in this process) never held more than a few buffers of it.
        self.assertLess(peak, 8 * 1024 * 1024, f"peak traced memory {peak} bytes")

        recipient.transport.write(encodeAck(b"big.bin"))
        ack = yield sender.waitFor(Ack)
        self.assertEqual(ack, Ack(b"big.bin"))



class TwistdTests(TestCase):
    """MSRP in the real C{twistd chatd}, next to the protobuf listener."""

    timeout = 60

    @defer.inlineCallbacks
    def test_msrpAndProtobufOverRealProcess(self):
        from chatd.protobuf import chat_pb2
        from tests.support import login
        from tests.twistd import ByteCollector, TwistdProcess

        directory = self.mktemp()
        os.makedirs(directory)
        local = "tcp:0:interface=127.0.0.1"
        server = TwistdProcess(
            ["--db", "none", "--http", "none", "--msgr", "none",
             "--protobuf", local, "--msrp", local],
            ["protobuf", "msrp"],
            directory,
        )
        self.addCleanup(server.stop)
        ports = yield server.start()

        def connect(label):
            client = ByteCollector()
            d = connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", ports[label]), client)
            d.addCallback(
                lambda _: self.addCleanup(
                    lambda: (client.transport.loseConnection(), client.closed)[1]
                )
            )
            return d.addCallback(lambda _: client)

        msrp = yield connect("msrp")
        msrp.transport.write(b"clt1" + encodeListRequest())
        # Logged in once the list comes back.
        yield msrp.waitFor(lambda received: received == listFrame("clt1"))
        msrp.received = b""
        pb = yield connect("protobuf")
        pb.transport.write(login("alberto").SerializeToString())
        yield pb.waitFor(lambda received: received)

        # The protobuf user's message reaches MSRP; then MSRP lists both.
        pb.transport.write(
            chat_pb2.ClientRequest(
                option=chat_pb2.ClientRequest.SEND_MESSAGE,
                messg=chat_pb2.Message(receiver="clt1", text="hola"),
            ).SerializeToString()
        )
        expected = b"\x00\x01albealberto: hola\x00"
        yield msrp.waitFor(lambda received: received.startswith(expected))
        msrp.received = b""
        msrp.transport.write(encodeListRequest())
        text = yield msrp.waitFor(lambda received: received.endswith(b"\n\x00") and received)
        self.assertEqual(text, listFrame("clt1", "alberto (albe)"))
