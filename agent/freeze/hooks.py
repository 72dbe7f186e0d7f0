"""Run the fsfreeze hook (``HOOK freeze`` / ``HOOK thaw``) with a timeout.

qemu-ga waits for its hook forever, so a hung hook hangs the agent with the filesystems
frozen. Here the hook runs in its own process group and the whole group is killed at the
timeout. Outcomes are values, not exceptions: the command layer decides whether a failed
thaw hook matters (it must not stop a thaw), and a missing hook is simply "did not run".
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import stat
import subprocess
import time
from typing import NamedTuple

from pyqga.agent.freeze.vocabulary import HookAction

OUTPUT_LIMIT = 64 * 1024  # keep the tail: a hook's last words say why it failed



class HookResult(NamedTuple):
    """What happened. ``ran`` is False for a missing hook (fine) and for one that could not be
    started (``error`` says why). ``returncode`` is negative for a signal, None if not run."""

    ran: bool
    returncode: int | None = None
    output: str = ""
    timed_out: bool = False
    duration: float = 0.0
    error: str | None = None

    @property
    def ok(self) -> bool:
        """True if the hook succeeded or there is none."""
        if not self.ran:
            return self.error is None
        return self.returncode == 0 and not self.timed_out


class HookProblem(NamedTuple):
    """Why a hook cannot run; a ``missing`` one is skipped by freezes (so start-up only warns)."""

    message: str
    missing: bool = False


def hook_problem(path: str) -> HookProblem | None:
    """Whether ``path`` can run as the hook: the one check for start-up and for each freeze."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return HookProblem(f"hook {path} does not exist: freezes will run without a hook", missing=True)
    except OSError as e:
        return HookProblem(f"cannot use hook {path}: {e.strerror}")
    if not stat.S_ISREG(st.st_mode):
        return HookProblem(f"hook {path} is not a regular file")
    if not os.access(path, os.X_OK):
        return HookProblem(f"hook {path} is not executable; run 'chmod +x {path}'")
    return None


def run_hook(path: str, action: HookAction, timeout: float) -> HookResult:
    """Run ``path action`` with stdin from /dev/null, stdout+stderr captured (last 64 KiB)."""
    if action not in ("freeze", "thaw"):
        raise ValueError(f"hook action must be 'freeze' or 'thaw', not {action!r}")
    problem = hook_problem(path)
    if problem is not None:
        return HookResult(ran=False, error=None if problem.missing else problem.message)

    start = time.monotonic()
    try:
        proc = subprocess.Popen(
            [path, action],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so a timeout can kill all of it
            close_fds=True,
        )
    except OSError as e:
        return HookResult(ran=False, error=f"cannot run hook {path}: {e.strerror}")
    assert proc.stdout is not None
    output, timed_out = _collect(proc, start + timeout)
    proc.stdout.close()
    if timed_out:
        _kill_group(proc.pid)
    returncode = proc.wait()
    return HookResult(
        ran=True,
        returncode=returncode,
        output=output.decode("utf-8", errors="replace"),
        timed_out=timed_out,
        duration=time.monotonic() - start,
    )


def _collect(proc: subprocess.Popen[bytes], deadline: float) -> tuple[bytes, bool]:
    """Read output until the hook exits (or the deadline passes); return (tail, timed_out).

    Stops at the hook's exit even if a background child it left behind still holds the pipe:
    the hook's exit status is what counts, and waiting for EOF would wait for that child.
    """
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    os.set_blocking(fd, False)
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    buf = bytearray()
    eof = False
    while True:
        exited = proc.poll() is not None
        if eof or exited:
            buf += _drain(fd)
            return bytes(buf[-OUTPUT_LIMIT:]), False
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            buf += _drain(fd)
            return bytes(buf[-OUTPUT_LIMIT:]), True
        # Wake at least every 50 ms to notice an exit whose pipe is held open elsewhere.
        if poller.poll(min(remaining, 0.05) * 1000):
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                continue
            if not chunk:
                eof = True
                continue
            buf += chunk
            if len(buf) > 2 * OUTPUT_LIMIT:
                del buf[:-OUTPUT_LIMIT]


def _drain(fd: int) -> bytes:
    """What is already in the pipe, bounded: a left-behind child may keep writing forever."""
    data = bytearray()
    with contextlib.suppress(BlockingIOError, OSError):
        while len(data) < 4 * OUTPUT_LIMIT and (chunk := os.read(fd, 65536)):
            data += chunk
    return bytes(data)


def _kill_group(pgid: int) -> None:
    # The group id is the hook's pid (start_new_session). SIGKILL: a hook that ignored its
    # deadline gets no further chance to hold the filesystems frozen.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
