"""
What the load generator's clients write and read, protocol by protocol.

Every byte is made and read by chatd's own codecs: the protobuf chat through
L{chatd.protobuf.chat_pb2} and L{chatd.protobuf.framing}, MSRP through
L{chatd.msrp.codec}, MSGR's chat socket through L{chatd.msgr.codec}. The
formats defined here are the baselines': the relay's (C{bench/relay.py}), a
4-byte big-endian length, then one byte of name length, the name, and the
payload; and IRC's (ngircd), lines of RFC 2812.

A L{Dialect} knows, for one protocol:

  - the bytes that log a client in, and how to tell that it worked
    (L{Dialect.loginReader});
  - the bytes of one text message (L{Dialect.message});
  - how to cut what the server sends into whole frames, each with its exact
    bytes and what it means (L{Dialect.reader}): a L{Delivery}, an
    L{Answer} to a request, or anything else.

Message texts are L{TEXT_LENGTH} bytes: a L{STAMP_LENGTH}-byte stamp (the
send time in nanoseconds of C{time.monotonic_ns}, in hex) and a fixed filler,
so every delivery of one sender to one receiver has the same size and the
stamp sits at the same offset in each (see L{chatd.loadgen.records}).
"""

from __future__ import annotations

from chatd.msgr import codec as msgr
from chatd.msrp import codec as msrp
from chatd.protobuf import chat_pb2
from chatd.protobuf.framing import (
    DelimitedFramer,
    RawResponseFramer,
    encodeDelimited,
    encodeRaw,
)

#: Bytes of every message text.
TEXT_LENGTH = 64

#: Bytes of the send-time stamp at the start of each text.
STAMP_LENGTH = 16

#: The stamp of the messages that teach receivers what deliveries look like.
CALIBRATION_STAMP = b"0" * STAMP_LENGTH

_FILLER = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"[
    : TEXT_LENGTH - STAMP_LENGTH
]

Request = chat_pb2.ClientRequest
Response = chat_pb2.ServerResponse


def makeStamp(nanoseconds: int) -> bytes:
    """The stamp of a message sent at C{nanoseconds} (C{time.monotonic_ns})."""
    return b"%016x" % nanoseconds


def readStamp(stamp: bytes) -> int:
    """Undo L{makeStamp}."""
    return int(stamp, 16)


def makeText(stamp: bytes) -> bytes:
    """A message text of L{TEXT_LENGTH} bytes that starts with C{stamp}."""
    return stamp + _FILLER


CALIBRATION_TEXT = makeText(CALIBRATION_STAMP)


class LoginFailed(Exception):
    """The server refused a login; C{str()} is what it said."""


class UnexpectedFrame(Exception):
    """The server sent something the load generator did not ask for."""


class Delivery:
    """
    A message delivered to a client: who sent it, to whom (as the receiving
    protocol shows it; C{None} where it does not say), and its text bytes.
    """

    __slots__ = ("sender", "receiver", "text")

    def __init__(self, sender: str | None, receiver: str | None, text: bytes) -> None:
        self.sender = sender
        self.receiver = receiver
        self.text = text

    def __repr__(self) -> str:
        return f"Delivery({self.sender!r}, {self.receiver!r}, {self.text!r})"


class Answer:
    """The server's answer to one request: C{ok} and its words."""

    __slots__ = ("ok", "detail")

    def __init__(self, ok: bool, detail: str) -> None:
        self.ok = ok
        self.detail = detail

    def __repr__(self) -> str:
        return f"Answer({self.ok!r}, {self.detail!r})"


class Other:
    """Any other frame (a list, a push, an error), kept for error messages."""

    __slots__ = ("value",)

    def __init__(self, value: object) -> None:
        self.value = value

    def __repr__(self) -> str:
        return f"Other({self.value!r})"


class Dialect:
    """
    One protocol as a load-generating client speaks it.

    @ivar name: the protocol's name (C{protobuf}, C{msrp}, C{msgr}, C{relay},
        C{irc}).
    @ivar answersMessages: whether the server answers each message to its
        sender: C{"records"} (answers of one fixed size), C{"lines"} (MSGR's
        C{#RESPUESTA} lines, whose size varies) or C{None}.
    @ivar needsToken: whether logging in needs an MSGR token first.
    @ivar interleaves: whether the server may put lines of its own between
        deliveries, which the client must answer (IRC's C{PING}): then
        deliveries are counted by L{chatd.loadgen.records.InterleavedRecordCounter},
        which hands those lines to L{unasked}.
    """

    name = ""
    answersMessages: str | None = None
    needsToken = False
    interleaves = False
    #: At most this many logins under way at once per worker (C{None}: as
    #: many as asked).
    loginConcurrency: int | None = None

    def login(self, name: str, token: str | None = None) -> bytes:
        """The bytes that log C{name} in."""
        raise NotImplementedError()

    def loginReader(self, name: str) -> "LoginReader":
        """What reads the server's answer to L{login}."""
        return LoginReader(self, name)

    def loginDone(self, name: str, item: object, state: dict) -> bool:
        """
        Whether C{item}, read after L{login}, completes the login.

        @raise LoginFailed: when it refuses it.
        """
        raise NotImplementedError()

    def message(
        self, sender: str, receiver: str, text: bytes, token: str | None = None
    ) -> bytes:
        """The bytes of one message from C{sender} to C{receiver}."""
        raise NotImplementedError()

    def reader(self) -> "Reader":
        """A new reader of what the server sends to one client."""
        raise NotImplementedError()

    def unasked(self, line: bytes) -> bytes:
        """
        The answer to C{line}, which the server sent between deliveries
        (only where L{interleaves}).

        @raise UnexpectedFrame: when it is not something to answer.
        """
        raise UnexpectedFrame(f"unexpected between deliveries: {line!r}")


class Reader:
    """
    Cuts a stream from the server into whole frames. L{feed} returns
    C{(raw bytes, item)} pairs, C{item} a L{Delivery}, an L{Answer} or an
    L{Other}.
    """

    def feed(self, data: bytes) -> list[tuple[bytes, object]]:
        raise NotImplementedError()


class LoginReader:
    """Reads the answer to a login; L{feed} is true once it succeeded."""

    def __init__(self, dialect: Dialect, name: str) -> None:
        self.dialect = dialect
        self.name = name
        self.reader = dialect.reader()
        self.state: dict = {}
        #: Bytes that came after the frame that completed the login.
        self.rest = b""

    def feed(self, data: bytes) -> bool:
        """
        @raise LoginFailed: when the server refused the login.
        """
        items = self.reader.feed(data)
        for index, (raw, item) in enumerate(items):
            if self.dialect.loginDone(self.name, item, self.state):
                self.rest = b"".join(r for r, _ in items[index + 1 :])
                return True
        return False


# The protobuf chat (seed 000).


class ProtobufReader(Reader):
    """
    Responses of the protobuf chat, raw or delimited. A raw response that
    ends a read on a field boundary is taken as whole (chatd writes each
    response with one write; L{chatd.protobuf.framing.RawResponseFramer}).
    """

    def __init__(self, framing: str) -> None:
        self.delimited = framing == "delimited"
        self.framer = DelimitedFramer() if self.delimited else RawResponseFramer()

    def feed(self, data: bytes) -> list[tuple[bytes, object]]:
        frames = list(self.framer.feed(data))
        if self.framer.waiting:
            last = self.framer.flush()
            if last is not None:
                frames.append(last)
        out = []
        for frame in frames:
            response = Response.FromString(frame)
            raw = encodeDelimited(frame) if self.delimited else frame
            out.append((raw, _protobufItem(response)))
        return out


def _protobufItem(response) -> object:
    if response.HasField("messg"):
        messg = response.messg
        return Delivery(messg.sender, messg.receiver, messg.text.encode("utf-8"))
    if response.HasField("option") or response.HasField("code"):
        return Answer(
            response.code == Response.SUCCESSFUL_OPERATION,
            f"option {response.option}: {response.response}",
        )
    return Other(response)


class ProtobufDialect(Dialect):
    """The protobuf chat, with C{raw} or C{delimited} framing."""

    name = "protobuf"
    answersMessages = "records"

    def __init__(self, framing: str = "raw") -> None:
        if framing not in ("raw", "delimited"):
            raise ValueError(f"framing must be raw or delimited, not {framing!r}")
        self.framing = framing
        self.encode = encodeDelimited if framing == "delimited" else encodeRaw

    def login(self, name: str, token: str | None = None) -> bytes:
        request = Request(
            option=Request.USER_LOGIN,
            newuser=chat_pb2.UserRegistration(username=name),
        )
        return self.encode(request.SerializeToString())

    def loginDone(self, name: str, item: object, state: dict) -> bool:
        if isinstance(item, Answer):
            if item.ok:
                return True
            raise LoginFailed(item.detail)
        raise LoginFailed(f"unexpected before the login's answer: {item!r}")

    def message(
        self, sender: str, receiver: str, text: bytes, token: str | None = None
    ) -> bytes:
        request = Request(
            option=Request.SEND_MESSAGE,
            messg=chat_pb2.Message(receiver=receiver, text=text.decode("utf-8")),
        )
        return self.encode(request.SerializeToString())

    def reader(self) -> Reader:
        return ProtobufReader(self.framing)


# MSRP (seed 004).


class MsrpReader(Reader):
    """Frames MSRP's server sends to a binary client."""

    def __init__(self) -> None:
        self.decoder = msrp.MsrpFrameDecoder(fromServer=True)

    def feed(self, data: bytes) -> list[tuple[bytes, object]]:
        out = []
        for frame in self.decoder.feed(data):
            if isinstance(frame, msrp.Message):
                raw = msrp.encodeMessage(frame.name, frame.text)
                sender = frame.name.decode("utf-8", "replace").rstrip(" ")
                out.append((raw, Delivery(sender, None, frame.text)))
            elif isinstance(frame, msrp.Error):
                raw = msrp.encodeError(frame.text)
                out.append((raw, Answer(False, frame.text.decode("utf-8", "replace"))))
            else:
                out.append((b"", Other(frame)))
        return out


class MsrpDialect(Dialect):
    """
    MSRP binary clients. Names are exactly 4 bytes of UTF-8. Logging in is
    sending the name; the server says nothing when it accepts it, so the
    client also sends itself a message (MSRP delivers those), whose arrival
    proves the login.
    """

    name = "msrp"

    #: The text of the message a client sends itself to prove its login.
    LOGIN_TEXT = b"loadgen-login"

    def login(self, name: str, token: str | None = None) -> bytes:
        wire = name.encode("utf-8")
        return wire + msrp.encodeMessage(wire, self.LOGIN_TEXT)

    def loginDone(self, name: str, item: object, state: dict) -> bool:
        if isinstance(item, Delivery) and item.text == self.LOGIN_TEXT:
            return True
        if isinstance(item, Answer):
            raise LoginFailed(item.detail)
        raise LoginFailed(f"unexpected before the login's proof: {item!r}")

    def message(
        self, sender: str, receiver: str, text: bytes, token: str | None = None
    ) -> bytes:
        return msrp.encodeMessage(receiver.encode("utf-8"), text)

    def reader(self) -> Reader:
        return MsrpReader()


# MSGR UQ's chat socket (seed 001).


class MsgrReader(Reader):
    """Lines of MSGR's chat socket."""

    def __init__(self) -> None:
        self.lines = msgr.LineDecoder(64 * 1024 * 1024)

    def feed(self, data: bytes) -> list[tuple[bytes, object]]:
        out = []
        for line in self.lines.feed(data):
            if isinstance(line, msgr.LineTooLong):
                out.append((b"", Other(line)))
                continue
            text = msgr.decodeLine(line)
            fields = msgr.splitFields(text)
            command = fields[0]
            raw = line + b"\n"
            if command == "#MSJ" and len(fields) >= 5:
                fields = msgr.splitFields(text, 5)
                item = Delivery(
                    msgr.unescape(fields[2]),
                    msgr.unescape(fields[3]),
                    msgr.unescape(fields[4]).encode("utf-8"),
                )
            elif command == "#RESPUESTA" and len(fields) >= 6:
                item = Answer(fields[5] in ("701", "704"), text)
            else:
                item = Other(text)
            out.append((raw, item))
        return out


class MsgrDialect(Dialect):
    """
    MSGR's chat socket. A client needs a token from an HTTP login first
    (L{chatd.loadgen.accounts}); it binds the socket with C{#HOLA} and is
    logged in once the server has answered C{701} and pushed its two lists.
    """

    name = "msgr"
    answersMessages = "lines"
    needsToken = True

    def login(self, name: str, token: str | None = None) -> bytes:
        if not token:
            raise LoginFailed(f"{name} has no MSGR token")
        return msgr.buildLine("#HOLA", token, name)

    def loginDone(self, name: str, item: object, state: dict) -> bool:
        if isinstance(item, Answer):
            if not item.ok:
                raise LoginFailed(item.detail)
            state["bound"] = True
        elif isinstance(item, Other) and isinstance(item.value, str):
            if item.value.startswith("#LISTA_USUARIOS"):
                state["friends"] = True
            elif item.value.startswith("#SOLICITUDES"):
                state["requests"] = True
            else:
                raise LoginFailed(f"unexpected while binding: {item.value!r}")
        else:
            raise LoginFailed(f"unexpected while binding: {item!r}")
        return len(state) == 3

    def message(
        self, sender: str, receiver: str, text: bytes, token: str | None = None
    ) -> bytes:
        return msgr.buildLine("#MSJ", token or "", sender, receiver, text.decode("utf-8"))

    def reader(self) -> Reader:
        return MsgrReader()


# The relay baseline (bench/relay.py).


def relayFrame(name: bytes, payload: bytes) -> bytes:
    """
    A frame of the relay baseline: C{| length (4) | name length (1) | name |
    payload |}, the length counting everything after itself.
    """
    return (1 + len(name) + len(payload)).to_bytes(4, "big") + bytes((len(name),)) + name + payload


class RelayReader(Reader):
    """Frames of the relay baseline."""

    def __init__(self) -> None:
        self.buffer = b""

    def feed(self, data: bytes) -> list[tuple[bytes, object]]:
        buf = self.buffer + data
        out = []
        pos = 0
        while len(buf) - pos >= 4:
            stop = pos + 4 + int.from_bytes(buf[pos : pos + 4], "big")
            if stop > len(buf):
                break
            raw = buf[pos:stop]
            size = raw[4]
            name = raw[5 : 5 + size].decode("utf-8")
            out.append((raw, Delivery(None, name, raw[5 + size :])))
            pos = stop
        self.buffer = buf[pos:]
        return out


class RelayDialect(Dialect):
    """
    The relay baseline: the first frame of a connection names it (the relay
    sends it back, which proves it), and every frame after it goes to the
    connection its name names, unchanged.
    """

    name = "relay"

    def login(self, name: str, token: str | None = None) -> bytes:
        return relayFrame(name.encode("utf-8"), b"")

    def loginDone(self, name: str, item: object, state: dict) -> bool:
        if isinstance(item, Delivery) and item.receiver == name and not item.text:
            return True
        raise LoginFailed(f"unexpected before the relay's echo: {item!r}")

    def message(
        self, sender: str, receiver: str, text: bytes, token: str | None = None
    ) -> bytes:
        return relayFrame(receiver.encode("utf-8"), text)

    def reader(self) -> Reader:
        return RelayReader()


# IRC (RFC 2812), for the ngircd baseline of scenario 1.


class Ping:
    """A server's C{PING}: the client must answer C{PONG} with its C{token}."""

    __slots__ = ("token",)

    def __init__(self, token: bytes) -> None:
        self.token = token

    def __repr__(self) -> str:
        return f"Ping({self.token!r})"


#: The longest line an IRC server may send (RFC 2812: 512 bytes with its
#: CR LF); a longer one is not IRC.
IRC_LINE_LIMIT = 512


class IrcReader(Reader):
    """
    Lines of an IRC server: a C{PRIVMSG} is a L{Delivery} (its sender the
    nick of its prefix), a C{PING} a L{Ping}, a numeric of 400 and up (an
    error) an L{Answer} that is not C{ok}, anything else an L{Other}.
    """

    def __init__(self) -> None:
        self.buffer = b""

    def feed(self, data: bytes) -> list[tuple[bytes, object]]:
        buf = self.buffer + data
        out = []
        pos = 0
        while True:
            end = buf.find(b"\n", pos)
            if end < 0:
                break
            raw = buf[pos : end + 1]
            out.append((raw, ircItem(raw)))
            pos = end + 1
        self.buffer = buf[pos:]
        if len(self.buffer) > IRC_LINE_LIMIT:
            raise UnexpectedFrame(f"an IRC line longer than {IRC_LINE_LIMIT} bytes: {self.buffer[:80]!r}")
        return out


def ircItem(raw: bytes) -> object:
    """What one IRC line from a server (with its line end) means."""
    line = raw.rstrip(b"\r\n")
    prefix = b""
    if line.startswith(b":"):
        prefix, _, line = line[1:].partition(b" ")
    command, _, rest = line.partition(b" ")
    if command == b"PRIVMSG":
        receiver, _, text = rest.partition(b" :")
        nick = prefix.split(b"!", 1)[0].decode("utf-8", "replace")
        return Delivery(nick, receiver.decode("utf-8", "replace"), text)
    if command == b"PING":
        return Ping(rest[1:] if rest.startswith(b":") else rest)
    text = raw.decode("utf-8", "replace").rstrip("\r\n")
    if len(command) == 3 and command.isdigit() and command >= b"400" or command == b"ERROR":
        return Answer(False, text)
    return Other(text)


class IrcDialect(Dialect):
    """
    IRC, as the ngircd baseline of scenario 1 speaks it. A client registers
    with C{NICK} and C{USER}; it is logged in once the server has sent
    C{001} and the end of its welcome (the message of the day's end,
    C{376}, or C{422} when there is none), so that nothing of the welcome
    is left to arrive among deliveries. A message is a C{PRIVMSG}, which
    the server does not answer; it delivers it as C{:nick!user@host
    PRIVMSG receiver :text}. A server's C{PING} is answered with C{PONG}
    (L{pong}) wherever it arrives.
    """

    name = "irc"
    interleaves = True
    #: ngircd listens with a backlog of 10 (not configurable): more
    #: connections at once than that overflow it, and some are lost for
    #: good (the client believes it is connected, the server never accepts
    #: it). Two workers of 4 stay under it.
    loginConcurrency = 4

    def login(self, name: str, token: str | None = None) -> bytes:
        wire = name.encode("utf-8")
        return b"NICK %s\r\nUSER %s 0 * :%s\r\n" % (wire, wire, wire)

    def loginDone(self, name: str, item: object, state: dict) -> bool:
        if isinstance(item, Answer):
            if item.detail.split(" ", 2)[1:2] == ["422"]:
                return "welcome" in state
            raise LoginFailed(item.detail)
        if isinstance(item, Other):
            code = item.value.split(" ", 2)[1:2]
            if code == ["001"]:
                state["welcome"] = True
            elif code == ["376"] and "welcome" in state:
                return True
            return False
        raise LoginFailed(f"unexpected while registering: {item!r}")

    def message(
        self, sender: str, receiver: str, text: bytes, token: str | None = None
    ) -> bytes:
        return b"PRIVMSG %s :%s\r\n" % (receiver.encode("utf-8"), text)

    def reader(self) -> Reader:
        return IrcReader()

    def pong(self, ping: Ping) -> bytes:
        """The answer to C{ping}."""
        return b"PONG :%s\r\n" % ping.token

    def unasked(self, line: bytes) -> bytes:
        """
        The answer to C{line}, a line that came between deliveries: a
        C{PING}'s C{PONG}.

        @raise UnexpectedFrame: for any other line (an error numeric, a
            notice): the figures would not be what they seem.
        """
        item = ircItem(line)
        if isinstance(item, Ping):
            return self.pong(item)
        raise UnexpectedFrame(f"expected a delivery or a PING, got {line!r}")


def dialect(name: str, framing: str = "raw") -> Dialect:
    """
    The L{Dialect} called C{name}: C{protobuf} (with C{framing}), C{msrp},
    C{msgr}, C{relay} or C{irc}.
    """
    if name == "protobuf":
        return ProtobufDialect(framing)
    if name == "msrp":
        return MsrpDialect()
    if name == "msgr":
        return MsgrDialect()
    if name == "relay":
        return RelayDialect()
    if name == "irc":
        return IrcDialect()
    raise ValueError(f"unknown protocol {name!r}")


def matches(item: object, sender: str | None, text: bytes) -> bool:
    """
    Whether C{item} is the delivery of C{text} from C{sender} (C{None}: any
    sender). A protocol that shows senders' names another way (MSRP, for a
    name that is not 4 bytes) puts the full name before the text.
    """
    if not isinstance(item, Delivery) or not item.text.endswith(text):
        return False
    if sender is None or item.sender is None:
        return True
    return item.sender == sender or item.text == f"{sender}: ".encode("utf-8") + text


__all__ = [
    "TEXT_LENGTH",
    "STAMP_LENGTH",
    "CALIBRATION_STAMP",
    "CALIBRATION_TEXT",
    "makeStamp",
    "readStamp",
    "makeText",
    "LoginFailed",
    "UnexpectedFrame",
    "Delivery",
    "Answer",
    "Other",
    "Dialect",
    "dialect",
    "matches",
    "relayFrame",
    "Ping",
    "ircItem",
]
