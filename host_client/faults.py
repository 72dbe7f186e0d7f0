"""Fault leases from the host: ``client.faults`` on both clients (issue 20).

Every fault the agent injects is a lease with a deadline that the agent, or its keeper when the
agent hangs or dies, ends on time.  A test holds the lease as a context manager, so a failing
test reverts at once instead of waiting for the deadline::

    with client.faults.inject("disk-full", "/data", duration=30, params={"free-bytes": 0}) as fault:
        check_that_my_app_reports_enospc()
    for event in client.faults.events()[0]:       # armed, fired, reverted... with both clocks
        print(event.event, event.id, event.reason)

    async with agent.faults.inject("write-stall", "/data", duration=5) as fault:   # the same, async
        ...

The logic is written once, as operations that yield their I/O (:mod:`.session`'s pattern):
:class:`Faults` runs them with blocking calls and :class:`AsyncFaults` with awaits.  The agent
must run with ``--enable-faults``; without it every command fails with an
:class:`~pyqga.host_client.errors.AgentCallError` whose message says how to enable them.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from pyqga.host_client.errors import AgentCallError, AgentClientError
from pyqga.host_client.session import Op, Session, Sleep

if TYPE_CHECKING:
    from pyqga.host_client.aio import AsyncAgentClient
    from pyqga.host_client.client import AgentClient

T = TypeVar("T")

# Every kind the wire knows, as the agent's vocabulary has them (agent/faults/vocabulary.py, Kind;
# a unit test checks the two agree): the host side does not import the agent's code.
KINDS = ("write-stall", "io-stall", "io-error", "io-delay", "corrupt", "drop-writes", "bad-extents",
         "disk-full", "process-pause", "process-kill", "clock-step", "clock-skew", "clock-strobe",
         "net-partition", "net-delay", "net-loss", "net-duplicate", "net-reorder", "net-corrupt", "cpu-hog",
         "memory-pressure")
# The start of the agent's refusal to revert a lease it no longer holds
# (agent/faults/machine.py, LeaseBook.revert; a unit test checks the two agree).
NOT_ACTIVE = "no active fault"
ENDED = ("reverted", "expired")   # the events that end a lease
WAIT_POLL = 0.2                   # seconds between guest-fault-list polls while waiting for an end
WAIT_GRACE = 10.0                 # how long past its deadline wait() still expects the lease to end
FOLLOW_INTERVAL = 0.5             # seconds between guest-fault-events polls when following
LATEST = 1 << 53                  # a cursor past any timeline's end (and exact as a JSON number)
LOOK_BACK = (64, 1024)            # events searched back for how a lease ended, before the whole timeline


# --- replies, typed -----------------------------------------------------------------------------

@dataclass(frozen=True)
class FaultParam:
    """One parameter a kind takes, as ``guest-fault-capabilities`` documents it."""

    name: str
    type: str
    doc: str
    default: Any = None
    has_default: bool = False


@dataclass(frozen=True)
class FaultKind:
    """A kind, whether this guest (and target) can do it, and if not, why."""

    kind: str
    available: bool
    reason: str | None
    params: tuple[FaultParam, ...]


@dataclass(frozen=True)
class FaultCapabilities:
    """``guest-fault-capabilities``: every kind the agent knows, and the guest's boot id."""

    kinds: tuple[FaultKind, ...]
    boot_id: str

    def __getitem__(self, kind: str) -> FaultKind:
        for entry in self.kinds:
            if entry.kind == kind:
                return entry
        raise KeyError(kind)

    @property
    def available(self) -> tuple[str, ...]:
        return tuple(entry.kind for entry in self.kinds if entry.available)

    def as_dict(self) -> dict[str, Any]:
        """The reply as the agent sent it."""
        return {"kinds": [{"kind": k.kind, "available": k.available,
                           **({"reason": k.reason} if k.reason is not None else {}),
                           "params": [{"name": p.name, "type": p.type, "doc": p.doc,
                                       **({"default": p.default} if p.has_default else {})}
                                      for p in k.params]}
                          for k in self.kinds],
                "boot-id": self.boot_id}


@dataclass(frozen=True)
class ActiveFault:
    """One entry of ``guest-fault-list``: a lease the agent holds now."""

    id: str
    kind: str
    target: str
    params: Mapping[str, Any]
    state: str            # arming, active or reverting
    started: float        # Unix time
    deadline: float       # Unix time
    remaining: float      # seconds, on the agent's monotonic clock
    plan: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out = {"id": self.id, "kind": self.kind, "target": self.target, "params": dict(self.params),
               "state": self.state, "started": self.started, "deadline": self.deadline,
               "remaining": self.remaining}
        return {**out, "plan": self.plan} if self.plan is not None else out


@dataclass(frozen=True)
class FaultEvent:
    """One line of the agent's fault timeline (``guest-fault-events``).  ``id`` is None for a
    request refused before it became a lease; ``reason`` says why a lease ended (reverted,
    expired), ``detail`` why something failed (refused, revert-failed)."""

    event: str            # armed, fired, reverted, expired, refused, revert-failed
    id: str | None
    kind: str
    target: str
    mono: float           # the guest's monotonic clock
    wall: float           # Unix time in the guest
    boot_id: str
    reason: str | None = None
    detail: str | None = None
    plan: str | None = None   # the plan that started the fault, if one did

    @property
    def ends_lease(self) -> bool:
        return self.event in ENDED

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"event": self.event, "id": self.id, "kind": self.kind, "target": self.target,
                               "mono": self.mono, "wall": self.wall, "boot-id": self.boot_id}
        if self.reason is not None:
            out["reason"] = self.reason
        if self.detail is not None:
            out["detail"] = self.detail
        if self.plan is not None:
            out["plan"] = self.plan
        return out


@dataclass(frozen=True)
class Plan:
    """What ``guest-fault-plan`` started: the plan's own lease id, the schedule the seed drew
    (each fault with ``at``, seconds from the plan's start) and its SHA-256, by which a replay
    with the same seed can be checked.  Revert it (``faults.revert(plan.id)``) to cancel its
    future steps and end its faults."""

    id: str
    hash: str
    deadline: float       # Unix time: the end of its last fault, plus 1 s
    faults: int
    schedule: tuple[Mapping[str, Any], ...]
    start: float | None = None   # the plan's origin on the guest's CLOCK_MONOTONIC (newer agents)

    def as_dict(self) -> dict[str, Any]:
        out = {"id": self.id, "hash": self.hash, "deadline": self.deadline, "faults": self.faults,
               "schedule": [dict(entry) for entry in self.schedule]}
        return out if self.start is None else {**out, "start": self.start}


@dataclass(frozen=True)
class Lease:
    """What ``guest-fault-inject`` started: the fields of :class:`Fault` and :class:`AsyncFault`."""

    id: str
    kind: str
    target: str
    deadline: float       # Unix time: the agent (or its keeper) ends the fault by then
    duration: float
    params: Mapping[str, Any] = field(default_factory=dict)

    @property
    def remaining(self) -> float:
        """Seconds until the deadline, by this host's clock (never below 0)."""
        return max(0.0, self.deadline - time.time())

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "target": self.target, "deadline": self.deadline,
                "duration": self.duration, "params": dict(self.params)}

    def describe(self) -> str:
        return f"fault {self.id} ({self.kind} on {self.target})"


def parsed_reply(method: str, address: str, build: Callable[[], T], reply: Any) -> T:
    """``build()``, or one line naming the method if the agent's reply has another shape."""
    try:
        return build()
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise AgentClientError(f"{method} on {address}: unexpected reply ({type(exc).__name__}: {exc}): "
                               f"{str(reply)[:200]}", method=method, address=address) from None


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)


def parse_event(raw: Mapping[str, Any]) -> FaultEvent:
    """One event of ``guest-fault-events`` (or of the agent's events file, the same JSON)."""
    return FaultEvent(str(raw["event"]), _optional_str(raw.get("id")), str(raw["kind"]), str(raw["target"]),
                      float(raw["mono"]), float(raw["wall"]), str(raw["boot-id"]),
                      _optional_str(raw.get("reason")), _optional_str(raw.get("detail")),
                      _optional_str(raw.get("plan")))


def _active(raw: Mapping[str, Any]) -> ActiveFault:
    return ActiveFault(str(raw["id"]), str(raw["kind"]), str(raw["target"]), dict(raw.get("params") or {}),
                       str(raw["state"]), float(raw["started"]), float(raw["deadline"]),
                       float(raw["remaining"]), _optional_str(raw.get("plan")))


def _kind(raw: Mapping[str, Any]) -> FaultKind:
    params = tuple(FaultParam(str(p["name"]), str(p["type"]), str(p.get("doc", "")), p.get("default"),
                              "default" in p) for p in raw.get("params") or ())
    return FaultKind(str(raw["kind"]), bool(raw["available"]), _optional_str(raw.get("reason")), params)


# Named here: inside the Faults classes, `list` is the method.
ActiveFaults = list[ActiveFault]
EventBatch = tuple[list[FaultEvent], int]


# --- the operations, once ------------------------------------------------------------------------

def inject_request(kind: str, target: str, duration: float, params: Mapping[str, Any] | None,
                   force: bool, seed: int | None) -> dict[str, Any]:
    """``guest-fault-inject``'s arguments; ValueError, before anything is sent, for a duration
    that can never be valid (the agent checks its own range too)."""
    if isinstance(duration, bool) or not isinstance(duration, int | float) or not math.isfinite(duration) \
            or duration <= 0:
        raise ValueError(f"a fault's duration must be a finite number of seconds > 0, not {duration!r}")
    request: dict[str, Any] = {"kind": kind, "target": target, "duration": duration}
    if params:
        request["params"] = dict(params)
    if seed is not None:
        request["seed"] = seed
    if force:
        request["force"] = True
    return request


def inject_op(session: Session, request: Mapping[str, Any]) -> Op[Lease]:
    method = "guest-fault-inject"
    reply = yield from session.call(method, request)
    return parsed_reply(method, session.address, lambda: Lease(
        str(reply["id"]), str(reply.get("kind", request["kind"])),
        str(reply.get("target", request["target"])), float(reply["deadline"]),
        float(reply.get("duration", request["duration"])), dict(request.get("params") or {})), reply)


def plan_op(session: Session, seed: int, steps: Sequence[Mapping[str, Any]], repeat: int,
            start: float | None = None) -> Op[Plan]:
    """``start``: the plan's origin on the guest's CLOCK_MONOTONIC (a plan across guests)."""
    method = "guest-fault-plan"
    request = {"seed": seed, "steps": [dict(step) for step in steps], "repeat": repeat}
    reply = yield from session.call(method, request if start is None else {**request, "start": start})
    return parsed_reply(method, session.address, lambda: Plan(
        str(reply["id"]), str(reply["hash"]), float(reply["deadline"]), int(reply["faults"]),
        tuple(dict(entry) for entry in reply["schedule"]),
        None if reply.get("start") is None else float(reply["start"])), reply)


def list_op(session: Session) -> Op[list[ActiveFault]]:
    method = "guest-fault-list"
    reply = yield from session.call(method)
    return parsed_reply(method, session.address, lambda: [_active(entry) for entry in reply], reply)


def revert_op(session: Session, lease_id: str | None) -> Op[int]:
    """How many leases this revert began to end (all of them without ``lease_id``)."""
    reply = yield from session.call("guest-fault-revert", {} if lease_id is None else {"id": lease_id})
    return parsed_reply("guest-fault-revert", session.address, lambda: int(reply), reply)


def is_not_active(error: AgentCallError) -> bool:
    """The agent's answer to reverting a lease it no longer holds (it ended, or never was)."""
    return error.error.message.startswith(NOT_ACTIVE)


def end_lease_op(session: Session, lease_id: str) -> Op[bool]:
    """Revert ``lease_id`` if it still runs: True if this call ended it, False if it had ended
    already (or was already being reverted)."""
    try:
        return (yield from revert_op(session, lease_id)) > 0
    except AgentCallError as exc:
        if is_not_active(exc):
            return False
        raise


def events_op(session: Session, since: int) -> Op[tuple[list[FaultEvent], int]]:
    method = "guest-fault-events"
    reply = yield from session.call(method, {"since": since} if since else {})
    return parsed_reply(method, session.address,
                   lambda: ([parse_event(raw) for raw in reply["events"]], int(reply["cursor"])), reply)


def capabilities_op(session: Session, target: str | None) -> Op[FaultCapabilities]:
    method = "guest-fault-capabilities"
    reply = yield from session.call(method, {} if target is None else {"target": target})
    return parsed_reply(method, session.address, lambda: FaultCapabilities(
        tuple(_kind(raw) for raw in reply["kinds"]), str(reply["boot-id"])), reply)


def wait_op(session: Session, lease: Lease, timeout: float | None,
            progress: Callable[[ActiveFault], None] | None = None) -> Op[FaultEvent | None]:
    """Wait until the agent no longer lists ``lease``; the event that ended it, where its
    timeline still has it.  ``timeout`` (default: until :data:`WAIT_GRACE` seconds past the
    deadline): then AgentClientError, the lease left as it is."""
    limit = lease.remaining + WAIT_GRACE if timeout is None else timeout
    give_up = time.monotonic() + limit
    while True:
        entry = next((e for e in (yield from list_op(session)) if e.id == lease.id), None)
        if entry is None:
            break
        if progress is not None:
            progress(entry)
        if time.monotonic() >= give_up:
            raise AgentClientError(f"{lease.describe()} is still {entry.state} after {limit:g} s of waiting "
                                   f"({entry.remaining:g} s left by the agent's clock)",
                                   address=session.address)
        yield Sleep(max(0.05, min(WAIT_POLL, entry.remaining, give_up - time.monotonic())))
    return (yield from ending_event_op(session, lease.id))


def ending_event_op(session: Session, lease_id: str) -> Op[FaultEvent | None]:
    """The newest event that ended ``lease_id``, looked for from the end of the timeline back
    (it is recent: the agent keeps up to 10000 events, no need to fetch them all)."""
    _, cursor = yield from events_op(session, LATEST)   # a cursor past the end: no events, the cursor
    for back in (*LOOK_BACK, cursor):
        events, _ = yield from events_op(session, max(0, cursor - back))
        found = next((e for e in reversed(events) if e.id == lease_id and e.ends_lease), None)
        if found is not None or back >= cursor:
            return found
    return None


def restart_from(since: int, cursor: int) -> int:
    """Where following goes on: the new cursor, or 0 if the timeline began again (a cursor never
    goes back while the agent's state directory lasts)."""
    return cursor if cursor >= since else 0


def note_revert_failure(failure: BaseException, lease: Lease, revert_error: BaseException) -> None:
    """The body failed and so did the revert after it: say so on the body's exception."""
    by = time.strftime("%H:%M:%S", time.localtime(lease.deadline))
    failure.add_note(f"pyqga: could not revert {lease.describe()} after this failure ({revert_error}); "
                     f"the agent ends it by its deadline, {by}")


# --- sync -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Fault(Lease):
    """A fault lease from :meth:`Faults.inject`; as a context manager, reverted on leaving
    (whether or not it had ended by then)."""

    faults: Faults | None = field(default=None, repr=False, compare=False)

    def _owner(self) -> Faults:
        assert self.faults is not None, "a Fault comes from client.faults.inject()"
        return self.faults

    def revert(self) -> bool:
        """End it now; False if it had already ended (not an error)."""
        owner = self._owner()
        return owner.run(end_lease_op(owner.session(), self.id))

    def wait(self, timeout: float | None = None,
             progress: Callable[[ActiveFault], None] | None = None) -> FaultEvent | None:
        """Block until it ends (its deadline, a revert, the keeper); the event that ended it.
        ``progress`` is called with its list entry at each poll."""
        owner = self._owner()
        return owner.run(wait_op(owner.session(), self, timeout, progress))

    def __enter__(self) -> Fault:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            self.revert()
        except Exception as revert_error:
            if exc is None:
                raise
            note_revert_failure(exc, self, revert_error)


class Faults:
    """``AgentClient.faults``: inject faults, list, revert and follow them."""

    def __init__(self, client: AgentClient) -> None:
        self._client = client

    def session(self) -> Session:
        return self._client.session

    def run(self, op: Op[T]) -> T:
        return self._client._run(op)

    def inject(self, kind: str, target: str, duration: float, params: Mapping[str, Any] | None = None,
               force: bool = False, seed: int | None = None) -> Fault:
        """Start a fault of ``kind`` on ``target`` (a mount point or device) for ``duration``
        seconds; the lease, which ``with`` reverts on leaving.  ``params``: the kind's, named
        as ``capabilities()`` lists them.  ``force``: what the agent refuses by default (a
        stall of its own disk)."""
        request = inject_request(kind, target, duration, params, force, seed)
        lease = self.run(inject_op(self.session(), request))
        return Fault(**_fields(lease), faults=self)

    def plan(self, seed: int, steps: Sequence[Mapping[str, Any]], repeat: int = 1) -> Plan:
        """Run a seeded schedule of faults on the agent's own clock (docs/faults.md, 'Seeded
        plans'): the same seed and steps give the same schedule, whose hash the plan carries."""
        return self.run(plan_op(self.session(), seed, steps, repeat))

    def list(self) -> ActiveFaults:
        return self.run(list_op(self.session()))

    def revert(self, id: str | None = None) -> int:
        """End one lease (an error if it is not active), or all without ``id``; how many."""
        return self.run(revert_op(self.session(), id))

    def events(self, since: int = 0) -> EventBatch:
        """The timeline after cursor ``since``, and the cursor to pass next time."""
        return self.run(events_op(self.session(), since))

    def follow(self, since: int = 0, interval: float = FOLLOW_INTERVAL) -> Iterator[FaultEvent]:
        """Every event from cursor ``since`` on, as it comes (polling every ``interval`` s); endless."""
        while True:
            events, cursor = self.events(since)
            since = restart_from(since, cursor)
            yield from events
            if not events:
                time.sleep(interval)

    def capabilities(self, target: str | None = None) -> FaultCapabilities:
        """Every kind, whether it is available (on ``target`` if given), and why not."""
        return self.run(capabilities_op(self.session(), target))


def _fields(lease: Lease) -> dict[str, Any]:
    return {"id": lease.id, "kind": lease.kind, "target": lease.target, "deadline": lease.deadline,
            "duration": lease.duration, "params": lease.params}


# --- async ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AsyncFault(Lease):
    """:class:`Fault` for :class:`AsyncFaults`: ``async with``, ``await fault.revert()``."""

    faults: AsyncFaults | None = field(default=None, repr=False, compare=False)

    def _owner(self) -> AsyncFaults:
        assert self.faults is not None, "an AsyncFault comes from client.faults.inject()"
        return self.faults

    async def revert(self) -> bool:
        owner = self._owner()
        return await owner.run(end_lease_op(owner.session(), self.id))

    async def wait(self, timeout: float | None = None,
                   progress: Callable[[ActiveFault], None] | None = None) -> FaultEvent | None:
        owner = self._owner()
        return await owner.run(wait_op(owner.session(), self, timeout, progress))

    async def __aenter__(self) -> AsyncFault:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        try:
            await self.revert()
        except Exception as revert_error:
            if exc is None:
                raise
            note_revert_failure(exc, self, revert_error)


class Injecting:
    """What :meth:`AsyncFaults.inject` returns: ``await`` it for the lease, or ``async with`` it
    to inject, run the body and revert."""

    def __init__(self, start: Awaitable[AsyncFault]) -> None:
        self._start = start
        self._fault: AsyncFault | None = None

    def __await__(self) -> Generator[Any, None, AsyncFault]:
        return self._start.__await__()

    async def __aenter__(self) -> AsyncFault:
        self._fault = await self._start
        return self._fault

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        assert self._fault is not None
        await self._fault.__aexit__(kind, exc, tb)


class AsyncFaults:
    """``AsyncAgentClient.faults``: as :class:`Faults`, with awaits."""

    def __init__(self, client: AsyncAgentClient) -> None:
        self._client = client

    def session(self) -> Session:
        return self._client.session

    async def run(self, op: Op[T]) -> T:
        return await self._client._run(op)

    def inject(self, kind: str, target: str, duration: float, params: Mapping[str, Any] | None = None,
               force: bool = False, seed: int | None = None) -> Injecting:
        """As :meth:`Faults.inject`: ``fault = await agent.faults.inject(...)``, or
        ``async with agent.faults.inject(...) as fault:``.  A bad duration raises here."""
        request = inject_request(kind, target, duration, params, force, seed)

        async def start() -> AsyncFault:
            lease = await self.run(inject_op(self.session(), request))
            return AsyncFault(**_fields(lease), faults=self)

        return Injecting(start())

    async def plan(self, seed: int, steps: Sequence[Mapping[str, Any]], repeat: int = 1) -> Plan:
        return await self.run(plan_op(self.session(), seed, steps, repeat))

    async def list(self) -> ActiveFaults:
        return await self.run(list_op(self.session()))

    async def revert(self, id: str | None = None) -> int:
        return await self.run(revert_op(self.session(), id))

    async def events(self, since: int = 0) -> EventBatch:
        return await self.run(events_op(self.session(), since))

    async def follow(self, since: int = 0, interval: float = FOLLOW_INTERVAL) -> AsyncIterator[FaultEvent]:
        import asyncio  # here: the sync client, which imports this module, need not load asyncio

        while True:
            events, cursor = await self.events(since)
            since = restart_from(since, cursor)
            for event in events:
                yield event
            if not events:
                await asyncio.sleep(interval)

    async def capabilities(self, target: str | None = None) -> FaultCapabilities:
        return await self.run(capabilities_op(self.session(), target))
