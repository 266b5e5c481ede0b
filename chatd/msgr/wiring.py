"""
How C{chatd.tap} puts MSGR UQ together: the account store first (its names
protect accounts in the presence service), then the shared
L{MsgrService}, the HTTP site and the chat socket factory.

The database is prepared and the registered names are loaded synchronously
by L{openAccounts}, from C{makeService}, before the reactor runs and so
before any listener accepts a connection; after that every database access
goes through the store's database thread.
"""

from __future__ import annotations

from chatd.metrics import ChatdMetrics
from chatd.msgr.accounts import DEFAULT_SCRYPT, AccountStore
from chatd.msgr.http import makeSite
from chatd.msgr import lockout as msgr_lockout
from chatd.msgr.lockout import LoginLockout, RegistrationLimit
from chatd.msgr.protocol import MsgrChatFactory
from chatd.msgr.service import MsgrService
from chatd.msgr.tokens import TokenRegistry
from chatd.presence import IPresenceService


def openAccounts(path: str, reactor, scrypt=DEFAULT_SCRYPT) -> AccountStore:
    """Create or migrate the database at C{path} and open its store."""
    return AccountStore.open(path, reactor, scrypt)


def makeMsgrService(
    store: AccountStore,
    presence: IPresenceService,
    reactor,
    tokenIdle: float,
    lockoutAccountFailures: int,
    lockoutAddressFailures: int,
    lockoutWindow: float,
    lockoutTime: float,
    metrics: ChatdMetrics | None = None,
    registerPerAddress: int = msgr_lockout.DEFAULT_REGISTRATIONS,
    registerWindow: float = msgr_lockout.DEFAULT_REGISTRATION_WINDOW,
) -> MsgrService:
    """The shared MSGR state, with time from C{reactor}."""
    return MsgrService(
        store,
        presence,
        reactor,
        TokenRegistry(reactor, tokenIdle),
        LoginLockout(
            reactor,
            accountFailures=lockoutAccountFailures,
            addressFailures=lockoutAddressFailures,
            window=lockoutWindow,
            lockTime=lockoutTime,
        ),
        metrics,
        RegistrationLimit(reactor, registerPerAddress, registerWindow),
    )


def makeHttpFactory(msgr: MsgrService, reactor, metrics: ChatdMetrics | None = None):
    """The twisted.web site of the MSGR HTTP API (and /metrics, /healthz)."""
    return makeSite(msgr, reactor=reactor, metrics=metrics)


def makeChatFactory(
    msgr: MsgrService,
    maxLine: int,
    maxFile: int,
    limits=None,
    limiter=None,
    metrics: ChatdMetrics | None = None,
) -> MsgrChatFactory:
    """The factory of the MSGR chat socket."""
    return MsgrChatFactory(
        msgr,
        maxLine=maxLine,
        maxFileSize=maxFile,
        limits=limits,
        limiter=limiter,
        metrics=metrics,
    )
