"""The floor ``bench/stall.py`` measures the agents against: a freezer that is only the ioctls.

    python -m bench.stall_floor MOUNTPOINT...    (bench/stall.py starts it; commands on stdin)

Why this is the floor: whatever freezes these filesystems has to FIFREEZE each of them (the
kernel then blocks that filesystem's writers, writes its dirty data back and commits its
journal) and later FITHAW it, and the writers stall for that. This process does that and
nothing else an agent does: no request to parse, no state kept or written, no look at the
mount table, no hooks, no pre-flush, no reply to build, no round trip before the thaw. It
freezes every filesystem at once (one thread each: the stall is one FIFREEZE long, not the sum
of four) and, as soon as the last FIFREEZE has returned, thaws them all at once the same way.
The mount points are opened once at start, so a freeze costs the ioctls, a thread start per
filesystem and two lines on a pipe. With dirty data it is a reference, not a bound: FIFREEZE blocks
writers while it writes the data back, so an agent that flushes first (syncfs, writers still
running) can stall them less.

Protocol, one line each way: ``ready`` once the mount points are open; ``freeze`` is answered
with ``frozen`` (or ``failed ERROR``) as soon as every FIFREEZE has returned, then ``thawed``
(or ``thaw failed ERROR``) once every FITHAW has; ``quit`` or end of input ends it.

Safety: it takes its mount points from the command line (``bench/stall.py`` passes its own
loop mounts only) and refuses ``/`` and anything that is not a mount point. It is never frozen
between requests: the thaw runs in a ``finally``, also when the answer cannot be written (the
bench is gone) or on SIGTERM (raised as SystemExit), after every FIFREEZE thread has returned,
so none lands after it. If it is killed outright, ``bench/stall.py``'s cleanup thaws every one
of its loop mounts anyway, on exit, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import fcntl
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence

from bench.stall_load import LineProcess
from pyqga.agent.freeze.ioctls import FIFREEZE, FITHAW, open_mountpoint
from tests.rig.paths import REPO_ROOT

# --- the freezer (its own process) --------------------------------------------------------------


def say(line: str) -> None:
    os.write(1, line.encode() + b"\n")


def ioctl_all(request: int, fds: Sequence[int], done: list[int]) -> list[OSError]:
    """``ioctl(fd, request)`` on every fd at once, one thread each, and wait for all of them.
    Each fd it worked on goes into ``done`` as soon as it has (the caller's ``finally`` thaws
    those); the errors are returned."""
    errors: list[OSError] = []

    def one(fd: int) -> None:
        try:
            fcntl.ioctl(fd, request)
        except OSError as e:
            errors.append(e)
        else:
            done.append(fd)

    threads = [threading.Thread(target=one, args=(fd,)) for fd in fds]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def freeze_then_thaw(fds: Sequence[int]) -> None:
    frozen: list[int] = []
    try:
        errors = ioctl_all(FIFREEZE, fds, frozen)
        say("failed " + str(errors[0]) if errors else "frozen")
    finally:
        for thread in threading.enumerate():  # interrupted: no FIFREEZE may land after the thaw
            if thread is not threading.current_thread():
                thread.join()
        errors = ioctl_all(FITHAW, frozen, [])
    say("thaw failed " + str(errors[0]) if errors else "thawed")


def on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str]) -> int:
    refused = [path for path in argv if os.path.realpath(path) == "/" or not os.path.ismount(path)]
    if not argv or refused:
        print(f"bench/stall_floor.py: needs mount points other than / (refused: {refused or 'none given'})",
              file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, on_sigterm)
    fds = [open_mountpoint(path) for path in argv]
    try:
        say("ready")
        for line in sys.stdin:
            command = line.strip()
            if command == "freeze":
                freeze_then_thaw(fds)
            elif command == "quit":
                break
            else:
                say(f"error: unknown command {command!r}")
    except BrokenPipeError:
        print("bench/stall_floor.py: nobody reads its answers any more; stopped (thawed)", file=sys.stderr)
        return 1
    return 0


# --- bench/stall.py's handle on it --------------------------------------------------------------


class MinimalFreezer(LineProcess):
    """The freezer process on ``mountpoints``, driven like an agent: a request, then the time
    its answers arrive."""

    def __init__(self, mountpoints: Sequence[str]) -> None:
        super().__init__("the minimal freezer", [sys.executable, "-m", "bench.stall_floor", *mountpoints],
                         cwd=REPO_ROOT)

    def freeze(self, timeout: float) -> tuple[float, float, float]:
        """One freeze and thaw: (request sent, ``frozen`` arrived, ``thawed`` arrived)."""
        sent = time.monotonic()
        self.send("freeze")
        frozen_at, frozen = self.timed_readline(timeout)
        thawed_at, thawed = self.timed_readline(timeout)
        if (frozen, thawed) != ("frozen", "thawed"):
            raise RuntimeError(f"the minimal freezer answered {frozen!r}, {thawed!r}")
        return sent, frozen_at, thawed_at


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
