"""
Lockout after repeated failed logins, per account name and per client
address. docs/msgr.md ("Lockout") documents the policy.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from twisted.internet.interfaces import IReactorTime

from chatd.presence import nameKey

#: Failed logins for one account name, within the window, that lock it.
DEFAULT_ACCOUNT_FAILURES = 5

#: Failed logins from one client address, within the window, that lock it.
DEFAULT_ADDRESS_FAILURES = 20

#: Seconds a failed login counts for.
DEFAULT_WINDOW = 15 * 60.0

#: Seconds a lock lasts.
DEFAULT_LOCK_TIME = 15 * 60.0

# Above this many tracked keys, stale ones are swept on the next failure, so
# an attacker cycling through names or addresses cannot grow memory forever.
_SWEEP_ABOVE = 10_000


@dataclass(slots=True)
class _Record:
    failures: deque = field(default_factory=deque)
    lockedUntil: float = 0.0


class _Counter:
    def __init__(self, clock: IReactorTime, limit: int, window: float, lockTime: float):
        self.clock = clock
        self.limit = limit
        self.window = window
        self.lockTime = lockTime
        self.records: dict[str, _Record] = {}

    def locked(self, key: str) -> bool:
        record = self.records.get(key)
        return record is not None and self.clock.seconds() < record.lockedUntil

    def fail(self, key: str) -> None:
        now = self.clock.seconds()
        if len(self.records) > _SWEEP_ABOVE:
            self._sweep(now)
        record = self.records.setdefault(key, _Record())
        if now < record.lockedUntil:
            return  # failures while locked do not extend the lock
        failures = record.failures
        failures.append(now)
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        if len(failures) >= self.limit:
            record.lockedUntil = now + self.lockTime
            failures.clear()

    def clear(self, key: str) -> None:
        self.records.pop(key, None)

    def _sweep(self, now: float) -> None:
        for key, record in list(self.records.items()):
            stale = not record.failures or record.failures[-1] <= now - self.window
            if stale and now >= record.lockedUntil:
                del self.records[key]


class LoginLockout:
    """
    Count failed logins and lock an account name, or a client address, that
    fails too often.

    An account name gets locked after C{accountFailures} failures within
    C{window} seconds, an address after C{addressFailures}; a lock lasts
    C{lockTime} seconds. While either is locked, every login of that name or
    from that address is answered as locked, the right password included, and
    no password is checked. A successful login clears its account's count (not
    its address's). Names are counted whether or not an account has them, so
    the answers do not tell which names exist.

    @param clock: where the time comes from.
    """

    def __init__(
        self,
        clock: IReactorTime,
        accountFailures: int = DEFAULT_ACCOUNT_FAILURES,
        addressFailures: int = DEFAULT_ADDRESS_FAILURES,
        window: float = DEFAULT_WINDOW,
        lockTime: float = DEFAULT_LOCK_TIME,
    ) -> None:
        self.accounts = _Counter(clock, accountFailures, window, lockTime)
        self.addresses = _Counter(clock, addressFailures, window, lockTime)

    def isLocked(self, name: str, address: str) -> bool:
        """Whether a login of C{name} from C{address} is refused for now."""
        return self.accounts.locked(nameKey(name)) or self.addresses.locked(address)

    def failed(self, name: str, address: str) -> None:
        """Count a failed login of C{name} from C{address}."""
        self.accounts.fail(nameKey(name))
        self.addresses.fail(address)

    def succeeded(self, name: str, address: str) -> None:
        """Forget the failures of C{name}."""
        self.accounts.clear(nameKey(name))
