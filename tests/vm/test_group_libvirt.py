"""A consistency group across two hypervisors: two private libvirtds, each running one TCG guest
with a busy writer on /data, one guest with pyqga and one with Debian's qemu-ga as its agent.

The group freezes both through libvirt (``libvirt:URI?domain=NAME``), takes a disk-only external
snapshot of each data disk through libvirt, thaws, and reports.  The snapshots are then examined
on the host: a consistent group leaves both clean (no ``needs_recovery``, e2fsck clean, the
writer's log intact after replay).

A fault plan across guests (issue 21) reaches guest A (pyqga, ``--enable-faults``) through its
libvirt URI, together with an agent on this host: one schedule, one merged timeline.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pyqga.host_client.group import GroupFailed, Member, group_snapshot, parse_member
from tests.rig.agent_process import REPO_ROOT
from tests.rig.consistency import check_image
from tests.rig.image import GuestImage
from tests.rig.libvirt import LibvirtGuest, PrivateLibvirt

pytestmark = pytest.mark.root

DEADLINE = 60.0


@pytest.fixture(scope="module")
def hypervisors(private_libvirt: PrivateLibvirt, guest_image: GuestImage,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LibvirtGuest, LibvirtGuest]]:
    """Guest A (pyqga) on the session's libvirtd, guest B (qemu-ga) on a second one."""
    pytest.importorskip("libvirt", reason="libvirt-python (pyqga[libvirt]) is not installed")
    with PrivateLibvirt(tmp_path_factory.mktemp("libvirt-b")) as second:
        a = LibvirtGuest.create(private_libvirt, guest_image, tmp_path_factory.mktemp("group-a"),
                                agents=("pyqga-virtio",),
                                kernel_args=("pyqga.workload=1", "pyqga.args=--enable-faults"))
        b = LibvirtGuest.create(second, guest_image, tmp_path_factory.mktemp("group-b"),
                                agents=("qga-virtio0",), kernel_args=("pyqga.workload=1",))
        try:
            a.wait_agent(180)
            b.wait_agent(180)
            time.sleep(2)  # let the writers get going
            yield a, b
        finally:
            for guest in (a, b):
                guest.lv.virsh("destroy", guest.name, check=False)


def address(guest: LibvirtGuest) -> str:
    joint = "&" if "?" in guest.lv.uri else "?"
    return f"libvirt:{guest.lv.uri}{joint}domain={guest.name}"


def test_group_across_two_libvirtds_is_consistent(hypervisors: tuple[LibvirtGuest, LibvirtGuest],
                                                  tmp_path: Path) -> None:
    """Through the CLI, as an operator would run it."""
    a, b = hypervisors
    specs = [f"{address(guest)},mount=/data,disk=vdb={tmp_path / f'{name}-top.qcow2'}"
             for name, guest in (("a", a), ("b", b))]
    assert all(parse_member(spec).snapshot is not None for spec in specs)
    done = subprocess.run(
        [sys.executable, "-m", "pyqga.host_client", "group", "snapshot", "--deadline", f"{DEADLINE:g}s",
         "--timeout", "30", "--json", "--guest", specs[0], "--guest", specs[1]],
        capture_output=True, text=True, timeout=300, cwd=REPO_ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["consistent"], report
    assert [m["frozen_filesystems"] for m in report["members"]] == [1, 1]
    assert [m["auto_thaw"] for m in report["members"]] == [True, False]
    assert all(m["snapshot_seconds"] is not None for m in report["members"])
    assert report["overlap_seconds"] > 0
    for guest in (a, b):  # the old top layer of the data disk is the snapshot
        check = check_image(guest.data_disk, tmp_path / f"check-{guest.name}")
        assert check.consistent, (guest.name, check)


def test_a_silent_member_fails_the_group_and_the_others_are_thawed(
        hypervisors: tuple[LibvirtGuest, LibvirtGuest], tmp_path: Path) -> None:
    import socket

    a, b = hypervisors
    silent_path = tmp_path / "silent.sock"
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    silent.bind(str(silent_path))
    silent.listen(4)
    try:
        members = [Member(address(a), ("/data",)), Member(address(b), ("/data",)),
                   Member(str(silent_path), ("/data",))]
        t0 = time.monotonic()
        with pytest.raises(GroupFailed) as failed:
            asyncio.run(group_snapshot(members, 8, call_timeout=5))
        assert time.monotonic() - t0 < 8 + 8
    finally:
        silent.close()
    report = failed.value.report
    assert not report.consistent and str(silent_path) in (report.error or "")
    for guest in (a, b):
        reply = guest.lv.virsh("qemu-agent-command", guest.name, '{"execute":"guest-fsfreeze-status"}')
        assert '"thawed"' in reply.stdout, (guest.name, reply.stdout)


def test_a_freeze_lost_mid_group_is_reported_inconsistent(
        hypervisors: tuple[LibvirtGuest, LibvirtGuest]) -> None:
    """pyqga's guest thaws itself at the group's short deadline while guest B's snapshot step is
    still running: the group did not hold as a whole."""
    a, b = hypervisors

    async def slow_snapshot() -> None:
        await asyncio.sleep(6)

    members = [Member(address(a), ("/data",)), Member(address(b), ("/data",), slow_snapshot)]
    report = asyncio.run(group_snapshot(members, 3, call_timeout=30))
    assert not report.consistent
    assert report.members[0].held is False, report.members[0]  # FREEZE_LOST recognised over libvirt
    assert report.members[0].error and "did not hold" in report.members[0].error, report.members[0]


def test_a_fault_plan_across_a_libvirt_guest_and_a_local_agent(
        hypervisors: tuple[LibvirtGuest, LibvirtGuest], tmp_path: Path) -> None:
    """Guest A pauses a sleep it runs (started by guest-exec), a local agent pauses one of this
    test's: both parts start at one origin, and the merged timeline has both, in order."""
    from pyqga.host_client import AgentClient
    from pyqga.host_client.group_plan import start_group_plan
    from tests.rig.agent_process import PyqgaAgent

    a, _ = hypervisors
    local_sleep = subprocess.Popen(["sleep", "600"])
    with AgentClient(address(a), timeout=30) as client:
        in_guest = client.call("guest-exec", {"path": "/bin/sleep", "arg": ["600"]})["pid"]
    steps = [{"guest": "vm", "at": 0.5, "kind": "process-pause", "target": f"pid:{in_guest}",
              "duration": 1.0},
             {"guest": "host", "after": 0.2, "kind": "process-pause", "target": f"pid:{local_sleep.pid}",
              "duration": 0.5}]
    try:
        with PyqgaAgent(tmp_path / "host-agent", ["--enable-faults"]) as local:
            async def run() -> tuple[dict[str, Any], list[dict[str, Any]]]:
                guests = {"vm": address(a), "host": str(local.socket_path)}
                async with await start_group_plan(guests, 17, steps, timeout=30, lead=2.0) as plan:
                    return plan.as_dict(), [e.as_dict() for e in await plan.wait(interval=0.2)]

            summary, timeline = asyncio.run(run())
    finally:
        local_sleep.kill()
        local_sleep.wait()
        with AgentClient(address(a), timeout=30) as client:
            client.call("guest-exec", {"path": "/bin/kill", "arg": ["-9", str(in_guest)]})
    guests = summary["guests"]
    print(f"skew {summary['skew']} s +- {summary['skew-uncertainty']} s; "
          f"vm +-{guests['vm']['uncertainty']} s, host +-{guests['host']['uncertainty']} s")
    assert summary["skew"] < 0.05, summary
    assert [e["t"] for e in timeline] == sorted(e["t"] for e in timeline)
    armed = [(e["guest"], e["target"]) for e in timeline if e["event"] == "armed" and e["kind"] != "plan"]
    assert armed == [("vm", f"pid:{in_guest}"), ("host", f"pid:{local_sleep.pid}")], timeline
    ends = [e for e in timeline if e["event"] == "expired" and e["kind"] == "plan"]
    assert {e["guest"] for e in ends} == {"vm", "host"}, timeline
