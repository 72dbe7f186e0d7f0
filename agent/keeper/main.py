"""The keeper process's own main (``python -m pyqga.agent.keeper``): undo the agent's freeze and
fault leases when the agent dies, or when it is alive but does not act by a deadline.

Fault leases (:mod:`.leases`) follow the freeze's rules below: the agent sends their snapshot on
the same pipe (``"of": "faults"``), the earliest lease deadline counts as the freeze's does, and
the keeper undoes them after the freeze's thaw (a frozen filesystem would block their undo).

This is the user-space form of "the freeze lives as long as a descriptor does": the agent holds
the write end of a pipe, the keeper the read end (its stdin).  The agent sends every state change
as the same snapshot it writes to the state file (:mod:`pyqga.agent.freeze.snapshot`, one JSON
line).  When the agent dies by any means, SIGKILL included, the kernel closes its end and the
keeper reads EOF at once; it then runs the freeze state machine itself, from the last snapshot,
with ``AgentDied``: exactly the superblocks the agent froze are thawed (never a foreign freeze),
the state file records ``agent-death`` and the thaw hook runs if it is owed.  A clean exit while
thawed is EOF after a snapshot with nothing frozen.

A hung agent (issue 20: stopped, in a debugger, deadlocked, a thread in D-state) keeps its pipe
open, so the keeper also reads with a timeout: the freeze's deadline on its own monotonic clock
plus a grace (:mod:`.deadline`).  If the latest snapshot still holds the freeze then, the keeper
SIGKILLs the agent through a pidfd taken at start (a reused pid is never hit) and thaws as on its
death, with reason ``timeout``.  Killing first, not thawing beside a live agent: a killed process
runs no more code, so it cannot start a freeze between the keeper's last read and its FITHAW.  It
waits at most :data:`END_WAIT` for the pipe to close (an agent thread in D-state on the frozen
filesystem exits only after the thaw), reads what the agent wrote before it died, thaws, and once
the agent is gone thaws again what a FIFREEZE still in the kernel may have frozen after that.
The service manager restarts the agent, which reads the state file as after any death.

Everything it needs is imported here, up front, before it answers ``R`` (ready): it runs while
filesystems are frozen, and an import then could read a file on one of them and block the one
process that can thaw it.  Nothing below imports lazily.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import logging
import os
import select
import signal
import sys
import time
from typing import Any

from pyqga.agent.faults.recipes import LinuxFaultKernel
from pyqga.agent.faults.vocabulary import EndReason
from pyqga.agent.freeze.driver import Freezer, run_inline
from pyqga.agent.freeze.kernel import LinuxKernel, thaw_fully
from pyqga.agent.freeze.snapshot import CorruptState, parse_snapshot
from pyqga.agent.freeze.statefile import StateFile
from pyqga.agent.freeze.vocabulary import Restored, ThawReason
from pyqga.agent.keeper.deadline import DeadlineWatch, Hung, Wait
from pyqga.agent.keeper.leases import end_leases
from pyqga.agent.keeper.lock import hold_keeper_lock

MAX_LINE = 1 << 20
END_WAIT = 0.2   # after SIGKILL, how long the keeper waits for the pipe to close before it thaws
DIED = "the agent died; the guard thawed what it had frozen"
HUNG = "the agent did not act by its deadline; the keeper ended it and thawed"
MCL_CURRENT, MCL_FUTURE = 1, 2   # <sys/mman.h>


class KeeperKernel(LinuxKernel):
    """The real kernel, remembering the paths whose first FITHAW found them not frozen: only
    there can a FIFREEZE that was still in the kernel have frozen something after the thaw."""

    def __init__(self) -> None:
        super().__init__()
        self.thawed: set[str] = set()
        self.not_frozen: set[str] = set()

    def thaw(self, path: str) -> None:
        try:
            super().thaw(path)
        except OSError as e:
            if e.errno == errno.EINVAL and path not in self.thawed:
                self.not_frozen.add(path)
            raise
        self.thawed.add(path)


class SnapshotPipe:
    """The agent's end of the story: snapshot lines on ``fd``, the last complete freeze snapshot
    and the last fault snapshot (``"of": "faults"``) kept (a line over MAX_LINE is dropped; a
    line that is not a JSON object is ignored)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.last: dict[str, Any] | None = None
        self.faults: dict[str, Any] | None = None
        self.closed = False
        self._buffer = b""

    def read(self, timeout: float | None) -> bool:
        """Wait up to ``timeout`` (None: for ever) for data, then take everything readable;
        False once the pipe is closed (the agent is gone)."""
        wait = timeout
        while not self.closed and select.select([self.fd], [], [], wait)[0]:
            chunk = os.read(self.fd, 65536)
            if not chunk:
                self.closed = True
                break
            self._take(chunk)
            wait = 0
        return not self.closed

    def _take(self, chunk: bytes) -> None:
        self._buffer += chunk
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            with contextlib.suppress(ValueError):
                value = json.loads(line)
                if isinstance(value, dict) and value.get("of") == "faults":
                    self.faults = value
                elif isinstance(value, dict):
                    self.last = value
        if len(self._buffer) > MAX_LINE:
            self._buffer = b""


def open_agent(pid: int | None) -> int | None:
    """A pidfd on the agent, which must be our parent (so the pidfd cannot name a reused pid);
    None without one (no pid given, an old kernel): the keeper then only acts on EOF."""
    if pid is None:
        return None
    try:
        pidfd = os.pidfd_open(pid)
    except (OSError, AttributeError):
        return None
    if os.getppid() != pid:  # it died before we opened it: the pid may be someone else's now
        os.close(pidfd)
        return None
    return pidfd


def keep(statedir: str, hook: str | None, hook_timeout: float, agent_pid: int | None = None) -> int:
    """Read the agent's pipe on stdin until EOF, or until the agent holds a freeze past its
    deadline; then undo the agent's freeze if it held one."""
    hold_keeper_lock(statedir)
    agent = open_agent(agent_pid)
    # Silent: its stderr may be a file on a filesystem it is about to thaw, and a write there
    # would block the one process that can thaw it.  What it did is in the state file.
    log = logging.getLogger("pyqga.guard")
    log.addHandler(logging.NullHandler())
    log.propagate = False
    kernel = KeeperKernel()
    faults = LinuxFaultKernel()
    freezer = Freezer(kernel=kernel, store=StateFile(statedir), hook=hook, hook_timeout=hook_timeout,
                      default_timeout=None, log=log, runner=run_inline)
    lock_memory()
    os.write(1, b"R")
    pipe, watch = SnapshotPipe(0), DeadlineWatch()
    while True:
        decision = watch.decide(time.monotonic()) if agent is not None else Wait(None)
        if isinstance(decision, Hung):
            break
        if not pipe.read(decision.seconds):
            thaw(freezer, pipe.last, ThawReason.AGENT_DEATH, DIED)
            end_leases(statedir, pipe.faults, EndReason.AGENT_DEATH, faults)
            return 0
        watch.seen(pipe.last, pipe.faults)
    assert agent is not None
    end_agent(agent, pipe)
    watch.seen(pipe.last, pipe.faults)
    hung = isinstance(watch.decide(time.monotonic()), Hung)
    if hung:
        thaw(freezer, pipe.last, ThawReason.TIMEOUT, HUNG)
    else:  # it acted after all (a new freeze, a thaw) before the kill took: an ordinary death
        thaw(freezer, pipe.last, ThawReason.AGENT_DEATH, DIED)
    end_leases(statedir, pipe.faults, EndReason.AGENT_HUNG if hung else EndReason.AGENT_DEATH, faults)
    select.select([agent], [], [])   # until it is gone: then no FIFREEZE of it is in the kernel
    for path in sorted(kernel.not_frozen):
        thaw_fully(kernel, path)
    pipe.read(0)   # its last words, if any came after the kill: an apply it had begun
    end_leases(statedir, pipe.faults, EndReason.AGENT_HUNG, faults, record=False)
    return 0


def lock_memory() -> bool:
    """Pin every page the keeper has and will have (mlockall): a thaw must never wait for a
    page-in from a disk, and the disk may be the very device that is frozen or stalled (swap,
    or the interpreter's own file-backed pages).  It costs the keeper ~4 MB of resident memory
    (the libraries' pages it would otherwise never touch).  Best effort: without CAP_IPC_LOCK and
    over RLIMIT_MEMLOCK it fails, and the keeper works as before."""
    libc = ctypes.CDLL(None, use_errno=True)
    return int(libc.mlockall(MCL_CURRENT | MCL_FUTURE)) == 0


def end_agent(agent: int, pipe: SnapshotPipe) -> None:
    """SIGKILL the hung agent, then read what it wrote before it died, waiting at most END_WAIT
    for its pipe to close (a thread in D-state on the frozen filesystem holds it open)."""
    with contextlib.suppress(ProcessLookupError):
        signal.pidfd_send_signal(agent, signal.SIGKILL)
    end = time.monotonic() + END_WAIT
    while (remaining := end - time.monotonic()) > 0 and pipe.read(remaining):
        pass
    pipe.read(0)


def thaw(freezer: Freezer, last: dict[str, Any] | None, reason: ThawReason, detail: str) -> None:
    """Undo the freeze ``last`` (the agent's last snapshot) holds, and its owed thaw hook."""
    if last is None or not (last.get("superblocks") or last.get("hook-owed")):
        return
    try:
        state = parse_snapshot(last)
    except CorruptState:
        return  # the agent wrote it, so a bug of ours; the next start reads the state file itself
    if reason is ThawReason.AGENT_DEATH:
        freezer.feed(Restored(state))
        freezer.agent_died(detail)
    else:  # thawed as it is restored: its deadline has passed, and the record must say why
        freezer.feed(Restored(state, thaw=True, detail=detail, reason=reason))


def main() -> int:
    """Arguments (from :class:`~pyqga.agent.keeper.handle.KeeperHandle`): the state directory,
    the hook ("" for none), the hook's timeout in seconds, and the agent's pid (our parent; without
    it the keeper acts only when the agent's pipe closes)."""
    # The agent's terminal or service manager signals the agent; the keeper must outlive it.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    statedir, hook, hook_timeout = sys.argv[1], sys.argv[2] or None, float(sys.argv[3])
    agent_pid = int(sys.argv[4]) if len(sys.argv) > 4 and sys.argv[4] else None
    return keep(statedir, hook, hook_timeout, agent_pid)
