"""
The behaviours of MSGR UQ clients on the TCP listener: sessions,
takeovers, hostile lines before and after binding, binding races, and
floods of bad lines.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re

from chatd.msgr.codec import RawField, escape

from soak.wire import (
    Closed,
    Connection,
    MsgrClient,
    NoAnswer,
    SoakFailure,
    http,
    msgrLogin,
)
from soak.behaviours.common import Limited, Skip, Soak, _expect


def _account(soak: Soak) -> str:
    """A free MSGR account (each is used by one client at a time), or L{Skip}."""
    try:
        return soak.accounts.get_nowait()
    except asyncio.QueueEmpty:
        raise Skip() from None


async def _msgrLogin(soak: Soak, name: str, useJson: bool) -> str:
    """
    L{msgrLogin}, with 802 as L{Limited}: a soak account is used by one
    client at a time, but an abandoned login of it (L{httpHostile}) may
    still be checked, and one check of a name runs at a time (the others
    are answered 802, docs/msgr.md "Lockout").
    """
    try:
        return await msgrLogin(soak.ports["msgr-http"], name, soak.password, soak.timeout, useJson)
    except SoakFailure as e:
        if re.search(r"answered 200 b'(802|\{\"code\": 802\})'", str(e)):
            raise Limited(str(e)) from None
        raise


async def _bound(soak: Soak, name: str, useJson: bool | None = None) -> MsgrClient:
    token = await _msgrLogin(soak, name, soak.abrupt() if useJson is None else useJson)
    client = await MsgrClient.open(soak.ports["msgr"], soak.timeout)
    try:
        code = await client.bind(name, token)
        _expect(code == 701, f"msgr: #HOLA of {name} answered {code}")
    except BaseException:
        client.connection.reset()
        raise
    return client


async def msgrSession(soak: Soak) -> None:
    """
    Log in over HTTP, bind the socket, messages (to itself, others, all), a
    meme, a file to itself, the friend list; then #DESCONECTAR or an RST.
    """
    name = _account(soak)
    rng = soak.rng
    client = None
    try:
        client = await _bound(soak, name)
        soak.online[name] = "msgr"
        token = client.token
        others: list = []
        for _ in range(rng.randint(1, 5)):
            await soak.pause(0.0, 0.4)
            op = rng.randrange(7)
            if op == 0:
                text = soak.text()
                await client.send("#MSJ", token, name, name, text)
                code = await client.answer("#MSJ", others)
                if code == 803:
                    raise Limited("#MSJ to oneself: 803")
                _expect(code == 704, f"msgr: #MSJ to oneself answered {code}")
                line = [f for f in others if f[0] == "#MSJ"]
                _expect(
                    any(f[2:5] == [name, name, escape(text)] for f in line),
                    f"msgr: the message to oneself did not come back ({line[-3:]!r})",
                )
            elif op == 1:
                peer = soak.peer(name) or "all"
                await client.send("#MSJ", token, name, peer, soak.text())
                code = await client.answer("#MSJ", others)
                _expect(code in (704, 804, 803), f"msgr: #MSJ to {peer} answered {code}")
            elif op == 2:
                content = os.urandom(rng.randint(1, 8192))
                encoded = base64.b64encode(content).decode()
                await client.send("#ARCHIVO", token, name, name, "soak.bin", RawField(encoded))
                code = await client.answer("#ARCHIVO", others)
                if code == 803:
                    raise Limited("#ARCHIVO to oneself: 803")
                _expect(code == 704, f"msgr: #ARCHIVO to oneself answered {code}")
                _expect(
                    any(f[0] == "#ARCHIVO" and f[-1] == encoded for f in others),
                    "msgr: the file to oneself did not come back",
                )
            elif op == 3:
                await client.send("#MEME", token, name, name, "gato")
                code = await client.answer("#MEME", others)
                _expect(code in (704, 803), f"msgr: #MEME answered {code}")
            elif op == 5:
                # A file to anyone: MSGR and MSRP users take it, protobuf
                # users and people on nc do not (803).
                peer = soak.peer(name)
                if peer is not None:
                    encoded = base64.b64encode(os.urandom(rng.randint(1, 20_000))).decode()
                    await client.send(
                        "#ARCHIVO", token, name, peer, "para-ti.bin", RawField(encoded)
                    )
                    code = await client.answer("#ARCHIVO", others)
                    _expect(code in (704, 803, 804), f"msgr: #ARCHIVO to {peer} answered {code}")
            elif op == 6:
                # The accounts are all friends already (set up by run.py).
                friend = rng.choice([n for n in soak.accountNames if n != name] or [name])
                await client.send("#SOLICITUD", token, name, friend)
                code = await client.answer("#SOLICITUD", others)
                _expect(
                    code in (602, 704, 803, 903),
                    f"msgr: #SOLICITUD to {friend} answered {code}",
                )
            else:
                status, body = await http(
                    soak.ports["msgr-http"], "POST", "/obtenerusuarios", soak.timeout,
                    form={"token": token},
                )
                _expect(
                    status == 200 and body.startswith(b"704"),
                    f"msgr: /obtenerusuarios answered {status} {body[:60]!r}",
                )
            others.clear()
        if soak.abrupt(0.4):
            soak.online.pop(name, None)
            client.connection.reset()
            if soak.abrupt():
                status, body = await http(
                    soak.ports["msgr-http"], "POST", "/api/logout", soak.timeout,
                    headers={"Authorization": f"Bearer {token}"},
                )
                _expect(status == 200, f"msgr: /api/logout answered {status} {body[:60]!r}")
        else:
            await client.send("#DESCONECTAR", token, name)
            code = await client.answer("#DESCONECTAR")
            _expect(code == 702, f"msgr: #DESCONECTAR answered {code}")
            soak.online.pop(name, None)
            await client.connection.readUntilClosed(soak.timeout)
    finally:
        soak.online.pop(name, None)
        if client is not None:
            client.connection.reset()
        soak.accounts.put_nowait(name)


async def msgrTakeover(soak: Soak) -> None:
    """A second socket binds the same account: the first is told and closed."""
    name = _account(soak)
    first = second = None
    try:
        first = await _bound(soak, name)
        second = await _bound(soak, name)
        await first.expect(
            lambda f: f[:4] == ["#RESPUESTA", "-", "0", "#DESCONECTAR"] and f[5:6] == ["803"]
        )
        await first.connection.readUntilClosed(soak.timeout)
        await second.send("#MSJ", second.token, name, name, "sigo aquí")
        code = await second.answer("#MSJ")
        _expect(code in (704, 803), f"msgr: #MSJ after a takeover answered {code}")
        await soak.pause(0.0, 1.0)
    finally:
        for client in (first, second):
            if client is not None:
                client.connection.reset()
        soak.accounts.put_nowait(name)


async def msgrUnbound(soak: Soak) -> None:
    """
    Before binding: garbage, a bad token, a line over the maximum, or a
    #HOLA cut short and left hanging.
    """
    client = await MsgrClient.open(soak.ports["msgr"], soak.timeout)
    connection = client.connection
    rng = soak.rng
    try:
        await _unbound(soak, client, rng.randrange(5))
    except Closed:
        # Every one of these ends with the server closing; it may do so
        # while bytes are still coming (a line over the maximum, the login
        # timeout), which can reset the connection before its answer is read.
        pass
    finally:
        await connection.end(soak.abrupt())


async def _unbound(soak: Soak, client: MsgrClient, kind: int) -> None:
    connection = client.connection
    if kind == 0:
        await connection.send(b"x" + soak.junk(0, 2048).replace(b"\n", b"") + b"\n", soak.timeout)
    elif kind == 1:
        token = base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=")
        await client.send("#HOLA", token, "m-00")
    elif kind == 2:
        # Over --msgr-max-line (2 MiB by default): refused, then closed.
        await connection.send(b"#HOLA||" + b"a" * (2 * 1024 * 1024 + 100) + b"\n", soak.timeout)
    elif kind == 3:
        connection.write(b"#HOLA||" + soak.junk(0, 40).replace(b"\n", b""))
        await soak.pause(0.2, 3.0)
        return
    else:
        await connection.send(b"\xff\xfe\n", soak.timeout)
    fields = await client.expect(lambda f: f[0] == "#RESPUESTA")
    _expect(
        fields[5:6] in (["901"], ["903"], ["803"]),
        f"msgr: an unbound socket's bad first line answered {fields!r}",
    )
    await connection.readUntilClosed(soak.timeout)


async def msgrBoundHostile(soak: Soak) -> None:
    """
    Bound: garbage lines, a line cut short left hanging, or a file line cut
    midway; then vanish.
    """
    name = _account(soak)
    rng = soak.rng
    client = None
    try:
        client = await _bound(soak, name)
        token = client.token
        kind = rng.randrange(3)
        if kind == 0:
            for _ in range(rng.randint(1, 5)):
                await client.connection.send(
                    b"#" + soak.junk(1, 512).replace(b"\n", b"") + b"\n", soak.timeout
                )
                await client.expect(lambda f: f[0] == "#RESPUESTA")
            # Still serving.
            await client.send("#MSJ", token, name, name, "después de la basura")
            code = await client.answer("#MSJ")
            _expect(code in (704, 803), f"msgr: #MSJ after garbage answered {code}")
        elif kind == 1:
            line = f"#MSJ||{token}||{name}||{name}||hola\n".encode()
            client.connection.write(line[: rng.randrange(1, len(line) - 1)])
            await soak.pause(0.2, 2.0)
        else:
            encoded = base64.b64encode(os.urandom(rng.randint(1000, 700_000)))
            line = f"#ARCHIVO||{token}||{name}||{name}||x.bin||".encode() + encoded
            client.connection.write(line[: rng.randrange(1, len(line))])
            await soak.pause(0.0, 1.0)
    finally:
        if client is not None:
            client.connection.reset()
        soak.accounts.put_nowait(name)


async def msgrBinding(soak: Soak) -> None:
    """
    The window while #HOLA waits for the database: vanish inside it, send
    lines behind it (kept and answered in order once bound), or bind the
    same account from two sockets at once (one of them wins).
    """
    name = _account(soak)
    rng = soak.rng
    port = soak.ports["msgr"]
    clients: list[MsgrClient] = []
    try:
        token = await _msgrLogin(soak, name, False)
        kind = rng.randrange(3)
        if kind == 0:
            client = await MsgrClient.open(port, soak.timeout)
            clients.append(client)
            client.connection.write(f"#HOLA||{token}||{name}\n".encode())
            await soak.pause(0.0, 0.05)
            client.connection.reset()
        elif kind == 1:
            client = await MsgrClient.open(port, soak.timeout)
            clients.append(client)
            client.connection.write(
                f"#HOLA||{token}||{name}\n#MSJ||{token}||{name}||{name}||detrás\n"
                f"#DESCONECTAR||{token}||{name}\n".encode()
            )
            others: list = []
            codes = [await client.answer(c, others) for c in ("#HOLA", "#MSJ", "#DESCONECTAR")]
            _expect(
                codes[0] == 701 and codes[1] in (704, 803) and codes[2] == 702,
                f"msgr: #HOLA, #MSJ, #DESCONECTAR in one write answered {codes}",
            )
            await client.connection.readUntilClosed(soak.timeout)
        else:
            second = await _msgrLogin(soak, name, True)
            for t in (token, second):
                client = await MsgrClient.open(port, soak.timeout)
                clients.append(client)
                client.user, client.token = name, t
            for client in clients:
                client.connection.write(f"#HOLA||{client.token}||{name}\n".encode())
            codes = [await client.answer("#HOLA") for client in clients]
            # Both may bind (the later takes over), or the later may be
            # refused while the first is still binding; never neither.
            _expect(701 in codes and set(codes) <= {701, 803}, f"msgr: two binds answered {codes}")
            await asyncio.sleep(0.2)
            winners = []
            for client in clients:
                try:
                    await client.send("#MSJ", client.token, name, name, "¿quién?")
                    if await client.answer("#MSJ") == 704:
                        winners.append(client)
                except (Closed, NoAnswer):
                    pass
            _expect(len(winners) == 1, f"msgr: {len(winners)} of two sockets of {name} are bound")
    finally:
        for client in clients:
            client.connection.reset()
        soak.accounts.put_nowait(name)


async def msgrDeaf(soak: Soak) -> None:
    """An MSGR socket that binds and never reads again, while others write to it."""
    name = _account(soak)
    client = None
    try:
        token = await _msgrLogin(soak, name, False)
        client = MsgrClient(
            await Connection.open(soak.ports["msgr"], soak.timeout, receiveBuffer=4096),
            soak.timeout,
        )
        code = await client.bind(name, token)
        _expect(code == 701, f"msgr: #HOLA of {name} answered {code}")
        soak.online[name] = "msgr"
        await soak.pause(1.0, 5.0)
    finally:
        soak.online.pop(name, None)
        if client is not None:
            client.connection.reset()
        soak.accounts.put_nowait(name)


#: The line of L{msgrBadLineFlood}: three bytes, an unknown command.
FLOOD_LINE = b"#Q\n"
#: How many of them one flood sends.
FLOOD_LINES = 2000
#: Floods sent so far, for L{floodLogProblem}.
floods = 0


async def msgrBadLineFlood(soak: Soak) -> None:
    """
    Bound: thousands of bad 3-byte lines in one write. Every one is answered
    903 in order and the socket still serves; the server logs the first few
    only (L{floodLogProblem}).
    """
    global floods
    name = _account(soak)
    client = None
    try:
        client = await _bound(soak, name)
        floods += 1
        await client.connection.send(FLOOD_LINE * FLOOD_LINES, soak.timeout)
        for _ in range(FLOOD_LINES):
            fields = await client.expect(lambda f: f[0] == "#RESPUESTA")
            _expect(
                fields[3:] == ["#Q", name, "903"],
                f"msgr: a bad line of a flood answered {fields!r}",
            )
        await client.send("#MSJ", client.token, name, name, "tras la inundación")
        code = await client.answer("#MSJ")
        _expect(code in (704, 803), f"msgr: #MSJ after a flood answered {code}")
    finally:
        if client is not None:
            await client.connection.end(soak.abrupt())
        soak.accounts.put_nowait(name)


def floodLogProblem(log: str) -> str | None:
    """
    What is wrong with the log lines of the bad-line floods, if anything:
    one connection's error lines are limited (10 a minute, then a summary),
    so each flood may leave a few, never one a line.
    """
    lines = log.count("MSGR #Q from ")
    bound = 2 * 10 * floods  # two windows at most: a flood takes seconds
    if lines > bound:
        return (
            f"{floods} floods of {FLOOD_LINES} bad lines left {lines} log lines"
            f" (at most {bound} expected)"
        )
    return None
