"""vCPUs, memory blocks and disks: ``guest-get-vcpus``, ``guest-set-vcpus``,
``guest-get-memory-blocks``, ``guest-set-memory-blocks``, ``guest-get-memory-block-info`` and
``guest-get-disks``, as qemu-ga does them on Linux (``qga/commands-linux.c``).

Everything comes from sysfs, read in directory order as qemu-ga reads it, so the replies list
the same entries in the same order:

- a vCPU is ``/sys/devices/system/cpu/cpuN``; its ``online`` file says whether it is online and,
  by existing, that it can be offlined (cpu0 usually has none: online, ``can-offline`` false);
- a memory block is ``/sys/devices/system/memory/memoryN``, online when its ``state`` starts
  with "online", ``can-offline`` from its ``removable`` file;
- a disk is a ``/sys/block`` entry of non-zero size, listed with its partitions (each depending
  on its disk) and its ``slaves`` as dependencies; a disk that is not under
  ``/devices/virtual/block/`` gets qemu-ga's GuestDiskAddress, worked out from the sysfs path
  as qemu-ga does it (:func:`real_disk_address`: the controller is the first PCI function on the
  path with a disk driver qemu-ga knows; IDE and SATA units count hosts; virtio-scsi reports the
  LUN as unit). ``agent/commands/fsinfo.py``'s address code, used by ``guest-get-fsinfo``,
  reads SCSI addresses differently (bus/target from the H:C:T:L directory, any HBA), so it is
  not reused here. qemu-ga gets device nodes, ``serial`` and the
  ``alias`` (a device-mapper name) from udev; we read the same things where udev keeps them:
  ``DEVNAME`` in the device's ``uevent``, and ``ID_SERIAL`` and ``DM_NAME`` in udev's database
  (``/run/udev/data/bMAJ:MIN``). Without that database qemu-ga reports no alias and no
  serial; we still report the serial the kernel shows in sysfs (``serial``, or
  ``device/serial``), as ``guest-get-fsinfo`` does, so libvirt's ``guestinfo`` sees the same
  serial for a disk in both places (the one deliberate difference in these commands).

The set commands keep qemu-ga's partial-success rules: ``guest-set-vcpus`` stops at the first
vCPU it cannot change and returns how many it handled before it, failing only if that is none;
``guest-set-memory-blocks`` answers per block. A request for the state a vCPU or block already
has changes nothing and counts as success. The list arguments are checked as QAPI checks them,
element by element, in qemu's words (``Parameter 'vcpus[0].online' is missing``).

An NVMe disk carries ``smart``, its SMART log page read with the NVMe admin passthrough ioctl as
qemu-ga 7.1+ reads it; no other disk has SMART data, as in qemu-ga.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import re
import struct
from typing import TYPE_CHECKING, Any

from pyqga.agent.commands.kernel_files import read_optional, sysfs_serial
from pyqga.agent.registry import Command, Param
from pyqga.protocol.errors import command_failed, invalid_params, quote

if TYPE_CHECKING:
    from pyqga.agent.state import AgentState

CPU_DIR = "/sys/devices/system/cpu"
MEMORY_DIR = "/sys/devices/system/memory"
BLOCK_DIR = "/sys/block"
UDEV_DATA = "/run/udev/data"

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
UINT64 = 2**64

_CPU_NAME = re.compile(r"cpu\s*([-+]?\d+)")     # sscanf("cpu%" PRId64)
_LEADING_DIGITS = re.compile(r"\s*([-+]?\d*)")  # strtoul


def _oserror(what: str, exc: OSError) -> Exception:
    """qemu's error_setg_errno: "what: strerror"."""
    return command_failed(f"{what}: {os.strerror(exc.errno or 0)}")


# --- QAPI-style checking of list elements ------------------------------------------------------

class UInt64:
    """Marks a QAPI uint64 member in :func:`_check_struct`."""


_QAPI_TYPES = {int: "integer", bool: "boolean"}


def _check_struct(value: Any, where: str,
                  members: tuple[tuple[str, type[Any], bool], ...]) -> dict[str, Any]:
    """One list element, checked as qemu's input visitor does: an object, members in
    declaration order (missing, then wrong type), then any member it does not know."""
    if not isinstance(value, dict):
        raise invalid_params(f"Invalid parameter type for '{where}', expected: object")
    for name, kind, required in members:
        if name not in value:
            if required:
                raise invalid_params(f"Parameter '{where}.{name}' is missing")
            continue
        item = value[name]
        is_int = isinstance(item, int) and not isinstance(item, bool)
        if kind is UInt64:
            # QAPI's uint64 takes any integer JSON can carry in 64 bits (a negative one modulo
            # 2**64); anything else is "expects uint64".
            if not (is_int and INT64_MIN <= item < UINT64):
                raise invalid_params(f"Parameter '{where}.{name}' expects uint64")
            continue
        ok = isinstance(item, bool) if kind is bool else is_int and INT64_MIN <= item <= INT64_MAX
        if not ok:
            raise invalid_params(
                f"Invalid parameter type for '{where}.{name}', expected: {_QAPI_TYPES[kind]}")
    known = {name for name, _kind, _required in members}
    for name in value:
        if name not in known:
            raise invalid_params(f"Parameter '{where}.{quote(name)}' is unexpected")
    return value


# --- vCPUs -------------------------------------------------------------------------------------


def _open_dir(dirpath: str) -> int:
    """An fd on a sysfs directory, or qemu-ga's error naming the open that failed."""
    try:
        return os.open(dirpath, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise _oserror(f'open("{dirpath}")', exc) from None


def _vcpu_from_system(logical_id: int, cpu_dir: str) -> dict[str, Any]:
    dirpath = f"{cpu_dir}/cpu{logical_id}/"
    dirfd = _open_dir(dirpath)
    try:
        try:
            fd = os.open("online", os.O_RDONLY, dir_fd=dirfd)
        except FileNotFoundError:
            return {"logical-id": logical_id, "online": True, "can-offline": False}
        except OSError as exc:
            raise _oserror(f'open("{dirpath}/online")', exc) from None
        try:
            online = _read_online(fd, dirpath)
        finally:
            os.close(fd)
        return {"logical-id": logical_id, "online": online, "can-offline": True}
    finally:
        os.close(dirfd)


def _read_online(fd: int, dirpath: str) -> bool:
    """A vCPU's ``online`` file, as qemu-ga's transfer_vcpu reads it (one byte, "0" or not)."""
    try:
        status = os.pread(fd, 1, 0)
    except OSError as exc:
        raise _oserror(f'pread("{dirpath}/online")', exc) from None
    if not status:
        raise command_failed(f'pread("{dirpath}/online"): unexpected EOF')
    return status != b"0"


def _vcpu_to_system(logical_id: int, online: bool, cpu_dir: str) -> None:
    """qemu-ga's transfer_vcpu towards the system: write ``online`` only if it differs."""
    dirpath = f"{cpu_dir}/cpu{logical_id}/"
    dirfd = _open_dir(dirpath)
    try:
        try:
            fd = os.open("online", os.O_RDWR, dir_fd=dirfd)
        except FileNotFoundError:
            if not online:
                raise command_failed(f"logical processor #{logical_id} can't be offlined") from None
            return  # no online file: always online, and it already is
        except OSError as exc:
            raise _oserror(f'open("{dirpath}/online")', exc) from None
        try:
            if online != _read_online(fd, dirpath):
                try:
                    os.pwrite(fd, b"1" if online else b"0", 0)
                except OSError as exc:
                    raise _oserror(f'pwrite("{dirpath}/online")', exc) from None
        finally:
            os.close(fd)
    finally:
        os.close(dirfd)


def get_vcpus(cpu_dir: str = CPU_DIR) -> list[dict[str, Any]]:
    try:
        names = os.listdir(cpu_dir)
    except OSError as exc:
        raise _oserror(f"failed to list entries: {cpu_dir}", exc) from None
    vcpus = []
    for name in names:
        match = _CPU_NAME.match(name)
        if match is not None:
            vcpus.append(_vcpu_from_system(int(match.group(1)), cpu_dir))
    return vcpus


def set_vcpus(vcpus: list[Any], cpu_dir: str = CPU_DIR) -> int:
    checked = [
        _check_struct(vcpu, f"vcpus[{i}]",
                      (("logical-id", int, True), ("online", bool, True),
                       ("can-offline", bool, False)))
        for i, vcpu in enumerate(vcpus)
    ]
    processed = 0
    for vcpu in checked:
        try:
            _vcpu_to_system(vcpu["logical-id"], vcpu["online"], cpu_dir)
        except Exception:
            if processed == 0:
                raise
            break
        processed += 1
    return processed


def guest_get_vcpus(agent: AgentState) -> list[dict[str, Any]]:
    return get_vcpus()


def guest_set_vcpus(agent: AgentState, vcpus: list[Any]) -> int:
    processed = set_vcpus(vcpus)
    agent.log.info("guest-set-vcpus: %d of %d handled", processed, len(vcpus))
    return processed


# --- memory blocks -----------------------------------------------------------------------------


def _read_sysfs(dirfd: int, name: str, size: int) -> bytes:
    """qemu-ga's ga_read_sysfs_file; OSError carries the errno its callers look at."""
    fd = os.open(name, os.O_RDONLY, dir_fd=dirfd)
    try:
        data = os.pread(fd, size, 0)
    except OSError as exc:
        exc.filename = "pread"   # which call failed, for the message
        raise
    finally:
        os.close(fd)
    if not data:
        raise OSError(0, f'pread sysfs file "{name}": unexpected EOF')
    return data


def _leading_int(text: str) -> int:
    digits = _LEADING_DIGITS.match(text).group(1)  # type: ignore[union-attr]
    try:
        return int(digits) % UINT64
    except ValueError:
        return 0


def _memory_block_from_system(index: int, memory_dir: str) -> dict[str, Any]:
    dirpath = f"{memory_dir}/memory{_signed64(index)}/"
    dirfd = _open_dir(dirpath)
    try:
        try:
            state = _read_sysfs(dirfd, "state", 10)
        except FileNotFoundError:
            return {"phys-index": index, "online": True, "can-offline": False}
        except OSError as exc:
            raise _sysfs_error("state", exc) from None
        block = {"phys-index": index, "online": state.startswith(b"online")}
        try:
            removable = _read_sysfs(dirfd, "removable", 1)
        except FileNotFoundError:
            block["can-offline"] = False
        except OSError as exc:
            raise _sysfs_error("removable", exc) from None
        else:
            block["can-offline"] = removable != b"0"
        return block
    finally:
        os.close(dirfd)


def _sysfs_error(name: str, exc: OSError) -> Exception:
    if exc.errno == 0:
        return command_failed(str(exc.strerror))
    call = "pread" if exc.filename == "pread" else "open"
    return _oserror(f'{call} sysfs file "{name}"', exc)


def _signed64(value: int) -> int:
    """How qemu prints a uint64 phys-index with PRId64."""
    return value - UINT64 if value > INT64_MAX else value


def get_memory_blocks(memory_dir: str = MEMORY_DIR) -> list[dict[str, Any]]:
    try:
        entries = list(os.scandir(memory_dir + "/"))
    except FileNotFoundError:
        return []  # no memory hotplug in this kernel: no blocks, no error (as qemu-ga)
    except OSError as exc:
        raise _oserror(f'Can\'t open directory"{memory_dir}/"', exc) from None
    blocks = []
    for entry in entries:
        if not entry.name.startswith("memory") or not entry.is_dir(follow_symlinks=False):
            continue
        blocks.append(_memory_block_from_system(_leading_int(entry.name[6:]), memory_dir))
    if not blocks:
        raise command_failed("guest reported zero memory blocks!")
    return blocks


def _memory_block_to_system(index: int, online: bool, memory_dir: str) -> dict[str, Any]:
    """One GuestMemoryBlockResponse, as qemu-ga's transfer_memory_block fills it in."""
    result: dict[str, Any] = {"phys-index": index, "response": "success"}
    if not os.path.isdir(memory_dir + "/"):
        if not os.path.exists(memory_dir + "/"):
            result.update({"response": "operation-not-supported", "error-code": errno.ENOENT})
        else:
            result["error-code"] = errno.ENOTDIR
        return result
    dirpath = f"{memory_dir}/memory{_signed64(index)}/"
    try:
        dirfd = os.open(dirpath, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        result["response"] = "not-found" if exc.errno == errno.ENOENT else "operation-failed"
        result["error-code"] = exc.errno
        return result
    try:
        try:
            state = _read_sysfs(dirfd, "state", 10)
        except FileNotFoundError:
            if not online:
                result["response"] = "operation-not-supported"
            result["error-code"] = errno.ENOENT
            return result
        except OSError as exc:
            result.update({"response": "operation-failed", "error-code": exc.errno})
            return result
        if online != state.startswith(b"online"):
            try:
                fd = os.open("state", os.O_WRONLY, dir_fd=dirfd)
                try:
                    os.pwrite(fd, b"online" if online else b"offline", 0)
                finally:
                    os.close(fd)
            except OSError as exc:
                result.update({"response": "operation-failed", "error-code": exc.errno})
        return result
    finally:
        os.close(dirfd)


def set_memory_blocks(blocks: list[Any], memory_dir: str = MEMORY_DIR) -> list[dict[str, Any]]:
    checked = [
        _check_struct(block, f"mem-blks[{i}]",
                      (("phys-index", UInt64, True), ("online", bool, True),
                       ("can-offline", bool, False)))
        for i, block in enumerate(blocks)
    ]
    # QAPI's uint64 takes a negative number modulo 2**64, as qemu-ga does (-1 is 2**64-1).
    return [_memory_block_to_system(block["phys-index"] % UINT64, block["online"], memory_dir)
            for block in checked]


def get_memory_block_info(memory_dir: str = MEMORY_DIR) -> dict[str, Any]:
    dirpath = memory_dir + "/"
    dirfd = _open_dir(dirpath)
    try:
        text = _read_sysfs(dirfd, "block_size_bytes", 20).decode("ascii", "replace").strip()
    except OSError as exc:
        raise _sysfs_error("block_size_bytes", exc) from None
    finally:
        os.close(dirfd)
    match = re.match(r"(?:0[xX])?([0-9a-fA-F]+)", text)
    return {"size": int(match.group(1), 16) if match else 0}


def guest_get_memory_blocks(agent: AgentState) -> list[dict[str, Any]]:
    return get_memory_blocks()


def guest_set_memory_blocks(agent: AgentState, **params: Any) -> list[dict[str, Any]]:
    blocks = params["mem-blks"]
    results = set_memory_blocks(blocks)
    agent.log.info("guest-set-memory-blocks: %s",
                   ", ".join(f"{r['phys-index']}: {r['response']}" for r in results))
    return results


def guest_get_memory_block_info(agent: AgentState) -> dict[str, Any]:
    return get_memory_block_info()


# --- disks -------------------------------------------------------------------------------------


def _uevent(syspath: str) -> dict[str, str]:
    text = read_optional(os.path.join(syspath, "uevent")) or ""
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def devnode(syspath: str) -> str | None:
    """udev_device_get_devnode: /dev/ and the kernel's DEVNAME, or None without one."""
    name = _uevent(os.path.realpath(syspath)).get("DEVNAME")
    return "/dev/" + name if name else None


def udev_property(syspath: str, key: str, udev_data: str = UDEV_DATA) -> str | None:
    """A property udev stored for a block device (``E:KEY=value`` in its database file)."""
    event = _uevent(os.path.realpath(syspath))
    if "MAJOR" not in event or "MINOR" not in event:
        return None
    text = read_optional(f"{udev_data}/b{event['MAJOR']}:{event['MINOR']}") or ""
    prefix = f"E:{key}="
    for line in text.splitlines():
        if line.startswith(prefix):
            return line[len(prefix):]
    return None


# The PCI drivers qemu-ga knows a disk controller by (build_guest_fsinfo_for_pci_dev).
_DISK_DRIVERS = frozenset({"ata_piix", "sym53c8xx", "virtio-pci", "ahci", "nvme", "xhci_hcd",
                           "ehci-pci"})
_HEX = "[0-9a-fA-F]+"
_FIRST_PCI = re.compile(rf"{_HEX}:{_HEX}/({_HEX}):({_HEX}):({_HEX})\.({_HEX})")
_NEXT_PCI = re.compile(rf"/({_HEX}):({_HEX}):({_HEX})\.({_HEX})")
_TARGET = re.compile(r"\d+:\d+:\d+/\d+:(\d+):(\d+):(\d+)")
_CCW = re.compile(rf"{_HEX}/({_HEX})\.({_HEX})\.({_HEX})/{_HEX}\.{_HEX}\.({_HEX})/")


def _driver(path: str) -> str | None:
    try:
        return os.path.basename(os.readlink(path + "/driver"))
    except OSError:
        return None


def _scsi_target(syspath: str) -> tuple[int, int, int] | None:
    """``/targetH:C:T/H:C:T:L`` gives (C, T, L), as qemu-ga's sscanf reads it."""
    at = syspath.find("/target")
    match = _TARGET.match(syspath, at + 7) if at >= 0 else None
    return (int(match[1]), int(match[2]), int(match[3])) if match else None


def _hosts(parent: str, ata: bool) -> list[int]:
    """The sorted ``ataN`` or ``hostN`` numbers beside a disk's host (at most 8, as qemu-ga)."""
    pattern = re.compile(r"ata(-?\d+)" if ata else r"host(-?\d+)")
    try:
        names = os.listdir(parent)
    except OSError as exc:
        raise _oserror(f'opendir("{parent}")', exc) from None
    found = [int(m[1]) for name in names if (m := pattern.match(name))][:8]
    return sorted(found)


def _pci_address(syspath: str, address: dict[str, Any]) -> bool:
    """qemu-ga's build_guest_fsinfo_for_pci_dev: the first PCI function on the path whose
    driver is a disk controller it knows, and what that driver says about bus, target, unit."""
    at = syspath.find("/devices/pci")
    match = _FIRST_PCI.match(syspath, at + 12) if at >= 0 else None
    if match is None:
        return False
    pci = [int(x, 16) for x in match.groups()]
    pos = match.end()
    while True:
        driver = _driver(syspath[:pos])
        if driver in _DISK_DRIVERS:
            break
        nested = _NEXT_PCI.match(syspath, pos)
        if nested is None:
            return False
        pci = [int(x, 16) for x in nested.groups()]
        pos = nested.end()
    target = _scsi_target(syspath)
    host: int | None = None
    hosts: list[int] = []
    at, offset, ata = syspath.find("/ata"), 4, True
    if at < 0:
        at, offset, ata = syspath.find("/host"), 5, False
    if at >= 0 and (number := re.match(r"\d+", syspath[at + offset:])):
        host = int(number[0])
        hosts = _hosts(syspath[:at], ata)
    address["pci-controller"] = dict(zip(("domain", "bus", "slot", "function"), pci, strict=True))
    if driver in ("ata_piix", "ahci"):
        if host is None or target is None or host not in hosts:
            return False
        if driver == "ata_piix":   # a host per IDE bus, target*:0:<unit>:0
            address.update({"bus-type": "ide", "bus": hosts.index(host), "unit": target[1]})
        else:                      # one host per unit
            address.update({"bus-type": "sata", "unit": hosts.index(host)})
    elif driver == "sym53c8xx":
        if target is None:
            return False
        address.update({"bus-type": "scsi", "unit": target[1]})
    elif driver == "virtio-pci":
        if target is not None:     # virtio-scsi: target*:0:0:<unit>
            address.update({"bus-type": "scsi", "unit": target[2]})
        else:                      # virtio-blk: one disk per device
            address["bus-type"] = "virtio"
    elif driver == "nvme":
        address["bus-type"] = "nvme"
    else:                          # ehci-pci, xhci_hcd
        address["bus-type"] = "usb"
    return True


def _nonpci_virtio_address(syspath: str, address: dict[str, Any]) -> bool:
    if "/virtio" not in syspath or "/block" not in syspath:
        return False
    target = _scsi_target(syspath)
    if target is not None:
        address.update({"bus-type": "scsi", "bus": target[0], "target": target[1],
                        "unit": target[2]})
    else:
        address["bus-type"] = "virtio"
    return True


def _ccw_address(syspath: str, address: dict[str, Any]) -> bool:
    at = syspath.find("/devices/css")
    match = _CCW.match(syspath, at + 12) if at >= 0 else None
    if match is None:
        return False
    address["ccw-address"] = dict(zip(("cssid", "ssid", "subchno", "devno"),
                                      (int(x, 16) for x in match.groups()), strict=True))
    if "/virtio" in syspath[at:]:
        _nonpci_virtio_address(syspath, address)
    return True


def real_disk_address(disk_dir: str) -> dict[str, Any] | None:
    """qemu-ga's GuestDiskAddress for a non-virtual disk (build_guest_fsinfo_for_real_device):
    an address whenever the bus is known or udev names a device node or serial, with
    bus-type "unknown" and a PCI address of -1s where it cannot tell."""
    syspath = os.path.realpath(disk_dir)
    if not os.path.exists(syspath):
        return None
    address: dict[str, Any] = {
        "pci-controller": {"domain": -1, "bus": -1, "slot": -1, "function": -1},
        "bus-type": "unknown", "bus": 0, "target": 0, "unit": 0,
    }
    dev = devnode(syspath)
    serial = udev_property(syspath, "ID_SERIAL") or sysfs_serial(syspath)
    if "/devices/pci" in syspath:
        known = _pci_address(syspath, address)
    elif "/devices/css" in syspath:
        known = _ccw_address(syspath, address)
    elif "/virtio" in syspath:
        known = _nonpci_virtio_address(syspath, address)
    else:
        known = False
    if not (known or dev or serial):
        return None
    if dev:
        address["dev"] = dev
    if serial:
        address["serial"] = serial
    return address


def _dependencies(disk_dir: str) -> list[str] | None:
    """The devices a disk is built on, or None (member absent) without a ``slaves`` directory;
    an empty directory gives ``[]``, as qemu-ga sets has_dependencies once it opened it."""
    deps_dir = f"{disk_dir}/slaves"
    try:
        names = os.listdir(deps_dir)
    except OSError:
        return None
    found = [dev for name in names if (dev := devnode(f"{deps_dir}/{name}")) is not None]
    return found[::-1]  # qemu-ga prepends each


def _is_partition_of(disk: str, name: str) -> bool:
    if not name.startswith(disk):
        return False
    rest = name[len(disk):]
    return (rest[:1].isdigit() and rest[:1].isascii()) or (
        rest[:1] == "p" and rest[1:2].isdigit() and rest[1:2].isascii())


# NVMe SMART / health log through the admin passthrough ioctl, as qemu-ga's get_nvme_smart.
NVME_IOCTL_ADMIN_CMD = 0xC0484E41       # _IOWR('N', 0x41, struct nvme_admin_cmd), 72 bytes
_NVME_ADMIN_CMD = struct.Struct("=BBHIIIQQIIIIIIIIII")
_NVME_GET_LOG_PAGE = 0x02
_NVME_LOG_SMART = 0x02
_NVME_SMART_LOG_SIZE = 512
_NVME_COUNTERS = ("data-units-read", "data-units-written", "host-read-commands",
                  "host-write-commands", "controller-busy-time", "power-cycles",
                  "power-on-hours", "unsafe-shutdowns", "media-errors",
                  "number-of-error-log-entries")


def parse_nvme_smart(log: bytes) -> dict[str, Any]:
    """GuestDiskSmart for an NVMe SMART log page (NvmeSmartLog, little-endian)."""
    smart: dict[str, Any] = {
        "type": "nvme",
        "critical-warning": log[0],
        "temperature": int.from_bytes(log[1:3], "little"),
        "available-spare": log[3],
        "available-spare-threshold": log[4],
        "percentage-used": log[5],
    }
    for i, name in enumerate(_NVME_COUNTERS):
        lo, hi = struct.unpack_from("<QQ", log, 32 + 16 * i)
        smart[f"{name}-lo"] = lo
        smart[f"{name}-hi"] = hi
    return smart


def nvme_smart(device: str) -> dict[str, Any] | None:
    """The SMART log of an NVMe disk, or None if it cannot be read (qemu-ga stays silent)."""
    log = ctypes.create_string_buffer(_NVME_SMART_LOG_SIZE)
    cdw10 = _NVME_LOG_SMART | (1 << 15) | (((_NVME_SMART_LOG_SIZE >> 2) - 1) << 16)
    command = bytearray(_NVME_ADMIN_CMD.pack(
        _NVME_GET_LOG_PAGE, 0, 0, 0xFFFFFFFF, 0, 0, 0, ctypes.addressof(log), 0,
        _NVME_SMART_LOG_SIZE, cdw10, 0, 0, 0, 0, 0, 0, 0))
    try:
        fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.ioctl(fd, NVME_IOCTL_ADMIN_CMD, command, True)
    except OSError:
        return None
    finally:
        os.close(fd)
    return parse_nvme_smart(log.raw)


def get_disks(block_dir: str = BLOCK_DIR) -> list[dict[str, Any]]:
    try:
        entries = list(os.scandir(block_dir))
    except OSError as exc:
        raise _oserror(f'Can\'t open directory "{block_dir}"', exc) from None
    listed: list[dict[str, Any]] = []   # in qemu-ga's discovery order; it prepends, we reverse
    for entry in entries:
        if not entry.is_symlink():
            continue
        disk_dir = f"{block_dir}/{entry.name}"
        size = read_optional(f"{disk_dir}/size")
        if size is None or size == "0\n":
            continue
        dev = devnode(disk_dir)
        if dev is None:
            continue
        disk: dict[str, Any] = {"name": dev, "partition": False}
        alias = udev_property(disk_dir, "DM_NAME")
        if alias:
            disk["alias"] = alias
        if "/devices/virtual/block/" not in os.path.realpath(disk_dir):
            address = real_disk_address(disk_dir)
            if address is not None:
                disk["address"] = address
        dependencies = _dependencies(disk_dir)
        if dependencies is not None:
            disk["dependencies"] = dependencies
        if disk.get("address", {}).get("bus-type") == "nvme":
            smart = nvme_smart(dev)
            if smart is not None:
                disk["smart"] = smart
        listed.append(disk)
        try:
            parts = list(os.scandir(disk_dir))
        except OSError:
            parts = []
        for part in parts:
            if not part.is_dir(follow_symlinks=False) or not _is_partition_of(entry.name, part.name):
                continue
            part_dev = devnode(f"{disk_dir}/{part.name}")
            if part_dev is None:
                continue
            listed.append({"name": part_dev, "partition": True, "dependencies": [dev]})
    return listed[::-1]


def guest_get_disks(agent: AgentState) -> list[dict[str, Any]]:
    return get_disks()


VCPUS = Param("vcpus", list, doc="[{logical-id, online, can-offline?}]: the state each should have")
MEM_BLKS = Param("mem-blks", list, doc="[{phys-index, online, can-offline?}]: the state each should have")

COMMANDS = (
    Command("guest-get-vcpus", guest_get_vcpus,
            "The guest's logical processors: logical-id, online, can-offline."),
    Command("guest-set-vcpus", guest_set_vcpus,
            "Bring logical processors online or offline; returns how many were handled before the "
            "first failure (an error if the first one fails).", (VCPUS,), blocking=True),
    Command("guest-get-memory-blocks", guest_get_memory_blocks,
            "The guest's memory blocks: phys-index, online, can-offline."),
    Command("guest-set-memory-blocks", guest_set_memory_blocks,
            "Bring memory blocks online or offline; one response per block.", (MEM_BLKS,),
            blocking=True),
    Command("guest-get-memory-block-info", guest_get_memory_block_info,
            "The size of a memory block in bytes."),
    Command("guest-get-disks", guest_get_disks,
            "The guest's disks and partitions: name, partition, dependencies, alias, address.",
            blocking=True),
)
