"""The keeper's lock: held by a live keeper, so that a new agent waits until it has finished.

A keeper that outlives its agent may still be thawing and writing the state file; the next
agent must read that file only after it is done.  The keeper takes the lock in the state
directory for its whole life (:func:`hold_keeper_lock`); the agent's handle waits for it to be
free before the agent restores its state (:func:`wait_for_previous_keeper`).
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

KEEPER_LOCK = "pyqga.guard.lock"   # the file keeps the name it had when the keeper was "the guard"


def wait_for_previous_keeper(statedir: str | os.PathLike[str], timeout: float = 10.0) -> bool:
    """Wait until no keeper of an earlier agent still works in ``statedir`` (it holds the lock
    while it lives); True if none does.  Then the state file says what that keeper left."""
    path = Path(statedir) / KEEPER_LOCK
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError:
        return True
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(fd, fcntl.LOCK_UN)
                return True
            except BlockingIOError:
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.02)
    finally:
        os.close(fd)


def hold_keeper_lock(statedir: str | os.PathLike[str]) -> int:
    """The keeper takes the lock for its whole life (the fd is never closed)."""
    Path(statedir).mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(Path(statedir) / KEEPER_LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd
