"""
What every behaviour shares: the soak's state (L{Soak}), its tallies, the
exceptions that say a limit refused or a behaviour cannot run, and the
checks that raise L{SoakFailure}.
"""

from __future__ import annotations

import asyncio
import os
import random
from dataclasses import dataclass, field

from soak.wire import Closed, Response, SoakFailure, behaviourConnections, limitSeen


SUCCESSFUL = Response.SUCCESSFUL_OPERATION
FAILED = Response.FAILED_OPERATION

#: Words in a refusal that mean a limit of the server, not a wrong answer.
_LIMIT_WORDS = (
    "slow down",
    "too many",
    "not reading",
    "connection refused",
    "no login within",
    "limit",
    "demasiad",
    "límite",
    "cola de salida",
)

# Base 33: no 'l', 'm' or 'o', which look like '1', 'rn' and '0' (chatd
# refuses a name that looks like one online).
_BASE33 = "0123456789abcdefghijknpqrstuvwxyz"

#: MSGR names that never have an account: their failed logins exercise the
#: lockout without growing its tables.
GHOSTS = ("ghost0", "ghost1", "ghost2", "ghost3")


def isLimit(text: str) -> bool:
    lowered = text.lower()
    return any(word in lowered for word in _LIMIT_WORDS)


class Limited(Exception):
    """A limit of the server refused what the client did (counted, not failed)."""


class Skip(Exception):
    """The behaviour cannot run now (no MSGR account is free); pick another."""


@dataclass
class Tally:
    """What happened to one behaviour."""

    runs: int = 0
    ok: int = 0
    limited: int = 0
    anomalies: int = 0
    examples: list = field(default_factory=list)


class Soak:
    """
    The shared state of the clients: the server's ports, names, who is
    online (well-behaved sessions only), the MSGR accounts, the tallies.
    """

    def __init__(
        self,
        ports: dict[str, int],
        accounts: list[str],
        password: str,
        seed: int,
        timeout: float = 15.0,
    ):
        self.ports = ports
        self.timeout = timeout
        self.rng = random.Random(seed)
        self.password = password
        self.accountNames = list(accounts)
        self.accounts: asyncio.Queue = asyncio.Queue()
        for name in accounts:
            self.accounts.put_nowait(name)
        self.online: dict[str, str] = {}
        self.tallies: dict[str, Tally] = {}
        # The server's --file-idle-timeout; None when it has none (an older
        # chatd), and the behaviours that need it are skipped.
        self.fileIdleTimeout: float | None = None
        self._pbCounter = 0
        # MSRP names: 4 base-33 characters from a counter, never reused in a
        # run. Every other name has a character outside base 33 (protobuf
        # "pb-N", MSGR accounts "m-NN", the check clients a '#'), so no two
        # kinds of client ever want the same name, or look-alike ones.
        self._msrpCounter = self.rng.randrange(33**3)

    # Names.

    def pbName(self) -> str:
        self._pbCounter += 1
        return f"pb-{self._pbCounter}"

    def msrpName(self) -> str:
        self._msrpCounter += 1
        n, out = self._msrpCounter % 33**4, []
        for _ in range(4):
            n, digit = divmod(n, 33)
            out.append(_BASE33[digit])
        return "".join(reversed(out))

    def peer(self, me: str, fourBytes: bool = False) -> str | None:
        names = [
            n for n in self.online if n != me and (not fourBytes or len(n.encode()) == 4)
        ]
        return self.rng.choice(names) if names else None

    def text(self) -> str:
        rng = self.rng
        # Escapes and separators of every protocol, and more than ASCII.
        text = "".join(rng.choice("abcdefghij ñé€|&\\xyz") for _ in range(rng.randint(1, 60)))
        return text.strip() or "x"

    def junk(self, low: int, high: int) -> bytes:
        return os.urandom(self.rng.randint(low, high))

    def abrupt(self, chance: float = 0.5) -> bool:
        return self.rng.random() < chance

    async def pause(self, low: float, high: float) -> None:
        await asyncio.sleep(self.rng.uniform(low, high))

    # Running.

    def tally(self, name: str) -> Tally:
        return self.tallies.setdefault(name, Tally())

    async def run(self, name: str, behaviour) -> bool:
        """Run one behaviour and tally it; C{False} if it was skipped."""
        tally = self.tally(name)
        connections: list = []
        mine = behaviourConnections.set(connections)
        try:
            await asyncio.wait_for(behaviour(self), self.timeout * 4)
        except Skip:
            return False
        except Limited:
            tally.limited += 1
        except (SoakFailure, Closed, ConnectionError, OSError, asyncio.TimeoutError) as e:
            if limitSeen(connections):
                tally.limited += 1  # the server said which limit ended it
            elif isinstance(e, asyncio.TimeoutError):
                self._anomaly(tally, f"the whole behaviour took more than {self.timeout * 4:g}s")
            else:
                self._anomaly(tally, f"{type(e).__name__}: {e}")
        else:
            tally.ok += 1
        finally:
            behaviourConnections.reset(mine)
        tally.runs += 1
        return True

    @staticmethod
    def _anomaly(tally: Tally, text: str) -> None:
        tally.anomalies += 1
        if len(tally.examples) < 5:
            tally.examples.append(text)


def _expect(condition: bool, text: str) -> None:
    if not condition:
        raise SoakFailure(text)


def _expectPb(response, option: int, code: int, text: str | None = None) -> None:
    if response.code == FAILED and code == SUCCESSFUL and isLimit(response.response):
        raise Limited(response.response)
    _expect(
        response.option == option
        and response.code == code
        and (text is None or response.response == text),
        f"protobuf: expected option {option} code {code} {text!r}, got option"
        f" {response.option} code {response.code} {response.response!r}",
    )
