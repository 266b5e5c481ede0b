"""
chatd-client in all three protocols at once against one real twistd: every
user reaches every other, and files cross between MSRP and MSGR.
"""

from __future__ import annotations

import os

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from tests.test_client_support import ClientTestMixin


class CrossProtocolClientTests(ClientTestMixin, TestCase):
    @defer.inlineCallbacks
    def test_everyoneReachesEveryone(self):
        yield self.startServer()
        msrpFile = os.path.join(self.directory, "de-msrp.txt")
        msgrFile = os.path.join(self.directory, "de-msgr.txt")
        with open(msrpFile, "wb") as f:
            f.write(b"hola desde MSRP\n")
        with open(msgrFile, "wb") as f:
            f.write(b"hola desde MSGR\n")
        clt2Inbox = os.path.join(self.directory, "clt2")
        lunaInbox = os.path.join(self.directory, "luna")

        # Names of 4 bytes, so that the MSRP user can write to everyone.
        pepe = yield self.loggedIn("protobuf", "pepe")
        clt2 = yield self.loggedIn("msrp", "clt2", "--save-dir", clt2Inbox, "--ack-wait", "0")
        luna = yield self.loggedIn("msgr", "luna", "--password", "l", "--register", "--save-dir", lunaInbox)

        pepe.write("list\nmsg clt2 hola desde protobuf\nmsg luna hola desde protobuf\n")
        yield clt2.waitFor("[pepe] hola desde protobuf")
        yield luna.waitFor("[pepe] hola desde protobuf")

        clt2.write(f"msg pepe hola desde msrp\nsend luna {msrpFile}\n")
        yield pepe.waitFor("[clt2] hola desde msrp")
        yield luna.waitFor("[clt2] file de-msrp.txt")

        luna.write(f"msg pepe hola desde msgr\nsend clt2 {msgrFile}\nsend pepe {msgrFile}\nall adiós\n")
        yield pepe.waitFor("[luna -> all] adiós")
        yield clt2.waitFor("[luna] adiós")

        for process in (pepe, clt2, luna):
            process.closeStdin()
        codes = yield defer.gatherResults([pepe.ended, clt2.ended, luna.ended])
        self.assertEqual(codes, [0, 0, 1])

        self.assertEqual(
            pepe.lines(),
            [
                f"* logged in as pepe (protobuf, tcp:127.0.0.1:{self.ports['protobuf']})",
                "* 3 users online",
                "*   pepe ACTIVO 127.0.0.1",
                "*   clt2 ACTIVO 127.0.0.1",
                "*   luna ACTIVO 127.0.0.1",
                "* delivered to clt2",
                "* delivered to luna",
                "[clt2] hola desde msrp",
                "[luna] hola desde msgr",
                "[luna -> all] adiós",
            ],
        )
        self.assertEqual(
            clt2.lines()[1:],
            [
                "[pepe] hola desde protobuf",
                "* sent to pepe",
                "* sent de-msrp.txt to luna (16 bytes)",
                f"[luna] file de-msgr.txt (16 bytes) saved as {clt2Inbox}/de-msgr.txt",
                # Broadcasts from other protocols arrive as plain MSRP messages.
                "[luna] adiós",
                # MSGR users never acknowledge; --ack-wait 0 does not wait.
                "* no ACK for de-msrp.txt within 0 s (users of other protocols never send one)",
            ],
        )
        self.assertEqual(
            luna.lines()[4:],
            [
                "[pepe] hola desde protobuf",
                f"[clt2] file de-msrp.txt (16 bytes) saved as {lunaInbox}/de-msrp.txt",
                "* delivered to pepe",
                "* sent de-msgr.txt to clt2 (16 bytes)",
                "! pepe cannot take de-msgr.txt: too large, or their protocol takes no files (803)",
                "* sent to everyone online",
            ],
        )
        self.assertEqual(self.saved(clt2Inbox), {"de-msgr.txt": b"hola desde MSGR\n"})
        self.assertEqual(self.saved(lunaInbox), {"de-msrp.txt": b"hola desde MSRP\n"})
