"""
MSGR UQ accounts in SQLite or PostgreSQL: who is registered, their password
hash and profile, their friends and pending friend requests. The queries are
written once; what the two engines spell differently is in
L{chatd.msgr.databases}.

Two ways in:

  - L{prepareDatabase} (synchronous: stdlib C{sqlite3} or psycopg's
    synchronous API) creates or migrates
    the schema and returns the registered names. C{makeService} calls it
    before the reactor runs, and C{chatd-admin} uses the same schema;
  - L{AccountStore} serves the running server: every query runs on a
    database thread through L{twisted.enterprise.adbapi} (one for SQLite,
    a few for PostgreSQL), and password hashing
    runs in the reactor's thread pool, so the reactor thread never waits on
    disk or on the key derivation. It keeps the set of registered names in
    memory (L{AccountStore.isProtectedName}) so that other protocols can
    refuse them without waiting.

SQLite runs in WAL mode with C{synchronous=FULL}: every transaction that
returned has reached the disk, and a killed process loses nothing it
committed. PostgreSQL is shared by a cluster's nodes: each store learns of
the accounts the others register or delete by polling (L{revocationsSince}).
"""

from __future__ import annotations

import base64
import collections
import hashlib
import hmac
import secrets
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Iterable

from twisted.internet import defer, threads
from twisted.logger import Logger

from chatd.msgr.databases import (
    Cursor,
    Database,
    asCursor,
    asDatabase,
    dialectFor,
)
from chatd.presence import (
    InvalidName,
    InvalidStatus,
    checkName,
    checkStatus,
    nameKey,
    nameSkeleton,
)

log = Logger()

# Password hashing: scrypt from the standard library. The parameters are
# stored with each hash, so they can be raised later without breaking old
# hashes.

#: How many passwords are hashed or checked at once, in the reactor's thread
#: pool: about one a core.
HASH_CONCURRENCY = 2

#: How many of those may be new hashes (registrations, password changes) at
#: once: the others are kept for logins, so a flood of registrations never
#: makes a login wait behind it.
NEW_HASH_CONCURRENCY = 1

#: scrypt cost parameters (n, r, p): 16 MiB of memory, some tens of ms.
DEFAULT_SCRYPT = (2**14, 8, 1)
_SALT_BYTES = 16
_HASH_BYTES = 32
_SCHEME = "scrypt"

#: Longest password accepted, in characters.
MAX_PASSWORD_LENGTH = 1024

#: Longest nombres / apellidos, in characters.
MAX_PROFILE_LENGTH = 100

#: Longest email, in characters.
MAX_EMAIL_LENGTH = 254

#: The profile fields a client may set (Spanish names, as on the wire).
PROFILE_FIELDS = ("nombres", "apellidos", "email", "estado")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hashPassword(password: str, params: tuple[int, int, int] = DEFAULT_SCRYPT) -> str:
    """
    A salted scrypt hash of C{password}, as stored:
    C{scrypt$<n>$<r>$<p>$<salt base64>$<hash base64>}. Slow on purpose: call
    it off the reactor thread.
    """
    n, r, p = params
    salt = secrets.token_bytes(_SALT_BYTES)
    digest = hashlib.scrypt(
        password.encode("utf-8"),
        salt=salt,
        n=n,
        r=r,
        p=p,
        maxmem=_maxmem(n, r, p),
        dklen=_HASH_BYTES,
    )
    return f"{_SCHEME}${n}${r}${p}${_b64(salt)}${_b64(digest)}"


def _maxmem(n: int, r: int, p: int) -> int:
    # scrypt needs about 128 * n * r * p bytes; leave room.
    return 256 * n * r * p + 1024 * 1024


def verifyPassword(password: str, stored: str) -> bool:
    """
    Whether C{password} matches the L{hashPassword} result C{stored},
    compared in constant time. A malformed C{stored} never matches.
    """
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != _SCHEME:
            return False
        n, r, p = int(n), int(r), int(p)
        salt_b = base64.b64decode(salt, validate=True)
        expected = base64.b64decode(digest, validate=True)
        actual = hashlib.scrypt(
            password.encode("utf-8"),
            salt=salt_b,
            n=n,
            r=r,
            p=p,
            maxmem=_maxmem(n, r, p),
            dklen=len(expected),
        )
    except (ValueError, TypeError, MemoryError):
        return False
    return hmac.compare_digest(actual, expected)


# Schema.

#: The schema version this code writes; older databases are migrated.
SCHEMA_VERSION = 5


def _schemaV1(cursor) -> None:
    cursor = asCursor(cursor)
    dialect = cursor.dialect
    references = "REFERENCES accounts(name_key) ON DELETE CASCADE" + dialect.foreignKeyOptions
    cursor.execute(
        f"""
        CREATE TABLE accounts (
            name_key  TEXT PRIMARY KEY,
            name      TEXT NOT NULL,
            password  TEXT NOT NULL,
            nombres   TEXT NOT NULL DEFAULT '',
            apellidos TEXT NOT NULL DEFAULT '',
            email     TEXT NOT NULL DEFAULT '',
            estado    TEXT NOT NULL DEFAULT '',
            bloqueado INTEGER NOT NULL DEFAULT 0
            {dialect.rowidColumn}
        )
        """
    )
    # Each friendship is stored both ways, so "friends of X" is one lookup.
    cursor.execute(
        f"""
        CREATE TABLE friendships (
            a_key TEXT NOT NULL {references},
            b_key TEXT NOT NULL {references},
            PRIMARY KEY (a_key, b_key)
        )
        """
    )
    cursor.execute(
        f"""
        CREATE TABLE friend_requests (
            from_key TEXT NOT NULL {references},
            to_key   TEXT NOT NULL {references},
            PRIMARY KEY (from_key, to_key)
            {dialect.rowidColumn}
        )
        """
    )
    cursor.execute("CREATE INDEX friend_requests_to ON friend_requests (to_key)")


def _revocationLog(cursor) -> None:
    # What chatd-admin did that a running chatd must act on at once (end the
    # account's sessions): chatd reads the rows after the last one it saw,
    # every REVOCATION_POLL seconds (docs/msgr.md, "chatd-admin").
    cursor = asCursor(cursor)
    cursor.execute(
        f"""
        CREATE TABLE revocations (
            seq  {cursor.dialect.serialKey},
            name TEXT NOT NULL,
            kind TEXT NOT NULL,
            at   TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP
        )
        """
    )


def _addSkeletons(cursor) -> None:
    """
    Names are compared by RFC 8265 and by their TR39 skeleton (see
    L{chatd.presence.nameKey}, L{chatd.presence.nameSkeleton}): give every
    account its skeleton, indexed, and its new key.

    No account is dropped, and friendships and requests follow the new keys.
    Of two accounts whose names are now one (the NFC and NFD spellings of a
    name), the one registered first takes the key and the other keeps its old
    one, which no login finds any more. An account whose name the rule now
    refuses (U+034F, U+3164, U+2800, symbols) gets the key L{nameKey} gives
    it, so chatd-admin still finds it, but its chat socket is refused as for
    any invalid name. Accounts that share a skeleton all keep working; only
    new names are refused for looking like another. Each case is logged.
    """
    cursor = asCursor(cursor)
    cursor.execute("ALTER TABLE accounts ADD COLUMN skeleton TEXT NOT NULL DEFAULT ''")
    # A key is changed in the accounts and in the rows that point at them,
    # so the foreign keys hold again only at the end of the transaction.
    cursor.dialect.deferForeignKeys(cursor)
    cursor.execute("SELECT name_key, name FROM accounts ORDER BY rowid")
    rows = cursor.fetchall()
    keys = {oldKey for oldKey, _ in rows}
    for oldKey, name in rows:
        try:
            checkName(name)
        except InvalidName as e:
            log.warn(
                "account {user!r} breaks the name rule now ({reason}); it is kept",
                user=name,
                reason=str(e),
                event="account-name-invalid",
            )
        newKey = nameKey(name)
        if newKey != oldKey:
            if newKey in keys:
                log.warn(
                    "account {user!r} keeps its key {key!r}: another account"
                    " has the same name in RFC 8265 terms; it cannot log in"
                    " under this spelling",
                    user=name,
                    key=oldKey,
                    event="account-key-kept",
                )
                newKey = oldKey
            else:
                keys.discard(oldKey)
                keys.add(newKey)
                for table, column in [
                    ("accounts", "name_key"),
                    ("friendships", "a_key"),
                    ("friendships", "b_key"),
                    ("friend_requests", "from_key"),
                    ("friend_requests", "to_key"),
                ]:
                    cursor.execute(
                        f"UPDATE {table} SET {column} = ? WHERE {column} = ?",
                        (newKey, oldKey),
                    )
        cursor.execute(
            "UPDATE accounts SET skeleton = ? WHERE name_key = ?",
            (nameSkeleton(name), newKey),
        )
    cursor.dialect.checkForeignKeys(cursor)
    cursor.execute("CREATE INDEX accounts_skeleton ON accounts (skeleton)")
    cursor.execute(
        f"SELECT {cursor.dialect.groupConcat('name')} FROM accounts GROUP BY skeleton"
        " HAVING COUNT(*) > 1"
    )
    for (names,) in cursor.fetchall():
        log.warn(
            "accounts look alike (one skeleton); each keeps working: {users}",
            users=names,
            event="accounts-look-alike",
        )


def _numericIds(cursor) -> None:
    """
    Give every account a numeric id (the MSGR UQ reference dialect names
    users by number, docs/msgr.md): existing accounts get 1, 2, ... in
    registration (rowid) order, and every later insert the next number of
    a sequence that never goes back, so that the id of a deleted account
    is never given to another one. A trigger assigns it, so chatd-admin's
    inserts get one too.
    """
    cursor = asCursor(cursor)
    cursor.execute("ALTER TABLE accounts ADD COLUMN uid INTEGER")
    cursor.execute("SELECT rowid FROM accounts ORDER BY rowid")
    for number, (rowid,) in enumerate(cursor.fetchall(), start=1):
        cursor.execute("UPDATE accounts SET uid = ? WHERE rowid = ?", (number, rowid))
    cursor.execute("CREATE UNIQUE INDEX accounts_uid ON accounts (uid)")
    cursor.execute("CREATE TABLE account_ids (last INTEGER NOT NULL)")
    cursor.execute("INSERT INTO account_ids SELECT COALESCE(MAX(uid), 0) FROM accounts")
    cursor.dialect.createUidTrigger(cursor)


def _databaseId(cursor) -> None:
    """
    Give the database an identity: a random id, made once, in a table of one
    row. A cluster's nodes must share one account database
    (docs/cluster.md, "One account database"): each node records the id of
    its own in the cluster's Redis, and one with another id refuses to
    start. The step runs under the schema lock like every other, so nodes
    migrating at once end with one id.
    """
    cursor = asCursor(cursor)
    cursor.execute("CREATE TABLE database_id (id TEXT NOT NULL)")
    cursor.execute("INSERT INTO database_id VALUES (?)", (uuid.uuid4().hex,))


#: version -> the step that brings a database from version - 1 to it.
MIGRATIONS = {
    1: _schemaV1,
    2: _revocationLog,
    3: _addSkeletons,
    4: _numericIds,
    5: _databaseId,
}

#: The kinds of row in the revocations table.
REVOKE = "revoke"
BLOCK = "block"
#: A password change made by a chatd sharing the database: processes that
#: keep their own tokens end the account's sessions; a cluster whose tokens
#: are shared in Redis has done so already, sparing the token the password
#: was changed with.
PASSWORD = "password"


def connect(target: str):
    """
    A configured connection to C{target}, in autocommit mode: for a SQLite
    path the stdlib's C{sqlite3.Connection} (as ever: scripts and the load
    generator use its API), for a PostgreSQL URL a L{Database}, which takes
    the same C{?} queries. L{asDatabase} makes either a L{Database}.
    """
    database = Database.open(target)
    return database.connection if database.dialect.name == "sqlite" else database


def schemaVersion(connection) -> int:
    """The schema version of the database (0 for an empty one)."""
    cursor = asDatabase(connection).cursor()
    if not cursor.dialect.hasTable(cursor, "schema_version"):
        return 0
    row = cursor.execute("SELECT version FROM schema_version").fetchone()
    return 0 if row is None else row[0]


def migrate(connection) -> int:
    """
    Bring the database behind C{connection} (autocommit mode) to
    L{SCHEMA_VERSION}, one transaction per step. Safe when several processes
    start at once: each step is taken under the database's write lock
    (SQLite) or a transaction-level advisory lock (PostgreSQL), and a step
    another process did meanwhile is skipped.

    @return: the version it found.
    @raise RuntimeError: when the database is newer than this code.
    """
    connection = asDatabase(connection)
    connection.dialect.prepare(connection)
    found = schemaVersion(connection)
    if found > SCHEMA_VERSION:
        raise RuntimeError(
            f"the database has schema version {found}; this chatd knows"
            f" {SCHEMA_VERSION} at most"
        )
    for version in range(found + 1, SCHEMA_VERSION + 1):
        cursor = connection.cursor()
        connection.dialect.beginSchemaChange(cursor)
        try:
            # Another process may have migrated while we waited for the lock.
            if schemaVersion(connection) >= version:
                cursor.execute("ROLLBACK")
                continue
            if version == 1:
                cursor.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
                cursor.execute("INSERT INTO schema_version VALUES (0)")
            MIGRATIONS[version](cursor)
            cursor.execute("UPDATE schema_version SET version = ?", (version,))
            cursor.execute("COMMIT")
        except BaseException:
            cursor.execute("ROLLBACK")
            raise
        log.info("accounts database migrated to schema {version}", version=version)
    return found


def databaseId(connection) -> str:
    """The id of a migrated database (schema step 5), the same for ever."""
    (ident,) = asDatabase(connection).execute("SELECT id FROM database_id").fetchone()
    return ident


def prepareDatabase(path: str) -> list[str]:
    """
    Create (on first run) or migrate the database at C{path} (a SQLite file
    or a PostgreSQL URL), synchronously, and return every registered account
    name.
    """
    return prepareDatabaseWithId(path)[0]


def prepareDatabaseWithId(path: str) -> tuple[list[str], str]:
    """
    L{prepareDatabase}, and the database's id (L{databaseId}) as well.
    """
    connection = connect(path)
    try:
        migrate(connection)
        names = [row[0] for row in connection.execute("SELECT name FROM accounts")]
        return names, databaseId(connection)
    finally:
        connection.close()


# Accounts.


class AccountError(Exception):
    """Base of the account store's refusals; C{str()} says why."""


class NameTaken(AccountError):
    """An account with this name (in any case) exists."""


class InvalidAccountData(AccountError):
    """A field breaks its rule."""


@dataclass(frozen=True, slots=True)
class Account:
    """One account's public record (no password)."""

    name: str
    nombres: str = ""
    apellidos: str = ""
    email: str = ""
    estado: str = ""
    bloqueado: bool = False


def checkPassword(password: str) -> None:
    """@raise InvalidAccountData: for an empty or too long password."""
    if not password:
        raise InvalidAccountData("the password is empty")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise InvalidAccountData(
            f"the password is longer than {MAX_PASSWORD_LENGTH} characters"
        )


def checkNewAccount(name: str, password: str, profile: dict[str, str]) -> None:
    """
    The checks of a registration that need no database and no hash.

    @raise InvalidName: for a name the presence service would refuse.
    @raise InvalidAccountData: for a bad password or profile field.
    """
    checkName(name)
    checkPassword(password)
    checkProfile(profile)


def checkProfile(profile: dict[str, str]) -> None:
    """
    Check the profile fields in C{profile} (any of L{PROFILE_FIELDS}).

    @raise InvalidAccountData: with the reason.
    """
    for field in ("nombres", "apellidos"):
        value = profile.get(field, "")
        if len(value) > MAX_PROFILE_LENGTH or not value.isprintable():
            raise InvalidAccountData(f"{field} is too long or has control characters")
    email = profile.get("email", "")
    if email and (
        len(email) > MAX_EMAIL_LENGTH
        or "@" not in email
        or not email.isprintable()
        or any(ch.isspace() for ch in email)
    ):
        raise InvalidAccountData("email is not an address")
    estado = profile.get("estado", "")
    if estado:
        try:
            checkStatus(estado)
        except InvalidStatus as e:
            raise InvalidAccountData(str(e)) from None


_ACCOUNT_COLUMNS = "name, nombres, apellidos, email, estado, bloqueado"


def _account(row) -> Account:
    name, nombres, apellidos, email, estado, bloqueado = row
    return Account(name, nombres, apellidos, email, estado, bool(bloqueado))


def _getAccount(cursor, key: str) -> Account | None:
    cursor.execute(f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE name_key = ?", (key,))
    row = cursor.fetchone()
    return None if row is None else _account(row)


def _friends(cursor, key: str) -> list[str]:
    cursor.execute(
        "SELECT a.name FROM friendships f JOIN accounts a ON a.name_key = f.b_key"
        " WHERE f.a_key = ? ORDER BY a.name_key",
        (key,),
    )
    return [row[0] for row in cursor.fetchall()]


def _pending(cursor, key: str) -> list[str]:
    cursor.execute(
        "SELECT a.name FROM friend_requests r JOIN accounts a ON a.name_key = r.from_key"
        " WHERE r.to_key = ? ORDER BY a.name_key",
        (key,),
    )
    return [row[0] for row in cursor.fetchall()]


def _areFriends(cursor, aKey: str, bKey: str) -> bool:
    cursor.execute(
        "SELECT 1 FROM friendships WHERE a_key = ? AND b_key = ?", (aKey, bKey)
    )
    return cursor.fetchone() is not None


def _befriend(cursor, aKey: str, bKey: str) -> None:
    cursor.execute(
        "DELETE FROM friend_requests WHERE (from_key = ? AND to_key = ?)"
        " OR (from_key = ? AND to_key = ?)",
        (aKey, bKey, bKey, aKey),
    )
    # ON CONFLICT DO NOTHING: the spelling SQLite (3.24+) and PostgreSQL share.
    for pair in ((aKey, bKey), (bKey, aKey)):
        cursor.execute(
            "INSERT INTO friendships (a_key, b_key) VALUES (?, ?) ON CONFLICT DO NOTHING",
            pair,
        )


def _logRevocation(cursor, name: str, kind: str) -> int:
    """Append a revocations row for C{name}; returns its C{seq}."""
    cursor.execute(
        "INSERT INTO revocations (name, kind) VALUES (?, ?) RETURNING seq", (name, kind)
    )
    return cursor.fetchone()[0]


def _accountChanges(cursor, lastUid: int | None, revocations: list) -> tuple[list, list]:
    """
    The accounts made since the id C{lastUid} (every account when C{None}):
    [(id, name)], by id; and the names of C{revocations} rows whose account
    is gone (chatd-admin delete logs a revocation).

    Ids are given in commit order (the counter's row lock is held until the
    inserting transaction ends), so reading above the last id seen misses
    none.
    """
    cursor.execute(
        "SELECT uid, name FROM accounts WHERE uid > ? ORDER BY uid",
        (-1 if lastUid is None else lastUid,),
    )
    added = cursor.fetchall()
    gone = []
    for name in {name for _, name, _ in revocations}:
        cursor.execute("SELECT 1 FROM accounts WHERE name_key = ?", (nameKey(name),))
        if cursor.fetchone() is None:
            gone.append(name)
    return added, gone


# Outcomes of AccountStore.requestFriend.
REQUEST_SENT = "sent"
REQUEST_CROSSED = "crossed"  # the other had asked already: now friends
REQUEST_NO_SUCH_USER = "no-such-user"
REQUEST_SELF = "self"
REQUEST_ALREADY_FRIENDS = "already-friends"


@dataclass(frozen=True, slots=True)
class FriendRequestOutcome:
    """What L{AccountStore.requestFriend} did."""

    result: str
    #: The receiver's name as the account spells it (when it exists).
    receiver: str | None = None
    #: After the change, the pending requests of whoever's list changed: the
    #: receiver's when sent, the sender's when crossed.
    pending: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AnswerOutcome:
    """What L{AccountStore.answerRequest} did."""

    #: The requester's name as the account spells it.
    requester: str
    #: The answerer's pending requests after the answer.
    pending: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SessionData:
    """What a chat socket needs when it binds."""

    account: Account
    friends: list[str]
    pending: list[str]


class AccountStore:
    """
    The accounts of the running server, in the SQLite file or the PostgreSQL
    database at C{path} (already prepared by L{prepareDatabase}).

    @param names: the registered names, as L{prepareDatabase} returned them.
    @param reactor: the reactor whose thread pool hashes passwords and to
        which the database thread reports.
    @param scrypt: cost parameters for new password hashes.
    """

    def __init__(
        self,
        path: str,
        names: Iterable[str],
        reactor=None,
        scrypt: tuple[int, int, int] = DEFAULT_SCRYPT,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.path = path
        self.reactor = reactor
        self.scrypt = scrypt
        #: The database's id (L{databaseId}), when L{open} prepared it.
        self.databaseId: str | None = None
        names = list(names)
        self._names = {nameKey(name) for name in names}
        # skeleton -> how many accounts have it (old look-alike pairs share).
        self._skeletons = collections.Counter(nameSkeleton(name) for name in names)
        self.dialect = dialectFor(path)
        self._pool = self.dialect.pool(path, reactor)
        # What the in-memory names know of the database: the highest account
        # id read (None: not read yet), and the revocation rows this store
        # wrote itself, which its server has acted on already (see
        # revocationsSince).
        self._lastUid: int | None = None
        self._ownRevocations: set[int] = set()
        # A hash for unknown names, so that "no such user" takes as long as
        # "wrong password" and timing does not tell which names exist.
        self._dummyHash: str | None = None
        self._closed = False
        # At most this many scrypt computations at once (16 MiB each): a burst
        # of logins queues here instead of taking the thread pool's ten
        # threads and 160 MiB; logins go before new hashes.
        self._hashing = HashSlots(HASH_CONCURRENCY, NEW_HASH_CONCURRENCY)

    @classmethod
    def open(cls, path: str, reactor=None, scrypt=DEFAULT_SCRYPT) -> "AccountStore":
        """Prepare the database at C{path} (synchronously) and open it."""
        names, ident = prepareDatabaseWithId(path)
        store = cls(path, names, reactor, scrypt)
        store.databaseId = ident
        return store

    def close(self) -> None:
        """
        Stop the database thread (waits for it to finish its work). Closing
        twice does nothing.
        """
        # Not "if running": a pool that has not started yet (the reactor was
        # not running when it was made) must still be closed, or it starts
        # its thread later and nothing ever stops it.
        if not self._closed:
            self._closed = True
            self._pool.close()

    # Names, from memory.

    def isProtectedName(self, name: str) -> bool:
        """
        Whether an account has C{name} (in any case or width) or a name that
        looks like it (the same skeleton). Never waits.
        """
        return nameKey(name) in self._names or nameSkeleton(name) in self._skeletons

    def _run(self, interaction, *args) -> defer.Deferred:
        dialect = self.dialect
        return self._pool.runInteraction(
            lambda transaction, *a: interaction(Cursor(transaction, dialect), *a), *args
        )

    def _inThread(self, f, *args) -> defer.Deferred:
        # The one place a hash leaves the reactor thread (tests replace it to
        # control when each computation ends).
        return threads.deferToThreadPool(
            self.reactor, self.reactor.getThreadPool(), f, *args
        )

    def _hash(self, password: str, login: bool = False) -> defer.Deferred:
        return self._hashing.run(login, self._inThread, hashPassword, password, self.scrypt)

    def _verify(self, password: str, stored: str) -> defer.Deferred:
        return self._hashing.run(True, self._inThread, verifyPassword, password, stored)

    # Accounts.

    def register(self, name: str, password: str, profile: dict[str, str]) -> defer.Deferred:
        """
        Create the account C{name}. The name is protected from this call on
        (synchronously), and freed again if the account is not created.

        @return: a L{Deferred} firing with the L{Account}, or failing with
            L{NameTaken}, L{InvalidAccountData} or L{InvalidName}.
        """
        try:
            checkNewAccount(name, password, profile)
        except (InvalidName, AccountError) as e:
            return defer.fail(e)
        key, skeleton = nameKey(name), nameSkeleton(name)
        if key in self._names:
            return defer.fail(NameTaken(f"the name {name} is taken"))
        if skeleton in self._skeletons:
            return defer.fail(NameTaken(f"the name {name} looks like an account's"))
        self._names.add(key)
        self._skeletons[skeleton] += 1
        fields = {f: profile.get(f, "") for f in PROFILE_FIELDS}

        def insert(cursor, hashed: str) -> Account:
            # Another process (chatd-admin, a second chatd) may have written
            # since the names were loaded: the database has the last word.
            cursor.dialect.lockName(cursor, skeleton)
            cursor.execute("SELECT 1 FROM accounts WHERE skeleton = ?", (skeleton,))
            if cursor.fetchone() is not None:
                raise NameTaken(f"the name {name} looks like an account's")
            try:
                cursor.execute(
                    "INSERT INTO accounts (name_key, name, password, nombres,"
                    " apellidos, email, estado, skeleton)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (key, name, hashed, *(fields[f] for f in PROFILE_FIELDS), skeleton),
                )
            except cursor.dialect.IntegrityError:
                raise NameTaken(f"the name {name} is taken") from None
            return Account(name, **fields)

        def failed(failure):
            self._names.discard(key)
            self._skeletons[skeleton] -= 1
            if not self._skeletons[skeleton]:
                del self._skeletons[skeleton]
            return failure

        d = self._hash(password)
        d.addCallback(lambda hashed: self._run(insert, hashed))
        d.addErrback(failed)
        return d

    def getAccount(self, name: str) -> defer.Deferred:
        """A L{Deferred} firing with the L{Account} C{name}, or C{None}."""
        return self._run(_getAccount, nameKey(name))

    def authenticate(self, name: str, password: str) -> defer.Deferred:
        """
        Check C{password} for the account C{name}.

        @return: a L{Deferred} firing with the L{Account} (blocked or not)
            when the password is right, else C{None} (no such account and a
            wrong password look the same, and take as long).
        """
        key = nameKey(name)

        def fetch(cursor):
            cursor.execute(
                f"SELECT {_ACCOUNT_COLUMNS}, password FROM accounts WHERE name_key = ?",
                (key,),
            )
            return cursor.fetchone()

        @defer.inlineCallbacks
        def check(row):
            if row is None:
                if self._dummyHash is None:
                    self._dummyHash = yield self._hash(secrets.token_urlsafe(), login=True)
                yield self._verify(password, self._dummyHash)
                return None
            ok = yield self._verify(password, row[-1])
            return _account(row[:-1]) if ok else None

        return self._run(fetch).addCallback(check)

    def update(
        self, name: str, profile: dict[str, str], password: str | None = None
    ) -> defer.Deferred:
        """
        Change the profile fields in C{profile} and, when given, the password
        of the account C{name}.

        @return: a L{Deferred} firing with the new L{Account}, or C{None} when
            there is no such account; failing with L{InvalidAccountData}.
        """
        try:
            checkProfile(profile)
            if password is not None:
                checkPassword(password)
        except AccountError as e:
            return defer.fail(e)
        key = nameKey(name)
        changes = {f: profile[f] for f in PROFILE_FIELDS if f in profile}

        def write(cursor, hashed: str | None):
            columns = dict(changes)
            if hashed is not None:
                columns["password"] = hashed
            if columns:
                assignments = ", ".join(f"{column} = ?" for column in columns)
                cursor.execute(
                    f"UPDATE accounts SET {assignments} WHERE name_key = ?",
                    (*columns.values(), key),
                )
            account = _getAccount(cursor, key)
            if hashed is not None and account is not None:
                # The other nodes sharing the database end the account's
                # sessions there, as this one does here (MsgrService).
                self._ownRevocations.add(_logRevocation(cursor, account.name, PASSWORD))
            return account

        d = self._hash(password) if password is not None else defer.succeed(None)
        d.addCallback(lambda hashed: self._run(write, hashed))
        return d

    def revocationsSince(self, seq: int | None) -> defer.Deferred:
        """
        What C{chatd-admin} asked since the row C{seq} of the revocations
        table: a L{Deferred} firing with (the last row's C{seq}, [(name,
        kind), ...] in order). With C{seq} C{None}, only where the table ends
        now (what happened before chatd started concerns no live token).
        """

        lastUid = self._lastUid

        def read(cursor):
            if seq is None:
                cursor.execute("SELECT COALESCE(MAX(seq), 0) FROM revocations")
                last, rows = cursor.fetchone()[0], []
            else:
                cursor.execute(
                    "SELECT seq, name, kind FROM revocations WHERE seq > ? ORDER BY seq",
                    (seq,),
                )
                rows = cursor.fetchall()
                last = rows[-1][0] if rows else seq
            return last, rows, *_accountChanges(cursor, lastUid, rows)

        def learned(result):
            last, rows, added, gone = result
            self._learnNames(added, gone)
            own = self._ownRevocations
            acted = [(name, kind) for number, name, kind in rows if number not in own]
            own.difference_update(number for number, _, _ in rows)
            return last, acted

        return self._run(read).addCallback(learned)

    def _learnNames(self, added: list[tuple[int, str]], gone: list[str]) -> None:
        # Accounts other processes registered or deleted (the cluster's
        # other nodes, chatd-admin): their names are protected here too, or
        # no longer. A name this store registered itself is known already.
        for uid, name in added:
            if self._lastUid is None or uid > self._lastUid:
                self._lastUid = uid
            key = nameKey(name)
            if key not in self._names:
                self._names.add(key)
                self._skeletons[nameSkeleton(name)] += 1
                log.info(
                    "account {user} registered elsewhere: its name is protected",
                    user=name,
                    event="account-learned",
                )
        if self._lastUid is None:
            self._lastUid = 0
        for name in gone:
            key, skeleton = nameKey(name), nameSkeleton(name)
            if key in self._names:
                self._names.discard(key)
                self._skeletons[skeleton] -= 1
                if self._skeletons[skeleton] <= 0:
                    del self._skeletons[skeleton]
                log.info(
                    "account {user} deleted elsewhere: its name is free",
                    user=name,
                    event="account-forgotten",
                )

    # Friends.

    def sessionData(self, name: str) -> defer.Deferred:
        """
        A L{Deferred} firing with the L{SessionData} of C{name} (account,
        friends, pending requests), or C{None} when there is no such account.
        """
        key = nameKey(name)

        def read(cursor):
            account = _getAccount(cursor, key)
            if account is None:
                return None
            return SessionData(account, _friends(cursor, key), _pending(cursor, key))

        return self._run(read)

    def friends(self, name: str) -> defer.Deferred:
        """A L{Deferred} firing with the friends of C{name}, sorted."""
        return self._run(_friends, nameKey(name))

    def pendingRequests(self, name: str) -> defer.Deferred:
        """A L{Deferred} firing with who asked C{name} for friendship, sorted."""
        return self._run(_pending, nameKey(name))

    def requestFriend(self, sender: str, receiver: str) -> defer.Deferred:
        """
        Record a friend request from C{sender} to C{receiver}. A request the
        other way already pending makes them friends at once
        (L{REQUEST_CROSSED}); a repeated request is recorded once.

        @return: a L{Deferred} firing with a L{FriendRequestOutcome}.
        """
        senderKey, receiverKey = nameKey(sender), nameKey(receiver)

        def write(cursor):
            target = _getAccount(cursor, receiverKey)
            if target is None:
                return FriendRequestOutcome(REQUEST_NO_SUCH_USER)
            if receiverKey == senderKey:
                return FriendRequestOutcome(REQUEST_SELF, target.name)
            if _areFriends(cursor, senderKey, receiverKey):
                return FriendRequestOutcome(REQUEST_ALREADY_FRIENDS, target.name)
            cursor.execute(
                "SELECT 1 FROM friend_requests WHERE from_key = ? AND to_key = ?",
                (receiverKey, senderKey),
            )
            if cursor.fetchone() is not None:
                _befriend(cursor, senderKey, receiverKey)
                return FriendRequestOutcome(
                    REQUEST_CROSSED, target.name, tuple(_pending(cursor, senderKey))
                )
            cursor.execute(
                "INSERT INTO friend_requests (from_key, to_key) VALUES (?, ?)"
                " ON CONFLICT DO NOTHING",
                (senderKey, receiverKey),
            )
            return FriendRequestOutcome(
                REQUEST_SENT, target.name, tuple(_pending(cursor, receiverKey))
            )

        return self._run(write)

    def answerRequest(self, name: str, requester: str, accept: bool) -> defer.Deferred:
        """
        Accept (they become friends) or reject the pending request from
        C{requester} to C{name}.

        @return: a L{Deferred} firing with an L{AnswerOutcome}, or C{None}
            when no such request is pending.
        """
        key, requesterKey = nameKey(name), nameKey(requester)

        def write(cursor):
            cursor.execute(
                "SELECT a.name FROM friend_requests r JOIN accounts a"
                " ON a.name_key = r.from_key WHERE r.from_key = ? AND r.to_key = ?",
                (requesterKey, key),
            )
            row = cursor.fetchone()
            if row is None:
                return None
            if accept:
                _befriend(cursor, key, requesterKey)
            else:
                cursor.execute(
                    "DELETE FROM friend_requests WHERE from_key = ? AND to_key = ?",
                    (requesterKey, key),
                )
            return AnswerOutcome(row[0], tuple(_pending(cursor, key)))

        return self._run(write)


    # Numeric ids (the uq-java dialect, docs/msgr.md).

    def idsOf(self, names: Iterable[str]) -> defer.Deferred:
        """A L{Deferred} firing with {nameKey: numeric id} of those names."""
        keys = [nameKey(name) for name in names]

        def read(cursor):
            found = {}
            for key in keys:
                cursor.execute("SELECT uid FROM accounts WHERE name_key = ?", (key,))
                row = cursor.fetchone()
                if row is not None:
                    found[key] = row[0]
            return found

        return self._run(read)

    def nameOfId(self, uid: int) -> defer.Deferred:
        """A L{Deferred} firing with the name of the account C{uid}, or C{None}."""

        def read(cursor):
            cursor.execute("SELECT name FROM accounts WHERE uid = ?", (uid,))
            row = cursor.fetchone()
            return None if row is None else row[0]

        return self._run(read)

    def directory(self) -> defer.Deferred:
        """
        A L{Deferred} firing with (id, name, nombres, apellidos) of every
        account, by id.
        """

        def read(cursor):
            cursor.execute(
                "SELECT uid, name, nombres, apellidos FROM accounts ORDER BY uid"
            )
            return cursor.fetchall()

        return self._run(read)

    def pendingRequestIds(self, name: str) -> defer.Deferred:
        """
        A L{Deferred} firing with the ids of the requests pending for
        C{name}: [(request id, requester name)], by requester.
        """
        key = nameKey(name)

        def read(cursor):
            cursor.execute(
                "SELECT r.rowid, a.name FROM friend_requests r JOIN accounts a"
                " ON a.name_key = r.from_key WHERE r.to_key = ? ORDER BY a.name_key",
                (key,),
            )
            return cursor.fetchall()

        return self._run(read)

    def requestById(self, requestId: int) -> defer.Deferred:
        """
        A L{Deferred} firing with (requester name, receiver name) of the
        pending request C{requestId}, or C{None}.
        """

        def read(cursor):
            cursor.execute(
                "SELECT f.name, t.name FROM friend_requests r"
                " JOIN accounts f ON f.name_key = r.from_key"
                " JOIN accounts t ON t.name_key = r.to_key WHERE r.rowid = ?",
                (requestId,),
            )
            return cursor.fetchone()

        return self._run(read)


class HashSlots:
    """
    At most C{slots} password computations at once, of which at most
    C{newSlots} new hashes (registrations, password changes). When a slot
    frees, a waiting login check goes first: however many registrations
    wait, a login waits only for the computations already running.
    """

    def __init__(self, slots: int = HASH_CONCURRENCY, newSlots: int = NEW_HASH_CONCURRENCY):
        self.slots = slots
        self.newSlots = newSlots
        self.running = 0
        self.runningNew = 0
        self._logins: deque[defer.Deferred] = deque()
        self._new: deque[defer.Deferred] = deque()

    def run(self, login: bool, f, *args) -> defer.Deferred:
        """Call C{f(*args)} (which may return a L{Deferred}) when a slot is free."""
        if self._free(login):
            self._take(login)
            ready = defer.succeed(None)
        else:
            ready = defer.Deferred()
            (self._logins if login else self._new).append(ready)

        def go(_):
            def release(result):
                self.running -= 1
                if not login:
                    self.runningNew -= 1
                self._wake()
                return result

            return defer.maybeDeferred(f, *args).addBoth(release)

        return ready.addCallback(go)

    def _free(self, login: bool) -> bool:
        if self.running >= self.slots:
            return False
        return login or (self.runningNew < self.newSlots and not self._logins)

    def _take(self, login: bool) -> None:
        self.running += 1
        if not login:
            self.runningNew += 1

    def _wake(self) -> None:
        while self.running < self.slots:
            if self._logins:
                self._take(True)
                self._logins.popleft().callback(None)
            elif self._new and self.runningNew < self.newSlots:
                self._take(False)
                self._new.popleft().callback(None)
            else:
                return
