"""Real, disposable filesystems for freeze tests: loop-mounted images (ext4, xfs, btrfs) under a tmp dir.

Freezing a filesystem the machine needs blocks every writer on it, the test runner included, so
freeze tests only ever touch filesystems made here. :class:`LoopMounts` undoes everything it did
even when a test fails half-way: it thaws (FITHAW until EINVAL) before unmounting, unmounts
children before parents, detaches the loop devices, and checks nothing is left mounted.

A watchdog thaws everything if the context lives longer than ``watchdog`` seconds, so a freeze
that deadlocks (say, a loop image's host frozen before the image) fails the test instead of
hanging the suite.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from pyqga.agent.freeze.kernel import LinuxKernel
from pyqga.agent.freeze.kernel import thaw_fully as kernel_thaw_fully
from tests.rig.requirements import require_root, require_tool

_KERNEL = LinuxKernel()

# mkfs command and smallest image each filesystem type accepts (xfsprogs 6.1 refuses < 300 MB,
# btrfs-progs 6.2 < 114 MB with its default profiles). Images are sparse: size is nearly free.
MKFS = {
    "ext4": ("mkfs.ext4", "-q", "-F"),
    "xfs": ("mkfs.xfs", "-q", "-f"),
    "btrfs": ("mkfs.btrfs", "-q", "-f"),
}
MIN_SIZE_MB = {"ext4": 16, "xfs": 300, "btrfs": 114}


def thaw_fully(path: str | os.PathLike[str]) -> int:
    """1 if ``path`` was frozen and is thawed now, else 0: the agent's one "FITHAW until
    EINVAL" (:func:`pyqga.agent.freeze.kernel.thaw_fully`).  ``thaw_fully(p) == 0`` is also the
    tests' probe for "p was not frozen".  Never raises: cleanup code must keep going."""
    thawed, _error = kernel_thaw_fully(_KERNEL, os.fspath(path))
    return int(thawed)


def freeze_directly(path: str | os.PathLike[str]) -> None:
    """FIFREEZE without the agent, to set up "someone else froze it" situations."""
    _KERNEL.freeze(os.fspath(path))


# First program in a new mount namespace (see LoopMounts.isolated); `python -I -c`, stdlib only.
# argv: KEEP... -- COMMAND...; detaches (MNT_DETACH, this namespace only) every mount a freeze
# could reach except `/`, the mounts under/holding a KEEP path, then execs COMMAND.
_ISOLATE_SOURCE = r"""
import ctypes, os, re, sys
args = sys.argv[1:]
cut = args.index("--")
keep, command = [k.rstrip("/") or "/" for k in args[:cut]], args[cut + 1:]
def within(path, top):
    return top == "/" or path == top or path.startswith(top + "/")
def unescape(field):
    return os.fsdecode(re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m[1], 8)]), os.fsencode(field)))
doomed = []
with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
    for line in f:
        fields = line.split(" ")
        fstype = fields[fields.index("-", 6) + 1]
        if fields[2].startswith("0:") and fstype != "btrfs":
            continue  # no block device: FIFREEZE/FITHAW do not apply
        point = unescape(fields[4])
        if point == "/" or any(within(point, k) or within(k, point) for k in keep):
            continue
        doomed.append(point)
libc = ctypes.CDLL(None, use_errno=True)
for point in reversed(doomed):  # children first; a failure means it went with its parent
    libc.umount2(os.fsencode(point), 2)
os.execvp(command[0], command)
"""


def require_loop_support() -> None:
    """Skip (or fail in CI) unless we can make loop-mounted ext4 filesystems."""
    require_root()
    for tool in ("losetup", "mkfs.ext4", "mount", "umount"):
        require_tool(tool)


def _run(*argv: str) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


@dataclass(frozen=True)
class LoopFs:
    """One loop-mounted image."""

    image: Path
    device: str
    mountpoint: Path
    fstype: str = "ext4"

    def __str__(self) -> str:
        return str(self.mountpoint)


class LoopMounts:
    """Make loop filesystems, bind mounts and tmpfs mounts; undo all of it on exit.

    Use as a context manager. Mount points may contain spaces, and an image may live on another
    loop filesystem made here (``add("inner", image=outer.mountpoint / "inner.img", ...)``).
    """

    def __init__(self, base: Path, watchdog: float | None = 60.0) -> None:
        self.base = Path(base)
        self.filesystems: list[LoopFs] = []
        self._mounted: list[Path] = []  # every mount made here, in mount order
        self._devices: dict[Path, str] = {}  # loop device of each loop mount (or attached image)
        # Loop devices attached without a mount of their own: (mounts made before, device).
        self._attached: list[tuple[int, str]] = []
        self._images: list[Path] = []
        self._closed = threading.Event()
        self.watchdog_fired = False
        self._watchdog = None
        if watchdog is not None:
            self._watchdog = threading.Thread(
                target=self._watch, args=(watchdog,), name="loopfs-watchdog", daemon=True
            )
            self._watchdog.start()

    # -- building ----------------------------------------------------------------------------

    def add(
        self,
        name: str,
        *,
        image: Path | None = None,
        mountpoint: Path | None = None,
        size_mb: int | None = None,
        fstype: str = "ext4",
    ) -> LoopFs:
        """Create an image (sparse file + mkfs), attach it, mount it.

        ``fstype``: ``ext4`` (default), ``xfs`` or ``btrfs``; ``size_mb`` defaults to the type's
        minimum (:data:`MIN_SIZE_MB`). Callers check the mkfs tool first (``require_tool``).
        """
        if fstype not in MKFS:
            raise ValueError(f"unsupported fstype {fstype!r}, expected one of {sorted(MKFS)}")
        size_mb = MIN_SIZE_MB[fstype] if size_mb is None else size_mb
        if size_mb < MIN_SIZE_MB[fstype]:
            raise ValueError(f"{fstype} needs an image of at least {MIN_SIZE_MB[fstype]} MB, not {size_mb}")
        image = Path(image) if image is not None else self.base / "images" / f"{name}.img"
        mountpoint = Path(mountpoint) if mountpoint is not None else self.base / name
        image.parent.mkdir(parents=True, exist_ok=True)
        mountpoint.mkdir(parents=True, exist_ok=True)
        with open(image, "wb") as f:
            f.truncate(size_mb * 1024 * 1024)
        self._images.append(image)
        _run(*MKFS[fstype], str(image))
        # The same as `mount -o loop`, but we learn the device, so we can detach it ourselves
        # even when the mount fails.
        device = _run("losetup", "--find", "--show", str(image)).strip()
        self._devices[mountpoint] = device
        _run("mount", "-t", fstype, device, str(mountpoint))
        self._mounted.append(mountpoint)
        fs = LoopFs(image=image, device=device, mountpoint=mountpoint, fstype=fstype)
        self.filesystems.append(fs)
        return fs

    def attach(self, backing: str | os.PathLike[str]) -> str:
        """Attach a loop device to ``backing`` (an image file, or another block device for loop
        over loop) and return its path; detached on close, before the mounts made earlier."""
        device = _run("losetup", "--find", "--show", os.fspath(backing)).strip()
        self._attached.append((len(self._mounted), device))
        return device

    def mount_device(self, device: str, name: str, fstype: str = "ext4") -> LoopFs:
        """mkfs ``device`` (a device from :meth:`attach`) and mount it on ``base/name``."""
        mountpoint = self.base / name
        mountpoint.mkdir(parents=True, exist_ok=True)
        _run(*MKFS[fstype], device)
        _run("mount", "-t", fstype, device, str(mountpoint))
        self._mounted.append(mountpoint)
        fs = LoopFs(image=Path(device), device=device, mountpoint=mountpoint, fstype=fstype)
        self.filesystems.append(fs)
        return fs

    def bind(self, source: Path, target: Path) -> Path:
        """Bind-mount ``source`` on ``target`` (a second mount of the same device)."""
        Path(target).mkdir(parents=True, exist_ok=True)
        _run("mount", "--bind", str(source), str(target))
        self._mounted.append(Path(target))
        return Path(target)

    def tmpfs(self, target: Path, size: str = "1m") -> Path:
        """Mount a small tmpfs on ``target`` (a filesystem FIFREEZE does not support)."""
        Path(target).mkdir(parents=True, exist_ok=True)
        # mode 0755, not tmpfs's 1777: the agent refuses a world-writable state directory.
        _run("mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(target))
        self._mounted.append(Path(target))
        return Path(target)

    def glob(self) -> str:
        """An include glob matching every mount point under the base directory, and nothing else."""
        return glob.escape(str(self.base)) + "/*"

    def isolated(self, argv: Sequence[str], keep: Iterable[str | os.PathLike[str]] = ()) -> list[str]:
        """``argv`` wrapped to run in a private mount namespace in which, of the filesystems a
        freeze can reach (block devices, btrfs), only ``/``, the mounts made here and the mounts
        holding a ``keep`` path (the program, its sockets and state) are mounted.

        For agents that take no include filter (qemu-ga): their thaw FITHAWs every mount they
        see, so on the shared machine they would thaw, and count, what a concurrent test froze.
        Detaching happens inside the namespace only (propagation private); a freeze there acts
        on the same superblock as outside. Mounts are copied when the namespace starts: make
        them before starting the program. Needs ``unshare`` (util-linux).
        """
        paths = [str(self.base), *(os.fspath(k) for k in keep)]
        return ["unshare", "--mount", "--propagation", "private", "--",
                sys.executable, "-I", "-c", _ISOLATE_SOURCE, *paths, "--", *argv]

    # -- undoing -----------------------------------------------------------------------------

    def thaw_all(self) -> int:
        """Thaw every mount made here, hosts first; return how many were frozen."""
        return sum(1 for path in list(self._mounted) if thaw_fully(path))

    def close(self) -> None:
        """Thaw, unmount (children first), detach; raise at the end if anything went wrong."""
        if self._closed.is_set():
            return
        self._closed.set()
        problems: list[str] = []
        self.thaw_all()
        # Children first; a loop device is detached right after its unmount, because its image
        # may live on the filesystem unmounted next (which stays busy while it is attached).
        for index in reversed(range(len(self._mounted))):
            # Devices attached after this mount was made may hold a file on it: detach first.
            while self._attached and self._attached[-1][0] > index:
                self._detach(self._attached.pop()[1], problems)
            path = self._mounted[index]
            if not self._umount(path):
                problems.append(f"could not unmount {path}")
            device = self._devices.pop(path, None)
            if device is not None:
                self._detach(device, problems)
        self._mounted.clear()
        while self._attached:
            self._detach(self._attached.pop()[1], problems)
        for device in self._devices.values():  # attached but never mounted
            self._detach(device, problems)
        self._devices.clear()
        for image in reversed(self._images):
            with contextlib.suppress(OSError):  # on an inner filesystem that is gone by now
                image.unlink()
        leftovers = self._mounts_under_base()
        if leftovers:
            problems.append(f"still mounted: {leftovers}")
        if self.watchdog_fired:
            problems.append("the watchdog had to thaw: a freeze stalled (deadlock?)")
        if problems:
            raise AssertionError("loopfs cleanup: " + "; ".join(problems))

    @staticmethod
    def _detach(device: str, problems: list[str]) -> None:
        try:
            _run("losetup", "-d", device)
        except RuntimeError as e:
            if "No such device" not in str(e):
                problems.append(str(e))

    def _umount(self, path: Path) -> bool:
        for _ in range(20):
            proc = subprocess.run(["umount", str(path)], capture_output=True, stdin=subprocess.DEVNULL)
            if proc.returncode == 0 or not os.path.ismount(path):
                return True
            time.sleep(0.1)  # a writer that was just released may still hold a file open
        # Last resort: detach it from the tree so the next test starts clean.
        return subprocess.run(["umount", "-l", str(path)], capture_output=True).returncode == 0

    def _mounts_under_base(self) -> list[str]:
        prefix = str(self.base) + "/"
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            points = [line.split(" ")[4] for line in f]
        decoded = [re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), p) for p in points]
        return [p for p in decoded if p.startswith(prefix)]

    def _watch(self, limit: float) -> None:
        if self._closed.wait(limit):
            return
        self.watchdog_fired = True
        while not self._closed.is_set():  # keep thawing: the stuck code may freeze again
            self.thaw_all()
            self._closed.wait(0.5)

    def __enter__(self) -> LoopMounts:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.close()
        except AssertionError:
            if exc is None:
                raise  # the test passed but left a mess: fail it
            # the test already failed: its error is the one worth reading
