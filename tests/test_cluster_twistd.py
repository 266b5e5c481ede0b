"""
Two and three real C{twistd chatd} nodes on one real redis-server: users of
every protocol on each node write to users of every protocol on the others,
a broadcast reaches every node once, one name claimed on three nodes at once
is won once, and a node killed with C{kill -9} loses its users on the others
within the TTL.
"""

from __future__ import annotations

import itertools
import os
import re
import time

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from chatd.testservers import redisServer
from tests.test_client_support import LISTENERS, LOOPBACK, ClientTestMixin
from chatd.harness import ServerError
from tests.twistd import TwistdProcess

_prefixes = itertools.count()


LABELS = ("protobuf", "msrp", "msgr", "msgr-http")


@defer.inlineCallbacks
def directoriesHold(testCase, servers, count: int):
    """
    Wait until the copy of the directory of every running node among
    C{servers} (L{TwistdProcess}es with an C{msgr-http} listener, on their
    C{host} attribute if they have one, else 127.0.0.1) holds
    C{count} users, read from its C{/metrics}: a node learns of another's
    login a moment after that node answered it. Each scrape is awaited;
    none sleeps.
    """
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

    from tests.twistd import ByteCollector

    pattern = re.compile(rb"^chatd_cluster_directory_users\{[^}]*\} (\d+)", re.M)
    for server in list(servers):
        if server.ended.called:
            continue
        host = getattr(server, "host", "127.0.0.1")
        endpoint = TCP4ClientEndpoint(reactor, host, server.ports["msgr-http"])
        for _ in range(500):
            # HTTP/1.0: the answer ends when the server closes.
            scrape = ByteCollector()
            yield connectProtocol(endpoint, scrape)
            scrape.transport.write(b"GET /metrics HTTP/1.0\r\n\r\n")
            yield scrape.closed
            found = pattern.search(scrape.received)
            if found is not None and int(found.group(1)) >= count:
                break
        else:
            testCase.fail(f"a node never held {count} users:\n{scrape.received!r}")


class TwoNodeTests(ClientTestMixin, TestCase):
    timeout = 120

    def setUp(self) -> None:
        super().setUp()
        self.redis = redisServer()
        self.prefix = f"twistd{os.getpid()}-{next(_prefixes)}:"
        self.nodes: dict[str, dict[str, int]] = {}
        self.servers: dict[str, TwistdProcess] = {}

    @defer.inlineCallbacks
    def startNode(self, nodeId: str, *extra: str, db: str | None = None):
        """
        Start node C{nodeId}. Its accounts are the cluster's one SQLite file
        (every node must share one: docs/cluster.md) unless C{db} says.
        """
        directory = os.path.join(self.directory, nodeId)
        os.makedirs(directory)
        args = []
        for label, option in LISTENERS.items():
            args += [option, LOOPBACK]
        if db is None:
            db = os.path.join(self.directory, "accounts.sqlite3")
        args += [
            "--db", db,
            "--cluster", self.redis.url,
            "--cluster-prefix", self.prefix,
            "--node-id", nodeId,
            *extra,
        ]
        server = TwistdProcess(args, list(LABELS), directory)
        self.addCleanup(server.signal, "KILL")
        self.servers[nodeId] = server
        self.nodes[nodeId] = yield server.start()
        return server

    def directoriesHold(self, count: int) -> defer.Deferred:
        """Wait until every running node's directory holds C{count} users."""
        return directoriesHold(self, self.servers.values(), count)

    def on(self, nodeId: str, protocolName: str, name: str, *args: str):
        """A client of C{nodeId}, logged in as C{name}."""
        self.ports = self.nodes[nodeId]
        if protocolName == "msgr":
            args = ("--password", "pw", "--register", *args)
        return self.loggedIn(protocolName, name, *args)

    @defer.inlineCallbacks
    def test_everyProtocolPairAcrossNodes(self):
        yield self.startNode("a")
        yield self.startNode("b")
        self.assertIn(b"cluster node a ready", self.servers["a"].output)
        users = {}
        inboxes = {name: os.path.join(self.directory, f"inbox-{name}") for name in ("mara", "lunb")}
        for node, protocolName, name, *args in [
            ("a", "protobuf", "pepa"),
            ("a", "msrp", "mara", "--save-dir", inboxes["mara"], "--ack-wait", "0"),
            ("a", "msgr", "luna"),
            ("b", "protobuf", "pepb"),
            ("b", "msrp", "marb"),
            ("b", "msgr", "lunb", "--save-dir", inboxes["lunb"]),
        ]:
            users[name] = (node, (yield self.on(node, protocolName, name, *args)))
        yield self.directoriesHold(len(users))
        # Every user writes to every user of the other node.
        for sender, (node, process) in users.items():
            for receiver, (other, _) in users.items():
                if other != node:
                    process.write(f"msg {receiver} de {sender} a {receiver}\n")
        for receiver, (node, process) in users.items():
            for sender, (other, _) in users.items():
                if other != node:
                    yield process.waitFor(f"[{sender}] de {sender} a {receiver}")
        # Whole files across nodes, both ways between MSRP and MSGR.
        for sender, receiver in [("mara", "lunb"), ("lunb", "mara")]:
            path = os.path.join(self.directory, f"de-{sender}.txt")
            with open(path, "wb") as f:
                f.write(f"hola desde {sender}\n".encode())
            users[sender][1].write(f"send {receiver} {path}\n")
            yield users[receiver][1].waitFor(f"[{sender}] file de-{sender}.txt")
        yield users["lunb"][1].waitFor("* sent de-lunb.txt to mara")
        self.assertEqual(self.saved(inboxes["lunb"]), {"de-mara.txt": b"hola desde mara\n"})
        self.assertEqual(self.saved(inboxes["mara"]), {"de-lunb.txt": b"hola desde lunb\n"})
        # A name is one name across the cluster.
        self.ports = self.nodes["b"]
        taken = yield self.script("protobuf", "", "--name", "PEPA")
        self.assertIn("PEPA is already online", taken.stdout + taken.stderr)

    @defer.inlineCallbacks
    def test_threeNodes(self):
        """
        Three nodes: a broadcast from a user of one reaches the users of
        the two others once each, in their protocols; one name claimed on
        the three nodes in the same instant is won by exactly one login.
        """
        from twisted.internet import reactor
        from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

        from chatd.protobuf import chat_pb2
        from tests.support import login
        from tests.twistd import ByteCollector

        for nodeId in "abc":
            yield self.startNode(nodeId)
        pep = yield self.on("a", "protobuf", "pepa")
        mar = yield self.on("b", "msrp", "mara")
        lun = yield self.on("c", "msgr", "luna")
        yield self.directoriesHold(3)
        pep.write("all hola a todos\nmsg luna fin\nmsg mara fin\n")
        yield pep.waitFor("* delivered to 2 users")
        yield mar.waitFor("[pepa] fin")
        yield lun.waitFor("[pepa] fin")
        self.assertEqual(mar.out.count(b"[pepa] hola a todos"), 1)
        self.assertEqual(lun.out.count(b"[pepa -> all] hola a todos"), 1)

        clients = []
        for nodeId in "abc":
            client = ByteCollector()
            endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.nodes[nodeId]["protobuf"])
            yield connectProtocol(endpoint, client)
            self.addCleanup(lambda c=client: (c.transport.loseConnection(), c.closed)[1])
            clients.append(client)
        request = login("zoe").SerializeToString()
        for client in clients:  # in one reactor turn
            client.transport.write(request)
        responses = []
        for client in clients:
            response = yield client.waitFor(
                lambda data: data and chat_pb2.ServerResponse.FromString(data)
            )
            responses.append(response)
        won = [r for r in responses if r.code == chat_pb2.ServerResponse.SUCCESSFUL_OPERATION]
        self.assertEqual(len(won), 1, responses)
        self.assertEqual(
            sorted(r.code for r in responses).count(chat_pb2.ServerResponse.FAILED_OPERATION),
            2,
            responses,
        )

    @defer.inlineCallbacks
    def test_msgrFriendsAcrossNodes(self):
        """
        MSGR friends on two nodes: a friend request and its answer cross
        nodes, the friend-list pushes follow logins and logouts on the other
        node, and a status changed on one node is what the other shows.
        """
        yield self.startNode("a")
        yield self.startNode("b")
        bea = yield self.on("a", "msgr", "bea")
        ana = yield self.on("b", "msgr", "ana")
        yield self.directoriesHold(2)
        ana.write("friend bea\n")
        yield bea.waitFor("* friend requests: ana")
        bea.write("accept ana\n")
        yield ana.waitFor("* friends online: bea")
        yield bea.waitFor("* friends online: ana")
        ana.write("status OCUPADO\n")
        yield ana.waitFor("* status is now OCUPADO")
        # The change reaches node a's replica a moment after b answered:
        # ask until it shows (each answer is awaited, nothing sleeps).
        for asked in range(1, 51):
            bea.write("info ana\n")
            yield bea.waitForCount("* ana online ", asked)
            if b"* ana online OCUPADO" in bea.out:
                break
        self.assertIn(b"* ana online OCUPADO", bea.out)
        ana.write("quit\n")
        yield bea.waitFor("* friends online: none")

    @defer.inlineCallbacks
    def test_killedNodeFreesItsUsers(self):
        ttl = 1.5
        yield self.startNode("a", "--cluster-ttl", str(ttl))
        yield self.startNode("b", "--cluster-ttl", str(ttl))
        yield self.on("b", "protobuf", "bob")
        yield self.on("b", "msrp", "bert")
        alice = yield self.on("a", "protobuf", "alice")
        yield self.directoriesHold(3)
        alice.write("msg bob hola\n")
        yield alice.waitFor("* delivered to bob")
        killed = time.monotonic()
        yield self.servers["b"].signal("KILL")
        yield self.servers["a"].waitForOutput(b"freed 2 names of nodes whose heartbeat is gone")
        elapsed = time.monotonic() - killed
        # The heartbeat lapses within the TTL; a's next round (every third
        # of it) finds it gone.
        self.assertLess(elapsed, ttl + ttl / 3 + 2)
        alice.write("list\n")
        yield alice.waitFor("* 1 user online")
        alice.write("msg bob otra\n")
        yield alice.waitFor("bob is not online")
        # The names are free again.
        yield self.on("a", "protobuf", "bob")

    @defer.inlineCallbacks
    def test_stoppedNodeFreesItsUsersAtOnce(self):
        """SIGTERM: the node removes its users as it stops, not after the TTL."""
        yield self.startNode("a", "--cluster-ttl", "600")
        yield self.startNode("b", "--cluster-ttl", "600")
        yield self.on("b", "msgr", "bob")
        alice = yield self.on("a", "protobuf", "alice")
        yield self.directoriesHold(2)
        alice.write("msg bob hola\n")
        yield alice.waitFor("* delivered to bob")
        yield self.servers["b"].signal("TERM")
        self.assertEqual(self.redis.command("HLEN", self.prefix + "names").strip(), "1")
        alice.write("msg bob otra\nlist\n")
        yield alice.waitFor("bob is not online")
        yield alice.waitFor("* 1 user online")

    # One account database (docs/cluster.md): registered MSGR names are
    # protected on every node only if every node reads them from one
    # database, so a node started on another refuses to serve, with one
    # line and exit status 1.

    @defer.inlineCallbacks
    def refused(self, nodeId: str, *extra: str, db: str) -> defer.Deferred:
        """Start C{nodeId}, which must stop without listening; its output."""
        failure = yield self.assertFailure(
            self.startNode(nodeId, *extra, db=db), ServerError
        )
        server = self.servers[nodeId]
        yield server.ended
        self.assertEqual(server.exitStatus.exitCode, 1, str(failure))
        self.assertNotIn(b"listening on", server.output)
        return server.output.decode()

    @defer.inlineCallbacks
    def test_nodeWithAnotherDatabaseRefused(self):
        yield self.startNode("a")
        own = os.path.join(self.directory, "b.sqlite3")
        output = yield self.refused("b", db=own)
        self.assertIn(
            f"chatd: --db {own} is not this cluster's account database"
            " (the cluster's nodes share one: docs/cluster.md)\n",
            output,
        )
        # The cluster's database is still the first node's: a node on the
        # shared file, after a restart of the first, serves.
        yield self.servers["a"].signal("TERM")
        yield self.startNode("a2")
        yield self.on("a2", "protobuf", "alice")

    @defer.inlineCallbacks
    def test_nodeWithoutDatabaseRefused(self):
        """
        C{--db none} (its MSGR listeners off) cannot protect the registered
        names its protobuf and MSRP users would take.
        """
        yield self.startNode("a")
        output = yield self.refused(
            "b", "--http", "none", "--msgr", "none", db="none"
        )
        self.assertIn(
            "chatd: --db none: this cluster's nodes share an account database,"
            " whose names a node without it cannot protect (docs/cluster.md)\n",
            output,
        )

    @defer.inlineCallbacks
    def test_postgresNodeWithAnotherDatabaseRefused(self):
        """The same on PostgreSQL: two nodes on one database, a third on another."""
        from chatd.msgr.databases import redacted
        from chatd.testservers import postgresServer

        shared = postgresServer().createDatabase()
        yield self.startNode("a", db=shared)
        yield self.startNode("b", db=shared)
        other = postgresServer().createDatabase()
        output = yield self.refused("c", db=other)
        self.assertIn(
            f"chatd: --db {redacted(other)} is not this cluster's account database",
            output,
        )

    @defer.inlineCallbacks
    def test_nameRegisteredOnOneNodeProtectedOnTheOther(self):
        """
        What the one database is for: an MSGR name registered on node a is
        kept from a protobuf user of node b, and its owner logs in on b.
        """
        yield self.startNode("a")
        luna = yield self.on("a", "msgr", "luna")
        yield self.finish(luna)
        yield self.startNode("b")
        self.ports = self.nodes["b"]
        taken = yield self.script("protobuf", "", "--name", "luna")
        self.assertIn(
            "the name luna belongs to a registered account", taken.stdout + taken.stderr
        )
        yield self.loggedIn("msgr", "luna", "--password", "pw")
