"""
Residents: clients that stay online through the whole soak.
"""

from __future__ import annotations

import asyncio

from chatd.msrp import codec as msrp

from soak.wire import Connection, NoAnswer, ProtobufClient, Request, limitSeen
from soak.behaviours.common import SUCCESSFUL, Soak, _expectPb
from soak.behaviours.msrp import _msrpLogin
from soak.behaviours.msgr import _bound


class Resident:
    """
    A client that logs in before the soak and stays, reading everything,
    while the soak's clients message it, send it files and vanish. What it
    still holds at the end shows state that long-lived sessions keep for
    clients long gone.
    """

    def __init__(self, name: str, connection: Connection, reader) -> None:
        self.name = name
        self.connection = connection
        self.failure: str | None = None
        self.task = asyncio.ensure_future(self._read(reader))

    async def _read(self, reader) -> None:
        try:
            while True:
                try:
                    await reader()
                except NoAnswer:
                    continue
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - reported, not raised
            if not limitSeen([self.connection]):
                self.failure = f"{type(e).__name__}: {e}"

    async def leave(self) -> str | None:
        """Log out (close); why it could not stay, if it could not."""
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.connection.close()
        return self.failure


async def startResidents(soak: Soak, msgrAccount: str) -> list[Resident]:
    """
    Two protobuf clients, two MSRP clients (one ACKs every file it receives,
    as the seed's clients should; the other never does, as many do not) and
    one MSGR client.
    """
    residents = []
    for name in ("pb-r1", "pb-r2"):
        client = await ProtobufClient.open(soak.ports["protobuf"], soak.timeout)
        _expectPb(await client.login(name), Request.USER_LOGIN, SUCCESSFUL, f"welcome, {name}")

        async def readProtobuf(client=client):
            await client._readSome(1.0)
            client.responses.clear()
            client.deliveries.clear()

        residents.append(Resident(name, client.connection, readProtobuf))
    for name, acks in (("rs!1", True), ("rs!2", False)):
        client = await _msrpLogin(soak, name)

        async def readMsrp(client=client, acks=acks, files=[]):
            frame = await client.frame(1.0)
            if type(frame) is msrp.FileHeader:
                files.append(frame.filename)
            elif type(frame) is msrp.FileEnd and acks and files:
                await client.send(msrp.encodeAck(files.pop()))

        residents.append(Resident(name, client.connection, readMsrp))
    client = await _bound(soak, msgrAccount)

    async def readMsgr(client=client):
        await client.line(1.0)
        client.lines.clear()

    residents.append(Resident(msgrAccount, client.connection, readMsgr))
    for resident in residents:
        soak.online[resident.name] = "resident"
    return residents
