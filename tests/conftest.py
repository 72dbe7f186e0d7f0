"""Suite-wide fixtures.

The thaw guard: freeze tests only touch loop filesystems they made, but a bug (a freeze-all
whose filter is wrong) would freeze ``/`` or the checkout, and then every writer blocks,
pytest included. The guard is a separate process (it must run when this one is stuck in
uninterruptible sleep, and must not need the GIL) that holds fds on those filesystems and
issues FITHAW every 0.2 s; FITHAW on a filesystem that is not frozen is a harmless EINVAL.
It exits when its parent goes away, and logs only to tmpfs or stderr, never to a file that
might be frozen.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.rig.image import GuestImage, ImageBuildError, ensure_image
from tests.rig.libvirt import LibvirtGuest, PrivateLibvirt
from tests.rig.loopfs import LoopMounts, require_loop_support
from tests.rig.qemu_ga import require_qemu_ga
from tests.rig.requirements import require, require_root, require_tool

# Runs with `python -I -c`: self-contained, stdlib only.
_GUARD_SOURCE = r"""
import errno, fcntl, os, sys, time
FITHAW = 0xC0045878
parent = os.getppid()
fds = {}
for path in sys.argv[1:]:
    try:
        fds[path] = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:
        sys.stderr.write(f"pyqga test thaw guard: cannot open {path}: {e.strerror}\n")
try:
    log = os.open("/dev/shm/pyqga-test-thaw-guard.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
except OSError:
    log = 2
sys.stdout.write("ready\n")
sys.stdout.flush()
while os.getppid() == parent:
    for path, fd in fds.items():
        try:
            fcntl.ioctl(fd, FITHAW, 0)
        except OSError as e:
            if e.errno != errno.EINVAL:
                os.write(log, f"{time.time():.3f} FITHAW {path}: {e.strerror}\n".encode())
            continue
        message = f"{time.time():.3f} pyqga test thaw guard: thawed {path}, a test froze it\n"
        os.write(log, message.encode())
        if log != 2:
            os.write(2, message.encode())
    time.sleep(0.2)
"""


def guarded_paths() -> list[str]:
    """``/`` and the folder holding the checkout (where the suite and its tools write)."""
    repo_parent = Path(__file__).resolve().parents[2]
    return list(dict.fromkeys(["/", str(repo_parent)]))


@pytest.fixture(scope="session", autouse=True)
def rootfs_thaw_guard() -> Iterator[subprocess.Popen[str] | None]:
    """Keep the machine's own filesystems thawed for the whole session (root only: FITHAW
    needs CAP_SYS_ADMIN, and without root no test can freeze anything anyway)."""
    if os.geteuid() != 0:
        yield None
        return
    guard = subprocess.Popen(
        [sys.executable, "-I", "-c", _GUARD_SOURCE, *guarded_paths()],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert guard.stdout is not None
        if guard.stdout.readline().strip() != "ready":
            raise RuntimeError("the thaw guard did not start")
        yield guard
    finally:
        guard.terminate()
        try:
            guard.wait(timeout=5)
        except subprocess.TimeoutExpired:
            guard.kill()
            guard.wait()
        if guard.stdout is not None:
            guard.stdout.close()


@pytest.fixture
def loops(tmp_path: Path) -> Iterator[LoopMounts]:
    """Loop-mounted filesystems made for one test and undone after it (root and loop devices
    needed: skipped without them, failed in CI)."""
    require_loop_support()
    with LoopMounts(tmp_path / "mnt") as mounts:
        yield mounts


@pytest.fixture
def qga_loops(tmp_path: Path) -> Iterator[LoopMounts]:
    """Loop filesystems for tests that run Debian's real qemu-ga beside pyqga (in a private
    mount namespace: ``unshare``); skipped without them, failed in CI."""
    require_loop_support()
    require_tool("unshare")
    require_qemu_ga()
    with LoopMounts(tmp_path / "mnt") as mounts:
        yield mounts


@pytest.fixture(scope="session")
def guest_image() -> GuestImage:
    """The test guest (built once, then cached in .cache/vm); needs root and QEMU's tools."""
    require_root()
    for tool in ("qemu-system-x86_64", "qemu-img", "apt-get", "dpkg-deb", "mkfs.ext4", "tar", "debugfs"):
        require_tool(tool)
    try:
        return ensure_image()
    except ImageBuildError as exc:
        require(False, f"cannot build the guest image (network? apt?): {exc}")
        raise


@pytest.fixture(scope="session")
def private_libvirt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateLibvirt]:
    """One private libvirtd for the session (tests/rig/libvirt.py): its first connection
    probes QEMU (~8 s), so the libvirt test modules share it."""
    require_root()
    for tool in ("libvirtd", "virsh", "unshare", "qemu-img"):
        require_tool(tool)
    with PrivateLibvirt(tmp_path_factory.mktemp("libvirt")) as lv:
        yield lv


@pytest.fixture(scope="session")
def libvirt_guest(private_libvirt: PrivateLibvirt, guest_image: GuestImage,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[LibvirtGuest]:
    """The test guest as a domain of ``private_libvirt``, pyqga alone on org.qemu.guest_agent.0,
    booted once (~10 s under TCG) for every libvirt test module.  A module may end by powering it
    off; the next one calls ``ensure_running()``."""
    root_before = _digest(guest_image.root)
    guest = LibvirtGuest.create(private_libvirt, guest_image, tmp_path_factory.mktemp("lv-guest"))
    guest.wait_agent()
    print(f"libvirt: connect {private_libvirt.connect_seconds:.1f} s, "
          f"boot to agent {guest.boot_seconds:.1f} s")
    yield guest
    # The overlay's backing file is the shared cache: libvirt and QEMU must not have written it.
    # (Its content, not its mtime: the harness touches a cached image whenever it hands it out.)
    assert _digest(guest_image.root) == root_before


def _digest(path: Path) -> str:
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha1").hexdigest()
