"""The keeper's decision as a table: the snapshots the agent sent, the time now -> what to do.

Each row feeds a fresh :class:`DeadlineWatch` the snapshots in order (built from a real
:class:`FreezeCore` where the agent's own states matter) and asks it at one monotonic instant.
No pipe, no process, no clock: ``tests/process/test_keeper_deadline.py`` runs the real keeper.
"""

from __future__ import annotations

from typing import Any

import pytest

from pyqga.agent.freeze.machine import RETRY_SECONDS, FreezeCore
from pyqga.agent.freeze.snapshot import monotonic_deadline, parse_snapshot
from pyqga.agent.freeze.vocabulary import (
    DeadlineCheck,
    FreezeDone,
    FreezeRequested,
    Persisted,
    Target,
    ThawDone,
    ThawResults,
)
from pyqga.agent.keeper.deadline import GRACE, DeadlineWatch, Hung, Wait
from tests.rig.model_kernel import ModelClock

A = Target((7, 1), "/mnt/a", "ext4", "/dev/loop1")


def agent(timeout: float | None = 2.0) -> FreezeCore:
    """An agent's core that froze A at monotonic 100 (deadline 102 with the default timeout)."""
    core = FreezeCore(ModelClock(100.0), None)
    for event in (FreezeRequested(1, ((A,),), timeout), Persisted(1), FreezeDone(A.device)):
        core.handle(event)
    return core


def thawed_by_itself() -> dict[str, Any]:
    core = agent()
    core.clock.advance(2.0)  # type: ignore[attr-defined]
    core.handle(DeadlineCheck())
    core.handle(ThawResults((ThawDone(A.device, True),)))
    return core.snapshot()


def thaw_failed_retrying() -> dict[str, Any]:
    """The agent's deadline thaw failed: it tries again in a second, and says so."""
    core = agent()
    core.clock.advance(2.0)  # type: ignore[attr-defined]
    core.handle(DeadlineCheck())
    core.handle(ThawResults((ThawDone(A.device, False, "EIO"),)))
    return core.snapshot()


FROZEN = agent().snapshot()
NO_TIMEOUT = agent(timeout=None).snapshot()
FREEZING = FreezeCore(ModelClock(100.0), None)
FREEZING.handle(FreezeRequested(1, ((A,),), 2.0))   # persisted before the first FIFREEZE: A may be frozen
OLD_FORMAT = {**FROZEN, "freeze": {k: v for k, v in FROZEN["freeze"].items() if k != "deadline-mono"}}
NOT_A_NUMBER = {**FROZEN, "freeze": {**FROZEN["freeze"], "deadline-mono": "soon"}}
WAIT = Wait(None)

# (what, snapshots in order, now) -> decision
TABLE: list[tuple[str, list[dict[str, Any] | None], float, Wait | Hung]] = [
    ("nothing sent yet", [], 500.0, WAIT),
    ("thawed from the start", [FreezeCore(ModelClock(100.0), None).snapshot()], 500.0, WAIT),
    ("frozen, before the deadline", [FROZEN], 101.0, Wait(102.0 + GRACE - 101.0)),
    ("frozen, at the deadline: the agent's turn", [FROZEN], 102.0, Wait(GRACE)),
    ("frozen, deadline + grace: hung", [FROZEN], 102.0 + GRACE, Hung(102.0)),
    ("frozen, long after: hung", [FROZEN], 1000.0, Hung(102.0)),
    ("a freeze persisted before its FIFREEZE counts", [FREEZING.snapshot()], 103.0, Hung(102.0)),
    ("the agent thawed at its deadline", [FROZEN, thawed_by_itself()], 1000.0, WAIT),
    ("a failed thaw's retry moves the deadline", [FROZEN, thaw_failed_retrying()], 102.0 + GRACE,
     Wait(RETRY_SECONDS)),
    ("... and a retry not made is hung", [FROZEN, thaw_failed_retrying()], 103.0 + GRACE, Hung(103.0)),
    ("a freeze without a deadline (--freeze-timeout 0)", [NO_TIMEOUT], 1e9, WAIT),
    ("a snapshot from before deadline-mono", [OLD_FORMAT], 1e9, WAIT),
    ("a deadline that is not a number", [NOT_A_NUMBER], 1e9, WAIT),
    ("an unreadable snapshot forgets the deadline", [FROZEN, None], 1e9, WAIT),
    ("a new freeze after a thaw: its own deadline", [FROZEN, thawed_by_itself(),
                                                     {**FROZEN, "freeze": {**FROZEN["freeze"],
                                                                           "deadline-mono": 110.0}}],
     105.0, Wait(110.0 + GRACE - 105.0)),
]


@pytest.mark.parametrize(("what", "snapshots", "now", "decision"), TABLE, ids=[row[0] for row in TABLE])
def test_decision(what: str, snapshots: list[dict[str, Any] | None], now: float,
                  decision: Wait | Hung) -> None:
    watch = DeadlineWatch()
    for snapshot in snapshots:
        watch.seen(snapshot)
    got = watch.decide(now)
    assert type(got) is type(decision) and got == pytest.approx(decision), what


def test_the_snapshot_carries_the_deadline_the_agent_waits_for() -> None:
    """The keeper's deadline is the agent's own (its watcher's), not one derived beside it."""
    core = agent()
    assert monotonic_deadline(core.snapshot()) == core.deadline_mono == 102.0
    retrying = thaw_failed_retrying()
    assert monotonic_deadline(retrying) == 102.0 + RETRY_SECONDS


def test_old_state_files_still_read_and_the_new_field_is_not_restored() -> None:
    """A state file without deadline-mono parses; one with it does not carry another boot's
    monotonic instant into the next agent (it derives its deadline from the wall clock)."""
    assert parse_snapshot(OLD_FORMAT).freeze is not None
    restored = parse_snapshot(FROZEN).freeze
    assert restored is not None and restored.deadline_mono is None
    assert restored.deadline == FROZEN["freeze"]["deadline"]
