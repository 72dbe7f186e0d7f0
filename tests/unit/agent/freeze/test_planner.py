"""What the planner picks on real filesystems (agent/freeze/planner.py): freeze-all limited by
the include and exclude globs, freeze-list's checks, bind mounts, odd mount point names, tmpfs,
and the order (a loop image's filesystem before the one holding it).

Root tests freeze only loop-mounted ext4 images made under the test's tmp dir (whose name has a
space, so mountinfo's ``\\040`` escape is always exercised), and every planner is built with an
include glob limited to that dir. Freezes go through the real driver
(:func:`tests.rig.driver_direct.freezer_for`).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest

from pyqga.protocol.errors import AgentError, ErrorKind
from tests.rig.driver_direct import assert_thawed, freezer_for, frozen_paths, make
from tests.rig.loopfs import LoopMounts, thaw_fully

# -- planning freeze-all and freeze-list -------------------------------------------------------


def test_freeze_all_limited_by_include_counts_and_reverse_order(spaced_loops: LoopMounts) -> None:
    paths = make(spaced_loops, "a", "b", "c")
    freezer = freezer_for(spaced_loops)
    assert [m.mountpoint for m in freezer.planner.plan_all()] == paths[::-1]
    assert freezer.freeze() == 3
    info = freezer.info()
    assert frozen_paths(freezer) == set(paths) and {e["type"] for e in info["frozen"]} == {"ext4"}
    assert freezer.thaw() == 3
    assert freezer.thaw() == 0  # nothing left: every FITHAW said EINVAL
    assert_thawed(*paths)


def test_include_and_exclude_filters(spaced_loops: LoopMounts) -> None:
    a, b, c = make(spaced_loops, "a", "b", "c")
    freezer = freezer_for(spaced_loops, exclude=(b,))
    assert [m.mountpoint for m in freezer.planner.plan_all()] == [c, a]
    assert freezer.freeze() == 2
    assert thaw_fully(b) == 0
    assert freezer.thaw() == 2
    with pytest.raises(AgentError) as err:
        freezer.freeze([b])
    assert err.value.kind is ErrorKind.INVALID_PARAMS and b in err.value.message
    assert_thawed(a, b, c)


def test_freeze_list_counts_trailing_slash_and_duplicates(spaced_loops: LoopMounts) -> None:
    a, b, c = make(spaced_loops, "a", "b", "c")
    freezer = freezer_for(spaced_loops)
    assert [m.mountpoint for m in freezer.planner.plan_list([a, c + "/", c])] == [c, a]  # mount order
    assert freezer.freeze([a, c + "/", c]) == 2
    assert frozen_paths(freezer) == {a, c}
    assert thaw_fully(b) == 0
    assert freezer.thaw() == 2
    assert_thawed(a, b, c)


def test_freeze_list_rejects_non_mount_point_and_freezes_nothing(spaced_loops: LoopMounts) -> None:
    a, b = make(spaced_loops, "a", "b")
    plain = Path(a) / "just a dir"
    plain.mkdir()
    freezer = freezer_for(spaced_loops)
    for bad, named, words in (
        ([a, str(plain), b], str(plain), "is not a mount point"),
        ([a, str(spaced_loops.base / "missing")], str(spaced_loops.base / "missing"), "is not a mount point"),
        ([a, "relative/path"], "relative/path", "is not an absolute path"),
        ([], "", "empty"),
    ):
        with pytest.raises(AgentError) as err:
            freezer.freeze(bad)
        assert err.value.kind is ErrorKind.INVALID_PARAMS
        assert words in err.value.message and named in err.value.message
        assert_thawed(a, b)


def test_tmpfs_in_list_is_skipped_not_counted(spaced_loops: LoopMounts,
                                              caplog: pytest.LogCaptureFixture) -> None:
    (a,) = make(spaced_loops, "a")
    tmp = str(spaced_loops.tmpfs(spaced_loops.base / "tmp fs"))
    freezer = freezer_for(spaced_loops)
    with caplog.at_level(logging.INFO, logger="pyqga.test"):
        assert freezer.freeze([a, tmp]) == 1
    assert f"not frozen: {tmp} (EOPNOTSUPP)" in caplog.messages
    assert frozen_paths(freezer) == {a}
    assert tmp not in [m.mountpoint for m in freezer.planner.plan_all()]  # major 0: never in freeze-all
    assert freezer.thaw() == 1
    assert_thawed(a)


def test_bind_mount_is_the_same_filesystem(spaced_loops: LoopMounts) -> None:
    (a,) = make(spaced_loops, "a")
    (Path(a) / "sub").mkdir()
    bind = str(spaced_loops.bind(Path(a) / "sub", spaced_loops.base / "a bind"))
    freezer = freezer_for(spaced_loops)
    assert [m.mountpoint for m in freezer.planner.plan_all()] == [a]
    assert freezer.freeze() == 1
    assert freezer.thaw() == 1
    assert freezer.freeze([a, bind]) == 1
    assert freezer.thaw() == 1
    assert freezer.freeze([bind]) == 1  # the bind mount stands for its device
    assert frozen_paths(freezer) == {bind}
    epoch = freezer.info()["epoch"]
    assert freezer.thaw(epoch) == 1  # found through the first mount of the device: not "lost"
    assert_thawed(a, bind)


def test_mount_point_with_spaces_and_tab(spaced_loops: LoopMounts) -> None:
    fs = spaced_loops.add("odd", mountpoint=spaced_loops.base / "two  spaces" / "tab\there")
    freezer = freezer_for(spaced_loops)
    assert freezer.freeze([str(fs.mountpoint)]) == 1
    assert frozen_paths(freezer) == {str(fs.mountpoint)}
    assert freezer.thaw() == 1
    assert_thawed(str(fs.mountpoint))


def test_image_on_a_loop_fs_freezes_first_and_does_not_deadlock(spaced_loops: LoopMounts) -> None:
    outer = spaced_loops.add("outer", size_mb=32)
    inner = spaced_loops.add("inner", image=outer.mountpoint / "inner.img",
                      mountpoint=outer.mountpoint / "inner mnt", size_mb=16)
    freezer = freezer_for(spaced_loops)
    waves = freezer.planner.waves(freezer.planner.plan_all())
    assert [[t.path for t in wave] for wave in waves] == [[str(inner)], [str(outer)]]
    for mountpoints in (None, [str(outer), str(inner)]):
        # Dirty data on the inner fs: its FIFREEZE must write through to the outer fs's file,
        # which would block forever if the outer fs were frozen first.
        (inner.mountpoint / "dirty").write_bytes(os.urandom(4 * 1024 * 1024))
        t0 = time.monotonic()
        assert freezer.freeze(mountpoints) == 2
        assert time.monotonic() - t0 < 20
        assert freezer.thaw() == 2
    assert_thawed(str(inner), str(outer))
