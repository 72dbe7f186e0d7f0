"""The freeze driver on real filesystems (agent/freeze/driver.py): a writer blocks while frozen,
filesystems frozen by others, rollback when a freeze fails, thaw that keeps going, the flush.

Root tests freeze only loop-mounted ext4 images made under the test's tmp dir (whose name has a
space, so mountinfo's ``\\040`` escape is always exercised), and every planner is built with an
include glob limited to that dir. Freeze and thaw go through the real driver and
state machine (:class:`pyqga.agent.freeze.driver.Freezer`, no state file, no keeper, no deadline
watcher); the one seam used is :class:`LinuxKernel`, subclassed to inject a failure; every other
call reaches the kernel.
"""

from __future__ import annotations

import errno
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pyqga.agent.freeze.kernel import LinuxKernel, flush
from pyqga.protocol.errors import AgentError, ErrorKind
from tests.rig.driver_direct import (
    FailingKernel,
    assert_thawed,
    freezer_for,
    frozen_paths,
    make,
    process_state,
)
from tests.rig.loopfs import LoopMounts, freeze_directly, thaw_fully
from tests.rig.requirements import require_tool

# -- freezing and thawing ----------------------------------------------------------------------


WRITER = r"""
import os, sys
with open(sys.argv[1], "a") as f:
    print("ready", flush=True)
    f.write("written while frozen\n")
    f.flush()
    os.fsync(f.fileno())
print("done", flush=True)
"""


def test_writer_blocks_while_frozen_and_finishes_after_thaw(spaced_loops: LoopMounts) -> None:
    (mnt,) = make(spaced_loops, "data")
    target = Path(mnt) / "log"
    target.write_text("before\n")  # created before the freeze: creating a file would block too
    freezer = freezer_for(spaced_loops)
    writer = None
    try:
        t0 = time.monotonic()
        assert freezer.freeze([mnt]) == 1
        freeze_time = time.monotonic() - t0
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(target)],
                                  stdout=subprocess.PIPE, text=True)
        assert writer.stdout is not None
        assert writer.stdout.readline().strip() == "ready"
        time.sleep(0.5)
        assert writer.poll() is None, "the write went through a frozen filesystem"
        assert process_state(writer.pid) == "D"
        t1 = time.monotonic()
        assert freezer.thaw() == 1
        assert writer.wait(timeout=10) == 0
        released = time.monotonic() - t1
        assert writer.stdout.read().strip() == "done"
        assert target.read_text() == "before\nwritten while frozen\n"
        print(f"freeze {freeze_time * 1000:.1f} ms, writer released {released * 1000:.1f} ms after thaw")
    finally:
        spaced_loops.thaw_all()  # before touching the writer: a killed D-state process still waits
        if writer is not None and writer.poll() is None:
            writer.kill()
            writer.wait(timeout=10)


def test_already_frozen_is_skipped_then_counted_by_thaw(spaced_loops: LoopMounts,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    fsfreeze = require_tool("fsfreeze")
    a, b = make(spaced_loops, "a", "b")
    subprocess.run([fsfreeze, "-f", a], check=True)  # another tool froze it
    freezer = freezer_for(spaced_loops)
    with caplog.at_level(logging.INFO, logger="pyqga.test"):
        assert freezer.freeze([a, b]) == 1
    assert f"not frozen: {a} (EBUSY)" in caplog.messages
    assert frozen_paths(freezer) == {b}
    assert freezer.thaw() == 2  # the host's thaw thaws what others froze too (qemu-ga)
    assert_thawed(a, b)


def test_injected_error_rolls_back_everything(spaced_loops: LoopMounts) -> None:
    a, b, c = make(spaced_loops, "a", "b", "c")
    kernel = FailingKernel(fail_freeze_path=b)
    freezer = freezer_for(spaced_loops, kernel)
    with pytest.raises(AgentError) as err:
        freezer.freeze()
    assert err.value.kind is ErrorKind.COMMAND_FAILED
    assert err.value.message == f"failed to freeze {b}: Input/output error"
    assert err.value.data["path"] == b and err.value.data["errno"] == errno.EIO
    assert b in kernel.freeze_calls and set(kernel.freeze_calls) <= {a, b, c}
    assert freezer.status == "thawed" and freezer.info()["last-thaw"]["reason"] == "rollback"
    assert_thawed(a, b, c)


def test_rollback_leaves_others_freezes_alone(spaced_loops: LoopMounts) -> None:
    a, b, c = make(spaced_loops, "a", "b", "c")
    freeze_directly(c)  # someone else's freeze: EBUSY, skipped, and not ours to undo
    freezer = freezer_for(spaced_loops, FailingKernel(fail_freeze_path=a))  # c busy, b ok, a fails
    with pytest.raises(AgentError) as err:
        freezer.freeze([a, b, c])
    assert a in err.value.message
    assert thaw_fully(b) == 0  # rolled back
    assert thaw_fully(c) == 1  # still frozen by its owner
    assert_thawed(a, b, c)


def test_failed_rollback_stays_frozen_and_says_so(spaced_loops: LoopMounts) -> None:
    """Issue 9, fault 4: a FITHAW that fails during rollback leaves the filesystem frozen; the
    agent must keep reporting it frozen, not "thawed"."""
    a, b = make(spaced_loops, "a", "b")
    kernel = FailingKernel(fail_freeze_path=a, fail_thaw_path=b)  # b freezes, a fails, b's thaw fails
    freezer = freezer_for(spaced_loops, kernel)
    with pytest.raises(AgentError) as err:
        freezer.freeze([a, b])
    assert f"could not thaw {b}: Input/output error (still frozen)" in err.value.message
    assert err.value.data["unthawed"] == [{"path": b, "error": "Input/output error"}]
    assert freezer.status == "frozen" and freezer.frozen
    info = freezer.info()
    assert info["phase"] == "partly-thawed"
    assert [(e["mountpoint"], e["error"]) for e in info["frozen"]] == [(b, "Input/output error")]
    assert thaw_fully(b) == 1  # the kernel agrees: it was still frozen
    kernel.fail_thaw_path = None
    assert freezer.thaw() == 0  # someone (we, above) thawed it meanwhile
    assert freezer.status == "thawed"
    assert_thawed(a, b)


def test_thaw_keeps_going_and_reports_errors(spaced_loops: LoopMounts) -> None:
    a, b, c = make(spaced_loops, "a", "b", "c")
    assert freezer_for(spaced_loops).freeze([a, b, c]) == 3
    freezer = freezer_for(spaced_loops, FailingKernel(fail_thaw_path=b))
    with pytest.raises(AgentError) as err:
        freezer.thaw()
    assert err.value.kind is ErrorKind.COMMAND_FAILED
    assert err.value.data == {"thawed": 2, "errors": [{"path": b, "error": "Input/output error"}]}
    assert "thawed 2 filesystem(s)" in err.value.message and b in err.value.message
    assert thaw_fully(b) == 1  # the injected failure left it frozen; the others were thawed
    assert_thawed(a, b, c)


def test_flush_syncs_each_filesystem(spaced_loops: LoopMounts) -> None:
    paths = make(spaced_loops, "a", "b")
    for p in paths:
        (Path(p) / "dirty").write_bytes(os.urandom(1024 * 1024))
    kernel = LinuxKernel()
    assert flush(kernel, paths) == {}
    gone = str(spaced_loops.base / "gone")
    failing = flush(kernel, [*paths, gone])
    assert list(failing) == [gone]
    assert failing[gone].errno == errno.ENOENT
