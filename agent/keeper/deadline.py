"""The keeper's one decision, without I/O: how long to wait for the agent, or that it is hung.

Fault leases count as freezes do: each carries the instant by which the agent must have acted
on it (:func:`pyqga.agent.faults.snapshot.keeper_deadline`), and the earliest of all counts.

The agent enforces its freeze's deadline itself; but an agent that is alive and does not act
(stopped, in a debugger, deadlocked, a thread wedged in D-state, the cgroup freezer) never does.
So the keeper watches the same deadline on its own CLOCK_MONOTONIC (the snapshot carries it as
``deadline-mono``, :func:`~pyqga.agent.freeze.snapshot.monotonic_deadline`).  The agent's thaw
normally comes first, and its "thawed" snapshot (or a later deadline: a failed thaw's retry)
reaches the keeper well within :data:`GRACE`; if the latest snapshot still holds the freeze at
its deadline plus :data:`GRACE`, the agent is hung (:class:`Hung`) and the keeper ends it.

The driver (:mod:`.main`) drains the pipe before it asks, so "latest" means everything the agent
has written so far.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from pyqga.agent.faults.snapshot import keeper_deadline
from pyqga.agent.freeze.snapshot import monotonic_deadline

# After the deadline, how long the agent has to show it acted.  Its own thaw takes milliseconds
# (a FITHAW, a state write on tmpfs, a pipe write); the keeper's own end of a hung agent (kill,
# at most END_WAIT for its pipe to close, FITHAW) must finish within a second of the deadline.
GRACE = 0.5


class Wait(NamedTuple):
    """Read the pipe for at most ``seconds`` (None: no deadline to enforce, wait for the pipe)."""

    seconds: float | None


class Hung(NamedTuple):
    """The freeze that had to end at ``deadline`` (monotonic) still holds: end the agent, thaw."""

    deadline: float


class DeadlineWatch:
    """Fed every snapshot the agent sends (:meth:`seen`), asked what to do now (:meth:`decide`)."""

    def __init__(self, grace: float = GRACE) -> None:
        self.grace = grace
        self.deadline: float | None = None

    def seen(self, snapshot: Mapping[str, Any] | None, faults: Mapping[str, Any] | None = None) -> None:
        """The agent's latest freeze snapshot and fault snapshot (None: none yet, or not
        readable) replace what came before; the earliest deadline of the two counts."""
        deadlines = [d for d in (monotonic_deadline(snapshot), keeper_deadline(faults)) if d is not None]
        self.deadline = min(deadlines, default=None)

    def decide(self, now: float) -> Wait | Hung:
        if self.deadline is None:
            return Wait(None)
        remaining = self.deadline + self.grace - now
        return Hung(self.deadline) if remaining <= 0 else Wait(remaining)
