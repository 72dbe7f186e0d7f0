"""The nemesis: every fault a test starts, recorded, so that all of them end with the test.

:class:`Nemesis` wraps a client's :class:`~pyqga.host_client.faults.Faults`.  Each lease and plan
started through it is recorded; :meth:`Nemesis.revert_all` ends them (a plan with the faults it
started), whether or not they had ended already, and :meth:`Nemesis.events` reads the timeline
from where the nemesis began.  The pytest plugin (:mod:`pyqga.host_client.pytest_plugin`) makes
one per test and calls ``revert_all`` at the test's end; nothing here knows about pytest.

Seeds: a nemesis has one seed (the plugin derives it from the session's ``--pyqga-seed`` and the
test's id) and a ``random.Random`` made from it.  A plan or an inject given no seed gets the
next 32-bit draw of that generator, so a test that makes the same calls in the same order gets
the same schedules again with the same seed.
"""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from pyqga.host_client.errors import AgentCallError, AgentClientError
from pyqga.host_client.faults import LATEST, Fault, FaultEvent, Faults, Plan, end_lease_op


@dataclass(frozen=True)
class Reverted:
    """What :meth:`Nemesis.revert_all` did: ids it ended now, ids that had ended already, and
    (id, error) for each revert that failed (that lease still ends by its deadline)."""

    ended: tuple[str, ...] = ()
    already: tuple[str, ...] = ()
    failed: tuple[tuple[str, str], ...] = ()

    def describe(self) -> str:
        parts = []
        if self.ended:
            parts.append(f"reverted {', '.join(self.ended)}")
        if self.already:
            parts.append(f"already ended {', '.join(self.already)}")
        for lease_id, error in self.failed:
            parts.append(f"could not revert {lease_id} ({error}); the agent ends it by its deadline")
        return "; ".join(parts) or "no faults to revert"


@dataclass
class Nemesis:
    """Faults for one test, all reverted together: ``inject`` and ``plan`` as on
    :class:`~pyqga.host_client.faults.Faults`, each recorded."""

    faults: Faults
    seed: int
    random: random.Random = field(init=False)
    leases: list[Fault | Plan] = field(default_factory=list, init=False)
    cursor: int = field(default=0, init=False)       # the timeline's cursor when the nemesis began
    # A request sent whose reply never came (Ctrl-C during the call): (kind, target), so that
    # revert_all can find its lease in the timeline.
    _pending: list[tuple[str, str]] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self.random = random.Random(self.seed)
        _, self.cursor = self.faults.events(LATEST)   # past the end: no events, just the cursor

    def next_seed(self) -> int:
        return self.random.getrandbits(32)

    def inject(self, kind: str, target: str, duration: float, params: Mapping[str, Any] | None = None,
               force: bool = False, seed: int | None = None) -> Fault:
        """:meth:`Faults.inject`, recorded; ``seed`` defaults to the nemesis's next draw."""
        with self._sending(kind, target):
            fault = self.faults.inject(kind, target, duration, params, force,
                                       self.next_seed() if seed is None else seed)
        self.leases.append(fault)
        return fault

    def plan(self, steps: Sequence[Mapping[str, Any]], repeat: int = 1, seed: int | None = None) -> Plan:
        """:meth:`Faults.plan`, recorded; ``seed`` defaults to the nemesis's next draw."""
        with self._sending("plan", ""):
            plan = self.faults.plan(self.next_seed() if seed is None else seed, steps, repeat)
        self.leases.append(plan)
        return plan

    @contextmanager
    def _sending(self, kind: str, target: str) -> Iterator[None]:
        self._pending.append((kind, target))
        try:
            yield
        except AgentCallError:   # the agent answered (a refusal): nothing started
            self._pending.pop()
            raise
        self._pending.pop()      # otherwise (Ctrl-C, a timeout, a lost channel) it stays pending

    @property
    def plans(self) -> list[Plan]:
        return [lease for lease in self.leases if isinstance(lease, Plan)]

    def revert_all(self) -> Reverted:
        """End every recorded lease, newest first (a plan before the faults it started), and any
        lease an interrupted request started.  SIGINT is ignored meanwhile (main thread only), so a
        second Ctrl-C cannot cut a revert in half; each revert is bounded by the client's timeout."""
        with _no_interrupts():
            session = self.faults.session()
            # An interrupted call may have left half an exchange on the channel: resync first.
            session.needs_resync = not session.synchronised
            ids = [lease.id for lease in reversed(self.leases)]
            if self._pending:
                ids += self._orphans(ids)
            ended: list[str] = []
            already: list[str] = []
            failed: list[tuple[str, str]] = []
            for lease_id in ids:
                try:
                    (ended if self.faults.run(end_lease_op(self.faults.session(), lease_id)) else
                     already).append(lease_id)
                except AgentClientError as exc:
                    failed.append((lease_id, str(exc)))
            self._pending.clear()
            return Reverted(tuple(ended), tuple(already), tuple(failed))

    def _orphans(self, known: list[str]) -> list[str]:
        """Leases armed since the nemesis began for a request whose reply never came."""
        try:
            events = self.events()
        except AgentClientError:
            return []
        return [e.id for e in events if e.event == "armed" and e.id is not None and e.id not in known
                and e.plan is None and any(e.kind == kind and (e.target == target or kind == "plan")
                                           for kind, target in self._pending)]

    def events(self) -> list[FaultEvent]:
        """Every timeline event since the nemesis began."""
        out: list[FaultEvent] = []
        since = self.cursor
        while True:
            batch, cursor = self.faults.events(since)
            out += batch
            if not batch or cursor <= since:
                return out
            since = cursor


@contextmanager
def _no_interrupts() -> Iterator[None]:
    try:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:   # not the main thread: signals cannot reach this code anyway
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def format_timeline(events: Sequence[FaultEvent]) -> str:
    """The events as text, one a line, with seconds since the first on the guest's monotonic
    clock (a clock fault does not bend it; ``boot`` marks a reboot, where that clock restarts)."""
    if not events:
        return "(no fault events)"
    lines = []
    base, boot = events[0].mono, events[0].boot_id
    for event in events:
        if event.boot_id != boot:
            lines.append(f"-- boot {event.boot_id[:8]} (the monotonic clock restarts) --")
            base, boot = event.mono, event.boot_id
        why = event.reason or event.detail
        clock = time.strftime("%H:%M:%S", time.localtime(event.wall)) + f".{int(event.wall % 1 * 1000):03d}"
        lines.append(f"{event.mono - base:+9.3f}s {clock} {event.event:<13} {event.id or '-':<5} "
                     f"{event.kind} {event.target}" + (f" ({why})" if why else "")
                     + (f" [plan {event.plan}]" if event.plan else ""))
    return "\n".join(lines)
