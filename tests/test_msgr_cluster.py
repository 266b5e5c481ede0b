"""
MSGR across nodes (docs/cluster.md, "MSGR across nodes"): two MSGR nodes in
one process, each with its own service, HTTP site and chat factory as the
other MSGR tests build them, sharing one real redis-server (a fresh key
prefix per test) and one account database. Time comes from one Clock, the
nodes' common idea of the time.
"""

from __future__ import annotations

import secrets
import shutil
import sqlite3
import threading

import txredisapi
from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.trial import unittest

from chatd.msgr.cluster import (
    REDIS_TIMEOUT,
    REVOCATION_POLL,
    RedisLoginLockout,
    RedisRegistrationLimit,
    RedisTokenRegistry,
)
from chatd.msgr.http import makeSite
from chatd.msgr.protocol import MsgrChatFactory
from chatd.msgr.service import MsgrService
from chatd.testservers import RedisServer, redisServer

from tests.test_msgr_helpers import TOKEN_IDLE, MsgrHarness


class Node(MsgrHarness):
    """
    One node: the MSGR stack of L{MsgrHarness} with its tokens, lockout and
    registration limit in Redis, built as C{chatd/msgr/front.py} builds them
    from C{ChatdService.cluster}.
    """

    def __init__(self, testCase, redis, prefix, clock, path, nodeId, perAddress=0, **lockout):
        super().__init__(testCase, path=path)
        self.msgr.unwatch()
        self.redis = redis
        self.clock = clock
        self.tokens = RedisTokenRegistry(redis, prefix, clock, TOKEN_IDLE, nodeId=nodeId)
        self.lockout = RedisLoginLockout(redis, prefix, clock, **lockout)
        self.registrations = RedisRegistrationLimit(redis, prefix, clock, perAddress, 3600)
        self.msgr = MsgrService(
            self.store,
            self.presence,
            clock,
            self.tokens,
            self.lockout,
            metrics=self.presence.metrics,
            registrations=self.registrations,
        )
        self.msgr.watch()
        self.tokens.onRevoked = self.msgr.revokedElsewhere
        self.tokens.startService()
        testCase.addCleanup(self.tokens.stopService)
        self.site = makeSite(self.msgr, reactor=clock, metrics=self.msgr.metrics)
        self.factory = MsgrChatFactory(
            self.msgr, maxLine=4096, maxFileSize=1024, metrics=self.msgr.metrics
        )

    @defer.inlineCallbacks
    def settle(self, rounds: int = 4):
        """
        Let this node's Redis answers and database work finish: each round
        waits for a PING sent after what is in flight on its connection,
        then for the database queue.
        """
        for _ in range(rounds):
            yield self.redis.ping()
            yield self.store._pool.runInteraction(lambda cursor: None)


def connect(port: int) -> defer.Deferred:
    return txredisapi.Connection("127.0.0.1", port, reconnect=True)


class TwoNodes(unittest.TestCase):
    """Two nodes, A and B, on the test run's redis-server."""

    lockout: dict = {}
    perAddress = 0

    @defer.inlineCallbacks
    def setUp(self):
        self.server = redisServer()
        self.prefix = f"chatd-test-{secrets.token_hex(6)}:"
        self.clock = Clock()
        self.clock.advance(1_000_000)  # a time of day far from 0
        path = self.mktemp() + ".sqlite3"
        nodes = []
        for nodeId in ("a", "b"):
            redis = yield connect(self.server.port)
            self.addCleanup(redis.disconnect)
            nodes.append(
                Node(
                    self, redis, self.prefix, self.clock, path, nodeId,
                    perAddress=self.perAddress, **self.lockout,
                )
            )
        self.a, self.b = nodes
        # Run first: what the nodes still send (a release) is answered
        # before the connections close.
        self.addCleanup(lambda: defer.gatherResults([n.settle() for n in nodes]))
        yield self.a.settle()
        yield self.b.settle()

    def keys(self) -> list[str]:
        return self.server.command("--scan", "--pattern", self.prefix + "*").split()

    @defer.inlineCallbacks
    def bind(self, node: Node, name: str, token: str, host="10.0.0.2"):
        client = node.connect(host)
        client.sendLine(f"#HOLA||{token}||{name}||s3rv1d0r||{name}")
        yield node.settle()
        return client


class TokenTests(TwoNodes):
    @defer.inlineCallbacks
    def setUp(self):
        yield super().setUp()
        yield self.a.register("Ana", "clave")

    @defer.inlineCallbacks
    def test_loginOnABindOnB(self):
        """
        A token from an HTTP login on node A binds the chat socket on node B
        right after the answer, and B's HTTP API accepts it.
        """
        token = yield self.a.login("Ana", "clave")
        client = yield self.bind(self.b, "Ana", token)
        self.assertEqual(
            client.lines(),
            [
                "#RESPUESTA||-||1||#HOLA||Ana||701",
                "#LISTA_USUARIOS||-||Ana||",
                "#SOLICITUDES||-||Ana||",
            ],
        )
        self.assertFalse(client.closed)
        self.assertEqual(self.b.presence.lookup("ana").name, "Ana")
        response = yield self.b.form("/obtenerusuarios", token=token)
        self.assertEqual((response.status, response.body), (200, "704||"))
        client.lose()

    @defer.inlineCallbacks
    def test_linesMustCarryTheBoundToken(self):
        """
        A bound socket's lines are checked on its node: its own token is
        accepted, another user's (bound on the same node) is 901.
        """
        yield self.a.register("Bea", "clave")
        anaToken = yield self.a.login("Ana", "clave")
        beaToken = yield self.a.login("Bea", "clave")
        ana = yield self.bind(self.b, "Ana", anaToken)
        bea = yield self.bind(self.b, "Bea", beaToken, host="10.0.0.3")
        ana.lines()
        bea.lines()
        ana.sendLine(f"#MSJ||{beaToken}||Ana||Bea||hola")
        ana.sendLine(f"#MSJ||{anaToken}||Ana||Bea||hola")
        self.assertEqual(
            ana.lines(),
            ["#RESPUESTA||-||2||#MSJ||Ana||901", "#RESPUESTA||-||3||#MSJ||Ana||704"],
        )
        self.assertEqual(len(bea.lines()), 1)
        ana.lose()
        bea.lose()

    @defer.inlineCallbacks
    def test_unknownTokenRefusedOnB(self):
        client = yield self.bind(self.b, "Ana", "forged-token")
        self.assertEqual(client.lines(), ["#RESPUESTA||-||1||#HOLA||-||901"])
        self.assertTrue(client.closed)

    @defer.inlineCallbacks
    def test_onlyTheHashIsStored(self):
        """Redis keeps the token's SHA-256, never the token."""
        token = yield self.a.login("Ana", "clave")
        dump = []
        for key in self.keys():
            kind = self.server.command("TYPE", key).strip()
            if kind == "hash":
                dump.append(self.server.command("HGETALL", key))
            elif kind == "set":
                dump.append(self.server.command("SMEMBERS", key))
            dump.append(key)
        text = "\n".join(dump)
        self.assertIn("Ana", text)
        self.assertNotIn(token, text)

    @defer.inlineCallbacks
    def test_everyKeyExpires(self):
        """
        Tokens and counts have a TTL (nothing grows without bound); only the
        revocations stream has none, and it is trimmed.
        """
        token = yield self.a.login("Ana", "clave")
        yield self.b.form("/status", usr="Ana", **{"pass": "mala"})
        yield self.a.form("/usuariocrear", usr="Bea", **{"pass": "clave"})
        yield self.a.form(
            "/usuariomodificar", token=token, **{"pass": "nueva", "pass_actual": "clave"}
        )
        keys = self.keys()
        self.assertGreaterEqual(len(keys), 4, keys)
        for key in keys:
            ttl = int(self.server.command("PTTL", key))
            if key == self.prefix + "msgr:revoked":
                self.assertEqual(ttl, -1)
            else:
                self.assertGreater(ttl, 0, key)

    @defer.inlineCallbacks
    def test_idleExpiryOnEveryNode(self):
        """
        A token unused for --msgr-token-idle seconds is refused on both
        nodes; a use on one node restarts its idle time for the other.
        """
        token = yield self.a.login("Ana", "clave")
        self.clock.advance(TOKEN_IDLE - 1)
        response = yield self.b.form("/obtenerusuarios", token=token)
        self.assertEqual(response.status, 200)
        self.clock.advance(TOKEN_IDLE - 1)
        response = yield self.a.form("/obtenerusuarios", token=token)
        self.assertEqual(response.status, 200)
        self.clock.advance(TOKEN_IDLE)
        response = yield self.b.form("/obtenerusuarios", token=token)
        self.assertEqual((response.status, response.body), (401, "901"))
        response = yield self.a.form("/obtenerusuarios", token=token)
        self.assertEqual((response.status, response.body), (401, "901"))

    @defer.inlineCallbacks
    def test_heldTokenLivesWhileItsSocketDoes(self):
        """
        A socket bound on B keeps its token alive for A too (B refreshes
        it); once it closes, the idle time starts again from then.
        """
        token = yield self.a.login("Ana", "clave")
        client = yield self.bind(self.b, "Ana", token)
        for _ in range(6):  # three idle periods
            self.clock.advance(TOKEN_IDLE / 2)
            yield self.b.settle()
        response = yield self.a.form("/obtenerusuarios", token=token)
        self.assertEqual((response.status, response.body), (200, "704||"))
        self.clock.advance(TOKEN_IDLE / 2)
        yield self.b.settle()
        client.lose()
        yield self.b.settle()
        self.clock.advance(TOKEN_IDLE - 1)
        response = yield self.a.form("/obtenerusuarios", token=token)
        self.assertEqual(response.status, 200)
        self.clock.advance(TOKEN_IDLE)
        response = yield self.a.form("/obtenerusuarios", token=token)
        self.assertEqual((response.status, response.body), (401, "901"))

    @defer.inlineCallbacks
    def test_passwordChangeOnAClosesTheSocketOnB(self):
        """
        A password change on A revokes the other tokens everywhere; the
        socket bound with one of them on B is closed with 901 within the
        revocation poll. The caller's token lives on, on both nodes.
        """
        stolen = yield self.b.login("Ana", "clave")
        thief = yield self.bind(self.b, "Ana", stolen)
        thief.lines()
        owner = yield self.a.login("Ana", "clave")
        kept = yield self.bind(self.b, "Ana", owner, host="10.0.0.3")
        self.assertTrue(thief.closed)  # the newer socket won (as on one node)
        thief.lose()
        thief = yield self.bind(self.b, "Ana", stolen)
        self.assertFalse(thief.closed)
        kept.lose()
        yield self.b.settle()
        thief.lines()
        response = yield self.a.form(
            "/usuariomodificar", token=owner, **{"pass": "nueva", "pass_actual": "clave"}
        )
        self.assertEqual(response.body, "702")
        response = yield self.b.form("/obtenerusuarios", token=stolen)
        self.assertEqual((response.status, response.body), (401, "901"))
        self.assertEqual(thief.lines(), [])  # not yet: B reads revocations each second
        self.clock.advance(REVOCATION_POLL)
        yield self.b.settle()
        self.assertEqual(thief.lines(), ["#RESPUESTA||-||0||#DESCONECTAR||Ana||901"])
        self.assertTrue(thief.closed)
        thief.lose()
        response = yield self.b.form("/obtenerusuarios", token=owner)
        self.assertEqual(response.status, 200)

    @defer.inlineCallbacks
    def test_passwordChangeSparesTheCallerAfterTheDatabasePoll(self):
        """
        The nodes share the account database too, whose revocations table
        every node reads (as C{chatd-admin}'s revocations): the row a
        password change writes there must not make B revoke, in Redis, the
        token the password was changed with.
        """
        yield self.b.msgr.pollRevocations()  # where the table ends now
        owner = yield self.a.login("Ana", "clave")
        other = yield self.a.login("Ana", "clave")
        response = yield self.a.form(
            "/usuariomodificar", token=owner, **{"pass": "nueva", "pass_actual": "clave"}
        )
        self.assertEqual(response.body, "702")
        yield self.b.msgr.pollRevocations()
        yield self.b.settle()
        for node in (self.a, self.b):
            response = yield node.form("/obtenerusuarios", token=owner)
            self.assertEqual(response.status, 200)
            response = yield node.form("/obtenerusuarios", token=other)
            self.assertEqual((response.status, response.body), (401, "901"))

    @defer.inlineCallbacks
    def test_blockFoundOnAClosesTheSocketOnBWith802(self):
        """An HTTP call on A that finds the account blocked closes B's socket with 802."""
        from tests.test_msgr_http import setBlocked

        token = yield self.b.login("Ana", "clave")
        client = yield self.bind(self.b, "Ana", token)
        client.lines()
        other = yield self.a.login("Ana", "clave")
        setBlocked(self.a.path, "Ana", True)
        response = yield self.a.form("/obtenerusuarios", token=other)
        self.assertEqual((response.status, response.body), (403, "802"))
        self.clock.advance(REVOCATION_POLL)
        yield self.b.settle()
        self.assertEqual(client.lines(), ["#RESPUESTA||-||0||#DESCONECTAR||Ana||802"])
        self.assertTrue(client.closed)
        client.lose()

    @defer.inlineCallbacks
    def test_revokedWhileBindingOnB(self):
        """
        A revocation read by B while a socket there is between its token
        check and its attach closes that socket as soon as it is attached.
        """
        stolen = yield self.b.login("Ana", "clave")
        owner = yield self.a.login("Ana", "clave")
        # B's database work waits behind this until the revocation is read.
        gate = threading.Event()
        blocked = self.b.store._pool.runInteraction(lambda cursor: gate.wait(30))
        thief = self.b.connect()
        thief.sendLine(f"#HOLA||{stolen}||Ana")
        yield self.b.redis.ping()  # its token was checked
        response = yield self.a.form(
            "/usuariomodificar", token=owner, **{"pass": "nueva", "pass_actual": "clave"}
        )
        self.assertEqual(response.body, "702")
        self.clock.advance(REVOCATION_POLL)
        yield self.b.redis.ping()  # B read the revocation
        self.assertEqual(thief.lines(), [])
        gate.set()
        yield blocked
        yield self.b.settle()
        lines = thief.lines()
        self.assertEqual(lines[0], "#RESPUESTA||-||1||#HOLA||Ana||701")
        self.assertEqual(lines[-1], "#RESPUESTA||-||0||#DESCONECTAR||Ana||901")
        self.assertTrue(thief.closed)
        thief.lose()

    @defer.inlineCallbacks
    def test_ownerSocketOnBKeptOnPasswordChange(self):
        """The socket bound on B with the caller's own token stays open."""
        owner = yield self.a.login("Ana", "clave")
        client = yield self.bind(self.b, "Ana", owner)
        client.lines()
        response = yield self.a.form(
            "/usuariomodificar", token=owner, **{"pass": "nueva", "pass_actual": "clave"}
        )
        self.assertEqual(response.body, "702")
        self.clock.advance(REVOCATION_POLL)
        yield self.b.settle()
        self.assertEqual(client.lines(), [])
        self.assertFalse(client.closed)
        client.lose()

    @defer.inlineCallbacks
    def test_logoutOnBEndsTheTokenOnA(self):
        token = yield self.a.login("Ana", "clave")
        response = yield self.b.api("logout", token=token)
        self.assertEqual(response.json(), {"code": 702})
        response = yield self.a.form("/obtenerusuarios", token=token)
        self.assertEqual((response.status, response.body), (401, "901"))


class LockoutTests(TwoNodes):
    lockout = {"accountFailures": 3, "addressFailures": 5, "window": 60, "lockTime": 300}

    @defer.inlineCallbacks
    def setUp(self):
        yield super().setUp()
        yield self.a.register("Ana", "clave")

    def guess(self, node, password, host):
        return node.form("/status", host=host, usr="Ana", **{"pass": password})

    @defer.inlineCallbacks
    def test_guessesSplitAcrossNodesLockTheName(self):
        """Three failures, on A, B and A, lock the name on both, as on one node."""
        for node, host in ((self.a, "1.0.0.1"), (self.b, "1.0.0.2"), (self.a, "1.0.0.3")):
            response = yield self.guess(node, "mala", host)
            self.assertEqual(response.body, "801")
        for node in (self.a, self.b):
            response = yield self.guess(node, "clave", "1.0.0.4")
            self.assertEqual(response.body, "802")
        self.clock.advance(300)
        response = yield self.guess(self.b, "clave", "1.0.0.4")
        self.assertEqual(response.body.split("||")[0], "701")

    @defer.inlineCallbacks
    def test_addressLockedOnBothNodes(self):
        """Failures from one address on any name, split across nodes, lock it."""
        for i in range(5):
            node = (self.a, self.b)[i % 2]
            response = yield node.form("/status", host="6.6.6.6", usr=f"x{i}", **{"pass": "m"})
            self.assertEqual(response.body, "801")
        response = yield self.guess(self.b, "clave", "6.6.6.6")
        self.assertEqual(response.body, "802")
        response = yield self.guess(self.a, "clave", "6.6.6.7")
        self.assertEqual(response.body.split("||")[0], "701")

    @defer.inlineCallbacks
    def test_concurrentGuessesOnBothNodes(self):
        """
        Guesses sent at once to A and B cost as many password checks as
        sequential ones: one check of a name runs at a time cluster-wide,
        and three in all lock it. Each 801 is one check.
        """
        answers = []
        for round in range(5):
            sent = []
            for i in range(4):
                node = (self.a, self.b)[i % 2]
                sent.append(self.guess(node, f"mala{round}{i}", f"2.0.{round}.{i}"))
            responses = yield defer.gatherResults(sent)
            bodies = [r.body for r in responses]
            self.assertLessEqual(bodies.count("801"), 1, bodies)
            self.assertEqual(bodies.count("801") + bodies.count("802"), 4, bodies)
            answers.extend(bodies)
        self.assertEqual(answers.count("801"), 3, answers)
        response = yield self.guess(self.b, "clave", "1.0.0.9")
        self.assertEqual(response.body, "802")


class RegistrationTests(TwoNodes):
    perAddress = 2

    @defer.inlineCallbacks
    def test_countedAcrossNodes(self):
        for node, name in ((self.a, "Ana"), (self.b, "Bea")):
            response = yield node.form(
                "/usuariocrear", host="3.3.3.3", usr=name, **{"pass": "clave"}
            )
            self.assertEqual(response.body, "702")
        response = yield self.a.form("/usuariocrear", host="3.3.3.3", usr="Cy", **{"pass": "c"})
        self.assertEqual(response.body, "803||too many registrations from your address\n")
        response = yield self.b.api("register", {"user": "Cy", "password": "clave"})
        self.assertEqual(response.json()["code"], 702)  # another address (10.0.0.1)


class UnreachableTests(unittest.TestCase):
    """A node whose Redis stops answering (a redis-server of its own)."""

    @defer.inlineCallbacks
    def setUp(self):
        program = shutil.which("redis-server")
        if program is None:
            raise unittest.SkipTest("redis-server is not installed")
        self.server = RedisServer(program)
        self.server.start()
        self.addCleanup(self.server.cleanup)
        self.clock = Clock()
        self.redis = yield connect(self.server.port)
        self.addCleanup(self.redis.disconnect)
        self.node = Node(
            self, self.redis, "chatd-test:", self.clock, self.mktemp() + ".sqlite3", "a",
            perAddress=5,
        )
        yield self.node.register("Ana", "clave")
        yield self.node.register("Bea", "clave")
        self.token = yield self.node.login("Ana", "clave")
        self.client = self.node.connect()
        self.client.sendLine(f"#HOLA||{self.token}||Ana")
        yield self.node.settle()
        self.assertEqual(self.client.lines()[0], "#RESPUESTA||-||1||#HOLA||Ana||701")
        self.server.stop()
        # Once the client has seen the connection go, calls wait for the
        # next one, until their deadline.
        yield self.assertFailure(self.redis.ping(), txredisapi.ConnectionError)

    def tearDown(self):
        self.flushRedisErrors()

    @defer.inlineCallbacks
    def answer(self, d):
        """What C{d} fires with, once the Redis deadline has passed."""
        yield self.node.store._pool.runInteraction(lambda cursor: None)
        self.clock.advance(REDIS_TIMEOUT)
        result = yield d
        return result

    @defer.inlineCallbacks
    def test_loginRefused(self):
        """A login that cannot be counted is refused with 901, the login's general code."""
        response = yield self.answer(self.node.form("/status", usr="Bea", **{"pass": "clave"}))
        # The login's general code, as for a database failure.
        self.assertEqual((response.status, response.body), (200, "901||internal error\n"))
        self.assertEqual(len(self.flushLoggedErrors(defer.TimeoutError)), 1)

    @defer.inlineCallbacks
    def test_registrationRefused(self):
        """A registration that cannot be counted is refused with 902."""
        response = yield self.answer(
            self.node.api("register", {"user": "Cy", "password": "clave"})
        )
        self.assertEqual(response.json(), {"code": 902, "reason": "internal error"})
        self.assertEqual(len(self.flushLoggedErrors(defer.TimeoutError)), 1)

    @defer.inlineCallbacks
    def test_tokenThatCannotBeCheckedIsRefused(self):
        """
        #HOLA is answered 901 and closed; an HTTP call gets 500 with its
        general code.
        """
        other = self.node.connect("10.0.0.7")
        other.sendLine(f"#HOLA||{self.token}||Ana")
        self.clock.advance(REDIS_TIMEOUT)
        self.assertEqual(other.lines(), ["#RESPUESTA||-||1||#HOLA||-||901"])
        self.assertTrue(other.closed)
        other.lose()
        response = yield self.answer(self.node.form("/obtenerusuarios", token=self.token))
        self.assertEqual((response.status, response.body), (500, "903"))
        # Both failures logged (and the revocation reads that timed out).
        self.assertGreaterEqual(len(self.flushLoggedErrors(defer.TimeoutError)), 2)

    @defer.inlineCallbacks
    def test_boundSocketKeepsWorking(self):
        """The socket bound before keeps its token and sends messages."""
        self.client.lines()
        self.client.sendLine(f"#MSJ||{self.token}||Ana||Nadie||hola")
        self.assertEqual(self.client.lines(), ["#RESPUESTA||-||2||#MSJ||Ana||804"])
        self.assertFalse(self.client.closed)
        self.client.lose()
        # The release could not reach Redis either: logged, not raised.
        self.clock.advance(REDIS_TIMEOUT)
        yield self.node.store._pool.runInteraction(lambda cursor: None)
        self.flushRedisErrors()

    def flushRedisErrors(self):
        # The connection was lost under a call, or the call waited for a
        # connection until its deadline: either is logged.
        return self.flushLoggedErrors(defer.TimeoutError, txredisapi.ConnectionError)


class WiringTests(unittest.TestCase):
    """
    C{chatd/msgr/front.py} builds the Redis-backed state from
    C{ChatdService.cluster} (C{.redis}, C{.prefix}, C{.nodeId}, as
    C{--cluster} will set it), and the in-memory state without it.
    """

    def tree(self, path, cluster):
        from chatd import tap
        from chatd.msgr.front import front
        from chatd.service import ChatdService

        options = tap.Options()
        options.parseOptions(
            ["--protobuf", "none", "--msrp", "none", "--db", path,
             "--http", "tcp:0:interface=127.0.0.1", "--msgr", "tcp:0:interface=127.0.0.1"]
        )
        built = tap.makeService(options, reactor=reactor)
        self.addCleanup(built.accounts.close)
        top = ChatdService(
            options, built.presence, built.metrics, built.limits, built.limiter, built.accounts
        )
        if cluster is not None:
            top.cluster = cluster
        front.build(options, top, reactor)
        return top

    @defer.inlineCallbacks
    def test_loginOnOneTreeAcceptedByTheOther(self):
        from types import SimpleNamespace

        from chatd.msgr.accounts import hashPassword, prepareDatabase
        from chatd.msgr.tokens import TokenRegistry
        from tests.test_msgr_helpers import FAST_SCRYPT

        path = self.mktemp()
        prepareDatabase(path)
        connection = sqlite3.connect(path)
        connection.execute(
            "INSERT INTO accounts (name_key, name, password) VALUES ('ana', 'Ana', ?)",
            (hashPassword("clave", FAST_SCRYPT),),
        )
        connection.commit()
        connection.close()
        server = redisServer()
        prefix = f"chatd-test-{secrets.token_hex(6)}:"
        trees = []
        for nodeId in ("n1", "n2"):
            redis = yield connect(server.port)
            self.addCleanup(redis.disconnect)
            cluster = SimpleNamespace(redis=redis, prefix=prefix, nodeId=nodeId)
            trees.append(self.tree(path, cluster))
        one, two = (t.getServiceNamed("msgr-accounts") for t in trees)
        self.assertIsInstance(one.tokens, RedisTokenRegistry)
        self.assertIsInstance(one.lockout, RedisLoginLockout)
        self.assertIsInstance(one.registrations, RedisRegistrationLimit)
        self.assertIs(trees[0].getServiceNamed("msgr-tokens"), one.tokens)
        outcome = yield one.login("ana", "clave", "10.0.0.1")
        self.assertEqual(outcome.code, 701)
        account = yield two.authenticateToken(outcome.data["token"])
        self.assertEqual(account.name, "Ana")
        embedded = self.tree(path, None).getServiceNamed("msgr-accounts")
        self.assertIsInstance(embedded.tokens, TokenRegistry)
        self.assertNotIn("msgr-tokens", {s.name for s in self.tree(path, None)})
