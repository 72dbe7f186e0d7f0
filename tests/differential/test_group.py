"""Consistency groups over real agents on loop filesystems: pyqga and Debian's qemu-ga together.

The snapshot step here is a probe, not QMP: at the moment every member is "snapshotted", a
writer on each member's filesystem must be blocked, which is what makes the group consistent.
(The QMP and libvirt snapshot paths are exercised by the VM tests.)
"""

from __future__ import annotations

import asyncio
import glob
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pyqga.host_client.group import GroupFailed, Member, group_snapshot, parse_member
from tests.rig.agent_process import REPO_ROOT, PyqgaAgent
from tests.rig.freezing import start_writer
from tests.rig.loopfs import LoopFs, LoopMounts, thaw_fully
from tests.rig.qemu_ga import IsolatedQemuGa

pytestmark = [pytest.mark.root, pytest.mark.qemu_ga]


@pytest.fixture
def loops(qga_loops: LoopMounts) -> Iterator[LoopMounts]:
    yield qga_loops
    assert qga_loops.thaw_all() == 0, "a group left a filesystem frozen"


@pytest.fixture
def agents(tmp_path: Path, loops: LoopMounts) -> Iterator[list[Any]]:
    started: list[Any] = []
    yield started
    for agent in started:
        agent.stop()


def pyqga_on(tmp_path: Path, fs: LoopFs, agents: list[Any], name: str) -> Any:
    """A pyqga member that sees only ``fs``: the host's thaw thaws everything an agent sees
    (qemu-ga's rule), and here all members share one kernel, unlike guests."""
    agent = PyqgaAgent(tmp_path / name, ["--freeze-include", glob.escape(str(fs.mountpoint))])
    agent.start()
    agents.append(agent)
    return agent


def qemu_ga_on(tmp_path: Path, loops: LoopMounts, agents: list[Any], name: str) -> Any:
    agent = IsolatedQemuGa(tmp_path / name, loops)
    agent.__enter__()
    agents.append(agent)
    return agent


def blocked_probe(filesystems: list[LoopFs], seen: list[bool]) -> Any:
    """A snapshot step that checks its member is really frozen: a writer there must block."""
    async def probe() -> None:
        def check() -> bool:
            writer = start_writer(filesystems[len(seen) % len(filesystems)].mountpoint / "probe.txt")
            try:
                writer.wait(0.5)
                return False
            except subprocess.TimeoutExpired:
                threading.Thread(target=writer.wait, daemon=True).start()  # released by the thaw
                return True

        seen.append(await asyncio.to_thread(check))
    return probe


def test_group_of_pyqga_and_qemu_ga_is_consistent(tmp_path: Path, loops: LoopMounts,
                                                  agents: list[Any]) -> None:
    a, b = loops.add("a"), loops.add("b")
    # qemu-ga's thaw thaws every filesystem it sees: in a real group each guest has its own
    # kernel; here they share one, so qemu-ga's member sees only its own mount.
    with LoopMounts(tmp_path / "qemu-ga-mnt") as own:
        c = own.add("c")
        peers = [pyqga_on(tmp_path, a, agents, "p1"), pyqga_on(tmp_path, b, agents, "p2"),
                 qemu_ga_on(tmp_path, own, agents, "q1")]
        check_consistent_group(peers, [a, b, c])
        assert own.thaw_all() == 0


def check_consistent_group(peers: list[Any], filesystems: list[LoopFs]) -> None:
    a, b, c = filesystems
    seen: list[bool] = []
    members = [Member(str(peer.socket_path), (str(fs.mountpoint),), blocked_probe([fs], seen))
               for peer, fs in zip(peers, (a, b, c), strict=True)]
    report = asyncio.run(group_snapshot(members, 30))
    assert report.consistent, report
    assert seen == [True, True, True], "a member was not frozen while the group was"
    assert [m.frozen_filesystems for m in report.members] == [1, 1, 1]
    assert [m.held for m in report.members] == [True, True, None]  # qemu-ga has no epochs
    assert [m.auto_thaw for m in report.members] == [True, True, False]
    assert report.overlap_seconds is not None and report.overlap_seconds > 0
    assert report.all_frozen_seconds is not None and report.all_frozen_seconds < 30
    for fs in (a, b, c):
        assert thaw_fully(fs.mountpoint) == 0


def test_a_silent_agent_fails_the_group_in_time_and_the_rest_is_thawed(
        tmp_path: Path, loops: LoopMounts, agents: list[Any]) -> None:
    a = loops.add("a")
    good = pyqga_on(tmp_path, a, agents, "p1")
    silent_path = tmp_path / "silent.sock"
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    silent.bind(str(silent_path))
    silent.listen(8)  # accepts (the kernel queues the connection) and never answers
    try:
        members = [Member(str(good.socket_path), (str(a.mountpoint),)),
                   Member(str(silent_path), ("/nowhere",))]
        t0 = time.monotonic()
        with pytest.raises(GroupFailed) as failed:
            asyncio.run(group_snapshot(members, 4, call_timeout=2))
        took = time.monotonic() - t0
    finally:
        silent.close()
    assert took < 4 + 6, f"the group took {took:.1f} s to fail"
    report = failed.value.report
    assert not report.consistent
    assert str(silent_path) in str(failed.value) and report.members[1].error
    assert report.members[0].error is None and report.members[0].frozen_filesystems == 1
    assert thaw_fully(a.mountpoint) == 0, "the member that froze was not thawed"


def test_a_freeze_lost_mid_group_makes_it_inconsistent(tmp_path: Path, loops: LoopMounts,
                                                      agents: list[Any]) -> None:
    """pyqga's own deadline (the group's, 1 s) thaws its member while the slow snapshot of
    the other still runs: the group was not frozen as a whole, and the report says so."""
    a, b = loops.add("a"), loops.add("b")
    p1, p2 = pyqga_on(tmp_path, a, agents, "p1"), pyqga_on(tmp_path, b, agents, "p2")

    async def slow_snapshot() -> None:
        await asyncio.sleep(3)

    members = [Member(str(p1.socket_path), (str(a.mountpoint),)),
               Member(str(p2.socket_path), (str(b.mountpoint),), slow_snapshot)]
    report = asyncio.run(group_snapshot(members, 1.5))
    assert not report.consistent
    assert [m.held for m in report.members] == [False, False]
    assert "did not hold" in (report.error or "")


def test_guest_specs() -> None:
    member = parse_member("/run/vm1/qga.sock,mount=/data,mount=/var")
    assert member.address == "/run/vm1/qga.sock" and member.mountpoints == ("/data", "/var")
    assert member.snapshot is None
    assert parse_member("unix:/x,qmp=/q.sock,disk=data=/s.qcow2").snapshot is not None
    with pytest.raises(ValueError, match="go together"):
        parse_member("/x,disk=data=/s.qcow2")
    with pytest.raises(ValueError, match="unknown option"):
        parse_member("/x,bogus=1")


def test_cli_group_snapshot(tmp_path: Path, loops: LoopMounts, agents: list[Any]) -> None:
    a = loops.add("a")
    p1 = pyqga_on(tmp_path, a, agents, "p1")
    with LoopMounts(tmp_path / "qemu-ga-mnt") as own:
        b = own.add("b")
        q1 = qemu_ga_on(tmp_path, own, agents, "q1")
        done = subprocess.run(
            [sys.executable, "-m", "pyqga.host_client", "group", "snapshot", "--deadline", "20s",
             "--guest", f"{p1.socket_path},mount={a.mountpoint}",
             "--guest", f"{q1.socket_path},mount={b.mountpoint}"],
            capture_output=True, text=True, timeout=120, cwd=REPO_ROOT,
        )
        q1.stop()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "group CONSISTENT" in done.stdout and "overlap window" in done.stdout
    missing = tmp_path / "nobody.sock"
    failed = subprocess.run(
        [sys.executable, "-m", "pyqga.host_client", "group", "snapshot", "--deadline", "5s",
         "--guest", f"{p1.socket_path},mount={a.mountpoint}", "--guest", str(missing)],
        capture_output=True, text=True, timeout=120, cwd=REPO_ROOT,
    )
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert str(missing) in failed.stderr and "thawed" in failed.stderr
