"""The clock kinds without touching a clock: their parameters and refusals, their recipes run on
the model kernel's clock (the preparers read the model clock instead of the real one), and the
true-time and rate arithmetic of :mod:`pyqga.agent.faults.timekeeping`.  Never this machine's
clock: adjtimex is only ever called with no modes (a read) here."""

from __future__ import annotations

import ctypes
import json

import pytest

from pyqga.agent.faults import catalog, clock, timekeeping
from pyqga.agent.faults.kinds import Context, Spec
from pyqga.agent.faults.machine import Refused
from pyqga.agent.faults.recipes import StepError, check_step, run_step, run_steps, undo_order
from pyqga.agent.faults.timekeeping import NS, Rate, Reference
from tests.rig.model_kernel import MODEL_BOOT, ModelFaultKernel

CONTEXT = Context([], frozenset())
NOMINAL = Rate(timekeeping.TICK_NOMINAL, 0)


@pytest.fixture
def kernel(monkeypatch: pytest.MonkeyPatch) -> ModelFaultKernel:
    """The model kernel, and the preparers reading its clock, its boot and no time daemon."""
    k = ModelFaultKernel({}, {})
    monkeypatch.setattr(clock.timekeeping, "reference", k.reference)
    monkeypatch.setattr(clock.timekeeping, "read_rate", lambda: k.rate)
    monkeypatch.setattr(clock, "read_boot_id", lambda: MODEL_BOOT)
    monkeypatch.setattr(clock, "time_daemons", lambda: [])
    return k


def prepare(kind: str, params: dict[str, object], force: bool = False, target: str = "clock") -> Spec:
    spec = catalog.prepare(kind, target, params, force, CONTEXT)
    for step in spec.apply + spec.undo:   # as the snapshot carries them, and reads them back
        check_step(json.loads(json.dumps(step)))
    return spec


def true_offset(k: ModelFaultKernel) -> int:
    """How far the model's wall clock is from true time (the start's wall clock plus raw time:
    the model's rate is nominal in these tests but while a skew holds)."""
    return k.reference().real_ns - (1_700_000_000 * NS + k.raw_ns - 100 * NS)


def undo(spec: Spec, k: ModelFaultKernel) -> None:
    error, _ = run_steps(undo_order(spec.undo), k)
    assert error is None, error


# --- true time and rates ----------------------------------------------------------------------


def test_true_time_is_the_reference_plus_monotonic_or_scaled_raw_time() -> None:
    ref = Reference(1000 * NS, 50 * NS, 70 * NS)
    assert timekeeping.true_ns(ref, 0.0, Reference(0, 53 * NS, 99 * NS)) == 1003 * NS
    # a skew held for 10 s of the raw clock, on a clock that ran 100 ppm fast before: 10.001 s
    assert timekeeping.true_ns(ref, 1.0001, Reference(0, 99 * NS, 80 * NS)) == 1010 * NS + 1_000_000
    # a wall clock an hour ahead: true time is 3600 s behind it, the revert steps by -3600 s
    assert timekeeping.true_offset_ns(ref, 0.0, Reference(4603 * NS, 53 * NS, 73 * NS)) == -3600 * NS


def test_rates_from_tick_and_frequency() -> None:
    assert timekeeping.rate_of(NOMINAL) == 1.0
    assert timekeeping.rate_of(Rate(10000, 500 << 16)) == pytest.approx(1.0005, abs=1e-12)
    assert timekeeping.rate_of(Rate(10100, 0)) == pytest.approx(1.01, abs=1e-12)


def test_a_small_skew_is_the_frequency_a_large_one_the_tick() -> None:
    assert timekeeping.skewed(NOMINAL, 500) == Rate(10000, 500 << 16)
    assert timekeeping.skewed(NOMINAL, -250.5) == Rate(10000, round(-250.5 * 65536))
    assert timekeeping.skewed(Rate(10000, 100 << 16), 300) == Rate(10000, 400 << 16)   # on top of the rate
    big = timekeeping.skewed(NOMINAL, 12_345)
    assert big == Rate(10123, 45 << 16)
    assert timekeeping.rate_of(big) == pytest.approx(1.012345, abs=1e-12)
    assert timekeeping.skewed(NOMINAL, -600).tick == 9994
    with pytest.raises(ValueError, match="tick range"):
        timekeeping.skewed(Rate(10900, 0), 20_000)


def test_a_step_request_keeps_nanoseconds_positive() -> None:
    timex = timekeeping.step_timex(-1_500_000_000)
    assert (timex.time.tv_sec, timex.time.tv_usec) == (-2, 500_000_000)
    assert timex.modes == timekeeping.ADJ_SETOFFSET | timekeeping.ADJ_NANO
    timex = timekeeping.step_timex(3600 * NS + 7)
    assert (timex.time.tv_sec, timex.time.tv_usec) == (3600, 7)
    assert ctypes.sizeof(timekeeping.Timex) == 208   # struct timex on 64-bit Linux


def test_reading_the_rate_is_allowed_and_changes_nothing() -> None:
    rate = timekeeping.read_rate()   # adjtimex with modes 0: a read
    assert 9000 < rate.tick < 11000 and abs(rate.freq) <= 500 << 16


# --- parameters and refusals ------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "params", "message"), [
    ("clock-step", {"offset": 3.2e8}, r"beyond \+-10 years"),
    ("clock-step", {"offset": -3.2e8}, r"beyond \+-10 years"),
    ("clock-step", {"offset": 0}, "changes nothing"),
    ("clock-step", {}, "needs the parameter 'offset'"),
    ("clock-strobe", {"offset": 4e8}, r"beyond \+-10 years"),
    ("clock-strobe", {"offset": 1, "interval": 0.001}, "interval must be between"),
    ("clock-skew", {"ppm": 200_000}, "ppm must be between"),
    ("clock-skew", {"ppm": "fast"}, "ppm must be float"),
])
def test_bad_parameters_are_refused(kernel: ModelFaultKernel, kind: str, params: dict[str, object],
                                    message: str) -> None:
    with pytest.raises(Refused, match=message):
        prepare(kind, params)


def test_ten_years_is_allowed_and_the_target_is_the_clock(kernel: ModelFaultKernel) -> None:
    assert prepare("clock-step", {"offset": -clock.MAX_OFFSET}).device == "clock"
    with pytest.raises(Refused, match="takes the target 'clock', not '/data'"):
        prepare("clock-step", {"offset": 1}, target="/data")


def test_a_running_time_daemon_is_refused_unless_forced(kernel: ModelFaultKernel,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(clock, "time_daemons", lambda: [(321, "chronyd")])
    for kind, params in (("clock-step", {"offset": 1}), ("clock-skew", {"ppm": 1}),
                         ("clock-strobe", {"offset": 1})):
        with pytest.raises(Refused, match=r"chronyd \(pid 321\) disciplines the clock.*pass force"):
            prepare(kind, params)
        prepare(kind, params, force=True)


def test_time_daemons_are_found_by_name_and_a_stopped_one_does_not_count(
        monkeypatch: pytest.MonkeyPatch) -> None:
    names = {10: "chronyd", 11: "systemd-timesyn", 12: "chrony", 13: "ntpd", 14: "bash"}
    states = {10: "S", 11: "R", 13: "T"}
    monkeypatch.setattr(clock, "all_pids", lambda: sorted(names))
    monkeypatch.setattr(clock, "comm", names.get)
    monkeypatch.setattr(clock, "process_state", lambda pid: states.get(pid, "S"))
    assert clock.time_daemons() == [(10, "chronyd"), (11, "systemd-timesyn")]


def test_capabilities_take_the_clock_target_without_parameters(kernel: ModelFaultKernel) -> None:
    kinds = {k["kind"]: k for k in catalog.capabilities("clock", CONTEXT)}
    for kind in ("clock-step", "clock-skew", "clock-strobe"):
        assert kinds[kind]["available"], kinds[kind]


def test_clock_set_is_checked() -> None:
    step = {"op": "clock-set", "real-ns": 1, "mono-ns": 1, "raw-ns": 1, "raw-rate": 2.0, "boot": "b"}
    with pytest.raises(StepError, match=r"raw-rate 2\.0 is out of range"):
        check_step(step)
    with pytest.raises(StepError, match="raw-rate is not a float"):
        check_step({**step, "raw-rate": 0})
    with pytest.raises(StepError, match="raw-ns is not a int"):
        check_step({**step, "raw-ns": 1.5})


# --- recipes on the model clock ---------------------------------------------------------------


def test_a_step_moves_the_wall_clock_and_the_revert_brings_true_time_back(kernel: ModelFaultKernel) -> None:
    spec = prepare("clock-step", {"offset": 3600.25})
    kernel.advance_clock(2.0)   # between the reference and the apply
    run_steps(spec.apply, kernel)
    assert true_offset(kernel) == 3_600_250_000_000
    mono = kernel.mono_ns
    kernel.advance_clock(30.0)
    assert kernel.mono_ns - mono == 30 * NS   # the monotonic clock did not move with the step
    undo(spec, kernel)
    assert true_offset(kernel) == 0
    undo(spec, kernel)   # the keeper's second run: no change
    assert true_offset(kernel) == 0 and kernel.count("clock-set") == 1


def test_a_skew_drifts_and_the_revert_restores_the_rate_and_true_time(kernel: ModelFaultKernel) -> None:
    spec = prepare("clock-skew", {"ppm": 500})
    run_steps(spec.apply, kernel)
    assert kernel.rate == Rate(10000, 500 << 16)
    kernel.advance_clock(10.0)
    assert true_offset(kernel) == 5_000_000   # 500 ppm of 10 s, and CLOCK_MONOTONIC ran as fast
    assert kernel.mono_ns - kernel.raw_ns == 5_000_000
    undo(spec, kernel)
    assert kernel.rate == NOMINAL and true_offset(kernel) == 0
    kernel.advance_clock(10.0)
    assert true_offset(kernel) == 0


def test_a_skew_on_a_fast_clock_returns_to_the_fast_clock_s_true_time(kernel: ModelFaultKernel) -> None:
    """The rate before the fault scales the raw clock: a clock 100 ppm fast ran 100 ppm fast
    against CLOCK_MONOTONIC_RAW all along, and true time does so too."""
    kernel.rate = Rate(10000, 100 << 16)
    start_real, start_raw = kernel.reference().real_ns, kernel.raw_ns
    spec = prepare("clock-skew", {"ppm": -20_000})
    run_steps(spec.apply, kernel)
    assert kernel.rate == Rate(9801, 0)   # -19900 ppm off nominal: whole ticks, no frequency left
    kernel.advance_clock(100.0)
    undo(spec, kernel)
    assert kernel.rate == Rate(10000, 100 << 16)
    expected = start_real + round((kernel.raw_ns - start_raw) * 1.0001)
    assert abs(kernel.reference().real_ns - expected) < timekeeping.SETTLED_NS


def test_a_strobe_is_a_worker_reaped_before_the_clock_is_set(kernel: ModelFaultKernel) -> None:
    spec = prepare("clock-strobe", {"offset": -60, "interval": 0.5})
    (spawn,) = spec.apply
    assert spawn["worker"] == "clock-strobe" and spawn["args"]["offset-ns"] == -60 * NS
    assert spawn["args"]["interval-ns"] == 500_000_000
    assert [s["op"] for s in undo_order(spec.undo)] == ["reap", "clock-set"]
    run_steps(spec.apply, kernel)
    kernel.clock_step(-60 * NS)   # what the worker does between the model's steps
    undo(spec, kernel)
    assert kernel.workers == set() and true_offset(kernel) == 0


def test_a_clock_set_of_another_boot_does_nothing(kernel: ModelFaultKernel) -> None:
    spec = prepare("clock-step", {"offset": 10})
    run_steps(spec.apply, kernel)
    kernel.boot = "another-boot"
    undo(spec, kernel)
    assert true_offset(kernel) == 10 * NS and kernel.count("clock-set") == 0


def test_a_failed_step_or_rate_changed_nothing(kernel: ModelFaultKernel) -> None:
    spec = prepare("clock-step", {"offset": 10})
    kernel.fail_next("clock-step")
    error, changed = run_steps(spec.apply, kernel)
    assert error is not None and not changed and true_offset(kernel) == 0
    with pytest.raises(OSError):
        run_step({"op": "clock-rate", "tick": 20000, "freq": 0}, kernel)
