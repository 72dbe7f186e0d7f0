"""A seeded fault plan across guests: one seed, one schedule, one merged timeline.

A plan across guests is a single-guest plan (docs/faults.md, "Seeded plans") whose steps each
name their ``guest``.  The host draws the whole schedule from the seed, with the agent's own
drawing (:func:`pyqga.agent.faults.plan.build`, sans-IO), so the same seed gives the same
schedule and hash on any host.  Each guest then receives its part as a ``guest-fault-plan`` of
fixed steps (nothing left to draw), so it runs on that guest's own clock; the reply's hash is
checked against the part the host drew.

Starting, all or nothing:

1. draw the schedule (a bad plan fails here, before anything is sent);
2. connect to every guest that has a part, ask each which kinds it can run (a guest that
   cannot run a kind of its part fails the plan before anything starts), and read its clock;
3. send every part at once, each with the same origin, :data:`LEAD` seconds ahead, given on
   that guest's own CLOCK_MONOTONIC (``start``) by the offset just read: the parts' steps are
   timed from one instant, whatever each call's latency (a keeper that starts first, a slow
   channel).  :attr:`GroupPlan.skew` is how far apart the origins are by the offsets read
   again after the start;
4. if a guest refuses its part, revert the parts that started (a part is a plan lease:
   reverting it cancels its future steps and ends its faults) and raise
   :class:`GroupPlanFailed`, naming the guest and its reason.

The timeline: each guest's events carry its ``mono`` (CLOCK_MONOTONIC in that guest).  Right
after the start, the host reads each guest's clock by a few round trips (``guest-fault-events``
tells its ``mono``) and maps that guest's clock to its own by the shortest one's midpoint; the
mapping is right within half that round trip (:attr:`GuestPart.uncertainty`); monotonic clocks
drift apart by parts per million, nothing over a plan's minutes.  :class:`Merger` puts every
guest's events on that one axis, in order, each tagged with its guest's name.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from pyqga.agent.faults import plan as plans
from pyqga.agent.faults.machine import Refused
from pyqga.host_client.aio import AsyncAgentClient
from pyqga.host_client.errors import AgentCallError, AgentClientError
from pyqga.host_client.faults import (
    FOLLOW_INTERVAL,
    LATEST,
    WAIT_GRACE,
    FaultEvent,
    Plan,
    capabilities_op,
    end_lease_op,
    events_op,
    list_op,
    parsed_reply,
    plan_op,
    restart_from,
)
from pyqga.host_client.session import Op, Session

Starts = Mapping[str, "asyncio.Future[tuple[Plan, float, float]]"]   # by guest: its plan, sent, replied
PLAN_MARGIN = 1.0   # a guest's plan lease outlives its last fault by this (agent/faults/engine.py)
CLOCK_SAMPLES = 5   # round trips per guest to measure its clock's offset; the shortest counts
LEAD = 0.5          # seconds from sending the parts to their common origin (each call must arrive by then)
GUEST_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class GroupPlanFailed(AgentClientError):
    """A guest could not start its part; the parts that had started were reverted.  ``guest``
    names it; ``left`` lists the guests whose part could not be reverted (empty: nothing left)."""

    def __init__(self, message: str, guest: str, left: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.guest = guest
        self.left = tuple(left)


@dataclass(frozen=True)
class GuestPart:
    """One guest's part, started: its own plan lease, when it started on the guest's
    CLOCK_MONOTONIC, and how that clock maps to the host's (``offset``, right within
    ``uncertainty`` seconds: half the round trip it was measured by)."""

    name: str
    address: str
    plan: Plan
    started_mono: float
    offset: float
    uncertainty: float

    @property
    def started(self) -> float:
        """The part's start on the host's monotonic clock."""
        return self.started_mono + self.offset


def clock_offset(samples: Sequence[tuple[float, float, float]]) -> tuple[float, float]:
    """(offset, uncertainty) from round trips (host time sent, host time replied, the guest's
    clock read in between): the shortest one's midpoint, right within half of it."""
    sent, replied, mono = min(samples, key=lambda sample: sample[1] - sample[0])
    return (sent + replied) / 2 - mono, (replied - sent) / 2


def start_skew(parts: Sequence[GuestPart]) -> tuple[float, float]:
    """How far apart the parts started (seconds, on the host's clock), and how far that may be
    off (the two largest uncertainties: the skew is a difference of two mapped starts)."""
    if not parts:
        return 0.0, 0.0
    starts = [part.started for part in parts]
    errors = sorted((part.uncertainty for part in parts), reverse=True)
    return max(starts) - min(starts), sum(errors[:2])


@dataclass(frozen=True)
class TimedEvent:
    """A guest's fault event on the group's time axis: ``t`` is seconds from the group plan's
    start (the earliest part's), on the host's monotonic clock."""

    guest: str
    t: float
    event: FaultEvent

    def as_dict(self) -> dict[str, Any]:
        return {"guest": self.guest, "t": round(self.t, 6), **self.event.as_dict()}


class Merger:
    """Every guest's events of its part on one axis, in order (sans-IO).

    :meth:`add` takes what a poll of one guest returned; :meth:`ready` gives back, sorted, the
    events no later poll can precede: a poll of guest G sent at host time P returned everything
    G recorded before P, so an event still to come from G maps to at least P minus G's
    uncertainty.  Ties: the order of the guests, then each guest's own order."""

    def __init__(self, parts: Sequence[GuestPart]) -> None:
        self.parts = {part.name: part for part in parts}
        self.order = {part.name: index for index, part in enumerate(parts)}
        self.origin = min((part.started for part in parts), default=0.0)
        self.held: list[tuple[float, int, int, TimedEvent]] = []
        self.polled: dict[str, float] = {}   # guest -> host time its latest poll was sent
        self.seen = 0

    def add(self, guest: str, events: Sequence[FaultEvent], polled: float) -> None:
        """``events`` from one poll of ``guest``, sent at host monotonic time ``polled``; only
        those of the guest's part (its plan lease and the faults it started) are kept."""
        part = self.parts[guest]
        for event in events:
            if event.id == part.plan.id or event.plan == part.plan.id:
                at = event.mono + part.offset - self.origin
                self.held.append((at, self.order[guest], self.seen, TimedEvent(guest, at, event)))
                self.seen += 1
        self.polled[guest] = max(polled, self.polled.get(guest, polled))

    def watermark(self) -> float:
        """``t`` before which every guest's events are in: the earliest poll, less its error."""
        if len(self.polled) < len(self.parts):
            return float("-inf")
        return min(self.polled[name] - part.uncertainty for name, part in self.parts.items()) - self.origin

    def ready(self, everything: bool = False) -> list[TimedEvent]:
        """The held events before the watermark (all of them with ``everything``), in order."""
        limit = float("inf") if everything else self.watermark()
        self.held.sort(key=lambda item: item[:3])
        count = next((i for i, item in enumerate(self.held) if item[0] >= limit), len(self.held))
        out, self.held = self.held[:count], self.held[count:]
        return [item[3] for item in out]


def merge(parts: Sequence[GuestPart], events: Mapping[str, Sequence[FaultEvent]]) -> list[TimedEvent]:
    """Every guest's events of its part (all of them already fetched), merged in order."""
    merger = Merger(parts)
    for name, batch in events.items():
        merger.add(name, batch, 0.0)
    return merger.ready(everything=True)


def draw(seed: int, steps: Sequence[Any], repeat: int, guests: Sequence[str]) -> plans.Schedule:
    """The whole schedule; ValueError (one line) for a bad plan or guest name."""
    for name in guests:
        if not GUEST_NAME.fullmatch(name):
            raise ValueError(f"guest name {name!r}: letters, digits, '.', '_' and '-' (at most 64)")
    if len(set(guests)) != len(guests):
        raise ValueError(f"a guest is named twice: {', '.join(guests)}")
    try:
        return plans.build(seed, steps, repeat, guests=list(guests))
    except Refused as exc:
        raise ValueError(str(exc)) from None


@dataclass
class GroupPlan:
    """A plan across guests, started.  ``async with`` reverts every part on leaving; without
    it, each part still ends by its own deadline (each is a lease in its guest)."""

    seed: int
    schedule: plans.Schedule
    parts: list[GuestPart]
    clients: dict[str, AsyncAgentClient] = field(repr=False)
    cursors: dict[str, int] = field(repr=False)
    merger: Merger = field(init=False, repr=False)
    ended: set[str] = field(default_factory=set, repr=False)

    def __post_init__(self) -> None:
        self.merger = Merger(self.parts)

    @property
    def hash(self) -> str:
        return self.schedule.digest

    @property
    def skew(self) -> float:
        return start_skew(self.parts)[0]

    @property
    def skew_uncertainty(self) -> float:
        return start_skew(self.parts)[1]

    def as_dict(self) -> dict[str, Any]:
        skew, error = start_skew(self.parts)
        origin = self.merger.origin
        return {"seed": self.seed, "hash": self.hash, "faults": len(self.schedule.entries),
                "schedule": [entry.as_dict() for entry in self.schedule.entries],
                "guests": {part.name: {"address": part.address, "id": part.plan.id, "hash": part.plan.hash,
                                       "faults": part.plan.faults, "start": round(part.started - origin, 6),
                                       "offset": round(part.offset, 6),
                                       "uncertainty": round(part.uncertainty, 6)}
                           for part in self.parts},
                "skew": round(skew, 6), "skew-uncertainty": round(error, 6)}

    async def poll(self) -> list[TimedEvent]:
        """Ask every guest for its new events; the merged events now in order for good."""
        async def one(part: GuestPart) -> None:
            polled = time.monotonic()
            events, cursor = await self.clients[part.name].faults.events(self.cursors[part.name])
            self.cursors[part.name] = restart_from(self.cursors[part.name], cursor)
            self.merger.add(part.name, events, polled)
            if any(e.id == part.plan.id and e.ends_lease for e in events):
                self.ended.add(part.name)

        await asyncio.gather(*(one(part) for part in self.parts))
        return self.merger.ready(everything=self.done)

    @property
    def done(self) -> bool:
        """Every part has ended (as far as the polls so far have seen)."""
        return len(self.ended) == len(self.parts)

    async def follow(self, interval: float = FOLLOW_INTERVAL) -> AsyncIterator[TimedEvent]:
        """The merged timeline as it comes, in order, until every part has ended.
        AgentClientError if a part is still running :data:`WAIT_GRACE` s after its deadline."""
        give_up = self.merger.origin + self.schedule.span + PLAN_MARGIN + WAIT_GRACE
        while True:
            for event in await self.poll():
                yield event
            if self.done:
                return
            if time.monotonic() > give_up:
                running = ", ".join(part.name for part in self.parts if part.name not in self.ended)
                raise AgentClientError(f"the part of {running} has not ended {WAIT_GRACE:g} s after its "
                                       "deadline; 'pyqga fault list' on that guest shows it")
            await asyncio.sleep(interval)

    async def wait(self, interval: float = FOLLOW_INTERVAL) -> list[TimedEvent]:
        """Until every part has ended; the whole merged timeline of the parts."""
        return [event async for event in self.follow(interval)]

    async def revert(self) -> dict[str, bool]:
        """End every part now (its future steps cancelled, its faults ended): by guest, whether
        this call ended it (False: it had ended already)."""
        results = await asyncio.gather(*(self.clients[part.name].faults.run(
            end_lease_op(self.clients[part.name].session, part.plan.id)) for part in self.parts))
        return {part.name: ended for part, ended in zip(self.parts, results, strict=True)}

    async def close(self) -> None:
        await asyncio.gather(*(client.close() for client in self.clients.values()))

    async def __aenter__(self) -> GroupPlan:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        try:
            await self.revert()
        finally:
            await self.close()


async def start_group_plan(guests: Mapping[str, str], seed: int, steps: Sequence[Mapping[str, Any]],
                           repeat: int = 1, *, dialect: str = "jsonrpc", timeout: float = 10.0,
                           lead: float = LEAD) -> GroupPlan:
    """Start a plan across ``guests`` (name -> agent address, any form ``AsyncAgentClient``
    takes, ``libvirt:`` included): the sequence of the module docstring.  Every part's origin
    is ``lead`` seconds after its call is sent, the same instant on every guest's clock.
    ValueError for a bad plan (nothing sent), :class:`GroupPlanFailed` when a guest cannot run
    its part (nothing left behind where a revert could reach)."""
    names = list(guests)
    schedule = draw(seed, steps, repeat, names)
    cast = [name for name in names if any(entry.guest == name for entry in schedule.entries)]
    clients = {name: AsyncAgentClient(guests[name], dialect=dialect, timeout=timeout) for name in cast}
    try:
        clocks = await _prepare(clients, schedule)
        parts = await _start(clients, schedule, seed, clocks, lead)
    except BaseException:
        await asyncio.gather(*(client.close() for client in clients.values()), return_exceptions=True)
        raise
    return GroupPlan(seed, schedule, parts, clients, {name: clock.cursor for name, clock in clocks.items()})


@dataclass(frozen=True)
class Clock:
    """A guest's clock as the host read it: its timeline's cursor then, and the offset from its
    CLOCK_MONOTONIC to the host's (None: the agent does not tell its clock)."""

    cursor: int
    offset: float | None
    uncertainty: float | None


async def read_clock(client: AsyncAgentClient) -> Clock:
    samples = [await client.faults.run(clock_op(client.session)) for _ in range(CLOCK_SAMPLES)]
    read = [(sent, replied, mono) for sent, replied, mono, _ in samples if mono is not None]
    if not read:
        return Clock(samples[-1][3], None, None)
    offset, error = clock_offset(read)
    return Clock(samples[-1][3], offset, error)


def clock_op(session: Session) -> Op[tuple[float, float, float | None, int]]:
    """One round trip that reads the guest's CLOCK_MONOTONIC (``mono`` of guest-fault-events'
    reply; None from an agent that does not send it) and its timeline's cursor."""
    sent = time.monotonic()
    reply = yield from session.call("guest-fault-events", {"since": LATEST})
    replied = time.monotonic()

    def parse() -> tuple[float, float, float | None, int]:
        mono = reply.get("mono")
        number = not isinstance(mono, bool) and isinstance(mono, int | float)
        return sent, replied, float(mono) if number else None, int(reply["cursor"])

    return parsed_reply("guest-fault-events", session.address, parse, reply)


async def _prepare(clients: dict[str, AsyncAgentClient], schedule: plans.Schedule) -> dict[str, Clock]:
    """Connect to every guest, check it can run its part's kinds, and read its clock."""
    async def one(name: str) -> Clock:
        client = clients[name]
        try:
            await client.open()
            caps = await client.faults.run(capabilities_op(client.session, None))
            clock = await read_clock(client)
        except AgentClientError as exc:
            raise GroupPlanFailed(f"guest {name} ({client.address}) cannot run its part: {exc}; "
                                  "no part was started", name) from exc
        known = {kind.kind: kind for kind in caps.kinds}
        for kind in sorted({entry.kind for entry in schedule.entries if entry.guest == name}):
            problem = ("the agent does not know it" if kind not in known else
                       None if known[kind].available else known[kind].reason or "not available")
            if problem is not None:
                raise GroupPlanFailed(f"guest {name} ({client.address}) cannot run {kind}: {problem}; "
                                      "no part was started", name)
        return clock

    results = await asyncio.gather(*(one(name) for name in clients), return_exceptions=True)
    clocks: dict[str, Clock] = {}
    for name, result in zip(clients, results, strict=True):
        if isinstance(result, BaseException):
            raise result
        clocks[name] = result
    return clocks


async def _start(clients: dict[str, AsyncAgentClient], schedule: plans.Schedule, seed: int,
                 clocks: Mapping[str, Clock], lead: float) -> list[GuestPart]:
    """Send every part at once, each with the same origin on its guest's clock; all of them
    started, or none left (:class:`GroupPlanFailed`)."""
    entries = {name: plans.part(schedule, name) for name in clients}
    origin = time.monotonic() + lead

    async def one(name: str) -> tuple[Plan, float, float]:
        client = clients[name]
        steps = [entry.as_step() for entry in entries[name]]
        offset = clocks[name].offset
        start = None if offset is None else round(origin - offset, 6)
        sent = time.monotonic()
        started = await client.faults.run(plan_op(client.session, seed, steps, 1, start))
        return started, sent, time.monotonic()

    tasks = {name: asyncio.ensure_future(one(name)) for name in clients}
    try:
        await asyncio.wait(tasks.values())
    except BaseException:   # cancelled (Ctrl-C): whatever started is reverted
        for task in tasks.values():
            task.cancel()
        await asyncio.wait(tasks.values())
        await _undo(clients, tasks, entries, seed)
        raise
    failed: dict[str, BaseException] = {}
    for name, task in tasks.items():
        error = task.exception()
        if error is not None:
            failed[name] = error
    for name, task in tasks.items():
        if name not in failed and task.result()[0].hash != plans.digest(entries[name]):
            failed[name] = AgentClientError(f"its agent drew another schedule (hash {task.result()[0].hash}, "
                                            f"expected {plans.digest(entries[name])})")
    if failed:
        left = await _undo(clients, tasks, entries, seed)
        said = [f"guest {name} ({clients[name].address}) refused its part: "
                + (exc.error.message if isinstance(exc, AgentCallError) else str(exc))
                for name, exc in failed.items()]
        started = [name for name in clients if name not in failed and name not in left]
        if started:
            said.append(f"the parts of {', '.join(started)} were reverted")
        said.append("nothing was left behind" if not left else
                    f"could not revert the part of {', '.join(left)}: it ends by its own deadline")
        name, exc = next(iter(failed.items()))
        raise GroupPlanFailed("; ".join(said), name, left) from exc
    try:
        return await _parts(clients, tasks, clocks)
    except BaseException:
        await _undo(clients, tasks, entries, seed)
        raise


async def _undo(clients: dict[str, AsyncAgentClient], tasks: Starts, entries: Mapping[str, list[plans.Entry]],
                seed: int) -> list[str]:
    """Revert every part that started, and any part a failed call may have started unseen (a
    plan lease of this part's seed and hash); the guests where that could not be done."""
    async def one(name: str) -> None:
        client = clients[name]
        task = tasks[name]
        if not task.cancelled():
            if task.exception() is None:
                await client.faults.run(end_lease_op(client.session, task.result()[0].id))
                return
            if isinstance(task.exception(), AgentCallError):
                return   # the agent answered: it refused, nothing started
        client.session.needs_resync = not client.session.synchronised
        digest = plans.digest(entries[name])
        for lease in await client.faults.run(list_op(client.session)):
            ours = lease.params.get("hash") == digest and lease.params.get("seed") == seed
            if lease.kind == "plan" and ours:
                await client.faults.run(end_lease_op(client.session, lease.id))

    outcomes = await asyncio.gather(*(one(name) for name in clients), return_exceptions=True)
    return [name for name, done in zip(clients, outcomes, strict=True) if isinstance(done, BaseException)]


async def _parts(clients: dict[str, AsyncAgentClient], tasks: Starts,
                 clocks: Mapping[str, Clock]) -> list[GuestPart]:
    """Each part with its origin on its guest's clock, and that clock's offset read again now
    (the timeline is mapped with it)."""
    async def one(name: str) -> GuestPart:
        started, sent, replied = tasks[name].result()
        client = clients[name]
        clock = await read_clock(client)
        if started.start is not None and clock.offset is not None and clock.uncertainty is not None:
            return GuestPart(name, client.address, started, started.start, clock.offset, clock.uncertainty)
        # An agent that does not tell its clock: its plan started (the armed event) during the
        # plan call, whose round trip maps its clock.
        events, _ = await client.faults.run(events_op(client.session, clocks[name].cursor))
        armed = next((e for e in reversed(events) if e.id == started.id and e.event == "armed"), None)
        if armed is None:
            raise AgentClientError(f"guest {name}: its plan {started.id} has no armed event in its timeline",
                                   address=client.address)
        offset, error = clock_offset([(sent, replied, armed.mono)])
        return GuestPart(name, client.address, started, armed.mono, offset, error)

    return list(await asyncio.gather(*(one(name) for name in clients)))
