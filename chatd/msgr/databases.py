"""
The two databases MSGR accounts can live in, behind one small interface:
SQLite (a file; the embedded default) and PostgreSQL (C{--db
postgresql://...}; a cluster's nodes share it).

Every query of L{chatd.msgr.accounts} and L{chatd.msgr.admin} is written
once, in the SQL both engines share, with C{?} placeholders. What differs
is here, in a L{Dialect}: the placeholder style, how a connection is opened
and configured, how a migration takes the schema for itself, and the few
pieces of DDL that have no common spelling (an auto-increment key, a
trigger, deferred foreign keys, C{group_concat}).

Queries run through a L{Cursor}, which translates them, on a database
thread of L{twisted.enterprise.adbapi} (the server) or on a synchronous
L{Database} connection (start-up and C{chatd-admin}).
"""

from __future__ import annotations

import sqlite3
from typing import Any, Iterator

from twisted.enterprise import adbapi

#: The URL schemes that name a PostgreSQL database in C{--db}.
POSTGRES_SCHEMES = ("postgresql://", "postgres://")

#: Seconds a PostgreSQL connection attempt may take before it fails (an
#: unreachable server must answer logins with an error, not hang them).
CONNECT_TIMEOUT = 5

#: Advisory lock classes (the first key of pg_advisory_xact_lock(int, int)).
SCHEMA_LOCK = 0x63686174  # "chat": migrations, one node at a time
NAME_LOCK = 0x6E616D65  # "name": one registration per skeleton at a time


def isPostgres(target: str) -> bool:
    """Whether C{target} (the value of C{--db}) names a PostgreSQL database."""
    return target.startswith(POSTGRES_SCHEMES)


def redacted(target: str) -> str:
    """C{target} fit for a log line: a URL's password replaced by C{***}."""
    if not isPostgres(target):
        return target
    scheme, _, rest = target.partition("://")
    credentials, at, place = rest.rpartition("@")
    if at and ":" in credentials:
        credentials = credentials.split(":", 1)[0] + ":***"
    return f"{scheme}://{credentials}{at}{place}"


class Dialect:
    """What one database engine spells its own way."""

    #: C{"sqlite"} or C{"postgresql"}.
    name: str
    #: The driver's base exception, and its integrity error.
    Error: type[Exception]
    IntegrityError: type[Exception]
    #: An account's and a friend request's row number: implicit in SQLite.
    rowidColumn = ""
    #: The type of an ever-increasing primary key that never reuses a value.
    serialKey: str
    #: What a foreign key adds so that L{deferForeignKeys} can defer it.
    foreignKeyOptions = ""

    def sql(self, query: str) -> str:
        """C{query} (written with C{?} placeholders) as the driver takes it."""
        return query

    def connect(self, target: str):
        """A synchronous DB-API connection to C{target}, in autocommit mode."""
        raise NotImplementedError

    def pool(self, target: str, reactor) -> adbapi.ConnectionPool:
        """The server's connection pool to C{target}."""
        raise NotImplementedError

    def prepare(self, database: "Database") -> None:
        """What a database needs once before its migration (not in a transaction)."""

    def hasTable(self, cursor: "Cursor", table: str) -> bool:
        raise NotImplementedError

    def beginSchemaChange(self, cursor: "Cursor") -> None:
        """Begin a transaction that no other process migrates beside."""
        raise NotImplementedError

    def beginWrite(self, cursor: "Cursor") -> None:
        """Begin a transaction that writes (C{chatd-admin}'s commands)."""
        cursor.execute("BEGIN")

    def inTransaction(self, connection) -> bool:
        raise NotImplementedError

    def lockName(self, cursor: "Cursor", skeleton: str) -> None:
        """Make concurrent registrations of one skeleton wait for each other."""

    def deferForeignKeys(self, cursor: "Cursor") -> None:
        """Check the foreign keys at the end of this transaction only."""
        raise NotImplementedError

    def checkForeignKeys(self, cursor: "Cursor") -> None:
        """Check the deferred foreign keys now (SQLite: at the commit)."""

    def groupConcat(self, expression: str) -> str:
        """The aggregate that joins C{expression}'s values with a space."""
        raise NotImplementedError

    def createUidTrigger(self, cursor: "Cursor") -> None:
        """
        The trigger that gives an account inserted without an id the next
        number of C{account_ids}.
        """
        raise NotImplementedError


class SQLiteDialect(Dialect):
    """SQLite through the standard library's C{sqlite3}."""

    name = "sqlite"
    Error = sqlite3.Error
    IntegrityError = sqlite3.IntegrityError
    serialKey = "INTEGER PRIMARY KEY AUTOINCREMENT"

    @staticmethod
    def configure(connection: sqlite3.Connection) -> None:
        connection.execute("PRAGMA foreign_keys = ON")
        connection.execute("PRAGMA synchronous = FULL")
        # chatd-admin may hold the write lock for a moment.
        connection.execute("PRAGMA busy_timeout = 5000")

    def connect(self, target: str) -> sqlite3.Connection:
        connection = sqlite3.connect(target, isolation_level=None)
        self.configure(connection)
        return connection

    def pool(self, target: str, reactor) -> adbapi.ConnectionPool:
        return adbapi.ConnectionPool(
            "sqlite3",
            target,
            check_same_thread=False,
            cp_min=1,
            cp_max=1,  # one writer: SQLite serialises writes anyway
            cp_openfun=self.configure,
            cp_reactor=reactor,
            cp_noisy=False,
        )

    def prepare(self, database: "Database") -> None:
        database.execute("PRAGMA journal_mode = WAL")

    def hasTable(self, cursor: "Cursor", table: str) -> bool:
        cursor.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
        )
        return cursor.fetchone() is not None

    def beginSchemaChange(self, cursor: "Cursor") -> None:
        cursor.execute("BEGIN IMMEDIATE")

    def beginWrite(self, cursor: "Cursor") -> None:
        # The write lock now, not at the first write: a read in between
        # could otherwise see data another writer is about to change.
        cursor.execute("BEGIN IMMEDIATE")

    def inTransaction(self, connection) -> bool:
        return connection.in_transaction

    def deferForeignKeys(self, cursor: "Cursor") -> None:
        cursor.execute("PRAGMA defer_foreign_keys = ON")

    def groupConcat(self, expression: str) -> str:
        return f"group_concat({expression}, ' ')"

    def createUidTrigger(self, cursor: "Cursor") -> None:
        cursor.execute(
            """
            CREATE TRIGGER accounts_uid AFTER INSERT ON accounts WHEN NEW.uid IS NULL
            BEGIN
                UPDATE account_ids SET last = last + 1;
                UPDATE accounts SET uid = (SELECT last FROM account_ids)
                    WHERE rowid = NEW.rowid;
            END
            """
        )


class PostgresDialect(Dialect):
    """PostgreSQL through psycopg 3."""

    name = "postgresql"
    # PostgreSQL has no implicit row number: a column of that name, filled
    # in insertion order, lets the queries that order by registration (the
    # migrations) or name a friend request by number be the same.
    rowidColumn = ", rowid BIGINT GENERATED BY DEFAULT AS IDENTITY UNIQUE"
    serialKey = "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"
    foreignKeyOptions = " DEFERRABLE"

    def __init__(self) -> None:
        import psycopg

        self._psycopg = psycopg
        self.Error = psycopg.Error
        self.IntegrityError = psycopg.IntegrityError

    def sql(self, query: str) -> str:
        return query.replace("%", "%%").replace("?", "%s")

    def connect(self, target: str):
        return self._psycopg.connect(
            target, autocommit=True, connect_timeout=CONNECT_TIMEOUT
        )

    def pool(self, target: str, reactor) -> adbapi.ConnectionPool:
        return adbapi.ConnectionPool(
            "psycopg",
            target,
            connect_timeout=CONNECT_TIMEOUT,
            # A few: PostgreSQL runs concurrent transactions, and a slow
            # query of one session need not hold up the others.
            cp_min=1,
            cp_max=4,
            # A connection that broke (the server restarted) is replaced by
            # a new one at the next query: chatd recovers by itself.
            cp_reconnect=True,
            cp_reactor=reactor,
            cp_noisy=False,
        )

    def hasTable(self, cursor: "Cursor", table: str) -> bool:
        # A scan of the catalog, not to_regclass(): after waiting for the
        # schema lock, this sees the table another node just committed;
        # to_regclass's cached lookup may not yet.
        cursor.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_tables"
            " WHERE schemaname = current_schema() AND tablename = ?)",
            (table,),
        )
        return bool(cursor.fetchone()[0])

    def beginSchemaChange(self, cursor: "Cursor") -> None:
        # Two nodes starting at once: the second waits here until the first
        # committed, then finds the step done. Released at the transaction's
        # end, so a node killed mid-migration holds nothing.
        cursor.execute("BEGIN")
        cursor.execute("SELECT pg_advisory_xact_lock(?, 0)", (SCHEMA_LOCK,))

    def inTransaction(self, connection) -> bool:
        status = connection.info.transaction_status
        return status != self._psycopg.pq.TransactionStatus.IDLE

    def lockName(self, cursor: "Cursor", skeleton: str) -> None:
        # The skeleton check and the insert are two statements: without it,
        # two nodes could both find a skeleton free and both insert.
        cursor.execute(
            "SELECT pg_advisory_xact_lock(?, hashtext(?))", (NAME_LOCK, skeleton)
        )

    def deferForeignKeys(self, cursor: "Cursor") -> None:
        cursor.execute("SET CONSTRAINTS ALL DEFERRED")

    def checkForeignKeys(self, cursor: "Cursor") -> None:
        # Also needed before changing the table: PostgreSQL refuses to
        # index one with checks still pending.
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")

    def groupConcat(self, expression: str) -> str:
        return f"string_agg({expression}, ' ')"

    def createUidTrigger(self, cursor: "Cursor") -> None:
        # The row lock of the counter is held to the end of the inserting
        # transaction, so ids are given in commit order: a reader that has
        # seen id N has seen every account below it (AccountStore's poll).
        cursor.execute(
            """
            CREATE FUNCTION accounts_uid() RETURNS trigger LANGUAGE plpgsql AS $f$
            BEGIN
                IF NEW.uid IS NULL THEN
                    UPDATE account_ids SET last = last + 1 RETURNING last INTO NEW.uid;
                END IF;
                RETURN NEW;
            END
            $f$
            """
        )
        cursor.execute(
            "CREATE TRIGGER accounts_uid BEFORE INSERT ON accounts"
            " FOR EACH ROW EXECUTE FUNCTION accounts_uid()"
        )


SQLITE = SQLiteDialect()
_postgres: PostgresDialect | None = None


def dialectFor(target: str) -> Dialect:
    """The L{Dialect} of C{target}, a SQLite path or a PostgreSQL URL."""
    global _postgres
    if not isPostgres(target):
        return SQLITE
    if _postgres is None:
        _postgres = PostgresDialect()
    return _postgres


def databaseErrors() -> tuple[type[Exception], ...]:
    """The base errors of both drivers (psycopg's only once it is loaded)."""
    errors: tuple[type[Exception], ...] = (sqlite3.Error,)
    if _postgres is not None:
        errors += (_postgres.Error,)
    return errors


class Cursor:
    """
    A DB-API cursor (or adbapi transaction) that takes C{?} queries and
    knows its L{Dialect}.
    """

    def __init__(self, cursor, dialect: Dialect) -> None:
        self._cursor = cursor
        self.dialect = dialect

    def execute(self, query: str, params: tuple | list = ()) -> "Cursor":
        # Parameters always passed (even none): psycopg then reads %% as %.
        self._cursor.execute(self.dialect.sql(query), tuple(params))
        return self

    def fetchone(self) -> Any:
        return self._cursor.fetchone()

    def fetchall(self) -> list:
        return self._cursor.fetchall()

    def __iter__(self) -> Iterator:
        return iter(self.fetchall())

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount


def asCursor(cursor) -> Cursor:
    """C{cursor} as a L{Cursor}; a bare C{sqlite3} cursor is SQLite's."""
    return cursor if isinstance(cursor, Cursor) else Cursor(cursor, SQLITE)


class Database:
    """A synchronous connection (start-up, C{chatd-admin}) and its L{Dialect}."""

    def __init__(self, connection, dialect: Dialect) -> None:
        self.connection = connection
        self.dialect = dialect

    @classmethod
    def open(cls, target: str) -> "Database":
        """Connect to C{target} (a SQLite path or a PostgreSQL URL), in autocommit mode."""
        dialect = dialectFor(target)
        return cls(dialect.connect(target), dialect)

    def execute(self, query: str, params: tuple | list = ()) -> Cursor:
        return self.cursor().execute(query, params)

    def cursor(self) -> Cursor:
        return Cursor(self.connection.cursor(), self.dialect)

    @property
    def in_transaction(self) -> bool:
        return self.dialect.inTransaction(self.connection)

    def commit(self) -> None:
        self.connection.commit()

    def close(self) -> None:
        self.connection.close()


def asDatabase(connection) -> Database:
    """C{connection} as a L{Database}; a bare C{sqlite3} connection is SQLite's."""
    return connection if isinstance(connection, Database) else Database(connection, SQLITE)

