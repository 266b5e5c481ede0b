"""
The process' one cork: writes held while chatd handles one burst of input
and handed to each connection once, in one piece, when the burst ends.

A burst is a protobuf client's read (many pipelined requests: their answers
and the deliveries they make) or a batch from the cluster's Redis (many
messages for this node's users, docs/cluster.md "Batches"). Without the
cork each of its writes is a C{send()} of its own (chatd.writethrough):
a batch of 200 messages for one connection would cost 200 system calls,
where one does.

Bursts may nest (a test's in-memory transports hand a write to the other
side within the call): only the outermost one's end flushes.
What holds writes is the protocol's business (C{ProtobufChatProtocol._write}
says what is never held); the cork only counts bursts and keeps the list of
connections to flush.
"""

from __future__ import annotations


class Cork:
    """
    A count of the bursts under way (C{depth}) and the connections that hold
    writes meanwhile (C{dirty}: each has a C{flush()}).
    """

    __slots__ = ("depth", "dirty")

    def __init__(self) -> None:
        #: How many bursts are under way; writes may be held while not 0.
        self.depth = 0
        #: The holders of writes, flushed when the last burst ends.
        self.dirty: list = []

    def enter(self) -> None:
        """A burst begins."""
        self.depth += 1

    def leave(self) -> None:
        """A burst ends; the last one hands every held write to its connection."""
        self.depth -= 1
        if not self.depth:
            self.flush()

    def flush(self) -> None:
        """Hand every held write to its connection."""
        # A holder's flush may start a burst that holds new writes (an
        # in-memory transport delivering within the call): flushed in turn.
        while self.dirty:
            dirty, self.dirty = self.dirty, []
            for holder in dirty:
                holder.flush()


#: The cork of the process: every protobuf read and every cluster batch.
CORK = Cork()
