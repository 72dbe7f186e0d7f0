"""The snapshot format: the freeze state as the state file stores it and the keeper's pipe carries it.

One format, two copies: :mod:`.statefile` writes it to disk for the next agent, and the agent
sends it to the keeper (:mod:`pyqga.agent.keeper`) as one JSON line after every change.  The
machine builds it with :func:`encode_snapshot`; whoever reads one back (a new agent, the keeper)
gets a :class:`~.vocabulary.SavedState` from :func:`parse_snapshot`, which treats it as
untrusted input: every field is validated, and anything else is :class:`CorruptState`.

What it keeps is only what a successor needs to undo a freeze: the superblocks that may be
frozen (without their state: freezing, frozen and thawing all read back as "possibly frozen"),
the freeze in force, the last epoch, how the last freeze ended, and whether a thaw hook is owed.

The freeze's deadline is there twice: ``deadline`` in Unix time, which a successor reads (after a
reboot too), and ``deadline-mono`` on this boot's CLOCK_MONOTONIC, which only the keeper reads
(:func:`monotonic_deadline`): it enforces the deadline on its own clock when the agent hangs.  It
is the deadline the agent's own watcher waits for, a failed safety thaw's retry included.
:func:`parse_snapshot` ignores it (a monotonic instant of another boot means nothing), so state
files written before it existed still read.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from pyqga.agent.errors import AgentFailure
from pyqga.agent.freeze.vocabulary import Freeze, SavedState, Target, ThawReason, ThawRecord

VERSION = 1


class CorruptState(AgentFailure, ValueError):
    """The state file or the keeper's message is not what we wrote."""


def encode_snapshot(epoch: int, freeze: Freeze | None, targets: Iterable[Target], hook_owed: bool,
                    last_thaw: ThawRecord | None) -> dict[str, Any]:
    """The snapshot of a machine's state (``targets``: the superblocks that may be ours)."""
    return {
        "version": VERSION,
        "epoch": epoch,
        "freeze": None if freeze is None else {
            "epoch": freeze.epoch, "frozen-at": freeze.frozen_at, "deadline": freeze.deadline,
            "deadline-mono": freeze.deadline_mono, "broken": freeze.broken,
        },
        # A FIFREEZE returning changes nothing here: one write a wave, not one a superblock.
        "superblocks": [
            {"device": list(target.device), "path": target.path, "type": target.fstype,
             "source": target.source}
            for target in targets
        ],
        "hook-owed": hook_owed,
        "last-thaw": last_thaw.as_dict() if last_thaw else None,
    }


def monotonic_deadline(snapshot: Mapping[str, Any] | None) -> float | None:
    """The CLOCK_MONOTONIC instant by which the agent must have ended the freeze this snapshot
    holds; None when it holds no superblock, has no deadline, or the field is not a finite
    number (the keeper then enforces nothing; the agent's own deadline still holds)."""
    if not isinstance(snapshot, Mapping):
        return None
    freeze, superblocks = snapshot.get("freeze"), snapshot.get("superblocks")
    if not (isinstance(superblocks, list) and superblocks and isinstance(freeze, Mapping)):
        return None
    value = freeze.get("deadline-mono")
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def parse_snapshot(snapshot: Mapping[str, Any]) -> SavedState:
    """Validate every field; raise :class:`CorruptState` naming the first bad one."""
    if not isinstance(snapshot, Mapping):
        raise CorruptState("not a JSON object")

    def number(value: Any, name: str, optional: bool = False) -> float | None:
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise CorruptState(f"{name} is not a finite number: {str(value)[:40]!r}")
        return float(value)

    epoch = snapshot.get("epoch", 0)
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise CorruptState(f"epoch is not a non-negative integer: {str(epoch)[:40]!r}")
    targets = []
    raw_sbs = snapshot.get("superblocks", [])
    if not isinstance(raw_sbs, list):
        raise CorruptState("superblocks is not a list")
    for raw in raw_sbs:
        if not isinstance(raw, Mapping):
            raise CorruptState("a superblock is not an object")
        device, path = raw.get("device"), raw.get("path")
        if not (isinstance(device, list) and len(device) == 2
                and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in device)):
            raise CorruptState(f"a superblock's device is not [major, minor]: {str(device)[:40]!r}")
        if not isinstance(path, str) or not path.startswith("/"):
            raise CorruptState(f"a superblock's path is not absolute: {str(path)[:40]!r}")
        targets.append(Target((device[0], device[1]), path, str(raw.get("type", "")),
                              str(raw.get("source", ""))))
    freeze = None
    raw_freeze = snapshot.get("freeze")
    if raw_freeze is not None:
        if not isinstance(raw_freeze, Mapping):
            raise CorruptState("freeze is not an object")
        f_epoch = raw_freeze.get("epoch")
        if isinstance(f_epoch, bool) or not isinstance(f_epoch, int) or f_epoch < 0:
            raise CorruptState(f"freeze.epoch is not a non-negative integer: {str(f_epoch)[:40]!r}")
        at = number(raw_freeze.get("frozen-at"), "freeze.frozen-at")
        deadline = number(raw_freeze.get("deadline"), "freeze.deadline", optional=True)
        broken = raw_freeze.get("broken", "")
        freeze = Freeze(f_epoch, at or 0.0, None, deadline, None, broken if isinstance(broken, str) else "")
        epoch = max(epoch, f_epoch)
    last = snapshot.get("last-thaw")
    last_thaw = None
    if last is not None:
        if not isinstance(last, Mapping):
            raise CorruptState("last-thaw is not an object")
        l_epoch = last.get("epoch")
        if isinstance(l_epoch, bool) or not isinstance(l_epoch, int):
            raise CorruptState(f"last-thaw.epoch is not an integer: {str(l_epoch)[:40]!r}")
        try:
            reason = ThawReason(last.get("reason"))
        except ValueError:
            raise CorruptState(f"last-thaw.reason is unknown: {str(last.get('reason'))[:40]!r}") from None
        last_thaw = ThawRecord(l_epoch, reason, number(last.get("at"), "last-thaw.at") or 0.0,
                               str(last.get("detail", ""))[:1000])
        epoch = max(epoch, l_epoch)
    hook_owed = snapshot.get("hook-owed", False)
    return SavedState(epoch, tuple(targets), freeze, last_thaw, hook_owed is True)
