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
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import sqlite3
import sys
from typing import TextIO

from chatd.msgr.accounts import (
    BLOCK,
    DEFAULT_SCRYPT,
    REVOKE,
    AccountError,
    checkPassword,
    connect,
    hashPassword,
    migrate,
)
from chatd.presence import nameKey

DEFAULT_DB = "chatd.sqlite3"

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
    spelled = _accountName(connection, name)
    connection.execute(
        "UPDATE accounts SET password = ? WHERE name_key = ?",
        (hashPassword(password, scrypt), nameKey(name)),
    )
    return spelled


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chatd-admin",
        description="Manage chatd's MSGR UQ accounts (works on the SQLite file).",
    )
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
    return parser


def main(
    argv: list[str] | None = None,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    scrypt: tuple[int, int, int] = DEFAULT_SCRYPT,
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
