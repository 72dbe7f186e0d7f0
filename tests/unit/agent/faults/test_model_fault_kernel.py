"""The model fault kernel behaves as the real port does where the lease tests rely on it: what
is idempotent, what is EBUSY, what a swap does to a suspended device, and how failures are
injected.  Through :func:`run_step`, as the engine and the keeper call it."""

from __future__ import annotations

import errno

import pytest

from pyqga.agent.faults.dm import TableLine
from pyqga.agent.faults.recipes import run_step, table_step
from tests.rig.model_kernel import ModelFaultKernel

LINEAR = [TableLine(0, 8, "linear", "8:16 0")]
ERROR = [TableLine(0, 8, "error", "")]


def kernel() -> ModelFaultKernel:
    return ModelFaultKernel({"/m": 1000, "/m/sub": 50}, {"vg": LINEAR})


def test_freeze_twice_is_ebusy_and_thaw_is_idempotent() -> None:
    k = kernel()
    run_step({"op": "freeze", "path": "/m"}, k)
    with pytest.raises(OSError) as caught:
        run_step({"op": "freeze", "path": "/m"}, k)
    assert caught.value.errno == errno.EBUSY
    run_step({"op": "thaw", "path": "/m"}, k)
    run_step({"op": "thaw", "path": "/m"}, k)   # EINVAL in the kernel: done
    assert [(c.op, c.target) for c in k.changes] == [("freeze", "/m"), ("thaw", "/m")]


def test_fill_takes_the_space_of_its_filesystem_and_unlink_gives_it_back() -> None:
    k = kernel()
    before = k.state()
    run_step({"op": "fill", "path": "/m/sub/f", "free-bytes": 10}, k)
    assert k.free == {"/m": 1000, "/m/sub": 10}
    with pytest.raises(FileExistsError):
        run_step({"op": "fill", "path": "/m/sub/f", "free-bytes": 10}, k)
    run_step({"op": "unlink", "path": "/m/sub/f"}, k)
    run_step({"op": "unlink", "path": "/m/sub/f"}, k)   # ENOENT: done
    assert k.state() == before and k.count() == 2


def test_a_file_on_a_frozen_filesystem_would_hang() -> None:
    k = kernel()
    run_step({"op": "freeze", "path": "/m"}, k)
    with pytest.raises(AssertionError, match="waits for its thaw"):
        run_step({"op": "fill", "path": "/m/f", "free-bytes": 0}, k)


def test_dm_swap_suspend_and_resume() -> None:
    k = kernel()
    run_step({"op": "dm-suspend", "name": "vg"}, k)
    run_step({"op": "dm-suspend", "name": "vg"}, k)    # already: no-op
    run_step(table_step("vg", ERROR), k)                # a swap also resumes
    assert k.state()["dm:vg"] == (tuple(ERROR), None, False)
    run_step(table_step("vg", LINEAR), k)
    run_step(table_step("vg", LINEAR), k)               # the same table again: no change
    run_step({"op": "dm-resume", "name": "vg"}, k)      # an active device: no-op
    assert [c.op for c in k.changes] == ["dm-suspend", "dm-table", "dm-resume", "dm-table"]
    with pytest.raises(OSError) as caught:
        run_step({"op": "dm-resume", "name": "nope"}, k)
    assert caught.value.errno == errno.ENXIO


def test_failures_come_once_before_or_after_the_change() -> None:
    k = kernel()
    k.fail_next("freeze")
    k.fail_next("freeze", errno.ENOSPC, after=True)
    with pytest.raises(OSError) as caught:
        run_step({"op": "freeze", "path": "/m"}, k)
    assert caught.value.errno == errno.EIO and "/m" not in k.frozen
    with pytest.raises(OSError) as caught:
        run_step({"op": "freeze", "path": "/m"}, k)
    assert caught.value.errno == errno.ENOSPC and "/m" in k.frozen
    run_step({"op": "thaw", "path": "/m"}, k)           # the queue is empty again
    assert k.count("freeze") == k.count("thaw") == 1


def test_a_clone_has_the_state_and_nothing_else() -> None:
    k = kernel()
    k.job = "f1 apply"
    run_step({"op": "fill", "path": "/m/f", "free-bytes": 0}, k)
    k.fail_next("unlink")
    twin = k.clone()
    assert twin.state() == k.state() and twin.changes == [] and twin.failures == {}
    run_step({"op": "unlink", "path": "/m/f"}, twin)
    assert twin.state() != k.state() and k.count(job="f1 apply") == 1


def test_signals_reach_only_the_process_that_started_when_recorded() -> None:
    from tests.rig.model_kernel import ModelFaultKernel
    kernel = ModelFaultKernel({}, {}, processes={40: 1000, 41: 2000})
    kernel.signal(40, 999, 19)      # a reused pid (another start time): left alone
    assert kernel.stopped == set()
    kernel.signal(40, 1000, 19)     # SIGSTOP
    kernel.signal(40, 1000, 19)     # again: no change
    assert kernel.stopped == {40} and kernel.count("signal") == 1
    kernel.signal(40, 1000, 18)     # SIGCONT
    kernel.signal(41, 2000, 15)     # SIGTERM ends it
    kernel.signal(41, 2000, 18)     # gone: nothing
    assert kernel.stopped == set() and 41 not in kernel.processes and kernel.count("signal") == 3
