"""Consistency groups at scale: N local pyqga agents, one loop filesystem each, frozen as a group.

    sudo python -m bench.group [--sizes 1,8,32,128] [--rounds 3] [--no-write]

Run as root from the repository root.  Each agent sees only its own loop-mounted ext4 image
(``--freeze-include``), so each stands for one guest.  For each group size N, ``--rounds``
group snapshots (freeze only, no disk snapshot step) through ``pyqga.host_client.group``: the time
from the start to the last freeze reply ("all frozen"), the overlap window (last freeze done to
first thaw started) and the whole run.  For comparison, the same N agents frozen one after the
other by the sync client, as a simple host script would (time until the last one is frozen).
Concurrency should keep the group's time to all-frozen nearly flat as N grows; the sequential
script grows linearly.  Results go to the "bench/group.py" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.report import machine_line, write_section
from pyqga.host_client import AgentClient
from pyqga.host_client.group import Member, group_snapshot
from tests.rig.agent_process import ListeningProcess, agent_command
from tests.rig.loopfs import LoopMounts
from tests.rig.qemu_ga import ensure_qemu_ga

SECTION = "bench/group.py"
DEADLINE = 120.0


def start_agents(base: Path, mounts: list[Path]) -> list[ListeningProcess]:
    """One agent per mount, started together (each a Python start-up), then waited for."""
    agents = []
    for index, mount in enumerate(mounts):
        workdir = base / f"agent{index}"
        workdir.mkdir()
        agents.append(ListeningProcess(agent_command(workdir, ["--freeze-include", glob.escape(str(mount))]),
                                       workdir / "agent.sock", workdir / "agent.log"))
    for agent in agents:
        agent.start_nowait()
    for agent in agents:
        agent.wait_ready(120)
    return agents


def sequential(agents: list[ListeningProcess], mounts: list[Path]) -> float:
    """A host script's loop: freeze each guest in turn; seconds until the last is frozen."""
    clients = [AgentClient(str(a.socket_path), dialect="qga", timeout=60) for a in agents]
    try:
        t0 = time.monotonic()
        for client, mount in zip(clients, mounts, strict=True):
            client.call("guest-fsfreeze-freeze-list", {"mountpoints": [str(mount)]}, timeout=60)
        took = time.monotonic() - t0
        for client in clients:
            client.call("guest-fsfreeze-thaw", timeout=60)
        return took
    finally:
        for client in clients:
            client.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1,8,32,128", help="group sizes (default 1,8,32,128)")
    parser.add_argument("--rounds", type=int, default=3, help="group snapshots per size (default 3)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args()
    sizes = [int(n) for n in args.sizes.split(",")]
    rows = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="pyqga-bench-group-") as tmp, \
            LoopMounts(Path(tmp) / "mnt", watchdog=600) as loops:
        base = Path(tmp)
        mounts = [loops.add(f"g{i}").mountpoint for i in range(max(sizes))]
        t0 = time.monotonic()
        agents = start_agents(base, mounts)
        print(f"{len(agents)} agents up in {time.monotonic() - t0:.1f} s", flush=True)
        try:
            # Not counted: every agent's first freeze (it may wait for its guard to start).
            everyone = [Member(str(a.socket_path), (str(m),)) for a, m in zip(agents, mounts, strict=True)]
            asyncio.run(group_snapshot(everyone, DEADLINE, call_timeout=60))
            for n in sizes:
                members = [Member(str(a.socket_path), (str(m),)) for a, m in zip(agents[:n], mounts[:n],
                                                                                  strict=True)]
                frozen, overlap, total, seq = [], [], [], []
                for _ in range(args.rounds):
                    t0 = time.monotonic()
                    report = asyncio.run(group_snapshot(members, DEADLINE, call_timeout=60))
                    total.append(time.monotonic() - t0)
                    assert report.consistent, report.error
                    frozen.append(report.all_frozen_seconds or 0.0)
                    overlap.append(report.overlap_seconds or 0.0)
                    time.sleep(0.2)
                    seq.append(sequential(agents[:n], mounts[:n]))
                    time.sleep(0.2)
                row = (n, statistics.median(frozen), statistics.median(overlap), statistics.median(total),
                       statistics.median(seq))
                rows.append(row)
                print(f"N={n:>4}: all frozen {row[1] * 1000:7.1f} ms, overlap {row[2] * 1000:6.1f} ms, "
                      f"whole group {row[3] * 1000:7.1f} ms; sequential script {row[4] * 1000:8.1f} ms",
                      flush=True)
        finally:
            for agent in agents:
                agent.stop()
    table = ["| guests N | group: all frozen | group: overlap window | group: whole run | "
             "sequential script: all frozen |", "|---:|---:|---:|---:|---:|"]
    for n, frozen_s, overlap_s, total_s, seq_s in rows:
        table.append(f"| {n} | {frozen_s * 1000:.0f} ms | {overlap_s * 1000:.1f} ms | "
                     f"{total_s * 1000:.0f} ms | {seq_s * 1000:.0f} ms |")
    first, last = rows[0], rows[-1]
    growth = last[1] / first[1] if first[1] else float("nan")
    markdown = "\n".join([
        f"## Results: `{SECTION}`", "",
        machine_line(ensure_qemu_ga()), "",
        f"Groups of N local pyqga agents, each seeing only its own loop-mounted ext4 image (16 MB), "
        f"frozen as a group by `host_client.group` (freeze only, no disk snapshot step), medians of "
        f"{args.rounds} rounds after one uncounted group of all of them (each agent's first freeze may "
        "wait for its guard process to start); against the same N agents frozen one after the "
        "other by the sync client, as a simple host script would. All agents share this machine's "
        "2 CPUs and one kernel, unlike guests.", "",
        *table, "",
        f"From N={first[0]} to N={last[0]} the group's time to all-frozen grows {growth:.1f}x "
        f"({last[0] // first[0]}x the guests); the sequential script's grows "
        f"{last[4] / first[4]:.1f}x. Run took {time.monotonic() - started:.0f} s.",
    ])
    print(markdown)
    if not args.no_write:
        write_section(SECTION, markdown)
        print("wrote BENCHMARKS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
