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

import os

from twisted.logger import Logger

from chatd.metrics import ChatdMetrics
from chatd.msgr.accounts import DEFAULT_SCRYPT, AccountStore
from chatd.msgr.http import makeSite
from chatd.msgr import lockout as msgr_lockout
from chatd.msgr.lockout import LoginLockout, RegistrationLimit
from chatd.msgr.protocol import MsgrChatFactory
from chatd.msgr.service import MsgrService
from chatd.msgr.tokens import TokenRegistry
from chatd.presence import IPresenceService

log = Logger()


#: What SQLite may create next to the database file.
_SQLITE_SUFFIXES = ("", "-wal", "-shm", "-journal")


def openAccounts(
    path: str,
    reactor,
    scrypt=DEFAULT_SCRYPT,
    owner: tuple[int, int] | None = None,
) -> AccountStore:
    """
    Create or migrate the database at C{path} and open its store.

    @param owner: the uid and gid the server will run as once twistd drops
        its privileges (C{--uid}/C{--gid}), or C{None}. The files this call
        creates are given to them: made while chatd still runs as root,
        they would otherwise belong to root, and the server could not
        write its own database after the switch.
    """
    files = [path + suffix for suffix in _SQLITE_SUFFIXES]
    existing = {name for name in files if os.path.lexists(name)}
    store = AccountStore.open(path, reactor, scrypt)
    if owner is not None and os.geteuid() == 0:
        uid, gid = owner
        for name in files:
            if name not in existing and os.path.exists(name):
                os.chown(name, uid, gid)
                log.info(
                    "{path} created as root, given to uid {uid} gid {gid}"
                    " (twistd --uid/--gid)",
                    path=name,
                    uid=uid,
                    gid=gid,
                )
    return store


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


def makeHttpFactory(
    msgr: MsgrService,
    reactor,
    metrics: ChatdMetrics | None = None,
    serveMetrics: bool = True,
):
    """
    The twisted.web site of the MSGR HTTP API, and /healthz, and /metrics
    unless C{serveMetrics} is false (a private C{--metrics} listener serves
    it instead).
    """
    return makeSite(msgr, reactor=reactor, metrics=metrics, serveMetrics=serveMetrics)


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
