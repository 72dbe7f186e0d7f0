"""What qemu-ga lacks: nothing stays frozen, the agent stays responsive, freezes carry epochs.

Each test is the guarantee it names, on real loop filesystems and a real agent process; each
would fail if the guarantee were lost (a writer stays blocked, a ping waits, an error is missing).
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import pytest

from pyqga.host_client import AgentCallError, AgentClient, FreezeLost
from tests.rig.freezing import assert_freeze_ended, start_agent, start_writer, write_hook
from tests.rig.loopfs import LoopMounts, thaw_fully


def wait_released(writer: object, limit: float) -> float:
    """Seconds until the writer process exits; fails past ``limit``."""
    start = time.monotonic()
    while writer.poll() is None:  # type: ignore[attr-defined]
        if time.monotonic() - start > limit:
            pytest.fail(f"writer still blocked {limit} s later")
        time.sleep(0.005)
    return time.monotonic() - start


def test_deadline_thaws_and_epoch_thaw_reports_it(tmp_path: Path, loops: LoopMounts) -> None:
    a = loops.add("a")
    agent = start_agent(tmp_path, loops)
    try:
        with AgentClient(str(agent.socket_path), timeout=30) as client:
            assert client.call("guest-fsfreeze-freeze-list", {"mountpoints": [str(a)], "timeout": 1.0}) == 1
            info = client.call("guest-fsfreeze-info")
            assert info["status"] == "frozen" and info["deadline"] - info["frozen-at"] == pytest.approx(1.0)
            assert [f["mountpoint"] for f in info["frozen"]] == [str(a)]
            assert info["frozen"][0]["type"] == "ext4"
            writer = start_writer(a.mountpoint / "log.txt")
            time.sleep(0.3)
            assert writer.poll() is None
            wait_released(writer, 10)
            info = client.call("guest-fsfreeze-info")
            assert info["status"] == "thawed"
            assert info["last-thaw"]["reason"] == "timeout" and info["last-thaw"]["epoch"] == info["epoch"]
            with pytest.raises(FreezeLost, match="by timeout"):
                client.thaw(info["epoch"])
    finally:
        agent.stop()


def test_thaw_by_someone_else_is_reported_as_lost(tmp_path: Path, loops: LoopMounts) -> None:
    a = loops.add("a")
    agent = start_agent(tmp_path, loops)
    try:
        with AgentClient(str(agent.socket_path), timeout=30) as client:
            with pytest.raises(FreezeLost, match="thawed by someone else") as caught, \
                    client.frozen([str(a)]) as freeze:
                assert freeze.count == 1 and freeze.epoch is not None
                assert thaw_fully(a.mountpoint) == 1  # an admin's `fsfreeze -u`
            assert caught.value.error.data["last-thaw"]["reason"] == "external"
            with client.frozen([str(a)], thaw_after=60) as second:  # held: no error
                assert second.epoch == freeze.epoch + 1
            assert client.call("guest-fsfreeze-status") == "thawed"
            with pytest.raises(FreezeLost, match=r"unknown or long over|did not hold"):
                client.thaw(freeze.epoch)
    finally:
        agent.stop()


def test_sigkill_while_frozen_guard_thaws_within_a_second(tmp_path: Path, loops: LoopMounts) -> None:
    a = loops.add("a")
    hook_record = tmp_path / "hook.log"
    hook = write_hook(tmp_path / "hook", f'echo "$1" >> {hook_record}\n')
    agent = start_agent(tmp_path, loops, "-F" + str(hook))
    with AgentClient(str(agent.socket_path), timeout=30) as client:
        assert client.call("guest-fsfreeze-freeze-list", mountpoints=[str(a)]) == 1
        epoch = client.call("guest-fsfreeze-info")["epoch"]
    writer = start_writer(a.mountpoint / "log.txt")
    time.sleep(0.3)
    assert writer.poll() is None
    agent.stop(signal.SIGKILL)
    assert wait_released(writer, 1.0) < 1.0
    deadline = time.monotonic() + 10
    while "thaw" not in (hook_record.read_text() if hook_record.exists() else ""):
        assert time.monotonic() < deadline, "the guard did not run the thaw hook"
        time.sleep(0.02)
    successor = start_agent(tmp_path, loops)
    try:
        with AgentClient(str(successor.socket_path), timeout=30) as client:
            assert_freeze_ended(client, epoch, "agent-death")
            assert client.call("guest-fsfreeze-freeze-list", mountpoints=[str(a)]) == 1
            assert client.call("guest-fsfreeze-info")["epoch"] == epoch + 1  # epochs never repeat
            assert client.call("guest-fsfreeze-thaw") == 1
    finally:
        successor.stop()


def test_on_agent_death_stay_keeps_qemu_ga_behaviour(tmp_path: Path, loops: LoopMounts) -> None:
    a = loops.add("a")
    first = start_agent(tmp_path, loops, "--on-agent-death", "stay")
    with AgentClient(str(first.socket_path), timeout=30) as client:
        assert client.call("guest-fsfreeze-freeze-list", mountpoints=[str(a)]) == 1
        epoch = client.call("guest-fsfreeze-info")["epoch"]
    first.stop(signal.SIGKILL)
    time.sleep(0.5)
    second = start_agent(tmp_path, loops, "--on-agent-death", "stay")
    try:
        with AgentClient(str(second.socket_path), timeout=30) as client:
            assert client.call("guest-fsfreeze-status") == "frozen"
            assert client.thaw(epoch) == 1  # it did hold, through the restart
    finally:
        second.stop()


def test_sigterm_while_frozen_thaws_then_exits(tmp_path: Path, loops: LoopMounts) -> None:
    a = loops.add("a")
    agent = start_agent(tmp_path, loops)
    with AgentClient(str(agent.socket_path), timeout=30) as client:
        assert client.call("guest-fsfreeze-freeze-list", mountpoints=[str(a)]) == 1
    writer = start_writer(a.mountpoint / "log.txt")
    time.sleep(0.3)
    assert agent.stop(signal.SIGTERM, timeout=20) == 0
    wait_released(writer, 5)
    assert "exiting while frozen" in agent.log_path.read_text()
    successor = start_agent(tmp_path, loops)
    try:
        with AgentClient(str(successor.socket_path), timeout=30) as client:
            assert client.call("guest-fsfreeze-info")["last-thaw"]["reason"] == "signal"
    finally:
        successor.stop()


def test_agent_answers_while_a_freeze_is_held_up_by_a_slow_hook(tmp_path: Path, loops: LoopMounts) -> None:
    a = loops.add("a")
    started, release = tmp_path / "hook-started", tmp_path / "hook-release"
    # The freeze hook holds the freeze up until the test releases it (20 s at most).
    hook = write_hook(tmp_path / "hook", f'if [ "$1" = freeze ]; then\n  touch "{started}"\n  n=0\n'
                      f'  while [ ! -e "{release}" ] && [ $n -lt 400 ]; do sleep 0.05; n=$((n+1)); done\n'
                      'fi\nexit 0\n')
    agent = start_agent(tmp_path, loops, "-F" + str(hook))
    result: dict[str, object] = {}

    def freezer() -> None:
        with AgentClient(str(agent.socket_path), dialect="qga", timeout=30) as client:
            result["count"] = client.call("guest-fsfreeze-freeze-list", mountpoints=[str(a)])

    try:
        thread = threading.Thread(target=freezer)
        thread.start()
        deadline = time.monotonic() + 10
        while not started.exists():
            assert time.monotonic() < deadline, "the freeze hook never started"
            time.sleep(0.01)
        slowest = 0.0
        with AgentClient(str(agent.socket_path), dialect="qga", timeout=30) as other:
            held_until = time.monotonic() + 1.5
            while time.monotonic() < held_until:  # the hook is still running all this time
                start = time.monotonic()
                other.ping()
                assert other.call("guest-sync", id=1) == 1
                info = other.call("guest-fsfreeze-info")
                assert info["in-progress"] is True, info
                other.call("guest-fsfreeze-status")
                slowest = max(slowest, time.monotonic() - start)
                if "busy" not in result:
                    with pytest.raises(AgentCallError, match="already in progress"):
                        other.call("guest-fsfreeze-freeze-list", mountpoints=[str(a)])
                    result["busy"] = True
                time.sleep(0.05)
            assert thread.is_alive(), "the freeze finished before the hook was released"
            release.touch()
            thread.join(30)
            assert not thread.is_alive()
            assert result["count"] == 1 and result.get("busy")
            assert slowest < 1.0, f"a ping waited {slowest:.2f} s behind the freeze"
            info = other.call("guest-fsfreeze-info")
            assert info["in-progress"] is False and info["status"] == "frozen", info
            assert other.call("guest-fsfreeze-thaw") == 1
            assert other.call("guest-fsfreeze-info")["in-progress"] is False
    finally:
        release.touch()
        agent.stop()


def test_pipelined_qga_requests_keep_order_behind_a_slow_freeze(tmp_path: Path, loops: LoopMounts) -> None:
    a = loops.add("a")
    hook = write_hook(tmp_path / "hook", '[ "$1" = freeze ] && sleep 1\nexit 0\n')
    agent = start_agent(tmp_path, loops, "-F" + str(hook))
    try:
        with agent.connect(30) as sock:
            sock.sendall(b'{"execute":"guest-fsfreeze-freeze-list","arguments":{"mountpoints":["%s"]},"id":1}'
                         b'{"execute":"guest-ping","id":2}{"execute":"guest-fsfreeze-thaw","id":3}'
                         % str(a.mountpoint).encode())
            replies = b""
            while replies.count(b"\n") < 3:
                replies += sock.recv(4096)
        assert [line.split(b'"id": ')[1][:1] for line in replies.splitlines()] == [b"1", b"2", b"3"]
    finally:
        agent.stop()
