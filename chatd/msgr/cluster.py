"""
MSGR's shared state on a cluster: the login tokens, the failed-login lockout
and the registration limit kept in Redis, so that every node sees the same
ones (docs/cluster.md, "MSGR across nodes").

The classes here have the behaviour and the documented policy of
L{chatd.msgr.tokens.TokenRegistry}, L{chatd.msgr.lockout.LoginLockout} and
L{chatd.msgr.lockout.RegistrationLimit}; the embedded server keeps those.
What differs is that the operations that must reach Redis return
L{Deferred}s (the callers take a value or a Deferred alike), and that a
Redis that does not answer within L{REDIS_TIMEOUT} seconds fails them: the
caller refuses the login or registration with its general code.

Every read-modify-write is one Lua script, so two nodes cannot interleave
inside it. Time comes from the injected clock and is passed to the scripts
(C{now}): the expiry rules are ours, as on one node; the Redis TTLs only
throw away what no rule can use any more, so nothing grows without bound.
Tokens are stored under their SHA-256, never in clear.

@see: L{ClusterState}, the interface read from C{ChatdService.cluster}.
"""

from __future__ import annotations

import hashlib
import math
import secrets
from typing import Callable, Protocol as TypingProtocol

from twisted.application import service
from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from chatd.msgr.lockout import (
    BUSY,
    LoginAttempt,
    DEFAULT_ACCOUNT_FAILURES,
    DEFAULT_ADDRESS_FAILURES,
    DEFAULT_LOCK_TIME,
    DEFAULT_REGISTRATION_WINDOW,
    DEFAULT_REGISTRATIONS,
    DEFAULT_WINDOW,
    LOCKED,
    SPENT,
)
from chatd.msgr.tokens import DEFAULT_TOKEN_IDLE, TOKEN_BYTES
from chatd.presence import nameKey

#: Seconds a Redis call may take before the operation that needs it fails.
REDIS_TIMEOUT = 5.0

#: Seconds between two reads of the revocations other nodes wrote.
REVOCATION_POLL = 1.0

#: Revocations kept in the stream (about: Redis trims by whole nodes).
REVOCATIONS_KEPT = 10_000

#: Seconds a reserved password check counts at most: a node that dies in
#: the middle of one must not hold the name's check for ever.
CHECK_TIMEOUT = 60.0


class ClusterState(TypingProtocol):
    """
    What MSGR needs of C{ChatdService.cluster} (built by C{--cluster}, not
    here): a connected C{txredisapi} connection that reconnects by itself,
    the key prefix of this cluster, and this node's id.
    """

    redis: object
    prefix: str
    nodeId: str


def tokenDigest(token: str) -> str:
    """The SHA-256 of C{token}, in hex: what Redis keeps instead of it."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _ms(seconds: float) -> int:
    # PEXPIRE takes whole milliseconds, at least 1.
    return max(1, math.ceil(seconds * 1000))


class _RedisUser:
    """Calls to Redis with a deadline, from the injected clock."""

    log = Logger()

    def __init__(self, redis, prefix: str, clock: IReactorTime, timeout: float) -> None:
        self.redis = redis
        self.prefix = prefix
        self.clock = clock
        self.timeout = timeout

    def _call(self, method: str, *args) -> defer.Deferred:
        # A connection that is down queues the call until it is back: the
        # deadline turns that into a failure the caller can answer.
        d = defer.maybeDeferred(getattr(self.redis, method), *args)
        return d.addTimeout(self.timeout, self.clock)

    def _eval(self, script: str, keys: list, args: list) -> defer.Deferred:
        return self._call("eval", script, keys, args)


# Tokens.

# HSET/PEXPIRE a new token; add it to its account's set, and drop from the
# set the tokens that expired since (a user has a few: the loop is short).
_ISSUE = """
redis.call('HSET', KEYS[1], 'name', ARGV[1], 'used', ARGV[2], 'set', KEYS[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('SADD', KEYS[2], ARGV[4])
for _, d in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  if redis.call('EXISTS', ARGV[5] .. d) == 0 then redis.call('SREM', KEYS[2], d) end
end
if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[3]) then
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
end
return 1
"""

# The name a token stands for, if it has not been idle for too long; using
# it restarts its idle time. ARGV: now, idle seconds, idle ms.
_VALIDATE = """
local v = redis.call('HMGET', KEYS[1], 'name', 'used', 'set')
if not v[1] then return false end
local now = tonumber(ARGV[1])
if now - tonumber(v[2]) >= tonumber(ARGV[2]) then
  redis.call('DEL', KEYS[1])
  if v[3] then redis.call('SREM', v[3], ARGV[4]) end
  return false
end
if now > tonumber(v[2]) then redis.call('HSET', KEYS[1], 'used', ARGV[1]) end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
if v[3] and redis.call('PTTL', v[3]) < tonumber(ARGV[3]) then
  redis.call('PEXPIRE', v[3], ARGV[3])
end
return 'n:' .. v[1]
"""

# Restart the idle time of the tokens in KEYS that still exist (a hold's
# refresh, a release). ARGV: now, idle ms.
_TOUCH = """
local n = 0
for _, k in ipairs(KEYS) do
  local v = redis.call('HMGET', k, 'used', 'set')
  if v[1] then
    if tonumber(ARGV[1]) > tonumber(v[1]) then redis.call('HSET', k, 'used', ARGV[1]) end
    redis.call('PEXPIRE', k, ARGV[2])
    if v[2] and redis.call('PTTL', v[2]) < tonumber(ARGV[2]) then
      redis.call('PEXPIRE', v[2], ARGV[2])
    end
    n = n + 1
  end
end
return n
"""

_REVOKE = """
local set = redis.call('HGET', KEYS[1], 'set')
redis.call('DEL', KEYS[1])
if set then redis.call('SREM', set, ARGV[1]) end
return 1
"""

# Every token of an account but one, and a line in the revocations stream
# for the other nodes (which close their sockets bound with them). ARGV:
# token key prefix, digest kept or '', name, blocked, node id, kept entries.
# The stream's values have a letter before them: the client would read a
# name or id that looks like a number as one.
_REVOKE_ALL = """
for _, d in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if d ~= ARGV[2] then
    redis.call('DEL', ARGV[1] .. d)
    redis.call('SREM', KEYS[1], d)
  end
end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[6], '*',
  'name', 'n:' .. ARGV[3], 'keep', 'd:' .. ARGV[2], 'blocked', 'b:' .. ARGV[4],
  'node', 'n:' .. ARGV[5])
return 1
"""


class RedisTokenRegistry(_RedisUser, service.Service):
    """
    L{chatd.msgr.tokens.TokenRegistry} for a cluster: the tokens are in
    Redis (under their SHA-256), valid on every node.

    L{issue}, L{validate}, L{revoke} and L{revokeAll} return L{Deferred}s;
    L{issue}'s fires once the token is stored, so that a login answered on
    one node is bound on another however soon after. L{hold} and
    L{release} are kept on this node: while it runs, it restarts the idle
    time of the tokens it holds every third of C{idleTimeout}, so a held
    token does not expire while its node lives, and expires C{idleTimeout}
    after its node died. L{belongsTo} (every chat line) is answered here,
    without Redis: a bound socket's lines must carry the token it bound
    with.

    Revocations of an account (password change, block) are written to a
    stream that every node reads every L{REVOCATION_POLL} seconds; the
    sockets bound there with a revoked token are closed by C{onRevoked}
    (C{MsgrService.revokedElsewhere}).
    """

    #: Every node of the cluster sees these tokens.
    shared = True

    def __init__(
        self,
        redis,
        prefix: str,
        clock: IReactorTime,
        idleTimeout: float = DEFAULT_TOKEN_IDLE,
        nodeId: str = "",
        timeout: float = REDIS_TIMEOUT,
        poll: float = REVOCATION_POLL,
    ) -> None:
        _RedisUser.__init__(self, redis, prefix, clock, timeout)
        self.idleTimeout = idleTimeout
        self.nodeId = nodeId or secrets.token_hex(8)
        self.poll = poll
        #: Called with (name, blocked, spared) for each revocation written by
        #: another node; C{spared(token)} says whether a token was kept.
        self.onRevoked: Callable[[str, bool, Callable[[str | None], bool]], None] | None = None
        # Tokens held by this node's sockets: token -> [holds, name key,
        # revoked since].
        self._held: dict[str, list] = {}
        self._lastRevocation: str | None = None
        self._loops: list[task.LoopingCall] = []

    def _tokenKey(self, digest: str) -> str:
        return f"{self.prefix}msgr:token:{digest}"

    def _userKey(self, name: str) -> str:
        return f"{self.prefix}msgr:tokens:{nameKey(name)}"

    @property
    def _stream(self) -> str:
        return f"{self.prefix}msgr:revoked"

    def issue(self, name: str) -> defer.Deferred:
        """A new token for the account C{name}, once Redis keeps it."""
        token = secrets.token_urlsafe(TOKEN_BYTES)
        digest = tokenDigest(token)
        d = self._eval(
            _ISSUE,
            [self._tokenKey(digest), self._userKey(name)],
            [name, self.clock.seconds(), _ms(self.idleTimeout), digest, self._tokenKey("")],
        )
        return d.addCallback(lambda _: token)

    def validate(self, token: str | None) -> defer.Deferred:
        """
        The account name C{token} stands for, or C{None} (unknown, expired,
        revoked); a use restarts its idle time on every node.
        """
        if not token:
            return defer.succeed(None)
        digest = tokenDigest(token)
        d = self._eval(
            _VALIDATE,
            [self._tokenKey(digest)],
            [self.clock.seconds(), self.idleTimeout, _ms(self.idleTimeout), digest],
        )
        # 'n:' before the name: the client reads '123' as a number.
        return d.addCallback(lambda name: None if name is None else name[2:])

    def hold(self, token: str, name: str | None = None) -> None:
        """
        Keep C{token} alive until L{release} (a chat socket is bound here as
        C{name}, the name L{validate} gave).
        """
        held = self._held.get(token)
        if held is None:
            self._held[token] = [1, nameKey(name or ""), False]
        else:
            held[0] += 1

    def release(self, token: str) -> None:
        """Undo one L{hold}; when this node holds it no more, its idle time starts now."""
        held = self._held.get(token)
        if held is None:
            return
        held[0] -= 1
        if held[0] <= 0:
            del self._held[token]
            self._touch([token]).addErrback(self._logFailure, "releasing a token")

    def belongsTo(self, token: str, name: str) -> bool:
        """Whether C{token} is held here, by a socket bound as C{name}."""
        # Held means it was valid for that name when the socket bound, and
        # a revocation closes the socket: no need to ask Redis each line.
        held = self._held.get(token)
        return held is not None and held[1] == nameKey(name) and not held[2]

    def __contains__(self, token: str) -> bool:
        """
        Whether C{token}, held here, has not been revoked since: a socket
        that was binding when it was is closed once it is attached.
        """
        held = self._held.get(token)
        return held is not None and not held[2]

    def _revokedHere(self, name: str, spared) -> None:
        key = nameKey(name)
        for token, held in self._held.items():
            if held[1] == key and not spared(token):
                held[2] = True

    def revoke(self, token: str) -> defer.Deferred:
        """Forget C{token} now, on every node (logout)."""
        digest = tokenDigest(token)
        return self._eval(_REVOKE, [self._tokenKey(digest)], [digest])

    def revokeAll(
        self, name: str, keep: str | None = None, blocked: bool = False
    ) -> defer.Deferred:
        """
        Forget every token of the account C{name} but C{keep}, and tell the
        other nodes to close the sockets bound with them (with C{802} when
        C{blocked}, else C{901}).
        """
        self._revokedHere(name, lambda token: keep is not None and token == keep)
        return self._eval(
            _REVOKE_ALL,
            [self._userKey(name), self._stream],
            [
                self._tokenKey(""),
                tokenDigest(keep) if keep else "",
                name,
                int(blocked),
                self.nodeId,
                REVOCATIONS_KEPT,
            ],
        )

    # Service: the refresh of held tokens and the reads of revocations.

    def startService(self) -> None:
        service.Service.startService(self)
        for interval, call in (
            (self.idleTimeout / 3, self.refreshHeld),
            (self.poll, self.readRevocations),
        ):
            loop = task.LoopingCall(call)
            loop.clock = self.clock
            loop.start(interval, now=True)
            self._loops.append(loop)

    def stopService(self):
        service.Service.stopService(self)
        loops, self._loops = self._loops, []
        for loop in loops:
            if loop.running:
                loop.stop()

    def refreshHeld(self) -> defer.Deferred:
        """Restart the idle time of every token this node's sockets hold."""
        d = self._touch(list(self._held))
        # Logged and tried at the next tick: the loop must not stop.
        return d.addErrback(self._logFailure, "refreshing the held tokens")

    def _touch(self, tokens: list[str]) -> defer.Deferred:
        if not tokens:
            return defer.succeed(0)
        keys = [self._tokenKey(tokenDigest(t)) for t in tokens]
        return self._eval(_TOUCH, keys, [self.clock.seconds(), _ms(self.idleTimeout)])

    def readRevocations(self) -> defer.Deferred:
        """
        Act on the revocations other nodes wrote since the last read; the
        first read only finds where the stream ends.
        """
        if self._lastRevocation is None:
            d = self._call("execute_command", "XREVRANGE", self._stream, "+", "-", "COUNT", 1)
            d.addCallback(self._streamEnd)
        else:
            d = self._call(
                "execute_command",
                "XREAD", "COUNT", 1000, "STREAMS", self._stream, self._lastRevocation,
            )
            d.addCallback(self._gotRevocations)
        return d.addErrback(self._logFailure, "reading the revocations")

    def _streamEnd(self, entries) -> None:
        self._lastRevocation = entries[0][0] if entries else "0-0"

    def _gotRevocations(self, reply) -> None:
        if not reply:
            return
        for entryId, fields in reply[0][1]:
            self._lastRevocation = entryId
            entry = {f: str(v)[2:] for f, v in zip(fields[::2], fields[1::2])}
            if entry.get("node") == self.nodeId:
                continue  # this node closed its own sockets already
            keep = entry.get("keep", "")

            def spared(token: str | None, keep: str = keep) -> bool:
                return bool(keep) and token is not None and tokenDigest(token) == keep

            self._revokedHere(entry.get("name", ""), spared)
            if self.onRevoked is not None:
                self.onRevoked(entry.get("name", ""), entry.get("blocked") == "1", spared)

    def _logFailure(self, failure, what: str) -> None:
        self.log.failure("Redis: {what} failed", failure, what=what)


# The lockout.

# Reserve a check of a name from an address: refused when either is locked,
# when a check of the name runs (on any node), or when the failures in the
# window plus the checks in flight reach a limit. KEYS: lock, failures and
# in-flight of the name, the same of the address, the name's check.
# ARGV: now, window, name limit, address limit, attempt id, check timeout,
# GC ms of the counts, ms the name's check is held at most (a Redis TTL: the
# one rule kept by Redis's time rather than the clock's).
_RESERVE = """
local now = tonumber(ARGV[1])
for _, k in ipairs({KEYS[1], KEYS[4]}) do
  local untilT = redis.call('GET', k)
  if untilT and now < tonumber(untilT) then return 'locked' end
end
if redis.call('EXISTS', KEYS[7]) == 1 then return 'busy' end
local limits = {tonumber(ARGV[3]), tonumber(ARGV[4])}
for i, base in ipairs({1, 4}) do
  redis.call('ZREMRANGEBYSCORE', KEYS[base + 1], '-inf', now - tonumber(ARGV[2]))
  redis.call('ZREMRANGEBYSCORE', KEYS[base + 2], '-inf', now)
  if redis.call('ZCARD', KEYS[base + 1]) + redis.call('ZCARD', KEYS[base + 2]) >= limits[i] then
    return 'spent'
  end
end
local deadline = now + tonumber(ARGV[6])
for _, base in ipairs({1, 4}) do
  redis.call('ZADD', KEYS[base + 2], deadline, ARGV[5])
  redis.call('PEXPIRE', KEYS[base + 2], ARGV[7])
end
redis.call('SET', KEYS[7], ARGV[5], 'PX', ARGV[8])
return 'ok'
"""

# End a reserved check. KEYS as for _RESERVE. ARGV: now, outcome, attempt
# id, window, lock time, name limit, address limit, GC ms of failures, GC
# ms of locks.
_END = """
local now = tonumber(ARGV[1])
if redis.call('GET', KEYS[7]) == ARGV[3] then redis.call('DEL', KEYS[7]) end
redis.call('ZREM', KEYS[3], ARGV[3])
redis.call('ZREM', KEYS[6], ARGV[3])
if ARGV[2] == 'failed' then
  local limits = {tonumber(ARGV[6]), tonumber(ARGV[7])}
  for i, base in ipairs({1, 4}) do
    local untilT = redis.call('GET', KEYS[base])
    if not (untilT and now < tonumber(untilT)) then
      local f = KEYS[base + 1]
      redis.call('ZADD', f, now, ARGV[3])
      redis.call('ZREMRANGEBYSCORE', f, '-inf', now - tonumber(ARGV[4]))
      if redis.call('ZCARD', f) >= limits[i] then
        redis.call('SET', KEYS[base], tostring(now + tonumber(ARGV[5])), 'PX', ARGV[9])
        redis.call('DEL', f)
      else
        redis.call('PEXPIRE', f, ARGV[8])
      end
    end
  end
elseif ARGV[2] == 'succeeded' then
  redis.call('DEL', KEYS[1], KEYS[2])
end
return 1
"""


class RedisLoginLockout(_RedisUser):
    """
    L{chatd.msgr.lockout.LoginLockout} counted cluster-wide: the same
    limits, window and lock, with the failures, the locks, the checks in
    flight and the one check of a name at a time kept in Redis.

    L{reserve} returns a L{Deferred} firing with a L{LoginAttempt}
    (whose C{refusal} is set as on one node), or failing when Redis does
    not answer: the login is then refused, never let through uncounted.
    A check in flight counts for at most L{CHECK_TIMEOUT} seconds, so that
    a node that dies during one does not lock a name for ever.
    """

    def __init__(
        self,
        redis,
        prefix: str,
        clock: IReactorTime,
        accountFailures: int = DEFAULT_ACCOUNT_FAILURES,
        addressFailures: int = DEFAULT_ADDRESS_FAILURES,
        window: float = DEFAULT_WINDOW,
        lockTime: float = DEFAULT_LOCK_TIME,
        timeout: float = REDIS_TIMEOUT,
    ) -> None:
        _RedisUser.__init__(self, redis, prefix, clock, timeout)
        self.accountFailures = accountFailures
        self.addressFailures = addressFailures
        self.window = window
        self.lockTime = lockTime

    def _keys(self, key: str, address: str) -> list[str]:
        base = f"{self.prefix}msgr:lockout:"
        return [
            f"{base}lock:n:{key}",
            f"{base}fail:n:{key}",
            f"{base}flight:n:{key}",
            f"{base}lock:a:{address}",
            f"{base}fail:a:{address}",
            f"{base}flight:a:{address}",
            f"{base}check:{key}",
        ]

    def reserve(self, name: str, address: str) -> defer.Deferred:
        """
        Reserve a password check of C{name} from C{address}, on every node
        (L{chatd.msgr.lockout.LoginLockout.reserve}).
        """
        keys = self._keys(nameKey(name), address)
        attemptId = secrets.token_hex(12)
        d = self._eval(
            _RESERVE,
            keys,
            [
                self.clock.seconds(),
                self.window,
                self.accountFailures,
                self.addressFailures,
                attemptId,
                CHECK_TIMEOUT,
                _ms(max(self.window, CHECK_TIMEOUT)),
                _ms(CHECK_TIMEOUT),
            ],
        )
        refusals = {"locked": LOCKED, "busy": BUSY, "spent": SPENT, "ok": None}
        return d.addCallback(
            lambda answer: LoginAttempt(
                lambda outcome: self._ended(keys, attemptId, outcome), refusals[answer]
            )
        )

    def _ended(self, keys: list[str], attemptId: str, outcome: str) -> None:
        d = self._eval(
            _END,
            keys,
            [
                self.clock.seconds(),
                outcome,
                attemptId,
                self.window,
                self.lockTime,
                self.accountFailures,
                self.addressFailures,
                _ms(self.window),
                _ms(self.lockTime),
            ],
        )
        # Nobody waits for the end of a check; if it is lost, the check
        # stops counting after CHECK_TIMEOUT.
        d.addErrback(
            lambda failure: self.log.failure(
                "Redis: ending a login check failed", failure
            )
        )


# The registration limit. KEYS: the address's registrations. ARGV: now,
# window, limit, id, GC ms.
_ALLOW = """
local now = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[1], now, ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
"""


class RedisRegistrationLimit(_RedisUser):
    """
    L{chatd.msgr.lockout.RegistrationLimit} counted cluster-wide: at most
    C{perAddress} registrations from one address within C{window} seconds
    on all nodes together (C{0}: no limit, and no Redis call). L{allow}
    returns a L{Deferred}; it fails when Redis does not answer, and the
    registration is refused.
    """

    def __init__(
        self,
        redis,
        prefix: str,
        clock: IReactorTime,
        perAddress: int = DEFAULT_REGISTRATIONS,
        window: float = DEFAULT_REGISTRATION_WINDOW,
        timeout: float = REDIS_TIMEOUT,
    ) -> None:
        _RedisUser.__init__(self, redis, prefix, clock, timeout)
        self.perAddress = perAddress
        self.window = window

    def allow(self, address: str) -> defer.Deferred:
        """Whether one more registration from C{address} may go ahead (and count it)."""
        if not self.perAddress:
            return defer.succeed(True)
        d = self._eval(
            _ALLOW,
            [f"{self.prefix}msgr:registrations:{address}"],
            [
                self.clock.seconds(),
                self.window,
                self.perAddress,
                secrets.token_hex(12),
                _ms(self.window),
            ],
        )
        return d.addCallback(bool)


#: What a node without an account database (C{--db none}) records as the
#: cluster's: such a node cannot protect registered names, so a cluster is
#: either all C{--db none} or all on one database.
NO_ACCOUNTS_DATABASE = "none"


def stopChatd(line: str) -> None:
    """Stop twistd, which then exits with status 1 (a node that must not serve)."""
    from twisted.internet import reactor

    from chatd.workers import WorkerSupervisor

    WorkerSupervisor.exitWith(1)
    if reactor.running:
        reactor.stop()
    else:
        reactor.callWhenRunning(reactor.stop)


#: Record ARGV[1] as the cluster's account database unless one is, and say
#: how it compares: C{same}, C{none} (the cluster's nodes have none) or
#: C{other}. A word, not the id itself: txredisapi would turn an id of
#: digits into a number.
_RECORD_ACCOUNTS_DATABASE = """
redis.call('SET', KEYS[1], ARGV[1], 'NX')
local found = redis.call('GET', KEYS[1])
if found == ARGV[1] then return 'same' end
if found == 'none' then return 'none' end
return 'other'
"""


class AccountsDatabaseCheck(service.Service):
    """
    Makes sure every node of a cluster uses one account database: MSGR
    names are protected from other protocols' users by each node's own copy
    of the registered names, read from its database, so a node with a
    database of its own would let them be taken (docs/cluster.md, "One
    account database").

    When the node's connection to Redis comes up, the id of its database
    (L{chatd.msgr.accounts.databaseId}; L{NO_ACCOUNTS_DATABASE} for C{--db
    none}) is recorded as the cluster's (C{SET <prefix>accounts-db id NX}, in a
    script) unless one is there, and compared with it. L{whenReady} fires when they
    are the same; otherwise the node is refused: the reason is logged in
    one line and C{refuse(line)} called (L{stopChatd} in C{twistd}), and
    L{whenReady} never fires, so no listener accepts a connection.

    Each reconnection records the id again (Redis may have lost it); a
    different one found then is logged, but a node already serving keeps
    its users.

    @param cluster: the node's L{ClusterState} (with C{addConnectionObserver}
        and C{connected}, as L{chatd.cluster.redis.ClusterConnection} has).
    @param databaseId: the id of the node's account database, or C{None}
        for C{--db none}.
    @param option: the node's C{--db} value as its lines show it (a
        PostgreSQL password redacted).
    """

    log = Logger()

    def __init__(
        self,
        cluster,
        databaseId: str | None,
        option: str,
        refuse: Callable[[str], None] = stopChatd,
    ) -> None:
        self.cluster = cluster
        self.value = databaseId or NO_ACCOUNTS_DATABASE
        self.option = option
        self.refuse = refuse
        self.key = cluster.prefix + "accounts-db"
        self._ready = defer.Deferred()
        self._refused = False
        self._checking = False

    def whenReady(self) -> defer.Deferred:
        """Fires once this node's database is found to be the cluster's."""
        d = defer.Deferred()
        self._ready.addCallback(lambda r: (d.callback(None), r)[1])
        return d

    def startService(self) -> None:
        super().startService()
        self.cluster.addConnectionObserver(self._connectionChanged)
        if self.cluster.connected:
            self._check()

    def _connectionChanged(self, connected: bool) -> None:
        if connected and self.running:
            self._check()

    @defer.inlineCallbacks
    def _check(self):
        if self._checking or self._refused:
            return
        self._checking = True
        try:
            found = yield self.cluster.redis.execute_command(
                "EVAL", _RECORD_ACCOUNTS_DATABASE, 1, self.key, self.value
            )
        except Exception:
            # The connection went down again: the next one checks.
            self.log.failure("cluster account database check failed")
            return
        finally:
            self._checking = False
        if isinstance(found, bytes):
            found = found.decode("utf-8", "replace")
        if found == "same":
            if not self._ready.called:
                self._ready.callback(None)
            return
        line = self._mismatch(found)
        if self._ready.called:
            # Serving already (Redis lost the key, another node recorded
            # its own): stopping now would cut its users off; say it loudly.
            self.log.critical(
                "{line}", line=line, db=self.option, event="accounts-db-mismatch"
            )
            return
        self._refused = True
        self.log.critical(
            "{line}", line=line, db=self.option, event="accounts-db-refused"
        )
        self.refuse(line)

    def _mismatch(self, found: str) -> str:
        if self.value == NO_ACCOUNTS_DATABASE:
            return (
                "chatd: --db none: this cluster's nodes share an account database,"
                " whose names a node without it cannot protect (docs/cluster.md)"
            )
        if found == "none":
            return (
                f"chatd: --db {self.option}: this cluster's nodes run with --db none,"
                " and would not protect its names (docs/cluster.md)"
            )
        return (
            f"chatd: --db {self.option} is not this cluster's account database"
            " (the cluster's nodes share one: docs/cluster.md)"
        )
