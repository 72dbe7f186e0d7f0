"""The device-mapper kinds: each swaps the table of the dm device under a mount (or suspends it),
and its undo puts back the exact table it found.

A target must be a mount on a dm device (an LVM volume is one; ``docs/faults.md``, "A dm layer",
shows how to put a linear layer under a plain disk's filesystem).  The table read from the kernel
before the fault is the undo step, so revert restores it byte for byte.  Only tables made of
``linear`` segments are faulted: each segment becomes the fault's target over the same device and
offset, so an LVM volume of several segments works; anything else (a fault already in place, a
striped or crypt table) is refused.

The new tables are built by pure functions (:func:`flakey_table`, :func:`delay_table`,
:func:`error_extents_table`) from the live table and the parameters.  What the kernel targets do,
measured on Debian 12's 6.1 cloud kernel (``tests/vm/faults/test_block.py``):

- dm-flakey (1.5.0) knows ``drop_writes``, ``error_writes`` and ``corrupt_bio_byte``, not
  ``error_reads`` (added in 2023): without features a down interval fails reads and writes,
  ``error_writes`` fails writes only, and failing reads only is impossible (refused).
  ``corrupt_bio_byte`` on writes changes the written byte; on reads it is accepted and does
  nothing, so read corruption is refused where ``error_reads`` (the rework that came with the
  fixed read path) is missing.
- dm-delay takes three delay classes (read, write, flush: 9 arguments).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import struct
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from pyqga.agent.commands.kernel_files import read_optional
from pyqga.agent.faults import dm
from pyqga.agent.faults.kinds import Context, ParamSpec, Preparer, Spec, device_key, find_mount
from pyqga.agent.faults.machine import Refused
from pyqga.agent.faults.recipes import MAX_TABLE_LINES, table_step
from pyqga.agent.faults.vocabulary import Kind

SYS_BLOCK = "/sys/dev/block"
SYS_MODULE = "/sys/module"
MODULES = "/lib/modules"
MODPROBE = "/proc/sys/kernel/modprobe"
SECTOR = 512
MAX_INTERVAL = 7 * 24 * 3600     # flakey's up and down intervals, seconds
MAX_DELAY_MS = 60_000
ALWAYS_DOWN = (0, 1)             # flakey up 0 s, down 1 s: every I/O is in a down interval
PROBE_NAME = "pyqga-probe-"

# The dm target each kind loads (io-stall loads none; ``error`` is part of dm-mod).
TARGET = {Kind.IO_ERROR: "flakey", Kind.CORRUPT: "flakey", Kind.DROP_WRITES: "flakey",
          Kind.IO_DELAY: "delay", Kind.BAD_EXTENTS: "error"}


def dm_name(major: int, minor: int) -> str | None:
    """The dm name of a block device, or None when it is not a dm device."""
    return (read_optional(f"{SYS_BLOCK}/{major}:{minor}/dm/name") or "").strip() or None


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


# --- tables: pure functions of the live table and the parameters ------------------------------

class Segment(NamedTuple):
    """A ``linear`` line taken apart: sectors [start, start + length) of the dm device are
    sectors [offset, offset + length) of ``device`` (MAJOR:MINOR or a path)."""

    start: int
    length: int
    device: str
    offset: int


def linear_segments(lines: Iterable[dm.TableLine], name: str, kind: Kind) -> list[Segment]:
    """The table as linear segments; :class:`Refused` when any line is not ``linear`` (a fault
    already in place, a striped, crypt or thin volume)."""
    out = []
    for line in lines:
        words = line.params.split()
        if line.type != "linear" or len(words) != 2 or not words[1].isdigit():
            raise Refused(f"{kind.value} rewrites a table of linear segments, and {name} has a "
                          f"{line.type} segment ({line.text().strip()[:80]}); revert the fault or change the "
                          "layer under the filesystem to dm-linear")
        out.append(Segment(line.start, line.length, words[0], int(words[1])))
    if not out:
        raise Refused(f"{name} has no table loaded")
    return out


def flakey_features(io: str = "read-write", drop_writes: bool = False,
                    corrupt: tuple[int, str, int] | None = None) -> str:
    """dm-flakey's feature arguments (count first).  ``io``: which I/O fails in a down interval
    (``read-write``: no feature; ``write``: error_writes; ``read``: error_reads, newer kernels).
    ``corrupt``: (Nth byte of each bio, 1-based; ``r`` or ``w``; value)."""
    words: list[str] = []
    if drop_writes:
        words.append("drop_writes")
    elif io == "write":
        words.append("error_writes")
    elif io == "read":
        words.append("error_reads")
    if corrupt is not None:
        byte, direction, value = corrupt
        words += ["corrupt_bio_byte", str(byte), direction, str(value), "0"]
    return " ".join([str(len(words)), *words])


def flakey_table(lines: Iterable[dm.TableLine], name: str, kind: Kind, features: str,
                 up: int, down: int) -> list[dm.TableLine]:
    """Every linear segment as a dm-flakey over the same device and offset."""
    return [dm.TableLine(s.start, s.length, "flakey", f"{s.device} {s.offset} {up} {down} {features}")
            for s in linear_segments(lines, name, kind)]


def delay_table(lines: Iterable[dm.TableLine], name: str, read_ms: int, write_ms: int,
                flush_ms: int) -> list[dm.TableLine]:
    """Every linear segment as a dm-delay with a read, a write and a flush class."""
    out = []
    for s in linear_segments(lines, name, Kind.IO_DELAY):
        where = f"{s.device} {s.offset}"
        out.append(dm.TableLine(s.start, s.length, "delay",
                                f"{where} {read_ms} {where} {write_ms} {where} {flush_ms}"))
    return out


def merge_ranges(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, disjoint (start, end) sector ranges covering ``ranges`` (adjacent ones joined)."""
    out: list[tuple[int, int]] = []
    for start, end in sorted(r for r in ranges if r[1] > r[0]):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def error_extents_table(lines: Iterable[dm.TableLine], name: str,
                        bad: Iterable[tuple[int, int]]) -> list[dm.TableLine]:
    """The table with the sectors in ``bad`` ((start, end) on the dm device) mapped to the
    ``error`` target; every other sector stays linear at its old place.  :class:`Refused` when
    a bad range lies outside the device or the table would exceed the kernel's line limit."""
    segments = linear_segments(lines, name, Kind.BAD_EXTENTS)
    bad = merge_ranges(bad)
    size = segments[-1].start + segments[-1].length
    if bad and (bad[0][0] < 0 or bad[-1][1] > size):
        raise Refused(f"the file's extents reach past the end of {name} ({size} sectors)")
    out: list[dm.TableLine] = []

    def linear(start: int, end: int, seg: Segment) -> None:
        if end > start:
            where = f"{seg.device} {seg.offset + start - seg.start}"
            out.append(dm.TableLine(start, end - start, "linear", where))

    for seg in segments:
        cursor, end = seg.start, seg.start + seg.length
        for bad_start, bad_end in bad:
            if bad_end <= cursor or bad_start >= end:
                continue
            linear(cursor, max(cursor, bad_start), seg)
            error_start, error_end = max(cursor, bad_start), min(end, bad_end)
            out.append(dm.TableLine(error_start, error_end - error_start, "error", ""))
            cursor = error_end
        linear(cursor, end, seg)
    if len(out) > MAX_TABLE_LINES:
        raise Refused(f"the file has too many extents: the table would have {len(out)} lines "
                      f"(at most {MAX_TABLE_LINES})")
    return out


# --- FIEMAP ------------------------------------------------------------------------------------

FS_IOC_FIEMAP = 0xC020660B
FIEMAP_FLAG_SYNC = 0x1
FIEMAP_EXTENT_LAST = 0x1
# unknown location, delayed allocation, encoded, not block-aligned, inline in metadata, packed
# with other files' tails: no sector range of the device holds the file's bytes alone
FIEMAP_UNMAPPABLE = 0x2 | 0x4 | 0x8 | 0x100 | 0x200 | 0x400
_FIEMAP = struct.Struct("=QQIIII")          # fm_start, fm_length, flags, mapped, count, reserved
_EXTENT = struct.Struct("=QQQ2QI3I")        # logical, physical, length, reserved64[2], flags, reserved[3]
FIEMAP_BATCH = 256


class Extent(NamedTuple):
    logical: int
    physical: int
    length: int
    flags: int


def fiemap(path: str) -> list[Extent]:
    """The file's extents in bytes on its filesystem's device, after syncing it (FIEMAP_FLAG_SYNC:
    delayed allocation gets its blocks first)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        out: list[Extent] = []
        start = 0
        while True:
            header = _FIEMAP.pack(start, (1 << 64) - 1 - start, FIEMAP_FLAG_SYNC, 0, FIEMAP_BATCH, 0)
            buffer = bytearray(header + bytes(_EXTENT.size * FIEMAP_BATCH))
            fcntl.ioctl(fd, FS_IOC_FIEMAP, buffer, True)
            mapped = _FIEMAP.unpack_from(buffer)[3]
            for i in range(mapped):
                fields = _EXTENT.unpack_from(buffer, _FIEMAP.size + i * _EXTENT.size)
                logical, physical, length, flags = fields[0], fields[1], fields[2], fields[5]
                out.append(Extent(logical, physical, length, flags))
            if not mapped or out[-1].flags & FIEMAP_EXTENT_LAST:
                return out
            if len(out) > MAX_TABLE_LINES:
                raise Refused(f"{path} has more than {MAX_TABLE_LINES} extents")
            start = out[-1].logical + out[-1].length
    finally:
        os.close(fd)


def extent_sectors(path: str, extents: Iterable[Extent]) -> list[tuple[int, int]]:
    """(start, end) sector ranges of the extents; :class:`Refused` for an extent with no place of
    its own on the device (inline, encoded, unknown)."""
    out = []
    for extent in extents:
        if extent.flags & FIEMAP_UNMAPPABLE:
            raise Refused(f"{path} has an extent that is not at a plain place on the device "
                          f"(FIEMAP flags {extent.flags:#x}: inline, encoded or not yet allocated)")
        out.append((extent.physical // SECTOR, -(-(extent.physical + extent.length) // SECTOR)))
    return out


# --- the preparers -----------------------------------------------------------------------------

def _swap(key: str, name: str, original: list[dm.TableLine], new: list[dm.TableLine],
          params: Mapping[str, Any]) -> Spec:
    return Spec(key, (table_step(name, new),), (table_step(name, original),), params)


def _intervals(params: Mapping[str, Any]) -> tuple[int, int]:
    up, down = params["up-seconds"], params["down-seconds"]
    if up + down == 0:
        raise Refused("up-seconds and down-seconds cannot both be 0")
    return up, down


def _io_stall(target: str, params: Mapping[str, Any], force: bool, context: Context) -> Spec:
    key, name, _ = dm_target(target, context, Kind.IO_STALL, force)
    return Spec(key, ({"op": "dm-suspend", "name": name},), ({"op": "dm-resume", "name": name},), params)


def _io_error(target: str, params: Mapping[str, Any], force: bool, context: Context) -> Spec:
    key, name, table = dm_target(target, context, Kind.IO_ERROR, force)
    io = params["io"]
    if io == "read" and not flakey_accepts(table, "error_reads"):
        raise Refused("io-error on reads only needs dm-flakey's error_reads (newer kernels), which this "
                      "kernel lacks; use io read-write (reads and writes fail) or write")
    new = flakey_table(table, name, Kind.IO_ERROR, flakey_features(io), *_intervals(params))
    return _swap(key, name, table, new, params)


def _corrupt(target: str, params: Mapping[str, Any], force: bool, context: Context) -> Spec:
    key, name, table = dm_target(target, context, Kind.CORRUPT, force)
    direction = params["direction"]
    if direction == "read" and not flakey_accepts(table, "error_reads"):
        raise Refused("this kernel's dm-flakey accepts corrupt_bio_byte on reads but leaves the data "
                      "unchanged (fixed in newer kernels, with error_reads); corrupt writes instead")
    features = flakey_features(corrupt=(params["byte"], direction[0], params["value"]))
    new = flakey_table(table, name, Kind.CORRUPT, features, *_intervals(params))
    return _swap(key, name, table, new, params)


def _drop_writes(target: str, params: Mapping[str, Any], force: bool, context: Context) -> Spec:
    key, name, table = dm_target(target, context, Kind.DROP_WRITES, force)
    new = flakey_table(table, name, Kind.DROP_WRITES, flakey_features(drop_writes=True), *ALWAYS_DOWN)
    return _swap(key, name, table, new, params)


def _io_delay(target: str, params: Mapping[str, Any], force: bool, context: Context) -> Spec:
    key, name, table = dm_target(target, context, Kind.IO_DELAY, force)
    if not any(params[p] for p in ("read-ms", "write-ms", "flush-ms")):
        raise Refused("io-delay needs a delay: read-ms, write-ms or flush-ms above 0")
    new = delay_table(table, name, params["read-ms"], params["write-ms"], params["flush-ms"])
    return _swap(key, name, table, new, params)


def _bad_extents(target: str, params: Mapping[str, Any], force: bool, context: Context) -> Spec:
    key, name, table = dm_target(target, context, Kind.BAD_EXTENTS, force)
    mount = find_mount(target, context.mounts)
    path = params.get("path")
    if path is None:   # asked only whether the target fits (guest-fault-capabilities)
        linear_segments(table, name, Kind.BAD_EXTENTS)
        return _swap(key, name, table, table, params)
    if not isinstance(path, str) or not path.startswith("/"):
        raise Refused(f"bad-extents: path must be an absolute path, not {str(path)[:80]!r}")
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError as e:
        raise Refused(f"bad-extents: cannot stat {path}: {e.strerror}") from None
    if (os.major(st.st_dev), os.minor(st.st_dev)) != (mount.major, mount.minor):
        raise Refused(f"bad-extents: {path} is not on {mount.mountpoint} (the target)")
    if not (st.st_mode & 0o170000) == 0o100000:
        raise Refused(f"bad-extents: {path} is not a regular file")
    try:
        extents = fiemap(path)
    except OSError as e:
        reason = "the filesystem has no FIEMAP" if e.errno in (errno.ENOTTY, errno.EOPNOTSUPP) else e.strerror
        raise Refused(f"bad-extents: cannot map {path}'s blocks: {reason}") from None
    bad = extent_sectors(path, extents)
    if not bad:
        raise Refused(f"bad-extents: {path} has no blocks on the device (empty, or all holes)")
    return _swap(key, name, table, error_extents_table(table, name, bad), {**params, "path": path})


# --- what the kernel has -----------------------------------------------------------------------

_ACCEPTS: dict[tuple[str, str], bool] = {}


def flakey_accepts(table: list[dm.TableLine], feature: str) -> bool:
    """Whether this kernel's dm-flakey takes ``feature``: a table is loaded into a new device that
    is never resumed (the target checks its arguments at load), then the device is removed.
    Cached per feature and kernel; False when it cannot tell."""
    release = os.uname().release
    if (release, feature) in _ACCEPTS:
        return _ACCEPTS[(release, feature)]
    segments = linear_segments(table, "the device", Kind.IO_ERROR)
    probe = f"{PROBE_NAME}{os.getpid()}"
    line = dm.TableLine(0, 1, "flakey", f"{segments[0].device} {segments[0].offset} 0 1 1 {feature}")
    try:
        dm.create_inactive(probe, [line])
    except OSError:
        result = False
    else:
        result = True
    finally:
        with contextlib.suppress(OSError):
            dm.remove(probe)
    _ACCEPTS[(release, feature)] = result
    return result


def _module_file(module: str, release: str, tree: str = "kernel/drivers/md") -> str | None:
    """``builtin`` when the kernel has ``module`` built in, ``module`` when its modules tree has
    it under ``tree`` (the kernel loads it on first use), else None."""
    base = f"{MODULES}/{release}"
    names = {module.replace("_", "-") + ".ko", module.replace("-", "_") + ".ko"}
    try:
        with open(f"{base}/modules.builtin") as f:
            if any(line.rstrip().rsplit("/", 1)[-1] in names for line in f):
                return "builtin"
    except OSError:
        pass
    for _dirpath, _dirs, files in os.walk(f"{base}/{tree}"):
        if any(f.split(".ko")[0] + ".ko" in names for f in files):
            return "module"
    return None


def module_missing(module: str, tree: str, release: str | None = None, what: str = "") -> str | None:
    """Why the kernel cannot have ``module`` (e.g. ``sch_netem``, under ``tree`` in its modules
    folder) now, or None: loaded, built in, or a module the kernel loads itself on first use
    (through its modprobe helper).  ``what`` names it in the reason (default: the module)."""
    if os.path.isdir(f"{SYS_MODULE}/{module.replace('-', '_')}"):
        return None
    release = release or os.uname().release
    what = what or module
    where = _module_file(module, release, tree)
    if where is None:
        return (f"this kernel ({release}) has no {what}: not loaded, not built in, "
                f"not in {MODULES}/{release}")
    if where == "builtin":
        return None
    try:
        with open(MODPROBE) as f:
            helper = f.read().strip()
    except OSError:
        helper = ""
    if not helper or not os.path.exists(helper):
        return (f"{module} is in {MODULES}/{release} but the kernel's module loader "
                f"({helper or 'none'}) is missing: load it with modprobe {module}")
    return None


def target_missing(target: str, release: str | None = None) -> str | None:
    """Why the kernel cannot load the dm ``target`` now, or None: loaded, built in, or a module
    the kernel loads itself when a table names it (through its modprobe helper)."""
    if target == "error":
        return None   # part of dm-mod
    try:
        if target in dm.targets():
            return None
    except OSError:
        pass
    return module_missing(f"dm-{target}", "kernel/drivers/md", release, f"dm-{target} target")


def unavailable(kind: Kind) -> str | None:
    """Why ``kind`` cannot run in this guest at all, or None."""
    if not os.path.exists(dm.CONTROL):
        return "no device-mapper: load dm-mod (modprobe dm-mod)"
    target = TARGET.get(kind)
    return None if target is None else target_missing(target)


_INTERVALS = (
    ParamSpec("up-seconds", int, 0, "seconds the device works at the start of each cycle (dm-flakey's "
              "up interval); 0: always faulty", minimum=0, maximum=MAX_INTERVAL),
    ParamSpec("down-seconds", int, 1, "seconds the fault holds in each cycle (dm-flakey's down "
              "interval)", minimum=0, maximum=MAX_INTERVAL),
)
PARAMS: dict[Kind, tuple[ParamSpec, ...]] = {
    Kind.IO_STALL: (),
    Kind.IO_ERROR: (
        ParamSpec("io", str, "read-write", "which I/O fails with EIO in a down interval: read-write, "
                  "write, or read (needs a newer dm-flakey)", choices=("read-write", "write", "read")),
        *_INTERVALS,
    ),
    Kind.IO_DELAY: (
        ParamSpec("read-ms", int, 100, "milliseconds added to every read", minimum=0, maximum=MAX_DELAY_MS),
        ParamSpec("write-ms", int, 100, "milliseconds added to every write", minimum=0, maximum=MAX_DELAY_MS),
        ParamSpec("flush-ms", int, 100, "milliseconds added to every flush (fsync's cache flush)",
                  minimum=0, maximum=MAX_DELAY_MS),
    ),
    Kind.CORRUPT: (
        ParamSpec("direction", str, "write", "corrupt what is written (write) or what is read (read, "
                  "needs a newer dm-flakey)", choices=("write", "read")),
        ParamSpec("byte", int, 1, "which byte of each I/O request is overwritten (1: the first)",
                  minimum=1, maximum=(1 << 31) - 1),
        ParamSpec("value", int, 0, "the value written into that byte", minimum=0, maximum=255),
        *_INTERVALS,
    ),
    Kind.DROP_WRITES: (),
    Kind.BAD_EXTENTS: (
        ParamSpec("path", str, None, "a file on the target; reads and writes of its blocks fail with EIO "
                  "(pages already cached still read)"),
    ),
}
PREPARERS: dict[Kind, Preparer] = {
    Kind.IO_STALL: _io_stall,
    Kind.IO_ERROR: _io_error,
    Kind.IO_DELAY: _io_delay,
    Kind.CORRUPT: _corrupt,
    Kind.DROP_WRITES: _drop_writes,
    Kind.BAD_EXTENTS: _bad_extents,
}
