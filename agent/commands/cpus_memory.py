"""vCPUs and memory blocks: ``guest-get-vcpus``, ``guest-set-vcpus``, ``guest-get-memory-blocks``,
``guest-set-memory-blocks`` and ``guest-get-memory-block-info``, as qemu-ga does them on Linux
(``qga/commands-linux.c``).

Everything comes from sysfs, read in directory order as qemu-ga reads it, so the replies list
the same entries in the same order:

- a vCPU is ``/sys/devices/system/cpu/cpuN``; its ``online`` file says whether it is online and,
  by existing, that it can be offlined (cpu0 usually has none: online, ``can-offline`` false);
- a memory block is ``/sys/devices/system/memory/memoryN``, online when its ``state`` starts
  with "online", ``can-offline`` from its ``removable`` file.

The set commands keep qemu-ga's partial-success rules: ``guest-set-vcpus`` stops at the first
vCPU it cannot change and returns how many it handled before it, failing only if that is none;
``guest-set-memory-blocks`` answers per block. A request for the state a vCPU or block already
has changes nothing and counts as success. The list arguments are checked as QAPI checks them,
element by element, in qemu's words (``Parameter 'vcpus[0].online' is missing``).
"""

from __future__ import annotations

import errno
import os
import re
from typing import TYPE_CHECKING, Any

from pyqga.agent.commands.kernel_files import errno_error
from pyqga.agent.registry import Command, Param
from pyqga.protocol.errors import command_failed, invalid_params, quote

if TYPE_CHECKING:
    from pyqga.agent.state import AgentState

CPU_DIR = "/sys/devices/system/cpu"
MEMORY_DIR = "/sys/devices/system/memory"

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
UINT64 = 2**64

_CPU_NAME = re.compile(r"cpu\s*([-+]?\d+)")     # sscanf("cpu%" PRId64)
_LEADING_DIGITS = re.compile(r"\s*([-+]?\d*)")  # strtoul


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
        raise errno_error(f'open("{dirpath}")', exc) from None


def _vcpu_from_system(logical_id: int, cpu_dir: str) -> dict[str, Any]:
    dirpath = f"{cpu_dir}/cpu{logical_id}/"
    dirfd = _open_dir(dirpath)
    try:
        try:
            fd = os.open("online", os.O_RDONLY, dir_fd=dirfd)
        except FileNotFoundError:
            return {"logical-id": logical_id, "online": True, "can-offline": False}
        except OSError as exc:
            raise errno_error(f'open("{dirpath}/online")', exc) from None
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
        raise errno_error(f'pread("{dirpath}/online")', exc) from None
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
            raise errno_error(f'open("{dirpath}/online")', exc) from None
        try:
            if online != _read_online(fd, dirpath):
                try:
                    os.pwrite(fd, b"1" if online else b"0", 0)
                except OSError as exc:
                    raise errno_error(f'pwrite("{dirpath}/online")', exc) from None
        finally:
            os.close(fd)
    finally:
        os.close(dirfd)


def get_vcpus(cpu_dir: str = CPU_DIR) -> list[dict[str, Any]]:
    try:
        names = os.listdir(cpu_dir)
    except OSError as exc:
        raise errno_error(f"failed to list entries: {cpu_dir}", exc) from None
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
    return errno_error(f'{call} sysfs file "{name}"', exc)


def _signed64(value: int) -> int:
    """How qemu prints a uint64 phys-index with PRId64."""
    return value - UINT64 if value > INT64_MAX else value


def get_memory_blocks(memory_dir: str = MEMORY_DIR) -> list[dict[str, Any]]:
    try:
        entries = list(os.scandir(memory_dir + "/"))
    except FileNotFoundError:
        return []  # no memory hotplug in this kernel: no blocks, no error (as qemu-ga)
    except OSError as exc:
        raise errno_error(f'Can\'t open directory"{memory_dir}/"', exc) from None
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
)
