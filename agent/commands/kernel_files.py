"""Reading procfs, sysfs and udev's small files, as the read commands do on every call.

``os.read`` into bytes rather than ``open()``: a text file object costs ~15 us to build, several
times the read itself, and one guest-get-disks reads a file per block device.  Such files never
block on a frozen filesystem, which is why the commands reading them run on the connection loop.
"""

from __future__ import annotations

import os

from pyqga.protocol.errors import AgentError, command_failed

CHUNK = 1 << 16


def read_kernel_file(path: str) -> str:
    """The whole file as text (undecodable bytes replaced); OSError as ``open`` raises it."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = os.read(fd, CHUNK)
        if len(data) == CHUNK:  # /proc/stat on a big guest: read to the end
            parts = [data]
            while chunk := os.read(fd, CHUNK):
                parts.append(chunk)
            data = b"".join(parts)
    finally:
        os.close(fd)
    return data.decode("utf-8", "replace")


def read_optional(path: str) -> str | None:
    """The file as text, or None if it cannot be read (absent, a sysfs attribute that errors)."""
    try:
        return read_kernel_file(path)
    except OSError:
        return None


def sysfs_serial(syspath: str) -> str | None:
    """The serial the kernel shows for a disk (virtio-blk, NVMe): ``serial``, else
    ``device/serial``, stripped; None if neither has one.  guest-get-fsinfo and guest-get-disks
    both report it, so libvirt sees the same serial for a disk in both places."""
    for name in ("serial", "device/serial"):
        text = read_optional(os.path.join(syspath, name))
        if text and text.strip():
            return text.strip()
    return None


def errno_error(what: str, exc: OSError) -> AgentError:
    """qemu's error_setg_errno, as the sysfs commands report a failed call: "what: strerror"."""
    return command_failed(f"{what}: {os.strerror(exc.errno or 0)}")
