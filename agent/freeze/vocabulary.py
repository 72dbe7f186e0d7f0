"""The freeze machine's vocabulary: the events that go in, the actions that come out, and the
values they carry.

In the style of h11's ``_events.py``: plain immutable records, no behaviour.  The machine
(:mod:`.machine`) turns one event into a list of actions; its drivers (:mod:`.driver` in the
agent, :mod:`pyqga.agent.keeper` in the keeper process) perform the actions and feed what came
of them back as events.  :class:`Target`, :class:`Freeze`, :class:`ThawRecord` and
:class:`SavedState` are also what a snapshot (:mod:`.snapshot`) carries.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from typing import Any, Literal, NamedTuple

from pyqga.protocol.errors import AgentError

Device = tuple[int, int]   # (major, minor) of a superblock


class ThawReason(Enum):
    """How a freeze ended; the one vocabulary of guest-fsfreeze-info, the state file and logs."""

    REQUEST = "request"          # the host's guest-fsfreeze-thaw
    TIMEOUT = "timeout"          # its deadline passed
    SIGNAL = "signal"            # the agent was told to stop
    AGENT_DEATH = "agent-death"  # the agent died (the keeper, or the next agent at start-up)
    EXTERNAL = "external"        # someone else thawed part of it first
    ROLLBACK = "rollback"        # the freeze failed and was undone

    @property
    def safety(self) -> bool:
        """Safety thaws undo only what we froze; the host's thaw undoes everything."""
        return self is not ThawReason.REQUEST



class Target(NamedTuple):
    """A superblock as a plan names it: its device and the mount point to issue ioctls on."""

    device: Device
    path: str
    fstype: str = ""
    source: str = ""



class Freeze(NamedTuple):
    """The freeze in force."""

    epoch: int
    frozen_at: float
    deadline_mono: float | None
    deadline: float | None       # the same instant in Unix time, for humans and the state file
    timeout: float | None
    broken: str = ""             # why it no longer holds (part of it was thawed), "" while it does
    end_reason: ThawReason | None = None   # the first thaw that began to end it, if it did not finish


class ThawRecord(NamedTuple):
    epoch: int
    reason: ThawReason
    at: float
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "reason": self.reason.value, "at": self.at, "detail": self.detail}

# --- events -------------------------------------------------------------------------------------


class FreezeRequested(NamedTuple):
    rid: int
    waves: tuple[tuple[Target, ...], ...]
    timeout: Any = None          # as the host sent it; None for the agent's default
    flush: bool = False          # syncfs everything first (much dirty data)


class ThawRequested(NamedTuple):
    rid: int
    targets: tuple[Target, ...]  # every selected freezable superblock, in mount order
    epoch: int | None = None


class DeadlineCheck(NamedTuple):
    pass


class StopRequested(NamedTuple):
    """SIGTERM and friends: undo our freeze, then exit."""


class AgentDied(NamedTuple):
    """In the keeper: the agent's pipe closed.  At start-up: a dead agent's state was found."""

    detail: str = ""


class HookDone(NamedTuple):
    op: int                      # the rid of the freeze whose hook this was (0 for a thaw hook)
    action: str
    ran: bool
    ok: bool
    detail: str = ""


class FlushDone(NamedTuple):
    op: int


class Persisted(NamedTuple):
    op: int
    error: str | None = None


class PersistFailed(NamedTuple):
    error: str


class FreezeDone(NamedTuple):
    device: Device
    errno: int | None = None     # None: frozen
    error: str = ""


class ThawDone(NamedTuple):
    device: Device
    thawed: bool                 # at least one FITHAW succeeded (it was frozen)
    error: str | None = None


class ThawResults(NamedTuple):
    """The results of one ThawSbs, in one event: one state write per thaw, not per superblock."""

    results: tuple[ThawDone, ...]


class KeeperRestarted(NamedTuple):
    """The keeper process died and the agent started a new one."""

    detail: str


class SavedState(NamedTuple):
    """A snapshot read back and validated field by field."""

    epoch: int
    targets: tuple[Target, ...]
    freeze: Freeze | None
    last_thaw: ThawRecord | None
    hook_owed: bool


class Restored(NamedTuple):
    """At start (or in the keeper): the state an earlier agent wrote, validated by
    :func:`.snapshot.parse_snapshot` (the driver decides what a corrupt one means).  With
    ``thaw``: undo it now, for ``reason`` (TIMEOUT when the keeper ended an agent that did not act
    by its freeze's deadline: the deadline has passed, and the record says so, not "died")."""

    state: SavedState
    thaw: bool = False
    detail: str = ""
    reason: ThawReason = ThawReason.AGENT_DEATH


Event = (FreezeRequested | ThawRequested | DeadlineCheck | StopRequested | AgentDied | HookDone
         | FlushDone | Persisted | PersistFailed | FreezeDone | ThawDone | ThawResults | KeeperRestarted
         | Restored)

# --- actions ------------------------------------------------------------------------------------


HookAction = Literal["freeze", "thaw"]  # the hook's one argument


class RunHook(NamedTuple):
    op: int
    action: HookAction


class Flush(NamedTuple):
    op: int
    targets: tuple[Target, ...]


class Persist(NamedTuple):
    """Write the state file and tell the keeper: both are the machine's snapshot
    (:meth:`.machine.FreezeCore.snapshot`, in the format of :mod:`.snapshot`).

    ``op`` set: the freeze waits for :class:`Persisted` before its first FIFREEZE."""

    snapshot: Mapping[str, Any]
    op: int | None = None


class FreezeSb(NamedTuple):
    target: Target
    op: int                      # the freeze request it belongs to


class ThawSbs(NamedTuple):
    """FITHAW until EINVAL on each, in this order (parents first); a ThawDone for each."""

    targets: tuple[Target, ...]
    reason: ThawReason
    op: int | None = None        # the request it serves (None: a safety thaw)


class Reply(NamedTuple):
    rid: int
    result: Any = None
    error: AgentError | None = None
    epoch: int | None = None     # a successful freeze's epoch (the wire reply is qemu-ga's count)


class Log(NamedTuple):
    level: str                   # "debug", "info", "warning", "error"
    message: str


class Exit(NamedTuple):
    pass


Action = RunHook | Flush | Persist | FreezeSb | ThawSbs | Reply | Log | Exit
