"""Soak: many freeze/thaw cycles of /data in a real guest with a writer running (issue 13).

    python -m bench.soak [--cycles 1000] [--no-write]

Boots the test guest (``harness.GuestVM``, pyqga on virtio-serial, the busy workload writing to
/data), warms up with a few cycles, then runs ``--cycles`` of ``guest-fsfreeze-freeze-list
["/data"]`` + ``guest-fsfreeze-thaw`` on one connection.  Before and after it reads the agent's
fds (``ls /proc/PID/fd`` through guest-exec), threads and RSS (``/proc/self/status`` read by the
agent itself through guest-file-read), and checks nothing is left frozen: the agent says
``thawed`` and the writer's writes reach the disk again (QEMU's block statistics).  Needs root,
KVM or TCG, and the guest image (built on first use, cached in .cache/vm).  The figures replace
the ``bench/soak.py`` section of BENCHMARKS.md unless ``--no-write``.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.report import publish, unwind_on_sigterm
from pyqga.host_client import AgentClient
from pyqga.host_client.qmp import QMPConnection
from tests.rig.image import ensure_image
from tests.rig.machine import GuestVM

SECTION = "bench/soak.py"
WARM_UP_CYCLES = 5
FREEZE_TIMEOUT = 60  # auto-thaw per freeze, should a cycle stall
CALL_TIMEOUT = 120.0


@dataclass
class AgentStats:
    fds: int
    threads: int
    rss_kib: int
    hwm_kib: int

    def line(self) -> str:
        return (f"{self.fds} fds, {self.threads} threads, RSS {self.rss_kib / 1024:.1f} MiB "
                f"(peak {self.hwm_kib / 1024:.1f} MiB)")


def agent_stats(client: AgentClient) -> AgentStats:
    status = client.read_file("/proc/self/status").decode()
    fields = dict(re.findall(r"^(\w+):\s+(\d+)", status, re.MULTILINE))
    pid = fields["Pid"]
    listing = client.exec(["sh", "-c", f"ls /proc/{pid}/fd | wc -l"], kill_after=60)
    return AgentStats(int(listing.stdout), int(fields["Threads"]), int(fields["VmRSS"]), int(fields["VmHWM"]))


def data_writes(vm: GuestVM) -> int:
    """Write operations QEMU has completed on the data disk so far."""
    with QMPConnection(vm.qmp_socket) as qmp:
        for entry in qmp.execute("query-blockstats"):
            if entry.get("device") == "data" or entry.get("qdev", "").endswith("data"):
                return int(entry["stats"]["wr_operations"])
    raise RuntimeError("no block statistics for the data disk")


def writes_during(vm: GuestVM, seconds: float) -> int:
    before = data_writes(vm)
    time.sleep(seconds)
    return data_writes(vm) - before


def cycle(client: AgentClient) -> tuple[float, float]:
    """One freeze of /data and its thaw; (freeze seconds, thaw seconds)."""
    start = time.perf_counter()
    count = client.call("guest-fsfreeze-freeze-list", {"mountpoints": ["/data"], "timeout": FREEZE_TIMEOUT},
                        timeout=CALL_TIMEOUT)
    frozen = time.perf_counter()
    thawed = client.call("guest-fsfreeze-thaw", timeout=CALL_TIMEOUT)
    if count != 1 or thawed != 1:
        raise RuntimeError(f"froze {count}, thawed {thawed}: expected 1 and 1")
    return frozen - start, time.perf_counter() - frozen


def quantiles(values: list[float]) -> str:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return (f"p50 {statistics.median(ordered) * 1e3:.1f} ms, p99 {p99 * 1e3:.1f} ms, "
            f"max {ordered[-1] * 1e3:.1f} ms")


def soak(cycles: int, workdir: Path) -> str:
    image = ensure_image()
    with GuestVM(workdir, agents=("pyqga-virtio",), image=image, kernel_args=("pyqga.workload=1",)) as vm, \
            vm.client("pyqga-virtio", timeout=CALL_TIMEOUT) as client:
        if writes_during(vm, 1.5) <= 0:
            raise RuntimeError("the workload is not writing to /data")
        for _ in range(WARM_UP_CYCLES):
            cycle(client)
        before = agent_stats(client)
        print(f"before: {before.line()}", flush=True)
        freezes, thaws = [], []
        started = time.perf_counter()
        for index in range(cycles):
            freeze_s, thaw_s = cycle(client)
            freezes.append(freeze_s)
            thaws.append(thaw_s)
            if (index + 1) % 100 == 0:
                print(f"  {index + 1} cycles, {time.perf_counter() - started:.0f} s", flush=True)
        elapsed = time.perf_counter() - started
        after = agent_stats(client)
        print(f"after:  {after.line()}", flush=True)
        status = client.call("guest-fsfreeze-status")
        info = client.call("guest-fsfreeze-info")
        writes = writes_during(vm, 1.5)
        version = client.call("guest-info")["version"]
    left = "nothing" if status == "thawed" and not info["frozen"] else f"{status}: {info['frozen']}"
    ok = (status == "thawed" and writes > 0 and after.fds <= before.fds and after.threads <= before.threads
          and after.rss_kib - before.rss_kib < 5 * 1024)
    rows = [
        "| | before | after |",
        "|---|---:|---:|",
        f"| agent fds | {before.fds} | {after.fds} |",
        f"| agent threads | {before.threads} | {after.threads} |",
        f"| agent RSS | {before.rss_kib / 1024:.1f} MiB | {after.rss_kib / 1024:.1f} MiB |",
        f"| agent peak RSS (VmHWM) | {before.hwm_kib / 1024:.1f} MiB | {after.hwm_kib / 1024:.1f} MiB |",
    ]
    return "\n\n".join([
        f"Guest: the test image under QEMU ({'KVM' if Path('/dev/kvm').exists() else 'TCG'}), 1 vCPU, "
        f"512 MB, pyqga {version} on virtio-serial, the workload appending and fsyncing on /data (ext4). "
        f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        f"{cycles:,} cycles of `guest-fsfreeze-freeze-list [\"/data\"]` + `guest-fsfreeze-thaw` on one "
        f"connection (after {WARM_UP_CYCLES} warm-up cycles) in {elapsed:.0f} s "
        f"({elapsed / cycles * 1e3:.0f} ms a cycle). Freeze: {quantiles(freezes)}; thaw: {quantiles(thaws)}.",
        "\n".join(rows),
        f"Left frozen afterwards: {left}; the writer's writes reaching the disk in the 1.5 s after: "
        f"{writes}. Result: {'pass' if ok else '**FAIL**'} (no growth in fds or threads, RSS within "
        f"5 MiB, nothing frozen, the writer running).",
    ]) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=1000, help="freeze/thaw cycles (default 1000)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args(argv)

    unwind_on_sigterm()
    with tempfile.TemporaryDirectory(prefix="pyqga-soak-") as tmp:
        report = soak(args.cycles, Path(tmp))
    publish(SECTION, "Soak: `bench/soak.py`", report, write=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
