"""Logging that never blocks the agent on a frozen filesystem.

A write to a frozen filesystem sleeps until it is thawed; if the writer is the agent, nothing
thaws it.  So while filesystems are frozen, records bound for a log file are held in memory
(bounded: the oldest are dropped and counted) and written after the thaw.  stderr goes on, as
in qemu-ga (it is a pipe or a console, not a file we chose).
"""

from __future__ import annotations

import logging
import sys
import threading
from collections import deque

HELD_RECORDS = 10_000
FORMAT = "%(asctime)s pyqga-agent[%(process)d] %(levelname)s %(message)s"


class HoldableFileHandler(logging.FileHandler):
    """A file handler that can hold records in memory instead of writing them."""

    def __init__(self, filename: str, max_held: int = HELD_RECORDS) -> None:
        # delay: opened at the first line written, not before (creating it on a frozen
        # filesystem would block).
        super().__init__(filename, encoding="utf-8", delay=True)
        self._held: deque[logging.LogRecord] = deque(maxlen=max_held)
        self._holding = False
        self._dropped = 0
        self._hold_lock = threading.Lock()

    # Not named hold/release: logging.Handler.release() is its I/O lock's release, and
    # shadowing it leaves that lock held forever.
    @property
    def holding(self) -> bool:
        return self._holding

    def start_holding(self) -> None:
        with self._hold_lock:
            self._holding = True

    def stop_holding(self) -> None:
        """Write what was held (after the thaw), with a line saying how much was dropped."""
        with self._hold_lock:
            self._holding = False
            held, self._held = list(self._held), deque(maxlen=self._held.maxlen)
            dropped, self._dropped = self._dropped, 0
        if dropped:
            held.insert(0, logging.LogRecord("pyqga", logging.WARNING, __file__, 0,
                                             "%d log records dropped while frozen", (dropped,), None))
        self.acquire()  # the handler's I/O lock, so these lines do not interleave with others
        try:
            for record in held:
                super().emit(record)
        finally:
            self.release()

    def emit(self, record: logging.LogRecord) -> None:
        with self._hold_lock:
            if self._holding:
                if len(self._held) == self._held.maxlen:
                    self._dropped += 1
                record.msg, record.args = record.getMessage(), None  # args may change later
                self._held.append(record)
                return
        super().emit(record)


class LogControl:
    """The agent's logger and the switch the freeze path flips."""

    def __init__(self, logfile: str | None, verbose: bool, held: bool = False) -> None:
        root = logging.getLogger("pyqga")
        root.setLevel(logging.DEBUG if verbose else logging.INFO)
        self.file_handler = HoldableFileHandler(logfile) if logfile else None
        handler: logging.Handler = self.file_handler or logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(FORMAT))
        root.handlers[:] = [handler]
        root.propagate = False
        self.log = logging.getLogger("pyqga.agent")
        if held:
            self.hold()

    @property
    def holding(self) -> bool:
        return self.file_handler is not None and self.file_handler.holding

    def hold(self) -> None:
        if self.file_handler is not None:
            self.file_handler.start_holding()

    def release(self) -> None:
        if self.file_handler is not None:
            self.file_handler.stop_holding()
