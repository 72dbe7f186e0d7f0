"""Serving connections: one asyncio protocol per client, replies written in a safe order.

Guarantees, each because a host depends on it:
- every connection has its own decoder, so a client that dies mid-message harms no other;
- fair turns: a connection's bytes are decoded and answered TURN_BYTES / TURN_ITEMS at a time,
  then the loop serves everyone else before its next turn, and its reading stays paused while it
  has a backlog; so a flood of tiny requests (or of garbage) from some clients costs every other
  client one turn per flooder, and the agent holds at most one read chunk per connection;
- a client that stops reading gets no more turns once its unsent replies (error replies
  included) pass the transport's high-water mark, so it cannot make the agent buffer without
  bound;
- a connection that has gone gets no more work: its backlog is dropped, never answered;
- at most MAX_CONNECTIONS clients at once (qemu-ga serves one); one more is closed at once with a
  log line, and those already connected are served as before;
- on a qemu-ga-dialect connection replies leave in request order (qemu-ga hosts match by
  order); JSON-RPC replies leave as they complete (hosts match by id);
- commands marked ``blocking`` run on a worker thread so pings keep being answered meanwhile;
- the replies answered at once in one turn leave in one write (one system call instead of one
  per reply), in the order above: nothing else writes during a turn.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pyqga.agent.channels import Channel, ListenerChannel, StreamProtocol
from pyqga.agent.dispatch import Dispatcher
from pyqga.agent.state import AgentState
from pyqga.protocol.dialects import Batch, Dialect, Incoming, Request
from pyqga.protocol.server import BatchReply, Reply, ServerConnection

MAX_PENDING_REPLIES = 256  # per connection, before we stop reading its requests
# Simultaneous clients of a listening socket.  Closed clients count until their EOF is read, and
# a connect-send-close flood keeps a hundred or so in that state: room for them and the real ones.
MAX_CONNECTIONS = 128
READ_SIZE = 16384  # bytes taken from the socket at a time (asyncio's default is 256 KiB)
# One turn of one connection: this many bytes decoded, this many requests answered at most.
TURN_BYTES = 4096
TURN_ITEMS = 32
# Decoded in steps of this many bytes, stopping once TURN_ITEMS requests wait: input dense in
# messages (`{}` floods: one per 2 bytes) never decodes more than ~DECODE_STEP / 2 of them in a turn.
DECODE_STEP = 256
REFUSAL_LOG_INTERVAL = 10.0  # seconds between two log lines about refused connections
# Threads for freeze/thaw requests.  They only wait for the freeze state machine, which answers a
# second freeze at once (busy) and queues thaws, so a few are plenty.
URGENT_THREADS = 8


def _ordered(item: Incoming) -> bool:
    return not isinstance(item, Batch) and item.dialect is Dialect.QGA


class ConnectionLimit:
    """How many clients are connected; refuses one over :data:`MAX_CONNECTIONS`."""

    def __init__(self, log: logging.Logger, limit: int = MAX_CONNECTIONS) -> None:
        self.log = log
        self.limit = limit
        self.active: int = 0
        self._refused = 0
        self._last_log = -REFUSAL_LOG_INTERVAL

    def admit(self) -> bool:
        if self.active < self.limit:
            self.active += 1
            return True
        self._refused += 1
        now = time.monotonic()
        if now - self._last_log >= REFUSAL_LOG_INTERVAL:  # a connect flood must not flood the log
            self.log.warning("refused %d connection(s): already serving %d clients, the most at once",
                             self._refused, self.limit)
            self._refused, self._last_log = 0, now
        return False

    def release(self) -> None:
        self.active -= 1


class AgentConnection(StreamProtocol):
    def __init__(self, dispatcher: Dispatcher, executors: dict[str, ThreadPoolExecutor],
                 limit: ConnectionLimit | None = None) -> None:
        self._dispatcher = dispatcher
        self._executors = executors
        self._limit = limit
        self._admitted = False
        self._protocol = ServerConnection(dispatcher.agent.config.max_message_size)
        self._transport: asyncio.Transport | None = None
        self._pending: deque[asyncio.Future[bytes | None]] = deque()
        self._unordered: set[asyncio.Future[bytes | None]] = set()  # on a lane, written when done
        self._write_paused = False
        self._batch: list[bytes] | None = None  # replies held back during a turn
        self._inbox = bytearray()  # received, not yet decoded
        self._read_buffer = bytearray(READ_SIZE)
        self._items: deque[Incoming] = deque()  # decoded, not yet answered
        self._turn_due = False  # a turn is scheduled on the loop

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        if self._limit is not None:
            if not self._limit.admit():
                transport.abort()
                return
            self._admitted = True
        self._transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._pending.clear()
        self._unordered.clear()
        self._inbox.clear()
        self._items.clear()
        if self._admitted:
            self._admitted = False
            self._limit.release()  # type: ignore[union-attr]

    # A socket transport reads into our buffer (so at most READ_SIZE at a time); the device
    # transport of agent/channels.py hands over bytes.
    def get_buffer(self, sizehint: int) -> bytearray:
        return self._read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(bytes(memoryview(self._read_buffer)[:nbytes]))

    def data_received(self, data: bytes) -> None:
        if self._transport is None:
            return
        if self._inbox or self._items or self._turn_due or len(data) > DECODE_STEP:
            self._inbox += data  # behind a backlog, or more than one decode step
            data = b""
        if not self._turn_due:
            self._turn(data)

    def _turn(self, data: bytes = b"") -> None:
        """Decode and answer one turn's worth, then let every other connection have its turn.
        ``data``: a request that came alone, decoded as it is (the common case, no copies)."""
        self._turn_due = False
        if self._transport is None or self._blocked():
            self._inbox += data
            return  # gone, or resume_writing / _flush starts the next turn
        if data:
            items = self._protocol.receive_data(data)
            if len(items) == 1 and not self._items and not self._inbox:
                # Nearly every turn: one request, nothing behind it, so its reply (if answered
                # here) is the turn's only write and reading stays as it is; a hand-off to a
                # worker or a paused transport updates the reading itself (_queue, pause_writing).
                self._answer(items[0])
                return
            self._items.extend(items)
        self._batch = []  # collects what _write gets until the end of this turn
        try:
            budget = TURN_BYTES
            while self._inbox and budget > 0 and len(self._items) < TURN_ITEMS:
                chunk = bytes(self._inbox[:DECODE_STEP])
                del self._inbox[:DECODE_STEP]
                budget -= len(chunk)
                self._items.extend(self._protocol.receive_data(chunk))
            for _ in range(min(TURN_ITEMS, len(self._items))):
                self._answer(self._items.popleft())
                if self._transport is None or self._blocked():
                    break
        finally:
            batch, self._batch = self._batch, None
            self._write(b"".join(batch) or None)
        self._update_reading()

    def _blocked(self) -> bool:
        """No turns while the client does not read its replies or too many are in flight."""
        return self._write_paused or len(self._pending) >= MAX_PENDING_REPLIES

    def pause_writing(self) -> None:
        self._write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._update_reading()

    def _answer(self, item: Incoming) -> None:
        try:
            self._handle(item)
        except Exception:  # our bug: log it, keep serving this and every other client
            self._dispatcher.agent.log.exception("internal error answering %r", item)

    def _handle(self, item: Incoming) -> None:
        dispatcher = self._dispatcher
        if isinstance(item, Request):  # nearly always: one lookup, then here or on its lane
            prepared = dispatcher.prepare(item)
            if isinstance(prepared, Reply):
                reply = self._protocol.send(prepared)
            elif prepared.command.lane is None:
                reply = self._protocol.send(dispatcher.complete(prepared))
            else:
                self._submit(prepared.command.lane, item, dispatcher.complete_later, prepared)
                return
        else:
            lane = dispatcher.lane(item)
            if lane is not None:
                self._submit(lane, item, dispatcher.answer, item)
                return
            reply = self._protocol.send(dispatcher.answer(item))
        if self._pending and _ordered(item):
            done: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
            done.set_result(reply)
            self._queue(done)
        else:
            self._write(reply)

    def _submit(self, lane: str, item: Incoming, work: Callable[[Any], Reply | BatchReply | None],
                arg: Any) -> None:
        """Run ``work(arg)`` on ``lane``'s threads, its reply encoded there too (the send side
        keeps no state); the bytes are written in the right order."""
        future = asyncio.get_running_loop().run_in_executor(
            self._executors[lane], self._sent, work, arg)
        if _ordered(item):
            self._queue(future)
        else:
            self._unordered.add(future)
            future.add_done_callback(self._write_done)

    def _sent(self, work: Callable[[Any], Reply | BatchReply | None], arg: Any) -> bytes | None:
        return self._protocol.send(work(arg))

    def _queue(self, future: asyncio.Future[bytes | None]) -> None:
        self._pending.append(future)
        future.add_done_callback(self._flush)
        self._update_reading()

    def _flush(self, _: object = None) -> None:
        while self._pending and self._pending[0].done():
            self._write(self._result(self._pending.popleft()))
        self._update_reading()

    def _write_done(self, future: asyncio.Future[bytes | None]) -> None:
        self._unordered.discard(future)
        self._write(self._result(future))

    def owes_replies(self) -> bool:
        return bool(self._pending or self._unordered or self._items or self._inbox)

    def _result(self, future: asyncio.Future[bytes | None]) -> bytes | None:
        """A worker's reply.  The dispatcher never raises for a request's own failure; anything
        here is our bug: log it, and keep the connection (the host's call times out)."""
        if future.cancelled():
            return None
        error = future.exception()
        if error is not None:
            self._dispatcher.agent.log.error("internal error on a worker thread: %r", error)
            return None
        return future.result()

    def _write(self, reply: bytes | None) -> None:
        if reply is None:
            return
        if self._batch is not None:
            self._batch.append(reply)
        elif self._transport is not None:
            self._transport.write(reply)

    def _update_reading(self) -> None:
        """Read more only when all that was read is answered; else schedule the next turn."""
        transport = self._transport
        if transport is None:
            return
        backlog = bool(self._inbox or self._items)
        if self._blocked() or backlog:
            transport.pause_reading()
            if backlog and not self._blocked() and not self._turn_due:
                self._turn_due = True
                asyncio.get_running_loop().call_soon(self._turn)
        elif transport.is_reading() is False:
            transport.resume_reading()


async def serve(agent: AgentState, channel: Channel, stop: asyncio.Event) -> None:
    """Serve ``channel`` until ``stop`` is set."""
    agent.freezer.start()
    agent.faults.start()   # after the freezer's start: that waits for an earlier agent's keeper
    dispatcher = Dispatcher(agent)
    # Freeze and thaw requests have threads of their own: a command let through just before a
    # freeze may block a worker on the frozen filesystem, and the thaw must not wait behind it.
    with ThreadPoolExecutor(max_workers=4, thread_name_prefix="pyqga-worker") as executor, \
            ThreadPoolExecutor(max_workers=URGENT_THREADS, thread_name_prefix="pyqga-freeze") as urgent:
        if isinstance(channel, ListenerChannel):
            agent.log.info("listening on %s", channel.description)
        asyncio.get_running_loop().run_in_executor(executor, agent.freezer.prestart_keeper)
        executors = {"worker": executor, "urgent": urgent}
        limit = ConnectionLimit(agent.log)
        await channel.serve(lambda: AgentConnection(dispatcher, executors, limit), stop)
        # Before the pools close: undoing our freeze also answers a freeze request still waiting.
        await asyncio.to_thread(agent.faults.shutdown)   # while the keeper still runs
        await asyncio.to_thread(agent.freezer.shutdown)
