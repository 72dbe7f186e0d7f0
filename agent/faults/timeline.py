"""The fault timeline: every event, in order, in memory and in a file in the state directory.

The file (``fault-events.jsonl``, one JSON object a line) outlives the agent: the keeper appends
what it ends after the agent died, and the next agent reads it back, so the host's cursor keeps
counting across restarts.  A cursor is the number of events before it.  Lines are appended with
``O_APPEND`` in one write each (under ``PIPE_BUF``... in practice, a few hundred bytes), so the
agent and the keeper never interleave inside a line.

Worst case at start-up: the file is read up to :data:`MAX_FILE` bytes from its end and parsed
line by line; memory holds at most :data:`MAX_EVENTS` events (older ones fall off, and a cursor
before them gets what is left, with ``lost`` saying how many it missed).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections import deque
from typing import Any

from pyqga.agent.commands.kernel_files import read_optional

EVENTS_FILE = "fault-events.jsonl"
MAX_EVENTS = 10000
MAX_FILE = 16 << 20
BOOT_ID = "/proc/sys/kernel/random/boot_id"


def read_boot_id() -> str:
    return (read_optional(BOOT_ID) or "").strip()


def append_line(path: str, event: dict[str, Any]) -> None:
    """One event, one write: shared by the agent and the keeper."""
    data = json.dumps(event, sort_keys=True, allow_nan=False).encode() + b"\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


class Timeline:
    """The agent's view of the timeline; thread-safe."""

    def __init__(self, statedir: str) -> None:
        self.path: str = os.path.join(statedir, EVENTS_FILE)
        self._events: deque[dict[str, Any]] = deque(maxlen=MAX_EVENTS)
        self._count = 0   # events ever, the cursor after the last one
        self._lock = threading.Lock()

    def load(self) -> None:
        """Read what earlier agents and keepers wrote (a corrupt line is skipped)."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return
        try:
            size = os.fstat(fd).st_size
            os.lseek(fd, max(0, size - MAX_FILE), os.SEEK_SET)
            raw = os.read(fd, MAX_FILE)
        finally:
            os.close(fd)
        with self._lock:
            for line in raw.splitlines():
                with contextlib.suppress(ValueError):
                    value = json.loads(line)
                    if isinstance(value, dict):
                        self._events.append(value)
                        self._count += 1

    def append(self, event: dict[str, Any]) -> None:
        with self._lock:
            self._events.append(event)
            self._count += 1
        # The in-memory timeline still has it if the state directory is gone or full.
        with contextlib.suppress(OSError):
            append_line(self.path, event)

    def since(self, cursor: int) -> dict[str, Any]:
        """The events after ``cursor`` and the new cursor."""
        with self._lock:
            first = self._count - len(self._events)
            start = max(cursor, first) - first
            events = list(self._events)[start:] if cursor < self._count else []
            out: dict[str, Any] = {"events": events, "cursor": self._count}
            if cursor < first:
                out["lost"] = first - max(cursor, 0)
            return out
