"""
Writes that reach the socket in the call that makes them.

Twisted's TCP transport queues every C{write} and sends it when the reactor
next finds the socket writable: each write to an idle connection registers
the socket with epoll (C{epoll_ctl}), and after the send unregisters it
again, two system calls and a reactor dispatch for every write. chatd
already joins what one burst of input makes for one connection into one
write (chatd/cork.py), so the coalescing Twisted's queue buys is done; what
is left is its cost, which was a sixth of the server's time routing
pipelined messages (docs/performance.md).

L{sendNow} writes as C{transport.write} does, but first offers the bytes to
the socket at once when nothing is waiting in the transport's own buffer.
Whatever the kernel does not take (a full socket buffer, an error) goes to
C{transport.write}: order is kept, and errors are found and reported by
Twisted as before (a write after a reset is queued, and its C{doWrite}
reports the lost connection).
"""

from __future__ import annotations

from twisted.internet import tcp


def sendNow(transport, data: bytes) -> None:
    """
    C{transport.write(data)}; for a plain TCP (or UNIX) connection of
    Twisted's reactors whose buffer is empty, the bytes are first offered to
    the socket at once, and only what it does not take is queued.
    """
    send = None
    try:
        if isinstance(transport, tcp.Connection) and not (
            transport._tempDataLen
            or transport.dataBuffer
            or transport.TLS
            or not transport.connected
            or transport.disconnecting
            or transport._aborting
            or transport._writeDisconnecting
            or transport._writeDisconnected
        ):
            send = transport.socket.send
    except AttributeError:
        # A Twisted whose transports keep their state otherwise (these are
        # FileDescriptor's own attributes): its write, as it is.
        pass
    if send is None:
        transport.write(data)
        return
    try:
        sent = send(data)
    except OSError:
        # Would block, or the connection failed: Twisted's own write path
        # sends it later, or finds the error and closes the connection.
        sent = 0
    if sent < len(data):
        transport.write(data[sent:] if sent else data)
