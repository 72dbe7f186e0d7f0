"""``AgentClient``: a synchronous client for pyqga and qemu-ga, in either dialect.

All of its logic (ids, matching, resync, capabilities, freezing safely, stalls, exec, files) is
in :mod:`pyqga.host_client.session` and :mod:`pyqga.host_client.guest_ops`, as operations that yield their
I/O; this class performs that I/O with blocking calls on a transport and adds nothing else.
:class:`pyqga.host_client.aio.AsyncAgentClient` is the same with awaits.  It resyncs on connect and
after any timeout, because a virtio-serial channel outlives host connections and may hold a
stale reply or half a message.

One client may be shared by threads.  The agent answers one request at a time per channel, in
order, as libvirt uses it; so a client runs one operation at a time: a lock (the client's
:class:`Gate`) is held while an operation does its I/O, including the resync before it, and let
go while it sleeps (an ``exec`` polling its program, a stall waiting for its end) and between
operations (the body of ``frozen()`` or ``stall()``).  A call that times out leaves the channel
marked for resync, and whoever runs next resyncs before sending, so the late reply is never
taken for theirs.  Waiting for the lock does not count against a call's ``timeout``: that is
the wait for the agent's reply.
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Generic, TypeVar

from pyqga.host_client import guest_ops
from pyqga.host_client.errors import client_closed
from pyqga.host_client.faults import Faults
from pyqga.host_client.guest_ops import ExecResult, StallHandle, StallResult
from pyqga.host_client.session import (
    FREEZE_CALL_TIMEOUT,
    IO,
    Capabilities,
    Freeze,
    GuestInfo,
    Op,
    Send,
    Session,
    Sleep,
)
from pyqga.host_client.transport import Transport, open_transport
from pyqga.protocol.dialects import Dialect

T = TypeVar("T")
log: logging.Logger = logging.getLogger("pyqga.client")

DEFAULT_TIMEOUT = 10.0

__all__ = ["DEFAULT_TIMEOUT", "FREEZE_CALL_TIMEOUT", "AgentClient", "Capabilities", "Freeze"]


@dataclass(frozen=True, slots=True)
class Done(Generic[T]):
    """An operation's result, once it has no more I/O to ask for."""

    value: T


def resume(op: Op[T], value: bytes | None, error: BaseException | None) -> IO | Done[T]:
    """One step of ``op``: the next I/O it wants, or its result when it is done.  Both drivers
    (this one and :func:`pyqga.host_client.aio.run_async`) step operations through here."""
    try:
        return op.throw(error) if error is not None else op.send(value)
    except StopIteration as done:
        return Done(done.value)


class Gate:
    """A sync client's lock and whether it was closed: see the module's docstring.

    Reentrant, so a ``progress`` callback (called while an operation holds the lock) may use the
    client too."""

    def __init__(self, address: str) -> None:
        self.address: str = address
        self.lock: threading.RLock = threading.RLock()
        self.closed: bool = False

    def enter(self) -> None:
        """Take the lock to start an operation; ClientClosed once the client was closed."""
        self.lock.acquire()
        if self.closed:
            self.lock.release()
            raise client_closed(self.address)

    def reenter(self) -> BaseException | None:
        """Take the lock back after a sleep, even through Ctrl-C: the operation's own handling
        (a thaw) must run holding it.  The interrupt, if one came, for the caller to throw."""
        pending: BaseException | None = None
        while True:
            try:
                self.lock.acquire()
                return pending
            except BaseException as exc:
                pending = pending or exc


def run_blocking(op: Op[T], transport: Transport, gate: Gate | None = None) -> T:
    """Drive ``op``: perform each I/O it yields, hand back what was received.  Whatever
    interrupts the I/O (a transport error, Ctrl-C) is thrown into the operation where it
    waited, so its own handling runs (a freeze that may have taken effect is thawed first).

    ``gate``: the client's lock, held while ``op`` runs except while it sleeps."""
    gate = gate or Gate(transport.address)
    gate.enter()
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
                        time.sleep(io.seconds)
                    except BaseException as exc:
                        error = exc
                    pending = gate.reenter()
                    held = True
                    error = error or pending
                elif gate.closed:
                    raise client_closed(gate.address)
                elif isinstance(io, Send):
                    transport.send(io.data, io.deadline)
                else:
                    value = transport.recv(io.deadline)
            except BaseException as exc:
                error = exc
    finally:
        if held:
            gate.lock.release()


def renamed(new: float | None, old: float | None, new_name: str, old_name: str, where: str,
            stacklevel: int = 3) -> float | None:
    """``old``, a keyword's old spelling, as ``new``: with a DeprecationWarning; both is an error."""
    if old is None:
        return new
    if new is not None:
        raise TypeError(f"{where}() got {new_name}= and its old name {old_name}=; give {new_name}= only")
    warnings.warn(f"{where}({old_name}=...) is now {where}({new_name}=...)", DeprecationWarning,
                  stacklevel=stacklevel)
    return old


class AgentClient:
    """Use as a context manager, or call :meth:`close`.

    ``dialect`` is ``"jsonrpc"`` (pyqga's native one) or ``"qga"`` (works with pyqga and qemu-ga).
    """

    def __init__(
        self,
        address: str,
        *,
        dialect: str | Dialect = Dialect.JSONRPC,
        timeout: float = DEFAULT_TIMEOUT,
        resync: bool = True,
        transport: Transport | None = None,
    ) -> None:
        self._transport: Transport = transport or open_transport(address, timeout)
        self.address: str = self._transport.address
        self._gate: Gate = Gate(self.address)
        self.session: Session = Session(self.address, Dialect(dialect), timeout, resync=resync,
                               synchronised=bool(getattr(self._transport, "synchronised", False)))
        self.session.log_warning = log.warning

    def _run(self, op: Op[T]) -> T:
        return run_blocking(op, self._transport, self._gate)

    # --- context manager -----------------------------------------------------------------

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel; a call in progress on another thread ends first.  Using the
        client afterwards raises :class:`ClientClosed`.  Closing twice is harmless."""
        self._gate.closed = True
        with self._gate.lock:
            self._transport.close()

    @property
    def closed(self) -> bool:
        return self._gate.closed

    @property
    def dialect(self) -> Dialect:
        return self.session.conn.dialect

    @property
    def timeout(self) -> float:
        return self.session.timeout

    # --- calls -----------------------------------------------------------------------------

    def call(self, method: str, params: Mapping[str, Any] | None = None, *,
             timeout: float | None = None, **kwargs: Any) -> Any:
        """Run ``method`` in the guest and return its result; raise on error or timeout.

        Parameters go in ``params`` or as keyword arguments (``call("guest-sync", id=5)``);
        use ``params`` for names that are not Python identifiers (``"input-data"``) and for a
        command parameter called ``timeout``: the keyword ``timeout`` is this call's own limit.
        """
        return self._run(self.session.call(method, {**(params or {}), **kwargs}, timeout))

    def notify(self, method: str, params: Mapping[str, Any] | None = None) -> None:
        """Send without waiting for a reply (``guest-shutdown`` answers nothing on success)."""
        self._run(self.session.notify(method, params))

    def ping(self) -> None:
        self.call("guest-ping")

    def info(self) -> GuestInfo:
        return self._run(self.session.info())

    def sync(self, timeout: float | None = None) -> int:
        """Resynchronise the channel now; returns the random id that came back."""
        return self._run(self.session.sync(timeout))

    def capabilities(self) -> Capabilities:
        """What this agent supports (``guest-info``, asked once and remembered)."""
        return self._run(self.session.capabilities())

    # --- freezing ----------------------------------------------------------------------------

    @contextmanager
    def frozen(self, mountpoints: Sequence[str] | None = None, thaw_after: float | None = None,
               call_timeout: float = FREEZE_CALL_TIMEOUT, *,
               timeout: float | None = None) -> Iterator[Freeze]:
        """Freeze (all, or ``mountpoints``), run the body, thaw; raise :class:`FreezeLost` if the
        freeze did not hold until the thaw.  ``thaw_after``: the agent thaws by itself after this
        many seconds even if this host dies (where the agent can: qemu-ga cannot, and a warning
        says so).  ``call_timeout``: the wait for the freeze's and thaw's replies.  Whatever fails
        after the freeze was sent, the guest is thawed before the error reaches the caller.
        ``timeout`` is ``thaw_after``'s old name.

        The client is not held during the body: other threads' calls, and the body's own, run."""
        thaw_after = renamed(thaw_after, timeout, "thaw_after", "timeout", "frozen", stacklevel=4)
        freeze = self.freeze(mountpoints, thaw_after, call_timeout)
        try:
            yield freeze
        finally:
            self.thaw(freeze.epoch, call_timeout)

    def freeze(self, mountpoints: Sequence[str] | None = None, thaw_after: float | None = None,
               call_timeout: float = FREEZE_CALL_TIMEOUT, *, timeout: float | None = None) -> Freeze:
        """Freeze and leave the guest frozen (:meth:`frozen` is the safe form); thawed again if
        anything fails before the freeze and its epoch are known.  Arguments as :meth:`frozen`."""
        thaw_after = renamed(thaw_after, timeout, "thaw_after", "timeout", "freeze")
        return self._run(self.session.enter_freeze(mountpoints, thaw_after, call_timeout))

    def thaw(self, epoch: int | None = None, call_timeout: float = FREEZE_CALL_TIMEOUT) -> int:
        """Thaw; with ``epoch``, raise :class:`FreezeLost` if that freeze had not held."""
        return self._run(self.session.thaw(epoch, call_timeout))

    # --- fault injection: leases, stalls, commands, files -----------------------------------------

    @cached_property
    def faults(self) -> Faults:
        """Fault leases (``guest-fault-*``; the agent needs ``--enable-faults``): see
        :mod:`pyqga.host_client.faults`."""
        return Faults(self)

    @contextmanager
    def stall(self, mountpoints: Sequence[str], seconds: float,
              progress: Callable[[float], None] | None = None) -> Iterator[StallHandle]:
        """Freeze ``mountpoints`` for ``seconds`` (the agent thaws them on time by itself, or
        this client does where the agent cannot); the body runs meanwhile.  On leaving, wait
        for that thaw; if the body raised, thaw now."""
        handle, info, started = self._run(guest_ops.stall_begin(self.session, mountpoints, seconds))
        try:
            yield handle
            # Waiting for the end can be interrupted too (Ctrl-C, a cancel, a lost connection):
            # then the guest is thawed now, as for a body that raised.
            handle.result = self._run(guest_ops.stall_end(self.session, handle, info, started, progress))
        except BaseException as exc:
            self._run(guest_ops.stall_abort(self.session, handle, exc))
            raise

    def stall_for(self, mountpoints: Sequence[str], seconds: float,
                  progress: Callable[[float], None] | None = None) -> StallResult:
        """A stall with nothing to do meanwhile; returns when it is over."""
        with self.stall(mountpoints, seconds, progress) as handle:
            pass
        assert handle.result is not None
        return handle.result

    def exec(self, argv: Sequence[str], *, kill_after: float | None = None, check: bool = False,
             input: bytes | None = None, env: Mapping[str, str] | None = None, capture: bool = True,
             timeout: float | None = None) -> ExecResult:
        """Run ``argv`` in the guest and wait for it.  ``kill_after``: the agent kills the program
        after this many seconds (the result then has ``signal`` 9).  ``check``: raise
        :class:`ExecFailed` unless it exited with status 0.  ``timeout`` is ``kill_after``'s old
        name.  See :func:`guest_ops.exec_op`."""
        kill_after = renamed(kill_after, timeout, "kill_after", "timeout", "exec")
        return self._run(guest_ops.exec_op(self.session, argv, kill_after=kill_after, check=check,
                                           input=input, env=env, capture=capture))

    def read_file(self, path: str) -> bytes:
        return self._run(guest_ops.read_file_op(self.session, path))

    def write_file(self, path: str, data: bytes, mode: str = "wb") -> None:
        self._run(guest_ops.write_file_op(self.session, path, data, mode))
