"""The guest's clocks for the clock faults: reading them, the kernel's rate (adjtimex), steps,
and *true time*, the arithmetic a revert uses to put the wall clock back.

True time is what CLOCK_REALTIME would read had no fault touched it.  A reference is read when a
fault is prepared: the wall clock between two readings of CLOCK_MONOTONIC and of
CLOCK_MONOTONIC_RAW (``real``, ``mono``, ``raw``).  Then true time is the reference plus how
long a clock the fault did not move has run since:

- ``clock-step`` and ``clock-strobe`` step CLOCK_REALTIME only: ``true = real + (mono_now -
  mono)``.  CLOCK_MONOTONIC runs at every rate the kernel runs at (a time daemon's discipline
  included), exactly as the wall clock would have.
- ``clock-skew`` changes the kernel's rate (adjtimex frequency or tick), which slews
  CLOCK_MONOTONIC as much as CLOCK_REALTIME, so it cannot say how long the fault held.
  CLOCK_MONOTONIC_RAW, the clocksource at its nominal rate, which no adjtimex moves, does:
  ``true = real + (raw_now - raw) * rate``, with ``rate`` the kernel's rate before the fault
  (:func:`rate_of`).  Its error is the difference between that rate and how fast
  CLOCK_MONOTONIC really ran against the raw clock before (the rounding of the clocksource's
  multiplier: a fraction of a ppm).  Taking only the skew's share off CLOCK_MONOTONIC instead
  would err by the skew times the time from the reference to the apply (the state file and the
  keeper are written in between), 30 ms at 10 % for 0.3 s: measured in the keeper matrix, so not.

The revert *steps* the wall clock by true time less its reading (:func:`set_true_time`), read
as the reference is, rather than setting an absolute time: nothing is lost between a read and a
set, so reverts do not add up an error.

Times are integers in nanoseconds: a float holds a Unix time to a quarter of a microsecond only.

Nothing here imports lazily: the keeper runs these calls.  ``adjtimex`` is the C library's
(ctypes, ``struct timex`` as in ``<sys/timex.h>`` on 64-bit Linux), loaded when the module is.
"""

from __future__ import annotations

import ctypes
import os
import time
from typing import NamedTuple

# adjtimex modes (<sys/timex.h>)
ADJ_FREQUENCY = 0x0002
ADJ_SETOFFSET = 0x0100
ADJ_NANO = 0x2000
ADJ_TICK = 0x4000
MAX_FREQ_PPM = 500            # the kernel's MAXFREQ: |freq| beyond it is clamped
FREQ_SCALE = 1 << 16          # timex.freq is in ppm << 16 ("scaled ppm")
USER_HZ = os.sysconf("SC_CLK_TCK")   # timex.tick is in microseconds per USER_HZ tick: 100 on Linux
TICK_NOMINAL = 1_000_000 // USER_HZ  # 10000 us: the rate 1
NS = 1_000_000_000

SETTLED_NS = 1000   # a revert nearer true time than this steps nothing (the keeper runs it twice)


class _Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class Timex(ctypes.Structure):
    """``struct timex``: ctypes pads the ints before longs as the C compiler does."""

    _fields_ = [("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long),
                ("maxerror", ctypes.c_long), ("esterror", ctypes.c_long), ("status", ctypes.c_int),
                ("constant", ctypes.c_long), ("precision", ctypes.c_long), ("tolerance", ctypes.c_long),
                ("time", _Timeval), ("tick", ctypes.c_long), ("ppsfreq", ctypes.c_long),
                ("jitter", ctypes.c_long), ("shift", ctypes.c_int), ("stabil", ctypes.c_long),
                ("jitcnt", ctypes.c_long), ("calcnt", ctypes.c_long), ("errcnt", ctypes.c_long),
                ("stbcnt", ctypes.c_long), ("tai", ctypes.c_int), ("_reserved", ctypes.c_int * 11)]


_libc = ctypes.CDLL(None, use_errno=True)
_adjtimex = _libc.adjtimex
_adjtimex.argtypes = [ctypes.POINTER(Timex)]
_adjtimex.restype = ctypes.c_int


class Rate(NamedTuple):
    """The kernel's clock rate: ``tick`` (us per USER_HZ tick) and ``freq`` (scaled ppm)."""

    tick: int
    freq: int


class Reference(NamedTuple):
    """The wall clock, CLOCK_MONOTONIC and CLOCK_MONOTONIC_RAW read together, in nanoseconds."""

    real_ns: int
    mono_ns: int
    raw_ns: int


def adjtimex(timex: Timex) -> int:
    """adjtimex(2); the clock state it returns (5, TIME_ERROR: not synchronized)."""
    state = int(_adjtimex(ctypes.byref(timex)))
    if state < 0:
        number = ctypes.get_errno()
        raise OSError(number, f"adjtimex: {os.strerror(number)}")
    return state


def read_rate() -> Rate:
    """The kernel's rate now (adjtimex with no modes: a read, allowed to anyone)."""
    timex = Timex()
    adjtimex(timex)
    return Rate(int(timex.tick), int(timex.freq))


def set_rate(rate: Rate) -> None:
    """Set tick and frequency in one call (setting them again is no change)."""
    timex = Timex(modes=ADJ_TICK | ADJ_FREQUENCY, tick=rate.tick, freq=rate.freq)
    adjtimex(timex)


def step_timex(offset_ns: int) -> Timex:
    """The adjtimex request that steps CLOCK_REALTIME by ``offset_ns``."""
    seconds, nanoseconds = divmod(offset_ns, NS)   # tv_nsec must be in [0, 1e9), tv_sec may be < 0
    return Timex(modes=ADJ_SETOFFSET | ADJ_NANO, time=_Timeval(seconds, nanoseconds))


def step(offset_ns: int) -> None:
    """Step CLOCK_REALTIME by ``offset_ns``: ADJ_SETOFFSET adds it in the kernel, at once, so no
    time passes between a read and a set (clock_settime would lose that)."""
    adjtimex(step_timex(offset_ns))


def rate_of(rate: Rate) -> float:
    """How fast the wall clock runs against the clocksource's nominal rate at ``rate``: the
    kernel's second is ``tick * USER_HZ`` us plus ``freq`` ppm (ntp_update_frequency)."""
    return (rate.tick * USER_HZ + rate.freq / FREQ_SCALE) / 1e6


def skewed(before: Rate, ppm: float) -> Rate:
    """The rate ``ppm`` faster (slower if negative) than ``before``: the frequency alone while it
    stays within the kernel's +-500 ppm (a resolution of 1/65536 ppm), else the tick (steps of
    100 ppm) to the nearest whole tick and the frequency for the rest.  ValueError beyond the
    kernel's tick range (+-10 %)."""
    total = (before.tick * USER_HZ - 1e6) + before.freq / FREQ_SCALE + ppm   # ppm off the rate 1
    freq = total - (before.tick * USER_HZ - 1e6)
    tick = before.tick
    if abs(freq) > MAX_FREQ_PPM:
        tick = round((1e6 + total) / USER_HZ)
        freq = total - (tick * USER_HZ - 1e6)
    if not 900_000 // USER_HZ < tick < 1_100_000 // USER_HZ:
        raise ValueError(f"a rate {total:+.0f} ppm off nominal is beyond the kernel's tick range (+-10 %)")
    return Rate(tick, round(freq * FREQ_SCALE))


def reference() -> Reference:
    """The wall clock read between two readings of each monotonic clock, with their midpoints."""
    get = time.clock_gettime_ns
    mono, raw = get(time.CLOCK_MONOTONIC), get(time.CLOCK_MONOTONIC_RAW)
    real = get(time.CLOCK_REALTIME)
    raw_after, mono_after = get(time.CLOCK_MONOTONIC_RAW), get(time.CLOCK_MONOTONIC)
    return Reference(real, (mono + mono_after) // 2, (raw + raw_after) // 2)


def true_ns(ref: Reference, raw_rate: float, now: Reference) -> int:
    """True time at ``now``'s monotonic readings: by CLOCK_MONOTONIC if ``raw_rate`` is 0, else by
    CLOCK_MONOTONIC_RAW at that rate (see the module docstring)."""
    if raw_rate:
        return ref.real_ns + round((now.raw_ns - ref.raw_ns) * raw_rate)
    return ref.real_ns + (now.mono_ns - ref.mono_ns)


def true_offset_ns(ref: Reference, raw_rate: float, now: Reference) -> int:
    """How far true time is ahead of the wall clock at ``now``."""
    return true_ns(ref, raw_rate, now) - now.real_ns


def set_true_time(ref: Reference, raw_rate: float) -> None:
    """Step the wall clock to true time.  Idempotent: run again, it finds nothing to step."""
    offset = true_offset_ns(ref, raw_rate, reference())
    if abs(offset) >= SETTLED_NS:
        step(offset)
