"""Device-mapper through its ioctls on ``/dev/mapper/control``, as libdevmapper issues them.

No ``dmsetup`` process: the keeper undoes faults with these calls while a device (perhaps the
root one) is stalled, and an exec would read the binary from that device.  Only what the fault
kinds need: read a table, load one, suspend and resume, list the targets, create and remove a
device (for the linear layer under a filesystem).

Worst case of what is read back: the kernel's reply, at most :data:`MAX_BUFFER` bytes; parsing
is one pass over it.  Layout: ``struct dm_ioctl`` (312 bytes, <linux/dm-ioctl.h>) followed by
its data at ``data_start``.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from typing import NamedTuple

from pyqga.agent.errors import AgentFailure

CONTROL = "/dev/mapper/control"
VERSION = (4, 0, 0)
NAME_LEN, UUID_LEN = 128, 129
# u32 version[3], data_size, data_start, target_count; s32 open_count; u32 flags, event_nr,
# padding; u64 dev; char name[128], uuid[129], data[7]
_HEADER = struct.Struct("=3I I I I i I I I Q 128s 129s 7s")
assert _HEADER.size == 312
# u64 sector_start, length; s32 status; u32 next; char target_type[16]
_SPEC = struct.Struct("=Q Q i I 16s")
_VERSIONS = struct.Struct("=I 3I")   # struct dm_target_versions: u32 next, version[3]; name
MAX_BUFFER = 1 << 20

_IOWR = (3 << 30) | (_HEADER.size << 16) | (0xFD << 8)
DM_VERSION, DM_DEV_CREATE, DM_DEV_REMOVE, DM_DEV_SUSPEND, DM_DEV_STATUS = (
    _IOWR | 0, _IOWR | 3, _IOWR | 4, _IOWR | 6, _IOWR | 7)
DM_TABLE_LOAD, DM_TABLE_CLEAR, DM_TABLE_STATUS, DM_LIST_VERSIONS = (
    _IOWR | 9, _IOWR | 10, _IOWR | 12, _IOWR | 13)

SUSPEND_FLAG = 1 << 1
STATUS_TABLE_FLAG = 1 << 4
BUFFER_FULL_FLAG = 1 << 8
SKIP_LOCKFS_FLAG = 1 << 10
NOFLUSH_FLAG = 1 << 11


class TableLine(NamedTuple):
    """One target of a table, as ``dmsetup table`` prints it: START LENGTH TYPE PARAMS."""

    start: int
    length: int
    type: str
    params: str

    def text(self) -> str:
        """The line as ``dmsetup table`` prints it, byte for byte: the kernel's parameter string
        unchanged, so an empty one (``error``) or one a target ends with a space (``flakey``)
        leaves a trailing space."""
        return f"{self.start} {self.length} {self.type} {self.params}"


class DeviceInfo(NamedTuple):
    name: str
    device: tuple[int, int]
    suspended: bool
    open_count: int
    target_count: int


class DmError(AgentFailure, OSError):
    """A device-mapper call failed; the message names the call and the device."""


def _call(request: int, name: str = "", flags: int = 0, payload: bytes = b"", target_count: int = 0,
          size: int = 16384) -> tuple[tuple[object, ...], bytes]:
    """One ioctl; returns the header fields and the data the kernel wrote back.  Retries with a
    larger buffer while the kernel says it was too small (up to :data:`MAX_BUFFER`)."""
    if len(name.encode()) >= NAME_LEN:
        raise DmError(errno.ENAMETOOLONG, f"device-mapper name too long: {name[:40]!r}")
    while True:
        total = max(size, _HEADER.size + len(payload))
        header = _HEADER.pack(*VERSION, total, _HEADER.size, target_count, 0, flags, 0, 0, 0,
                              name.encode(), b"", b"")
        buffer = bytearray(header + payload + bytes(total - _HEADER.size - len(payload)))
        fd = os.open(CONTROL, os.O_RDWR | os.O_CLOEXEC)
        try:
            fcntl.ioctl(fd, request, buffer, True)
        except OSError as e:
            raise DmError(e.errno, f"device-mapper {_NAMES.get(request, hex(request))} "
                                   f"{name or ''}: {os.strerror(e.errno or 0)}".replace("  ", " ")) from None
        finally:
            os.close(fd)
        fields = _HEADER.unpack_from(buffer)
        out_flags, data_start, data_size = fields[7], fields[4], fields[3]
        if out_flags & BUFFER_FULL_FLAG and size < MAX_BUFFER:
            size *= 4
            continue
        return fields, bytes(buffer[data_start:min(data_size, len(buffer))])


_NAMES = {DM_VERSION: "version", DM_DEV_CREATE: "create", DM_DEV_REMOVE: "remove",
          DM_DEV_SUSPEND: "suspend/resume", DM_DEV_STATUS: "status", DM_TABLE_LOAD: "load",
          DM_TABLE_CLEAR: "clear", DM_TABLE_STATUS: "table", DM_LIST_VERSIONS: "targets"}


def available() -> bool:
    """The control node exists and answers (dm-mod loaded)."""
    try:
        _call(DM_VERSION)
    except OSError:
        return False
    return True


def info(name: str) -> DeviceInfo:
    fields, _ = _call(DM_DEV_STATUS, name)
    dev = int(fields[10])   # type: ignore[call-overload]  # the kernel's huge_encode_dev
    major, minor = (dev >> 8) & 0xFFF, (dev & 0xFF) | ((dev >> 12) & 0xFFF00)
    return DeviceInfo(name, (major, minor), bool(int(fields[7]) & SUSPEND_FLAG),  # type: ignore[call-overload]
                      int(fields[6]), int(fields[5]))  # type: ignore[call-overload]


def table(name: str) -> list[TableLine]:
    """The live table, exactly as the kernel reports it (what ``dmsetup table`` prints)."""
    fields, data = _call(DM_TABLE_STATUS, name, STATUS_TABLE_FLAG)
    count = int(fields[5])   # type: ignore[call-overload]
    lines, offset = [], 0
    for _ in range(count):
        start, length, _status, following, kind = _SPEC.unpack_from(data, offset)
        text = data[offset + _SPEC.size:].split(b"\0", 1)[0].decode()
        lines.append(TableLine(start, length, kind.rstrip(b"\0").decode(), text))
        offset = following   # on output, from the start of the first spec
    return lines


def _table_payload(lines: list[TableLine]) -> bytes:
    out = bytearray()
    for line in lines:
        params = line.params.encode() + b"\0"
        params += bytes(-(_SPEC.size + len(params)) % 8)   # each spec 8-byte aligned
        out += _SPEC.pack(line.start, line.length, 0, _SPEC.size + len(params), line.type.encode())
        out += params
    return bytes(out)


def load(name: str, lines: list[TableLine]) -> None:
    """Load ``lines`` as the inactive table (it takes effect at the next resume)."""
    _call(DM_TABLE_LOAD, name, 0, _table_payload(lines), len(lines))


def suspend(name: str, flush: bool = True, lockfs: bool = False) -> None:
    """Suspend: new I/O waits.  ``flush=False, lockfs=False`` is the io-stall (no fs freeze,
    in-flight I/O not flushed)."""
    flags = SUSPEND_FLAG | (0 if lockfs else SKIP_LOCKFS_FLAG) | (0 if flush else NOFLUSH_FLAG)
    _call(DM_DEV_SUSPEND, name, flags)


def resume(name: str) -> None:
    """Resume (swapping in an inactive table, if one was loaded); a no-op on an active device."""
    _call(DM_DEV_SUSPEND, name, 0)


def swap(name: str, lines: list[TableLine]) -> None:
    """Make ``lines`` the live table: load, suspend (flushing, without freezing the
    filesystem), resume."""
    load(name, lines)
    suspend(name, flush=True, lockfs=False)
    resume(name)


def create(name: str, lines: list[TableLine]) -> DeviceInfo:
    """A new device with ``lines`` live."""
    _call(DM_DEV_CREATE, name)
    try:
        load(name, lines)
        resume(name)
    except OSError:
        remove(name)
        raise
    return info(name)


def create_inactive(name: str, lines: list[TableLine]) -> None:
    """A new device with ``lines`` loaded but never resumed: no I/O reaches it, and the targets
    have checked their arguments (a probe of what the kernel accepts).  The caller removes it."""
    _call(DM_DEV_CREATE, name)
    load(name, lines)


def remove(name: str) -> None:
    _call(DM_DEV_REMOVE, name)


def targets() -> dict[str, tuple[int, int, int]]:
    """The targets the kernel has loaded now, by name (a target's module loads on first use)."""
    _, data = _call(DM_LIST_VERSIONS)
    out, offset = {}, 0
    while offset + _VERSIONS.size <= len(data):
        following, v1, v2, v3 = _VERSIONS.unpack_from(data, offset)
        name = data[offset + _VERSIONS.size:].split(b"\0", 1)[0].decode()
        out[name] = (v1, v2, v3)
        if not following:
            break
        offset += following
    return out
