"""``AsyncAgentClient``: the asyncio twin of :class:`~pyqga.host_client.client.AgentClient`.

The same operations (:mod:`pyqga.host_client.session`, :mod:`pyqga.host_client.guest_ops`) driven with
awaits, so behaviour, errors, timeouts and resync are the sync client's by construction::

    async with AsyncAgentClient("/run/vm1/qga.sock", dialect="qga") as agent:
        await agent.ping()
        async with agent.frozen(["/data"], thaw_after=30) as freeze:
            await take_my_snapshot()

Sockets (unix, tcp, vsock) are asyncio streams; transports asyncio has no native form for (a
serial line, libvirt) run their blocking calls on a thread.

One client may be shared by tasks (``asyncio.gather(agent.ping(), agent.call(...))``): as the
sync client shares itself between threads, an operation holds the client's lock while it does
its I/O and lets go while it sleeps and between operations (the body of ``frozen()``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from functools import cached_property
from typing import Any, Protocol, TypeVar

from pyqga.host_client import guest_ops
from pyqga.host_client.client import DEFAULT_TIMEOUT, Done, renamed, resume
from pyqga.host_client.errors import (
    AgentConnectionError,
    channel_failed,
    client_closed,
    closed_by_agent,
    receive_failed,
    timed_out,
)
from pyqga.host_client.faults import AsyncFaults
from pyqga.host_client.guest_ops import ExecResult, StallHandle, StallResult
from pyqga.host_client.session import (
    FREEZE_CALL_TIMEOUT,
    Capabilities,
    Freeze,
    GuestInfo,
    Op,
    Send,
    Session,
    Sleep,
)
from pyqga.host_client.transport import RECV_SIZE, Transport, host_port, open_transport, parse_address
from pyqga.protocol.dialects import Dialect

T = TypeVar("T")
log: logging.Logger = logging.getLogger("pyqga.client")


class AsyncTransport(Protocol):
    address: str

    async def send(self, data: bytes, deadline: float) -> None: ...

    async def recv(self, deadline: float) -> bytes: ...

    async def close(self) -> None: ...


def _remaining(deadline: float, address: str, doing: str) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise timed_out(address, doing)
    return left


class StreamTransport:
    """An asyncio stream: a unix, tcp or vsock socket."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, address: str) -> None:
        self.reader: asyncio.StreamReader = reader
        self.writer: asyncio.StreamWriter = writer
        self.address: str = address

    async def send(self, data: bytes, deadline: float) -> None:
        try:
            left = _remaining(deadline, self.address, "sending")
            self.writer.write(data)
            await asyncio.wait_for(self.writer.drain(), left)
        except TimeoutError:
            raise timed_out(self.address, "sending") from None
        except OSError as exc:
            raise channel_failed(self.address, "send", exc) from None

    async def recv(self, deadline: float) -> bytes:
        doing = "waiting for a reply"
        try:
            left = _remaining(deadline, self.address, doing)
            data = await asyncio.wait_for(self.reader.read(RECV_SIZE), left)
        except TimeoutError:
            raise timed_out(self.address, doing) from None
        except OSError as exc:
            raise receive_failed(self.address, exc) from None
        if not data:
            raise closed_by_agent(self.address)
        return data

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


class ThreadedTransport:
    """A blocking transport (serial line, libvirt) whose calls run on a thread.

    A cancelled await leaves its thread running until the call's deadline; a lock keeps the
    next call from running beside it on the same channel."""

    def __init__(self, transport: Transport) -> None:
        self.transport: Transport = transport
        self.address: str = transport.address
        self.synchronised: bool = bool(getattr(transport, "synchronised", False))
        self._one_at_a_time = threading.Lock()

    def _locked(self, call: Callable[..., T], *args: Any) -> T:
        with self._one_at_a_time:
            return call(*args)

    async def send(self, data: bytes, deadline: float) -> None:
        await asyncio.to_thread(self._locked, self.transport.send, data, deadline)

    async def recv(self, deadline: float) -> bytes:
        return await asyncio.to_thread(self._locked, self.transport.recv, deadline)

    async def close(self) -> None:
        # Not behind the lock: closing is what ends a call left running by a cancellation.
        await asyncio.to_thread(self.transport.close)


async def open_async_transport(address: str, timeout: float) -> AsyncTransport:
    """Open a channel by address (the forms of :func:`pyqga.host_client.transport.open_transport`)."""
    scheme, rest = parse_address(address)
    try:
        if scheme == "unix":
            name = f"unix:{rest}"
            reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(rest), timeout)
        elif scheme in ("tcp", "vsock"):
            host, port = host_port(rest, address)
            name = address
            if scheme == "tcp":
                reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
            else:
                if not host.isdigit() or not hasattr(socket, "AF_VSOCK"):
                    raise AgentConnectionError(f"{address}: expected vsock:CID:PORT with a numeric CID "
                                               "on a Python with AF_VSOCK")
                sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
                sock.setblocking(False)
                await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (int(host), port)),
                                       timeout)
                reader, writer = await asyncio.open_connection(sock=sock)
        else:
            return ThreadedTransport(await asyncio.to_thread(open_transport, address, timeout))
    except TimeoutError:
        raise AgentConnectionError(f"cannot connect to {address}: no answer within {timeout:g} s") from None
    except OSError as exc:
        raise AgentConnectionError(f"cannot connect to {address}: {exc.strerror or exc}") from None
    return StreamTransport(reader, writer, name)


class AsyncGate:
    """An async client's lock and whether it was closed (as :class:`~pyqga.host_client.client.Gate`)."""

    def __init__(self, address: str) -> None:
        self.address: str = address
        self.lock: asyncio.Lock = asyncio.Lock()
        self.closed: bool = False

    async def enter(self) -> None:
        await self.lock.acquire()
        if self.closed:
            self.lock.release()
            raise client_closed(self.address)

    async def reenter(self) -> BaseException | None:
        """Take the lock back after a sleep, even through a cancellation: the operation's own
        handling (a thaw) must run holding it.  The cancellation, for the caller to throw."""
        pending: BaseException | None = None
        while True:
            try:
                await self.lock.acquire()
                return pending
            except BaseException as exc:
                pending = pending or exc


async def run_async(op: Op[T], transport: AsyncTransport, gate: AsyncGate | None = None) -> T:
    """:func:`pyqga.host_client.client.run_blocking` with awaits: what interrupts the I/O (a transport
    error, a cancellation) is thrown into the operation, whose own handling runs.  ``gate``: the
    client's lock, held while ``op`` runs except while it sleeps."""
    gate = gate or AsyncGate(transport.address)
    await gate.enter()
    held = True
    value: bytes | None = None
    error: BaseException | None = None
    try:
        while True:
            io = resume(op, value, error)
            if isinstance(io, Done):
                return io.value
            value, error = None, None
            try:
                if isinstance(io, Sleep):
                    gate.lock.release()
                    held = False
                    try:
                        await asyncio.sleep(io.seconds)
                    except BaseException as exc:
                        error = exc
                    pending = await gate.reenter()
                    held = True
                    error = error or pending
                elif gate.closed:
                    raise client_closed(gate.address)
                elif isinstance(io, Send):
                    await transport.send(io.data, io.deadline)
                else:
                    value = await transport.recv(io.deadline)
            except BaseException as exc:
                error = exc
    finally:
        if held:
            gate.lock.release()


class AsyncAgentClient:
    """``async with AsyncAgentClient(address) as client`` (or ``await client.open()`` and
    ``await client.close()``).  Arguments as :class:`~pyqga.host_client.client.AgentClient`."""

    def __init__(self, address: str, *, dialect: str | Dialect = Dialect.JSONRPC,
                 timeout: float = DEFAULT_TIMEOUT, resync: bool = True) -> None:
        self.address: str = address
        self._dialect = Dialect(dialect)
        self._timeout = timeout
        self._resync = resync
        self._transport: AsyncTransport | None = None
        self._session: Session | None = None
        self._gate: AsyncGate = AsyncGate(address)

    async def open(self) -> AsyncAgentClient:
        """Connect (again, after :meth:`close`: a new connection, with a resync)."""
        transport = await open_async_transport(self.address, self._timeout)
        self._transport = transport
        self.address = transport.address
        self._gate = AsyncGate(self.address)
        self._session = Session(self.address, self._dialect, self._timeout, resync=self._resync,
                                synchronised=bool(getattr(transport, "synchronised", False)))
        self._session.log_warning = log.warning
        return self

    async def close(self) -> None:
        """Close the channel; a call in progress in another task ends first.  Using the client
        afterwards raises :class:`ClientClosed` (until :meth:`open`).  Closing twice is harmless."""
        gate = self._gate
        gate.closed = True
        async with gate.lock:
            if self._transport is not None:
                await self._transport.close()
                self._transport = None

    @property
    def closed(self) -> bool:
        return self._gate.closed

    async def __aenter__(self) -> AsyncAgentClient:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def session(self) -> Session:
        if self._session is None:
            raise AgentConnectionError(f"{self.address}: not connected (use 'async with' or open())")
        return self._session

    async def _run(self, op: Op[T]) -> T:
        if self._gate.closed:
            raise client_closed(self.address)
        assert self._transport is not None
        return await run_async(op, self._transport, self._gate)

    # --- calls -----------------------------------------------------------------------------

    async def call(self, method: str, params: Mapping[str, Any] | None = None, *,
                   timeout: float | None = None, **kwargs: Any) -> Any:
        return await self._run(self.session.call(method, {**(params or {}), **kwargs}, timeout))

    async def notify(self, method: str, params: Mapping[str, Any] | None = None) -> None:
        await self._run(self.session.notify(method, params))

    async def ping(self) -> None:
        await self.call("guest-ping")

    async def info(self) -> GuestInfo:
        return await self._run(self.session.info())

    async def sync(self, timeout: float | None = None) -> int:
        return await self._run(self.session.sync(timeout))

    async def capabilities(self) -> Capabilities:
        return await self._run(self.session.capabilities())

    # --- freezing ----------------------------------------------------------------------------

    @asynccontextmanager
    async def frozen(self, mountpoints: Sequence[str] | None = None, thaw_after: float | None = None,
                     call_timeout: float = FREEZE_CALL_TIMEOUT, *,
                     timeout: float | None = None) -> AsyncIterator[Freeze]:
        """As :meth:`AgentClient.frozen <host_client.client.AgentClient.frozen>`."""
        thaw_after = renamed(thaw_after, timeout, "thaw_after", "timeout", "frozen", stacklevel=4)
        freeze = await self.freeze(mountpoints, thaw_after, call_timeout)
        try:
            yield freeze
        finally:
            await self.thaw(freeze.epoch, call_timeout)

    async def freeze(self, mountpoints: Sequence[str] | None = None, thaw_after: float | None = None,
                     call_timeout: float = FREEZE_CALL_TIMEOUT, *, timeout: float | None = None) -> Freeze:
        """As :meth:`AgentClient.freeze <host_client.client.AgentClient.freeze>`."""
        thaw_after = renamed(thaw_after, timeout, "thaw_after", "timeout", "freeze")
        return await self._run(self.session.enter_freeze(mountpoints, thaw_after, call_timeout))

    async def thaw(self, epoch: int | None = None, call_timeout: float = FREEZE_CALL_TIMEOUT) -> int:
        return await self._run(self.session.thaw(epoch, call_timeout))

    # --- fault injection ---------------------------------------------------------------------

    @cached_property
    def faults(self) -> AsyncFaults:
        """As :attr:`AgentClient.faults <host_client.client.AgentClient.faults>`."""
        return AsyncFaults(self)

    @asynccontextmanager
    async def stall(self, mountpoints: Sequence[str], seconds: float,
                    progress: Callable[[float], None] | None = None) -> AsyncIterator[StallHandle]:
        """As :meth:`AgentClient.stall <host_client.client.AgentClient.stall>`."""
        handle, info, started = await self._run(guest_ops.stall_begin(self.session, mountpoints, seconds))
        try:
            yield handle
            # Waiting for the end can be interrupted too (Ctrl-C, a cancel, a lost connection):
            # then the guest is thawed now, as for a body that raised.
            handle.result = await self._run(
                guest_ops.stall_end(self.session, handle, info, started, progress))
        except BaseException as exc:
            await self._run(guest_ops.stall_abort(self.session, handle, exc))
            raise

    async def stall_for(self, mountpoints: Sequence[str], seconds: float,
                        progress: Callable[[float], None] | None = None) -> StallResult:
        async with self.stall(mountpoints, seconds, progress) as handle:
            pass
        assert handle.result is not None
        return handle.result

    async def exec(self, argv: Sequence[str], *, kill_after: float | None = None, check: bool = False,
                   input: bytes | None = None, env: Mapping[str, str] | None = None, capture: bool = True,
                   timeout: float | None = None) -> ExecResult:
        """As :meth:`AgentClient.exec <host_client.client.AgentClient.exec>`."""
        kill_after = renamed(kill_after, timeout, "kill_after", "timeout", "exec")
        return await self._run(guest_ops.exec_op(self.session, argv, kill_after=kill_after, check=check,
                                                 input=input, env=env, capture=capture))

    async def read_file(self, path: str) -> bytes:
        return await self._run(guest_ops.read_file_op(self.session, path))

    async def write_file(self, path: str, data: bytes, mode: str = "wb") -> None:
        await self._run(guest_ops.write_file_op(self.session, path, data, mode))
