"""Plans across guests, the host's pure parts (host_client/group_plan.py): the clock mapping by
round trip, the start skew, the merge of several guests' timelines and when a merged event is
final; guest names and the CLI's NAME=ADDRESS."""

from __future__ import annotations

import random

import pytest

from pyqga.host_client.cli_group_plan import parse_guests
from pyqga.host_client.faults import FaultEvent, Plan
from pyqga.host_client.group_plan import GuestPart, Merger, clock_offset, draw, merge, start_skew


def part(name: str, sent: float, replied: float, started_mono: float, plan_id: str = "f1") -> GuestPart:
    """A part whose guest clock was read as ``started_mono`` between host times sent and replied."""
    offset, error = clock_offset([(sent, replied, started_mono)])
    return GuestPart(name, f"/run/{name}.sock", Plan(plan_id, "h", 0.0, 1, ()), started_mono, offset, error)


def event(name: str, mono: float, lease: str = "f2", plan: str | None = "f1") -> FaultEvent:
    return FaultEvent(name, lease, "process-pause", "pid:1", mono, 0.0, "boot", plan=plan)


def test_a_guest_s_clock_maps_to_the_host_s_by_the_shortest_round_trip_s_midpoint() -> None:
    a = part("a", 100.0, 100.004, 5.0)
    assert a.started == pytest.approx(100.002) and a.offset == pytest.approx(95.002)
    assert a.uncertainty == pytest.approx(0.002)
    samples = [(200.0, 200.010, 105.0), (201.0, 201.001, 106.0003), (202.0, 202.003, 107.001)]
    offset, error = clock_offset(samples)
    assert offset == pytest.approx(201.0005 - 106.0003) and error == pytest.approx(0.0005)


def test_the_skew_is_between_the_mapped_starts_within_the_two_largest_errors() -> None:
    parts = [part("a", 10.0, 10.002, 1.0), part("b", 10.001, 10.011, 7.0), part("c", 10.0, 10.004, 3.0)]
    skew, error = start_skew(parts)
    assert skew == pytest.approx(10.006 - 10.001)
    assert error == pytest.approx(0.005 + 0.002)
    assert start_skew([]) == (0.0, 0.0)


def test_merged_events_are_on_one_axis_in_order_and_tagged_with_their_guest() -> None:
    """Guest b's clock is 1000 s ahead of a's; on the host's axis their events interleave."""
    a, b = part("a", 50.0, 50.002, 10.0), part("b", 50.001, 50.003, 1010.0)
    timeline = merge([a, b], {
        "a": [event("armed", 10.0, "f1", None), event("armed", 10.5), event("expired", 11.5)],
        "b": [event("armed", 1010.0, "f1", None), event("armed", 1011.0), event("expired", 1011.2),
              event("armed", 1012.0, "f9", "another-plan")],   # not this plan's: left out
    })
    assert [(e.guest, e.event.event, round(e.t, 3)) for e in timeline] == [
        ("a", "armed", 0.0), ("b", "armed", 0.001), ("a", "armed", 0.5), ("b", "armed", 1.001),
        ("b", "expired", 1.201), ("a", "expired", 1.5)]
    assert timeline[0].as_dict()["guest"] == "a" and timeline[0].as_dict()["t"] == 0.0


def test_ties_keep_the_guests_order_then_each_guest_s_own() -> None:
    a, b = part("a", 0.0, 0.0, 0.0), part("b", 0.0, 0.0, 0.0)
    timeline = merge([a, b], {"b": [event("armed", 1.0), event("fired", 1.0)], "a": [event("armed", 1.0)]})
    assert [(e.guest, e.event.event) for e in timeline] == [("a", "armed"), ("b", "armed"), ("b", "fired")]


def test_an_event_is_released_only_once_no_guest_can_still_report_an_earlier_one() -> None:
    a, b = part("a", 0.0, 0.01, 0.0), part("b", 0.0, 0.01, 0.0)   # each maps within 5 ms
    merger = Merger([a, b])
    merger.add("a", [event("armed", 1.0), event("expired", 3.0)], polled=4.0)
    assert merger.ready() == [], "b has not been polled: it may still have earlier events"
    merger.add("b", [event("armed", 2.0)], polled=2.5)
    assert [e.t for e in merger.ready()] == pytest.approx([1.0, 2.0])   # 3.0 is after b's poll
    merger.add("b", [event("armed", 2.6)], polled=5.0)
    assert [e.t for e in merger.ready()] == pytest.approx([2.6, 3.0])
    assert merger.ready(everything=True) == []


def test_released_batches_add_up_to_the_merge_of_everything() -> None:
    rng = random.Random(4)
    parts = [part(n, 0.0, rng.uniform(0, 0.01), rng.uniform(-50, 50)) for n in "abc"]
    events = {p.name: sorted((event("armed", p.started_mono + rng.uniform(0, 10)) for _ in range(30)),
                             key=lambda e: e.mono) for p in parts}
    merger, released = Merger(parts), []
    for now in range(12):     # every second, each guest returns what it recorded by then
        for p in parts:
            new = [e for e in events[p.name] if now - 1 <= e.mono - p.started_mono < now]
            merger.add(p.name, new, polled=p.started + now)
        batch = merger.ready()
        assert all(x.t <= y.t for x, y in zip(released[-1:] + batch, batch, strict=False))
        released += batch
    released += merger.ready(everything=True)
    assert [e.t for e in released] == [e.t for e in merge(parts, events)]
    assert len(released) == 90


def test_guest_names_and_plans_are_checked_before_anything_is_sent() -> None:
    steps = [{"guest": "a", "at": 0, "kind": "process-pause", "target": "pid:5", "duration": 1}]
    assert draw(1, steps, 1, ["a", "b"]).entries[0].guest == "a"
    with pytest.raises(ValueError, match="guest name 'a b'"):
        draw(1, steps, 1, ["a b"])
    with pytest.raises(ValueError, match="named twice"):
        draw(1, steps, 1, ["a", "a"])
    with pytest.raises(ValueError, match="not one of the plan's guests"):
        draw(1, steps, 1, ["b"])


def test_the_cli_takes_name_equals_address_libvirt_uris_included() -> None:
    uri = "libvirt:qemu+ssh://root@h2/system?domain=db"
    assert parse_guests(["a=/run/a.sock", f"db={uri}"]) == {"a": "/run/a.sock", "db": uri}
    with pytest.raises(ValueError, match="expected NAME=ADDRESS"):
        parse_guests([uri])           # an address without a name: its '=' is the domain's
    with pytest.raises(ValueError, match="given twice"):
        parse_guests(["a=/x", "a=/y"])
    with pytest.raises(ValueError, match="expected tcp:HOST:PORT"):
        parse_guests(["a=tcp:nowhere"])
