"""
chatd as a cluster: the presence backend chosen by C{--cluster}.

With C{--cluster none} (the default) chatd is one process with
L{chatd.presence.InMemoryPresenceService}. With C{--cluster redis://…} each
process is a node of a cluster whose directory and routing go through Redis
(L{chatd.cluster.presence.ClusterPresenceService}). The options are declared
here and added to the common ones by C{chatd.tap}, which stays unaware of
what a backend is made of (docs/cluster.md).
"""

from __future__ import annotations

from twisted.python import usage

from chatd.fronts import positiveFloat
from chatd.presence import InMemoryPresenceService

#: C{--cluster}'s word for "no cluster".
NO_CLUSTER = "none"

#: Default seconds a node's heartbeat lives (C{--cluster-ttl}).
DEFAULT_TTL = 10.0

#: Default key and channel prefix (C{--cluster-prefix}).
DEFAULT_PREFIX = "chatd:"


def _clusterURL(value: str) -> str:
    if value.lower() == NO_CLUSTER:
        return NO_CLUSTER
    from chatd.cluster.redis import parseClusterURL

    parseClusterURL(value)  # a ValueError names what is wrong
    return value


def _nodeId(value: str) -> str:
    if value and (not value.isprintable() or any(c.isspace() for c in value)):
        raise ValueError("must be printable, without spaces")
    return value


def options() -> list:
    """The cluster's rows of C{usage.Options.optParameters}."""
    return [
        [
            "cluster",
            None,
            NO_CLUSTER,
            "Redis of the cluster this process is a node of: "
            "redis://HOST:PORT/DB, rediss://HOST:PORT/DB (TLS) or "
            "unix:///PATH?db=DB; 'none' for one process on its own "
            "(docs/cluster.md).",
            _clusterURL,
        ],
        [
            "node-id",
            None,
            "",
            "This node's id in the cluster, in logs and /metrics; empty for "
            "HOSTNAME-PID. Unique per running process.",
            _nodeId,
        ],
        [
            "cluster-ttl",
            None,
            DEFAULT_TTL,
            "Seconds a node's heartbeat lives in Redis: the users of a node "
            "that dies without stopping are freed within about this.",
            positiveFloat,
        ],
        [
            "cluster-prefix",
            None,
            DEFAULT_PREFIX,
            "Prefix of every Redis key and channel of the cluster, so that "
            "several clusters can share one Redis.",
        ],
    ]


def check(config) -> None:
    """Options that do not go together."""
    if config["cluster"] != NO_CLUSTER and not config["cluster-prefix"]:
        raise usage.UsageError("--cluster-prefix must not be empty")


def makePresence(config, reactor, isProtectedName, metrics):
    """
    The presence service C{config} asks for, and the cluster connection
    (C{None} without C{--cluster}).

    A cluster's presence service is a service: the caller adds it to the
    tree (it connects, loads the directory, and says when listeners may
    accept connections: C{whenReady()}).
    """
    protect = isProtectedName if isProtectedName is not None else (lambda name: False)
    if config["cluster"] == NO_CLUSTER:
        return InMemoryPresenceService(protect, metrics), None
    from chatd.cluster.presence import ClusterPresenceService
    from chatd.cluster.redis import ClusterConnection, defaultNodeId, parseClusterURL

    connection = ClusterConnection(
        parseClusterURL(config["cluster"]),
        config["node-id"] or defaultNodeId(),
        config["cluster-prefix"],
        reactor,
    )
    presence = ClusterPresenceService(
        connection, protect, metrics, config["cluster-ttl"], reactor
    )
    return presence, connection
