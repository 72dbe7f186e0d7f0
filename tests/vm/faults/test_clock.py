"""The clock kinds in a real guest: each does what it says, a revert brings back true time, and
the agent's deadlines do not move (issue 21's clock proof).  Only ever the guest's clock.

A probe program in the guest (started by the *hands*, ``pyqga-serial``, which are never
faulted) samples the guest's clocks every 20 ms: CLOCK_REALTIME less CLOCK_MONOTONIC and less
CLOCK_MONOTONIC_RAW, each read between two readings of the other clock.  No fault here touches
CLOCK_MONOTONIC_RAW and the guest runs no time daemon, so ``realtime - raw`` is what a fault did
to the wall clock, and its value before the fault is true time.  Faults go to the *subject*
(``pyqga-virtio``) over virtio-serial; the times compared are the guest's CLOCK_MONOTONIC, the
clock of the events' ``mono``.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import secrets
import statistics
import time
from collections.abc import Iterator
from typing import Any, NamedTuple

import pytest

from pyqga.host_client import AgentCallError, AgentClient
from tests.rig.guest_shell import output_json
from tests.rig.machine import GuestVM
from tests.vm.faults.guest import HANDS, SUBJECT

pytestmark = pytest.mark.root

PROBE_PATH = "/run/clock-probe.py"
TRUE_TIME_S = 0.050    # a revert restores true time within this
LATE_S = 0.5           # a deadline ends within this after it is due, by the guest's CLOCK_MONOTONIC

# python3 -B PROBE JSON: samples [mono, realtime - mono, realtime - raw, state of pid] every
# `every` seconds for `seconds`, appending a line (its wall time) to `log` each time, if given.
PROBE = r'''
import json, os, sys, time
args = json.loads(sys.argv[1])
get, R, M, W = time.clock_gettime_ns, time.CLOCK_REALTIME, time.CLOCK_MONOTONIC, time.CLOCK_MONOTONIC_RAW
pid, log = args.get("pid"), open(args["log"], "a") if args.get("log") else None
rows = []
open(args["started"], "w").close()
end = time.monotonic() + args["seconds"]
while time.monotonic() < end:
    m0, w0 = get(M), get(W)
    real = get(R)
    w1, m1 = get(W), get(M)
    row = [m0 / 1e9, (real - (m0 + m1) // 2) / 1e9, (real - (w0 + w1) // 2) / 1e9]
    if pid:
        with open(f"/proc/{pid}/stat") as f:
            row.append(f.read().rsplit(")", 1)[1].split()[0])
    if log:
        log.write(f"{real / 1e9:.6f}\n")
        log.flush()
    rows.append(row)
    time.sleep(args.get("every", 0.02))
print(json.dumps(rows))
'''


class Rig(NamedTuple):
    vm: GuestVM
    hands: AgentClient
    subject: AgentClient


@pytest.fixture(scope="module")
def rig(fault_vm: GuestVM) -> Iterator[Rig]:
    started = time.monotonic()
    with fault_vm.client(HANDS, timeout=60) as hands, fault_vm.client(SUBJECT, timeout=60) as subject:
        hands.write_file(PROBE_PATH, PROBE.encode())
        yield Rig(fault_vm, hands, subject)
        with contextlib.suppress(Exception):
            subject.call("guest-fault-revert", {})
        print(f"\nclock faults: {time.monotonic() - started:.1f} s in all")


class Probe:
    """The probe program, running in the guest."""

    def __init__(self, rig: Rig, seconds: float, **extra: Any) -> None:
        self.rig, self.seconds = rig, seconds
        started = f"/run/clock-probe.{secrets.token_hex(6)}"
        spec = {"seconds": seconds, "started": started, **extra}
        self.pid = rig.hands.call("guest-exec", {"path": "/usr/bin/python3", "arg": ["-B", PROBE_PATH,
                                                 json.dumps(spec)], "capture-output": True})["pid"]
        end = time.monotonic() + 30
        while time.monotonic() < end:
            with contextlib.suppress(AgentCallError):
                rig.hands.read_file(started)
                time.sleep(0.3)   # a few samples before the fault
                return
            time.sleep(0.05)
        raise AssertionError("the probe did not start")

    def rows(self) -> list[list[Any]]:
        rows: list[list[Any]] = output_json(self.rig.hands, self.pid, self.seconds + 60, "the probe", 0.2)
        return rows


def inject(rig: Rig, kind: str, params: dict[str, Any], duration: float, target: str = "clock",
           force: bool = False) -> str:
    request: dict[str, Any] = {"kind": kind, "target": target, "duration": duration, "params": params}
    if force:
        request["force"] = True
    lease: str = rig.subject.call("guest-fault-inject", request)["id"]
    return lease


def events(rig: Rig, lease: str) -> dict[str, dict[str, Any]]:
    reply = rig.subject.call("guest-fault-events", {"since": 0})
    return {e["event"]: e for e in reply["events"] if e.get("id") == lease}


class Split(NamedTuple):
    base: float           # the column before the fault
    before: list[list[Any]]
    during: list[list[Any]]
    after: list[list[Any]]


def split(rows: list[list[Any]], column: int, start: float, end: float) -> Split:
    """Rows before ``start``, between, and after ``end`` (guest CLOCK_MONOTONIC)."""
    before = [r for r in rows if r[0] < start]
    assert len(before) >= 3, "no samples before the fault"
    base = statistics.median(r[column] for r in before)
    return Split(base, before, [r for r in rows if start <= r[0] <= end], [r for r in rows if r[0] > end])


def true_time_error(rows: list[list[Any]], base: float) -> float:
    """The worst distance from true time (realtime - raw at ``base``) over ``rows``."""
    assert rows, "no samples after the fault"
    return max(abs(r[2] - base) for r in rows)


def slope_ppm(rows: list[list[Any]], value: Any) -> float:
    """How fast ``value(row)`` grows against CLOCK_MONOTONIC_RAW, in ppm: from the medians of the
    first and last ten samples (robust to a sample that a preemption spoilt)."""
    assert len(rows) >= 40, f"only {len(rows)} samples"

    def raw(row: list[Any]) -> float:
        return float(row[0] + row[1] - row[2])   # realtime - (realtime - raw), on mono's scale

    head, tail = rows[:10], rows[-10:]
    dv = statistics.median(map(value, tail)) - statistics.median(map(value, head))
    dt = statistics.median(map(raw, tail)) - statistics.median(map(raw, head))
    return dv / dt * 1e6


def test_clock_step_steps_the_wall_clock_only_and_revert_restores_true_time(rig: Rig) -> None:
    probe = Probe(rig, 5.0)
    lease = inject(rig, "clock-step", {"offset": 3600.5}, 30)
    time.sleep(1.5)
    asked = time.monotonic()
    assert rig.subject.call("guest-fault-revert", {"id": lease}) == 1
    took = time.monotonic() - asked
    seen = events(rig, lease)
    parts = split(probe.rows(), 2, seen["armed"]["mono"], seen["reverted"]["mono"])
    during = [r for r in parts.during if r[2] - parts.base > 1800]
    assert len(during) >= 20, f"{len(during)} samples saw the step"
    step = statistics.median(r[2] for r in during) - parts.base
    mono_moved = statistics.median(r[1] - r[2] for r in during) - statistics.median(
        r[1] - r[2] for r in parts.before)   # realtime-mono less realtime-raw: mono against raw
    error = true_time_error(parts.after, parts.base)
    print(f"\nclock-step 3600.5 s: stepped by {step:.6f} s, CLOCK_MONOTONIC moved {mono_moved * 1e6:+.1f} us"
          f"; revert {took * 1000:.0f} ms, true time within {error * 1e6:.0f} us after it")
    assert abs(step - 3600.5) < 0.001
    assert abs(mono_moved) < 0.001
    assert error < TRUE_TIME_S


def test_clock_skew_changes_the_rate_by_frequency_or_tick_and_revert_restores_true_time(rig: Rig) -> None:
    probe = Probe(rig, 13.0)
    results = []
    for ppm, hold in ((500.0, 4.0), (-20_000.0, 3.0)):
        lease = inject(rig, "clock-skew", {"ppm": ppm}, 30)
        time.sleep(hold)
        assert rig.subject.call("guest-fault-revert", {"id": lease}) == 1
        seen = events(rig, lease)
        results.append((ppm, seen["fired"]["mono"], seen["reverted"]["mono"]))
        time.sleep(1.0)
    rows = probe.rows()
    base = statistics.median(r[2] for r in rows if r[0] < results[0][1])
    for index, (ppm, fired, reverted) in enumerate(results):
        parts = split(rows, 2, fired + 0.05, reverted - 0.05)
        wall = slope_ppm(parts.during, lambda r: r[2])           # realtime against raw
        mono = slope_ppm(parts.during, lambda r: r[2] - r[1])    # monotonic against raw
        until = results[index + 1][1] if index + 1 < len(results) else float("inf")
        after = [r for r in rows if reverted + 0.05 < r[0] < until]
        error = true_time_error(after, base)
        drift = max(abs(r[2] - base) for r in parts.during)
        print(f"\nclock-skew {ppm:+.0f} ppm: wall clock {wall:+.1f} ppm, CLOCK_MONOTONIC {mono:+.1f} ppm "
              f"(off by up to {drift * 1000:.1f} ms); true time within {error * 1e6:.0f} us after revert")
        assert abs(wall - ppm) < max(25.0, abs(ppm) * 0.02), wall
        assert abs(mono - ppm) < max(25.0, abs(ppm) * 0.02), mono   # documented: a skew slews it too
        assert error < TRUE_TIME_S


def test_a_skew_slews_its_own_deadline_by_the_skew_and_no_more(rig: Rig) -> None:
    """The documented bound: a lease of D s at P ppm lasts D / (1 + P * 1e-6) s of true time
    (CLOCK_MONOTONIC_RAW), as the agent times it on the slewed CLOCK_MONOTONIC."""
    probe = Probe(rig, 6.5)
    lease = inject(rig, "clock-skew", {"ppm": -50_000}, 4.0)
    time.sleep(5.0)
    seen = events(rig, lease)
    rows = probe.rows()

    def raw_at(mono: float) -> float:   # CLOCK_MONOTONIC_RAW at a CLOCK_MONOTONIC time, interpolated
        a, b = next((a, b) for a, b in itertools.pairwise(rows) if a[0] <= mono <= b[0])
        raw_a, raw_b = (r[0] + r[1] - r[2] for r in (a, b))
        return float(raw_a + (raw_b - raw_a) * (mono - a[0]) / (b[0] - a[0]))

    fired, ended = seen["fired"]["mono"], seen["expired"]["mono"]
    by_mono, by_raw = ended - fired, raw_at(ended) - raw_at(fired)
    expected = by_mono / (1 - 0.05)
    error = true_time_error([r for r in rows if r[0] > ended + 0.05], statistics.median(
        r[2] for r in rows if r[0] < seen["armed"]["mono"]))
    print(f"\nclock-skew -5 % for 4 s: {by_mono:.3f} s of CLOCK_MONOTONIC were {by_raw:.3f} s of true time "
          f"(expected {expected:.3f} s: the deadline {by_raw - by_mono:+.3f} s late in true time); "
          f"true time within {error * 1e6:.0f} us after it")
    assert seen["expired"]["reason"] == "deadline"
    assert abs(by_raw - expected) < 0.02
    assert error < TRUE_TIME_S


def test_clock_strobe_jumps_back_and_forth_and_revert_restores_true_time(rig: Rig) -> None:
    probe = Probe(rig, 5.5)
    lease = inject(rig, "clock-strobe", {"offset": 60, "interval": 0.5}, 30)
    time.sleep(3.0)
    assert rig.subject.call("guest-fault-revert", {"id": lease}) == 1
    seen = events(rig, lease)
    parts = split(probe.rows(), 2, seen["armed"]["mono"], seen["reverted"]["mono"])
    up = [r[2] - parts.base > 30 for r in parts.during]
    flips = [r[0] for r, was, now in zip(parts.during[1:], up, up[1:], strict=False) if was != now]
    gaps = [b - a for a, b in itertools.pairwise(flips)]
    offsets = [r[2] - parts.base for r in parts.during if r[2] - parts.base > 30]
    error = true_time_error(parts.after, parts.base)
    print(f"\nclock-strobe 60 s every 0.5 s: {len(flips)} jumps, {min(gaps, default=0):.3f}-"
          f"{max(gaps, default=0):.3f} s apart, forward by {min(offsets, default=0):.4f}-"
          f"{max(offsets, default=0):.4f} s; true time within {error * 1e6:.0f} us after revert")
    assert len(flips) >= 4, flips
    assert all(0.3 < gap < 0.75 for gap in gaps), gaps
    assert all(abs(o - 60) < 0.01 for o in offsets)
    assert error < TRUE_TIME_S
    assert not any(r[2] - parts.base > 30 for r in parts.after), "a jump after the revert"


def test_the_clock_proof_a_step_of_an_hour_during_a_workload(rig: Rig) -> None:
    """Issue 21's clock proof: +1 h during a workload that writes its wall time to /data every
    20 ms.  The clock lease and a process-pause lease under it end at their deadlines by the
    guest's CLOCK_MONOTONIC, the workload never stalls, and the wall clock is back at true time
    within 50 ms."""
    sleeper = rig.hands.call("guest-exec", {"path": "/bin/sleep", "arg": ["600"]})["pid"]
    try:
        probe = Probe(rig, 8.0, pid=sleeper, log="/data/clock-workload.log")
        clock = inject(rig, "clock-step", {"offset": 3600}, 4.0)
        pause = inject(rig, "process-pause", {}, 2.5, target=f"pid:{sleeper}")
        rows = probe.rows()
    finally:
        rig.hands.call("guest-exec", {"path": "/bin/kill", "arg": ["-9", str(sleeper)]})
    clock_seen, pause_seen = events(rig, clock), events(rig, pause)
    assert clock_seen["expired"]["reason"] == pause_seen["expired"]["reason"] == "deadline"
    clock_due = clock_seen["armed"]["mono"] + 4.0
    pause_due = pause_seen["armed"]["mono"] + 2.5
    stepped = [r[0] for r in rows if r[2] - rows[0][2] > 1800]
    paused = [r[0] for r in rows if r[3] == "T"]
    assert stepped and paused, "the faults never held"
    clock_end = next(r[0] for r in rows if r[0] > stepped[-1])
    pause_end = next(r[0] for r in rows if r[0] > paused[-1])
    base = statistics.median(r[2] for r in rows if r[0] < stepped[0])
    error = true_time_error([r for r in rows if r[0] >= clock_end], base)
    gap = max(b[0] - a[0] for a, b in itertools.pairwise(rows))
    walls = [float(line) for line in rig.hands.read_file("/data/clock-workload.log").split()]
    jumps = [b - a for a, b in itertools.pairwise(walls) if abs(b - a) > 1800]
    print(f"\nclock proof: +1 h for 4 s; clock lease ended {clock_end - clock_due:+.3f} s, pause lease "
          f"{pause_end - pause_due:+.3f} s after their deadlines (guest CLOCK_MONOTONIC, 20 ms samples); "
          f"true time within {error * 1e6:.0f} us; the workload's longest gap {gap * 1000:.0f} ms, "
          f"its wall clock jumped {[round(j) for j in jumps]} s")
    assert -0.05 < clock_end - clock_due < LATE_S
    assert -0.05 < pause_end - pause_due < LATE_S
    assert error < TRUE_TIME_S
    assert gap < 0.5
    assert len(jumps) == 2 and abs(jumps[0] - 3600) < 1 and abs(jumps[1] + 3600) < 1


def test_bad_input_is_refused_and_leaves_nothing(rig: Rig) -> None:
    """A step beyond 10 years, and a time daemon (a stand-in process named chronyd: the guest
    runs none) without force."""
    before = Probe(rig, 0.3).rows()
    with pytest.raises(AgentCallError, match=r"beyond \+-10 years"):
        inject(rig, "clock-step", {"offset": 3.2e8}, 5)
    with pytest.raises(AgentCallError, match=r"beyond \+-10 years"):
        inject(rig, "clock-strobe", {"offset": -3.2e8}, 5)
    fake = rig.hands.call("guest-exec", {"path": "/usr/bin/python3", "arg": [
        "-c", "open('/proc/self/comm', 'w').write('chronyd'); import time; time.sleep(120)"]})["pid"]
    try:
        end = time.monotonic() + 20
        while True:   # the stand-in is named once its python has started
            try:
                inject(rig, "clock-step", {"offset": 10}, 5)
            except AgentCallError as e:
                assert f"chronyd (pid {fake}) disciplines the clock" in str(e), e
                break
            rig.subject.call("guest-fault-revert", {})
            assert time.monotonic() < end, "the stand-in chronyd was never seen"
            time.sleep(0.2)
        for kind, params in (("clock-skew", {"ppm": 100}), ("clock-strobe", {"offset": 5})):
            with pytest.raises(AgentCallError, match=r"chronyd .* pass force"):
                inject(rig, kind, params, 5)
        assert rig.subject.call("guest-fault-list") == []
        lease = inject(rig, "clock-step", {"offset": 10}, 5, force=True)
        assert rig.subject.call("guest-fault-revert", {"id": lease}) == 1
    finally:
        rig.hands.call("guest-exec", {"path": "/bin/kill", "arg": ["-9", str(fake)]})
    after = Probe(rig, 0.3).rows()
    assert abs(statistics.median(r[2] for r in after) - statistics.median(r[2] for r in before)) < 0.001
    assert rig.subject.call("guest-fault-list") == []
