"""Data for ``guest-get-fsinfo`` and ``guest-fstrim``, in qemu-ga's shapes.

Both walk the same mounts a freeze-all would consider (:func:`~pyqga.agent.freeze.mounts.freezable`)
and, like qemu-ga, list them in reverse mount order (it prepends to its result list). The disk
addresses come from the sysfs path of the block device, which is how libvirt's
``virsh domfsinfo`` maps a guest filesystem back to a disk of the domain.

What ``guest-get-fsinfo`` reports besides the sizes (names, disks, addresses: a walk of sysfs,
most of its cost) only changes when something is mounted or unmounted, so :class:`FsinfoCache`
keeps it until ``/proc/self/mountinfo`` says the mount table changed (the kernel flags an open
mountinfo file with POLLPRI on every mount and unmount); the sizes are read on every call.
"""

from __future__ import annotations

import errno
import os
import re
import select
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pyqga.agent.commands.kernel_files import read_optional, sysfs_serial
from pyqga.agent.freeze.ioctls import fitrim, open_mountpoint
from pyqga.agent.freeze.mounts import MOUNTINFO, Mount, freezable, read_mountinfo
from pyqga.protocol.errors import invalid_params

SYSFS = "/sys"

# A PCI function as sysfs spells it: domain:bus:slot.function, all hex.
_PCI = re.compile(r"^([0-9a-f]{4,}):([0-9a-f]{2}):([0-9a-f]{2})\.([0-7])$")
# A SCSI device directory: host:channel:target:lun.
_SCSI = re.compile(r"^(\d+):(\d+):(\d+):(\d+)$")


def _default_mounts() -> list[Mount]:
    return freezable(read_mountinfo(MOUNTINFO))


def device_syspath(major: int, minor: int, sysfs: str = SYSFS) -> Path | None:
    """The device's directory under /sys/devices, or None if sysfs does not know it."""
    link = Path(sysfs) / "dev" / "block" / f"{major}:{minor}"
    try:
        return Path(os.path.realpath(link, strict=True))
    except OSError:
        return None


def _devnode(syspath: Path) -> str:
    uevent = read_optional(str(syspath / "uevent")) or ""
    for line in uevent.splitlines():
        if line.startswith("DEVNAME="):
            return "/dev/" + line.split("=", 1)[1]
    return "/dev/" + syspath.name


def disk_address(syspath: Path) -> dict[str, Any] | None:
    """qemu-ga's GuestDiskAddress for a real (non-virtual) disk, or None if sysfs cannot tell.

    virtio-blk: ``bus-type virtio`` (bus/target/unit 0); SCSI (virtio-scsi or any HBA): the
    ``H:C:T:L`` directory gives bus=C, target=T, unit=L; NVMe: ``bus-type nvme``. The PCI
    controller is the last PCI function on the path (the HBA, behind any bridges).
    """
    if (syspath / "partition").exists():
        syspath = syspath.parent
    parts = syspath.parts
    pci = [(i, m) for i, part in enumerate(parts) if (m := _PCI.match(part))]
    if not pci:
        return None  # not on PCI (loop, xen, ccw, platform mmc...): nothing to report
    pci_index, pci_match = pci[-1]
    domain, bus, slot, function = (int(x, 16) for x in pci_match.groups())
    driver_link = Path(*parts[: pci_index + 1]) / "driver"
    driver = os.path.basename(os.readlink(driver_link)) if driver_link.is_symlink() else ""
    scsi = next((m for part in parts if (m := _SCSI.match(part))), None)

    address: dict[str, Any] = {"bus": 0, "target": 0, "unit": 0}
    if "nvme" in parts or driver == "nvme":
        bus_type = "nvme"
    elif scsi is not None:
        bus_type = {"ahci": "sata", "ata_piix": "ide", "xhci_hcd": "usb", "ehci-pci": "usb"}.get(
            driver, "scsi"
        )
        _host, channel, target, lun = (int(x) for x in scsi.groups())
        address.update(bus=channel, target=target, unit=lun)
    elif driver == "virtio-pci":
        bus_type = "virtio"
    else:
        return None
    address["bus-type"] = bus_type
    address["pci-controller"] = {"domain": domain, "bus": bus, "slot": slot, "function": function}
    address["dev"] = _devnode(syspath)
    serial = sysfs_serial(str(syspath))
    if serial:
        address["serial"] = serial
    return address


def disks_of(syspath: Path, depth: int = 0) -> list[dict[str, Any]]:
    """Disk addresses under a block device: itself, or for a virtual device (dm, md, loop)
    the devices listed in its ``slaves`` directory, recursively (a loop device has none)."""
    if depth > 16:
        return []
    if "virtual" in syspath.parts:
        slaves = syspath / "slaves"
        try:
            names = sorted(os.listdir(slaves))
        except OSError:
            return []
        found: list[dict[str, Any]] = []
        for name in names:
            found += disks_of(Path(os.path.realpath(slaves / name)), depth + 1)
        return found
    address = disk_address(syspath)
    return [address] if address is not None else []


def fsinfo_for(mount: Mount, sysfs: str = SYSFS) -> dict[str, Any]:
    """One GuestFilesystemInfo: name, mountpoint, type, used/total bytes, disks."""
    return with_sizes(mount, _fixed_info(mount, sysfs))


def _fixed_info(mount: Mount, sysfs: str) -> dict[str, Any]:
    """What does not change while ``mount`` stays mounted: everything but the sizes."""
    syspath = device_syspath(mount.major, mount.minor, sysfs)
    return {
        "name": syspath.name if syspath is not None else f"{mount.major}:{mount.minor}",
        "mountpoint": mount.mountpoint,
        "type": mount.fstype,
        "disk": disks_of(syspath) if syspath is not None else [],
    }


def with_sizes(mount: Mount, fixed: dict[str, Any]) -> dict[str, Any]:
    """``fixed`` with the sizes of now, in qemu-ga's member order."""
    info = {"name": fixed["name"], "mountpoint": fixed["mountpoint"], "type": fixed["type"]}
    try:
        st = os.statvfs(mount.mountpoint)
    except OSError:
        pass  # qemu-ga omits the sizes when statvfs fails
    else:
        used = st.f_blocks - st.f_bfree
        # qemu-ga: total excludes the blocks reserved for root, so used/total is what df shows.
        info["used-bytes"] = used * st.f_frsize
        info["total-bytes"] = (used + st.f_bavail) * st.f_frsize
    info["disk"] = fixed["disk"]
    return info


class FsinfoCache:
    """``guest-get-fsinfo`` of this mount namespace, its sysfs part kept until a mount changes.

    Thread-safe (the command runs on worker threads).  Where the mountinfo file cannot be
    watched (not Linux, or no /proc), nothing is kept: every call reads everything, as before.
    """

    def __init__(self, mountinfo: str = MOUNTINFO, sysfs: str = SYSFS) -> None:
        self._mountinfo = mountinfo
        self._sysfs = sysfs
        self._lock = threading.Lock()
        self._watch: select.poll | None = None
        self._fd: int | None = None
        self._fixed: list[tuple[Mount, dict[str, Any]]] | None = None

    def get(self) -> list[dict[str, Any]]:
        with self._lock:
            watching = self._watching()  # before the first read, so no change falls between
            if self._fixed is None or not watching or self._mounts_changed():
                mounts = freezable(read_mountinfo(self._mountinfo))
                fixed = [(m, _fixed_info(m, self._sysfs)) for m in reversed(mounts)]
                self._fixed = fixed if watching else None
            else:
                fixed = self._fixed
        return [with_sizes(mount, info) for mount, info in fixed]

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
            self._fd, self._watch, self._fixed = None, None, None

    def _watching(self) -> bool:
        """Watch the mount table from now on (once); False if it cannot be watched."""
        if self._watch is None:
            try:
                fd = os.open(self._mountinfo, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                return False
            self._watch = select.poll()
            self._watch.register(fd, select.POLLPRI)
            self._fd = fd  # kept open while watching: the kernel flags this open file
        return True

    def _mounts_changed(self) -> bool:
        # POLLPRI (with POLLERR) once per change since the last poll; the poll itself clears it.
        assert self._watch is not None
        return any(events & (select.POLLPRI | select.POLLERR) for _, events in self._watch.poll(0))


def get_fsinfo(mounts: Iterable[Mount] | None = None, sysfs: str = SYSFS) -> list[dict[str, Any]]:
    """``guest-get-fsinfo``: every freezable filesystem, in reverse mount order, all read now.
    Without ``mounts``, those of this mount namespace.  The agent answers through the
    :class:`FsinfoCache` its ``AgentState`` owns instead."""
    chosen = list(mounts) if mounts is not None else _default_mounts()
    return [fsinfo_for(m, sysfs) for m in reversed(chosen)]


def fstrim(minimum: int | None = None, mounts: Iterable[Mount] | None = None) -> dict[str, Any]:
    """``guest-fstrim``: FITRIM every freezable filesystem; errors are reported per path.

    Result ``{"paths": [{"path", "trimmed", "minimum"} | {"path", "error"}]}`` with qemu-ga's
    error texts: "failed to open: ...", "trim not supported" (EOPNOTSUPP/ENOTTY), "failed to
    trim: ...". ``trimmed`` is what the kernel reports (bytes); ``minimum`` is the minimum
    extent length it used, which it may round up to the device's discard granularity.
    """
    if minimum is None:
        minimum = 0
    elif isinstance(minimum, bool) or not isinstance(minimum, int) or not 0 <= minimum < 2**64:
        raise invalid_params(f"minimum must be a non-negative integer, not {minimum!r}")
    chosen = list(mounts) if mounts is not None else _default_mounts()
    return {"paths": [_trim_one(m.mountpoint, minimum) for m in reversed(chosen)]}


def _trim_one(path: str, minimum: int) -> dict[str, Any]:
    result: dict[str, Any] = {"path": path}
    try:
        fd = open_mountpoint(path)
    except OSError as e:
        result["error"] = f"failed to open: {e.strerror}"
        return result
    try:
        trimmed, used_minimum = fitrim(fd, minimum)
    except OSError as e:
        if e.errno in (errno.EOPNOTSUPP, errno.ENOTTY):
            result["error"] = "trim not supported"
        else:
            result["error"] = f"failed to trim: {e.strerror}"
        return result
    finally:
        os.close(fd)
    result["trimmed"] = trimmed
    result["minimum"] = used_minimum
    return result
