"""
Hostile input for MSGR UQ (issue 5): the line codec alone, the chat socket
and the HTTP API (the real twisted.web Site) on a real SQLite account store,
fed arbitrary bytes and mutated valid input.

The socket and the HTTP API answer through the database, so each example
needs the reactor: the hypothesis loop runs in a thread (the test returns its
Deferred) and each example runs in the reactor thread through
C{blockingCallFromThread}.
"""

from __future__ import annotations

import json
import re
from urllib.parse import urlencode

from hypothesis import event, given, settings
from hypothesis import strategies as st
from twisted.internet import defer, reactor, threads
from twisted.trial.unittest import TestCase

from chatd.msgr.codec import (
    LineDecoder,
    LineTooLong,
    NotUtf8,
    buildLine,
    decodeLine,
    escape,
    joinList,
    splitFields,
    splitList,
    unescape,
)
from tests.fuzzing import cut, cutPoints, mutate, mutations
from tests.test_msgr_helpers import MsgrHarness

TOKEN = b"{TOKEN}"


def inThread(test):
    """
    Run the hypothesis-wrapped function C{test} in a thread, so that each of
    its examples can wait on the reactor.
    """
    return threads.deferToThread(test)


def onReactor(f, *args):
    """From the hypothesis thread: run C{f} in the reactor thread, wait, return."""
    return threads.blockingCallFromThread(reactor, f, *args)


class CodecFuzzTests(TestCase):
    @settings(max_examples=300, deadline=None)
    @given(
        st.integers(0, 12),
        st.one_of(
            st.binary(max_size=200),
            st.lists(st.sampled_from([b"ab", b"\r", b"\n", b"x" * 13, b"\xff"]), max_size=20).map(b"".join),
        ),
        cutPoints,
        cutPoints,
    )
    def test_lineDecoderExactUnderAnyCut(self, maxLine, data, pointsA, pointsB) -> None:
        """
        Any bytes: complete lines of at most C{maxLine} bytes, a
        L{LineTooLong} for each longer one, the same under any cut; never
        more than C{maxLine} bytes held.
        """
        *lines, _ = data.split(b"\n")
        expected = ["long" if len(line) > maxLine else line for line in lines]
        for points in (pointsA, pointsB, []):
            decoder = LineDecoder(maxLine)
            got: list = []
            for chunk in cut(data, points):
                for item in decoder.feed(chunk):
                    self.assertIsInstance(item, (bytes, LineTooLong))
                    got.append(item if isinstance(item, bytes) else "long")
                self.assertLessEqual(decoder.pending, maxLine)
            self.assertEqual(got, expected)

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=200))
    def test_decodeLineOnlyNotUtf8(self, raw) -> None:
        try:
            line = decodeLine(raw)
        except NotUtf8:
            return
        self.assertIsInstance(line, str)

    @settings(max_examples=300, deadline=None)
    @given(st.text(alphabet=st.sampled_from("ab|&\\nr\n\r#é"), max_size=40) | st.text(max_size=40))
    def test_splittingIsTotal(self, text) -> None:
        """Splitting and unescaping any text never raises, and loses nothing."""
        for maxFields in (None, 1, 2, 5):
            fields = splitFields(text, maxFields)
            self.assertEqual("||".join(fields), text)
            if maxFields is not None:
                self.assertLessEqual(len(fields), maxFields)
        for item in splitList(text):
            self.assertIsInstance(item, str)
        self.assertIsInstance(unescape(text), str)

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.text(max_size=20), max_size=6), st.lists(st.text(max_size=10), max_size=5))
    def test_escapedFieldsRoundTrip(self, fields, items) -> None:
        """What buildLine and joinList write reads back exactly."""
        line = decodeLine(buildLine("#X", *fields)[:-1])
        parts = splitFields(line)
        self.assertEqual(parts[0], "#X")
        self.assertEqual([unescape(p) for p in parts[1:]], fields)
        if items != [""]:
            self.assertEqual(splitList(joinList(items)), items)
        for field in fields:
            self.assertEqual(unescape(escape(field)), field)


# Lines a hostile bound client might send, with {TOKEN} for its real token.
_T = TOKEN.decode()
socketLines = st.one_of(
    st.sampled_from(
        [
            f"#MSJ||{_T}||Mal||Cy||hola",
            f"#MSJ||{_T}||Mal||Cy||a||b&&c\\",
            f"#MSJ||{_T}||Mal||all||todos",
            f"#MSJ||{_T}||Mal||Mal||yo",
            f"#MSJ||{_T}||Mal||Nadie||hola",
            f"#MSJ||{_T}||Ana||Cy||no soy Ana",
            "#MSJ||forged||Mal||Cy||hola",
            f"#ARCHIVO||{_T}||Mal||Cy||a.txt||aG9sYQ==",
            f"#IMG||{_T}||Mal||Mal||a.png||aG9sYQ==",
            f"#ARCHIVO||{_T}||Mal||Cy||a.txt||no base64!",
            f"#ARCHIVO||{_T}||Mal||Cy||a.txt||" + "QUFB" * 40,
            f"#MEME||{_T}||Mal||Cy||gato",
            f"#SOLICITUD||{_T}||Mal||Cy",
            f"#ACEPTAR||{_T}||Mal||Cy",
            f"#RECHAZAR||{_T}||Mal||Cy",
            f"#HOLA||{_T}||Mal",
            f"#DESCONECTAR||{_T}||Mal",
            "#NADA||x",
            "",
            "   ",
        ]
    ),
    st.text(max_size=30).map(lambda t: t.replace("\n", "")),
).map(lambda line: line.encode("utf-8"))

socketStreams = st.one_of(
    st.tuples(st.just(b""), st.binary(max_size=300), st.just([])),
    st.tuples(
        st.lists(socketLines, max_size=6).map(
            lambda lines: b"".join(line + b"\n" for line in [b"#HOLA||" + TOKEN + b"||Mal", *lines])
        ),
        st.just(b""),
        mutations,
    ),
    st.tuples(st.just(b"#HOLA||" + TOKEN + b"||Mal\n"), st.binary(max_size=300), st.just([])),
)


def assertMsgrOutput(test: TestCase, data: bytes) -> None:
    """C{data} is whole MSGR lines, each starting with C{#}."""
    text = data.decode("utf-8")
    if text:
        test.assertTrue(text.endswith("\n"), text)
        for line in text[:-1].split("\n"):
            test.assertTrue(line.startswith("#"), text)


class SocketFuzzTests(TestCase):
    """
    A hostile client of the chat socket never makes C{dataReceived} raise or
    log a failure, only gets MSGR lines, and leaves the server serving
    everyone else.
    """

    @defer.inlineCallbacks
    def setUp(self):
        self.h = MsgrHarness(self, maxLine=200, maxFile=64)
        for name in ("Mal", "Ana", "Bea", "Cy"):
            yield self.h.register(name)

    @defer.inlineCallbacks
    def bind(self, name: str):
        client = self.h.connect()
        client.sendLine(f"#HOLA||{self.h.tokens.issue(name)}||{name}")
        yield self.h.settle()
        lines = client.lines()
        self.assertEqual(lines[0], f"#RESPUESTA||-||1||#HOLA||{name}||701")
        return client

    @defer.inlineCallbacks
    def hostileSession(self, stream, points):
        h = self.h
        template, tail, edits = stream
        cy = yield self.bind("Cy")
        token = h.tokens.issue("Mal").encode()
        data = mutate(template.replace(TOKEN, token), edits) + tail
        mal = h.connect("10.6.6.6")
        for chunk in cut(data, points):
            if mal.closed:
                break  # a real transport reads nothing more once closing
            if mal.transport.producerState == "paused":
                yield h.settle()  # the bind under way ends first
            mal.send(chunk)
        yield h.settle(6)
        self.assertEqual(self.flushLoggedErrors(), [])
        bound = mal.protocol.user is not None
        assertMsgrOutput(self, mal.transport.value())
        assertMsgrOutput(self, cy.transport.value())
        cy.transport.clear()

        # Well-behaved clients on other connections are served exactly.
        ana = yield self.bind("Ana")
        bea = yield self.bind("Bea")
        ana.lines()
        ana.sendLine(f"#MSJ||{ana.protocol.token}||Ana||Bea||hola, ¿qué tal?")
        self.assertEqual(ana.lines(), ["#RESPUESTA||-||2||#MSJ||Ana||704"])
        self.assertEqual(bea.lines(), ["#MSJ||-||Ana||Bea||hola, ¿qué tal?"])

        # Once gone, the hostile client's name (if it got one) is free.
        mal.lose()
        yield h.settle()
        self.assertIsNone(h.presence.lookup("Mal"))
        self.assertIsNone(h.msgr.boundSession("Mal"))
        self.assertEqual(
            [u.name for u in h.presence.users()],
            (["Cy"] if not cy.closed else []) + ["Ana", "Bea"],
        )
        for client in (cy, ana, bea):
            client.lose()
        yield h.settle()
        self.assertEqual(h.presence.users(), [])
        self.assertEqual(list(h.factory.connections), [])
        self.assertEqual(self.flushLoggedErrors(), [])
        return bound

    def test_hostileClient(self):
        @settings(max_examples=120, deadline=None)
        @given(socketStreams, cutPoints)
        def check(stream, points):
            bound = onReactor(self.hostileSession, stream, points)
            event(f"hostile bound: {bound}")

        return inThread(check)


# The HTTP API.

FORM_PATHS = [
    "/status",
    "/usuariocrear",
    "/usuariomodificar",
    "/obtenerusuarios",
    "/obtenersolicitudes",
    "/enviarsolicitud",
    "/aceptarsolicitud",
    "/rechazarsolicitud",
]
JSON_PATHS = [
    "/api/login",
    "/api/register",
    "/api/account",
    "/api/friends",
    "/api/friend-requests",
    "/api/send-friend-request",
    "/api/accept-friend-request",
    "/api/reject-friend-request",
    "/api/logout",
]

_tokenOrText = st.one_of(st.just(_T), st.text(max_size=20))
formFields = st.dictionaries(
    st.sampled_from(
        ["usr", "pass", "token", "para", "id", "de", "nombres", "apellidos", "email", "estado", "x", ""]
    ),
    st.one_of(st.text(max_size=20), st.sampled_from(["Ana", "Bea", "secreto", _T])),
    max_size=6,
)
jsonValues = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=8,
)
jsonDocuments = st.one_of(
    st.dictionaries(
        st.sampled_from(
            ["user", "password", "names", "surnames", "email", "status", "to", "from", "token", "x"]
        ),
        st.one_of(jsonValues, st.sampled_from(["Ana", "Bea", "secreto", _T])),
        max_size=6,
    ),
    jsonValues,
)

formBodies = st.one_of(
    formFields.map(lambda fields: urlencode(fields).encode()),
    st.binary(max_size=200),
    st.builds(mutate, formFields.map(lambda f: urlencode(f).encode()), mutations),
)
jsonBodies = st.one_of(
    jsonDocuments.map(lambda doc: json.dumps(doc).encode()),
    st.binary(max_size=200),
    st.builds(mutate, jsonDocuments.map(lambda doc: json.dumps(doc).encode()), mutations),
)
headerText = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30
).map(str.strip)
contentTypes = st.sampled_from(
    [
        None,
        "application/x-www-form-urlencoded",
        "application/json",
        "text/plain",
        "multipart/form-data",
        "multipart/form-data; boundary=x",
    ]
)
authorizations = st.one_of(
    st.none(), st.just("Bearer " + _T), headerText, headerText.map(lambda t: "Bearer " + t)
)
methods = st.sampled_from(["POST", "POST", "POST", "GET", "HEAD", "PUT", "DELETE", "PATCH"])

httpRequests = st.one_of(
    st.tuples(st.sampled_from(FORM_PATHS), methods, formBodies, contentTypes, authorizations),
    st.tuples(st.sampled_from(JSON_PATHS), methods, jsonBodies, contentTypes, authorizations),
)


class HttpFuzzTests(TestCase):
    """
    Any body to any path of the HTTP API is answered with a status and the
    seed's code (form paths) or a JSON object with a code (JSON paths),
    never a traceback or an HTML page; the API keeps serving afterwards.
    """

    @defer.inlineCallbacks
    def setUp(self):
        self.h = MsgrHarness(self)
        for name in ("Ana", "Bea", "Zoe"):
            yield self.h.register(name)

    @defer.inlineCallbacks
    def hostileRequest(self, path, method, body, contentType, authorization):
        h = self.h
        token = h.tokens.issue("Ana")
        body = body.replace(TOKEN, token.encode())
        headers = {}
        if contentType is not None:
            headers["Content-Type"] = contentType
        if authorization is not None:
            headers["Authorization"] = authorization.replace(_T, token)
        # A request that is never answered fails the example, not the run.
        response = yield h.request(method, path, body, headers).addTimeout(3, reactor)
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertNotEqual(response.status, 500, response)
        self.assertIn(response.status, (200, 400, 401, 403, 405), response)
        if method == "HEAD":
            self.assertEqual(response.body, "")
        elif path.startswith("/api/"):
            self.assertEqual(response.headers["content-type"], "application/json")
            document = json.loads(response.body)
            self.assertIsInstance(document, dict, response)
            self.assertIsInstance(document.get("code"), int, response)
        else:
            self.assertTrue(response.headers["content-type"].startswith("text/plain"), response)
            self.assertIsNotNone(re.match(r"\d{3}(\|\||$)", response.body), response)
        self.assertNotIn("Traceback", response.body)
        self.assertNotIn("<html", response.body.lower())

        # A well-behaved call afterwards is served.
        login = yield h.form("/status", usr="Zoe", **{"pass": "secreto"})
        self.assertEqual((login.status, login.body[:5]), (200, "701||"))
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_anyRequest(self):
        @settings(max_examples=150, deadline=None)
        @given(httpRequests)
        def check(req):
            onReactor(self.hostileRequest, *req)

        return inThread(check)
