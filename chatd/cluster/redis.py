"""
The connection of one chatd node to the cluster's Redis.

L{parseClusterURL} reads C{--cluster}; L{ClusterConnection} keeps two
connections open (txredisapi, Twisted-native), reconnecting each with a
capped exponential backoff:

  - C{redis}, the command connection: the node's scripts, heartbeat and
    publishes, and whatever other parts of chatd run under the prefix. One
    connection, so that Redis keeps the order of what this node publishes
    (messages from one sender to one receiver arrive in order);
  - the subscriber connection (pub/sub), which hands every message to
    C{onMessage(channel, message)} and subscribes again after a reconnect.

What a node publishes goes through L{Publisher}, which joins what one
reactor turn publishes into one PUBLISH per run of a channel (a JSON array,
or the binary frame of a run of direct messages: docs/cluster.md, "What is
in Redis").
"""

from __future__ import annotations

import hashlib
import os
import socket
import sys
from array import array
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

import txredisapi
from twisted.application import service
from twisted.internet import defer
from twisted.internet.endpoints import (
    HostnameEndpoint,
    UNIXClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.logger import Logger

from chatd.cluster import DEFAULT_PREFIX

#: Redis' own port.
DEFAULT_PORT = 6379

#: The most bytes of messages joined into one PUBLISH (a single message
#: larger than that still goes, alone).
BATCH_LIMIT = 64 * 1024

#: Seconds before the first reconnection attempt, and the most between two.
RECONNECT_INITIAL = 0.5
RECONNECT_MAX = 10.0


@dataclass(frozen=True)
class ClusterAddress:
    """
    Where the cluster's Redis is: C{kind} is C{tcp}, C{tls} or C{unix};
    C{host} and C{port} for the first two, C{path} for C{unix}.
    """

    kind: str
    host: str = ""
    port: int = DEFAULT_PORT
    path: str = ""
    db: int = 0
    password: str | None = None
    username: str | None = None
    #: C{rediss://}: a PEM file of the CA to trust instead of the system's.
    ca: str | None = None

    def describe(self) -> str:
        """The address without its password, for logs."""
        if self.kind == "unix":
            return f"unix://{self.path}?db={self.db}"
        scheme = "rediss" if self.kind == "tls" else "redis"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}/{self.db}"


def parseClusterURL(url: str) -> ClusterAddress:
    """
    Read a C{--cluster} URL:

      - C{redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]}, plain TCP;
      - C{rediss://…[?ca=PEM]}, the same over TLS (the server's
        certificate is checked against HOST and the system's CAs, or the CA
        of the PEM file C{ca});
      - C{unix:///PATH[?db=DB]} (also C{redis+unix://}), a Unix socket.

    @raise ValueError: with the reason, for anything else.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    query = parse_qs(parts.query)
    password = unquote(parts.password) if parts.password is not None else None
    username = unquote(parts.username) if parts.username else None
    if scheme in ("unix", "redis+unix"):
        if not parts.path:
            raise ValueError(f"{url!r} names no socket path")
        return ClusterAddress(
            "unix",
            path=parts.path,
            db=_db(query.get("db", ["0"])[0], url),
            password=password,
            username=username,
        )
    if scheme not in ("redis", "rediss"):
        raise ValueError(
            f"{url!r} is not redis://HOST:PORT/DB, rediss://… or unix:///PATH?db=N"
        )
    if not parts.hostname:
        raise ValueError(f"{url!r} names no host")
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise ValueError(f"{url!r} has a bad port") from None
    path = parts.path.strip("/")
    db = _db(path or query.get("db", ["0"])[0], url)
    ca = query.get("ca", [None])[0]
    if ca is not None and scheme != "rediss":
        raise ValueError(f"{url!r}: ca= is for rediss:// only")
    return ClusterAddress(
        "tls" if scheme == "rediss" else "tcp",
        host=parts.hostname,
        port=port,
        db=db,
        password=password,
        username=username,
        ca=ca,
    )


def _db(text: str, url: str) -> int:
    try:
        db = int(text)
    except ValueError:
        raise ValueError(f"{url!r}: the database must be a number") from None
    if db < 0:
        raise ValueError(f"{url!r}: the database must be 0 or more")
    return db


def defaultNodeId() -> str:
    """C{HOSTNAME-PID}: unique on a machine, readable in logs."""
    return f"{socket.gethostname()}-{os.getpid()}"


def clientEndpoint(reactor, address: ClusterAddress):
    """The Twisted client endpoint of C{address}."""
    if address.kind == "unix":
        return UNIXClientEndpoint(reactor, address.path, timeout=10)
    endpoint = HostnameEndpoint(reactor, address.host, address.port, timeout=10)
    if address.kind == "tls":
        trustRoot = None
        if address.ca is not None:
            with open(address.ca, "rb") as f:
                trustRoot = Certificate.loadPEM(f.read())
        endpoint = wrapClientTLS(
            optionsForClientTLS(address.host, trustRoot=trustRoot), endpoint
        )
    return endpoint


class _Factory(txredisapi.RedisFactory):
    """txredisapi's factory, telling its owner when a connection comes and goes."""

    initialDelay = RECONNECT_INITIAL
    maxDelay = RECONNECT_MAX
    noisy = False

    def __init__(self, owner, name: str, address: ClusterAddress, protocol=None):
        super().__init__(
            address.describe(),
            address.db,
            1,
            isLazy=True,
            password=address.password,
            username=address.username,
        )
        if protocol is not None:
            self.protocol = protocol
        self.owner = owner
        self.name = name

    def addConnection(self, conn) -> None:
        super().addConnection(conn)
        # A PUBLISH goes out at once: with Nagle's algorithm the tail of a
        # large one (a piece of a file) waits for the ACK of the rest, which
        # Redis may delay (docs/cluster.md, "Files across nodes").
        setNoDelay = getattr(conn.transport, "setTcpNoDelay", None)
        if setNoDelay is not None:
            try:
                setNoDelay(True)
            except OSError:
                pass  # not a TCP socket (a Unix one)
        if conn in self.pool:
            self.owner._connectionMade(self.name, conn)

    def delConnection(self, conn) -> None:
        super().delConnection(conn)
        self.owner._connectionLost(self.name)


class _Subscriber(txredisapi.SubscriberProtocol):
    def messageReceived(self, pattern, channel, message) -> None:
        self.factory.owner._messageReceived(channel, message)


#: The kinds of a L{Publisher}'s runs.
_JSON, _RAW, _RECORDS = 0, 1, 2

#: The lengths of a run of records: unsigned 32-bit integers, little-endian
#: on the wire (L{Publisher.publishRecord}).
LENGTHS = "I" if array("I").itemsize == 4 else "L"
assert array(LENGTHS).itemsize == 4
BIG_ENDIAN = sys.byteorder == "big"


class _Run:
    """
    What one PUBLISH will carry: a run of JSON messages, one binary frame,
    or a run of records (L{Publisher.publishRecord}).
    """

    __slots__ = ("channel", "kind", "items", "size", "head", "lengths")

    def __init__(self, channel: str, kind: int, head: bytes = b"") -> None:
        self.channel = channel
        self.kind = kind
        self.items: list = []
        self.size = 0
        #: A record run's frame start; its records' lengths, in order.
        self.head = head
        self.lengths: list[int] = []


class Publisher:
    """
    Joins what a node publishes during one reactor turn into as few PUBLISH
    commands as keep the order (docs/cluster.md, "Batches").

    Each PUBLISH and each message it brings to a subscriber cost the nodes'
    Redis client far more than the few bytes they carry (txredisapi's reader
    takes a reactor turn per bulk string): under load a batch pays that once
    for many messages. At a low rate a message waits only for the end of
    the turn that published it (one C{callLater(0)} per turn, none while
    nothing is pending).

    A batch is a run of messages for one channel: JSON messages sent as the
    JSON array of them, or records (L{publishRecord}: the direct messages)
    sent as one binary frame. The runs go out in the order they began, so:

      - a message for a node's own channel joins the open run of that
        channel if it is of its kind, else starts one (what other nodes'
        channels got meanwhile cannot be seen by that node, so it need not
        wait behind it);
      - a C{barrier} message (a broadcast: every node sees it) joins the
        last run only if that run is of its channel, and closes every open
        run: what follows a broadcast is published after it;
      - a run closes once it holds C{limit} bytes.

    @param send: C{send(channel, payload)} publishes one batch (bytes),
        returning a Deferred.
    @param clock: the L{IReactorTime} whose C{callLater(0)} ends a turn.
    """

    log = Logger()

    def __init__(self, send, clock, limit: int = BATCH_LIMIT) -> None:
        self._send = send
        self.clock = clock
        self.limit = limit
        #: The runs not sent yet, in order.
        self._runs: list[_Run] = []
        #: The runs new messages of a channel may still join.
        self._open: dict[str, _Run] = {}
        self._flushCall = None
        #: How many PUBLISH commands and messages went out (the metrics).
        self.batches = 0
        self.messages = 0

    def publish(self, channel: str, message: bytes, barrier: bool = False) -> None:
        """Publish C{message} (one JSON value, UTF-8) on C{channel} at the end of the turn."""
        if barrier:
            run = self._runs[-1] if self._runs else None
            if (
                run is None
                or run.channel != channel
                or run.kind != _JSON
                or run.size >= self.limit
            ):
                run = _Run(channel, _JSON)
                self._runs.append(run)
            # Nothing published after a broadcast may overtake it.
            self._open.clear()
        else:
            run = self._open.get(channel)
            if run is None or run.kind != _JSON or run.size >= self.limit:
                run = self._open[channel] = _Run(channel, _JSON)
                self._runs.append(run)
        run.items.append(message)
        run.size += len(message) + 1
        if self._flushCall is None:
            self._flushCall = self.clock.callLater(0, self.flush)

    def publishRecord(
        self, channel: str, head: bytes, lengths: tuple, fields: str, size: int
    ) -> None:
        """
        Publish one record on C{channel} at the end of the turn, in a run of
        records that share the frame start C{head}. The run goes as C{head},
        the number of its records in decimal, NUL, every record's C{lengths}
        (in characters) as unsigned 32-bit little-endian integers, and every
        record's C{fields} one after the other, UTF-8 (the C{msg} frame of
        docs/cluster.md): the other side reads the lengths with one call.

        @param size: the record's size in bytes, for the limit.
        """
        run = self._open.get(channel)
        if (
            run is None
            or run.kind != _RECORDS
            or run.head != head
            or run.size >= self.limit
        ):
            run = self._open[channel] = _Run(channel, _RECORDS, head)
            self._runs.append(run)
        run.lengths += lengths
        run.items.append(fields)
        run.size += size
        if self._flushCall is None:
            self._flushCall = self.clock.callLater(0, self.flush)

    def publishRaw(self, channel: str, payload: bytes) -> None:
        """
        Publish C{payload} as it is, alone in its PUBLISH, at the end of the
        turn: after what C{channel} got before, before what it gets after.
        """
        self._open.pop(channel, None)  # what follows goes in a later run
        run = _Run(channel, _RAW)
        run.items.append(payload)
        self._runs.append(run)
        if self._flushCall is None:
            self._flushCall = self.clock.callLater(0, self.flush)

    def flush(self) -> None:
        """Send what is pending now (also before a script: it may publish too)."""
        if self._flushCall is not None:
            if self._flushCall.active():
                self._flushCall.cancel()
            self._flushCall = None
        runs, self._runs = self._runs, []
        self._open.clear()
        for run in runs:
            self.batches += 1
            items = run.items
            self.messages += len(items)
            if run.kind == _JSON:
                payload = b"[" + b",".join(items) + b"]"
            elif run.kind == _RECORDS:
                lengths = array(LENGTHS, run.lengths)
                if BIG_ENDIAN:
                    lengths.byteswap()
                payload = b"".join(
                    (
                        run.head,
                        b"%d\0" % len(items),
                        lengths.tobytes(),
                        "".join(items).encode(),
                    )
                )
            else:
                payload = items[0]
            self._send(run.channel, payload).addErrback(self._failed, run.channel)

    def _failed(self, failure, channel) -> None:
        self.log.failure("cluster publish on {channel} failed", failure, channel=channel)


class ClusterConnection(service.Service):
    """
    This node's connections to the cluster's Redis (see the module).

    What other parts of chatd use (the contract of
    L{chatd.service.ChatdService.cluster}):

    @ivar nodeId: this node's id (C{--node-id}).
    @ivar prefix: the prefix of every key and channel (C{--cluster-prefix}).
    @ivar redis: the command connection (a txredisapi handler that
        reconnects by itself; a command sent while it is down waits for it).
    @ivar connected: whether both connections are up.
    @ivar reconnects: how many times a connection came back after a loss.
    """

    log = Logger()

    def __init__(
        self,
        address: ClusterAddress,
        nodeId: str,
        prefix: str = DEFAULT_PREFIX,
        reactor=None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.address = address
        self.nodeId = nodeId
        self.prefix = prefix
        self.reactor = reactor
        self.channels: list[str] = []
        self.onMessage = lambda channel, message: None
        self.connected = False
        self.reconnects = 0
        self._up: dict[str, object] = {}
        self._everUp: set[str] = set()
        self._waiting: list[defer.Deferred] = []
        self._observers: list = []
        self._command = _Factory(self, "command", address)
        self._subscriber = _Factory(self, "subscriber", address, _Subscriber)
        self.redis = self._command.handler
        self._scripts: dict[str, str] = {}
        # The scripts sent in full (EVAL) on the current command connection,
        # so known to its Redis: only those go by hash (see evalScript).
        self._loaded: set[str] = set()
        #: What this node publishes goes through it (one PUBLISH per batch).
        self.publisher = Publisher(self.redis.publish, reactor)

    def key(self, *parts: str) -> str:
        """C{prefix} + C{parts} joined by C{:}."""
        return self.prefix + ":".join(parts)

    def startService(self) -> None:
        super().startService()
        for factory in (self._command, self._subscriber):
            factory.startConnecting(clientEndpoint(self.reactor, self.address))

    def stopService(self):
        if not self.running:
            return defer.succeed(None)  # stopped already (a test's kill)
        super().stopService()
        self.connected = False
        self.publisher.flush()
        return defer.gatherResults(
            [self._command.disconnect(), self._subscriber.disconnect()],
            consumeErrors=True,
        )

    def whenConnected(self) -> defer.Deferred:
        """A Deferred that fires once both connections are up (now if they are)."""
        if self.connected:
            return defer.succeed(self)
        d = defer.Deferred()
        self._waiting.append(d)
        return d

    def addConnectionObserver(self, observer) -> None:
        """Call C{observer(connected)} whenever C{connected} changes."""
        self._observers.append(observer)

    def _connectionMade(self, name: str, conn) -> None:
        if name == "command":
            self._loaded = set()  # perhaps a new Redis (restarted empty)
        if name in self._everUp:
            self.reconnects += 1
        self._everUp.add(name)
        self._up[name] = conn
        self.log.info(
            "cluster {connection} connection to {address} up",
            connection=name,
            address=self.address.describe(),
            node=self.nodeId,
            event="cluster-connected",
        )
        if name == "subscriber":
            if not self.channels:
                self._subscribed()
                return
            d = conn.subscribe(self.channels)
            d.addCallback(lambda _: self._subscribed())
            d.addErrback(
                lambda f: self.log.failure("cluster subscription failed", f)
            )
        else:
            self._subscribed()

    def _subscribed(self) -> None:
        if set(self._up) == {"command", "subscriber"} and not self.connected:
            self._setConnected(True)

    def _connectionLost(self, name: str) -> None:
        self._up.pop(name, None)
        if self.running:
            self.log.warn(
                "cluster {connection} connection to {address} lost; reconnecting",
                connection=name,
                address=self.address.describe(),
                node=self.nodeId,
                event="cluster-disconnected",
            )
        if self.connected:
            self._setConnected(False)

    def _setConnected(self, connected: bool) -> None:
        self.connected = connected
        if connected:
            waiting, self._waiting = self._waiting, []
            for d in waiting:
                d.callback(self)
        for observer in list(self._observers):
            try:
                observer(connected)
            except Exception:
                self.log.failure("cluster connection observer failed")

    def _messageReceived(self, channel, message) -> None:
        try:
            self.onMessage(channel, message)
        except Exception:
            self.log.failure("cluster message on {channel} failed", channel=channel)

    def evalScript(self, script: str, keys, args) -> defer.Deferred:
        """
        Run the Lua C{script}: in full (EVAL, which makes Redis keep it) the
        first time on a command connection, by its hash (EVALSHA) after.

        Not EVALSHA first with EVAL on NOSCRIPT: after a Redis restart that
        would reorder one connection's scripts (a status change retried
        after the logout that followed it had gone through by hash).
        """
        # The scripts publish directory events: what this node published
        # before goes first (a message before its sender's logout).
        self.publisher.flush()
        sha = self._scripts.get(script)
        if sha is None:
            sha = self._scripts[script] = hashlib.sha1(script.encode()).hexdigest()
        n = len(keys)
        if sha not in self._loaded:
            self._loaded.add(sha)
            return self.redis.execute_command("EVAL", script, n, *keys, *args)
        d = self.redis.execute_command("EVALSHA", sha, n, *keys, *args)

        def noScript(failure):
            failure.trap(txredisapi.ResponseError)
            if not str(failure.value).startswith("NOSCRIPT"):
                return failure
            return self.redis.execute_command("EVAL", script, n, *keys, *args)

        return d.addErrback(noScript)
