"""
Writes that reach the socket in the call that makes them.

Twisted's TCP transport queues every C{write} and sends it when the reactor
next finds the socket writable: each write to an idle connection registers
the socket with epoll (C{epoll_ctl}), and after the send unregisters it
again, two system calls and a reactor dispatch for every write. chatd
already joins what one read makes for one connection into one write (the
protobuf factory's cork), so the coalescing Twisted's queue buys is done;
what is left is its cost, which was a sixth of the server's time routing
pipelined messages (docs/performance.md).

L{writeThrough} returns a function that writes as C{transport.write} does,
but first offers the bytes to the socket at once when nothing is waiting in
the transport's own buffer. Whatever the kernel does not take (a full socket
buffer, an error) goes to C{transport.write}: order is kept, and errors are
found and reported by Twisted as before (a write after a reset is queued,
and its C{doWrite} reports the lost connection).
"""

from __future__ import annotations

from typing import Callable

from twisted.internet import tcp


def writeThrough(transport) -> Callable[[bytes], None]:
    """
    C{transport.write}, or, for a plain TCP (or UNIX) connection of Twisted's
    reactors, a function that sends at once when the transport's buffer is
    empty and queues only the rest.
    """
    write = transport.write
    if not isinstance(transport, tcp.Connection):
        return write  # TLS wrappers, test transports: as they are
    send = transport.socket.send

    def writeNow(data: bytes) -> None:
        t = transport
        if (
            t._tempDataLen
            or t.dataBuffer
            or t.TLS
            or not t.connected
            or t.disconnecting
            or t._writeDisconnecting
            or t._writeDisconnected
        ):
            write(data)
            return
        try:
            sent = send(data)
        except OSError:
            # Would block, or the connection failed: Twisted's own write path
            # sends it later, or finds the error and closes the connection.
            sent = 0
        if sent < len(data):
            write(data[sent:] if sent else data)

    return writeNow
