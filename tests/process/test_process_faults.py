"""process-pause and process-kill through a real agent, on processes this test started (issue 21).

Targets by pid, by exact name (a copy of sleep under a random name, so nothing else can match)
and by cgroup (a group this test makes in the unified hierarchy).  What is checked is the
process itself (its state in /proc, its exit status), and that pid 1, the agent and its keeper
are refused however a target names them.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pyqga.agent.faults.recipes import LinuxFaultKernel, start_time
from pyqga.host_client import AgentCallError, AgentClient
from tests.rig.agent_process import PyqgaAgent, fault_agent, keeper_of, own_processes, process_state
from tests.rig.requirements import require


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[PyqgaAgent]:
    with fault_agent(tmp_path / "agent") as running:
        yield running


@pytest.fixture
def sleepers(tmp_path: Path) -> Iterator[tuple[str, list[subprocess.Popen[bytes]]]]:
    """Two processes named NAME (a random name no other process has), and the name."""
    name = "pq-" + secrets.token_hex(5)
    exe = tmp_path / name
    shutil.copy(shutil.which("sleep") or "/bin/sleep", exe)
    with own_processes([str(exe), "600"], 2) as started:
        yield name, started


def inject(client: AgentClient, kind: str, target: str, duration: float = 30,
           params: dict[str, Any] | None = None) -> dict[str, Any]:
    reply: dict[str, Any] = client.call("guest-fault-inject", {"kind": kind, "target": target,
                                                               "duration": duration, "params": params or {}})
    return reply


def refused(client: AgentClient, kind: str, target: str) -> str:
    with pytest.raises(AgentCallError) as caught:
        inject(client, kind, target)
    return caught.value.error.message


def test_pause_by_name_stops_every_match_and_revert_continues_them(
        agent: PyqgaAgent, sleepers: tuple[str, list[subprocess.Popen[bytes]]]) -> None:
    name, processes = sleepers
    with AgentClient(str(agent.socket_path), timeout=30) as client:
        lease = inject(client, "process-pause", f"name:{name}")
        assert [process_state(p.pid) for p in processes] == ["T", "T"]
        error = refused(client, "process-pause", f"pid:{processes[1].pid}")
        assert f"already has fault {lease['id']}" in error, error
        assert client.call("guest-fault-revert", {"id": lease["id"]}) == 1
        assert [process_state(p.pid) != "T" for p in processes] == [True, True], "still stopped after revert"


Sleepers = tuple[str, list[subprocess.Popen[bytes]]]


def test_pause_ends_at_its_deadline(agent: PyqgaAgent, sleepers: Sleepers) -> None:
    _, (process, _) = sleepers
    with AgentClient(str(agent.socket_path), timeout=30) as client:
        inject(client, "process-pause", f"pid:{process.pid}", duration=1.0)
        deadline = time.monotonic() + 1.0
        assert process_state(process.pid) == "T"
        while process_state(process.pid) == "T":
            assert time.monotonic() < deadline + 1, "still stopped a second after the deadline"
            time.sleep(0.01)
        assert time.monotonic() >= deadline - 0.2


def test_kill_with_term_ends_even_a_stopped_process(agent: PyqgaAgent, sleepers: Sleepers) -> None:
    _, (process, other) = sleepers
    os.kill(process.pid, signal.SIGSTOP)
    with AgentClient(str(agent.socket_path), timeout=30) as client:
        inject(client, "process-kill", f"pid:{process.pid}", params={"signal": "TERM"})
        assert process.wait(5) == -signal.SIGTERM
        assert other.poll() is None, "the kill reached another process"
        events = client.call("guest-fault-events")["events"]
        assert [e["event"] for e in events if e["kind"] == "process-kill"] == ["armed", "fired"]
        error = refused(client, "process-kill", f"pid:{process.pid}")
        assert f"no process matches pid:{process.pid}" in error


def test_pause_by_cgroup(agent: PyqgaAgent, sleepers: tuple[str, list[subprocess.Popen[bytes]]]) -> None:
    _, (inside, outside) = sleepers
    root = next((line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
                 if line.split(" - ")[1].startswith("cgroup2 ")), None)
    require(root is not None and os.access(root, os.W_OK), "no writable cgroup v2 hierarchy")
    assert root is not None
    group = Path(root) / f"pyqga-test-{secrets.token_hex(4)}"
    try:
        group.mkdir()
        (group / "cgroup.procs").write_text(str(inside.pid))
        with AgentClient(str(agent.socket_path), timeout=30) as client:
            lease = inject(client, "process-pause", f"cgroup:{group.name}")
            assert process_state(inside.pid) == "T" and process_state(outside.pid) != "T"
            assert client.call("guest-fault-revert", {"id": lease["id"]}) == 1
            assert process_state(inside.pid) != "T"
    finally:
        with contextlib.suppress(OSError):
            (Path(root) / "cgroup.procs").write_text(str(inside.pid))
            group.rmdir()


def test_pid_1_the_agent_its_keeper_and_bad_targets_are_refused(agent: PyqgaAgent) -> None:
    with AgentClient(str(agent.socket_path), timeout=30) as client:
        # Any fault starts the keeper: a disk-full that fills nothing (free-bytes over the size).
        client.call("guest-fault-inject", {"kind": "disk-full", "target": "/dev/shm", "duration": 60,
                                           "params": {"free-bytes": 1 << 60}, "force": True})
        keeper = keeper_of(agent.pid)
        assert keeper is not None
        for target, says in [("pid:1", "would reach pid 1"),
                             (f"pid:{agent.pid}", f"would reach pid {agent.pid}"),
                             (f"pid:{keeper}", f"would reach pid {keeper}"),
                             ("pid:0", "pid:N takes a positive number"),
                             ("pid:4194304999", "no process matches"),
                             ("name:no-such-process-here", "no process matches name:no-such-process-here"),
                             ("cgroup:../etc", "without '..'"),
                             ("unit:no-such.service", "no cgroup"),
                             ("/data", "a process target is pid:N, name:NAME, cgroup:PATH or unit:NAME")]:
            for kind in ("process-pause", "process-kill"):
                error = refused(client, kind, target)
                assert says in error and "\n" not in error, (target, error)
        assert client.call("guest-fault-revert") == 1
        assert [lease["kind"] for lease in client.call("guest-fault-list")] == []


def test_a_reused_pid_is_left_alone(sleepers: tuple[str, list[subprocess.Popen[bytes]]]) -> None:
    """The keeper and the agent signal a pid only if it still has the start time they recorded."""
    _, (process, _) = sleepers
    start = start_time(process.pid)
    assert start is not None
    LinuxFaultKernel().signal(process.pid, start + 1, signal.SIGSTOP)   # another process's start
    time.sleep(0.1)   # a stop would have shown by now (the kernel's own signal returns at once)
    assert process_state(process.pid) != "T", "a pid with another start time was stopped"
    LinuxFaultKernel().signal(process.pid, start, signal.SIGSTOP)
    assert process_state(process.pid) == "T"
    os.kill(process.pid, signal.SIGCONT)
