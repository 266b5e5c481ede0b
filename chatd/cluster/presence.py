"""
L{ClusterPresenceService}: the presence service of a chatd cluster.

It is L{InMemoryPresenceService} (same errors, same events, same counts for
local users) over a local replica of the whole cluster's directory, kept up
to date from Redis:

  - a login claims the name with the L{CLAIM} script, which checks the name
    and its look-alikes cluster-wide and writes and publishes the entry in
    one atomic step; logouts and status changes are scripts too. Every
    change is published on the events channel, so every node applies them
    in Redis' order;
  - the replica holds remote users as entries without a session, so
    C{users()}, C{lookup()}, C{lookalike()} and C{infoFor()} stay local and
    synchronous; C{sessionFor()} of a remote user is a L{RemoteSession},
    which protocols treat as a user of another protocol;
  - a message to a remote user is published on its node's channel and
    delivered there; a broadcast is published once on the broadcast
    channel. Messages between local users never touch Redis.

docs/cluster.md says what a protocol's "delivered" means for a remote user.
"""

from __future__ import annotations

import base64
import itertools
import json
from array import array
from json.encoder import encode_basestring as _jsonString
from typing import Callable

import txredisapi
from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger
from zope.interface import implementer

from chatd.cluster import DEFAULT_TTL, rejoin, scripts
from chatd.cluster.metrics import ClusterMetrics
from chatd.cluster.redis import BIG_ENDIAN, LENGTHS, ClusterConnection
from chatd.cork import CORK
from chatd.metrics import BUSY, ChatdMetrics
from chatd.presence import (
    BROADCAST,
    DEFAULT_STATUS,
    LOGIN,
    LOGOUT,
    MAX_IP_LENGTH,
    STATUS,
    AlreadyLoggedIn,
    ChatMessage,
    ClusterUnavailable,
    FilesNotAccepted,
    IChatSession,
    IFileReceiver,
    InMemoryPresenceService,
    IPresenceService,
    NameInUse,
    NoSuchUser,
    PresenceError,
    RecipientBusy,
    UserInfo,
    _Entry,
    nameKey,
)

#: The largest whole file handed to a user on another node (it travels in
#: one Redis message). Files between MSRP users on different nodes are
#: streamed instead (chatd/msrp/remote.py), whatever their size.
REMOTE_FILE_LIMIT = 8 * 1024 * 1024

#: The first byte of a binary frame on a node's channel (L{sendRawToNode}),
#: as txredisapi hands it over: bytes, or text when it decodes as UTF-8.
RAW_MARK = b"\x00"
RAW_MARK_TEXT = "\x00"

#: The start of a frame of direct messages (L{ClusterPresenceService._forward},
#: docs/cluster.md), as txredisapi hands it over: text, or bytes.
MSG_FRAME_TEXT = "\x00msg\x00"
MSG_FRAME = MSG_FRAME_TEXT.encode()


class _RemoteEntry(_Entry):
    """A user held by another node: no session here."""

    __slots__ = ("node", "files", "seq", "channel")

    def __init__(self, info, key, skeleton, authenticated, node, files, seq, channel):
        super().__init__(None, info, key, skeleton, authenticated)
        self.node = node
        self.files = files
        self.seq = seq
        #: Its node's channel, where messages for it are published.
        self.channel = channel


@implementer(IChatSession, IFileReceiver)
class RemoteSession:
    """
    A user of another node, as C{sessionFor} shows it to protocols: it is
    no connection of this process, so a protocol that asks treats it as a
    user of another protocol and goes through the presence service's
    C{sendMessage} and C{sendFile}, which route it to that node. Handed a
    message or file directly, it routes it the same way.
    """

    def __init__(self, presence: "ClusterPresenceService", entry: _RemoteEntry) -> None:
        self._presence = presence
        self._entry = entry
        self.protocolName = entry.info.protocol

    @property
    def maxFileSize(self) -> int:
        return self._presence._fileLimit(self._entry)

    def deliverMessage(self, message: ChatMessage) -> None:
        self._presence._forward(self._entry, message.sender, message.text)

    def deliverFile(self, sender: str, filename: str, content: bytes):
        return self._presence._forwardFile(self._entry, sender, filename, content)

    def disconnect(self, reason: str) -> None:
        # Only its own node can close its connection; nothing asks today.
        self._presence.log.info(
            "cluster: cannot disconnect {user}, a user of node {node}",
            user=self._entry.info.name,
            node=self._entry.node,
        )


class _LocalEntry(_Entry):
    # t: the login time in milliseconds, for the rule of rejoin.py.
    __slots__ = ("seq", "t")


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


@implementer(IPresenceService)
class ClusterPresenceService(InMemoryPresenceService, service.Service):
    """
    L{IPresenceService} for one node of a cluster (see the module).

    A service: starting it connects to Redis, subscribes, loads the
    directory and starts the heartbeat; L{whenReady} fires once the replica
    is loaded (the listeners accept connections only then). Stopping it
    removes this node's users from the cluster at once.

    @param connection: this node's L{ClusterConnection} (not started: this
        service starts and stops it).
    @param ttl: seconds this node's heartbeat key lives; it is refreshed
        every third of that, and every node reaps, as often, the users of
        nodes whose heartbeat is gone.
    """

    log = Logger()

    def __init__(
        self,
        connection: ClusterConnection,
        isProtectedName: Callable[[str], bool] = lambda name: False,
        metrics: ChatdMetrics | None = None,
        ttl: float = DEFAULT_TTL,
        clock=None,
    ) -> None:
        InMemoryPresenceService.__init__(self, isProtectedName, metrics)
        if clock is None:
            from twisted.internet import reactor as clock
        self.clock = clock
        self.connection = connection
        self.nodeId = connection.nodeId
        self.ttl = ttl
        self.clusterMetrics = ClusterMetrics(self)
        self.metrics.cluster = self.clusterMetrics
        key = connection.key
        self._names = key("names")
        self._seqKey = key("seq")
        self._nodes = key("nodes")
        self._alive = key("alive", self.nodeId)
        self._events = key("events")
        self._broadcast = key("broadcast")
        self._inbox = key("to", self.nodeId)
        connection.channels = [self._events, self._broadcast, self._inbox]
        # The constant start of this node's frames of messages (_forward)
        # and of its broadcasts.
        self._msgHead = MSG_FRAME + self.nodeId.encode() + RAW_MARK
        self._broadcastHead = '{"node":' + _jsonString(self.nodeId) + ',"sender":'
        connection.onMessage = self._received
        connection.addConnectionObserver(self._connectionChanged)
        #: The last event applied (the seq counter); older ones are skipped.
        self._seq = 0
        # Events that arrive while the directory loads, applied after it.
        self._buffer: list[dict] | None = []
        self._ready = defer.Deferred()
        self._pending: set[IChatSession] = set()
        self._files: dict[str, tuple[defer.Deferred, str]] = {}
        #: Handlers of other kinds of messages on this node's channel, by
        #: their C{"t"}: the MSRP file streams (chatd/msrp/remote.py) ride
        #: it so that they keep their order with this node's messages.
        self.inboxHandlers: dict[str, Callable[[dict], None]] = {}
        #: Handlers of binary frames on this node's channel (L{sendRawToNode}),
        #: by their kind: a file's content goes as it is, without base64
        #: and JSON, which cost more than the rest of its way.
        self.rawInboxHandlers: dict[bytes, Callable[[bytes], None]] = {}
        self._fileIds = itertools.count(1)
        self._heartbeat = task.LoopingCall(self._beat)
        self._heartbeat.clock = clock
        self._stopping = False
        # Between a lost connection and the end of the re-announce that
        # follows its return (chatd.cluster.rejoin): new logins wait.
        self._rejoining = False
        # No reaping of others before this time: after an outage, theirs
        # may have lapsed as ours did, and they need a TTL to come back.
        self._reapFrom = 0.0
        self._inCluster: list[defer.Deferred] = []

    # The service.

    def whenReady(self) -> defer.Deferred:
        """Fires once the replica is loaded (and at once after that)."""
        d = defer.Deferred()
        if self._ready.called:
            d.callback(None)
        else:
            self._ready.addCallback(lambda r: (d.callback(None), r)[1])
        return d

    def whenInCluster(self) -> defer.Deferred:
        """
        Fires once the node is connected, its directory loaded and, after
        an outage, its users announced again (at once if all that holds).
        """
        if self._ready.called and self.connection.connected and not self._rejoining:
            return defer.succeed(None)
        d = defer.Deferred()
        self._inCluster.append(d)
        return d

    def startService(self) -> None:
        service.Service.startService(self)
        self.log.info(
            "cluster node {node} joining {address} (prefix {prefix!r}, ttl {ttl}s)",
            node=self.nodeId,
            address=self.connection.address.describe(),
            prefix=self.connection.prefix,
            ttl=self.ttl,
            event="cluster-start",
        )
        self.connection.startService()

    def stopService(self):
        service.Service.stopService(self)
        self._stopping = True
        if self._heartbeat.running:
            self._heartbeat.stop()
        for d, _ in list(self._files.values()):
            d.callback(False)
        self._files.clear()
        d = defer.succeed(None)
        if self.connection.connected:
            # Free this node's names at once: the others need not wait for
            # the heartbeat to lapse.
            d = self.connection.redis.execute_command("DEL", self._alive)
            d.addCallback(lambda _: self._reap(self.nodeId))
            d.addErrback(
                lambda f: self.log.failure("cluster node {node} could not leave", f, node=self.nodeId)
            )
        return d.addBoth(lambda _: self.connection.stopService())

    def _connectionChanged(self, connected: bool) -> None:
        if not connected and self._ready.called and not self._stopping:
            # What arrives after the return waits for the re-announce and
            # the reload (a reaping of our users then is undone, not obeyed).
            self._rejoining = True
            self._buffer = []
        if connected and not self._stopping:
            # Each (re)connection loads the directory again: pub/sub keeps
            # nothing for a subscriber that was away.
            self._join()

    @defer.inlineCallbacks
    def _join(self):
        try:
            if not self._ready.called:
                # Another process with this node id left entries behind
                # (restarted within the TTL): they are not ours any more.
                yield self._reap(self.nodeId)
            yield self._refreshHeartbeat()
            yield self.connection.redis.execute_command("SADD", self._nodes, self.nodeId)
            rejoining = self._rejoining
            if rejoining:
                self._reapFrom = self.clock.seconds() + self.ttl
                yield self._reannounce()
            yield self._load()
            if self.connection.connected:  # not lost again meanwhile
                self._rejoining = False
                if rejoining:
                    self.log.info(
                        "cluster node {node} back: {count} users online in the cluster",
                        node=self.nodeId,
                        count=len(self._byName),
                        event="cluster-back",
                    )
        except Exception:
            self.log.failure("cluster node {node} could not join", node=self.nodeId)
            return
        if not self._heartbeat.running:
            self._heartbeat.start(self.ttl / 3, now=False)
        if not self._ready.called:
            self.log.info(
                "cluster node {node} ready: {count} users online in the cluster",
                node=self.nodeId,
                count=len(self._byName),
                event="cluster-ready",
            )
            self._ready.callback(None)
        if not self._rejoining:
            waiting, self._inCluster = self._inCluster, []
            for d in waiting:
                d.callback(None)

    def _refreshHeartbeat(self) -> defer.Deferred:
        started = self.clock.seconds()
        d = self.connection.redis.execute_command(
            "SET", self._alive, "1", "PX", int(self.ttl * 1000)
        )

        def measured(result):
            self.clusterMetrics.roundTrip(self.clock.seconds() - started)
            return result

        return d.addCallback(measured)

    def _beat(self) -> None:
        if not self.connection.connected:
            return
        d = self._refreshHeartbeat()
        if not (self._rejoining or self.clock.seconds() < self._reapFrom):
            # Not just back from an outage, when the others may be too.
            d.addCallback(lambda _: self._reap(""))
            d.addCallback(self._reaped)
        d.addErrback(self._beatFailed)

    def _beatFailed(self, failure) -> None:
        if failure.check(txredisapi.ConnectionError):
            # Redis went away in the middle: an outage, handled as one
            # (docs/cluster.md, Failures), not a bug to trace.
            self.log.warn(
                "cluster heartbeat of {node} lost with the connection",
                node=self.nodeId,
                event="cluster-heartbeat-lost",
            )
            return
        self.log.failure("cluster heartbeat failed", failure)

    def _reaped(self, count) -> None:
        if count:
            self.log.info(
                "cluster node {node} freed {count} names of nodes whose"
                " heartbeat is gone",
                node=self.nodeId,
                count=int(count),
                event="cluster-reaped",
            )

    def _reap(self, node: str) -> defer.Deferred:
        return self.connection.evalScript(
            scripts.REAP,
            [self._nodes, self._names, self._seqKey],
            [self.connection.prefix, self._events, node],
        )

    @defer.inlineCallbacks
    def _reannounce(self):
        # Back from an outage: claim every local user again, at once, by
        # the rule of chatd.cluster.rejoin.
        entries = {}
        claims = []
        for entry in list(self._bySession.values()):
            info = entry.info
            entries[entry.key] = entry
            claims.append(
                self._record(
                    info, entry.key, entry.skeleton, entry.authenticated,
                    entry.session, entry.t,
                )
            )
        outcomes = yield rejoin.reannounce(
            self.connection, self._names, self._seqKey, self._events, claims
        )
        lost = 0
        for key, (outcome, detail) in outcomes.items():
            entry = entries[key]
            if self._bySession.get(entry.session) is not entry:
                continue  # left meanwhile (its release follows the script)
            if outcome == "ok":
                entry.seq = detail
            else:
                lost += 1
                self._evictLocal(entry, rejoin.conflictReason(entry.info.name))
        self.log.info(
            "cluster node {node} re-announced {count} users ({lost} lost their"
            " name to an earlier login)",
            node=self.nodeId,
            count=len(claims) - lost,
            lost=lost,
            event="cluster-reannounced",
        )

    def _evictLocal(self, entry, reason: str) -> None:
        # Off the directory first, so that the name's new owner can enter
        # the replica; the session's own logout is then a no-op.
        self.log.warn(
            "cluster: {user} disconnected: {reason}",
            user=entry.info.name,
            reason=reason,
            node=self.nodeId,
            event="cluster-evicted",
        )
        session = entry.session
        InMemoryPresenceService.logout(self, session)
        session.disconnect(reason)

    @defer.inlineCallbacks
    def _load(self):
        self._buffer = []
        reply = yield self.connection.evalScript(
            scripts.SNAPSHOT, [self._seqKey, self._names], []
        )
        seq = int(_text(reply[0]))
        entries = sorted(
            (json.loads(_text(stored)) for stored in reply[1:]),
            key=lambda e: e["seq"],
        )
        present = {e["key"] for e in entries}
        # Remote users the cluster no longer has (a reconnect after losses).
        for entry in list(self._byName.values()):
            if isinstance(entry, _RemoteEntry) and entry.key not in present:
                self._removeRemote(entry)
        # A local user whose name another node's user holds now (lost to
        # the rule after our re-announce, its event older than this).
        owners = {e["key"]: e for e in entries}
        for entry in list(self._bySession.values()):
            owner = owners.get(entry.key)
            if owner is not None and owner["node"] != self.nodeId:
                self._evictLocal(entry, rejoin.conflictReason(entry.info.name))
        for e in entries:
            if e["node"] != self.nodeId:
                self._applyRemote({"k": LOGIN, "seq": seq, "e": e})
        # The snapshot is the truth at its instant, even when the counter
        # went back (a Redis that restarted empty).
        self._seq = seq
        buffered, self._buffer = self._buffer, None
        for event in buffered:
            self._applyEvent(event)

    def localSessions(self) -> list[IChatSession]:
        """The sessions of this node's users."""
        return list(self._bySession)

    # Claims.

    def login(
        self,
        session: IChatSession,
        name: str,
        ip: str,
        status: str = DEFAULT_STATUS,
        authenticated: bool = False,
    ) -> defer.Deferred:
        try:
            key, skeleton = self._check(session, name, status, authenticated)
        except PresenceError as e:
            return self._refused(session, name, ip, e)
        info = UserInfo(name, session.protocolName, ip[:MAX_IP_LENGTH], status)
        loginTime = int(self.clock.seconds() * 1000)
        stored = json.dumps(
            self._record(info, key, skeleton, authenticated, session, loginTime),
            # UTF-8 as it is: Lua's cjson passes it through untouched.
            ensure_ascii=False,
        )
        self._pending.add(session)
        d = self._claimInRedis(key, skeleton, stored, authenticated)

        def claimed(reply):
            self._pending.discard(session)
            outcome, detail = _text(reply[0]), _text(reply[1])
            if outcome == "inuse":
                return self._refused(
                    session, name, ip, NameInUse(f"the name {name} is already online")
                )
            if outcome == "alike":
                return self._refused(
                    session,
                    name,
                    ip,
                    NameInUse(f"the name {name} looks like {detail}, who is online"),
                )
            entry = _LocalEntry(session, info, key, skeleton, authenticated)
            entry.seq = int(detail)
            entry.t = loginTime
            self._byName[key] = entry
            self._bySkeleton.setdefault(skeleton, []).append(entry)
            self._bySession[session] = entry
            self.log.info(
                "{user} logged in ({protocol}, {peer})",
                user=info.name,
                protocol=info.protocol,
                peer=info.ip,
                node=self.nodeId,
                event="login",
            )
            self._notify(LOGIN, info)
            return info

        def failed(failure):
            self._pending.discard(session)
            if failure.check(PresenceError):
                return failure
            self.log.failure("cluster claim of {user!r} failed", failure, user=name)
            return self._refused(
                session, name, ip, ClusterUnavailable("the cluster cannot be reached")
            )

        return d.addCallbacks(claimed, failed)

    def _record(self, info, key, skeleton, authenticated, session, loginTime) -> dict:
        """A local user's entry as Redis keeps it (scripts.py lists the fields)."""
        return {
            "name": info.name,
            "key": key,
            "skel": skeleton,
            "proto": info.protocol,
            "ip": info.ip,
            "status": info.status,
            "node": self.nodeId,
            "auth": bool(authenticated),
            "files": IFileReceiver(session, None) is not None,
            "t": loginTime,
        }

    def _claimInRedis(self, key, skeleton, stored, authenticated) -> defer.Deferred:
        return self.connection.evalScript(
            scripts.CLAIM,
            [
                self._names,
                self.connection.key("skel", skeleton),
                self.connection.key("users", self.nodeId),
                self._seqKey,
            ],
            [key, stored, "1" if authenticated else "0", self._events],
        )

    def _check(self, session, name, status, authenticated) -> tuple[str, str]:
        # What needs no Redis first, as the in-memory service checks it.
        if session in self._pending:
            raise AlreadyLoggedIn("a login is under way")
        key, skeleton = self._checkClaim(session, name, status, authenticated)
        if (
            not self.connection.connected
            or not self._ready.called
            or self._stopping
            or self._rejoining
        ):
            # A name claimed now could not be checked (or, while this node
            # stops, would outlive it in Redis; or, while it rejoins, could
            # clash with the users it re-announces).
            raise ClusterUnavailable("the cluster cannot be reached")
        return key, skeleton

    def _refused(self, session, name, ip, error) -> defer.Deferred:
        self.metrics.loginRefused(session.protocolName)
        mayLog = getattr(getattr(session, "allowance", None), "mayLogError", None)
        if mayLog is None or mayLog():
            self.log.info(
                "{protocol} login of {user!r} from {peer} refused: {reason}",
                user=name,
                protocol=session.protocolName,
                peer=ip,
                reason=str(error),
                event="login-refused",
            )
        return defer.fail(error)

    def logout(self, session: IChatSession) -> None:
        entry = self._bySession.get(session)
        InMemoryPresenceService.logout(self, session)
        if entry is None or self._stopping or not self.connection.connected:
            return
        d = self.connection.evalScript(
            scripts.RELEASE,
            [self._names, self._seqKey],
            [entry.key, self.nodeId, self._events, self.connection.prefix],
        )
        d.addErrback(
            lambda f: self.log.failure("cluster release of {user} failed", f, user=entry.info.name)
        )

    def setStatus(self, session: IChatSession, status: str) -> UserInfo:
        info = InMemoryPresenceService.setStatus(self, session, status)
        if self.connection.connected:
            key = self._bySession[session].key
            d = self.connection.evalScript(
                scripts.STATUS,
                [self._names, self._seqKey],
                [key, self.nodeId, status, self._events],
            )
            d.addErrback(
                lambda f: self.log.failure("cluster status of {user} failed", f, user=info.name)
            )
        return info

    # The replica.

    def _received(self, channel, message) -> None:
        channel = _text(channel)
        if message[:1] == (RAW_MARK if isinstance(message, bytes) else RAW_MARK_TEXT):
            # A binary frame (JSON never starts with NUL). txredisapi hands
            # over what decodes as UTF-8 as text: encoding it back gives
            # the exact bytes.
            if channel != self._inbox:
                pass
            elif message[:5] == (MSG_FRAME if isinstance(message, bytes) else MSG_FRAME_TEXT):
                self._remoteMessages(message)
            else:
                self._rawFrame(message if isinstance(message, bytes) else message.encode())
            return
        data = json.loads(message)
        if channel == self._events:
            if self._buffer is not None:
                self._buffer.append(data)
            else:
                self._applyEvent(data)
        elif channel == self._broadcast:
            # A batch (the Publisher's JSON array), applied in order, its
            # deliveries corked: one write per connection per batch.
            CORK.enter()
            try:
                for item in data:
                    if item["node"] != self.nodeId:
                        self._applyOne(self._deliverBroadcast, item)
            finally:
                CORK.leave()
        elif channel == self._inbox:
            CORK.enter()
            try:
                for item in data:
                    self._applyOne(self._inboxMessage, item)
            finally:
                CORK.leave()

    def _rawFrame(self, frame: bytes) -> None:
        end = frame.find(RAW_MARK, 1)
        handler = self.rawInboxHandlers.get(frame[1:end]) if end > 0 else None
        if handler is None:
            self.log.warn("cluster frame of unknown kind dropped", node=self.nodeId)
            return
        try:
            handler(frame[end + 1:])
        except Exception:
            self.log.failure("cluster frame {kind!r} failed", kind=frame[1:end])

    def _applyOne(self, handler, item: dict) -> None:
        # One bad message does not cost the rest of its batch.
        try:
            handler(item)
        except Exception:
            self.log.failure("cluster message {item!r} failed", item=item)

    def _applyEvent(self, event: dict) -> None:
        if event["seq"] <= self._seq:
            return  # already in the replica (loaded with the directory)
        self._seq = event["seq"]
        entry = event["e"]
        if entry["node"] == self.nodeId:
            if event["k"] == LOGOUT:
                self._ownUserRemoved(entry, event.get("why"))
            return  # local changes are applied when they are made
        self._applyRemote(event)

    def _applyRemote(self, event: dict) -> None:
        e = event["e"]
        kind = event["k"]
        key = e["key"]
        current = self._byName.get(key)
        if kind == LOGOUT:
            if isinstance(current, _RemoteEntry) and current.node == e["node"]:
                self._removeRemote(current)
            return
        info = UserInfo(e["name"], e["proto"], e["ip"], e["status"])
        if isinstance(current, _RemoteEntry) and current.node == e["node"]:
            if current.info != info:
                current.info = info
                self._notify(STATUS, info)
            return
        if current is not None:
            # A local user with this name: cannot happen while the claim
            # scripts decide; kept, and logged, if it does.
            self.log.warn(
                "cluster: {user} on node {other} conflicts with a local user",
                user=e["name"],
                other=e["node"],
                event="cluster-conflict",
            )
            return
        entry = _RemoteEntry(
            info, key, e["skel"], bool(e["auth"]), e["node"], bool(e["files"]), e["seq"],
            self.connection.key("to", e["node"]),
        )
        self._byName[key] = entry
        self._bySkeleton.setdefault(entry.skeleton, []).append(entry)
        self._notify(LOGIN, info)

    def _removeRemote(self, entry: _RemoteEntry) -> None:
        del self._byName[entry.key]
        alike = self._bySkeleton[entry.skeleton]
        alike.remove(entry)
        if not alike:
            del self._bySkeleton[entry.skeleton]
        # Files waiting for its answer: its node may be gone with it.
        for fileId, (d, key) in list(self._files.items()):
            if key == entry.key:
                del self._files[fileId]
                d.callback(False)
        self._notify(LOGOUT, entry.info)

    def _ownUserRemoved(self, e: dict, why: str | None = None) -> None:
        # Our user removed by someone else: our heartbeat lapsed (a long
        # pause) and another node reaped us. The name is free in the
        # cluster, so the session must go.
        entry = self._byName.get(e["key"])
        if (
            isinstance(entry, _LocalEntry)
            and entry.seq == e["seq"]
            and not self._stopping
        ):
            if why == "conflict":
                # Another node's earlier login won the name (rejoin.py).
                self._evictLocal(entry, rejoin.conflictReason(entry.info.name))
                return
            self.log.warn(
                "cluster: {user} was removed by another node (heartbeat lapsed)",
                user=entry.info.name,
                event="cluster-reaped-local",
            )
            entry.session.disconnect("your session expired in the cluster")

    # Routing.

    def sendMessage(self, sender: IChatSession, receiver: str, text: str) -> int:
        source = self._bySession.get(sender)
        if source is None:
            raise NoSuchUser("not logged in")
        key = receiver.lower() if receiver.isascii() else nameKey(receiver)
        if key == BROADCAST:
            count = self._broadcastLocally(source, text)
            # One publish for every other node; each delivers to its own.
            remote = [e for e in self._byName.values() if isinstance(e, _RemoteEntry)]
            if not self.connection.connected:
                # Only this node's users can be reached now (docs/cluster.md).
                remote = []
            if remote:
                self.connection.publisher.publish(
                    self._broadcast,
                    f'{self._broadcastHead}{_jsonString(source.info.name)},'
                    f'"text":{_jsonString(text)}}}'.encode(),
                    barrier=True,
                )
                routed = self._routed[source.info.protocol]
                for entry in remote:
                    routed[entry.info.protocol] += 1
                self.clusterMetrics.remoteSent += 1
            return count + len(remote)
        target = self._byName.get(key)
        if isinstance(target, _RemoteEntry):
            self._forward(target, source.info.name, text)
            self._routed[source.info.protocol][target.info.protocol] += 1
            return 1
        return InMemoryPresenceService.sendMessage(self, sender, receiver, text)

    def sessionFor(self, name: str) -> IChatSession | None:
        entry = self._byName.get(nameKey(name))
        if isinstance(entry, _RemoteEntry):
            return RemoteSession(self, entry)
        return None if entry is None else entry.session

    def _forward(self, target: _RemoteEntry, sender: str, text: str) -> None:
        """
        Publish a message for C{target} on its node's channel: a record of
        this turn's frame of messages for that node (docs/cluster.md), its
        three fields' lengths and the fields, which the other node reads
        back by slicing, without a parser.
        """
        if not self.connection.connected:
            raise self._unreachable(target)
        receiver = target.info.name
        fields = sender + receiver + text
        self.connection.publisher.publishRecord(
            target.channel,
            self._msgHead,
            (len(sender), len(receiver), len(text)),
            fields,
            # The bytes it adds (a text that cannot be UTF-8 fails here,
            # for its sender, not in the batch).
            12 + (len(fields) if fields.isascii() else len(fields.encode())),
        )
        self.clusterMetrics.remoteSent += 1

    @staticmethod
    def _unreachable(target) -> ClusterUnavailable:
        # Refused rather than queued: the sender is told now, and nothing
        # waits for a node that may be gone by the time Redis is back.
        return ClusterUnavailable(
            f"{target.info.name} is on another node, and the cluster cannot"
            " be reached now"
        )

    def _broadcastLocally(self, source, text: str) -> int:
        return self._broadcastTo(list(self._bySession.values()), source, text)

    def _publish(self, channel: str, data: dict) -> None:
        # Joined with the rest of this turn's (chatd.cluster.redis.Publisher).
        self.connection.publisher.publish(
            channel, json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()
        )

    def _deliverBroadcast(self, data: dict) -> None:
        message = ChatMessage(data["sender"], BROADCAST, data["text"])
        for entry in list(self._byName.values()):
            if entry.session is None or entry.info.name == data["sender"]:
                continue
            try:
                self._deliver(entry, message)
            except RecipientBusy:
                self.metrics.refused(entry.info.protocol, BUSY)
                continue
            self.clusterMetrics.remoteDelivered += 1

    def _inboxMessage(self, data: dict) -> None:
        kind = data["t"]
        if kind == "bounce":
            self._bounced(data)
        elif kind == "file":
            self._remoteFile(data)
        elif kind == "taken":
            waiting = self._files.pop(data["id"], None)
            if waiting is not None:
                waiting[0].callback(bool(data["ok"]))
        else:
            handler = self.inboxHandlers.get(kind)
            if handler is not None:
                handler(data)

    def nodeOf(self, name: str) -> str | None:
        """The node of C{name}, a user online on another node; else C{None}."""
        entry = self._byName.get(nameKey(name))
        return entry.node if isinstance(entry, _RemoteEntry) else None

    def sendToNode(self, node: str, data: dict) -> None:
        """
        Publish C{data} (JSON, with a C{"t"} an L{inboxHandlers} of that
        node knows) on C{node}'s channel, after what this node published
        there before (one connection: Redis keeps the order).
        """
        self._publish(self.connection.key("to", node), data)

    def sendRawToNode(self, node: str, kind: bytes, payload: bytes) -> None:
        """
        Publish the binary frame C{NUL kind NUL payload} on C{node}'s
        channel, for its L{rawInboxHandlers}C{[kind]}, in order with what
        L{sendToNode} sends there (one PUBLISH of its own).
        """
        self.connection.publisher.publishRaw(
            self.connection.key("to", node), b"".join((RAW_MARK, kind, RAW_MARK, payload))
        )

    def _remoteMessages(self, frame) -> None:
        """
        Deliver a frame of direct messages from another node (L{_forward};
        docs/cluster.md), in order, its deliveries corked. A frame that does
        not read is logged and dropped whole, before any of it is delivered.
        """
        try:
            if frame.__class__ is not bytes:
                frame = frame.encode()  # txredisapi's text of valid UTF-8
            nodeEnd = frame.index(RAW_MARK, 5)
            countEnd = frame.index(RAW_MARK, nodeEnd + 1)
            count = int(frame[nodeEnd + 1:countEnd])
            # Three lengths a message, four bytes each.
            lengthsEnd = countEnd + 1 + 12 * count
            if count < 0 or lengthsEnd > len(frame):
                raise ValueError("its lengths are cut short")
            lengths = array(LENGTHS, frame[countEnd + 1:lengthsEnd])
            if BIG_ENDIAN:
                lengths.byteswap()
            fields = frame[lengthsEnd:].decode()
            node = frame[5:nodeEnd].decode()
            if sum(lengths) != len(fields):
                raise ValueError("its lengths do not match its fields")
        except ValueError as e:  # UnicodeDecodeError is one
            self.log.warn(
                "cluster frame of messages dropped, malformed: {error}",
                error=str(e),
                node=self.nodeId,
                event="cluster-malformed",
            )
            return
        byName = self._byName
        it = iter(lengths.tolist())
        end = delivered = 0
        CORK.enter()
        try:
            # The route of every message from another node, written out in
            # one loop, without a call of ours per message.
            for senderLength, receiverLength, textLength in zip(it, it, it):
                start = end
                end += senderLength
                sender = fields[start:end]
                start = end
                end += receiverLength
                receiver = fields[start:end]
                start = end
                end += textLength
                # One bad message does not cost the rest of its frame.
                try:
                    entry = byName.get(
                        receiver.lower() if receiver.isascii() else nameKey(receiver)
                    )
                    if entry is None or entry.session is None:
                        self._bounce(node, sender, receiver, "is not online any more")
                        continue
                    entry.session.deliverMessage(
                        ChatMessage(sender, entry.info.name, fields[start:end])
                    )
                    delivered += 1
                except RecipientBusy:
                    self.metrics.refused(entry.info.protocol, BUSY)
                    self._bounce(node, sender, receiver, "is busy")
                except Exception:
                    self.log.failure("delivery to {name} failed", name=receiver)
        finally:
            self.clusterMetrics.remoteDelivered += delivered
            CORK.leave()

    def _bounce(self, node: str, sender: str, receiver: str, why: str) -> None:
        self.clusterMetrics.bounced += 1
        self._publish(
            self.connection.key("to", node),
            {"t": "bounce", "sender": sender, "receiver": receiver, "why": why},
        )

    def _bounced(self, data: dict) -> None:
        # The sender learns in its own protocol, as a message from the user
        # it wrote to, marked as the server's (docs/cluster.md).
        entry = self._byName.get(nameKey(data["sender"]))
        if entry is None or entry.session is None:
            return  # the sender left too: nobody to tell
        notice = notDeliveredText(data["receiver"], data["why"])
        try:
            entry.session.deliverMessage(
                ChatMessage(data["receiver"], entry.info.name, notice)
            )
        except Exception:
            self.log.info(
                "cluster: {user} could not be told a message was not delivered",
                user=entry.info.name,
                event="cluster-bounce-lost",
            )

    # Files.

    def sendFile(self, sender: IChatSession, receiver: str, filename: str, content: bytes):
        source = self._bySession.get(sender)
        target = self._byName.get(nameKey(receiver))
        if source is None or not isinstance(target, _RemoteEntry):
            return InMemoryPresenceService.sendFile(self, sender, receiver, filename, content)
        if not self.connection.connected:
            raise self._unreachable(target)
        limit = self._fileLimit(target)
        if limit == 0:
            raise FilesNotAccepted(f"{target.info.name} cannot receive files")
        if len(content) > limit:
            raise FilesNotAccepted(
                f"{target.info.name} accepts files of at most {limit} bytes"
            )
        taken = self._forwardFile(target, source.info.name, filename, content)
        self.metrics.fileRelayed(source.info.protocol, target.info.protocol, len(content))
        return taken

    def _forwardFile(
        self, target: _RemoteEntry, sender: str, filename: str, content: bytes
    ) -> defer.Deferred:
        """
        Publish a whole file for C{target} on its node's channel; the
        Deferred fires with whether the receiver took it.
        """
        if not self.connection.connected:
            raise self._unreachable(target)
        fileId = f"{self.nodeId}/{next(self._fileIds)}"
        taken = defer.Deferred()
        self._files[fileId] = (taken, target.key)
        self._publish(
            self.connection.key("to", target.node),
            {
                "t": "file",
                "id": fileId,
                "from": self.nodeId,
                "sender": sender,
                "receiver": target.info.name,
                "filename": filename,
                "content": base64.b64encode(content).decode("ascii"),
            },
        )
        self.clusterMetrics.remoteSent += 1
        return taken

    def _fileLimit(self, entry) -> int:
        if isinstance(entry, _RemoteEntry):
            return REMOTE_FILE_LIMIT if entry.files else 0
        return InMemoryPresenceService._fileLimit(entry)

    def fileLimit(self, receiver: str) -> int | None:
        target = self._byName.get(nameKey(receiver))
        return None if target is None else self._fileLimit(target)

    def _remoteFile(self, data: dict) -> None:
        def answer(ok) -> None:
            self._publish(
                self.connection.key("to", data["from"]),
                {"t": "taken", "id": data["id"], "ok": bool(ok)},
            )

        entry = self._byName.get(nameKey(data["receiver"]))
        receiver = None if entry is None else IFileReceiver(entry.session, None)
        content = base64.b64decode(data["content"])
        if receiver is None or len(content) > receiver.maxFileSize:
            answer(False)
            return
        try:
            taken = receiver.deliverFile(data["sender"], data["filename"], content)
        except RecipientBusy:
            self.metrics.refused(entry.info.protocol, BUSY)
            answer(False)
            return
        except Exception:
            self.log.failure("file delivery to {name} failed", name=entry.info.name)
            answer(False)
            return
        self.clusterMetrics.remoteDelivered += 1
        if taken is None:
            answer(True)
        else:
            taken.addCallback(answer)
            taken.addErrback(lambda f: answer(False))


def notDeliveredText(receiver: str, why: str) -> str:
    """What a sender is shown when a remote receiver did not take a message."""
    return f"[chatd] your message to {receiver} was not delivered: {receiver} {why}"
