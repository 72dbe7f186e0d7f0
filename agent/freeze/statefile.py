"""The freeze state on disk: one file, a snapshot (:mod:`.snapshot`) of the machine's state.

It outlives the agent process: the next agent (or nobody, after a reboot, which thaws
everything) must learn what a dead agent froze, which epoch was last, and how the last freeze
ended.  So it is written *before* the first FIFREEZE of a freeze and after every change.

Keep the state directory on tmpfs (default ``/run/pyqga``): writing to a filesystem that is
being frozen would block the agent.

Reading treats the file as untrusted input: opened with ``O_NOFOLLOW``, only a regular file,
at most :data:`MAX_SIZE` bytes, every field validated (:func:`.snapshot.parse_snapshot`);
anything else is :class:`~.snapshot.CorruptState`, never a crash.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pyqga.agent.freeze.snapshot import CorruptState

DEFAULT_STATEDIR = "/run/pyqga"
STATE_FILE = "pyqga.state"
MAX_SIZE = 1 << 20


class StateFile:
    """The state store port's real implementation (tests use an in-memory one)."""

    def __init__(self, statedir: str | os.PathLike[str], name: str = STATE_FILE) -> None:
        self.directory: Path = Path(statedir)
        self.path: Path = self.directory / name

    def write(self, snapshot: Mapping[str, Any]) -> None:
        """Atomically: a temporary file, fsynced, renamed over the old one, directory fsynced;
        a reader sees the old state or the new one, never half of one."""
        data = json.dumps(snapshot, sort_keys=True, allow_nan=False).encode() + b"\n"
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self.directory / f".{self.path.name}.{os.urandom(6).hex()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        _fsync_dir(self.directory)

    def read(self) -> dict[str, Any] | None:
        """The snapshot, or None when there is no state file; CorruptState when it is not ours."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise CorruptState(f"cannot open {self.path}: {e.strerror}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise CorruptState(f"{self.path} is not a regular file")
            raw = os.read(fd, MAX_SIZE + 1)
        except OSError as e:
            raise CorruptState(f"cannot read {self.path}: {e.strerror}") from None
        finally:
            os.close(fd)
        if len(raw) > MAX_SIZE:
            raise CorruptState(f"{self.path} is larger than {MAX_SIZE} bytes")
        try:
            value = json.loads(raw)
        except ValueError as e:
            raise CorruptState(f"{self.path} is not valid JSON: {e}") from None
        if not isinstance(value, dict):
            raise CorruptState(f"{self.path} is not a JSON object")
        return value


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
