"""
Session tokens of MSGR UQ: handed out by a successful HTTP login, required by
every later HTTP call and by the chat socket.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from twisted.internet.interfaces import IReactorTime

from chatd.presence import nameKey

#: Seconds a token lives without being used (and without a chat socket
#: bound to it).
DEFAULT_TOKEN_IDLE = 30 * 60.0

#: Random bytes in a token (it is their URL-safe base64: 43 characters).
TOKEN_BYTES = 32


@dataclass(slots=True)
class _Grant:
    name: str
    lastUsed: float
    holds: int = 0


class TokenRegistry:
    """
    Random, unguessable tokens, each naming one account, that expire after
    C{idleTimeout} seconds without use.

    A token held by a chat socket (L{hold}) does not expire until the last
    holder lets it go (L{release}); its idle time starts again from then.

    @param clock: where the time comes from.
    """

    #: Whether other processes see these tokens (a cluster's Redis): no,
    #: this process's memory.
    shared = False

    def __init__(self, clock: IReactorTime, idleTimeout: float = DEFAULT_TOKEN_IDLE):
        self.clock = clock
        self.idleTimeout = idleTimeout
        self._grants: dict[str, _Grant] = {}
        self._nextPurge = 0.0

    def issue(self, name: str) -> str:
        """A new token for the account C{name}."""
        now = self.clock.seconds()
        self._purge(now)
        token = secrets.token_urlsafe(TOKEN_BYTES)
        self._grants[token] = _Grant(name, now)
        return token

    def validate(self, token: str | None) -> str | None:
        """
        The account name C{token} stands for, or C{None} when it is unknown
        or expired. Using a token resets its idle time.
        """
        if not token:
            return None
        grant = self._lookup(token)
        if grant is None:
            return None
        now = self.clock.seconds()
        if grant.holds == 0 and now - grant.lastUsed >= self.idleTimeout:
            del self._grants[token]
            return None
        grant.lastUsed = now
        return grant.name

    def _lookup(self, token: str) -> _Grant | None:
        # A dict lookup by hash: with 256 random bits, timing reveals nothing
        # usable about other tokens.
        return self._grants.get(token)

    def hold(self, token: str, name: str | None = None) -> None:
        """
        Keep C{token} alive until L{release} (a chat socket is bound as
        C{name}: a cluster's registry keeps it; this one knows it).
        """
        grant = self._grants.get(token)
        if grant is not None:
            grant.holds += 1

    def release(self, token: str) -> None:
        """Undo one L{hold}; the idle time starts now."""
        grant = self._grants.get(token)
        if grant is not None and grant.holds > 0:
            grant.holds -= 1
            grant.lastUsed = self.clock.seconds()

    def revoke(self, token: str) -> None:
        """Forget C{token} now (logout)."""
        self._grants.pop(token, None)

    def revokeAll(self, name: str, keep: str | None = None, blocked: bool = False) -> None:
        """
        Forget every token of the account C{name} (but C{keep}). C{blocked}
        (the account was blocked) matters to a cluster's registry, which
        tells the other nodes; here the caller closes the one socket.
        """
        key = nameKey(name)
        for token in [t for t, g in self._grants.items() if nameKey(g.name) == key]:
            if token != keep:
                del self._grants[token]

    def belongsTo(self, token: str, name: str) -> bool:
        """Whether C{token} is valid and names the account C{name}."""
        owner = self.validate(token)
        return owner is not None and nameKey(owner) == nameKey(name)

    def __len__(self) -> int:
        return len(self._grants)

    def __contains__(self, token: str) -> bool:
        """Whether C{token} is still kept (without using it)."""
        return token in self._grants

    def _purge(self, now: float) -> None:
        # Expired tokens are dropped lazily; a sweep at most once per idle
        # period keeps the cost of a login constant on average.
        if now < self._nextPurge:
            return
        self._nextPurge = now + self.idleTimeout
        for token, grant in list(self._grants.items()):
            if grant.holds == 0 and now - grant.lastUsed >= self.idleTimeout:
                del self._grants[token]
