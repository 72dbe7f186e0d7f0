"""An in-memory kernel, clock, state store, keeper and job runner for the freeze driver.

The model sits behind the same ports as the real thing (:class:`pyqga.agent.freeze.kernel.Kernel`,
the store, the keeper, the runner), so the stateful tests run the real core *and* the real
driver; only the kernel is imagined.  It models what matters to a freeze:

- superblocks with a freeze holder (``None``, ``"agent"`` or ``"foreign"``): FIFREEZE on a
  frozen one is EBUSY, FITHAW on a thawed one EINVAL, FIFREEZE on tmpfs EOPNOTSUPP;
- mount points, bind mounts (a second mount point of the same device) and a child mount;
- injected failures per device (EIO on FIFREEZE or FITHAW) and hangs: the runner holds jobs
  until the test runs them, so a FIFREEZE "hangs" for as long as the test leaves its job alone;
- every kernel transition is logged with the job that caused it, so the tests can check
  counts, "lost" and "safety thaws never undo a foreign freeze" against kernel truth.

:class:`ModelFaultKernel` does the same for the fault leases' recipes (filesystems to freeze and
fill, dm devices with tables), behind :class:`pyqga.agent.faults.recipes.FaultKernel`.
"""

from __future__ import annotations

import errno
import os
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pyqga.agent.faults import timekeeping
from pyqga.agent.faults.dm import TableLine
from pyqga.agent.freeze.driver import SystemClock
from pyqga.agent.freeze.hooks import HookResult
from pyqga.agent.freeze.mounts import Mount

Device = tuple[int, int]


@dataclass
class Transition:
    device: Device
    before: str | None
    after: str | None
    job: str            # the runner label of the job that did it, or "foreign"
    unheard: bool = False   # a foreign freeze whose EBUSY a dead agent never heard of


class ModelKernel:
    """Superblocks, mounts and freeze holders; thread-safe enough for one test thread."""

    def __init__(self, mounts: Mapping[str, tuple[Device, str]]) -> None:
        """``mounts``: mount point -> (device, fstype), in mount order."""
        self.table = dict(mounts)
        self.holder: dict[Device, str | None] = {dev: None for dev, _ in self.table.values()}
        self.fail_freeze: dict[Device, int] = {}
        self.fail_thaw: dict[Device, int] = {}
        self.log: list[Transition] = []
        self.job = "?"       # set by the runner while a job runs
        # Set while a dead agent's FIFREEZEs complete: nobody hears their result, so a keeper
        # cannot tell "EBUSY, someone else's" from "ours"; those devices are noted here.
        self.results_lost = False
        self.unheard_busy: set[Device] = set()
        # Runner tags of agents that started from a stale state file (its last write failed):
        # their start-up thaw works from what was last written, which may name a superblock
        # that turned out to be someone else's.  Documented; excused like an unheard EBUSY.
        self.stale_starts: set[str] = set()
        # FIFREEZEs issued and not yet returned.  The real kernel makes a FITHAW of such a
        # superblock wait for the FIFREEZE (s_umount): an agent that issues one can hang with it.
        self.in_flight: dict[Device, int] = {}
        self.may_block = False  # the keeper may: blocking until the freeze returns is its job

    def _device(self, path: str) -> tuple[Device, str]:
        if path not in self.table:
            raise OSError(errno.ENOENT, os.strerror(errno.ENOENT), path)
        return self.table[path]

    def _set(self, device: Device, holder: str | None, job: str) -> None:
        excused = device in self.unheard_busy or (
            " agent-death " in job and any(job.endswith(f"@{tag}") for tag in self.stale_starts))
        self.log.append(Transition(device, self.holder[device], holder, job, excused))
        self.holder[device] = holder
        if holder != "foreign":
            self.unheard_busy.discard(device)

    # --- the Kernel port ---------------------------------------------------------------------

    def freeze(self, path: str) -> None:
        device, fstype = self._device(path)
        if fstype == "tmpfs":
            raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP), path)
        if self.holder[device] is not None:  # before an injected EIO: freeze_super() says EBUSY first
            if self.results_lost:
                self.unheard_busy.add(device)
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), path)
        if device in self.fail_freeze:
            number = self.fail_freeze[device]
            raise OSError(number, os.strerror(number), path)
        self._set(device, "agent", self.job)

    def thaw(self, path: str) -> None:
        device, _ = self._device(path)
        if self.in_flight.get(device) and not self.may_block:
            raise AssertionError(f"FITHAW of {path} while its FIFREEZE is out would block the agent")
        if device in self.fail_thaw:
            number = self.fail_thaw[device]
            raise OSError(number, os.strerror(number), path)
        if self.holder[device] is None:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL), path)
        self._set(device, None, self.job)

    def syncfs(self, path: str) -> None:
        self._device(path)

    def mounts(self) -> list[Mount]:
        return [Mount(mountpoint=path, fstype=fstype, source=f"/dev/model{dev[1]}", major=dev[0],
                      minor=dev[1], mount_id=i + 1, parent_id=1)
                for i, (path, (dev, fstype)) in enumerate(self.table.items())]

    def block_device(self, source: str) -> Device | None:
        return None

    def device_of(self, path: str) -> Device | None:
        return self.table[path][0] if path in self.table else None

    def backing_files(self, mount: Mount) -> tuple[str, ...]:
        return ()

    def dirty_bytes(self) -> int:
        return 0

    # --- another tool ------------------------------------------------------------------------

    def foreign_freeze(self, device: Device) -> bool:
        if self.holder[device] is not None:
            return False
        self._set(device, "foreign", "foreign")
        return True

    def foreign_thaw(self, device: Device) -> bool:
        if self.holder[device] is None:
            return False
        self._set(device, None, "foreign")
        return True


class ModelClock:
    """The clock port with time that moves only when a test moves it (:meth:`advance`).
    ``local`` formats local time: the real format by default; a test that asserts on messages
    may pass a visible stand-in, so that where the port is used shows in the text."""

    def __init__(self, start: float = 1000.0, local: Callable[[float], str] = SystemClock.local_time) -> None:
        self.now = start
        self._local = local

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return 1_700_000_000.0 + self.now

    def local_time(self, at: float) -> str:
        return self._local(at)

    def advance(self, seconds: float) -> None:
        self.now += seconds


class MemoryStore:
    """The state file in memory; ``fail`` makes writes raise (ENOSPC)."""

    def __init__(self) -> None:
        self.snapshot: dict[str, Any] | None = None
        self.fail: OSError | None = None
        self.failed_ever = False
        self.stale = False     # the last write failed: what is stored is older than the state

    def write(self, snapshot: Mapping[str, Any]) -> None:
        if self.fail is not None:
            self.failed_ever = self.stale = True
            raise self.fail
        self.snapshot = dict(snapshot)
        self.stale = False

    def read(self) -> dict[str, Any] | None:
        return None if self.snapshot is None else dict(self.snapshot)


class ModelKeeper:
    """Keeps the last snapshot it was sent, as the keeper process does."""

    def __init__(self) -> None:
        self.last: dict[str, Any] | None = None
        self.alive = True

    def wait_for_previous(self) -> bool:
        return True

    def ensure_started(self) -> None:
        self.alive = True

    def send(self, snapshot: Mapping[str, Any]) -> None:
        if not self.alive:
            if snapshot.get("superblocks") or snapshot.get("freeze"):
                raise OSError(errno.EPIPE, "the model keeper is dead")
            return
        self.last = dict(snapshot)

    def stop(self) -> None:
        self.alive = False


@dataclass
class Job:
    label: str
    run: Callable[[], None]
    hung: bool = False

    @property
    def devices(self) -> list[Device]:
        words = self.label.split()
        if words[0] not in ("freeze", "thaw"):
            return []
        return [tuple(int(n) for n in part.split(":")) for part in words[1].split(",") if part]  # type: ignore[misc]


@dataclass
class ManualRunner:
    """The driver's runner: jobs wait here until the test runs them (or forever: a hang)."""

    kernel: ModelKernel
    tag: str = "agent"           # which process: labels say who did what across restarts
    jobs: list[Job] = field(default_factory=list)

    def __call__(self, job: Callable[[], None], label: str) -> None:
        entry = Job(f"{label} @{self.tag}", job)
        self.jobs.append(entry)
        if label.startswith("freeze"):
            for device in entry.devices:
                self.kernel.in_flight[device] = self.kernel.in_flight.get(device, 0) + 1

    def runnable(self) -> list[Job]:
        return [job for job in self.jobs if not job.hung]

    def run(self, job: Job) -> None:
        self.jobs.remove(job)
        if job.label.startswith("freeze"):
            for device in job.devices:
                self.kernel.in_flight[device] -= 1
        self.kernel.job = job.label
        try:
            job.run()
        finally:
            self.kernel.job = "?"

    def abandon(self) -> None:
        """The process died: its hung jobs never return."""
        for job in self.jobs:
            if job.label.startswith("freeze"):
                for device in job.devices:
                    self.kernel.in_flight[device] -= 1
        self.jobs.clear()

    def drain(self, limit: int = 1000) -> None:
        """Run every job that is not hung, and what those jobs start, until none is left."""
        for _ in range(limit):
            ready = self.runnable()
            if not ready:
                return
            self.run(ready[0])
        raise AssertionError("jobs keep coming: a loop in the driver or the core")


@dataclass
class ModelHooks:
    """The hook port: records what ran; ``fail_freeze`` makes the freeze hook fail."""

    calls: list[str] = field(default_factory=list)
    fail_freeze: bool = False

    def __call__(self, path: str, action: str, timeout: float) -> HookResult:
        self.calls.append(action)
        ok = not (action == "freeze" and self.fail_freeze)
        return HookResult(ran=True, returncode=0 if ok else 1, output="" if ok else "refused")


# --- the fault kernel ------------------------------------------------------------------------------

FAULT_OPS = ("freeze", "thaw", "fill", "unlink", "dm-table", "dm-suspend", "dm-resume", "signal",
             "nft-table", "nft-delete", "netem", "netem-remove", "spawn", "reap", "clock-step", "clock-rate",
             "clock-set")
DEFAULT_HANDLE = "0:"   # a root qdisc the kernel attached by itself
MODEL_BOOT = "model-boot"
MODEL_REAL_NS = 1_700_000_000 * 10**9   # the model clock's wall clock at its start


@dataclass
class Change:
    """One real change of the model fault kernel's state (a no-op undo logs none)."""

    op: str        # the recipe op that made it (a table swap that also resumes logs both)
    target: str    # the mount point, fill file or dm name
    job: str       # what the test said was running (``kernel.job``), e.g. "f1 apply"


@dataclass
class Failure:
    errno: int
    after: bool    # the change happens, then the call fails (a partial apply, a lost reply)


class ModelFaultKernel:
    """:class:`pyqga.agent.faults.recipes.FaultKernel` in memory, as the real one behaves:

    - filesystems by mount point, with bytes available: FIFREEZE of a frozen one is EBUSY, a
      thaw of a thawed one does nothing (the real port takes EINVAL as done); a fill creates its
      file (EEXIST if it is there) and takes the space down to ``free-bytes``; unlink gives it
      back, and does nothing if the file is gone;
    - dm devices with a live table, an inactive one and a suspended flag: a swap loads, suspends
      and resumes (so it also resumes a suspended device); suspend and resume are no-ops when the
      device already is so (dm-ioctl's do_suspend and do_resume);
    - creating or removing a file on a frozen filesystem would hang the caller for good: an
      AssertionError here, since no recipe may do it;
    - processes by pid, with their start time and whether they are stopped: a signal to a pid
      whose start time differs (a reused pid) or that is gone does nothing; SIGKILL and SIGTERM
      end it, SIGSTOP stops it, SIGCONT continues it;
    - nftables tables by name (a second table of the same name: EEXIST; deleting one that is not
      there does nothing, as the real port takes "no such table" as done) and each interface's
      root qdisc, (kind, handle, netem words): ``tc qdisc add`` over a root that is not the
      kernel's default is EEXIST, ``replace`` is not; deleting the root qdisc while it has the
      given handle brings the interface's default back, any other handle or a gone interface is
      left alone;
    - a clock (:attr:`mono_ns`, :attr:`raw_ns`, the wall clock as :attr:`wall_offset_ns` past
      CLOCK_MONOTONIC, the adjtimex :attr:`rate`): a step moves the wall clock only; a rate
      slews CLOCK_MONOTONIC and the wall clock together against CLOCK_MONOTONIC_RAW, as the
      kernel's frequency and tick do (:meth:`advance_clock`); ``clock-set`` of another boot does
      nothing;
    - :meth:`fail_next` makes the next call of an op raise OSError, before or after its change;
    - every real change is logged (:attr:`changes`) with :attr:`job`, so tests count them.
    """

    def __init__(self, filesystems: Mapping[str, int], devices: Mapping[str, list[TableLine]],
                 processes: Mapping[int, int] | None = None,
                 interfaces: Mapping[str, str] | None = None) -> None:
        """``filesystems``: mount point -> bytes available; ``devices``: dm name -> live table;
        ``processes``: pid -> start time; ``interfaces``: name -> its default root qdisc's kind."""
        self.processes = dict(processes or {})
        self.default_qdisc = dict(interfaces or {})
        self.qdisc: dict[str, tuple[str, str, tuple[str, ...]]] = {
            dev: (kind, DEFAULT_HANDLE, ()) for dev, kind in self.default_qdisc.items()}
        self.tables: dict[str, dict[str, Any]] = {}
        self.stopped: set[int] = set()
        self.free = dict(filesystems)
        self.frozen: set[str] = set()
        self.files: dict[str, int] = {}
        self.live = {name: tuple(table) for name, table in devices.items()}
        self.inactive: dict[str, tuple[TableLine, ...] | None] = {name: None for name in devices}
        self.suspended = {name: False for name in devices}
        self.workers: set[str] = set()   # the tokens of running workers
        self.mono_ns = self.raw_ns = 100 * 10**9
        self.wall_offset_ns = MODEL_REAL_NS - self.mono_ns
        self.rate = timekeeping.Rate(timekeeping.TICK_NOMINAL, 0)
        self.boot = MODEL_BOOT
        self.failures: dict[str, list[Failure]] = {}
        self.changes: list[Change] = []
        self.calls: list[tuple[str, str]] = []
        self.job = "?"

    # --- for tests ---------------------------------------------------------------------------

    def fail_next(self, op: str, number: int = errno.EIO, after: bool = False) -> None:
        """The next call of ``op`` (a recipe op name) raises OSError(``number``); ``after``: once
        its change is made."""
        assert op in FAULT_OPS, op
        self.failures.setdefault(op, []).append(Failure(number, after))

    def state(self) -> dict[str, Any]:
        """Everything a fault may change, by resource: ``fs:MOUNT`` and ``dm:NAME``."""
        out: dict[str, Any] = {}
        for mount, free in self.free.items():
            files = {path: size for path, size in self.files.items() if self._mount_of(path) == mount}
            out[f"fs:{mount}"] = (mount in self.frozen, free, tuple(sorted(files.items())))
        for name in self.live:
            out[f"dm:{name}"] = (self.live[name], self.inactive[name], self.suspended[name])
        for token in self.workers:
            out[f"worker:{token}"] = True
        for dev, root in self.qdisc.items():
            out[f"net:{dev}"] = root
        out["nft"] = tuple(sorted(self.tables))
        out["clock"] = (self.wall_offset_ns, self.rate)
        return out

    def advance_clock(self, seconds: float) -> None:
        """``seconds`` of the clocksource pass: CLOCK_MONOTONIC_RAW moves by them, CLOCK_MONOTONIC
        (and the wall clock with it) by them times the rate."""
        self.raw_ns += round(seconds * 1e9)
        self.mono_ns += round(seconds * 1e9 * timekeeping.rate_of(self.rate))

    def reference(self) -> timekeeping.Reference:
        """What :func:`timekeeping.reference` reads, from the model clock."""
        return timekeeping.Reference(self.mono_ns + self.wall_offset_ns, self.mono_ns, self.raw_ns)

    def count(self, op: str | None = None, job: str | None = None) -> int:
        return sum(1 for c in self.changes if (op is None or c.op == op) and (job is None or c.job == job))

    def clone(self) -> ModelFaultKernel:
        """The same state, no failures pending, an empty log."""
        twin = ModelFaultKernel(self.free, {name: list(table) for name, table in self.live.items()})
        twin.frozen, twin.files = set(self.frozen), dict(self.files)
        twin.inactive, twin.suspended = dict(self.inactive), dict(self.suspended)
        twin.workers = set(self.workers)
        twin.default_qdisc, twin.qdisc = dict(self.default_qdisc), dict(self.qdisc)
        twin.tables = dict(self.tables)
        twin.mono_ns, twin.raw_ns, twin.wall_offset_ns = self.mono_ns, self.raw_ns, self.wall_offset_ns
        twin.rate, twin.boot = self.rate, self.boot
        return twin

    # --- helpers -----------------------------------------------------------------------------

    def _enter(self, op: str, target: str) -> Failure | None:
        """Log the call; raise an injected failure that comes before the change, or return one
        that comes after it."""
        self.calls.append((op, target))
        queue = self.failures.get(op)
        failure = queue.pop(0) if queue else None
        if failure is not None and not failure.after:
            raise OSError(failure.errno, os.strerror(failure.errno), target)
        return failure

    @staticmethod
    def _leave(failure: Failure | None, target: str) -> None:
        if failure is not None:
            raise OSError(failure.errno, os.strerror(failure.errno), target)

    def _log(self, op: str, target: str) -> None:
        self.changes.append(Change(op, target, self.job))

    def _mount_of(self, path: str) -> str | None:
        """The mount point a path is on (the longest that contains it)."""
        inside = [mount for mount in self.free if path == mount or path.startswith(mount.rstrip("/") + "/")]
        return max(inside, key=len, default=None)

    def _writable(self, path: str) -> str:
        mount = self._mount_of(path)
        if mount is None:
            raise OSError(errno.ENOENT, os.strerror(errno.ENOENT), path)
        if mount in self.frozen:
            raise AssertionError(f"{path}: creating or removing a file on frozen {mount} waits for its thaw")
        return mount

    def _device(self, name: str) -> None:
        if name not in self.live:
            raise OSError(errno.ENXIO, os.strerror(errno.ENXIO), name)

    # --- the FaultKernel port ----------------------------------------------------------------

    def freeze(self, path: str) -> None:
        failure = self._enter("freeze", path)
        if path not in self.free:
            raise OSError(errno.ENOENT, os.strerror(errno.ENOENT), path)
        if path in self.frozen:
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), path)
        self.frozen.add(path)
        self._log("freeze", path)
        self._leave(failure, path)

    def thaw(self, path: str) -> None:
        failure = self._enter("thaw", path)
        if path not in self.free:
            raise OSError(errno.ENOENT, os.strerror(errno.ENOENT), path)
        if path in self.frozen:
            self.frozen.remove(path)
            self._log("thaw", path)
        self._leave(failure, path)

    def fill(self, path: str, free_bytes: int) -> None:
        failure = self._enter("fill", path)
        mount = self._writable(path)
        if path in self.files:
            raise OSError(errno.EEXIST, os.strerror(errno.EEXIST), path)
        size = max(0, self.free[mount] - free_bytes)
        self.files[path] = size
        self.free[mount] -= size
        self._log("fill", path)
        self._leave(failure, path)

    def unlink(self, path: str) -> None:
        failure = self._enter("unlink", path)
        if path in self.files:
            mount = self._writable(path)
            self.free[mount] += self.files.pop(path)
            self._log("unlink", path)
        self._leave(failure, path)

    def dm_swap(self, name: str, table: list[TableLine]) -> None:
        failure = self._enter("dm-table", name)
        self._device(name)
        self.inactive[name] = tuple(table)   # load
        self._resume(name)                   # suspend (a no-op if it is), resume: the swap
        self._leave(failure, name)

    def dm_suspend(self, name: str) -> None:
        failure = self._enter("dm-suspend", name)
        self._device(name)
        if not self.suspended[name]:
            self.suspended[name] = True
            self._log("dm-suspend", name)
        self._leave(failure, name)

    def dm_resume(self, name: str) -> None:
        failure = self._enter("dm-resume", name)
        self._device(name)
        self._resume(name)
        self._leave(failure, name)

    def signal(self, pid: int, start: int, signum: int) -> None:
        failure = self._enter("signal", str(pid))
        if self.processes.get(pid) == start:
            if signum in (signal.SIGKILL, signal.SIGTERM):
                del self.processes[pid]
                self.stopped.discard(pid)
                self._log("signal", f"{pid} ended")
            elif signum == signal.SIGSTOP and pid not in self.stopped:
                self.stopped.add(pid)
                self._log("signal", f"{pid} stopped")
            elif signum == signal.SIGCONT and pid in self.stopped:
                self.stopped.remove(pid)
                self._log("signal", f"{pid} continued")
        self._leave(failure, str(pid))

    def spawn(self, worker: str, token: str, args: Mapping[str, Any]) -> None:
        """A worker starts (EEXIST if one of that token runs: a recipe spawns each token once)."""
        failure = self._enter("spawn", token)
        if token in self.workers:
            raise OSError(errno.EEXIST, os.strerror(errno.EEXIST), token)
        self.workers.add(token)
        self._log("spawn", token)
        self._leave(failure, token)

    def reap(self, token: str) -> None:
        failure = self._enter("reap", token)
        if token in self.workers:
            self.workers.remove(token)
            self._log("reap", token)
        self._leave(failure, token)
    def nft_table(self, table: str, iface: str, peers: list[str], ports: list[str], protocol: str,
                  direction: str) -> None:
        failure = self._enter("nft-table", table)
        if table in self.tables:
            raise OSError(errno.EEXIST, os.strerror(errno.EEXIST), table)
        self.tables[table] = {"iface": iface, "peers": list(peers), "ports": list(ports),
                              "protocol": protocol, "direction": direction}
        self._log("nft-table", table)
        self._leave(failure, table)

    def nft_delete(self, table: str) -> None:
        failure = self._enter("nft-delete", table)
        if self.tables.pop(table, None) is not None:
            self._log("nft-delete", table)
        self._leave(failure, table)

    def netem(self, dev: str, handle: str, args: list[str], mode: str) -> None:
        failure = self._enter("netem", dev)
        if dev not in self.qdisc:
            raise OSError(errno.ENODEV, os.strerror(errno.ENODEV), dev)
        if mode == "add" and self.qdisc[dev][1] != DEFAULT_HANDLE:
            raise OSError(errno.EEXIST, os.strerror(errno.EEXIST), dev)
        self.qdisc[dev] = ("netem", f"{handle}:", tuple(args))
        self._log("netem", dev)
        self._leave(failure, dev)

    def netem_remove(self, dev: str, handle: str) -> None:
        failure = self._enter("netem-remove", dev)
        if dev in self.qdisc and self.qdisc[dev][1] == f"{handle}:":
            self.qdisc[dev] = (self.default_qdisc[dev], DEFAULT_HANDLE, ())
            self._log("netem-remove", dev)
        self._leave(failure, dev)

    def foreign_qdisc(self, dev: str, kind: str, handle: str) -> None:
        """Someone else sets ``dev``'s root qdisc (``tc qdisc replace``)."""
        self.qdisc[dev] = (kind, handle, ())

    def clock_step(self, offset_ns: int) -> None:
        failure = self._enter("clock-step", "clock")
        self.wall_offset_ns += offset_ns
        self._log("clock-step", "clock")
        self._leave(failure, "clock")

    def clock_rate(self, tick: int, freq: int) -> None:
        failure = self._enter("clock-rate", "clock")
        if not 9000 < tick < 11000:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL), "clock")
        if (tick, freq) != self.rate:
            self.rate = timekeeping.Rate(tick, freq)
            self._log("clock-rate", "clock")
        self._leave(failure, "clock")

    def clock_set(self, ref: timekeeping.Reference, raw_rate: float, boot: str) -> None:
        failure = self._enter("clock-set", "clock")
        if boot == self.boot:
            offset = timekeeping.true_offset_ns(ref, raw_rate, self.reference())
            if abs(offset) >= timekeeping.SETTLED_NS:
                self.wall_offset_ns += offset
                self._log("clock-set", "clock")
        self._leave(failure, "clock")

    def _resume(self, name: str) -> None:
        table = self.inactive[name]
        if table is not None:
            self.inactive[name] = None
            if table != self.live[name]:
                self.live[name] = table
                self._log("dm-table", name)
        if self.suspended[name]:
            self.suspended[name] = False
            self._log("dm-resume", name)
