"""The keeper process's own main (``python -m pyqga.agent.keeper``): undo the agent's freeze when
the agent dies.

This is the user-space form of "the freeze lives as long as a descriptor does": the agent holds
the write end of a pipe, the keeper the read end (its stdin).  The agent sends every state change
as the same snapshot it writes to the state file (:mod:`pyqga.agent.freeze.snapshot`, one JSON
line).  When the agent dies by any means, SIGKILL included, the kernel closes its end and the
keeper reads EOF at once; it then runs the freeze state machine itself, from the last snapshot,
with ``AgentDied``: exactly the superblocks the agent froze are thawed (never a foreign freeze),
the state file records ``agent-death`` and the thaw hook runs if it is owed.  A clean exit while
thawed is EOF after a snapshot with nothing frozen.

Everything it needs is imported here, up front, before it answers ``R`` (ready): it runs while
filesystems are frozen, and an import then could read a file on one of them and block the one
process that can thaw it.  Nothing below imports lazily.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
from typing import Any

from pyqga.agent.freeze.driver import Freezer, run_inline
from pyqga.agent.freeze.kernel import LinuxKernel
from pyqga.agent.freeze.snapshot import CorruptState, parse_snapshot
from pyqga.agent.freeze.statefile import StateFile
from pyqga.agent.freeze.vocabulary import Restored
from pyqga.agent.keeper.lock import hold_keeper_lock

MAX_LINE = 1 << 20


def keep(statedir: str, hook: str | None, hook_timeout: float) -> int:
    """Read the agent's pipe on stdin until EOF; then undo the agent's freeze if it held one."""
    hold_keeper_lock(statedir)
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
    """Arguments (from :class:`~pyqga.agent.keeper.handle.KeeperHandle`): the state directory,
    the hook ("" for none) and the hook's timeout in seconds."""
    # The agent's terminal or service manager signals the agent; the keeper must outlive it.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    statedir, hook, hook_timeout = sys.argv[1], sys.argv[2] or None, float(sys.argv[3])
    return keep(statedir, hook, hook_timeout)
