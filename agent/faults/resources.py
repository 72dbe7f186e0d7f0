"""The resource kinds: ``cpu-hog`` (busy processes at a set share of a CPU each) and
``memory-pressure`` (MiB written and locked).  Each is a worker (:mod:`.worker`) that the
``spawn`` step starts and the ``reap`` step kills, so the keeper ends it like any other lease.

Targets: ``cpu`` and ``memory``; one lease of each at a time (the device is the target).

Caps, refused beyond:
- ``cpu-hog``: at most :data:`MAX_PROCESSES_PER_CPU` processes per online CPU, and a total share
  (processes x percent) of at most every CPU at 100 %.
- ``memory-pressure``: at most what the kernel calls available (``MemAvailable``) minus a
  reserve (:data:`RESERVE_MIB` or a tenth of ``MemTotal``, the larger), so the agent, its keeper
  and the kernel keep room.  The worker's ``oom_score_adj`` is 1000: if memory runs out anyway,
  the OOM killer ends the fault before it takes the agent or the application.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from pyqga.agent.commands.kernel_files import read_optional
from pyqga.agent.faults.kinds import Context, ParamSpec, Preparer, Spec
from pyqga.agent.faults.machine import Refused
from pyqga.agent.faults.tokens import token_hex
from pyqga.agent.faults.vocabulary import Kind

MAX_PROCESSES_PER_CPU = 4
RESERVE_MIB = 128


def meminfo() -> dict[str, int]:
    """/proc/meminfo in KiB by field name (empty if it cannot be read)."""
    return parse_meminfo(read_optional("/proc/meminfo") or "")


def parse_meminfo(text: str) -> dict[str, int]:
    """The text of a /proc/meminfo (this guest's, or one a host read) in KiB by field name."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        fields = rest.split()
        if fields and fields[0].isdigit():
            out[name] = int(fields[0])
    return out


def memory_cap_mib(info: Mapping[str, int]) -> int:
    """The most ``memory-pressure`` may lock now, in MiB."""
    total, available = info.get("MemTotal", 0) // 1024, info.get("MemAvailable", 0) // 1024
    return max(0, available - max(RESERVE_MIB, total // 10))


def _token() -> str:
    return token_hex(8)


def _worker(device: str, worker: str, args: Mapping[str, Any], params: Mapping[str, Any]) -> Spec:
    token = _token()
    return Spec(device, ({"op": "spawn", "worker": worker, "token": token, "args": dict(args)},),
                ({"op": "reap", "token": token},), params)


def _target(kind: Kind, target: str, expected: str) -> None:
    if target != expected:
        raise Refused(f"{kind.value} takes the target {expected!r}, not {str(target)[:80]!r}")


def _cpu_hog(target: str, params: Mapping[str, Any], force: bool, context: Context) -> Spec:
    _target(Kind.CPU_HOG, target, "cpu")
    cpus = os.cpu_count() or 1
    processes, percent = params["processes"], params["percent"]
    if processes > MAX_PROCESSES_PER_CPU * cpus:
        raise Refused(f"cpu-hog: {processes} processes is above the cap of {MAX_PROCESSES_PER_CPU * cpus} "
                      f"({MAX_PROCESSES_PER_CPU} per CPU, {cpus} CPUs)")
    if processes * percent > 100 * cpus:
        raise Refused(f"cpu-hog: {processes} x {percent} % is more than this guest's {cpus} CPUs")
    return _worker("cpu", "cpu-hog", {"processes": processes, "percent": percent,
                                      "period-ms": params["period-ms"]}, params)


def _memory_pressure(target: str, params: Mapping[str, Any], force: bool, context: Context) -> Spec:
    _target(Kind.MEMORY_PRESSURE, target, "memory")
    mib = params.get("mib")
    cap = memory_cap_mib(meminfo())
    if mib is not None and mib > cap:
        raise Refused(f"memory-pressure: {mib} MiB is above the cap of {cap} MiB (MemAvailable less a "
                      f"reserve of {RESERVE_MIB} MiB or a tenth of the memory, for the agent and the kernel)")
    return _worker("memory", "memory", {"mib": mib}, params)


PARAMS: dict[Kind, tuple[ParamSpec, ...]] = {
    Kind.CPU_HOG: (
        ParamSpec("processes", int, 1, "busy processes (one CPU's worth each at 100 %)", minimum=1,
                  maximum=1024),
        ParamSpec("percent", int, 100, "the share of a CPU each process keeps busy", minimum=1, maximum=100),
        ParamSpec("period-ms", int, 100, "the busy/idle cycle of each process", minimum=10, maximum=10000),
    ),
    Kind.MEMORY_PRESSURE: (
        ParamSpec("mib", int, None, "MiB written and locked (mlockall) while it holds", minimum=1,
                  maximum=1 << 24),
    ),
}
PREPARERS: dict[Kind, Preparer] = {
    Kind.CPU_HOG: _cpu_hog,
    Kind.MEMORY_PRESSURE: _memory_pressure,
}
