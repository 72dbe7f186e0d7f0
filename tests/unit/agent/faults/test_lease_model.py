"""The lease book under random interleavings, against the model fault kernel.

Hypothesis drives :class:`LeaseBook` through a driver as small as the engine's
(:mod:`pyqga.agent.faults.engine`: it runs steps with the engine's own ``recipes.run_steps`` and
``undo_order``), but whose apply and undo jobs wait until the test runs them, in any order:
injects of several kinds on a few devices (two of them sharing one; workers too: a spawn and its
reap, on the devices ``cpu`` and ``memory``), with durations in and out
of range, reverts of one lease or all (also while it is still being applied), time passing with
and without a tick, failures of any step before or after its change, and the agent dying, with
or without its keeper undoing what the last snapshot holds, then a new agent restoring from it.
After every step it checks the invariants of :mod:`pyqga.agent.faults.machine`:

- the kernel is exactly what the applied leases make it (every other resource as it started);
- a keeper that runs the undo steps of the last published snapshot, now, restores the kernel
  (so a lease is published before its apply runs, and removed only after its undo worked);
- no two leases on one device; every deadline finite, 0 < duration <= a week;
- no lease is undone more times than it was applied (by the kernel's own count of changes);
- every published snapshot reads back (:func:`parse_leases`) and its serial increases.

And once time passes beyond every deadline and retry with failures off: the book is empty, the
kernel as it started, every applied change undone exactly once, and every lease has an end in
the timeline.  No root, no threads.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from typing import Any, NamedTuple

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from pyqga.agent.faults.clock import set_step
from pyqga.agent.faults.dm import TableLine
from pyqga.agent.faults.machine import LeaseBook, Refused
from pyqga.agent.faults.recipes import ATOMIC, run_step, run_steps, table_step, undo_order
from pyqga.agent.faults.snapshot import keeper_deadline, parse_leases
from pyqga.agent.faults.vocabulary import (
    MAX_DURATION,
    SPAWN_WAIT,
    Action,
    Apply,
    EndReason,
    Event,
    Lease,
    Now,
    Phase,
    Prepared,
    Publish,
    Record,
    Undo,
)
from tests.rig.model_kernel import FAULT_OPS, MODEL_BOOT, ModelClock, ModelFaultKernel

FILESYSTEMS = {"/m1": 10_000, "/m2": 5_000, "/logs": 8_000}
LINEAR_DATA = [TableLine(0, 2048, "linear", "8:16 0")]
LINEAR_LOGS = [TableLine(0, 1024, "linear", "8:32 0"), TableLine(1024, 1024, "linear", "8:48 0")]
DEVICES = {"vg-data": LINEAR_DATA, "vg-logs": LINEAR_LOGS}
# what each lease device holds in the model kernel (/logs is on vg-logs)
RESOURCES = {"8:1": ("fs:/m1",), "8:2": ("fs:/m2",), "254:0": ("dm:vg-data",),
             "254:1": ("fs:/logs", "dm:vg-logs"), "clock": ("clock",)}
FLAKEY = [TableLine(0, 2048, "flakey", "8:16 0 1 1")]
CORRUPT = [TableLine(0, 2048, "flakey", "8:32 0 0 5 1 corrupt_bio_byte 32 r 1 0")]


Steps = tuple[dict[str, Any], ...]


def recipe(name: str, serial: int) -> tuple[str, str, str, Steps, Steps]:
    """(kind, target, device, apply, undo) as kinds.py and block.py build them."""
    # the clock kinds' undo, from the model clock's reference (no model time passes here)
    clock_set = set_step(ModelFaultKernel({}, {}).reference(), 0.0, MODEL_BOOT)
    fill = {"op": "fill", "path": f"/{name.split('@')[1]}/.pyqga-fill-{serial}", "free-bytes": 1000}
    token = f"t{serial}"   # resources.py draws a random one per inject
    recipes: dict[str, tuple[str, Steps, Steps]] = {
        "write-stall@m1": ("8:1", ({"op": "freeze", "path": "/m1"},), ({"op": "thaw", "path": "/m1"},)),
        "disk-full@m1": ("8:1", (fill,), ({"op": "unlink", "path": fill["path"]},)),
        "write-stall@m2": ("8:2", ({"op": "freeze", "path": "/m2"},), ({"op": "thaw", "path": "/m2"},)),
        "disk-full@m2": ("8:2", (fill,), ({"op": "unlink", "path": fill["path"]},)),
        "io-stall@data": ("254:0", ({"op": "dm-suspend", "name": "vg-data"},),
                          ({"op": "dm-resume", "name": "vg-data"},)),
        "io-error@data": ("254:0", (table_step("vg-data", FLAKEY),), (table_step("vg-data", LINEAR_DATA),)),
        # two steps, so an apply can fail half-way: a table swap, then a freeze of the mount on it
        "corrupt@logs": ("254:1", (table_step("vg-logs", CORRUPT), {"op": "freeze", "path": "/logs"}),
                         (table_step("vg-logs", LINEAR_LOGS), {"op": "thaw", "path": "/logs"})),
        "clock-step@clock": ("clock", ({"op": "clock-step", "offset-ns": 3600 * 10**9},), (clock_set,)),
        "clock-skew@clock": ("clock", ({"op": "clock-rate", "tick": 10000, "freq": 500 << 16},),
                             ({"op": "clock-rate", "tick": 10000, "freq": 0}, clock_set)),
        "cpu-hog@cpu": ("cpu", ({"op": "spawn", "worker": "cpu-hog", "token": token,
                                 "args": {"processes": 1, "percent": 50, "period-ms": 100}},),
                        ({"op": "reap", "token": token},)),
        "memory-pressure@memory": ("memory", ({"op": "spawn", "worker": "memory", "token": token,
                                               "args": {"mib": 64}},), ({"op": "reap", "token": token},)),
    }
    device, apply, undo = recipes[name]
    kind, target = name.split("@")
    return kind, f"/{target}", device, apply, undo


RECIPES = ["write-stall@m1", "disk-full@m1", "write-stall@m2", "disk-full@m2", "io-stall@data",
           "io-error@data", "corrupt@logs", "clock-step@clock", "clock-skew@clock",
           "cpu-hog@cpu", "memory-pressure@memory"]
GOOD_DURATIONS = [0.5, 1.0, 3.0, 30.0, MAX_DURATION]
BAD_DURATIONS: list[Any] = [0, -1.0, math.nan, math.inf, -math.inf, 1e10, MAX_DURATION * 2, True, "5", None]
INVERSE = {"freeze": "thaw", "fill": "unlink", "dm-suspend": "dm-resume", "dm-table": "dm-table",
           "clock-step": "clock-set", "clock-rate": "clock-rate", "spawn": "reap"}


def resources(lease: Lease) -> tuple[str, ...]:
    """What a lease holds in the model kernel: its device's resources, or its worker (named by
    its undo's reap: a lease restored from a snapshot has no apply steps)."""
    return RESOURCES.get(lease.device) or tuple(f"worker:{step['token']}" for step in lease.undo
                                                 if step["op"] == "reap")


class Job(NamedTuple):
    """An apply or an undo the driver started and the test has not run yet (a thread's work)."""

    what: str     # "apply" or "undo"
    lease: Lease


class LeaseModel(RuleBasedStateMachine):
    @initialize()
    def boot(self) -> None:
        self.kernel = ModelFaultKernel(FILESYSTEMS, DEVICES)
        self.original = self.kernel.state()
        self.clock = ModelClock()
        self.events: list[Event] = []
        self.armed: list[str] = []
        self.fills = 0
        self.start_agent(None)

    # --- the driver --------------------------------------------------------------------------------

    def now(self) -> Now:
        return Now(self.clock.monotonic(), self.clock.time())

    def start_agent(self, saved: dict[str, Any] | None) -> None:
        """A new agent: a new book, no jobs, and what the state file (the last snapshot) holds
        undone, as the engine's start does."""
        self.book = LeaseBook()
        self.jobs: list[Job] = []
        self.last: dict[str, Any] | None = saved
        self.serial = 0
        if saved is not None:
            leases, self.book.next_id = parse_leases(saved)
            self.perform(self.book.restore(leases, EndReason.AGENT_RESTART, self.now()))

    def perform(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Publish):
                snapshot = action.snapshot
                assert snapshot["serial"] > self.serial, "a snapshot older than one already published"
                parse_leases(snapshot)
                self.serial, self.last = snapshot["serial"], dict(snapshot)
            elif isinstance(action, Record):
                assert not self.events or action.event.mono >= self.events[-1].mono
                self.events.append(action.event)
                if action.event.name == "armed":
                    assert action.event.lease is not None
                    self.armed.append(action.event.lease)
            elif isinstance(action, Apply):
                assert self.published_phase(action.lease.id) == "arming", "applied before it was published"
                self.jobs.append(Job("apply", action.lease))
            else:
                assert isinstance(action, Undo)
                assert self.published_phase(action.lease.id) == "reverting", "undone before it was published"
                assert not any(job.lease.id == action.lease.id for job in self.jobs), "two jobs for one lease"
                self.jobs.append(Job("undo", action.lease))

    def published_phase(self, lease_id: str) -> str | None:
        leases = [] if self.last is None else self.last["leases"]
        return next((lease["phase"] for lease in leases if lease["id"] == lease_id), None)

    def run(self, job: Job) -> None:
        self.jobs.remove(job)
        lease = self.book.leases[job.lease.id]
        self.kernel.job = f"{lease.id} {job.what}"
        try:
            if job.what == "apply":
                assert self.published_phase(lease.id) == "arming"
                error, changed = run_steps(lease.apply, self.kernel)
                # a failed apply that changed nothing has nothing to undo
                ends = changed if error is not None else (lease.revert_reason is not None
                                                          or self.clock.monotonic() >= lease.deadline_mono)
                actions = self.book.applied(lease.id, self.now(), error, changed)
                # a revert (or the deadline) that came while it was applied runs right away
                assert any(isinstance(a, Undo) and a.lease.id == lease.id for a in actions) == ends
            else:
                error, _ = run_steps(undo_order(lease.undo), self.kernel)
                actions = self.book.undone(lease.id, self.now(), error)
        finally:
            self.kernel.job = "?"
        self.perform(actions)

    # --- rules -------------------------------------------------------------------------------------

    @rule(name=st.sampled_from(RECIPES), duration=st.sampled_from(GOOD_DURATIONS))
    def inject(self, name: str, duration: float) -> None:
        self.fills += 1
        kind, target, device, apply, undo = recipe(name, self.fills)
        holder = self.book.holder(device)
        try:
            request = Prepared(kind, target, {}, device, apply, undo, duration)
            _, actions = self.book.inject(request, self.now())
        except Refused as e:
            assert holder is not None or len(self.book.leases) >= 64, e
            self.perform(self.book.refused(kind, target, str(e), self.now()))
            return
        assert holder is None, f"{device} stacked on {holder}"
        self.perform(actions)

    @rule(name=st.sampled_from(RECIPES), duration=st.sampled_from(BAD_DURATIONS))
    def inject_bad_duration(self, name: str, duration: Any) -> None:
        kind, target, device, apply, undo = recipe(name, 0)
        leases, serial, state = dict(self.book.leases), self.book.serial, self.kernel.state()
        try:
            self.book.inject(Prepared(kind, target, {}, device, apply, undo, duration), self.now())
        except Refused as e:
            assert "duration" in str(e) or self.book.holder(device) is not None
        else:
            raise AssertionError(f"duration {duration!r} accepted")
        assert (self.book.leases, self.book.serial, self.kernel.state()) == (leases, serial, state)

    @precondition(lambda self: self.jobs)
    @rule(index=st.integers(0, 20))
    def run_job(self, index: int) -> None:
        self.run(self.jobs[index % len(self.jobs)])

    @rule(which=st.integers(0, 5))
    def revert(self, which: int) -> None:
        ids = list(self.book.leases)
        lease_id = None if which == 0 else ids[which % len(ids)] if ids and which < 4 else f"f{900 + which}"
        try:
            count, actions = self.book.revert(lease_id, EndReason.REVERT, self.now())
        except Refused:
            assert lease_id not in self.book.leases
            return
        assert count <= (1 if lease_id else len(ids))
        self.perform(actions)

    @rule(seconds=st.sampled_from([0.1, 0.5, 1.0, 2.0, 5.0, 40.0]), tick=st.booleans())
    def time_passes(self, seconds: float, tick: bool) -> None:
        """The engine's timer ticks at next_wakeup; without a tick, the agent is hung."""
        self.clock.advance(seconds)
        if tick:
            self.perform(self.book.tick(self.now()))

    @rule(op=st.sampled_from(FAULT_OPS), after=st.booleans())
    def fail_next(self, op: str, after: bool) -> None:
        # One ioctl or kill(2) that fails changed nothing (recipes.ATOMIC): no failure after it.
        self.kernel.fail_next(op, after=after and op not in ATOMIC)

    @rule(keeper=st.booleans())
    def agent_dies(self, keeper: bool) -> None:
        """SIGKILL (or hung, and the keeper killed it): jobs never return.  The keeper, if it
        acts, undoes what the last snapshot holds; then a new agent restores from it."""
        saved = self.last
        if keeper and saved is not None:
            for lease in parse_leases(saved)[0]:
                self.kernel.job = f"{lease.id} keeper"
                run_steps(undo_order(lease.undo), self.kernel)
            self.kernel.job = "?"
        self.start_agent(saved)

    @rule()
    def settle(self) -> None:
        """Failures off; run every job and let time pass until nothing is left: then everything
        is as it started, and every lease was undone as many times as it was applied."""
        self.kernel.failures.clear()
        for _ in range(1000):
            if self.jobs:
                self.run(self.jobs[0])
                continue
            due = self.book.next_wakeup()
            if due is None:
                break
            self.clock.now = max(self.clock.now, due)
            self.perform(self.book.tick(self.now()))
        assert self.book.leases == {}, self.book.leases
        assert self.kernel.state() == self.original
        assert self.last is None or self.last["leases"] == []
        self.check_undone(exactly=True)
        ends = Counter(e.lease for e in self.events if e.name in ("reverted", "expired"))
        refused = {e.lease for e in self.events if e.name == "refused" and e.lease is not None}
        for lease_id in self.armed:
            assert ends[lease_id] == 1 or (lease_id in refused and ends[lease_id] <= 1), \
                (lease_id, [e for e in self.events if e.lease == lease_id])

    def teardown(self) -> None:
        if hasattr(self, "book"):
            self.settle()

    # --- invariants --------------------------------------------------------------------------------

    @invariant()
    def one_lease_a_device_and_finite_deadlines(self) -> None:
        devices = [lease.device for lease in self.book.leases.values()]
        assert len(devices) == len(set(devices)), devices
        for lease in self.book.leases.values():
            assert 0 < lease.duration <= MAX_DURATION and math.isfinite(lease.deadline_mono)
            assert lease.deadline_mono == lease.started_mono + lease.duration

    @invariant()
    def kernel_is_what_the_applied_leases_make_it(self) -> None:
        expected = ModelFaultKernel(FILESYSTEMS, DEVICES)
        unknown: set[str] = set()   # resources of leases half-way through an apply or undo
        for lease in self.book.leases.values():
            if lease.phase is Phase.ACTIVE:
                for step in lease.apply:
                    run_step(step, expected)
            elif lease.phase is Phase.REVERTING:
                unknown.update(resources(lease))
            else:   # arming: its apply has not run yet (a driver runs it and reports at once)
                assert any(job.lease.id == lease.id for job in self.jobs)
        want, have = expected.state(), self.kernel.state()
        for resource in set(want) | set(have):   # a worker that should not run is a key too many
            if resource not in unknown:
                assert have.get(resource) == want.get(resource), resource

    @invariant()
    def the_keeper_can_restore_everything_now(self) -> None:
        """If the agent died this instant, the last snapshot's undo steps restore the kernel."""
        twin = self.kernel.clone()
        if self.last is not None:
            for lease in parse_leases(self.last)[0]:
                assert run_steps(undo_order(lease.undo), twin)[0] is None
        assert twin.state() == self.original

    @invariant()
    def never_undone_more_than_applied(self) -> None:
        self.check_undone(exactly=False)

    @invariant()
    def the_keeper_never_waits_past_a_deadline(self) -> None:
        """A hung agent's keeper acts by the earliest deadline of a lease that is not reverting;
        while a worker starts (arming, a spawn), by the end of the spawn's wait if that is later."""
        if self.last is not None and self.last["leases"]:
            deadline = keeper_deadline(self.last)
            assert deadline is not None and math.isfinite(deadline)
            for lease in parse_leases(self.last)[0]:
                if lease.phase is Phase.ARMING and any(step["op"] == "reap" for step in lease.undo):
                    assert deadline <= max(lease.deadline_mono, lease.started_mono + SPAWN_WAIT + 1.0)
                elif lease.phase is not Phase.REVERTING:
                    assert deadline <= lease.deadline_mono

    def check_undone(self, exactly: bool) -> None:
        """Per lease and op: changes made by its undos (the agent's or the keeper's) <= the
        changes its applies made (== once everything has settled)."""
        done: Counter[tuple[str, str, str]] = Counter()
        undone: Counter[tuple[str, str, str]] = Counter()
        for change in self.kernel.changes:
            lease_id, _, who = change.job.partition(" ")
            if who == "apply":
                done[lease_id, INVERSE[change.op], change.target] += 1
            else:
                assert who in ("undo", "keeper"), change
                undone[lease_id, change.op, change.target] += 1
        for key, count in undone.items():
            assert count <= done[key], (key, self.kernel.changes)
        if exactly:
            assert undone == done, (done, undone)


LeaseModel.TestCase.settings = settings(
    max_examples=int(os.environ.get("PYQGA_MODEL_EXAMPLES", "400")), stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
test_lease_model = LeaseModel.TestCase
