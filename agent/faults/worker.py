"""A fault that needs a running process (a CPU hog, locked memory, a clock that jumps back and
forth) is a *worker*: this file, run as a program by the ``spawn`` recipe step, ended by the
``reap`` step.

    python3 -B -I .../worker.py --pyqga-worker=TOKEN NAME JSON-ARGS

Why a separate program and not a thread of the agent: the keeper must be able to end the fault
when the agent is hung or dead, and a process can be killed by anyone who finds it; a thread
dies with its agent only.  The keeper finds it by ``TOKEN`` in its command line (``reap``), so
the recipe, which is data, names the worker before it exists.

The program detaches twice (``spawn`` must not leave a zombie for the agent, and the keeper is
not its parent): the first process forks the worker, waits until the worker says it holds (its
memory locked, its threads running), prints ``ready PID`` and exits.  A worker that cannot set
itself up prints ``failed: WHY`` instead.

Standard library only, run with ``-I``: it starts in tens of milliseconds and imports nothing of
pyqga (whose package may be on a stalled disk; the worker never writes to a disk).  Every worker
raises its own ``oom_score_adj`` to 1000, so the kernel's OOM killer takes a worker before the
agent.  Workers are registered in :data:`WORKERS` by name; each takes its checked arguments (the
preparer checked them) and runs until it is killed.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

TOKEN_FLAG = "--pyqga-worker="


def _cpu_hog(args: dict[str, Any], ready: Callable[[], None]) -> None:
    """``processes`` busy loops, each busy ``percent`` of every ``period-ms``.  Processes, not
    threads: one CPython process runs one thread at a time.  Busy is counted in the process's
    own CPU time, not the wall clock's: on a loaded machine a loop timed by the wall clock is
    preempted inside its busy part and burns less than asked (a third less, 2x30 % measured
    beside two TCG guests on 2 CPUs); this one takes its share, stretching its period if it must."""
    period = args["period-ms"] / 1000.0
    busy = period * args["percent"] / 100.0
    for _ in range(args["processes"] - 1):
        if os.fork() == 0:
            # A child: loops below, killed by the same token (its command line is ours).  A
            # session of its own, as the first has: where the kernel groups the CPU time of a
            # session (sched_autogroup, on in Debian's kernels), N processes of one session
            # would take one process's share between them, not N.
            os.setsid()
            break
    else:
        ready()
    while True:
        start, used = time.monotonic(), time.process_time()
        while time.process_time() - used < busy:
            pass
        rest = period - (time.monotonic() - start)
        if rest > 0:
            time.sleep(rest)


def _memory(args: dict[str, Any], ready: Callable[[], None]) -> None:
    """``mib`` MiB of anonymous memory, locked.  mlockall(MCL_FUTURE) first: the kernel then
    allocates and locks every page of the mapping when it is made (private and writable, so
    real pages, not the shared zero page), far faster than touching each page from Python."""
    import ctypes
    import mmap

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mlockall(1 | 2) != 0:   # MCL_CURRENT | MCL_FUTURE
        raise OSError(ctypes.get_errno(), "mlockall: " + os.strerror(ctypes.get_errno()))
    area = mmap.mmap(-1, args["mib"] << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    ready()
    while area:   # held until the worker is killed
        time.sleep(3600)


def _clock_strobe(args: dict[str, Any], ready: Callable[[], None]) -> None:
    """The wall clock at true time plus ``offset-ns``, then at true time, every ``interval-ns``,
    on a CLOCK_MONOTONIC schedule (which the jumps do not move).  Each jump sets an absolute
    time from the reference (``real-ns`` at ``mono-ns``), so no error adds up, and a kill between
    two jumps leaves nothing the revert's clock-set does not put back."""
    real, mono, offset, interval = args["real-ns"], args["mono-ns"], args["offset-ns"], args["interval-ns"]
    due, up, first = time.monotonic_ns(), True, True
    while True:
        true = real + time.clock_gettime_ns(time.CLOCK_MONOTONIC) - mono
        time.clock_settime_ns(time.CLOCK_REALTIME, true + (offset if up else 0))
        if first:
            ready()
            first = False
        up = not up
        due += interval
        time.sleep(max(0, due - time.monotonic_ns()) / 1e9)


WORKERS: dict[str, Callable[[dict[str, Any], Callable[[], None]], None]] = {
    "cpu-hog": _cpu_hog,
    "memory": _memory,
    "clock-strobe": _clock_strobe,
}


def main(argv: list[str]) -> int:
    if len(argv) != 3 or not argv[0].startswith(TOKEN_FLAG) or argv[1] not in WORKERS:
        print(f"usage: worker.py {TOKEN_FLAG}TOKEN {{{','.join(WORKERS)}}} JSON", file=sys.stderr)
        return 2
    work, args = WORKERS[argv[1]], json.loads(argv[2])
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid:   # the first process: report the worker's word, then leave it to init
        os.close(write_end)
        # One read: the worker writes its word at once (under PIPE_BUF); a CPU hog's children
        # keep the pipe open, so do not wait for its end.  Empty: the worker died first.
        word = os.read(read_end, 4096).decode(errors="replace").strip()
        print(f"ready {pid}" if word == "ready" else f"failed: {word or 'the worker died'}", flush=True)
        return 0 if word == "ready" else 1
    os.close(read_end)
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)

    def ready() -> None:
        os.write(write_end, b"ready")
        os.close(write_end)

    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("1000")
        work(args, ready)
    except BaseException as e:   # the one place that reports why a worker failed
        with contextlib.suppress(OSError):
            os.write(write_end, f"{type(e).__name__}: {e}".encode()[:4000])
        os._exit(1)
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
