"""
C{chatd-admin}: operator commands on the MSGR UQ accounts database.

It works directly on the SQLite file with the standard library (no reactor),
and may run while chatd runs: SQLite's locking keeps both consistent.
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

C{create} and C{delete} change the file only: a running chatd learns of
them at its next start (docs/msgr.md, "chatd-admin"). C{online} asks a
running chatd, over its C{--metrics} listener.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import os
import secrets
import sqlite3
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
)
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


def _open(path: str) -> sqlite3.Connection:
    if not os.path.exists(path):
        raise AdminError(f"no database at {path} (chatd creates it on its first run)")
    connection = connect(path)
    migrate(connection)
    return connection


def listAccounts(connection: sqlite3.Connection, blockedOnly: bool = False) -> list[tuple]:
    """(name, blocked, email, friends, pending requests) of every account."""
    query = (
        "SELECT a.name, a.bloqueado, a.email,"
        " (SELECT COUNT(*) FROM friendships f WHERE f.a_key = a.name_key),"
        " (SELECT COUNT(*) FROM friend_requests r WHERE r.to_key = a.name_key)"
        " FROM accounts a"
    )
    if blockedOnly:
        query += " WHERE a.bloqueado"
    query += " ORDER BY a.name_key"
    return connection.execute(query).fetchall()


def _accountName(connection: sqlite3.Connection, name: str) -> str:
    """The account C{name} as spelled, or L{AdminError} when there is none."""
    row = connection.execute(
        "SELECT name FROM accounts WHERE name_key = ?", (nameKey(name),)
    ).fetchone()
    if row is None:
        raise AdminError(f"no account {name!r}")
    return row[0]


@contextlib.contextmanager
def _transaction(connection: sqlite3.Connection):
    # One transaction whether the connection is in autocommit mode (ours) or
    # in the stdlib's default mode with one already open (its caller's).
    if connection.in_transaction:
        yield
        return
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")


def _logRevocation(connection: sqlite3.Connection, name: str, kind: str) -> None:
    connection.execute("INSERT INTO revocations (name, kind) VALUES (?, ?)", (name, kind))


def setBlocked(connection: sqlite3.Connection, name: str, blocked: bool) -> str:
    """
    Block or unblock the account C{name}; returns its name as spelled. A
    block is also logged for a running chatd, which ends the account's
    sessions within a second.
    """
    with _transaction(connection):
        spelled = _accountName(connection, name)
        connection.execute(
            "UPDATE accounts SET bloqueado = ? WHERE name_key = ?",
            (1 if blocked else 0, nameKey(name)),
        )
        if blocked:
            _logRevocation(connection, spelled, BLOCK)
    return spelled


def revokeTokens(connection: sqlite3.Connection, name: str) -> str:
    """
    Ask a running chatd to revoke every token of the account C{name} and
    close its chat socket (within a second); returns its name as spelled.
    """
    with _transaction(connection):
        spelled = _accountName(connection, name)
        _logRevocation(connection, spelled, REVOKE)
    return spelled


def resetPassword(
    connection: sqlite3.Connection,
    name: str,
    password: str,
    scrypt: tuple[int, int, int] = DEFAULT_SCRYPT,
) -> str:
    """Give the account C{name} the password C{password}."""
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
    connection: sqlite3.Connection,
    name: str,
    password: str,
    profile: dict[str, str],
    scrypt: tuple[int, int, int] = DEFAULT_SCRYPT,
) -> str:
    """Create the account C{name}, as C{POST /registro} would."""
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


def deleteAccount(connection: sqlite3.Connection, name: str) -> tuple[str, int, int]:
    """
    Delete the account C{name} with its friendships and the friend requests
    it sent or received; returns (its name as spelled, friendships, requests).
    """
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
    except sqlite3.Error as e:
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
