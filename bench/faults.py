"""Fault leases on this host: how long an inject and a revert take, and how late the keeper
ends a hung agent's fault after its deadline.

    python -m bench.faults [--reps 30] [--hung 5] [--no-write]

Run from the repository root, as root (loop devices, FIFREEZE). One pyqga agent with
``--enable-faults`` on a unix socket; two loop-mounted ext4 filesystems of 256 MB made here and
nothing else touched. ``write-stall`` and ``disk-full`` (to 1 MiB free) are the kinds this host
can run (it has no device-mapper; the dm kinds are measured in the VM guest, see
tests/vm/faults/test_block.py). Each inject and each revert is timed from the request sent to
the reply received (the agent's ``guest-fault-inject`` returns once the fault holds, its
``guest-fault-revert`` once it is undone), the client and the agent pinned to different CPUs.

The keeper's lateness: a ``write-stall`` of 1 s, the agent stopped with SIGSTOP right after the
inject; the keeper must kill it and thaw. Measured from the lease's deadline to the keeper's
``reverted`` event (both the guest's CLOCK_MONOTONIC), each time with a new agent.

The table is printed and, unless ``--no-write``, replaces the ``bench/faults.py`` section of
BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import tempfile
import time
from pathlib import Path

from bench.measured import Placement
from bench.report import write_section
from pyqga.host_client import AgentClient
from tests.rig.agent_process import PyqgaAgent
from tests.rig.loopfs import LoopMounts

KINDS = {"write-stall": {}, "disk-full": {"free-bytes": 1 << 20}}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def ms(value: float) -> str:
    return f"{value * 1000:.1f}"


def time_kinds(agent: PyqgaAgent, targets: list[str], reps: int,
               placement: Placement | None) -> dict[str, tuple[list[float], list[float]]]:
    results: dict[str, tuple[list[float], list[float]]] = {}
    if placement is not None:
        placement.pin_agent(agent.pid)
    with AgentClient(str(agent.socket_path), timeout=60) as client:
        for kind, params in KINDS.items():
            injects, reverts = [], []
            for index in range(reps):
                target = targets[index % len(targets)]
                os.sync()
                start = time.perf_counter()
                lease = client.call("guest-fault-inject", {"kind": kind, "target": target, "duration": 60,
                                                           "params": params})
                injects.append(time.perf_counter() - start)
                start = time.perf_counter()
                assert client.call("guest-fault-revert", {"id": lease["id"]}) == 1
                reverts.append(time.perf_counter() - start)
            results[kind] = (injects, reverts)
    return results


def keeper_lateness(workdir: Path, target: str, runs: int) -> list[float]:
    late = []
    for run in range(runs):
        with PyqgaAgent(workdir / f"hung{run}", ["--enable-faults"]) as agent:
            with AgentClient(str(agent.socket_path), timeout=60) as client:
                request = {"kind": "write-stall", "target": target, "duration": 1}
                lease = client.call("guest-fault-inject", request)
                armed = next(e for e in client.call("guest-fault-events")["events"]
                             if e["id"] == lease["id"] and e["event"] == "armed")
            os.kill(agent.pid, signal.SIGSTOP)
            assert agent.process is not None
            agent.process.wait(30)
            events = agent.statedir / "fault-events.jsonl"
            end = time.monotonic() + 10
            ended = []
            while not ended and time.monotonic() < end:
                ended = [json.loads(line) for line in events.read_text().splitlines()
                         if json.loads(line)["event"] == "reverted"]
                time.sleep(0.05)
            assert ended and ended[0]["reason"] == "agent-hung", ended
            late.append(ended[0]["mono"] - (armed["mono"] + 1.0))
    return late


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--hung", type=int, default=5)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    placement = Placement.choose()
    with tempfile.TemporaryDirectory(prefix="pyqga-bench-faults-") as tmp:
        base = Path(tmp)
        with LoopMounts(base / "mnt", watchdog=600) as loops:
            targets = [str(loops.add(name, size_mb=256)) for name in ("a", "b")]
            with PyqgaAgent(base / "agent", ["--enable-faults"]) as agent:
                if placement is not None:
                    with placement.pinned_client():
                        results = time_kinds(agent, targets, args.reps, placement)
                else:
                    results = time_kinds(agent, targets, args.reps, None)
            late = keeper_lateness(base, targets[0], args.hung)
    lines = [
        "## Fault leases on this host (`bench/faults.py`)", "",
        f"Two 256 MB loop-mounted ext4 filesystems, {args.reps} injects and reverts a kind, each timed from "
        "request to reply (inject returns once the fault holds, revert once it is undone); "
        + (placement.describe() if placement else "not pinned (one CPU)") + ".", "",
        "| kind | inject p50 ms | inject p99 ms | revert p50 ms | revert p99 ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for kind, (injects, reverts) in results.items():
        lines.append(f"| `{kind}` | {ms(statistics.median(injects))} | {ms(percentile(injects, 0.99))} | "
                     f"{ms(statistics.median(reverts))} | {ms(percentile(reverts, 0.99))} |")
    median = ms(statistics.median(late))
    lines += ["", f"Keeper, agent stopped (SIGSTOP) during a 1 s `write-stall`, {args.hung} runs: the fault "
              f"ended {ms(min(late))}-{ms(max(late))} ms after its deadline (median {median} ms; the "
              "keeper's grace is 500 ms, then it kills the agent and thaws)."]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section("bench/faults.py", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
