"""Planning, the freeze driver, hooks, fsinfo/fstrim and the state file, on real filesystems.

Root tests freeze only loop-mounted ext4 images made under the test's tmp dir, and every
planner is built with an include glob limited to that dir.  Freeze and thaw go through the
real driver and state machine (:class:`pyqga.agent.freeze.driver.Freezer`, no state file, no keeper, no
deadline watcher); the one seam used is :class:`LinuxKernel`, subclassed to inject a failure;
every other call reaches the kernel.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyqga.agent.commands.fsinfo import fsinfo_for, fstrim, get_fsinfo
from pyqga.agent.freeze.driver import Freezer
from pyqga.agent.freeze.hooks import OUTPUT_LIMIT, run_hook
from pyqga.agent.freeze.kernel import LinuxKernel, flush
from pyqga.agent.freeze.mounts import Mount, read_mountinfo
from pyqga.agent.freeze.planner import FreezePlanner
from pyqga.agent.freeze.snapshot import CorruptState
from pyqga.agent.freeze.statefile import StateFile
from pyqga.protocol.errors import AgentError, ErrorKind
from tests.rig.loopfs import LoopMounts, freeze_directly, require_loop_support, thaw_fully
from tests.rig.paths import REPO_ROOT
from tests.rig.requirements import require_tool

# -- fixtures and helpers ----------------------------------------------------------------------


@pytest.fixture
def loops(tmp_path: Path) -> Iterator[LoopMounts]:
    """Loop filesystems under a base dir whose name has a space, so every test exercises
    mountinfo's ``\\040`` escape."""
    require_loop_support()
    with LoopMounts(tmp_path / "loop fs") as lm:
        yield lm


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
    freezer = freezer_for(loops)
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
        loops.thaw_all()  # before touching the writer: a killed D-state process still waits
        if writer is not None and writer.poll() is None:
            writer.kill()
            writer.wait(timeout=10)


def test_freeze_all_limited_by_include_counts_and_reverse_order(loops: LoopMounts) -> None:
    paths = make(loops, "a", "b", "c")
    freezer = freezer_for(loops)
    assert [m.mountpoint for m in freezer.planner.plan_all()] == paths[::-1]
    assert freezer.freeze() == 3
    info = freezer.info()
    assert frozen_paths(freezer) == set(paths) and {e["type"] for e in info["frozen"]} == {"ext4"}
    assert freezer.thaw() == 3
    assert freezer.thaw() == 0  # nothing left: every FITHAW said EINVAL
    assert_thawed(*paths)


def test_include_and_exclude_filters(loops: LoopMounts) -> None:
    a, b, c = make(loops, "a", "b", "c")
    freezer = freezer_for(loops, exclude=(b,))
    assert [m.mountpoint for m in freezer.planner.plan_all()] == [c, a]
    assert freezer.freeze() == 2
    assert thaw_fully(b) == 0
    assert freezer.thaw() == 2
    with pytest.raises(AgentError) as err:
        freezer.freeze([b])
    assert err.value.kind is ErrorKind.INVALID_PARAMS and b in err.value.message
    assert_thawed(a, b, c)


def test_freeze_list_counts_trailing_slash_and_duplicates(loops: LoopMounts) -> None:
    a, b, c = make(loops, "a", "b", "c")
    freezer = freezer_for(loops)
    assert [m.mountpoint for m in freezer.planner.plan_list([a, c + "/", c])] == [c, a]  # mount order
    assert freezer.freeze([a, c + "/", c]) == 2
    assert frozen_paths(freezer) == {a, c}
    assert thaw_fully(b) == 0
    assert freezer.thaw() == 2
    assert_thawed(a, b, c)


def test_freeze_list_rejects_non_mount_point_and_freezes_nothing(loops: LoopMounts) -> None:
    a, b = make(loops, "a", "b")
    plain = Path(a) / "just a dir"
    plain.mkdir()
    freezer = freezer_for(loops)
    for bad, named, words in (
        ([a, str(plain), b], str(plain), "is not a mount point"),
        ([a, str(loops.base / "missing")], str(loops.base / "missing"), "is not a mount point"),
        ([a, "relative/path"], "relative/path", "is not an absolute path"),
        ([], "", "empty"),
    ):
        with pytest.raises(AgentError) as err:
            freezer.freeze(bad)
        assert err.value.kind is ErrorKind.INVALID_PARAMS
        assert words in err.value.message and named in err.value.message
        assert_thawed(a, b)


def test_tmpfs_in_list_is_skipped_not_counted(loops: LoopMounts, caplog: pytest.LogCaptureFixture) -> None:
    (a,) = make(loops, "a")
    tmp = str(loops.tmpfs(loops.base / "tmp fs"))
    freezer = freezer_for(loops)
    with caplog.at_level(logging.INFO, logger="pyqga.test"):
        assert freezer.freeze([a, tmp]) == 1
    assert f"not frozen: {tmp} (EOPNOTSUPP)" in caplog.messages
    assert frozen_paths(freezer) == {a}
    assert tmp not in [m.mountpoint for m in freezer.planner.plan_all()]  # major 0: never in freeze-all
    assert freezer.thaw() == 1
    assert_thawed(a)


def test_already_frozen_is_skipped_then_counted_by_thaw(loops: LoopMounts,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    fsfreeze = require_tool("fsfreeze")
    a, b = make(loops, "a", "b")
    subprocess.run([fsfreeze, "-f", a], check=True)  # another tool froze it
    freezer = freezer_for(loops)
    with caplog.at_level(logging.INFO, logger="pyqga.test"):
        assert freezer.freeze([a, b]) == 1
    assert f"not frozen: {a} (EBUSY)" in caplog.messages
    assert frozen_paths(freezer) == {b}
    assert freezer.thaw() == 2  # the host's thaw thaws what others froze too (qemu-ga)
    assert_thawed(a, b)


def test_bind_mount_is_the_same_filesystem(loops: LoopMounts) -> None:
    (a,) = make(loops, "a")
    (Path(a) / "sub").mkdir()
    bind = str(loops.bind(Path(a) / "sub", loops.base / "a bind"))
    freezer = freezer_for(loops)
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


def test_mount_point_with_spaces_and_tab(loops: LoopMounts) -> None:
    fs = loops.add("odd", mountpoint=loops.base / "two  spaces" / "tab\there")
    freezer = freezer_for(loops)
    assert freezer.freeze([str(fs.mountpoint)]) == 1
    assert frozen_paths(freezer) == {str(fs.mountpoint)}
    assert freezer.thaw() == 1
    assert_thawed(str(fs.mountpoint))


def test_image_on_a_loop_fs_freezes_first_and_does_not_deadlock(loops: LoopMounts) -> None:
    outer = loops.add("outer", size_mb=32)
    inner = loops.add("inner", image=outer.mountpoint / "inner.img",
                      mountpoint=outer.mountpoint / "inner mnt", size_mb=16)
    freezer = freezer_for(loops)
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


def test_injected_error_rolls_back_everything(loops: LoopMounts) -> None:
    a, b, c = make(loops, "a", "b", "c")
    kernel = FailingKernel(fail_freeze_path=b)
    freezer = freezer_for(loops, kernel)
    with pytest.raises(AgentError) as err:
        freezer.freeze()
    assert err.value.kind is ErrorKind.COMMAND_FAILED
    assert err.value.message == f"failed to freeze {b}: Input/output error"
    assert err.value.data["path"] == b and err.value.data["errno"] == errno.EIO
    assert b in kernel.freeze_calls and set(kernel.freeze_calls) <= {a, b, c}
    assert freezer.status == "thawed" and freezer.info()["last-thaw"]["reason"] == "rollback"
    assert_thawed(a, b, c)


def test_rollback_leaves_others_freezes_alone(loops: LoopMounts) -> None:
    a, b, c = make(loops, "a", "b", "c")
    freeze_directly(c)  # someone else's freeze: EBUSY, skipped, and not ours to undo
    freezer = freezer_for(loops, FailingKernel(fail_freeze_path=a))  # c busy, b ok, a fails
    with pytest.raises(AgentError) as err:
        freezer.freeze([a, b, c])
    assert a in err.value.message
    assert thaw_fully(b) == 0  # rolled back
    assert thaw_fully(c) == 1  # still frozen by its owner
    assert_thawed(a, b, c)


def test_failed_rollback_stays_frozen_and_says_so(loops: LoopMounts) -> None:
    """Issue 9, fault 4: a FITHAW that fails during rollback leaves the filesystem frozen; the
    agent must keep reporting it frozen, not "thawed"."""
    a, b = make(loops, "a", "b")
    kernel = FailingKernel(fail_freeze_path=a, fail_thaw_path=b)  # b freezes, a fails, b's thaw fails
    freezer = freezer_for(loops, kernel)
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


def test_thaw_keeps_going_and_reports_errors(loops: LoopMounts) -> None:
    a, b, c = make(loops, "a", "b", "c")
    assert freezer_for(loops).freeze([a, b, c]) == 3
    freezer = freezer_for(loops, FailingKernel(fail_thaw_path=b))
    with pytest.raises(AgentError) as err:
        freezer.thaw()
    assert err.value.kind is ErrorKind.COMMAND_FAILED
    assert err.value.data == {"thawed": 2, "errors": [{"path": b, "error": "Input/output error"}]}
    assert "thawed 2 filesystem(s)" in err.value.message and b in err.value.message
    assert thaw_fully(b) == 1  # the injected failure left it frozen; the others were thawed
    assert_thawed(a, b, c)


def test_flush_syncs_each_filesystem(loops: LoopMounts) -> None:
    paths = make(loops, "a", "b")
    for p in paths:
        (Path(p) / "dirty").write_bytes(os.urandom(1024 * 1024))
    kernel = LinuxKernel()
    assert flush(kernel, paths) == {}
    gone = str(loops.base / "gone")
    failing = flush(kernel, [*paths, gone])
    assert list(failing) == [gone]
    assert failing[gone].errno == errno.ENOENT


# -- hooks -----------------------------------------------------------------------------------------

SAMPLE_HOOK = REPO_ROOT / "agent" / "freeze" / "sample-fsfreeze-hook"


def script(path: Path, body: str, mode: int = 0o755) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(mode)
    return path


def test_hook_success_and_failure(tmp_path: Path) -> None:
    ok = script(tmp_path / "ok hook", 'echo "action=$1"; read x; echo "stdin gave ${x:-nothing}"\n')
    result = run_hook(str(ok), "freeze", timeout=10)
    assert result.ran and result.ok and result.returncode == 0 and not result.timed_out
    assert result.output == "action=freeze\nstdin gave nothing\n"  # stdin is /dev/null
    bad = script(tmp_path / "bad", 'echo "cannot $1" >&2; exit 3\n')
    result = run_hook(str(bad), "thaw", timeout=10)
    assert result.ran and not result.ok and result.returncode == 3
    assert result.output == "cannot thaw\n"  # stderr is captured too


def test_hook_missing_or_not_executable(tmp_path: Path) -> None:
    missing = run_hook(str(tmp_path / "nope"), "freeze", timeout=1)
    assert not missing.ran and missing.ok and missing.error is None
    plain = script(tmp_path / "plain", "exit 0\n", mode=0o644)
    result = run_hook(str(plain), "freeze", timeout=1)
    assert not result.ran and not result.ok and "not executable" in (result.error or "")
    result = run_hook(str(tmp_path), "freeze", timeout=1)
    assert not result.ran and "not a regular file" in (result.error or "")


def test_hook_timeout_kills_the_whole_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "child pid"
    hook = script(tmp_path / "slow", f'sleep 60 &\necho $! > "{pidfile}"\necho started\nsleep 60\n')
    t0 = time.monotonic()
    result = run_hook(str(hook), "freeze", timeout=0.5)
    assert time.monotonic() - t0 < 5
    assert result.ran and result.timed_out and not result.ok
    assert result.returncode == -9
    assert result.output == "started\n"
    child = int(pidfile.read_text())
    for _ in range(50):  # the background sleep was in the group: killed too (gone or a zombie)
        try:
            if process_state(child) == "Z":
                break
        except FileNotFoundError:
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"the hook's background child {child} survived the timeout")


def test_hook_does_not_wait_for_children_left_behind(tmp_path: Path) -> None:
    hook = script(tmp_path / "forker", "(sleep 3; echo late) &\necho main\n")
    t0 = time.monotonic()
    result = run_hook(str(hook), "thaw", timeout=10)
    try:
        assert time.monotonic() - t0 < 2
        assert result.ok and result.output == "main\n"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(result_pgid(hook), signal.SIGKILL)


def result_pgid(hook: Path) -> int:
    """The left-behind child's group: find it by its parent's script name in /proc."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if str(hook).encode() in cmdline:
            return os.getpgid(int(pid))
    raise ProcessLookupError


def test_hook_output_is_bounded(tmp_path: Path) -> None:
    hook = script(tmp_path / "chatty", "head -c 300000 /dev/zero | tr '\\0' a\necho END\n")
    result = run_hook(str(hook), "freeze", timeout=10)
    assert result.ok
    assert len(result.output) == OUTPUT_LIMIT
    assert result.output.endswith("aaaaEND\n")  # the tail is kept


@pytest.fixture
def sample_hook(tmp_path: Path) -> tuple[Path, Path]:
    """The shipped sample hook in a dir with a space, its .d scripts recording their calls."""
    root = tmp_path / "hook dir"
    root.mkdir()
    hook = root / "fsfreeze-hook"
    shutil.copy(SAMPLE_HOOK, hook)
    hook.chmod(0o755)
    record = tmp_path / "calls record"
    body = f'echo "${{0##*/}} $1" >> "{record}"\n'
    for name in ("20-second", "10-first", "30-third", "B-upper", "a-lower"):
        script(root / "fsfreeze-hook.d" / name, body)
    for name in ("40-skip~", "50-skip.bak", "51-skip.orig", "52-x.rpmnew", "53-x.rpmsave",
                 "60-skip.dpkg-old"):
        script(root / "fsfreeze-hook.d" / name, body)
    script(root / "fsfreeze-hook.d" / "70-not-executable", body, mode=0o644)
    (root / "fsfreeze-hook.d" / "80-a-directory").mkdir()
    return hook, record


ORDER = ["10-first", "20-second", "30-third", "B-upper", "a-lower"]  # byte order: B < a


def test_sample_hook_order(sample_hook: tuple[Path, Path]) -> None:
    hook, record = sample_hook
    assert run_hook(str(hook), "freeze", timeout=10).ok
    assert run_hook(str(hook), "thaw", timeout=10).ok
    calls = record.read_text().splitlines()
    assert calls == [f"{n} freeze" for n in ORDER] + [f"{n} thaw" for n in reversed(ORDER)]


def test_sample_hook_failed_freeze_undoes_and_fails(sample_hook: tuple[Path, Path]) -> None:
    hook, record = sample_hook
    script(hook.parent / "fsfreeze-hook.d" / "20-second",
           f'echo "${{0##*/}} $1" >> "{record}"\n[ "$1" = freeze ] && exit 7\nexit 0\n')
    result = run_hook(str(hook), "freeze", timeout=10)
    assert result.ran and result.returncode == 1
    assert "20-second freeze failed with status 7" in result.output
    assert record.read_text().splitlines() == [
        "10-first freeze", "20-second freeze", "20-second thaw", "10-first thaw",
    ]


def test_sample_hook_thaw_runs_all_and_reports(sample_hook: tuple[Path, Path]) -> None:
    hook, record = sample_hook
    script(hook.parent / "fsfreeze-hook.d" / "20-second",
           f'echo "${{0##*/}} $1" >> "{record}"\n[ "$1" = thaw ] && exit 5\nexit 0\n')
    result = run_hook(str(hook), "thaw", timeout=10)
    assert result.returncode == 1 and "20-second thaw failed with status 5" in result.output
    assert record.read_text().splitlines() == [f"{n} thaw" for n in reversed(ORDER)]


def test_sample_hook_without_directory_or_action(tmp_path: Path) -> None:
    hook = tmp_path / "fsfreeze-hook"
    shutil.copy(SAMPLE_HOOK, hook)
    assert run_hook(str(hook), "freeze", timeout=10).ok  # no fsfreeze-hook.d: nothing to do
    usage = subprocess.run([str(hook)], capture_output=True, text=True)
    assert usage.returncode == 2 and "usage" in usage.stderr


# -- fsinfo and fstrim -------------------------------------------------------------------------------


def test_fsinfo_lists_a_loop_mount(loops: LoopMounts) -> None:
    fs = loops.add("info fs", size_mb=16)
    (fs.mountpoint / "payload").write_bytes(os.urandom(2 * 1024 * 1024))
    os.sync()
    infos = {i["mountpoint"]: i for i in get_fsinfo()}
    info = infos[str(fs.mountpoint)]
    assert info["name"] == Path(fs.device).name  # "loopN", the kernel's name
    assert info["type"] == "ext4"
    assert 2 * 1024 * 1024 <= info["used-bytes"] < info["total-bytes"] <= 16 * 1024 * 1024
    assert info["disk"] == []  # a loop device has no bus address


def test_fstrim_reports_each_path(loops: LoopMounts) -> None:
    a, b = make(loops, "a", "b")
    (Path(a) / "junk").write_bytes(os.urandom(4 * 1024 * 1024))
    os.sync()
    (Path(a) / "junk").unlink()
    tmp = loops.tmpfs(loops.base / "tmp fs")
    everything = {m.mountpoint: m for m in read_mountinfo()}
    gone = Mount(mountpoint=str(loops.base / "gone"), fstype="ext4", source="x", major=7, minor=99)
    mounts = [everything[a], everything[b], everything[str(tmp)], gone]
    result = fstrim(None, mounts)
    by_path = {p["path"]: p for p in result["paths"]}
    assert [p["path"] for p in result["paths"]] == [gone.mountpoint, str(tmp), b, a]
    for path in (a, b):
        assert set(by_path[path]) == {"path", "trimmed", "minimum"}, by_path[path]
        # What the kernel reports, checked against statvfs and sysfs: whole blocks, no more than
        # the filesystem holds; the minimum asked for (0), or raised to the discard granularity.
        st = os.statvfs(path)
        trimmed = by_path[path]["trimmed"]
        assert 0 <= trimmed <= st.f_blocks * st.f_frsize and trimmed % st.f_frsize == 0, trimmed
        mount = everything[path]
        granularity = int(Path(f"/sys/dev/block/{mount.major}:{mount.minor}/queue/discard_granularity")
                          .read_text())
        assert by_path[path]["minimum"] in (0, granularity), (by_path[path], granularity)
    assert by_path[a]["trimmed"] >= 4 * 1024 * 1024  # the freed blocks at least
    assert by_path[str(tmp)] == {"path": str(tmp), "error": "trim not supported"}
    assert by_path[gone.mountpoint] == {"path": gone.mountpoint,
                                        "error": "failed to open: No such file or directory"}
    big = fstrim(1024 * 1024, [everything[b]])["paths"][0]
    assert big["minimum"] >= 1024 * 1024
    with pytest.raises(AgentError) as err:
        fstrim(-1, [])
    assert err.value.kind is ErrorKind.INVALID_PARAMS


def test_fsinfo_disk_addresses_from_sysfs_paths(tmp_path: Path) -> None:
    """A made-up sysfs tree: virtio-scsi disk partition under device-mapper, and NVMe."""
    sysfs = tmp_path / "sys"
    pci = sysfs / "devices" / "pci0000:00"
    scsi_disk = pci / "0000:00:05.0" / "virtio2" / "host0" / "target0:0:1" / "0:0:1:3" / "block" / "sdb"
    (scsi_disk / "sdb1").mkdir(parents=True)
    (scsi_disk / "sdb1" / "partition").write_text("1\n")
    (scsi_disk / "uevent").write_text("MAJOR=8\nMINOR=16\nDEVNAME=sdb\nDEVTYPE=disk\n")
    (pci / "0000:00:05.0" / "driver").symlink_to("../../../bus/pci/drivers/virtio-pci")
    nvme_disk = pci / "0000:00:1c.0" / "0000:01:00.0" / "nvme" / "nvme0" / "nvme0n1"
    nvme_disk.mkdir(parents=True)
    (nvme_disk.parent / "serial").write_text("NVME-SERIAL  \n")
    (nvme_disk / "device").symlink_to("../../nvme0")  # as in real sysfs: namespace -> controller
    (pci / "0000:00:1c.0" / "driver").symlink_to("../../../bus/pci/drivers/pcieport")
    (pci / "0000:00:1c.0" / "0000:01:00.0" / "driver").symlink_to("../../../../bus/pci/drivers/nvme")
    dm = sysfs / "devices" / "virtual" / "block" / "dm-0"
    (dm / "slaves").mkdir(parents=True)
    (dm / "slaves" / "sdb1").symlink_to(scsi_disk / "sdb1")
    loop = sysfs / "devices" / "virtual" / "block" / "loop3"
    (loop / "slaves").mkdir(parents=True)
    links = sysfs / "dev" / "block"
    links.mkdir(parents=True)
    (links / "253:0").symlink_to(dm)
    (links / "259:0").symlink_to(nvme_disk)
    (links / "7:3").symlink_to(loop)

    def info(major: int, minor: int) -> dict[str, object]:
        mount = Mount(mountpoint=str(tmp_path), fstype="ext4", source="x", major=major, minor=minor)
        return fsinfo_for(mount, sysfs=str(sysfs))

    dm_info = info(253, 0)
    assert dm_info["name"] == "dm-0"
    assert dm_info["disk"] == [{
        "bus-type": "scsi", "bus": 0, "target": 1, "unit": 3, "dev": "/dev/sdb",
        "pci-controller": {"domain": 0, "bus": 0, "slot": 5, "function": 0},
    }]
    assert dm_info["used-bytes"] <= dm_info["total-bytes"]  # statvfs of the tmp dir
    assert info(259, 0)["disk"] == [{
        "bus-type": "nvme", "bus": 0, "target": 0, "unit": 0, "dev": "/dev/nvme0n1",
        "serial": "NVME-SERIAL",
        "pci-controller": {"domain": 0, "bus": 1, "slot": 0, "function": 0},
    }]
    assert info(7, 3) == {**info(7, 3), "name": "loop3", "disk": []}
    assert info(7, 99)["name"] == "7:99"  # sysfs does not know it: still listed


# -- state file ---------------------------------------------------------------------------------------


def test_statefile_roundtrip(tmp_path: Path) -> None:
    store = StateFile(tmp_path / "state dir")
    assert store.read() is None
    snapshot = {"version": 1, "epoch": 3, "freeze": None, "superblocks": [], "last-thaw": None}
    store.write(snapshot)
    assert store.read() == snapshot
    store.write({**snapshot, "epoch": 4})
    assert store.read() == {**snapshot, "epoch": 4}
    assert os.listdir(store.directory) == ["pyqga.state"]  # no temporary files left


def test_statefile_refuses_what_it_did_not_write(tmp_path: Path) -> None:
    store = StateFile(tmp_path)
    store.path.write_text("{half")
    with pytest.raises(CorruptState, match="not valid JSON"):
        store.read()
    store.path.write_text("[1]")
    with pytest.raises(CorruptState, match="not a JSON object"):
        store.read()
    store.path.unlink()
    os.mkfifo(store.path)  # a FIFO would hang a plain open() and read() forever
    with pytest.raises(CorruptState, match="not a regular file"):
        store.read()
    store.path.unlink()
    (tmp_path / "elsewhere").write_text("{}")
    store.path.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(CorruptState, match="cannot open"):
        store.read()
    store.path.unlink()
    store.path.write_bytes(b" " * (2 << 20))
    with pytest.raises(CorruptState, match="larger than"):
        store.read()


def test_statefile_rejects_unserialisable_state(tmp_path: Path) -> None:
    store = StateFile(tmp_path / "s")
    with pytest.raises(TypeError):
        store.write({"epoch": object()})
    with pytest.raises(ValueError):
        store.write({"deadline": float("inf")})  # nothing non-finite is ever written
    assert store.read() is None
