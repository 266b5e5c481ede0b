"""
Small twisted.web pieces shared by chatd's HTTP sites (the MSGR API and the
metrics listener).
"""

from __future__ import annotations

from twisted.web import http, resource


class NotFound(resource.Resource):
    """Unknown paths: 404 with a plain body (no HTML page)."""

    isLeaf = True

    def render(self, request):
        request.setResponseCode(404)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"404"


class Directory(resource.Resource):
    """A resource whose only content is its children; anything else is 404."""

    def getChild(self, path, request):
        return NotFound()


class FreedHTTPChannel(http.HTTPChannel):
    """
    twisted.web's HTTP/1.1 channel, freed by reference counting alone once
    its connection is lost.

    Two reference cycles are broken when the connection is lost, each of
    which kept the channel, its transport and their buffers until a full
    garbage collection:
      - a request whose body was still arriving leaves the channel's body
        decoder, which holds a bound method of the channel: channel ->
        decoder -> channel. The decoder is dropped (C{_transferDecoder} is
        twisted.web's own attribute; C{None} is its value between requests);
      - the channel registers itself as its transport's producer, and a TLS
        transport keeps its producer after the connection is lost: channel
        -> transport -> channel. It is unregistered.
    """

    def connectionLost(self, reason) -> None:
        http.HTTPChannel.connectionLost(self, reason)
        self._transferDecoder = None
        try:
            self.transport.unregisterProducer()
        except RuntimeError:
            pass  # none is registered any more (an in-memory test transport)


def freedChannelProtocol(site) -> http._GenericHTTPChannelProtocol:
    """
    What twisted.web's C{HTTPFactory.protocol} builds, with a
    L{FreedHTTPChannel} inside: set as a site's C{protocol}.
    """
    return http._GenericHTTPChannelProtocol(FreedHTTPChannel())
