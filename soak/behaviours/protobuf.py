"""
The behaviours of protobuf chat clients, well-behaved and hostile.
"""

from __future__ import annotations

import random

from chatd.protobuf.framing import DEFAULT_MAX_FRAME, encodeVarint

from soak.wire import (
    Closed,
    Connection,
    ProtobufClient,
    Request,
    infoRequest,
    listRequest,
    loginRequest,
    messageRequest,
    protobufFrame,
    statusRequest,
)
from soak import wire
from soak.behaviours.common import (
    FAILED,
    Limited,
    SUCCESSFUL,
    Skip,
    Soak,
    _expect,
    _expectPb,
    isLimit,
)


async def pbSession(soak: Soak) -> None:
    """Log in, a few requests, then close (FIN) or vanish (RST)."""
    name = soak.pbName()
    client = await ProtobufClient.open(soak.ports["protobuf"], soak.timeout)
    rng = soak.rng
    try:
        _expectPb(await client.login(name), Request.USER_LOGIN, SUCCESSFUL, f"welcome, {name}")
        soak.online[name] = "protobuf"
        for _ in range(rng.randint(1, 6)):
            await soak.pause(0.0, 0.4)
            op = rng.randrange(7)
            if op == 0:
                users = await client.users()
                _expect(name in users, f"protobuf: {name} is not in its own list")
            elif op == 1:
                # No 0x00 after it: the server's short wait ends the request.
                response = await client.request(listRequest(), terminator=False)
                _expectPb(response, Request.CONNECTED_USERS, SUCCESSFUL)
            elif op == 2:
                response = await client.request(infoRequest(name))
                _expectPb(response, Request.USER_INFORMATION, SUCCESSFUL, f"{name} is online")
            elif op == 3:
                status = rng.choice(["ACTIVO", "OCUPADO", "INACTIVO"])
                response = await client.request(statusRequest(name, status))
                _expectPb(response, Request.STATUS_CHANGE, SUCCESSFUL, f"status is now {status}")
            elif op == 4:
                text = soak.text()
                response = await client.request(messageRequest(name, text))
                _expectPb(response, Request.SEND_MESSAGE, SUCCESSFUL, f"delivered to {name}")
                await client.delivery(
                    lambda d: d.messg.sender == name and d.messg.text == text
                    and d.messg.receiver == name
                )
            elif op == 5:
                peer = soak.peer(name)
                if peer is None:
                    continue
                response = await client.request(messageRequest(peer, soak.text()))
                if response.code == SUCCESSFUL:
                    _expectPb(response, Request.SEND_MESSAGE, SUCCESSFUL, f"delivered to {peer}")
                else:
                    _expect(
                        response.response.startswith("not delivered:")
                        or isLimit(response.response),
                        f"protobuf: a message to {peer} answered {response.response!r}",
                    )
            else:
                response = await client.request(messageRequest("all", soak.text()))
                _expectPb(response, Request.SEND_MESSAGE, SUCCESSFUL)
                _expect(
                    response.response.startswith("delivered to "),
                    f"protobuf: a broadcast answered {response.response!r}",
                )
    finally:
        soak.online.pop(name, None)
        await client.connection.end(soak.abrupt(0.4))


async def pbHalfClose(soak: Soak) -> None:
    """
    Log in and ask for the list with no 0x00 after it, then shut down the
    sending side (as `nc -q 1` does): both answers come, at once (no
    request is left waiting for bytes that cannot come), then the server
    closes.
    """
    name = soak.pbName()
    client = await ProtobufClient.open(soak.ports["protobuf"], soak.timeout)
    try:
        last = listRequest()
        if wire.protobufFraming != "raw":
            last = protobufFrame(last)
        client.connection.write(protobufFrame(loginRequest(name)) + last)
        client.connection.writer.write_eof()
        login = await client.response()
        if login.code == FAILED and isLimit(login.response):
            raise Limited(login.response)
        _expectPb(login, Request.USER_LOGIN, SUCCESSFUL, f"welcome, {name}")
        users = await client.response()
        _expectPb(users, Request.CONNECTED_USERS, SUCCESSFUL)
        _expect(
            name in [u.username for u in users.users.users],
            f"protobuf: {name} is not in the list it asked for before half-closing",
        )
        await client.connection.readUntilClosed(soak.timeout)
    finally:
        await client.connection.end(True)


async def pbPartial(soak: Soak) -> None:
    """A valid login cut at a random point, left hanging, then closed."""
    connection = await Connection.open(soak.ports["protobuf"], soak.timeout)
    try:
        frame = protobufFrame(loginRequest(soak.pbName()))
        connection.write(frame[: soak.rng.randrange(1, len(frame))])
        await soak.pause(0.2, 3.0)
    finally:
        await connection.end(soak.abrupt())


async def pbGarbage(soak: Soak) -> None:
    """Random bytes in a few writes; whatever comes back is drained."""
    connection = await Connection.open(soak.ports["protobuf"], soak.timeout)
    try:
        for _ in range(soak.rng.randint(1, 5)):
            connection.write(soak.junk(1, 4096))
            await soak.pause(0.0, 0.2)
        await connection.drainFor(soak.rng.uniform(0.0, 0.5))
    finally:
        await connection.end(soak.abrupt())


async def pbOversized(soak: Soak) -> None:
    """
    A length far over the maximum frame (of a field, or the delimited
    prefix), a request really over it, or a varint longer than ten bytes
    (malformed: the connection goes on).
    """
    client = await ProtobufClient.open(soak.ports["protobuf"], soak.timeout)
    connection = client.connection
    rng = soak.rng
    delimited = wire.protobufFraming == "delimited"
    try:
        kind = rng.randrange(3)
        if kind == 0:
            # Up to a terabyte announced: as the delimited prefix, or as the
            # length of newuser.
            huge = encodeVarint(rng.randint(DEFAULT_MAX_FRAME + 1, 1 << 40))
            await connection.send(huge if delimited else b"\x08\x00\x12" + huge, soak.timeout)
            response = await client.response()
        elif kind == 1:
            # A request really larger than the maximum: two string fields.
            # The server closes while bytes are still coming, which may reset
            # the connection before its answer is read: an answer is not
            # required then, only the close.
            payload = (
                b"\x08\x00\x12" + encodeVarint(200_000) + b"\x0a" * 200_000
                + b"\x1a" + encodeVarint(100_000) + b"\x0a" * 100_000
            )
            connection.write(protobufFrame(payload))
            try:
                response = await client.response()
            except Closed:
                return
        if kind in (0, 1):
            _expect(
                response.code == FAILED and "larger than the maximum frame" in response.response,
                f"protobuf: an oversized request answered {response.response!r}",
            )
            await connection.readUntilClosed(soak.timeout)
            return
        await connection.send(b"\xff" * 11 if delimited else b"\x08" + b"\xff" * 11, soak.timeout)
        response = await client.response()
        _expect(
            response.code == FAILED and response.response.startswith("malformed request"),
            f"protobuf: an 11-byte varint answered {response.response!r}",
        )
        # The connection goes on: a login is served.
        name = soak.pbName()
        _expectPb(await client.login(name), Request.USER_LOGIN, SUCCESSFUL, f"welcome, {name}")
    finally:
        await connection.end(soak.abrupt())


async def pbLoginThenCut(soak: Soak) -> None:
    """Log in, then a message cut at a random point, then vanish (no logout)."""
    name = soak.pbName()
    client = await ProtobufClient.open(soak.ports["protobuf"], soak.timeout)
    try:
        _expectPb(await client.login(name), Request.USER_LOGIN, SUCCESSFUL, f"welcome, {name}")
        frame = protobufFrame(messageRequest(soak.peer(name) or name, soak.text()))
        client.connection.write(frame[: soak.rng.randrange(1, len(frame))])
        await soak.pause(0.0, 2.0)
    finally:
        await client.connection.end(soak.abrupt(0.8))


async def pbDeaf(soak: Soak) -> None:
    """
    Log in, then never read again while asking for user lists and receiving
    others' messages; vanish after a few seconds.
    """
    name = soak.pbName()
    client = ProtobufClient(
        await Connection.open(soak.ports["protobuf"], soak.timeout, receiveBuffer=4096),
        soak.timeout,
    )
    try:
        _expectPb(await client.login(name), Request.USER_LOGIN, SUCCESSFUL, f"welcome, {name}")
        soak.online[name] = "protobuf"
        for _ in range(soak.rng.randint(20, 300)):
            client.connection.write(protobufFrame(listRequest()))
        await soak.pause(1.0, 5.0)
    finally:
        soak.online.pop(name, None)
        client.connection.reset()


# Cyrillic letters that look like Latin ones (UTS #39 confusables).
_CYRILLIC = {"a": "\u0430", "c": "\u0441", "e": "\u0435", "o": "\u043e", "p": "\u0440", "x": "\u0445"}


def _lookalike(name: str, rng: random.Random) -> str:
    """C{name} with one character in another width or script."""
    spots = [i for i, ch in enumerate(name) if ch in _CYRILLIC]
    if spots and rng.random() < 0.5:
        i = rng.choice(spots)
        return name[:i] + _CYRILLIC[name[i]] + name[i + 1 :]
    spots = [i for i, ch in enumerate(name) if "!" <= ch <= "~"]
    i = rng.choice(spots)
    return name[:i] + chr(ord(name[i]) + 0xFEE0) + name[i + 1 :]  # full width


async def pbLookalike(soak: Soak) -> None:
    """
    Log in as a look-alike of someone online (a character in full width or
    in Cyrillic), or as their name with an invisible suffix: refused, as in
    use (or as an account's) or as breaking the name rule.
    """
    target = soak.peer("")
    if target is None:
        raise Skip()
    rng = soak.rng
    invisible = rng.random() < 0.3
    name = target + rng.choice("\u034f\u3164\u2800") if invisible else _lookalike(target, rng)
    client = await ProtobufClient.open(soak.ports["protobuf"], soak.timeout)
    try:
        response = await client.login(name)
        text = response.response
        if response.code == FAILED and isLimit(text):
            raise Limited(text)
        if invisible:
            _expect(
                response.code == FAILED and "which names may not have (RFC 8265)" in text,
                f"protobuf: {name!a} answered {text!r}",
            )
        else:
            # Let in only when the target left in the meantime.
            _expect(
                (response.code == FAILED and text.endswith(
                    ("is already online", "who is online", "belongs to a registered account")
                ))
                or (response.code == SUCCESSFUL and target not in soak.online),
                f"protobuf: a look-alike of {target!a}, {name!a}, answered {text!r}",
            )
    finally:
        await client.connection.end(soak.abrupt())


async def pbSlowReadersVanish(soak: Soak) -> None:
    """
    Slow readers that disconnect: 2 to 4 clients log in and never read
    again, one writer feeds them 10 to 30 messages of 16 KiB (as fast as
    the rate lets it), more than their socket buffers take, so the server
    holds bytes for them; then they vanish (RST) and the writer leaves. What the server held for them must go with them,
    without waiting for the garbage collector (check (h)).
    """
    rng = soak.rng
    writerName = soak.pbName()
    writer = await ProtobufClient.open(soak.ports["protobuf"], soak.timeout)
    readers: list[tuple[str, ProtobufClient]] = []
    try:
        _expectPb(
            await writer.login(writerName), Request.USER_LOGIN, SUCCESSFUL,
            f"welcome, {writerName}",
        )
        for _ in range(rng.randint(2, 4)):
            name = soak.pbName()
            reader = ProtobufClient(
                await Connection.open(soak.ports["protobuf"], soak.timeout, receiveBuffer=4096),
                soak.timeout,
            )
            readers.append((name, reader))
            _expectPb(await reader.login(name), Request.USER_LOGIN, SUCCESSFUL, f"welcome, {name}")
        # The readers are not in soak.online: nobody else counts on them.
        text = "s" * (16 * 1024)
        for _ in range(rng.randint(10, 30)):
            name = rng.choice(readers)[0]
            response = await writer.request(messageRequest(name, text))
            if response.code == SUCCESSFUL:
                _expectPb(response, Request.SEND_MESSAGE, SUCCESSFUL, f"delivered to {name}")
            elif isLimit(response.response):
                await soak.pause(0.05, 0.1)  # the rate: slow down
            else:
                # Past --max-sendq the reader is cut off: "not delivered".
                _expect(
                    response.response.startswith("not delivered:"),
                    f"protobuf: a message to a slow reader answered {response.response!r}",
                )
    finally:
        for _, reader in readers:
            reader.connection.reset()
        await writer.connection.end(soak.abrupt(0.5))


def _courseField(field: int, data: bytes) -> bytes:
    return bytes((field << 3 | 2,)) + encodeVarint(len(data)) + data


async def pbCourseSession(soak: Soak) -> None:
    """
    A client of the course revision (1-based, client B's habits: 0x00 after
    every request): log in, list, ask about itself, write to itself, then
    close or vanish. Every response must follow the revision's rules: a
    code, no 0x00 inside and one after, under 1,024 bytes. Deliveries from
    others (broadcasts) arrive in between and are checked the same way.
    """
    name = soak.pbName()
    me = name.encode()
    connection = await Connection.open(soak.ports["protobuf"], soak.timeout)
    pending = bytearray()

    async def next(option: int, wanted: bytes = b"") -> bytes:
        # The next message with this option (and bytes), split on the 0x00
        # that ends each: the revision puts none inside a message.
        while True:
            while 0 not in pending:
                pending.extend(await connection.read(soak.timeout))
            end = pending.index(0)
            frame = bytes(pending[:end])
            del pending[: end + 1]
            _expect(len(frame) + 1 < 1024, f"course: a response of {len(frame) + 1} bytes")
            _expect(
                frame[2:4] in (b"\x10\x01", b"\x10\x02") or frame[:2] in (b"\x10\x01",),
                f"course: a response without its code: {frame[:40].hex(' ')}",
            )
            if frame[:2] == bytes((8, option)) and wanted in frame:
                return frame

    try:
        await connection.send(b"\x08\x01" + _courseField(2, _courseField(1, me)) + b"\x00", soak.timeout)
        frame = await next(1)
        _expect(frame.startswith(b"\x08\x01\x10\x02"), f"course: login answered {frame[:40].hex(' ')}")
        await connection.send(b"\x08\x02\x00", soak.timeout)
        frame = await next(2)
        # A list over 1,024 bytes leaves the last users out, and says so.
        _expect(
            frame.startswith(b"\x08\x02\x10\x02") and (me in frame or b" left out (" in frame),
            "course: not in its own list",
        )
        await connection.send(b"\x08\x03" + _courseField(3, _courseField(1, me)) + b"\x00", soak.timeout)
        frame = await next(3)
        _expect(frame.startswith(b"\x08\x03\x10\x02"), f"course: information answered {frame[:40].hex(' ')}")
        text = f"hola {soak.rng.randrange(10**6)}".encode()
        await connection.send(
            b"\x08\x05" + _courseField(5, _courseField(1, me) + _courseField(2, me) + _courseField(3, text))
            + b"\x00",
            soak.timeout,
        )
        frame = await next(5, text)
        _expect(frame.startswith(b"\x08\x05\x10\x02\x32"), f"course: a delivery {frame[:40].hex(' ')}")
    finally:
        await connection.end(soak.abrupt(0.4))
