"""``AgentClient``: a synchronous client for pyqga and qemu-ga, in either dialect.

All of its logic (ids, matching, resync, capabilities, freezing safely, stalls, exec, files) is
in :mod:`pyqga.host_client.session` and :mod:`pyqga.host_client.guest_ops`, as operations that yield their
I/O; this class performs that I/O with blocking calls on a transport and adds nothing else.
:class:`pyqga.host_client.aio.AsyncAgentClient` is the same with awaits.  It resyncs on connect and
after any timeout, because a virtio-serial channel outlives host connections and may hold a
stale reply or half a message.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pyqga.host_client import guest_ops
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


def run_blocking(op: Op[T], transport: Transport) -> T:
    """Drive ``op``: perform each I/O it yields, hand back what was received.  Whatever
    interrupts the I/O (a transport error, Ctrl-C) is thrown into the operation where it
    waited, so its own handling runs (a freeze that may have taken effect is thawed first)."""
    value: bytes | None = None
    error: BaseException | None = None
    while True:
        io = resume(op, value, error)
        if isinstance(io, Done):
            return io.value
        value, error = None, None
        try:
            if isinstance(io, Send):
                transport.send(io.data, io.deadline)
            elif isinstance(io, Sleep):
                time.sleep(io.seconds)
            else:
                value = transport.recv(io.deadline)
        except BaseException as exc:
            error = exc


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
        self.session: Session = Session(self.address, Dialect(dialect), timeout, resync=resync,
                               synchronised=bool(getattr(self._transport, "synchronised", False)))
        self.session.log_warning = log.warning

    def _run(self, op: Op[T]) -> T:
        return run_blocking(op, self._transport)

    # --- context manager -----------------------------------------------------------------

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._transport.close()

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
    def frozen(self, mountpoints: Sequence[str] | None = None, timeout: float | None = None,
               call_timeout: float = FREEZE_CALL_TIMEOUT) -> Iterator[Freeze]:
        """Freeze (all, or ``mountpoints``), run the body, thaw; raise :class:`FreezeLost` if the
        freeze did not hold until the thaw.  ``timeout``: the agent thaws by itself after this
        many seconds even if this host dies (where the agent can: qemu-ga cannot, and a warning
        says so).  Whatever fails after the freeze was sent, the guest is thawed before the
        error reaches the caller."""
        freeze = self.freeze(mountpoints, timeout, call_timeout)
        try:
            yield freeze
        finally:
            self.thaw(freeze.epoch, call_timeout)

    def freeze(self, mountpoints: Sequence[str] | None = None, timeout: float | None = None,
               call_timeout: float = FREEZE_CALL_TIMEOUT) -> Freeze:
        """Freeze and leave the guest frozen (:meth:`frozen` is the safe form); thawed again if
        anything fails before the freeze and its epoch are known."""
        return self._run(self.session.enter_freeze(mountpoints, timeout, call_timeout))

    def thaw(self, epoch: int | None = None, call_timeout: float = FREEZE_CALL_TIMEOUT) -> int:
        """Thaw; with ``epoch``, raise :class:`FreezeLost` if that freeze had not held."""
        return self._run(self.session.thaw(epoch, call_timeout))

    # --- fault injection: stalls, commands, files ------------------------------------------------

    @contextmanager
    def stall(self, mountpoints: Sequence[str], seconds: float,
              progress: Callable[[float], None] | None = None) -> Iterator[StallHandle]:
        """Freeze ``mountpoints`` for ``seconds`` (the agent thaws them on time by itself, or
        this client does where the agent cannot); the body runs meanwhile.  On leaving, wait
        for that thaw; if the body raised, thaw now."""
        handle, info, started = self._run(guest_ops.stall_begin(self.session, mountpoints, seconds))
        try:
            yield handle
        except BaseException as exc:
            self._run(guest_ops.stall_abort(self.session, handle, exc))
            raise
        handle.result = self._run(guest_ops.stall_end(self.session, handle, info, started, progress))

    def stall_for(self, mountpoints: Sequence[str], seconds: float,
                  progress: Callable[[float], None] | None = None) -> StallResult:
        """A stall with nothing to do meanwhile; returns when it is over."""
        with self.stall(mountpoints, seconds, progress) as handle:
            pass
        assert handle.result is not None
        return handle.result

    def exec(self, argv: Sequence[str], *, timeout: float | None = None, input: bytes | None = None,
             env: Mapping[str, str] | None = None, capture: bool = True) -> ExecResult:
        """Run ``argv`` in the guest and wait for it (see :func:`guest_ops.exec_op`)."""
        return self._run(guest_ops.exec_op(self.session, argv, timeout=timeout, input=input, env=env,
                                           capture=capture))

    def read_file(self, path: str) -> bytes:
        return self._run(guest_ops.read_file_op(self.session, path))

    def write_file(self, path: str, data: bytes, mode: str = "wb") -> None:
        self._run(guest_ops.write_file_op(self.session, path, data, mode))
