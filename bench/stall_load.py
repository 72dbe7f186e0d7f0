"""The load ``bench/stall.py`` puts on its filesystems, and what it measures there.

- :class:`Probe`: a process per filesystem (stdlib only, ``python -I -c PROBE_SOURCE DIRECTORY``)
  that appends a small record every 1 ms and times every write, so the longest write
  overlapping a freeze is how long an application on that filesystem stalled; on request,
  right before a freeze, it fills its filesystem with dirty data.
- :class:`LineProcess`: how the bench talks to such a helper (and to the floor,
  ``bench/stall_floor.py``): a line in, a line out, stopped on exit.
- :class:`DirtyLimits`: the kernel's writeback limits (``vm.dirty_*``), raised for the run only
  if they would write that data back before the freeze.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

DIRTY_SYSCTLS = ("dirty_background_bytes", "dirty_background_ratio", "dirty_bytes", "dirty_ratio",
                 "dirty_expire_centisecs", "dirty_writeback_centisecs")
PROBE_PERIOD = 0.001  # one record per millisecond

# The probe, run as `python -I -c PROBE_SOURCE DIRECTORY` (stdlib only). Every 1 ms it appends a
# record to DIRECTORY/probe.log and times the write; writes slower than 0.5 ms are kept as
# (start, duration). Commands on stdin, one per line, each answered with one line on stdout:
# `fill BYTES` (replace DIRECTORY/dirty.bin with BYTES of new data, no sync), `mark` (forget the
# slow writes so far), `dump` (JSON: writes since the mark and the slow ones), `quit` (or EOF).
PROBE_SOURCE = r"""
import json, os, select, sys, time
directory = sys.argv[1]
probe = os.open(os.path.join(directory, "probe.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
data_path = os.path.join(directory, "dirty.bin")
chunk = memoryview(os.urandom(1 << 20))
clock, write = time.monotonic, os.write
slow, count, pending = [], 0, b""

def fill(size):
    start = clock()
    try:
        os.unlink(data_path)
    except FileNotFoundError:
        pass
    fd = os.open(data_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    left = size
    while left > 0:
        left -= write(fd, chunk[:min(left, len(chunk))])
    os.close(fd)  # no fsync: the data stays dirty in the page cache
    return clock() - start

def answer(text):
    os.write(1, text.encode() + b"\n")

def commands():
    global pending, slow, count
    data = os.read(0, 4096)
    if not data:
        sys.exit(0)
    pending += data
    while b"\n" in pending:
        line, _, pending = pending.partition(b"\n")
        word, _, arg = line.decode().partition(" ")
        if word == "fill":
            answer("filled %.6f" % fill(int(arg)))
        elif word == "mark":
            slow, count = [], 0
            answer("marked")
        elif word == "dump":
            answer(json.dumps({"count": count, "slow": slow}))
        elif word == "quit":
            sys.exit(0)
        else:
            answer("error unknown command " + word)
    return True

answer("ready")
due = clock()
while True:
    start = clock()
    write(probe, b"%.6f\n" % start)
    took = clock() - start
    count += 1
    if took > 0.0005:
        slow.append((start, took))
    due += %(period)r
    now = clock()
    if due < now - %(period)r:
        due = now  # fell behind (blocked): no burst of catch-up writes
    while True:
        wait = due - clock()
        ready, _, _ = select.select([0], [], [], max(wait, 0.0))
        if ready and commands():
            due = clock()
            continue
        if wait <= 0 or not ready:
            break
""".replace("%(period)r", repr(PROBE_PERIOD))


# --- probes -------------------------------------------------------------------------------------


class LineProcess:
    """A helper process spoken to in lines: one command on its stdin, one answer on its stdout.

    Started in a session of its own, so Ctrl-C reaches only the bench, whose cleanup stops it.
    """

    def __init__(self, name: str, argv: Sequence[str], cwd: Path | None = None) -> None:
        self.name = name
        self.process = subprocess.Popen(
            list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None,
            start_new_session=True, cwd=cwd,
        )
        self.pending = b""
        self.arrived = 0.0  # when the last chunk of output arrived
        self.expect("ready", 15.0)

    def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line.encode() + b"\n")
        self.process.stdin.flush()

    def readline(self, timeout: float) -> str:
        return self.timed_readline(timeout)[1]

    def timed_readline(self, timeout: float) -> tuple[float, str]:
        """(when the chunk that completed the line arrived, the line)."""
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self.pending:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError(f"{self.name} did not answer within {timeout:g} s")
            data = os.read(fd, 1 << 20)
            self.arrived = time.monotonic()
            if not data:
                raise RuntimeError(f"{self.name} exited ({self.process.poll()})")
            self.pending += data
        line, _, self.pending = self.pending.partition(b"\n")
        return self.arrived, line.decode()

    def expect(self, word: str, timeout: float) -> str:
        line = self.readline(timeout)
        if not line.startswith(word):
            raise RuntimeError(f"{self.name}: expected {word!r}, got {line!r}")
        return line

    def stop(self) -> None:
        """``quit``; SIGTERM if still there 3 s later, SIGKILL 3 s after that (a write blocked on
        a frozen filesystem only finishes after the thaw)."""
        with contextlib.suppress(OSError, ValueError):
            self.send("quit")
        for end in (self.process.terminate, self.process.kill):
            try:
                self.process.wait(3.0)
                return
            except subprocess.TimeoutExpired:
                end()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10.0)


class Probe(LineProcess):
    """One probe process writing to one filesystem (see PROBE_SOURCE)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        super().__init__(f"probe on {directory}", [sys.executable, "-I", "-c", PROBE_SOURCE, str(directory)])


def fill_all(probes: Sequence[Probe], size: int) -> float:
    """Every probe writes ``size`` bytes of new data, in parallel; returns the slowest fill."""
    for probe in probes:
        probe.send(f"fill {size}")
    return max(float(probe.expect("filled", 120.0).split()[1]) for probe in probes)


def mark_all(probes: Sequence[Probe]) -> None:
    for probe in probes:
        probe.send("mark")
    for probe in probes:
        probe.expect("marked", 10.0)


def longest_writes(probes: Sequence[Probe], start: float, end: float) -> tuple[list[float], int]:
    """Per probe, the longest write overlapping [start, end]; and how many writes were made."""
    for probe in probes:
        probe.send("dump")
    longest, writes = [], 0
    for probe in probes:
        report = json.loads(probe.readline(30.0))
        writes += report["count"]
        overlapping = [took for began, took in report["slow"] if began <= end and began + took >= start]
        longest.append(max(overlapping, default=0.0))
    return longest, writes


# --- dirty limits -------------------------------------------------------------------------------


def meminfo_kib(*keys: str) -> dict[str, int]:
    values = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in keys:
            values[name] = int(rest.split()[0])
    return values


class DirtyLimits:
    """Reads vm.dirty_*; raises the background/foreground limits for the run only if the dirty
    data of one freeze would otherwise start being written back before the freeze."""

    def __init__(self, needed_bytes: int) -> None:
        self.original = {name: int(self._path(name).read_text()) for name in DIRTY_SYSCTLS}
        self.needed = needed_bytes
        self.changed: dict[str, int] = {}
        self.applied: dict[str, int] = {}  # what apply() set, kept for the report after restore()

    @staticmethod
    def _path(name: str) -> Path:
        return Path("/proc/sys/vm") / name

    def background_threshold(self) -> int:
        """Roughly where background writeback starts (the kernel counts dirtyable memory,
        close to MemAvailable)."""
        if self.original["dirty_background_bytes"]:
            return self.original["dirty_background_bytes"]
        available = meminfo_kib("MemAvailable")["MemAvailable"] * 1024
        return available * self.original["dirty_background_ratio"] // 100

    def apply(self) -> None:
        # Twice the data, for margin: other work on the machine dirties pages too.
        if self.background_threshold() >= 2 * self.needed:
            return
        self.changed = {"dirty_bytes": 8 * self.needed, "dirty_background_bytes": 4 * self.needed}
        self.applied = dict(self.changed)
        for name, value in self.changed.items():
            self._path(name).write_text(str(value))

    def restore(self) -> None:
        if not self.changed:
            return
        for by_bytes, by_ratio in (("dirty_bytes", "dirty_ratio"),
                                   ("dirty_background_bytes", "dirty_background_ratio")):
            name = by_bytes if self.original[by_bytes] else by_ratio  # writing one zeroes the other
            self._path(name).write_text(str(self.original[name]))
        self.changed = {}

    def describe(self) -> str:
        now = ", ".join(f"{name} {value}" for name, value in self.original.items())
        threshold = self.background_threshold()
        if self.applied:
            return (f"vm.{now}; background writeback would start near {threshold / 1e6:,.0f} MB, "
                    f"below twice the {self.needed / 1e6:,.0f} MB of one freeze, so this run set "
                    + ", ".join(f"{k} {v}" for k, v in self.applied.items())
                    + " for its duration and restored the values after.")
        return (f"vm.{now}: background writeback starts near {threshold / 1e6:,.0f} MB of dirty "
                f"data, over twice the {self.needed / 1e6:,.0f} MB of one freeze, and the data is "
                "< 2 s old when frozen (expiry 30 s), so nothing was changed.")
