"""The host's side of a connection, sans-IO: requests out, matched replies in, and resync.

States: READY, or RESYNCING(sync id).  A host resyncs on connect and after a timeout, because
the channel (a virtio-serial port outlives host connections) may still hold a stale reply or
half a message.  Resync sends ``0xFF`` (the agent drops partial input) and
``guest-sync-delimited`` with a random id; the agent's reply starts with ``0xFF`` too, which
makes our decoder drop whatever came before it, and every reply until the one carrying that id
is discarded.  The same procedure works against qemu-ga, which is the point.

Wire log: each request (as sent) and each message received (its JSON, and its size on the wire),
and what else came (the resync's ``0xFF``, garbage), one line each at DEBUG on the logger
``pyqga.client.wire`` (:data:`WIRE_LOG`, a child of the client's ``pyqga.client``):
``<address> --> {...}`` and ``<address> <-- {...}``.  A line shows at most
:data:`WIRE_LOG_CAP` characters of a message, and says the whole length where it cut.  Nothing
is formatted unless that logger is enabled for DEBUG.
"""

from __future__ import annotations

import itertools
import json
import logging
from dataclasses import dataclass
from typing import Any

from pyqga.protocol.decoder import DecodeFailure, Message, Resynced, StreamDecoder
from pyqga.protocol.dialects import RESYNC_BYTE, Dialect, encode_request
from pyqga.protocol.errors import AgentError

MAX_REPLY_SIZE = 64 << 20  # qemu-ga's own limit; guest-file-read replies can be large

WIRE_LOG: logging.Logger = logging.getLogger("pyqga.client.wire")
WIRE_LOG_CAP = 1024  # characters of one message a wire log line shows


def wire_text(data: bytes | str, size: int) -> str:
    """``data`` on one line, cut at WIRE_LOG_CAP with the whole ``size`` (bytes) said."""
    head = data[:WIRE_LOG_CAP]
    text = head if isinstance(head, str) else head.decode("utf-8", "backslashreplace")
    text = text.replace("\n", "\\n").replace("\r", "\\r")
    if len(data) > WIRE_LOG_CAP:
        return f"{text} ... [cut: {size} bytes in all]"
    return text


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

    def __init__(self, dialect: Dialect = Dialect.JSONRPC, *, name: str = "agent") -> None:
        self.dialect = dialect
        self.name = name  # the address, for the wire log
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
        data = encode_request(dialect or self.dialect, method, params, request_id)
        self._log_sent(data)
        return request_id, data

    def start_resync(self, sync_id: int) -> bytes:
        """Bytes that resynchronise the channel; replies are withheld until the sync answer."""
        self._sync_id = sync_id
        self._decoder.reset()
        data = RESYNC_BYTE + encode_request(self.dialect, "guest-sync-delimited", {"id": sync_id}, sync_id)
        self._log_sent(data)
        return data

    def _log_sent(self, data: bytes) -> None:
        if WIRE_LOG.isEnabledFor(logging.DEBUG):
            WIRE_LOG.debug("%s --> %s", self.name, wire_text(data.strip(), len(data)))

    def _log_received(self, event: object) -> None:
        if not WIRE_LOG.isEnabledFor(logging.DEBUG):
            return
        if isinstance(event, Message):
            text = wire_text(json.dumps(event.value, separators=(",", ":")), event.size)
        elif isinstance(event, Resynced):
            text = f"0xFF (a resync; {event.discarded} bytes of a partial message dropped)"
        elif isinstance(event, DecodeFailure):
            text = f"undecodable input: {event.error.message}"
        else:
            text = repr(event)
        state = " (while resyncing)" if self._sync_id is not None else ""
        WIRE_LOG.debug("%s <-- %s%s", self.name, text, state)

    def receive_data(self, data: bytes) -> list[Reply]:
        """Replies completed by ``data``.  While resyncing, only the sync reply ends it."""
        replies: list[Reply] = []
        for event in self._decoder.feed(data):
            self._log_received(event)
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
