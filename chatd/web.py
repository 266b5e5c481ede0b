"""
Small twisted.web pieces shared by chatd's HTTP sites (the MSGR API and the
metrics listener).
"""

from __future__ import annotations

from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.web import http, resource

from chatd.limits import ErrorLogLimit

#: Default seconds an HTTP connection has to send a whole request, from when
#: it starts waiting for one (C{--http-request-timeout}).
DEFAULT_REQUEST_TIMEOUT = 10.0

#: Why chatd closed an HTTP connection that did not send a whole request in
#: time (the C{reason} of its log event and of chatd_disconnects_total).
REQUEST_TIMEOUT = "request-timeout"


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


class DeadlineHTTPChannel(http.HTTPChannel):
    """
    An HTTP connection that must send each request whole (request line,
    headers and body) within its site's C{requestTimeout} seconds, counted
    from when it starts waiting for that request: when it opens, and when
    the answer to the previous one has been written.

    twisted.web's own timeout (C{Site.timeOut}) starts again with every byte
    received, so a client sending one byte every few seconds held a
    connection, and its place in the connection limits, for ever. Here
    bytes that trickle in do not move the deadline. Past it, a connection
    in the middle of a request is answered C{408} with the site's
    C{requestTimeoutBody} and closed; one that sent nothing of a next
    request (an idle keep-alive connection) is closed without a word, as
    HTTP clients expect of idle connections. C{0} turns the deadline off.
    While a request is being answered there is no deadline: that time is
    the server's.
    """

    log = Logger()

    _deadline: IDelayedCall | None = None
    _partial = False
    _errorLog: ErrorLogLimit | None = None

    def mayLogError(self) -> bool:
        """
        Whether a log line about this connection's errors (the access line
        of a 4xx answer) may be written now (L{ErrorLogLimit}).
        """
        errors = self._errorLog
        if errors is None:
            clock = getattr(self.site, "reactor", None)
            if clock is None:
                from twisted.internet import reactor as clock
            peer = getattr(self.transport.getPeer(), "host", "")
            errors = self._errorLog = ErrorLogLimit(clock, "http", peer)
        return errors.allow()

    def connectionMade(self) -> None:
        super().connectionMade()
        self._awaitRequest()

    def _awaitRequest(self) -> None:
        self._partial = False
        timeout = getattr(self.site, "requestTimeout", 0)
        if timeout and self._deadline is None:
            self._deadline = self.callLater(timeout, self._requestTimedOut)

    def _stopDeadline(self) -> None:
        deadline, self._deadline = self._deadline, None
        if deadline is not None and deadline.active():
            deadline.cancel()

    def dataReceived(self, data: bytes) -> None:
        if data and self._deadline is not None:
            self._partial = True
        super().dataReceived(data)

    def allContentReceived(self) -> None:
        self._stopDeadline()
        super().allContentReceived()

    def requestDone(self, request) -> None:
        if self.persistent:
            # The deadline of the next request starts now, before bytes that
            # came early (pipelined) are read; they are part of it.
            self._awaitRequest()
        super().requestDone(request)

    def connectionLost(self, reason) -> None:
        self._stopDeadline()
        errors, self._errorLog = self._errorLog, None
        if errors is not None:
            errors.close()
        super().connectionLost(reason)

    def _requestTimedOut(self) -> None:
        self._deadline = None
        transport = self.transport
        if getattr(transport, "disconnecting", False):
            return  # already closing (a 400 went out): its own abort follows
        site = self.site
        peer = getattr(transport.getPeer(), "host", "")
        timeout = getattr(site, "requestTimeout", 0)
        # Bytes of a pipelined request, read with the one before it, are
        # parsed without passing through dataReceived: a request line seen,
        # or part of one buffered, is part of a request too.
        self._partial = (
            self._partial or bool(self.requests) or bool(getattr(self, "_buffer", b""))
        )
        if self._partial:
            body = getattr(site, "requestTimeoutBody", b"408")
            transport.write(
                b"HTTP/1.1 408 Request Timeout\r\n"
                b"Content-Type: text/plain; charset=utf-8\r\n"
                b"Content-Length: %d\r\n"
                b"Connection: close\r\n\r\n%s" % (len(body), body)
            )
        metrics = getattr(site, "metrics", None)
        listener = getattr(site, "listener", "http")
        if metrics is not None:
            if self._partial:
                metrics.httpRequest(listener, 408)
            metrics.disconnected("http", REQUEST_TIMEOUT)
        self.log.info(
            "{listener} connection from {peer} closed: {what} within"
            " {timeout:g} seconds",
            listener=listener,
            protocol="http",
            peer=peer,
            what="no whole request" if self._partial else "no request",
            timeout=timeout,
            reason=REQUEST_TIMEOUT,
            event="disconnect",
        )
        # Close as twisted.web's own timeout does (without its second log
        # line): what was written goes out, and a client that does not take
        # it is aborted C{abortTimeout} seconds later.
        self.setTimeout(None)
        self._abortingCall = self.callLater(self.abortTimeout, self.forceAbortClient)
        self.loseConnection()


class FreedHTTPChannel(DeadlineHTTPChannel):
    """
    L{DeadlineHTTPChannel}, freed by reference counting alone once its
    connection is lost.

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
        DeadlineHTTPChannel.connectionLost(self, reason)
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
