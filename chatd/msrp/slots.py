"""
MSRP's 4-byte name slots for users whose names are not exactly 4 bytes.

MSRP frames carry a user name in a fixed 4-byte field. A user of another
protocol called C{carla}, C{bo} or C{r53l_} is shown to MSRP binary clients
under a 4-byte I{slot}, and binary clients address them by it. docs/msrp.md
("Users of other protocols") is the normative description; in short:

  - a name shorter than 4 bytes gets itself padded with spaces (C{"bo  "});
    no name contains a space, so this slot is always free;
  - a longer name gets its first 4 bytes (C{"carl"}) when they end on a
    character boundary and are free, else the first free of: its first 3
    bytes and a digit (C{"car1"} to C{"car9"}), its first 2 and two digits
    (C{"ca01"} to C{"ca99"}), its first byte and three digits, four digits
    (C{"0001"} to C{"9999"}); "first n bytes" means the whole characters
    that fit in them, and the digits fill the rest;
  - I{free} means neither the name of an online user (of any protocol) nor
    another user's slot, nor anything that looks like one (the same
    skeleton, L{chatd.presence.nameSkeleton}: C{car1} looks like C{carl});
    so a slot never lets anyone pass for someone else (issue 11 item 9);
  - a slot is kept for the whole session and freed at logout. When a user
    logs in whose name is, or looks like, someone's slot, the real name
    wins: the other user gets their next free slot.

One L{SlotDirectory} is fed by the presence service's login and logout
events and shared by every MSRP connection of a factory.
"""

from __future__ import annotations

from typing import Iterator

from twisted.logger import Logger

from chatd.msrp.codec import NAME_LENGTH, clientListEntry
from chatd.presence import (
    LOGIN,
    LOGOUT,
    IPresenceService,
    UserInfo,
    nameKey,
    nameSkeleton,
)

#: The slot of a user who has none (every candidate taken): 4 spaces, which
#: no name and no slot is, so that no binary client can address it.
NO_SLOT = b" " * NAME_LENGTH


def _head(name: str, budget: int) -> str:
    """The longest run of whole characters at the start of C{name} within C{budget} bytes."""
    used = 0
    for index, ch in enumerate(name):
        used += len(ch.encode("utf-8"))
        if used > budget:
            return name[:index]
    return name


def slotCandidates(name: str) -> Iterator[str]:
    """
    The slots the user C{name} (not exactly 4 bytes of UTF-8) may get, best
    first; each is exactly 4 bytes of UTF-8.
    """
    size = len(name.encode("utf-8"))
    if size < NAME_LENGTH:
        yield name + " " * (NAME_LENGTH - size)
    else:
        head = _head(name, NAME_LENGTH)
        if len(head.encode("utf-8")) == NAME_LENGTH:
            yield head
    tried = set()
    for budget in range(NAME_LENGTH - 1, -1, -1):
        head = _head(name, budget)
        if head in tried:
            continue  # a wide character: the same head as with one byte more
        tried.add(head)
        digits = NAME_LENGTH - len(head.encode("utf-8"))
        for number in range(1, 10**digits):
            yield f"{head}{number:0{digits}d}"


def _padded(recipient: str) -> str:
    """
    A recipient as a slot key: a C client that copies a short name with
    C{strncpy} pads it with 0x00 bytes, which count as the spaces of the
    slot; a typed word shorter than 4 bytes is padded the same way.
    """
    text = recipient.rstrip("\x00")
    size = len(text.encode("utf-8"))
    if size < NAME_LENGTH:
        text += " " * (NAME_LENGTH - size)
    return text.casefold()


class SlotDirectory:
    """
    Which 4-byte slot each online user whose name is not 4 bytes has, and who
    holds a slot. A user whose name is exactly 4 bytes is its own slot and is
    not recorded here.

    @param presence: the presence service whose login and logout events feed
        the directory; users online already get their slots at once.
    """

    log = Logger()

    def __init__(self, presence: IPresenceService) -> None:
        self.presence = presence
        # nameKey(owner) -> slot (4 bytes of UTF-8)
        self._slots: dict[str, bytes] = {}
        # casefolded slot text -> the owner's name as written
        self._owners: dict[str, str] = {}
        # the slot's skeleton -> the owner's name as written
        self._lookalikes: dict[str, str] = {}
        for info in presence.users():
            self._loggedIn(info.name)
        presence.addObserver(self._presenceChanged)

    def _presenceChanged(self, kind: str, info: UserInfo) -> None:
        if kind == LOGIN:
            self._loggedIn(info.name)
        elif kind == LOGOUT:
            self._release(info.name)

    def _loggedIn(self, name: str) -> None:
        key = nameKey(name)
        displaced = self._owners.get(key) or self._lookalikes.get(nameSkeleton(name))
        if displaced is not None and nameKey(displaced) != key:
            # The real name wins over a slot that spells it.
            old = self._release(displaced)
            new = self._assign(displaced)
            self.log.info(
                "msrp slot {slot!r} of {user} goes to the user of that name;"
                " {user} is now {newSlot!r}",
                slot=_text(old),
                user=displaced,
                newSlot=_text(new),
                event="msrp-slot-moved",
            )
        if len(name.encode("utf-8")) != NAME_LENGTH and key not in self._slots:
            self._assign(name)

    def _free(self, candidate: str) -> bool:
        return (
            candidate.casefold() not in self._owners
            and nameSkeleton(candidate) not in self._lookalikes
            and self.presence.lookalike(candidate) is None
        )

    def _assign(self, name: str) -> bytes:
        for candidate in slotCandidates(name):
            if self._free(candidate):
                slot = candidate.encode("utf-8")
                self._slots[nameKey(name)] = slot
                self._owners[candidate.casefold()] = name
                self._lookalikes[nameSkeleton(candidate)] = name
                return slot
        self.log.warn(
            "msrp: no free 4-byte slot for {user}; MSRP binary clients cannot"
            " write to them",
            user=name,
        )
        return NO_SLOT

    def _release(self, name: str) -> bytes:
        slot = self._slots.pop(nameKey(name), None)
        if slot is None:
            return NO_SLOT
        text = slot.decode("utf-8")
        del self._owners[text.casefold()]
        del self._lookalikes[nameSkeleton(text)]
        return slot

    def slotFor(self, name: str) -> bytes:
        """
        The 4 bytes that stand for the online user C{name} in MSRP frames:
        the name itself when it is 4 bytes of UTF-8, else its slot (or
        L{NO_SLOT}).
        """
        data = name.encode("utf-8")
        if len(data) == NAME_LENGTH:
            return data
        return self._slots.get(nameKey(name), NO_SLOT)

    def ownerOf(self, recipient: str) -> str | None:
        """
        The name of the online user whose slot C{recipient} is (without
        regard to case; trailing 0x00 bytes count as spaces), or C{None}.
        """
        return self._owners.get(_padded(recipient))

    def listEntry(self, name: str) -> str:
        """
        The user C{name} as a binary client's LIST shows it
        (L{clientListEntry}): C{"carla (carl)"}, or the name alone when it
        is 4 bytes or shorter.
        """
        slot = self.slotFor(name)
        return name if slot == NO_SLOT else clientListEntry(name, slot)


def _text(slot: bytes) -> str:
    return slot.decode("utf-8", "replace")
