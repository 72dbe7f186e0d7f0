"""Fault requests through a real agent on a loop mount: the opt-in switch, and bad input that
must be refused with one clear line and leave nothing behind (issue 20)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import pytest

from pyqga.host_client import AgentCallError, AgentClient
from tests.rig.freezing import start_agent, start_writer
from tests.rig.loopfs import LoopFs, LoopMounts, freeze_directly, thaw_fully

DISK_FULL = {"kind": "disk-full", "duration": 5}


def refusal(client: AgentClient, method: str, params: dict[str, Any]) -> AgentCallError:
    with pytest.raises(AgentCallError) as caught:
        client.call(method, params)
    return caught.value


def untouched(fs: LoopFs, client: AgentClient) -> None:
    """No fault left: nothing listed, no fill file, not frozen (a FITHAW finds nothing)."""
    assert client.call("guest-fault-list") == []
    assert not [name for name in os.listdir(fs.mountpoint) if name.startswith(".pyqga-fill-")]
    assert thaw_fully(fs.mountpoint) == 0


def test_fault_commands_are_off_unless_enabled(tmp_path: Path, loops: LoopMounts) -> None:
    fs = loops.add("a")
    agent = start_agent(tmp_path, loops)
    try:
        with AgentClient(str(agent.socket_path), timeout=30) as client:
            for method in ("guest-fault-capabilities", "guest-fault-list", "guest-fault-events"):
                error = refusal(client, method, {})
                assert error.error_class == "CommandNotFound" and "has been disabled" in str(error), error
                assert "--enable-faults" in str(error) and "faults=true" in str(error), error
            error = refusal(client, "guest-fault-inject", DISK_FULL | {"target": str(fs)})
            assert error.error_class == "CommandNotFound" and "has been disabled" in str(error)
            assert not os.listdir(fs.mountpoint) or os.listdir(fs.mountpoint) == ["lost+found"]
            assert client.call("guest-fsfreeze-freeze-list", {"mountpoints": [str(fs)], "timeout": 5}) == 1
            assert client.call("guest-fsfreeze-thaw") == 1, "freeze is not a gated fault command"
    finally:
        agent.stop()


def test_the_config_file_enables_faults_and_block_rpcs_still_blocks(tmp_path: Path,
                                                                    loops: LoopMounts) -> None:
    fs = loops.add("a")
    config = tmp_path / "agent.conf"
    config.write_text("[general]\nfaults=true\nblock-rpcs=guest-fault-inject\n")
    agent = start_agent(tmp_path, loops, "-c", str(config))
    try:
        with AgentClient(str(agent.socket_path), timeout=30) as client:
            assert client.call("guest-fault-list") == []
            error = refusal(client, "guest-fault-inject", DISK_FULL | {"target": str(fs)})
            assert error.error_class == "CommandNotFound", error
            assert "has been disabled: the command is not allowed" in str(error), error
    finally:
        agent.stop()


@pytest.fixture
def faulting(tmp_path: Path, loops: LoopMounts) -> Any:
    fs = loops.add("a")
    agent = start_agent(tmp_path, loops, "--enable-faults")
    try:
        with AgentClient(str(agent.socket_path), timeout=30) as client:
            yield fs, client
    finally:
        loops.thaw_all()
        agent.stop()


BAD = [
    ({"kind": "no-such-kind"}, "unknown fault kind 'no-such-kind'; the kinds are: write-stall"),
    ({"target": "/no/such/mount"}, "/no/such/mount is not a mount point or a block device"),
    ({"target": "relative"}, "target must be an absolute mount point"),
    ({"duration": 0}, "duration must be a number of seconds, > 0 and <= 604800"),
    ({"duration": -1}, "duration must be a number of seconds"),
    ({"duration": 1e300}, "duration must be a number of seconds"),
    ({"duration": 604801}, "duration must be a number of seconds"),
    ({"params": {"free-bytes": -1}}, "disk-full: free-bytes must be between 0"),
    ({"params": {"free-bytes": "lots"}}, "disk-full: free-bytes must be int"),
    ({"params": {"size": 1}}, "disk-full has no parameter 'size'; it takes: free-bytes"),
    ({"kind": "io-error"}, "io-error is not available in this guest"),
    # The state directory's filesystem (the tests keep it on /dev/shm); free-bytes over what it
    # has, so even a wrong acceptance would fill nothing.
    ({"target": "/dev/shm", "params": {"free-bytes": 1 << 60}}, "holds the agent's state directory"),
]


@pytest.mark.parametrize(("change", "says"), BAD, ids=[str(change) for change, _ in BAD])
def test_bad_requests_are_refused_with_one_line_and_leave_nothing(faulting: Any, change: dict[str, Any],
                                                                  says: str) -> None:
    fs, client = faulting
    request = {"kind": "disk-full", "target": str(fs), "duration": 5, "params": {"free-bytes": 0}, **change}
    error = refusal(client, "guest-fault-inject", request)
    assert says in str(error), error
    assert "\n" not in str(error)
    untouched(fs, client)
    last = client.call("guest-fault-events")["events"][-1]
    assert last["event"] == "refused" and says.split(";")[0][:30] in last["detail"], last


def test_non_finite_durations_never_reach_the_engine(faulting: Any) -> None:
    fs, client = faulting
    for duration in (math.nan, math.inf):
        error = refusal(client, "guest-fault-inject", DISK_FULL | {"target": str(fs), "duration": duration})
        assert error.error_class in ("GenericError", "InvalidParameter", "JSONParsing"), error
    untouched(fs, client)


def test_a_second_fault_on_one_device_is_refused_not_stacked(faulting: Any) -> None:
    fs, client = faulting
    first = client.call("guest-fault-inject", {"kind": "disk-full", "target": str(fs), "duration": 30})
    error = refusal(client, "guest-fault-inject", {"kind": "write-stall", "target": str(fs), "duration": 30})
    assert f"already has fault {first['id']} (disk-full)" in str(error), error
    assert f"revert {first['id']} first" in str(error)
    assert [lease["id"] for lease in client.call("guest-fault-list")] == [first["id"]]
    writer = start_writer(fs.mountpoint / "w.txt")   # not frozen: the refused stall did nothing
    writer.wait(10)   # it returns (ENOSPC or not): a frozen filesystem would hold it
    error = refusal(client, "guest-fault-revert", {"id": "f999"})
    assert "no active fault 'f999'" in str(error), error
    assert client.call("guest-fault-revert") == 1
    untouched(fs, client)


def test_list_revert_and_events_answer_while_frozen(tmp_path: Path, loops: LoopMounts) -> None:
    fs, other = loops.add("a"), loops.add("b")
    agent = start_agent(tmp_path, loops, "--enable-faults")
    try:
        with AgentClient(str(agent.socket_path), timeout=30) as client:
            lease = client.call("guest-fault-inject", DISK_FULL | {"target": str(other), "duration": 30})
            assert client.call("guest-fsfreeze-freeze-list", {"mountpoints": [str(fs)], "timeout": 30}) == 1
            assert [item["id"] for item in client.call("guest-fault-list")] == [lease["id"]]
            assert client.call("guest-fault-events")["cursor"] >= 2
            error = refusal(client, "guest-fault-inject", DISK_FULL | {"target": str(fs)})
            assert "frozen state" in str(error), error
            assert client.call("guest-fault-revert") == 1
            assert client.call("guest-fsfreeze-thaw") == 1
            untouched(other, client)
    finally:
        loops.thaw_all()
        agent.stop()


def test_a_plan_of_a_million_steps_is_refused_before_it_runs(faulting: Any) -> None:
    fs, client = faulting
    step = {"at": 0, "kind": "disk-full", "target": str(fs), "duration": 1}
    error = refusal(client, "guest-fault-plan", {"seed": 1, "steps": [step], "repeat": 10**6})
    assert "a plan runs at most 1000 faults; this one has 1 steps x 1000000 repeats" in str(error), error
    untouched(fs, client)


def test_a_write_stall_of_a_filesystem_someone_else_froze_leaves_that_freeze(faulting: Any) -> None:
    """FIFREEZE fails with EBUSY: nothing was applied, so nothing is undone; a rollback that
    thawed would end the other freeze (a backup's, say) under its owner's feet."""
    fs, client = faulting
    freeze_directly(fs.mountpoint)
    error = refusal(client, "guest-fault-inject", {"kind": "write-stall", "target": str(fs), "duration": 30})
    assert "write-stall on" in str(error) and "freeze:" in str(error), error
    assert client.call("guest-fault-list") == []
    events = client.call("guest-fault-events")["events"]
    assert [e["event"] for e in events] == ["armed", "refused"], events
    assert thaw_fully(fs.mountpoint) == 1, "the other freeze was thawed by the fault's rollback"
