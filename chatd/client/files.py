"""
Files for chatd-client: where an incoming file is saved, how an outgoing one
is streamed, and the progress of either.

An incoming file is written to a hidden temporary file in the save folder and
only given its name once it is complete, so a transfer cut short never leaves
a file that looks whole. Its name is the sender's reduced to one safe path
component (L{safeFileName}); it never replaces an existing file.
"""

from __future__ import annotations

import errno
import os
import tempfile
import unicodedata
from typing import Callable, Protocol as TypingProtocol

from twisted.internet import defer
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IPullProducer, IReactorTime
from zope.interface import implementer

#: Longest saved file name, in bytes of UTF-8 (room is left for " (99)").
MAX_SAVED_NAME = 200

#: The name of a file whose sender gave no usable name.
FALLBACK_NAME = "file"

#: Bytes read from a file and written to the connection at a time.
CHUNK_SIZE = 64 * 1024


def safeFileName(name: str) -> str:
    """
    The name under which a file the sender called C{name} is saved: the last
    component of C{name} whatever the separator (C{/} or C{\\}), without
    control or format characters, leading dots or surrounding spaces, at most
    L{MAX_SAVED_NAME} bytes. C{"../../etc/x"} is C{"x"}; a name that is
    nothing but dots or separators is L{FALLBACK_NAME}.
    """
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C")
    name = name.strip().lstrip(".").strip()
    if len(name.encode("utf-8")) > MAX_SAVED_NAME:
        stem, dot, extension = name.rpartition(".")
        if not dot or len(extension.encode("utf-8")) > 16:
            stem, extension = name, ""
        room = MAX_SAVED_NAME - len(extension.encode("utf-8")) - (1 if extension else 0)
        stem = stem.encode("utf-8")[:room].decode("utf-8", "ignore")
        name = f"{stem}.{extension}" if extension else stem
    return name or FALLBACK_NAME


def _candidates(name: str):
    """C{name}, then C{"name (1).ext"}, C{"name (2).ext"}, ..."""
    yield name
    stem, dot, extension = name.rpartition(".")
    if not stem:  # no extension (or only a leading dot, which was removed)
        stem, dot, extension = name, "", ""
    number = 1
    while True:
        yield f"{stem} ({number}){dot}{extension}"
        number += 1


class IncomingFile:
    """
    A file being received into C{directory}: L{write} its content, then
    L{finish} to give it its final name, or L{discard} it.

    @ivar path: once finished, where the file was saved.
    """

    def __init__(self, directory: str, senderName: str) -> None:
        self.directory = directory
        self.name = safeFileName(senderName)
        self.received = 0
        self.path: str | None = None
        fd, self._temporary = tempfile.mkstemp(
            prefix=".chatd-", suffix=".part", dir=directory
        )
        self._file = os.fdopen(fd, "wb")

    def write(self, data: bytes) -> None:
        self._file.write(data)
        self.received += len(data)

    def finish(self) -> str:
        """
        Close the file and give it its name: the safe name, or the first of
        C{"name (1).ext"}, C{"name (2).ext"}, ... that does not exist yet.
        @return: the saved file's path.
        """
        self._file.close()
        for candidate in _candidates(self.name):
            path = os.path.join(self.directory, candidate)
            try:
                # Claims the name atomically; never follows a symbolic link
                # someone left there, never replaces anything.
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            except FileExistsError:
                continue
            except OSError as e:
                if e.errno == errno.ELOOP:
                    continue
                self.discard()
                raise
            os.close(fd)
            os.replace(self._temporary, path)
            self.path = path
            return path
        raise AssertionError("unreachable")  # pragma: no cover

    def discard(self) -> None:
        """Drop what was received (a transfer cut short)."""
        if not self._file.closed:
            self._file.close()
        try:
            os.unlink(self._temporary)
        except FileNotFoundError:
            pass


def saveWhole(directory: str, senderName: str, content: bytes) -> str:
    """Save a file that arrived whole; return its path."""
    incoming = IncomingFile(directory, senderName)
    try:
        incoming.write(content)
    except BaseException:
        incoming.discard()
        raise
    return incoming.finish()


# Progress.


def formatSize(count: float) -> str:
    """C{512 B}, C{1.5 KiB}, C{12.0 MiB}, C{2.0 GiB}."""
    if count < 1024:
        return f"{int(count)} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        count /= 1024
        if count < 1024 or unit == "TiB":
            return f"{count:.1f} {unit}"
    raise AssertionError("unreachable")  # pragma: no cover


def formatDuration(seconds: float) -> str:
    """C{0:07}, C{12:30}, C{1:02:03}."""
    seconds = int(seconds + 0.5)
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}:{minutes:02d}:{seconds:02d}"
    return f"{minutes}:{seconds:02d}"


class ProgressListener(TypingProtocol):
    def progressChanged(self, progress: "Progress") -> None: ...


class Progress:
    """
    The progress of one transfer: C{done} of C{total} bytes, timed with
    C{clock}. L{render} draws it as a bar with the rate and the time left.

    @ivar label: what is moving, e.g. C{"send doc.txt -> clt2"}.
    @ivar finished: C{None} while under way, then C{True} (complete) or
        C{False} (cut short).
    """

    BAR_WIDTH = 20

    def __init__(
        self, label: str, total: int, clock: IReactorTime, listener: ProgressListener
    ) -> None:
        self.label = label
        self.total = total
        self.done = 0
        self.clock = clock
        self.listener = listener
        self.started = clock.seconds()
        self.ended: float | None = None
        self.finished: bool | None = None
        listener.progressChanged(self)

    def advance(self, count: int) -> None:
        self.done = min(self.total, self.done + count)
        self.listener.progressChanged(self)

    def finish(self, complete: bool = True) -> None:
        if self.finished is not None:
            return
        if complete:
            self.done = self.total
        self.ended = self.clock.seconds()
        self.finished = complete
        self.listener.progressChanged(self)

    @property
    def fraction(self) -> float:
        return 1.0 if not self.total else self.done / self.total

    @property
    def percent(self) -> int:
        """Whole percent done, rounded down (100 only when all is done)."""
        return 100 if not self.total else self.done * 100 // self.total

    def elapsed(self) -> float:
        end = self.ended if self.ended is not None else self.clock.seconds()
        return max(0.0, end - self.started)

    def rate(self) -> float | None:
        """Average bytes a second since the start; C{None} before any time passed."""
        elapsed = self.elapsed()
        if elapsed <= 0 or not self.done:
            return None
        return self.done / elapsed

    def render(self) -> str:
        """
        C{send doc.txt -> clt2 [##########----------]  50% 2.5 MiB/5.0 MiB
        1.2 MiB/s ETA 0:02}; when finished, C{... 100% ... in 0:04} or
        C{... cut short}.
        """
        filled = int(self.fraction * self.BAR_WIDTH)
        bar = "#" * filled + "-" * (self.BAR_WIDTH - filled)
        rate = self.rate()
        rateText = "--/s" if rate is None else f"{formatSize(rate)}/s"
        if self.finished is None:
            if rate:
                tail = f"ETA {formatDuration((self.total - self.done) / rate)}"
            else:
                tail = "ETA --:--"
        elif self.finished:
            tail = f"in {formatDuration(self.elapsed())}"
        else:
            tail = "cut short"
        return (
            f"{self.label} [{bar}] {self.percent:3d}%"
            f" {formatSize(self.done)}/{formatSize(self.total)} {rateText} {tail}"
        )


@implementer(IPullProducer)
class FileContentSender:
    """
    Write exactly C{size} bytes of C{file} to C{consumer} (a transport), as
    fast as it takes them, calling C{onChunk(count)} for each piece written.
    L{deferred} fires once all are written; it fails with L{FileChanged} when
    the file ends early (it shrank), and with L{TransferStopped} when the
    connection went away.
    """

    def __init__(
        self,
        file,
        size: int,
        consumer,
        onChunk: Callable[[int], None] = lambda count: None,
        chunkSize: int = CHUNK_SIZE,
    ) -> None:
        self.file = file
        self.remaining = size
        self.consumer = consumer
        self.onChunk = onChunk
        self.chunkSize = chunkSize
        self.deferred: defer.Deferred = defer.Deferred()

    def start(self) -> defer.Deferred:
        if not self.remaining:
            self.deferred.callback(None)
        else:
            self.consumer.registerProducer(self, False)
        return self.deferred

    def resumeProducing(self) -> None:
        if self.deferred.called:
            return
        try:
            data = self.file.read(min(self.chunkSize, self.remaining))
        except OSError as e:
            self._fail(FileChanged(f"cannot read the file: {e.strerror}"))
            return
        if not data:
            self._fail(FileChanged("the file became shorter while it was being sent"))
            return
        self.remaining -= len(data)
        self.consumer.write(data)
        self.onChunk(len(data))
        if not self.remaining:
            self.consumer.unregisterProducer()
            self.deferred.callback(None)

    def _fail(self, error: Exception) -> None:
        self.consumer.unregisterProducer()
        self.deferred.errback(error)

    def stopProducing(self) -> None:
        if not self.deferred.called:
            self.deferred.errback(TransferStopped("the connection was closed"))


class FileChanged(Exception):
    """The file being sent could not be read to its announced size."""


class TransferStopped(ConnectionLost):
    """The connection closed before the file was written whole."""
