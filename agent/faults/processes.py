"""The process kinds: ``process-pause`` (SIGSTOP, SIGCONT on revert) and ``process-kill`` (a
signal).  The lease of a pause is the pause; a kill's lease only holds its record.

A target names processes: ``pid:N``, ``name:NAME`` (every process whose ``comm`` is exactly
NAME), ``cgroup:PATH`` (the processes in a cgroup-v2 group, PATH under the cgroup2 mount) or
``unit:NAME`` (a systemd unit's group, ``system.slice/NAME``).  Pid 1, the agent and its keeper
are refused, whatever names them.

Each pid is recorded with its start time (``/proc/PID/stat``'s 22nd field), and a signal step
checks it before it signals: a pid that was reused by another process after ours exited is left
alone, by the agent and by the keeper.  The device two leases may not share is the pid.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterable, Mapping
from typing import Any

from pyqga.agent.commands.kernel_files import read_optional
from pyqga.agent.faults.kinds import Context, ParamSpec, Preparer, Spec
from pyqga.agent.faults.machine import Refused
from pyqga.agent.faults.recipes import start_time
from pyqga.agent.faults.vocabulary import Kind
from pyqga.agent.freeze.mounts import read_mountinfo

MAX_PROCESSES = 256
KEEPER_MODULE = b"pyqga.agent.keeper"
SIGNALS = ("KILL", "TERM", "INT", "HUP", "QUIT", "ABRT", "USR1", "USR2")


def all_pids() -> list[int]:
    return sorted(int(name) for name in os.listdir("/proc") if name.isdigit())


def protected_pids() -> frozenset[int]:
    """Pid 1, this agent, and every pyqga keeper: the processes no fault may stop or kill.
    Read when a process fault is prepared (a walk of /proc), not for the other kinds."""
    me = os.getpid()
    out = {1, me}
    for pid in all_pids():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if KEEPER_MODULE in argv:
            out.add(pid)
    return frozenset(out)


def comm(pid: int) -> str | None:
    text = read_optional(f"/proc/{pid}/comm")
    return None if text is None else text.rstrip("\n")


def cgroup_root() -> str | None:
    """Where cgroup v2 is mounted (the unified hierarchy), or None."""
    for mount in read_mountinfo():
        if mount.fstype == "cgroup2":
            return mount.mountpoint
    return None


def _cgroup_pids(relative: str, what: str) -> list[int]:
    root = cgroup_root()
    if root is None:
        raise Refused(f"{what}: this guest has no cgroup v2 hierarchy mounted")
    parts = [p for p in relative.strip("/").split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        raise Refused(f"{what}: a cgroup path below {root}, without '..'")
    path = os.path.join(root, *parts, "cgroup.procs")
    try:
        with open(path) as f:
            return [int(line) for line in f if line.strip()]
    except FileNotFoundError:
        raise Refused(f"{what}: no cgroup {os.path.dirname(path)}") from None
    except (OSError, ValueError) as e:
        raise Refused(f"{what}: cannot read {path}: {e}") from None


def resolve(target: str) -> list[int]:
    """The pids a target names (:class:`Refused` if none, or if it is malformed)."""
    scheme, _, value = target.partition(":") if isinstance(target, str) else ("", "", "")
    if scheme == "pid":
        if not value.isdigit() or int(value) < 1:
            raise Refused(f"{target}: pid:N takes a positive number")
        pids = [int(value)] if start_time(int(value)) is not None else []
    elif scheme == "name":
        if not value or "/" in value:
            raise Refused(f"{target}: name:NAME takes a process name (as /proc/PID/comm shows it)")
        pids = [pid for pid in all_pids() if comm(pid) == value]
    elif scheme == "cgroup":
        pids = _cgroup_pids(value, target)
    elif scheme == "unit":
        if not value or "/" in value:
            raise Refused(f"{target}: unit:NAME takes a systemd unit name")
        pids = _cgroup_pids(f"system.slice/{value}", target)
    else:
        raise Refused("a process target is pid:N, name:NAME, cgroup:PATH or unit:NAME, "
                      f"not {str(target)[:80]!r}")
    if not pids:
        raise Refused(f"no process matches {target}")
    if len(pids) > MAX_PROCESSES:
        raise Refused(f"{target} matches {len(pids)} processes; at most {MAX_PROCESSES} a fault")
    return pids


def _steps(pids: Iterable[tuple[int, int]], signum: int) -> tuple[dict[str, Any], ...]:
    return tuple({"op": "signal", "pid": pid, "start": start, "signal": signum} for pid, start in pids)


def _chosen(target: str, kind: Kind, context: Context) -> tuple[str, list[tuple[int, int]]]:
    pids = resolve(target)
    guarded = sorted(set(pids) & protected_pids())
    if guarded:
        raise Refused(f"{kind.value} of {target} would reach pid {guarded[0]} (pid 1, the agent or its "
                      "keeper), which is refused")
    chosen = [(pid, start) for pid in pids if (start := start_time(pid)) is not None]
    if not chosen:
        raise Refused(f"no process matches {target} any more")
    return ",".join(f"pid:{pid}" for pid, _ in chosen), chosen


def _pause(target: str, params: Mapping[str, Any], force: bool, context: Context) -> Spec:
    device, chosen = _chosen(target, Kind.PROCESS_PAUSE, context)
    return Spec(device, _steps(chosen, signal.SIGSTOP), _steps(chosen, signal.SIGCONT), params)


def _kill(target: str, params: Mapping[str, Any], force: bool, context: Context) -> Spec:
    device, chosen = _chosen(target, Kind.PROCESS_KILL, context)
    signum = signal.Signals[f"SIG{params['signal']}"]
    # A stopped process must run to act on TERM or INT: continue it after the signal (no-op for
    # KILL, and for a process that is not stopped).
    return Spec(device, _steps(chosen, signum) + _steps(chosen, signal.SIGCONT), (), params)


PARAMS: dict[Kind, tuple[ParamSpec, ...]] = {
    Kind.PROCESS_PAUSE: (),
    Kind.PROCESS_KILL: (
        ParamSpec("signal", str, "KILL", "the signal sent once: " + ", ".join(SIGNALS), choices=SIGNALS),
    ),
}
PREPARERS: dict[Kind, Preparer] = {
    Kind.PROCESS_PAUSE: _pause,
    Kind.PROCESS_KILL: _kill,
}
