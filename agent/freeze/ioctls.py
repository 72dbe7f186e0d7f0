"""The kernel calls a freeze needs, behind one small seam.

:class:`FsIoctl` is the real implementation and the default everywhere. Tests subclass it to
make one call fail (say EIO on the second mount) while every other call still reaches the
kernel, which is how rollback is tested on real filesystems.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import struct
from typing import Any

FIFREEZE = 0xC0045877  # _IOWR('X', 119, int)
FITHAW = 0xC0045878  # _IOWR('X', 120, int)
FITRIM = 0xC0185879  # _IOWR('X', 121, struct fstrim_range)

# struct fstrim_range { __u64 start; __u64 len; __u64 minlen; }
_FSTRIM_RANGE = struct.Struct("=QQQ")
_U64_MAX = 2**64 - 1

# The mount point itself, never a file under it: a directory open touches nothing on disk.
_OPEN_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOCTTY


def open_mountpoint(path: str) -> int:
    """An fd on the mount point, suitable for the FI* ioctls and syncfs."""
    return os.open(path, _OPEN_FLAGS)


def _load_libc_syncfs() -> Any:
    """libc's syncfs(2): Python's os module has sync() but no syncfs()."""
    try:
        func = ctypes.CDLL(None, use_errno=True).syncfs  # the libc this process has
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int]
    func.restype = ctypes.c_int
    return func


_LIBC_SYNCFS = _load_libc_syncfs()


def syncfs(fd: int) -> None:
    """Flush one filesystem's dirty data and metadata, without freezing it."""
    native = getattr(os, "syncfs", None)  # in case a future Python grows it
    if native is not None:
        native(fd)
        return
    if _LIBC_SYNCFS is None:
        raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS), "syncfs")
    if _LIBC_SYNCFS(fd) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


class FsIoctl:
    """Freeze, thaw and flush one filesystem by its mount point; every failure is an OSError.

    Each call opens the mount point afresh so a stale fd can never point at a filesystem that
    was unmounted and replaced meanwhile.
    """

    def freeze(self, path: str) -> None:
        self._ioctl(path, FIFREEZE)

    def thaw(self, path: str) -> None:
        self._ioctl(path, FITHAW)

    def syncfs(self, path: str) -> None:
        fd = open_mountpoint(path)
        try:
            syncfs(fd)
        finally:
            os.close(fd)

    @staticmethod
    def _ioctl(path: str, request: int) -> None:
        fd = open_mountpoint(path)
        try:
            fcntl.ioctl(fd, request, 0)
        except OSError as e:
            e.filename = path
            raise
        finally:
            os.close(fd)


def fitrim(fd: int, minimum: int = 0) -> tuple[int, int]:
    """Discard the unused blocks of the filesystem ``fd`` (from :func:`open_mountpoint`) is on.

    Returns ``(trimmed_bytes, minimum_used)``: the kernel writes back how much it trimmed into
    ``len`` and may raise ``minlen`` to the device's discard granularity.
    """
    buf = bytearray(_FSTRIM_RANGE.pack(0, _U64_MAX, minimum))
    fcntl.ioctl(fd, FITRIM, buf, True)
    _start, length, minlen = _FSTRIM_RANGE.unpack(buf)
    return length, minlen
