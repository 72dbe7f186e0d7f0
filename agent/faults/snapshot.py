"""The lease snapshot read back: from the state file (a new agent) or the pipe (the keeper).

:meth:`.machine.LeaseBook.snapshot` writes it (one :func:`.machine.lease_record` a lease); here
it is untrusted input: every field is checked, steps through :func:`.recipes.check_step`, and
anything else is :class:`~pyqga.agent.freeze.snapshot.CorruptState` naming the first bad field
(``leases[2].duration``).  Linear in its size.

A lease's ``deadline-mono`` is the keeper's: the instant by which the agent must have acted on
it (its deadline; while it reverts, the undo's allowance or the retry).  So the lease read back
takes its own deadline from ``started-mono + duration``, never from that field; the undo's
bookkeeping (retry, allowance) is not read back, since :meth:`~.machine.LeaseBook.restore`
starts a new undo anyway.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from pyqga.agent.faults.recipes import StepError, check_step
from pyqga.agent.faults.vocabulary import MAX_DURATION, EndReason, Lease, Phase
from pyqga.agent.freeze.snapshot import CorruptState

MAX_LEASES = 4096
FAULTS_STATE = "faults.state"   # the state file's name in the state directory
MAX_TEXT = 4096   # an id, kind, target, device or plan: longer is not one we wrote


def _shown(value: Any) -> str:
    return repr(str(value)[:40])


def _number(record: Mapping[str, Any], name: str, where: str) -> float:
    value = record.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise CorruptState(f"{where}.{name} is not a finite number: {_shown(value)}")
    return float(value)


def _text(record: Mapping[str, Any], name: str, where: str) -> str:
    value = record.get(name)
    if not isinstance(value, str) or not value or len(value) > MAX_TEXT:
        raise CorruptState(f"{where}.{name} is not a non-empty string: {_shown(value)}")
    return value


def _enum(record: Mapping[str, Any], name: str, where: str, enum: type[Phase] | type[EndReason],
          optional: bool = False) -> Any:
    value = record.get(name)
    if value is None and optional:
        return None
    try:
        return enum(value)
    except ValueError:
        known = ", ".join(member.value for member in enum)
        raise CorruptState(f"{where}.{name} is not one of {known}: {_shown(value)}") from None


def parse_lease(record: Any, where: str = "lease") -> Lease:
    """One :func:`.machine.lease_record` read back; ``where`` names it in errors."""
    if not isinstance(record, Mapping):
        raise CorruptState(f"{where} is not an object")
    lease_id, kind, target, device = (_text(record, name, where) for name in ("id", "kind", "target",
                                                                               "device"))
    params = record.get("params")
    if not isinstance(params, Mapping) or not all(isinstance(key, str) for key in params):
        raise CorruptState(f"{where}.params is not an object")
    phase = _enum(record, "phase", where, Phase)
    started, started_mono = _number(record, "started", where), _number(record, "started-mono", where)
    _number(record, "deadline-mono", where)   # the keeper's (see the module docstring), checked only
    duration = _number(record, "duration", where)
    if not 0 < duration <= MAX_DURATION:
        raise CorruptState(f"{where}.duration is not > 0 and <= {MAX_DURATION:.0f}: {_shown(duration)}")
    undo = record.get("undo")
    if not isinstance(undo, list):
        raise CorruptState(f"{where}.undo is not a list")
    steps = []
    for index, step in enumerate(undo):
        try:
            steps.append(check_step(step))
        except StepError as e:
            raise CorruptState(f"{where}.undo[{index}]: {e}") from None
    reason = _enum(record, "reason", where, EndReason, optional=True)
    plan = None if record.get("plan") is None else _text(record, "plan", where)
    return Lease(lease_id, kind, target, dict(params), device, (), tuple(steps), started, started_mono,
                 started_mono + duration, duration, phase, reason, plan=plan)


def parse_leases(snapshot: Any) -> tuple[list[Lease], int]:
    """The leases a snapshot holds and its next id; :class:`CorruptState` if it is not ours."""
    if not isinstance(snapshot, Mapping) or snapshot.get("of") != "faults":
        raise CorruptState("not a fault snapshot (its \"of\" is not \"faults\")")
    for name, low in (("version", 1), ("serial", 0), ("next-id", 1)):
        value = snapshot.get(name)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise CorruptState(f"{name} is not an integer >= {low}: {_shown(value)}")
    raw = snapshot.get("leases")
    if not isinstance(raw, list) or len(raw) > MAX_LEASES:
        raise CorruptState(f"leases is not a list of at most {MAX_LEASES}")
    leases, ids = [], set()
    for index, record in enumerate(raw):
        lease = parse_lease(record, f"leases[{index}]")
        if lease.id in ids:
            raise CorruptState(f"leases[{index}].id {lease.id!r} is there twice")
        ids.add(lease.id)
        leases.append(lease)
    return leases, snapshot["next-id"]


def keeper_deadline(snapshot: Any) -> float | None:
    """The earliest CLOCK_MONOTONIC instant by which the agent must act on one of the snapshot's
    leases; None without leases (or an unreadable snapshot: the agent's own deadlines still hold)."""
    if not isinstance(snapshot, Mapping) or not isinstance(snapshot.get("leases"), list):
        return None
    times = [lease.get("deadline-mono") for lease in snapshot["leases"] if isinstance(lease, Mapping)]
    finite = [float(t) for t in times
              if isinstance(t, int | float) and not isinstance(t, bool) and math.isfinite(t)]
    return min(finite, default=None)
