"""The freeze guard: a separate process that undoes the agent's freeze if the agent dies.

This is the user-space form of "the freeze lives as long as a descriptor does": the agent holds
the write end of a pipe, the guard the read end.  The agent sends every state change as the
same snapshot it writes to the state file (:meth:`FreezeCore.snapshot`, one JSON line).  When
the agent dies by any means, SIGKILL included, the kernel closes its end and the guard reads
EOF at once; it then runs the freeze state machine itself, from the last snapshot, with
``AgentDied``: exactly the superblocks the agent froze are thawed (never a foreign freeze), the
state file records ``agent-death`` and the thaw hook runs if it is owed.  A clean exit while
thawed is EOF after a snapshot with nothing frozen.

The guard holds ``pyqga.guard.lock`` in the state directory while it lives, so a new agent
waits until it has finished before reading the state.  The agent watches the guard through a
pidfd and restarts it (saying so) if it dies; if both die together, the next agent's start
thaws under ``--on-agent-death thaw``.

The guard is started before any filesystem is frozen and imports everything it needs up front:
a frozen root must never be able to block it.  It answers one byte ``R`` when it is ready.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import pyqga
from pyqga.agent.freezer import Freezer, run_inline
from pyqga.agent.fsfreeze.core import CorruptState, Restored, parse_snapshot
from pyqga.agent.fsfreeze.kernel import LinuxKernel
from pyqga.agent.fsfreeze.statefile import StateFile, hold_guard_lock, wait_for_previous_guard

MAX_LINE = 1 << 20
# A Python start-up: ~0.2 s here, but tens of seconds in a busy TCG guest (measured 26 s).
START_TIMEOUT = 60.0


def guard(statedir: str, hook: str | None, hook_timeout: float) -> int:
    """Read the agent's pipe on stdin until EOF; then undo the agent's freeze if it held one."""
    hold_guard_lock(statedir)
    # Silent: its stderr may be a file on a filesystem it is about to thaw, and a write there
    # would block the one process that can thaw it.  What it did is in the state file.
    log = logging.getLogger("pyqga.guard")
    log.addHandler(logging.NullHandler())
    log.propagate = False
    freezer = Freezer(kernel=LinuxKernel(), store=StateFile(statedir), hook=hook, hook_timeout=hook_timeout,
                      default_timeout=None, log=log, runner=run_inline)
    os.write(1, b"R")
    last = read_snapshots(0)
    if last is None or not (last.get("superblocks") or last.get("hook-owed")):
        return 0
    try:
        state = parse_snapshot(last)
    except CorruptState:
        return 0  # the agent wrote it, so a bug of ours; the next start reads the state file itself
    freezer.feed(Restored(state))
    freezer.agent_died("the agent died; the guard thawed what it had frozen")
    return 0


def read_snapshots(fd: int) -> dict[str, Any] | None:
    """The last complete snapshot line before EOF (a line over MAX_LINE is dropped)."""
    last: dict[str, Any] | None = None
    buffer = b""
    while chunk := os.read(fd, 65536):
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            with contextlib.suppress(ValueError):
                value = json.loads(line)
                if isinstance(value, dict):
                    last = value
        if len(buffer) > MAX_LINE:
            buffer = b""
    return last


def main() -> int:
    # The agent's terminal or service manager signals the agent; the guard must outlive it.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    statedir, hook, hook_timeout = sys.argv[1], sys.argv[2] or None, float(sys.argv[3])
    return guard(statedir, hook, hook_timeout)


class GuardProcess:
    """The agent's handle on its guard: started once, sent every state, watched, restarted."""

    def __init__(self, statedir: str, hook: str | None, hook_timeout: float,
                 log: logging.Logger | None = None) -> None:
        self.args: list[str] = [statedir, hook or "", str(hook_timeout)]
        self.log: logging.Logger = log or logging.getLogger("pyqga.agent")
        self.process: subprocess.Popen[bytes] | None = None
        self.on_death: Callable[[str], None] | None = None
        self._starting = threading.Lock()
        self._sending = threading.Lock()
        self._stopped = False

    def wait_for_previous(self, timeout: float = 10.0) -> bool:
        """Wait until no guard of an earlier agent still works in our state directory (it
        holds the guard lock while it lives); True if none does."""
        return wait_for_previous_guard(self.args[0], timeout)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def ensure_started(self, timeout: float = START_TIMEOUT) -> None:
        """Start the guard (or restart a dead one) and wait until it is ready.

        Safe from several threads: the agent pre-starts it in the background, and a freeze
        that comes first waits for that start instead of starting a second guard."""
        with self._starting:
            if self.running:
                return
            self._stopped = False
            self._start(timeout)

    def _start(self, timeout: float) -> None:
        package_root = os.path.dirname(os.path.dirname(os.path.abspath(pyqga.__file__)))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
        process = subprocess.Popen(
            [sys.executable, "-B", "-m", "pyqga.agent.guard", *self.args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd="/", start_new_session=True,
        )
        assert process.stdout is not None
        # Wait for its "R" in select, not by polling: a start takes tens of seconds in a slow
        # guest, and a 5 ms poll cost that guest ~10% of a CPU meanwhile.
        deadline = time.monotonic() + timeout
        ready_fd = process.stdout.fileno()
        while (remaining := deadline - time.monotonic()) > 0:
            if not select.select([ready_fd], [], [], remaining)[0]:
                break  # timed out
            reply = os.read(ready_fd, 1)
            if reply == b"R":
                self.process = process
                self._watch(process)
                return
            if not reply:
                break  # it exited before it was ready
        self._reap(process)
        raise OSError("the freeze guard did not start")

    def _watch(self, process: subprocess.Popen[bytes]) -> None:
        """Notice the guard's death at once (pidfd), unless we stopped it ourselves."""
        try:
            pidfd = os.pidfd_open(process.pid)
        except (OSError, AttributeError):
            return  # an old kernel: the next freeze's ensure_started still notices

        def watch() -> None:
            try:
                select.select([pidfd], [], [])
            finally:
                os.close(pidfd)
            if self._stopped or self.process is not process:
                return
            status = process.wait()
            self.log.error("the freeze guard (pid %d) died with status %s", process.pid, status)
            if self.on_death is not None:
                self.on_death(f"pid {process.pid}, status {status}")

        threading.Thread(target=watch, name="pyqga-guard-watch", daemon=True).start()

    def send(self, snapshot: Mapping[str, Any]) -> None:
        """Tell the guard the state; an OSError if it is not there while something is frozen."""
        process = self.process
        if process is None or process.stdin is None or process.poll() is not None:
            if snapshot.get("superblocks") or snapshot.get("freeze"):
                raise OSError("the freeze guard is not running")
            return
        with self._sending:
            process.stdin.write(json.dumps(snapshot, sort_keys=True).encode() + b"\n")
            process.stdin.flush()

    def stop(self) -> None:
        """Close our end (the guard exits on EOF, thawing what the last snapshot still holds)."""
        self._stopped = True
        process, self.process = self.process, None
        if process is not None:
            self._reap(process)

    @staticmethod
    def _reap(process: subprocess.Popen[bytes]) -> None:
        with contextlib.suppress(OSError):
            if process.stdin is not None:
                process.stdin.close()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


if __name__ == "__main__":
    sys.exit(main())
