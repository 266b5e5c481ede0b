"""
The C{chatd-client} console script (docs/client.md):

    chatd-client protobuf --name alice
    printf 'list\\nmsg bob hola\\n' | chatd-client protobuf --name alice
    chatd-client msrp --name clt1 --save-dir ~/Descargas
    chatd-client msgr --name ana --password secreto --register

At a terminal it shows a prompt; with standard input from a pipe or a file it
runs the commands in order and exits at the end of the input, once its
pending work is done. The exit status is 0, or 1 when anything failed.
"""

from __future__ import annotations

import argparse
import fcntl
import getpass
import os
import sys
import termios

from twisted.internet import defer, task

from chatd.client import msgr, msrp, protobuf
from chatd.client.console import ScriptConsole, TerminalConsole, isInteractive
from chatd.client.runner import CommandError, CommandRunner
from chatd.config import versionText

CLIENTS = {
    "protobuf": protobuf.ProtobufChatClient,
    "msrp": msrp.MsrpChatClient,
    "msgr": msgr.MsgrChatClient,
}

#: Seconds C{expect} waits by default.
DEFAULT_TIMEOUT = 30.0

PASSWORD_VARIABLE = "CHATD_PASSWORD"


def _port(value: str) -> int:
    port = int(value)
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"{value} is not a TCP port")
    return port


def _seconds(value: str) -> float:
    seconds = float(value)
    if not 0 <= seconds <= 86400:
        raise argparse.ArgumentTypeError(f"{value} is not between 0 and 86400 seconds")
    return seconds


def _common(parser: argparse.ArgumentParser, defaultPort: int, files: bool) -> None:
    parser.add_argument("--name", required=True, help="the user name to log in with")
    parser.add_argument("--host", default="localhost", help="the server (default: localhost)")
    parser.add_argument(
        "--port", type=_port, metavar="PORT", help=f"the server's port (default: {defaultPort})"
    )
    parser.add_argument("--tls", action="store_true", help="connect with TLS")
    parser.add_argument(
        "--ca-file",
        metavar="PEM",
        help="trust the CA certificates in PEM (instead of the system's); implies --tls",
    )
    parser.add_argument(
        "--timeout",
        type=_seconds,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"how long 'expect' waits (default: {DEFAULT_TIMEOUT:g})",
    )
    if files:
        parser.add_argument(
            "--save-dir",
            default=".",
            metavar="DIR",
            help="the folder incoming files are saved in (default: the current one)",
        )


def buildParser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chatd-client",
        description="Talk to a chatd server in one of its protocols."
        " At a terminal: a prompt (type help). From a pipe or a file: one command"
        " a line, run in order. See docs/client.md.",
    )
    parser.add_argument("--version", action="version", version=versionText())
    protocols = parser.add_subparsers(dest="protocol", required=True, metavar="PROTOCOL")

    p = protocols.add_parser("protobuf", help="the protobuf chat of seed 000 (port 5000)")
    _common(p, protobuf.DEFAULT_PORT, files=False)
    p.add_argument(
        "--framing",
        choices=(protobuf.RAW, protobuf.DELIMITED),
        default=protobuf.RAW,
        help="the server's --protobuf-framing (default: raw)",
    )
    p.add_argument("--ip", help="the address to announce at login (default: what the server sees)")

    m = protocols.add_parser("msrp", help="MSRP of seed 004 (port 8080)")
    _common(m, msrp.DEFAULT_PORT, files=True)
    m.add_argument(
        "--ack-wait",
        type=_seconds,
        default=msrp.DEFAULT_ACK_WAIT,
        metavar="SECONDS",
        help="at the end of the input, how long to wait for the ACKs of sent files"
        f" (default: {msrp.DEFAULT_ACK_WAIT:g})",
    )

    g = protocols.add_parser("msgr", help="MSGR UQ of seed 001 (ports 1234 and 8000)")
    _common(g, msgr.DEFAULT_PORT, files=True)
    g.add_argument(
        "--password",
        help=f"the account's password (default: ${PASSWORD_VARIABLE}, or asked at a terminal)",
    )
    g.add_argument("--register", action="store_true", help="create the account first")
    g.add_argument(
        "--http-port",
        type=_port,
        metavar="PORT",
        help=f"the HTTP API's port (default: {msgr.DEFAULT_HTTP_PORT})",
    )
    g.add_argument(
        "--http-url",
        metavar="URL",
        help="the HTTP API's address, e.g. https://chat.example.org:8443"
        " (default: from --host, --http-port and --tls)",
    )
    return parser


def parseArguments(argv: list[str], interactive: bool) -> argparse.Namespace:
    parser = buildParser()
    options = parser.parse_args(argv)
    if options.ca_file:
        options.tls = True
        if not os.path.isfile(options.ca_file):
            parser.error(f"--ca-file: {options.ca_file} is not a file")
    if options.protocol == "msrp" and len(options.name.encode("utf-8")) != 4:
        parser.error(f"--name: MSRP names are exactly 4 bytes, {options.name!r} is {len(options.name.encode('utf-8'))}")
    if options.protocol == "msgr" and options.password is None:
        options.password = os.environ.get(PASSWORD_VARIABLE)
        if options.password is None:
            if not interactive:
                parser.error(f"msgr needs --password or ${PASSWORD_VARIABLE}")
            options.password = getpass.getpass(f"password for {options.name}: ")
            # A new account's password is typed blind: twice, as passwd does.
            if options.register and getpass.getpass(
                f"password for {options.name} again: "
            ) != options.password:
                parser.error("the two passwords differ; the account was not created")
    if hasattr(options, "save_dir"):
        try:
            os.makedirs(options.save_dir, exist_ok=True)
        except OSError as e:
            parser.error(f"--save-dir: {e.strerror}: {options.save_dir}")
        if not os.access(options.save_dir, os.W_OK):
            parser.error(f"--save-dir: {options.save_dir} is not writable")
    return options


@defer.inlineCallbacks
def run(reactor, options: argparse.Namespace, interactive: bool):
    if interactive:
        console = TerminalConsole(reactor, prompt=f"{options.name}> ")
    else:
        console = ScriptConsole(reactor)
    client = CLIENTS[options.protocol](options, console, reactor)
    try:
        yield client.connect()
    except CommandError as e:
        console.error(str(e))
        client.abort()
        raise SystemExit(1)
    except Exception as e:
        console.error(f"{type(e).__name__}: {e}")
        client.abort()
        raise SystemExit(1)
    runner = CommandRunner(
        client, console, reactor, sequential=not interactive, timeout=options.timeout
    )
    if interactive:
        console.result("type help for the commands, quit (or Ctrl-D) to leave")
    try:
        console.startInput(runner)
        code = yield runner.finished
    finally:
        console.close()
    if code:
        raise SystemExit(code)


def _blockingFlags() -> dict[int, int]:
    flags = {}
    for fd in (0, 1, 2):
        try:
            flags[fd] = fcntl.fcntl(fd, fcntl.F_GETFL)
        except OSError:
            pass
    return flags


def main(argv: list[str] | None = None) -> None:
    interactive = isInteractive()
    options = parseArguments(sys.argv[1:] if argv is None else argv, interactive)
    # Twisted's stdio makes the descriptors non-blocking; the shell that
    # started us shares them, so they are put back as they were.
    flags = _blockingFlags()
    terminal = termios.tcgetattr(0) if interactive else None
    try:
        task.react(run, [options, interactive])
    finally:
        if terminal is not None:
            termios.tcsetattr(0, termios.TCSANOW, terminal)
        for fd, value in flags.items():
            try:
                fcntl.fcntl(fd, fcntl.F_SETFL, value)
            except OSError:
                pass


if __name__ == "__main__":
    main()
