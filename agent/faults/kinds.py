"""From a request (kind, target, params) to what a lease does: its device and its recipe.

Each kind declares its parameters once (:data:`PARAMS`: name, type, default, what it means);
``docs/faults.md`` and ``guest-fault-capabilities`` show them from here.  The device-mapper kinds
are prepared in :mod:`.block`; the two that work on any filesystem are here, with what both
share.  :mod:`.catalog` joins them.

A target is a mount point or a block device (``/dev/...``) that is mounted.  The device two
leases may not share is the filesystem's block device, ``MAJOR:MINOR``.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from pyqga.agent.faults.machine import Refused
from pyqga.agent.faults.tokens import token_hex
from pyqga.agent.faults.vocabulary import Kind, Step
from pyqga.agent.freeze.mounts import Mount, read_mountinfo

FREEZABLE = ("ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs", "jfs", "gfs2", "nilfs2", "reiserfs")
FILL_PREFIX = ".pyqga-fill-"


class ParamSpec(NamedTuple):
    name: str
    type: type
    default: Any
    doc: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[Any, ...] = ()


class Spec(NamedTuple):
    """A request checked against this guest: the device it holds and its recipe."""

    device: str
    apply: tuple[Step, ...]
    undo: tuple[Step, ...]
    params: Mapping[str, Any]   # with defaults filled in, as the lease lists them


class Context(NamedTuple):
    """The guest as a request sees it."""

    mounts: list[Mount]
    own_devices: frozenset[str]   # MAJOR:MINOR of the devices holding the agent's own files
    state_device: str = ""        # MAJOR:MINOR of the state directory's filesystem

    @classmethod
    def read(cls, statedir: str) -> Context:
        own = {_device_of(path) for path in (sys.executable, os.path.dirname(os.path.abspath(__file__)),
                                             statedir, sys.prefix)}
        return cls(read_mountinfo(), frozenset(own - {""}), _device_of(statedir))


def _device_of(path: str) -> str:
    """MAJOR:MINOR of the filesystem holding ``path`` ("" if it cannot be read)."""
    try:
        st = os.stat(path)
    except OSError:
        return ""
    return f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"


PARAMS: dict[Kind, tuple[ParamSpec, ...]] = {
    Kind.WRITE_STALL: (),
    Kind.DISK_FULL: (
        ParamSpec("free-bytes", int, 0, "bytes left available (as df shows them) while it holds", minimum=0),
    ),
}


def kind_of(name: str) -> Kind:
    try:
        return Kind(name)
    except ValueError:
        known = ", ".join(kind.value for kind in Kind)
        raise Refused(f"unknown fault kind {name!r}; the kinds are: {known}") from None


TYPE_NAMES: dict[type, str] = {int: "integer", float: "number", str: "string", bool: "boolean"}


def check_params(kind: Kind, params: Mapping[str, Any] | None, table: Mapping[Kind, tuple[ParamSpec, ...]],
                 defaults_only: bool = False) -> dict[str, Any]:
    """``params`` with defaults filled in; :class:`Refused` naming the first bad one.
    ``defaults_only``: a required parameter may be missing (to ask whether a target fits)."""
    specs = {spec.name: spec for spec in table.get(kind, ())}
    params = dict(params or {})
    unknown = sorted(set(params) - set(specs))
    if unknown:
        takes = ", ".join(specs) or "no parameters"
        raise Refused(f"{kind.value} has no parameter {unknown[0]!r}; it takes: {takes}")
    out: dict[str, Any] = {}
    for name, spec in specs.items():
        value: Any = params.get(name, spec.default)
        if value is None and defaults_only:
            continue
        if value is None:
            raise Refused(f"{kind.value} needs the parameter {name!r}: {spec.doc}")
        if spec.type is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, spec.type) or (isinstance(value, bool) and spec.type is not bool):
            raise Refused(f"{kind.value}: {name} must be {spec.type.__name__}, not {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise Refused(f"{kind.value}: {name} must be finite, not {value!r}")
        low, high = spec.minimum, spec.maximum
        number = float(value) if isinstance(value, int | float) else 0.0
        if (low is not None and number < low) or (high is not None and number > high):
            raise Refused(f"{kind.value}: {name} must be between {low} and {high}, not {value!r}")
        if spec.choices and value not in spec.choices:
            choices = ", ".join(map(str, spec.choices))
            raise Refused(f"{kind.value}: {name} must be one of {choices}, not {value!r}")
        out[name] = value
    return out


def find_mount(target: str, mounts: list[Mount]) -> Mount:
    """The mount a target names: a mount point, or a mounted block device (its first mount)."""
    if not isinstance(target, str) or not target.startswith("/"):
        raise Refused(f"target must be an absolute mount point or /dev path, not {str(target)[:80]!r}")
    path = os.path.realpath(target)
    for mount in reversed(mounts):   # the last mount on a path is the one in force
        if mount.mountpoint == path:
            return mount
    if path.startswith("/dev/"):
        try:
            rdev = os.stat(path).st_rdev
        except OSError:
            rdev = None
        for mount in mounts:
            if rdev is not None and (mount.major, mount.minor) == (os.major(rdev), os.minor(rdev)):
                return mount
        raise Refused(f"{target} is not mounted; a disk fault targets a mounted filesystem")
    raise Refused(f"{target} is not a mount point or a block device; guest-get-fsinfo lists the mount points")


def device_key(mount: Mount) -> str:
    return f"{mount.major}:{mount.minor}"


def _write_stall(target: str, params: Mapping[str, Any], force: bool, context: Context) -> Spec:
    mount = find_mount(target, context.mounts)
    if mount.fstype not in FREEZABLE:
        raise Refused(f"write-stall freezes the filesystem, and {mount.fstype} on {mount.mountpoint} "
                      "cannot be frozen")
    path = mount.mountpoint
    return Spec(device_key(mount), ({"op": "freeze", "path": path},), ({"op": "thaw", "path": path},), params)


def _disk_full(target: str, params: Mapping[str, Any], force: bool, context: Context) -> Spec:
    mount = find_mount(target, context.mounts)
    if device_key(mount) == context.state_device and not force:
        raise Refused(f"{mount.mountpoint} holds the agent's state directory, where it records its faults; "
                      "pass force to fill it anyway")
    fill = os.path.join(mount.mountpoint, FILL_PREFIX + token_hex(6))
    return Spec(device_key(mount), ({"op": "fill", "path": fill, "free-bytes": params["free-bytes"]},),
                ({"op": "unlink", "path": fill},), params)


Preparer = Callable[[str, Mapping[str, Any], bool, Context], Spec]
PREPARERS: dict[Kind, Preparer] = {
    Kind.WRITE_STALL: _write_stall,
    Kind.DISK_FULL: _disk_full,
}
