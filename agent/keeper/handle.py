"""The agent's handle on its keeper process: started once, sent every state, watched, restarted.

The keeper (:mod:`pyqga.agent.keeper.main`) is a process apart from the agent that undoes the
agent's freeze when the agent dies, or ends the agent (given its pid) when it holds a freeze past
its deadline without acting.  This side starts it before any filesystem is frozen (so a
frozen root cannot block its start), sends it every snapshot over its stdin, watches it through
a pidfd and restarts it, saying so, if it dies.  If agent and keeper die together, the next
agent's start thaws under ``--on-agent-death thaw``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import pyqga
from pyqga.agent.keeper.lock import wait_for_previous_keeper

MODULE = "pyqga.agent.keeper"   # what the keeper runs as (python -m), and how ps shows it
# A Python start-up: ~0.2 s here, but tens of seconds in a busy TCG guest (measured 26 s).
START_TIMEOUT = 60.0


class KeeperHandle:
    """The agent's side of its keeper (see the module docstring)."""

    def __init__(self, statedir: str, hook: str | None, hook_timeout: float,
                 log: logging.Logger | None = None) -> None:
        self.args: list[str] = [statedir, hook or "", str(hook_timeout)]
        self.log: logging.Logger = log or logging.getLogger("pyqga.agent")
        self.process: subprocess.Popen[bytes] | None = None
        self.on_death: Callable[[str], None] | None = None
        # Who sends state other than the freeze's (the faults' engine) to every new keeper: each
        # is called once the keeper is ready and sends its current snapshot itself, through
        # its own ordering (so an older snapshot cannot overtake it).
        self.resend: list[Callable[[], None]] = []
        self._starting = threading.Lock()
        self._sending = threading.Lock()
        self._stopped = False

    def wait_for_previous(self, timeout: float = 10.0) -> bool:
        """Wait until no keeper of an earlier agent still works in our state directory (it
        holds the keeper lock while it lives); True if none does."""
        return wait_for_previous_keeper(self.args[0], timeout)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def ensure_started(self, timeout: float = START_TIMEOUT) -> None:
        """Start the keeper (or restart a dead one) and wait until it is ready.

        Safe from several threads: the agent pre-starts it in the background, and a freeze
        that comes first waits for that start instead of starting a second keeper."""
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
            # Our pid last, read now (after the fork of -d): the keeper ends this process if it
            # holds a freeze past its deadline without acting.
            [sys.executable, "-B", "-m", MODULE, *self.args, str(os.getpid())],
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
                for resend in self.resend:
                    with contextlib.suppress(OSError):
                        resend()
                return
            if not reply:
                break  # it exited before it was ready
        self._reap(process)
        raise OSError("the freeze guard did not start")

    def _watch(self, process: subprocess.Popen[bytes]) -> None:
        """Notice the keeper's death at once (pidfd), unless we stopped it ourselves."""
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

        threading.Thread(target=watch, name="pyqga-keeper-watch", daemon=True).start()

    def send(self, snapshot: Mapping[str, Any]) -> None:
        """Tell the keeper the state; an OSError if it is not there while something is frozen."""
        process = self.process
        if process is None or process.stdin is None or process.poll() is not None:
            if snapshot.get("superblocks") or snapshot.get("freeze") or snapshot.get("leases"):
                raise OSError("the freeze guard is not running")
            return
        with self._sending:
            process.stdin.write(json.dumps(snapshot, sort_keys=True).encode() + b"\n")
            process.stdin.flush()

    def stop(self) -> None:
        """Close our end (the keeper exits on EOF, thawing what the last snapshot still holds)."""
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

