"""
The MSGR UQ operations that the HTTP API and the chat socket share: login,
register, update, friends and friend requests, and the pushes to bound chat
sockets when a friend list or a request list changes.

Both front ends call the same methods, so a request sent with C{#SOLICITUD}
and one sent with C{/enviarsolicitud} are the same thing, and either one
pushes the same lines.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol as TypingProtocol

from twisted.application import service
from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from chatd.msgr import accounts
from chatd.msgr.accounts import (
    Account,
    AccountError,
    AccountStore,
    InvalidAccountData,
    NameTaken,
    SessionData,
)
from chatd.msgr.lockout import LoginLockout, RegistrationLimit
from chatd.msgr.tokens import TokenRegistry
from chatd.metrics import MSGR_HTTP, ChatdMetrics
from chatd.presence import (
    LOGIN,
    LOGOUT,
    InvalidName,
    IPresenceService,
    PresenceError,
    UserInfo,
    nameKey,
)

# The seed's codes.

#: Login: fields sent empty.
EMPTY_FIELDS = 601
#: Friend request accepted.
REQUEST_ACCEPTED = 602
#: Friend request rejected.
REQUEST_REJECTED = 603
#: Login succeeded.
LOGIN_OK = 701
#: Update (or register) done.
UPDATE_OK = 702
#: Request / information sent.
SENT_OK = 704
#: Login: no such user or wrong password.
BAD_CREDENTIALS = 801
#: Login: account blocked (or locked out).
BLOCKED = 802
#: Update: could not.
UPDATE_FAILED = 803
#: No such user.
NO_SUCH_USER = 804
#: Login: user or password not sent; identity cannot be checked.
NO_CREDENTIALS = 901
#: Update: information missing.
UPDATE_MISSING = 902
#: Request: information missing.
REQUEST_MISSING = 903

#: Seconds between two reads of the revocations that chatd-admin writes
#: (docs/msgr.md, "chatd-admin"): how long a revoked or blocked account's
#: chat socket may stay open at most.
REVOCATION_POLL = 1.0


@dataclass(frozen=True, slots=True)
class Outcome:
    """The answer to one operation: a seed code and any data."""

    code: int
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class FriendPresence:
    """A friend and, when online, their presence."""

    name: str
    info: UserInfo | None


class PushTarget(TypingProtocol):
    """What the service needs of a bound chat socket."""

    #: The token the socket bound with.
    token: str | None

    def pushFriends(self, online: list[str]) -> None: ...

    def pushRequests(self, pending: list[str]) -> None: ...

    def accountBlocked(self) -> None: ...

    def tokenRevoked(self) -> None: ...


#: What one node of a cluster tells another about a user bound there: the
#: friend requests waiting for it, and a new friend.
REQUESTS = "msgr-requests"
BEFRIENDED = "msgr-befriended"


class MsgrService(service.Service):
    """
    The shared state of MSGR UQ: the account store, the tokens, the lockout,
    the bound chat sockets and their friends.

    While running it watches the presence service, to push a bound socket its
    online friends when one of them logs in or out, and reads what
    C{chatd-admin} revoked or blocked every L{REVOCATION_POLL} seconds;
    stopping it closes the account store.
    """

    log = Logger()

    def __init__(
        self,
        store: AccountStore,
        presence: IPresenceService,
        clock: IReactorTime,
        tokens: TokenRegistry,
        lockout: LoginLockout,
        metrics: ChatdMetrics | None = None,
        registrations: RegistrationLimit | None = None,
    ) -> None:
        # Without metrics (a test's service) it counts in a ChatdMetrics of
        # its own; the server passes its one.
        self.metrics = metrics if metrics is not None else ChatdMetrics()
        self.store = store
        self.presence = presence
        self.clock = clock
        self.tokens = tokens
        self.lockout = lockout
        if registrations is None:
            registrations = RegistrationLimit(clock, 0)
        self.registrations = registrations
        # nameKey -> the bound socket, and its friends (nameKey -> name).
        self._sessions: dict[str, PushTarget] = {}
        # A cluster's presence service, once joinCluster is called.
        self._cluster = None
        self._friends: dict[str, dict[str, str]] = {}
        self._watching = False
        self._revocationPoll: task.LoopingCall | None = None
        self._revocationSeq: int | None = None
        self._revocationsFailing = False

    # Service.

    def startService(self) -> None:
        service.Service.startService(self)
        self.watch()
        self.watchRevocations()

    def stopService(self):
        service.Service.stopService(self)
        self.unwatch()
        self.unwatchRevocations()
        self.store.close()

    def watch(self) -> None:
        """Start following presence events (done by L{startService})."""
        if not self._watching:
            self.presence.addObserver(self._presenceChanged)
            self._watching = True

    def unwatch(self) -> None:
        if self._watching:
            self.presence.removeObserver(self._presenceChanged)
            self._watching = False

    def watchRevocations(self, interval: float = REVOCATION_POLL) -> None:
        """
        Read the revocations table now (where it ends) and then every
        C{interval} seconds (done by L{startService}).
        """
        if self._revocationPoll is None:
            self._revocationPoll = task.LoopingCall(self.pollRevocations)
            self._revocationPoll.clock = self.clock
            self._revocationPoll.start(interval, now=True)

    def unwatchRevocations(self) -> None:
        if self._revocationPoll is not None:
            if self._revocationPoll.running:
                self._revocationPoll.stop()
            self._revocationPoll = None

    def pollRevocations(self) -> defer.Deferred:
        """
        Act on what C{chatd-admin} wrote since the last read: C{revoke} ends
        every token and the chat socket of the account (C{901}), C{block} as
        well (C{802}). The first read only finds where the table ends.
        """

        def read(result) -> None:
            last, rows = result
            if self._revocationsFailing:
                self._revocationsFailing = False
                self.log.info(
                    "reading the revocations works again", event="revocations-recovered"
                )
            first = self._revocationSeq is None
            self._revocationSeq = last
            if first:
                return
            for name, kind in rows:
                if kind == accounts.PASSWORD:
                    if getattr(self.tokens, "shared", False):
                        # Revoked in Redis by the node that changed it,
                        # sparing the caller's token: revoking here again
                        # would end that one too.
                        continue
                    self.log.info(
                        "the password of {user} was changed by another chatd:"
                        " its tokens are revoked",
                        kind=kind,
                        user=name,
                        event="tokens-revoked",
                    )
                else:
                    self.log.info(
                        "chatd-admin: {kind} {user}: its tokens are revoked",
                        kind=kind,
                        user=name,
                        event="tokens-revoked",
                    )
                d = self.revokeTokens(name, blocked=kind == accounts.BLOCK)
                d.addErrback(
                    lambda f, name=name: self.log.failure(
                        "revoking the tokens of {user} failed", f, user=name
                    )
                )

        def failed(failure) -> None:
            # Logged and tried again at the next tick: a failure must not
            # stop the LoopingCall. Once per outage: a database down for an
            # hour is one traceback, not 3,600.
            if not self._revocationsFailing:
                self._revocationsFailing = True
                self.log.failure(
                    "reading the revocations failed", failure, event="revocations-failed"
                )

        d = self.store.revocationsSince(self._revocationSeq)
        return d.addCallbacks(read, failed)

    def revokeTokens(
        self, name: str, blocked: bool = False, keep: str | None = None
    ) -> defer.Deferred:
        """
        Revoke every token of the account C{name} but C{keep}, and close its
        chat socket unless it is bound with C{keep}: with C{802} when the
        account is C{blocked}, else C{901}. Fires once the tokens are
        revoked (at once in memory; once Redis has them on a cluster, whose
        other nodes then close their sockets: L{revokedElsewhere}).
        """
        d = defer.maybeDeferred(self.tokens.revokeAll, name, keep, blocked)
        session = self._sessions.get(nameKey(name))
        if session is None or (keep is not None and session.token == keep):
            return d
        if blocked:
            session.accountBlocked()
        else:
            session.tokenRevoked()
        return d

    def revokedElsewhere(self, name: str, blocked: bool, spared) -> None:
        """
        Another node revoked the tokens of C{name} (a cluster's
        L{chatd.msgr.cluster.RedisTokenRegistry} calls this): close the chat
        socket bound here unless C{spared(its token)}, with the codes of
        L{revokeTokens}.
        """
        session = self._sessions.get(nameKey(name))
        if session is None or spared(session.token):
            return
        self.log.info(
            "tokens of {user} revoked on another node: its socket is closed",
            user=name,
            event="tokens-revoked",
        )
        if blocked:
            session.accountBlocked()
        else:
            session.tokenRevoked()

    # Login and accounts.

    def login(self, name: str | None, password: str | None, address: str) -> defer.Deferred:
        """
        Check a password; L{Outcome} C{701} with C{data["token"]}, or
        C{601}, C{801}, C{802}, C{901}.
        """

        def refused(code: int, reason: str, user: str | None = name) -> Outcome:
            self.log.info(
                "msgr-http login of {user!r} from {peer} refused: {reason}",
                protocol=MSGR_HTTP,
                user=user,
                peer=address,
                reason=reason,
                event="login-refused",
            )
            self.metrics.loginRefused(MSGR_HTTP)
            return Outcome(code)

        if name is None or password is None:
            return defer.succeed(refused(NO_CREDENTIALS, "no user or password"))
        if not name or not password:
            return defer.succeed(refused(EMPTY_FIELDS, "empty user or password"))
        def reserved(attempt):
            # Counted before the hash runs, so that concurrent guesses
            # cannot outrun the lockout.
            if attempt.refusal is not None:
                return refused(BLOCKED, attempt.refusal)

            def checked(account: Account | None):
                if account is None:
                    attempt.failed()
                    return refused(BAD_CREDENTIALS, "no such user or wrong password")
                attempt.succeeded()
                if account.bloqueado:
                    return refused(BLOCKED, "the account is blocked", account.name)
                # On a cluster the token is stored in Redis before the
                # answer goes out, so that any node accepts it at once.
                issued = defer.maybeDeferred(self.tokens.issue, account.name)
                return issued.addCallback(loggedIn, account)

            d = self.store.authenticate(name, password)
            d.addCallbacks(checked, lambda failure: (attempt.abandoned(), failure)[1])
            return d

        def loggedIn(token: str, account: Account) -> Outcome:
            self.log.info(
                "{user} logged in over HTTP from {peer}",
                protocol=MSGR_HTTP,
                user=account.name,
                peer=address,
                event="login",
            )
            self.metrics.loginAccepted(MSGR_HTTP)
            return Outcome(LOGIN_OK, {"token": token, "user": account.name})

        # A lockout that cannot count (Redis down, on a cluster) fails the
        # login: refused with the general code, never let through uncounted.
        d = defer.maybeDeferred(self.lockout.reserve, name, address)
        d.addCallback(reserved)
        return self._guard(d, NO_CREDENTIALS, "login")

    def register(self, fields: dict[str, str], address: str = "") -> defer.Deferred:
        """
        Create an account from C{usr}, C{pass} and the optional profile
        fields; C{702}, C{803} (also: too many registrations from
        C{address}) or C{902}. C{bloqueado} is ignored.
        """
        name, password = fields.get("usr"), fields.get("pass")
        if not name or not password:
            return defer.succeed(Outcome(UPDATE_MISSING))
        if self.presence.lookalike(name) is not None:
            # Someone is chatting under this name, or one that looks like it,
            # on another protocol.
            return defer.succeed(Outcome(UPDATE_FAILED, {"reason": "the name is online"}))
        profile = {f: fields[f] for f in accounts.PROFILE_FIELDS if f in fields}
        # The cheap refusals first, so that they cost no registration of the
        # address's allowance; then the allowance, counted before the hash.
        try:
            accounts.checkNewAccount(name, password, profile)
        except (InvalidName, AccountError) as e:
            return defer.succeed(Outcome(UPDATE_FAILED, {"reason": str(e)}))
        if self.store.isProtectedName(name):
            return defer.succeed(Outcome(UPDATE_FAILED, {"reason": f"the name {name} is taken"}))

        def allowed(allow: bool):
            if not allow:
                self.log.info(
                    "registration of {user!r} from {peer} refused: too many from"
                    " this address",
                    protocol=MSGR_HTTP,
                    user=name,
                    peer=address,
                    event="register-refused",
                )
                return Outcome(
                    UPDATE_FAILED, {"reason": "too many registrations from your address"}
                )
            d = self.store.register(name, password, profile)
            d.addCallbacks(done, refused)
            return d

        def done(account: Account) -> Outcome:
            self.log.info("account {user} registered", user=account.name)
            return Outcome(UPDATE_OK)

        def refused(failure) -> Outcome:
            failure.trap(NameTaken, InvalidAccountData, InvalidName)
            return Outcome(UPDATE_FAILED, {"reason": str(failure.value)})

        # A limit that cannot count (Redis down) fails the registration.
        d = defer.maybeDeferred(self.registrations.allow, address)
        d.addCallback(allowed)
        return self._guard(d, UPDATE_MISSING, "register")

    def authenticateToken(self, token: str | None) -> defer.Deferred:
        """
        The account a token stands for: L{Account}, or L{Outcome} C{901}
        (no valid token) or C{802} (the account was blocked since; its
        tokens are revoked and its chat socket closed).
        """

        def validated(name: str | None):
            if name is None:
                return Outcome(NO_CREDENTIALS)
            return self.store.getAccount(name).addCallback(found, name)

        def found(account: Account | None, name: str):
            if account is None:
                return self._revoked(self.tokens.revokeAll(name), Outcome(NO_CREDENTIALS))
            if account.bloqueado:
                return self._revoked(
                    self.revokeTokens(name, blocked=True), Outcome(BLOCKED)
                )
            return account

        return defer.maybeDeferred(self.tokens.validate, token).addCallback(validated)

    def _revoked(self, revoked, outcome: Outcome):
        # The answer waits for the revocation (a cluster's goes to Redis).
        return defer.maybeDeferred(lambda: revoked).addCallback(lambda _: outcome)

    def update(
        self,
        account: Account,
        fields: dict[str, str],
        token: str | None = None,
        address: str = "",
    ) -> defer.Deferred:
        """
        Change the caller's own profile or password; C{702}, C{803} (bad
        value, C{usr} names someone else, or a new password without the
        right current one in C{pass_actual}), C{802} (locked out) or C{902}
        (nothing to change).

        A new password needs the current one, checked as a login from
        C{address} (and counted by the lockout); once it is written, every
        token of the account but C{token} (the caller's) is revoked.
        """
        claimed = fields.get("usr")
        if claimed and nameKey(claimed) != nameKey(account.name):
            return defer.succeed(
                Outcome(UPDATE_FAILED, {"reason": "you can only update your own account"})
            )
        profile = {f: fields[f] for f in accounts.PROFILE_FIELDS if f in fields}
        password = fields.get("pass") or None
        if not profile and password is None:
            return defer.succeed(Outcome(UPDATE_MISSING))
        if password is not None:
            return self._changePassword(account, fields, profile, password, token, address)
        return self._update(account, profile, None)

    def _changePassword(self, account, fields, profile, password, token, address):
        try:
            accounts.checkPassword(password)
            accounts.checkProfile(profile)
        except AccountError as e:
            return defer.succeed(Outcome(UPDATE_FAILED, {"reason": str(e)}))

        def refused(code: int, reason: str) -> Outcome:
            self.log.info(
                "password change of {user} from {peer} refused: {reason}",
                protocol=MSGR_HTTP,
                user=account.name,
                peer=address,
                reason=reason,
                event="password-change-refused",
            )
            return Outcome(code, {"reason": reason})

        def reserved(attempt):
            if attempt.refusal is not None:
                return refused(BLOCKED, attempt.refusal)
            current = fields.get("pass_actual")
            if not current:
                attempt.failed()
                return refused(UPDATE_FAILED, "the current password is missing")

            def checked(verified: Account | None):
                if verified is None:
                    attempt.failed()
                    return refused(UPDATE_FAILED, "the current password is wrong")
                attempt.succeeded()
                return self._update(account, profile, password, token)

            d = self.store.authenticate(account.name, current)
            d.addCallbacks(checked, lambda failure: (attempt.abandoned(), failure)[1])
            return d

        d = defer.maybeDeferred(self.lockout.reserve, account.name, address)
        d.addCallback(reserved)
        return self._guard(d, UPDATE_MISSING, "update")

    def _update(self, account, profile, password, token=None) -> defer.Deferred:
        def done(updated: Account | None) -> Outcome:
            if updated is None:
                return Outcome(UPDATE_FAILED, {"reason": "no such account"})
            session = self._sessions.get(nameKey(updated.name))
            if updated.estado and profile.get("estado") and session is not None:
                try:
                    self.presence.setStatus(session, updated.estado)
                except PresenceError:
                    pass
            self.log.info("account {user} updated", user=updated.name)
            if password is not None:
                # A thief's token must not outlive the password it was got
                # with; the answer waits until it is revoked everywhere.
                revoked = self.revokeTokens(updated.name, keep=token)
                self.log.info(
                    "account {user} changed its password; its other tokens are revoked",
                    protocol=MSGR_HTTP,
                    user=updated.name,
                    event="password-changed",
                )
                return revoked.addCallback(lambda _: Outcome(UPDATE_OK))
            return Outcome(UPDATE_OK)

        def refused(failure) -> Outcome:
            failure.trap(AccountError)
            return Outcome(UPDATE_FAILED, {"reason": str(failure.value)})

        d = self.store.update(account.name, profile, password)
        d.addCallbacks(done, refused)
        return self._guard(d, UPDATE_MISSING, "update")

    # Friends.

    def friendsWithPresence(self, account: Account) -> defer.Deferred:
        """C{704} with C{data["friends"]}: a L{FriendPresence} per friend."""

        def listed(names: list[str]) -> Outcome:
            friends = [FriendPresence(n, self.presence.lookup(n)) for n in names]
            return Outcome(SENT_OK, {"friends": friends})

        d = self.store.friends(account.name).addCallback(listed)
        return self._guard(d, REQUEST_MISSING, "friend list")

    def pendingRequests(self, account: Account) -> defer.Deferred:
        """C{704} with C{data["requests"]}: who asked the caller."""
        d = self.store.pendingRequests(account.name).addCallback(
            lambda names: Outcome(SENT_OK, {"requests": names})
        )
        return self._guard(d, REQUEST_MISSING, "request list")

    def requestFriend(self, sender: str, receiver: str | None) -> defer.Deferred:
        """
        Ask C{receiver} to be C{sender}'s friend: C{704} sent, C{602} when
        C{receiver} had asked C{sender} already (now friends), C{804} no such
        user, C{803} already friends, C{903} no receiver (or oneself).
        """
        if not receiver:
            return defer.succeed(Outcome(REQUEST_MISSING))

        def done(outcome: accounts.FriendRequestOutcome) -> Outcome:
            result = outcome.result
            if result == accounts.REQUEST_NO_SUCH_USER:
                return Outcome(NO_SUCH_USER)
            if result == accounts.REQUEST_SELF:
                return Outcome(REQUEST_MISSING, {"reason": "a request to oneself"})
            if result == accounts.REQUEST_ALREADY_FRIENDS:
                return Outcome(UPDATE_FAILED, {"reason": "already friends"})
            if result == accounts.REQUEST_CROSSED:
                self.log.info(
                    "{a} and {b} are friends (crossed requests)",
                    a=sender,
                    b=outcome.receiver,
                )
                self._befriended(sender, outcome.receiver)
                self._pushRequests(sender, outcome.pending)
                return Outcome(REQUEST_ACCEPTED)
            self.log.info(
                "friend request from {sender} to {receiver}",
                sender=sender,
                receiver=outcome.receiver,
            )
            self._pushRequests(outcome.receiver, outcome.pending)
            return Outcome(SENT_OK)

        d = self.store.requestFriend(sender, receiver).addCallback(done)
        return self._guard(d, REQUEST_MISSING, "friend request")

    def answerRequest(self, name: str, requester: str | None, accept: bool) -> defer.Deferred:
        """
        Accept (C{602}) or reject (C{603}) the request from C{requester};
        C{804} when no such request is pending, C{903} without a requester.
        """
        if not requester:
            return defer.succeed(Outcome(REQUEST_MISSING))

        def done(answered: accounts.AnswerOutcome | None) -> Outcome:
            if answered is None:
                return Outcome(NO_SUCH_USER)
            requesterName = answered.requester
            self.log.info(
                "{user} {verb} the friend request of {requester}",
                user=name,
                verb="accepted" if accept else "rejected",
                requester=requesterName,
            )
            if accept:
                self._befriended(name, requesterName)
            self._pushRequests(name, answered.pending)
            return Outcome(REQUEST_ACCEPTED if accept else REQUEST_REJECTED)

        d = self.store.answerRequest(name, requester, accept).addCallback(done)
        return self._guard(d, REQUEST_MISSING, "friend answer")

    def _guard(self, d: defer.Deferred, code: int, what: str) -> defer.Deferred:
        # A database or programming error is logged and answered with the
        # operation's general error code: never a traceback to the client.
        def failed(failure) -> Outcome:
            self.log.failure("MSGR {what} failed", failure, what=what)
            return Outcome(code, {"reason": "internal error"})

        return d.addErrback(failed)

    # Bound chat sockets.

    def attach(self, session: PushTarget, data: SessionData) -> None:
        """
        Register a chat socket bound to C{data.account} (already logged in
        to presence) and push it its friends and requests.
        """
        key = nameKey(data.account.name)
        self._sessions[key] = session
        self._friends[key] = {nameKey(f): f for f in data.friends}
        session.pushFriends(self.onlineFriends(data.account.name))
        session.pushRequests(list(data.pending))
        if session.token is not None and session.token not in self.tokens:
            # Revoked while the socket was binding (after its token was
            # checked, before it was attached here to be found).
            session.tokenRevoked()

    def detach(self, session: PushTarget, name: str) -> None:
        """Forget the socket bound to C{name}, if it is C{session}."""
        key = nameKey(name)
        if self._sessions.get(key) is session:
            del self._sessions[key]
            self._friends.pop(key, None)

    def boundSession(self, name: str) -> PushTarget | None:
        """The chat socket bound to C{name}, or C{None}."""
        return self._sessions.get(nameKey(name))

    def onlineFriends(self, name: str) -> list[str]:
        """The friends of the bound user C{name} that are online, sorted."""
        friends = self._friends.get(nameKey(name), {})
        online = []
        for key in sorted(friends):
            info = self.presence.lookup(friends[key])
            if info is not None:
                online.append(info.name)
        return online

    def _befriended(self, a: str, b: str) -> None:
        for me, other in ((a, b), (b, a)):
            key = nameKey(me)
            if key in self._friends:
                self._friends[key][nameKey(other)] = other
                self._pushFriends(key)
            else:
                self._toUsersNode(me, {"t": BEFRIENDED, "user": me, "friend": other})

    def _pushFriends(self, key: str) -> None:
        session = self._sessions.get(key)
        if session is not None:
            session.pushFriends(self.onlineFriends(key))

    def _pushRequests(self, name: str, pending) -> None:
        session = self._sessions.get(nameKey(name))
        if session is not None:
            session.pushRequests(list(pending))
        else:
            self._toUsersNode(name, {"t": REQUESTS, "user": name, "pending": list(pending)})

    # Pushes for a user bound on another node of a cluster: a friend request
    # or an answer is written to the shared database by the node that took
    # it, and the receiver's chat socket may be bound on another node, which
    # is told on its inbox channel (chatd/cluster/, docs/cluster.md).

    def joinCluster(self, presence) -> None:
        """
        Take the pushes other nodes send for this node's bound users, and
        send them theirs: C{presence} is a cluster's presence service (with
        C{inboxHandlers}, C{nodeOf} and C{sendToNode}).
        """
        self._cluster = presence
        presence.inboxHandlers[REQUESTS] = self._remoteRequests
        presence.inboxHandlers[BEFRIENDED] = self._remoteBefriended

    def _toUsersNode(self, name: str, data: dict) -> None:
        if self._cluster is None:
            return
        node = self._cluster.nodeOf(name)
        if node is not None:
            self._cluster.sendToNode(node, data)

    def _remoteRequests(self, data: dict) -> None:
        session = self._sessions.get(nameKey(str(data.get("user", ""))))
        if session is not None:
            session.pushRequests([str(n) for n in data.get("pending") or []])

    def _remoteBefriended(self, data: dict) -> None:
        key = nameKey(str(data.get("user", "")))
        friend = str(data.get("friend", ""))
        if key in self._friends and friend:
            self._friends[key][nameKey(friend)] = friend
            self._pushFriends(key)

    def _presenceChanged(self, kind: str, info: UserInfo) -> None:
        if kind not in (LOGIN, LOGOUT):
            return
        changed = nameKey(info.name)
        for key, friends in list(self._friends.items()):
            if changed in friends and key != changed:
                self._pushFriends(key)
