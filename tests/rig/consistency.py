"""Proof that a freeze makes a snapshot consistent: snapshot a busy guest with and without it.

The guest runs a workload on /data (numbered fixed-width lines appended to a log, small files
rewritten and renamed).  Two external snapshots of the data disk are taken through QMP, one
plain and one quiesced through the agent, and each snapshot image is examined on the host:

- ``needs_recovery`` in ``dumpe2fs -h``: ext4 clears it during a successful freeze, so a
  quiesced snapshot must not have it, while a plain one of a busy filesystem practically always
  does (REFERENCE.md: 20 of 20 runs).  This flag, not ``e2fsck -fn``, tells the two apart.
- ``e2fsck -fn`` exit status (0: clean; 4: errors left uncorrected);
- the workload's log after journal replay on a scratch copy (what a restore would see): every
  line in order, no torn line, no zero-filled tail.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pyqga.host_client.qmp import QMPConnection
from pyqga.host_client.snapshot import SnapshotReport, take_snapshot
from tests.rig.guest_files import WORKLOAD_LINE_WIDTH, WORKLOAD_LOG
from tests.rig.machine import GuestVM

DATA_DEVICE = "data"


@dataclass
class ImageCheck:
    needs_recovery: bool
    fsck_status: int
    log_lines: int
    log_problem: str | None  # None: the log is intact

    @property
    def consistent(self) -> bool:
        return not self.needs_recovery and self.fsck_status == 0 and self.log_problem is None

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "consistent": self.consistent}


@dataclass
class SnapshotTrial:
    report: SnapshotReport
    check: ImageCheck


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, errors="replace", timeout=300)
    if check and result.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({result.returncode}): {result.stderr.strip()[-500:]}")
    return result


def as_raw(image: Path, scratch: Path) -> Path:
    """A raw copy of a snapshot image (qcow2 layers are converted; ``-U``: QEMU holds a lock)."""
    header = image.read_bytes()[:4] if image.stat().st_size >= 4 else b""
    target = scratch / f"{image.stem}.raw"
    if header == b"QFI\xfb":
        _run("qemu-img", "convert", "-U", "-f", "qcow2", "-O", "raw", str(image), str(target))
    else:
        shutil.copyfile(image, target)
    return target


def verify_log(data: bytes) -> tuple[int, str | None]:
    """(complete lines, problem or None) for the workload's fixed-width numbered log."""
    if b"\0" in data:
        zeros = len(data) - len(data.rstrip(b"\0"))
        where = f"a tail of {zeros} NUL bytes" if zeros else f"NUL bytes at offset {data.index(0)}"
        return data.count(b"\n"), f"the log contains {where}"
    lines = data.split(b"\n")
    if lines[-1]:
        return len(lines) - 1, f"the log ends in a torn line {lines[-1][:20]!r}"
    lines.pop()
    for number, line in enumerate(lines, start=1):
        expected = b"%0*d" % (WORKLOAD_LINE_WIDTH - 1, number)
        if line != expected:
            return number - 1, f"line {number} is {line[:20]!r}, expected {expected!r}"
    return len(lines), None


def check_image(image: Path, scratch: Path) -> ImageCheck:
    """Examine one snapshot image of the data disk (never the live top layer)."""
    scratch.mkdir(parents=True, exist_ok=True)
    raw = as_raw(image, scratch)
    header = _run("dumpe2fs", "-h", str(raw)).stdout
    features = next((line for line in header.splitlines() if line.startswith("Filesystem features:")), "")
    fsck = _run("e2fsck", "-fn", str(raw), check=False)
    replayed = scratch / f"{raw.stem}-replayed.raw"
    shutil.copyfile(raw, replayed)
    _run("e2fsck", "-fy", str(replayed), check=False)  # journal replay, as a restore would do
    log = subprocess.run(["debugfs", "-R", f"cat /{WORKLOAD_LOG}", str(replayed)], capture_output=True,
                         timeout=300).stdout
    lines, problem = verify_log(log)
    if not log:
        problem = "the log is missing or empty"
    for path in (raw, replayed):
        path.unlink(missing_ok=True)
    return ImageCheck("needs_recovery" in features, fsck.returncode, lines, problem)


def compare(vm: GuestVM, scratch: Path, agent: str = "pyqga-virtio",
            settle: float = 2.0) -> tuple[SnapshotTrial, SnapshotTrial]:
    """A plain and a quiesced snapshot of the busy data disk, each examined: (plain, quiesced)."""
    time.sleep(settle)  # let the workload get going
    with QMPConnection(vm.qmp_socket) as qmp, vm.client(agent, timeout=60) as client:
        plain = take_snapshot(qmp, {DATA_DEVICE: str(scratch / "after-plain.qcow2")})
        time.sleep(1.0)
        quiesced = take_snapshot(qmp, {DATA_DEVICE: str(scratch / "after-quiesced.qcow2")}, client,
                                 mountpoints=["/data"])
    return tuple(  # type: ignore[return-value]
        SnapshotTrial(report, check_image(Path(report.disks[0].snapshot), scratch / f"check-{name}"))
        for name, report in (("plain", plain), ("quiesced", quiesced))
    )


def format_comparison(plain: SnapshotTrial, quiesced: SnapshotTrial) -> str:
    """The two snapshots side by side, for a human."""

    def ms(seconds: float) -> str:
        return f"{seconds * 1000:.1f} ms"

    def yes(flag: bool) -> str:
        return "yes" if flag else "no"

    rows = [
        ("", "without freeze", "with freeze (pyqga)"),
        ("filesystems frozen", "-", str(quiesced.report.frozen_filesystems)),
        ("freeze", "-", ms(quiesced.report.freeze_seconds)),
        ("snapshot (QMP)", ms(plain.report.snapshot_seconds), ms(quiesced.report.snapshot_seconds)),
        ("thaw", "-", ms(quiesced.report.thaw_seconds)),
        ("guest frozen for", "-", ms(quiesced.report.frozen_seconds)),
        ("needs_recovery flag", yes(plain.check.needs_recovery), yes(quiesced.check.needs_recovery)),
        ("e2fsck -fn exit status", str(plain.check.fsck_status), str(quiesced.check.fsck_status)),
        ("log lines after replay", str(plain.check.log_lines), str(quiesced.check.log_lines)),
        ("log intact", plain.check.log_problem or "yes", quiesced.check.log_problem or "yes"),
        ("consistent", yes(plain.check.consistent), yes(quiesced.check.consistent)),
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
                     for row in rows)
