"""
The checks the soak makes on the server once its clients are gone: nobody is
left online, fresh clients of every protocol are served and reach each other,
descriptors and per-connection objects are back to the baseline. Also the
MSGR accounts the clients use.
"""

from __future__ import annotations

import asyncio
import base64
import os
import time

from chatd.msgr.codec import RawField
from chatd.msrp import codec as msrp

from soak.server import ServerError, SoakServer
from soak.wire import (
    Closed,
    MsgrClient,
    MsrpClient,
    ProtobufClient,
    SoakFailure,
    http,
    messageRequest,
    msgrLogin,
)

# The check clients. Their names have a '#', which no soak client's name has.
CHECK_PROTOBUF = "pb#1"
CHECK_MSRP = "ms#1"
CHECK_MSGR = "mg#1"
WATCHER = "pb#w"


# Accounts.


async def befriend(ports, names: list[str], password: str, timeout: float) -> None:
    """Make every account a friend of every other: logins and logouts push lists."""
    port = ports["msgr-http"]
    tokens = {name: await msgrLogin(port, name, password, timeout, useJson=False) for name in names}
    for i, asker in enumerate(names):
        for friend in names[i + 1 :]:
            status, body = await http(port, "POST", "/enviarsolicitud", timeout,
                                      form={"token": tokens[asker], "para": friend})
            if (status, body) != (200, b"704"):
                raise ServerError(f"{asker} asking {friend}: {status} {body[:80]!r}")
            status, body = await http(port, "POST", "/aceptarsolicitud", timeout,
                                      form={"token": tokens[friend], "id": asker})
            if (status, body) != (200, b"602"):
                raise ServerError(f"{friend} accepting {asker}: {status} {body[:80]!r}")
    for token in tokens.values():
        await http(
            port, "POST", "/api/logout", timeout, headers={"Authorization": f"Bearer {token}"}
        )


async def register(ports, names: list[str], password: str, timeout: float) -> None:
    for name in names:
        status, body = await http(
            ports["msgr-http"], "POST", "/usuariocrear", timeout,
            form={"usr": name, "pass": password, "nombres": "Soak"},
        )
        if (status, body) != (200, b"702"):
            raise ServerError(f"registering {name} answered {status} {body[:80]!r}")


# After the clients.


async def listUsers(ports, timeout: float) -> list[str]:
    """Every online name, as a short-lived protobuf watcher sees it (without itself)."""
    client = await ProtobufClient.open(ports["protobuf"], timeout)
    try:
        response = await client.login(WATCHER)
        if response.code != 1:
            raise SoakFailure(f"the watcher could not log in: {response.response!r}")
        return [name for name in await client.users() if name != WATCHER]
    finally:
        client.connection.reset()


async def settle(
    server: SoakServer, ports, timeout: float, seconds: float, staying=frozenset()
) -> list[str]:
    """
    Wait until nobody but C{staying} is online; the other names still online
    when time ran out.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    names: list[str] = []
    while loop.time() < deadline:
        try:
            names = [n for n in await listUsers(ports, timeout) if n not in staying]
        except (SoakFailure, Closed, OSError) as e:
            names = [f"<the list failed: {e}>"]
        if not names:
            return []
        await asyncio.sleep(0.25)
    return names


async def waitForFiles(server: SoakServer, target: int, seconds: float) -> int:
    """Wait until the server has at most C{target} descriptors open; how many it has."""
    deadline = time.monotonic() + seconds
    while True:
        count = server.openFiles()
        if count <= target or time.monotonic() >= deadline:
            return count
        await asyncio.sleep(0.25)


async def exchange(ports, password: str, timeout: float) -> list[str]:
    """
    Check (a) and (b): a fresh client of each protocol logs in, sees exactly
    the three of them online, and messages go round; an MSGR file reaches
    the MSRP client. The problems found (none: an empty list).
    """
    problems: list[str] = []
    pb = ms = mg = None
    try:
        token = await msgrLogin(ports["msgr-http"], CHECK_MSGR, password, timeout, useJson=True)
        mg = await MsgrClient.open(ports["msgr"], timeout)
        code = await mg.bind(CHECK_MSGR, token)
        if code != 701:
            return [f"msgr: #HOLA of a fresh client answered {code}"]
        # Every soak account is a friend of the check account: none may be
        # online, neither in the push on binding nor over HTTP.
        friends = await mg.expect(lambda f: f[0] == "#LISTA_USUARIOS")
        if friends[3:] != [""]:
            problems.append(f"msgr: friends still online after the soak: {friends[3:]}")
        status, body = await http(ports["msgr-http"], "POST", "/obtenerusuarios", timeout,
                                  form={"token": token})
        listed = body.decode().partition("||")[2].split("&&")
        online = [item for item in listed if not item.endswith(" offline")]
        if status != 200 or not body.startswith(b"704||") or online:
            problems.append(
                f"msgr: /obtenerusuarios shows friends online: {online[:10]} ({status})"
            )
        ms = await MsrpClient.open(ports["msrp"], timeout)
        await ms.send(CHECK_MSRP.encode())
        pb = await ProtobufClient.open(ports["protobuf"], timeout)
        response = await pb.login(CHECK_PROTOBUF)
        if response.code != 1:
            return [f"protobuf: a fresh login answered {response.response!r}"]
        expected = {CHECK_PROTOBUF, CHECK_MSRP, CHECK_MSGR}
        for where, seen in [
            ("protobuf CONNECTED_USERS", set(await pb.users())),
            ("msrp LIST", set(await ms.users())),
        ]:
            if seen != expected:
                problems.append(f"{where} shows {someNames(seen - expected)} online too,"
                                f" and misses {someNames(expected - seen)}")

        # protobuf -> MSRP
        response = await pb.request(messageRequest(CHECK_MSRP, "uno"))
        if response.response != f"delivered to {CHECK_MSRP}":
            problems.append(f"protobuf -> msrp answered {response.response!r}")
        await ms.expect(
            lambda f: type(f) is msrp.Message
            and f.name == CHECK_PROTOBUF.encode()
            and f.text == b"uno"
        )
        # MSRP -> MSGR
        await ms.send(msrp.encodeMessage(CHECK_MSGR.encode(), "dos €".encode()))
        await mg.expect(lambda f: f == ["#MSJ", "-", CHECK_MSRP, CHECK_MSGR, "dos €"])
        # MSGR -> protobuf
        await mg.send("#MSJ", token, CHECK_MSGR, CHECK_PROTOBUF, "tres || &&")
        code = await mg.answer("#MSJ")
        if code != 704:
            problems.append(f"msgr -> protobuf answered {code}")
        await pb.delivery(lambda d: d.messg.sender == CHECK_MSGR and d.messg.text == "tres || &&")
        # MSGR file -> MSRP
        content = os.urandom(3000)
        await mg.send(
            "#ARCHIVO", token, CHECK_MSGR, CHECK_MSRP, "check.bin",
            RawField(base64.b64encode(content).decode()),
        )
        code = await mg.answer("#ARCHIVO")
        if code != 704:
            problems.append(f"msgr #ARCHIVO -> msrp answered {code}")
        else:
            header = await ms.expect(lambda f: type(f) is msrp.FileHeader)
            received = bytearray()
            while True:
                frame = await ms.frame()
                if type(frame) is msrp.FileEnd:
                    break
                received += frame.data
            if header.name != CHECK_MSGR.encode() or bytes(received) != content:
                problems.append("msgr #ARCHIVO -> msrp: the file arrived changed")
        # Goodbyes.
        await mg.send("#DESCONECTAR", token, CHECK_MSGR)
        code = await mg.answer("#DESCONECTAR")
        if code != 702:
            problems.append(f"msgr #DESCONECTAR answered {code}")
    except (SoakFailure, Closed, OSError) as e:
        problems.append(f"the exchange between fresh clients failed: {type(e).__name__}: {e}")
    finally:
        for client in (pb, ms, mg):
            if client is not None:
                await client.connection.close()
    return problems




def someNames(names, shown: int = 10) -> str:
    """The first C{shown} of C{names}, and how many more there are."""
    names = sorted(names)
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return (", ".join(names[:shown]) or "nobody") + more


# Objects that outlive their connections.

#: chatd types that may legitimately grow during a soak, each bounded: login
#: tokens (until they expire, --msgr-token-idle) and failed-login records
#: (one per name and address tried, swept after the lockout window).
BOUNDED_TYPES = frozenset({"chatd.msgr.tokens._Grant", "chatd.msgr.lockout._Record"})

#: Twisted types with one instance per connection or HTTP request.
TWISTED_PER_CONNECTION = frozenset(
    {
        "twisted.internet.tcp.Server",
        "twisted.web.http.HTTPChannel",
        "twisted.web.server.Request",
        "twisted.web.http._IdentityTransferDecoder",
        "twisted.web.http._ChunkedTransferDecoder",
    }
)


def perConnection(typeName: str) -> bool:
    """Whether instances of C{typeName} must all be gone once every client left."""
    if typeName in TWISTED_PER_CONNECTION:
        return True
    return typeName.startswith("chatd.") and typeName not in BOUNDED_TYPES


def outlived(base: dict[str, int], now: dict[str, int]) -> dict[str, int]:
    """Per-connection types with more live instances now than at the baseline."""
    return {
        name: count - base.get(name, 0)
        for name, count in now.items()
        if perConnection(name) and count > base.get(name, 0)
    }


def growth(base: dict[str, int], now: dict[str, int], top: int = 8) -> list[tuple[str, int]]:
    """The types whose live instances grew most."""
    grown = [(name, now[name] - base.get(name, 0)) for name in now]
    grown.sort(key=lambda item: -item[1])
    return [(name, n) for name, n in grown[:top] if n > 0]


async def waitForCensus(
    server: SoakServer, base: dict[str, int], seconds: float, mode: str = "collect"
) -> tuple[dict[str, int], dict[str, int]]:
    """
    Census the server until no per-connection object outlives the baseline,
    for at most C{seconds}; the last census and what outlived it. C{mode}:
    see L{SoakServer.census}.
    """
    deadline = time.monotonic() + seconds
    while True:
        census = await asyncio.get_running_loop().run_in_executor(
            None, lambda: server.census(mode=mode)
        )
        extra = outlived(base, census)
        if not extra or time.monotonic() >= deadline:
            return census, extra
        await asyncio.sleep(1.0)
