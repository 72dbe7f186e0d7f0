"""The clock kinds: ``clock-step`` (the wall clock stepped by an offset), ``clock-skew`` (the
kernel's clock rate changed through adjtimex) and ``clock-strobe`` (a worker that jumps the wall
clock forward by an offset and back, at an interval).

All three share one device, ``clock``, and take the target ``clock``: one clock lease at a time
(two faults on one wall clock could not be undone in any order).

Revert puts the wall clock back to *true time* (:mod:`.timekeeping`) from a reference read when
the fault is prepared: the undo step ``clock-set`` steps CLOCK_REALTIME to the reference plus
how far CLOCK_MONOTONIC has run since (for a skew, which slews CLOCK_MONOTONIC too,
CLOCK_MONOTONIC_RAW at the rate before the fault).  It is idempotent (run again, it finds
nothing to step), so the agent and the keeper may both run it, and it needs nothing of the
agent.  A ``clock-set`` from another boot (its ``boot`` is not this boot's id) does nothing: its base
clock started again at the reboot.

The agent's deadlines and the keeper run on CLOCK_MONOTONIC.  A step or a strobe does not move
it.  A skew does, by the skew: a lease of D seconds at P ppm ends P * 1e-6 * D seconds early (a
faster clock) or late in true time, 1.8 s for an hour at 500 ppm.

A time daemon (chronyd, ntpd, systemd-timesyncd, openntpd, ptp4l, phc2sys) would fight the fault and undo
it: a clock fault is refused while one runs, unless ``force`` is given.  A daemon that is
stopped (``process-pause`` of it, for example) does not count.  Forced, the daemon may step or
slew the clock back during the fault; the revert still sets true time.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pyqga.agent.faults import timekeeping
from pyqga.agent.faults.kinds import Context, ParamSpec, Preparer, Spec
from pyqga.agent.faults.machine import Refused
from pyqga.agent.faults.processes import all_pids, comm
from pyqga.agent.faults.recipes import process_state
from pyqga.agent.faults.timeline import read_boot_id
from pyqga.agent.faults.tokens import token_hex
from pyqga.agent.faults.vocabulary import Kind, Step

TARGET = DEVICE = "clock"
MAX_OFFSET = 10 * 365.25 * 86400   # ten years, in seconds
MAX_PPM = 99_000                   # within the kernel's tick range (+-10 %)
# /proc/PID/comm of the daemons that discipline the clock (comm is cut at 15 characters)
TIME_DAEMONS = ("chronyd", "ntpd", "systemd-timesyn", "openntpd", "ptp4l", "phc2sys")


def time_daemons() -> list[tuple[int, str]]:
    """(pid, name) of every time daemon that runs (not stopped)."""
    found = []
    for pid in all_pids():
        name = comm(pid)
        if name in TIME_DAEMONS and process_state(pid) not in ("T", "t", "", "Z", "X"):
            found.append((pid, name))
    return found


def _check(kind: Kind, target: str, force: bool) -> None:
    if target != TARGET:
        raise Refused(f"{kind.value} takes the target {TARGET!r}, not {str(target)[:80]!r}")
    daemons = time_daemons()
    if daemons and not force:
        pid, name = daemons[0]
        raise Refused(f"{kind.value}: {name} (pid {pid}) disciplines the clock and would fight the fault; "
                      "stop or pause it first, or pass force")


def _offset_ns(kind: Kind, offset: float | None) -> int:
    if offset is None:
        return 0   # asked without parameters (capabilities): any offset will do
    if abs(offset) > MAX_OFFSET:
        raise Refused(f"{kind.value}: an offset of {offset:g} s is beyond +-10 years ({MAX_OFFSET:.0f} s)")
    if offset == 0:
        raise Refused(f"{kind.value}: an offset of 0 s changes nothing")
    return round(offset * timekeeping.NS)


def set_step(ref: timekeeping.Reference, raw_rate: float, boot: str) -> Step:
    """The undo step that puts the wall clock back to true time from ``ref`` in boot ``boot``:
    by CLOCK_MONOTONIC (``raw_rate`` 0) or CLOCK_MONOTONIC_RAW at ``raw_rate``."""
    return {"op": "clock-set", "real-ns": ref.real_ns, "mono-ns": ref.mono_ns, "raw-ns": ref.raw_ns,
            "raw-rate": float(raw_rate), "boot": boot}


def _step(target: str, params: Mapping[str, Any], force: bool, context: Context) -> Spec:
    _check(Kind.CLOCK_STEP, target, force)
    offset = _offset_ns(Kind.CLOCK_STEP, params.get("offset"))
    undo = set_step(timekeeping.reference(), 0.0, read_boot_id())
    return Spec(DEVICE, ({"op": "clock-step", "offset-ns": offset},), (undo,), params)


def _skew(target: str, params: Mapping[str, Any], force: bool, context: Context) -> Spec:
    _check(Kind.CLOCK_SKEW, target, force)
    before = timekeeping.read_rate()
    try:
        after = timekeeping.skewed(before, params.get("ppm", 0.0))
    except ValueError as e:
        raise Refused(f"clock-skew: {e}") from None
    undo = set_step(timekeeping.reference(), timekeeping.rate_of(before), read_boot_id())
    return Spec(DEVICE, ({"op": "clock-rate", "tick": after.tick, "freq": after.freq},),
                ({"op": "clock-rate", "tick": before.tick, "freq": before.freq}, undo), params)


def _strobe(target: str, params: Mapping[str, Any], force: bool, context: Context) -> Spec:
    _check(Kind.CLOCK_STROBE, target, force)
    offset = _offset_ns(Kind.CLOCK_STROBE, params.get("offset"))
    ref = timekeeping.reference()
    token = token_hex(8)
    args = {"real-ns": ref.real_ns, "mono-ns": ref.mono_ns, "offset-ns": offset,
            "interval-ns": round(params["interval"] * timekeeping.NS)}
    # reap first: a worker still running could jump the clock again after the clock-set
    return Spec(DEVICE, ({"op": "spawn", "worker": "clock-strobe", "token": token, "args": args},),
                ({"op": "reap", "token": token}, set_step(ref, 0.0, read_boot_id())), params)


PARAMS: dict[Kind, tuple[ParamSpec, ...]] = {
    Kind.CLOCK_STEP: (
        ParamSpec("offset", float, None, "seconds the wall clock is stepped by (negative: back), "
                  "at most 10 years either way"),
    ),
    Kind.CLOCK_SKEW: (
        ParamSpec("ppm", float, None, "how much faster (negative: slower) the clock runs, in parts per "
                  "million; up to +-500 through the frequency, beyond through the tick",
                  minimum=-MAX_PPM, maximum=MAX_PPM),
    ),
    Kind.CLOCK_STROBE: (
        ParamSpec("offset", float, None, "seconds the wall clock jumps by, then back, at most 10 years"),
        ParamSpec("interval", float, 1.0, "seconds between two jumps", minimum=0.01, maximum=3600.0),
    ),
}
PREPARERS: dict[Kind, Preparer] = {
    Kind.CLOCK_STEP: _step,
    Kind.CLOCK_SKEW: _skew,
    Kind.CLOCK_STROBE: _strobe,
}
