"""The pid file, locked for the agent's lifetime so a second instance refuses to start.

Root truncates and writes it, so it is opened with ``O_NOFOLLOW`` and must be a regular file: a
symbolic link planted in a writable directory would otherwise make the agent truncate its target.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat

from pyqga.agent.errors import AgentFailure


class PidFileError(AgentFailure):
    """Another agent holds the pid file, or it cannot be written."""


class PidFile:
    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None

    def check(self) -> None:
        """Fail early if another agent holds the pid file (before binding its channel, and
        before daemonizing: locks do not survive the fork, so :meth:`acquire` comes after).
        Writes nothing: the pid that belongs in the file is the daemon's, not ours."""
        os.close(self._lock())

    def acquire(self) -> None:
        fd = self._lock()
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def _lock(self) -> int:
        """The pid file, open and locked by this process (closing it drops the lock)."""
        try:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK,
                         0o644)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise PidFileError(f"pid file {self.path} is a symbolic link; remove it, or choose "
                                   "another -f") from None
            raise PidFileError(f"cannot open pid file {self.path}: {exc.strerror}") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise PidFileError(f"pid file {self.path} is not a regular file; remove it, or choose "
                               "another -f")
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            other = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise PidFileError(
                f"another agent (pid {other}) holds {self.path}; stop it or use another -f/-t"
            ) from None
        return fd

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        os.close(self._fd)
        self._fd = None
