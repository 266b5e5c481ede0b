"""
The fronts: what each wire format adds to C{twistd chatd}.

A front (L{IFront}) belongs to its protocol's package (C{chatd/<protocol>/
front.py}); it declares its own options and builds its listeners from the
shared services of a L{chatd.service.ChatdService}. C{chatd.tap} keeps the
common options and loops over L{FRONTS}: adding a protocol is its package
plus one line here (docs/architecture.md).

The fronts are named as strings, as twistd plugins are: this module imports
no protocol, so a protocol's front may import the helpers below without a
cycle, and C{chatd.tap} imports no protocol except through this list.
"""

from __future__ import annotations

import sys

from twisted.internet import endpoints
from twisted.python.reflect import namedAny
from zope.interface import Attribute, Interface

from chatd.listener import ListenerService

#: The modules of the fronts, each with a C{front} that provides L{IFront},
#: in the order their listeners are built (and start, and log).
FRONTS = (
    "chatd.msgr.front",
    "chatd.protobuf.front",
    "chatd.msrp.front",
)

#: The word that turns a listener off.
DISABLED = "none"

#: What a size or count of C{0} ("no limit") becomes.
NO_LIMIT = sys.maxsize


class IFront(Interface):
    """One wire format's part of C{twistd chatd}."""

    name = Attribute("The front's name (C{'msrp'}), for logs and docs.")

    endpointOptions = Attribute(
        "The options (without C{--}) that name a listener's endpoint or"
        " C{'none'}; a malformed one is a usage error naming the option."
    )

    def options():
        """
        The front's options, as C{usage.Options.optParameters} rows: name,
        short name (C{None}), default, help text and coercer.
        """

    def check(config):
        """
        Raise C{usage.UsageError} when the options (every front's and the
        common ones) do not go together for this front.
        """

    def openAccounts(config, reactor, owner):
        """
        The account store whose names the presence service protects, or
        C{None}: opened before the presence service exists, and shared as
        L{chatd.service.ChatdService.accounts}. At most one front has one.
        """

    def build(config, services, reactor):
        """
        Add this front's listeners (and the services they share) to
        C{services}, a L{chatd.service.ChatdService}.
        """


def loadFronts() -> list:
    """Every front of L{FRONTS}, in order."""
    return [namedAny(name).front for name in FRONTS]


def size(config, option: str) -> int:
    """A size or count option, with 0 ("no limit") as L{NO_LIMIT}."""
    return config[option] or NO_LIMIT


# Coercers of option values: a ValueError's text is what the usage error
# says after the option's name (chatd.config).


def positiveInt(value: str) -> int:
    number = int(value)
    if number <= 0:
        raise ValueError("must be a positive whole number")
    return number


def limit(value: str) -> int:
    number = int(value)
    if number < 0:
        raise ValueError("must be a whole number, 0 for no limit")
    return number


def rate(value: str) -> float:
    number = float(value)
    if not number >= 0:
        raise ValueError("must be a number, 0 for no limit")
    return number


def positiveFloat(value: str) -> float:
    number = float(value)
    if not number > 0:
        raise ValueError("must be a positive number")
    return number


def addListener(
    services,
    reactor,
    label: str,
    option: str,
    factory,
    metrics=None,
) -> ListenerService:
    """
    Listen with C{factory} on the endpoint of C{--option}, as a child of
    C{services} named C{label}; count its connections in C{metrics} if
    given.
    """
    from chatd.dualstack import dualStack
    from chatd.tls import tlsEndpoint
    from chatd.workers import adoptedEndpoint, workerNumber

    description = services.config[option]
    # A worker of --workers serves the socket its parent opened for this
    # option (chatd/workers.py).
    endpoint = adoptedEndpoint(reactor, option, description, label)
    adopted = endpoint is not None
    if not adopted:
        # An ssl: endpoint gets chatd's TLS layer (chatd/tls.py: ALPN, failed
        # handshakes logged, half-closes passed on); one with no interface
        # listens on IPv4 and IPv6 where the machine has IPv6 (chatd/dualstack.py).
        endpoint = dualStack(
            reactor,
            tlsEndpoint(reactor, endpoints.serverFromString(reactor, description), label),
        )
    listener = ListenerService(
        label, endpoint, factory, reactor, services.config["shutdown-grace"]
    )
    listener.worker = workerNumber() if adopted else None
    listener.secure = description.split(":", 1)[0].lower() == "ssl"
    listener.configuredAs = f"--{option} {description}"
    listener.setName(label)
    if metrics is not None:
        metrics.addListener(label, factory)
    listener.setServiceParent(services)
    return listener
