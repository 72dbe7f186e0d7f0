"""Helpers for tests that freeze through the driver directly, with no agent process: a
:class:`Freezer` that can only see the test's loop filesystems, and a kernel that fails on
purpose. Freeze and thaw go through the real driver and state machine (no state file, no keeper,
no deadline watcher); the one seam used is :class:`LinuxKernel`, subclassed to inject a failure;
every other call reaches the kernel."""

from __future__ import annotations

import errno
import logging
import os

from pyqga.agent.freeze.driver import Freezer
from pyqga.agent.freeze.kernel import LinuxKernel
from pyqga.agent.freeze.planner import FreezePlanner
from tests.rig.loopfs import LoopMounts, thaw_fully


def freezer_for(loops: LoopMounts, kernel: LinuxKernel | None = None,
                exclude: tuple[str, ...] = ()) -> Freezer:
    """A freezer that cannot see any filesystem but the test's own."""
    planner = FreezePlanner(kernel or LinuxKernel(), include=[loops.glob()], exclude=exclude)
    return Freezer(planner=planner, log=logging.getLogger("pyqga.test"))


def frozen_paths(freezer: Freezer) -> set[str]:
    return {entry["mountpoint"] for entry in freezer.info()["frozen"]}


def make(loops: LoopMounts, *names: str) -> list[str]:
    return [str(loops.add(name).mountpoint) for name in names]


def assert_thawed(*paths: str) -> None:
    """Probe with FITHAW: 0 successful thaws means it was not frozen."""
    assert [p for p in paths if thaw_fully(p)] == [], "left frozen"


class FailingKernel(LinuxKernel):
    """The real kernel, except that freezing one path (or thawing one path) fails.

    By path, not by call number: independent filesystems are frozen concurrently."""

    def __init__(self, fail_freeze_path: str | None = None, fail_thaw_path: str | None = None,
                 error: int = errno.EIO) -> None:
        super().__init__()
        self.fail_freeze_path = fail_freeze_path
        self.fail_thaw_path = fail_thaw_path
        self.error = error
        self.freeze_calls: list[str] = []

    def freeze(self, path: str) -> None:
        self.freeze_calls.append(path)
        if path == self.fail_freeze_path:
            raise OSError(self.error, os.strerror(self.error), path)
        super().freeze(path)

    def thaw(self, path: str) -> None:
        if path == self.fail_thaw_path:
            raise OSError(self.error, os.strerror(self.error), path)
        super().thaw(path)


def process_state(pid: int) -> str:
    """The state letter /proc shows for a process ("D": uninterruptible sleep, "Z": zombie)."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]
