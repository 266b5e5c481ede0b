"""
What the soak's clients do. Each behaviour is one short life of one client
(sometimes two connections), chosen at random by weight, again and again by
every client slot until the time is up:

  - well-behaved sessions on every protocol: log in, list, message
    themselves and others, change status, send files, log out or vanish (an
    RST, no logout);
  - hostile ones: partial frames left hanging then abrupt closes, random
    garbage, oversized length prefixes and fields, valid frames cut at random
    points, MSRP file transfers abandoned midway by either end, clients that
    never read, MSGR sockets racing to bind one account, HTTP requests cut
    short or with huge bodies.

L{BEHAVIOURS} lists them with their weights. L{Resident}s are the few
clients that stay online through the whole soak.

One module per protocol holds its behaviours: L{soak.behaviours.protobuf},
L{soak.behaviours.msrp}, L{soak.behaviours.msgr} (MSGR UQ on TCP),
L{soak.behaviours.http} (MSGR HTTP); what they share (L{Soak}, the tallies,
the checks) is in L{soak.behaviours.common}, the residents in
L{soak.behaviours.residents}. This module is the registry.

Where the docs say what the server answers, the behaviour checks it and
raises L{SoakFailure} (an "anomaly") when the answer differs, or when no
answer comes in time (a stall). Refusals that a configured limit explains
(rates, queues, connection counts) are counted, not failed.
"""

from __future__ import annotations

import random

from soak.behaviours.common import Limited, Skip, Soak, SoakFailure, Tally, isLimit
from soak.behaviours.http import (
    httpConcurrentGuessing,
    httpHostile,
    httpMassRegistration,
    httpSlowloris,
)
from soak.behaviours.msgr import (
    FLOOD_LINE,
    FLOOD_LINES,
    floodLogProblem,
    msgrBadLineFlood,
    msgrBinding,
    msgrBoundHostile,
    msgrDeaf,
    msgrSession,
    msgrTakeover,
    msgrUnbound,
)
from soak.behaviours.msrp import (
    msrpAbandonedFile,
    msrpDeaf,
    msrpGarbage,
    msrpHalfClose,
    msrpLargeFileCut,
    msrpLoginVanish,
    msrpOversized,
    msrpPartial,
    msrpPerson,
    msrpPersonWaits,
    msrpSession,
    msrpSlot,
    msrpStalledFile,
    msrpVariant,
)
from soak.behaviours.protobuf import (
    pbCourseSession,
    pbDeaf,
    pbGarbage,
    pbHalfClose,
    pbLoginThenCut,
    pbLookalike,
    pbOversized,
    pbPartial,
    pbSession,
    pbSlowReadersVanish,
)
from soak.behaviours.residents import Resident, startResidents


#: (name, behaviour, weight). Well-behaved sessions are about 40% of the runs.
BEHAVIOURS = [
    ("protobuf session", pbSession, 12),
    ("protobuf partial frame", pbPartial, 5),
    ("protobuf garbage", pbGarbage, 5),
    ("protobuf oversized", pbOversized, 3),
    ("protobuf login, cut, vanish", pbLoginThenCut, 5),
    ("protobuf deaf", pbDeaf, 2),
    ("protobuf look-alike", pbLookalike, 2),
    ("protobuf slow readers vanish", pbSlowReadersVanish, 1),
    ("protobuf half-close", pbHalfClose, 3),
    ("protobuf course revision", pbCourseSession, 3),
    ("msrp session", msrpSession, 10),
    ("msrp person (nc)", msrpPerson, 3),
    ("msrp slot of a long name", msrpSlot, 2),
    ("msrp person waits for the prompt", msrpPersonWaits, 1),
    ("msrp half-close (nc -q 1)", msrpHalfClose, 3),
    ("msrp partial", msrpPartial, 5),
    ("msrp garbage", msrpGarbage, 5),
    ("msrp oversized", msrpOversized, 2),
    ("msrp login, vanish", msrpLoginVanish, 4),
    ("msrp abandoned file", msrpAbandonedFile, 3),
    ("msrp stalled file sender", msrpStalledFile, 1),
    ("msrp large file cut short", msrpLargeFileCut, 1),
    ("msrp deaf", msrpDeaf, 2),
    ("msrp peer-to-peer variant", msrpVariant, 2),
    ("msgr session", msgrSession, 8),
    ("msgr takeover", msgrTakeover, 1),
    ("msgr unbound hostile", msgrUnbound, 4),
    ("msgr bound hostile", msgrBoundHostile, 3),
    ("msgr binding races", msgrBinding, 2),
    ("msgr deaf", msgrDeaf, 1),
    ("http hostile", httpHostile, 6),
    ("http concurrent guessing", httpConcurrentGuessing, 1),
    ("http mass registration", httpMassRegistration, 1),
    ("http slowloris", httpSlowloris, 1),
    ("msgr bad-line flood", msgrBadLineFlood, 1),
]


def pick(rng: random.Random):
    names, behaviours, weights = zip(*BEHAVIOURS)
    index = rng.choices(range(len(BEHAVIOURS)), weights)[0]
    return names[index], behaviours[index]


__all__ = [
    "BEHAVIOURS",
    "pick",
    "Soak",
    "Tally",
    "Limited",
    "Skip",
    "SoakFailure",
    "isLimit",
    "Resident",
    "startResidents",
    "floodLogProblem",
    "FLOOD_LINE",
    "FLOOD_LINES",
]
