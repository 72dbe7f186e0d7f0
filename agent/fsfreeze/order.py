"""Which filesystems may be frozen at the same time, and which must wait for others.

qemu-ga freezes one filesystem after another, in reverse mount order.  While FIFREEZE runs on
the last ones, the first ones already block their writers, so applications stall for the sum
of every FIFREEZE (each costs tens of ms in the kernel even with nothing to flush: the
superblock's freeze levels each wait for an RCU grace period).  Freezing independent
filesystems concurrently makes the stall about one FIFREEZE long (bench/stall.py).

Order still matters between dependent filesystems: ``a`` must be frozen before ``b`` when

- ``a`` is mounted below ``b`` (children before parents, qemu-ga's rule; ``/`` comes last,
  as hv_vss_daemon does), or
- ``a`` lives on a loop device whose backing file is on ``b``: freezing ``b`` first would make
  ``a``'s FIFREEZE wait forever to flush into a frozen file.

So the plan is cut into waves: each wave holds the filesystems nothing still unfrozen must
precede; the waves run in order and the members of a wave run concurrently.  n is the number
of filesystems in a freeze (tens at most), so the O(n^2) comparison is irrelevant.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from agent.fsfreeze.mounts import Mount

SYSFS = "/sys"
BackingFileLookup = Callable[[Mount], "str | None"]


def loop_backing_file(mount: Mount, sysfs: str = SYSFS) -> str | None:
    """The file behind a loop device, from sysfs; None for anything else."""
    try:
        with open(f"{sysfs}/dev/block/{mount.major}:{mount.minor}/loop/backing_file") as handle:
            path = handle.read().strip()
    except OSError:
        return None
    return path.removesuffix(" (deleted)") or None


def is_within(path: str, mountpoint: str) -> bool:
    if mountpoint == "/":
        return path.startswith("/")
    return path == mountpoint or path.startswith(mountpoint.rstrip("/") + "/")


def must_precede(a: Mount, b: Mount, backing_file: BackingFileLookup) -> bool:
    """True if ``a`` has to be frozen before ``b``."""
    if a.mountpoint == b.mountpoint:
        return False
    if is_within(a.mountpoint, b.mountpoint):
        return True
    backing = backing_file(a)
    return backing is not None and is_within(os.path.normpath(backing), b.mountpoint)


def freeze_waves(
    plan: Sequence[Mount], backing_file: BackingFileLookup = loop_backing_file
) -> list[list[Mount]]:
    """The plan cut into waves (see the module docstring); every mount appears exactly once.

    Within a wave the plan's own order is kept, so a caller that freezes a wave one by one
    still follows qemu-ga's reverse mount order.
    """
    backing = {id(m): backing_file(m) for m in plan}

    def lookup(mount: Mount) -> str | None:
        return backing[id(mount)]

    pending = list(plan)
    waves: list[list[Mount]] = []
    while pending:
        wave = [b for b in pending if not any(must_precede(a, b, lookup) for a in pending if a is not b)]
        if not wave:  # a cycle cannot come from real mounts; fall back to one at a time
            wave = pending[:1]
        waves.append(wave)
        chosen = {id(m) for m in wave}
        pending = [m for m in pending if id(m) not in chosen]
    return waves
