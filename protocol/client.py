"""The host's side of a connection, sans-IO: requests out, matched replies in, and resync.

States: READY, or RESYNCING(sync id).  A host resyncs on connect and after a timeout, because
the channel (a virtio-serial port outlives host connections) may still hold a stale reply or
half a message.  Resync sends ``0xFF`` (the agent drops partial input) and
``guest-sync-delimited`` with a random id; the agent's reply starts with ``0xFF`` too, which
makes our decoder drop whatever came before it, and every reply until the one carrying that id
is discarded.  The same procedure works against qemu-ga, which is the point.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from pyqga.protocol.decoder import Message, StreamDecoder
from pyqga.protocol.dialects import RESYNC_BYTE, Dialect, encode_request
from pyqga.protocol.errors import AgentError

MAX_REPLY_SIZE = 64 << 20  # qemu-ga's own limit; guest-file-read replies can be large


@dataclass(frozen=True, slots=True)
class Reply:
    """A reply from the agent; ``error`` is set on failure.  ``id`` is None when it had none."""

    id: Any
    result: Any = None
    error: AgentError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def parse_reply(value: Any) -> list[Reply]:
    """Replies in either dialect (a JSON-RPC batch gives several); other objects are ignored."""
    if isinstance(value, list):
        return [reply for item in value for reply in parse_reply(item)]
    if not isinstance(value, dict):
        return []
    reply_id = value.get("id")
    if value.get("jsonrpc") == "2.0":
        if "error" in value:
            return [Reply(reply_id, error=AgentError.from_jsonrpc(value["error"]))]
        if "result" in value:
            return [Reply(reply_id, value["result"])]
        return []
    if "error" in value:
        return [Reply(reply_id, error=AgentError.from_qga(value["error"]))]
    if "return" in value:
        return [Reply(reply_id, value["return"])]
    return []


class ClientConnection:
    """Encodes requests with fresh ids and yields only the replies worth delivering."""

    def __init__(self, dialect: Dialect = Dialect.JSONRPC) -> None:
        self.dialect = dialect
        self._decoder = StreamDecoder(max_message_size=MAX_REPLY_SIZE)
        self._ids = itertools.count(1)
        self._sync_id: int | None = None

    @property
    def resyncing(self) -> bool:
        return self._sync_id is not None

    def send_request(self, method: str, params: dict[str, Any] | None = None,
                     dialect: Dialect | None = None) -> tuple[int, bytes]:
        """The bytes of a new request and the id its reply will carry; ``dialect`` overrides the
        connection's for this request (pyqga answers each message in the dialect it came in)."""
        request_id = next(self._ids)
        return request_id, encode_request(dialect or self.dialect, method, params, request_id)

    def start_resync(self, sync_id: int) -> bytes:
        """Bytes that resynchronise the channel; replies are withheld until the sync answer."""
        self._sync_id = sync_id
        self._decoder.reset()
        return RESYNC_BYTE + encode_request(
            self.dialect, "guest-sync-delimited", {"id": sync_id}, sync_id
        )

    def receive_data(self, data: bytes) -> list[Reply]:
        """Replies completed by ``data``.  While resyncing, only the sync reply ends it."""
        replies: list[Reply] = []
        for event in self._decoder.feed(data):
            if not isinstance(event, Message):
                continue  # a resync byte, or garbage: neither is a reply to anything
            for reply in parse_reply(event.value):
                if self._sync_id is None:
                    replies.append(reply)
                elif reply.ok and reply.result == self._sync_id:
                    self._sync_id = None
                elif reply.error is not None and reply.id == self._sync_id:
                    # An agent without guest-sync-delimited: give the error to the caller.
                    self._sync_id = None
                    replies.append(reply)
        return replies
