"""The device-mapper kinds: each swaps the table of the dm device under a mount (or suspends it),
and its undo puts back the exact table it found.

A target must be a mount on a dm device (an LVM volume is one; ``docs/faults.md`` shows how to
put a linear layer under a plain disk's filesystem).  The table read from the kernel before the
fault is the undo step, so revert restores it byte for byte.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from pyqga.agent.faults import dm
from pyqga.agent.faults.kinds import Context, ParamSpec, Preparer, Spec, device_key, find_mount
from pyqga.agent.faults.machine import Refused
from pyqga.agent.faults.vocabulary import Kind

SYS_BLOCK = "/sys/dev/block"


def dm_name(major: int, minor: int) -> str | None:
    """The dm name of a block device, or None when it is not a dm device."""
    try:
        with open(f"{SYS_BLOCK}/{major}:{minor}/dm/name") as f:
            return f.read().strip() or None
    except OSError:
        return None


def dm_target(target: str, context: Context, kind: Kind, force: bool) -> tuple[str, str, list[dm.TableLine]]:
    """(device key, dm name, live table) of the mount ``target``; :class:`Refused` naming the fix
    when it is not on dm, and for the kinds that stall or fail every I/O, when it holds the
    agent's own files (unless forced)."""
    mount = find_mount(target, context.mounts)
    name = dm_name(mount.major, mount.minor)
    if name is None:
        raise Refused(f"{mount.mountpoint} is on {mount.source}, not a device-mapper device; {kind.value} "
                      "swaps a dm table: put a dm-linear layer under it (docs/faults.md, 'A dm layer')")
    key = device_key(mount)
    if kind in (Kind.IO_STALL, Kind.IO_ERROR) and key in context.own_devices and not force:
        raise Refused(f"{mount.mountpoint} holds the agent's own files; {kind.value} there could stop "
                      "the agent itself (the keeper still ends it): pass force to do it anyway")
    return key, name, dm.table(name)


def _io_stall(target: str, params: Mapping[str, Any], force: bool, context: Context) -> Spec:
    key, name, _ = dm_target(target, context, Kind.IO_STALL, force)
    return Spec(key, ({"op": "dm-suspend", "name": name},), ({"op": "dm-resume", "name": name},), params)


PARAMS: dict[Kind, tuple[ParamSpec, ...]] = {
    Kind.IO_STALL: (),
}
PREPARERS: dict[Kind, Preparer] = {
    Kind.IO_STALL: _io_stall,
}


def unavailable(kind: Kind) -> str | None:
    """Why ``kind`` cannot run in this guest at all, or None."""
    if not os.path.exists(dm.CONTROL):
        return "no device-mapper: load dm-mod (modprobe dm-mod)"
    return None


