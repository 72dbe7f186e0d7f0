"""Named, generated sections of BENCHMARKS.md, shared by the bench scripts.

Each script owns the text between ``<!-- BEGIN name -->`` and ``<!-- END name -->`` and rewrites
only that; everything else in the file (other scripts' sections, hand-written notes) is kept.

    write_section("bench/freeze.py", markdown)
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import os
import platform
import signal
import subprocess
from pathlib import Path

from tests.rig.paths import REPO_ROOT

BENCHMARKS_MD = REPO_ROOT / "BENCHMARKS.md"
DEFAULT_INTRO = (
    "# Benchmarks\n\npyqga measured against the real qemu-ga on the same machine in the same run.\n"
)


def markers(name: str) -> tuple[str, str]:
    """The comment lines that delimit section ``name``."""
    return f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"


def replace_section(text: str, name: str, markdown: str) -> str:
    """``text`` with section ``name`` replaced by ``markdown`` (appended at the end if absent)."""
    begin, end = markers(name)
    section = f"{begin}\n{markdown.strip(chr(10))}\n{end}"
    start = text.find(begin)
    stop = text.find(end, start + len(begin)) if start >= 0 else -1
    if start >= 0 and stop >= 0:
        return text[:start] + section + text[stop + len(end):]
    return text.rstrip("\n") + "\n\n" + section + "\n"


def write_section(name: str, markdown: str, *, path: Path = BENCHMARKS_MD,
                  intro: str = DEFAULT_INTRO) -> None:
    """Replace (or append) section ``name`` of ``path``; a missing file starts with ``intro``.

    Read-modify-write under an exclusive lock on the file, so two bench scripts finishing at
    the same time cannot drop each other's section.
    """
    with open(path, "a+", encoding="utf-8") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        text = f.read() or intro
        new = replace_section(text, name, markdown)
        f.seek(0)
        f.truncate()
        f.write(new)


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or "unknown CPU"


def machine_line(qemu_ga: Path | str) -> str:
    """What a result depends on: the machine, Python, the qemu-ga peer's version, the date."""
    proc = subprocess.run([str(qemu_ga), "-V"], capture_output=True, text=True, timeout=10)
    version = proc.stdout.strip().removeprefix("QEMU Guest Agent ") or "unknown"
    return (
        f"Machine: {os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), {cpu_model()}, "
        f"Linux {platform.release()}; Python {platform.python_version()} "
        f"({platform.python_implementation()}); qemu-ga {version}. "
        f"Date: {datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')}."
    )


def load_average() -> str:
    """The 1-minute load average: the machine is shared, so reports say how busy it was."""
    return Path("/proc/loadavg").read_text().split()[0]


def verdict(ok: bool) -> str:
    return "pass" if ok else "**FAIL**"


def unwind_on_sigterm() -> None:
    """SIGTERM raises SystemExit, so every ``with`` in a benchmark stops its agents, thaws and
    unmounts (the default action would leave them behind)."""

    def on_sigterm(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_sigterm)


def qemu_ga_problem() -> str | None:
    """Why the real qemu-ga cannot be used here, or None (it is fetched if need be)."""
    from tests.rig.qemu_ga import QemuGaUnavailable, ensure_qemu_ga

    try:
        ensure_qemu_ga()
    except QemuGaUnavailable as exc:
        return f"the real qemu-ga is not available: {exc}"
    return None


def publish(section: str, heading: str, report: str, write: bool) -> None:
    """Print ``report``; with ``write``, also put it in BENCHMARKS.md under ``heading``."""
    print()
    print(report)
    if write:
        write_section(section, f"## {heading}\n\n{report}")
        print("wrote BENCHMARKS.md")
