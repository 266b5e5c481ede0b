"""
MSRP file transfer for the load generator (scenario 5): one sender, one
receiver, blocking sockets, each in its own worker process.

C{via} says what is between them:

  - C{"chatd"}: chatd's MSRP listener. Both send their 4-byte name; the
    receiver also asks for the list of clients, whose answer proves its
    login. The sender sends an ARCH header and the content; the receiver
    reads them and sends the ACK, which chatd forwards to the sender.
  - C{"pipe"}: a plain byte pipe (the baseline, C{socat} or
    C{bench/pipe.py}) between two ports: the same bytes go through it, but
    each side first sees the other's name, which it skips.
"""

from __future__ import annotations

import socket
import time

from chatd.msrp import codec as msrp

#: The content is sent in blocks of this size.
BLOCK = 1024 * 1024

_PATTERN = bytes(range(256)) * (BLOCK // 256)


def content(size: int) -> bytes:
    """The first C{size} bytes of what a file of C{size} bytes holds."""
    blocks, rest = divmod(size, BLOCK)
    return _PATTERN * blocks + _PATTERN[:rest]


def connect(role: str, address: tuple[str, int], name: str, via: str, timeout: float) -> socket.socket:
    """
    Connect C{role} (C{sender} or C{receiver}) as C{name}; a pipe's second
    port may not listen yet, so refused connections are retried until
    C{timeout}.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            sock = socket.create_connection(address, timeout=timeout)
            break
        except ConnectionRefusedError:
            if via != "pipe" or time.monotonic() > deadline:
                raise
            time.sleep(0.01)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    wire = name.encode("utf-8")
    if via == "chatd" and role == "receiver":
        sock.sendall(wire + msrp.encodeListRequest())
        decoder = msrp.MsrpFrameDecoder(fromServer=True)
        while True:
            data = sock.recv(65536)
            if not data:
                raise ConnectionError(f"{name}: closed by the server while logging in")
            for frame in decoder.feed(data):
                if isinstance(frame, msrp.ClientList):
                    return sock
                if isinstance(frame, msrp.Error):
                    raise ConnectionError(f"{name}: {frame.text.decode('utf-8', 'replace')}")
    sock.sendall(wire)
    return sock


def _reader(sock: socket.socket, via: str):
    """Yield what the other end sends, after the pipe's name prefix."""
    skip = msrp.NAME_LENGTH if via == "pipe" else 0
    while True:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("closed before the transfer ended")
        if skip:
            cut = min(skip, len(data))
            data = data[cut:]
            skip -= cut
        if data:
            yield data


def send(sock: socket.socket, receiver: str, filename: str, size: int, via: str, timeout: float) -> dict:
    """
    Send a file of C{size} bytes to C{receiver}, then wait for its ACK.

    @return: C{start_ns} (before the header), C{sent_ns}, C{ack_ns}.
    """
    sock.settimeout(timeout)
    name = filename.encode("utf-8")
    start = time.monotonic_ns()
    sock.sendall(msrp.encodeFileHeader(receiver.encode("utf-8"), name, size, 0, b"127.0.0.1"))
    block = memoryview(_PATTERN)
    remaining = size
    while remaining >= BLOCK:
        sock.sendall(block)
        remaining -= BLOCK
    if remaining:
        sock.sendall(block[:remaining])
    sent = time.monotonic_ns()
    decoder = msrp.MsrpFrameDecoder(fromServer=True)
    try:
        for data in _reader(sock, via):
            for frame in decoder.feed(data):
                if isinstance(frame, msrp.Ack) and frame.filename == name:
                    return {"start_ns": start, "sent_ns": sent, "ack_ns": time.monotonic_ns()}
                if isinstance(frame, msrp.Error):
                    raise ConnectionError(frame.text.decode("utf-8", "replace"))
    finally:
        sock.close()
    raise AssertionError("unreachable")


def receive(
    sock: socket.socket,
    filename: str,
    size: int,
    via: str,
    timeout: float,
    verify: bool = False,
    headerTimeout: float | None = None,
) -> dict:
    """
    Read a file's header and its C{size} bytes, then send the ACK.

    The socket stays open (the caller closes it once the sender has the
    ACK).

    @param verify: keep the content and compare it with L{content}.
    @param headerTimeout: give up when nothing came for this many seconds
        before the header (the server may have refused the file to its
        sender), C{timeout} if C{None}.
    @return: C{first_ns} (first content byte), C{last_ns}, C{bytes}, and
        C{intact} when verifying.
    """
    sock.settimeout(timeout if headerTimeout is None else headerTimeout)
    name = filename.encode("utf-8")
    decoder = msrp.MsrpFrameDecoder(fromServer=True)
    header = None
    received = 0
    kept = bytearray() if verify else None
    first = None
    try:
        stream = _reader(sock, via)
        while header is None or (received < size and decoder.inContent):
            data = next(stream)
            for frame in decoder.feed(data):
                if isinstance(frame, msrp.FileHeader):
                    if frame.filename != name or frame.size != size:
                        raise ConnectionError(f"unexpected file {frame!r}")
                    header = frame
                    sock.settimeout(timeout)
                elif isinstance(frame, msrp.FileChunk):
                    if first is None:
                        first = time.monotonic_ns()
                    received += len(frame.data)
                    if kept is not None:
                        kept += frame.data
                elif isinstance(frame, msrp.Error):
                    raise ConnectionError(frame.text.decode("utf-8", "replace"))
                if received >= size:
                    break
            if header is not None and decoder.inContent and received < size and kept is None:
                break  # the rest is counted without the decoder
        buffer = bytearray(BLOCK)
        view = memoryview(buffer)
        while received < size:
            count = sock.recv_into(view, min(BLOCK, size - received))
            if not count:
                raise ConnectionError(f"closed after {received} of {size} bytes")
            if first is None:
                first = time.monotonic_ns()
            received += count
        last = time.monotonic_ns()
        sock.sendall(msrp.encodeAck(name))
    except BaseException:
        sock.close()
        raise
    # The caller closes the socket once the sender has its ACK: closing now
    # could reset the connection before the ACK is read.
    result = {"first_ns": first or last, "last_ns": last, "bytes": received}
    if kept is not None:
        result["intact"] = bytes(kept) == content(size)
    return result


__all__ = ["connect", "send", "receive", "content", "BLOCK"]
