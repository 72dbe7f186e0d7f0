"""Where the CLI's output goes: results on stdout, progress on stderr and only on a terminal.

A verb's result is the agent's raw result as JSON (``--json``) or text for a human, on stdout,
so a pipe or a script gets results and nothing else.  Progress (what is under way and for how
long, such as a freeze whose hook runs for seconds) is a single status line on stderr, redrawn in
place, shown only when stderr is a terminal and erased before anything else is printed.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from pyqga.host_client.qmp import QMPConnection


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))


class Status:
    """The status line of one slow step; ``label`` may change while it runs, and ``timed``
    is False once the label counts the time itself."""

    def __init__(self, label: str) -> None:
        self.label: str = label
        self.timed: bool = True
        self.started: float = time.monotonic()


class Progress:
    """A spinner with the elapsed time on ``stream`` (stderr), only when it is a terminal.

    ``delay``: nothing is drawn for steps quicker than this, so fast verbs print no progress.
    """

    SPINNER = "|/-\\"

    def __init__(self, stream: TextIO | None = None, delay: float = 0.3, period: float = 0.1) -> None:
        self.stream: TextIO = stream if stream is not None else sys.stderr
        self.live: bool = _isatty(self.stream)
        self.delay: float = delay
        self.period: float = period
        self._lock = threading.Lock()
        self._drawn = False

    @contextmanager
    def running(self, label: str) -> Iterator[Status]:
        """Show ``label``, a spinner and the seconds so far until the body ends; then erase it."""
        status = Status(label)
        if not self.live:
            yield status
            return
        stop = threading.Event()
        drawer = threading.Thread(target=self._draw, args=(status, stop), daemon=True,
                                  name="pyqga-progress")
        drawer.start()
        try:
            yield status
        finally:
            stop.set()
            drawer.join()
            self.clear()

    def _draw(self, status: Status, stop: threading.Event) -> None:
        if stop.wait(self.delay):
            return
        turn = 0
        while not stop.is_set():
            elapsed = time.monotonic() - status.started
            suffix = f" ({elapsed:.1f} s)" if status.timed else ""
            self._write(f"\r{self.SPINNER[turn % 4]} {status.label}{suffix}\x1b[K")
            turn += 1
            stop.wait(self.period)

    def _write(self, text: str) -> None:
        with self._lock:
            try:
                self.stream.write(text)
                self.stream.flush()
            except (OSError, ValueError):   # a closed or broken terminal: progress is optional
                self.live = False
                return
            self._drawn = True

    def clear(self) -> None:
        """Erase the status line (before a result or an error is printed)."""
        with self._lock:
            if self._drawn:
                try:
                    self.stream.write("\r\x1b[K")
                    self.stream.flush()
                except (OSError, ValueError):
                    pass
                self._drawn = False


@dataclass(frozen=True, slots=True)
class Output:
    as_json: bool
    progress: Progress = field(default_factory=lambda: Progress())

    def show(self, data: Any, text: str | Callable[[], str]) -> None:
        """``data`` with ``--json``; otherwise ``text`` (a callable is called only then)."""
        self.progress.clear()
        if self.as_json:
            print_json(data)
            return
        line = text() if callable(text) else text
        if line:
            print(line, flush=True)


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def open_qmp(path: str, timeout: float) -> QMPConnection | None:
    """A QMP connection for a command that needs QEMU's monitor, or None after one error line.
    Imported here: qemu.qmp brings asyncio, which no other command needs (~50 ms at start)."""
    from pyqga.host_client.qmp import QMPConnection, QMPError, describe

    try:
        return QMPConnection(path, timeout=timeout)
    except (QMPError, OSError) as exc:
        print(f"pyqga: error: cannot talk to QMP at {path}: {describe(exc)}", file=sys.stderr)
        return None
