"""The freeze engine, hooks, fsinfo/fstrim and the state file, on real filesystems.

Root tests freeze only loop-mounted ext4 images made under the test's tmp dir, and every
engine is built with an include glob limited to that dir. The one seam used is
:class:`FsIoctl`, subclassed to inject a failure; every other call reaches the kernel.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.fsfreeze.engine import FreezeEngine
from agent.fsfreeze.ioctls import FsIoctl
from agent.fsfreeze.mounts import Mount
from protocol.errors import AgentError, ErrorKind
from tests.support.loopfs import LoopMounts, freeze_directly, require_loop_support, thaw_fully

# -- fixtures and helpers ----------------------------------------------------------------------


@pytest.fixture
def loops(tmp_path: Path) -> Iterator[LoopMounts]:
    """Loop filesystems under a base dir whose name has a space, so every test exercises
    mountinfo's ``\\040`` escape."""
    require_loop_support()
    with LoopMounts(tmp_path / "loop fs") as lm:
        yield lm


def engine_for(loops: LoopMounts, **kwargs: object) -> FreezeEngine:
    """An engine that cannot see any filesystem but the test's own."""
    include = kwargs.pop("include", [loops.glob()])
    return FreezeEngine(include=include, **kwargs)  # type: ignore[arg-type]


def make(loops: LoopMounts, *names: str) -> list[str]:
    return [str(loops.add(name).mountpoint) for name in names]


def assert_thawed(*paths: str) -> None:
    """Probe with FITHAW: 0 successful thaws means it was not frozen."""
    assert [p for p in paths if thaw_fully(p)] == [], "left frozen"


class FailingIoctl(FsIoctl):
    """The real ioctls, except that the Nth freeze (or any thaw of one path) fails."""

    def __init__(self, fail_freeze_call: int | None = None, fail_thaw_path: str | None = None,
                 error: int = errno.EIO) -> None:
        self.fail_freeze_call = fail_freeze_call
        self.fail_thaw_path = fail_thaw_path
        self.error = error
        self.freeze_calls: list[str] = []

    def freeze(self, path: str) -> None:
        self.freeze_calls.append(path)
        if len(self.freeze_calls) == self.fail_freeze_call:
            raise OSError(self.error, os.strerror(self.error), path)
        super().freeze(path)

    def thaw(self, path: str) -> None:
        if path == self.fail_thaw_path:
            raise OSError(self.error, os.strerror(self.error), path)
        super().thaw(path)


WRITER = r"""
import os, sys
with open(sys.argv[1], "a") as f:
    print("ready", flush=True)
    f.write("written while frozen\n")
    f.flush()
    os.fsync(f.fileno())
print("done", flush=True)
"""


def process_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


# -- freezing and thawing ------------------------------------------------------------------------


def test_writer_blocks_while_frozen_and_finishes_after_thaw(loops: LoopMounts) -> None:
    (mnt,) = make(loops, "data")
    target = Path(mnt) / "log"
    target.write_text("before\n")  # created before the freeze: creating a file would block too
    engine = engine_for(loops)
    writer = None
    try:
        t0 = time.monotonic()
        assert engine.freeze_list([mnt]).count == 1
        freeze_time = time.monotonic() - t0
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(target)],
                                  stdout=subprocess.PIPE, text=True)
        assert writer.stdout is not None
        assert writer.stdout.readline().strip() == "ready"
        time.sleep(0.5)
        assert writer.poll() is None, "the write went through a frozen filesystem"
        assert process_state(writer.pid) == "D"
        t1 = time.monotonic()
        assert engine.thaw() == 1
        assert writer.wait(timeout=10) == 0
        released = time.monotonic() - t1
        assert writer.stdout.read().strip() == "done"
        assert target.read_text() == "before\nwritten while frozen\n"
        print(f"freeze {freeze_time * 1000:.1f} ms, writer released {released * 1000:.1f} ms after thaw")
    finally:
        loops.thaw_all()  # before touching the writer: a killed D-state process still waits
        if writer is not None and writer.poll() is None:
            writer.kill()
            writer.wait(timeout=10)


def test_freeze_all_limited_by_include_counts_and_reverse_order(loops: LoopMounts) -> None:
    paths = make(loops, "a", "b", "c")
    engine = engine_for(loops)
    assert [m.mountpoint for m in engine.plan_all()] == paths[::-1]
    outcome = engine.freeze_all()
    assert outcome.count == 3
    assert [m.mountpoint for m in outcome.frozen] == paths[::-1]
    assert {m.fstype for m in outcome.frozen} == {"ext4"}
    assert engine.thaw() == 3
    assert engine.thaw() == 0  # nothing left: every FITHAW said EINVAL
    assert_thawed(*paths)


def test_include_and_exclude_filters(loops: LoopMounts) -> None:
    a, b, c = make(loops, "a", "b", "c")
    engine = engine_for(loops, exclude=[b])
    assert [m.mountpoint for m in engine.plan_all()] == [c, a]
    assert engine.freeze_all().count == 2
    assert thaw_fully(b) == 0
    assert engine.thaw() == 2
    with pytest.raises(AgentError) as err:
        engine.freeze_list([b])
    assert err.value.kind is ErrorKind.INVALID_PARAMS and b in err.value.message
    assert_thawed(a, b, c)


def test_freeze_list_counts_trailing_slash_and_duplicates(loops: LoopMounts) -> None:
    a, b, c = make(loops, "a", "b", "c")
    engine = engine_for(loops)
    outcome = engine.freeze_list([a, c + "/", c])
    assert outcome.count == 2
    assert [m.mountpoint for m in outcome.frozen] == [c, a]  # reverse mount order, not list order
    assert thaw_fully(b) == 0
    assert engine.thaw() == 2
    assert_thawed(a, b, c)


def test_freeze_list_rejects_non_mount_point_and_freezes_nothing(loops: LoopMounts) -> None:
    a, b = make(loops, "a", "b")
    plain = Path(a) / "just a dir"
    plain.mkdir()
    engine = engine_for(loops)
    for bad, named, words in (
        ([a, str(plain), b], str(plain), "is not a mount point"),
        ([a, str(loops.base / "missing")], str(loops.base / "missing"), "is not a mount point"),
        ([a, "relative/path"], "relative/path", "is not an absolute path"),
        ([], "", "empty"),
    ):
        with pytest.raises(AgentError) as err:
            engine.freeze_list(bad)
        assert err.value.kind is ErrorKind.INVALID_PARAMS
        assert words in err.value.message and named in err.value.message
        assert_thawed(a, b)


def test_tmpfs_in_list_is_skipped_not_counted(loops: LoopMounts) -> None:
    (a,) = make(loops, "a")
    tmp = str(loops.tmpfs(loops.base / "tmp fs"))
    engine = engine_for(loops)
    outcome = engine.freeze_list([a, tmp])
    assert outcome.count == 1
    assert outcome.skipped == [(tmp, "EOPNOTSUPP")]
    assert [m.mountpoint for m in outcome.frozen] == [a]
    assert tmp not in [m.mountpoint for m in engine.plan_all()]  # major 0: never in freeze-all
    assert engine.thaw() == 1
    assert_thawed(a)


def test_already_frozen_is_skipped_then_counted_by_thaw(loops: LoopMounts) -> None:
    a, b = make(loops, "a", "b")
    subprocess.run(["fsfreeze", "-f", a], check=True)  # another tool froze it
    engine = engine_for(loops)
    outcome = engine.freeze_list([a, b])
    assert outcome.count == 1
    assert outcome.skipped == [(a, "EBUSY")]
    assert engine.thaw() == 2  # thaws what others froze too
    assert_thawed(a, b)


def test_bind_mount_is_the_same_filesystem(loops: LoopMounts) -> None:
    (a,) = make(loops, "a")
    (Path(a) / "sub").mkdir()
    bind = str(loops.bind(Path(a) / "sub", loops.base / "a bind"))
    engine = engine_for(loops)
    assert [m.mountpoint for m in engine.plan_all()] == [a]
    assert engine.freeze_all().count == 1
    assert engine.thaw() == 1
    assert engine.freeze_list([a, bind]).count == 1
    assert engine.thaw() == 1
    outcome = engine.freeze_list([bind])  # the bind mount stands for its device
    assert outcome.count == 1 and outcome.frozen[0].mountpoint == bind
    assert engine.thaw() == 1  # found through the first mount of the device
    assert_thawed(a, bind)


def test_mount_point_with_spaces_and_tab(loops: LoopMounts) -> None:
    fs = loops.add("odd", mountpoint=loops.base / "two  spaces" / "tab\there")
    engine = engine_for(loops)
    outcome = engine.freeze_list([str(fs.mountpoint)])
    assert [m.mountpoint for m in outcome.frozen] == [str(fs.mountpoint)]
    assert engine.thaw() == 1
    assert_thawed(str(fs.mountpoint))


def test_image_on_a_loop_fs_freezes_first_and_does_not_deadlock(loops: LoopMounts) -> None:
    outer = loops.add("outer", size_mb=32)
    inner = loops.add("inner", image=outer.mountpoint / "inner.img",
                      mountpoint=outer.mountpoint / "inner mnt", size_mb=16)
    engine = engine_for(loops)
    for freeze in (engine.freeze_all, lambda: engine.freeze_list([str(outer), str(inner)])):
        # Dirty data on the inner fs: its FIFREEZE must write through to the outer fs's file,
        # which would block forever if the outer fs were frozen first.
        (inner.mountpoint / "dirty").write_bytes(os.urandom(4 * 1024 * 1024))
        t0 = time.monotonic()
        outcome = freeze()
        took = time.monotonic() - t0
        assert [m.mountpoint for m in outcome.frozen] == [str(inner), str(outer)]
        assert took < 20
        assert engine.thaw() == 2
    assert_thawed(str(inner), str(outer))


def test_injected_error_rolls_back_everything(loops: LoopMounts) -> None:
    a, b, c = make(loops, "a", "b", "c")
    ioctl = FailingIoctl(fail_freeze_call=2)  # reverse order: c ok, b fails
    engine = engine_for(loops, ioctl=ioctl)
    with pytest.raises(AgentError) as err:
        engine.freeze_all()
    assert err.value.kind is ErrorKind.COMMAND_FAILED
    assert err.value.message == f"failed to freeze {b}: Input/output error"
    assert err.value.data["path"] == b
    assert ioctl.freeze_calls == [c, b]
    assert_thawed(a, b, c)


def test_rollback_leaves_others_freezes_alone(loops: LoopMounts) -> None:
    a, b, c = make(loops, "a", "b", "c")
    freeze_directly(c)  # someone else's freeze: EBUSY, skipped, and not ours to undo
    engine = engine_for(loops, ioctl=FailingIoctl(fail_freeze_call=3))  # c busy, b ok, a fails
    with pytest.raises(AgentError) as err:
        engine.freeze_list([a, b, c])
    assert a in err.value.message
    assert thaw_fully(b) == 0  # rolled back
    assert thaw_fully(c) == 1  # still frozen by its owner
    assert_thawed(a, b, c)


def test_thaw_keeps_going_and_reports_errors(loops: LoopMounts) -> None:
    a, b, c = make(loops, "a", "b", "c")
    assert engine_for(loops).freeze_list([a, b, c]).count == 3
    engine = engine_for(loops, ioctl=FailingIoctl(fail_thaw_path=b))
    with pytest.raises(AgentError) as err:
        engine.thaw()
    assert err.value.kind is ErrorKind.COMMAND_FAILED
    assert err.value.data == {"thawed": 2, "errors": [{"path": b, "error": "Input/output error"}]}
    assert "thawed 2 filesystem(s)" in err.value.message and b in err.value.message
    assert thaw_fully(b) == 1  # the injected failure left it frozen; the others were thawed
    assert_thawed(a, b, c)


def test_flush_syncs_each_filesystem(loops: LoopMounts) -> None:
    paths = make(loops, "a", "b")
    for p in paths:
        (Path(p) / "dirty").write_bytes(os.urandom(1024 * 1024))
    engine = engine_for(loops)
    assert engine.flush(engine.candidates()) == {}
    gone = Mount(mountpoint=str(loops.base / "gone"), fstype="ext4", source="x", major=7, minor=99)
    failing = engine.flush([*engine.candidates(), gone])
    assert list(failing) == [gone.mountpoint]
    assert failing[gone.mountpoint].errno == errno.ENOENT
