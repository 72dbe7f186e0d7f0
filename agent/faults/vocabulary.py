"""The lease machine's vocabulary: kinds, phases, end reasons, and the actions and events the
core (:mod:`.machine`) emits.  Plain immutable records, no behaviour (h11's ``_events.py``).

A *recipe* is what a lease does to the kernel, as data: the steps that apply it and the steps
that undo it (:mod:`.recipes`).  The undo steps travel in every snapshot, so the keeper can end
a lease without knowing its kind.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from typing import Any, NamedTuple

Step = Mapping[str, Any]   # one recipe step, JSON-shaped: {"op": ..., ...} (see .recipes)

MAX_DURATION = 7 * 24 * 3600.0   # a week, as the freeze's timeout
# How long a spawn step waits for its worker to hold: locking memory zeroes every page, and a
# worker on a busy machine gets little CPU (2 GiB took 9.8 s on a host with a load of 6 on 2
# CPUs, 228 MiB up to 6.7 s in a TCG guest).  The keeper gives an agent waiting on one that long
# (:func:`.machine.keeper_deadline`).
SPAWN_WAIT = 30.0


class Kind(Enum):
    """Every fault kind the wire knows (whether this guest can do it is a capability)."""

    WRITE_STALL = "write-stall"    # FIFREEZE of one filesystem: writes wait, reads do not
    IO_STALL = "io-stall"          # dm suspend without flush or lockfs: every I/O waits
    IO_ERROR = "io-error"          # dm-flakey: EIO during down intervals
    IO_DELAY = "io-delay"          # dm-delay: added read, write and flush latency
    CORRUPT = "corrupt"            # dm-flakey corrupt_bio_byte
    DROP_WRITES = "drop-writes"    # dm-flakey drop_writes: acknowledged, lost
    BAD_EXTENTS = "bad-extents"    # one file's extents mapped to dm's error target
    DISK_FULL = "disk-full"        # a file fills the filesystem until free-bytes remain
    PROCESS_PAUSE = "process-pause"  # SIGSTOP, SIGCONT on revert
    PROCESS_KILL = "process-kill"    # a signal, once
    CLOCK_STEP = "clock-step"        # the wall clock stepped by an offset
    CLOCK_SKEW = "clock-skew"        # the wall clock's rate changed (adjtimex)
    CLOCK_STROBE = "clock-strobe"    # the wall clock jumps back and forth at an interval
    NET_PARTITION = "net-partition"  # traffic to and from chosen peers or ports dropped (nftables)
    NET_DELAY = "net-delay"          # netem delay and jitter on an interface
    NET_LOSS = "net-loss"            # netem loss
    NET_DUPLICATE = "net-duplicate"  # netem duplicate
    NET_REORDER = "net-reorder"      # netem reorder
    NET_CORRUPT = "net-corrupt"      # netem corrupt
    CPU_HOG = "cpu-hog"              # busy threads at a set share
    MEMORY_PRESSURE = "memory-pressure"  # memory locked


class Phase(Enum):
    """Where a lease is; the snapshot carries it so a successor knows what may be applied."""

    ARMING = "arming"        # accepted and published; its apply steps may be running
    ACTIVE = "active"        # applied
    REVERTING = "reverting"  # its undo steps are running (or failed and wait for a retry)


class EndReason(Enum):
    """Why a lease ended: the ``reason`` of its ``reverted`` event."""

    DEADLINE = "deadline"            # its duration passed (the event is ``expired``)
    REVERT = "revert"                # the host's guest-fault-revert
    AGENT_DEATH = "agent-death"      # the keeper saw the agent's pipe close
    AGENT_HUNG = "agent-hung"        # the agent did not act by the deadline; the keeper ended it
    AGENT_RESTART = "agent-restart"  # a new agent found it in the state file
    AGENT_EXIT = "agent-exit"        # the agent was told to stop
    FAILED = "failed"                # its apply failed part-way and was rolled back
    PLAN = "plan"                    # the plan that started it ended


class Lease(NamedTuple):
    """One fault.  ``device`` is what two leases may not share (refused, not stacked)."""

    id: str
    kind: str
    target: str
    params: Mapping[str, Any]
    device: str
    apply: tuple[Step, ...]
    undo: tuple[Step, ...]
    started: float           # Unix time
    started_mono: float
    deadline_mono: float
    duration: float
    phase: Phase = Phase.ARMING
    revert_reason: EndReason | None = None   # set when a revert was asked (or began)
    retry_at: float | None = None            # a failed undo's next try (monotonic)
    acting_until: float | None = None        # an undo under way: the keeper waits until then
    plan: str | None = None

    @property
    def deadline(self) -> float:
        """The deadline in Unix time, for people and the wire."""
        return self.started + (self.deadline_mono - self.started_mono)


class Prepared(NamedTuple):
    """A request checked against this guest: what :meth:`.machine.LeaseBook.inject` takes."""

    kind: str
    target: str
    params: Mapping[str, Any]
    device: str
    apply: tuple[Step, ...]
    undo: tuple[Step, ...]
    duration: float
    plan: str | None = None


class Now(NamedTuple):
    """One reading of both clocks: deadlines run on ``mono``, people read ``wall``."""

    mono: float
    wall: float


# --- actions: what the core asks its driver to do, in order -----------------------------------

class Publish(NamedTuple):
    """Write the snapshot to the state file and send it to the keeper, before going on."""

    snapshot: Mapping[str, Any]


class Apply(NamedTuple):
    """Run the lease's apply steps; report with :meth:`.machine.LeaseBook.applied`."""

    lease: Lease


class Undo(NamedTuple):
    """Run the lease's undo steps; report with :meth:`.machine.LeaseBook.undone`."""

    lease: Lease
    reason: EndReason


class Record(NamedTuple):
    """Append an event to the timeline."""

    event: Event


Action = Publish | Apply | Undo | Record


class Event(NamedTuple):
    """One line of the timeline (``guest-fault-events``)."""

    name: str            # armed, fired, reverted, expired, refused, revert-failed
    lease: str | None
    kind: str
    target: str
    mono: float
    wall: float
    reason: str = ""     # reverted/expired: an EndReason value
    detail: str = ""     # refused/revert-failed: the error
    plan: str | None = None   # the plan that started the fault, if one did

    def as_dict(self, boot_id: str) -> dict[str, Any]:
        out: dict[str, Any] = {"event": self.name, "id": self.lease, "kind": self.kind,
                               "target": self.target, "mono": round(self.mono, 6),
                               "wall": round(self.wall, 6), "boot-id": boot_id}
        if self.reason:
            out["reason"] = self.reason
        if self.detail:
            out["detail"] = self.detail
        if self.plan:
            out["plan"] = self.plan
        return out
