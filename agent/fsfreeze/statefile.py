"""The "filesystems are frozen" marker that outlives the agent process.

If the agent dies while frozen, the next instance must not believe everything is thawed: it
finds this file and starts in frozen mode until a thaw (qemu-ga's ``qga.state.isfrozen``).
So the marker is written *before* the first FIFREEZE and removed only after the thaw.

Keep the state directory on tmpfs (default ``/run/pyqga``): writing the marker to a filesystem
that is being frozen would block the agent, and a marker must not survive a reboot, which
thaws everything.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

DEFAULT_STATEDIR = "/run/pyqga"
FROZEN_FILE = "pyqga.state.frozen"
HISTORY_FILE = "pyqga.state.history"


def path_in(statedir: str | os.PathLike[str]) -> Path:
    return Path(statedir) / FROZEN_FILE


def mark_frozen(statedir: str | os.PathLike[str], info: Mapping[str, Any]) -> Path:
    """Atomically write the marker as JSON: ``info`` (say ``epoch``, the caller's freeze
    generation, and ``mountpoints``) plus ``time`` (Unix seconds) unless ``info`` has one.

    Written to a temporary file, fsynced, renamed over the marker and the directory fsynced,
    so a reader sees the old marker, the new one, or none, never half of one.
    """
    return _write_json(Path(statedir), FROZEN_FILE, {"time": time.time(), **info})


def _write_json(directory: Path, name: str, record: Mapping[str, Any]) -> Path:
    """Write ``record`` to ``directory/name`` atomically (temp file, fsync, rename)."""
    data = json.dumps(record, sort_keys=True).encode() + b"\n"  # not serialisable: fail early
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    target = directory / name
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)
    return target


def clear(statedir: str | os.PathLike[str]) -> bool:
    """Remove the marker; return whether there was one."""
    try:
        os.unlink(path_in(statedir))
    except FileNotFoundError:
        return False
    _fsync_dir(Path(statedir))
    return True


def read_history(statedir: str | os.PathLike[str]) -> dict[str, Any]:
    """``{"last_epoch": N, "last_thaw": {...}}`` as far as known; ``{}`` when there is none.

    Epochs must keep increasing across agent restarts, or a host holding a stale epoch could
    match a new freeze; and the next agent must be able to say how the last freeze ended.
    """
    try:
        value = json.loads((Path(statedir) / HISTORY_FILE).read_bytes())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def write_history(statedir: str | os.PathLike[str], history: Mapping[str, Any]) -> None:
    _write_json(Path(statedir), HISTORY_FILE, history)


def record_thaw(
    statedir: str | os.PathLike[str], epoch: int, reason: str, detail: str = ""
) -> dict[str, Any]:
    """Remember how freeze ``epoch`` ended (the guard uses this when the agent died)."""
    history = read_history(statedir)
    last_thaw = {"epoch": epoch, "reason": reason, "at": time.time(), "detail": detail}
    history["last_thaw"] = last_thaw
    history["last_epoch"] = max(int(history.get("last_epoch", 0)), epoch)
    write_history(statedir, history)
    return last_thaw


def read(statedir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The marker's content, or None if there is no marker.

    A marker that exists but cannot be parsed still means "frozen": it returns
    ``{"unreadable": REASON}`` rather than None, so a caller never thaws its belief by accident.
    """
    try:
        raw = path_in(statedir).read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        return {"unreadable": e.strerror or str(e)}
    try:
        value = json.loads(raw)
    except ValueError as e:
        return {"unreadable": f"invalid JSON: {e}"}
    if not isinstance(value, dict):
        return {"unreadable": "not a JSON object"}
    return value


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
