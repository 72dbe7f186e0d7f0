"""Ctrl-C in every ``pyqga`` verb that freezes or stalls (issue 19): a real CLI process, a real
agent, loop filesystems; SIGINT as a terminal sends it.  Each must end with one line on stderr,
exit status 130, and the filesystem thawed as the kernel sees it.

``snapshot`` and ``group snapshot`` need a QMP monitor: a fake one (tests/rig/fake_qmp.py) that
never finishes the snapshot, so the interrupt lands while the guest is frozen and waiting.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from pyqga.host_client import AgentClient
from tests.rig.agent_process import REPO_ROOT, PyqgaAgent, agent_env
from tests.rig.fake_qmp import HungQMP
from tests.rig.freezing import start_agent, start_writer, wait_until, write_hook
from tests.rig.loopfs import LoopFs, LoopMounts, thaw_fully


def start_cli(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "pyqga.host_client", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=agent_env(), cwd=REPO_ROOT)


def interrupt(cli: subprocess.Popen[str], limit: float = 30) -> tuple[int, str, str, float]:
    """SIGINT, as Ctrl-C sends it; (status, stdout, stderr, seconds until it exited)."""
    assert cli.poll() is None, cli.communicate()
    started = time.monotonic()
    cli.send_signal(signal.SIGINT)
    out, err = cli.communicate(timeout=limit)
    return cli.returncode, out, err, time.monotonic() - started


def assert_interrupted(status: int, err: str, thawed: str = "is thawed") -> None:
    assert status == 130, err
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("pyqga: interrupted"), err
    assert thawed in lines[0], err


def agent_status(agent: PyqgaAgent) -> str:
    with AgentClient(str(agent.socket_path), timeout=10) as client:
        return str(client.call("guest-fsfreeze-status"))


@contextmanager
def blocked_writer(fs: LoopFs) -> Iterator[subprocess.Popen[bytes]]:
    """A writer on ``fs`` that must still be blocked now (the kernel has it frozen) and must
    finish once the test thaws it."""
    writer = start_writer(fs.mountpoint / "probe.txt")
    try:
        time.sleep(0.5)
        assert writer.poll() is None, "the filesystem was not frozen"
        yield writer
        assert writer.wait(10) == 0, "the writer did not finish: still frozen?"
    finally:
        if writer.poll() is None:
            thaw_fully(fs.mountpoint)
            writer.wait(10)


def test_ctrl_c_in_fault_stall_thaws_at_once(tmp_path: Path, loops: LoopMounts) -> None:
    a = loops.add("a")
    agent = start_agent(tmp_path, loops)
    try:
        cli = start_cli("-s", str(agent.socket_path), "fault", "stall", "--mount", str(a),
                        "--duration", "2m")
        wait_until(lambda: agent_status(agent) == "frozen", 20, "the stall froze the filesystem")
        with blocked_writer(a):
            status, out, err, took = interrupt(cli)
        assert_interrupted(status, err)
        assert took < 10, "the stall was not ended at once (the agent's deadline is 2 min)"
        assert out == ""
        assert thaw_fully(a.mountpoint) == 0, "still frozen after the CLI exited"
        with AgentClient(str(agent.socket_path), timeout=10) as client:
            info = client.call("guest-fsfreeze-info")
        assert info["status"] == "thawed" and info["last-thaw"]["reason"] == "request", info
    finally:
        agent.stop()


FREEZING_VERBS = {
    "freeze": lambda a: ["freeze", "--mount", a, "--thaw-after", "10m"],
    "fsfreeze freeze": lambda a: ["fsfreeze", "freeze"],   # freeze-all: --freeze-include keeps to loops
    "call": lambda a: ["call", "guest-fsfreeze-freeze-list", json.dumps({"mountpoints": [a]})],
}


@pytest.mark.parametrize("verb", FREEZING_VERBS)
def test_ctrl_c_while_a_freeze_runs_its_hook_thaws(tmp_path: Path, loops: LoopMounts, verb: str) -> None:
    """The freeze is still in the hook when Ctrl-C comes; it completes in the agent, and the
    CLI thaws it before it exits."""
    a = loops.add("a")
    started = tmp_path / "hook-started"
    hook = write_hook(tmp_path / "hook", f'[ "$1" = freeze ] && touch {started} && sleep 3\nexit 0\n')
    agent = start_agent(tmp_path, loops, f"-F{hook}")
    try:
        cli = start_cli("-s", str(agent.socket_path), *FREEZING_VERBS[verb](str(a)))
        wait_until(started.exists, 20, "the freeze hook ran")
        time.sleep(0.3)
        status, out, err, _ = interrupt(cli, limit=60)
        assert_interrupted(status, err)
        assert out == ""
        assert thaw_fully(a.mountpoint) == 0, "left frozen"
        assert agent_status(agent) == "thawed"
    finally:
        agent.stop()


def test_ctrl_c_in_snapshot_while_qmp_hangs_thaws(tmp_path: Path, loops: LoopMounts) -> None:
    a = loops.add("a")
    agent = start_agent(tmp_path, loops)
    try:
        with HungQMP(tmp_path / "qmp.sock", {"data": "/vm/data.qcow2"}) as qmp:
            cli = start_cli("-s", str(agent.socket_path), "snapshot", "--qmp", str(qmp.path),
                            "--disk", f"data={tmp_path}/snap.qcow2", "--mount", str(a), "--thaw-after", "2m")
            assert qmp.snapshotting.wait(20), cli.stderr.read() if cli.poll() is not None else "no snapshot"
            with blocked_writer(a):
                status, out, err, took = interrupt(cli)
        assert_interrupted(status, err)
        assert took < 10 and out == ""
        assert thaw_fully(a.mountpoint) == 0
        assert agent_status(agent) == "thawed"
    finally:
        agent.stop()


def test_ctrl_c_in_group_snapshot_thaws_every_guest(tmp_path: Path, loops: LoopMounts) -> None:
    a, b = loops.add("a"), loops.add("b")
    first = start_agent(tmp_path / "1", loops)
    second = start_agent(tmp_path / "2", loops)
    try:
        with HungQMP(tmp_path / "qmp.sock", {"data": "/vm/data.qcow2"}) as qmp:
            cli = start_cli("--timeout", "3s", "group", "snapshot", "--deadline", "2m",
                            "--guest", f"{first.socket_path},mount={a},qmp={qmp.path},"
                                       f"disk=data={tmp_path}/snap.qcow2",
                            "--guest", f"{second.socket_path},mount={b}")
            assert qmp.snapshotting.wait(20), "the group never reached its snapshot"
            with blocked_writer(a), blocked_writer(b):
                cli.send_signal(signal.SIGINT)
                # Both guests thaw at once, before the CLI waits out the hung QMP call.
                wait_until(lambda: agent_status(first) == agent_status(second) == "thawed", 10,
                           "both guests thawed")
            status, out, err, _ = interrupt_done(cli)
        assert_interrupted(status, err, thawed="every guest of the group was thawed")
        assert out == ""
        assert thaw_fully(a.mountpoint) == 0 and thaw_fully(b.mountpoint) == 0
    finally:
        first.stop()
        second.stop()


def interrupt_done(cli: subprocess.Popen[str]) -> tuple[int, str, str, float]:
    started = time.monotonic()
    out, err = cli.communicate(timeout=30)
    return cli.returncode, out, err, time.monotonic() - started
