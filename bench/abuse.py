"""pyqga against the real qemu-ga under hostile load: ping latency and memory while flooded.

    python -m bench.abuse [--seconds 5] [--clients 16] [--pattern NAME ...] [--no-write]

For each flood pattern of ``tests/rig/flood.py`` (0xFF, ``[``, ``{}``, garbage, deep nesting,
an endless line, a close-flood) a fresh agent of each kind listens on a unix socket; ``--clients``
clients flood it for ``--seconds`` (from a child process) while this process pings on a fresh
connection every 20 ms.  Reported per agent and pattern: ping p50/p99/max (a ping not answered
within 10 s counts as failed, and as 10 s in the figures), the agent's peak RSS (VmHWM) and its
RSS before and 2 s after the flood.  Targets (issue 13), pyqga only: p99 < 100 ms, peak RSS
< 64 MB, RSS back within 5 MB of the start.

qemu-ga serves one client at a time: a flood client holds its only slot, so its pings wait in
the listen backlog; that is its design, shown here for comparison.  The table replaces the
``bench/abuse.py`` section of BENCHMARKS.md unless ``--no-write``.
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.report import machine_line, publish, qemu_ga_problem, unwind_on_sigterm, verdict
from tests.rig.agent_process import PyqgaAgent
from tests.rig.flood import PATTERNS, FloodProcess, Latencies, Pinger, status_kib
from tests.rig.qemu_ga import QemuGa, ensure_qemu_ga

SECTION = "bench/abuse.py"
PING_TIMEOUT = 10.0
SETTLE_SECONDS = 2.0
P99_MAX = 0.100
PEAK_MAX_BYTES = 64e6
BACK_WITHIN_BYTES = 5e6


@dataclass
class Run:
    agent: str
    pattern: str
    pings: Latencies
    rss_start: int  # bytes
    peak: int
    rss_after: int
    flood: dict[str, int]
    exited: int | None  # the agent's exit status if it died during the run

    def quantile(self, q: float) -> float:
        """Over answered and failed pings alike: a failed one counts as the timeout."""
        values = sorted(self.pings.times + [PING_TIMEOUT] * len(self.pings.failures))
        return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")

    @property
    def meets_targets(self) -> bool:
        return (self.exited is None and not self.pings.failures and self.quantile(0.99) < P99_MAX
                and self.peak < PEAK_MAX_BYTES and self.rss_after - self.rss_start < BACK_WITHIN_BYTES)


@contextlib.contextmanager
def started(kind: str, workdir: Path) -> Iterator[tuple[Path, subprocess.Popen[bytes]]]:
    """(socket path, process) of a fresh agent of ``kind``."""
    if kind == "qemu-ga":
        with QemuGa(workdir) as peer:
            assert peer.process is not None
            yield peer.socket_path, peer.process
    else:
        with PyqgaAgent(workdir, ["--freeze-include", "/nonexistent-pyqga-bench/*"]) as agent:
            assert agent.process is not None
            yield agent.socket_path, agent.process


class PeakSampler(threading.Thread):
    """VmHWM every 50 ms, so the peak is known even if the agent exits during the flood."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak = pid, 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.05):
            with contextlib.suppress(OSError, KeyError):
                self.peak = max(self.peak, status_kib(self.pid, "VmHWM") * 1024)


def measure(kind: str, pattern: str, workdir: Path, clients: int, seconds: float) -> Run:
    with started(kind, workdir) as (socket_path, process):
        time.sleep(1.0)  # pyqga's freeze guard starts just after the socket listens
        rss_start = status_kib(process.pid, "VmRSS") * 1024
        sampler = PeakSampler(process.pid)
        sampler.start()
        pinger = Pinger(socket_path, persistent=False, interval=0.02, timeout=PING_TIMEOUT)
        pinger.start()
        flood = FloodProcess(socket_path, pattern, clients, seconds)
        try:
            totals = flood.wait()
        finally:
            flood.kill()
            pings = pinger.stop()
            sampler.done.set()
            sampler.join()
        time.sleep(SETTLE_SECONDS)
        exited = process.poll()
        rss_after = status_kib(process.pid, "VmRSS") * 1024 if exited is None else 0
    return Run(kind, pattern, pings, rss_start, sampler.peak, rss_after, totals, exited)


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.1f}"


def _after(run: Run) -> str:
    return f"{run.rss_after / 1e6:.1f}" if run.exited is None else f"exited ({run.exited})"


def build_report(runs: list[Run], clients: int, seconds: float) -> str:
    rows = ["| pattern | agent | pings ok / failed | p50 ms | p99 ms | max ms | peak RSS MB "
            "| RSS start → after MB | targets |",
            "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for run in runs:
        worst = PING_TIMEOUT if run.pings.failures else run.pings.worst
        rows.append(
            f"| `{run.pattern}` | {run.agent} | {len(run.pings.times)} / {len(run.pings.failures)} "
            f"| {_ms(run.quantile(0.5))} | {_ms(run.quantile(0.99))} | {_ms(worst)} | {run.peak / 1e6:.1f} "
            f"| {run.rss_start / 1e6:.1f} → {_after(run)} "
            f"| {verdict(run.meets_targets) if run.agent == 'pyqga' else ''} |")
    ours = [r for r in runs if r.agent == "pyqga"]
    summary = (f"pyqga meets every target under {sum(r.meets_targets for r in ours)} of {len(ours)} patterns "
               f"(p99 < {P99_MAX * 1e3:.0f} ms with no ping lost, peak RSS < {PEAK_MAX_BYTES / 1e6:.0f} MB, "
               f"RSS back within {BACK_WITHIN_BYTES / 1e6:.0f} MB).")
    method = (f"{clients} flood clients for {seconds:g} s per pattern and agent, each connection sending "
              "up to 1 MiB of the pattern (an endless line 4 MiB) in 256 KiB writes (replies read and "
              "dropped) before it closes and reconnects (close-flood: half a message, then close); "
              "a fresh-connection `guest-ping` every 20 ms, failed if not answered within "
              f"{PING_TIMEOUT:g} s or answered wrongly (counted as {PING_TIMEOUT:g} s in p50/p99/max). "
              f"RSS after: {SETTLE_SECONDS:g} s after the flood ends. MB = 10^6 bytes.")
    return "\n\n".join([machine_line(ensure_qemu_ga()), method, "\n".join(rows), summary]) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="flood length per run (default 5)")
    parser.add_argument("--clients", type=int, default=16, help="flood clients (default 16)")
    parser.add_argument("--pattern", action="append", choices=list(PATTERNS), help="only these patterns")
    parser.add_argument("--agent", action="append", choices=["pyqga", "qemu-ga"], help="only these agents")
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args(argv)

    unwind_on_sigterm()
    if problem := qemu_ga_problem():
        print(f"bench/abuse.py: {problem}", file=sys.stderr)
        return 2
    runs = []
    with tempfile.TemporaryDirectory(prefix="pyqga-abuse-") as tmp:
        for index, pattern in enumerate(args.pattern or list(PATTERNS)):
            for kind in args.agent or ["pyqga", "qemu-ga"]:
                run = measure(kind, pattern, Path(tmp) / f"{index}-{kind}", args.clients, args.seconds)
                print(f"{pattern!r:16} {kind:8} {run.pings.summary()}; peak {run.peak / 1e6:.1f} MB, "
                      f"RSS {run.rss_start / 1e6:.1f} -> {_after(run)} MB; flood {run.flood}",
                      flush=True)
                runs.append(run)
    report = build_report(runs, args.clients, args.seconds)
    publish(SECTION, "Abuse: `bench/abuse.py`", report, write=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
