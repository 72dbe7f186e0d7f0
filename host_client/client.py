"""``AgentClient``: a synchronous client for pyqga and qemu-ga, in either dialect.

The wire logic (ids, matching, resync) is :class:`protocol.client.ClientConnection`; this class
adds the I/O and the deadlines.  It resyncs on connect and after any timeout, because a
virtio-serial channel outlives host connections and may hold a stale reply or half a message.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from host_client.errors import AgentCallError, AgentConnectionError, AgentTimeout, FreezeLost
from host_client.guest_ops import GuestOperations
from host_client.transport import Transport, open_transport
from protocol.client import ClientConnection, Reply
from protocol.dialects import Dialect
from protocol.errors import ErrorKind

log = logging.getLogger("pyqga.client")

DEFAULT_TIMEOUT = 10.0
RESYNC_RETRY = 1.0  # seconds before a resync request is sent again
# A freeze flushes dirty data first: allow it much longer than an ordinary call.
FREEZE_CALL_TIMEOUT = 300.0


@dataclass(frozen=True)
class Capabilities:
    """What the agent at the other end can do, from its ``guest-info`` (asked once per client).

    pyqga's freeze extensions (a ``timeout`` on the freeze commands, after which the agent thaws
    by itself; ``epoch`` on the thaw; ``guest-fsfreeze-info``) come together: an agent that lists
    ``guest-fsfreeze-info`` has all three, and one that does not (qemu-ga) has none, and rejects
    a ``timeout`` it does not know."""

    version: str
    commands: frozenset[str]

    @property
    def auto_thaw(self) -> bool:
        return "guest-fsfreeze-info" in self.commands


@dataclass(frozen=True)
class Freeze:
    """What :meth:`AgentClient.frozen` froze: the count, and the epoch the thaw will check
    (None where the agent has no epochs).  ``auto_thaw``: whether the agent thaws by itself
    if this host goes away."""

    count: int
    epoch: int | None
    info: dict[str, Any]
    auto_thaw: bool = True


class AgentClient(GuestOperations):
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
        self.address = address
        self.timeout = timeout
        self._conn = ClientConnection(Dialect(dialect))
        self._transport = transport or open_transport(address, timeout)
        self.address = self._transport.address
        self._needs_resync = resync
        self._capabilities: Capabilities | None = None

    # --- context manager -----------------------------------------------------------------

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._transport.close()

    @property
    def dialect(self) -> Dialect:
        return self._conn.dialect

    # --- calls -----------------------------------------------------------------------------

    def call(self, method: str, params: Mapping[str, Any] | None = None, *,
             timeout: float | None = None, **kwargs: Any) -> Any:
        """Run ``method`` in the guest and return its result; raise on error or timeout.

        Parameters go in ``params`` or as keyword arguments (``call("guest-sync", id=5)``);
        use ``params`` for names that are not Python identifiers (``"input-data"``) and for a
        command parameter called ``timeout``: the keyword ``timeout`` is this call's own limit.
        """
        arguments = {**(params or {}), **kwargs}
        limit = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        if self._needs_resync:
            self._resync(deadline, method, limit)
        request_id, data = self._conn.send_request(method, arguments or None)
        reply = self._exchange(data, request_id, deadline, method, limit)
        if reply.error is not None:
            raise AgentCallError(reply.error, method=method, address=self.address)
        return reply.result

    def notify(self, method: str, params: Mapping[str, Any] | None = None) -> None:
        """Send without waiting for a reply (``guest-shutdown`` answers nothing on success)."""
        deadline = time.monotonic() + self.timeout
        if self._needs_resync:
            self._resync(deadline, method, self.timeout)
        _, data = self._conn.send_request(method, dict(params) if params else None)
        self._guarded(method, self.timeout, lambda: self._transport.send(data, deadline))

    def ping(self) -> None:
        self.call("guest-ping")

    def info(self) -> dict[str, Any]:
        return self.call("guest-info")

    def capabilities(self) -> Capabilities:
        """What this agent supports (``guest-info``, asked once and remembered)."""
        if self._capabilities is None:
            info = self.info()
            self._capabilities = Capabilities(
                str(info.get("version", "")),
                frozenset(c["name"] for c in info.get("supported_commands", []) if isinstance(c, dict)))
        return self._capabilities

    def sync(self, timeout: float | None = None) -> int:
        """Resynchronise the channel now; returns the random id that came back."""
        limit = self.timeout if timeout is None else timeout
        return self._resync(time.monotonic() + limit, "guest-sync-delimited", limit)

    @contextmanager
    def frozen(self, mountpoints: Sequence[str] | None = None, timeout: float | None = None,
               call_timeout: float = FREEZE_CALL_TIMEOUT) -> Iterator[Freeze]:
        """Freeze (all, or ``mountpoints``), run the body, thaw; raise :class:`FreezeLost` if the
        freeze did not hold until the thaw.  ``timeout``: the agent thaws by itself after this
        many seconds even if this host dies (where the agent can: qemu-ga cannot, and a warning
        says so).  Whatever fails after the freeze was sent, the guest is thawed before the
        error reaches the caller."""
        auto_thaw = self.capabilities().auto_thaw
        count = self.send_freeze(mountpoints, timeout if auto_thaw else None, call_timeout)
        try:
            info = self.call("guest-fsfreeze-info") if count and auto_thaw else {}
        except BaseException as exc:
            self.thaw_after_failure(exc, call_timeout)
            raise
        epoch = info.get("epoch") if info.get("status") == "frozen" else None
        try:
            yield Freeze(count, epoch, info, auto_thaw)
        finally:
            self.thaw(epoch, call_timeout)

    def send_freeze(self, mountpoints: Sequence[str] | None, timeout: float | None,
                    call_timeout: float = FREEZE_CALL_TIMEOUT) -> int:
        """Freeze-all or freeze-list; the count.  If the outcome is unknown (no reply in time,
        the connection lost, an interrupt), the guest may be frozen: thaw it, then raise.  An
        error the agent answered means it froze nothing (both agents roll back)."""
        params: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
        if not self.capabilities().auto_thaw:
            log.warning("the agent at %s has no auto-thaw (qemu-ga %s): if this process dies while "
                        "the guest is frozen, it stays frozen until someone thaws it",
                        self.address, self.capabilities().version)
        method = "guest-fsfreeze-freeze" if mountpoints is None else "guest-fsfreeze-freeze-list"
        if mountpoints is not None:
            params["mountpoints"] = list(mountpoints)
        try:
            return int(self.call(method, params, timeout=call_timeout))
        except AgentCallError:
            raise
        except BaseException as exc:
            self.thaw_after_failure(exc, call_timeout)
            raise

    def thaw_after_failure(self, failure: BaseException, call_timeout: float = FREEZE_CALL_TIMEOUT) -> None:
        """Thaw because something failed while the guest may be frozen; say on ``failure``
        whether that worked (the caller raises it)."""
        try:
            thawed = self.call("guest-fsfreeze-thaw", timeout=max(call_timeout, 60.0))
        except Exception as exc:
            log.error("could not thaw %s after a failure: %s", self.address, exc)
            failure.add_note(f"pyqga: the guest at {self.address} may still be frozen: the thaw "
                             f"after this failure failed too ({exc})")
        else:
            failure.add_note(f"pyqga: thawed the guest at {self.address} after this failure "
                             f"({thawed} filesystem(s))")

    def thaw(self, epoch: int | None = None, call_timeout: float = FREEZE_CALL_TIMEOUT) -> int:
        """Thaw; with ``epoch``, raise :class:`FreezeLost` if that freeze had not held."""
        try:
            return self.call("guest-fsfreeze-thaw", {} if epoch is None else {"epoch": epoch},
                             timeout=call_timeout)
        except AgentCallError as exc:
            if exc.error.kind is ErrorKind.FREEZE_LOST:
                raise FreezeLost(exc.error, method="guest-fsfreeze-thaw", address=self.address) from None
            raise

    # --- internals -------------------------------------------------------------------------

    def _resync(self, deadline: float, method: str, limit: float) -> int:
        """Resync, re-sending the request every RESYNC_RETRY seconds: a serial line drops what
        was sent before the agent opened it, and a stale reply must never be taken for ours."""
        self._needs_resync = True

        def run() -> int:
            while True:
                sync_id = random.getrandbits(62) + 1
                self._transport.send(self._conn.start_resync(sync_id), deadline)
                attempt_deadline = min(deadline, time.monotonic() + RESYNC_RETRY)
                try:
                    while self._conn.resyncing:
                        for reply in self._conn.receive_data(self._transport.recv(attempt_deadline)):
                            if reply.error is not None:  # the agent refused the sync itself
                                raise AgentCallError(reply.error, method="guest-sync-delimited",
                                                     address=self.address)
                    return sync_id
                except AgentTimeout:
                    if time.monotonic() >= deadline:
                        raise

        sync_id = self._guarded(method, limit, run, doing="while resyncing")
        self._needs_resync = False
        return sync_id

    def _exchange(self, data: bytes, request_id: int, deadline: float, method: str, limit: float) -> Reply:
        def run() -> Reply:
            self._transport.send(data, deadline)
            while True:
                for reply in self._conn.receive_data(self._transport.recv(deadline)):
                    # An error without an id answers a request the agent could not even read.
                    if reply.id == request_id or (reply.id is None and reply.error is not None):
                        return reply

        return self._guarded(method, limit, run)

    def _guarded(self, method: str, limit: float, action: Any, doing: str = "") -> Any:
        try:
            return action()
        except AgentTimeout:
            self._needs_resync = True
            suffix = f" ({doing})" if doing else ""
            raise AgentTimeout(
                f"{method} on {self.address}: no reply within {limit:g} s{suffix}",
                method=method, address=self.address,
            ) from None
        except AgentConnectionError as exc:
            self._needs_resync = True
            raise AgentConnectionError(f"{method}: {exc}", method=method, address=self.address) from None


