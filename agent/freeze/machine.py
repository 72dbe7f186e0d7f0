"""The freeze state machine: every piece of freeze state the agent has, and no I/O at all.

Sans-IO in the style of h11's ``_state.py``: no threads, no ioctls, no files, no clock of its
own.  Events go in (:meth:`FreezeCore.handle`), actions come out (freeze this superblock, thaw
those, persist the state, run the hook, reply to request N); both are defined in
:mod:`.vocabulary`.  A thin driver (:mod:`.driver`, in the agent and in the keeper process)
performs the actions through ports and feeds their results back as events.  The clock is a port
too (:class:`Clock`: monotonic and wall time, and local time for messages), so a model clock can
drive deadlines in tests.  :data:`HANDLERS` says which method takes which event.

The one state (everything else is derived from it or serialised from it, in the format of
:mod:`.snapshot`):

- ``sbs``: one :class:`Superblock` per device this freeze touched: whether *we* froze it
  (``FROZEN``), a FIFREEZE is still out (``FREEZING``), a FITHAW is out (``THAWING``), or someone
  else had frozen it before us (``FOREIGN``: EBUSY; never ours to undo);
- ``freeze``: the freeze in force (epoch, frozen-at, deadline, whether it still holds);
- ``op``: the request being carried out (a freeze or a thaw), and queued thaws;
- ``epoch``, ``last_thaw``, ``hook_owed``.

Rules this module guarantees (see ``docs/freeze-state-machine.md`` for the table):

- a deadline exists before the first FIFREEZE; no request can remove it (timeouts are checked
  against a documented range), and a failed safety thaw is retried every second;
- safety thaws (deadline, signal, agent death, restart) undo exactly the superblocks we froze;
  the host's ``guest-fsfreeze-thaw`` keeps qemu-ga's thaw-everything semantics and counts;
- a superblock leaves the record only when the kernel said it is thawed; a failed thaw keeps it
  reported frozen, and the reply names it;
- a FIFREEZE that never returns blocks nothing: a thaw or the deadline cancels the freeze,
  thaws everything already frozen and reports the stuck one, which is thawed when it returns;
- "lost" is reported if and only if the freeze did not hold until the host's thaw;
- the thaw hook runs once for every freeze hook that ran.

Over 600 lines, as one class: the freeze half and the thaw half share the superblock records
and hand over to each other (a thaw cancels a freeze, a failed freeze rolls back through a
thaw), so splitting them would only spread one state over two files.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from enum import Enum
from typing import Any, NamedTuple, Protocol

from pyqga.agent.freeze.snapshot import encode_snapshot
from pyqga.agent.freeze.vocabulary import (
    Action,
    AgentDied,
    DeadlineCheck,
    Device,
    Event,
    Exit,
    Flush,
    FlushDone,
    Freeze,
    FreezeDone,
    FreezeRequested,
    FreezeSb,
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
    ThawReason,
    ThawRecord,
    ThawRequested,
    ThawResults,
    ThawSbs,
)
from pyqga.protocol.errors import AgentError, ErrorKind, command_failed, invalid_params
from pyqga.protocol.freeze_lost import LostHow, freeze_lost_text

# Request timeouts are seconds in (0, MAX_TIMEOUT]: a host cannot switch the safety net off.
MAX_TIMEOUT = 7 * 24 * 3600.0
# How soon a safety thaw that failed is tried again.
RETRY_SECONDS = 1.0


class Clock(Protocol):
    """The machine's only source of time."""

    def monotonic(self) -> float: ...
    def time(self) -> float: ...
    def local_time(self, at: float) -> str:
        """Unix time ``at`` as this guest's local time, ``YYYY-MM-DD HH:MM:SS``, for messages."""
        ...


class Phase(Enum):
    THAWED = "thawed"
    FREEZING = "freezing"
    FROZEN = "frozen"
    THAWING = "thawing"
    PARTLY_THAWED = "partly-thawed"  # a thaw failed or a FIFREEZE is stuck: still (partly) frozen


class SbState(Enum):
    FREEZING = "freezing"
    FROZEN = "frozen"
    THAWING = "thawing"
    FOREIGN = "foreign"


OURS = (SbState.FREEZING, SbState.FROZEN, SbState.THAWING)


class Superblock(NamedTuple):
    target: Target
    state: SbState
    abandoned: bool = False  # its freeze was cancelled while FIFREEZE ran: thaw it when it returns
    error: str = ""          # why the last thaw of it failed


# --- operations in progress ---------------------------------------------------------------------

EBUSY, EINVAL, EOPNOTSUPP = 16, 22, 95   # Linux's numbers; no errno import in a pure module
SKIPPED_ERRNOS = {EOPNOTSUPP: "EOPNOTSUPP", EBUSY: "EBUSY"}  # not failures: nothing to do / frozen


class Stage(Enum):
    RECORD_HOOK = "recording the hook"
    HOOK = "hook"
    FLUSH = "flush"
    PERSIST = "persist"
    FREEZE = "freeze"


BEFORE_FREEZING = (Stage.RECORD_HOOK, Stage.HOOK, Stage.FLUSH)


# The operations in progress are plain classes, not dataclasses (each would cost ~0.5-1 ms to
# define, at every start of the agent and of its keeper).


class FreezeOp:
    """A freeze in progress: its waves of targets, where it is, what it froze and skipped."""

    __slots__ = ("failure", "flush", "frozen", "pending", "rid", "skipped", "stage", "timeout", "wave",
                 "waves")
    rid: int
    waves: tuple[tuple[Target, ...], ...]
    timeout: float | None
    flush: bool
    stage: Stage
    wave: int
    frozen: list[Target]
    skipped: list[tuple[str, str]]
    failure: tuple[str, str, int | None] | None   # path, reason, errno
    pending: list[Target]                         # the wave waiting for its persist

    def __init__(self, rid: int, waves: tuple[tuple[Target, ...], ...], timeout: float | None,
                 flush: bool) -> None:
        self.rid, self.waves, self.timeout, self.flush = rid, waves, timeout, flush
        self.stage = Stage.HOOK
        self.wave = -1
        self.frozen = []
        self.skipped = []
        self.failure = None
        self.pending = []


class ThawOp:
    """A thaw in progress: why, the FITHAWs still out, and what it found."""

    __slots__ = ("detail", "epoch", "errors", "failed", "found_thawed", "lost_before", "ours_thawed",
                 "reason", "rid", "stuck", "thawed", "waiting")
    rid: int | None                  # None: a safety thaw nobody waits for
    reason: ThawReason
    epoch: int | None
    lost_before: str | None
    waiting: dict[Device, str]       # device -> path, FITHAW out
    thawed: list[str]
    errors: list[dict[str, str]]
    found_thawed: list[str]
    ours_thawed: int                 # superblocks of ours this thaw did thaw
    stuck: list[str]
    detail: str
    failed: tuple[str, int | None] | None   # a rollback's: the FIFREEZE failure it undoes

    def __init__(self, rid: int | None, reason: ThawReason, epoch: int | None = None,
                 lost_before: str | None = None, detail: str = "",
                 failed: tuple[str, int | None] | None = None) -> None:
        self.rid, self.reason, self.epoch, self.lost_before = rid, reason, epoch, lost_before
        self.waiting = {}
        self.thawed, self.errors, self.found_thawed, self.stuck = [], [], [], []
        self.ours_thawed = 0
        self.detail, self.failed = detail, failed


class HookOp:
    """The thaw hook runs; the replies it holds leave when it is done."""

    __slots__ = ("replies",)
    replies: list[Reply]

    def __init__(self, replies: list[Reply]) -> None:
        self.replies = replies


def check_timeout(value: Any, default: float | None) -> float | None:
    """Seconds until the auto-thaw, or None (only the agent's own configuration can say never)."""
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or not 0 < value <= MAX_TIMEOUT:
        raise invalid_params(
            f"timeout must be a number of seconds greater than 0 and at most {MAX_TIMEOUT:g}, "
            f"not {value!r}")
    return float(value)


class FreezeCore:
    """See the module docstring.  Not thread-safe: the driver serialises :meth:`handle`."""

    def __init__(self, clock: Clock, default_timeout: float | None = 600.0, hook: bool = False) -> None:
        self.clock = clock
        self.default_timeout = default_timeout
        self.hook = hook
        self.epoch: int = 0
        self.sbs: dict[Device, Superblock] = {}
        self.freeze: Freeze | None = None
        self.op: FreezeOp | ThawOp | HookOp | None = None
        self.queued: deque[ThawRequested] = deque()
        self.last_thaw: ThawRecord | None = None
        self.hook_owed: bool = False  # a freeze hook ran and its thaw hook has not
        self.exiting: bool = False
        self.exited: bool = False
        self.persist_error: str | None = None
        self.keeper_restarts: int = 0
        self._out: list[Action] = []
        self._replies: list[Reply] = []
        self._persisted: dict[str, Any] | None = None

    # --- derived views -------------------------------------------------------------------------

    def ours(self) -> dict[Device, Superblock]:
        return {d: sb for d, sb in self.sbs.items() if sb.state in OURS}

    @property
    def frozen(self) -> bool:
        """What gating and guest-fsfreeze-status see: from the state file's write until every
        superblock of ours is thawed (qemu-ga marks itself frozen before the first ioctl)."""
        if isinstance(self.op, FreezeOp) and self.op.stage not in BEFORE_FREEZING:
            return True
        return bool(self.ours())

    @property
    def phase(self) -> Phase:
        if isinstance(self.op, FreezeOp):
            return Phase.FREEZING
        if isinstance(self.op, ThawOp | HookOp):
            return Phase.THAWING
        ours = self.ours().values()
        if not ours:
            return Phase.THAWED
        if any(sb.error or sb.abandoned for sb in ours) or (self.freeze and self.freeze.broken):
            return Phase.PARTLY_THAWED
        return Phase.FROZEN

    @property
    def deadline_mono(self) -> float | None:
        """When the driver must send DeadlineCheck next (None: no need)."""
        if self.freeze is None or isinstance(self.op, ThawOp) or self.freeze.deadline_mono is None:
            return None
        return self.freeze.deadline_mono

    def info(self) -> dict[str, Any]:
        """guest-fsfreeze-info."""
        ours = sorted(self.ours().values(), key=lambda sb: sb.target.path)
        freeze = self.freeze
        return {
            "status": "frozen" if self.frozen else "thawed",
            "phase": self.phase.value,
            "epoch": freeze.epoch if freeze else self.epoch,
            "frozen": [{"mountpoint": sb.target.path, "type": sb.target.fstype, "device": sb.target.source,
                        "state": sb.state.value, **({"error": sb.error} if sb.error else {})}
                       for sb in ours],
            "frozen-at": freeze.frozen_at if freeze else None,
            "deadline": freeze.deadline if freeze else None,
            "in-progress": self.op is not None,
            "last-thaw": self.last_thaw.as_dict() if self.last_thaw else None,
            "guard-restarts": self.keeper_restarts,   # the wire keeps its name
            **({"state-file-error": self.persist_error} if self.persist_error else {}),
        }

    # --- serialisation: the state file and the keeper's message ----------------------------------

    def snapshot(self) -> dict[str, Any]:
        return encode_snapshot(self.epoch, self.freeze,
                               [sb.target for sb in self.sbs.values() if sb.state in OURS],
                               self.hook_owed, self.last_thaw)

    def _on_restored(self, event: Restored) -> None:
        """Take over a state written by an earlier agent (or sent to the keeper).

        Superblocks it froze are ours again (a FIFREEZE that was out counts as frozen: safe side).
        With ``thaw`` (``--on-agent-death thaw``) they are thawed now, for the event's reason
        (agent-death; timeout when the keeper ended a hung agent); without it the freeze stays in
        force, as qemu-ga would have it, deadline included.
        """
        state = event.state
        self.epoch = max(self.epoch, state.epoch)
        self.last_thaw = state.last_thaw or self.last_thaw
        self.hook_owed = self.hook_owed or state.hook_owed
        for target in state.targets:
            self.sbs[target.device] = Superblock(target, SbState.FROZEN)
        if state.freeze is not None or self.sbs:
            self.freeze = state.freeze or Freeze(self.epoch, self.clock.time(), None, None, None)
            if self.freeze.deadline is not None:
                remaining = max(0.0, self.freeze.deadline - self.clock.time())
                self.freeze = self.freeze._replace(deadline_mono=self.clock.monotonic() + remaining)
        if self.sbs:
            self._log("warning", f"the state file says freeze {self.freeze.epoch if self.freeze else '?'} "
                      f"is in force ({', '.join(t.path for t in state.targets)})")
            if event.thaw:
                self._safety_thaw(event.reason, event.detail)

    # --- the event loop -----------------------------------------------------------------------

    def handle(self, event: Event) -> list[Action]:
        self._out = []
        self._replies = []
        handler = HANDLERS.get(type(event))
        if handler is None:
            raise TypeError(f"not a freeze event: {event!r}")
        handler(self, event)
        return self._settle()

    def _emit(self, action: Action) -> None:
        self._out.append(action)

    def _log(self, level: str, message: str) -> None:
        self._emit(Log(level, message))

    def _reply(self, rid: int | None, result: Any = None, error: AgentError | None = None,
               epoch: int | None = None) -> None:
        """Replies leave at the end of the event, or after the thaw hook if one starts now
        (qemu-ga answers a thaw after its hook has run)."""
        if rid is not None:
            self._replies.append(Reply(rid, result, error, epoch))

    # --- freeze -------------------------------------------------------------------------------

    def _on_freeze_requested(self, event: FreezeRequested) -> None:
        try:
            timeout = check_timeout(event.timeout, self.default_timeout)
        except AgentError as error:
            self._reply(event.rid, error=error)
            return
        if self.op is not None or self.queued:
            self._reply(event.rid, error=AgentError(
                ErrorKind.BUSY, "a freeze or thaw is already in progress; try again later"))
            return
        if self.exiting:
            self._reply(event.rid, error=command_failed("the agent is stopping; not freezing"))
            return
        if self.ours():
            epoch = self.freeze.epoch if self.freeze else self.epoch
            self._reply(event.rid, error=command_failed(
                f"filesystems are already frozen (epoch {epoch}); thaw them first"))
            return
        op = FreezeOp(event.rid, event.waves, timeout, event.flush)
        self.op = op
        if self.hook:
            # Recorded before the hook runs: whatever happens next (the hook fails, the agent
            # dies), whoever comes after us runs the thaw hook once.
            self.hook_owed = True
            op.stage = Stage.RECORD_HOOK
            self._emit(Persist(self.snapshot(), op.rid))
        else:
            self._after_hook(op)

    def _on_hook_done(self, event: HookDone) -> None:
        if event.action == "thaw":
            if isinstance(self.op, HookOp):
                self._replies.extend(self.op.replies)
                self.op = None
            return
        op = self.op
        current = isinstance(op, FreezeOp) and op.rid == event.op and op.stage is Stage.HOOK
        if not current:
            return                    # the freeze was cancelled meanwhile; _settle runs the thaw hook
        assert isinstance(op, FreezeOp)
        if not event.ok:
            self.op = None
            self._reply(op.rid, error=command_failed(f"fsfreeze hook freeze failed: {event.detail}"))
            return
        self._after_hook(op)

    def _after_hook(self, op: FreezeOp) -> None:
        targets = tuple(t for wave in op.waves for t in wave)
        if op.flush and targets:
            op.stage = Stage.FLUSH
            self._emit(Flush(op.rid, targets))
        else:
            self._enter_frozen(op)

    def _on_flush_done(self, event: FlushDone) -> None:
        op = self.op
        if isinstance(op, FreezeOp) and op.rid == event.op and op.stage is Stage.FLUSH:
            self._enter_frozen(op)

    def _enter_frozen(self, op: FreezeOp) -> None:
        """New epoch and deadline, persisted (state file and keeper) before the first FIFREEZE."""
        if not any(op.waves):
            self.op = None
            self._reply(op.rid, 0)
            self._log("info", "froze nothing: no filesystem to freeze")
            return
        self.epoch += 1
        now, mono = self.clock.time(), self.clock.monotonic()
        self.freeze = Freeze(self.epoch, now,
                             None if op.timeout is None else mono + op.timeout,
                             None if op.timeout is None else now + op.timeout, op.timeout)
        self._next_wave(op)

    def _next_wave(self, op: FreezeOp) -> None:
        """Record the next wave as FREEZING and persist that (state file and keeper) before its
        FIFREEZEs go out: whoever restarts after us knows every superblock we may have frozen."""
        while op.wave + 1 < len(op.waves):
            op.wave += 1
            wave = [t for t in op.waves[op.wave] if t.device not in self.sbs]
            if not wave:
                continue
            for target in wave:
                self.sbs[target.device] = Superblock(target, SbState.FREEZING)
            op.pending = wave
            op.stage = Stage.PERSIST
            self._emit(Persist(self.snapshot(), op.rid))
            return
        self._finish_freeze(op)

    def _on_persisted(self, event: Persisted) -> None:
        op = self.op
        if isinstance(op, FreezeOp) and op.rid == event.op and op.stage is Stage.RECORD_HOOK:
            if event.error is not None:
                self.hook_owed = False
                self.op = None
                self._reply(op.rid, error=command_failed(f"refusing to freeze: {event.error}"))
                return
            op.stage = Stage.HOOK
            self._emit(RunHook(op.rid, "freeze"))
            return
        if not (isinstance(op, FreezeOp) and op.rid == event.op and op.stage is Stage.PERSIST):
            return
        wave, op.pending = op.pending, []
        if event.error is not None:
            for target in wave:
                del self.sbs[target.device]
            if not op.frozen:
                self.op = None
                self._reply(op.rid, error=command_failed(f"refusing to freeze: {event.error}"))
                return
            op.failure = (wave[0].path, f"refusing to go on: {event.error}", None)
            self._rollback(op)
            return
        self.persist_error = None
        op.stage = Stage.FREEZE
        for target in wave:
            self._emit(FreezeSb(target, op.rid))

    def _on_freeze_done(self, event: FreezeDone) -> None:
        sb = self.sbs.get(event.device)
        if sb is None or sb.state is not SbState.FREEZING:
            return
        path = sb.target.path
        if sb.abandoned:
            # Its freeze was cancelled while this FIFREEZE was out; _settle thaws it if it froze.
            if event.errno is None:
                self.sbs[event.device] = sb._replace(state=SbState.FROZEN)
                self._log("warning", f"{path}: the stuck FIFREEZE returned; thawing it")
            else:
                del self.sbs[event.device]
                self._log("info", f"{path}: the stuck FIFREEZE failed: {event.error}")
            return
        op = self.op if isinstance(self.op, FreezeOp) else None
        if event.errno is None:
            self.sbs[event.device] = sb._replace(state=SbState.FROZEN)
            if op is not None:
                op.frozen.append(sb.target)
        elif event.errno in SKIPPED_ERRNOS:
            if event.errno == EBUSY:
                self.sbs[event.device] = sb._replace(state=SbState.FOREIGN)
            else:
                del self.sbs[event.device]
            if op is not None:
                op.skipped.append((path, SKIPPED_ERRNOS[event.errno]))
        else:
            del self.sbs[event.device]
            if op is not None and op.failure is None:
                op.failure = (path, event.error, event.errno)
        # The wave is done when no FIFREEZE of it is out.  After a failure its other FIFREEZEs
        # are waited for, so the reply finds everything rolled back; one that hangs is cancelled
        # by the host's thaw or the deadline like any other.
        if op is not None and op.stage is Stage.FREEZE and not self._freezing():
            if op.failure is not None:
                self._rollback(op)
            else:
                self._next_wave(op)

    def _freezing(self) -> list[Superblock]:
        return [sb for sb in self.sbs.values() if sb.state is SbState.FREEZING and not sb.abandoned]

    def _finish_freeze(self, op: FreezeOp) -> None:
        self.op = None
        for path, why in op.skipped:
            self._log("info", f"not frozen: {path} ({why})")
        count = len(op.frozen)
        if count == 0:
            self._drop_foreign()
            self.freeze = None
            self._reply(op.rid, 0)
            self._log("info", "froze nothing")
            return
        assert self.freeze is not None
        timeout = self.freeze.timeout
        self._log("info", f"freeze {self.freeze.epoch}: froze {count} filesystem(s): "
                  + " ".join(t.path for t in op.frozen)
                  + ("" if timeout is None else f"; auto-thaw in {timeout:g} s"))
        self._reply(op.rid, count, epoch=self.freeze.epoch)

    def _rollback(self, op: FreezeOp) -> None:
        """A FIFREEZE failed and its wave is done: thaw what this freeze froze, then answer."""
        self._cancel_freeze(op, None)
        path, reason, number = op.failure or ("?", "?", None)
        thaw = ThawOp(op.rid, ThawReason.ROLLBACK, detail=f"failed to freeze {path}: {reason}",
                      failed=(path, number))
        self._start_thaw(thaw, [sb.target for sb in self.ours().values() if sb.state is SbState.FROZEN])

    def _cancel_freeze(self, op: FreezeOp, why: str | None) -> list[str]:
        """Stop a freeze: no further waves; FIFREEZEs still out are abandoned (thawed when they
        return).  ``why``: the error the freeze request gets now (None: the caller replies)."""
        stuck = []
        for target in op.pending:        # recorded, never sent to the kernel
            self.sbs.pop(target.device, None)
        op.pending = []
        for device, sb in list(self.sbs.items()):
            if sb.state is SbState.FREEZING and not sb.abandoned:
                self.sbs[device] = sb._replace(abandoned=True)
                stuck.append(sb.target.path)
        if self.op is op:
            self.op = None
        if why is not None:
            text = why + (f"; still stuck in FIFREEZE (thawed when it returns): {', '.join(stuck)}"
                          if stuck else "")
            self._reply(op.rid, error=command_failed(text))
            if self.freeze is not None and not self.freeze.broken:
                # The host was told the freeze failed: it never held, whatever is frozen now.
                self.freeze = self.freeze._replace(broken=f"its freeze request failed ({why})")
            if op.stage in (*BEFORE_FREEZING, Stage.PERSIST):
                self.freeze = None if not self.ours() else self.freeze
        return stuck

    # --- thaw ---------------------------------------------------------------------------------

    def _on_thaw_requested(self, event: ThawRequested) -> None:
        op = self.op
        if isinstance(op, FreezeOp):
            self._cancel_freeze(op, f"freeze interrupted: a thaw was requested while {op.stage.value}")
        if self.op is not None or self.queued:
            self.queued.append(event)
            return
        self._host_thaw(event)

    def _host_thaw(self, event: ThawRequested) -> None:
        thaw = ThawOp(event.rid, ThawReason.REQUEST, epoch=event.epoch,
                      lost_before=None if event.epoch is None else self._lost_before(event.epoch))
        targets = {t.device: t for t in event.targets}
        for sb in self.ours().values():
            targets.setdefault(sb.target.device, sb.target)
        self._start_thaw(thaw, list(targets.values()))

    def _lost_before(self, epoch: int) -> str | None:
        """Why freeze ``epoch`` is not the one in force now (or no longer holds), or None."""
        freeze = self.freeze
        if freeze is not None and freeze.epoch == epoch and self.ours():
            return freeze_lost_text(epoch, LostHow.DID_NOT_HOLD, freeze.broken) if freeze.broken else None
        last = self.last_thaw
        if last is not None and last.epoch == epoch:
            detail = f" ({last.detail})" if last.detail else ""
            ended = f"it ended at {self.clock.local_time(last.at)} by {last.reason.value}{detail}"
            return freeze_lost_text(epoch, LostHow.DID_NOT_HOLD, ended)
        if freeze is not None and self.ours():
            return freeze_lost_text(epoch, LostHow.NOT_IN_FORCE, f"that is epoch {freeze.epoch}")
        return freeze_lost_text(epoch, LostHow.UNKNOWN, f"the last freeze was epoch {self.epoch}")

    def _start_thaw(self, thaw: ThawOp, targets: Sequence[Target]) -> None:
        """Issue FITHAW on ``targets`` except superblocks whose FIFREEZE is still out."""
        self.op = thaw
        go: list[Target] = []
        for target in targets:
            sb = self.sbs.get(target.device)
            if sb is not None and sb.state is SbState.FREEZING:
                thaw.stuck.append(sb.target.path)
                self.sbs[target.device] = sb._replace(abandoned=True)
                continue
            if sb is not None and sb.state in OURS:
                self.sbs[target.device] = sb._replace(state=SbState.THAWING)
            thaw.waiting[target.device] = target.path
            go.append(target)
        if go:
            self._emit(ThawSbs(tuple(go), thaw.reason, thaw.rid))
        else:
            self._finish_thaw(thaw)

    def _on_thaw_results(self, event: ThawResults) -> None:
        for result in event.results:
            self._on_thaw_done(result)

    def _on_thaw_done(self, event: ThawDone) -> None:
        thaw = self.op
        if not isinstance(thaw, ThawOp) or event.device not in thaw.waiting:
            return
        path = thaw.waiting.pop(event.device)
        sb = self.sbs.get(event.device)
        if event.thawed:
            thaw.thawed.append(path)
        if event.error is not None:
            thaw.errors.append({"path": path, "error": event.error})
            if sb is not None and sb.state in OURS:
                self.sbs[event.device] = sb._replace(state=SbState.FROZEN, error=event.error)
        elif sb is not None:
            if sb.state is SbState.THAWING:
                if event.thawed:
                    thaw.ours_thawed += 1
                else:
                    thaw.found_thawed.append(path)
            del self.sbs[event.device]
        if not thaw.waiting:
            self._finish_thaw(thaw)

    def _finish_thaw(self, thaw: ThawOp) -> None:
        self.op = None
        freeze = self.freeze
        count = len(thaw.thawed)
        # It no longer holds if part of it was found thawed, or this thaw thawed part of it and
        # left the rest (a failed FITHAW, a FIFREEZE still out).
        partial = bool(thaw.ours_thawed or thaw.stuck) and bool(self.ours())
        if freeze is not None and (thaw.found_thawed or partial) and not freeze.broken:
            parts = []
            if thaw.found_thawed:
                parts.append(f"{', '.join(thaw.found_thawed)} had already been thawed by someone else")
            if partial:
                parts.append(f"a thaw ({thaw.reason.value}) thawed only part of it")
            end_reason = ThawReason.EXTERNAL if thaw.found_thawed and thaw.reason is ThawReason.REQUEST \
                else thaw.reason
            self.freeze = freeze = freeze._replace(broken="; ".join(parts), end_reason=end_reason)
        if thaw.found_thawed:
            self._log("warning", freeze_lost_text(
                freeze.epoch if freeze else self.epoch, LostHow.DID_NOT_HOLD,
                f"{', '.join(thaw.found_thawed)} had already been thawed by someone else"))
        ended = freeze is not None and not self.ours()
        if ended:
            assert freeze is not None
            reason = freeze.end_reason or thaw.reason
            detail = thaw.detail or (freeze.broken if reason is ThawReason.EXTERNAL else "")
            self.last_thaw = ThawRecord(freeze.epoch, reason, self.clock.time(), detail)
            self.freeze = None
            self._drop_foreign()
        if thaw.reason is ThawReason.ROLLBACK and thaw.rid is not None:
            self._reply_rollback(thaw)
            return
        self._log("info" if not thaw.errors else "error",
                  f"thawed {count} filesystem(s) ({thaw.reason.value})"
                  + (f"; failed: {_describe(thaw.errors)}" if thaw.errors else "")
                  + (f"; stuck in FIFREEZE: {', '.join(thaw.stuck)}" if thaw.stuck else ""))
        if thaw.errors or thaw.stuck:
            if thaw.reason.safety and self.freeze is not None:
                self.freeze = self.freeze._replace(deadline_mono=self.clock.monotonic() + RETRY_SECONDS)
            if thaw.errors:
                message = f"thawed {count} filesystem(s), but failed to thaw {_describe(thaw.errors)}"
            else:
                message = (f"thawed {count} filesystem(s); still stuck in FIFREEZE (thawed when it "
                           f"returns): {', '.join(thaw.stuck)}")
            self._reply(thaw.rid, error=AgentError(
                ErrorKind.COMMAND_FAILED, message,
                {"thawed": count, "errors": list(thaw.errors),
                 **({"stuck": list(thaw.stuck)} if thaw.stuck else {})}))
            return
        lost = thaw.lost_before
        if lost is None and thaw.epoch is not None and self.last_thaw is not None \
                and self.last_thaw.reason is ThawReason.EXTERNAL and self.last_thaw.epoch == thaw.epoch \
                and ended:
            lost = freeze_lost_text(thaw.epoch, LostHow.DID_NOT_HOLD, self.last_thaw.detail)
        if lost is not None and thaw.rid is not None:
            self._reply(thaw.rid, error=AgentError(
                ErrorKind.FREEZE_LOST, lost,
                {"thawed": count, "last-thaw": self.last_thaw.as_dict() if self.last_thaw else {}}))
            return
        self._reply(thaw.rid, count)

    def _reply_rollback(self, thaw: ThawOp) -> None:
        assert thaw.rid is not None
        path, number = thaw.failed or (None, None)
        message = thaw.detail
        if thaw.errors:
            message += f"; and could not thaw {_describe(thaw.errors)} (still frozen)"
        if thaw.stuck:
            message += f"; still stuck in FIFREEZE (thawed when it returns): {', '.join(thaw.stuck)}"
        self._log("error", f"freeze failed, thawed again: {message}")
        self._reply(thaw.rid, error=AgentError(
            ErrorKind.COMMAND_FAILED, message,
            {"path": path, "errno": number, "unthawed": list(thaw.errors),
             **({"stuck": list(thaw.stuck)} if thaw.stuck else {})}))

    def _drop_foreign(self) -> None:
        for device in [d for d, sb in self.sbs.items() if sb.state is SbState.FOREIGN]:
            del self.sbs[device]

    # --- safety thaws -------------------------------------------------------------------------

    def _safety_thaw(self, reason: ThawReason, detail: str = "") -> None:
        """Undo exactly what we froze (never a foreign freeze)."""
        op = self.op
        if isinstance(op, FreezeOp):
            why = {ThawReason.TIMEOUT: "the freeze did not finish before its deadline; thawed what it froze",
                   ThawReason.SIGNAL: "the agent is stopping; thawed what the freeze froze"}.get(
                       reason, f"freeze cancelled ({reason.value})")
            self._cancel_freeze(op, why)
        if self.op is not None:
            return  # a thaw is running; _settle starts another safety thaw after it if needed
        targets = [sb.target for sb in self.ours().values() if sb.state is SbState.FROZEN]
        if not targets and not any(sb.state is SbState.FREEZING for sb in self.ours().values()):
            return
        self._start_thaw(ThawOp(None, reason, detail=detail), targets)

    def _on_deadline_check(self, event: DeadlineCheck) -> None:
        deadline = self.deadline_mono
        if deadline is None or self.clock.monotonic() < deadline:
            return
        assert self.freeze is not None
        self._log("warning", f"freeze {self.freeze.epoch} passed its deadline: thawing")
        self._safety_thaw(ThawReason.TIMEOUT)

    def _on_stop_requested(self, event: StopRequested) -> None:
        self.exiting = True
        if self.ours() or isinstance(self.op, FreezeOp):
            epoch = self.freeze.epoch if self.freeze else self.epoch
            self._log("warning", f"exiting while frozen (epoch {epoch}): thawing first")
            self._safety_thaw(ThawReason.SIGNAL)

    def _on_agent_died(self, event: AgentDied) -> None:
        self._safety_thaw(ThawReason.AGENT_DEATH, event.detail)

    def _on_persist_failed(self, event: PersistFailed) -> None:
        self.persist_error = event.error

    def _on_keeper_restarted(self, event: KeeperRestarted) -> None:
        self.keeper_restarts += 1
        self._log("warning", f"the freeze guard died ({event.detail}); restarted it")

    # --- after every event ----------------------------------------------------------------------

    def _settle(self) -> list[Action]:
        """Follow-ups that do not depend on which event came: queued thaws, stuck freezes that
        returned, a freeze that ended, the owed thaw hook, persisting, exiting."""
        if self.op is None and self.queued:
            self._host_thaw(self.queued.popleft())
        if self.op is None:
            late = [sb.target for sb in self.sbs.values()
                    if sb.state is SbState.FROZEN and sb.abandoned and not sb.error]
            if late:
                self._start_thaw(ThawOp(None, ThawReason.ROLLBACK, detail="its freeze had been cancelled"),
                                 late)
        if self.op is None and self.freeze is not None and not self.ours():
            self.freeze = None   # ended with nothing frozen (or foreign only)
            self._drop_foreign()
        overdue = self.deadline_mono is not None and self.deadline_mono <= self.clock.monotonic()
        if self.op is None and (self.exiting or overdue) \
                and any(sb.state is SbState.FROZEN and not sb.error for sb in self.ours().values()):
            self._safety_thaw(ThawReason.SIGNAL if self.exiting else ThawReason.TIMEOUT)
        if self.op is None and self.hook_owed and not self.ours():
            self.hook_owed = False
            self.op = HookOp(self._replies)
            self._replies = []
            self._emit(RunHook(0, "thaw"))
        for action in self._out:
            if isinstance(action, Persist):
                self._persisted = dict(action.snapshot)
        snapshot = self.snapshot()
        if snapshot != self._persisted:
            self._persisted = snapshot
            self._emit(Persist(snapshot))
        self._out.extend(self._replies)
        self._replies = []
        if self.exiting and self.op is None and not self.exited:
            self.exited = True
            self._emit(Exit())
        return self._out


def _describe(errors: Iterable[Mapping[str, str]]) -> str:
    return "; ".join(f"{e['path']}: {e['error']}" for e in errors)


# Which method takes which event: the whole interface of the machine, in one table.
HANDLERS: dict[type[Any], Callable[[FreezeCore, Any], None]] = {
    FreezeRequested: FreezeCore._on_freeze_requested,
    ThawRequested: FreezeCore._on_thaw_requested,
    DeadlineCheck: FreezeCore._on_deadline_check,
    StopRequested: FreezeCore._on_stop_requested,
    AgentDied: FreezeCore._on_agent_died,
    HookDone: FreezeCore._on_hook_done,
    FlushDone: FreezeCore._on_flush_done,
    Persisted: FreezeCore._on_persisted,
    PersistFailed: FreezeCore._on_persist_failed,
    FreezeDone: FreezeCore._on_freeze_done,
    ThawDone: FreezeCore._on_thaw_done,
    ThawResults: FreezeCore._on_thaw_results,
    KeeperRestarted: FreezeCore._on_keeper_restarted,
    Restored: FreezeCore._on_restored,
}
