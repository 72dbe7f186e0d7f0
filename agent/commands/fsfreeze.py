"""Filesystem freeze and thaw commands, with qemu-ga's names, shapes and gating."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pyqga.agent.commands.fsinfo import fstrim
from pyqga.agent.registry import Command, Param

if TYPE_CHECKING:
    from pyqga.agent.state import AgentState


def guest_fsfreeze_status(agent: AgentState) -> str:
    return agent.freezer.status


def guest_fsfreeze_info(agent: AgentState) -> dict[str, Any]:
    return agent.freezer.info()


def guest_fsfreeze_freeze(agent: AgentState, timeout: float | None = None) -> int:
    return agent.freezer.freeze(None, timeout)


def guest_fsfreeze_freeze_list(agent: AgentState, mountpoints: list[str] | None = None,
                               timeout: float | None = None) -> int:
    return agent.freezer.freeze(mountpoints, timeout)


def guest_fsfreeze_thaw(agent: AgentState, epoch: int | None = None) -> int:
    return agent.freezer.thaw(epoch)


TIMEOUT = Param("timeout", float, required=False,
                doc="seconds until the agent thaws by itself, > 0 and <= 604800 (default --freeze-timeout)")


def guest_get_fsinfo(agent: AgentState) -> list[dict[str, Any]]:
    return agent.fsinfo.get()


def guest_fstrim(agent: AgentState, minimum: int | None = None) -> dict[str, Any]:
    # The freeze filters apply: they name the filesystems this agent may touch.
    planner = agent.freezer.planner
    assert planner is not None, "the agent's freezer plans (only the keeper's does not)"
    return fstrim(minimum, planner.candidates())


COMMANDS = (
    Command("guest-fsfreeze-status", guest_fsfreeze_status,
            "\"frozen\" or \"thawed\": the agent's own freeze state (not the kernel's).",
            allowed_while_frozen=True),
    Command("guest-fsfreeze-info", guest_fsfreeze_info,
            "The freeze in force: status, phase (thawed, freezing, frozen, thawing, partly-thawed), "
            "epoch, frozen filesystems with their state, frozen-at, deadline, in-progress, how the "
            "last freeze ended (request, timeout, signal, agent-death, external, rollback), "
            "guard-restarts, and state-file-error when the state file could not be written.",
            allowed_while_frozen=True),
    Command("guest-fsfreeze-freeze", guest_fsfreeze_freeze,
            "Freeze every freezable filesystem (limited by --freeze-include/--freeze-exclude); "
            "returns how many were frozen.", (TIMEOUT,), blocking=True, urgent=True),
    Command("guest-fsfreeze-freeze-list", guest_fsfreeze_freeze_list,
            "Freeze exactly these mount points (all if omitted); a path that is not a mount point "
            "is an error and nothing is frozen.",
            (Param("mountpoints", list, required=False, doc="mount points to freeze"), TIMEOUT),
            blocking=True, urgent=True),
    Command("guest-fsfreeze-thaw", guest_fsfreeze_thaw,
            "Thaw every frozen filesystem, also ones frozen by other tools; returns how many thawed. "
            "With epoch: an error if that freeze did not hold until now (the thaw still happens).",
            (Param("epoch", int, required=False, doc="the epoch guest-fsfreeze-info reported"),),
            allowed_while_frozen=True, blocking=True, urgent=True),
    Command("guest-get-fsinfo", guest_get_fsinfo,
            "Mounted filesystems: device name, mount point, type, used and total bytes, disks.",
            blocking=True),
    Command("guest-fstrim", guest_fstrim,
            "Discard unused blocks on every freezable filesystem (within the freeze filters).",
            (Param("minimum", int, required=False, doc="minimum extent length in bytes"),),
            blocking=True),
)
