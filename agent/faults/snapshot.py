"""The lease snapshot read back: from the state file (a new agent) or the pipe (the keeper).

:meth:`.machine.LeaseBook.snapshot` writes it; here it is untrusted input: every field is
checked, steps through :func:`.recipes.check_step`, and anything else is
:class:`~pyqga.agent.freeze.snapshot.CorruptState` naming the first bad field.  Linear in its size.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from pyqga.agent.faults.recipes import StepError, check_step
from pyqga.agent.faults.vocabulary import EndReason, Lease, Phase
from pyqga.agent.freeze.snapshot import CorruptState

MAX_LEASES = 4096
FAULTS_STATE = "faults.state"   # the state file's name in the state directory


def _number(record: Mapping[str, Any], name: str) -> float:
    value = record.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise CorruptState(f"lease {name} is not a finite number: {str(value)[:40]!r}")
    return float(value)


def _text(record: Mapping[str, Any], name: str) -> str:
    value = record.get(name)
    if not isinstance(value, str):
        raise CorruptState(f"lease {name} is not a string: {str(value)[:40]!r}")
    return value


def parse_lease(record: Any) -> Lease:
    if not isinstance(record, Mapping):
        raise CorruptState("a lease is not an object")
    params, undo = record.get("params", {}), record.get("undo")
    if not isinstance(params, Mapping):
        raise CorruptState("lease params is not an object")
    if not isinstance(undo, list):
        raise CorruptState("lease undo is not a list")
    try:
        steps = tuple(check_step(step) for step in undo)
    except StepError as e:
        raise CorruptState(f"lease undo: {e}") from None
    try:
        phase = Phase(record.get("phase"))
        reason = None if record.get("reason") is None else EndReason(record.get("reason"))
    except ValueError:
        raise CorruptState(f"lease phase or reason is unknown: {record.get('phase')!r}") from None
    plan = record.get("plan")
    started, started_mono, deadline = (_number(record, "started"), _number(record, "started-mono"),
                                       _number(record, "deadline-mono"))
    return Lease(_text(record, "id"), _text(record, "kind"), _text(record, "target"), dict(params),
                 _text(record, "device"), (), steps, started, started_mono, deadline,
                 _number(record, "duration"), phase, reason, plan=plan if isinstance(plan, str) else None)


def parse_leases(snapshot: Any) -> tuple[list[Lease], int]:
    """The leases a snapshot holds and its next id; :class:`CorruptState` if it is not ours."""
    if not isinstance(snapshot, Mapping) or snapshot.get("of") != "faults":
        raise CorruptState("not a fault snapshot")
    raw = snapshot.get("leases")
    if not isinstance(raw, list) or len(raw) > MAX_LEASES:
        raise CorruptState("leases is not a list (or too long)")
    next_id = snapshot.get("next-id", 1)
    if isinstance(next_id, bool) or not isinstance(next_id, int) or next_id < 1:
        raise CorruptState(f"next-id is not a positive integer: {str(next_id)[:40]!r}")
    return [parse_lease(record) for record in raw], next_id


def keeper_deadline(snapshot: Any) -> float | None:
    """The earliest CLOCK_MONOTONIC instant by which the agent must act on one of the snapshot's
    leases; None without leases (or an unreadable snapshot: the agent's own deadlines still hold)."""
    if not isinstance(snapshot, Mapping) or not isinstance(snapshot.get("leases"), list):
        return None
    times = [lease.get("deadline-mono") for lease in snapshot["leases"] if isinstance(lease, Mapping)]
    finite = [float(t) for t in times
              if isinstance(t, int | float) and not isinstance(t, bool) and math.isfinite(t)]
    return min(finite, default=None)
