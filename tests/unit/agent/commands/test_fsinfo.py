"""guest-get-fsinfo and guest-fstrim (agent/commands/fsinfo.py) on real loop filesystems, and
fsinfo's disk addresses on a made-up sysfs tree.

Root tests use only loop-mounted ext4 images made under the test's tmp dir (whose name has a
space, so mountinfo's ``\\040`` escape is always exercised).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pyqga.agent.commands.fsinfo import fsinfo_for, fstrim, get_fsinfo
from pyqga.agent.freeze.mounts import Mount, read_mountinfo
from pyqga.protocol.errors import AgentError, ErrorKind
from tests.rig.driver_direct import make
from tests.rig.loopfs import LoopMounts

# -- fsinfo and fstrim -------------------------------------------------------------------------


def test_fsinfo_lists_a_loop_mount(spaced_loops: LoopMounts) -> None:
    fs = spaced_loops.add("info fs", size_mb=16)
    (fs.mountpoint / "payload").write_bytes(os.urandom(2 * 1024 * 1024))
    os.sync()
    infos = {i["mountpoint"]: i for i in get_fsinfo()}
    info = infos[str(fs.mountpoint)]
    assert info["name"] == Path(fs.device).name  # "loopN", the kernel's name
    assert info["type"] == "ext4"
    assert 2 * 1024 * 1024 <= info["used-bytes"] < info["total-bytes"] <= 16 * 1024 * 1024
    assert info["disk"] == []  # a loop device has no bus address


def test_fstrim_reports_each_path(spaced_loops: LoopMounts) -> None:
    a, b = make(spaced_loops, "a", "b")
    (Path(a) / "junk").write_bytes(os.urandom(4 * 1024 * 1024))
    os.sync()
    (Path(a) / "junk").unlink()
    tmp = spaced_loops.tmpfs(spaced_loops.base / "tmp fs")
    everything = {m.mountpoint: m for m in read_mountinfo()}
    gone = Mount(mountpoint=str(spaced_loops.base / "gone"), fstype="ext4", source="x", major=7, minor=99)
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
