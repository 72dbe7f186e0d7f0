"""The lease book's transitions as a table: events in, actions out (as the freeze core's
``test_core_table.py``).

Each row puts a fresh :class:`LeaseBook` in a named state by feeding it events (nothing else),
hands it one more, and checks the leases it is left with and every action it asks for, in order,
or the refusal a host would read.  No driver and no kernel: ``test_lease_model.py`` covers
interleavings and the kernel, this one pins each step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import pytest

from pyqga.agent.faults.machine import RETRY, UNDO_ALLOWANCE, LeaseBook, Refused
from pyqga.agent.faults.snapshot import keeper_deadline, parse_leases
from pyqga.agent.faults.vocabulary import (
    MAX_DURATION,
    Action,
    Apply,
    EndReason,
    Lease,
    Now,
    Phase,
    Prepared,
    Publish,
    Record,
    Undo,
)
from tests.rig.model_kernel import ModelClock

DURATION = 10.0


def request(target: str = "/a", device: str = "8:1", duration: Any = DURATION) -> Prepared:
    return Prepared("write-stall", target, {}, device, ({"op": "freeze", "path": target},),
                    ({"op": "thaw", "path": target},), duration)


A, B = request(), request("/b", "8:2")
A_AGAIN = Prepared("disk-full", "/a", {"free-bytes": 0}, "8:1",
                   ({"op": "fill", "path": "/a/x", "free-bytes": 0},), ({"op": "unlink", "path": "/a/x"},),
                   DURATION)
LEFT = Lease("f7", "io-stall", "/data", {}, "254:0", (), ({"op": "dm-resume", "name": "vg-data"},),
             1_700_000_000.0, 50.0, 60.0, 10.0, Phase.ACTIVE)


# --- events: one per LeaseBook method, so the rows read as what happened ----------------------------

class Inject(NamedTuple):
    request: Prepared


class Applied(NamedTuple):
    id: str
    error: str | None = None


class Revert(NamedTuple):
    id: str | None
    reason: EndReason = EndReason.REVERT


class Undone(NamedTuple):
    id: str
    error: str | None = None


class Tick(NamedTuple):
    pass


class Restore(NamedTuple):
    leases: tuple[Lease, ...]
    reason: EndReason = EndReason.AGENT_RESTART


class RefusedEarly(NamedTuple):
    """A request a kind's checks refused before the book saw it."""

    detail: str


class Later(NamedTuple):
    """Time passes (the book is not told: a driver ticks at next_wakeup)."""

    seconds: float


Event = Inject | Applied | Revert | Undone | Tick | Restore | RefusedEarly | Later


class Machine:
    def __init__(self) -> None:
        self.book = LeaseBook()
        self.clock = ModelClock(100.0)
        self.reverted: int | None = None   # what the last Revert returned

    def now(self) -> Now:
        return Now(self.clock.monotonic(), self.clock.time())

    def handle(self, event: Event) -> list[Action]:
        book, now = self.book, self.now()
        if isinstance(event, Inject):
            return book.inject(event.request, now)[1]
        if isinstance(event, Applied):
            return book.applied(event.id, now, event.error)
        if isinstance(event, Revert):
            self.reverted, actions = book.revert(event.id, event.reason, now)
            return actions
        if isinstance(event, Undone):
            return book.undone(event.id, now, event.error)
        if isinstance(event, Tick):
            return book.tick(now)
        if isinstance(event, Restore):
            return book.restore(event.leases, event.reason, now)
        if isinstance(event, RefusedEarly):
            return book.refused("write-stall", "/a", event.detail, now)
        self.clock.advance(event.seconds)
        return []


def feed(*events: Event) -> Callable[[], Machine]:
    def build() -> Machine:
        machine = Machine()
        for event in events:
            machine.handle(event)
        return machine
    return build


# --- the states (each reached by events only) ----------------------------------------------------

ARMING = (Inject(A),)
ACTIVE = (*ARMING, Applied("f1"))
REVERTING = (*ACTIVE, Revert("f1"))
UNDO_FAILED = (*REVERTING, Undone("f1", "thaw: EIO"))
EXPIRING = (*ACTIVE, Later(DURATION), Tick())

STATES: dict[str, Callable[[], Machine]] = {
    "empty": feed(),
    "arming": feed(*ARMING),
    "arming, revert asked": feed(*ARMING, Revert("f1")),
    "arming, past deadline": feed(*ARMING, Later(DURATION), Tick()),
    "arming, past deadline, not ticked": feed(*ARMING, Later(DURATION)),
    "active": feed(*ACTIVE),
    "active, past deadline": feed(*ACTIVE, Later(DURATION)),
    "two active": feed(*ACTIVE, Inject(B), Applied("f2")),
    "one active, one arming": feed(*ACTIVE, Inject(B)),
    "reverting": feed(*REVERTING),
    "expiring": feed(*EXPIRING),
    "undo failed": feed(*UNDO_FAILED),
    "undo failed, retry due": feed(*UNDO_FAILED, Later(RETRY)),
    "apply failed": feed(*ARMING, Applied("f1", "freeze: EIO")),
    "restored": feed(Restore((LEFT,))),
}


# --- what a row compares -------------------------------------------------------------------------

def action(done: Action) -> tuple[Any, ...]:
    """An action as the table spells it: a snapshot by its leases' ids and phases, an event by
    its name, lease and reason (or the start of its detail)."""
    if isinstance(done, Publish):
        return ("Publish", tuple((lease["id"], lease["phase"]) for lease in done.snapshot["leases"]))
    if isinstance(done, Apply):
        return ("Apply", done.lease.id)
    if isinstance(done, Undo):
        return ("Undo", done.lease.id, done.reason.value)
    assert isinstance(done, Record), done
    event = done.event
    return ("Record", event.name, event.lease) + ((event.reason,) if event.reason else ()) \
        + ((event.detail.split(":")[0],) if event.detail else ())


def leases(machine: Machine) -> dict[str, str]:
    """Id -> phase, ``+REASON`` once a revert is asked of a lease still arming, ``+retry`` while a
    failed undo waits for its retry."""
    return {lease.id: lease.phase.value
            + (f"+{lease.revert_reason.value}" if lease.phase is Phase.ARMING and lease.revert_reason else "")
            + ("+retry" if lease.retry_at is not None else "")
            for lease in machine.book.leases.values()}


def publish(*leases: tuple[str, str]) -> tuple[Any, ...]:
    return ("Publish", leases)


TABLE: list[tuple[str, Event, dict[str, str], list[tuple[Any, ...]]]] = [
    # inject: published, recorded, then applied
    ("empty", Inject(A), {"f1": "arming"},
     [publish(("f1", "arming")), ("Record", "armed", "f1"), ("Apply", "f1")]),
    ("empty", Inject(request(duration=MAX_DURATION)), {"f1": "arming"},
     [publish(("f1", "arming")), ("Record", "armed", "f1"), ("Apply", "f1")]),
    ("empty", Inject(request(duration=1e-6)), {"f1": "arming"},
     [publish(("f1", "arming")), ("Record", "armed", "f1"), ("Apply", "f1")]),
    ("active", Inject(B), {"f1": "active", "f2": "arming"},
     [publish(("f1", "active"), ("f2", "arming")), ("Record", "armed", "f2"), ("Apply", "f2")]),
    # a refusal is a timeline entry only
    ("empty", RefusedEarly("unknown fault kind 'x'"), {},
     [("Record", "refused", None, "unknown fault kind 'x'")]),
    # applied
    ("arming", Applied("f1"), {"f1": "active"}, [publish(("f1", "active")), ("Record", "fired", "f1")]),
    ("arming", Applied("f1", "freeze: EIO"), {"f1": "reverting"},
     [("Record", "refused", "f1", "freeze"), publish(("f1", "reverting")), ("Undo", "f1", "failed")]),
    ("arming, revert asked", Applied("f1"), {"f1": "reverting"},   # the revert runs right away
     [("Record", "fired", "f1"), publish(("f1", "reverting")), ("Undo", "f1", "revert")]),
    ("arming, revert asked", Applied("f1", "freeze: EIO"), {"f1": "reverting"},
     [("Record", "refused", "f1", "freeze"), publish(("f1", "reverting")), ("Undo", "f1", "failed")]),
    ("arming, past deadline", Applied("f1"), {"f1": "reverting"},
     [("Record", "fired", "f1"), publish(("f1", "reverting")), ("Undo", "f1", "deadline")]),
    ("arming, past deadline, not ticked", Applied("f1"), {"f1": "reverting"},
     [("Record", "fired", "f1"), publish(("f1", "reverting")), ("Undo", "f1", "deadline")]),
    # revert
    ("active", Revert("f1"), {"f1": "reverting"}, [publish(("f1", "reverting")), ("Undo", "f1", "revert")]),
    ("active", Revert(None), {"f1": "reverting"}, [publish(("f1", "reverting")), ("Undo", "f1", "revert")]),
    ("active", Revert("f1", EndReason.AGENT_EXIT), {"f1": "reverting"},
     [publish(("f1", "reverting")), ("Undo", "f1", "agent-exit")]),
    ("two active", Revert(None), {"f1": "reverting", "f2": "reverting"},
     [publish(("f1", "reverting"), ("f2", "reverting")), ("Undo", "f1", "revert"), ("Undo", "f2", "revert")]),
    ("two active", Revert("f2"), {"f1": "active", "f2": "reverting"},
     [publish(("f1", "active"), ("f2", "reverting")), ("Undo", "f2", "revert")]),
    ("arming", Revert("f1"), {"f1": "arming+revert"}, []),   # ends when its apply returns
    ("one active, one arming", Revert(None), {"f1": "reverting", "f2": "arming+revert"},
     [publish(("f1", "reverting"), ("f2", "arming")), ("Undo", "f1", "revert")]),
    ("arming, revert asked", Revert("f1"), {"f1": "arming+revert"}, []),
    ("reverting", Revert("f1"), {"f1": "reverting"}, []),
    ("undo failed", Revert(None), {"f1": "reverting+retry"}, []),
    ("empty", Revert(None), {}, []),
    # undone
    ("reverting", Undone("f1"), {}, [publish(), ("Record", "reverted", "f1", "revert")]),
    ("expiring", Undone("f1"), {}, [publish(), ("Record", "expired", "f1", "deadline")]),
    ("reverting", Undone("f1", "thaw: EIO"), {"f1": "reverting+retry"},
     [publish(("f1", "reverting")), ("Record", "revert-failed", "f1", "thaw")]),
    ("apply failed", Undone("f1"), {}, [publish()]),   # the refusal was its event
    ("apply failed", Undone("f1", "thaw: EIO"), {"f1": "reverting+retry"},
     [publish(("f1", "reverting")), ("Record", "revert-failed", "f1", "thaw")]),
    # a driver that says the kernel is restored is believed, even with no undo out
    ("undo failed, retry due", Undone("f1"), {}, [publish(), ("Record", "reverted", "f1", "revert")]),
    ("restored", Undone("f7"), {}, [publish(), ("Record", "reverted", "f7", "agent-restart")]),
    # tick
    ("active", Tick(), {"f1": "active"}, []),
    ("active, past deadline", Tick(), {"f1": "reverting"},
     [publish(("f1", "reverting")), ("Undo", "f1", "deadline")]),
    ("arming, past deadline, not ticked", Tick(), {"f1": "arming+deadline"}, []),   # waits for its apply
    ("reverting", Tick(), {"f1": "reverting"}, []),
    ("undo failed", Tick(), {"f1": "reverting+retry"}, []),
    ("undo failed, retry due", Tick(), {"f1": "reverting"},
     [publish(("f1", "reverting")), ("Undo", "f1", "revert")]),
    ("empty", Tick(), {}, []),
    # restore
    ("empty", Restore((LEFT,)), {"f7": "reverting"},
     [publish(("f7", "reverting")), ("Undo", "f7", "agent-restart")]),
    ("empty", Restore(()), {}, []),
    ("empty", Restore((LEFT._replace(phase=Phase.ARMING),), EndReason.AGENT_HUNG), {"f7": "reverting"},
     [publish(("f7", "reverting")), ("Undo", "f7", "agent-hung")]),
]


def row_id(row: tuple[str, Event, dict[str, str], list[tuple[Any, ...]]]) -> str:
    return f"{row[0]}: {type(row[1]).__name__}"


@pytest.mark.parametrize(("state", "event", "after", "actions"), TABLE, ids=[row_id(row) for row in TABLE])
def test_transition(state: str, event: Event, after: dict[str, str], actions: list[tuple[Any, ...]]) -> None:
    machine = STATES[state]()
    done = machine.handle(event)
    assert [action(a) for a in done] == actions
    assert leases(machine) == after


# (state, event) -> a refusal whose message says this; the book is left as it was, nothing to do
REFUSALS: list[tuple[str, Event, str]] = [
    *[("empty", Inject(request(duration=bad)), "duration must be a number of seconds, > 0 and <= 604800")
      for bad in (0, 0.0, -1, -1e-9, math.nan, math.inf, -math.inf, 1e10, MAX_DURATION + 1, True, "5", None)],
    ("arming", Inject(A_AGAIN), "/a already has fault f1 (write-stall) on the same device"),
    ("active", Inject(A_AGAIN), "faults there are not stacked: revert f1 first"),
    ("reverting", Inject(A_AGAIN), "fault f1 (write-stall) on /a is being reverted"),
    ("undo failed", Inject(A_AGAIN), "being reverted; inject again once guest-fault-list no longer shows it"),
    ("apply failed", Inject(A_AGAIN), "is being reverted"),
    ("active", Revert("f9"), "no active fault 'f9'; guest-fault-list shows the active ones"),
    ("reverting", Revert(""), "no active fault ''"),
    ("empty", Revert("f1"), "no active fault 'f1'"),
]


@pytest.mark.parametrize(("state", "event", "message"), REFUSALS,
                         ids=[f"{row[0]}: {row[1]!r}"[:80] for row in REFUSALS])
def test_refusal(state: str, event: Event, message: str) -> None:
    machine = STATES[state]()
    before, serial, next_id = leases(machine), machine.book.serial, machine.book.next_id
    with pytest.raises(Refused, match=message.replace("(", r"\(").replace(")", r"\)")):
        machine.handle(event)
    assert (leases(machine), machine.book.serial, machine.book.next_id) == (before, serial, next_id)


def test_every_event_has_rows_and_every_state_is_used() -> None:
    kinds = {type(row[1]) for row in TABLE} | {type(row[1]) for row in REFUSALS}
    assert kinds >= {Inject, Applied, Revert, Undone, Tick, Restore, RefusedEarly}
    assert {row[0] for row in TABLE} | {row[0] for row in REFUSALS} == set(STATES)


def test_revert_counts_what_it_began_to_end() -> None:
    for state, event, count in [("two active", Revert(None), 2), ("one active, one arming", Revert(None), 2),
                                ("arming", Revert("f1"), 1), ("arming, revert asked", Revert("f1"), 0),
                                ("reverting", Revert("f1"), 0), ("undo failed", Revert(None), 0),
                                ("empty", Revert(None), 0)]:
        machine = STATES[state]()
        machine.handle(event)
        assert machine.reverted == count, state


def test_a_failed_undo_is_retried_every_retry_seconds_until_it_works() -> None:
    machine = STATES["undo failed"]()
    for _ in range(3):
        assert machine.book.next_wakeup() == machine.clock.monotonic() + RETRY
        machine.handle(Later(RETRY / 2))
        assert machine.handle(Tick()) == []
        machine.handle(Later(RETRY / 2))
        retried = [action(a) for a in machine.handle(Tick())]
        assert retried == [publish(("f1", "reverting")), ("Undo", "f1", "revert")]
        assert machine.book.next_wakeup() is None   # the undo is out
        machine.handle(Undone("f1", "thaw: EIO"))
    machine.handle(Later(RETRY))
    machine.handle(Tick())
    done = [action(a) for a in machine.handle(Undone("f1"))]
    assert done == [publish(), ("Record", "reverted", "f1", "revert")]
    assert machine.book.leases == {} and machine.book.next_wakeup() is None


# state -> next_wakeup, as an offset from the state's clock (None: nothing to wake for)
WAKEUPS: dict[str, float | None] = {
    "empty": None,
    "arming": DURATION,                              # its deadline, in case the apply is slow
    "arming, revert asked": None,                    # ends when its apply returns
    "arming, past deadline": None,
    "arming, past deadline, not ticked": 0.0,        # due now
    "active": DURATION,
    "active, past deadline": 0.0,
    "two active": DURATION,
    "one active, one arming": DURATION,
    "reverting": None,                               # its undo is out
    "expiring": None,
    "undo failed": RETRY,
    "undo failed, retry due": 0.0,
    "apply failed": None,
    "restored": None,
}


@pytest.mark.parametrize("state", list(STATES))
def test_next_wakeup(state: str) -> None:
    machine = STATES[state]()
    wakeup, offset = machine.book.next_wakeup(), WAKEUPS[state]
    if offset is None:
        assert wakeup is None
        return
    assert wakeup is not None
    started = 100.0   # the first lease's start; the others are checked against the clock
    due = started + DURATION if offset == DURATION else machine.clock.monotonic() + offset
    assert wakeup == pytest.approx(due)


@pytest.mark.parametrize("state", list(STATES))
def test_every_state_publishes_what_reads_back(state: str) -> None:
    machine = STATES[state]()
    snapshot = machine.book.snapshot()
    read, next_id = parse_leases(snapshot)
    assert next_id == machine.book.next_id
    assert [(lease.id, lease.phase, lease.undo, lease.device) for lease in read] == \
        [(lease.id, lease.phase, lease.undo, lease.device) for lease in machine.book.leases.values()]


# state -> the keeper's deadline (monotonic) in its snapshot, as an offset from the clock
KEEPER: dict[str, float | None] = {
    "empty": None,
    "arming": DURATION,
    "active": DURATION,
    "reverting": UNDO_ALLOWANCE,      # an undo under way gets its allowance
    "undo failed": RETRY,             # then the retry
    "restored": UNDO_ALLOWANCE,
}


@pytest.mark.parametrize("state", list(KEEPER))
def test_the_keeper_deadline(state: str) -> None:
    machine = STATES[state]()
    offset = KEEPER[state]
    deadline = keeper_deadline(machine.book.snapshot())
    assert deadline == (None if offset is None else pytest.approx(machine.clock.monotonic() + offset))


def test_snapshot_serials_increase_over_a_whole_life() -> None:
    machine = Machine()
    serials = []
    for event in (Inject(A), Applied("f1"), Inject(B), Revert(None), Undone("f1", "EIO"), Applied("f2"),
                  Later(RETRY), Tick(), Undone("f1"), Undone("f2")):
        serials += [a.snapshot["serial"] for a in machine.handle(event) if isinstance(a, Publish)]
    assert serials == sorted(serials) and len(set(serials)) == len(serials) >= 8
    assert machine.book.leases == {}


def test_a_new_lease_never_takes_the_id_of_a_restored_one() -> None:
    """A restored io-stall whose undo keeps failing, then two injects: before the fix the second
    was f2 too and replaced it, so the stalled device was never resumed."""
    machine = feed(Restore((LEFT._replace(id="f2"),)), Undone("f2", "dm-resume: EIO"))()
    ids = [machine.book.inject(request, machine.now())[0].id for request in (A, B)]
    assert ids == ["f3", "f4"]
    assert machine.book.leases["f2"].kind == "io-stall"
    assert machine.book.snapshot()["next-id"] == 5


def test_a_deadline_is_always_finite_and_in_range() -> None:
    for build in STATES.values():
        for lease in build().book.leases.values():
            assert math.isfinite(lease.deadline_mono) and 0 < lease.duration <= MAX_DURATION
            assert lease.deadline_mono == lease.started_mono + lease.duration


SETTLING: dict[str, list[str]] = {
    "empty": [], "arming": ["f1"], "arming, revert asked": ["f1"], "active": [], "reverting": ["f1"],
    "undo failed": [], "undo failed, retry due": [], "one active, one arming": ["f2"], "restored": ["f7"],
}


@pytest.mark.parametrize("state", SETTLING)
def test_settling_is_what_a_revert_waits_for(state: str) -> None:
    """guest-fault-revert returns once these are gone: a lease still applying or being undone
    (a plan's step reverted as it starts was listed after its plan's revert had returned)."""
    book = STATES[state]().book
    assert book.settling([*book.leases, "f99"]) == SETTLING[state]
