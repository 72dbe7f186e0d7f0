"""Disks (agent/commands/disks.py).

Differential: the real qemu-ga and pyqga run side by side on this machine and are asked the same
thing at the same moment; the VALUES must agree (disk names and addresses, partitions and
dependencies; pyqga's sysfs serials aside). Disk addresses and NVMe SMART are also checked on
made-up sysfs paths and log pages.
"""

from __future__ import annotations

import os
import shutil
import struct
import time
from pathlib import Path
from typing import Any

import pytest

from pyqga.agent.commands import disks
from tests.rig.disk_images import mbr_image
from tests.rig.requirements import require
from tests.rig.side_by_side import Pair, ok

# --- guest-get-disks: the same disks ---------------------------------------------------------


def _without_sysfs_serials(listed: list[dict[str, Any]], qga: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Our disks with the serials qemu-ga lacks removed, after checking each is the kernel's.

    qemu-ga reads serials only from udev's database; where that has none (no udev running, as
    on this machine) we report the sysfs serial, as our guest-get-fsinfo does. Any other
    difference stays."""
    theirs = {d["name"]: d for d in qga}
    out = []
    for disk in listed:
        address = disk.get("address")
        other = theirs.get(disk["name"], {}).get("address") or {}
        if address and "serial" in address and "serial" not in other:
            syspath = os.path.realpath(f"/sys/class/block/{os.path.basename(disk['name'])}")
            assert address["serial"] == disks.sysfs_serial(syspath)
            disk = {**disk, "address": {k: v for k, v in address.items() if k != "serial"}}
        out.append(disk)
    return out


def _same_disks(pair: Pair) -> dict[str, Any]:
    """guest-get-disks from both agents, equal but for pyqga's sysfs serials; pyqga's reply.
    Other tests attach and detach loop devices at any time: ask again until both saw the same
    /sys/block (the comparison itself is exact)."""
    for _attempt in range(10):
        qga, ours = pair.call("guest-get-disks")
        if ok(qga) == _without_sysfs_serials(ok(ours), qga["return"]):
            break
        time.sleep(0.2)
    assert _without_sysfs_serials(ok(ours), qga["return"]) == ok(qga)
    return ours


@pytest.mark.qemu_ga
def test_get_disks_same_names_and_addresses(pair: Pair) -> None:
    ours = _same_disks(pair)
    # At least the machine's real disks are there, with an address when they sit on PCI.
    names = {d["name"] for d in ours["return"]}
    for entry in os.listdir("/sys/block"):
        target = os.path.realpath(f"/sys/block/{entry}")
        if "/virtual/" not in target and Path(target, "size").read_text() != "0\n":
            assert f"/dev/{entry}" in names
            [disk] = [d for d in ours["return"] if d["name"] == f"/dev/{entry}"]
            if "/pci" in target:
                assert {"bus-type", "bus", "target", "unit", "pci-controller"} <= set(disk["address"])


# --- partitions, disk addresses and SMART, as qemu-ga reads them -----------------------------


@pytest.mark.parametrize(("disk", "name", "expected"), [
    ("sda", "sda1", True), ("sda", "sda", False), ("sda", "sdaa", False), ("sda", "sdab1", False),
    ("nvme0n1", "nvme0n1p2", True), ("nvme0n1", "nvme0n1p", False), ("vda", "vda15", True),
    ("loop0", "loop0p1", True), ("sda", "holders", False),
])
def test_partition_names_as_qemu_matches_them(disk: str, name: str, expected: bool) -> None:
    assert disks._is_partition_of(disk, name) is expected


def _fake_disk(root: Path, rel: str, name: str, drivers: dict[str, str],
               siblings: tuple[str, ...] = ()) -> str:
    """A block device directory at root/rel/block/name with a uevent, PCI functions with
    driver links, and extra sibling directories; returns a /sys/block-style symlink to it."""
    device = root / rel / "block" / name
    device.mkdir(parents=True)
    (device / "uevent").write_text(f"MAJOR=8\nMINOR=0\nDEVNAME={name}\nDEVTYPE=disk\n")
    (device / "size").write_text("2048\n")
    for function, driver in drivers.items():
        (root / "bus" / driver).mkdir(parents=True, exist_ok=True)
        (root / function / "driver").symlink_to(root / "bus" / driver)
    for sibling in siblings:
        (root / sibling).mkdir(parents=True, exist_ok=True)
    link = root / "sysblock" / name
    link.parent.mkdir(exist_ok=True)
    link.symlink_to(device)
    return str(link)


def test_address_virtio_scsi_reports_the_lun_as_unit(tmp_path: Path) -> None:
    fn = "devices/pci0000:00/0000:00:05.0"
    link = _fake_disk(tmp_path, f"{fn}/virtio3/host2/target2:0:1/2:0:1:3", "sdb",
                      {fn: "virtio-pci"})
    assert disks.real_disk_address(link) == {
        "pci-controller": {"domain": 0, "bus": 0, "slot": 5, "function": 0},
        "bus-type": "scsi", "bus": 0, "target": 0, "unit": 3, "dev": "/dev/sdb"}


def test_address_ahci_counts_hosts(tmp_path: Path) -> None:
    fn = "devices/pci0000:00/0000:00:1f.2"
    link = _fake_disk(tmp_path, f"{fn}/ata3/host2/target2:0:0/2:0:0:0", "sda", {fn: "ahci"},
                      siblings=(f"{fn}/ata1", f"{fn}/ata2", f"{fn}/ata5"))
    address = disks.real_disk_address(link)
    assert address is not None
    assert (address["bus-type"], address["bus"], address["unit"]) == ("sata", 0, 2)   # ata1 ata2 [ata3] ata5
    assert address["pci-controller"] == {"domain": 0, "bus": 0, "slot": 0x1f, "function": 2}


def test_address_ide_bus_is_the_host_index(tmp_path: Path) -> None:
    fn = "devices/pci0000:00/0000:00:01.1"
    link = _fake_disk(tmp_path, f"{fn}/ata2/host1/target1:0:1/1:0:1:0", "sdc", {fn: "ata_piix"},
                      siblings=(f"{fn}/ata1",))
    address = disks.real_disk_address(link)
    assert address is not None
    assert (address["bus-type"], address["bus"], address["unit"]) == ("ide", 1, 1)


def test_address_behind_a_bridge_is_the_controller(tmp_path: Path) -> None:
    bridge = "devices/pci0000:00/0000:00:1c.0"
    fn = f"{bridge}/0000:01:00.0"
    link = _fake_disk(tmp_path, f"{fn}/nvme/nvme0", "nvme0n1", {bridge: "pcieport", fn: "nvme"})
    address = disks.real_disk_address(link)
    assert address is not None
    assert address["bus-type"] == "nvme"
    assert address["pci-controller"] == {"domain": 0, "bus": 1, "slot": 0, "function": 0}


def test_address_unknown_bus_still_names_the_device(tmp_path: Path) -> None:
    fn = "devices/pci0000:00/0000:00:07.0"
    link = _fake_disk(tmp_path, f"{fn}/host0/target0:0:0/0:0:0:0", "sdd", {fn: "megaraid_sas"})
    unknown = {"pci-controller": {"domain": -1, "bus": -1, "slot": -1, "function": -1},
               "bus-type": "unknown", "bus": 0, "target": 0, "unit": 0}
    assert disks.real_disk_address(link) == {**unknown, "dev": "/dev/sdd"}
    mmc = _fake_disk(tmp_path, "devices/platform/mmc/mmc_host/mmc0/mmc0:0001", "mmcblk0", {})
    assert disks.real_disk_address(mmc) == {**unknown, "dev": "/dev/mmcblk0"}


def test_address_ccw_virtio_blk(tmp_path: Path) -> None:
    link = _fake_disk(tmp_path, "devices/css0/0.0.0002/0.0.0000/virtio0", "vda", {})
    address = disks.real_disk_address(link)
    assert address is not None
    assert address["ccw-address"] == {"cssid": 0, "ssid": 0, "subchno": 2, "devno": 0}
    assert address["bus-type"] == "virtio"


def test_nvme_smart_log_parsed_as_qemu_ga_reports_it() -> None:
    log = bytearray(512)
    log[0], log[1:3], log[3], log[4], log[5] = 4, (310).to_bytes(2, "little"), 100, 10, 3
    for i in range(10):
        struct.pack_into("<QQ", log, 32 + 16 * i, 1000 + i, i)
    smart = disks.parse_nvme_smart(bytes(log))
    assert smart["type"] == "nvme"
    assert (smart["critical-warning"], smart["temperature"], smart["available-spare"],
            smart["available-spare-threshold"], smart["percentage-used"]) == (4, 310, 100, 10, 3)
    assert (smart["data-units-read-lo"], smart["data-units-read-hi"]) == (1000, 0)
    assert (smart["number-of-error-log-entries-lo"], smart["number-of-error-log-entries-hi"]) == (1009, 9)
    assert len(smart) == 1 + 5 + 20
    assert disks._NVME_ADMIN_CMD.size == 72   # struct nvme_admin_cmd


# --- partitions and device-mapper, compared --------------------------------------------------


def _run(*argv: str) -> str:
    import subprocess
    proc = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {proc.stderr.strip()}")
    return proc.stdout


@pytest.mark.qemu_ga
def test_get_disks_same_with_partitions_and_a_dm_device(pair: Pair, tmp_path: Path) -> None:
    """A partitioned loop device and a device-mapper device on its first partition: partitions
    (each depending on its disk) and dependencies (the dm device on the partition) must read the
    same on both agents. Kernels without MBR partitions or device-mapper (this machine's
    microVM kernel has neither) still compare the loop disk itself."""
    require(os.geteuid() == 0, "loop and device-mapper devices need root")
    require(shutil.which("losetup") is not None, "losetup is missing")
    image = tmp_path / "disk.img"
    mbr_image(image)
    loop = _run("losetup", "--find", "--show", "--partscan", str(image)).strip()
    dm_name = f"pyqga-hwtest-{os.getpid()}"
    dm_made = False
    try:
        name = os.path.basename(loop)
        deadline = time.monotonic() + 2
        while not os.path.isdir(f"/sys/block/{name}/{name}p2") and time.monotonic() < deadline:
            time.sleep(0.05)
        # Kernels without MBR support (some microVM kernels) show no partitions: the dm device
        # then sits on the whole loop device.
        partitioned = os.path.isdir(f"/sys/block/{name}/{name}p2")
        base = f"/sys/block/{name}/{name}p1" if partitioned else f"/sys/block/{name}"
        base_dev = Path(f"{base}/dev").read_text().strip()
        sectors = int(Path(f"{base}/size").read_text())
        dm: str | None = None
        if shutil.which("dmsetup") and os.path.exists("/sys/class/misc/device-mapper"):
            _run("dmsetup", "create", dm_name, "--table", f"0 {sectors} linear {base_dev} 0")
            dm_made = True
            dm = next(n for n in os.listdir("/sys/block") if n.startswith("dm-") and
                      Path(f"/sys/block/{n}/dm/name").read_text().strip() == dm_name)
        ours = _same_disks(pair)
        by_name = {d["name"]: d for d in ours["return"]}
        assert by_name[loop] == {"name": loop, "partition": False, "dependencies": []}
        if partitioned:
            assert by_name[f"{loop}p1"] == {"name": f"{loop}p1", "partition": True,
                                            "dependencies": [loop]}
            assert by_name[f"{loop}p2"]["dependencies"] == [loop]
        if dm is not None:
            assert by_name[f"/dev/{dm}"]["dependencies"] == [f"{loop}p1" if partitioned else loop]
            assert "address" not in by_name[f"/dev/{dm}"]   # virtual: no address
    finally:
        if dm_made:
            _run("dmsetup", "remove", "--retry", dm_name)
        _run("losetup", "-d", loop)
