"""
The course revision of the seed-000 protobuf chat (1-based), spoken by the
course's client programs (docs/protobuf.md, "The course revision").

Same schema and field numbers as the seed, but:

  - options are 1-based (C{USER_LOGIN=1} to C{SEND_MESSAGE=5}) and codes are
    C{FAILED=1}, C{SUCCESSFUL=2}, always written (proto2 reads an absent
    code as FAILED);
  - no response holds a C{0x00} byte: no empty string, no empty
    sub-message, no zero enum (one client reads responses as C strings);
  - a client that ends its requests with C{0x00} gets every response ended
    with one C{0x00};
  - every response is shorter than L{LIMIT} bytes (the clients read into
    1,024-byte buffers);
  - a successful C{SEND_MESSAGE} is not answered: the clients print any
    C{SEND_MESSAGE} response as a message received.

The codec (L{encodeResponse}, L{encodeDeliveries}) builds bytes by hand;
L{CourseRevision} adapts a L{ProtobufChatProtocol} to it.
"""

from __future__ import annotations

from google.protobuf.message import DecodeError

from chatd.presence import ChatMessage, PresenceError, RecipientBusy
from chatd.protobuf import chat_pb2
from chatd.protobuf.framing import encodeVarint, scanOption
from chatd.protobuf.protocol import (
    SEND_MESSAGE as SEED_SEND_MESSAGE,
    SUCCESSFUL as SEED_SUCCESSFUL,
    ProtobufChatProtocol,
    USER_LOGIN as SEED_USER_LOGIN,
    Refused,
    Request,
    text,
)

#: Every response, its C{0x00} terminator included, is shorter than this.
LIMIT = 1024

# The course revision's numbers.
USER_LOGIN, CONNECTED_USERS, USER_INFORMATION, STATUS_CHANGE, SEND_MESSAGE = 1, 2, 3, 4, 5
FAILED, SUCCESSFUL = 1, 2

#: Longest C{response} text; the rest is cut (names in refusals can be long).
_MAX_TEXT = 200

#: Seconds client A sleeps before its first recv(): whatever arrives after the
#: login answer and before then would join it in that one read.
FIRST_READ_HOLD = 4.5

_NUL = "\x00"
_NUL_SHOWN = "\ufffd"  # as MSRP does: a NUL in a string would cut it short


def _string(field: int, value: str) -> bytes:
    """A string field, or nothing for an empty string."""
    if not value:
        return b""
    data = value.replace(_NUL, _NUL_SHOWN).encode("utf-8")
    return bytes((field << 3 | 2,)) + encodeVarint(len(data)) + data


def _sub(field: int, body: bytes) -> bytes:
    """A sub-message field, or nothing for an empty sub-message."""
    if not body:
        return b""
    return bytes((field << 3 | 2,)) + encodeVarint(len(body)) + body


def _varint(field: int, value: int) -> bytes:
    return bytes((field << 3,)) + encodeVarint(value)


def encodeUser(username: str, ip: str, status: str) -> bytes:
    """A C{UserInformation}'s fields."""
    return _string(1, username) + _string(2, ip) + _string(3, status)


def encodeResponse(
    option: int | None,
    code: int,
    response: str,
    users: list[bytes] | None = None,
    user: bytes = b"",
    status: bytes = b"",
    room: int = LIMIT - 1,
) -> bytes:
    """
    A course C{ServerResponse} of at most C{room} bytes. C{users} are encoded
    C{UserInformation}s; those that do not fit are left out, and C{response}
    says how many. An C{option} of 0 or C{None} is not written.
    """
    if len(response) > _MAX_TEXT:
        response = response[: _MAX_TEXT - 1] + "\u2026"
    head = (_varint(1, option) if option else b"") + _varint(2, code)
    tail = _sub(5, user) + _sub(7, status)
    if users is None:
        return head + _string(3, response) + tail
    entries = [_sub(1, entry) for entry in users]
    shown = len(entries)
    # Room for the longest text below, then as many users as fit in order.
    fixed = len(head) + len(tail) + 3 + len(response.encode("utf-8")) + 48
    size = 3
    for index, entry in enumerate(entries):
        size += len(entry)
        if fixed + size > room:
            shown = index
            break
    while True:
        said = response
        if shown < len(entries):
            left = len(entries) - shown
            said = f"{response}; {left} left out (a response has under {LIMIT} bytes)"
        body = head + _string(3, said) + _sub(4, b"".join(entries[:shown])) + tail
        if len(body) <= room or not shown:
            return body
        shown -= 1


def encodeDeliveries(receiver: str, sender: str, message: str, room: int = LIMIT - 1) -> list[bytes]:
    """
    C{ServerResponse{option=5, code=2, messg{receiver, sender, text}}}, as
    many as C{message} needs for each to have at most C{room} bytes (a long
    text is cut, at character boundaries, into consecutive deliveries).
    """
    head = _string(1, receiver) + _string(2, sender)
    # option, code, the messg tag and length, the text tag and length.
    available = room - len(head) - 4 - 3 - 3
    data = message.replace(_NUL, _NUL_SHOWN)
    pieces = []
    while True:
        piece = data
        if len(piece.encode("utf-8")) > available:
            piece = piece.encode("utf-8")[:available].decode("utf-8", "ignore")
        pieces.append(piece)
        data = data[len(piece):]
        if not data:
            break
    return [
        _varint(1, SEND_MESSAGE) + _varint(2, SUCCESSFUL) + _sub(6, head + _string(3, piece))
        for piece in pieces
    ]


def _seedUser(info: chat_pb2.UserInformation) -> bytes:
    return encodeUser(info.username, info.ip, info.status)


class CourseRevision:
    """
    The course revision on a L{ProtobufChatProtocol} (mixed in before it):
    the seed's handlers do the work, with options shifted by one, and every
    response goes through L{encodeResponse}.
    """

    #: What ends every response: C{0x00} for a client whose login ended so.
    _terminator = b""
    #: Option 4 is STATUS_CHANGE here: every request takes the general path.
    _classify = False

    def _handleFrame(self, frame: bytes) -> None:
        try:
            request = Request.FromString(frame)
        except DecodeError:
            self._fail(None, "malformed request: not a chat.ClientRequest")
            return
        # Option 5 is not in the seed's enum, so proto2 would read it as the
        # default: the raw value is read from the bytes.
        option = scanOption(frame)
        if option is None:
            option = USER_LOGIN  # proto2's default, in this revision too
        if option == USER_LOGIN and self.user is None:
            # Its clients end every request with 0x00, or none.
            self._terminator = b"\x00" if self.framer.endedByZero else b""
            # One client always sends 192.168.1.16: the peer address is true.
            request.newuser.ClearField("ip")
        self.framer.endedByZero = False
        if not USER_LOGIN <= option <= SEND_MESSAGE:
            self._write(self.encode(
                encodeResponse(
                    option,
                    FAILED,
                    f"unknown option {option}: this connection speaks the course"
                    f" revision's 1-based options, USER_LOGIN=1 to SEND_MESSAGE=5",
                    room=LIMIT - 1 - len(self._terminator),
                )
                + self._terminator
            ))
            return
        seed = option - 1
        try:
            if seed != SEED_USER_LOGIN and self.user is None:
                raise Refused("log in first (USER_LOGIN)")
            self._handlers[seed](self, request)
        except Refused as e:
            self._fail(seed, str(e))
        except Exception:
            if self.allowance.mayLogError():
                self.log.failure("protobuf request {option} failed", option=option)
            self._fail(seed, "internal error")

    def _send(self, response: chat_pb2.ServerResponse) -> bool | None:
        """Write the seed's C{response} in this revision's terms."""
        term = self._terminator
        users = None
        if response.HasField("users"):
            users = [_seedUser(u) for u in response.users.users]
        status = b""
        if response.HasField("status"):
            status = _string(1, response.status.username) + _string(2, response.status.status)
        return self._write(self.encode(
            encodeResponse(
                response.option + 1 if response.HasField("option") else None,
                SUCCESSFUL if response.code == SEED_SUCCESSFUL else FAILED,
                response.response,
                users=users,
                user=_seedUser(response.user) if response.HasField("user") else b"",
                status=status,
                room=LIMIT - 1 - len(term),
            )
            + term
        ))

    def _fail(self, option: int | None, reason: str) -> None:
        """A refusal of the seed's C{option} (C{None}: no option)."""
        term = self._terminator
        self._write(self.encode(
            encodeResponse(
                None if option is None else option + 1,
                FAILED,
                reason,
                room=LIMIT - 1 - len(term),
            )
            + term
        ))

    def _loggedIn(self, info) -> None:
        super()._loggedIn(info)
        if self.user is not None and not self._terminator:
            # Client A reads nothing for its first seconds; what came
            # meanwhile would join the login answer in its first read.
            hold = getattr(self, "holdWrites", None)
            if hold is not None:
                hold(FIRST_READ_HOLD)

    def _sendMessage(self, request: Request) -> None:
        messg = request.messg
        receiver = text(messg.receiver, "messg.receiver")
        body = text(messg.text, "messg.text")
        if not receiver:
            raise Refused("a message needs messg.receiver")
        if not body:
            raise Refused("the message is empty")
        if not self.allowance.allowMessage():
            raise Refused(
                f"slow down: at most {self.factory.limits.rate:g} messages a"
                f" second (not delivered)"
            )
        try:
            count = self.presence.sendMessage(self, receiver, body)
        except PresenceError as e:
            raise Refused(f"not delivered: {e}")
        if not count:
            raise Refused("not delivered: nobody else is online")
        # Delivered: no answer. These clients print any SEND_MESSAGE
        # response as a message received (their own servers send none).

    def deliverMessage(self, message: ChatMessage) -> None:
        term = self._terminator
        for data in encodeDeliveries(
            message.receiver, message.sender, message.text, LIMIT - 1 - len(term)
        ):
            if self._write(self.encode(data + term)) is False:
                raise RecipientBusy(f"{message.receiver} is not reading; disconnected")


# The seed's handlers, but for the answer to a message.
CourseRevision._handlers = {
    **ProtobufChatProtocol._handlers,
    SEED_SEND_MESSAGE: CourseRevision._sendMessage,
}

_classes: dict[type, type] = {}


def courseClass(base: type) -> type:
    """The course revision of the protocol class C{base}."""
    cls = _classes.get(base)
    if cls is None:
        cls = _classes[base] = type(
            "Course" + base.__name__, (CourseRevision, base), {"__doc__": CourseRevision.__doc__}
        )
    return cls
