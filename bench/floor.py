"""How fast can any CPython agent answer here?  pyqga and qemu-ga beside servers that do nothing.

    python -m bench.floor [--seconds 0.3] [--rounds 9] [--python PATH] [--no-write]

``bench/rpc.py`` compares pyqga with qemu-ga.  This script asks what the comparison can reach at
all: in the same run, under the same interpreter and CPU placement as pyqga there, it measures
the requests hosts send most (``guest-ping`` and ``guest-sync`` with ids, ``guest-fsfreeze-status``)
against three reference servers (``bench/floor_servers.py``):

- ``epoll echo``: ``epoll`` + ``recv`` + ``send`` of a fixed reply line; no parsing at all (the
  floor: three system calls and the least Python around them);
- ``asyncio echo``: the same on asyncio, as a BufferedProtocol (what the event loop adds);
- ``epoll parse``: ``json.loads``, a dict lookup of the handler and the C encoder: a correct
  reply to a well-formed request, with none of an agent's checks (no framing of a stream, no
  validation, no gate, no errors).

Ratios are against qemu-ga's rate in the same round (median over rounds).  Results replace the
``bench/floor.py`` section of BENCHMARKS.md unless ``--no-write``.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from bench import measured, rpc
from bench.report import machine_line, qemu_ga_problem, unwind_on_sigterm, write_section
from tests.rig.agent_process import ListeningProcess
from tests.rig.paths import REPO_ROOT
from tests.rig.qemu_ga import ensure_qemu_ga

SECTION = "bench/floor.py"
REQUESTS = (
    ("guest-ping, with id", b'{"execute":"guest-ping","id":1}\n'),
    ("guest-sync, with id", b'{"execute":"guest-sync","arguments":{"id":1},"id":1}\n'),
    ("guest-fsfreeze-status", b'{"execute":"guest-fsfreeze-status","id":1}\n'),
)
REFERENCES = ("epoll echo", "asyncio echo", "epoll parse")  # kinds of bench/floor_servers.py
SERVERS = Path(__file__).resolve().with_name("floor_servers.py")


# --- measurement -------------------------------------------------------------------------------


@contextlib.contextmanager
def reference_server(kind: str, workdir: Path) -> Iterator[measured.Agent]:
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "ref.sock"
    command = [measured.INTERPRETER.path, "-B", str(SERVERS), kind, str(path)]
    process = ListeningProcess(command, path, workdir / "ref.log")
    process.start()
    try:
        yield measured.Agent(kind, path, process.pid)
    finally:
        process.stop()


def measure(workdir: Path, seconds: float, rounds: int,
            placement: measured.Placement | None) -> dict[str, dict[str, list[float]]]:
    """rates[request][server] over the rounds."""
    rates: dict[str, dict[str, list[float]]] = {label: {} for label, _ in REQUESTS}
    with contextlib.ExitStack() as stack:
        servers = [stack.enter_context(measured.running_qemu_ga(workdir / "qga")),
                   stack.enter_context(measured.running_pyqga(workdir / "pyqga"))]
        servers += [stack.enter_context(reference_server(kind, workdir / kind.replace(" ", "-")))
                    for kind in REFERENCES]
        stack.enter_context(measured.pinned(placement, [server.pid for server in servers]))
        connections = [(server.name, measured.Connection(server.socket_path)) for server in servers]
        for _, connection in connections:
            stack.callback(connection.close)
        for index in range(rounds):
            print(f"  round {index + 1}/{rounds}", flush=True)
            for label, line in REQUESTS:
                order = connections if index % 2 == 0 else connections[::-1]
                for name, connection in order:
                    count, elapsed = connection.loop(line, seconds=seconds)
                    rates[label].setdefault(name, []).append(count / elapsed)
    return rates


def report(rates: dict[str, dict[str, list[float]]], seconds: float, rounds: int, placement: str) -> str:
    columns = ["pyqga", *REFERENCES]
    lines = [
        "| request | qemu-ga /s | " + " | ".join(f"{name} / qemu-ga" for name in columns) + " |",
        "|---|---:|" + "---:|" * len(columns),
    ]
    for label, by_server in rates.items():
        theirs = by_server["qemu-ga"]
        cells = [f"{statistics.median(r / q for r, q in zip(by_server[name], theirs, strict=True)):.2f}x"
                 for name in columns]
        lines.append(f"| `{label}` | {statistics.median(theirs):,.0f} | " + " | ".join(cells) + " |")
    return "\n\n".join([
        f"{machine_line(ensure_qemu_ga())} {measured.INTERPRETER.describe()}; the reference servers too.",
        "\n".join(lines),
        f"{rounds} rounds of {seconds:g} s per request and server, in alternating order; each ratio is "
        f"the median of the per-round ratios to qemu-ga. During the runs {placement}.",
    ]) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=0.3, help="one run of one request (default 0.3)")
    parser.add_argument("--rounds", type=int, default=9, help="rounds (default 9)")
    parser.add_argument("--python", default=None, help="interpreter for pyqga and the reference servers "
                        f"(default as bench/rpc.py: {measured.PACKAGED_PYTHON} where it is a 3.11+)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.rounds < 1:
        parser.error("--seconds must be > 0 and --rounds >= 1")
    measured.INTERPRETER = measured.pick_interpreter(args.python)
    unwind_on_sigterm()
    if problem := qemu_ga_problem():
        print(f"bench/floor.py: {problem}", file=sys.stderr)
        return 2
    placement = measured.Placement.choose()
    with tempfile.TemporaryDirectory(prefix="pyqga-floor-") as tmp:
        rates = measure(Path(tmp), args.seconds, args.rounds, placement)
    text = report(rates, args.seconds, args.rounds, measured.describe_placement(placement))
    print()
    print(text)
    if not args.no_write:
        write_section(SECTION, f"## Results: `bench/floor.py`\n\n{text}", path=rpc.BENCHMARKS_MD,
                      intro=rpc.INTRO)
        print(f"wrote {rpc.BENCHMARKS_MD.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
