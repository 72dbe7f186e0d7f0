"""Data for ``guest-get-fsinfo`` and ``guest-fstrim``, in qemu-ga's shapes.

Both walk the same mounts a freeze-all would consider (:func:`~agent.fsfreeze.mounts.freezable`)
and, like qemu-ga, list them in reverse mount order (it prepends to its result list). The disk
addresses come from the sysfs path of the block device, which is how libvirt's
``virsh domfsinfo`` maps a guest filesystem back to a disk of the domain.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from agent.fsfreeze.ioctls import fitrim, open_mountpoint
from agent.fsfreeze.mounts import MOUNTINFO, Mount, freezable, read_mountinfo
from protocol.errors import invalid_params

SYSFS = "/sys"

# A PCI function as sysfs spells it: domain:bus:slot.function, all hex.
_PCI = re.compile(r"^([0-9a-f]{4,}):([0-9a-f]{2}):([0-9a-f]{2})\.([0-7])$")
# A SCSI device directory: host:channel:target:lun.
_SCSI = re.compile(r"^(\d+):(\d+):(\d+):(\d+)$")


def _default_mounts() -> list[Mount]:
    return freezable(read_mountinfo(MOUNTINFO))


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace").strip()
    except OSError:
        return None


def device_syspath(major: int, minor: int, sysfs: str = SYSFS) -> Path | None:
    """The device's directory under /sys/devices, or None if sysfs does not know it."""
    link = Path(sysfs) / "dev" / "block" / f"{major}:{minor}"
    try:
        return Path(os.path.realpath(link, strict=True))
    except OSError:
        return None


def _devnode(syspath: Path) -> str:
    uevent = _read_text(syspath / "uevent") or ""
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
    serial = _read_text(syspath / "serial") or _read_text(syspath / "device" / "serial")
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
    syspath = device_syspath(mount.major, mount.minor, sysfs)
    info: dict[str, Any] = {
        "name": syspath.name if syspath is not None else f"{mount.major}:{mount.minor}",
        "mountpoint": mount.mountpoint,
        "type": mount.fstype,
    }
    try:
        st = os.statvfs(mount.mountpoint)
    except OSError:
        pass  # qemu-ga omits the sizes when statvfs fails
    else:
        used = st.f_blocks - st.f_bfree
        # qemu-ga: total excludes the blocks reserved for root, so used/total is what df shows.
        info["used-bytes"] = used * st.f_frsize
        info["total-bytes"] = (used + st.f_bavail) * st.f_frsize
    info["disk"] = disks_of(syspath) if syspath is not None else []
    return info


def get_fsinfo(mounts: Iterable[Mount] | None = None, sysfs: str = SYSFS) -> list[dict[str, Any]]:
    """``guest-get-fsinfo``: every freezable filesystem, in reverse mount order."""
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
