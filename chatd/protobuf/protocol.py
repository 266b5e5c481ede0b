"""
The seed-000 protobuf chat: one connection's behaviour.

Requests are framed by L{chatd.protobuf.framing}, decoded as
C{chat.ClientRequest} and answered with exactly one C{chat.ServerResponse}
each. docs/protobuf.md is the normative description.
"""

from __future__ import annotations

from collections import deque
from typing import Callable

from google.protobuf.message import DecodeError
from twisted.internet.interfaces import (
    IDelayedCall,
    IHalfCloseableProtocol,
    IReactorTime,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from chatd.presence import (
    ChatMessage,
    IChatSession,
    IPresenceService,
    PresenceError,
    RecipientBusy,
    UserInfo,
    isBroadcast,
    nameKey,
)
from chatd.protobuf import chat_pb2
from chatd.limits import ConnectionLimiter, Limits
from chatd.metrics import SENDQ, TOO_LARGE, ChatdMetrics
from chatd.sessions import SessionFactory, SessionProtocol
from chatd.cork import CORK
from chatd.writethrough import sendNow
from chatd.protobuf.framing import (
    DEFAULT_MAX_FRAME,
    DelimitedFramer,
    FrameTooLarge,
    RawRequestFramer,
    encodeDelimited,
    encodeDelivery as encodeDeliveryFrame,
    encodeRaw,
    encodeVarint,
    scanOption,
)

Request = chat_pb2.ClientRequest
Response = chat_pb2.ServerResponse

USER_LOGIN = Request.USER_LOGIN
CONNECTED_USERS = Request.CONNECTED_USERS
USER_INFORMATION = Request.USER_INFORMATION
STATUS_CHANGE = Request.STATUS_CHANGE
SEND_MESSAGE = Request.SEND_MESSAGE

FAILED = Response.FAILED_OPERATION
SUCCESSFUL = Response.SUCCESSFUL_OPERATION

RAW = "raw"
DELIMITED = "delimited"
FRAMINGS = (RAW, DELIMITED)

#: Which revision of seed 000 a listener speaks: told per connection from its
#: first request (C{auto}), or forced (docs/protobuf.md).
AUTO = "auto"
SEED = "seed"
COURSE = "course"
DIALECTS = (AUTO, SEED, COURSE)

#: Seconds between two messages to one raw connection (--protobuf-raw-gap).
#: The raw clients read one recv() as one message; a client that reads in
#: its own thread (as both course clients do) is back in recv() within a
#: millisecond or two of printing what it got, so 50 ms keeps every message
#: in a read of its own, while a raw connection still takes 20 messages a
#: second (the default --rate of one sender) in a busy chat.
DEFAULT_RAW_GAP = 0.05

#: How long a raw request that may still grow is waited for, in seconds.
DEFAULT_RAW_WAIT = 0.05

#: How many encoded "delivered to" answers one connection keeps.
_MAX_ANSWERS = 32

#: Longest ip text a client may give in newuser.ip.
_MAX_IP = 64


class Refused(Exception):
    """A request is answered FAILED_OPERATION with this text."""


def text(value: str | bytes, field: str) -> str:
    """
    A string field of a request. proto2 hands invalid UTF-8 back as bytes
    instead of failing the parse; such a request is refused.
    """
    if isinstance(value, bytes):
        raise Refused(f"{field} is not valid UTF-8")
    return value


# The two responses of every message, encoded by hand: building and
# serializing ServerResponse objects was most of the cost of routing one.
# They are byte for byte what SerializeToString gives (tests/test_protobuf_wire.py).
#   option = SEND_MESSAGE (field 1, varint 4), code = SUCCESSFUL (field 2,
#   varint 1), then response (field 3); the delivery's prefix, with messg
#   (field 6), is framing.DELIVERY_PREFIX.
_SENT_PREFIX = b"\x08\x04\x10\x01\x1a"


def encodeSent(text: str) -> bytes:
    """C{ServerResponse(option=SEND_MESSAGE, code=SUCCESSFUL, response=text)}."""
    data = text.encode("utf-8")
    return _SENT_PREFIX + encodeVarint(len(data)) + data


def deliveryHead(receiver: str, sender: str) -> bytes:
    """The C{receiver} and C{sender} fields of a C{Message}, encoded."""
    r = receiver.encode("utf-8")
    s = sender.encode("utf-8")
    return b"".join((b"\x0a", encodeVarint(len(r)), r, b"\x12", encodeVarint(len(s)), s))


def encodeDelivery(receiver: str, sender: str, text: str) -> bytes:
    """
    C{ServerResponse(option=SEND_MESSAGE, code=SUCCESSFUL,
    messg=Message(receiver=receiver, sender=sender, text=text))}.
    """
    return encodeDeliveryFrame(deliveryHead(receiver, sender), text, False)


def users(count: int) -> str:
    """C{1 user}, C{2 users}."""
    return f"{count} user" if count == 1 else f"{count} users"


def userInformation(info: UserInfo) -> chat_pb2.UserInformation:
    return chat_pb2.UserInformation(
        username=info.name, ip=info.ip, status=info.status
    )


@implementer(IChatSession, IHalfCloseableProtocol)
class ProtobufChatProtocol(SessionProtocol):
    """
    One client of the protobuf chat, adapted to L{IChatSession}.

    A client that shuts down its sending side (C{nc -q 1}, C{-N}) gets the
    answer to every request it sent, then the connection is closed.
    """

    protocolName = "protobuf"
    log = Logger()
    #: Whether the next request may reveal the course revision (set by the
    #: factory for C{--protobuf-dialect auto}; cleared after the first).
    _detect = False
    #: Whether the framer may hand simple messages over already read
    #: (framing.classifySend; the seed's meaning of option 4).
    _classify = True

    def __init__(
        self,
        presence: IPresenceService,
        clock: IReactorTime,
        framer: RawRequestFramer | DelimitedFramer,
        encode: Callable[[bytes], bytes],
        rawWait: float = DEFAULT_RAW_WAIT,
    ) -> None:
        self.presence = presence
        self.clock = clock
        self.framer = framer
        self.encode = encode
        self._delimited = encode is encodeDelimited
        self.rawWait = rawWait
        self.user: UserInfo | None = None
        self._loggingIn = False
        self._closing = False
        self._readLost = False  # the client sends nothing more
        self._waitCall: IDelayedCall | None = None
        self.outbound = None
        # Responses held while the process is corked (see _write).
        self._pending: list[bytes] | None = None
        # receiver -> the encoded answer "delivered to <receiver>".
        self._answers: dict[str, bytes] = {}
        # sender -> (receiver, deliveryHead(receiver, sender)).
        self._heads: dict[str, tuple[str, bytes]] = {}

    # Bytes in.

    def refuse(self, refusal: str) -> None:
        self._out = self.transport.write
        self.disconnect(f"connection refused: {refusal}")

    def admitted(self) -> None:
        self.outbound = self.factory.outbound(self.transport, self._sendQueueFull)
        if self.outbound is not None:
            self._out = self.outbound.write
        self._admitted = True

    #: Whether the connection was admitted (see L{_out}).
    _admitted = False

    def _out(self, data: bytes) -> object:
        """
        Where bytes go: once admitted, the transport, sent at once when it
        can take them (chatd.writethrough); nowhere before. An instance
        attribute takes its place with an outbound queue (its C{write}), or
        while refusing and closing (the transport's own C{write}): a method,
        so that a connection keeps nothing for it.
        """
        if self._admitted:
            sendNow(self.transport, data)

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        cork = CORK
        cork.depth += 1
        try:
            self._framesReceived(data)
        finally:
            cork.depth -= 1
            if not cork.depth:
                cork.flush()

    def _framesReceived(self, data: bytes) -> None:
        if self._waitCall is not None:
            self._waitCall.cancel()
            self._waitCall = None
        # Once logged in, a simple message comes out of the framer already
        # read, as (receiver, text): the route of nearly every request skips
        # protobuf's parse (framing.classifySend says which ones).
        items, error = self.framer.scan(data, self._classify and self.user is not None)
        for item in items:
            if item.__class__ is tuple:
                try:
                    self._sendText(*item)
                except Refused as e:
                    self._fail(SEND_MESSAGE, str(e))
                except Exception:
                    self._internalError(SEND_MESSAGE)
            else:
                self._handleFrame(item)
            if self._closing:
                return
        if error.__class__ is FrameTooLarge:
            self.log.info(
                "protobuf connection of {user} closed: {text}",
                user=self.user.name if self.user else self.peerHost,
                peer=self.peerHost,
                text=str(error),
                protocol=self.protocolName,
                reason=TOO_LARGE,
                event="disconnect",
            )
            self.factory.disconnecting(self, TOO_LARGE)
            self.disconnect(str(error))
            return
        if error is not None:
            self._fail(None, f"malformed request: {error}")
        if self.framer.waiting and not self._closing:
            self._waitCall = self.clock.callLater(self.rawWait, self._waited)

    def _waited(self) -> None:
        self._waitCall = None
        frame = self.framer.flush()
        if frame is not None:
            self._handleFrame(frame)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._closing = True
        if self._waitCall is not None:
            self._waitCall.cancel()
            self._waitCall = None
        self._pending = None
        self.presence.logout(self)
        self.user = None
        # Break the cycle through the queue's overflow callback, so the
        # connection and its buffers go by reference counting alone.
        outbound, self.outbound = self.outbound, None
        if outbound is not None:
            outbound.detach()
            self._out = self.transport.write
        self.factory.release(self)

    def loginTimedOut(self) -> None:
        self.disconnect(f"no login within {self.factory.limits.loginTimeout:g} seconds")

    def _sendQueueFull(self) -> None:
        self.log.info(
            "protobuf {user} disconnected: not reading, more than {limit} bytes"
            " waiting",
            user=self.user.name if self.user else self.peerHost,
            peer=self.peerHost,
            limit=self.factory.limits.maxSendQueue,
            protocol=self.protocolName,
            reason=SENDQ,
            event="disconnect",
        )
        self.factory.disconnecting(self, SENDQ)
        self.disconnect(
            f"disconnected: you are not reading; more than"
            f" {self.factory.limits.maxSendQueue} bytes were waiting for you"
        )

    def _handleFrame(self, frame: bytes) -> None:
        try:
            request = Request.FromString(frame)
        except DecodeError:
            self._detect = False
            self._fail(
                scanOption(frame), "malformed request: not a chat.ClientRequest"
            )
            return
        option = request.option
        if self._detect:
            self._detect = False
            # The seed's option 1 is CONNECTED_USERS, meaningless before a
            # login: with newuser set it is the course revision's USER_LOGIN.
            if option == CONNECTED_USERS and request.HasField("newuser"):
                self.log.info(
                    "protobuf connection from {peer} speaks the course revision",
                    peer=self.peerHost,
                    protocol=self.protocolName,
                    dialect=COURSE,
                )
                # The connection takes the revision's class (its handlers and
                # encoders): the seed's connections pay nothing for it.
                self.__class__ = self.factory.courseClass(self.__class__)
                self._handleFrame(frame)
                return
        if option == USER_LOGIN and not request.HasField("option"):
            # (Any other value was set.) proto2 keeps an enum value it does
            # not know among the unknown fields, and reads the field as its
            # default (USER_LOGIN).
            option = scanOption(frame)
            if option is not None:
                self._fail(
                    option,
                    f"unknown option {option}: chatd speaks the seed's 0-based"
                    f" options, USER_LOGIN=0 to SEND_MESSAGE=4",
                )
                return
            option = USER_LOGIN
        try:
            if option != USER_LOGIN and self.user is None:
                raise Refused("log in first (USER_LOGIN)")
            self._handlers[option](self, request)
        except Refused as e:
            self._fail(option, str(e))
        except Exception:
            self._internalError(option)

    def _internalError(self, option: int) -> None:
        """Answer a request that failed in chatd (logged, within limits)."""
        if self.allowance.mayLogError():
            self.log.failure("protobuf request {option} failed", option=option)
        self._fail(option, "internal error")

    # Bytes out.

    def _send(self, response: Response) -> bool | None:
        """Write C{response}; C{False} if the outbound queue overflowed."""
        return self._write(self.encode(response.SerializeToString()))

    def _fail(self, option: int | None, text: str) -> None:
        if option is None or option in self._handlers:
            response = Response(code=FAILED, response=text)
            if option is not None:
                response.option = option
            self._send(response)
        else:
            # An option value chat.proto does not define cannot be set on the
            # message, but the answer still carries the request's option.
            payload = Response(code=FAILED, response=text).SerializeToString()
            self._write(
                self.encode(b"\x08" + encodeVarint(option) + payload)
            )

    def _succeed(self, option: int, text: str, **fields) -> None:
        self._send(Response(option=option, code=SUCCESSFUL, response=text, **fields))

    # Requests.

    def _login(self, request: Request) -> None:
        try:
            if self.user is not None or self._loggingIn:
                name = self.user.name if self.user else "someone"
                raise Refused(f"already logged in as {name}")
            newuser = request.newuser
            name = text(newuser.username, "newuser.username")
            if not name:
                raise Refused("login needs newuser.username")
        except Refused as e:
            self.factory.loginRefused(self, str(request.newuser.username), str(e))
            raise
        ip = newuser.ip
        if not isinstance(ip, str) or not ip or len(ip) > _MAX_IP or not ip.isprintable():
            # Clients fill the field with anything; the peer address is the
            # one thing known to be true.
            ip = self.peerHost
        self._loggingIn = True
        d = self.presence.login(self, name, ip)
        d.addCallbacks(self._loggedIn, self._loginRefused)

    def _loggedIn(self, info: UserInfo) -> None:
        self._loggingIn = False
        if self._closing:
            self.presence.logout(self)
            return
        self.user = info
        self.allowance.loggedIn()
        self._succeed(
            USER_LOGIN, f"welcome, {info.name}", user=userInformation(info)
        )
        self._closeIfHalfClosed()

    def _loginRefused(self, failure: Failure) -> None:
        self._loggingIn = False
        if self._closing:
            return
        if failure.check(PresenceError):
            self._fail(USER_LOGIN, f"login refused: {failure.value}")
        else:
            self.log.failure("login failed", failure)
            self._fail(USER_LOGIN, "login failed: internal error")
        self._closeIfHalfClosed()

    def _connectedUsers(self, request: Request) -> None:
        self._list(CONNECTED_USERS)

    def _list(self, option: int) -> None:
        found = self.presence.users()
        self._succeed(
            option,
            f"{users(len(found))} online",
            users=chat_pb2.ConnectedUsers(users=map(userInformation, found)),
        )

    def _userInformation(self, request: Request) -> None:
        name = text(request.user.user, "user.user")
        if not name or isBroadcast(name):
            self._list(USER_INFORMATION)
            return
        info = self.presence.lookup(name)
        if info is None:
            raise Refused(f"{name} is not online")
        self._succeed(
            USER_INFORMATION, f"{info.name} is online", user=userInformation(info)
        )

    def _statusChange(self, request: Request) -> None:
        change = request.status
        username = text(change.username, "status.username")
        if username and nameKey(username) != nameKey(self.user.name):
            raise Refused("you can only change your own status")
        if not change.HasField("status"):
            raise Refused("status change needs status.status")
        try:
            info = self.presence.setStatus(self, text(change.status, "status.status"))
        except PresenceError as e:
            raise Refused(f"status refused: {e}")
        self.user = info
        self._succeed(
            STATUS_CHANGE,
            f"status is now {info.status}",
            status=chat_pb2.ChangeStatus(username=info.name, status=info.status),
        )

    def _sendMessage(self, request: Request) -> None:
        messg = request.messg
        receiver = messg.receiver
        body = messg.text
        if receiver.__class__ is not str or body.__class__ is not str:
            text(receiver, "messg.receiver")
            text(body, "messg.text")
        self._sendText(receiver, body)

    def _sendText(self, receiver: str, body: str) -> None:
        """
        Send C{body} to C{receiver} and answer the sender. The hottest route
        of all (framing.classifySend's messages come straight here): kept to
        as few calls as it can be.
        """
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
        # The same answer, again and again, to a user writing to a friend
        # (never kept for a broadcast, whose answer counts its receivers).
        answer = self._answers.get(receiver)
        if answer is None:
            if isBroadcast(receiver):
                self._write(self.encode(encodeSent(f"delivered to {users(count)}")))
                return
            if len(self._answers) >= _MAX_ANSWERS:
                self._answers.clear()
            answer = self._answers[receiver] = self.encode(
                encodeSent(f"delivered to {receiver}")
            )
        pending = self._pending
        if pending is not None and not self._closing:
            pending.append(answer)  # _write's corked case, without its call
        else:
            self._write(answer)

    # IChatSession.

    def _write(self, data: bytes) -> bool | None:
        """
        Send C{data}; C{False} when it overflowed the outbound queue (which
        disconnects this client).

        While the process is corked (chatd.cork: inside any protobuf
        connection's C{dataReceived}, or a batch from the cluster), what is
        written is held and handed to the transport once, in one piece, when
        the burst has been handled: a read of many pipelined requests, or a
        batch of many messages from another node, costs one write per
        connection, not one per message. Nothing is held for a client whose
        queue is paused, so an overflow is still found at once, and told to
        the sender.
        """
        if CORK.depth and not self._closing:
            pending = self._pending
            if pending is not None:
                # (Only ever set while corked: deliverMessage and _sendText
                # append to it themselves.)
                pending.append(data)
                return True
            outbound = self.outbound
            if outbound is None or not outbound.paused:
                self._pending = [data]
                CORK.dirty.append(self)
                return True
        return self._out(data)

    def flush(self) -> None:
        """Hand what was held to the transport."""
        pending, self._pending = self._pending, None
        if pending:
            self._out(pending[0] if len(pending) == 1 else b"".join(pending))

    def deliverMessage(self, message: ChatMessage) -> None:
        # The receiver and sender fields, encoded once per correspondent.
        heads = self._heads
        sender, receiver = message.sender, message.receiver
        cached = heads.get(sender)
        if cached is None or cached[0] != receiver:  # (or a broadcast now)
            if len(heads) >= _MAX_ANSWERS:
                heads.clear()
            cached = heads[sender] = (receiver, deliveryHead(receiver, sender))
        data = encodeDeliveryFrame(cached[1], message.text, self._delimited)
        pending = self._pending
        if pending is not None and not self._closing:
            pending.append(data)  # _write's corked case, without its call
        elif self._write(data) is False:
            raise RecipientBusy(f"{message.receiver} is not reading; disconnected")

    # IHalfCloseableProtocol.

    def readConnectionLost(self) -> None:
        """
        The client sent its last byte: a raw request that was waited for
        (it could have grown) is whole now, and is answered at once; a
        request cut short gets an error. Then, once a login under way is
        answered, the connection closes after its answers.
        """
        self._readLost = True
        if self._closing:
            return
        if self._waitCall is not None:
            self._waitCall.cancel()
            self._waitCall = None
        frame = self.framer.flush()
        if frame is not None:
            self._handleFrame(frame)
        elif self.framer.buffered():
            self._fail(None, "malformed request: the connection ended inside a request")
        self._closeIfHalfClosed()

    def writeConnectionLost(self) -> None:
        self.transport.loseConnection()

    def _closeIfHalfClosed(self) -> None:
        if not self._readLost:
            return
        if self._loggingIn:
            # The close grace bounds the wait for the login's answer.
            self.allowance.closing(self.transport)
            return
        self.disconnect(None)

    def disconnect(self, reason: str | None) -> None:
        """
        Tell the client C{reason} and close, after what waits for it;
        C{None}: close without a word (it half-closed and has its answers).
        """
        if self._closing:
            return
        self.flush()
        self._closing = True
        # The name is free at once, not when the client has read its last
        # bytes (which one that does not read never does).
        self.presence.logout(self)
        outbound, self.outbound = self.outbound, None
        if outbound is not None:
            # What waits goes first (at most --max-sendq bytes), then the
            # reason, written past the queue's limit.
            outbound.finish()
        self._out = self.transport.write
        if reason is not None:
            self._fail(None, reason)
        self.transport.loseConnection()
        self.allowance.closing(self.transport)


# option -> handler, shared by every connection (an idle session should cost
# little memory).
ProtobufChatProtocol._handlers = {
    USER_LOGIN: ProtobufChatProtocol._login,
    CONNECTED_USERS: ProtobufChatProtocol._connectedUsers,
    USER_INFORMATION: ProtobufChatProtocol._userInformation,
    STATUS_CHANGE: ProtobufChatProtocol._statusChange,
    SEND_MESSAGE: ProtobufChatProtocol._sendMessage,
}


class RawProtobufChatProtocol(ProtobufChatProtocol):
    """
    A client with raw framing. Its clients read one C{recv()} as one message,
    so every message is a write of its own (a read's answers are not joined),
    and consecutive messages are spaced by the factory's C{rawGap}: they wait
    their turn in a queue of this connection's, in order, and count towards
    C{--max-sendq}.
    """

    _gapQueue: deque | None = None  # messages waiting for their turn
    _gapCall: IDelayedCall | None = None
    _gapBytes = 0
    _nextWrite = 0.0  # when the next message may go
    _closeAfterGap = False

    def dataReceived(self, data: bytes) -> None:
        # No cork: it would join a read's answers into one write.
        if self._closing:
            return
        self._framesReceived(data)

    def _write(self, data: bytes) -> bool | None:
        gap = self.factory.rawGap
        if not gap or self._closing:
            return self._out(data)
        queue = self._gapQueue
        if queue is None:
            now = self.clock.seconds()
            if now >= self._nextWrite:
                self._nextWrite = now + gap
                return self._out(data)
            queue = self._gapQueue = deque()
            self._gapCall = self.clock.callLater(self._nextWrite - now, self._gapEnded)
        queue.append(data)
        self._gapBytes += len(data)
        limit = self.factory.limits.maxSendQueue
        if limit and self._gapBytes > limit:
            self._sendQueueFull()
            return False
        return True

    def holdWrites(self, seconds: float) -> None:
        """Send nothing more for C{seconds} (what comes meanwhile waits)."""
        if self.factory.rawGap:
            self._nextWrite = max(self._nextWrite, self.clock.seconds() + seconds)

    def _gapEnded(self) -> None:
        self._gapCall = None
        queue = self._gapQueue
        data = queue.popleft()
        self._gapBytes -= len(data)
        gap = self.factory.rawGap
        self._nextWrite = self.clock.seconds() + gap
        if queue:
            self._gapCall = self.clock.callLater(gap, self._gapEnded)
        else:
            self._gapQueue = None
        self._out(data)
        if self._gapQueue is None and self._closeAfterGap:
            self._closeAfterGap = False
            ProtobufChatProtocol.disconnect(self, None)

    def _flushGap(self) -> None:
        """Write what waits for its turn at once: the connection is closing."""
        if self._gapCall is not None:
            self._gapCall.cancel()
            self._gapCall = None
        queue, self._gapQueue = self._gapQueue, None
        self._gapBytes = 0
        for data in queue or ():
            self._out(data)

    def disconnect(self, reason: str | None) -> None:
        if self._closing:
            return
        if reason is None and self._gapQueue:
            # A client that half-closed still reads its answers one at a
            # time: the close waits for the last one. The name is free now.
            self.presence.logout(self)
            self._closeAfterGap = True
            return
        self._flushGap()
        ProtobufChatProtocol.disconnect(self, reason)

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self._gapCall is not None:
            self._gapCall.cancel()
            self._gapCall = None
        self._gapQueue = None
        ProtobufChatProtocol.connectionLost(self, reason)


class ProtobufChatFactory(SessionFactory):
    """
    Builds L{ProtobufChatProtocol}s that share one presence service.

    @param framing: L{RAW} (the existing clients' framing) or L{DELIMITED}.
    @param metrics: the server's L{ChatdMetrics}, passed by the front;
        without one (a test's factory) it counts in a L{ChatdMetrics} of its
        own (L{SessionFactory}).
    @param dialect: L{AUTO} (tell the course revision by its first request),
        L{SEED} or L{COURSE}. The front passes C{--protobuf-dialect} (default
        C{auto}); a factory built in code speaks the seed unless told.
    @param rawGap: seconds between two messages to one raw connection; the
        front passes C{--protobuf-raw-gap}, a factory built in code has none.
    """

    def __init__(
        self,
        presence: IPresenceService,
        clock: IReactorTime,
        framing: str = RAW,
        maxFrameSize: int = DEFAULT_MAX_FRAME,
        rawWait: float = DEFAULT_RAW_WAIT,
        limits: Limits | None = None,
        limiter: ConnectionLimiter | None = None,
        metrics: ChatdMetrics | None = None,
        dialect: str = SEED,
        rawGap: float = 0.0,
    ) -> None:
        if framing not in FRAMINGS:
            raise ValueError(f"framing must be one of {FRAMINGS}, not {framing!r}")
        if dialect not in DIALECTS:
            raise ValueError(f"dialect must be one of {DIALECTS}, not {dialect!r}")
        SessionFactory.__init__(self, clock, limits, limiter, metrics)
        self.presence = presence
        self.framing = framing
        self.maxFrameSize = maxFrameSize
        self.rawWait = rawWait
        self.dialect = dialect
        #: Seconds between two messages to one raw connection (0: none).
        self.rawGap = rawGap
        # The course revision builds on this module (chatd/protobuf/course.py).
        from chatd.protobuf.course import courseClass

        #: The course revision's class for a connection of the given class.
        self.courseClass = courseClass

    def buildProtocol(self, addr) -> ProtobufChatProtocol:
        if self.framing == RAW:
            framer, encode = RawRequestFramer(self.maxFrameSize), encodeRaw
            # Without a gap Twisted would join the separate writes of one
            # reactor turn into one send() anyway: the corked connection,
            # which joins them for less, is kept (make bench runs so).
            cls = RawProtobufChatProtocol if self.rawGap else ProtobufChatProtocol
        else:
            framer, encode = DelimitedFramer(self.maxFrameSize), encodeDelimited
            cls = ProtobufChatProtocol
        if self.dialect == COURSE:
            cls = self.courseClass(cls)
        protocol = cls(self.presence, self.clock, framer, encode, self.rawWait)
        if self.dialect == AUTO:
            protocol._detect = True
        protocol.factory = self
        return protocol
