"""Seeded plans: the same seed and steps give the same schedule, choices stay in their ranges,
and bad plans are refused before anything is drawn (agent/faults/plan.py)."""

from __future__ import annotations

from typing import Any

import pytest

from pyqga.agent.faults import plan
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


# --- plans across guests: the same drawing, each step naming its guest ---------------------------

GROUP_STEPS: list[dict[str, Any]] = [
    {"guest": "a", "at": {"between": [0.5, 1.5]}, "kind": "net-partition", "target": "eth0", "duration": 3,
     "params": {"peers": ["10.0.0.2"]}},
    {"guest": {"one-of": ["a", "b"]}, "after": 1, "kind": "process-pause",
     "target": {"one-of": ["pid:7", "pid:8"]}, "duration": {"between": [1, 4]}},
    {"guest": "b", "at": 0, "kind": "clock-step", "target": "clock", "duration": 2,
     "params": {"offset": 3600}},
]


def test_a_plan_across_guests_is_drawn_in_one_order_from_one_seed() -> None:
    first = build(8, GROUP_STEPS, repeat=2, guests=["a", "b"])
    assert first == build(8, GROUP_STEPS, repeat=2, guests=["a", "b"])
    assert [e.guest for e in first.entries][::3] == ["a", "a"] and first.entries[2].guest == "b"
    assert {e.guest for e in first.entries[1::3]} <= {"a", "b"}
    drawn = {tuple(e.guest for e in build(seed, GROUP_STEPS, guests=["a", "b"]).entries)
             for seed in range(40)}
    assert drawn == {("a", "a", "b"), ("a", "b", "b")}, "the guest choice is not drawn"
    assert all(entry.as_dict()["guest"] == entry.guest for entry in first.entries)


def test_each_guest_s_part_as_fixed_steps_draws_back_the_same_entries_and_digest() -> None:
    """What the host sends a guest (its part, nothing left to draw) is what that guest's own
    guest-fault-plan draws, whatever seed the guest uses: the hash check of the host."""
    whole = build(21, GROUP_STEPS, repeat=3, guests=["a", "b"])
    for guest in ("a", "b"):
        part = plan.part(whole, guest)
        assert part and all(entry.guest is None for entry in part)
        again = build(99, [entry.as_step() for entry in part])
        assert list(again.entries) == part
        assert again.digest == plan.digest(part)
    assert len(plan.part(whole, "a")) + len(plan.part(whole, "b")) == len(whole.entries)


def test_a_single_guest_plan_s_digest_is_unchanged_by_the_guest_field() -> None:
    """Entries without a guest hash as before plans across guests existed."""
    single = build(3, STEPS)
    assert plan.digest(single.entries) == single.digest
    assert "guest" not in single.entries[0].as_dict()


@pytest.mark.parametrize(("steps", "says"), [
    ([{"at": 0, "kind": "k", "target": "t", "duration": 1}], "step 1 needs a guest (one of a, b)"),
    ([{"guest": "c", "at": 0, "kind": "k", "target": "t", "duration": 1}], "guest 'c' is not one of"),
    ([{"guest": {"one-of": ["a", "z"]}, "at": 0, "kind": "k", "target": "t", "duration": 1}] * 20,
     "is not one of the plan's guests"),
])
def test_bad_guests_are_refused(steps: list[Any], says: str) -> None:
    with pytest.raises(Refused) as caught:
        build(1, steps, guests=["a", "b"])
    assert says in str(caught.value)


def test_a_single_guest_plan_refuses_a_guest_key() -> None:
    with pytest.raises(Refused, match="unknown key 'guest'"):
        build(1, [{"guest": "a", "at": 0, "kind": "k", "target": "t", "duration": 1}])


def test_a_start_may_be_a_little_behind_or_up_to_a_minute_ahead() -> None:
    assert plan.check_start(105.5, 100.0) == pytest.approx(5.5)
    assert plan.check_start(99.5, 100.0) == 0.0            # a slow call: its steps start at once
    assert plan.check_start(100 + plan.MAX_LEAD, 100.0) == plan.MAX_LEAD
    with pytest.raises(Refused, match="ahead of this guest's monotonic clock; at most 60 s"):
        plan.check_start(161.0, 100.0)
    with pytest.raises(Refused, match=r"start was 2\.000 s ago"):
        plan.check_start(98.0, 100.0)
    with pytest.raises(Refused, match="start must be a finite number"):
        plan.check_start(float("nan"), 100.0)
