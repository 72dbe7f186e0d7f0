"""The fault commands (``guest-fault-*``): opt-in (``--enable-faults``), every fault a lease.

The work is :class:`pyqga.agent.faults.engine.FaultEngine`'s; here are the wire shapes.  A
refusal (:class:`~pyqga.agent.faults.machine.Refused`) is a GenericError with its message, as
qemu-ga reports a command's own failures.  List, revert and events answer while frozen: a test
must be able to see and end its faults whatever they stall.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pyqga.agent.faults.machine import Refused
from pyqga.agent.registry import AnyValueParam, Command, Param
from pyqga.protocol.errors import command_failed

if TYPE_CHECKING:
    from pyqga.agent.state import AgentState


def guest_fault_capabilities(agent: AgentState, target: str | None = None) -> dict[str, Any]:
    return agent.faults.capabilities(target)


def guest_fault_inject(agent: AgentState, kind: str, target: str, duration: Any,
                       params: dict[str, Any] | None = None, force: bool = False,
                       seed: int | None = None) -> dict[str, Any]:
    try:
        return agent.faults.inject(kind, target, duration, params, force, seed=seed)
    except Refused as e:
        raise command_failed(str(e)) from None


def guest_fault_plan(agent: AgentState, seed: int, steps: list[Any], repeat: int = 1,
                     start: float | None = None) -> dict[str, Any]:
    try:
        return agent.faults.plan(seed, steps, repeat, start)
    except Refused as e:
        raise command_failed(str(e)) from None


def guest_fault_list(agent: AgentState) -> list[dict[str, Any]]:
    return agent.faults.leases()


def guest_fault_revert(agent: AgentState, id: str | None = None) -> int:
    try:
        return agent.faults.revert(id)
    except Refused as e:
        raise command_failed(str(e)) from None


def guest_fault_events(agent: AgentState, since: int = 0) -> dict[str, Any]:
    if since < 0:
        raise command_failed(f"since must be a cursor >= 0, not {since}")
    return agent.faults.events(since)


COMMANDS = (
    Command("guest-fault-capabilities", guest_fault_capabilities,
            "The fault kinds, whether each can run in this guest (on target, if given) and why not, "
            "and their parameters; with the boot id.",
            params=(Param("target", str, required=False, doc="a mount point or mounted /dev path"),),
            blocking=True),
    Command("guest-fault-inject", guest_fault_inject,
            "Start a fault for duration seconds: {id, kind, target, deadline, duration}. It ends by its "
            "deadline even if the agent dies or hangs (the keeper ends it). Kinds and parameters: "
            "docs/faults.md.",
            params=(Param("kind", str, doc="write-stall, io-stall, io-error, io-delay, corrupt, drop-writes, "
                                          "bad-extents, disk-full, process-pause or process-kill"),
                    Param("target", str, doc="a mount point or mounted /dev path; for the process kinds "
                                            "pid:N, name:NAME, cgroup:PATH or unit:NAME"),
                    AnyValueParam("duration", float, doc="seconds, > 0, <= 604800 (with a seed: a choice)"),
                    Param("params", dict, required=False, doc="the kind's parameters"),
                    Param("force", bool, required=False,
                          doc="allow io-stall and io-error on the device of the agent's own files"),
                    Param("seed", int, required=False,
                          doc="draws the choices ({between: [LOW, HIGH]}, {one-of: [...]}) in duration "
                              "and params")),
            blocking=True),
    Command("guest-fault-plan", guest_fault_plan,
            "Run a seeded schedule of faults on the agent's own clock: {id, hash, deadline, faults, "
            "start, schedule}. Steps: {at|after, kind, target, params, duration}, any of them a choice; the "
            "same seed gives the same schedule. The plan is a lease: reverting it cancels its future "
            "steps and ends its faults.",
            params=(Param("seed", int, doc="the seed of every choice"),
                    Param("steps", list, doc="the steps (docs/faults.md, 'Seeded plans')"),
                    Param("repeat", int, required=False, doc="run the steps this many times (default 1)"),
                    Param("start", float, required=False,
                          doc="the plan's origin on the guest's CLOCK_MONOTONIC, at most 60 s ahead "
                              "(default now): a host starting plans on several guests together")),
            blocking=True),
    Command("guest-fault-list", guest_fault_list,
            "The faults in force: id, kind, target, params, state, started, deadline, remaining.",
            allowed_while_frozen=True),
    Command("guest-fault-revert", guest_fault_revert,
            "End one fault, or all without an id; returns how many ended.",
            params=(Param("id", str, required=False, doc="a fault id from guest-fault-inject"),),
            allowed_while_frozen=True, urgent=True),
    Command("guest-fault-events", guest_fault_events,
            "The timeline after a cursor: {events, cursor}; each event is armed, fired, reverted, expired, "
            "refused or revert-failed with monotonic and wall time and the boot id.",
            params=(Param("since", int, required=False, doc="the cursor of an earlier call (default 0)"),),
            allowed_while_frozen=True),
)
