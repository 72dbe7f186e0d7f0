"""Stall faults on real loop filesystems through a real agent: the library API and the CLI.

The same tests run inside a VM in tests/vm/faults/test_stalls.py; here they need only root and loop
devices, so a broken stall is caught without booting a guest.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from pyqga.host_client import AgentClient
from tests.rig.agent_process import agent_env
from tests.rig.freezing import start_agent, start_writer
from tests.rig.loopfs import LoopMounts, thaw_fully


def test_stall_blocks_writers_for_its_duration_and_ends_on_time(tmp_path: Path, loops: LoopMounts) -> None:
    a = loops.add("a")
    agent = start_agent(tmp_path, loops)
    try:
        with AgentClient(str(agent.socket_path), timeout=30) as client:
            with client.stall([str(a)], seconds=1.5) as stall:
                writer = start_writer(a.mountpoint / "log.txt")
                time.sleep(0.5)
                assert writer.poll() is None, "a writer finished during the stall"
            assert writer.wait(5) == 0  # the context returns once the agent has thawed
            result = stall.result
            assert result is not None and result.reason == "timeout" and result.count == 1
            assert result.actual == pytest.approx(1.5, abs=0.5)
    finally:
        agent.stop()
    assert thaw_fully(a.mountpoint) == 0


def test_stall_body_that_raises_thaws_at_once(tmp_path: Path, loops: LoopMounts) -> None:
    a = loops.add("a")
    agent = start_agent(tmp_path, loops)
    try:
        with AgentClient(str(agent.socket_path), timeout=30) as client:
            started = time.monotonic()
            with pytest.raises(RuntimeError, match="test body failed"), client.stall([str(a)], seconds=60):
                raise RuntimeError("test body failed")
            assert time.monotonic() - started < 10
            assert client.call("guest-fsfreeze-status") == "thawed"
            assert client.call("guest-fsfreeze-info")["last-thaw"]["reason"] == "request"
    finally:
        agent.stop()


def test_stall_interrupted_while_waiting_for_its_end_thaws_at_once(tmp_path: Path, loops: LoopMounts) -> None:
    """Ctrl-C after the body, while the client waits for the agent to end the stall (here from
    the progress callback, which that wait calls): the guest is thawed now, not at the
    stall's end."""
    a = loops.add("a")
    agent = start_agent(tmp_path, loops)

    def interrupt(_frozen_for: float) -> None:
        raise KeyboardInterrupt

    try:
        with AgentClient(str(agent.socket_path), timeout=30) as client:
            started = time.monotonic()
            with pytest.raises(KeyboardInterrupt):
                client.stall_for([str(a)], seconds=60, progress=interrupt)
            assert time.monotonic() - started < 10
            assert thaw_fully(a.mountpoint) == 0  # the kernel: nothing left frozen
            assert client.call("guest-fsfreeze-status") == "thawed"
            assert client.call("guest-fsfreeze-info")["last-thaw"]["reason"] == "request"
    finally:
        agent.stop()


def test_cli_repeated_stalls_follow_the_schedule_and_summarise(tmp_path: Path, loops: LoopMounts) -> None:
    a, b = loops.add("a"), loops.add("b")
    agent = start_agent(tmp_path, loops)
    try:
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-m", "pyqga.host_client", "-s", str(agent.socket_path), "fault", "stall",
             "--mount", str(a), "--mount", str(b), "--duration", "500ms", "--repeat", "3",
             "--interval", "1.5s"],
            capture_output=True, text=True, timeout=60, env=agent_env())
        elapsed = time.monotonic() - started
    finally:
        agent.stop()
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines() if line.strip()[:1].isdigit()]
    assert [row[0] for row in rows] == ["1", "2", "3"]
    for row in rows:
        assert row[1] == "2" and row[2] == "0.500s" and row[4] == "timeout"
        assert 0.3 < float(row[3].rstrip("s")) < 1.2
    assert 3.0 < elapsed < 20  # two intervals of 1.5 s, plus the last stall
    assert "stall 1/3" in result.stdout
