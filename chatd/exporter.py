"""
chatd's counts for Prometheus, over HTTP: the collector that reads a
L{ChatdMetrics} at scrape time, C{GET /metrics}, C{GET /healthz},
C{GET /online}, and the sites that serve them (L{CountingSite},
L{makeMetricsSite}; the MSGR HTTP site adds them with L{addResources}).

The counting itself is L{chatd.metrics}, which imports none of this: the
core (the presence service, the protocols) does not depend on
C{prometheus_client} nor on C{twisted.web}. docs/observability.md lists
every metric.
"""

from __future__ import annotations

import json
from typing import Iterable

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from twisted.web import resource, server

from chatd import __version__
from chatd.metrics import MSGR_HTTP, PROTOCOLS, ChatdMetrics
from chatd.web import Directory, NotFound, freedChannelProtocol


class MetricsExporter:
    """
    The Prometheus view of one L{ChatdMetrics}.

    Its C{registry} is a C{prometheus_client} registry of its own, never the
    process-wide default one, so one process may hold several servers (the
    tests do); it holds chatd's collector and the process's.
    """

    def __init__(self, metrics: ChatdMetrics) -> None:
        self.metrics = metrics
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_ChatdCollector(metrics))
        ProcessCollector(registry=self.registry)

    def exposition(self, accept: str | None = None) -> tuple[bytes, str]:
        """The scrape's body and content type, for an C{Accept} header."""
        encoder, contentType = choose_encoder(accept or "")
        return encoder(self.registry), contentType


class _ChatdCollector:
    """Turns a L{ChatdMetrics}' numbers into metric families, per scrape."""

    def __init__(self, metrics: ChatdMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        m = self.metrics
        yield _buildInfo()
        yield self._online()
        logins = CounterMetricFamily(
            "chatd_logins",
            "Logins, by protocol (msgr-http: the MSGR password login) and result.",
            labels=["protocol", "result"],
        )
        counts = {
            (protocol, result): 0
            for protocol in PROTOCOLS + (MSGR_HTTP,)
            for result in ("accepted", "refused")
        }
        counts.update(m.logins)
        for (protocol, result), value in sorted(counts.items()):
            logins.add_metric([protocol, result], value)
        yield logins
        yield _counter(
            "chatd_logouts",
            "Users who went offline, by protocol.",
            ["protocol"],
            {(p,): m.logouts.get(p, 0) for p in PROTOCOLS}
            | {(p,): n for p, n in m.logouts.items()},
        )
        routed = {(s, r): 0 for s in PROTOCOLS for r in PROTOCOLS}
        for sender, receivers in list(m.routed.items()):
            for receiver, value in list(receivers.items()):
                routed[sender, receiver] = value
        yield _counter(
            "chatd_messages_routed",
            "Messages handed to a receiver, by the sender's and the receiver's"
            " protocol; a broadcast counts each receiver.",
            ["from", "to"],
            routed,
        )
        yield _counter(
            "chatd_refusals",
            "Messages and files not delivered, by the sender's protocol and why"
            " (rate: the sender's --rate; busy: too much waits for the receiver).",
            ["protocol", "reason"],
            m.refusals,
        )
        yield _counter(
            "chatd_files_relayed",
            "Files handed on whole, by the sender's and the receiver's protocol.",
            ["from", "to"],
            m.files,
        )
        yield _counter(
            "chatd_relayed_bytes",
            "Bytes of file content handed on, by the sender's and the"
            " receiver's protocol.",
            ["from", "to"],
            m.relayedBytes,
        )
        yield _counter(
            "chatd_disconnects",
            "Connections closed, by protocol and why (client: by the client).",
            ["protocol", "reason"],
            m.disconnects,
        )
        yield _counter(
            "chatd_http_requests",
            "HTTP responses, by listener and status code.",
            ["listener", "code"],
            m.httpRequests,
        )
        yield from self._listeners()
        if m.cluster is not None:
            yield from _cluster(m.cluster)

    def _online(self) -> GaugeMetricFamily:
        counts = dict.fromkeys(PROTOCOLS, 0)
        presence = self.metrics.presence
        if presence is not None:
            for info in presence.users():
                counts[info.protocol] = counts.get(info.protocol, 0) + 1
        family = GaugeMetricFamily(
            "chatd_sessions_online", "Users online, by protocol.", labels=["protocol"]
        )
        for protocol, value in sorted(counts.items()):
            family.add_metric([protocol], value)
        return family

    def _listeners(self) -> Iterable[Metric]:
        open_ = GaugeMetricFamily(
            "chatd_connections_open",
            "Open connections, by listener.",
            labels=["listener"],
        )
        inFlight = 0
        for label, factory in sorted(self.metrics.listeners.items()):
            connections = getattr(factory, "connections", None)
            if connections is None:
                connections = getattr(factory, "protocols", ())  # WrappingFactory
            open_.add_metric([label], len(connections))
            filesInFlight = getattr(factory, "filesInFlight", None)
            if filesInFlight is not None:
                inFlight += filesInFlight()
        yield open_
        yield GaugeMetricFamily(
            "chatd_files_in_flight",
            "MSRP files whose transfer has started and not ended.",
            value=inFlight,
        )


def _buildInfo() -> Metric:
    # The usual Prometheus way to export a version: chatd_build_info, 1,
    # whose labels say which build runs (for a dashboard or a join).
    import platform

    from twisted import version as twistedVersion

    return InfoMetricFamily(
        "chatd_build",
        "The chatd that runs: its version, Twisted's and Python's.",
        value={
            "version": __version__,
            "twisted": twistedVersion.short(),
            "python": platform.python_version(),
        },
    )


def _cluster(cluster) -> Iterable[Metric]:
    # A cluster node's own series (chatd.cluster.metrics), each labelled
    # with its node id, so that one dashboard can show every node.
    node = [cluster.nodeId]

    def gauge(name: str, documentation: str, value) -> Metric:
        family = GaugeMetricFamily(name, documentation, labels=["node"])
        family.add_metric(node, value)
        return family

    def counter(name: str, documentation: str, value) -> Metric:
        family = CounterMetricFamily(name, documentation, labels=["node"])
        family.add_metric(node, value)
        return family

    yield gauge(
        "chatd_cluster_connected",
        "1 while both connections to the cluster's Redis are up.",
        1 if cluster.connected else 0,
    )
    yield counter(
        "chatd_cluster_reconnects",
        "Connections to the cluster's Redis that came back after a loss.",
        cluster.reconnects,
    )
    yield gauge(
        "chatd_cluster_directory_users",
        "Users online in the whole cluster, as this node's replica has them.",
        cluster.directorySize,
    )
    yield gauge(
        "chatd_cluster_local_users", "Users online on this node.", cluster.localUsers
    )
    yield counter(
        "chatd_cluster_remote_sent",
        "Messages and files published for users on other nodes (a broadcast"
        " once).",
        cluster.remoteSent,
    )
    yield counter(
        "chatd_cluster_remote_delivered",
        "Messages and files from other nodes handed to this node's users.",
        cluster.remoteDelivered,
    )
    yield counter(
        "chatd_cluster_bounced",
        "Messages from other nodes this node could not deliver (receiver"
        " busy or gone); their senders were told.",
        cluster.bounced,
    )
    roundTrip = SummaryMetricFamily(
        "chatd_cluster_redis_round_trip_seconds",
        "Round trips to the cluster's Redis (the heartbeat's), in seconds.",
        labels=["node"],
    )
    roundTrip.add_metric(node, cluster.roundTripCount, cluster.roundTripSum)
    yield roundTrip
    yield gauge(
        "chatd_cluster_redis_last_round_trip_seconds",
        "The last round trip to the cluster's Redis, in seconds.",
        cluster.lastRoundTrip,
    )


def _counter(name: str, documentation: str, labels: list[str], values) -> Metric:
    family = CounterMetricFamily(name, documentation, labels=labels)
    for key, value in sorted(dict(values).items()):
        family.add_metric(list(key), value)
    return family


# Over HTTP.


class _Plain(resource.Resource):
    """A resource that answers C{GET} and C{HEAD}, and C{405} to the rest."""

    isLeaf = True

    def render(self, request: server.Request):
        if request.method not in (b"GET", b"HEAD"):
            request.setResponseCode(405)
            request.setHeader(b"allow", b"GET, HEAD")
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"405"
        request.setHeader(b"cache-control", b"no-store")
        return self.render_GET(request)


class MetricsResource(_Plain):
    """C{GET /metrics}: the Prometheus exposition of a L{ChatdMetrics}."""

    def __init__(self, metrics: ChatdMetrics) -> None:
        super().__init__()
        self.metrics = metrics
        self.exporter = MetricsExporter(metrics)

    def render_GET(self, request: server.Request) -> bytes:
        accept = request.getHeader(b"accept")
        body, contentType = self.exporter.exposition(
            accept.decode("latin-1") if accept else None
        )
        request.setHeader(b"content-type", contentType.encode("ascii"))
        return body


class HealthResource(_Plain):
    """
    C{GET /healthz}: C{200 ok}, written by the reactor's thread at once, so an
    answer proves the reactor is turning.

    On a cluster node a second line names the node and its connection to
    Redis; while that is down the answer is C{503} (the node cannot take
    new logins: a load balancer should send them elsewhere).
    """

    def __init__(self, metrics: ChatdMetrics | None = None) -> None:
        super().__init__()
        self.metrics = metrics

    def render_GET(self, request: server.Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        cluster = None if self.metrics is None else self.metrics.cluster
        if cluster is None:
            return b"ok\n"
        if cluster.connected:
            return f"ok\ncluster: connected (node {cluster.nodeId})\n".encode()
        request.setResponseCode(503)
        return f"unavailable\ncluster: disconnected (node {cluster.nodeId})\n".encode()


class OnlineResource(_Plain):
    """
    C{GET /online}: who is online, as JSON (C{[{"name", "protocol", "ip",
    "status"}]}, in the order they logged in), for C{chatd-admin online}.
    Only on the C{--metrics} listener: it names users and their addresses.
    """

    def __init__(self, metrics: ChatdMetrics) -> None:
        super().__init__()
        self.metrics = metrics

    def render_GET(self, request: server.Request) -> bytes:
        presence = self.metrics.presence
        users = [] if presence is None else presence.users()
        request.setHeader(b"content-type", b"application/json")
        body = [
            {"name": u.name, "protocol": u.protocol, "ip": u.ip, "status": u.status}
            for u in users
        ]
        return json.dumps(body).encode("utf-8") + b"\n"


class _Root(Directory):
    """The metrics listener's root: only its children; itself a 404."""

    def render(self, request):
        return NotFound().render(request)


def addResources(
    root: resource.Resource, metrics: ChatdMetrics, serveMetrics: bool = True
) -> None:
    """Put C{/healthz}, and C{/metrics} if C{serveMetrics}, under C{root}."""
    if serveMetrics:
        root.putChild(b"metrics", MetricsResource(metrics))
    root.putChild(b"healthz", HealthResource(metrics))


class CountingSite(server.Site):
    """
    A twisted.web site that counts its responses by status code, and whose
    connections must send each request whole within C{requestTimeout}
    seconds (L{chatd.web.DeadlineHTTPChannel}; C{0}, the default here, is no deadline),
    and whose closed connections are freed by reference counting alone.
    """

    protocol = freedChannelProtocol
    requestTimeout = 0.0
    #: The body of a C{408}, for a request that did not arrive in time.
    requestTimeoutBody = b"408"

    def __init__(self, root, metrics: ChatdMetrics, listener: str, **kwargs) -> None:
        super().__init__(root, **kwargs)
        self.metrics = metrics
        self.listener = listener

    def log(self, request: server.Request) -> None:
        # Called by twisted.web once per finished response.
        self.metrics.httpRequest(self.listener, request.code)
        if request.code >= 400:
            # A client asking for one bad path after another on a kept-alive
            # connection would write the access log for us.
            mayLog = getattr(request.channel, "mayLogError", None)
            if mayLog is not None and not mayLog():
                return
        super().log(request)


def makeMetricsSite(metrics: ChatdMetrics, reactor=None) -> server.Site:
    """
    The site of C{--metrics}: C{/metrics}, C{/healthz}, C{/online}, and 404.
    """
    root = _Root()
    addResources(root, metrics)
    root.putChild(b"online", OnlineResource(metrics))
    site = CountingSite(root, metrics, "metrics", reactor=reactor)
    site.displayTracebacks = False
    site.noisy = False
    return site
