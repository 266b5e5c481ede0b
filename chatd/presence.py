"""
The presence service: who is online, through which protocol, and delivery of
messages between them.

It knows nothing about bytes. Each wire protocol adapts its connection to
L{IChatSession} and talks to one shared L{IPresenceService}; protocols never
talk to each other.

The interface is shaped so that a distributed backend can implement it later:

  - claiming a name (L{IPresenceService.login}) returns a L{Deferred}, because
    a cluster has to agree that a name is free;
  - everything else works on a local view of the directory (a distributed
    backend keeps a replicated copy) and hands messages for sessions it does
    not hold to its peers.

See docs/architecture.md.
"""

from __future__ import annotations

import functools
import unicodedata
from dataclasses import dataclass
from typing import Callable, NamedTuple

from precis_i18n import get_profile
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import Attribute, Interface, implementer

from chatd.confusables import PROTOTYPES
from chatd.metrics import BUSY, ChatdMetrics

#: The receiver name that means "every online user but the sender".
BROADCAST = "all"

#: Longest user name, in characters.
MAX_NAME_LENGTH = 32

#: Longest status text, in characters.
MAX_STATUS_LENGTH = 64

#: Longest ip text stored for a user.
MAX_IP_LENGTH = 64

#: The status a user has right after logging in.
DEFAULT_STATUS = "ACTIVO"

# Characters that separate fields or list items in some wire format (MSGR uses
# "||", "&&" and a backslash escape); a name never contains them, so a name
# never needs escaping anywhere.
_NAME_FORBIDDEN = frozenset("|&\\")

# Names are compared by RFC 8265's UsernameCaseMapped profile (PRECIS): full-
# and half-width forms mapped, lower case, NFC, and only letters, digits and
# printable ASCII allowed. A standard instead of casefold() alone, so that the
# NFD or full-width spelling of a name is that name, and invisible or blank
# characters (U+034F, U+3164, U+2800) cannot make a new one.
_USERNAME = get_profile("UsernameCaseMapped")

# Keys and skeletons of names not seen lately are computed again; the cache
# only saves the work for names that come back (receivers, logins).
_NAME_CACHE = 4096

# The key of a name the rule refuses starts with a space, which no valid
# name's key has: looking such a name up finds nobody, and it never stands for
# a valid name.
_INVALID_KEY_PREFIX = " "


class PresenceError(Exception):
    """
    Base of the errors the presence service reports; C{str(error)} is a short
    English sentence a protocol may show to its user.
    """


class InvalidName(PresenceError):
    """The name breaks the name rule (see L{checkName})."""


class NameInUse(PresenceError):
    """
    Someone is already online with this name, or one that looks like it (in
    any protocol).
    """


class NameProtected(PresenceError):
    """The name belongs to a registered account and needs its password."""


class NoSuchUser(PresenceError):
    """Nobody with this name is online."""


class InvalidStatus(PresenceError):
    """The status text breaks the status rule (see L{checkStatus})."""


class AlreadyLoggedIn(PresenceError):
    """The session is logged in already (or a login is under way)."""


class RecipientBusy(PresenceError):
    """
    The receiver cannot take more now: what waits for it passed its limit.
    A session's C{deliverMessage} raises it to refuse a message.
    """


class FilesNotAccepted(PresenceError):
    """The receiver's protocol (or mode) cannot carry this file."""


class ClusterUnavailable(PresenceError):
    """
    A node of a cluster cannot reach the cluster's Redis: what needs it (a
    new login, whose name cannot be checked; a message or file to a user on
    another node) is refused until it is back (docs/cluster.md, Failures).
    Defined here so that protocols can answer it without importing the
    cluster's backend.
    """


def checkName(name: str) -> None:
    """
    Enforce the one name rule every protocol shares.

    A name is 1 to L{MAX_NAME_LENGTH} characters, each printable and none of
    them white space, C{|}, C{&} or C{\\}; RFC 8265's UsernameCaseMapped
    profile accepts it; and it is not C{all}, nor looks like it (see
    L{nameKey} and L{nameSkeleton}).

    @raise InvalidName: with the reason, when C{name} breaks the rule.
    """
    if not name:
        raise InvalidName("the name is empty")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidName(f"the name is longer than {MAX_NAME_LENGTH} characters")
    for ch in name:
        if not ch.isprintable() or ch.isspace():
            raise InvalidName("the name has a space or a control character")
        if ch in _NAME_FORBIDDEN:
            raise InvalidName(f"the name has the reserved character {ch!r}")
    # Printable ASCII without spaces is all the profile's (its ASCII7 class);
    # anything else is checked, once per login.
    if not name.isascii():
        try:
            _USERNAME.enforce(name)
        except UnicodeEncodeError as e:
            raise InvalidName(_precisReason(e)) from None
    if nameKey(name) == BROADCAST or nameSkeleton(name) == _BROADCAST_SKELETON:
        raise InvalidName(f"the name {BROADCAST!r} is reserved for broadcasts")


def checkStatus(status: str) -> None:
    """
    A status is free text of 1 to L{MAX_STATUS_LENGTH} printable characters.

    @raise InvalidStatus: with the reason.
    """
    if not status:
        raise InvalidStatus("the status is empty")
    if len(status) > MAX_STATUS_LENGTH:
        raise InvalidStatus(
            f"the status is longer than {MAX_STATUS_LENGTH} characters"
        )
    if not status.isprintable():
        raise InvalidStatus("the status has a control character")


def _precisReason(error: UnicodeEncodeError) -> str:
    # The error points into the string as the profile had mapped it so far
    # (widths, case, NFC), which may not index the name as written.
    if error.reason == "DISALLOWED/bidi_rule":
        return "the name mixes right-to-left and left-to-right letters (RFC 8265)"
    if error.end - error.start == 1:
        return (
            f"the name has the character U+{ord(error.object[error.start]):04X},"
            " which names may not have (RFC 8265)"
        )
    return f"the name breaks RFC 8265 ({error.reason})"


@functools.lru_cache(maxsize=_NAME_CACHE)
def _slowKey(name: str) -> str:
    # Cached whether valid or not: a receiver's name comes back with every
    # message, and refusing it must not cost a profile run each time.
    try:
        return _USERNAME.enforce(name)
    except UnicodeError:
        return _INVALID_KEY_PREFIX + name.casefold()


def nameKey(name: str) -> str:
    """
    The key names are compared by: names are unique and looked up without
    regard to case or width (RFC 8265 UsernameCaseMapped), and shown as their
    owner wrote them. Any string has a key; a name the rule refuses has one
    that no valid name has.
    """
    if name.isascii():
        # The fast path, for nearly every name: on ASCII the profile only
        # lowers the case (and refuses spaces and controls, which no valid
        # name has, so their lower case matches nobody either).
        return name.lower()
    return _slowKey(name)


def _tr39Skeleton(text: str) -> str:
    # UTS #39 section 4: NFD, each character to its prototype, NFD again.
    return unicodedata.normalize(
        "NFD", unicodedata.normalize("NFD", text).translate(PROTOTYPES)
    )


@functools.lru_cache(maxsize=_NAME_CACHE)
def nameSkeleton(name: str) -> str:
    """
    What C{name} looks like: names with equal skeletons are confusable
    (C{José87} and C{Jоsé87} with a Cyrillic C{о}; C{alice} and C{aIice}).

    The Unicode TR39 skeleton, taken twice around a case fold: the first
    skeleton maps C{I} to C{l} before the fold makes it C{i}, and the second
    maps what the fold produced, so look-alikes match in any case.
    """
    return _tr39Skeleton(_tr39Skeleton(name).casefold())


_BROADCAST_SKELETON = nameSkeleton(BROADCAST)


def isBroadcast(receiver: str) -> bool:
    """Whether C{receiver} names every user (C{all}, in any case or width)."""
    return nameKey(receiver) == BROADCAST


@dataclass(frozen=True, slots=True)
class UserInfo:
    """What the directory says about one online user (a snapshot)."""

    name: str
    protocol: str
    ip: str
    status: str


class ChatMessage(NamedTuple):
    """
    A text message on its way to one session.

    C{sender} is always set by the server from the sender's session, never
    taken from the client. C{receiver} is the receiver's name as the directory
    spells it, or L{BROADCAST} for a message to everyone.

    A named tuple, not a frozen dataclass: one is made for every message
    routed, and a frozen dataclass's constructor was a tenth of the server's
    time under load.
    """

    sender: str
    receiver: str
    text: str


#: C{ChatMessage(sender, receiver, text)} from a tuple, without the Python
#: frame of a named tuple's C{__new__} (the route of every direct message).
_newMessage = functools.partial(tuple.__new__, ChatMessage)


class IChatSession(Interface):
    """
    One logged-in connection, as the presence service sees it. Each protocol
    adapts its connection to this.
    """

    protocolName = Attribute(
        "A short label of the wire format: 'protobuf', 'msrp', 'msgr'."
    )

    def deliverMessage(message: ChatMessage) -> None:
        """
        Put C{message} on this session's wire, in its protocol's terms. It must
        not raise for anything the message contains.

        @raise RecipientBusy: to refuse the message because too much already
            waits for this session; the sender is told.
        """

    def disconnect(reason: str) -> None:
        """
        Close the connection, telling the user C{reason} in the protocol's
        terms where the protocol has a way.
        """


class IFileReceiver(Interface):
    """
    A session that can be handed a whole file from another protocol. Only
    small files travel this way (MSGR carries files inside one line); large
    transfers between sessions of one protocol are that protocol's business.
    """

    maxFileSize = Attribute("The largest file, in bytes, it accepts whole.")

    def deliverFile(sender: str, filename: str, content: bytes):
        """
        Put the whole file on this session's wire, in its protocol's terms.

        @return: C{None}; or, when the file has to wait for this session to
            read, a L{Deferred} that fires C{True} once it is taken and
            C{False} if it was dropped (not taken within
            C{--file-idle-timeout}, or the connection went).
        """


# Presence events, passed to observers as (kind, UserInfo).
LOGIN = "login"
LOGOUT = "logout"
STATUS = "status"


class IPresenceService(Interface):
    """
    The directory of online users shared by every listener.
    """

    def login(
        session: IChatSession,
        name: str,
        ip: str,
        status: str = DEFAULT_STATUS,
        authenticated: bool = False,
    ) -> defer.Deferred:
        """
        Claim C{name} for C{session}.

        @param authenticated: C{True} only when the protocol checked a password
            for C{name}; names of registered accounts are refused otherwise.

        @return: a L{Deferred} that fires with the session's L{UserInfo}, or
            fails with L{InvalidName}, L{NameInUse}, L{NameProtected} or
            L{AlreadyLoggedIn}.
        """

    def logout(session: IChatSession) -> None:
        """
        Release the name of C{session}; a no-op when it is not logged in, so a
        protocol may call it from C{connectionLost} unconditionally.
        """

    def setStatus(session: IChatSession, status: str) -> UserInfo:
        """
        Change the status of C{session}'s user; others see it in lists.

        @raise InvalidStatus: for a status that breaks the rule.
        @raise NoSuchUser: when C{session} is not logged in.
        """

    def lookup(name: str) -> UserInfo | None:
        """The online user called C{name} (in any case), or C{None}."""

    def lookalike(name: str) -> UserInfo | None:
        """
        The online user whose name is C{name} or looks like it (same
        L{nameKey} or same L{nameSkeleton}), or C{None}.
        """

    def users() -> list[UserInfo]:
        """Every online user, in the order they logged in."""

    def sessionFor(name: str) -> IChatSession | None:
        """The session of the online user C{name}, or C{None}."""

    def infoFor(session: IChatSession) -> UserInfo | None:
        """The directory entry of C{session}, or C{None} when logged out."""

    def sendMessage(sender: IChatSession, receiver: str, text: str) -> int:
        """
        Deliver C{text} from C{sender}'s user to the user C{receiver}, or to
        every other online user when C{receiver} is L{BROADCAST}.

        @return: how many sessions took it (a broadcast skips the busy ones).
        @raise NoSuchUser: when C{receiver} is not online, or C{sender} is not
            logged in.
        @raise RecipientBusy: when the one receiver refused it.
        """

    def sendFile(
        sender: IChatSession, receiver: str, filename: str, content: bytes
    ):
        """
        Hand a whole file from C{sender}'s user to the user C{receiver}.

        @return: what the receiver's L{IFileReceiver.deliverFile} returned:
            C{None}, or a L{Deferred} saying whether the file was taken.

        @raise NoSuchUser: when C{receiver} is not online (or C{sender} is not
            logged in).
        @raise FilesNotAccepted: when the receiver's session does not take
            files, or not this large (see L{fileLimit}).
        """

    def fileLimit(receiver: str) -> int | None:
        """
        The largest whole file the user C{receiver} can be handed with
        L{sendFile}: C{None} when nobody of that name is online, C{0} when
        their session takes no files.
        """

    def addObserver(observer: Callable[[str, UserInfo], None]) -> None:
        """
        Call C{observer(kind, info)} after every L{LOGIN}, L{LOGOUT} and
        L{STATUS} event.
        """

    def removeObserver(observer: Callable[[str, UserInfo], None]) -> None:
        """Stop calling C{observer}."""


class _Entry:
    """The directory's mutable record of one online user."""

    __slots__ = ("session", "info", "key", "skeleton", "authenticated")

    def __init__(
        self,
        session: IChatSession,
        info: UserInfo,
        key: str,
        skeleton: str,
        authenticated: bool,
    ) -> None:
        self.session = session
        self.info = info
        # Computed once per login: logout and the look-alike index use them.
        self.key = key
        self.skeleton = skeleton
        self.authenticated = authenticated


@implementer(IPresenceService)
class InMemoryPresenceService:
    """
    L{IPresenceService} for a single process: a dictionary of online users.

    @param isProtectedName: tells whether a name belongs to a registered
        account (and so may only be claimed with C{authenticated=True}); it
        must answer from memory, without waiting on anything.
    @param metrics: the server's L{ChatdMetrics}; it counts logins and
        logouts as an observer, and is told of refused logins, messages
        routed (per protocol pair), files handed on and deliveries refused.
    """

    log = Logger()

    def __init__(
        self,
        isProtectedName: Callable[[str], bool] = lambda name: False,
        metrics: ChatdMetrics | None = None,
    ) -> None:
        self.isProtectedName = isProtectedName
        self.metrics = metrics if metrics is not None else ChatdMetrics()
        # sender protocol -> receiver protocol -> messages (plain ints: this
        # is the per-message path).
        self._routed = self.metrics.routed
        # nameKey(name) -> _Entry, in login order (dicts keep insertion order).
        self._byName: dict[str, _Entry] = {}
        # nameSkeleton(name) -> the entries with it: one, or the two accounts
        # of a look-alike pair registered before skeletons were checked.
        self._bySkeleton: dict[str, list[_Entry]] = {}
        self._bySession: dict[IChatSession, _Entry] = {}
        self._observers: list[Callable[[str, UserInfo], None]] = []
        self.metrics.watch(self)

    def login(
        self,
        session: IChatSession,
        name: str,
        ip: str,
        status: str = DEFAULT_STATUS,
        authenticated: bool = False,
    ) -> defer.Deferred:
        try:
            info = self._claim(session, name, ip, status, authenticated)
        except PresenceError as e:
            self.metrics.loginRefused(session.protocolName)
            # A protobuf client may try again and again on one connection:
            # its log lines are limited as for any other error of its own.
            mayLog = getattr(getattr(session, "allowance", None), "mayLogError", None)
            if mayLog is None or mayLog():
                self.log.info(
                    "{protocol} login of {user!r} from {peer} refused: {reason}",
                    user=name,
                    protocol=session.protocolName,
                    peer=ip,
                    reason=str(e),
                    event="login-refused",
                )
            return defer.fail(e)
        self.log.info(
            "{user} logged in ({protocol}, {peer})",
            user=info.name,
            protocol=info.protocol,
            peer=info.ip,
            event="login",
        )
        self._notify(LOGIN, info)
        return defer.succeed(info)

    def _claim(
        self,
        session: IChatSession,
        name: str,
        ip: str,
        status: str,
        authenticated: bool,
    ) -> UserInfo:
        key, skeleton = self._checkClaim(session, name, status, authenticated)
        info = UserInfo(name, session.protocolName, ip[:MAX_IP_LENGTH], status)
        entry = _Entry(session, info, key, skeleton, authenticated)
        self._byName[key] = entry
        self._bySkeleton.setdefault(skeleton, []).append(entry)
        self._bySession[session] = entry
        return info

    def _checkClaim(
        self, session: IChatSession, name: str, status: str, authenticated: bool
    ) -> tuple[str, str]:
        """
        The checks of a login against this directory (a cluster's node
        makes them on its copy before it asks Redis): C{(key, skeleton)} of
        C{name}, or a L{PresenceError}.
        """
        if session in self._bySession:
            raise AlreadyLoggedIn(
                f"already logged in as {self._bySession[session].info.name}"
            )
        checkName(name)
        checkStatus(status)
        key = nameKey(name)
        if key in self._byName:
            raise NameInUse(f"the name {name} is already online")
        skeleton = nameSkeleton(name)
        alike = self._bySkeleton.get(skeleton, ())
        # Only two registered accounts that looked alike before skeletons
        # were checked can both prove a password for look-alike names: both
        # keep working. Anyone else is refused as for the same name.
        if alike and not (authenticated and all(e.authenticated for e in alike)):
            raise NameInUse(
                f"the name {name} looks like {alike[0].info.name}, who is online"
            )
        if not authenticated and self.isProtectedName(name):
            raise NameProtected(
                f"the name {name} belongs to a registered account"
            )
        return key, skeleton

    def logout(self, session: IChatSession) -> None:
        entry = self._bySession.pop(session, None)
        if entry is None:
            return
        del self._byName[entry.key]
        alike = self._bySkeleton[entry.skeleton]
        alike.remove(entry)
        if not alike:
            del self._bySkeleton[entry.skeleton]
        self.log.info(
            "{user} logged out ({protocol})",
            user=entry.info.name,
            protocol=entry.info.protocol,
            event="logout",
        )
        self._notify(LOGOUT, entry.info)

    def setStatus(self, session: IChatSession, status: str) -> UserInfo:
        checkStatus(status)
        entry = self._bySession.get(session)
        if entry is None:
            raise NoSuchUser("not logged in")
        info = entry.info
        entry.info = UserInfo(info.name, info.protocol, info.ip, status)
        self._notify(STATUS, entry.info)
        return entry.info

    def lookup(self, name: str) -> UserInfo | None:
        entry = self._byName.get(nameKey(name))
        return None if entry is None else entry.info

    def lookalike(self, name: str) -> UserInfo | None:
        entry = self._byName.get(nameKey(name))
        if entry is None:
            alike = self._bySkeleton.get(nameSkeleton(name))
            entry = alike[0] if alike else None
        return None if entry is None else entry.info

    def users(self) -> list[UserInfo]:
        return [entry.info for entry in self._byName.values()]

    def sessionFor(self, name: str) -> IChatSession | None:
        entry = self._byName.get(nameKey(name))
        return None if entry is None else entry.session

    def infoFor(self, session: IChatSession) -> UserInfo | None:
        entry = self._bySession.get(session)
        return None if entry is None else entry.info

    def sendMessage(self, sender: IChatSession, receiver: str, text: str) -> int:
        source = self._bySession.get(sender)
        if source is None:
            raise NoSuchUser("not logged in")
        routed = self._routed[source.info.protocol]
        # nameKey, with its fast path inlined; also what isBroadcast compares.
        key = receiver.lower() if receiver.isascii() else nameKey(receiver)
        if key == BROADCAST:
            # A list copy: a delivery may disconnect someone and change the
            # directory while we walk it.
            return self._broadcastTo(list(self._byName.values()), source, text)
        target = self._byName.get(key)
        if target is None:
            raise NoSuchUser(f"{receiver} is not online")
        # _deliver, inlined: this is every direct message's path.
        try:
            target.session.deliverMessage(
                _newMessage((source.info.name, target.info.name, text))
            )
        except RecipientBusy:
            self.metrics.refused(source.info.protocol, BUSY)
            raise
        except Exception:
            self.log.failure("delivery to {name} failed", name=target.info.name)
        routed[target.info.protocol] += 1
        return 1

    def _broadcastTo(self, entries: list[_Entry], source: _Entry, text: str) -> int:
        """
        Deliver C{text} from C{source}'s user to each of C{entries} but
        C{source}, skipping the busy; how many took it.
        """
        message = ChatMessage(source.info.name, BROADCAST, text)
        routed = self._routed[source.info.protocol]
        count = 0
        for entry in entries:
            if entry is not source:
                try:
                    self._deliver(entry, message)
                except RecipientBusy:
                    self.metrics.refused(source.info.protocol, BUSY)
                    continue
                routed[entry.info.protocol] += 1
                count += 1
        return count

    def sendFile(
        self, sender: IChatSession, receiver: str, filename: str, content: bytes
    ):
        source = self._bySession.get(sender)
        if source is None:
            raise NoSuchUser("not logged in")
        target = self._byName.get(nameKey(receiver))
        if target is None:
            raise NoSuchUser(f"{receiver} is not online")
        limit = self._fileLimit(target)
        if limit == 0:
            raise FilesNotAccepted(f"{target.info.name} cannot receive files")
        if len(content) > limit:
            raise FilesNotAccepted(
                f"{target.info.name} accepts files of at most {limit} bytes"
            )
        taken = None
        try:
            taken = IFileReceiver(target.session).deliverFile(
                source.info.name, filename, content
            )
        except RecipientBusy:
            self.metrics.refused(source.info.protocol, BUSY)
            raise
        except Exception:
            self.log.failure("file delivery to {name} failed", name=target.info.name)
        else:
            self.metrics.fileRelayed(
                source.info.protocol, target.info.protocol, len(content)
            )
        return taken

    def fileLimit(self, receiver: str) -> int | None:
        target = self._byName.get(nameKey(receiver))
        return None if target is None else self._fileLimit(target)

    @staticmethod
    def _fileLimit(entry: _Entry) -> int:
        receiver = IFileReceiver(entry.session, None)
        return 0 if receiver is None else receiver.maxFileSize

    def _deliver(self, entry: _Entry, message: ChatMessage) -> None:
        # One session's failure must not cost anyone else their message.
        try:
            entry.session.deliverMessage(message)
        except RecipientBusy:
            raise
        except Exception:
            self.log.failure(
                "delivery to {name} failed", name=entry.info.name
            )

    def addObserver(self, observer: Callable[[str, UserInfo], None]) -> None:
        self._observers.append(observer)

    def removeObserver(self, observer: Callable[[str, UserInfo], None]) -> None:
        self._observers.remove(observer)

    def _notify(self, kind: str, info: UserInfo) -> None:
        for observer in list(self._observers):
            try:
                observer(kind, info)
            except Exception:
                self.log.failure("presence observer failed on {kind}", kind=kind)
