"""The freeze sequence around the engine: hooks, epochs, deadlines, the guard, the state files.

Order matters and is qemu-ga's, with our differences marked **we**:
1. make sure the guard process runs (**we**: it thaws if the agent dies while frozen; the
   agent pre-starts it once it serves, so the first freeze rarely waits for it);
2. run the freeze hook; its failure aborts, nothing frozen (and the thaw hook undoes it, **we**);
3. plan (**we**: a freeze-list is validated completely before anything is touched);
4. if there is much dirty data, flush every target in parallel with syncfs (**we**: shortens
   the stall, see bench/stall.py);
5. enter the frozen state *before* the first ioctl: new epoch, state file on tmpfs, the guard
   told, commands gated, the log file held in memory;
6. freeze (the engine rolls back on failure); if nothing was frozen, leave the frozen state;
7. the thaw hook runs whenever the freeze hook ran (**we**: qemu-ga skips it when the count is
   0 or the freeze failed, leaving applications quiesced).

Every freeze has an epoch (increasing across restarts) and a deadline (**we**: auto-thaw); a
thaw may name the epoch it expects, and is told if that freeze did not hold until now.

One freeze or thaw at a time: a second freeze while one runs is a BUSY error; a thaw waits for
a running freeze to finish.  Both run on worker threads, so the agent keeps answering.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from agent.config import Config
from agent.fsfreeze import statefile
from agent.fsfreeze.engine import FreezeEngine
from agent.fsfreeze.hooks import HookResult, run_hook
from agent.fsfreeze.mounts import Mount
from agent.guard import GuardProcess
from agent.logs import LogControl
from protocol.errors import AgentError, ErrorKind, command_failed, invalid_params

THAW_REASONS = ("request", "timeout", "signal", "agent-death", "external")
# Below this much dirty page cache the parallel syncfs pass costs more than it saves: each
# FIFREEZE flushes its own filesystem quickly anyway (bench/freeze.py, bench/stall.py).
FLUSH_THRESHOLD = 32 << 20
MEMINFO = "/proc/meminfo"


def dirty_bytes(meminfo: str = MEMINFO) -> int:
    """Dirty page cache waiting for writeback, system-wide (``Dirty:`` in /proc/meminfo)."""
    try:
        with open(meminfo, "rb") as handle:
            for line in handle:
                if line.startswith(b"Dirty:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return FLUSH_THRESHOLD  # unknown: flush, the safe side for the stall


@dataclass(frozen=True)
class FreezeRecord:
    """The freeze in force.  ``deadline_mono`` drives the timer (immune to guest clock jumps
    after a snapshot resume); ``deadline`` is the same instant in Unix time, for humans."""

    epoch: int
    frozen: tuple[dict[str, str], ...]
    frozen_at: float
    deadline: float | None = None
    deadline_mono: float | None = None

    @property
    def mountpoints(self) -> list[str]:
        return [entry["mountpoint"] for entry in self.frozen]


def describe_mounts(mounts: Sequence[Mount]) -> tuple[dict[str, str], ...]:
    return tuple({"mountpoint": m.mountpoint, "type": m.fstype, "device": m.source} for m in mounts)


class Freezer:
    def __init__(self, config: Config, log: logging.Logger, logs: LogControl | None = None,
                 engine: FreezeEngine | None = None) -> None:
        self.engine = engine or FreezeEngine(include=config.freeze_include, exclude=config.freeze_exclude)
        self.statedir = config.statedir
        self.hook = config.fsfreeze_hook
        self.hook_timeout = config.fsfreeze_hook_timeout
        self.default_timeout = config.freeze_timeout
        self.log = log
        self.logs = logs
        self.guard = GuardProcess(config.statedir, config.fsfreeze_hook, config.fsfreeze_hook_timeout) \
            if config.on_agent_death == "thaw" else None
        self.current: FreezeRecord | None = None
        self.busy = False
        self._lock = threading.Lock()      # one freeze or thaw at a time
        self._timer = threading.Condition()  # wakes the deadline watcher
        history = statefile.read_history(self.statedir)
        self.last_epoch = int(history.get("last_epoch", 0))
        self.last_thaw: dict[str, Any] | None = history.get("last_thaw")
        self._restore(statefile.read(self.statedir))

    def start(self) -> None:
        """Start the deadline watcher.  Not in __init__: threads do not survive the fork of -d."""
        threading.Thread(target=self._watch_deadlines, name="pyqga-deadline", daemon=True).start()

    def _restore(self, marker: dict[str, Any] | None) -> None:
        """A previous agent died frozen and nothing thawed: start frozen until a thaw."""
        if marker is None:
            return
        epoch = int(marker.get("epoch", self.last_epoch))
        mountpoints = [str(p) for p in marker.get("mountpoints", [])]
        deadline = marker.get("deadline")
        remaining = None if deadline is None else max(0.0, float(deadline) - time.time())
        self.current = FreezeRecord(
            epoch=epoch,
            frozen=tuple({"mountpoint": p, "type": "", "device": ""} for p in mountpoints),
            frozen_at=float(marker.get("time", time.time())),
            deadline=None if deadline is None else float(deadline),
            deadline_mono=None if remaining is None else time.monotonic() + remaining,
        )
        self.last_epoch = max(self.last_epoch, epoch)
        self.log.warning("state file in %s says freeze %d is in force (%s); only a thaw is allowed",
                         self.statedir, epoch, ", ".join(mountpoints) or "unknown mounts")

    # --- queries (lock-free: they must answer while a freeze is in progress) -----------------

    @property
    def frozen(self) -> bool:
        return self.current is not None

    @property
    def status(self) -> str:
        return "frozen" if self.current is not None else "thawed"

    def info(self) -> dict[str, Any]:
        current = self.current
        return {
            "status": "frozen" if current else "thawed",
            "epoch": current.epoch if current else self.last_epoch,
            "frozen": [dict(entry) for entry in current.frozen] if current else [],
            "frozen-at": current.frozen_at if current else None,
            "deadline": current.deadline if current else None,
            "in-progress": self.busy,
            "last-thaw": dict(self.last_thaw) if self.last_thaw else None,
        }

    # --- freeze ------------------------------------------------------------------------------

    def freeze(self, mountpoints: Sequence[str] | None = None, timeout: float | None = None) -> int:
        """Freeze all (filtered) filesystems, or exactly ``mountpoints``; return the count."""
        seconds = self._check_timeout(timeout)
        if not self._lock.acquire(blocking=False):
            raise AgentError(ErrorKind.BUSY, "a freeze or thaw is already in progress; try again later")
        self.busy = True
        try:
            if self.current is not None:
                raise command_failed(f"filesystems are already frozen (epoch {self.current.epoch}); "
                                     "thaw them first")
            self._start_guard()
            hook_ran = self._run_freeze_hook()
            try:
                plan = self.engine.plan_all() if mountpoints is None else self.engine.plan_list(mountpoints)
                if dirty_bytes() >= FLUSH_THRESHOLD:
                    self.engine.flush(plan)
                count = self._freeze_plan(plan, seconds)
            except BaseException:
                if hook_ran:
                    self._run_thaw_hook()
                raise
            if count == 0 and hook_ran:
                self._run_thaw_hook()
            return count
        finally:
            self.busy = False
            self._lock.release()

    def _check_timeout(self, timeout: float | None) -> float | None:
        """Seconds until auto-thaw, or None for never (0 means never, as --freeze-timeout 0)."""
        seconds = self.default_timeout if timeout is None else timeout
        if seconds < 0:
            raise invalid_params(f"timeout must be 0 (never) or a positive number of seconds, not {timeout}")
        return seconds or None

    def prestart_guard(self) -> None:
        """Start the guard ahead of the first freeze (it costs a Python start-up, ~1.5 s in a
        TCG guest), so the first freeze does not wait for it.  Failure is retried at freeze."""
        if self.guard is None:
            return
        try:
            self.guard.ensure_started()
        except OSError as exc:
            self.log.warning("could not start the freeze guard yet: %s", exc)

    def _start_guard(self) -> None:
        if self.guard is None:
            return
        try:
            self.guard.ensure_started()
        except OSError as exc:
            raise command_failed(f"cannot start the freeze guard, refusing to freeze: {exc}") from None

    def _freeze_plan(self, plan: Sequence[Mount], seconds: float | None) -> int:
        epoch = self.last_epoch + 1
        self._enter_frozen(epoch, plan, seconds)
        try:
            outcome = self.engine.freeze(plan)
        except BaseException as exc:
            self._leave_frozen()
            self.log.error("freeze %d failed, everything thawed again: %s", epoch, exc)
            raise
        for path, reason in outcome.skipped:
            self.log.info("not frozen: %s (%s)", path, reason)
        if outcome.count == 0:
            self._leave_frozen()
            self.log.info("froze nothing")
            return 0
        now, mono = time.time(), time.monotonic()
        with self._timer:
            self.current = FreezeRecord(
                epoch=epoch, frozen=describe_mounts(outcome.frozen), frozen_at=now,
                deadline=None if seconds is None else now + seconds,
                deadline_mono=None if seconds is None else mono + seconds,
            )
            self._timer.notify_all()
        self.log.info("freeze %d: froze %d filesystem(s): %s%s", epoch, outcome.count,
                      " ".join(m.mountpoint for m in outcome.frozen),
                      "" if seconds is None else f"; auto-thaw in {seconds:g} s")
        return outcome.count

    def _enter_frozen(self, epoch: int, plan: Sequence[Mount], seconds: float | None) -> None:
        now = time.time()
        record = FreezeRecord(epoch=epoch, frozen=describe_mounts(plan), frozen_at=now,
                              deadline=None if seconds is None else now + seconds)
        try:
            statefile.write_history(self.statedir, {"last_epoch": epoch, "last_thaw": self.last_thaw})
            statefile.mark_frozen(self.statedir, {"epoch": epoch, "mountpoints": record.mountpoints,
                                                  "deadline": record.deadline})
        except OSError as exc:
            raise command_failed(f"cannot write the frozen-state file in {self.statedir}: {exc}") from None
        self.last_epoch = epoch
        if self.guard is not None:
            try:
                self.guard.send({"frozen": {"epoch": epoch, "mountpoints": record.mountpoints}})
            except OSError as exc:
                statefile.clear(self.statedir)
                raise command_failed(f"the freeze guard is gone, refusing to freeze: {exc}") from None
        self.current = record
        if self.logs is not None:
            self.logs.hold()

    def _leave_frozen(self, reason: str | None = None, detail: str = "") -> None:
        """Back to thawed; ``reason`` records how a real freeze ended (None: it never began).

        The record comes first: whoever sees "thawed" must also see how the freeze ended."""
        ended = self.current
        if reason is not None and ended is not None:
            self.last_thaw = statefile.record_thaw(self.statedir, ended.epoch, reason, detail)
        with self._timer:
            self.current = None
            self._timer.notify_all()
        statefile.clear(self.statedir)
        if self.guard is not None:
            try:
                self.guard.send({"thawed": ended.epoch if ended else 0})
            except OSError:
                self.guard.stop()  # restarted at the next freeze
        if self.logs is not None:
            self.logs.release()

    # --- thaw --------------------------------------------------------------------------------

    def thaw(self, epoch: int | None = None, reason: str = "request") -> int:
        """Thaw everything selected (whoever froze it); return how many filesystems thawed.

        With ``epoch``: the thaw still happens, but if that freeze did not hold continuously
        until now, the reply is a FREEZE_LOST error saying how and when it ended.
        """
        with self._lock:
            self.busy = True
            try:
                lost_before = None if epoch is None else self._lost_before(epoch)
                count, lost_now = self._thaw_locked(reason)
            finally:
                self.busy = False
        lost = lost_before or (lost_now if epoch is not None else None)
        if lost is not None:
            raise AgentError(ErrorKind.FREEZE_LOST, lost,
                             {"thawed": count, "last-thaw": dict(self.last_thaw or {})})
        return count

    def _lost_before(self, epoch: int) -> str | None:
        """Why freeze ``epoch`` is not the one in force now, or None if it is."""
        if self.current is not None and self.current.epoch == epoch:
            return None
        last = self.last_thaw
        if last is not None and last.get("epoch") == epoch:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(last.get("at", 0))))
            detail = f" ({last['detail']})" if last.get("detail") else ""
            return f"freeze {epoch} did not hold: it ended at {when} by {last.get('reason')}{detail}"
        if self.current is not None:
            return f"freeze {epoch} is not the freeze in force (that is epoch {self.current.epoch})"
        return f"freeze {epoch} is unknown or long over (the last freeze was epoch {self.last_epoch})"

    def _thaw_locked(self, reason: str) -> tuple[int, str | None]:
        """Thaw with the lock held; return the count and, if our freeze had already been
        thawed by someone else, why it was lost."""
        current = self.current
        recorded = statefile.read(self.statedir) or {}
        also = current.mountpoints if current else recorded.get("mountpoints", [])
        report = self.engine.thaw_report(also=also)
        report.checked()  # a failure raises; we stay frozen so the host can try again
        lost = None
        if current is not None:
            missing = [p for p in current.mountpoints if p not in report.thawed]
            if missing:
                lost = (f"freeze {current.epoch} did not hold: {', '.join(missing)} had already "
                        "been thawed by someone else")
                reason = "external"
            self._leave_frozen(reason, lost or "")
        self.log.info("thawed %d filesystem(s) (%s)", report.count, reason)
        self._run_thaw_hook()
        return report.count, lost

    def _watch_deadlines(self) -> None:
        """Auto-thaw when the freeze in force passes its deadline."""
        while True:
            with self._timer:
                current = self.current
                if current is None or current.deadline_mono is None:
                    self._timer.wait()
                    continue
                remaining = current.deadline_mono - time.monotonic()
                if remaining > 0:
                    self._timer.wait(remaining)
                    continue
            self._expire(current.epoch)

    def _expire(self, epoch: int) -> None:
        with self._lock:
            current = self.current
            if current is None or current.epoch != epoch:
                return  # thawed meanwhile
            self.log.warning("freeze %d passed its deadline: thawing", epoch)
            self.busy = True
            try:
                self._thaw_locked("timeout")
            except AgentError as exc:
                self.log.error("auto-thaw of freeze %d failed: %s; retrying in 1 s", epoch, exc)
                with self._timer:
                    self.current = replace(current, deadline_mono=time.monotonic() + 1.0)
            finally:
                self.busy = False

    def shutdown(self) -> None:
        """The agent is exiting on a signal: thaw what we froze, then let the guard go."""
        if self.current is not None:
            self.log.warning("exiting while frozen (epoch %d): thawing first", self.current.epoch)
            try:
                self.thaw(reason="signal")
            except AgentError as exc:
                self.log.error("thaw on exit failed: %s", exc)
        if self.guard is not None and self.current is None:
            self.guard.stop()

    # --- hooks -------------------------------------------------------------------------------

    def _run_freeze_hook(self) -> bool:
        """Run the freeze hook; True if it ran.  A failure aborts the freeze, after the thaw
        hook has undone whatever the hook's earlier steps quiesced."""
        if self.hook is None:
            return False
        result = run_hook(self.hook, "freeze", self.hook_timeout)
        self._log_hook("freeze", result)
        if not result.ok:
            if result.ran:
                self._run_thaw_hook()
            reason = describe(result, self.hook_timeout)
            raise command_failed(f"fsfreeze hook {self.hook} freeze failed: {reason}")
        return result.ran

    def _run_thaw_hook(self) -> None:
        """Run the thaw hook; a failure is logged, the thaw itself has already succeeded."""
        if self.hook is None:
            return
        result = run_hook(self.hook, "thaw", self.hook_timeout)
        self._log_hook("thaw", result)

    def _log_hook(self, action: str, result: HookResult) -> None:
        if not result.ran and result.error is None:
            self.log.debug("no fsfreeze hook at %s", self.hook)
            return
        level = logging.INFO if result.ok else logging.ERROR
        self.log.log(level, "fsfreeze hook %s %s: %s", self.hook, action, describe(result, self.hook_timeout))
        for line in result.output.splitlines()[-20:]:
            self.log.log(level, "  hook: %s", line)


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
