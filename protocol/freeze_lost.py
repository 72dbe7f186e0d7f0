"""The words of a FREEZE_LOST error: built here, and parsed back by the function next to it.

The agent reports "that freeze did not hold until this thaw" as the error kind FREEZE_LOST.  A
channel that carries only qemu-ga's two error classes (the qga dialect, libvirt) loses the kind,
so the host gets it back from the words: the agent writes them with :func:`freeze_lost_text`, the
host reads them with :func:`parse_freeze_lost`.  One module owns both, so they cannot drift apart.
"""

from __future__ import annotations

import re
from enum import Enum
from typing import NamedTuple


class LostHow(Enum):
    """Why freeze N is lost: the words that follow ``freeze N``."""

    DID_NOT_HOLD = "did not hold"                # it was ours, and (part of) it ended early
    NOT_IN_FORCE = "is not the freeze in force"  # another freeze is in force now
    UNKNOWN = "is unknown or long over"          # no record of it


class FreezeLostText(NamedTuple):
    """A FREEZE_LOST message taken apart."""

    epoch: int
    how: LostHow
    why: str


def freeze_lost_text(epoch: int, how: LostHow, why: str) -> str:
    """``freeze 3 did not hold: WHY``; the other two say ``freeze 3 is ... (WHY)``."""
    if how is LostHow.DID_NOT_HOLD:
        return f"freeze {epoch} {how.value}: {why}"
    return f"freeze {epoch} {how.value} ({why})"


_TEXT = re.compile(rf"freeze (-?\d+) ({'|'.join(re.escape(how.value) for how in LostHow)})(.*)", re.S)


def parse_freeze_lost(text: str) -> FreezeLostText | None:
    """The parts of a message :func:`freeze_lost_text` wrote, or None if it is not one."""
    match = _TEXT.match(text)
    if match is None:
        return None
    rest = match.group(3)
    if rest.startswith(": "):
        why = rest[2:]
    elif rest.startswith(" (") and rest.endswith(")"):
        why = rest[2:-1]
    else:
        why = rest.strip()
    return FreezeLostText(int(match.group(1)), LostHow(match.group(2)), why)
