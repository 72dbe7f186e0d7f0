"""The agent's side of one connection, sans-IO: bytes in, classified requests out; replies in,
bytes out (as wsproto's ``Connection``: ``receive_data`` and ``send``).

Besides decoding, it remembers which dialect the peer last spoke, because a message that cannot
even be parsed carries no dialect of its own and its error must still read naturally to the host
(qemu-ga's dialect until the peer shows otherwise, as libvirt expects).

The send side owns the rules of what goes back on the wire:
- the reply is in the dialect of what it answers (:func:`~pyqga.protocol.dialects.reply_object`);
- the id rules: a JSON-RPC request without an id (a notification) gets no reply, any other
  JSON-RPC reply carries the id (null when the request had none, as for an invalid message);
  a qemu-ga reply carries ``id`` only when the request did; an id JSON cannot hold is dropped;
- a reply that JSON cannot hold (NaN, an infinity, a foreign type) becomes an internal error
  reply, so nothing that leaves is invalid JSON;
- a batch is answered in one array, in ``json.dumps``'s layout, without its notifications, and
  not at all when only notifications were in it;
- the 0xFF sync byte goes before a delimited reply (``guest-sync-delimited``), and before a
  batch's array when any reply in it is delimited.

The send side keeps no state, so :meth:`ServerConnection.send` may be called from any thread
(the agent encodes a worker's reply on that worker).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from pyqga.protocol.decoder import DecodeFailure, Message, StreamDecoder
from pyqga.protocol.dialects import (
    RESYNC_BYTE,
    UNENCODABLE,
    Batch,
    Dialect,
    Incoming,
    Invalid,
    Request,
    classify,
    encode,
    reply_object,
)
from pyqga.protocol.errors import AgentError, ErrorKind


# A NamedTuple, as dialects.Request says why.
class Reply(NamedTuple):
    """What answers one request: its result, or its error.

    ``delimited``: the reply goes out after the 0xFF sync byte (``guest-sync-delimited``).
    """

    request: Request | Invalid
    result: Any = None
    error: AgentError | None = None
    delimited: bool = False


class BatchReply(NamedTuple):
    """What answers a :class:`~pyqga.protocol.dialects.Batch`: one reply per item, in order."""

    replies: Sequence[Reply]


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

    def send(self, event: Reply | BatchReply | None) -> bytes | None:
        """The bytes that answer ``event``, or None when nothing is sent (a notification, a
        batch of them, or None: nothing to answer).  Pure: safe on any thread."""
        if isinstance(event, Reply):  # nearly always: one request, one line
            return _reply_line(event.request, event.result, event.error, event.delimited)
        if event is None:
            return None
        return _batch_line(event.replies)

    def reset(self) -> None:
        """The peer reconnected (a character device has no connections of its own)."""
        self._decoder.reset()

    @property
    def buffered(self) -> int:
        return self._decoder.buffered


def _reply_line(request: Request | Invalid, result: Any, error: AgentError | None,
                delimited: bool) -> bytes | None:
    """One reply's line, or None for a notification (the id rules)."""
    if request.dialect is Dialect.QGA:
        has_id = request.has_id
    elif request.has_id or type(request) is Invalid:
        has_id = True  # JSON-RPC answers with the id, null where there was none
    else:
        return None  # a notification
    return encode_reply(request.dialect, request.id, has_id, result, error, delimited=delimited)


def _batch_line(replies: Sequence[Reply]) -> bytes | None:
    lines: list[bytes] = []
    delimited = False
    for reply in replies:
        delimited |= reply.delimited
        line = _reply_line(reply.request, reply.result, reply.error, False)
        if line is not None:
            lines.append(line[:-1])
    if not lines:
        return None
    # json.dumps's own list layout, one element at a time so a bad one spoils only itself.
    return (RESYNC_BYTE if delimited else b"") + b"[" + b", ".join(lines) + b"]\n"


def encode_reply(
    dialect: Dialect, request_id: Any, has_id: bool, result: Any = None,
    error: AgentError | None = None, *, delimited: bool = False,
) -> bytes:
    """The reply line in ``dialect``; never invalid JSON.

    A result (or error data) JSON cannot hold, such as ``float("inf")``, becomes an internal
    error reply instead of ``Infinity``, which no strict JSON parser accepts; an id that cannot
    be echoed is left out (qga) or null (JSON-RPC), since the host could not have sent it.
    """
    try:
        return encode(reply_object(dialect, request_id, has_id, result, error), delimited=delimited)
    except UNENCODABLE as exc:
        problem = AgentError(
            ErrorKind.INTERNAL_ERROR,
            f"internal error: the reply is not valid JSON ({exc}); it was not sent",
        )
        try:
            encode(request_id)
        except UNENCODABLE:
            request_id, has_id = None, False
        return encode(reply_object(dialect, request_id, has_id, error=problem))
