"""Which filesystems are mounted, and which of them a freeze should touch.

Everything here is a pure function over the text of ``/proc/self/mountinfo`` (plus one injectable
lookup for btrfs), so the rules qemu-ga applies can be unit-tested without mounting anything.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable, Iterable
from typing import NamedTuple

MOUNTINFO = "/proc/self/mountinfo"

# The kernel escapes space, tab, newline and backslash as a backslash and three octal digits.
_OCTAL_ESCAPE = re.compile(rb"\\([0-7]{3})")

BlockDeviceLookup = Callable[[str], "tuple[int, int] | None"]


class Mount(NamedTuple):
    """One line of mountinfo, with escapes decoded.

    ``major``/``minor`` identify the superblock; for btrfs, :func:`freezable` replaces the
    anonymous 0:N numbers with those of the block device, as qemu-ga does.
    """

    mountpoint: str
    fstype: str
    source: str
    major: int
    minor: int
    mount_id: int = 0
    parent_id: int = 0
    root: str = "/"
    options: str = ""
    super_options: str = ""

    @property
    def device(self) -> tuple[int, int]:
        return (self.major, self.minor)


def unescape(field: str) -> str:
    """Decode mountinfo's octal escapes (``\\040`` is a space); works on bytes so that
    non-UTF-8 names survive as surrogate escapes, like every other path Python hands out."""
    raw = _OCTAL_ESCAPE.sub(lambda m: bytes([int(m[1], 8)]), os.fsencode(field))
    return os.fsdecode(raw)


def parse_mountinfo_line(line: str) -> Mount | None:
    """Parse one line, or return None for a line that does not have mountinfo's shape.

    Layout (proc(5)): ``ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE
    SUPEROPTIONS``. The optional fields vary in number, so the ``-`` separator is searched for.
    """
    fields = line.rstrip("\n").split(" ")
    try:
        sep = fields.index("-", 6)
        mount_id, parent_id = int(fields[0]), int(fields[1])
        major_s, minor_s = fields[2].split(":")
        major, minor = int(major_s), int(minor_s)
        fstype = fields[sep + 1]
        source = fields[sep + 2] if len(fields) > sep + 2 else ""
    except (ValueError, IndexError):
        return None
    return Mount(
        mountpoint=unescape(fields[4]),
        fstype=unescape(fstype),
        source=unescape(source),
        major=major,
        minor=minor,
        mount_id=mount_id,
        parent_id=parent_id,
        root=unescape(fields[3]),
        options=fields[5],
        super_options=" ".join(fields[sep + 3 :]),
    )


def parse_mountinfo(text: str) -> list[Mount]:
    """All mounts in file order (the order they were mounted); malformed lines are skipped, as
    qemu-ga does, because one odd line must not make every filesystem unfreezable."""
    mounts = []
    for line in text.splitlines():
        mount = parse_mountinfo_line(line)
        if mount is not None:
            mounts.append(mount)
    return mounts


def read_mountinfo(path: str = MOUNTINFO) -> list[Mount]:
    """Read and parse a mountinfo file (default: this process's mount namespace)."""
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        return parse_mountinfo(f.read())


def block_device_numbers(source: str) -> tuple[int, int] | None:
    """``(major, minor)`` of ``source`` if it is a block device node, else None."""
    try:
        st = os.stat(source)
    except (OSError, ValueError):
        return None
    if not stat.S_ISBLK(st.st_mode):
        return None
    return (os.major(st.st_rdev), os.minor(st.st_rdev))


def resolve_device(
    mount: Mount, block_device: BlockDeviceLookup = block_device_numbers
) -> Mount | None:
    """The mount with its real device numbers, or None if it is not freezable by device rules.

    Major 0 means an anonymous superblock (tmpfs, proc, overlay, nfs, fuse, autofs...): there is
    nothing to freeze, and opening some of them can hang (autofs, a dead NFS server). btrfs is
    the exception: it always reports major 0, so its source device decides.
    """
    if mount.major != 0:
        return mount
    if mount.fstype != "btrfs":
        return None
    numbers = block_device(mount.source)
    if numbers is None:
        return None
    return mount._replace(major=numbers[0], minor=numbers[1])


def freezable(
    mounts: Iterable[Mount], block_device: BlockDeviceLookup = block_device_numbers
) -> list[Mount]:
    """The mounts a freeze-all considers, in mount order, one per device.

    Only the first mount of each device is kept: bind mounts and further mounts of the same
    superblock would only answer EBUSY, and a device should be counted once.
    """
    seen: set[tuple[int, int]] = set()
    result = []
    for mount in mounts:
        resolved = resolve_device(mount, block_device)
        if resolved is None or resolved.device in seen:
            continue
        seen.add(resolved.device)
        result.append(resolved)
    return result
