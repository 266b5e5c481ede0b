"""
The MSRP peer-to-peer variant (docs/msrp.md, "The peer-to-peer variant";
the client's wire is in shared/notes/dialects.md section 2): its requests
and the plain-text answers it reads.

This module is a codec: bytes <-> requests and replies, nothing of
Twisted's, so it can be fuzzed like L{chatd.msrp.codec}. The session's
behaviour is in L{chatd.msrp.protocol}.

The variant has no lengths and no terminators: one read is one request, a
2-byte big-endian opcode and its payload to the end of the read. Its client
sends C{00 03} alone, which TCP may join with the next request, and on the
end of its input re-sends its last line in a tight loop, so one read may
hold many requests. Its payloads are C strings (never a C{0x00}), so every
C{0x00} followed by an opcode byte starts a new request.
"""

from __future__ import annotations

from typing import NamedTuple

#: The variant's opcodes.
OP_MESSAGE = 1
OP_FILE = 2
OP_LIST = 3
OP_ACK = 4
OP_ERROR = 5

#: The client reads into 2048 bytes and writes a 0x00 after what it read:
#: every reply is at most this long.
MAX_REPLY = 2047

#: A name of the variant is 1 to 4 bytes (its client truncates to 4).
MAX_NAME = 4


class OfferHeader(NamedTuple):
    """A file offer: C{"<target> <file> <size> <port> <ip>"}."""

    target: str
    filename: str
    size: int
    port: int
    ip: str


def splitRead(data: bytes) -> list[tuple[int | None, bytes]]:
    """
    One read as its requests: C{(opcode, payload)}, or C{(None, data)} for
    bytes without an opcode (the client's un-opcoded text line).
    """
    requests: list[tuple[int | None, bytes]] = []
    start = 0
    if data[:1] != b"\x00":
        # Un-opcoded text: up to the first request that follows it, if any.
        cut = _nextRequest(data, 0)
        requests.append((None, data[:cut]))
        start = cut
    while start < len(data):
        if len(data) - start < 2:
            requests.append((None, data[start:]))
            break
        opcode = data[start + 1]
        end = _nextRequest(data, start + 2)
        requests.append((opcode, data[start + 2 : end]))
        start = end
    return requests


def _nextRequest(data: bytes, start: int) -> int:
    """Where the next request begins at or after C{start} (or the end)."""
    index = data.find(b"\x00", start)
    while index != -1:
        if index + 1 < len(data) and OP_MESSAGE <= data[index + 1] <= OP_ERROR:
            return index
        index = data.find(b"\x00", index + 1)
    return len(data)


def looksLikeVariant(data: bytes) -> bool:
    """
    Whether C{data}, the first read after a 4-byte name that came in its own
    read, is the variant's and not the seed's: after any C{00 03}, a message
    or file offer whose payload has no C{0x00} (the seed's frames end their
    fields with one, and its file header holds binary sizes).
    """
    while data[:2] == b"\x00\x03":
        data = data[2:]
    if len(data) <= 2 or data[:1] != b"\x00" or data[1] not in (OP_MESSAGE, OP_FILE):
        return False
    payload = data[2:]
    if b"\x00" in payload:
        return False
    if data[1] == OP_MESSAGE:
        return b" " in payload
    return parseOffer(payload) is not None


def parseMessage(payload: bytes) -> tuple[str, str]:
    """
    C{"<target> <text>"} as its target (the first word) and its text (after
    the target and one space). Raises L{UnicodeDecodeError}.
    """
    line = payload.decode("utf-8").lstrip(" \t")
    target, _, text = line.partition(" ")
    return target, text


def parseOffer(payload: bytes) -> OfferHeader | None:
    """
    C{"<target> <file> <size> <port> <ip>"}, or C{None} when it has fewer
    than 5 fields, a size or port that is no number, or a control character
    (C{0x00} among them) in a field.
    """
    try:
        fields = payload.decode("ascii").split()
    except UnicodeDecodeError:
        return None
    if len(fields) < 5:
        return None
    target, filename, size, port, ip = fields[:5]
    if not (size.isdigit() and port.isdigit()):
        return None
    if not all(field.isprintable() for field in fields[:5]):
        # A 0x00 or another control character in a field (split() keeps
        # them): forwarded, it would end the receiving client's C string.
        return None
    return OfferHeader(target, filename, int(size), int(port), ip)


def encodeOffer(offer: OfferHeader) -> bytes:
    """The offer as the receiving client reads it: C{00 02} and the header."""
    text = f"{offer.target} {offer.filename} {offer.size} {offer.port} {offer.ip}"
    return b"\x00\x02" + text.encode("utf-8", "replace")


def clip(data: bytes, maximum: int = MAX_REPLY) -> bytes:
    """C{data} cut to C{maximum} bytes on a UTF-8 character boundary."""
    if len(data) <= maximum:
        return data
    return data[:maximum].decode("utf-8", "ignore").encode("utf-8")


def plain(text: str) -> bytes:
    """
    C{text} as the client prints it: UTF-8, no C{0x00} (the client prints a
    C string), at most L{MAX_REPLY} bytes.
    """
    return clip(text.replace("\x00", "\ufffd").encode("utf-8", "replace"))


def encodeChat(sender: str, text: str) -> bytes:
    """A message delivered: C{[<sender>]: <text>}, no newline, as the variant's server."""
    return plain(f"[{sender}]: {text}")


def encodeErrorLine(text: str) -> bytes:
    """An error, as the variant's server says them: the text and a newline."""
    return plain(f"{text}\n")


def encodeList(entries: list[str]) -> bytes:
    """
    C{Lista de clientes:\\nCliente 1: <n1>\\n...}; a list that would pass
    L{MAX_REPLY} ends with a line saying how many were left out.
    """
    head = "Lista de clientes:\n"
    lines = [f"Cliente {number}: {entry}\n" for number, entry in enumerate(entries, 1)]
    used = len(head.encode("utf-8"))
    shown = 0
    for line in lines:
        rest = len(lines) - shown - 1
        tail = len(f"(y {rest} más)\n".encode("utf-8")) if rest else 0
        if used + len(line.encode("utf-8")) + tail > MAX_REPLY:
            break
        used += len(line.encode("utf-8"))
        shown += 1
    text = head + "".join(lines[:shown])
    if shown < len(lines):
        text += f"(y {len(lines) - shown} más)\n"
    return plain(text)
