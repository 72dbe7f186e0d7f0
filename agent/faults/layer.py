"""Put a dm-linear layer under a filesystem before it is mounted, so the block fault kinds can swap
its table (``docs/faults.md``, "A dm layer")::

    python3 -m pyqga.agent.faults.layer /dev/vdb data     # -> /dev/mapper/data, same bytes
    mount /dev/mapper/data /data
    python3 -m pyqga.agent.faults.layer --remove data     # after umount

The layer maps every sector of the device to itself (``0 SIZE linear MAJOR:MINOR 0``), so the
filesystem, its label and UUID are unchanged.  Without udev, the ``/dev/mapper/NAME`` node is made
here (as libdevmapper does with ``DM_DISABLE_UDEV``); with udev, udev makes it.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import stat
import struct
import sys
import time

from pyqga.agent.errors import AgentFailure
from pyqga.agent.faults import dm

MAPPER = "/dev/mapper"
BLKGETSIZE64 = 0x80081272
UDEV_WAIT_S = 2.0


class LayerError(AgentFailure):
    """The layer cannot be made or removed; the message says why and what to do."""


def device_sectors(path: str) -> tuple[int, int, int]:
    """(major, minor, size in 512-byte sectors) of a block device."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise LayerError(f"{path}: {e.strerror}") from None
    if not stat.S_ISBLK(st.st_mode):
        raise LayerError(f"{path} is not a block device")
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = struct.unpack("=Q", fcntl.ioctl(fd, BLKGETSIZE64, bytes(8)))[0]
    finally:
        os.close(fd)
    if size < 512:
        raise LayerError(f"{path} is empty")
    return os.major(st.st_rdev), os.minor(st.st_rdev), size // 512


def node(name: str) -> str:
    return f"{MAPPER}/{name}"


def create(device: str, name: str) -> str:
    """Create ``/dev/mapper/NAME``, linear over all of ``device``; returns the node's path."""
    if not name or "/" in name or name in (".", ".."):
        raise LayerError(f"not a device-mapper name: {name!r}")
    major, minor, sectors = device_sectors(device)
    try:
        info = dm.create(name, [dm.TableLine(0, sectors, "linear", f"{major}:{minor} 0")])
    except OSError as e:
        hint = {17: "a dm device of that name exists (remove it with --remove)",
                16: f"{device} is in use (mounted, or held by another layer): unmount it first"}
        raise LayerError(f"cannot create {name} over {device}: {hint.get(e.errno or 0, e)}") from None
    _make_node(name, info.device)
    return node(name)


def _make_node(name: str, device: tuple[int, int]) -> None:
    """The /dev/mapper node: udev's, if it makes one in time, else ours."""
    path = node(name)
    deadline = time.monotonic() + (UDEV_WAIT_S if os.path.exists("/run/udev/control") else 0.0)
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.05)
    if os.path.exists(path):
        return
    os.makedirs(MAPPER, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.mknod(path, 0o600 | stat.S_IFBLK, os.makedev(*device))


def remove(name: str) -> None:
    """Remove the layer ``name`` (its filesystem unmounted) and the node made for it."""
    try:
        dm.remove(name)
    except OSError as e:
        hint = {6: "no such dm device", 16: "it is in use: unmount its filesystem first"}
        raise LayerError(f"cannot remove {name}: {hint.get(e.errno or 0, e)}") from None
    path = node(name)
    with contextlib.suppress(OSError):
        if stat.S_ISBLK(os.lstat(path).st_mode):   # ours; udev's is a symlink and goes with udev
            os.unlink(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m pyqga.agent.faults.layer",
                                     description="Put a dm-linear layer under a block device (before "
                                                 "mounting it), or remove one.")
    parser.add_argument("device", nargs="?", help="the block device, e.g. /dev/vdb")
    parser.add_argument("name", nargs="?", help="the dm name: the layer is /dev/mapper/NAME")
    parser.add_argument("--remove", metavar="NAME", help="remove the layer NAME (unmount it first)")
    args = parser.parse_args(argv)
    try:
        if args.remove:
            remove(args.remove)
            return 0
        if not (args.device and args.name):
            parser.error("give DEVICE NAME, or --remove NAME")
        print(create(args.device, args.name))
    except LayerError as e:
        print(f"pyqga layer: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
