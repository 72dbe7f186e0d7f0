"""Logging that never blocks the agent on a frozen filesystem.

A write to a frozen filesystem sleeps until it is thawed; if the writer is the agent, nothing
thaws it.  So while filesystems are frozen, records bound for a log file are held in memory
(bounded: the oldest are dropped and counted) and written after the thaw.  stderr goes on, as
in qemu-ga (it is a pipe or a console, not a file we chose), except under systemd: there stderr
is the journal's socket, and journald itself may be stuck writing to a frozen ``/var/log``, so
those records are held too.  The journal has its own timestamps and pid, so records carry only
a syslog priority prefix (``<7>`` debug ... ``<3>`` error) that journald turns into the level.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections import deque
from typing import TextIO

HELD_RECORDS = 10_000
FORMAT = "%(asctime)s pyqga-agent[%(process)d] %(levelname)s %(message)s"
JOURNAL_FORMAT = "%(message)s"
# sd-daemon(3) prefixes: journald reads them as the record's priority.
_PRIORITIES = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


def journal_stream(stream_fd: int = 2, environ: dict[str, str] | None = None) -> bool:
    """Whether ``stream_fd`` is the journal's stream (systemd sets JOURNAL_STREAM=DEV:INODE)."""
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    try:
        device, inode = (int(part) for part in value.split(":"))
        st = os.fstat(stream_fd)
    except (ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == (device, inode)


class JournalFormatter(logging.Formatter):
    """``<priority>message``: no timestamp or pid, the journal records both."""

    def __init__(self) -> None:
        super().__init__(JOURNAL_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{_PRIORITIES.get(record.levelno, 6)}>"
        return prefix + super().format(record).replace("\n", "\n" + prefix)


class _Holding(logging.StreamHandler[TextIO]):
    """What both holdable handlers share: hold records in memory instead of writing them."""

    def _init_holding(self, max_held: int) -> None:
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


class HoldableFileHandler(_Holding, logging.FileHandler):
    """A file handler that can hold records in memory instead of writing them."""

    def __init__(self, filename: str, max_held: int = HELD_RECORDS) -> None:
        # delay: opened at the first line written, not before (creating it on a frozen
        # filesystem would block).
        logging.FileHandler.__init__(self, filename, encoding="utf-8", delay=True)
        self._init_holding(max_held)


class HoldableStreamHandler(_Holding):
    """stderr when it is the journal's stream."""

    def __init__(self, stream: TextIO | None = None, max_held: int = HELD_RECORDS) -> None:
        super().__init__(stream or sys.stderr)
        self._init_holding(max_held)


class LogControl:
    """The agent's logger and the switch the freeze path flips."""

    def __init__(self, logfile: str | None, verbose: bool, held: bool = False,
                 journal: bool | None = None) -> None:
        root = logging.getLogger("pyqga")
        root.setLevel(logging.DEBUG if verbose else logging.INFO)
        journal = journal_stream() if journal is None else journal
        self.journal: bool = journal and not logfile
        self.file_handler: _Holding | None = None
        if logfile:
            self.file_handler = HoldableFileHandler(logfile)
        elif self.journal:
            self.file_handler = HoldableStreamHandler()
        handler: logging.Handler = self.file_handler or logging.StreamHandler(sys.stderr)
        handler.setFormatter(JournalFormatter() if self.journal else logging.Formatter(FORMAT))
        root.handlers[:] = [handler]
        root.propagate = False
        self.log: logging.Logger = logging.getLogger("pyqga.agent")
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
