"""
Lockout after repeated failed logins, per account name and per client
address, and the limit on registrations per client address. docs/msgr.md
("Lockout", "Registration limit") documents the policy.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Callable

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

#: Registrations from one client address, within the registration window.
DEFAULT_REGISTRATIONS = 50

#: Seconds a registration counts for.
DEFAULT_REGISTRATION_WINDOW = 60 * 60.0

# Why LoginLockout.reserve refused an attempt (logged, never sent: the client
# gets 802 either way).
LOCKED = "locked out"
BUSY = "another check of this name is running"
SPENT = "too many checks in flight"

# Above this many tracked keys, stale ones are swept on the next failure, so
# an attacker cycling through names or addresses cannot grow memory forever.
_SWEEP_ABOVE = 10_000


@dataclass(slots=True)
class _Record:
    failures: deque = field(default_factory=deque)
    lockedUntil: float = 0.0
    #: Checks that have started and not ended: they count as failures until
    #: they end, so concurrent attempts cannot outrun the limit.
    inFlight: int = 0


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

    def spent(self, key: str) -> bool:
        """Whether failures in the window plus checks in flight reach the limit."""
        record = self.records.get(key)
        if record is None:
            return False
        now = self.clock.seconds()
        recent = sum(1 for t in record.failures if t > now - self.window)
        return recent + record.inFlight >= self.limit

    def begin(self, key: str) -> None:
        self.records.setdefault(key, _Record()).inFlight += 1

    def end(self, key: str, failed: bool) -> None:
        record = self.records.get(key)
        if record is not None and record.inFlight > 0:
            record.inFlight -= 1
        if failed:
            self.fail(key)

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
        record = self.records.get(key)
        if record is not None and record.inFlight:
            record.failures.clear()
            record.lockedUntil = 0.0
        else:
            self.records.pop(key, None)

    def _sweep(self, now: float) -> None:
        for key, record in list(self.records.items()):
            stale = not record.failures or record.failures[-1] <= now - self.window
            if stale and now >= record.lockedUntil and not record.inFlight:
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

    A password check is reserved (L{reserve}) before the slow hash runs: at
    most one check of a name runs at a time, and a check in flight counts as
    a failure of its name and its address until it ends, so concurrent
    guesses cost an attacker as many checks as sequential ones.

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
        # nameKeys whose password is being checked right now.
        self._checking: set[str] = set()

    def reserve(self, name: str, address: str) -> "LoginAttempt":
        """
        Reserve a password check of C{name} from C{address}, before it runs.
        The attempt's C{refusal} says why there may be no check now (locked,
        or another check of the name is running, or the checks in flight
        already reach a limit); otherwise end it with exactly one of
        L{LoginAttempt.failed}, L{LoginAttempt.succeeded} or
        L{LoginAttempt.abandoned}.
        """
        key = nameKey(name)
        refusal = None
        if self.accounts.locked(key) or self.addresses.locked(address):
            refusal = LOCKED
        elif key in self._checking:
            refusal = BUSY
        elif self.accounts.spent(key) or self.addresses.spent(address):
            refusal = SPENT
        attempt = LoginAttempt(
            lambda outcome: self._ended(key, address, outcome), refusal
        )
        if refusal is None:
            self._checking.add(key)
            self.accounts.begin(key)
            self.addresses.begin(address)
        return attempt

    def _ended(self, key: str, address: str, outcome: str) -> None:
        self._checking.discard(key)
        failed = outcome == LoginAttempt.FAILED
        self.accounts.end(key, failed)
        self.addresses.end(address, failed)
        if outcome == LoginAttempt.SUCCEEDED:
            self.accounts.clear(key)

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


class LoginAttempt:
    """
    A password check reserved by a lockout's C{reserve} (L{LoginLockout},
    or a cluster's C{RedisLoginLockout}). Unless C{refusal} is set, it
    counts as a failure until it ends; ending it twice does nothing.

    @param ended: called once, with the outcome (L{FAILED}, L{SUCCEEDED} or
        L{ABANDONED}), when the check ends; never for a refused attempt.
    """

    FAILED, SUCCEEDED, ABANDONED = "failed", "succeeded", "abandoned"

    def __init__(self, ended: Callable[[str], None], refusal: str | None):
        self.refusal = refusal
        self._ended = ended
        self._open = refusal is None

    def _end(self, outcome: str) -> None:
        if self._open:
            self._open = False
            self._ended(outcome)

    def failed(self) -> None:
        """The password was wrong: the failure stays counted."""
        self._end(self.FAILED)

    def succeeded(self) -> None:
        """The password was right: the account's failures are forgotten."""
        self._end(self.SUCCEEDED)

    def abandoned(self) -> None:
        """No answer (an internal error): the attempt does not count."""
        self._end(self.ABANDONED)


class RegistrationLimit:
    """
    At most C{perAddress} registrations from one client address within
    C{window} seconds (C{0}: no limit). A registration counts when it is let
    through, before its password is hashed, so concurrent registrations
    cannot outrun the limit.

    @param clock: where the time comes from.
    """

    def __init__(
        self,
        clock: IReactorTime,
        perAddress: int = DEFAULT_REGISTRATIONS,
        window: float = DEFAULT_REGISTRATION_WINDOW,
    ) -> None:
        self.clock = clock
        self.perAddress = perAddress
        self.window = window
        self._recent: dict[str, deque] = {}

    def allow(self, address: str) -> bool:
        """Whether one more registration from C{address} may go ahead (and count it)."""
        if not self.perAddress:
            return True
        now = self.clock.seconds()
        if len(self._recent) > _SWEEP_ABOVE:
            for key, times in list(self._recent.items()):
                if not times or times[-1] <= now - self.window:
                    del self._recent[key]
        times = self._recent.setdefault(address, deque())
        while times and times[0] <= now - self.window:
            times.popleft()
        if len(times) >= self.perAddress:
            return False
        times.append(now)
        return True
