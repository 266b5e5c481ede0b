"""
MSGR accounts for the load generator: HTTP logins (the token a chat socket
binds with), registering over HTTP, and seeding a local database.

HTTP is blocking C{http.client}, one keep-alive connection per thread: a
login costs the server a scrypt hash (tens of milliseconds), so the client's
cost does not matter here.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from chatd.loadgen.wire import LoginFailed

_NS = 1_000_000_000


def post(
    connection: http.client.HTTPConnection, path: str, body: dict
) -> tuple[int, dict]:
    """POST C{body} as JSON to C{path}; the HTTP status and the JSON answer."""
    data = json.dumps(body).encode("utf-8")
    connection.request(
        "POST", path, body=data, headers={"Content-Type": "application/json"}
    )
    response = connection.getresponse()
    raw = response.read()
    try:
        answer = json.loads(raw)
    except ValueError:
        answer = {"code": None, "body": raw[:200].decode("utf-8", "replace")}
    return response.status, answer


def login(connection: http.client.HTTPConnection, name: str, password: str) -> str:
    """
    Log C{name} in (C{POST /api/login}); its token.

    @raise LoginFailed: with the code, when refused.
    """
    status, answer = post(connection, "/api/login", {"user": name, "password": password})
    if answer.get("code") != 701 or "token" not in answer:
        raise LoginFailed(f"HTTP {status}, code {answer.get('code')}")
    return answer["token"]


def register(address: tuple[str, int], names: list[str], password: str) -> dict:
    """
    Register C{names} over HTTP (C{POST /api/register}): for a deployment
    whose database the load generator cannot seed. A name taken already
    (C{803}) is counted as C{existing}: its password must be C{password}.
    """
    connection = http.client.HTTPConnection(*address, timeout=60)
    created = existing = 0
    errors = []
    try:
        for name in names:
            status, answer = post(connection, "/api/register", {"user": name, "password": password})
            if answer.get("code") == 702:
                created += 1
            elif answer.get("code") == 803:
                existing += 1
            else:
                errors.append(f"{name}: HTTP {status}, {answer}")
    finally:
        connection.close()
    return {"created": created, "existing": existing, "errors": errors}


def seedDatabase(path: str, names: list[str], password: str) -> None:
    """
    Create the accounts C{names} with C{password} directly in the chatd
    database at C{path} (made or migrated first), for a server that has not
    started yet: one scrypt hash for all of them, instead of one per HTTP
    registration. Existing accounts of those names are replaced.
    """
    from chatd.msgr.accounts import connect, hashPassword, prepareDatabase
    from chatd.presence import nameKey, nameSkeleton

    prepareDatabase(path)
    hashed = hashPassword(password)
    connection = connect(path)
    try:
        connection.execute("BEGIN")
        connection.executemany(
            "INSERT OR REPLACE INTO accounts (name_key, name, password, skeleton)"
            " VALUES (?, ?, ?, ?)",
            [(nameKey(name), name, hashed, nameSkeleton(name)) for name in names],
        )
        connection.execute("COMMIT")
    finally:
        connection.close()


def loginMany(
    address: tuple[str, int],
    names: list[str],
    password: str,
    threads: int = 8,
    timeout: float = 120.0,
) -> dict:
    """
    Log every name in over HTTP with C{threads} concurrent connections.

    @return: C{tokens} (name to token), C{errors}, C{elapsed} seconds and
        each login's C{login_seconds}.
    """
    local = threading.local()
    tokens: dict[str, str] = {}
    errors: list[str] = []
    seconds: list[float] = []

    def one(name: str) -> None:
        if not hasattr(local, "connection"):
            local.connection = http.client.HTTPConnection(*address, timeout=timeout)
        began = time.monotonic()
        try:
            tokens[name] = login(local.connection, name, password)
            seconds.append(time.monotonic() - began)
        except (LoginFailed, OSError, http.client.HTTPException) as e:
            errors.append(f"msgr-http {name}: {e}")
            local.connection.close()
            del local.connection

    start = time.monotonic()
    with ThreadPoolExecutor(max(1, threads)) as pool:
        list(pool.map(one, names))
    return {
        "tokens": tokens,
        "errors": errors,
        "elapsed": time.monotonic() - start,
        "login_seconds": seconds,
    }


def loginLoop(
    address: tuple[str, int],
    names: list[str],
    password: str,
    threads: int,
    start: float,
    warm: float,
    end: float,
) -> dict:
    """
    From C{start} to C{end} (C{time.monotonic} seconds), C{threads}
    connections log in over and over, each with its own names in turn;
    logins that finish between C{warm} and C{end} are counted.
    """
    counted = [0] * threads
    latencies: list[list[int]] = [[] for _ in range(threads)]
    errors: list[str] = []

    def loop(index: int) -> None:
        mine = names[index::threads] or names
        connection = http.client.HTTPConnection(*address, timeout=60)
        while time.monotonic() < start:
            time.sleep(max(0.0, min(0.01, start - time.monotonic())))
        turn = 0
        try:
            while True:
                began = time.monotonic_ns()
                if began >= end * _NS:
                    break
                name = mine[turn % len(mine)]
                turn += 1
                try:
                    login(connection, name, password)
                except (LoginFailed, OSError, http.client.HTTPException) as e:
                    errors.append(f"{name}: {e}")
                    connection.close()
                    connection = http.client.HTTPConnection(*address, timeout=60)
                    continue
                done = time.monotonic_ns()
                if warm * _NS <= done < end * _NS:
                    counted[index] += 1
                    latencies[index].append(done - began)
        finally:
            connection.close()

    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    return {
        "logins": sum(counted),
        "seconds": end - warm,
        "latencies_ns": [value for each in latencies for value in each],
        "errors": errors[:10],
        "error_count": len(errors),
    }


__all__ = ["post", "login", "register", "seedDatabase", "loginMany", "loginLoop"]
