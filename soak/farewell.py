"""
The last check of the soak: SIGTERM while clients are still connected, some
of them reading, some not, one in the middle of receiving a file. Every
reader is told goodbye in its protocol's terms (docs/running.md,
"Stopping"), the others are cut off, and the server exits within its
shutdown grace.
"""

from __future__ import annotations

import asyncio
import time

from chatd.msrp import codec as msrp

from soak.server import SoakServer
from soak.wire import (
    Closed,
    Connection,
    MsgrClient,
    MsrpClient,
    NoAnswer,
    ProtobufClient,
    SoakFailure,
    messageRequest,
    msgrLogin,
)

#: What the server answers while it stops, per protocol.
PROTOBUF_GOODBYE = "the server is shutting down"
MSRP_GOODBYE = "El servidor se está apagando.".encode()


async def _msrpLogin(port: int, name: str, timeout: float, receiveBuffer: int = 0) -> MsrpClient:
    client = await MsrpClient.open(port, timeout, receiveBuffer)
    await client.send(name.encode() + msrp.encodeListRequest())
    await client.expect(lambda f: type(f) is msrp.ClientList)
    return client


async def _closedAfter(connection: Connection, timeout: float) -> None:
    await connection.readUntilClosed(timeout)


async def farewell(
    server: SoakServer, ports, msgrName: str, password: str, timeout: float, grace: float
) -> tuple[list[str], float, int | None, int]:
    """
    Connect the lingerers, SIGTERM the server, and check what each sees.

    @return: the problems found, how long the server took to exit, its
        exit status (C{None}: it did not exit and was killed), and how many
        clients were connected.
    """
    problems: list[str] = []
    checks: dict[str, asyncio.Future] = {}
    clients: list[Connection] = []
    budget = grace + timeout

    # A protobuf reader: one FAILED_OPERATION with the reason, then closed.
    pb = await ProtobufClient.open(ports["protobuf"], timeout)
    clients.append(pb.connection)
    if (await pb.login("pb#2")).code != 1:
        problems.append("farewell: the protobuf reader could not log in")

    async def pbGoodbye(client: ProtobufClient = pb) -> None:
        response = await client.response(budget)
        if response.code != 0 or response.response != PROTOBUF_GOODBYE:
            raise SoakFailure(f"got {response.response!r}")
        await _closedAfter(client.connection, budget)

    # A protobuf client that stopped reading long ago, with far more waiting
    # for it than the kernel's buffers hold: the server has to cut it off
    # when the grace is over.
    deaf = ProtobufClient(
        await Connection.open(ports["protobuf"], timeout, receiveBuffer=4096), timeout
    )
    clients.append(deaf.connection)
    await deaf.login("pb#3")
    talker = await ProtobufClient.open(ports["protobuf"], timeout)
    clients.append(talker.connection)
    await talker.login("pb#4")
    for _ in range(60):
        response = await talker.request(messageRequest("pb#3", "x" * 200_000))
        if response.code != 1:
            break  # refused: the server's queue limit for pb#3 is reached

    # An MSRP reader: an ERROR with the reason, then closed.
    ms = await _msrpLogin(ports["msrp"], "ms#2", timeout)
    clients.append(ms.connection)

    async def msrpGoodbye(client: MsrpClient) -> None:
        # The sender of the file may first hear that its receiver is gone.
        await client.expect(lambda f: type(f) is msrp.Error and f.text == MSRP_GOODBYE, budget)
        await _closedAfter(client.connection, budget)

    # An MSRP file in flight: the receiver does not read, so the sender is
    # held by backpressure in the middle of it. The receiver is cut off (no
    # ERROR can be written inside content); the sender is told goodbye.
    receiver = await _msrpLogin(ports["msrp"], "ms#3", timeout, receiveBuffer=4096)
    sender = await _msrpLogin(ports["msrp"], "ms#4", timeout)
    clients += [receiver.connection, sender.connection]
    size = 64 * 1024 * 1024
    await sender.send(msrp.encodeFileHeader(b"ms#3", b"grande.bin", size, 0, b""))
    try:
        for _ in range(size // 65536 - 1):
            await sender.connection.send(b"\x00" * 65536, 1.0)
    except NoAnswer:
        pass

    async def receiverCut() -> None:
        got = 0
        while True:
            try:
                frame = await receiver.frame(budget)
            except Closed:
                break
            if type(frame) is msrp.FileEnd:
                raise SoakFailure("the receiver of a file cut by the shutdown got it whole")
            if type(frame) is msrp.FileChunk:
                got += len(frame.data)
        if got >= size:
            raise SoakFailure("the receiver of a file cut by the shutdown got every byte")

    # MSGR: a bound socket and one that never sent #HOLA.
    token = await msgrLogin(ports["msgr-http"], msgrName, password, timeout, useJson=False)
    mg = await MsgrClient.open(ports["msgr"], timeout)
    clients.append(mg.connection)
    if await mg.bind(msgrName, token) != 701:
        problems.append("farewell: the MSGR socket could not bind")
    unbound = await MsgrClient.open(ports["msgr"], timeout)
    clients.append(unbound.connection)

    async def msgrGoodbye(client: MsgrClient, user: str) -> None:
        expected = ["#RESPUESTA", "-", "0", "#DESCONECTAR", user, "803"]
        await client.expect(lambda f: f == expected, budget)
        await _closedAfter(client.connection, budget)

    # An HTTP request cut short.
    http = await Connection.open(ports["msgr-http"], timeout)
    clients.append(http)
    http.write(b"POST /status HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 50\r\n\r\nusr=")

    checks = {
        "protobuf reader": asyncio.ensure_future(pbGoodbye()),
        "protobuf talker": asyncio.ensure_future(pbGoodbye(talker)),
        "msrp reader": asyncio.ensure_future(msrpGoodbye(ms)),
        "msrp sender mid-file": asyncio.ensure_future(msrpGoodbye(sender)),
        "msrp receiver mid-file": asyncio.ensure_future(receiverCut()),
        "msgr bound socket": asyncio.ensure_future(msgrGoodbye(mg, msgrName)),
        "msgr unbound socket": asyncio.ensure_future(msgrGoodbye(unbound, "-")),
        "http request cut short": asyncio.ensure_future(_closedAfter(http, budget)),
    }
    await asyncio.sleep(0.5)  # let every request above reach the server
    started = time.monotonic()
    loop = asyncio.get_running_loop()
    status = await loop.run_in_executor(None, server.terminate, grace + 30)
    took = time.monotonic() - started
    for name, check in checks.items():
        try:
            await asyncio.wait_for(check, timeout)
        except (SoakFailure, NoAnswer, asyncio.TimeoutError) as e:
            problems.append(f"farewell, {name}: {type(e).__name__}: {e}")
        except (Closed, OSError) as e:
            problems.append(f"farewell, {name}: closed before its goodbye ({e})")
    for connection in clients:
        connection.reset()
    return problems, took, status, len(clients)
