"""Disks: ``guest-get-disks``, as qemu-ga does it on Linux (``qga/commands-linux.c``).

Everything comes from sysfs, read in directory order as qemu-ga reads it, so the reply lists the
same entries in the same order. A disk is a ``/sys/block`` entry of non-zero size, listed with
its partitions (each depending on its disk) and its ``slaves`` as dependencies; a disk that is
not under ``/devices/virtual/block/`` gets qemu-ga's GuestDiskAddress, worked out from the sysfs
path as qemu-ga does it (:func:`real_disk_address`: the controller is the first PCI function on
the path with a disk driver qemu-ga knows; IDE and SATA units count hosts; virtio-scsi reports
the LUN as unit). ``agent/commands/fsinfo.py``'s address code, used by ``guest-get-fsinfo``,
reads SCSI addresses differently (bus/target from the H:C:T:L directory, any HBA), so it is
not reused here. qemu-ga gets device nodes, ``serial`` and the
``alias`` (a device-mapper name) from udev; we read the same things where udev keeps them:
``DEVNAME`` in the device's ``uevent``, and ``ID_SERIAL`` and ``DM_NAME`` in udev's database
(``/run/udev/data/bMAJ:MIN``). Without that database qemu-ga reports no alias and no
serial; we still report the serial the kernel shows in sysfs (``serial``, or
``device/serial``), as ``guest-get-fsinfo`` does, so libvirt's ``guestinfo`` sees the same
serial for a disk in both places (the one deliberate difference in this command).

An NVMe disk carries ``smart``, its SMART log page read with the NVMe admin passthrough ioctl as
qemu-ga 7.1+ reads it; no other disk has SMART data, as in qemu-ga.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import re
import struct
from typing import TYPE_CHECKING, Any

from pyqga.agent.commands.kernel_files import errno_error, read_optional, sysfs_serial
from pyqga.agent.registry import Command

if TYPE_CHECKING:
    from pyqga.agent.state import AgentState

BLOCK_DIR = "/sys/block"
UDEV_DATA = "/run/udev/data"


def _uevent(syspath: str) -> dict[str, str]:
    text = read_optional(os.path.join(syspath, "uevent")) or ""
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def devnode(syspath: str) -> str | None:
    """udev_device_get_devnode: /dev/ and the kernel's DEVNAME, or None without one."""
    name = _uevent(os.path.realpath(syspath)).get("DEVNAME")
    return "/dev/" + name if name else None


def udev_property(syspath: str, key: str, udev_data: str = UDEV_DATA) -> str | None:
    """A property udev stored for a block device (``E:KEY=value`` in its database file)."""
    event = _uevent(os.path.realpath(syspath))
    if "MAJOR" not in event or "MINOR" not in event:
        return None
    text = read_optional(f"{udev_data}/b{event['MAJOR']}:{event['MINOR']}") or ""
    prefix = f"E:{key}="
    for line in text.splitlines():
        if line.startswith(prefix):
            return line[len(prefix):]
    return None


# The PCI drivers qemu-ga knows a disk controller by (build_guest_fsinfo_for_pci_dev).
_DISK_DRIVERS = frozenset({"ata_piix", "sym53c8xx", "virtio-pci", "ahci", "nvme", "xhci_hcd",
                           "ehci-pci"})
_HEX = "[0-9a-fA-F]+"
_FIRST_PCI = re.compile(rf"{_HEX}:{_HEX}/({_HEX}):({_HEX}):({_HEX})\.({_HEX})")
_NEXT_PCI = re.compile(rf"/({_HEX}):({_HEX}):({_HEX})\.({_HEX})")
_TARGET = re.compile(r"\d+:\d+:\d+/\d+:(\d+):(\d+):(\d+)")
_CCW = re.compile(rf"{_HEX}/({_HEX})\.({_HEX})\.({_HEX})/{_HEX}\.{_HEX}\.({_HEX})/")


def _driver(path: str) -> str | None:
    try:
        return os.path.basename(os.readlink(path + "/driver"))
    except OSError:
        return None


def _scsi_target(syspath: str) -> tuple[int, int, int] | None:
    """``/targetH:C:T/H:C:T:L`` gives (C, T, L), as qemu-ga's sscanf reads it."""
    at = syspath.find("/target")
    match = _TARGET.match(syspath, at + 7) if at >= 0 else None
    return (int(match[1]), int(match[2]), int(match[3])) if match else None


def _hosts(parent: str, ata: bool) -> list[int]:
    """The sorted ``ataN`` or ``hostN`` numbers beside a disk's host (at most 8, as qemu-ga)."""
    pattern = re.compile(r"ata(-?\d+)" if ata else r"host(-?\d+)")
    try:
        names = os.listdir(parent)
    except OSError as exc:
        raise errno_error(f'opendir("{parent}")', exc) from None
    found = [int(m[1]) for name in names if (m := pattern.match(name))][:8]
    return sorted(found)


def _pci_address(syspath: str, address: dict[str, Any]) -> bool:
    """qemu-ga's build_guest_fsinfo_for_pci_dev: the first PCI function on the path whose
    driver is a disk controller it knows, and what that driver says about bus, target, unit."""
    at = syspath.find("/devices/pci")
    match = _FIRST_PCI.match(syspath, at + 12) if at >= 0 else None
    if match is None:
        return False
    pci = [int(x, 16) for x in match.groups()]
    pos = match.end()
    while True:
        driver = _driver(syspath[:pos])
        if driver in _DISK_DRIVERS:
            break
        nested = _NEXT_PCI.match(syspath, pos)
        if nested is None:
            return False
        pci = [int(x, 16) for x in nested.groups()]
        pos = nested.end()
    target = _scsi_target(syspath)
    host: int | None = None
    hosts: list[int] = []
    at, offset, ata = syspath.find("/ata"), 4, True
    if at < 0:
        at, offset, ata = syspath.find("/host"), 5, False
    if at >= 0 and (number := re.match(r"\d+", syspath[at + offset:])):
        host = int(number[0])
        hosts = _hosts(syspath[:at], ata)
    address["pci-controller"] = dict(zip(("domain", "bus", "slot", "function"), pci, strict=True))
    if driver in ("ata_piix", "ahci"):
        if host is None or target is None or host not in hosts:
            return False
        if driver == "ata_piix":   # a host per IDE bus, target*:0:<unit>:0
            address.update({"bus-type": "ide", "bus": hosts.index(host), "unit": target[1]})
        else:                      # one host per unit
            address.update({"bus-type": "sata", "unit": hosts.index(host)})
    elif driver == "sym53c8xx":
        if target is None:
            return False
        address.update({"bus-type": "scsi", "unit": target[1]})
    elif driver == "virtio-pci":
        if target is not None:     # virtio-scsi: target*:0:0:<unit>
            address.update({"bus-type": "scsi", "unit": target[2]})
        else:                      # virtio-blk: one disk per device
            address["bus-type"] = "virtio"
    elif driver == "nvme":
        address["bus-type"] = "nvme"
    else:                          # ehci-pci, xhci_hcd
        address["bus-type"] = "usb"
    return True


def _nonpci_virtio_address(syspath: str, address: dict[str, Any]) -> bool:
    if "/virtio" not in syspath or "/block" not in syspath:
        return False
    target = _scsi_target(syspath)
    if target is not None:
        address.update({"bus-type": "scsi", "bus": target[0], "target": target[1],
                        "unit": target[2]})
    else:
        address["bus-type"] = "virtio"
    return True


def _ccw_address(syspath: str, address: dict[str, Any]) -> bool:
    at = syspath.find("/devices/css")
    match = _CCW.match(syspath, at + 12) if at >= 0 else None
    if match is None:
        return False
    address["ccw-address"] = dict(zip(("cssid", "ssid", "subchno", "devno"),
                                      (int(x, 16) for x in match.groups()), strict=True))
    if "/virtio" in syspath[at:]:
        _nonpci_virtio_address(syspath, address)
    return True


def real_disk_address(disk_dir: str) -> dict[str, Any] | None:
    """qemu-ga's GuestDiskAddress for a non-virtual disk (build_guest_fsinfo_for_real_device):
    an address whenever the bus is known or udev names a device node or serial, with
    bus-type "unknown" and a PCI address of -1s where it cannot tell."""
    syspath = os.path.realpath(disk_dir)
    if not os.path.exists(syspath):
        return None
    address: dict[str, Any] = {
        "pci-controller": {"domain": -1, "bus": -1, "slot": -1, "function": -1},
        "bus-type": "unknown", "bus": 0, "target": 0, "unit": 0,
    }
    dev = devnode(syspath)
    serial = udev_property(syspath, "ID_SERIAL") or sysfs_serial(syspath)
    if "/devices/pci" in syspath:
        known = _pci_address(syspath, address)
    elif "/devices/css" in syspath:
        known = _ccw_address(syspath, address)
    elif "/virtio" in syspath:
        known = _nonpci_virtio_address(syspath, address)
    else:
        known = False
    if not (known or dev or serial):
        return None
    if dev:
        address["dev"] = dev
    if serial:
        address["serial"] = serial
    return address


def _dependencies(disk_dir: str) -> list[str] | None:
    """The devices a disk is built on, or None (member absent) without a ``slaves`` directory;
    an empty directory gives ``[]``, as qemu-ga sets has_dependencies once it opened it."""
    deps_dir = f"{disk_dir}/slaves"
    try:
        names = os.listdir(deps_dir)
    except OSError:
        return None
    found = [dev for name in names if (dev := devnode(f"{deps_dir}/{name}")) is not None]
    return found[::-1]  # qemu-ga prepends each


def _is_partition_of(disk: str, name: str) -> bool:
    if not name.startswith(disk):
        return False
    rest = name[len(disk):]
    return (rest[:1].isdigit() and rest[:1].isascii()) or (
        rest[:1] == "p" and rest[1:2].isdigit() and rest[1:2].isascii())


# NVMe SMART / health log through the admin passthrough ioctl, as qemu-ga's get_nvme_smart.
NVME_IOCTL_ADMIN_CMD = 0xC0484E41       # _IOWR('N', 0x41, struct nvme_admin_cmd), 72 bytes
_NVME_ADMIN_CMD = struct.Struct("=BBHIIIQQIIIIIIIIII")
_NVME_GET_LOG_PAGE = 0x02
_NVME_LOG_SMART = 0x02
_NVME_SMART_LOG_SIZE = 512
_NVME_COUNTERS = ("data-units-read", "data-units-written", "host-read-commands",
                  "host-write-commands", "controller-busy-time", "power-cycles",
                  "power-on-hours", "unsafe-shutdowns", "media-errors",
                  "number-of-error-log-entries")


def parse_nvme_smart(log: bytes) -> dict[str, Any]:
    """GuestDiskSmart for an NVMe SMART log page (NvmeSmartLog, little-endian)."""
    smart: dict[str, Any] = {
        "type": "nvme",
        "critical-warning": log[0],
        "temperature": int.from_bytes(log[1:3], "little"),
        "available-spare": log[3],
        "available-spare-threshold": log[4],
        "percentage-used": log[5],
    }
    for i, name in enumerate(_NVME_COUNTERS):
        lo, hi = struct.unpack_from("<QQ", log, 32 + 16 * i)
        smart[f"{name}-lo"] = lo
        smart[f"{name}-hi"] = hi
    return smart


def nvme_smart(device: str) -> dict[str, Any] | None:
    """The SMART log of an NVMe disk, or None if it cannot be read (qemu-ga stays silent)."""
    log = ctypes.create_string_buffer(_NVME_SMART_LOG_SIZE)
    cdw10 = _NVME_LOG_SMART | (1 << 15) | (((_NVME_SMART_LOG_SIZE >> 2) - 1) << 16)
    command = bytearray(_NVME_ADMIN_CMD.pack(
        _NVME_GET_LOG_PAGE, 0, 0, 0xFFFFFFFF, 0, 0, 0, ctypes.addressof(log), 0,
        _NVME_SMART_LOG_SIZE, cdw10, 0, 0, 0, 0, 0, 0, 0))
    try:
        fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.ioctl(fd, NVME_IOCTL_ADMIN_CMD, command, True)
    except OSError:
        return None
    finally:
        os.close(fd)
    return parse_nvme_smart(log.raw)


def get_disks(block_dir: str = BLOCK_DIR) -> list[dict[str, Any]]:
    try:
        entries = list(os.scandir(block_dir))
    except OSError as exc:
        raise errno_error(f'Can\'t open directory "{block_dir}"', exc) from None
    listed: list[dict[str, Any]] = []   # in qemu-ga's discovery order; it prepends, we reverse
    for entry in entries:
        if not entry.is_symlink():
            continue
        disk_dir = f"{block_dir}/{entry.name}"
        size = read_optional(f"{disk_dir}/size")
        if size is None or size == "0\n":
            continue
        dev = devnode(disk_dir)
        if dev is None:
            continue
        disk: dict[str, Any] = {"name": dev, "partition": False}
        alias = udev_property(disk_dir, "DM_NAME")
        if alias:
            disk["alias"] = alias
        if "/devices/virtual/block/" not in os.path.realpath(disk_dir):
            address = real_disk_address(disk_dir)
            if address is not None:
                disk["address"] = address
        dependencies = _dependencies(disk_dir)
        if dependencies is not None:
            disk["dependencies"] = dependencies
        if disk.get("address", {}).get("bus-type") == "nvme":
            smart = nvme_smart(dev)
            if smart is not None:
                disk["smart"] = smart
        listed.append(disk)
        try:
            parts = list(os.scandir(disk_dir))
        except OSError:
            parts = []
        for part in parts:
            if not part.is_dir(follow_symlinks=False) or not _is_partition_of(entry.name, part.name):
                continue
            part_dev = devnode(f"{disk_dir}/{part.name}")
            if part_dev is None:
                continue
            listed.append({"name": part_dev, "partition": True, "dependencies": [dev]})
    return listed[::-1]


def guest_get_disks(agent: AgentState) -> list[dict[str, Any]]:
    return get_disks()


COMMANDS = (
    Command("guest-get-disks", guest_get_disks,
            "The guest's disks and partitions: name, partition, dependencies, alias, address.",
            blocking=True),
)
