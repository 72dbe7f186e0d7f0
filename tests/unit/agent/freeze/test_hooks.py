"""Freeze hooks (agent/freeze/hooks.py): running a hook with a timeout and bounded output, and
the shipped sample hook with its ``fsfreeze-hook.d`` scripts.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from pyqga.agent.freeze.hooks import OUTPUT_LIMIT, run_hook
from tests.rig.driver_direct import process_state
from tests.rig.paths import REPO_ROOT

# -- hooks -------------------------------------------------------------------------------------


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
