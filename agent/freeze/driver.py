"""The driver around the freeze state machine: threads, ioctls, the state file, hooks, the keeper.

:class:`.machine.FreezeCore` owns every piece of freeze state and decides; this
module only performs its actions and feeds the results back as events:

- kernel calls (FIFREEZE, FITHAW until EINVAL, syncfs) and hooks run on threads of their own,
  so a FIFREEZE that never returns blocks nothing: not the host's thaw, not the deadline, not a
  worker a command needs;
- the state file and the keeper's message are written inline, in the order the core asks, so
  "frozen" is on disk and known to the keeper before the first FIFREEZE;
- after every event the derived things follow the state: the log file is held in memory while
  anything is frozen, the deadline watcher wakes at the core's next deadline, and queries read
  a published view without taking a lock (they answer at once during a long freeze).

The same class runs inside the keeper process (:mod:`pyqga.agent.keeper`) with an inline runner
(no threads): there the agent has died, and the keeper's only job is the core's safety thaw.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Protocol

from pyqga.agent.freeze.hooks import HookResult, run_hook
from pyqga.agent.freeze.kernel import FLUSH_THRESHOLD, Kernel, LinuxKernel, flush, strerror, thaw_fully
from pyqga.agent.freeze.machine import Clock, FreezeCore
from pyqga.agent.freeze.mounts import resolve_device
from pyqga.agent.freeze.snapshot import CorruptState, parse_snapshot
from pyqga.agent.freeze.vocabulary import (
    Action,
    AgentDied,
    DeadlineCheck,
    Event,
    Exit,
    Flush,
    FlushDone,
    FreezeDone,
    FreezeRequested,
    FreezeSb,
    HookAction,
    HookDone,
    KeeperRestarted,
    Log,
    Persist,
    Persisted,
    PersistFailed,
    Reply,
    Restored,
    RunHook,
    StopRequested,
    Target,
    ThawDone,
    ThawRequested,
    ThawResults,
    ThawSbs,
)
from pyqga.protocol.errors import AgentError, ErrorKind

if TYPE_CHECKING:  # the keeper imports this module: it needs neither planning nor the log switch
    from pyqga.agent.freeze.planner import FreezePlanner
    from pyqga.agent.logs import LogControl

Runner = Callable[[Callable[[], None], str], None]   # (job, label): run it now or later
HookRunner = Callable[[str, HookAction, float], HookResult]
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def run_on_thread(job: Callable[[], None], label: str) -> None:
    """Each kernel call or hook on a thread of its own: one that hangs holds only itself."""
    threading.Thread(target=job, name=f"pyqga {label}"[:60], daemon=True).start()


def run_inline(job: Callable[[], None], label: str) -> None:
    job()


class SystemClock:
    """The machine's clock port on the real clocks."""

    @staticmethod
    def monotonic() -> float:
        return time.monotonic()

    @staticmethod
    def time() -> float:
        return time.time()

    @staticmethod
    def local_time(at: float) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


class Store(Protocol):
    def write(self, snapshot: Mapping[str, Any]) -> None: ...
    def read(self) -> dict[str, Any] | None: ...


class KeeperPort(Protocol):
    """The agent's handle on its keeper process (:class:`pyqga.agent.keeper.handle.KeeperHandle`)."""

    def wait_for_previous(self) -> bool: ...
    def ensure_started(self) -> None: ...
    def send(self, snapshot: Mapping[str, Any]) -> None: ...
    def stop(self) -> None: ...


class Freezer:
    """The agent's freeze commands: plan in the caller's thread, then let the core decide."""

    def __init__(self, *, planner: FreezePlanner | None = None, kernel: Kernel | None = None,
                 store: Store | None = None, keeper: KeeperPort | None = None, hook: str | None = None,
                 hook_timeout: float = 60.0, default_timeout: float | None = 600.0,
                 on_agent_death: str = "thaw", log: logging.Logger | None = None,
                 logs: LogControl | None = None, clock: Clock | None = None,
                 runner: Runner = run_on_thread, hook_runner: HookRunner = run_hook) -> None:
        self.kernel: Kernel = kernel or (planner.kernel if planner else LinuxKernel())
        self.planner = planner  # None in the keeper, which only ever thaws what it was told
        self.store = store
        self.keeper = keeper
        self.hook = hook
        self.hook_timeout = hook_timeout
        self.on_agent_death = on_agent_death
        self.log: logging.Logger = log or logging.getLogger("pyqga.agent")
        self.logs = logs
        self.clock: Clock = clock or SystemClock()
        self.runner = runner
        self.hook_runner = hook_runner
        self.core: FreezeCore = FreezeCore(self.clock, default_timeout, hook is not None)
        self._lock = threading.RLock()
        self._queue: deque[Event] = deque()
        self._processing = False
        self._replies: dict[int, Future[tuple[Any, AgentError | None]]] = {}
        self._rids = itertools.count(1)
        self._wake = threading.Condition()
        self._idle = threading.Condition()  # notified when the core has no op in progress
        self._deadline: float | None = None
        self._stopping = False
        self.exited: threading.Event = threading.Event()
        self.view: dict[str, Any] = self.core.info()
        self.frozen: bool = False
        # The log starts held (LogControl does): until the state file is read, a log file on a
        # filesystem a dead agent left frozen would block the first line.
        self._holding_logs = logs is not None and logs.holding

    # --- life cycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Take over what an earlier agent left, then start the deadline watcher.  Called once
        the pid file is ours and before serving (threads do not survive the fork of -d)."""
        self.restore()
        self._wait_idle()
        threading.Thread(target=self._watch_deadline, name="pyqga-deadline", daemon=True).start()

    def restore(self) -> None:
        """Feed the state file to the core (the thaw it may start runs through the runner)."""
        try:
            self._restore()
        finally:
            with self._lock:
                self._sync()  # releases the log held since start-up unless we are frozen

    def _restore(self) -> None:
        if self.store is None:
            return
        if self.keeper is not None and not self.keeper.wait_for_previous():
            self.log.error("an earlier agent's freeze guard is still at work; going on without it")
        try:
            snapshot = self.store.read()
        except CorruptState as exc:
            self._restore_corrupt(str(exc))
            return
        if snapshot is None:
            return
        try:
            state = parse_snapshot(snapshot)
        except CorruptState as exc:
            self._restore_corrupt(str(exc))
            return
        self.feed(Restored(state, thaw=self.on_agent_death == "thaw",
                            detail="an earlier agent died frozen; thawed at start"))

    def _restore_corrupt(self, why: str) -> None:
        """We cannot know what a dead agent froze: the safe reading is "possibly everything"."""
        if self.on_agent_death != "thaw":
            self.log.error("the freeze state file is corrupt (%s); starting thawed, as "
                           "--on-agent-death stay keeps what it cannot read", why)
            return
        self.log.error("the freeze state file is corrupt (%s): a freeze may still hold; thawing every "
                       "selected filesystem", why)
        try:
            count = self.thaw()
        except AgentError as exc:
            self.log.error("thaw at start failed: %s", exc)
            return
        self.log.warning("thawed %d filesystem(s) at start", count)

    def prestart_keeper(self) -> None:
        """Start the keeper ahead of the first freeze (it costs a Python start-up, ~1.5 s in a
        TCG guest), so the first freeze does not wait for it.  Failure is retried at freeze."""
        if self.keeper is None:
            return
        try:
            self.keeper.ensure_started()
        except OSError as exc:
            self.log.warning("could not start the freeze guard yet: %s", exc)

    def shutdown(self, timeout: float = 30.0) -> None:
        """The agent is exiting on a signal: thaw what we froze, then let the keeper go.  What
        could not be thawed stays in the keeper's hands (it sees our pipe close)."""
        self.feed(StopRequested())
        if not self.exited.wait(timeout):
            self.log.error("thaw on exit did not finish within %g s; the guard takes over", timeout)
        self._stopping = True
        with self._wake:
            self._wake.notify_all()
        if self.keeper is not None:
            self.keeper.stop()

    # --- requests (from worker threads; they block until the core answers) ----------------------

    def freeze(self, mountpoints: Sequence[str] | None = None, timeout: Any = None) -> int:
        """Freeze all (filtered) filesystems, or exactly ``mountpoints``; return the count."""
        count: int = self._wait(self.submit_freeze(mountpoints, timeout))
        return count

    def thaw(self, epoch: int | None = None) -> int:
        """Thaw every selected frozen filesystem, whoever froze it (qemu-ga); the count.  With
        ``epoch``: a FREEZE_LOST error (after thawing) if that freeze did not hold until now."""
        count: int = self._wait(self.submit_thaw(epoch))
        return count

    def submit_freeze(self, mountpoints: Sequence[str] | None = None,
                      timeout: Any = None) -> Future[tuple[Any, AgentError | None]]:
        """:meth:`freeze` without waiting: planning errors raise, the rest is the future's."""
        assert self.planner is not None, "a freezer without a planner only thaws"
        plan = self.planner.plan_all() if mountpoints is None else self.planner.plan_list(mountpoints)
        if self.keeper is not None:
            try:
                self.keeper.ensure_started()
            except OSError as exc:
                raise AgentError(ErrorKind.COMMAND_FAILED,
                                 f"cannot start the freeze guard, refusing to freeze: {exc}") from None
        rid = next(self._rids)
        flush_first = bool(plan) and self.kernel.dirty_bytes() >= FLUSH_THRESHOLD
        return self._submit(rid, FreezeRequested(rid, self.planner.waves(plan), timeout, flush_first))

    def submit_thaw(self, epoch: int | None = None) -> Future[tuple[Any, AgentError | None]]:
        assert self.planner is not None, "a freezer without a planner only thaws what it was told"
        rid = next(self._rids)
        return self._submit(rid, ThawRequested(rid, self.planner.thaw_targets(), epoch))

    def _submit(self, rid: int, event: Event) -> Future[tuple[Any, AgentError | None]]:
        future: Future[tuple[Any, AgentError | None]] = Future()
        self._replies[rid] = future
        self.feed(event)
        return future

    @staticmethod
    def _wait(future: Future[tuple[Any, AgentError | None]]) -> Any:
        result, error = future.result()
        if error is not None:
            raise error
        return result

    # --- queries (lock-free: the view is replaced whole after every event) ----------------------

    @property
    def status(self) -> str:
        status: str = self.view["status"]
        return status

    def info(self) -> dict[str, Any]:
        return dict(self.view)

    # --- the event loop ------------------------------------------------------------------------

    def feed(self, event: Event) -> None:
        """Hand ``event`` to the core and perform what it asks.  Re-entrant: an inline runner
        feeds results while actions are being performed; they are queued and taken in order."""
        with self._lock:
            self._queue.append(event)
            if self._processing:
                return
            self._processing = True
            try:
                while self._queue:
                    self._run(self.core.handle(self._queue.popleft()))
            finally:
                self._processing = False

    def _run(self, actions: list[Action]) -> None:
        self._sync()  # before the actions: the log is held before the first FIFREEZE goes out
        for action in actions:
            try:
                self._perform(action)
            except Exception:  # our bug; the safety net goes on with the next action
                self.log.exception("performing %r failed", action)

    def _sync(self) -> None:
        """Bring what is derived from the core's state up to date."""
        self.frozen = self.core.frozen
        self.view = self.core.info()
        if self.logs is not None and self.frozen != self._holding_logs:
            self._holding_logs = self.frozen
            if self.frozen:
                self.logs.hold()
            else:
                self.logs.release()
        if self.core.op is None:
            with self._idle:
                self._idle.notify_all()
        deadline = self.core.deadline_mono
        if deadline != self._deadline:
            with self._wake:
                self._deadline = deadline
                self._wake.notify_all()

    def _perform(self, action: Action) -> None:
        if isinstance(action, Reply):
            future = self._replies.pop(action.rid, None)
            if future is not None:
                future.set_result((action.result, action.error))
        elif isinstance(action, Log):
            self.log.log(LEVELS.get(action.level, logging.INFO), "%s", action.message)
        elif isinstance(action, Persist):
            self._persist(action)
        elif isinstance(action, FreezeSb):
            target = action.target
            self.runner(lambda: self.feed(self._freeze_one(target)),
                        f"freeze {target.device[0]}:{target.device[1]} op={action.op}")
        elif isinstance(action, ThawSbs):
            targets = action.targets
            devices = ",".join(f"{t.device[0]}:{t.device[1]}" for t in targets)
            label = f"thaw {devices} {action.reason.value} op={action.op}"
            self.runner(lambda: self._thaw_all(targets), label)
        elif isinstance(action, Flush):
            flush_op = action
            self.runner(lambda: self._flush(flush_op), "flush")
        elif isinstance(action, RunHook):
            hook_op = action
            self.runner(lambda: self.feed(self._run_hook(hook_op)), f"hook {action.action}")
        elif isinstance(action, Exit):
            self.exited.set()

    def _persist(self, action: Persist) -> None:
        """State file, then keeper; a required write (before a freeze) reports back, others log."""
        error = None
        if self.store is not None:
            try:
                self.store.write(action.snapshot)
            except (OSError, ValueError) as exc:
                error = f"cannot write the freeze state file: {exc}"
        if self.keeper is not None:  # even when the file failed: the keeper is the other record
            try:
                self.keeper.send(action.snapshot)
            except OSError as exc:
                error = error or f"the freeze guard is gone: {exc}"
        if action.op is not None:
            self._queue.append(Persisted(action.op, error))
        elif error is not None:
            self.log.error("%s (the freeze state goes on in memory)", error)
            self._queue.append(PersistFailed(error))

    def _freeze_one(self, target: Target) -> FreezeDone:
        try:
            self.kernel.freeze(target.path)
        except OSError as exc:
            return FreezeDone(target.device, exc.errno or -1, strerror(exc))
        except Exception as exc:  # reported as a failure, so the freeze rolls back
            return FreezeDone(target.device, -1, f"{type(exc).__name__}: {exc}")
        return FreezeDone(target.device)

    def _thaw_all(self, targets: Sequence[Target]) -> None:
        """FITHAW until EINVAL on each target, in order, through a mount point that still
        belongs to its superblock (mounts may have moved since the freeze)."""
        paths: dict[tuple[int, int], dict[str, str]] | None = None
        results = []
        for target in targets:
            path = target.path
            if self.kernel.device_of(path) != target.device:  # moved, or btrfs: ask the mount table
                paths = self._current_paths() if paths is None else paths
                path = paths.get(target.device, {}).get(target.path) or next(
                    iter(paths.get(target.device, {})), target.path)
            thawed, error = thaw_fully(self.kernel, path)
            results.append(ThawDone(target.device, thawed, error))
        self.feed(ThawResults(tuple(results)))

    def _current_paths(self) -> dict[tuple[int, int], dict[str, str]]:
        """Device -> its visible mount points now; empty when the mount table cannot be read."""
        try:
            mounts = self.kernel.mounts()
        except OSError as exc:
            self.log.warning("cannot read the mount table (%s); thawing by the recorded paths", exc)
            return {}
        paths: dict[tuple[int, int], dict[str, str]] = {}
        for mount in mounts:
            with contextlib.suppress(OSError):
                resolved = resolve_device(mount, self.kernel.block_device)
                if resolved is not None:
                    paths.setdefault(resolved.device, {})[mount.mountpoint] = mount.mountpoint
        return paths

    def _flush(self, action: Flush) -> None:
        failures = flush(self.kernel, [t.path for t in action.targets])
        for path, exc in failures.items():
            self.log.info("syncfs %s failed (the freeze flushes anyway): %s", path, strerror(exc))
        self.feed(FlushDone(action.op))

    def _run_hook(self, action: RunHook) -> HookDone:
        assert self.hook is not None
        result = self.hook_runner(self.hook, action.action, self.hook_timeout)
        self._log_hook(action.action, result)
        return HookDone(action.op, action.action, result.ran, result.ok, describe(result, self.hook_timeout))

    def _log_hook(self, action: str, result: HookResult) -> None:
        if not result.ran and result.error is None:
            self.log.debug("no fsfreeze hook at %s", self.hook)
            return
        level = logging.INFO if result.ok else logging.ERROR
        self.log.log(level, "fsfreeze hook %s %s: %s", self.hook, action, describe(result, self.hook_timeout))
        for line in result.output.splitlines()[-20:]:
            self.log.log(level, "  hook: %s", line)

    # --- deadline and keeper -------------------------------------------------------------------

    def _watch_deadline(self) -> None:
        """Send DeadlineCheck when the core's deadline passes (monotonic: immune to guest clock
        jumps after a snapshot resume)."""
        while not self._stopping:
            with self._wake:
                deadline = self._deadline
                if deadline is None:
                    self._wake.wait()
                    continue
                remaining = deadline - self.clock.monotonic()
                if remaining > 0:
                    self._wake.wait(remaining)
                    continue
            self.feed(DeadlineCheck())
            if self._deadline == deadline:  # nothing moved it: do not spin
                time.sleep(0.1)

    def keeper_died(self, detail: str) -> None:
        """The keeper watcher's report: restart it, re-send the state, say so."""
        assert self.keeper is not None
        try:
            self.keeper.ensure_started()
            with self._lock:
                self.keeper.send(self.core.snapshot())
        except OSError as exc:
            self.log.error("cannot restart the freeze guard: %s", exc)
        self.feed(KeeperRestarted(detail))

    def agent_died(self, detail: str) -> None:
        """In the keeper: the agent is gone; undo its freeze."""
        self.feed(AgentDied(detail))

    def _wait_idle(self, timeout: float = 30.0) -> None:
        """Until the thaw that :meth:`restore` may have started is over (it runs on the runner)."""
        with self._idle:
            self._idle.wait_for(lambda: self.core.op is None, timeout)


def describe(result: HookResult, timeout: float) -> str:
    if result.error is not None:
        return result.error
    if result.timed_out:
        return f"killed after the {timeout:g} s timeout"
    if result.returncode is not None and result.returncode < 0:
        return f"killed by signal {-result.returncode}"
    tail = result.output.strip().splitlines()[-1:] if result.output.strip() else []
    status = f"exit status {result.returncode} after {result.duration:.2f} s"
    return f"{status}: {tail[0]}" if tail and result.returncode else status
