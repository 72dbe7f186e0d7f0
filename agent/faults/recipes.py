"""The steps a fault is made of, and the one function that runs a step.

A recipe step is JSON (``{"op": ..., ...}``) so that it can travel in the keeper's snapshot: the
keeper undoes a lease by running its undo steps here, without knowing its kind.  Steps:

=============  =========================================  ======================================
op             does                                       as an undo step, when already undone
=============  =========================================  ======================================
freeze path    FIFREEZE the filesystem at ``path``        (apply only)
thaw path      FITHAW it                                  EINVAL (not frozen): done
fill path      create ``path`` (new), grow it until the   (apply only)
  free-bytes   filesystem has ``free-bytes`` available
unlink path    remove the fill file                       ENOENT: done
dm-table       load ``table`` into device ``name``, swap  the same table again: no change
  name table   it in (suspend without lockfs, resume)
dm-suspend     suspend ``name`` without flush or lockfs   (apply only)
dm-resume      resume ``name``                            resuming an active device: no-op
signal         a signal to ``pid`` if it still started    (undo: SIGCONT) a gone or reused pid:
  pid start    at ``start``                               left alone
nft-table      make nftables table ``inet TABLE`` that    (apply only; one nft transaction)
  table iface  drops what the rule names
  peers ports
  protocol
  direction
nft-delete     delete table ``inet TABLE``                no such table: done
  table
netem dev      ``tc qdisc add|replace`` ``dev``'s root:   (apply only)
  handle args  netem ``args`` under ``handle``
  mode
netem-remove   delete ``dev``'s root qdisc if it has      another handle, or no such
  dev handle   ``handle``; the kernel's default returns   interface: done
spawn worker   start a worker program (:mod:`.worker`)    (apply only)
  token args   and wait until it holds
reap token     SIGKILL every process whose command line   none left: done
               carries ``token``, wait until they are gone
clock-step     step CLOCK_REALTIME by ``offset-ns``       (apply only)
  offset-ns    (adjtimex ADJ_SETOFFSET)
clock-rate     set the kernel's clock rate (adjtimex      the same rate again: no change
  tick freq    tick and frequency)
clock-set      step CLOCK_REALTIME to true time: the      at true time: nothing to step;
  real-ns      reference plus CLOCK_MONOTONIC since       another boot (``boot`` differs):
  mono-ns      ``mono-ns`` (``raw-rate`` 0), or           nothing
  raw-ns       CLOCK_MONOTONIC_RAW since ``raw-ns``
  raw-rate     times ``raw-rate`` (:mod:`.timekeeping`)
  boot
=============  =========================================  ======================================

So every undo step is idempotent: the agent and the keeper may both run one, and the kernel ends
restored once.  :func:`undo_order` puts the steps that release waiting I/O (thaw, resume) first:
the others may wait on it.

Steps read back from a snapshot are untrusted: :func:`check_step` validates one (linear in its
size) before anything runs it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from pyqga.agent.errors import AgentFailure
from pyqga.agent.faults import dm, nettools, timekeeping
from pyqga.agent.faults.timeline import read_boot_id
from pyqga.agent.faults.vocabulary import SPAWN_WAIT
from pyqga.agent.faults.worker import TOKEN_FLAG
from pyqga.agent.freeze.ioctls import FsIoctl

# op -> its fields and their types
STEP_FIELDS: Mapping[str, Mapping[str, type]] = {
    "freeze": {"path": str},
    "thaw": {"path": str},
    "fill": {"path": str, "free-bytes": int},
    "unlink": {"path": str},
    "dm-table": {"name": str, "table": list},
    "dm-suspend": {"name": str},
    "dm-resume": {"name": str},
    "signal": {"pid": int, "start": int, "signal": int},
    "nft-table": {"table": str, "iface": str, "peers": list, "ports": list, "protocol": str,
                  "direction": str},
    "nft-delete": {"table": str},
    "netem": {"dev": str, "handle": str, "args": list, "mode": str},
    "netem-remove": {"dev": str, "handle": str},
    "spawn": {"worker": str, "token": str, "args": dict},
    "reap": {"token": str},
    "clock-step": {"offset-ns": int},
    "clock-rate": {"tick": int, "freq": int},
    "clock-set": {"real-ns": int, "mono-ns": int, "raw-ns": int, "raw-rate": float, "boot": str},
}
# Undo these first: other steps may wait on the I/O they hold (or on the CPU a hog takes).
RELEASES_IO = ("thaw", "dm-resume", "signal", "reap")
# A failed call of these changed nothing (one ioctl, kill(2) or adjtimex(2) that failed; nft -f is
# one transaction, a tc qdisc change one netlink request); the others do several things (a table
# load, suspend and resume; a create and allocations) and may have.
ATOMIC = ("freeze", "signal", "dm-suspend", "nft-table", "netem", "clock-step", "clock-rate")
MAX_TABLE_LINES = 65536
STOP_WAIT = 1.0   # how long a SIGSTOP step waits for the process to be stopped
REAP_WAIT = 2.0     # how long a reap step waits for its workers to be gone
WORKER_PROGRAM = os.path.join(os.path.dirname(os.path.abspath(__file__)), "worker.py")


class StepError(AgentFailure):
    """A step that is not one we write: unknown op, a missing or mistyped field."""


class FaultKernel(Protocol):
    """What the steps need of the kernel: the real one (:class:`LinuxFaultKernel`) and the
    model (``tests.rig.model_kernel.ModelFaultKernel``).  Undo methods report nothing: they
    succeed when the state is already the undone one."""

    def freeze(self, path: str) -> None: ...
    def thaw(self, path: str) -> None: ...
    def fill(self, path: str, free_bytes: int) -> None: ...
    def unlink(self, path: str) -> None: ...
    def dm_swap(self, name: str, table: list[dm.TableLine]) -> None: ...
    def dm_suspend(self, name: str) -> None: ...
    def dm_resume(self, name: str) -> None: ...
    def signal(self, pid: int, start: int, signum: int) -> None: ...
    def spawn(self, worker: str, token: str, args: Mapping[str, Any]) -> None: ...
    def reap(self, token: str) -> None: ...
    def nft_table(self, table: str, iface: str, peers: list[str], ports: list[str], protocol: str,
                  direction: str) -> None: ...
    def nft_delete(self, table: str) -> None: ...
    def netem(self, dev: str, handle: str, args: list[str], mode: str) -> None: ...
    def netem_remove(self, dev: str, handle: str) -> None: ...
    def clock_step(self, offset_ns: int) -> None: ...
    def clock_rate(self, tick: int, freq: int) -> None: ...
    def clock_set(self, ref: timekeeping.Reference, raw_rate: float, boot: str) -> None: ...


def check_step(step: Any) -> Mapping[str, Any]:
    """``step`` if it is well-formed, else :class:`StepError` naming what is wrong."""
    if not isinstance(step, Mapping):
        raise StepError("a step is not an object")
    fields = STEP_FIELDS.get(step.get("op"))  # type: ignore[arg-type]
    if fields is None:
        raise StepError(f"unknown step {str(step.get('op'))[:40]!r}")
    for name, kind in fields.items():
        value = step.get(name)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise StepError(f"step {step['op']}: {name} is not a {kind.__name__}")
    if step["op"] == "dm-table":
        table_lines(step["table"])
    _check_net(step)
    if step["op"] == "clock-set" and not (step["raw-rate"] == 0 or 0.5 < step["raw-rate"] < 1.5):
        raise StepError(f"step clock-set: raw-rate {step['raw-rate']!r} is out of range")   # tick: +-10 %
    return step


def _words(step: Mapping[str, Any], name: str, pattern: Any = None) -> None:
    words = step[name]
    if len(words) > nettools.MAX_ITEMS or not all(isinstance(w, str) and len(w) <= 64 for w in words):
        raise StepError(f"step {step['op']}: {name} is not a list of at most {nettools.MAX_ITEMS} words")
    if pattern is not None and not all(pattern.fullmatch(w) for w in words):
        raise StepError(f"step {step['op']}: {name} has a word netem does not take")


def _check_net(step: Mapping[str, Any]) -> None:
    """The network steps' fields beyond their types: names and words that nft and tc take as
    themselves, never as more syntax (a snapshot is read back from disk)."""
    op = step["op"]
    if op in ("nft-table", "nft-delete") and not nettools.TABLE_RE.fullmatch(step["table"]):
        raise StepError(f"step {op}: {step['table'][:40]!r} is not a pyqga table")
    if op == "nft-table":
        _words(step, "peers")
        _words(step, "ports")
        try:
            nettools.partition_script(step["table"], step["iface"], step["peers"], step["ports"],
                                      step["protocol"], step["direction"])
        except ValueError as e:
            raise StepError(f"step nft-table: {e}") from None
    if op in ("netem", "netem-remove") and not (nettools.IFACE_RE.fullmatch(step["dev"])
                                                and nettools.HANDLE_RE.fullmatch(step["handle"])):
        raise StepError(f"step {op}: bad interface or handle")
    if op == "netem":
        _words(step, "args", nettools.NETEM_WORD_RE)
        if step["mode"] not in nettools.MODES:
            raise StepError(f"step netem: mode {step['mode'][:20]!r}")


def table_lines(raw: list[Any]) -> list[dm.TableLine]:
    """A step's table (``[[start, length, type, params], ...]``) as dm lines, checked."""
    if not raw or len(raw) > MAX_TABLE_LINES:
        raise StepError(f"a table has {len(raw)} lines")
    lines = []
    for line in raw:
        if not (isinstance(line, list) and len(line) == 4
                and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in line[:2])
                and all(isinstance(s, str) for s in line[2:])):
            raise StepError(f"a table line is not [start, length, type, params]: {str(line)[:60]}")
        lines.append(dm.TableLine(line[0], line[1], line[2], line[3]))
    return lines


def table_step(name: str, lines: Iterable[dm.TableLine]) -> dict[str, Any]:
    """The dm-table step that makes ``lines`` live on ``name``."""
    return {"op": "dm-table", "name": name, "table": [list(line) for line in lines]}


def run_step(step: Mapping[str, Any], kernel: FaultKernel) -> None:
    """Run one (checked) step; an OSError or :class:`StepError` if it fails."""
    op = check_step(step)["op"]
    if op == "freeze":
        kernel.freeze(step["path"])
    elif op == "thaw":
        kernel.thaw(step["path"])
    elif op == "fill":
        kernel.fill(step["path"], step["free-bytes"])
    elif op == "unlink":
        kernel.unlink(step["path"])
    elif op == "dm-table":
        kernel.dm_swap(step["name"], table_lines(step["table"]))
    elif op == "dm-suspend":
        kernel.dm_suspend(step["name"])
    elif op == "signal":
        kernel.signal(step["pid"], step["start"], step["signal"])
    elif op == "spawn":
        kernel.spawn(step["worker"], step["token"], step["args"])
    elif op == "reap":
        kernel.reap(step["token"])
    elif op == "nft-table":
        kernel.nft_table(step["table"], step["iface"], step["peers"], step["ports"], step["protocol"],
                         step["direction"])
    elif op == "nft-delete":
        kernel.nft_delete(step["table"])
    elif op == "netem":
        kernel.netem(step["dev"], step["handle"], step["args"], step["mode"])
    elif op == "netem-remove":
        kernel.netem_remove(step["dev"], step["handle"])
    elif op == "clock-step":
        kernel.clock_step(step["offset-ns"])
    elif op == "clock-rate":
        kernel.clock_rate(step["tick"], step["freq"])
    elif op == "clock-set":
        ref = timekeeping.Reference(step["real-ns"], step["mono-ns"], step["raw-ns"])
        kernel.clock_set(ref, step["raw-rate"], step["boot"])
    else:
        kernel.dm_resume(step["name"])


def run_steps(steps: Sequence[Mapping[str, Any]], kernel: FaultKernel) -> tuple[str | None, bool]:
    """Run steps in order, stopping at the first failure: (its error or None, whether the kernel
    may have changed: False only when the first step failed and is one that changes nothing
    when it fails, :data:`ATOMIC`)."""
    for index, step in enumerate(steps):
        try:
            run_step(step, kernel)
        except Exception as e:
            return f"{step.get('op')}: {e}", index > 0 or step.get("op") not in ATOMIC
    return None, bool(steps)


def undo_order(steps: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """``steps`` with those that release held I/O first, each group in its given order."""
    steps = list(steps)
    first = [s for s in steps if s.get("op") in RELEASES_IO]
    return first + [s for s in steps if s.get("op") not in RELEASES_IO]


class LinuxFaultKernel:
    """The real kernel.  Nothing here imports lazily: the keeper runs it while a device stalls."""

    def __init__(self, ioctl: FsIoctl | None = None) -> None:
        self.ioctl: FsIoctl = ioctl or FsIoctl()

    def freeze(self, path: str) -> None:
        self.ioctl.freeze(path)

    def thaw(self, path: str) -> None:
        try:
            self.ioctl.thaw(path)
        except OSError as e:
            if e.errno != errno.EINVAL:   # EINVAL: not frozen, which is the undone state
                raise

    def fill(self, path: str, free_bytes: int) -> None:
        """Create ``path`` and allocate blocks to it until the filesystem's available space (what
        df shows; root may still use ext4's reserved blocks) is ``free_bytes`` or less."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            size = 0
            for _ in range(4):   # metadata blocks the allocation itself takes: a few passes
                fs = os.fstatvfs(fd)
                extra = fs.f_bavail * fs.f_frsize - free_bytes
                if extra <= 0:
                    break
                try:
                    os.posix_fallocate(fd, size, extra)
                except OSError as e:
                    if e.errno != errno.ENOSPC:
                        raise
                size = os.fstat(fd).st_size or size + extra
                size = max(size, os.fstat(fd).st_blocks * 512)
        finally:
            os.close(fd)

    def unlink(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

    def dm_swap(self, name: str, table: list[dm.TableLine]) -> None:
        dm.swap(name, table)

    def dm_suspend(self, name: str) -> None:
        dm.suspend(name, flush=False, lockfs=False)

    def dm_resume(self, name: str) -> None:
        dm.resume(name)

    def signal(self, pid: int, start: int, signum: int) -> None:
        """Signal ``pid`` if it is still the process that started at ``start``; a process that
        is gone, or a reused pid, is left alone (the undone state).  A SIGSTOP returns once the
        process is stopped (at most :data:`STOP_WAIT`), so a pause holds when inject returns."""
        if start_time(pid) != start:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)
        if signum == signal.SIGSTOP:
            end = time.monotonic() + STOP_WAIT
            while process_state(pid) not in ("T", "t", "", "Z", "X") and time.monotonic() < end:
                time.sleep(0.001)

    def nft_table(self, table: str, iface: str, peers: list[str], ports: list[str], protocol: str,
                  direction: str) -> None:
        nettools.add_table(nettools.partition_script(table, iface, peers, ports, protocol, direction))

    def nft_delete(self, table: str) -> None:
        nettools.delete_table(table)

    def netem(self, dev: str, handle: str, args: list[str], mode: str) -> None:
        nettools.netem_add(dev, handle, args, mode)

    def netem_remove(self, dev: str, handle: str) -> None:
        nettools.netem_remove(dev, handle)

    def spawn(self, worker: str, token: str, args: Mapping[str, Any]) -> None:
        """Start the worker and return once it holds; StepError with its reason if it cannot.
        A worker left behind by a failure is the undo's (reap) to end."""
        command = [sys.executable, "-B", "-I", WORKER_PROGRAM, f"{TOKEN_FLAG}{token}", worker,
                   json.dumps(args)]
        try:
            done = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, cwd="/",
                                  timeout=SPAWN_WAIT, check=False)
        except subprocess.TimeoutExpired:
            raise StepError(f"worker {worker} did not hold within {SPAWN_WAIT:g} s") from None
        word = done.stdout.decode(errors="replace").strip()
        if done.returncode != 0 or not word.startswith("ready "):
            lines = (word or done.stderr.decode(errors="replace")).strip().splitlines()
            raise StepError(f"worker {worker}: {lines[-1] if lines else 'no reason given'}")

    def reap(self, token: str) -> None:
        """SIGKILL the workers of ``token`` (and a CPU hog's children, which carry it too) until
        none is left, at most :data:`REAP_WAIT`; StepError if one outlives that."""
        end = time.monotonic() + REAP_WAIT
        while pids := workers_of(token):
            for pid in pids:
                _kill_worker(pid, token)
            if time.monotonic() > end:
                raise StepError(f"workers {pids[:4]} of {token} outlived SIGKILL for {REAP_WAIT:g} s")
            time.sleep(0.005)

    def clock_step(self, offset_ns: int) -> None:
        timekeeping.step(offset_ns)

    def clock_rate(self, tick: int, freq: int) -> None:
        timekeeping.set_rate(timekeeping.Rate(tick, freq))

    def clock_set(self, ref: timekeeping.Reference, raw_rate: float, boot: str) -> None:
        """True time back, unless the reference is from another boot (its clocks restarted)."""
        if boot == read_boot_id():
            timekeeping.set_true_time(ref, raw_rate)


def workers_of(token: str) -> list[int]:
    """The live processes (not zombies) whose command line carries ``token``'s flag."""
    return [pid for pid in (int(name) for name in os.listdir("/proc") if name.isdigit())
            if _carries(pid, token) and process_state(pid) not in ("", "Z", "X")]


def _carries(pid: int, token: str) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f"{TOKEN_FLAG}{token}".encode() in f.read().split(b"\0")
    except OSError:
        return False


def _kill_worker(pid: int, token: str) -> None:
    """SIGKILL ``pid`` if it still is a worker of ``token``: through a pidfd taken before the
    second look at its command line, so a pid that a dead worker freed and another process took
    meanwhile is never signalled (as the signal step's start time does for process faults)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except OSError:   # no pidfd (a kernel before 5.3): a plain kill after the look
        if _carries(pid, token):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return
    try:
        if _carries(pid, token):
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(fd, signal.SIGKILL)
    finally:
        os.close(fd)


def _stat(pid: int) -> list[bytes] | None:
    """The fields of ``/proc/PID/stat`` after the command name (state first), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22), or None if it is gone."""
    fields = _stat(pid)
    return None if fields is None else int(fields[19])


def process_state(pid: int) -> str:
    """The process's state letter (T: stopped), "" if it is gone."""
    fields = _stat(pid)
    return "" if fields is None else fields[0].decode()
