"""The stream decoder's cost per byte for each class of bytes an abusive peer can send (issue 13).

    python -m bench.decoder [--before REV] [--rounds 7] [--chunk 262144] [--no-write]

Each flood is 256 KiB, fed to a fresh `StreamDecoder` in chunks of ``--chunk`` bytes (asyncio
hands the agent up to 256 KiB per read).  ``--before`` is a git revision whose
protocol/decoder.py is measured side by side (default: the last one before the issue 13 rework);
both decoders run every class in every round, and the median over rounds is reported.  The
ratio column divides each class's cost by the cost of plain string bytes (the inside of one long
string) in the same round, which is what the target in issue 13 is stated against: within 3x for
every class.  Floods of valid tiny messages are listed for information: their cost is one
message each, and goes in its own column.

The table is printed and, unless ``--no-write``, replaces the decoder section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from bench.report import cpu_model, verdict, write_section
from tests.rig.paths import REPO_ROOT

SECTION = "bench/decoder.py"
BEFORE = "e163a7d~1"  # main before the decoder rework of issue 13
SIZE = 256 * 1024
TARGET = 3.0

# name: (flood of about SIZE bytes, held to the 3x target)
FLOODS: dict[str, tuple[bytes, bool]] = {
    "plain string bytes (baseline)": (b'{"a":"' + b"x" * SIZE, True),
    "0xFF": (b"\xff" * SIZE, True),
    "`[`": (b"[" * SIZE, True),
    "`{`": (b"{" * SIZE, True),
    "`{}` (valid tiny messages)": (b"{}" * (SIZE // 2), True),
    '`"` between messages': (b'"' * SIZE, True),
    '`"` in a message (empty strings)': (b"{" + b'"' * SIZE, True),
    "whitespace": (b" \t\r\n" * (SIZE // 4), True),
    "garbage": (b"garbage " * (SIZE // 8), True),
    "digits": (b"1234567890" * (SIZE // 10), True),
    "deep nesting (`[`x2000 `]`x2000)": ((b"[" * 2000 + b"]" * 2000) * (SIZE // 4000), True),
    "endless line (one message, no end)": (b'{"k": [' + b'1, "v", ' * (SIZE // 8), True),
    "guest-ping without newlines": (b'{"execute":"guest-ping"}' * (SIZE // 24), False),
    "`\\xff{` (one resync per 2 bytes)": (b"\xff{" * (SIZE // 2), False),
    "`{` + `[]` repeated (shallow brackets)": (b"{" + b"[]" * (SIZE // 2), False),
}


def load_decoder(source: str, name: str) -> ModuleType:
    """Import a version of protocol/decoder.py from its source text under a private name."""
    folder = Path(tempfile.mkdtemp(prefix="pyqga-bench-decoder-"))
    path = folder / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def source_at(revision: str) -> str:
    return subprocess.run(["git", "show", f"{revision}:protocol/decoder.py"], cwd=REPO_ROOT,
                          check=True, capture_output=True, text=True).stdout


def ns_per_byte(module: ModuleType, flood: bytes, chunk: int) -> tuple[float, int]:
    """Best of 3 runs on a fresh decoder: ns per byte, events."""
    pieces = [flood[i : i + chunk] for i in range(0, len(flood), chunk)]
    best, events = float("inf"), 0
    for _ in range(3):
        decoder = module.StreamDecoder()
        start = time.perf_counter_ns()
        events = sum(len(decoder.feed(piece)) for piece in pieces)
        best = min(best, (time.perf_counter_ns() - start) / len(flood))
    return best, events


def run(decoders: dict[str, ModuleType], rounds: int, chunk: int,
        progress: Callable[[str], None]) -> dict[str, dict[str, list[float]]]:
    """results[decoder][class] = ns/byte per round; also '<class> ratio' per round."""
    results: dict[str, dict[str, list[float]]] = {name: {} for name in decoders}
    events: dict[str, dict[str, int]] = {name: {} for name in decoders}
    baseline = next(iter(FLOODS))
    for round_ in range(rounds):
        progress(f"round {round_ + 1}/{rounds}")
        for label, module in decoders.items():
            costs = {}
            for name, (flood, _) in FLOODS.items():
                costs[name], events[label][name] = ns_per_byte(module, flood, chunk)
            for name, cost in costs.items():
                results[label].setdefault(name, []).append(cost)
                results[label].setdefault(f"{name} ratio", []).append(cost / costs[baseline])
    for label in decoders:
        for name, count in events[label].items():
            results[label][f"{name} events"] = [float(count)]
    return results


def table(results: dict[str, dict[str, list[float]]], chunk: int, rounds: int, before: str) -> str:
    med = statistics.median
    old, new = results["before"], results["after"]
    lines = [
        "## Results: `bench/decoder.py`",
        "",
        f"Machine: {os.cpu_count()} CPUs, {cpu_model()}, Linux {platform.release()}; Python "
        f"{platform.python_version()}. Date: "
        f"{datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')}. Floods of "
        f"{SIZE // 1024} KiB in chunks of {chunk} bytes, median of {rounds} rounds (each the best "
        f"of 3 runs); before = protocol/decoder.py at `{before}`.",
        "",
        "| byte class | before ns/byte | after ns/byte | events after | after / plain string "
        "bytes | target | result |",
        "|---|---:|---:|---:|---:|---|---|",
    ]
    for name, (_, held) in FLOODS.items():
        ratio = med(new[f"{name} ratio"])
        target = f"≤ {TARGET:.0f}x" if held else "none (information)"
        result = verdict(ratio <= TARGET) if held else ""
        lines.append(
            f"| {name} | {med(old[name]):,.1f} | {med(new[name]):,.1f} | "
            f"{int(new[f'{name} events'][0]):,} | {ratio:.1f}x | {target} | {result} |"
        )
    tiny = med(new["`{}` (valid tiny messages)"]) * 2 / 1000
    pings = med(new["guest-ping without newlines"]) * 24 / 1000
    missed = [name for name, (_, held) in FLOODS.items()
              if held and med(new[f"{name} ratio"]) > TARGET]
    lines += [
        "",
        f"Classes over the target in this run: {', '.join(missed) or 'none'}.  0xFF runs are one "
        "regex match and one `Resynced` event per run, bracket runs move the depth a block at a "
        "time, and a message that has failed is skipped at the same rate; this machine is shared, "
        "so ratios near 3x move between runs.  What stays dear is what makes an event every few "
        "bytes: "
        f"`{{}}` costs {tiny:.1f} µs per message and a guest-ping {pings:.1f} µs (one `json` "
        "call and one `Message` each, on the fast path); `\\xff{` makes one `Resynced` per two "
        "bytes.  The 3x target cannot hold for `{}` as long as each message is an object of its "
        "own; the defence is the per-connection budget of events in the server (issue 13, item "
        "1), and the decoder's statement of its worst case (protocol/decoder.py) says so.",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--before", default=BEFORE, help="git revision to compare with")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--chunk", type=int, default=SIZE)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    decoders = {
        "before": load_decoder(source_at(args.before), "decoder_before"),
        "after": load_decoder((REPO_ROOT / "protocol/decoder.py").read_text(), "decoder_after"),
    }
    results = run(decoders, args.rounds, args.chunk, lambda s: print(s, file=sys.stderr))
    markdown = table(results, args.chunk, args.rounds, args.before)
    print(markdown)
    if not args.no_write:
        write_section(SECTION, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
