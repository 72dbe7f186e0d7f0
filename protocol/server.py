"""The agent's side of one connection, sans-IO: bytes in, classified requests out.

Besides decoding, it remembers which dialect the peer last spoke, because a message that cannot
even be parsed carries no dialect of its own and its error must still read naturally to the host
(qemu-ga's dialect until the peer shows otherwise, as libvirt expects).
"""

from __future__ import annotations

from pyqga.protocol.decoder import DecodeFailure, Message, StreamDecoder
from pyqga.protocol.dialects import Batch, Dialect, Incoming, Invalid, classify


class ServerConnection:
    """Per-connection protocol state; a new connection starts clean (qemu-ga's does not)."""

    def __init__(self, max_message_size: int = 1 << 20, max_depth: int = 1024) -> None:
        self._decoder = StreamDecoder(max_message_size=max_message_size, max_depth=max_depth)
        self.dialect: Dialect = Dialect.QGA

    def receive_data(self, data: bytes) -> list[Incoming]:
        """Everything ``data`` completes; resync bytes are absorbed silently."""
        incoming: list[Incoming] = []
        for event in self._decoder.feed(data):
            if isinstance(event, Message):
                item = classify(event.value)
                self.dialect = Dialect.JSONRPC if isinstance(item, Batch) else item.dialect
                incoming.append(item)
            elif isinstance(event, DecodeFailure):
                incoming.append(Invalid(self.dialect, event.error))
        return incoming

    def reset(self) -> None:
        """The peer reconnected (a character device has no connections of its own)."""
        self._decoder.reset()

    @property
    def buffered(self) -> int:
        return self._decoder.buffered
