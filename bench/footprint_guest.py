"""The part of ``bench/footprint.py`` that runs in the VM guest: idle wake-ups, then the first reply.

The test guest (``tests/rig/machine.py``, TCG) boots with three agents, as the VM tests run them:
pyqga on ``org.qemu.guest_agent.0`` (virtio-serial) and Debian's qemu-ga on ``.1``, the two
measured, and a second pyqga on the serial line (``pyqga-serial``), the *hands* that start the
sampler program below with ``guest-exec``.  No host is connected to either measured agent's
channel: the harness's readiness probe connected, got its reply and hung up at boot.

Each measured agent first has one host session (connect, ``guest-sync``, hang up): without it
qemu-ga stays busy from boot on (a whole vCPU), over replies to the harness's early probes.
The sampler (:data:`SAMPLER`, the guest's python3) then finds the measured processes (the
agent, the keeper it started, qemu-ga), waits until the keeper has used no CPU time for
:data:`QUIET` seconds (its start takes seconds to tens of seconds under TCG) and
:data:`SETTLE` more, then for the window reads every thread's ``voluntary_ctxt_switches`` from
``/proc/PID/task/TID/status`` and each process's CPU time once a second; each thread's blocking
system call (``/proc/PID/task/TID/syscall``) is read too.  A process it forks that only sleeps
is the control: what the kernel itself counts for a process that never wakes.  Reading
``/proc`` wakes none of them.  After the window the host connects to each measured agent's
channel and times ``guest-sync`` from its send to its reply.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyqga.host_client import AgentClient
from tests.rig.guest_files import AGENT_COMMANDS
from tests.rig.guest_shell import output_json, started
from tests.rig.image import ensure_image
from tests.rig.machine import GuestVM
from tests.rig.sockets import connect_unix

HANDS, SUBJECT, PEER = "pyqga-serial", "pyqga-virtio", "qga-virtio"
SAMPLER_PATH = "/run/footprint-sampler.py"
QUIET = 3.0       # seconds without CPU time that mean a process has finished starting
SETTLE = 10.0     # seconds after that before the window (the agents' channel back-off settles)
WAIT_LIMIT = 180.0
REPLY_TIMEOUT = 30.0
ROLES = ("pyqga agent", "pyqga keeper", "qemu-ga", "control")

# python3 -B SAMPLER JSON -> JSON on stdout (see the module docstring).
SAMPLER = r'''
import json, os, sys, time
args = json.loads(sys.argv[1])

def read(path):
    with open(path, "rb") as f:
        return f.read()

def find():
    procs = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                argv = read(f"/proc/{entry}/cmdline").split(b"\0")
                ppid = int(read(f"/proc/{entry}/stat").rsplit(b")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            procs[int(entry)] = (argv, ppid)
    agent = [p for p, (argv, _) in procs.items()
             if b"pyqga.agent" in argv and args["pyqga_port"].encode() in argv]
    keeper = [p for p, (argv, ppid) in procs.items() if ppid in agent and b"pyqga.agent.keeper" in argv]
    qga = [p for p, (argv, _) in procs.items()
           if argv[0].endswith(b"qemu-ga") and args["qga_port"].encode() in argv]
    return {"pyqga agent": agent, "pyqga keeper": keeper, "qemu-ga": qga}

def cpu(pid):
    fields = read(f"/proc/{pid}/stat").rsplit(b")", 1)[1].split()
    return int(fields[11]) + int(fields[12])

started = time.monotonic()
quiet = False
while time.monotonic() - started < args["limit"]:
    roles = find()
    if all(len(pids) == 1 for pids in roles.values()):
        pids = {role: found[0] for role, found in roles.items()}
        keeper = pids["pyqga keeper"]
        before = cpu(keeper)
        time.sleep(args["quiet"])
        if find() == roles and cpu(keeper) == before:
            quiet = True
            break
    else:
        time.sleep(0.5)
if not all(len(pids) == 1 for pids in roles.values()):
    sys.exit(f"the agents were not all running after {args['limit']} s: {roles}")
waited = time.monotonic() - started
time.sleep(args["settle"])
control = os.fork()
if control == 0:
    time.sleep(10 ** 6)
    os._exit(0)
pids["control"] = control
time.sleep(0.5)

def tasks(pid):
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        base = f"/proc/{pid}/task/{tid}"
        try:
            status = read(base + "/status").decode()
            comm = read(base + "/comm").decode().strip()
            syscall = read(base + "/syscall").decode().strip()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        out[tid] = {"comm": comm, "voluntary": int(fields["voluntary_ctxt_switches"]),
                    "nonvoluntary": int(fields["nonvoluntary_ctxt_switches"]), "syscall": syscall}
    return out

def memory(pid):
    rollup = read(f"/proc/{pid}/smaps_rollup").decode().splitlines()
    fields = dict(line.split(":", 1) for line in rollup if ":" in line and not line.startswith("0"))
    return {key: int(fields[key].split()[0]) for key in ("Rss", "Pss")}

series = {role: {} for role in pids}
ticks = {role: [] for role in pids}
begin = time.monotonic()
end = begin + args["window"]
while True:
    now = time.monotonic()
    for role, pid in pids.items():
        for tid, task in tasks(pid).items():
            entry = series[role].setdefault(tid, {"comm": task["comm"], "at": [], "voluntary": [],
                                                  "nonvoluntary": [], "syscall": []})
            entry["at"].append(now - begin)
            entry["voluntary"].append(task["voluntary"])
            entry["nonvoluntary"].append(task["nonvoluntary"])
            entry["syscall"].append(task["syscall"])
        ticks[role].append(cpu(pid))
    if now >= end:
        break
    time.sleep(min(1.0, max(0.0, end - time.monotonic())))
mem = {role: memory(pid) for role, pid in pids.items() if role != "control"}
os.kill(control, 9)
os.waitpid(control, 0)
print(json.dumps({"waited": waited, "quiet": quiet, "pids": pids, "window": time.monotonic() - begin,
                  "tasks": series, "ticks": ticks, "hz": os.sysconf("SC_CLK_TCK"), "memory": mem}))
'''

# x86-64 system call numbers a sleeping agent thread is found in, and which argument is its
# timeout (an int of milliseconds, or a pointer: 0 means "none").
SYSCALLS: dict[int, tuple[str, int | None, str]] = {
    0: ("read", None, ""), 7: ("poll", 2, "ms"), 23: ("select", 4, "ptr"), 61: ("wait4", None, ""),
    202: ("futex", 3, "ptr"), 230: ("clock_nanosleep", None, ""), 232: ("epoll_wait", 3, "ms"),
    270: ("pselect6", 4, "ptr"), 271: ("ppoll", 2, "ptr"), 281: ("epoll_pwait", 3, "ms"),
    441: ("epoll_pwait2", 3, "ptr"),
}


def describe_syscall(line: str) -> str:
    """``/proc/PID/task/TID/syscall`` in words: the call a sleeping thread is in, and its timeout."""
    fields = line.split()
    if not fields or not fields[0].lstrip("-").isdigit():
        return line or "?"
    number = int(fields[0])
    if number < 0:
        return "running"
    name, index, kind = SYSCALLS.get(number, (f"syscall {number}", None, ""))
    if index is None or len(fields) <= index + 1:
        return name
    value = int(fields[index + 1], 16)
    if kind == "ms":
        value = value - (1 << 32) if value >= 1 << 31 else value  # an int: -1 is "for ever"
        return f"{name} (no timeout)" if value < 0 else f"{name} (timeout {value} ms)"
    return f"{name} ({'no timeout' if value == 0 else 'with a timeout'})"


@dataclass
class Thread:
    """One thread of a measured process over the window."""

    tid: str
    comm: str
    main: bool
    switches: int            # voluntary context switches over the window
    involuntary: int
    seconds: float
    syscall: tuple[str, str]  # at the start and at the end of the window

    @property
    def per_minute(self) -> float:
        return self.switches * 60 / self.seconds if self.seconds > 0 else 0.0

    @property
    def period(self) -> float | None:
        """Seconds between its wake-ups on average (None if it did not wake)."""
        return self.seconds / self.switches if self.switches else None


@dataclass
class GuestResult:
    window: float
    waited: float                                # until the keeper was at rest
    quiet: bool                                  # False: it never was, within WAIT_LIMIT
    boot_seconds: float
    threads: dict[str, list[Thread]]             # role -> threads
    cpu_seconds: dict[str, float]                # role -> CPU time used over the window
    memory: dict[str, dict[str, int]]            # role -> Rss, Pss (KiB)
    first_reply: dict[str, Reply]                # agent -> its first reply after the window

    def per_minute(self, role: str) -> float:
        return sum(t.per_minute for t in self.threads[role])

    def cpu_ms_per_minute(self, role: str) -> float:
        return self.cpu_seconds[role] * 1000 * 60 / self.window


def threads_of(pid: int, tasks: dict[str, Any]) -> list[Thread]:
    out = []
    for tid, entry in sorted(tasks.items(), key=lambda item: int(item[0])):
        voluntary, involuntary, at = entry["voluntary"], entry["nonvoluntary"], entry["at"]
        out.append(Thread(tid, entry["comm"], int(tid) == pid, voluntary[-1] - voluntary[0],
                          involuntary[-1] - involuntary[0], at[-1] - at[0],
                          (describe_syscall(entry["syscall"][0]), describe_syscall(entry["syscall"][-1]))))
    return out


@dataclass
class Reply:
    """One ``guest-sync`` on a fresh connection: seconds to connect, from its send to its reply
    (None: none within REPLY_TIMEOUT), and the bytes that came meanwhile."""

    connect: float
    seconds: float | None
    received: bytes


def first_reply(path: Path) -> Reply:
    """One ``guest-sync`` with a fresh id on ``path``, the host end of an agent's virtio-serial
    port; lines that are not its reply (a late answer to the harness's boot probe) are skipped."""
    sync_id = secrets.randbelow(1 << 40) + 1
    started = time.perf_counter()
    sock = connect_unix(path, REPLY_TIMEOUT)
    received = b""
    try:
        connected = time.perf_counter()
        sock.sendall(json.dumps({"execute": "guest-sync", "arguments": {"id": sync_id}}).encode() + b"\n")
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                return Reply(connected - started, None, received)
            if not chunk:
                return Reply(connected - started, None, received + b" (closed)")
            received += chunk
            for line in received.split(b"\n"):
                with contextlib.suppress(ValueError):
                    reply = json.loads(line.strip(b"\xff \r"))
                    if isinstance(reply, dict) and reply.get("return") == sync_id:
                        return Reply(connected - started, time.perf_counter() - connected, received)
    finally:
        sock.close()


def agent_state(hands: AgentClient, pid: int) -> str:
    """What an agent that did not answer is doing (its threads' system calls, its log's end)."""
    script = (f"grep -E 'State|ctxt' /proc/{pid}/status; for t in /proc/{pid}/task/*; do "
              f"echo \"$t $(cat $t/syscall) $(cat $t/wchan)\"; done; ls -l /proc/{pid}/fd; "
              "tail -n 20 /run/pyqga.log /run/qga.log")
    result = hands.exec(["/bin/sh", "-c", script], kill_after=60)
    return (result.stdout + result.stderr).decode(errors="replace")


def measure_guest(workdir: Path, window: float) -> GuestResult:
    """Boot the guest, sample the idle agents for ``window`` seconds, time their first replies."""
    image = ensure_image()
    agents = {"pyqga": SUBJECT, "qemu-ga": PEER}
    with GuestVM(workdir, agents=(HANDS, SUBJECT, PEER), image=image, data_disk=False,
                 lifetime=WAIT_LIMIT + window + 600) as vm, vm.client(HANDS, timeout=120) as hands:
        assert vm.boot_seconds is not None
        sockets = {name: Path(vm.agent_address(agent)) for name, agent in agents.items()}
        print(f"  guest booted in {vm.boot_seconds:.1f} s; waiting for the keeper to be at rest, then "
              f"{window:g} s idle", flush=True)
        for path in sockets.values():
            first_reply(path)  # a host session that ends: drains the boot probe's queued requests
        hands.write_file(SAMPLER_PATH, SAMPLER.encode())
        spec = {"pyqga_port": guest_port(SUBJECT), "qga_port": guest_port(PEER),
                "quiet": QUIET, "settle": SETTLE, "window": window, "limit": WAIT_LIMIT}
        pid = started(hands, ["/usr/bin/python3", "-B", SAMPLER_PATH, json.dumps(spec)])
        # Polled once a second over the serial line: only the hands, never a measured agent, wake.
        data = output_json(hands, pid, WAIT_LIMIT + SETTLE + window + 120, "the sampler", poll=1.0)
        replies = {name: first_reply(path) for name, path in sockets.items()}
        for name, reply in replies.items():
            if reply.seconds is None:  # say what the agent was doing, then whether it answers now
                role = "pyqga agent" if name == "pyqga" else name
                print(f"  {name}: no reply within {REPLY_TIMEOUT:g} s (received {reply.received[-300:]!r}); "
                      f"in the guest:\n{agent_state(hands, data['pids'][role])}", flush=True)
                again = first_reply(sockets[name])
                print(f"  {name}, on a new connection: {again}", flush=True)
    threads = {role: threads_of(data["pids"][role], data["tasks"][role]) for role in ROLES}
    cpu = {role: (ticks[-1] - ticks[0]) / data["hz"] for role, ticks in data["ticks"].items()}
    return GuestResult(data["window"], data["waited"], data["quiet"], vm.boot_seconds, threads, cpu,
                       data["memory"], replies)


def guest_port(agent: str) -> str:
    """The guest's device of ``agent``'s channel, as its command line names it."""
    return next(word for word in AGENT_COMMANDS[agent].split() if word.startswith("/dev/"))
