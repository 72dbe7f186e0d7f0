"""The agent refuses a state directory others could tamper with or that a freeze could stall,
and says how to fix it; and under systemd it logs for the journal."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pyqga.agent import statedir
from pyqga.agent.freeze.mounts import parse_mountinfo
from pyqga.agent.freeze.planner import FreezePlanner
from pyqga.agent.logs import LogControl, journal_stream
from tests.rig.agent_process import REPO_ROOT, tmpfs_statedir
from tests.rig.loopfs import LoopMounts
from tests.rig.requirements import require_root

MOUNTINFO = """\
20 1 8:1 / / rw - ext4 /dev/sda1 rw
21 20 0:5 / /run rw - tmpfs tmpfs rw
22 20 8:2 / /data rw - xfs /dev/sda2 rw
23 22 0:6 / /data/scratch rw - tmpfs tmpfs rw
"""


class FakeKernel:
    def mounts(self):  # type: ignore[no-untyped-def]
        return parse_mountinfo(MOUNTINFO)

    def block_device(self, source: str) -> None:
        return None


def planner(include: tuple[str, ...] = (), exclude: tuple[str, ...] = ()) -> FreezePlanner:
    return FreezePlanner(kernel=FakeKernel(), include=include, exclude=exclude)  # type: ignore[arg-type]


@pytest.mark.parametrize(("path", "include", "exclude", "refused_on"), [
    ("/run/pyqga", (), (), None),
    ("/var/lib/pyqga", (), (), "/ (ext4)"),
    ("/data/state", (), (), "/data (xfs)"),
    ("/data/scratch/state", (), (), None),           # tmpfs stacked inside /data
    ("/data/state", ("/srv*",), (), None),           # the filters keep /data out of freezes
    ("/data/state", (), ("/data",), None),
    ("/var/lib/pyqga", ("/data",), (), None),
])
def test_statedir_on_a_filesystem_the_agent_may_freeze_is_refused(
        path: str, include: tuple[str, ...], exclude: tuple[str, ...], refused_on: str | None) -> None:
    problem = statedir.freezable_problem(path, planner(include, exclude))
    if refused_on is None:
        assert problem is None
    else:
        assert problem is not None and f"is on {refused_on}" in problem
        assert "/run/pyqga" in problem and "--freeze-exclude" in problem


def test_group_or_world_writable_statedir_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    assert statedir.ownership_problem(str(state)) is None
    for mode in (0o770, 0o1777, 0o702):
        state.chmod(mode)
        problem = statedir.ownership_problem(str(state))
        assert problem is not None and "group- or world-writable" in problem
        assert f"chmod go-w {state}" in problem
    state.chmod(0o755)
    assert statedir.ownership_problem(str(state)) is None


def test_symlink_owned_by_someone_else_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "real"
    target.mkdir(mode=0o700)
    link = tmp_path / "state"
    link.symlink_to(target)
    assert statedir.ownership_problem(str(link)) is None  # our own symlink is fine
    require_root()  # changing a symlink's owner
    os.lchown(link, 4242, 4242)
    problem = statedir.ownership_problem(str(link))
    assert problem is not None and "symlink owned by uid 4242" in problem and "remove it" in problem


def test_statedir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state"
    path.write_text("")
    assert "not a directory" in (statedir.ownership_problem(str(path)) or "")
    assert "cannot create state directory" in (statedir.prepare(str(path)) or "")


def run_agent(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(env or os.environ, PYTHONPATH=str(REPO_ROOT))
    return subprocess.run([sys.executable, "-B", "-m", "pyqga.agent", "-c", os.devnull, "-m", "unix-listen",
                           *argv], capture_output=True, text=True, env=env, timeout=30)


def test_agent_refuses_statedir_on_root_and_says_how_to_fix_it(tmp_path: Path, loops: LoopMounts) -> None:
    """The real agent, on this machine's mounts: a state directory on a filesystem it may freeze
    (a loop-mounted ext4 made here, so the check is never vacuous, whatever /tmp is)."""
    host = loops.add("statedir-host").mountpoint
    assert statedir.freezable_problem(str(host), FreezePlanner()) is not None
    result = run_agent("-p", str(tmp_path / "a.sock"), "-t", str(host / "state"))
    assert result.returncode == 2
    assert "which this agent may freeze" in result.stderr and "/run/pyqga" in result.stderr
    assert not (tmp_path / "a.sock").exists()
    # Keeping that filesystem out of freezes makes it acceptable.
    world = host / "world"
    world.mkdir()
    world.chmod(0o777)
    result = run_agent("-p", str(tmp_path / "a.sock"), "-t", str(world), "--freeze-include", "/nonexistent")
    assert result.returncode == 2 and "group- or world-writable (mode 0777)" in result.stderr


def test_journal_stream_is_recognised_only_for_the_real_stream(tmp_path: Path) -> None:
    with open(tmp_path / "stream", "w") as handle:
        st = os.fstat(handle.fileno())
        assert journal_stream(handle.fileno(), {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
        assert not journal_stream(handle.fileno(), {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"})
        assert not journal_stream(handle.fileno(), {"JOURNAL_STREAM": "garbage"})
        assert not journal_stream(handle.fileno(), {})


def test_journal_records_carry_priority_and_no_timestamp(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    logs = LogControl(None, verbose=True, journal=True)
    logs.log.debug("checking %s", "x")
    logs.log.info("started")
    logs.log.error("two\nlines")
    assert stream.getvalue() == "<7>checking x\n<6>started\n<3>two\n<3>lines\n"
    logs.hold()  # journald may be stuck on a frozen /var/log: held like a log file
    logs.log.warning("while frozen")
    assert "while frozen" not in stream.getvalue()
    logs.release()
    assert stream.getvalue().endswith("<4>while frozen\n")
    quiet = LogControl(None, verbose=False, journal=True)
    quiet.log.debug("hidden")
    assert "hidden" not in stream.getvalue()
    plain = LogControl(None, verbose=False, journal=False)
    plain.log.info("plain")
    assert "pyqga-agent[" in stream.getvalue().splitlines()[-1]
    logging.getLogger("pyqga").handlers[:] = []


def test_shm_helper_gives_an_accepted_statedir(tmp_path: Path) -> None:
    tmpfs_statedir(tmp_path / "state")
    assert statedir.prepare(str(tmp_path / "state")) is None
