"""``guest-file-open/read/write/seek/flush/close``: file access through handles, as qemu-ga.

Shapes and error texts are qemu-ga's (``qga/commands-posix.c``, ``qga/commands.c``): open takes
an fopen(3) mode (``r w a r+ w+ a+``, each optionally with ``b``, default ``r``) and returns an
integer handle; data travels base64-encoded; read returns ``{count, buf-b64, eof}``, write
``{count, eof}``, seek ``{position, eof}``; whence is 0/1/2 or ``set``/``cur``/``end``.

Files are opened with O_CLOEXEC (programs from guest-exec do not inherit them), O_NOCTTY, and
O_NONBLOCK as qemu-ga does, so a FIFO with no writer cannot hang a worker: reading it returns
what is there.  Every command runs on a worker thread (a slow disk must not stall pings).  We
use the fd directly, not stdio, so a write is in the kernel when it returns and flush has
nothing left to push (qemu-ga's flush is fflush, which does exactly that).

Worst cases, for untrusted requests: at most :data:`MAX_HANDLES` files open at once (then
open fails until the host closes some); one read holds at most :data:`READ_COUNT_MAX` bytes
(qemu-ga's 48 MiB, whose base64 fits the 64 MiB message limit) plus its base64; one write at
most the decoded request (bounded by --max-message-size).

Where **we** differ from qemu-ga, deliberately:
- handles start at the millisecond clock at agent start, not at 1000 from a counter in the
  state file, so a handle a host kept from before an agent restart never names a new file;
- a new file gets mode 0666 minus the agent's umask (qemu-ga forces 0666, world-writable);
- the number of open handles is bounded; reading a non-blocking source returns the data that
  was there instead of failing with EAGAIN.
"""

from __future__ import annotations

import base64
import os
import threading
import time
from typing import TYPE_CHECKING, Any

from pyqga.agent.commands.qbase64 import qbase64_decode
from pyqga.agent.registry import AnyValueParam, Command, Param
from pyqga.protocol.errors import command_failed, invalid_params, quote

if TYPE_CHECKING:
    from pyqga.agent.state import AgentState

MAX_HANDLES = 1024
READ_COUNT_DEFAULT = 4096           # qemu-ga's QGA_READ_COUNT_DEFAULT
READ_COUNT_MAX = 48 << 20           # qemu-ga's GUEST_FILE_READ_COUNT_MAX
IO_CHUNK = 1 << 20

_READ, _WRITE, _RDWR = os.O_RDONLY, os.O_WRONLY, os.O_RDWR
_CREATE, _APPEND = os.O_CREAT | os.O_TRUNC, os.O_CREAT | os.O_APPEND
# fopen(3) modes, as qemu-ga's guest_file_open_modes table spells them.
OPEN_MODES: dict[str, int] = {
    "r": _READ, "rb": _READ,
    "w": _WRITE | _CREATE, "wb": _WRITE | _CREATE,
    "a": _WRITE | _APPEND, "ab": _WRITE | _APPEND,
    "r+": _RDWR, "rb+": _RDWR, "r+b": _RDWR,
    "w+": _RDWR | _CREATE, "wb+": _RDWR | _CREATE, "w+b": _RDWR | _CREATE,
    "a+": _RDWR | _APPEND, "ab+": _RDWR | _APPEND, "a+b": _RDWR | _APPEND,
}
OPEN_EXTRA_FLAGS = os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK
NEW_FILE_MODE = 0o666
WHENCE = {"set": os.SEEK_SET, "cur": os.SEEK_CUR, "end": os.SEEK_END}
WHENCE_CODES = {0: os.SEEK_SET, 1: os.SEEK_CUR, 2: os.SEEK_END}  # qemu's QGA_SEEK_*


class OpenFile:
    """One guest-file handle's file (a plain class: a dataclass costs ~0.5 ms to define at start)."""

    __slots__ = ("closed", "fd", "lock", "mode", "path")
    fd: int
    path: str
    mode: str
    lock: threading.Lock
    closed: bool

    def __init__(self, fd: int, path: str, mode: str) -> None:
        self.fd, self.path, self.mode = fd, path, mode
        # One operation at a time per handle: a read's loop and a seek must not interleave.
        self.lock = threading.Lock()
        self.closed = False


class FileTable:
    """The agent's open files by handle (an :class:`AgentState` field); safe from any thread."""

    def __init__(self, max_handles: int = MAX_HANDLES) -> None:
        self.max_handles = max_handles
        self._lock = threading.Lock()
        self._files: dict[int, OpenFile] = {}
        self._next = max(1000, time.time_ns() // 1_000_000)

    def __len__(self) -> int:
        with self._lock:
            return len(self._files)

    def open(self, path: str, mode: str) -> int:
        flags = OPEN_MODES.get(mode)
        if flags is None:
            raise command_failed(f"invalid file open mode '{mode}'")
        if "\0" in path:
            raise invalid_params("Invalid parameter 'path': it contains a NUL character")
        with self._lock:
            if len(self._files) >= self.max_handles:
                raise command_failed(
                    f"too many open file handles ({self.max_handles}); close some with guest-file-close"
                )
        try:
            fd = os.open(path, flags | OPEN_EXTRA_FLAGS, NEW_FILE_MODE)
        except (OSError, UnicodeEncodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not valid text for the OS"
            raise command_failed(f"failed to open file '{quote(path)}' (mode: '{quote(mode)}'): "
                                 f"{reason}") from None
        with self._lock:
            handle = self._next
            self._next += 1
            self._files[handle] = OpenFile(fd, path, mode)
        return handle

    def get(self, handle: int) -> OpenFile:
        with self._lock:
            entry = self._files.get(handle)
        if entry is None:
            raise command_failed(f"handle '{handle}' has not been found")
        return entry

    def close(self, handle: int) -> None:
        with self._lock:
            entry = self._files.pop(handle, None)
        if entry is None:
            raise command_failed(f"handle '{handle}' has not been found")
        with entry.lock:  # wait for an operation in progress on it
            entry.closed = True
            try:
                os.close(entry.fd)
            except OSError as exc:
                raise command_failed(f"failed to close handle: {exc.strerror}") from None


def _locked(agent: AgentState, handle: int) -> OpenFile:
    """The handle's entry with its lock held; the caller releases it.  A handle closed while
    we waited for its lock counts as unknown."""
    entry = agent.file_handles.get(handle)
    entry.lock.acquire()
    if entry.closed:
        entry.lock.release()
        raise command_failed(f"handle '{handle}' has not been found")
    return entry


def guest_file_open(agent: AgentState, path: str, mode: str | None = None) -> int:
    mode = "r" if mode is None else mode
    handle = agent.file_handles.open(path, mode)
    agent.log.info("guest-file-open: %s (mode %s): handle %d", path, mode, handle)
    return handle


def guest_file_close(agent: AgentState, handle: int) -> dict[str, Any]:
    agent.file_handles.close(handle)
    return {}


def guest_file_read(agent: AgentState, handle: int, count: int | None = None) -> dict[str, Any]:
    """Read up to ``count`` bytes: stops early only at end of file (``eof: true``) or when a
    non-blocking source has nothing more now."""
    if count is None:
        count = READ_COUNT_DEFAULT
    elif not 0 <= count <= READ_COUNT_MAX:
        raise command_failed(f"value '{count}' is invalid for argument count")
    entry = _locked(agent, handle)
    try:
        data = bytearray()
        eof = False
        while len(data) < count:
            try:
                chunk = os.read(entry.fd, min(count - len(data), IO_CHUNK))
            except BlockingIOError:
                break
            except OSError as exc:
                raise command_failed(f"failed to read file: {exc.strerror}") from None
            if not chunk:
                eof = True
                break
            data += chunk
    finally:
        entry.lock.release()
    result: dict[str, Any] = {"count": len(data), "buf-b64": base64.b64encode(data).decode("ascii"),
                              "eof": eof}
    return result


def guest_file_write(agent: AgentState, handle: int, **params: Any) -> dict[str, Any]:
    """Write the decoded ``buf-b64`` (its first ``count`` bytes if given); a non-blocking sink
    that is full ends the write early, and ``count`` says how much went."""
    entry = agent.file_handles.get(handle)  # unknown handle first, as qemu-ga
    data = qbase64_decode(params["buf-b64"], strict=True)
    count = params.get("count")
    if count is None:
        count = len(data)
    elif not 0 <= count <= len(data):
        raise command_failed(f"value '{count}' is invalid for argument count")
    entry = _locked(agent, handle)
    try:
        view = memoryview(data)[:count]
        written = 0
        while written < count:
            try:
                written += os.write(entry.fd, view[written:written + IO_CHUNK])
            except BlockingIOError:
                break
            except OSError as exc:
                raise command_failed(f"failed to write to file: {exc.strerror}") from None
    finally:
        entry.lock.release()
    return {"count": written, "eof": False}


def parse_whence(value: Any) -> int:
    """qemu's GuestFileWhence: an integer QGA_SEEK_* code or its name."""
    if isinstance(value, str):
        if value not in WHENCE:
            raise invalid_params(f"Parameter 'whence' does not accept value '{quote(value)}'")
        return WHENCE[value]
    if isinstance(value, int) and not isinstance(value, bool):
        if value not in WHENCE_CODES:
            raise command_failed(f"invalid whence code {value}")
        return WHENCE_CODES[value]
    raise invalid_params("Invalid parameter type for 'whence', expected: GuestFileWhence")


def guest_file_seek(agent: AgentState, handle: int, offset: int, whence: Any) -> dict[str, Any]:
    how = parse_whence(whence)
    entry = _locked(agent, handle)
    try:
        position = os.lseek(entry.fd, offset, how)
    except OverflowError:
        raise command_failed("failed to seek file: offset out of range") from None
    except OSError as exc:
        raise command_failed(f"failed to seek file: {exc.strerror}") from None
    finally:
        entry.lock.release()
    return {"position": position, "eof": False}  # as fseek, which clears the end-of-file flag


def guest_file_flush(agent: AgentState, handle: int) -> dict[str, Any]:
    # Our writes go straight to the kernel; checking the handle is all qemu-ga's fflush adds.
    entry = _locked(agent, handle)
    entry.lock.release()
    return {}


HANDLE = Param("handle", int, doc="what guest-file-open returned")

COMMANDS = (
    Command("guest-file-open", guest_file_open,
            "Open a file; returns a handle for the other guest-file commands.",
            (Param("path", str, doc="file to open"),
             Param("mode", str, required=False, doc="fopen mode: r w a r+ w+ a+, optional b (default r)")),
            blocking=True),
    Command("guest-file-close", guest_file_close, "Close a handle.", (HANDLE,), blocking=True),
    Command("guest-file-read", guest_file_read,
            "Read from a handle: {count, buf-b64, eof}.",
            (HANDLE, Param("count", int, required=False,
                           doc=f"bytes to read, default {READ_COUNT_DEFAULT}, at most {READ_COUNT_MAX}")),
            blocking=True),
    Command("guest-file-write", guest_file_write,
            "Write base64 data to a handle: {count, eof}.",
            (HANDLE, Param("buf-b64", str, doc="the data, base64"),
             Param("count", int, required=False, doc="write only the first count bytes")),
            blocking=True),
    Command("guest-file-seek", guest_file_seek,
            "Move a handle's position: {position, eof}.",
            (HANDLE, Param("offset", int, doc="bytes, may be negative"),
             AnyValueParam("whence", int, doc="0/1/2 or set/cur/end")),
            blocking=True),
    Command("guest-file-flush", guest_file_flush, "Flush a handle's written data to the kernel.",
            (HANDLE,), blocking=True),
)
