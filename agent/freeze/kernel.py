"""The kernel as the freeze code sees it: one port, a real implementation, one "thaw fully".

The state machine (:mod:`.machine`) never calls the kernel; its driver (:class:`.driver.Freezer`,
in the agent and in the keeper process) does, through :class:`Kernel`.  Tests put an
in-memory model kernel behind the same port (``tests/rig/model_kernel.py``) or subclass
:class:`LinuxKernel` to make one call fail on a real filesystem.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from pyqga.agent.freeze import order
from pyqga.agent.freeze.ioctls import FsIoctl
from pyqga.agent.freeze.mounts import MOUNTINFO, Mount, block_device_numbers, read_mountinfo

MEMINFO = "/proc/meminfo"
# A filesystem that keeps accepting FITHAW is broken; stop rather than spin forever.
MAX_THAWS_PER_FS = 64
# Below this much dirty page cache the parallel syncfs pass costs more than it saves: each
# FIFREEZE flushes its own filesystem quickly anyway (bench/freeze.py, bench/stall.py).
FLUSH_THRESHOLD = 32 << 20


class Kernel(Protocol):
    """What freezing needs from the kernel; every failure is an OSError with an errno."""

    def freeze(self, path: str) -> None: ...
    def thaw(self, path: str) -> None: ...
    def syncfs(self, path: str) -> None: ...
    def mounts(self) -> list[Mount]: ...
    def block_device(self, source: str) -> tuple[int, int] | None: ...
    def device_of(self, path: str) -> tuple[int, int] | None: ...
    def backing_files(self, mount: Mount) -> Sequence[str]: ...
    def dirty_bytes(self) -> int: ...


class LinuxKernel(FsIoctl):
    """The real kernel: ioctls on mount points, /proc/self/mountinfo, sysfs, /proc/meminfo."""

    def __init__(self, mountinfo_path: str = MOUNTINFO, sysfs: str = order.SYSFS,
                 meminfo: str = MEMINFO) -> None:
        self.mountinfo_path = mountinfo_path
        self.sysfs = sysfs
        self.meminfo = meminfo

    def mounts(self) -> list[Mount]:
        return read_mountinfo(self.mountinfo_path)

    def block_device(self, source: str) -> tuple[int, int] | None:
        return block_device_numbers(source)

    def device_of(self, path: str) -> tuple[int, int] | None:
        """The device of the filesystem ``path`` is on (anonymous 0:N for btrfs), None if gone."""
        try:
            st = os.stat(path)
        except (OSError, ValueError):
            return None
        return (os.major(st.st_dev), os.minor(st.st_dev))

    def backing_files(self, mount: Mount) -> Sequence[str]:
        return order.backing_files(mount, self.sysfs)

    def dirty_bytes(self) -> int:
        """Dirty page cache waiting for writeback, system-wide (``Dirty:`` in /proc/meminfo)."""
        try:
            with open(self.meminfo, "rb") as handle:
                for line in handle:
                    if line.startswith(b"Dirty:"):
                        return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            pass
        return FLUSH_THRESHOLD  # unknown: flush, the safe side for the stall


def strerror(error: OSError) -> str:
    return error.strerror or (os.strerror(error.errno) if error.errno else str(error))


def thaw_fully(kernel: Kernel, path: str) -> tuple[bool, str | None]:
    """FITHAW until the kernel says "not frozen" (EINVAL): (whether any FITHAW succeeded, error).

    The one implementation, used by the agent, the guard and the tests: a filesystem frozen
    twice (by us and by someone else before a kernel that nests) needs more than one FITHAW,
    and "at least one succeeded" is qemu-ga's rule for counting it as thawed."""
    thawed = False
    for _ in range(MAX_THAWS_PER_FS):
        try:
            kernel.thaw(path)
        except OSError as e:
            if e.errno == errno.EINVAL:
                return thawed, None
            return thawed, strerror(e)
        except Exception as e:
            return thawed, f"{type(e).__name__}: {e}"
        thawed = True
    return thawed, f"still frozen after {MAX_THAWS_PER_FS} thaws"


def flush(kernel: Kernel, paths: Iterable[str], workers: int = 8) -> dict[str, OSError]:
    """syncfs every path in parallel and return the failures by path.

    Flushing before the first FIFREEZE shortens the window in which the filesystems frozen
    first block writers while later ones are still writing back (measured: 0.2-0.3 s down to
    ~0.1 s over four filesystems). Failures are returned, not raised: the FIFREEZE that follows
    flushes anyway, so a failed flush only costs time.
    """
    targets = list(paths)
    errors: dict[str, OSError] = {}
    if not targets:
        return errors

    def one(path: str) -> None:
        try:
            kernel.syncfs(path)
        except OSError as e:
            errors[path] = e

    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(targets)))) as pool:
        list(pool.map(one, targets))
    return errors
