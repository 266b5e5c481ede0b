"""
One worker's client connections: non-blocking sockets on a selector, and
logging many of them in at once.

This is deliberately not Twisted: a worker does little per read (see
L{chatd.loadgen.records}) and a plain selector loop costs less per event.
"""

from __future__ import annotations

import errno
import selectors
import socket
import time
from collections import deque
from typing import Callable, Iterable

from chatd.loadgen.wire import Dialect, LoginFailed

#: Bytes asked of each C{recv}.
RECV_SIZE = 256 * 1024

_READ = selectors.EVENT_READ
_WRITE = selectors.EVENT_WRITE


class Session:
    """
    One client connection of a L{Loop}: a name, a protocol, a socket.

    @ivar onData: called with each read's bytes.
    @ivar onClose: called with a reason once the connection is gone.
    @ivar backlog: what arrived after the login and before anyone wanted
        it (see L{Loop.take}).
    """

    __slots__ = (
        "name",
        "dialect",
        "token",
        "sock",
        "out",
        "connecting",
        "reading",
        "events",
        "onData",
        "onClose",
        "closed",
        "loggedIn",
        "loginReader",
        "startedAt",
        "loginSeconds",
        "backlog",
        "address",
    )

    def __init__(self, name: str, dialect: Dialect, token: str | None = None) -> None:
        self.name = name
        self.dialect = dialect
        self.token = token
        self.sock: socket.socket | None = None
        self.out = bytearray()
        self.connecting = False
        self.reading = True
        self.events = 0  # what the selector watches for
        self.onData: Callable[[bytes], None] = self.keep
        self.onClose: Callable[[str], None] | None = None
        self.closed: str | None = None
        self.loggedIn = False
        self.loginReader = None
        self.startedAt = 0.0
        self.loginSeconds = 0.0
        self.backlog = bytearray()
        self.address: tuple[str, int] | None = None  # where it connects

    def keep(self, data: bytes) -> None:
        """The default L{onData}: keep the bytes in L{backlog}."""
        self.backlog += data

    def __repr__(self) -> str:
        return f"<Session {self.dialect.name}:{self.name}>"


class Loop:
    """The sockets of one worker on one selector."""

    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self.open: set[Session] = set()

    def connect(self, session: Session, address: tuple[str, int], source: str | None = None) -> None:
        """Start connecting C{session} to C{address} (from C{source}, if given)."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if source:
            sock.bind((source, 0))
        error = sock.connect_ex(address)
        if error not in (0, errno.EINPROGRESS):
            sock.close()
            raise OSError(error, f"connect to {address}: {errno.errorcode.get(error, error)}")
        session.sock = sock
        session.address = address
        session.connecting = True
        session.closed = None
        session.events = 0
        self.open.add(session)
        self._watch(session)

    def _watch(self, session: Session) -> None:
        """Watch C{session}'s socket for what it needs now."""
        if session.connecting or session.out:
            events = _WRITE | (_READ if session.reading and not session.connecting else 0)
        else:
            events = _READ if session.reading else 0
        if events == session.events:
            return
        if not session.events:
            self.selector.register(session.sock, events, session)
        elif not events:
            self.selector.unregister(session.sock)
        else:
            self.selector.modify(session.sock, events, session)
        session.events = events

    def setReading(self, session: Session, reading: bool) -> None:
        """
        Read C{session}'s socket or not: what the server sends meanwhile
        waits in the socket's buffer (and is read once reading again).
        """
        session.reading = reading
        if session.closed is None and session.sock is not None:
            self._watch(session)

    def write(self, session: Session, data: bytes) -> None:
        """Send C{data}, keeping what the socket does not take yet."""
        if session.out or session.connecting:
            session.out += data
            return
        if session.closed is not None:
            return
        try:
            sent = session.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as e:
            self.lose(session, f"send failed: {e}")
            return
        if sent < len(data):
            session.out += memoryview(data)[sent:]
            self._watch(session)

    def _flush(self, session: Session) -> None:
        try:
            sent = session.sock.send(session.out)
        except BlockingIOError:
            return
        except OSError as e:
            self.lose(session, f"send failed: {e}")
            return
        del session.out[:sent]
        if not session.out:
            self._watch(session)

    def lose(self, session: Session, reason: str) -> None:
        """Close C{session}'s socket and tell its L{Session.onClose}."""
        if session.sock is None or session.closed is not None:
            return
        session.closed = reason
        self.open.discard(session)
        if session.events:
            self.selector.unregister(session.sock)
            session.events = 0
        session.sock.close()
        if session.onClose is not None:
            session.onClose(reason)

    def close(self, session: Session) -> None:
        """Close C{session} on purpose (its L{Session.onClose} is not told)."""
        session.onClose = None
        self.lose(session, "closed by the load generator")

    def closeAll(self) -> None:
        for session in list(self.open):
            self.close(session)

    def poll(self, timeout: float | None) -> int:
        """Handle what is ready, waiting at most C{timeout} seconds."""
        events = self.selector.select(timeout)
        for key, mask in events:
            session = key.data
            if session.closed is not None:
                continue
            if session.connecting:
                error = session.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if error:
                    # Which server refused says which of a scenario's servers to look at.
                    host, port = session.address
                    self.lose(
                        session,
                        f"connect to {host}:{port} failed: {errno.errorcode.get(error, error)}",
                    )
                    continue
                session.connecting = False
                self._watch(session)
                continue
            if mask & _WRITE:
                self._flush(session)
                if session.closed is not None:
                    continue
            if mask & _READ:
                try:
                    data = session.sock.recv(RECV_SIZE)
                except BlockingIOError:
                    continue
                except OSError as e:
                    self.lose(session, f"recv failed: {e}")
                    continue
                if not data:
                    self.lose(session, "closed by the server")
                    continue
                session.onData(data)
        return len(events)

    def take(self, session: Session, onData: Callable[[bytes], None]) -> None:
        """
        Hand C{session}'s reads to C{onData} from now on, starting with its
        L{Session.backlog}.
        """
        session.onData = onData
        if session.backlog:
            backlog = bytes(session.backlog)
            session.backlog.clear()
            onData(backlog)


class LoginResult:
    """What logging a batch of sessions in gave."""

    def __init__(self) -> None:
        self.loggedIn: list[Session] = []
        self.errors: list[str] = []
        self.seconds: list[float] = []
        self.elapsed = 0.0

    def asDict(self) -> dict:
        return {
            "logged_in": len(self.loggedIn),
            "errors": len(self.errors),
            "error_samples": self.errors[:5],
            "elapsed": self.elapsed,
            "login_seconds": self.seconds,
        }


def logIn(
    loop: Loop,
    sessions: Iterable[Session],
    address: tuple[str, int],
    concurrency: int = 64,
    timeout: float = 60.0,
    source: str | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> LoginResult:
    """
    Connect and log in every session, at most C{concurrency} at a time,
    within C{timeout} seconds. Sessions that fail are closed and their
    reasons kept.
    """
    result = LoginResult()
    waiting = deque(sessions)
    active: set[Session] = set()
    start = clock()
    deadline = start + timeout

    def finish(session: Session, error: str | None) -> None:
        active.discard(session)
        if error is None:
            session.loggedIn = True
            session.loginSeconds = clock() - session.startedAt
            result.seconds.append(session.loginSeconds)
            result.loggedIn.append(session)
            session.onClose = None
        else:
            result.errors.append(f"{session.dialect.name} {session.name}: {error}")
            loop.close(session)

    def begin(session: Session) -> None:
        reader = session.dialect.loginReader(session.name)

        def onData(data: bytes) -> None:
            try:
                done = reader.feed(data)
            except LoginFailed as e:
                finish(session, f"refused: {e}")
                return
            except Exception as e:  # a frame the codec cannot read
                finish(session, f"{e.__class__.__name__}: {e}")
                return
            if done:
                session.onData = session.keep
                if reader.rest:
                    session.keep(reader.rest)
                finish(session, None)

        session.startedAt = clock()
        session.onData = onData
        session.onClose = lambda reason: finish(session, reason)
        active.add(session)
        try:
            login = session.dialect.login(session.name, session.token)
            loop.connect(session, address, source)
        except (OSError, LoginFailed) as e:
            finish(session, str(e))
            return
        loop.write(session, login)

    while waiting or active:
        while waiting and len(active) < concurrency:
            begin(waiting.popleft())
        now = clock()
        if now >= deadline:
            for session in list(active):
                finish(session, f"no login within {timeout:g}s")
            for session in waiting:
                result.errors.append(f"{session.dialect.name} {session.name}: not started in time")
            break
        if active:
            loop.poll(min(0.1, deadline - now))
    result.elapsed = clock() - start
    return result


__all__ = ["Session", "Loop", "LoginResult", "logIn", "RECV_SIZE"]
