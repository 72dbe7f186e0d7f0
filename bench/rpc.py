"""pyqga against the real qemu-ga: guest-ping round trips, memory, start-to-first-reply.

    python bench/rpc.py [--seconds 3] [--rounds 5] [--no-write]

Run from the repository root (``make bench`` does). Both agents listen on unix sockets in a
private temporary folder and are measured in the same run:

- round trips: the same minimal raw-socket loop for both agents (send
  ``{"execute":"guest-ping"}\\n``, read one line, repeat), so the client's cost is equal on both
  sides; the agents are interleaved in rounds (alternating order) and the median round is
  reported, with pyqga through ``AgentClient`` (jsonrpc dialect) as an extra row;
- memory: VmRSS of a fresh agent after 10,000 requests;
- start to first reply: from ``Popen`` to the first reply of a connect+ping retry loop, median of 5.

The table is printed and, unless ``--no-write``, replaces the results section of BENCHMARKS.md.
Every process started here is stopped before exit, also on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.report import machine_line, verdict, write_section  # noqa: E402
from host_client import AgentClient  # noqa: E402
from tests.support.agent_process import PyqgaAgent, agent_command  # noqa: E402
from tests.support.qemu_ga import QemuGa, QemuGaUnavailable, ensure_qemu_ga  # noqa: E402
from tests.support.sockets import connect_unix  # noqa: E402

PING = b'{"execute":"guest-ping"}\n'
PING_REPLY = b'{"return": {}}\n'
MEMORY_REQUESTS = 10_000
START_TRIALS = 5
START_TIMEOUT = 15.0
BENCHMARKS_MD = REPO_ROOT / "BENCHMARKS.md"
SECTION = "bench/rpc.py"  # name of our section of BENCHMARKS.md (bench/report.py)

# Targets from the issue.
RATE_RATIO_MIN = 0.5
RATE_RATIO_AIM = 1.0
RSS_MAX_BYTES = 25_000_000
START_MAX_SECONDS = 0.3

INTRO = """# Benchmarks

pyqga measured against the real qemu-ga (Debian's build, fetched by `tests/support/qemu_ga.py`)
on the same machine in the same run. Regenerate the results below with `make bench` or, from the
repository root, `python bench/rpc.py` (`--seconds S --rounds N` per round trip measurement,
`--no-write` to only print). The script starts and stops every agent itself.

- **Round trips**: sequential `guest-ping` over a unix socket with one minimal raw-socket client
  loop for both agents (send one request, read one line), so the client's own cost is the same on
  both sides (it is part of every round trip, so the ratio is closer to 1 than the agents' own
  ratio). Agents alternate in rounds of a few seconds; the median round counts, and the median
  of per-round ratios (less sensitive to other load on the machine) is given below the table.
  The `AgentClient` row is pyqga through the host library (jsonrpc dialect), i.e. what a Python
  host actually gets.
- **Agent CPU per request**: user+sys CPU time of the agent process (all threads, from
  `/proc/PID/stat`) during a round, divided by the round trips of that round; its ratio
  between the agents is the steadiest figure on a loaded machine.
- **Memory**: VmRSS of a freshly started agent after 10,000 `guest-ping` requests
  (MB = 10^6 bytes).
- **Start to first reply**: from `Popen` to the first `guest-ping` reply of a tight
  connect+ping retry loop, median of 5 fresh starts (pyqga: `python -B -m agent`, as in
  production; qemu-ga through the small `sh` wrapper that sets its library path).

"""


# --- processes ---------------------------------------------------------------------------------


def _terminate(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            process.wait(3)
        except subprocess.TimeoutExpired:
            process.kill()
    process.wait()


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


@dataclass
class Agent:
    name: str
    socket_path: Path
    pid: int


@contextlib.contextmanager
def running_qemu_ga(workdir: Path) -> Iterator[Agent]:
    with QemuGa(workdir) as peer:
        yield Agent("qemu-ga", peer.socket_path, peer.pid)


@contextlib.contextmanager
def running_pyqga(workdir: Path) -> Iterator[Agent]:
    with PyqgaAgent(workdir) as agent:
        yield Agent("pyqga", agent.socket_path, agent.pid)


# --- clients -----------------------------------------------------------------------------------


def raw_ping_loop(path: Path, seconds: float | None = None, count: int | None = None) -> tuple[int, float]:
    """(round trips, seconds) of the minimal client, running for `seconds` or `count` requests."""
    with connect_unix(path) as sock:
        send, recv, clock = sock.sendall, sock.recv, time.perf_counter
        buffered = b""
        done = 0
        start = clock()
        deadline = start + seconds if seconds is not None else float("inf")
        limit = count if count is not None else -1
        while done != limit:
            send(PING)
            while b"\n" not in buffered:
                chunk = recv(4096)
                if not chunk:
                    raise RuntimeError(f"{path}: connection closed after {done} replies")
                buffered += chunk
            line, _, buffered = buffered.partition(b"\n")
            done += 1
            if clock() >= deadline:
                break
        elapsed = clock() - start
    if line + b"\n" != PING_REPLY:
        raise RuntimeError(f"{path}: unexpected reply {line!r}")
    return done, elapsed


def agent_client_loop(path: Path, seconds: float) -> tuple[int, float]:
    with AgentClient(str(path), dialect="jsonrpc", timeout=10) as client:
        client.ping()  # the first call resyncs; keep it out of the timing
        clock = time.perf_counter
        done = 0
        start = clock()
        deadline = start + seconds
        while True:
            client.ping()
            done += 1
            if clock() >= deadline:
                break
        return done, clock() - start


# --- measurements ------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a whole process (all threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Rates:
    rounds: list[float]
    cpu_per_request: list[float]  # agent CPU seconds per round trip, per round

    @property
    def median(self) -> float:
        return statistics.median(self.rounds)


def measure_round_trips(workdir: Path, seconds: float, rounds: int) -> dict[str, Rates]:
    rates = {name: Rates([], []) for name in ("qemu-ga", "pyqga", "pyqga AgentClient")}
    with running_qemu_ga(workdir / "qga") as qga, running_pyqga(workdir / "pyqga") as ours:
        runs: list[tuple[str, int, Callable[[], tuple[int, float]]]] = [
            ("qemu-ga", qga.pid, lambda: raw_ping_loop(qga.socket_path, seconds)),
            ("pyqga", ours.pid, lambda: raw_ping_loop(ours.socket_path, seconds)),
            ("pyqga AgentClient", ours.pid, lambda: agent_client_loop(ours.socket_path, seconds)),
        ]
        raw_ping_loop(qga.socket_path, count=2000)  # warm-up, both sides
        raw_ping_loop(ours.socket_path, count=2000)
        for index in range(rounds):
            order = runs if index % 2 == 0 else runs[::-1]
            for name, pid, run in order:
                cpu_before = cpu_seconds(pid)
                count, elapsed = run()
                cpu = (cpu_seconds(pid) - cpu_before) / count
                rates[name].rounds.append(count / elapsed)
                rates[name].cpu_per_request.append(cpu)
                print(f"  round {index + 1}/{rounds}  {name:<18} {count / elapsed:10,.0f} round trips/s"
                      f"  agent CPU {cpu * 1e6:6.1f} us/request", flush=True)
    return rates


def measure_memory(workdir: Path) -> dict[str, int]:
    rss = {}
    for start in (running_qemu_ga, running_pyqga):
        with start(workdir / f"mem-{start.__name__}") as agent:
            raw_ping_loop(agent.socket_path, count=MEMORY_REQUESTS)
            time.sleep(0.05)
            rss[agent.name] = rss_bytes(agent.pid)
    return rss


def first_reply_seconds(command: list[str], socket_path: Path, env: dict[str, str], cwd: Path) -> float:
    """Seconds from Popen to the first guest-ping reply; the process is stopped afterwards."""
    with open(cwd / "start.log", "ab") as log:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                                   cwd=cwd, start_new_session=True)
    try:
        deadline = started + START_TIMEOUT
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{command[0]} exited with {process.returncode}; see {cwd}/start.log")
            if time.perf_counter() > deadline:
                raise RuntimeError(f"{command[0]}: no reply within {START_TIMEOUT} s")
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                try:
                    sock.connect(str(socket_path))
                except OSError:
                    time.sleep(0.0005)
                    continue
                sock.settimeout(START_TIMEOUT)
                sock.sendall(PING)
                reply = b""
                while not reply.endswith(b"\n"):
                    chunk = sock.recv(4096)
                    if not chunk:
                        break
                    reply += chunk
                elapsed = time.perf_counter() - started
                if reply == PING_REPLY:
                    return elapsed
                raise RuntimeError(f"{command[0]}: unexpected first reply {reply!r}")
    finally:
        _terminate(process)


def measure_start(workdir: Path) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {"qemu-ga": [], "pyqga": []}
    pyqga_env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    for trial in range(START_TRIALS):
        for name in ("qemu-ga", "pyqga") if trial % 2 == 0 else ("pyqga", "qemu-ga"):
            where = workdir / f"start-{name}-{trial}"
            where.mkdir(parents=True)
            if name == "qemu-ga":
                peer = QemuGa(where)
                peer.statedir.mkdir()
                peer.conf_path.write_text("")
                env = dict(os.environ, QGA_CONF=str(peer.conf_path))
                times[name].append(first_reply_seconds(peer.command(), peer.socket_path, env, where))
            else:
                # Exactly PyqgaAgent's command line: sys.executable -B -m agent ...
                command = agent_command(where)
                times[name].append(first_reply_seconds(command, where / "agent.sock", pyqga_env, where))
    return times


# --- report ------------------------------------------------------------------------------------


def build_report(rates: dict[str, Rates], rss: dict[str, int], start: dict[str, list[float]],
                 seconds: float, rounds: int) -> str:
    qga_rate, our_rate, client_rate = (rates[k].median for k in ("qemu-ga", "pyqga", "pyqga AgentClient"))
    ratio = our_rate / qga_rate
    client_ratio = client_rate / qga_rate
    start_qga, start_ours = statistics.median(start["qemu-ga"]), statistics.median(start["pyqga"])

    qga_cpu = statistics.median(rates["qemu-ga"].cpu_per_request)
    our_cpu = statistics.median(rates["pyqga"].cpu_per_request)
    pairs = zip(rates["pyqga"].rounds, rates["qemu-ga"].rounds, strict=True)
    round_ratio = statistics.median(ours / theirs for ours, theirs in pairs)

    def spread(values: list[float], fmt: str) -> str:
        return f"{format(min(values), fmt)} to {format(max(values), fmt)}"

    rows = [
        ("guest-ping round trips/s, raw client", f"{qga_rate:,.0f}", f"{our_rate:,.0f}",
         f"{ratio:.2f}x", f"≥ {RATE_RATIO_MIN}x qemu-ga (aim {RATE_RATIO_AIM}x)",
         verdict(ratio >= RATE_RATIO_MIN) + ("" if ratio >= RATE_RATIO_AIM else ", below aim")),
        ("guest-ping round trips/s, pyqga via AgentClient (jsonrpc)", "", f"{client_rate:,.0f}",
         f"{client_ratio:.2f}x", "none (information)", ""),
        ("agent CPU time per guest-ping (user+sys, median round)", f"{qga_cpu * 1e6:.1f} µs",
         f"{our_cpu * 1e6:.1f} µs", f"{our_cpu / qga_cpu:.1f}x" if qga_cpu else "n/a",
         "none (information)", ""),
        (f"RSS after {MEMORY_REQUESTS:,} requests", f"{rss['qemu-ga'] / 1e6:.1f} MB",
         f"{rss['pyqga'] / 1e6:.1f} MB", f"{rss['pyqga'] / rss['qemu-ga']:.1f}x",
         f"pyqga ≤ {RSS_MAX_BYTES / 1e6:.0f} MB", verdict(rss["pyqga"] <= RSS_MAX_BYTES)),
        (f"start to first reply, median of {START_TRIALS}", f"{start_qga * 1000:.0f} ms",
         f"{start_ours * 1000:.0f} ms", f"{start_ours / start_qga:.1f}x",
         f"pyqga < {START_MAX_SECONDS * 1000:.0f} ms", verdict(start_ours < START_MAX_SECONDS)),
    ]
    lines = [
        "| measurement | qemu-ga | pyqga | pyqga / qemu-ga | target | result |",
        "|---|---:|---:|---:|---|---|",
        *(f"| {' | '.join(row)} |" for row in rows),
    ]
    details = [
        f"Round trips: {rounds} rounds of {seconds:g} s per row, median shown; range over rounds: "
        f"qemu-ga {spread(rates['qemu-ga'].rounds, ',.0f')}, pyqga {spread(rates['pyqga'].rounds, ',.0f')}, "
        f"AgentClient {spread(rates['pyqga AgentClient'].rounds, ',.0f')}. "
        f"Median of the per-round ratios (pyqga and qemu-ga measured back to back in each round): "
        f"{round_ratio:.2f}x. "
        f"Mean time per round trip at the median: qemu-ga {1e6 / qga_rate:.1f} µs, "
        f"pyqga {1e6 / our_rate:.1f} µs, AgentClient {1e6 / client_rate:.1f} µs.",
        f"Start to first reply, all runs: qemu-ga "
        f"{', '.join(f'{t * 1000:.0f}' for t in start['qemu-ga'])} ms; pyqga "
        f"{', '.join(f'{t * 1000:.0f}' for t in start['pyqga'])} ms.",
    ]
    machine = machine_line(ensure_qemu_ga())
    return "\n\n".join([machine, "\n".join(lines), *details]) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="length of one round (default 3)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per agent (default 5)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.rounds < 1:
        parser.error("--seconds must be > 0 and --rounds >= 1")

    def on_sigterm(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)  # unwind, so every `with` stops its process

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        ensure_qemu_ga()
    except QemuGaUnavailable as exc:
        print(f"bench/rpc.py: the real qemu-ga is not available: {exc}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="pyqga-bench-") as tmp:
        workdir = Path(tmp)
        print(f"round trips: {args.rounds} rounds x {args.seconds:g} s per row", flush=True)
        rates = measure_round_trips(workdir, args.seconds, args.rounds)
        print(f"memory: VmRSS after {MEMORY_REQUESTS:,} requests", flush=True)
        rss = measure_memory(workdir)
        print(f"start to first reply: {START_TRIALS} starts each", flush=True)
        start = measure_start(workdir)
    report = build_report(rates, rss, start, args.seconds, args.rounds)
    print()
    print(report)
    if not args.no_write:
        write_section(SECTION, f"## Results: `bench/rpc.py`\n\n{report}", path=BENCHMARKS_MD, intro=INTRO)
        print(f"wrote {BENCHMARKS_MD.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
