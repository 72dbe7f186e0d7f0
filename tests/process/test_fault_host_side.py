"""The host side of fault leases (``client.faults``, ``pyqga fault ...``) against a real agent
with ``--enable-faults``, on loop mounts this test made (issue 20).  disk-full and write-stall
are the kinds this host can run; what the test checks is the filesystem itself (free space, a
blocked writer), not only what the agent says."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyqga.host_client import AgentCallError, AgentClient
from pyqga.host_client.aio import AsyncAgentClient
from tests.rig.agent_process import PyqgaAgent, agent_env
from tests.rig.freezing import start_agent, start_writer
from tests.rig.loopfs import LoopFs, LoopMounts
from tests.rig.paths import REPO_ROOT

FREE = 1 << 20


def available(fs: LoopFs) -> int:
    st = os.statvfs(fs.mountpoint)
    return st.f_bavail * st.f_frsize


def filled(fs: LoopFs) -> bool:
    return available(fs) <= FREE + (64 << 10)


@pytest.fixture
def faulting(tmp_path: Path, loops: LoopMounts) -> Iterator[tuple[LoopFs, PyqgaAgent]]:
    fs = loops.add("a")
    agent = start_agent(tmp_path, loops, "--enable-faults")
    try:
        yield fs, agent
    finally:
        loops.thaw_all()
        agent.stop()


def pyqga(agent: PyqgaAgent, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pyqga.host_client", "-s", str(agent.socket_path),
                           "--timeout", "30", *args], capture_output=True, text=True, env=agent_env(),
                          timeout=60, cwd=REPO_ROOT)


def test_a_failing_test_body_reverts_its_fault(faulting: tuple[LoopFs, PyqgaAgent]) -> None:
    fs, agent = faulting
    before = available(fs)
    with AgentClient(str(agent.socket_path), timeout=30) as client:
        caps = client.faults.capabilities(str(fs))
        assert {"write-stall", "disk-full"} <= set(caps.available) and caps.boot_id
        assert [p.name for p in caps["disk-full"].params] == ["free-bytes"]
        with pytest.raises(RuntimeError, match="the check failed"), \
                client.faults.inject("disk-full", str(fs), 60, params={"free-bytes": FREE}) as fault:
            assert filled(fs)
            assert [(f.id, f.state) for f in client.faults.list()] == [(fault.id, "active")]
            raise RuntimeError("the check failed")
        assert available(fs) >= before - (64 << 10), "the fill file is still there"
        assert client.faults.list() == []
        events, _ = client.faults.events()
        assert [(e.event, e.reason) for e in events if e.id == fault.id][-1] == ("reverted", "revert")


def test_a_lease_ends_by_its_deadline_and_wait_says_how(faulting: tuple[LoopFs, PyqgaAgent]) -> None:
    fs, agent = faulting
    # Leaving the block reverts a fault that already ended: no error.
    with AgentClient(str(agent.socket_path), timeout=30) as client, \
            client.faults.inject("write-stall", str(fs), 1.0) as fault:
        writer = start_writer(fs.mountpoint / "probe.txt")
        try:
            time.sleep(0.3)
            assert writer.poll() is None, "the writer was not stalled"
            ended = fault.wait()
            assert time.time() <= fault.deadline + 1.0
            assert writer.wait(timeout=5) == 0
        finally:
            writer.kill()
    assert ended is not None and (ended.event, ended.id, ended.reason) == ("expired", fault.id, "deadline")


def test_the_async_client(faulting: tuple[LoopFs, PyqgaAgent]) -> None:
    fs, agent = faulting

    async def body() -> None:
        async with AsyncAgentClient(str(agent.socket_path), timeout=30) as client:
            async with client.faults.inject("disk-full", str(fs), 60, params={"free-bytes": FREE}) as fault:
                assert filled(fs) and [f.id for f in await client.faults.list()] == [fault.id]
            assert not filled(fs) and await client.faults.list() == []

    asyncio.run(body())


def test_the_cli(faulting: tuple[LoopFs, PyqgaAgent]) -> None:
    fs, agent = faulting
    done = pyqga(agent, "fault", "disk-full", "--target", str(fs), "--for", "1m",
                 "--param", f"free-bytes={FREE}")
    assert done.returncode == 0 and done.stderr == "", done.stderr
    (line,) = done.stdout.splitlines()
    lease = json.loads(line)
    assert (lease["kind"], lease["target"], lease["params"]) == ("disk-full", str(fs), {"free-bytes": FREE})
    assert filled(fs)
    listed = pyqga(agent, "fault", "list").stdout.splitlines()
    assert listed[1].split()[:4] == [lease["id"], "disk-full", str(fs), "active"]
    assert pyqga(agent, "fault", "revert", lease["id"]).stdout == "1 fault reverted\n"
    assert not filled(fs)
    again = pyqga(agent, "fault", "revert", lease["id"])
    assert again.returncode == 1 and f"no active fault '{lease['id']}'" in again.stderr
    events = pyqga(agent, "fault", "events")
    assert [json.loads(e)["event"] for e in events.stdout.splitlines()] == ["armed", "fired", "reverted"]
    assert events.stderr == "pyqga: cursor 3 (next: pyqga fault events --since 3)\n"
    unknown = pyqga(agent, "fault", "disk-full", "--target", str(fs.mountpoint / "nowhere"), "--for", "5s")
    assert unknown.returncode == 1 and unknown.stdout == "" and unknown.stderr.count("\n") == 1


def test_ctrl_c_on_a_waiting_cli_reverts_the_fault(faulting: tuple[LoopFs, PyqgaAgent]) -> None:
    fs, agent = faulting
    process = subprocess.Popen(
        [sys.executable, "-m", "pyqga.host_client", "-s", str(agent.socket_path), "fault", "disk-full",
         "--target", str(fs), "--for", "1m", "--wait"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=agent_env(), cwd=REPO_ROOT)
    try:
        assert process.stdout is not None
        lease = json.loads(process.stdout.readline())
        assert filled(fs)
        time.sleep(0.3)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 130 and out == ""
    assert err == f"pyqga: interrupted; fault {lease['id']} (disk-full on {fs}) reverted\n"
    assert not filled(fs)


def test_an_agent_without_enable_faults_says_how(tmp_path: Path, loops: LoopMounts) -> None:
    fs = loops.add("a")
    agent = start_agent(tmp_path, loops)
    try:
        done = pyqga(agent, "fault", "write-stall", "--target", str(fs), "--for", "5s")
        with AgentClient(str(agent.socket_path), timeout=30) as client, \
                pytest.raises(AgentCallError) as caught:
            client.faults.list()
    finally:
        agent.stop()
    assert done.returncode == 1 and done.stdout == "" and done.stderr.count("\n") == 1
    assert "--enable-faults" in done.stderr and "--enable-faults" in str(caught.value)


def test_a_plan_from_the_cli_waits_and_prints_its_events(faulting: tuple[LoopFs, PyqgaAgent],
                                                        tmp_path: Path) -> None:
    fs, agent = faulting
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps({"seed": 3, "steps": [
        {"at": {"between": [0.1, 0.3]}, "kind": "disk-full", "target": str(fs), "duration": 0.5,
         "params": {"free-bytes": FREE}}]}))
    done = pyqga(agent, "fault", "plan", str(plan_file), "--repeat", "2", "--wait")
    assert done.returncode == 0, done.stderr
    first, *events = [json.loads(line) for line in done.stdout.splitlines()]
    assert first["faults"] == 2 and len(first["hash"]) == 64
    one_fault = [("armed", "disk-full"), ("fired", "disk-full"), ("expired", "disk-full")]
    expected = [("armed", "plan"), ("fired", "plan"), *one_fault, *one_fault, ("expired", "plan")]
    assert [(e["event"], e["kind"]) for e in events] == expected, events
    assert available(fs) > FREE * 4
    again = pyqga(agent, "fault", "plan", str(plan_file), "--repeat", "2")
    assert json.loads(again.stdout)["hash"] == first["hash"], "the same seed drew another schedule"
    with AgentClient(str(agent.socket_path), timeout=30) as client:
        assert client.faults.revert(json.loads(again.stdout)["id"]) == 1
        plan = client.faults.plan(4, [{"at": 0, "kind": "disk-full", "target": str(fs), "duration": 5}])
        assert plan.faults == 1 and plan.schedule[0]["at"] == 0
        assert client.faults.revert(plan.id) == 1


def test_plan_usage_errors_are_one_line(faulting: tuple[LoopFs, PyqgaAgent], tmp_path: Path) -> None:
    _, agent = faulting
    (tmp_path / "noseed.json").write_text("[]")
    (tmp_path / "bad.json").write_text("{")
    for name, says in (("noseed.json", "a plan needs a seed"), ("bad.json", "is not JSON"),
                       ("missing.json", "cannot read the plan")):
        done = pyqga(agent, "fault", "plan", str(tmp_path / name))
        assert done.returncode == 2 and says in done.stderr and done.stderr.count("\n") == 1, done.stderr
    done = pyqga(agent, "fault", "plan", str(tmp_path / "noseed.json"), "--seed", "1")
    assert done.returncode == 1 and "a plan needs at least one step" in done.stderr, done.stderr
