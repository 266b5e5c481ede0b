"""
Every chatd listener behind an C{ssl:} endpoint string (docs/tls.md).

Each test builds the real service tree with C{chatd.tap.Options} and
C{makeService}, with the listener under test on
C{ssl:0:interface=127.0.0.1:privateKey=...:certKey=...} and the others
C{none}, starts it, and talks to it from 127.0.0.1 over TLS with a client
that trusts only the test's throwaway root CA and checks the server's chain
and host name (tests/tls.py). What is asserted is what a user of each
protocol sees.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
from unittest import SkipTest
from io import BytesIO
from urllib.parse import urlencode

from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet import defer, reactor
from twisted.internet.endpoints import (
    SSL4ClientEndpoint,
    TCP4ClientEndpoint,
    connectProtocol,
    wrapClientTLS,
)
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.ssl import Certificate
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import TestCase
from twisted.internet.protocol import ProcessProtocol, Protocol
from twisted.internet.task import Clock
from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import formatEvent, globalLogPublisher
from twisted.web.client import (
    Agent,
    BrowserLikePolicyForHTTPS,
    FileBodyProducer,
    HTTPConnectionPool,
    ResponseDone,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from chatd import tap
from chatd.protobuf import chat_pb2
from chatd.tls import HANDSHAKE_LOG_INTERVAL, HandshakeFailureLog
from tests.support import login, message
from tests.test_doc_commands import markedBlock
from tests.test_msgr_helpers import FAST_SCRYPT
from tests.tls import LOOPBACK, PKI, clientOptions, makePKI, serverDescription
from tests.test_twistd_plugin import responseWith as protobufResponseWith
from tests.twistd import ByteCollector

R = chat_pb2.ServerResponse

#: The command line option of each listener, by its service name.
OPTION = {
    "protobuf": "protobuf",
    "msrp": "msrp",
    "msgr": "msgr",
    "msgr-http": "http",
    "metrics": "metrics",
}


def listFrame(*names: str) -> bytes:
    """The exact MSRP LIST answer for C{names} (docs/msrp.md)."""
    text = "Lista de clientes:\n" + "".join(
        f"Cliente {i}: {name}\n" for i, name in enumerate(names, 1)
    )
    return b"\x00\x03" + text.encode("utf-8") + b"\x00"




def exactly(expected: bytes):
    """A predicate: true once C{expected} bytes have arrived."""
    return lambda data: data if len(data) >= len(expected) else None


def lines(count: int):
    """A predicate: the first C{count} complete lines, once they arrived."""

    def check(data: bytes):
        if data.count(b"\n") < count:
            return None
        return data.decode("utf-8").split("\n")[:count]

    return check


@implementer(IHandshakeListener)
class TLSClient(ByteCollector):
    """
    A client that keeps what it receives, knows whether the TLS handshake
    completed, and why its connection ended.
    """

    def __init__(self) -> None:
        super().__init__()
        self.handshakeDone = False
        self.lostReason = None

    def handshakeCompleted(self) -> None:
        self.handshakeDone = True

    def connectionLost(self, reason) -> None:
        self.lostReason = reason
        super().connectionLost(reason)


class BodyReader(Protocol):
    """
    The whole body of an Agent response. (twisted.web's readBody warns that
    the response's transport proxy has no abortConnection, whatever the
    transport; this needs no cancellation, so it reads the body itself.)
    """

    def __init__(self) -> None:
        self.body = b""
        self.done: defer.Deferred = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.body += data

    def connectionLost(self, reason) -> None:
        if reason.check(ResponseDone):
            self.done.callback(self.body)
        else:
            self.done.errback(reason)


@implementer(IAgentEndpointFactory)
class LoopbackHTTPS:
    """
    Endpoints for L{Agent}: TLS to C{127.0.0.1} on the URI's port, checking
    the certificate for the URI's host name. (The plain agent would resolve
    C{localhost} and may try C{::1} first; these tests stay on 127.0.0.1.)
    """

    def __init__(self, policy: BrowserLikePolicyForHTTPS) -> None:
        self.policy = policy

    def endpointForURI(self, uri):
        return wrapClientTLS(
            self.policy.creatorForNetloc(uri.host, uri.port),
            TCP4ClientEndpoint(reactor, LOOPBACK, uri.port),
        )


class ServerConnections:
    """
    The server side connections of one TLS listening port, seen through the
    port's L{TLSMemoryBIOFactory}: L{whenEmpty} fires once every one of them
    has been lost (and chatd's protocol has seen C{connectionLost}), so a
    test ends with nothing left in the reactor.
    """

    def __init__(self, tlsFactory: TLSMemoryBIOFactory) -> None:
        self.factory = tlsFactory
        self._waiters: list[defer.Deferred] = []
        unregister = tlsFactory.unregisterProtocol

        def unregistered(protocol):
            unregister(protocol)
            if not tlsFactory.protocols:
                # ProtocolWrapper.connectionLost unregisters before it calls
                # the wrapped protocol's connectionLost: wake the waiters once
                # that has run too.
                waiters, self._waiters = self._waiters, []
                for waiter in waiters:
                    reactor.callLater(0, waiter.callback, None)

        tlsFactory.unregisterProtocol = unregistered

    def __len__(self) -> int:
        return len(self.factory.protocols)

    def whenEmpty(self) -> defer.Deferred:
        if not self.factory.protocols:
            return defer.succeed(None)
        waiter = defer.Deferred()
        self._waiters.append(waiter)
        return waiter


class TLSServerMixin:
    """Starting chatd with some listeners on TLS, and cleaning up after it."""

    timeout = 30

    def makePKI(self, **kwargs) -> PKI:
        return makePKI(self.mktemp(), **kwargs)

    def startServer(self, labels, pki: PKI, chain: bool = True):
        """
        Build chatd's service tree with the listeners C{labels} on TLS and
        the others off, and start it. Returns the tree; C{self.ports} maps
        each label to its bound port.
        """
        argv = []
        for label, option in OPTION.items():
            # (every listener is off unless asked for; --metrics is by default)
            value = serverDescription(pki, chain=chain) if label in labels else "none"
            argv += [f"--{option}", value]
        if {"msgr", "msgr-http"} & set(labels):
            argv += ["--db", os.path.abspath(self.mktemp()) + ".sqlite3"]
        else:
            argv += ["--db", "none"]
        config = tap.Options()
        config.parseOptions(argv)
        top = tap.makeService(config, reactor)
        if top.accounts is not None:
            top.accounts.scrypt = FAST_SCRYPT  # cheap hashes for new accounts
        self.top = top
        self.clients: list[TLSClient] = []
        self.pools: list[HTTPConnectionPool] = []
        self.serverConnections: list[ServerConnections] = []
        self.ports = {}
        top.startService()
        self.addCleanup(self._stopServer)
        for label in labels:
            port = top.getServiceNamed(label).port
            # The listener really is TLS: Twisted puts its TLS layer between
            # the TCP port and chatd's factory.
            self.assertIsInstance(port.factory, TLSMemoryBIOFactory)
            self.serverConnections.append(ServerConnections(port.factory))
            self.ports[label] = port.getHost().port
        return top

    @defer.inlineCallbacks
    def _stopServer(self):
        # Close every client, let the server see each connection end, then
        # stop the service tree (which closes the database).
        for client in self.clients:
            if client.transport is not None and client.transport.connected:
                client.transport.loseConnection()
        for client in self.clients:
            yield client.closed
        for pool in self.pools:
            yield pool.closeCachedConnections()
        for connections in self.serverConnections:
            yield connections.whenEmpty()
        yield self.top.stopService()

    @defer.inlineCallbacks
    def connect(self, label: str, pki: PKI, hostname: str = "localhost"):
        """A L{TLSClient} connected over TLS to C{label}'s port on 127.0.0.1."""
        client = TLSClient()
        endpoint = SSL4ClientEndpoint(
            reactor, LOOPBACK, self.ports[label], clientOptions(pki, hostname)
        )
        yield connectProtocol(endpoint, client)
        self.clients.append(client)
        return client

    @defer.inlineCallbacks
    def connectPlain(self, label: str):
        """A plain TCP client of C{label}'s (TLS) port."""
        client = TLSClient()
        yield connectProtocol(TCP4ClientEndpoint(reactor, LOOPBACK, self.ports[label]), client)
        self.clients.append(client)
        return client

    def agent(self, pki: PKI) -> Agent:
        """An HTTP agent trusting C{pki}'s root, like a browser or curl --cacert."""
        pool = HTTPConnectionPool(reactor, persistent=True)
        self.pools.append(pool)
        policy = BrowserLikePolicyForHTTPS(trustRoot=pki.rootCertificate())
        return Agent.usingEndpointFactory(reactor, LoopbackHTTPS(policy), pool=pool)

    @defer.inlineCallbacks
    def postForm(self, agent: Agent, path: str, **fields):
        """POST C{fields} as a form to https://localhost:PORT/PATH; (code, body)."""
        url = f"https://localhost:{self.ports['msgr-http']}{path}".encode("ascii")
        body = FileBodyProducer(BytesIO(urlencode(fields).encode("ascii")))
        headers = Headers({b"Content-Type": [b"application/x-www-form-urlencoded"]})
        response = yield agent.request(b"POST", url, headers, body)
        reader = BodyReader()
        response.deliverBody(reader)
        content = yield reader.done
        return response.code, content.decode("utf-8")

    def assertServerCertificate(self, client: TLSClient, pki: PKI) -> None:
        """The client got C{pki}'s server certificate through the handshake."""
        self.assertTrue(client.handshakeDone)
        with open(pki.cert, "rb") as f:
            expected = Certificate.loadPEM(f.read()).digest("sha256")
        peer = Certificate.peerFromTransport(client.transport)
        self.assertEqual(peer.digest("sha256"), expected)


class ListenerTests(TLSServerMixin, TestCase):
    """A real exchange over TLS on each of the four listeners."""

    @defer.inlineCallbacks
    def test_protobuf(self):
        """
        Two protobuf clients log in over TLS (the login response carries the
        name and the peer address 127.0.0.1) and exchange a message.
        """
        pki = self.makePKI()
        self.startServer(["protobuf"], pki)
        clients = []
        for name in ["alice", "bob"]:
            client = yield self.connect("protobuf", pki)
            client.transport.write(login(name).SerializeToString())
            response = yield client.waitFor(protobufResponseWith("user"))
            self.assertEqual(
                (response.option, response.code, response.user.username, response.user.ip),
                (R.USER_LOGIN, R.SUCCESSFUL_OPERATION, name, LOOPBACK),
            )
            self.assertServerCertificate(client, pki)
            client.received = b""
            clients.append(client)
        alice, bob = clients
        alice.transport.write(message("bob", "hola por TLS").SerializeToString())
        delivery = yield bob.waitFor(protobufResponseWith("messg"))
        self.assertEqual(
            (delivery.messg.sender, delivery.messg.receiver, delivery.messg.text),
            ("alice", "bob", "hola por TLS"),
        )
        answer = yield alice.waitFor(protobufResponseWith("response"))
        self.assertEqual(answer.response, "delivered to bob")

    @defer.inlineCallbacks
    def test_msrp(self):
        """
        Binary MSRP over TLS: the name and a LIST frame are answered with the
        exact list frame, and a MSJE frame reaches the other TLS client.
        """
        pki = self.makePKI()
        self.startServer(["msrp"], pki)
        clt1 = yield self.connect("msrp", pki)
        clt1.transport.write(b"clt1" + b"\x00\x03")
        expected = listFrame("clt1")
        received = yield clt1.waitFor(exactly(expected))
        self.assertEqual(received, expected)
        self.assertServerCertificate(clt1, pki)

        clt2 = yield self.connect("msrp", pki)
        clt2.transport.write(b"clt2" + b"\x00\x03")
        expected = listFrame("clt1", "clt2")
        received = yield clt2.waitFor(exactly(expected))
        self.assertEqual(received, expected)

        clt1.received = b""
        clt2.transport.write(b"\x00\x01clt1Hola\x00")
        expected = b"\x00\x01clt2Hola\x00"
        received = yield clt1.waitFor(exactly(expected))
        self.assertEqual(received, expected)

    @defer.inlineCallbacks
    def test_msrpForPeople(self):
        """
        The typed mode works over TLS too (what `openssl s_client` users get,
        docs/tls.md): a name and Enter get the greeting, `clientes` the list.
        """
        pki = self.makePKI()
        self.startServer(["msrp"], pki)
        person = yield self.connect("msrp", pki)
        person.transport.write(b"alic\n")
        greeting = yield person.waitFor(lines(1))
        self.assertEqual(
            greeting,
            ["Hola, alic. Escribe: <nombre> <texto>, all <texto>, clientes o salir."],
        )
        person.transport.write(b"clientes\n")
        answer = yield person.waitFor(lines(3))
        self.assertEqual(answer[1:], ["Lista de clientes:", "Cliente 1: alic"])

    @defer.inlineCallbacks
    def test_http(self):
        """
        The MSGR HTTP API over HTTPS, through twisted.web's Agent with a
        browser-like policy trusting the test root: registering answers
        `702` and logging in `701||<token>`.
        """
        pki = self.makePKI()
        self.startServer(["msgr-http"], pki)
        agent = self.agent(pki)
        code, body = yield self.postForm(agent, "/usuariocrear", usr="ana", **{"pass": "secreto"})
        self.assertEqual((code, body), (200, "702"))
        code, body = yield self.postForm(agent, "/status", usr="ana", **{"pass": "secreto"})
        self.assertEqual(code, 200)
        status, _, token = body.partition("||")
        self.assertEqual(status, "701")
        self.assertTrue(token)
        self.assertNotIn("|", token)
        code, body = yield self.postForm(agent, "/status", usr="ana", **{"pass": "otra"})
        self.assertEqual((code, body), (200, "801"))

    @defer.inlineCallbacks
    def test_msgrSocket(self):
        """
        MSGR end to end over TLS: register and log in on the HTTPS API, then
        bind the TLS chat socket with `#HOLA||<token>||<user>`; it answers
        `#RESPUESTA||-||1||#HOLA||<user>||701` and the lists.
        """
        pki = self.makePKI()
        self.startServer(["msgr-http", "msgr"], pki)
        agent = self.agent(pki)
        code, body = yield self.postForm(agent, "/usuariocrear", usr="Ana", **{"pass": "secreto"})
        self.assertEqual((code, body), (200, "702"))
        code, body = yield self.postForm(agent, "/status", usr="Ana", **{"pass": "secreto"})
        status, _, token = body.partition("||")
        self.assertEqual((code, status), (200, "701"))

        chat = yield self.connect("msgr", pki)
        chat.transport.write(f"#HOLA||{token}||Ana||s3rv1d0r||Ana\n".encode("utf-8"))
        answer = yield chat.waitFor(lines(3))
        self.assertEqual(
            answer,
            [
                "#RESPUESTA||-||1||#HOLA||Ana||701",
                "#LISTA_USUARIOS||-||Ana||",
                "#SOLICITUDES||-||Ana||",
            ],
        )
        self.assertServerCertificate(chat, pki)
        info = self.top.presence.lookup("ana")
        self.assertEqual((info.name, info.protocol, info.ip), ("Ana", "msgr", LOOPBACK))


class VerificationTests(TLSServerMixin, TestCase):
    """TLS as deployed: plain clients get nothing, chains, real verification."""

    @defer.inlineCallbacks
    def test_plainClientOnTlsPort(self):
        """
        Someone who runs plain `nc` against the TLS MSRP port and types a name
        gets no greeting, no list and no login (at most a TLS alert) and the
        server closes the connection; a TLS client is served afterwards with
        the very name the plain one tried.
        """
        pki = self.makePKI()
        self.startServer(["msrp"], pki)
        plain = yield self.connectPlain("msrp")
        plain.transport.write(b"clt1\nclientes\n")
        yield plain.closed
        self.assertNotIn(b"Hola", plain.received)
        self.assertNotIn(b"Lista", plain.received)
        if plain.received:
            # A TLS record of type 21 (alert), nothing of chatd's.
            self.assertEqual(plain.received[:1], b"\x15")
        self.assertIsNone(self.top.presence.lookup("clt1"))

        client = yield self.connect("msrp", pki)
        client.transport.write(b"clt1\x00\x03")
        expected = listFrame("clt1")
        received = yield client.waitFor(exactly(expected))
        self.assertEqual(received, expected)

    @defer.inlineCallbacks
    def test_certificateChain(self):
        """
        A server certificate signed by an intermediate CA, served with
        `extraCertChain=` (the intermediate's PEM): a client that trusts only
        the root accepts it, and the exchange works.
        """
        pki = self.makePKI(intermediate=True)
        self.startServer(["msrp"], pki)
        client = yield self.connect("msrp", pki)
        client.transport.write(b"clt1\x00\x03")
        expected = listFrame("clt1")
        received = yield client.waitFor(exactly(expected))
        self.assertEqual(received, expected)
        self.assertServerCertificate(client, pki)

    @defer.inlineCallbacks
    def test_chainMissing(self):
        """
        The same certificate served without `extraCertChain=`: the client
        that trusts only the root refuses the server, and nothing the client
        wrote reaches chatd. This is what test_certificateChain's option
        changes.
        """
        pki = self.makePKI(intermediate=True)
        self.startServer(["msrp"], pki, chain=False)
        client = yield self.connect("msrp", pki)
        client.transport.write(b"clt1\x00\x03")
        yield client.closed
        self.assertEqual(client.received, b"")
        self.assertTrue(client.lostReason.check(SSL.Error), client.lostReason)
        self.assertIsNone(self.top.presence.lookup("clt1"))

    @defer.inlineCallbacks
    def test_clientVerifiesServer(self):
        """
        The test clients really verify: one trusting another root, and one
        expecting another host name, are both refused before any chat data
        goes through.
        """
        pki = self.makePKI()
        self.startServer(["msrp"], pki)

        stranger = self.makePKI(rootName="some other root")
        client = yield self.connect("msrp", stranger)
        client.transport.write(b"clt1\x00\x03")
        yield client.closed
        self.assertEqual(client.received, b"")
        self.assertTrue(client.lostReason.check(SSL.Error), client.lostReason)

        client = yield self.connect("msrp", pki, hostname="chat.example.org")
        client.transport.write(b"clt2\x00\x03")
        yield client.closed
        self.assertEqual(client.received, b"")
        self.assertTrue(client.lostReason.check(VerificationError), client.lostReason)

        self.assertEqual(self.top.presence.users(), [])

    @defer.inlineCallbacks
    def test_fullChainAsCertKeyIsNotEnough(self):
        """
        `certKey=` pointing at a "full chain" file (leaf then intermediate)
        sends the leaf alone: Twisted reads only the first certificate there.
        docs/tls.md therefore says to give the intermediates in
        `extraCertChain=`.
        """
        pki = self.makePKI(intermediate=True)
        served = dataclasses.replace(pki, cert=pki.fullchain, chain=None)
        self.startServer(["msrp"], served)
        client = yield self.connect("msrp", pki)
        client.transport.write(b"clt1\x00\x03")
        yield client.closed
        self.assertEqual(client.received, b"")
        self.assertTrue(client.lostReason.check(SSL.Error), client.lostReason)

    @defer.inlineCallbacks
    def test_keyAndCertificateInOneFile(self):
        """
        `privateKey=` alone, naming one file with the key and the certificate
        (`certKey` defaults to it), serves that certificate.
        """
        pki = self.makePKI()
        self.startServer(["protobuf"], dataclasses.replace(pki, key=pki.combined, cert=None))
        client = yield self.connect("protobuf", pki)
        client.transport.write(login("alice").SerializeToString())
        response = yield client.waitFor(protobufResponseWith("user"))
        self.assertEqual(
            (response.code, response.user.username), (R.SUCCESSFUL_OPERATION, "alice")
        )
        self.assertServerCertificate(client, pki)


def tool(name: str) -> str:
    """The path of command line tool C{name}; the test is skipped without it."""
    path = shutil.which(name)
    if path is None:
        raise SkipTest(f"{name} is not installed (make test installs it on Debian)")
    return path


class NegotiationTests(TLSServerMixin, TestCase):
    """
    Clients that offer ALPN (curl and browsers always do; `openssl s_client
    -alpn`) are served on every TLS listener, whether or not the listener
    speaks a protocol they offer; failed handshakes are logged.
    """

    @defer.inlineCallbacks
    def runTool(self, argv: list[str], stdin: bytes = b"", path: str | None = None):
        """Run a real client; (output with stderr, exit code)."""
        process = ProcessOutput(stdin)
        reactor.spawnProcess(process, argv[0], argv, env=dict(os.environ), path=path)
        result = yield process.done
        return result

    @defer.inlineCallbacks
    def test_sClientOffersAnUnknownProtocol(self):
        """
        docs/tls.md's `openssl s_client -alpn foo` recipe, as written, run in
        a directory with the test CA as `ca.pem`, against each of the five
        listeners (its port in place of 5000): the handshake completes,
        verified, with no protocol negotiated (it got alert 80, "internal
        error", before).
        """
        pki = self.makePKI()
        labels = list(OPTION)
        self.startServer(labels, pki)
        tool("openssl")
        directory = os.path.dirname(pki.root)
        shutil.copy(pki.root, os.path.join(directory, "ca.pem"))
        # The block marked for this runner (tests/test_doc_commands.py).
        recipe = markedBlock(self, "tls-alpn-foo").commands[0]
        self.assertIn("localhost:5000", recipe)
        for label in labels:
            command = recipe.replace("localhost:5000", f"localhost:{self.ports[label]}")
            output, code = yield self.runTool(
                ["/bin/bash", "-c", command], path=directory
            )
            self.assertNotIn("alert", output, label)
            self.assertIn("\nNo ALPN negotiated\n", output, label)
            self.assertIn("\nVerify return code: 0 (ok)\n", output, label)
            self.assertEqual(code, 0, (label, output))

    @defer.inlineCallbacks
    def test_sClientTypesToMsrp(self):
        """
        A person on `openssl s_client -alpn foo` (what any client offering
        ALPN looks like) logs in to MSRP in the typed mode and is answered.
        """
        pki = self.makePKI()
        self.startServer(["msrp"], pki)
        output, code = yield self.runTool(
            [tool("openssl"), "s_client", "-quiet", "-alpn", "foo",
             "-verify_return_error", "-CAfile", pki.root,
             "-connect", f"{LOOPBACK}:{self.ports['msrp']}"],
            stdin=b"alic\nclientes\nsalir\n",
        )
        self.assertIn(
            "Hola, alic. Escribe: <nombre> <texto>, all <texto>, clientes o salir.\n"
            "Lista de clientes:\nCliente 1: alic\nAdiós.\n",
            output,
        )

    @defer.inlineCallbacks
    def test_curl(self):
        """
        curl (which offers h2 and http/1.1) registers and logs in on the
        HTTPS API, with http/1.1 negotiated, and reads /healthz on the
        metrics listener.
        """
        pki = self.makePKI()
        self.startServer(["msgr-http", "metrics"], pki)
        self.top.accounts.scrypt = FAST_SCRYPT
        curl = tool("curl")
        base = ["--silent", "--show-error", "--cacert", pki.root]
        http = f"https://localhost:{self.ports['msgr-http']}"
        output, code = yield self.runTool(
            [curl, *base, "-d", "usr=ana", "-d", "pass=secreto", f"{http}/usuariocrear"]
        )
        self.assertEqual((output, code), ("702", 0))
        output, code = yield self.runTool(
            [curl, *base, "--verbose", "-d", "usr=ana", "-d", "pass=secreto",
             f"{http}/status"]
        )
        self.assertEqual(code, 0, output)
        # (curl 7.88 words it "ALPN: server accepted http/1.1", older ones
        # "ALPN, server accepted to use http/1.1".)
        self.assertRegex(output, r"ALPN[:,] server accepted (to use )?http/1\.1")
        self.assertIn("701||", output)
        output, code = yield self.runTool(
            [curl, *base, f"https://localhost:{self.ports['metrics']}/healthz"]
        )
        self.assertEqual((output, code), ("ok\n", 0))

    @defer.inlineCallbacks
    def test_handshakeFailureLogged(self):
        """
        A plain client on a TLS port is a failed handshake: the log says
        which listener, the peer, and OpenSSL's reason.
        """
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        pki = self.makePKI()
        self.startServer(["protobuf"], pki)
        plain = yield self.connectPlain("protobuf")
        plain.transport.write(b"GET / HTTP/1.0\r\n\r\n")
        yield plain.closed
        yield self.serverConnections[0].whenEmpty()
        failed = [e for e in events if e.get("event") == "tls-handshake-failed"]
        self.assertEqual(len(failed), 1, failed)
        self.assertEqual(
            (failed[0]["protocol"], failed[0]["peer"], failed[0]["reason"]),
            ("protobuf", LOOPBACK, "http request"),
        )
        self.assertIn(
            "chatd protobuf: TLS handshake with 127.0.0.1 failed: http request",
            formatEvent(failed[0]),
        )

    @defer.inlineCallbacks
    def test_noDeprecatedOpenSSLObjects(self):
        """
        The listener hands OpenSSL its key and certificates as cryptography
        objects: serving a client warns of nothing deprecated.
        """
        pki = self.makePKI(intermediate=True)
        self.startServer(["protobuf"], pki)
        client = yield self.connect("protobuf", pki)
        client.transport.write(login("alice").SerializeToString())
        yield client.waitFor(protobufResponseWith("user"))
        deprecated = [
            w["message"] for w in self.flushWarnings()
            if issubclass(w["category"], DeprecationWarning)
        ]
        self.assertEqual(deprecated, [])


class ProcessOutput(ProcessProtocol):
    """A child's stdout and stderr together, and its exit code."""

    def __init__(self, stdin: bytes) -> None:
        self.stdin = stdin
        self.output = b""
        self.done: defer.Deferred = defer.Deferred()

    def connectionMade(self) -> None:
        if self.stdin:
            self.transport.write(self.stdin)
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason) -> None:
        self.done.callback(
            (self.output.decode("utf-8", "replace"), reason.value.exitCode)
        )


class HandshakeFailureLogTests(TestCase):
    """Failed handshakes are logged at most once a window per listener."""

    def test_oncePerWindow(self):
        clock = Clock()
        failures = HandshakeFailureLog("msrp", clock)
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        failures.failed("192.0.2.1", "wrong version number")
        clock.advance(HANDSHAKE_LOG_INTERVAL - 1)
        failures.failed("192.0.2.2", "no shared cipher")
        failures.failed("192.0.2.3", "no shared cipher")
        clock.advance(1)
        failures.failed("192.0.2.4", "tlsv1 alert unknown ca")
        logged = [
            formatEvent(e) for e in events if e.get("event") == "tls-handshake-failed"
        ]
        self.assertEqual(
            logged,
            [
                "chatd msrp: TLS handshake with 192.0.2.1 failed: wrong version"
                " number (0 more not logged since the last such line)",
                "chatd msrp: TLS handshake with 192.0.2.4 failed: tlsv1 alert"
                " unknown ca (2 more not logged since the last such line)",
            ],
        )
        self.assertEqual(failures.failures, 4)


class TypedSession(ProcessProtocol):
    """
    A command a person types C{typed} into: its standard output, and its end
    (L{stop} ends it once what was awaited came: C{s_client -quiet} keeps a
    connection open after the end of its input).
    """

    def __init__(self, typed: bytes) -> None:
        self.typed = typed
        self.output = b""
        self.errors = b""
        self.ended: defer.Deferred = defer.Deferred()
        self._waiting: tuple | None = None

    def connectionMade(self) -> None:
        self.transport.write(self.typed)
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self.output += data
        # Once as much came as was awaited, or something else, it is
        # compared (no waiting for more that will not come).
        if self._waiting and (
            len(self.output) >= len(self._waiting[0])
            or not self._waiting[0].startswith(self.output)
        ):
            expected, d = self._waiting
            self._waiting = None
            d.callback(None)

    def errReceived(self, data: bytes) -> None:
        self.errors += data

    def waitFor(self, expected: bytes) -> defer.Deferred:
        """Fires once standard output is as long as C{expected}, or differs."""
        d = defer.Deferred()
        self._waiting = (expected, d)
        self.outReceived(b"")
        return d

    def processEnded(self, reason) -> None:
        self.exitCode = reason.value.exitCode
        if self._waiting:
            self._waiting[1].errback(reason)
        self.ended.callback(None)


class DocumentedClientTests(TLSServerMixin, TestCase):
    """
    docs/tls.md's client recipes, in the order the page gives them, run as
    written in a directory with the test CA as C{ca.pem} (only the port
    changes): curl registers and logs in C{ana} over HTTPS, a person on
    C{openssl s_client} uses MSRP's typed mode, and binds the MSGR socket
    with the token of that login.
    """

    #: What the person types in each session, in the order the block shows.
    TYPED = {
        "tls-msrp-session": ["alic", "clientes", "salir"],
        "tls-msgr-session": ["#HOLA||<token>||ana"],
    }

    def session(self, name: str, directory: str, substitute=lambda line: line):
        """(the command, the lines typed, what the block shows the server saying)."""
        block = markedBlock(self, name)
        command, *transcript = [line for line in block.lines if line]
        typed = [line for line in transcript if line in self.TYPED[name]]
        self.assertEqual(typed, self.TYPED[name], block)
        shown = [substitute(line) for line in transcript if line not in typed]
        return command, [substitute(line) for line in typed], shown

    def localize(self, command: str) -> str:
        for label, default in (("msrp", 8080), ("msgr", 1234), ("msgr-http", 8000)):
            command = command.replace(f"localhost:{default}", f"localhost:{self.ports[label]}")
        return command

    @defer.inlineCallbacks
    def typed(self, command: str, typed: list[str], shown: list[str], directory: str):
        session = TypedSession("".join(line + "\n" for line in typed).encode())
        reactor.spawnProcess(
            session, "/bin/bash", ["bash", "-c", self.localize(command)],
            env=dict(os.environ), path=directory,
        )
        expected = "".join(line + "\n" for line in shown).encode()
        # MSRP's "salir" closes the connection, and s_client ends; the MSGR
        # session stays open, so it is ended once its answers came.
        ends = "salir" in typed
        try:
            yield session.waitFor(expected)
        finally:
            if not ends and not session.ended.called:
                session.transport.signalProcess("TERM")
            yield session.ended
        self.assertEqual(session.output.decode(), expected.decode(), session.errors)
        if ends:
            self.assertEqual(session.exitCode, 0, "salir ends the session")

    @defer.inlineCallbacks
    def test_clientRecipes(self):
        tool("curl")
        tool("openssl")
        pki = self.makePKI()
        self.startServer(["msrp", "msgr", "msgr-http"], pki)
        directory = os.path.dirname(pki.root)
        shutil.copy(pki.root, os.path.join(directory, "ca.pem"))

        env = dict(os.environ)
        for line in markedBlock(self, "tls-curl").commands:
            command, _, shown = line.partition("  # ")
            assignment = re.match(r"^(\w+)=\$\(", command)
            if assignment:
                command += f'; printf %s "${assignment.group(1)}"'
            output, code = yield getProcessOutputAndValue(
                "/bin/bash", ["-c", self.localize(command.rstrip())], env=env, path=directory
            ).addCallback(lambda r: (r[0].decode(), r[2]))
            self.assertEqual(code, 0, command)
            if assignment:
                env[assignment.group(1)] = output
            elif shown.strip() == "701||<token>":
                self.assertRegex(output, r"^701\|\|[\w-]{43}$")
            else:
                self.assertEqual(output, shown.strip(), command)
        token = env["TOKEN"]
        self.assertEqual(len(token), 43)

        yield self.typed(*self.session("tls-msrp-session", directory), directory)
        yield self.typed(
            *self.session("tls-msgr-session", directory, lambda line: line.replace("<token>", token)),
            directory,
        )

    @defer.inlineCallbacks
    def test_showCerts(self):
        """
        The check of what clients receive, as written, with the test server
        in place of chat.example.org:8000 (its name, localhost, and its
        port) and the test root trusted as a public CA is (the system's
        store, SSL_CERT_FILE): the leaf and the intermediate are listed, and
        the chain verifies.
        """
        openssl = tool("openssl")
        pki = self.makePKI(intermediate=True)
        self.startServer(["msgr-http"], pki)
        [command] = markedBlock(self, "tls-show-certs").commands
        command = command.replace("chat.example.org:8000", f"localhost:{self.ports['msgr-http']}")
        command = command.replace("-servername chat.example.org", "-servername localhost")
        self.assertNotIn("example.org", command)
        env = dict(os.environ, SSL_CERT_FILE=pki.root, PATH=os.path.dirname(openssl) + ":/usr/bin:/bin")
        output, code = yield getProcessOutputAndValue(
            "/bin/bash", ["-c", command], env=env, path=os.path.dirname(pki.root)
        ).addCallback(lambda r: (r[0].decode(), r[2]))
        self.assertEqual(code, 0, output)
        chain = output[output.index("Certificate chain") :]
        self.assertIn("\n 0 s:", chain)
        self.assertIn("\n 1 s:", chain)
        self.assertNotIn("\n 2 s:", chain)
        self.assertIn("Verify return code: 0 (ok)", output)
