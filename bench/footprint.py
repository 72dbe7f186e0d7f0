"""Footprint per guest (issue 22): pyqga's memory, start-up, modules and idle wake-ups beside qemu-ga.

    sudo python -m bench.footprint [--window 60] [--no-vm] [--python PATH] [--no-write]

Run as root from the repository root (``make bench`` does): the freeze needs a loop device.  On
this machine, in one run, pyqga (under the interpreter ``bench/rpc.py`` uses: the packaged
``/usr/bin/python3`` with the venv's dependencies) and the real qemu-ga:

1. memory: both get the same freeze (``guest-fsfreeze-freeze-list`` of one loop-mounted ext4 this
   script made, then ``guest-fsfreeze-thaw``) and 10,000 requests (``guest-sync`` and
   ``guest-ping``, each with an id, alternately); then RSS and PSS from ``/proc/PID/smaps_rollup``
   of the agent, of the keeper it started, and of qemu-ga;
2. start to first reply: ``bench/rpc.py``'s measurement, median of 5;
3. modules: whether ``ssl``, ``jsonschema``, ``asyncio`` and ``http.server`` are loaded in the
   agent and in its keeper, after start-up and after the freeze: ``sys.modules`` of a second,
   instrumented agent (``bench/modules_probe/sitecustomize.py``) and the shared objects mapped
   in the first (``/proc/PID/maps``);

and, unless ``--no-vm``, in the VM guest (``bench/footprint_guest.py``): the voluntary context
switches of the idle pyqga agent, its keeper and qemu-ga over ``--window`` seconds with no host
connected, then each one's first reply.

Safety: only this run's own loop mount is ever frozen; pyqga runs with ``--freeze-include``
limited to it and qemu-ga in a private mount namespace in which only ``/`` and it are freezable
(as in ``bench/stall.py``).  Everything is thawed, stopped and unmounted on exit, also on Ctrl-C
or SIGTERM.  Results replace the ``bench/footprint.py`` section of BENCHMARKS.md unless
``--no-write``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT_ONLY = ("bench/footprint.py must run as root: it makes a loop device, mounts it and freezes it "
             "(try: sudo python -m bench.footprint)")
if __name__ == "__main__" and os.geteuid() != 0:
    sys.exit(ROOT_ONLY)  # before importing the test helpers, which need more than a plain user has

from bench import measured, rpc  # noqa: E402
from bench.footprint_guest import REPLY_TIMEOUT, GuestResult, measure_guest  # noqa: E402
from bench.report import (  # noqa: E402
    load_average,
    machine_line,
    qemu_ga_problem,
    unwind_on_sigterm,
    verdict,
    write_section,
)
from tests.rig.agent_process import (  # noqa: E402
    PyqgaAgent,
    agent_env,
    keeper_of,
    shared_objects,
    ssl_objects,
    started_keeper,
)
from tests.rig.loopfs import LoopMounts  # noqa: E402
from tests.rig.paths import REPO_ROOT  # noqa: E402
from tests.rig.qemu_ga import IsolatedQemuGa, ensure_qemu_ga  # noqa: E402

SECTION = "bench/footprint.py"
REQUESTS = 10_000
SYNC = rpc.request_line("qga", "guest-sync", {"id": 1}, True)
PSS_MAX_BYTES = 16_000_000     # agent + keeper
START_MAX_SECONDS = 0.080
IDLE_REPLY_MAX_SECONDS = 0.050
WINDOW = 60.0
PROBE_DIR = Path(__file__).resolve().with_name("modules_probe")
DUMP_TIMEOUT = 10.0
# What the issue asks about, and how each shows in sys.modules (any of the names).
MODULES: dict[str, tuple[str, ...]] = {
    "ssl": ("ssl", "_ssl"), "jsonschema": ("jsonschema",), "asyncio": ("asyncio",),
    "http.server": ("http.server",),
}
MOMENTS = ("after start-up", "after the freeze")

METHOD = f"""\
`python -m bench.footprint` (root: it freezes a loop mount it makes; `--no-vm` skips the guest,
`--window S` sets the idle window). pyqga runs under `/usr/bin/python3` with the venv's
dependencies, as in `bench/rpc.py`; qemu-ga is Debian's build. MB = 10^6 bytes (the kernel's kB
are KiB).

- **Memory**: pyqga (with `--freeze-include` limited to the run's loop mount) and qemu-ga (in a
  private mount namespace where only `/` and that mount are freezable) each get
  `guest-fsfreeze-freeze-list` of one loop-mounted 16 MB ext4 and `guest-fsfreeze-thaw`, then
  {REQUESTS:,} requests on one connection, `guest-sync` and `guest-ping` with ids alternately;
  then `Rss` and `Pss` of `/proc/PID/smaps_rollup` for the agent, for the keeper it started
  (pyqga's second process, which thaws if the agent dies) and for qemu-ga. PSS shares each
  page among the processes that map it, so agent + keeper counts the interpreter's pages they
  share once; other processes running the same `/usr/bin/python3` would lower it further
  (none ran here). USS: the pages only that process maps.
- **Floor**: the same memory figures for two programs that stand for what cannot be cut under
  the project's fixed choices (Python, jsonrpcserver, a keeper process whose memory is locked):
  see the table's note.
- **Start to first reply**: `bench/rpc.py`'s measurement: from `Popen` to the first
  `guest-ping` reply of a connect+ping retry loop, median of 5 fresh starts each; pyqga's
  modules byte-compiled first, as the Debian package's postinst does (it runs with `-B`).
- **Modules**: a second pyqga, started with `bench/modules_probe/` on `PYTHONPATH` (its
  `sitecustomize` dumps `sys.modules` on SIGUSR2; the keeper inherits it), is asked for the
  names after start-up (the keeper started and at rest) and after a freeze and thaw of the same
  mount; "yes" means a module of that name is loaded (for `ssl`: `ssl` or `_ssl`). Shared
  objects: `/proc/PID/maps` of the memory run's agent and keeper, for `_ssl*.so` and `libssl`.
- **Idle wake-ups** (VM): the test guest (`tests/rig/machine.py`: TCG, 1 vCPU, 512 MB) runs
  pyqga on virtio-serial and qemu-ga on a second virtio-serial port, the two measured, and a
  second pyqga on the serial line that starts the sampler. Each measured agent first has one
  host session (connect, `guest-sync`, hang up), as after a host that came and went: without
  it, qemu-ga was busy the whole window in the runs made while this benchmark was written (a
  full vCPU, 100 CPU ticks a second, no voluntary switch), apparently over replies to the
  harness's early boot probes that no host was there to read. Then no host is connected. Once
  the keeper (which the agent starts as it starts serving) has used no CPU for 3 s and 10 s
  more have passed, a sampler in the guest reads `voluntary_ctxt_switches` of every thread
  (`/proc/PID/task/TID/status`) once a second for the window, and the system call each thread
  sleeps in (`/proc/PID/task/TID/syscall`), and CPU time from `/proc/PID/stat`. A process that
  only sleeps is the control (the kernel's own count for a process that never wakes). CPython
  3.11 leaves every thread's `comm` as `python3`, so threads are named by that, their tid,
  "main" for the main thread, and the call they sleep in.
- **First reply after idle** (VM): right after the window, the host connects to each agent's
  virtio-serial port and times one `guest-sync` with a fresh id from its send to its reply.
"""


# --- processes ----------------------------------------------------------------------------------


def smaps_kib(pid: int) -> dict[str, int]:
    """Rss, Pss and Uss (Private_Clean + Private_Dirty) of ``pid`` in KiB, from smaps_rollup."""
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, _, rest = line.partition(":")
        values[key] = int(rest.split()[0])
    return {"Rss": values["Rss"], "Pss": values["Pss"],
            "Uss": values["Private_Clean"] + values["Private_Dirty"]}


def call(conn: measured.Connection, command: str, arguments: dict[str, Any] | None = None) -> Any:
    """One request in qemu-ga's dialect; its return value (an error reply raises)."""
    conn.loop(rpc.request_line("qga", command, arguments, True), count=1)
    if problem := rpc.reply_problem(conn.last):
        raise RuntimeError(f"{command}: {problem}")
    return json.loads(conn.last)["return"]


def freeze_and_thaw(socket_path: Path, mountpoint: str) -> None:
    conn = measured.Connection(socket_path)
    try:
        if (count := call(conn, "guest-fsfreeze-freeze-list", {"mountpoints": [mountpoint]})) != 1:
            raise RuntimeError(f"froze {count} filesystems, expected 1")
        if (count := call(conn, "guest-fsfreeze-thaw")) != 1:
            raise RuntimeError(f"thawed {count} filesystems, expected 1")
    finally:
        conn.close()


def send_requests(socket_path: Path) -> None:
    """REQUESTS requests on one connection, guest-sync and guest-ping with ids alternately."""
    conn = measured.Connection(socket_path)
    try:
        for index in range(REQUESTS):
            conn.loop(SYNC if index % 2 == 0 else rpc.PING, count=1)
            if problem := rpc.reply_problem(conn.last):
                raise RuntimeError(f"request {index + 1}: {problem}")
    finally:
        conn.close()


def pyqga_agent(workdir: Path, loops: LoopMounts, probe: bool = False) -> PyqgaAgent:
    """pyqga whose freezes can only reach ``loops``' mounts (with the modules probe if ``probe``)."""
    paths = measured.INTERPRETER.module_paths
    if probe:
        paths = (str(PROBE_DIR), *paths)
    agent = PyqgaAgent(workdir, ["--freeze-include", loops.glob()], python=measured.INTERPRETER.path,
                       module_paths=paths)
    if probe:
        assert agent.env is not None
        (workdir / "modules").mkdir(parents=True)
        agent.env["PYQGA_MODULES_DUMP"] = str(workdir / "modules")
    return agent


@contextlib.contextmanager
def running(agent: PyqgaAgent, loops: LoopMounts) -> Iterator[int]:
    """The agent started; yields its keeper's pid once that is at rest.  Thawed and stopped after."""
    try:
        agent.start()
        yield started_keeper(agent.pid)
    finally:
        loops.thaw_all()
        agent.stop()


# --- 1. memory ----------------------------------------------------------------------------------


@dataclass
class Memory:
    kib: dict[str, dict[str, int]]   # process -> Rss, Pss, Uss
    # moment -> process -> (the TLS shared objects mapped, how many shared objects are mapped)
    objects: dict[str, dict[str, tuple[list[str], int]]]
    keeper_restarted: bool


def mapped(pids: dict[str, int]) -> dict[str, tuple[list[str], int]]:
    return {name: (ssl_objects(pid), len(shared_objects(pid))) for name, pid in pids.items()}


def measure_memory(workdir: Path, loops: LoopMounts) -> Memory:
    mountpoint = str(loops.filesystems[0].mountpoint)
    agent = pyqga_agent(workdir / "pyqga", loops)
    with IsolatedQemuGa(workdir / "qemu-ga", loops) as qga, running(agent, loops) as keeper:
        if (binary := Path(f"/proc/{qga.pid}/exe").resolve().name) != "qemu-ga":
            raise RuntimeError(f"pid {qga.pid} runs {binary}, not qemu-ga: its memory would be another's")
        ours = {"pyqga agent": agent.pid, "pyqga keeper": keeper}
        objects = {MOMENTS[0]: mapped(ours)}
        for socket_path in (qga.socket_path, agent.socket_path):
            freeze_and_thaw(socket_path, mountpoint)
            send_requests(socket_path)
        restarted = keeper_of(agent.pid) != keeper
        ours["pyqga keeper"] = started_keeper(agent.pid)
        objects[MOMENTS[1]] = mapped(ours)
        time.sleep(0.05)
        kib = {name: smaps_kib(pid) for name, pid in {**ours, "qemu-ga": qga.pid}.items()}
    return Memory(kib, objects, restarted)


# --- 1b. the floor -------------------------------------------------------------------------------

# What the fixed choices cost before any code of pyqga's own: two programs under the same
# interpreter, side by side (sharing its pages as the agent and the keeper do), each saying "R"
# once it is set up and then waiting on stdin.  The keeper's floor locks its memory as the keeper
# does (mlockall(MCL_CURRENT | MCL_FUTURE): a thaw must never wait for a page-in); the agent's
# floor blocks ssl as the agent does and imports what dispatch cannot do without, jsonrpcserver's
# dispatcher through the agent's own loader, then also asyncio, the agent's event loop.
_READY = "import sys; sys.stdout.write('R\\n'); sys.stdout.flush(); sys.stdin.read()"
_NO_SSL = "import sys; sys.modules['ssl'] = None"
_DISPATCH = "import json; from pyqga.agent import jsonrpc_calls"
FLOORS: dict[str, str] = {
    "keeper: the interpreter, memory locked": f"import ctypes; ctypes.CDLL(None).mlockall(3); {_READY}",
    "agent: the interpreter and jsonrpcserver's dispatch": f"{_NO_SSL}; {_DISPATCH}; {_READY}",
    "agent: the same and asyncio": f"{_NO_SSL}; import asyncio; {_DISPATCH}; {_READY}",
}


def measure_floor() -> dict[str, dict[str, int]]:
    """PSS (KiB) of the keeper's floor beside each agent floor in turn: name -> Rss, Pss, Uss."""
    keeper, *agents = FLOORS
    result: dict[str, dict[str, int]] = {}
    env = agent_env(measured.INTERPRETER.module_paths)
    for agent in agents:
        pair = [subprocess.Popen([measured.INTERPRETER.path, "-B", "-c", FLOORS[name]], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, env=env, cwd=REPO_ROOT) for name in (keeper, agent)]
        try:
            for process in pair:
                assert process.stdout is not None
                if process.stdout.readline() != b"R\n":
                    raise RuntimeError(f"a floor program failed (exit {process.wait(5)})")
            time.sleep(0.05)
            result[agent] = smaps_kib(pair[1].pid)
            result[keeper] = smaps_kib(pair[0].pid)   # the same beside either: the last one read
        finally:
            for process in pair:
                process.kill()
                process.wait()
    return result


# --- 3. modules ---------------------------------------------------------------------------------


def dump_modules(workdir: Path, pid: int, number: int) -> set[str]:
    """Ask ``pid`` (started with the modules probe) for its ``sys.modules``: its ``number``-th dump."""
    path = workdir / "modules" / f"{pid}.{number}"
    os.kill(pid, signal.SIGUSR2)
    deadline = time.monotonic() + DUMP_TIMEOUT
    while not path.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"pid {pid} wrote no module list within {DUMP_TIMEOUT} s (is "
                               f"{PROBE_DIR.name}/sitecustomize.py loaded?)")
        time.sleep(0.01)
    return set(path.read_text().split())


def measure_modules(workdir: Path, loops: LoopMounts) -> dict[str, dict[str, set[str]]]:
    """moment -> process -> the names in its sys.modules, from an agent started with the probe."""
    agent = pyqga_agent(workdir, loops, probe=True)
    with running(agent, loops) as keeper:
        ours = {"pyqga agent": agent.pid, "pyqga keeper": keeper}
        loaded = {MOMENTS[0]: {name: dump_modules(workdir, pid, 1) for name, pid in ours.items()}}
        freeze_and_thaw(agent.socket_path, str(loops.filesystems[0].mountpoint))
        if started_keeper(agent.pid) != keeper:
            raise RuntimeError("the keeper was restarted during the freeze")
        loaded[MOMENTS[1]] = {name: dump_modules(workdir, pid, 2) for name, pid in ours.items()}
    return loaded


# --- report -------------------------------------------------------------------------------------


def mb(kib: int) -> str:
    return f"{kib * 1024 / 1e6:.1f} MB"


def memory_table(memory: Memory) -> str:
    kib = memory.kib
    both = {key: kib["pyqga agent"][key] + kib["pyqga keeper"][key] for key in ("Rss", "Pss", "Uss")}
    ok = both["Pss"] * 1024 <= PSS_MAX_BYTES
    lines = [
        f"| after one freeze and {REQUESTS:,} requests | RSS | PSS | USS | target | result |",
        "|---|---:|---:|---:|---|---|",
        *(f"| {name} | {mb(kib[name]['Rss'])} | {mb(kib[name]['Pss'])} | {mb(kib[name]['Uss'])} | | |"
          for name in ("pyqga agent", "pyqga keeper")),
        f"| **pyqga agent + keeper** | {mb(both['Rss'])} | **{mb(both['Pss'])}** | {mb(both['Uss'])} "
        f"| PSS ≤ {PSS_MAX_BYTES / 1e6:.0f} MB | {verdict(ok)} |",
        "| qemu-ga | " + " | ".join(mb(kib["qemu-ga"][key]) for key in ("Rss", "Pss", "Uss")) + " | | |",
    ]
    if memory.keeper_restarted:
        lines.append("\nThe keeper was restarted during the freeze or the requests (see the agent's log).")
    return "\n".join(lines)


def floor_table(floor: dict[str, dict[str, int]]) -> str:
    keeper, dispatch, with_asyncio = FLOORS
    lines = [
        "What the fixed choices cost before any of pyqga's code (each agent floor measured beside the "
        "keeper's, under the same interpreter; see `FLOORS` in the script):",
        "",
        "| floor | RSS | PSS |",
        "|---|---:|---:|",
        *(f"| {name} | {mb(floor[name]['Rss'])} | {mb(floor[name]['Pss'])} |" for name in FLOORS),
    ]
    for agent in (dispatch, with_asyncio):
        both = floor[keeper]["Pss"] + floor[agent]["Pss"]
        lines.append(f"| **keeper + {agent.removeprefix('agent: ')}** | | **{mb(both)}** |")
    left = PSS_MAX_BYTES / 1e6 - (floor[keeper]["Pss"] + floor[dispatch]["Pss"]) * 1024 / 1e6
    target = f"The PSS target of {PSS_MAX_BYTES / 1e6:.0f} MB"
    lines.append("")
    if left >= 0:
        lines.append(f"{target} leaves {left:.1f} MB for everything pyqga itself loads and keeps, in both "
                     "processes.")
    else:
        lines.append(f"{target} is {-left:.1f} MB below this floor: no cut in pyqga's own code reaches it "
                     "under these choices.")
    return "\n".join(lines)


def start_table(start: dict[str, list[float]]) -> str:
    theirs, ours = statistics.median(start["qemu-ga"]), statistics.median(start["pyqga"])
    runs = {name: ", ".join(f"{t * 1000:.0f}" for t in times) for name, times in start.items()}
    return "\n".join([
        f"| start to first reply, median of {rpc.START_TRIALS} | qemu-ga | pyqga | target | result |",
        "|---|---:|---:|---|---|",
        f"| | {theirs * 1000:.0f} ms | {ours * 1000:.0f} ms | pyqga ≤ {START_MAX_SECONDS * 1000:.0f} ms "
        f"| {verdict(ours <= START_MAX_SECONDS)} |",
        "",
        f"All runs: qemu-ga {runs['qemu-ga']} ms; pyqga {runs['pyqga']} ms.",
    ])


def modules_table(loaded: dict[str, dict[str, set[str]]],
                  objects: dict[str, dict[str, tuple[list[str], int]]]) -> str:
    columns = [(process, moment) for process in ("pyqga agent", "pyqga keeper") for moment in MOMENTS]
    lines = [
        "| module | " + " | ".join(f"{process}, {moment}" for process, moment in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for module, names in MODULES.items():
        cells = ["yes" if loaded[moment][process] & set(names) else "no" for process, moment in columns]
        lines.append(f"| `{module}` | " + " | ".join(cells) + " |")
    lines.append("| `_ssl` / `libssl` shared object mapped | " + " | ".join(
        ", ".join(f"`{os.path.basename(p)}`" for p in objects[moment][process][0]) or "none"
        for process, moment in columns) + " |")
    lines.append("| modules in `sys.modules` / shared objects mapped | " + " | ".join(
        f"{len(loaded[moment][process])} / {objects[moment][process][1]}"
        for process, moment in columns) + " |")
    return "\n".join(lines)


def guest_report(guest: GuestResult) -> str:
    control = guest.per_minute("control")
    lines = [
        f"Idle for {guest.window:.0f} s with no host connected (guest booted in {guest.boot_seconds:.0f} s; "
        f"the keeper was at rest {guest.waited:.0f} s after the sampler started"
        + ("" if guest.quiet else f", or never: the window began after {guest.waited:.0f} s anyway") + ").",
        "",
        "| process | voluntary switches / min | CPU ms / min | woken threads (tid, comm, sleeping in, "
        "period) | target | result |",
        "|---|---:|---:|---|---|---|",
    ]
    for role in ("pyqga agent", "pyqga keeper", "qemu-ga", "control"):
        woke = [t for t in guest.threads[role] if t.switches]
        described = "; ".join(
            f"{t.tid} `{t.comm}`{' (main)' if t.main else ''}: {t.per_minute:.0f}/min"
            + (f", every {t.period:.2g} s on average" if t.period is not None else "")
            + f", in {t.syscall[1]}" for t in woke) or "none"
        target = result = ""
        if role.startswith("pyqga"):
            target = "0 / min beyond the control"
            result = verdict(guest.per_minute(role) <= control)
        lines.append(f"| {role} | {guest.per_minute(role):.1f} | {guest.cpu_ms_per_minute(role):.0f} | "
                     f"{described} | {target} | {result} |")
    lines += [
        "",
        "| first reply after the idle window (`guest-sync`, send to reply) | time | target | result |",
        "|---|---:|---|---|",
    ]
    for name, reply in guest.first_reply.items():
        took = f"none in {REPLY_TIMEOUT:g} s" if reply.seconds is None else f"{reply.seconds * 1e3:.1f} ms"
        if name == "pyqga":
            ok = reply.seconds is not None and reply.seconds < IDLE_REPLY_MAX_SECONDS
            lines.append(f"| {name} | {took} | < {IDLE_REPLY_MAX_SECONDS * 1000:.0f} ms | {verdict(ok)} |")
        else:
            lines.append(f"| {name} | {took} | | |")
    memory = "; ".join(f"{role} {mb(values['Rss'])} / {mb(values['Pss'])}"
                       for role, values in guest.memory.items())
    sleeping = []
    for role in ("pyqga agent", "pyqga keeper", "qemu-ga"):
        calls = [t.syscall[1] for t in guest.threads[role]]
        counted = (f"{calls.count(call)} in {call}" for call in sorted(set(calls)))
        sleeping.append(f"{role}: " + ", ".join(counted))
    lines += [
        "",
        f"In the guest at the end of the window, RSS / PSS (no freeze, no requests): {memory}. "
        f"Threads of each process by the call they sleep in: {'; '.join(sleeping)}.",
    ]
    return "\n".join(lines)


def build_report(memory: Memory, floor: dict[str, dict[str, int]], start: dict[str, list[float]],
                 loaded: dict[str, dict[str, set[str]]], guest: GuestResult | None, loads: tuple[str, str],
                 seconds: float) -> str:
    parts = [
        METHOD,
        f"{machine_line(ensure_qemu_ga())} {measured.INTERPRETER.describe()}. Load average (1 min) "
        f"before and after the host part: {loads[0]} and {loads[1]} on {os.cpu_count()} CPUs. "
        f"Run took {seconds:.0f} s.",
        memory_table(memory),
        floor_table(floor),
        start_table(start),
        modules_table(loaded, memory.objects),
        guest_report(guest) if guest is not None else "Idle wake-ups in the guest: not measured "
        "(`--no-vm`).",
    ]
    return "\n\n".join(parts) + "\n"


# --- main ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--window", type=float, default=WINDOW,
                        help=f"idle seconds sampled in the guest (default {WINDOW:g})")
    parser.add_argument("--no-vm", action="store_true", help="skip the guest (idle wake-ups, first reply)")
    parser.add_argument("--python", default=None, help="interpreter to run pyqga with (default as "
                        f"bench/rpc.py: {measured.PACKAGED_PYTHON} where it is a 3.11+)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args(argv)
    if args.window <= 0:
        parser.error("--window must be > 0")
    if os.geteuid() != 0:
        print(ROOT_ONLY, file=sys.stderr)
        return 2
    missing = [t for t in ("losetup", "mkfs.ext4", "mount", "umount", "unshare") if not shutil.which(t)]
    if missing:
        print(f"bench/footprint.py needs {', '.join(missing)} on PATH", file=sys.stderr)
        return 2
    if problem := qemu_ga_problem():
        print(f"bench/footprint.py: {problem}", file=sys.stderr)
        return 2
    measured.INTERPRETER = measured.pick_interpreter(args.python)
    unwind_on_sigterm()
    began = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="pyqga-footprint-") as tmp:
            workdir = Path(tmp)
            load_before = load_average()
            with LoopMounts(workdir / "mnt", watchdog=600.0) as loops:
                loops.add("fs1")
                print(f"memory: one freeze and {REQUESTS:,} requests each", flush=True)
                memory = measure_memory(workdir / "memory", loops)
                print(memory_table(memory), flush=True)
                floor = measure_floor()
                print(floor_table(floor), flush=True)
                print("modules: sys.modules of an instrumented agent and its keeper", flush=True)
                loaded = measure_modules(workdir / "modules", loops)
            print(f"start to first reply: {rpc.START_TRIALS} starts each", flush=True)
            start = rpc.measure_start(workdir / "start")
            loads = (load_before, load_average())
            guest = None
            if not args.no_vm:
                print("guest: booting the test VM (TCG)", flush=True)
                guest = measure_guest(workdir / "vm", args.window)
    except KeyboardInterrupt:
        print("bench/footprint.py: interrupted; everything it made has been thawed and removed",
              file=sys.stderr)
        return 130
    report = build_report(memory, floor, start, loaded, guest, loads, time.monotonic() - began)
    print()
    print(report)
    if not args.no_write:
        write_section(SECTION, f"## Footprint per guest: `bench/footprint.py`\n\n{report}",
                      path=rpc.BENCHMARKS_MD, intro=rpc.INTRO)
        print(f"wrote {rpc.BENCHMARKS_MD.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
