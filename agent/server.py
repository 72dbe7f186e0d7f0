"""Serving connections: one asyncio protocol per client, replies written in a safe order.

Guarantees, each because a host depends on it:
- every connection has its own decoder, so a client that dies mid-message harms no other;
- a client that stops reading gets its reading paused once its unsent replies pass the
  transport's high-water mark, so it cannot make the agent buffer without bound;
- on a qemu-ga-dialect connection replies leave in request order (qemu-ga hosts match by
  order); JSON-RPC replies leave as they complete (hosts match by id);
- commands marked ``blocking`` run on a worker thread so pings keep being answered meanwhile;
- the replies answered at once to the requests of one chunk leave in one write (one system call
  instead of one per reply), in the order above: nothing else writes during ``data_received``.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from agent.channels import Channel, ListenerChannel
from agent.dispatch import Dispatcher, Outcome, encode_outcome
from agent.state import AgentState
from protocol.dialects import Batch, Dialect, Incoming, Request
from protocol.server import ServerConnection

MAX_PENDING_REPLIES = 256  # per connection, before we stop reading its requests
# Threads for freeze/thaw requests.  They only wait for the freeze state machine, which answers a
# second freeze at once (busy) and queues thaws, so a few are plenty.
URGENT_THREADS = 8


def _ordered(item: Incoming) -> bool:
    return not isinstance(item, Batch) and item.dialect is Dialect.QGA


class AgentConnection(asyncio.Protocol):
    def __init__(self, dispatcher: Dispatcher, executors: dict[str, ThreadPoolExecutor]) -> None:
        self._dispatcher = dispatcher
        self._executors = executors
        self._protocol = ServerConnection(dispatcher.agent.config.max_message_size)
        self._transport: asyncio.Transport | None = None
        self._pending: deque[asyncio.Future[bytes | None]] = deque()
        self._write_paused = False
        self._batch: list[bytes] | None = None  # replies held back during data_received

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._pending.clear()

    def data_received(self, data: bytes) -> None:
        items = self._protocol.receive_data(data)
        if len(items) > 1:
            self._batch = []  # collects what _write gets until the end of this chunk
        try:
            for item in items:
                try:
                    self._handle(item)
                except Exception:  # our bug: log it, keep serving this and every other client
                    self._dispatcher.agent.log.exception("internal error answering %r", item)
        finally:
            if self._batch is not None:
                batch, self._batch = self._batch, None
                self._write(b"".join(batch) or None)

    def pause_writing(self) -> None:
        self._write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._update_reading()

    def _handle(self, item: Incoming) -> None:
        dispatcher = self._dispatcher
        if isinstance(item, Request):  # nearly always: one lookup, then here or on its lane
            prepared = dispatcher.prepare(item)
            if isinstance(prepared, Outcome):
                reply = encode_outcome(item, prepared)
            elif prepared.command.lane is None:
                reply = dispatcher.complete(prepared)
            else:
                self._submit(prepared.command.lane, item, dispatcher.complete_later, prepared)
                return
        else:
            lane = dispatcher.lane(item)
            if lane is not None:
                self._submit(lane, item, dispatcher.answer, item)
                return
            reply = dispatcher.answer(item)
        if self._pending and _ordered(item):
            done: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
            done.set_result(reply)
            self._queue(done)
        else:
            self._write(reply)

    def _submit(self, lane: str, item: Incoming, work: Callable[[Any], bytes | None], arg: Any) -> None:
        """Run ``work(arg)`` on ``lane``'s threads; its reply is written in the right order."""
        future = asyncio.get_running_loop().run_in_executor(self._executors[lane], work, arg)
        if _ordered(item):
            self._queue(future)
        else:
            future.add_done_callback(self._write_done)

    def _queue(self, future: asyncio.Future[bytes | None]) -> None:
        self._pending.append(future)
        future.add_done_callback(self._flush)
        self._update_reading()

    def _flush(self, _: object = None) -> None:
        while self._pending and self._pending[0].done():
            self._write(self._result(self._pending.popleft()))
        self._update_reading()

    def _write_done(self, future: asyncio.Future[bytes | None]) -> None:
        self._write(self._result(future))

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
        if self._transport is None:
            return
        if self._write_paused or len(self._pending) >= MAX_PENDING_REPLIES:
            self._transport.pause_reading()
        elif self._transport.is_reading() is False:
            self._transport.resume_reading()


async def serve(agent: AgentState, channel: Channel, stop: asyncio.Event) -> None:
    """Serve ``channel`` until ``stop`` is set."""
    agent.freezer.start()
    dispatcher = Dispatcher(agent)
    # Freeze and thaw requests have threads of their own: a command let through just before a
    # freeze may block a worker on the frozen filesystem, and the thaw must not wait behind it.
    with ThreadPoolExecutor(max_workers=4, thread_name_prefix="pyqga-worker") as executor, \
            ThreadPoolExecutor(max_workers=URGENT_THREADS, thread_name_prefix="pyqga-freeze") as urgent:
        if isinstance(channel, ListenerChannel):
            agent.log.info("listening on %s", channel.description)
        asyncio.get_running_loop().run_in_executor(executor, agent.freezer.prestart_guard)
        executors = {"worker": executor, "urgent": urgent}
        await channel.serve(lambda: AgentConnection(dispatcher, executors), stop)
        # Before the pools close: undoing our freeze also answers a freeze request still waiting.
        await asyncio.to_thread(agent.freezer.shutdown)
