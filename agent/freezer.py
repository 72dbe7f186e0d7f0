"""The freeze sequence around the engine: hooks, the frozen state, the state file, the log.

Order matters and is qemu-ga's, with our differences marked:
1. run the freeze hook; its failure aborts, nothing frozen;
2. plan (validate a freeze-list completely before anything is touched: **we differ**);
3. enter the frozen state *before* the first ioctl: state file on tmpfs, commands gated, log
   file held in memory;
4. freeze (the engine rolls back on failure); if nothing was frozen, leave the frozen state;
5. the thaw hook runs whenever the freeze hook ran, also when the freeze failed or froze
   nothing (**we differ**: qemu-ga skips it and leaves applications quiesced).

One freeze or thaw at a time: a second freeze while one runs is a BUSY error; a thaw waits for a
running freeze to finish (it runs on a worker thread, so the agent keeps answering meanwhile).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

from agent.config import Config
from agent.fsfreeze import statefile
from agent.fsfreeze.engine import FreezeEngine
from agent.fsfreeze.hooks import HookResult, run_hook
from agent.fsfreeze.mounts import Mount
from agent.logs import LogControl
from protocol.errors import AgentError, ErrorKind, command_failed


class Freezer:
    def __init__(self, config: Config, log: logging.Logger, logs: LogControl | None = None,
                 engine: FreezeEngine | None = None) -> None:
        self.engine = engine or FreezeEngine(include=config.freeze_include, exclude=config.freeze_exclude)
        self.statedir = config.statedir
        self.hook = config.fsfreeze_hook
        self.hook_timeout = config.fsfreeze_hook_timeout
        self.log = log
        self.logs = logs
        self.frozen = False
        self._lock = threading.Lock()
        recorded = statefile.read(self.statedir)
        if recorded is not None:
            # A previous agent died frozen: start frozen until a thaw, as qemu-ga does.
            self.frozen = True
            log.warning("state file in %s says filesystems are frozen (%s); only a thaw is allowed",
                        self.statedir, ", ".join(recorded.get("mountpoints", [])) or "unknown mounts")

    @property
    def status(self) -> str:
        return "frozen" if self.frozen else "thawed"

    # --- freeze ------------------------------------------------------------------------------

    def freeze(self, mountpoints: Sequence[str] | None = None) -> int:
        """Freeze all (filtered) filesystems, or exactly ``mountpoints``; return the count."""
        if not self._lock.acquire(blocking=False):
            raise AgentError(ErrorKind.BUSY, "a freeze or thaw is already in progress; try again later")
        try:
            if self.frozen:
                raise command_failed("filesystems are already frozen; thaw them first")
            hook_ran = self._run_freeze_hook()
            try:
                plan = self.engine.plan_all() if mountpoints is None else self.engine.plan_list(mountpoints)
                count = self._freeze_plan(plan)
            except BaseException:
                if hook_ran:
                    self._run_thaw_hook()
                raise
            if count == 0 and hook_ran:
                self._run_thaw_hook()
            return count
        finally:
            self._lock.release()

    def _freeze_plan(self, plan: Sequence[Mount]) -> int:
        self._enter_frozen(plan)
        try:
            outcome = self.engine.freeze(plan)
        except BaseException as exc:
            self._leave_frozen()
            self.log.error("freeze failed, everything thawed again: %s", exc)
            raise
        if outcome.count == 0:
            self._leave_frozen()
        for path, reason in outcome.skipped:
            self.log.info("not frozen: %s (%s)", path, reason)
        self.log.info("froze %d filesystem(s): %s", outcome.count,
                      " ".join(m.mountpoint for m in outcome.frozen) or "-")
        return outcome.count

    def _enter_frozen(self, plan: Sequence[Mount]) -> None:
        try:
            statefile.mark_frozen(self.statedir, {
                "mountpoints": [m.mountpoint for m in plan],
                "time": time.time(),
            })
        except OSError as exc:
            raise command_failed(f"cannot write the frozen-state file in {self.statedir}: {exc}") from None
        self.frozen = True
        if self.logs is not None:
            self.logs.hold()

    def _leave_frozen(self) -> None:
        self.frozen = False
        statefile.clear(self.statedir)
        if self.logs is not None:
            self.logs.release()

    # --- thaw --------------------------------------------------------------------------------

    def thaw(self) -> int:
        """Thaw everything selected (whoever froze it); return how many filesystems thawed."""
        with self._lock:
            recorded = statefile.read(self.statedir) or {}
            # A failure raises with the filesystems that stayed frozen: we stay frozen too, so
            # the host can try again (qemu-ga's rule).
            count = self.engine.thaw(also=recorded.get("mountpoints", []))
            self._leave_frozen()
            self.log.info("thawed %d filesystem(s)", count)
            self._run_thaw_hook()
            return count

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
