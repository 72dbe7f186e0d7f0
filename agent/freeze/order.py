"""Which filesystems may be frozen at the same time, and which must wait for others.

qemu-ga freezes one filesystem after another, in reverse mount order.  While FIFREEZE runs on
the last ones, the first ones already block their writers, so applications stall for the sum
of every FIFREEZE (each costs tens of ms in the kernel even with nothing to flush: the
superblock's freeze levels each wait for an RCU grace period).  Freezing independent
filesystems concurrently makes the stall about one FIFREEZE long (bench/stall.py).

Order still matters between dependent filesystems: ``a`` must be frozen before ``b`` when

- ``a`` is mounted below ``b`` (children before parents, qemu-ga's rule; ``/`` comes last,
  as hv_vss_daemon does), or
- some file on ``b`` backs a block device anywhere below ``a``: freezing ``b`` first would make
  ``a``'s FIFREEZE wait forever to flush through that device into a frozen file.

"Below ``a``" is ``a``'s whole block-device stack, walked in sysfs to any depth
(:func:`backing_files`): from ``/sys/dev/block/MAJ:MIN`` a partition leads to its disk, every
``slaves/`` entry leads on (dm-linear, dm-crypt, LVM, md), and a loop device contributes its
``loop/backing_file``.  A loop device backed by another block device (``losetup /dev/loop2
/dev/loop1``) continues the walk at that device.  So an LV on a PV that is a loop device over
``/data/pv.img`` precedes ``/data``, and loop over loop is ordered transitively: an image
inside an image inside ``/data`` precedes the inner image's filesystem, which precedes ``/data``.

So the plan is cut into waves: each wave holds the filesystems nothing still unfrozen must
precede; the waves run in order and the members of a wave run concurrently.  n is the number
of filesystems in a freeze (tens at most), so the O(n^2) comparison is irrelevant.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Sequence

from pyqga.agent.freeze.mounts import Mount

SYSFS = "/sys"
# A real stack is a handful of devices deep; the cap bounds the work on a corrupt or hostile
# sysfs (and on a huge md array, whose members all lead to the same few backing filesystems).
MAX_STACK_NODES = 64

BackingFilesLookup = Callable[[Mount], Sequence[str]]


def backing_files(mount: Mount, sysfs: str = SYSFS) -> tuple[str, ...]:
    """Every file backing a loop device anywhere in ``mount``'s block-device stack.

    Normalised, deduplicated, in walk order (depth first, ``slaves/`` by name); empty for a
    mount without a block device or a stack without loop devices.  Never raises: a device that
    vanishes mid-walk just contributes nothing.
    """
    found: dict[str, None] = {}
    seen: set[str] = set()
    pending = [f"{sysfs}/dev/block/{mount.major}:{mount.minor}"]
    while pending and len(seen) < MAX_STACK_NODES:
        node = _whole_disk(os.path.realpath(pending.pop()))
        if node in seen or not os.path.isdir(node):
            continue
        seen.add(node)
        backing = _read_backing_file(node)
        below: list[str] = []
        if backing is not None:
            found.setdefault(backing, None)
            device = _block_device(backing)
            if device is not None:  # loop over a block device: its stack is below this one
                below.append(f"{sysfs}/dev/block/{device[0]}:{device[1]}")
        below += [os.path.join(node, "slaves", name) for name in _listdir(os.path.join(node, "slaves"))]
        pending.extend(reversed(below))  # popped in order: depth first, in the listed order
    return tuple(found)


def _whole_disk(node: str) -> str:
    """A partition's disk (its parent directory in sysfs); any other node itself."""
    if os.path.exists(os.path.join(node, "partition")):
        return os.path.realpath(os.path.join(node, ".."))
    return node


def _read_backing_file(node: str) -> str | None:
    try:
        with open(os.path.join(node, "loop", "backing_file"), encoding="utf-8",
                  errors="surrogateescape") as handle:
            path = handle.read().strip()
    except OSError:
        return None  # not a loop device, or a detached one
    path = path.removesuffix(" (deleted)")
    return os.path.normpath(path) if path else None


def _listdir(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


def _block_device(path: str) -> tuple[int, int] | None:
    """(major, minor) if ``path`` is a block device node under /dev, else None.

    Only /dev is looked at: a stat of a regular backing file could hang on a dead network
    filesystem, and a block device node lives in /dev (symlinks such as /dev/mapper/* and
    /dev/VG/LV are followed).
    """
    if not path.startswith("/dev/"):
        return None
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    if not stat.S_ISBLK(st.st_mode):
        return None
    return (os.major(st.st_rdev), os.minor(st.st_rdev))


def is_within(path: str, mountpoint: str) -> bool:
    if mountpoint == "/":
        return path.startswith("/")
    return path == mountpoint or path.startswith(mountpoint.rstrip("/") + "/")


def must_precede(a: Mount, b: Mount, lookup: BackingFilesLookup) -> bool:
    """True if ``a`` has to be frozen before ``b``; ``lookup`` gives ``a``'s backing files."""
    if a.mountpoint == b.mountpoint:
        return False
    if is_within(a.mountpoint, b.mountpoint):
        return True
    return any(is_within(os.path.normpath(path), b.mountpoint) for path in lookup(a))


def freeze_waves(plan: Sequence[Mount], lookup: BackingFilesLookup = backing_files) -> list[list[Mount]]:
    """The plan cut into waves (see the module docstring); every mount appears exactly once.

    Within a wave the plan's own order is kept, so a caller that freezes a wave one by one
    still follows qemu-ga's reverse mount order.  ``lookup`` runs once per mount: sysfs is
    read before anything is frozen.
    """
    backing: dict[int, tuple[str, ...]] = {}
    for mount in plan:
        files = lookup(mount)
        if isinstance(files, str):  # an old single-path lookup would be read one letter at a time
            raise TypeError(f"{lookup!r} returned one path, not a sequence of paths")
        backing[id(mount)] = tuple(files)

    def cached(mount: Mount) -> Sequence[str]:
        return backing[id(mount)]

    pending = list(plan)
    waves: list[list[Mount]] = []
    while pending:
        wave = [b for b in pending if not any(must_precede(a, b, cached) for a in pending if a is not b)]
        if not wave:  # a cycle cannot come from real mounts; fall back to one at a time
            wave = pending[:1]
        waves.append(wave)
        chosen = {id(m) for m in wave}
        pending = [m for m in pending if id(m) not in chosen]
    return waves
