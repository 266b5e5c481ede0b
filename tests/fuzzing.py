"""
Shared pieces of the fuzz tests (tests/test_fuzz_*.py; no tests here):
strategies for cutting a byte stream into reads and for mutating a valid
stream, and a transport that records each write separately.
"""

from __future__ import annotations

from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

#: Where to cut a stream into reads: positions taken modulo its length.
cutPoints = st.lists(st.integers(0, 1 << 16), max_size=12)


def cut(data: bytes, points: list[int]) -> list[bytes]:
    """C{data} cut at C{points} (modulo its length) into non-empty reads."""
    points = sorted({p % (len(data) + 1) for p in points})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(edges, edges[1:]) if b > a]


#: Edits of a valid stream: bytes flipped, inserted, deleted, or the stream
#: truncated, each at a position taken modulo the stream's length.
mutations = st.lists(
    st.one_of(
        st.tuples(st.just("flip"), st.integers(0, 1 << 16), st.integers(1, 255)),
        st.tuples(
            st.just("insert"), st.integers(0, 1 << 16), st.binary(min_size=1, max_size=8)
        ),
        st.tuples(st.just("delete"), st.integers(0, 1 << 16), st.integers(1, 8)),
        st.tuples(st.just("truncate"), st.integers(0, 1 << 16), st.none()),
    ),
    max_size=4,
)


def mutate(data: bytes, edits) -> bytes:
    """Apply C{edits} (from L{mutations}) to C{data}."""
    buf = bytearray(data)
    for kind, pos, arg in edits:
        at = pos % (len(buf) + 1)
        if kind == "flip":
            if buf:
                buf[pos % len(buf)] ^= arg
        elif kind == "insert":
            buf[at:at] = arg
        elif kind == "delete":
            del buf[at : at + arg]
        else:
            del buf[at:]
    return bytes(buf)


def hostileInput(valid: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """
    Either arbitrary bytes, or a valid stream from C{valid} with mutations
    (possibly none) applied.
    """
    return st.one_of(
        st.binary(max_size=512),
        st.builds(mutate, valid, mutations),
    )


class RecordingTransport(StringTransport):
    """A L{StringTransport} that also keeps each write on its own."""

    def __init__(self, host: str = "192.0.2.66") -> None:
        super().__init__(peerAddress=IPv4Address("TCP", host, 40000))
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        super().write(data)


def mergeChunks(items: list, chunkType) -> list:
    """
    C{items} with every run of consecutive C{chunkType} objects (which have a
    C{data} attribute) merged into one, so that streams cut differently
    compare equal.
    """
    out: list = []
    for item in items:
        if type(item) is chunkType and out and type(out[-1]) is chunkType:
            out[-1] = chunkType(out[-1].data + item.data)
        else:
            out.append(item)
    return out
