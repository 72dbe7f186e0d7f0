"""The freeze guard: a separate process that thaws what the agent froze if the agent dies.

This is the user-space form of "the freeze lives as long as a descriptor does": the agent holds
the write end of a pipe, the guard the read end.  When the agent dies by any means, SIGKILL
included, the kernel closes its end and the guard reads EOF at once; if the agent had said
"frozen", the guard thaws those filesystems, records ``agent-death`` in the state directory,
runs the thaw hook, and exits.  A clean exit while thawed is just EOF after "thawed".

Protocol (agent -> guard, one JSON object per line):
``{"frozen": {"epoch": N, "mountpoints": [...]}}`` before the first FIFREEZE of a freeze, and
``{"thawed": N}`` after a thaw.  The guard answers one byte ``R`` on stdout when it is ready.

The guard is started before any filesystem is frozen and imports everything it needs up front:
a frozen root must never be able to block it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

from agent.fsfreeze import statefile
from agent.fsfreeze.hooks import run_hook
from agent.fsfreeze.ioctls import FsIoctl

MAX_THAWS = 64
MAX_LINE = 1 << 20


def thaw_fully(ioctl: FsIoctl, path: str) -> bool:
    """FITHAW until the kernel says it is not frozen; True if any thaw succeeded."""
    thawed = False
    for _ in range(MAX_THAWS):
        try:
            ioctl.thaw(path)
        except OSError:
            return thawed
        thawed = True
    return thawed


def guard(statedir: str, hook: str | None, hook_timeout: float) -> int:
    """Read the agent's pipe on stdin until EOF; then thaw if the agent died frozen."""
    ioctl = FsIoctl()
    frozen: dict[str, Any] | None = None
    os.write(1, b"R")
    buffer = b""
    while True:
        chunk = os.read(0, 65536)
        if not chunk:
            break
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            message = json.loads(line)
            if "frozen" in message:
                frozen = message["frozen"]
            elif "thawed" in message:
                frozen = None
        if len(buffer) > MAX_LINE:
            buffer = b""
    if frozen is None:
        return 0
    thawed = [path for path in frozen.get("mountpoints", []) if thaw_fully(ioctl, path)]
    statefile.record_thaw(statedir, frozen.get("epoch", 0), "agent-death",
                          f"the agent died; the guard thawed {len(thawed)} filesystem(s)")
    statefile.clear(statedir)
    if hook:
        run_hook(hook, "thaw", hook_timeout)
    return 0


def main() -> int:
    # The agent's terminal or service manager signals the agent; the guard must outlive it.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    statedir, hook, hook_timeout = sys.argv[1], sys.argv[2] or None, float(sys.argv[3])
    return guard(statedir, hook, hook_timeout)


class GuardProcess:
    """The agent's handle on its guard: started once, told about every freeze and thaw."""

    def __init__(self, statedir: str, hook: str | None, hook_timeout: float) -> None:
        self.args = [statedir, hook or "", str(hook_timeout)]
        self.process: subprocess.Popen[bytes] | None = None
        self._starting = threading.Lock()

    def ensure_started(self, timeout: float = 10.0) -> None:
        """Start the guard (or restart a dead one) and wait until it is ready.

        Safe from several threads: the agent pre-starts it in the background, and a freeze
        that comes first waits for that start instead of starting a second guard."""
        with self._starting:
            if self.process is not None and self.process.poll() is None:
                return
            self._start(timeout)

    def _start(self, timeout: float) -> None:
        package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
        self.process = subprocess.Popen(
            [sys.executable, "-B", "-m", "agent.guard", *self.args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd="/", start_new_session=True,
        )
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        os.set_blocking(self.process.stdout.fileno(), False)
        while time.monotonic() < deadline:
            with contextlib.suppress(BlockingIOError):
                if os.read(self.process.stdout.fileno(), 1) == b"R":
                    return
            if self.process.poll() is not None:
                break
            time.sleep(0.005)
        self.stop()
        raise OSError("the freeze guard did not start")

    def send(self, message: dict[str, Any]) -> None:
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.write(json.dumps(message).encode() + b"\n")
        self.process.stdin.flush()

    def stop(self) -> None:
        """Close our end (the guard exits on EOF) and reap it."""
        if self.process is None:
            return
        with contextlib.suppress(OSError):
            if self.process.stdin is not None:
                self.process.stdin.close()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None


if __name__ == "__main__":
    sys.exit(main())
