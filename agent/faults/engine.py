"""The driver around the lease book: one lock, the deadline timer, the state file, the timeline
and the keeper.

A request takes the lock only to ask the book (:class:`~.machine.LeaseBook`) what to do; the
actions run outside it, in order, on the caller's thread: publish (state file, then the keeper)
before a fault's apply steps run, record events, run apply and undo steps through the kernel
port (:mod:`.recipes`), and feed what came of them back to the book.  So a slow apply (a
FIFREEZE with dirty data, a table swap that flushes) never holds up ``guest-fault-list``.

The timer thread sleeps until the book's next deadline (a condition variable, no polling: an
idle agent makes no wake-ups) and ends what is due.  A revert is synchronous: it returns when
the undo steps have run.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar

from pyqga.agent.faults import plan as plans
from pyqga.agent.faults.kinds import Context, Spec
from pyqga.agent.faults.machine import LeaseBook, Refused, leases_view
from pyqga.agent.faults.recipes import FaultKernel, LinuxFaultKernel, run_steps, undo_order
from pyqga.agent.faults.snapshot import FAULTS_STATE, parse_leases
from pyqga.agent.faults.timeline import Timeline, read_boot_id
from pyqga.agent.faults.tokens import token_hex
from pyqga.agent.faults.vocabulary import (
    SPAWN_WAIT,
    Action,
    Apply,
    EndReason,
    Lease,
    Now,
    Prepared,
    Publish,
    Record,
    Undo,
)
from pyqga.agent.freeze.snapshot import CorruptState
from pyqga.agent.freeze.statefile import StateFile

PLAN_KIND = "plan"   # the kind of a plan's own lease (it holds no device, its faults do)
PLAN_MARGIN = 1.0    # a plan's lease outlives its last fault's deadline by this much
REVERT_WAIT = SPAWN_WAIT + 5.0   # the longest a revert waits for an apply in flight (a worker's start)
_F = TypeVar("_F")


class KeeperLink(Protocol):
    """What the engine needs of the keeper handle (:class:`pyqga.agent.keeper.handle.KeeperHandle`)."""

    def ensure_started(self) -> None: ...
    def send(self, snapshot: Mapping[str, Any]) -> None: ...


def now() -> Now:
    return Now(time.monotonic(), time.time())


class FaultEngine:
    """The agent's faults (see the module docstring)."""

    def __init__(self, statedir: str, keeper: KeeperLink | None, kernel: FaultKernel | None = None,
                 log: logging.Logger | None = None, clock: Callable[[], Now] = now,
                 kinds: bool = True) -> None:
        self.statedir: str = statedir
        self.keeper: KeeperLink | None = keeper
        self.kernel: FaultKernel = kernel or LinuxFaultKernel()
        self.log: logging.Logger = log or logging.getLogger("pyqga.agent")
        self.clock: Callable[[], Now] = clock
        self.book: LeaseBook = LeaseBook()
        self.store: StateFile = StateFile(statedir, FAULTS_STATE)
        self.timeline: Timeline = Timeline(statedir)
        self.boot_id: str = read_boot_id()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._publishing = threading.Lock()
        self._published = 0
        self._stopped = False
        self._timer: threading.Thread | None = None
        self._plans: dict[str, threading.Event] = {}   # plan lease id -> set to cancel its runner
        # The kinds (their modules: device-mapper, nftables and netem, the clock, workers) only in
        # an agent that takes faults (``kinds``): one that does not never prepares a fault, but
        # still undoes what an earlier agent left.  Imported here, at start-up, never in a freeze.
        self._prepare: Callable[[str, str, Mapping[str, Any] | None, bool, Context], Spec] | None = None
        self._kinds: Callable[[str | None, Context], list[dict[str, Any]]] | None = None
        if kinds:
            from pyqga.agent.faults import catalog
            self._prepare, self._kinds = catalog.prepare, catalog.capabilities

    # --- life cycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Read what an earlier agent left (its leases are undone: nobody holds them now), then
        start the deadline timer.  Call after the freezer's start, which waits for an earlier
        keeper to finish."""
        self.timeline.load()
        left: list[Lease] = []
        try:
            saved = self.store.read()
            if saved is not None:
                left, next_id = parse_leases(saved)
                self.book.next_id = next_id
        except CorruptState as e:
            self.log.error("fault state file unreadable, faults it held are unknown: %s", e)
        if left:
            self.log.warning("undoing %d fault(s) an earlier agent left: %s", len(left),
                             ", ".join(f"{lease.id} ({lease.kind} on {lease.target})" for lease in left))
            with self._lock:
                actions = self.book.restore(left, EndReason.AGENT_RESTART, self.clock())
            self._drive(actions)
        self._timer = threading.Thread(target=self._run_timer, name="pyqga-fault-timer", daemon=True)
        self._timer.start()

    def shutdown(self) -> None:
        """The agent is stopping: end every fault (what fails stays with the keeper)."""
        with contextlib.suppress(Refused):
            self.revert(None, EndReason.AGENT_EXIT)
        with self._lock:
            self._stopped = True
            self._wake.notify_all()

    def republish(self) -> None:
        """Publish the current state again (a restarted keeper has none): a fresh snapshot, so
        one prepared before it and not yet sent is dropped rather than sent after it."""
        with self._lock:
            snapshot = self.book.snapshot()
        self._publish(snapshot)

    # --- requests --------------------------------------------------------------------------------

    def inject(self, kind: str, target: str, duration: float, params: Mapping[str, Any] | None = None,
               force: bool = False, plan: str | None = None, seed: int | None = None) -> dict[str, Any]:
        """Start a fault; its lease as the wire shows it.  :class:`Refused` (also recorded)
        when it may not start, an error naming the failed step when the kernel refused it.
        With ``seed``, ``duration`` and param values may be choices (:mod:`.plan`)."""
        try:
            if seed is not None:
                rng = random.Random(seed)
                duration = plans.resolve(duration, rng, "duration")
                params = plans.resolve_params(params, rng, kind)
            spec = self._kinds_on(self._prepare)(kind, target, params, force, Context.read(self.statedir))
            self._need_keeper()
            request = Prepared(kind, target, spec.params, spec.device, spec.apply, spec.undo, duration, plan)
            with self._lock:
                if plan is not None and plan not in self._plans:
                    # Reverted while this step was on its way: _end_plan has collected the plan's
                    # faults already, so a fault armed now would outlive the plan.
                    raise Refused(f"plan {plan} has ended; its step was not started")
                lease, actions = self.book.inject(request, self.clock())
                self._wake.notify_all()
        except Refused as e:
            with self._lock:
                refusal = self.book.refused(str(kind), str(target), str(e), self.clock())
            self._drive(refusal)
            raise
        failed = self._drive(actions).get(lease.id)
        if failed is not None:
            raise Refused(f"{kind} on {target} failed (what it had done is undone): {failed}")
        return {"id": lease.id, "kind": lease.kind, "target": lease.target,
                "deadline": round(lease.deadline, 6), "duration": lease.duration}

    def _need_keeper(self) -> None:
        """The keeper running (started now if it is not yet); :class:`Refused` if it cannot be."""
        if self.keeper is None:
            raise Refused("faults need the keeper, which ends them if the agent dies or hangs; "
                          "it runs under --on-agent-death thaw (the default)")
        try:
            self.keeper.ensure_started()
        except OSError as e:
            raise Refused(f"cannot start the keeper, refusing the fault: {e}") from None

    def plan(self, seed: int, steps: list[Any], repeat: int = 1,
             start: float | None = None) -> dict[str, Any]:
        """Run a seeded plan on this agent's clock; the plan is itself a lease (reverting it
        cancels its future steps and ends the faults it started).  Its id, its schedule and the
        schedule's digest.  ``start``: the plan's origin on this agent's CLOCK_MONOTONIC, for a
        host that starts several guests' plans together (default: now)."""
        schedule = plans.build(seed, steps, repeat)
        ahead = 0.0 if start is None else plans.check_start(start, self.clock().mono)
        self._need_keeper()   # before the plan's clock starts (with a start ahead: meanwhile)
        about = {"seed": seed, "hash": schedule.digest, "faults": len(schedule.entries)}
        request = Prepared(PLAN_KIND, PLAN_KIND, about, f"plan:{token_hex(6)}", (), (),
                           ahead + schedule.span + PLAN_MARGIN)
        with self._lock:
            lease, actions = self.book.inject(request, self.clock())
            cancel = self._plans[lease.id] = threading.Event()
            self._wake.notify_all()
        self._drive(actions)
        origin = lease.started_mono if start is None else start
        threading.Thread(target=self._run_plan, args=(lease, schedule, cancel, origin),
                         name=f"pyqga-plan-{lease.id}", daemon=True).start()
        return {"id": lease.id, "hash": schedule.digest, "deadline": round(lease.deadline, 6),
                "faults": len(schedule.entries), "start": round(origin, 6),
                "schedule": [entry.as_dict() for entry in schedule.entries]}

    def _run_plan(self, lease: Lease, schedule: plans.Schedule, cancel: threading.Event,
                  origin: float) -> None:
        """Start each fault at its time after the plan's origin; a refused one is in the timeline."""
        for entry in sorted(schedule.entries, key=lambda e: e.at):
            if cancel.wait(max(0.0, origin + entry.at - self.clock().mono)):
                return
            with contextlib.suppress(Refused):
                self.inject(entry.kind, entry.target, entry.duration, entry.params, plan=lease.id)

    def _end_plan(self, plan_id: str) -> None:
        """A plan's lease is ending: no more steps, and the faults it started end with it."""
        with self._lock:
            cancel = self._plans.pop(plan_id, None)
            children = [lease.id for lease in self.book.leases.values() if lease.plan == plan_id]
        if cancel is not None:
            cancel.set()
        for child in children:
            with contextlib.suppress(Refused):
                self.revert(child, EndReason.PLAN)

    def revert(self, lease_id: str | None, reason: EndReason = EndReason.REVERT) -> int:
        """End one lease or all; how many this call ended.  Returns once they are over, so a
        host that lists right after sees them gone: a lease still being applied (a plan's step
        that just started) ends when its apply returns, on the applying thread, and this call
        waits for that too (at most :data:`REVERT_WAIT`; a failed undo stays listed)."""
        with self._lock:
            chosen = [lease_id] if lease_id is not None else list(self.book.leases)
            count, actions = self.book.revert(lease_id, reason, self.clock())
        self._drive(actions)
        with self._lock:
            self._wake.wait_for(lambda: not self.book.settling(chosen), REVERT_WAIT)
        return count

    def leases(self) -> list[dict[str, Any]]:
        with self._lock:
            return leases_view(self.book.leases, self.clock())

    def events(self, since: int = 0) -> dict[str, Any]:
        """The timeline after ``since``, and ``mono``, this agent's CLOCK_MONOTONIC now: a host
        maps the events' ``mono`` to its own clock by the round trip of this call."""
        return {**self.timeline.since(since), "mono": round(self.clock().mono, 6)}

    def capabilities(self, target: str | None = None) -> dict[str, Any]:
        kinds = self._kinds_on(self._kinds)(target, Context.read(self.statedir))
        return {"kinds": kinds, "boot-id": self.boot_id}

    @staticmethod
    def _kinds_on(function: _F | None) -> _F:
        """``function``, if this engine takes faults (the commands' gate refuses them before)."""
        if function is None:
            raise Refused("fault injection is off in this agent")
        return function

    # --- the actions -----------------------------------------------------------------------------

    def _drive(self, actions: list[Action]) -> dict[str, str]:
        """Perform actions in order; what an apply or undo returns adds the book's next ones.
        Returns why each apply that failed failed, by lease id (its fault was rolled back)."""
        failed: dict[str, str] = {}
        queue = deque(actions)
        while queue:
            action = queue.popleft()
            if isinstance(action, Publish):
                self._publish(action.snapshot)
            elif isinstance(action, Record):
                self.timeline.append(action.event.as_dict(self.boot_id))
            elif isinstance(action, Apply):
                error, changed = run_steps(action.lease.apply, self.kernel)
                if error is not None:
                    failed[action.lease.id] = error
                    self.log.error("fault %s (%s on %s) failed: %s", action.lease.id, action.lease.kind,
                                   action.lease.target, error)
                with self._lock:
                    queue.extend(self.book.applied(action.lease.id, self.clock(), error, changed))
                    self._wake.notify_all()
            elif isinstance(action, Undo):
                if action.lease.kind == PLAN_KIND:
                    self._end_plan(action.lease.id)
                error, _ = run_steps(undo_order(action.lease.undo), self.kernel)
                if error is not None:
                    self.log.error("could not undo fault %s (%s on %s), retrying: %s", action.lease.id,
                                   action.lease.kind, action.lease.target, error)
                with self._lock:
                    queue.extend(self.book.undone(action.lease.id, self.clock(), error))
                    self._wake.notify_all()
        return failed

    def _publish(self, snapshot: Mapping[str, Any]) -> None:
        """State file, then keeper; an older snapshot than one already written is dropped."""
        with self._publishing:
            if snapshot["serial"] <= self._published:
                return
            self._published = snapshot["serial"]
            try:
                self.store.write(snapshot)
            except OSError as e:
                self.log.error("cannot write the fault state file: %s", e)
            if self.keeper is not None:
                try:
                    self.keeper.send(snapshot)
                except OSError as e:
                    self.log.error("cannot tell the keeper about faults: %s", e)

    def _run_timer(self) -> None:
        while True:
            with self._lock:
                while not self._stopped:
                    due = self.book.next_wakeup()
                    moment = self.clock()
                    if due is not None and due <= moment.mono:
                        break
                    self._wake.wait(None if due is None else due - moment.mono)
                if self._stopped:
                    return
                actions = self.book.tick(self.clock())
            # On a thread of its own: a slow undo (a table swap flushing a deep queue) must not
            # hold up the next deadline.  The book does not offer a lease twice meanwhile.
            threading.Thread(target=self._drive, args=(actions,), name="pyqga-fault-end", daemon=True).start()
