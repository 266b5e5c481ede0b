"""
What chatd counts for its operators: L{ChatdMetrics} and the reasons it
counts by.

One L{ChatdMetrics} is made per C{makeService} and shared by the presence
service, every factory and the HTTP sites. On the paths that run per message
the code only adds to plain integers in dictionaries (tens of nanoseconds);
gauges (who is online, open connections, files in flight) are not kept at
all but read from the presence service and the factories when Prometheus
scrapes. Exporting them (C{GET /metrics}, C{GET /healthz}, the metrics
site) is L{chatd.exporter}'s: this module imports neither
C{prometheus_client} nor C{twisted.web} nor anything of chatd's, so that
the core (L{chatd.presence}, L{chatd.sessions}, the protocols) counts
without depending on the HTTP exporter. docs/observability.md lists every
metric.
"""

from __future__ import annotations

from collections import defaultdict

#: The wire formats, whose series are exported even while still at zero.
PROTOCOLS = ("protobuf", "msrp", "msgr")

#: The MSGR HTTP login (a password check that issues a token), as the
#: C{protocol} of L{ChatdMetrics.logins}.
MSGR_HTTP = "msgr-http"

# Why a connection closed, the C{reason} of chatd_disconnects_total (and of
# the "disconnect" log events). The client's own doing is CLIENT.
CLIENT = "client"
CONN_LIMIT = "conn-limit"
LOGIN_TIMEOUT = "login-timeout"
LOGIN_REFUSED = "login-refused"
SENDQ = "sendq"
TOO_LARGE = "too-large"
PROTOCOL_ERROR = "protocol-error"
FILE_CUT = "file-cut"
BLOCKED = "blocked"
TAKEN_OVER = "taken-over"
REVOKED = "revoked"
SHUTDOWN = "shutdown"
ERROR = "error"

# Why a message (or file) was not delivered, the C{reason} of
# chatd_refusals_total.
RATE = "rate"
BUSY = "busy"


def _byReceiver() -> defaultdict:
    return defaultdict(int)


class ChatdMetrics:
    """
    chatd's counts (L{chatd.exporter.MetricsExporter} exports them).

    The counting methods are called where things happen; L{watch} follows a
    presence service for logins and logouts and reads it for the users
    online; L{addListener} names a factory whose connections (and files in
    flight, if it has C{filesInFlight()}) are read at scrape time.

    @ivar routed: C{routed[sender protocol][receiver protocol]}, messages
        handed to a session: written to directly by the presence service,
        the hottest path of all.
    """

    def __init__(self) -> None:
        self.routed: defaultdict[str, defaultdict[str, int]] = defaultdict(_byReceiver)
        self.logins: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.logouts: defaultdict[str, int] = defaultdict(int)
        self.refusals: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.disconnects: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.files: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.relayedBytes: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.httpRequests: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.presence = None
        self.listeners: dict[str, object] = {}
        #: A cluster node's own counts (chatd.cluster.metrics), or None.
        self.cluster = None

    # Following the rest of the server.

    def watch(self, presence) -> None:
        """Count the logins and logouts of C{presence}; read who is online."""
        if self.presence is None:
            self.presence = presence
            presence.addObserver(self._presenceEvent)

    def _presenceEvent(self, kind: str, info) -> None:
        # The kinds are chatd.presence.LOGIN and LOGOUT, spelt out: this
        # module imports nothing of chatd's (nor the web), so that
        # chatd.presence may import it.
        if kind == "login":
            self.logins[info.protocol, "accepted"] += 1
        elif kind == "logout":
            self.logouts[info.protocol] += 1

    def addListener(self, label: str, factory) -> None:
        """Export the open connections of C{factory} as C{listener=label}."""
        self.listeners[label] = factory

    # Counting.

    def loginAccepted(self, protocol: str) -> None:
        """A login that is no presence login (the MSGR HTTP login)."""
        self.logins[protocol, "accepted"] += 1

    def loginRefused(self, protocol: str) -> None:
        self.logins[protocol, "refused"] += 1

    def messageRouted(self, sender: str, receiver: str) -> None:
        """A message that did not go through the presence service."""
        self.routed[sender][receiver] += 1

    def refused(self, protocol: str, reason: str) -> None:
        """A message or file of a C{protocol} user was not delivered."""
        self.refusals[protocol, reason] += 1

    def disconnected(self, protocol: str, reason: str) -> None:
        self.disconnects[protocol, reason] += 1

    def fileRelayed(self, sender: str, receiver: str, size: int = 0) -> None:
        """A whole file was handed on (C{size} bytes not counted before)."""
        self.files[sender, receiver] += 1
        self.relayedBytes[sender, receiver] += size

    def bytesRelayed(self, sender: str, receiver: str, size: int) -> None:
        """Bytes of a streamed file, as they go on."""
        self.relayedBytes[sender, receiver] += size

    def httpRequest(self, listener: str, code: int) -> None:
        self.httpRequests[listener, str(code)] += 1
