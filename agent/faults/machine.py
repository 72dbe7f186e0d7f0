"""The lease book: the sans-IO core that owns every fault lease (h11's ``_state.py`` style).

Its drivers (:mod:`.engine` in the agent; the keeper reads only its snapshots) call one method
per thing that happened and perform the actions it returns, in order (:mod:`.vocabulary`).  It
reads no clock and touches no kernel: the time comes in as :class:`~.vocabulary.Now`.

Invariants (checked by ``tests/unit/agent/faults/test_lease_model.py``):

- a lease is published (state file, keeper) before its apply steps run, and its removal is
  published only after its undo steps succeeded;
- two leases never share a device: the second is refused, never stacked, also while the first
  is still being reverted;
- every lease has a finite deadline, 0 < duration <= :data:`~.vocabulary.MAX_DURATION`;
- every applied lease is undone exactly once successfully; a revert asked while it is still
  being applied runs as soon as the apply returns;
- a failed undo keeps the lease (phase reverting) and is retried every :data:`RETRY` seconds.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from pyqga.agent.errors import AgentFailure
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

RETRY = 1.0          # seconds between tries of a failed undo
# How long an undo may take before the keeper takes the agent for hung: a dm table swap flushes
# the I/O in flight, which under io-delay with a deep queue takes seconds.
UNDO_ALLOWANCE = 10.0
MAX_LEASES = 64      # at once; a plan's steps count one each while active
SNAPSHOT_VERSION = 1


class Refused(AgentFailure):
    """A request the book (or a kind's checks) will not start; the message says why and what to
    do instead."""


def check_duration(duration: float) -> float:
    """``duration`` if 0 < it <= a week and finite, else :class:`Refused` saying the range."""
    if isinstance(duration, bool) or not isinstance(duration, int | float) or not math.isfinite(duration) \
            or not 0 < duration <= MAX_DURATION:
        raise Refused(f"duration must be a number of seconds, > 0 and <= {MAX_DURATION:.0f} (a week), "
                      f"not {duration!r}")
    return float(duration)


class LeaseBook:
    """Every lease this agent holds, by id, in the order they were armed."""

    def __init__(self, next_id: int = 1) -> None:
        self.leases: dict[str, Lease] = {}
        self.next_id: int = next_id
        self.serial: int = 0   # of the latest snapshot, so a driver never writes an older one last

    # --- requests -----------------------------------------------------------------------------

    def inject(self, request: Prepared, now: Now) -> tuple[Lease, list[Action]]:
        """Arm a lease: publish it, then apply it.  :class:`Refused` if it may not start."""
        duration = check_duration(request.duration)
        holder = self.holder(request.device)
        if holder is not None:
            if holder.phase is Phase.REVERTING:
                raise Refused(f"fault {holder.id} ({holder.kind}) on {holder.target} is being reverted; "
                              "inject again once guest-fault-list no longer shows it")
            raise Refused(f"{request.target} already has fault {holder.id} ({holder.kind}) on the same "
                          f"device or process; faults there are not stacked: revert {holder.id} first")
        if len(self.leases) >= MAX_LEASES:
            raise Refused(f"{MAX_LEASES} faults are active, the most one agent holds; revert some first")
        lease = Lease(f"f{self.next_id}", request.kind, request.target, dict(request.params), request.device,
                      tuple(request.apply), tuple(request.undo), now.wall, now.mono, now.mono + duration,
                      duration, plan=request.plan)
        self.next_id += 1
        self.leases[lease.id] = lease
        return lease, [self._publish(), self._record("armed", lease, now), Apply(lease)]

    def refused(self, kind: str, target: str, detail: str, now: Now) -> list[Action]:
        """A request refused before it was armed: only a timeline entry."""
        return [Record(Event("refused", None, kind, target, now.mono, now.wall, detail=detail))]

    def revert(self, lease_id: str | None, reason: EndReason, now: Now) -> tuple[int, list[Action]]:
        """End one lease (or all, ``lease_id`` None); returns how many this call began to end.
        A lease still being applied ends as soon as its apply returns."""
        if lease_id is not None and lease_id not in self.leases:
            raise Refused(f"no active fault {lease_id!r}; guest-fault-list shows the active ones")
        chosen = [self.leases[lease_id]] if lease_id is not None else list(self.leases.values())
        count, actions = 0, list[Action]()
        for lease in chosen:
            if lease.phase is Phase.REVERTING or lease.revert_reason is not None:
                continue
            count += 1
            if lease.phase is Phase.ARMING:
                self.leases[lease.id] = lease._replace(revert_reason=reason)
            else:
                actions.append(self._begin_undo(lease, reason, now))
        if actions:
            actions.insert(0, self._publish())
        return count, actions

    def restore(self, leases: Iterable[Lease], reason: EndReason, now: Now) -> list[Action]:
        """Leases a predecessor left (read from the state file): undo each, since nobody holds
        them any more.  New ids start past theirs: a new lease must never replace one that is
        still being undone, nor reuse an id the timeline already has."""
        actions: list[Action] = []
        for lease in leases:
            self.leases[lease.id] = lease
            if lease.id[:1] == "f" and lease.id[1:].isdigit():
                self.next_id = max(self.next_id, int(lease.id[1:]) + 1)
            actions.append(self._begin_undo(lease, reason, now))
        return [self._publish(), *actions] if actions else []

    # --- what came of the actions ---------------------------------------------------------------

    def applied(self, lease_id: str, now: Now, error: str | None = None,
                changed: bool = True) -> list[Action]:
        """The lease's apply steps returned (``error``: the first that failed; the rest did not run).
        ``changed`` False: the failure left the kernel as it was (:func:`.recipes.run_steps`), so
        there is nothing to roll back, and an undo could only reverse someone else's change (a
        thaw of a freeze that made our FIFREEZE fail with EBUSY)."""
        lease = self.leases[lease_id]
        assert lease.phase is Phase.ARMING, lease
        if error is not None:
            refused = self._record("refused", lease, now, detail=error)
            if not changed:
                del self.leases[lease_id]
                return [refused, self._publish()]
            return [refused, *self._end(lease, EndReason.FAILED, now)]
        reason = lease.revert_reason or (EndReason.DEADLINE if now.mono >= lease.deadline_mono else None)
        fired = self._record("fired", lease, now)
        if reason is not None:
            return [fired, *self._end(lease, reason, now)]
        self.leases[lease_id] = lease._replace(phase=Phase.ACTIVE)
        return [self._publish(), fired]

    def undone(self, lease_id: str, now: Now, error: str | None = None) -> list[Action]:
        """The lease's undo steps returned; on ``error`` it stays and is retried."""
        lease = self.leases[lease_id]
        assert lease.phase is Phase.REVERTING, lease
        if error is not None:
            self.leases[lease_id] = lease._replace(retry_at=now.mono + RETRY, acting_until=None)
            return [self._publish(), self._record("revert-failed", lease, now, detail=error)]
        del self.leases[lease_id]
        reason = lease.revert_reason or EndReason.REVERT
        actions: list[Action] = [self._publish()]
        if reason is not EndReason.FAILED:
            name = "expired" if reason is EndReason.DEADLINE else "reverted"
            actions.append(self._record(name, lease, now, reason=reason.value))
        return actions

    def tick(self, now: Now) -> list[Action]:
        """Time passed: end the leases past their deadline, retry the failed undos that are due."""
        actions: list[Action] = []
        for lease in list(self.leases.values()):
            if lease.phase is Phase.ACTIVE and now.mono >= lease.deadline_mono:
                actions.append(self._begin_undo(lease, EndReason.DEADLINE, now))
            elif lease.phase is Phase.ARMING and lease.revert_reason is None \
                    and now.mono >= lease.deadline_mono:
                self.leases[lease.id] = lease._replace(revert_reason=EndReason.DEADLINE)
            elif lease.phase is Phase.REVERTING and lease.retry_at is not None and now.mono >= lease.retry_at:
                actions.append(self._begin_undo(lease, lease.revert_reason or EndReason.REVERT, now))
        return [self._publish(), *actions] if actions else []

    # --- reading ---------------------------------------------------------------------------------

    def holder(self, device: str) -> Lease | None:
        """The lease that holds ``device`` or any part of it (a process fault's device is a
        comma-separated list of pids)."""
        wanted = set(device.split(","))
        return next((lease for lease in self.leases.values() if wanted & set(lease.device.split(","))), None)

    def settling(self, lease_ids: Iterable[str]) -> list[str]:
        """Those of ``lease_ids`` still on their way out: being applied (a revert asked meanwhile
        runs once the apply returns) or being undone.  A failed undo waiting for its retry has
        settled for now: guest-fault-list shows it."""
        def moving(lease: Lease | None) -> bool:
            return lease is not None and (lease.phase is Phase.ARMING
                                          or (lease.phase is Phase.REVERTING and lease.retry_at is None))
        return [lease_id for lease_id in lease_ids if moving(self.leases.get(lease_id))]

    def next_wakeup(self) -> float | None:
        """The monotonic instant :meth:`tick` has something to do, or None."""
        times = [lease.deadline_mono for lease in self.leases.values() if lease.phase is Phase.ACTIVE
                 or (lease.phase is Phase.ARMING and lease.revert_reason is None)]
        times += [lease.retry_at for lease in self.leases.values() if lease.retry_at is not None]
        return min(times, default=None)

    def snapshot(self) -> dict[str, Any]:
        """What the state file and the keeper hold (:mod:`.snapshot` reads it back)."""
        self.serial += 1
        return {"of": "faults", "version": SNAPSHOT_VERSION, "serial": self.serial, "next-id": self.next_id,
                "leases": [lease_record(lease) for lease in self.leases.values()]}

    # --- helpers -----------------------------------------------------------------------------------

    def _begin_undo(self, lease: Lease, reason: EndReason, now: Now) -> Undo:
        lease = lease._replace(phase=Phase.REVERTING, revert_reason=reason, retry_at=None,
                               acting_until=undo_allowance(lease, now))
        self.leases[lease.id] = lease
        return Undo(lease, reason)

    def _publish(self) -> Publish:
        return Publish(self.snapshot())

    def _end(self, lease: Lease, reason: EndReason, now: Now) -> list[Action]:
        """Begin ending ``lease``: publish it as reverting, then undo it."""
        undo = self._begin_undo(lease, reason, now)
        return [self._publish(), undo]

    @staticmethod
    def _record(name: str, lease: Lease, now: Now, reason: str = "", detail: str = "") -> Record:
        return Record(Event(name, lease.id, lease.kind, lease.target, now.mono, now.wall, reason, detail,
                            lease.plan))


def lease_record(lease: Lease) -> dict[str, Any]:
    """One lease in a snapshot: enough for a successor to undo it and to show it."""
    return {
        "id": lease.id, "kind": lease.kind, "target": lease.target, "params": dict(lease.params),
        "device": lease.device, "phase": lease.phase.value, "started": lease.started,
        "started-mono": lease.started_mono, "deadline-mono": keeper_deadline(lease),
        "duration": lease.duration, "undo": [dict(step) for step in lease.undo],
        "reason": lease.revert_reason.value if lease.revert_reason else None, "plan": lease.plan,
    }


def undo_allowance(lease: Lease, now: Now) -> float:
    """Until when the keeper lets an undo begun ``now`` run before it takes the agent for hung.
    From the deadline on, :data:`UNDO_ALLOWANCE`; an undo begun earlier (a revert) may not move
    the keeper past the lease's own deadline plus a second, so an agent that hangs in it still
    has its fault ended by deadline + 1 s + the keeper's grace."""
    if now.mono >= lease.deadline_mono:
        return now.mono + UNDO_ALLOWANCE
    return min(now.mono + UNDO_ALLOWANCE, max(lease.deadline_mono, now.mono) + 1.0)


def keeper_deadline(lease: Lease) -> float:
    """By when the agent must have acted on ``lease``, on CLOCK_MONOTONIC: its deadline, or while
    an undo runs that undo's allowance, or a failed undo's retry.  While a worker starts (a spawn
    step, bounded by :data:`SPAWN_WAIT`), at least until that wait is over and a second more: an
    agent that waits on a worker locking GiBs is not hung, even past a short lease's deadline
    (the book ends the lease as soon as the apply returns)."""
    if lease.phase is Phase.REVERTING:
        return lease.acting_until or lease.retry_at or lease.deadline_mono
    if lease.phase is Phase.ARMING and starts_a_worker(lease.apply):
        return max(lease.deadline_mono, lease.started_mono + SPAWN_WAIT + 1.0)
    return lease.deadline_mono


def starts_a_worker(steps: Iterable[Mapping[str, Any]]) -> bool:
    return any(step.get("op") == "spawn" for step in steps)


def leases_view(leases: Mapping[str, Lease], now: Now) -> list[dict[str, Any]]:
    """``guest-fault-list``: the active leases, for people."""
    return [{"id": lease.id, "kind": lease.kind, "target": lease.target, "params": dict(lease.params),
             "state": lease.phase.value, "started": round(lease.started, 6),
             "deadline": round(lease.deadline, 6),
             "remaining": round(max(0.0, lease.deadline_mono - now.mono), 3),
             **({"plan": lease.plan} if lease.plan else {})}
            for lease in leases.values()]
