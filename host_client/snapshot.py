"""A consistent external disk snapshot: freeze through the agent, snapshot through QMP, thaw.

This is the job the agent exists for.  The sequence and what each step guarantees:
1. freeze (all, or chosen mount points) with an auto-thaw deadline, so a host that dies here
   cannot leave the guest frozen;
2. ``blockdev-snapshot-sync`` for one disk, or one ``transaction`` for several (all disks
   switch at the same instant): the image that was the top layer stops changing and becomes
   the snapshot; a new overlay takes the writes;
3. thaw with the freeze's epoch: if the freeze did not hold until now (auto-thaw, agent death,
   someone else's thaw), :class:`~pyqga.host_client.errors.FreezeLost` says the snapshot may be
   inconsistent.
The report gives each step's duration and how long the guest was frozen.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from pyqga.host_client.client import AgentClient, renamed
from pyqga.host_client.errors import FreezeLost

DEFAULT_FREEZE_TIMEOUT = 60.0


class QMP(Protocol):
    """What the snapshot needs from a QMP connection; ``host_client.qmp.QMPConnection`` is one."""

    def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any: ...


@dataclass
class DiskSnapshot:
    device: str
    snapshot: str   # the image that now holds the snapshot (the old top layer)
    overlay: str    # the new top layer that takes the guest's writes


@dataclass
class SnapshotReport:
    quiesced: bool
    frozen_filesystems: int = 0
    epoch: int | None = None
    freeze_seconds: float = 0.0
    snapshot_seconds: float = 0.0
    thaw_seconds: float = 0.0
    frozen_seconds: float = 0.0   # from the freeze reply to the thaw reply
    total_seconds: float = 0.0
    disks: list[DiskSnapshot] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def current_images(qmp: QMP, devices: Sequence[str]) -> dict[str, str]:
    """The top image file of each device now: what a snapshot freezes in place."""
    found = {}
    for block in qmp.execute("query-block"):
        name = block.get("device") or block.get("qdev", "")
        inserted = block.get("inserted")
        if name in devices and inserted:
            found[name] = inserted["file"]
    missing = [d for d in devices if d not in found]
    if missing:
        raise ValueError(f"no such block device(s) in the VM: {', '.join(missing)}")
    return found


def snapshot_disks(qmp: QMP, overlays: Mapping[str, str], fmt: str = "qcow2") -> None:
    """Switch every device to its new overlay; several devices in one atomic transaction."""
    actions = [{"device": device, "snapshot-file": path, "format": fmt} for device, path in overlays.items()]
    if len(actions) == 1:
        qmp.execute("blockdev-snapshot-sync", actions[0])
    else:
        qmp.execute("transaction", {"actions": [{"type": "blockdev-snapshot-sync", "data": a}
                                                for a in actions]})


def take_snapshot(
    qmp: QMP,
    overlays: Mapping[str, str],
    agent: AgentClient | None = None,
    *,
    mountpoints: Sequence[str] | None = None,
    thaw_after: float | None = None,
    freeze_timeout: float | None = None,
) -> SnapshotReport:
    """Snapshot the devices in ``overlays`` (device -> new overlay file); quiesced through
    ``agent`` when given, whose agent thaws by itself after ``thaw_after`` seconds (default
    DEFAULT_FREEZE_TIMEOUT; ``freeze_timeout`` is its old name).  Raises FreezeLost (after the
    snapshot and thaw, with the report as its ``report`` attribute) if the freeze did not hold."""
    thaw_after = renamed(thaw_after, freeze_timeout, "thaw_after", "freeze_timeout", "take_snapshot")
    if thaw_after is None:
        thaw_after = DEFAULT_FREEZE_TIMEOUT
    before = current_images(qmp, list(overlays))
    report = SnapshotReport(quiesced=agent is not None)
    start = time.perf_counter()
    if agent is None:
        snapshot_disks(qmp, overlays)
        report.snapshot_seconds = time.perf_counter() - start
    else:
        frozen_since = 0.0
        try:

            with agent.frozen(mountpoints, thaw_after=thaw_after) as freeze:
                frozen_since = time.perf_counter()
                report.freeze_seconds = frozen_since - start
                report.frozen_filesystems, report.epoch = freeze.count, freeze.epoch
                snapshot_disks(qmp, overlays)
                report.snapshot_seconds = time.perf_counter() - frozen_since
        except FreezeLost as lost:
            lost.report = report  # type: ignore[attr-defined]
            raise
        finally:
            if frozen_since:
                thawed = time.perf_counter()
                report.thaw_seconds = thawed - frozen_since - report.snapshot_seconds
                report.frozen_seconds = thawed - frozen_since
                report.total_seconds = thawed - start
                report.disks = [DiskSnapshot(d, before[d], overlays[d]) for d in overlays]
    report.total_seconds = time.perf_counter() - start
    report.disks = [DiskSnapshot(device, before[device], overlays[device]) for device in overlays]
    return report


def format_report(report: SnapshotReport) -> str:
    """Lines for a human: what was snapshotted, and how long each step and the freeze took."""
    lines = []
    if report.quiesced:
        lines.append(f"quiesced: froze {report.frozen_filesystems} filesystem(s), epoch {report.epoch}")
    else:
        lines.append("not quiesced: the snapshot is crash-consistent only")
    for disk in report.disks:
        lines.append(f"  {disk.device}: snapshot in {disk.snapshot}; writes now go to {disk.overlay}")
    for label, value in (("freeze", report.freeze_seconds), ("snapshot", report.snapshot_seconds),
                         ("thaw", report.thaw_seconds), ("guest frozen", report.frozen_seconds),
                         ("total", report.total_seconds)):
        if report.quiesced or label in ("snapshot", "total"):
            lines.append(f"  {label:<13}{value * 1000:9.1f} ms")
    return "\n".join(lines)
