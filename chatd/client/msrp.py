"""
chatd-client for MSRP (seed 004, docs/msrp.md) as a binary client, on the
server's own codec (L{chatd.msrp.codec}).

MSRP answers only LIST; a message gets no answer unless it fails (an ERROR
frame). So after a message or a file the client sends a LIST and waits for
its answer: the server handles a connection's frames in order, so an ERROR
caused by the message arrives before it, and the command knows whether it
failed. Files stream from the disk under TCP flow control and are
acknowledged (ACK) by the receiver once whole.
"""

from __future__ import annotations

import os
from collections import deque

from twisted.internet import defer
from twisted.internet.endpoints import connectProtocol
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

from chatd.client.base import ChatClient, WriteQueue, WrongServer, describeError
from chatd.client.files import FileChanged, FileContentSender, IncomingFile, Progress
from chatd.client.runner import Command, CommandError, arguments
from chatd.msrp import codec

#: The server's default port.
DEFAULT_PORT = 8080

#: Seconds to wait for the ACKs of sent files at the end of the input.
DEFAULT_ACK_WAIT = 10.0


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def _cutNotice(text: str, filename: bytes) -> bool:
    """Whether the server's ERROR C{text} says C{filename} was cut short."""
    name = _text(filename)
    prefix = "Error al recibir el archivo. "
    return text.startswith(prefix) and (
        text.endswith(f"; {name} no se entregó.")  # its sender left
        or text.startswith(f"{prefix}{name} no avanzó en ")  # it stalled
    )


def senderName(slot: bytes) -> str:
    """The name in a 4-byte sender slot (a shorter name is padded with spaces)."""
    return _text(slot.rstrip(b" "))


def wireName(name: str) -> bytes:
    """C{name} for logging in: exactly 4 bytes of UTF-8, or a L{CommandError}."""
    data = name.encode("utf-8")
    if len(data) != codec.NAME_LENGTH:
        raise CommandError(
            f"MSRP names are exactly {codec.NAME_LENGTH} bytes: {name!r} is {len(data)}"
        )
    return data


def slotIn(listText: str, name: str) -> bytes:
    """
    The 4-byte slot of the user C{name} (a name longer than 4 bytes) in the
    server's LIST answer C{listText}, or a L{CommandError}.
    """
    for entry in codec.parseClientListText(listText):
        online, slot = codec.parseClientListEntry(entry)
        if online.casefold() == name.casefold():
            if slot is None:
                raise CommandError(f"{online} has no MSRP slot: binary clients cannot reach them")
            return slot
    raise CommandError(f"{name} is not online")


class MsrpClientProtocol(Protocol):
    """Frames to and from the server."""

    def __init__(self, client: "MsrpChatClient") -> None:
        self.client = client
        self.decoder = codec.MsrpFrameDecoder(fromServer=True)

    def dataReceived(self, data: bytes) -> None:
        if not self.client.peerSent(data):
            return
        try:
            for frame in self.decoder.feed(data):
                self.client.frameReceived(frame)
            self.client.readDone()
        except codec.DecodeError as e:
            self.client.console.error(f"the server sent bytes that are not MSRP: {e}")
            self.transport.abortConnection()

    def connectionLost(self, reason: Failure) -> None:
        self.client.connectionLost(reason)


class _Incoming:
    """A file being received."""

    def __init__(self, sender: str, filename: bytes, size: int) -> None:
        self.sender = sender
        self.filename = filename
        self.size = size
        self.file: IncomingFile | None = None
        self.progress: Progress | None = None


class MsrpChatClient(ChatClient):
    """A binary MSRP client."""

    protocolName = "msrp"
    serverKind = "an MSRP server"
    defaultPort = DEFAULT_PORT

    def __init__(self, options, console, reactor) -> None:
        super().__init__(options, console, reactor)
        self.name = options.name
        self.protocol: MsrpClientProtocol | None = None
        self.outbound: WriteQueue | None = None
        self.errorCount = 0
        self._lists: deque[defer.Deferred] = deque()
        self._incoming: _Incoming | None = None
        # A file whose content all arrived, kept unsaved until the next frame
        # (or the end of the read) says whether it was cut short.
        self._ended: _Incoming | None = None
        self._lastSaved: tuple[bytes, str] | None = None
        self._incomingDone: list[defer.Deferred] = []
        self._awaitingAck: list[tuple[bytes, str]] = []
        self._ackWaiters: list[defer.Deferred] = []
        self._loginErrors: list[str] | None = None

    def speaksOurs(self, data: bytes) -> bool:
        return data[:1] == b"\x00"  # every MSRP frame's first byte

    def commands(self) -> list[Command]:
        return [
            Command("list", "the users online, in every protocol", self.listUsers),
            Command("info NAME", "whether NAME is online", self.userInfo),
            Command("msg NAME TEXT", "send TEXT to NAME (a name, or its 4-byte slot)", self.message),
            Command("send NAME PATH", "send the file PATH to NAME", self.sendFile),
        ]

    def unsupported(self) -> dict[str, str]:
        friends = "friends are MSGR's; MSRP has none"
        return {
            "all": "MSRP binary clients cannot write to everyone",
            "status": "MSRP has no statuses",
            "img": "MSRP sends images as files: send NAME PATH",
            "meme": "MSRP has no memes",
            "friend": friends, "accept": friends, "reject": friends, "requests": friends,
        }

    @defer.inlineCallbacks
    def connect(self):
        port = self.options.port or DEFAULT_PORT
        try:
            name = wireName(self.name)
        except CommandError as e:
            raise CommandError(f"--name: {e}") from None
        self.protocol = MsrpClientProtocol(self)
        try:
            yield connectProtocol(self.connectEndpoint(port), self.protocol)
        except Exception as e:
            raise CommandError(f"cannot connect to {self.describe(port)}: {e}") from None
        self.transport = self.protocol.transport
        self.outbound = WriteQueue(self.transport)
        # The name, then a LIST: its answer says the name was taken.
        self._loginErrors = []
        self.transport.write(name)
        try:
            yield self.guardLogin(self._sync(), port)
        except WrongServer:
            raise
        except Exception as e:
            if self._loginErrors:
                raise CommandError("login refused: " + " ".join(self._loginErrors)) from None
            raise CommandError(f"login failed: {describeError(e)}") from None
        finally:
            errors, self._loginErrors = self._loginErrors, None
        if errors:
            self.abort()
            raise CommandError("login refused: " + " ".join(errors))
        self.console.result(f"logged in as {self.name} (msrp, {self.describe(port)})")

    # Frames in.

    def frameReceived(self, frame) -> None:
        kind = type(frame)
        # Only the frame right after a file can say it was cut short.
        justSaved, self._lastSaved = self._lastSaved, None
        if self._ended is not None:
            if kind is codec.Error and _cutNotice(_text(frame.text), self._ended.filename):
                self._fileCut(_text(frame.text))
                return
            self._settle()
        if kind is codec.Message:
            self.console.arrival(senderName(frame.name), _text(frame.text))
        elif kind is codec.FileChunk:
            self._chunk(frame.data)
        elif kind is codec.FileHeader:
            self._fileStarts(frame)
        elif kind is codec.FileEnd:
            self._fileEnds()
        elif kind is codec.ClientList:
            if self._lists:
                self._lists.popleft().callback(_text(frame.text))
            else:
                self._showList(_text(frame.text))
        elif kind is codec.Ack:
            self._acknowledged(frame.filename)
        elif kind is codec.Error:
            self._error(_text(frame.text), justSaved)

    def readDone(self) -> None:
        """The frames of one read are handled: a file ended in it is whole."""
        if self._ended is not None:
            self._settle()

    def _error(self, text: str, justSaved: tuple[bytes, str] | None = None) -> None:
        self.errorCount += 1
        if self._loginErrors is not None:
            self._loginErrors.append(text)
            return
        self.console.error(text)
        saved = justSaved
        if saved is not None and _cutNotice(text, saved[0]):
            # The notice came in a read of its own: the file was saved already.
            try:
                os.unlink(saved[1])
            except OSError:
                pass
            else:
                self.console.error(f"{saved[1]} was removed: the file was cut short")
        # A failed transfer will never be acknowledged.
        for expected in list(self._awaitingAck):
            filename = _text(expected[0])
            if f"; {filename} no se entregó." in text or (
                f"Error al recibir el archivo. {filename} no se pudo entregar a " in text
            ):
                self._awaitingAck.remove(expected)
                self._checkAcks()
                break

    def _fileStarts(self, header: codec.FileHeader) -> None:
        incoming = _Incoming(senderName(header.name), header.filename, header.size)
        self._incoming = incoming
        try:
            incoming.file = IncomingFile(self.options.save_dir, _text(header.filename))
        except OSError as e:
            self.console.error(
                f"cannot save {_text(header.filename)} from {incoming.sender}: {e.strerror}; it is dropped"
            )
            return
        incoming.progress = Progress(
            f"recv {incoming.file.name} <- {incoming.sender}",
            header.size,
            self.reactor,
            self.console,
        )

    def _chunk(self, data: bytes) -> None:
        incoming = self._incoming
        if incoming is None or incoming.file is None:
            return
        try:
            incoming.file.write(data)
        except OSError as e:
            self.console.error(f"cannot save {incoming.file.name}: {e.strerror}; it is dropped")
            incoming.file.discard()
            incoming.file = None
            if incoming.progress is not None:
                incoming.progress.finish(False)
            return
        incoming.progress.advance(len(data))

    def _fileEnds(self) -> None:
        incoming, self._incoming = self._incoming, None
        if incoming is not None and incoming.file is not None:
            # A file cut short is completed with zero bytes and followed at
            # once by an ERROR naming it (docs/msrp.md): wait for the next
            # frame before saving and acknowledging it.
            self._ended = incoming
            return
        self._settled()

    def _fileCut(self, text: str) -> None:
        """The file that just ended was cut short: drop it."""
        incoming, self._ended = self._ended, None
        incoming.file.discard()
        incoming.progress.finish(False)
        self.errorCount += 1
        self.console.error(
            f"the file {_text(incoming.filename)} from {incoming.sender} was cut short: {text}"
        )
        self._settled()

    def _settle(self) -> None:
        """Save the file that just ended, whole, and acknowledge it."""
        incoming, self._ended = self._ended, None
        try:
            path = incoming.file.finish()
        except OSError as e:
            incoming.progress.finish(False)
            self.console.error(f"cannot save {incoming.file.name}: {e.strerror}")
        else:
            incoming.progress.finish(True)
            self.console.arrival(
                incoming.sender,
                f"file {_text(incoming.filename)} ({incoming.size} bytes) saved as {path}",
            )
            self._lastSaved = (incoming.filename, path)
            # The whole file is here: tell its sender.
            self.outbound.write(codec.encodeAck(incoming.filename))
        self._settled()

    def _settled(self) -> None:
        done, self._incomingDone = self._incomingDone, []
        for d in done:
            d.callback(None)

    def _acknowledged(self, filename: bytes) -> None:
        receivers = [to for name, to in self._awaitingAck if name == filename]
        if receivers:
            self._awaitingAck.remove((filename, receivers[0]))
            self._checkAcks()
            who = receivers[0] if len(set(receivers)) == 1 else "one of " + ", ".join(sorted(set(receivers)))
            self.console.result(f"{who} received {_text(filename)} (ACK)")
        else:
            self.console.result(f"{_text(filename)} was received (ACK)")

    def _checkAcks(self) -> None:
        if not self._awaitingAck:
            waiters, self._ackWaiters = self._ackWaiters, []
            for d in waiters:
                d.callback(None)

    def connectionLost(self, reason: Failure) -> None:
        if self._ended is not None:
            self._settle()
        incoming, self._incoming = self._incoming, None
        if incoming is not None:
            if incoming.file is not None:
                incoming.file.discard()
                incoming.progress.finish(False)
            self.console.error(
                f"the file {_text(incoming.filename)} from {incoming.sender} was cut short: the connection closed"
            )
        lists, self._lists = self._lists, deque()
        for d in lists:
            d.errback(reason)
        if self.outbound is not None:
            self.outbound.fail(reason)
        for d in self._incomingDone + self._ackWaiters:
            d.callback(None)
        self._incomingDone = []
        self._ackWaiters = []
        super().connectionLost(reason)

    # Requests.

    def _sync(self) -> defer.Deferred:
        """Send a LIST; fires with its answer's text once every earlier frame was handled."""
        if self._closed:
            return defer.fail(CommandError("not connected"))
        d: defer.Deferred = defer.Deferred()
        self._lists.append(d)
        self.outbound.write(codec.encodeListRequest())
        return d

    def _showList(self, text: str) -> None:
        names = codec.parseClientListText(text)
        self.console.result(f"{len(names)} user{'' if len(names) == 1 else 's'} online")
        for name in names:
            self.console.result(f"  {name}")

    def listUsers(self, rest: str) -> defer.Deferred:
        return self._sync().addCallback(self._showList)

    def userInfo(self, rest: str) -> defer.Deferred:
        (name,) = arguments(rest, "info NAME")

        def check(text: str) -> None:
            for entry in codec.parseClientListText(text):
                online, slot = codec.parseClientListEntry(entry)
                if name.casefold() in (online.casefold(), _text(slot or b"").casefold()):
                    self.console.result(f"{entry} is online")
                    return
            raise CommandError(f"{name} is not online")

        return self._sync().addCallback(check)

    @defer.inlineCallbacks
    def recipient(self, name: str):
        """
        The 4 bytes that address C{name} in frames (docs/msrp.md): a 4-byte
        name (or slot) as it is, a shorter name padded with spaces, and for a
        longer name its slot, read from a LIST.
        """
        data = name.encode("utf-8")
        if len(data) == codec.NAME_LENGTH:
            return data
        if len(data) < codec.NAME_LENGTH:
            return data.ljust(codec.NAME_LENGTH, b" ")
        text = yield self._sync()
        return slotIn(text, name)

    @defer.inlineCallbacks
    def message(self, rest: str):
        name, text = arguments(rest, "msg NAME TEXT")
        if name.lower() == "all":
            raise CommandError(f"all: {self.unsupported()['all']}")
        slot = yield self.recipient(name)
        try:
            frame = codec.encodeMessage(slot, text.encode("utf-8"))
        except ValueError as e:
            raise CommandError(f"cannot send: {e}") from None
        errors = self.errorCount
        self.outbound.write(frame)
        yield self._sync()
        if self.errorCount == errors:
            self.console.result(f"sent to {name}")

    @defer.inlineCallbacks
    def sendFile(self, rest: str):
        name, path = arguments(rest, "send NAME PATH")
        slot = yield self.recipient(name)
        path = os.path.expanduser(path)
        filename = os.path.basename(path.rstrip("/")).encode("utf-8", "surrogateescape")
        if not filename or len(filename) > codec.MAX_FILENAME:
            raise CommandError(f"send: the file name must be 1 to {codec.MAX_FILENAME} bytes")
        if os.path.exists(path) and not os.path.isfile(path):
            raise CommandError(f"send: {path} is not a file")
        try:
            f = open(path, "rb")
        except OSError as e:
            raise CommandError(f"send: cannot open {path}: {e.strerror}") from None
        try:
            size = os.fstat(f.fileno()).st_size
            header = codec.encodeFileHeader(slot, filename, size, 0, b"")
            progress: list[Progress] = []

            def job(transport) -> defer.Deferred:
                transport.write(header)
                meter = Progress(f"send {_text(filename)} -> {name}", size, self.reactor, self.console)
                progress.append(meter)
                return FileContentSender(f, size, transport, meter.advance).start()

            errors = self.errorCount
            expected = (filename, name)
            self._awaitingAck.append(expected)
            try:
                yield self.outbound.stream(job)
            except FileChanged as e:
                if progress:
                    progress[0].finish(False)
                self.transport.abortConnection()
                raise CommandError(f"send: {e}; the connection was closed") from None
            except Exception:
                if progress:
                    progress[0].finish(False)
                raise
            progress[0].finish(True)
        finally:
            f.close()
        yield self._sync()
        if self.errorCount != errors:
            if expected in self._awaitingAck:
                self._awaitingAck.remove(expected)
                self._checkAcks()
            return
        self.console.result(f"sent {_text(filename)} to {name} ({size} bytes)")

    # The end.

    @defer.inlineCallbacks
    def drain(self):
        if self._closed:
            return
        yield self.outbound.whenIdle()
        if self._incoming is not None:
            d: defer.Deferred = defer.Deferred()
            self._incomingDone.append(d)
            yield d
        if self._closed:
            return
        yield self._sync()
        if self._awaitingAck and self.options.ack_wait > 0:
            d = defer.Deferred()
            self._ackWaiters.append(d)

            def timedOut() -> None:
                self._ackWaiters.remove(d)
                d.callback(None)

            timer = self.reactor.callLater(self.options.ack_wait, timedOut)
            yield d
            if timer.active():
                timer.cancel()
        if self._awaitingAck and not self._closed:
            names = ", ".join(sorted({_text(f) for f, _ in self._awaitingAck}))
            self.console.result(
                f"no ACK for {names} within {self.options.ack_wait:g} s"
                " (users of other protocols never send one)"
            )

    def quit(self) -> defer.Deferred:
        # A file under way cannot be finished politely: cut it.
        self.abort(polite=not (self.outbound is not None and self.outbound.busy))
        return self.whenClosed()
