"""
The baseline of scenario 5 when C{socat} is not there: a plain byte pipe
between two TCP ports, as C{socat TCP-LISTEN:A TCP-LISTEN:B} is.

    python bench/pipe.py PORT_A PORT_B

It accepts one connection on C{127.0.0.1:PORT_A}, then one on
C{127.0.0.1:PORT_B}, and copies bytes both ways (64 KiB reads, as Twisted's
and socat's buffers) until either side closes. It logs C{pipe listening on
tcp:127.0.0.1:PORT_A} once it listens.
"""

from __future__ import annotations

import socket
import sys
import threading

BUFFER = 64 * 1024


def _copy(source: socket.socket, target: socket.socket) -> None:
    buffer = bytearray(BUFFER)
    view = memoryview(buffer)
    try:
        while True:
            count = source.recv_into(buffer)
            if not count:
                break
            target.sendall(view[:count])
    except OSError:
        pass
    try:
        target.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def _listen(port: int) -> socket.socket:
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", port))
    server.listen(1)
    return server


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    first = _listen(int(argv[0]))
    print(f"pipe listening on tcp:127.0.0.1:{first.getsockname()[1]}", flush=True)
    a, _ = first.accept()
    first.close()
    second = _listen(int(argv[1]))
    b, _ = second.accept()
    second.close()
    threads = [
        threading.Thread(target=_copy, args=(a, b)),
        threading.Thread(target=_copy, args=(b, a)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    a.close()
    b.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
