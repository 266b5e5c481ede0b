"""
The behaviours of MSGR HTTP clients: hostile requests, guessing,
mass registration, slowloris.
"""

from __future__ import annotations

import asyncio

from soak.wire import Closed, Connection, NoAnswer, http
from soak.behaviours.common import GHOSTS, Soak, _expect
from soak.behaviours.msgr import _account, _msgrLogin


async def httpHostile(soak: Soak) -> None:
    """
    Garbage, a request cut short and left hanging, a huge body abandoned
    midway, a login whose client is gone before the answer; and the
    documented errors (bad JSON, no token, unknown path, wrong method, body
    too large, failed login).
    """
    port = soak.ports["msgr-http"]
    rng = soak.rng
    kind = rng.randrange(10)
    if kind == 9:
        # A whole login, then gone before the password is checked.
        connection = await Connection.open(port, soak.timeout)
        body = f"usr={rng.choice(soak.accountNames)}&pass={soak.password}".encode()
        connection.write(
            b"POST /status HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode() + body
        )
        await soak.pause(0.0, 0.05)
        connection.reset()
        return
    if kind <= 2:
        connection = await Connection.open(port, soak.timeout)
        try:
            if kind == 0:
                connection.write(soak.junk(1, 4096))
                await connection.drainFor(rng.uniform(0.0, 1.0))
            elif kind == 1:
                request = (
                    b"POST /status HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    b"Content-Type: application/x-www-form-urlencoded\r\n"
                    b"Content-Length: 20\r\n\r\nusr=m-00&pass=xx"
                )
                connection.write(request[: rng.randrange(1, len(request))])
                await soak.pause(0.2, 3.0)
            else:
                connection.write(
                    b"POST /api/login HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    b"Content-Type: application/json\r\n"
                    b"Content-Length: 100000000\r\n\r\n"
                )
                sent, goal = 0, rng.randint(1, 600_000)
                try:
                    while sent < goal:
                        await connection.send(b"{" * min(65536, goal - sent), 2.0)
                        sent += 65536
                except NoAnswer:
                    pass
        except Closed:
            pass  # the server may close such a client, answered or not
        finally:
            await connection.end(soak.abrupt(0.7))
        return
    if kind == 3:
        status, body = await http(port, "POST", "/api/login", soak.timeout, body=b"{not json",
                                  headers={"Content-Type": "application/json"})
        expected = (400, b'"code": 901')
    elif kind == 4:
        status, body = await http(port, "POST", "/api/friends", soak.timeout, document={})
        expected = (401, b'"code": 901')
    elif kind == 5:
        status, body = await http(port, "GET", f"/nada{rng.randrange(100)}", soak.timeout)
        expected = (404, b"404")
    elif kind == 6:
        status, body = await http(port, "PUT", "/status", soak.timeout, body=b"")
        expected = (405, b"901")
    elif kind == 7:
        status, body = await http(port, "POST", "/usuariocrear", soak.timeout,
                                  form={"usr": "x", "pass": "y" * 70_000})
        expected = (400, b"902")
    else:
        status, body = await http(port, "POST", "/status", soak.timeout,
                                  form={"usr": rng.choice(GHOSTS), "pass": "wrong"})
        _expect(status == 200 and _code(body) in (b"801", b"802"),
                f"msgr: a failed login answered {status} {body[:60]!r}")
        return
    _expect(
        status == expected[0] and expected[1] in body,
        f"http: expected {expected}, got {status} {body[:80]!r}",
    )


def _code(body: bytes) -> bytes:
    """The MSGR code of a form answer: what comes before its reason, if any."""
    return body.split(b"||", 1)[0]


async def httpConcurrentGuessing(soak: Soak) -> None:
    """
    10 to 30 wrong logins of one fresh name sent at once (issue 11): each is
    answered 801 or 802, and at most 5 (--msgr-lockout-failures) are
    checked, however many arrive together.
    """
    port = soak.ports["msgr-http"]
    name = f"gx-{soak.rng.randrange(36**6)}"
    guesses = [
        http(port, "POST", "/status", soak.timeout, form={"usr": name, "pass": f"mala{i}"})
        for i in range(soak.rng.randint(10, 30))
    ]
    answers = await asyncio.gather(*guesses)
    bodies = [_code(body) for status, body in answers if status == 200]
    _expect(
        len(bodies) == len(answers) and set(bodies) <= {b"801", b"802"},
        f"msgr: concurrent guesses answered {sorted(set(answers))!r}",
    )
    _expect(
        bodies.count(b"801") <= 5,
        f"msgr: {bodies.count(b'801')} of {len(bodies)} concurrent guesses were checked",
    )


async def httpMassRegistration(soak: Soak) -> None:
    """
    A burst of 5 to 20 registrations of fresh names from one address (issue
    11), while an existing account logs in: each registration is answered
    702 or 803 (--msgr-register-per-ip: every soak client is 127.0.0.1, so
    the limit is soon reached), and the login is answered 701.
    """
    port = soak.ports["msgr-http"]
    name = _account(soak)
    try:
        squats = [
            http(
                port, "POST", "/usuariocrear", soak.timeout,
                form={"usr": f"sq-{soak.rng.randrange(36**6)}", "pass": "x"},
            )
            for _ in range(soak.rng.randint(5, 20))
        ]
        token, *answers = await asyncio.gather(_msgrLogin(soak, name, False), *squats)
        _expect(
            all(status == 200 and _code(body) in (b"702", b"803") for status, body in answers),
            f"msgr: a burst of registrations answered {sorted(set(answers))!r}",
        )
        status, body = await http(
            port, "POST", "/api/logout", soak.timeout,
            headers={"Authorization": f"Bearer {token}"},
        )
        _expect(status == 200, f"msgr: /api/logout answered {status} {body[:60]!r}")
    finally:
        soak.accounts.put_nowait(name)


async def httpSlowloris(soak: Soak) -> None:
    """
    A login request trickled in one byte every one to two seconds
    (slowloris): the server answers 408 with the code 803 and closes at
    --http-request-timeout (10 s), however long the bytes keep coming.
    """
    connection = await Connection.open(soak.ports["msgr-http"], soak.timeout)
    request = (
        b"POST /status HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\n"
        b"Content-Length: 20\r\n\r\nusr=m-00&pass=xxxxxx"
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        for i in range(len(request)):
            await connection.send(request[i : i + 1], soak.timeout)
            if await connection.drainFor(soak.rng.uniform(1.0, 2.0)):
                break
            _expect(
                loop.time() - started < soak.timeout,
                f"http: a request trickled in for {soak.timeout:g}s was not cut off",
            )
        await connection.readUntilClosed(soak.timeout)
    except Closed:
        pass  # closed while a byte was on its way: the answer came before
    finally:
        await connection.end(True)
    answer = bytes(connection.head)
    _expect(
        answer.startswith(b"HTTP/1.1 408 ") and answer.endswith(b"\r\n\r\n803"),
        f"http: a trickled request answered {answer[:80]!r}",
    )
