"""Consistency groups: freeze several guests at once, snapshot them all, thaw, and say whether
the group was consistent.

A multi-VM application (a database and its application server, a cluster) is consistent on
disk only if every member was frozen at the same time.  The sequence:

1. freeze every guest concurrently, each with the agent's auto-thaw deadline set to the
   group's where the agent has one (a group whose host dies thaws by itself);
2. all or nothing: if any freeze fails, or the group deadline passes first, thaw every guest
   and report which one failed; nothing is marked consistent;
3. when all are frozen, take every guest's snapshot (its ``snapshot`` callable: QMP, libvirt...);
4. thaw all, checking each freeze's epoch where the agent has epochs;
5. report per guest (freeze, frozen window, snapshot and thaw times) and for the group the
   overlap window, from the last freeze done to the first thaw started.  The group is
   consistent only if that window exists and every freeze held.

Every guest's freezing is :meth:`AsyncAgentClient.frozen`'s own, so whatever fails after a
freeze was sent, that guest is thawed; the group adds only the all-or-nothing rule and timing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from pyqga.host_client.aio import AsyncAgentClient
from pyqga.host_client.errors import AgentClientError, FreezeLost


@dataclass(frozen=True)
class Member:
    """One guest: its agent's address, the mount points to freeze (None: all), and what takes
    its snapshot while the group is frozen (None: freeze only)."""

    address: str
    mountpoints: tuple[str, ...] | None = None
    snapshot: Callable[[], Awaitable[Any]] | None = None
    dialect: str = "qga"


@dataclass
class MemberReport:
    address: str
    frozen_filesystems: int = 0
    epoch: int | None = None
    auto_thaw: bool | None = None
    freeze_seconds: float | None = None     # request to reply
    snapshot_seconds: float | None = None
    thaw_seconds: float | None = None
    frozen_seconds: float | None = None     # freeze reply to thaw reply
    held: bool | None = None                # None: not known (no epochs) or never frozen
    error: str | None = None


@dataclass
class GroupReport:
    members: list[MemberReport]
    consistent: bool = False
    all_frozen_seconds: float | None = None  # from the start to the last freeze reply
    overlap_seconds: float | None = None     # last freeze reply to the first thaw request
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class GroupFailed(AgentClientError):
    """A member could not be frozen in time; every member was thawed.  ``report`` says which."""

    def __init__(self, message: str, report: GroupReport) -> None:
        super().__init__(message)
        self.report = report


# How long a failed group waits for its members' thaws before it reports.  A member whose agent
# never answers cannot be thawed by a request either (its own auto-thaw, where it has one, does).
ABORT_GRACE = 5.0


class _Member:
    """One member's run: open, freeze (with its agent's own thaw-on-failure), wait for the
    group, snapshot, wait, thaw on leaving ``frozen()``."""

    def __init__(self, member: Member, report: MemberReport, deadline: float, call_timeout: float) -> None:
        self.member, self.report = member, report
        self.deadline, self.call_timeout = deadline, call_timeout
        self.frozen = asyncio.Event()
        self.snapshotted = asyncio.Event()
        self.go_snapshot = asyncio.Event()
        self.go_thaw = asyncio.Event()
        self.abort = False
        self.frozen_at: float | None = None

    async def run(self) -> None:
        mine = self.report
        thaw_started: float | None = None
        try:
            async with AsyncAgentClient(self.member.address, dialect=self.member.dialect,
                                        timeout=min(self.call_timeout, self.deadline)) as client:
                t0 = time.monotonic()
                async with client.frozen(self.member.mountpoints, thaw_after=self.deadline,
                                         call_timeout=self.deadline) as freeze:
                    self.frozen_at = time.monotonic()
                    mine.freeze_seconds = self.frozen_at - t0
                    mine.frozen_filesystems, mine.epoch = freeze.count, freeze.epoch
                    mine.auto_thaw = freeze.auto_thaw
                    self.frozen.set()
                    await self.go_snapshot.wait()
                    if not self.abort:
                        await self._snapshot()
                    self.snapshotted.set()
                    await self.go_thaw.wait()
                    thaw_started = time.monotonic()
                if mine.epoch is not None and not self.abort:
                    mine.held = True
        except FreezeLost as lost:
            mine.held = False
            mine.error = f"the freeze did not hold: {lost.error.message}"
        except asyncio.CancelledError:
            mine.error = mine.error or "not frozen before the group deadline"
            raise
        except Exception as exc:
            mine.error = str(exc)
        finally:
            if thaw_started is not None and self.frozen_at is not None:
                mine.thaw_seconds = time.monotonic() - thaw_started
                mine.frozen_seconds = time.monotonic() - self.frozen_at
            self.frozen.set()  # a failed member must not keep the group waiting
            self.snapshotted.set()

    async def _snapshot(self) -> None:
        if self.member.snapshot is None:
            return
        t0 = time.monotonic()
        try:
            await self.member.snapshot()
        except Exception as exc:
            self.report.error = f"snapshot failed: {exc}"
        self.report.snapshot_seconds = time.monotonic() - t0


async def group_snapshot(members: Sequence[Member], deadline: float, *,
                         call_timeout: float = 10.0) -> GroupReport:
    """Run the sequence of the module docstring; ``deadline``: seconds for the whole group
    to be frozen, and the agents' auto-thaw.  Raises :class:`GroupFailed` (all thawed) when
    a member cannot be frozen in time; otherwise returns the report, ``consistent`` or not."""
    if not members:
        raise ValueError("a group needs at least one guest")
    start = time.monotonic()
    report = GroupReport([MemberReport(m.address) for m in members])
    runs = [_Member(m, r, deadline, call_timeout) for m, r in zip(members, report.members, strict=True)]
    tasks = [asyncio.create_task(run.run()) for run in runs]
    try:
        return await _run_group(report, runs, tasks, deadline, start)
    except asyncio.CancelledError:
        # Cancelled (Ctrl-C in the CLI): every member leaves its frozen() and so thaws.
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks, timeout=ABORT_GRACE + call_timeout)
        raise


async def _run_group(report: GroupReport, runs: list[_Member], tasks: list[asyncio.Task[None]],
                     deadline: float, start: float) -> GroupReport:
    try:
        all_in = asyncio.gather(*(run.frozen.wait() for run in runs))
        await asyncio.wait_for(all_in, max(0.0, deadline - (time.monotonic() - start)))
    except TimeoutError:
        pass
    failed = [run for run in runs if run.frozen_at is None or run.report.error]
    if failed:
        for run in failed:
            run.report.error = run.report.error or "not frozen before the group deadline"
        report.error = "; ".join(f"{run.member.address}: {run.report.error}" for run in failed)
        for run in runs:
            run.abort = True
            run.go_snapshot.set()
            run.go_thaw.set()
        for run, task in zip(runs, tasks, strict=True):
            if run.frozen_at is None:
                task.cancel()  # its freeze may still be in flight: the cancel thaws it if it can
        await asyncio.wait(tasks, timeout=ABORT_GRACE)
        raise GroupFailed(f"group not frozen: {report.error}; every frozen guest was thawed", report)
    last_frozen = max(run.frozen_at for run in runs if run.frozen_at is not None)
    report.all_frozen_seconds = last_frozen - start
    for run in runs:
        run.go_snapshot.set()
    await asyncio.gather(*(run.snapshotted.wait() for run in runs))
    report.overlap_seconds = time.monotonic() - last_frozen
    for run in runs:
        run.go_thaw.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    errors = [f"{m.address}: {m.error}" for m in report.members if m.error]
    report.error = "; ".join(errors) or None
    report.consistent = report.error is None and all(m.held is not False for m in report.members)
    return report


def parse_member(spec: str, dialect: str = "qga", timeout: float = 10.0) -> Member:
    """``ADDRESS[,mount=PATH]...[,qmp=SOCKET][,disk=DEVICE=OVERLAY...]``: a guest of a group, the
    mount points to freeze (default all), and the disks to snapshot: through its QMP monitor
    (``qmp=``), or through libvirt for a ``libvirt:`` address (DEVICE is the disk's target name,
    such as ``vdb``)."""
    address, *options = spec.split(",")
    mounts: list[str] = []
    disks: dict[str, str] = {}
    qmp_path = None
    for option in options:
        key, _, value = option.partition("=")
        if key == "mount" and value:
            mounts.append(value)
        elif key == "qmp" and value:
            qmp_path = value
        elif key == "disk" and "=" in value:
            device, _, overlay = value.partition("=")
            disks[device] = overlay
        else:
            raise ValueError(f"--guest {spec!r}: unknown option {option!r} "
                             "(mount=PATH, qmp=SOCKET, disk=DEVICE=OVERLAY)")
    through_libvirt = address.startswith("libvirt:") and qmp_path is None
    if bool(disks) != bool(qmp_path or through_libvirt):
        raise ValueError(f"--guest {spec!r}: disk= and qmp= go together (the disks are switched "
                         "to their overlays through that QMP monitor, or through libvirt for a "
                         "libvirt: address)")
    snapshot = None
    if qmp_path is not None:
        snapshot = _qmp_snapshot(qmp_path, disks, timeout)
    elif disks:
        snapshot = _libvirt_snapshot(address, disks)
    return Member(address, tuple(mounts) or None, snapshot, dialect)


def _qmp_snapshot(path: str, overlays: dict[str, str], timeout: float) -> Callable[[], Awaitable[None]]:
    async def take() -> None:
        # Here, not at the top: qemu.qmp is needed only by groups that snapshot through QMP.
        from pyqga.host_client.qmp import QMPConnection
        from pyqga.host_client.snapshot import snapshot_disks

        def blocking() -> None:
            with QMPConnection(path, timeout) as qmp:
                snapshot_disks(qmp, overlays)

        await asyncio.to_thread(blocking)

    return take


def _libvirt_snapshot(address: str, overlays: dict[str, str]) -> Callable[[], Awaitable[None]]:
    async def take() -> None:
        # Here, not at the top: libvirt-python is an optional extra.
        from pyqga.host_client.libvirt_transport import snapshot_disks

        await asyncio.to_thread(snapshot_disks, address, overlays)

    return take


def format_report(report: GroupReport) -> str:
    """Lines for a human: one per guest, then the group's verdict and windows."""
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value * 1000:.0f} ms"

    lines = [f"{'guest':<40} {'frozen':>6} {'freeze':>9} {'snapshot':>9} {'thaw':>9} {'window':>9}  held"]
    for m in report.members:
        unknown = "unknown" if m.epoch is None and m.frozen_filesystems else "-"
        held = {True: "yes", False: "NO", None: unknown}
        lines.append(f"{m.address[-40:]:<40} {m.frozen_filesystems:>6} {ms(m.freeze_seconds):>9} "
                     f"{ms(m.snapshot_seconds):>9} {ms(m.thaw_seconds):>9} {ms(m.frozen_seconds):>9}  "
                     f"{held[m.held]}" + (f"  ({m.error})" if m.error else ""))
    lines.append(f"all frozen after {ms(report.all_frozen_seconds)}; overlap window "
                 f"{ms(report.overlap_seconds)} (last freeze done to first thaw started)")
    lines.append("group CONSISTENT" if report.consistent else f"group NOT consistent: {report.error}")
    return "\n".join(lines)
