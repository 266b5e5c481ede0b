"""
Listening on IPv4 and IPv6 at once (dual stack) for endpoints that name no
interface.

Twisted's C{tcp:5000} listens on every IPv4 address only. chatd gives an
endpoint with no interface (C{tcp:5000}, the default of every listener, and
C{ssl:5001:...}) every address of both families where the machine has IPv6:
one socket bound to C{::} with C{IPV6_V6ONLY} off, which takes IPv4 clients
as IPv4-mapped addresses (C{::ffff:192.0.2.7}). Where the machine has no
IPv6, it is Twisted's IPv4 listener, as before. An endpoint that names its
interface is left as it is: C{interface=0.0.0.0} for IPv4 only,
C{tcp6:5000:interface=\\:\\:} for IPv6 (docs/running.md, "IPv4 and IPv6").

Peers are seen by their plain address: the transports of a dual-stack
listener give an IPv4 client's address as an L{IPv4Address} (C{192.0.2.7},
not C{::ffff:192.0.2.7}; L{plainHost}), so the per-address limits, the
lockout and the logs do not depend on how chatd listens.
"""

from __future__ import annotations

import ipaddress
import socket

from twisted.internet import defer, tcp
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import IStreamServerEndpoint
from zope.interface import implementer

#: The interface of a dual-stack listener: every IPv6 address, and with
#: C{IPV6_V6ONLY} off every IPv4 address too.
ANY = "::"


def hasIPv6() -> bool:
    """Whether this machine can listen on IPv6 (a socket bound to C{::})."""
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            probe.bind((ANY, 0))
    except OSError:
        return False
    return True


def _plainAddress(port: tcp.Port, address: tuple):
    """An accepted socket's address, an IPv4-mapped one as L{IPv4Address}."""
    host = plainHost(address[0])
    if host != address[0]:
        return IPv4Address("TCP", host, address[1])
    return tcp.Port._buildAddr(port, address)


class DualStackServer(tcp.Server):
    """
    A connection accepted by a L{DualStackPort}: its peer, and its own end,
    as L{_plainAddress} (an IPv4 client reached chatd at an IPv4 address).
    """

    def getPeer(self):
        return _plainAddress(self.server, self.client)

    def getHost(self):
        return _plainAddress(self.server, self.socket.getsockname())


class DualStackPort(tcp.Port):
    """A TCP port on C{::} that takes IPv4 clients as well."""

    transport = DualStackServer

    def _buildAddr(self, address):
        return _plainAddress(self, address)

    def createInternetSocket(self):
        s = tcp.Port.createInternetSocket(self)
        # Linux's default (net.ipv6.bindv6only = 0), made explicit: some
        # systems default to IPv6 only.
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        return s


def listenDualStack(reactor, port: int, factory, backlog: int = 50) -> tcp.Port:
    """C{reactor.listenTCP(port, factory, backlog)} on every address of both families."""
    listening = DualStackPort(port, factory, backlog, ANY, reactor)
    listening.startListening()
    return listening


@implementer(IStreamServerEndpoint)
class DualStackServerEndpoint:
    """A server endpoint listening with L{listenDualStack}."""

    def __init__(self, reactor, port: int, backlog: int = 50) -> None:
        self.reactor = reactor
        self.port = port
        self.backlog = backlog

    def listen(self, factory) -> defer.Deferred:
        return defer.execute(listenDualStack, self.reactor, self.port, factory, self.backlog)


def dualStack(reactor, endpoint, ipv6: bool | None = None):
    """
    C{endpoint} itself, unless it is Twisted's IPv4 TCP endpoint with no
    interface (C{tcp:PORT}) and the machine has IPv6 (C{ipv6}, found out
    when C{None}): then a L{DualStackServerEndpoint} on the same port and
    backlog. (Twisted keeps them in private attributes of the endpoint; it
    has no public way to ask.)
    """
    if not isinstance(endpoint, TCP4ServerEndpoint) or endpoint._interface != "":
        return endpoint
    if ipv6 is None:
        ipv6 = hasIPv6()
    if not ipv6:
        return endpoint
    return DualStackServerEndpoint(reactor, endpoint._port, endpoint._backlog)


def plainHost(host: str) -> str:
    """
    C{host} with an IPv4-mapped IPv6 address written as IPv4:
    C{::ffff:192.0.2.7} -> C{192.0.2.7}; any other host as it is.
    """
    if host.startswith("::ffff:"):
        try:
            mapped = ipaddress.IPv6Address(host).ipv4_mapped
        except ValueError:
            return host
        if mapped is not None:
            return str(mapped)
    return host
