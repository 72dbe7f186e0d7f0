"""Seeded plans: the same seed and steps give the same schedule, choices stay in their ranges,
and bad plans are refused before anything is drawn (agent/faults/plan.py)."""

from __future__ import annotations

from typing import Any

import pytest

from pyqga.agent.faults.machine import Refused
from pyqga.agent.faults.plan import MAX_ENTRIES, build

STEPS: list[dict[str, Any]] = [
    {"at": {"between": [1.0, 5.0]}, "kind": "disk-full", "target": {"one-of": ["/a", "/b", "/c"]},
     "duration": 2, "params": {"free-bytes": {"between": [0, 4096]}}},
    {"after": 0.5, "kind": "write-stall", "target": "/a", "duration": {"between": [0.1, 0.3]}},
]


def test_the_same_seed_gives_the_same_schedule_and_digest() -> None:
    first, again = build(42, STEPS, repeat=3), build(42, STEPS, repeat=3)
    assert first == again
    assert len(first.entries) == 6
    others = {build(seed, STEPS, repeat=3).digest for seed in range(20)}
    assert len(others) == 20, "different seeds drew the same schedule"


def test_choices_stay_in_range_and_times_follow_the_steps() -> None:
    for seed in range(50):
        schedule = build(seed, STEPS, repeat=2)
        fill, stall, fill2, stall2 = schedule.entries
        assert 1.0 <= fill.at <= 5.0 and fill.target in ("/a", "/b", "/c")
        assert isinstance(fill.params["free-bytes"], int) and 0 <= fill.params["free-bytes"] <= 4096
        assert stall.at == pytest.approx(fill.at + 2 + 0.5)          # after: the previous fault's end
        assert 0.1 <= stall.duration <= 0.3
        second_start = stall.at + stall.duration                     # a repeat starts when the last ended
        assert second_start + 1.0 <= fill2.at <= second_start + 5.0 + 1e-6
        assert schedule.span == pytest.approx(stall2.at + stall2.duration)


@pytest.mark.parametrize(("steps", "repeat", "says"), [
    ([], 1, "at least one step"),
    (STEPS, 10**6, f"at most {MAX_ENTRIES} faults; this one has 2 steps x 1000000 repeats"),
    (STEPS * 600, 1, f"at most {MAX_ENTRIES} faults"),
    (STEPS, 0, "repeat must be a positive integer"),
    ([{"kind": "disk-full", "target": "/a", "duration": 1}], 1, "needs one of at"),
    ([{"at": 1, "after": 1, "kind": "disk-full", "target": "/a", "duration": 1}], 1, "needs one of at"),
    ([{"at": -1, "kind": "disk-full", "target": "/a", "duration": 1}], 1, "must be >= 0"),
    ([{"at": 0, "kind": "disk-full", "target": "/a", "duration": 0}], 1, "step 1: duration must be"),
    ([{"at": 0, "kind": "disk-full", "target": "/a", "duration": 1, "when": 2}], 1, "unknown key 'when'"),
    ([{"at": {"between": [5, 1]}, "kind": "disk-full", "target": "/a", "duration": 1}], 1, "is empty"),
    ([{"at": {"one-of": []}, "kind": "disk-full", "target": "/a", "duration": 1}], 1, "one-of takes"),
    ([{"at": 0, "kind": "disk-full", "target": "/a", "duration": 600000},
      {"after": 100000, "kind": "disk-full", "target": "/a", "duration": 1}], 1, "must end within"),
])
def test_bad_plans_are_refused_with_the_reason(steps: list[Any], repeat: int, says: str) -> None:
    with pytest.raises(Refused, match=None) as caught:
        build(1, steps, repeat)
    assert says in str(caught.value), caught.value
