"""
The protobuf chat (seed 000) as its clients see it: requests in, exact
responses out, over in-memory transports.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from chatd.presence import InMemoryPresenceService
from chatd.protobuf import chat_pb2
from chatd.protobuf.framing import encodeVarint
from chatd.protobuf.protocol import (
    DEFAULT_RAW_WAIT,
    DELIMITED,
    RAW,
    ProtobufChatFactory,
)
from tests.support import ProtobufClient, RecordingSession, login, message, request

Q = chat_pb2.ClientRequest
R = chat_pb2.ServerResponse
FAILED = R.FAILED_OPERATION
OK = R.SUCCESSFUL_OPERATION


class ProtobufTestMixin:
    framing = RAW

    def setUp(self) -> None:
        self.clock = Clock()
        self.presence = InMemoryPresenceService()
        self.factory = ProtobufChatFactory(
            self.presence, self.clock, framing=self.framing, maxFrameSize=4096,
            metrics=self.presence.metrics
        )

    def client(self, host: str = "192.0.2.7") -> ProtobufClient:
        return ProtobufClient(self.factory, host)

    def loggedIn(self, name: str, ip: str = "") -> ProtobufClient:
        client = self.client()
        client.send(login(name, ip))
        response = client.response()
        self.assertEqual(response.code, OK, response.response)
        return client

    def list(self, client: ProtobufClient) -> R:
        client.send(request(option=Q.CONNECTED_USERS))
        # A raw CONNECTED_USERS request may still grow: it is answered when
        # the short wait ends.
        self.clock.advance(DEFAULT_RAW_WAIT)
        return client.response()


class LoginTests(ProtobufTestMixin, TestCase):
    def test_loginResponseBytes(self) -> None:
        """
        A login is answered with the request's option, SUCCESSFUL_OPERATION,
        a text, and the user's own information, in exactly these bytes.
        """
        client = self.client()
        client.sendBytes(bytes.fromhex("0800" "1207" "0a05") + b"alice")
        self.assertEqual(
            client.wire(),
            bytes.fromhex("080010011a0e77656c636f6d652c20616c696365")
            + bytes.fromhex("2a1a0a05616c6963651209") + b"192.0.2.7"
            + bytes.fromhex("1a06") + b"ACTIVO",
        )

    def test_ipGivenIsStored(self) -> None:
        client = self.client()
        client.send(login("alice", ip="10.1.2.3"))
        response = client.response()
        self.assertEqual(response.user.ip, "10.1.2.3")
        self.assertEqual(self.presence.lookup("alice").ip, "10.1.2.3")

    def test_emptyIpIsPeerAddress(self) -> None:
        client = self.client(host="198.51.100.4")
        client.send(login("alice"))
        self.assertEqual(client.response().user.ip, "198.51.100.4")

    def test_allIsRefused(self) -> None:
        for name in ["all", "ALL", "All"]:
            client = self.client()
            client.send(login(name))
            response = client.response()
            self.assertEqual(
                (response.option, response.code), (Q.USER_LOGIN, FAILED)
            )
            self.assertIn("reserved", response.response)
            self.assertIsNone(self.presence.lookup(name))

    def test_emptyNameIsRefused(self) -> None:
        client = self.client()
        client.send(login(""))
        response = client.response()
        self.assertEqual((response.option, response.code), (Q.USER_LOGIN, FAILED))
        self.assertEqual(response.response, "login needs newuser.username")

    def test_loginWithoutNewuserIsRefused(self) -> None:
        client = self.client()
        client.send(request(option=Q.USER_LOGIN))
        self.clock.advance(DEFAULT_RAW_WAIT)
        self.assertEqual(client.response().code, FAILED)

    def test_nameRule(self) -> None:
        for name in ["a b", "a|b", "a&b", "tab\there", "x" * 33]:
            client = self.client()
            client.send(login(name))
            response = client.response()
            self.assertEqual(response.code, FAILED, name)
            self.assertTrue(response.response.startswith("login refused: "))

    def test_duplicateNameIsRefused(self) -> None:
        self.loggedIn("alice")
        client = self.client()
        client.send(login("alice"))
        response = client.response()
        self.assertEqual((response.option, response.code), (Q.USER_LOGIN, FAILED))
        self.assertEqual(
            response.response, "login refused: the name alice is already online"
        )

    def test_duplicateIgnoresCase(self) -> None:
        self.loggedIn("alice")
        client = self.client()
        client.send(login("ALICE"))
        self.assertEqual(client.response().code, FAILED)

    def test_duplicateAcrossProtocols(self) -> None:
        """A name online in another protocol cannot be taken here."""
        self.presence.login(RecordingSession("msrp"), "bobo", "127.0.0.1")
        client = self.client()
        client.send(login("bobo"))
        self.assertEqual(client.response().code, FAILED)

    def test_lookalikesRefusedWhileOnline(self) -> None:
        """
        While José87 is online, its NFD and full-width spellings are the same
        name, a Cyrillic look-alike is taken, and invisible or blank suffixes
        break the name rule (issue 11 item 5).
        """
        self.loggedIn("Jos\u00e987")
        for name, answer in [
            ("Jose\u030187", "the name Jose\u030187 is already online"),
            ("\uff2aos\u00e987", "the name \uff2aos\u00e987 is already online"),
            (
                "J\u043es\u00e987",
                "the name J\u043es\u00e987 looks like Jos\u00e987, who is online",
            ),
            ("Jos\u00e987\u034f", "the name has the character U+034F, which names may not have (RFC 8265)"),
            ("Jos\u00e987\u3164", "the name has the character U+3164, which names may not have (RFC 8265)"),
            ("Jos\u00e987\u2800", "the name has the character U+2800, which names may not have (RFC 8265)"),
        ]:
            client = self.client()
            client.send(login(name))
            response = client.response()
            self.assertEqual(
                (response.option, response.code, response.response),
                (Q.USER_LOGIN, FAILED, "login refused: " + answer),
            )
        self.assertEqual([u.name for u in self.presence.users()], ["Jos\u00e987"])

    def test_protectedNameIsRefused(self) -> None:
        """Names of registered accounts need a password; protobuf has none."""
        self.presence.isProtectedName = lambda name: name == "carol"
        client = self.client()
        client.send(login("carol"))
        response = client.response()
        self.assertEqual(response.code, FAILED)
        self.assertIn("registered account", response.response)

    def test_secondLoginOnOneConnection(self) -> None:
        client = self.loggedIn("alice")
        client.send(login("alice2"))
        response = client.response()
        self.assertEqual((response.option, response.code), (Q.USER_LOGIN, FAILED))
        self.assertEqual(response.response, "already logged in as alice")
        self.assertIsNone(self.presence.lookup("alice2"))

    def test_requestsBeforeLoginAreRefused(self) -> None:
        client = self.client()
        for option in [Q.CONNECTED_USERS, Q.USER_INFORMATION, Q.STATUS_CHANGE]:
            client.send(request(option=option))
            self.clock.advance(DEFAULT_RAW_WAIT)
            response = client.response()
            self.assertEqual((response.option, response.code), (option, FAILED))
            self.assertEqual(response.response, "log in first (USER_LOGIN)")
        client.send(message("bob", "hi"))
        self.assertEqual(client.response().option, Q.SEND_MESSAGE)

    def test_absentOptionIsLogin(self) -> None:
        client = self.client()
        client.send(request(newuser=chat_pb2.UserRegistration(username="dave")))
        response = client.response()
        self.assertEqual((response.option, response.code), (Q.USER_LOGIN, OK))

    def test_invalidUtf8IsRefused(self) -> None:
        client = self.client()
        client.sendBytes(bytes.fromhex("080012040a02fffe"))
        response = client.response()
        self.assertEqual((response.option, response.code), (Q.USER_LOGIN, FAILED))
        self.assertEqual(response.response, "newuser.username is not valid UTF-8")


class DisconnectTests(ProtobufTestMixin, TestCase):
    def test_disconnectFreesName(self) -> None:
        alice = self.loggedIn("alice")
        bob = self.loggedIn("bob")
        alice.disconnect()
        names = [u.username for u in self.list(bob).users.users]
        self.assertEqual(names, ["bob"])
        self.loggedIn("alice")

    def test_disconnectBeforeLogin(self) -> None:
        client = self.client()
        client.disconnect()
        self.assertEqual(self.presence.users(), [])

    def test_deliveryAfterDisconnectIsRefused(self) -> None:
        alice = self.loggedIn("alice")
        bob = self.loggedIn("bob")
        bob.disconnect()
        alice.send(message("bob", "still there?"))
        response = alice.response()
        self.assertEqual(response.code, FAILED)
        self.assertEqual(response.response, "not delivered: bob is not online")
        self.assertEqual(bob.wire(), b"")


class ListAndInfoTests(ProtobufTestMixin, TestCase):
    def test_connectedUsers(self) -> None:
        alice = self.loggedIn("alice", ip="10.0.0.1")
        self.loggedIn("bob", ip="10.0.0.2")
        self.presence.login(RecordingSession("msrp"), "carl", "10.0.0.3")
        response = self.list(alice)
        self.assertEqual((response.option, response.code), (Q.CONNECTED_USERS, OK))
        self.assertEqual(
            [(u.username, u.ip, u.status) for u in response.users.users],
            [
                ("alice", "10.0.0.1", "ACTIVO"),
                ("bob", "10.0.0.2", "ACTIVO"),
                ("carl", "10.0.0.3", "ACTIVO"),
            ],
        )
        self.assertEqual(response.response, "3 users online")

    def test_listIsAnsweredOnlyAfterTheWait(self) -> None:
        alice = self.loggedIn("alice")
        alice.send(request(option=Q.CONNECTED_USERS))
        self.clock.advance(DEFAULT_RAW_WAIT / 2)
        self.assertEqual(alice.wire(), b"")
        self.clock.advance(DEFAULT_RAW_WAIT / 2)
        self.assertEqual(alice.response().option, Q.CONNECTED_USERS)

    def test_listWithUserAll(self) -> None:
        """Clients that send CONNECTED_USERS with user="all" get the list."""
        alice = self.loggedIn("alice")
        alice.send(request(option=Q.CONNECTED_USERS, user=chat_pb2.UserRequest(user="all")))
        self.clock.advance(DEFAULT_RAW_WAIT)
        response = alice.response()
        self.assertEqual(len(response.users.users), 1)
        self.assertEqual(response.response, "1 user online")

    def test_userInformationAll(self) -> None:
        alice = self.loggedIn("alice")
        self.loggedIn("bob")
        for req in [
            request(option=Q.USER_INFORMATION, user=chat_pb2.UserRequest(user="all")),
            request(option=Q.USER_INFORMATION),
        ]:
            alice.send(req)
            self.clock.advance(DEFAULT_RAW_WAIT)
            response = alice.response()
            self.assertEqual((response.option, response.code), (Q.USER_INFORMATION, OK))
            self.assertEqual([u.username for u in response.users.users], ["alice", "bob"])

    def test_userInformationByName(self) -> None:
        alice = self.loggedIn("alice")
        self.loggedIn("bob", ip="10.9.9.9")
        alice.send(request(option=Q.USER_INFORMATION, user=chat_pb2.UserRequest(user="BOB")))
        response = alice.response()
        self.assertEqual((response.option, response.code), (Q.USER_INFORMATION, OK))
        self.assertEqual(
            (response.user.username, response.user.ip, response.user.status),
            ("bob", "10.9.9.9", "ACTIVO"),
        )
        self.assertFalse(response.HasField("users"))

    def test_userInformationUnknown(self) -> None:
        alice = self.loggedIn("alice")
        alice.send(request(option=Q.USER_INFORMATION, user=chat_pb2.UserRequest(user="zed")))
        response = alice.response()
        self.assertEqual((response.option, response.code), (Q.USER_INFORMATION, FAILED))
        self.assertEqual(response.response, "zed is not online")


class StatusTests(ProtobufTestMixin, TestCase):
    def status(self, client, username: str, status: str) -> R:
        client.send(
            request(
                option=Q.STATUS_CHANGE,
                status=chat_pb2.ChangeStatus(username=username, status=status),
            )
        )
        return client.response()

    def test_ownStatus(self) -> None:
        alice = self.loggedIn("alice")
        bob = self.loggedIn("bob")
        response = self.status(alice, "alice", "OCUPADO")
        self.assertEqual((response.option, response.code), (Q.STATUS_CHANGE, OK))
        self.assertEqual(
            (response.status.username, response.status.status), ("alice", "OCUPADO")
        )
        bob.send(request(option=Q.USER_INFORMATION, user=chat_pb2.UserRequest(user="alice")))
        self.assertEqual(bob.response().user.status, "OCUPADO")

    def test_emptyUsernameMeansCaller(self) -> None:
        alice = self.loggedIn("alice")
        self.assertEqual(self.status(alice, "", "INACTIVO").code, OK)
        self.assertEqual(self.presence.lookup("alice").status, "INACTIVO")

    def test_otherUserIsRefused(self) -> None:
        alice = self.loggedIn("alice")
        self.loggedIn("bob")
        response = self.status(alice, "bob", "INACTIVO")
        self.assertEqual((response.option, response.code), (Q.STATUS_CHANGE, FAILED))
        self.assertEqual(response.response, "you can only change your own status")
        self.assertEqual(self.presence.lookup("bob").status, "ACTIVO")

    def test_invalidStatusIsRefused(self) -> None:
        alice = self.loggedIn("alice")
        for status in ["x" * 65, "bad\x07bell"]:
            response = self.status(alice, "", status)
            self.assertEqual(response.code, FAILED)
            self.assertTrue(response.response.startswith("status refused: "))
        self.assertEqual(self.presence.lookup("alice").status, "ACTIVO")

    def test_missingStatusIsRefused(self) -> None:
        alice = self.loggedIn("alice")
        response = self.status(alice, "alice", "")
        self.assertEqual(response.code, FAILED)


class MessageTests(ProtobufTestMixin, TestCase):
    def test_direct(self) -> None:
        """
        The receiver gets a SEND_MESSAGE delivery whose sender the server set;
        the sender gets one response.
        """
        alice = self.loggedIn("alice")
        bob = self.loggedIn("bob")
        alice.send(message("bob", "hola bob", sender="mallory"))
        response = alice.response()
        self.assertEqual((response.option, response.code), (Q.SEND_MESSAGE, OK))
        self.assertEqual(response.response, "delivered to bob")
        self.assertFalse(response.HasField("messg"))
        self.assertEqual(
            bob.wire(),
            chat_pb2.ServerResponse(
                option=R.SEND_MESSAGE,
                code=OK,
                messg=chat_pb2.Message(receiver="bob", sender="alice", text="hola bob"),
            ).SerializeToString(),
        )

    def test_broadcast(self) -> None:
        alice = self.loggedIn("alice")
        bob = self.loggedIn("bob")
        carl = self.loggedIn("carl")
        other = RecordingSession("msrp")
        self.presence.login(other, "dora", "127.0.0.1")
        alice.send(message("all", "hola a todos"))
        response = alice.response()
        self.assertEqual((response.code, response.response), (OK, "delivered to 3 users"))
        for client in [bob, carl]:
            delivery = client.response()
            self.assertEqual(
                (delivery.messg.receiver, delivery.messg.sender, delivery.messg.text),
                ("all", "alice", "hola a todos"),
            )
        self.assertEqual([m.text for m in other.messages], ["hola a todos"])
        self.assertEqual(alice.wire(), b"")

    def test_unknownReceiver(self) -> None:
        alice = self.loggedIn("alice")
        alice.send(message("nobody", "hi"))
        response = alice.response()
        self.assertEqual((response.option, response.code), (Q.SEND_MESSAGE, FAILED))
        self.assertEqual(response.response, "not delivered: nobody is not online")

    def test_emptyText(self) -> None:
        alice = self.loggedIn("alice")
        self.loggedIn("bob")
        alice.send(message("bob", ""))
        self.clock.advance(DEFAULT_RAW_WAIT)
        self.assertEqual(alice.response().response, "the message is empty")

    def test_toOtherProtocol(self) -> None:
        alice = self.loggedIn("alice")
        other = RecordingSession("msrp")
        self.presence.login(other, "dora", "127.0.0.1")
        alice.send(message("DORA", "hi"))
        self.assertEqual(alice.response().response, "delivered to DORA")
        self.assertEqual(
            [(m.sender, m.receiver, m.text) for m in other.messages],
            [("alice", "dora", "hi")],
        )

    def test_fromOtherProtocol(self) -> None:
        bob = self.loggedIn("bob")
        other = RecordingSession("msrp")
        self.presence.login(other, "dora", "127.0.0.1")
        self.presence.sendMessage(other, "bob", "from msrp")
        delivery = bob.response()
        self.assertEqual(
            (delivery.option, delivery.code, delivery.messg.sender, delivery.messg.text),
            (R.SEND_MESSAGE, OK, "dora", "from msrp"),
        )

    def test_dispatchFollowsOption(self) -> None:
        """A request that keeps newuser set is dispatched by its option."""
        alice = self.loggedIn("alice")
        bob = self.loggedIn("bob")
        req = message("bob", "hi")
        req.newuser.username = "alice"
        alice.send(req)
        self.assertEqual(alice.response().response, "delivered to bob")
        self.assertEqual(bob.response().messg.text, "hi")

    def test_unknownOption(self) -> None:
        """
        An option chat.proto does not define is answered FAILED_OPERATION,
        with the request's option value on the wire.
        """
        alice = self.loggedIn("alice")
        alice.sendBytes(bytes.fromhex("0809") + bytes.fromhex("2a00"))
        data = alice.wire()
        self.assertTrue(data.startswith(bytes.fromhex("08091000")), data)
        response = R.FromString(data)
        self.assertEqual(response.code, FAILED)
        self.assertIn("unknown option 9", response.response)


class RawFramingTests(ProtobufTestMixin, TestCase):
    def test_joinedRequests(self) -> None:
        """Requests that TCP joined into one read are answered one by one."""
        alice = self.loggedIn("alice")
        bob = self.loggedIn("bob")
        joined = b"".join(
            alice.encode(r)
            for r in [
                message("bob", "one"),
                request(option=Q.CONNECTED_USERS),
                message("bob", "two"),
                request(option=Q.USER_INFORMATION, user=chat_pb2.UserRequest(user="bob")),
            ]
        )
        alice.sendBytes(joined)
        responses = alice.responses()
        self.assertEqual(
            [(r.option, r.code) for r in responses],
            [
                (Q.SEND_MESSAGE, OK),
                (Q.CONNECTED_USERS, OK),
                (Q.SEND_MESSAGE, OK),
                (Q.USER_INFORMATION, OK),
            ],
        )
        self.assertEqual([r.messg.text for r in bob.responses()], ["one", "two"])

    def test_byteByByte(self) -> None:
        """A request fed one byte at a time is answered once, when whole."""
        alice = self.loggedIn("alice")
        bob = self.loggedIn("bob")
        data = alice.encode(message("bob", "split into single bytes"))
        for i, byte in enumerate(data):
            alice.sendBytes(bytes([byte]))
            if i < len(data) - 1:
                self.assertEqual(alice.wire(), b"", f"answered early at byte {i}")
        self.assertEqual(alice.response().response, "delivered to bob")
        self.assertEqual(bob.response().messg.text, "split into single bytes")

    def test_joinedRequestsByteByByte(self) -> None:
        alice = self.loggedIn("alice")
        self.loggedIn("bob")
        data = alice.encode(message("bob", "1")) + alice.encode(message("bob", "2"))
        for byte in data:
            alice.sendBytes(bytes([byte]))
        self.assertEqual(
            [r.response for r in alice.responses()], ["delivered to bob"] * 2
        )

    def test_trailingZero(self) -> None:
        """Some clients end every request with 0x00; it is dropped."""
        alice = self.loggedIn("alice")
        bob = self.loggedIn("bob")
        data = alice.encode(message("bob", "a")) + b"\x00" + alice.encode(
            request(option=Q.CONNECTED_USERS)
        ) + b"\x00"
        alice.sendBytes(data)
        self.assertEqual(
            [r.option for r in alice.responses()], [Q.SEND_MESSAGE, Q.CONNECTED_USERS]
        )
        self.assertEqual(bob.response().messg.text, "a")

    def test_zeroEndsListWithoutWaiting(self) -> None:
        alice = self.loggedIn("alice")
        alice.sendBytes(bytes.fromhex("0801") + b"\x00")
        self.assertEqual(alice.response().option, Q.CONNECTED_USERS)

    def test_emptySubMessages(self) -> None:
        """Clients that send every sub-message, empty, are understood."""
        alice = self.loggedIn("alice")
        alice.sendBytes(bytes.fromhex("0801" "1200" "1a00" "2200" "2a00"))
        self.assertEqual(alice.response().option, Q.CONNECTED_USERS)

    def test_readEndsInsideField(self) -> None:
        """A read that ends inside a field waits, however long, for the rest."""
        alice = self.loggedIn("alice")
        self.loggedIn("bob")
        data = alice.encode(message("bob", "patience"))
        alice.sendBytes(data[:-3])
        self.clock.advance(60)
        self.assertEqual(alice.wire(), b"")
        alice.sendBytes(data[-3:])
        self.assertEqual(alice.response().response, "delivered to bob")

    def test_malformedThenServed(self) -> None:
        """Bytes that are not protobuf get an error; the connection goes on."""
        alice = self.loggedIn("alice")
        self.loggedIn("bob")
        alice.sendBytes(bytes.fromhex("0f0102"))  # wire type 7
        response = alice.response()
        self.assertEqual(response.code, FAILED)
        self.assertFalse(response.HasField("option"))
        self.assertEqual(
            response.response, "malformed request: wire type 7 is not used by chat.proto"
        )
        self.assertFalse(alice.transport.disconnecting)
        alice.send(message("bob", "ok"))
        self.assertEqual(alice.response().response, "delivered to bob")

    def test_frameTooLarge(self) -> None:
        """
        A request over the maximum frame gets an error response, then the
        connection is closed.
        """
        alice = self.loggedIn("alice")
        self.loggedIn("bob")
        alice.send(message("bob", "x" * 5000))
        response = alice.response()
        self.assertEqual(response.code, FAILED)
        self.assertIn("larger than the maximum frame of 4096 bytes", response.response)
        self.assertTrue(alice.transport.disconnecting)
        alice.disconnect()
        self.assertIsNone(self.presence.lookup("alice"))

    def test_manyFieldsPastLimit(self) -> None:
        """
        A request that never completes but keeps growing field after field is
        bounded by the maximum frame as well.
        """
        alice = self.loggedIn("alice")
        fields = b"".join(
            encodeVarint(number << 3 | 2) + b"\x64" + b"f" * 100
            for number in range(6, 60)
        )
        alice.sendBytes(bytes.fromhex("0801") + fields)
        self.assertIn("maximum frame", alice.response().response)
        self.assertTrue(alice.transport.disconnecting)


class DelimitedFramingTests(ProtobufTestMixin, TestCase):
    framing = DELIMITED

    def test_lengthPrefixedResponses(self) -> None:
        alice = self.loggedIn("alice")
        bob = self.loggedIn("bob")
        alice.send(message("bob", "hi"))
        data = bob.wire()
        payload = chat_pb2.ServerResponse(
            option=R.SEND_MESSAGE,
            code=OK,
            messg=chat_pb2.Message(receiver="bob", sender="alice", text="hi"),
        ).SerializeToString()
        self.assertEqual(data, encodeVarint(len(payload)) + payload)

    def test_noWaitForList(self) -> None:
        """Delimited requests are exact: a list is answered at once."""
        alice = self.loggedIn("alice")
        alice.send(request(option=Q.CONNECTED_USERS))
        self.assertEqual(alice.response().option, Q.CONNECTED_USERS)

    def test_byteByByteAndJoined(self) -> None:
        alice = self.loggedIn("alice")
        self.loggedIn("bob")
        data = b"".join(
            alice.encode(r)
            for r in [request(option=Q.CONNECTED_USERS), message("bob", "x"), request()]
        )
        for byte in data:
            alice.sendBytes(bytes([byte]))
        self.assertEqual(
            [(r.option, r.code) for r in alice.responses()],
            [(Q.CONNECTED_USERS, OK), (Q.SEND_MESSAGE, OK), (Q.USER_LOGIN, FAILED)],
        )

    def test_frameTooLarge(self) -> None:
        alice = self.loggedIn("alice")
        alice.sendBytes(encodeVarint(4097))
        response = alice.response()
        self.assertEqual(response.code, FAILED)
        self.assertIn("4097 bytes is larger than the maximum frame", response.response)
        self.assertTrue(alice.transport.disconnecting)

    def test_undecodable(self) -> None:
        alice = self.loggedIn("alice")
        alice.sendBytes(b"\x03\x0f\x01\x02")
        response = alice.response()
        self.assertEqual(response.code, FAILED)
        self.assertEqual(
            response.response, "malformed request: not a chat.ClientRequest"
        )
        self.assertFalse(alice.transport.disconnecting)


class HalfCloseTests(ProtobufTestMixin, TestCase):
    """
    A client that shuts down its sending side after its requests (`nc -q 1`
    does) gets every answer, then the server closes.
    """

    def test_waitingRawRequestIsAnsweredAtOnce(self) -> None:
        """
        A raw CONNECTED_USERS request waits for more bytes; once the client
        half-closes none can come, so it is answered without the wait, and
        the connection closes after it.
        """
        client = self.loggedIn("alice")
        client.send(request(option=Q.CONNECTED_USERS))
        self.assertEqual(client.wire(), b"")
        client.protocol.readConnectionLost()
        [response] = client.responses()
        self.assertEqual((response.option, response.code), (Q.CONNECTED_USERS, OK))
        self.assertEqual([u.username for u in response.users.users], ["alice"])
        self.assertTrue(client.transport.disconnecting)
        self.assertIsNone(self.presence.lookup("alice"))
        # (Only the close grace's abort waits, until the transport closes.)
        client.protocol.connectionLost(None)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_docRecipe(self) -> None:
        """
        The bytes of docs/protobuf.md's recipe, then a half-close: both
        answers, and nothing after them.
        """
        client = self.client()
        client.sendBytes(b"\x08\x00\x12\x07\x0a\x05alice\x00\x08\x01\x00")
        client.protocol.readConnectionLost()
        responses = client.responses()
        self.assertEqual(
            [(r.option, r.code) for r in responses],
            [(Q.USER_LOGIN, OK), (Q.CONNECTED_USERS, OK)],
        )
        self.assertTrue(client.transport.disconnecting)

    def test_requestCutShort(self) -> None:
        """
        A request that the half-close cuts in the middle of a field cannot
        be read: it gets an error, not silence.
        """
        client = self.loggedIn("alice")
        client.sendBytes(b"\x08\x04\x12\x10\x0a\x03bob")
        client.protocol.readConnectionLost()
        [response] = client.responses()
        self.assertEqual(
            (response.code, response.response),
            (FAILED, "malformed request: the connection ended inside a request"),
        )
        self.assertTrue(client.transport.disconnecting)

    def test_nothingSent(self) -> None:
        """A client that sends nothing and half-closes is closed quietly."""
        client = self.client()
        client.protocol.readConnectionLost()
        self.assertEqual(client.wire(), b"")
        self.assertTrue(client.transport.disconnecting)


class DelimitedHalfCloseTests(ProtobufTestMixin, TestCase):
    framing = DELIMITED

    def test_answersThenCloses(self) -> None:
        """
        Delimited framing: the requests received whole are answered; one
        cut short by the half-close gets an error; then the server closes.
        """
        client = self.client()
        client.send(login("alice"))
        client.sendBytes(client.encode(request(option=Q.CONNECTED_USERS))[:-1])
        client.protocol.readConnectionLost()
        responses = client.responses()
        self.assertEqual(
            [(r.code, r.response) for r in responses],
            [
                (OK, "welcome, alice"),
                (FAILED, "malformed request: the connection ended inside a request"),
            ],
        )
        self.assertTrue(client.transport.disconnecting)
