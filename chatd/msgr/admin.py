"""
C{chatd-admin}: operator commands on the MSGR UQ accounts database.

It works directly on the SQLite file with the standard library, or on the
PostgreSQL database (C{--db postgresql://...}) with psycopg (no reactor),
and may run while chatd runs: the database's locking keeps both consistent.
C{block} and C{revoke} also write a row to the revocations table, which a
running chatd reads every second: it then revokes the account's tokens and
closes its chat socket. A new password counts from the next login.

    chatd-admin --db chatd.sqlite3 list [--blocked]
    chatd-admin --db chatd.sqlite3 block NAME
    chatd-admin --db chatd.sqlite3 unblock NAME
    chatd-admin --db chatd.sqlite3 revoke NAME
    chatd-admin --db chatd.sqlite3 reset-password NAME [--password-stdin]
    chatd-admin --db chatd.sqlite3 create NAME [--email E] [--password-stdin]
    chatd-admin --db chatd.sqlite3 delete NAME
    chatd-admin online [--url http://127.0.0.1:9108]
    chatd-admin copy --from chatd.sqlite3 --to postgresql://...

A running chatd learns of C{create} and C{delete} within a second (it
polls, as for revocations: docs/msgr.md, "chatd-admin"). C{online} asks a
running chatd, over its C{--metrics} listener. C{copy} moves a SQLite
account database into an empty PostgreSQL one.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import os
import secrets
import sys
import urllib.error
import urllib.request
from typing import Callable, TextIO

from chatd.config import versionText
from chatd.msgr.accounts import (
    BLOCK,
    DEFAULT_SCRYPT,
    REVOKE,
    PROFILE_FIELDS,
    AccountError,
    checkPassword,
    checkProfile,
    connect,
    hashPassword,
    migrate,
    schemaVersion,
)
from chatd.msgr.databases import Database, asDatabase, databaseErrors, isPostgres
from chatd.presence import InvalidName, checkName, nameKey, nameSkeleton

DEFAULT_DB = "chatd.sqlite3"

#: Where C{online} asks by default: the --metrics listener of the docs'
#: examples (docs/observability.md).
DEFAULT_URL = "http://127.0.0.1:9108"

#: Seconds C{online} waits for the server.
ONLINE_TIMEOUT = 10

#: Exit statuses.
OK, FAILED, USAGE = 0, 1, 2


class AdminError(Exception):
    """A command that cannot be done; the message is shown to the operator."""


def _open(path: str):
    if not isPostgres(path) and not os.path.exists(path):
        raise AdminError(f"no database at {path} (chatd creates it on its first run)")
    connection = connect(path)
    migrate(connection)
    return connection


def listAccounts(connection, blockedOnly: bool = False) -> list[tuple]:
    """(name, blocked, email, friends, pending requests) of every account."""
    connection = asDatabase(connection)
    query = (
        "SELECT a.name, a.bloqueado, a.email,"
        " (SELECT COUNT(*) FROM friendships f WHERE f.a_key = a.name_key),"
        " (SELECT COUNT(*) FROM friend_requests r WHERE r.to_key = a.name_key)"
        " FROM accounts a"
    )
    if blockedOnly:
        query += " WHERE a.bloqueado <> 0"
    query += " ORDER BY a.name_key"
    return connection.execute(query).fetchall()


def _accountName(connection, name: str) -> str:
    """The account C{name} as spelled, or L{AdminError} when there is none."""
    connection = asDatabase(connection)
    row = connection.execute(
        "SELECT name FROM accounts WHERE name_key = ?", (nameKey(name),)
    ).fetchone()
    if row is None:
        raise AdminError(f"no account {name!r}")
    return row[0]


@contextlib.contextmanager
def _transaction(connection: Database):
    # One transaction whether the connection is in autocommit mode (ours) or
    # in the stdlib's default mode with one already open (its caller's).
    if connection.in_transaction:
        yield
        return
    connection.dialect.beginWrite(connection.cursor())
    try:
        yield
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")


def _logRevocation(connection: Database, name: str, kind: str) -> None:
    connection = asDatabase(connection)
    connection.execute("INSERT INTO revocations (name, kind) VALUES (?, ?)", (name, kind))


def setBlocked(connection, name: str, blocked: bool) -> str:
    """
    Block or unblock the account C{name}; returns its name as spelled. A
    block is also logged for a running chatd, which ends the account's
    sessions within a second.
    """
    connection = asDatabase(connection)
    with _transaction(connection):
        spelled = _accountName(connection, name)
        connection.execute(
            "UPDATE accounts SET bloqueado = ? WHERE name_key = ?",
            (1 if blocked else 0, nameKey(name)),
        )
        if blocked:
            _logRevocation(connection, spelled, BLOCK)
    return spelled


def revokeTokens(connection, name: str) -> str:
    """
    Ask a running chatd to revoke every token of the account C{name} and
    close its chat socket (within a second); returns its name as spelled.
    """
    connection = asDatabase(connection)
    with _transaction(connection):
        spelled = _accountName(connection, name)
        _logRevocation(connection, spelled, REVOKE)
    return spelled


def resetPassword(
    connection,
    name: str,
    password: str,
    scrypt: tuple[int, int, int] = DEFAULT_SCRYPT,
) -> str:
    """Give the account C{name} the password C{password}."""
    connection = asDatabase(connection)
    try:
        checkPassword(password)
    except AccountError as e:
        raise AdminError(str(e)) from None
    hashed = hashPassword(password, scrypt)
    # A reset usually follows a stolen password: the sessions opened with
    # it end too, as after a password change over HTTP.
    with _transaction(connection):
        spelled = _accountName(connection, name)
        connection.execute(
            "UPDATE accounts SET password = ? WHERE name_key = ?",
            (hashed, nameKey(name)),
        )
        _logRevocation(connection, spelled, REVOKE)
    return spelled


def createAccount(
    connection,
    name: str,
    password: str,
    profile: dict[str, str],
    scrypt: tuple[int, int, int] = DEFAULT_SCRYPT,
) -> str:
    """Create the account C{name}, as C{POST /registro} would."""
    connection = asDatabase(connection)
    try:
        checkName(name)
        checkPassword(password)
        checkProfile(profile)
    except (InvalidName, AccountError) as e:
        raise AdminError(str(e)) from None
    key, skeleton = nameKey(name), nameSkeleton(name)
    hashed = hashPassword(password, scrypt)
    fields = [profile.get(field, "") for field in PROFILE_FIELDS]
    with _transaction(connection):
        row = connection.execute(
            "SELECT name FROM accounts WHERE name_key = ?", (key,)
        ).fetchone()
        if row is not None:
            raise AdminError(f"the name {name} is taken (by the account {row[0]!r})")
        # The rule of registration: no name that looks like an account's.
        row = connection.execute(
            "SELECT name FROM accounts WHERE skeleton = ?", (skeleton,)
        ).fetchone()
        if row is not None:
            raise AdminError(f"the name {name} looks like the account {row[0]!r}")
        connection.execute(
            "INSERT INTO accounts (name_key, name, password, skeleton, nombres,"
            " apellidos, email, estado) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (key, name, hashed, skeleton, *fields),
        )
    return name


def deleteAccount(connection, name: str) -> tuple[str, int, int]:
    """
    Delete the account C{name} with its friendships and the friend requests
    it sent or received; returns (its name as spelled, friendships, requests).
    """
    connection = asDatabase(connection)
    spelled = _accountName(connection, name)
    key = nameKey(name)
    (friends,) = connection.execute(
        "SELECT COUNT(*) FROM friendships WHERE a_key = ?", (key,)
    ).fetchone()
    (requests,) = connection.execute(
        "SELECT COUNT(*) FROM friend_requests WHERE from_key = ? OR to_key = ?",
        (key, key),
    ).fetchone()
    # One transaction; the rows are deleted explicitly rather than left to
    # ON DELETE CASCADE, so a database opened without PRAGMA foreign_keys
    # loses them too. The revocation row ends the account's open sessions
    # in a running chatd.
    with _transaction(connection):
        connection.execute(
            "DELETE FROM friendships WHERE a_key = ? OR b_key = ?", (key, key)
        )
        connection.execute(
            "DELETE FROM friend_requests WHERE from_key = ? OR to_key = ?", (key, key)
        )
        connection.execute("DELETE FROM accounts WHERE name_key = ?", (key,))
        _logRevocation(connection, spelled, REVOKE)
    return spelled, friends, requests


#: The columns C{copy} carries over, per table, in the order of the rows'
#: creation (so that the target's row numbers keep the source's order).
_COPIED = (
    (
        "accounts",
        "name_key, name, password, nombres, apellidos, email, estado, bloqueado,"
        " skeleton, uid",
        "rowid",
    ),
    ("friendships", "a_key, b_key", "rowid"),
    ("friend_requests", "from_key, to_key", "rowid"),
)


def copyDatabase(source: str, target: str) -> dict[str, int]:
    """
    Copy every account of the database C{source} (a SQLite file), with its
    password hash, profile, blocked flag and numeric id, its friendships and
    its pending friend requests, into the database C{target} (PostgreSQL, or
    another SQLite file), in one transaction: all of it or nothing.

    Both are migrated to the current schema first (the source in place, as
    chatd would on its next start). The revocations log is not copied: it
    concerns the tokens of the server that wrote it. The counter of numeric
    ids goes on from the source's, so an id of a deleted account is never
    given again.

    @return: how many rows of each table were copied.
    @raise AdminError: when C{source} does not exist, is C{target}, or the
        target has accounts already (nothing is written: there is no merge
        rule for two sets of accounts, friends and ids).
    """
    if isPostgres(source):
        raise AdminError("--from is a SQLite file (the database to move)")
    if not os.path.exists(source):
        raise AdminError(f"no database at {source}")
    if not isPostgres(target) and os.path.abspath(target) == os.path.abspath(source):
        raise AdminError("--from and --to are the same database")
    From = asDatabase(_open(source))
    try:
        To = asDatabase(connect(target))
        try:
            migrate(To)
            if schemaVersion(From) != schemaVersion(To):
                raise AdminError("the two databases have different schema versions")
            counts = {}
            with _transaction(To):
                (existing,) = To.execute("SELECT COUNT(*) FROM accounts").fetchone()
                if existing:
                    raise AdminError(
                        f"the target database has {existing} accounts already;"
                        " nothing was copied (copy only into an empty database)"
                    )
                for table, columns, order in _COPIED:
                    rows = From.execute(
                        f"SELECT {columns} FROM {table} ORDER BY {order}"
                    ).fetchall()
                    marks = ", ".join("?" for _ in columns.split(","))
                    cursor = To.cursor()
                    for row in rows:
                        cursor.execute(
                            f"INSERT INTO {table} ({columns}) VALUES ({marks})", row
                        )
                    counts[table] = len(rows)
                (last,) = From.execute("SELECT last FROM account_ids").fetchone()
                To.execute("UPDATE account_ids SET last = ?", (last,))
            return counts
        finally:
            To.close()
    finally:
        From.close()


def onlineUsers(url: str, timeout: float = ONLINE_TIMEOUT) -> list[dict]:
    """Who is online, from C{GET /online} of a running chatd's --metrics listener."""
    address = url.rstrip("/") + "/online"
    try:
        with urllib.request.urlopen(address, timeout=timeout) as response:
            return json.loads(response.read().decode("utf-8"))
    except urllib.error.HTTPError as e:
        raise AdminError(
            f"{address}: {e.code} {e.reason} (is it chatd's --metrics listener?)"
        ) from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise AdminError(f"{address}: {reason} (is chatd running with --metrics?)") from None
    except ValueError:
        raise AdminError(f"{address}: the answer is not chatd's JSON") from None


def _askPassword(name: str, ask: Callable[[str], str]) -> str:
    """The password for C{name}, typed twice at a terminal."""
    first = ask(f"password for {name}: ")
    if ask(f"password for {name} again: ") != first:
        raise AdminError("the two passwords differ; nothing was changed")
    return first


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chatd-admin",
        description="Manage chatd's MSGR UQ accounts (on the SQLite file), and see"
        " who is online (asked of a running chatd).",
    )
    parser.add_argument("--version", action="version", version=versionText())
    parser.add_argument(
        "--db", default=DEFAULT_DB, help=f"the accounts database (default {DEFAULT_DB})"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="list the accounts")
    listing.add_argument("--blocked", action="store_true", help="only blocked ones")
    for verb, text in (
        ("block", "block an account for good (ends its sessions)"),
        ("unblock", "unblock an account"),
        ("revoke", "end every session of an account (its tokens and chat socket)"),
    ):
        commands.add_parser(verb, help=text).add_argument("name")
    reset = commands.add_parser(
        "reset-password",
        help="set a new password (a random one is generated and shown, unless"
        " --password-stdin)",
    )
    reset.add_argument("name")
    reset.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the new password from the first line of standard input",
    )
    create = commands.add_parser(
        "create",
        help="create an account (the password is asked twice, or read with"
        " --password-stdin)",
    )
    create.add_argument("name")
    create.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from the first line of standard input",
    )
    for field in PROFILE_FIELDS:
        create.add_argument(f"--{field}", default="", help=f"the account's {field}")
    commands.add_parser(
        "delete", help="delete an account, its friendships and its friend requests"
    ).add_argument("name")
    copy = commands.add_parser(
        "copy",
        help="copy a SQLite account database into an empty PostgreSQL one"
        " (accounts, hashes, profiles, ids, friends, requests)",
    )
    copy.add_argument("--from", dest="source", required=True, help="the SQLite file")
    copy.add_argument(
        "--to", dest="target", required=True, help="postgresql://USER@HOST:PORT/DATABASE"
    )
    online = commands.add_parser(
        "online", help="who is online, asked of a running chatd (its --metrics listener)"
    )
    online.add_argument(
        "--url",
        default=DEFAULT_URL,
        help=f"the --metrics listener of the running chatd (default {DEFAULT_URL})",
    )
    return parser


def main(
    argv: list[str] | None = None,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    scrypt: tuple[int, int, int] = DEFAULT_SCRYPT,
    ask: Callable[[str], str] = getpass.getpass,
) -> int:
    """Run C{chatd-admin}; returns the exit status."""
    stdin = sys.stdin if stdin is None else stdin
    stdout = sys.stdout if stdout is None else stdout
    stderr = sys.stderr if stderr is None else stderr
    try:
        # argparse writes its usage errors (and --help) to sys.stderr/stdout.
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(stdout):
            options = _parser().parse_args(argv)
    except SystemExit as e:
        return USAGE if e.code else OK
    try:
        if options.command == "online":
            return _online(options.url, stdout)
        if options.command == "copy":
            counts = copyDatabase(options.source, options.target)
            stdout.write(
                f"copied {counts['accounts']} accounts, {counts['friendships'] // 2}"
                f" friendships and {counts['friend_requests']} friend requests\n"
            )
            return OK
        if options.command == "create" and not options.password_stdin:
            options.password = _askPassword(options.name, ask)
        connection = _open(options.db)
        try:
            return _run(options, connection, stdin, stdout, scrypt)
        finally:
            connection.close()
    except AdminError as e:
        stderr.write(f"chatd-admin: {e}\n")
        return FAILED
    except databaseErrors() as e:
        stderr.write(f"chatd-admin: database error: {e}\n")
        return FAILED


def _run(options, connection, stdin, stdout, scrypt) -> int:
    command = options.command
    if command == "list":
        rows = listAccounts(connection, options.blocked)
        stdout.write("name\tblocked\temail\tfriends\tpending\n")
        for name, blocked, email, friends, pending in rows:
            state = "yes" if blocked else "no"
            stdout.write(f"{name}\t{state}\t{email}\t{friends}\t{pending}\n")
        return OK
    if command == "create":
        password = (
            stdin.readline().rstrip("\r\n") if options.password_stdin else options.password
        )
        profile = {field: getattr(options, field) for field in PROFILE_FIELDS}
        name = createAccount(connection, options.name, password, profile, scrypt)
        stdout.write(f"{name} created\n")
        return OK
    if command == "delete":
        name, friends, requests = deleteAccount(connection, options.name)
        stdout.write(
            f"{name} deleted, with {friends} friendships and {requests} friend requests\n"
        )
        return OK
    if command in ("block", "unblock"):
        name = setBlocked(connection, options.name, command == "block")
        stdout.write(f"{name} {command}ed\n")
        return OK
    if command == "revoke":
        name = revokeTokens(connection, options.name)
        stdout.write(f"the tokens of {name} are revoked\n")
        return OK
    if options.password_stdin:
        password = stdin.readline().rstrip("\r\n")
        generated = False
    else:
        password = secrets.token_urlsafe(12)
        generated = True
    name = resetPassword(connection, options.name, password, scrypt)
    if generated:
        stdout.write(f"new password for {name}: {password}\n")
    else:
        stdout.write(f"password of {name} reset\n")
    return OK


def _online(url: str, stdout: TextIO) -> int:
    users = onlineUsers(url)
    stdout.write("name\tprotocol\tip\tstatus\n")
    for user in users:
        stdout.write(f"{user['name']}\t{user['protocol']}\t{user['ip']}\t{user['status']}\n")
    return OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
