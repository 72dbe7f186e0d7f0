"""Freeze and thaw through the agent on xfs and btrfs loop filesystems (ext4 is everywhere else).

Every agent here runs with ``--freeze-include`` limited to the test's own mounts. btrfs matters
for the mount-table rule (REFERENCE.md, freeze semantics 2): its mountinfo line carries an
anonymous ``0:N`` device like tmpfs, and only its block-device source makes it freezable.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from pyqga.host_client import AgentClient
from tests.rig.freezing import start_agent, start_writer
from tests.rig.loopfs import LoopMounts, thaw_fully
from tests.rig.requirements import require_tool

pytestmark = pytest.mark.root

FSTYPES = ("xfs", "btrfs")
BLOCKED_FOR = 0.5  # seconds a writer must stay blocked on a frozen filesystem


def mountinfo_line(mountpoint: Path) -> tuple[str, str, str]:
    """(major:minor, fstype, source) of the mount at ``mountpoint``, from our mountinfo."""
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            fields = line.split()
            if fields[4] == str(mountpoint):
                sep = fields.index("-", 6)
                return fields[2], fields[sep + 1], fields[sep + 2]
    raise AssertionError(f"{mountpoint} is not in /proc/self/mountinfo")


@pytest.mark.parametrize("fstype", FSTYPES)
def test_freeze_list_blocks_a_writer_and_thaw_releases_it(
    tmp_path: Path, loops: LoopMounts, fstype: str
) -> None:
    require_tool(f"mkfs.{fstype}")
    fs = loops.add(fstype, fstype=fstype)
    other = loops.add("ext4")
    agent = start_agent(tmp_path, loops)
    writer = None
    try:
        with AgentClient(str(agent.socket_path), dialect="qga", timeout=30) as client:
            assert client.call("guest-fsfreeze-freeze-list", mountpoints=[str(fs), str(other)]) == 2
            assert client.call("guest-fsfreeze-status") == "frozen"
            writer = start_writer(fs.mountpoint / "log.txt")
            time.sleep(BLOCKED_FOR)
            assert writer.poll() is None, f"a writer finished on a frozen {fstype} filesystem"
            assert client.call("guest-fsfreeze-thaw") == 2
            assert writer.wait(20) == 0
            assert client.call("guest-fsfreeze-status") == "thawed"
            assert client.call("guest-fsfreeze-thaw") == 0
    finally:
        if writer is not None and writer.poll() is None:
            loops.thaw_all()
            writer.kill()
            writer.wait()
        agent.stop()
    assert thaw_fully(fs.mountpoint) == 0
    assert (fs.mountpoint / "log.txt").read_text() == "line\n"


@pytest.mark.parametrize("fstype", FSTYPES)
def test_fsinfo_reports_the_type(tmp_path: Path, loops: LoopMounts, fstype: str) -> None:
    require_tool(f"mkfs.{fstype}")
    fs = loops.add(fstype, fstype=fstype)
    (fs.mountpoint / "data").write_bytes(os.urandom(1 << 20))
    os.sync()
    agent = start_agent(tmp_path, loops)
    try:
        with AgentClient(str(agent.socket_path), dialect="qga", timeout=30) as client:
            info = {entry["mountpoint"]: entry for entry in client.call("guest-get-fsinfo")}
    finally:
        agent.stop()
    mine = info[str(fs.mountpoint)]
    assert mine["type"] == fstype
    assert mine["name"] == os.path.basename(fs.device)  # loopN, also for btrfs's 0:N device
    assert 0 < mine["used-bytes"] < mine["total-bytes"] <= fs.image.stat().st_size


def test_btrfs_on_a_loop_device_is_picked_up_by_freeze_all(tmp_path: Path, loops: LoopMounts) -> None:
    """Mount-table rule: major 0 is skipped, except btrfs whose source is a block device; a second
    mount of the same btrfs (a bind mount) resolves to the same device and counts once."""
    require_tool("mkfs.btrfs")
    btrfs = loops.add("btrfs", fstype="btrfs")
    ext4 = loops.add("ext4")
    loops.bind(btrfs.mountpoint, loops.base / "btrfs-bind")
    loops.tmpfs(loops.base / "tmpfs")
    device, fstype, source = mountinfo_line(btrfs.mountpoint)
    assert (device.split(":")[0], fstype, source) == ("0", "btrfs", btrfs.device), (
        "precondition: btrfs shows an anonymous 0:N device and its loop device as source"
    )
    agent = start_agent(tmp_path, loops)
    try:
        with AgentClient(str(agent.socket_path), dialect="qga", timeout=30) as client:
            # Safe: --freeze-include limits freeze-all to this test's mounts.
            assert client.call("guest-fsfreeze-freeze") == 2
            assert thaw_fully(btrfs.mountpoint) == 1  # really frozen by the kernel...
            assert client.call("guest-fsfreeze-thaw") == 1  # ...ext4 was still frozen
            assert client.call("guest-fsfreeze-freeze") == 2
            assert client.call("guest-fsfreeze-thaw") == 2
    finally:
        agent.stop()
    assert thaw_fully(btrfs.mountpoint) == 0 and thaw_fully(ext4.mountpoint) == 0
