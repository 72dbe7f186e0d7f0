"""The keeper's end of fault leases: undo every lease the agent's last snapshot holds.

Run when the agent died (its pipe closed) or was ended for holding a lease past its deadline.
The snapshot is untrusted (:func:`pyqga.agent.faults.snapshot.parse_leases`); each lease's undo
steps run through the same code the agent uses (:mod:`pyqga.agent.faults.recipes`), those that
release held I/O (thaw, dm resume) of every lease first.  Every undo step is idempotent, so running
this twice (once at once, once after the agent is gone, in case an apply was still in the kernel)
restores the kernel once.

What it did goes to the timeline file (``reverted`` with the reason, or ``revert-failed``) and
to the fault state file, which then holds only the leases it could not undo: the next agent
retries them.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from typing import Any

from pyqga.agent.faults.machine import LeaseBook
from pyqga.agent.faults.recipes import RELEASES_IO, FaultKernel, run_steps
from pyqga.agent.faults.snapshot import FAULTS_STATE, parse_leases
from pyqga.agent.faults.timeline import EVENTS_FILE, append_line, read_boot_id
from pyqga.agent.faults.vocabulary import EndReason, Event, Lease
from pyqga.agent.freeze.snapshot import CorruptState
from pyqga.agent.freeze.statefile import StateFile


def end_leases(statedir: str, snapshot: Mapping[str, Any] | None, reason: EndReason,
               kernel: FaultKernel, record: bool = True) -> list[Lease]:
    """Undo the leases of ``snapshot``; the ones that failed.  ``record``: write the timeline
    and the state file (the second, silent pass does not)."""
    if snapshot is None:
        return []
    try:
        leases, next_id = parse_leases(snapshot)
    except CorruptState:
        return []   # the agent wrote it, so a bug of ours; the next agent reads the state file
    if not leases:
        return []
    errors: dict[str, str] = {}
    for releasing in (True, False):   # every lease's thaw and resume first: the rest may wait on them
        for lease in leases:
            if lease.id not in errors:
                error, _ = run_steps([s for s in lease.undo if (s.get("op") in RELEASES_IO) == releasing],
                                     kernel)
                if error is not None:
                    errors[lease.id] = error
    failed = [lease for lease in leases if lease.id in errors]
    if record:
        boot_id, events = read_boot_id(), f"{statedir}/{EVENTS_FILE}"
        for lease in leases:
            name = "revert-failed" if lease.id in errors else "reverted"
            event = Event(name, lease.id, lease.kind, lease.target, time.monotonic(), time.time(),
                          reason.value, errors.get(lease.id, ""))
            with contextlib.suppress(OSError):
                append_line(events, event.as_dict(boot_id))
        left = LeaseBook(next_id)   # the state file's format has one writer: the book
        left.leases = {lease.id: lease for lease in failed}
        with contextlib.suppress(OSError):
            StateFile(statedir, FAULTS_STATE).write(left.snapshot())
    return failed
