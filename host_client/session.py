"""The host client's logic, once: generators that yield the I/O they need.

:class:`~pyqga.host_client.client.AgentClient` runs these with blocking calls and
:class:`~pyqga.host_client.aio.AsyncAgentClient` with awaits; neither adds logic of its own (h11's
pattern: one implementation, two drivers).  An operation yields :class:`Send`, :class:`Recv` or
:class:`Sleep`; the driver performs it and sends back the bytes received (or None).  A transport
error (:class:`AgentTimeout`, :class:`AgentConnectionError`) is thrown into the operation at
the yield, so the retry and error-wrapping logic here sees it.

What lives here: request ids and reply matching (through :class:`pyqga.protocol.client.ClientConnection`),
the resync (0xFF and ``guest-sync-delimited`` with a random id, re-sent every second), error
wrapping with the method and address, the agent's capabilities (``guest-info`` once), and the
freeze helpers' rule: after a freeze was sent, any failure whose outcome is unknown thaws first.
The wire log (logger ``pyqga.client.wire``, DEBUG) is written by the connection:
:mod:`pyqga.protocol.client`.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypedDict, TypeVar

from pyqga.host_client.errors import AgentCallError, AgentConnectionError, AgentTimeout, FreezeLost
from pyqga.protocol.client import ClientConnection, Reply
from pyqga.protocol.dialects import Dialect
from pyqga.protocol.errors import ErrorKind

T = TypeVar("T")

RESYNC_RETRY = 1.0  # seconds before a resync request is sent again
# A freeze flushes dirty data first: allow it much longer than an ordinary call.
FREEZE_CALL_TIMEOUT = 300.0
THAW_AFTER_FAILURE_TIMEOUT = 60.0


@dataclass(frozen=True)
class Send:
    data: bytes
    deadline: float


@dataclass(frozen=True)
class Recv:
    deadline: float


@dataclass(frozen=True)
class Sleep:
    seconds: float


IO = Send | Recv | Sleep
Op = Generator[IO, bytes | None, T]


# ``guest-info``'s reply, as qemu-ga's schema names it (GuestAgentCommandInfo, GuestAgentInfo);
# pyqga's agent answers the same.
GuestCommandInfo = TypedDict("GuestCommandInfo", {"name": str, "enabled": bool, "success-response": bool})


class GuestInfo(TypedDict):
    version: str
    supported_commands: list[GuestCommandInfo]


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
    """What a freeze froze: the count, and the epoch the thaw will check (None where the agent
    has no epochs).  ``auto_thaw``: whether the agent thaws by itself if this host goes away."""

    count: int
    epoch: int | None
    info: dict[str, Any]
    auto_thaw: bool = True


class Session:
    """One connection's client state and operations; the drivers own the transport."""

    def __init__(self, address: str, dialect: Dialect, timeout: float, *, resync: bool = True,
                 synchronised: bool = False) -> None:
        self.address: str = address
        self.timeout: float = timeout
        self.conn: ClientConnection = ClientConnection(dialect, name=address)
        # A transport that synchronises by itself (libvirt does guest-sync before every command)
        # cannot carry the 0xFF resync byte, and needs no resync from us.
        self.synchronised: bool = synchronised
        self.needs_resync: bool = resync and not synchronised
        self._capabilities: Capabilities | None = None
        self.log_warning: Callable[..., None] | None = None   # set by the driver: a logging function

    # --- calls ---------------------------------------------------------------------------

    def call(self, method: str, params: Mapping[str, Any] | None = None,
             timeout: float | None = None, dialect: Dialect | None = None) -> Op[Any]:
        """Run ``method`` in the guest; its result, or AgentCallError / AgentTimeout /
        AgentConnectionError naming the method and the address."""
        limit = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        if self.needs_resync:
            yield from self._guarded(method, limit, self._resync(deadline), "while resyncing")
        request_id, data = self.conn.send_request(method, dict(params) if params else None, dialect)
        reply = yield from self._guarded(method, limit, self._exchange(data, request_id, deadline))
        if reply.error is not None:
            raise AgentCallError(reply.error, method=method, address=self.address)
        return reply.result

    def notify(self, method: str, params: Mapping[str, Any] | None = None) -> Op[None]:
        """Send without waiting for a reply (``guest-shutdown`` answers nothing on success)."""
        deadline = time.monotonic() + self.timeout
        if self.needs_resync:
            yield from self._guarded(method, self.timeout, self._resync(deadline), "while resyncing")
        _, data = self.conn.send_request(method, dict(params) if params else None)
        yield from self._guarded(method, self.timeout, self._send(data, deadline))

    def sync(self, timeout: float | None = None) -> Op[int]:
        """Resynchronise the channel now; the random id that came back."""
        limit = self.timeout if timeout is None else timeout
        if self.synchronised:
            sync_id = random.getrandbits(31) + 1
            return int((yield from self.call("guest-sync", {"id": sync_id}, limit)))
        return (yield from self._guarded("guest-sync-delimited", limit,
                                         self._resync(time.monotonic() + limit), "while resyncing"))

    def _send(self, data: bytes, deadline: float) -> Op[None]:
        yield Send(data, deadline)

    def _recv(self, deadline: float) -> Op[bytes]:
        return (yield Recv(deadline)) or b""

    def _resync(self, deadline: float) -> Op[int]:
        """0xFF and guest-sync-delimited, re-sent every RESYNC_RETRY seconds: a serial line drops
        what was sent before the agent opened it, and a stale reply must never be taken for ours."""
        self.needs_resync = True
        while True:
            sync_id = random.getrandbits(62) + 1
            yield from self._send(self.conn.start_resync(sync_id), deadline)
            attempt_deadline = min(deadline, time.monotonic() + RESYNC_RETRY)
            try:
                while self.conn.resyncing:
                    data = yield from self._recv(attempt_deadline)
                    for reply in self.conn.receive_data(data):
                        # The agent refused the sync itself.  Anything else that came with it is
                        # stale: a JSON-RPC agent answers in completion order, so a slow command
                        # the timed-out call sent may answer after the sync.
                        if reply.error is not None and reply.id == sync_id:
                            raise AgentCallError(reply.error, method="guest-sync-delimited",
                                                 address=self.address)
            except AgentTimeout:
                if time.monotonic() >= deadline:
                    raise
                continue
            self.needs_resync = False
            return sync_id

    def _exchange(self, data: bytes, request_id: int, deadline: float) -> Op[Reply]:
        yield from self._send(data, deadline)
        while True:
            received = yield from self._recv(deadline)
            for reply in self.conn.receive_data(received):
                # An error without an id answers a request the agent could not even read.
                if reply.id == request_id or (reply.id is None and reply.error is not None):
                    return reply

    def _guarded(self, method: str, limit: float, op: Op[T], doing: str = "") -> Op[T]:
        try:
            return (yield from op)
        except AgentTimeout:
            self.needs_resync = not self.synchronised
            suffix = f" ({doing})" if doing else ""
            raise AgentTimeout(f"{method} on {self.address}: no reply within {limit:g} s{suffix}",
                               method=method, address=self.address) from None
        except AgentConnectionError as exc:
            self.needs_resync = not self.synchronised
            raise AgentConnectionError(f"{method}: {exc}", method=method, address=self.address) from None
        except BaseException:
            # Interrupted (Ctrl-C, a cancelled task): as after a timeout, this call's reply may
            # still come, and on a shared client the next caller must not read it.
            self.needs_resync = not self.synchronised
            raise

    # --- what the agent can do -------------------------------------------------------------

    def info(self) -> Op[GuestInfo]:
        """``guest-info``: the agent's version and its commands."""
        info: GuestInfo = yield from self.call("guest-info")
        return info

    def capabilities(self) -> Op[Capabilities]:
        """``guest-info``, asked once and remembered."""
        if self._capabilities is None:
            info = yield from self.call("guest-info")
            self._capabilities = Capabilities(
                str(info.get("version", "")),
                frozenset(c["name"] for c in info.get("supported_commands", []) if isinstance(c, dict)))
        return self._capabilities

    # --- freezing safely ---------------------------------------------------------------------

    def enter_freeze(self, mountpoints: Sequence[str] | None, thaw_after: float | None,
                     call_timeout: float = FREEZE_CALL_TIMEOUT) -> Op[Freeze]:
        """Freeze, then learn the epoch (where the agent has epochs); thawed again if anything
        fails on the way.  ``thaw_after`` (the agent's auto-thaw, its ``timeout`` argument) goes
        only to an agent that auto-thaws."""
        caps = yield from self.capabilities()
        count = yield from self.send_freeze(mountpoints, thaw_after if caps.auto_thaw else None,
                                            call_timeout)
        try:
            info = (yield from self.call("guest-fsfreeze-info")) if count and caps.auto_thaw else {}
        except BaseException as exc:
            yield from self.thaw_after_failure(exc, call_timeout)
            raise
        epoch = info.get("epoch") if info.get("status") == "frozen" else None
        return Freeze(count, epoch, info, caps.auto_thaw)

    def send_freeze(self, mountpoints: Sequence[str] | None, thaw_after: float | None,
                    call_timeout: float = FREEZE_CALL_TIMEOUT) -> Op[int]:
        """Freeze-all or freeze-list; the count.  If the outcome is unknown (no reply in time,
        the connection lost, an interrupt), the guest may be frozen: thaw it, then raise.  An
        error the agent answered means it froze nothing (both agents roll back)."""
        caps = yield from self.capabilities()
        if not caps.auto_thaw and self.log_warning is not None:
            self.log_warning("the agent at %s has no auto-thaw (qemu-ga %s): if this process dies "
                             "while the guest is frozen, it stays frozen until someone thaws it",
                             self.address, caps.version)
        params: dict[str, Any] = {} if thaw_after is None else {"timeout": thaw_after}
        method = "guest-fsfreeze-freeze" if mountpoints is None else "guest-fsfreeze-freeze-list"
        if mountpoints is not None:
            params["mountpoints"] = list(mountpoints)
        try:
            return int((yield from self.call(method, params, call_timeout)))
        except AgentCallError:
            raise
        except BaseException as exc:
            yield from self.thaw_after_failure(exc, call_timeout)
            raise

    def thaw_after_failure(self, failure: BaseException,
                           call_timeout: float = FREEZE_CALL_TIMEOUT) -> Op[None]:
        """Thaw because something failed while the guest may be frozen; say on ``failure``
        whether that worked (the caller raises it)."""
        try:
            limit = max(call_timeout, THAW_AFTER_FAILURE_TIMEOUT)
            thawed = yield from self.call("guest-fsfreeze-thaw", None, limit)
        except Exception as exc:
            failure.add_note(f"pyqga: the guest at {self.address} may still be frozen: the thaw "
                             f"after this failure failed too ({exc})")
        else:
            failure.add_note(f"pyqga: thawed the guest at {self.address} after this failure "
                             f"({thawed} filesystem(s))")

    def thaw(self, epoch: int | None = None, call_timeout: float = FREEZE_CALL_TIMEOUT) -> Op[int]:
        """Thaw; with ``epoch``, raise :class:`FreezeLost` if that freeze had not held.

        A thaw with an epoch goes to pyqga only (qemu-ga has no epochs), in JSON-RPC where the
        channel carries it: qemu-ga's dialect has two error classes, and "lost" is neither."""
        params = {} if epoch is None else {"epoch": epoch}
        dialect = Dialect.JSONRPC if epoch is not None and not self.synchronised else None
        try:
            return int((yield from self.call("guest-fsfreeze-thaw", params, call_timeout, dialect)))
        except AgentCallError as exc:
            if exc.error.kind is ErrorKind.FREEZE_LOST:
                raise FreezeLost(exc.error, method="guest-fsfreeze-thaw", address=self.address) from None
            raise
