"""The files in the agent's state directory are untrusted input (issue 13, item 5).

A dead agent, a bug or a local user may leave anything there.  Each case plants one hostile
state or pid file before a real agent starts, then checks: the agent starts (a FIFO must not
hang it), says so in one clear log line, never crashes with a traceback, follows no symlink and
truncates no link target, answers guest-fsfreeze-info, and under ``--on-agent-death thaw``
(the default) treats an unreadable freeze state as a freeze possibly held: it thaws what it may.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from pyqga.host_client import AgentClient
from tests.rig.agent_process import ProcessFailed, PyqgaAgent
from tests.rig.freezing import wait_until
from tests.rig.loopfs import LoopMounts, freeze_directly, thaw_fully

STATE_FILE = "pyqga.state"
PID_FILE = "pyqga.pid"
NOTHING_FREEZABLE = ["--freeze-include", "/nonexistent-pyqga-statefiles/*"]
PRECIOUS = b"precious: a file the agent must never write\n"


def _json(value: object) -> Callable[[Path], None]:
    return lambda path: path.write_text(json.dumps(value))


def _symlink(path: Path) -> None:
    target = path.parent.parent / "link-target"  # outside the state directory
    target.write_bytes(PRECIOUS)
    path.symlink_to(target)


def _huge(path: Path) -> None:
    with open(path, "wb") as f:
        f.truncate(4 << 30)  # sparse: 4 GiB of zeros that a careless read would pull in


# case -> how to plant the hostile state file.  All are corrupt: the agent must say so.
CORRUPT: dict[str, Callable[[Path], None]] = {
    "epoch is a string": _json({"version": 1, "epoch": "x"}),
    "deadline is a word": _json({"version": 1, "epoch": 1, "freeze": {"epoch": 1, "frozen-at": 1.0,
                                                                      "deadline": "soon"}}),
    "deadline is infinite": lambda p: p.write_text('{"version": 1, "epoch": 1, "freeze": '
                                                   '{"epoch": 1, "frozen-at": 1.0, "deadline": 1e400}}'),
    "last-thaw is a number": _json({"version": 1, "epoch": 1, "last-thaw": 5}),
    "last-thaw epoch is a string": _json({"version": 1, "last-thaw": {"epoch": "x", "reason": "request",
                                                                      "at": 1.0}}),
    "superblocks is a number": _json({"version": 1, "superblocks": 5}),
    "a superblock is a string": _json({"version": 1, "superblocks": ["/"]}),
    "not a JSON object": _json([1, 2]),
    "invalid JSON": lambda p: p.write_text('{"epoch": 1,'),
    "a FIFO": lambda p: os.mkfifo(p),
    "a symlink": _symlink,
    "a directory": lambda p: p.mkdir(),
    "huge": _huge,
}


def _plant(tmp_path: Path, extra: list[str], plant: Callable[[Path], None],
           name: str = STATE_FILE) -> PyqgaAgent:
    agent = PyqgaAgent(tmp_path / "agent", extra)
    plant(agent.statedir / name)
    return agent


def _log(agent: PyqgaAgent) -> str:
    """The agent's log with the test's own folder (its name has words like "corrupt") cut out."""
    return agent.log_path.read_text(errors="replace").replace(str(agent.log_path.parent.parent), "TMP")


def _check_alive_and_honest(agent: PyqgaAgent) -> dict[str, object]:
    """guest-fsfreeze-info answers; no traceback; one log line says the state file is corrupt
    (a later line may say it cannot be written either, e.g. when it is a directory)."""
    with AgentClient(str(agent.socket_path), timeout=30) as client:
        info = client.call("guest-fsfreeze-info")
        assert client.call("guest-ping") == {}
    log = _log(agent)
    assert "Traceback" not in log, log
    about_it = [line for line in log.lower().splitlines() if "state file" in line and "corrupt" in line]
    assert len(about_it) == 1, f"wanted one log line about the corrupt state file, got: {about_it or log}"
    return info


@pytest.mark.parametrize("case", list(CORRUPT))
def test_corrupt_state_file_is_reported_once_and_the_agent_serves(tmp_path: Path, case: str) -> None:
    agent = _plant(tmp_path, NOTHING_FREEZABLE, CORRUPT[case])
    try:
        agent.start()
        info = _check_alive_and_honest(agent)
        assert info["status"] == "thawed", info
        json.dumps(info, allow_nan=False)  # nothing non-finite reaches the host
    finally:
        agent.stop()
    if case == "a symlink":
        assert (tmp_path / "agent" / "link-target").read_bytes() == PRECIOUS


@pytest.mark.parametrize("case", ["epoch is a string", "last-thaw is a number", "invalid JSON", "a FIFO",
                                  "a symlink"])
def test_corrupt_state_counts_as_a_freeze_possibly_held_and_is_thawed(tmp_path: Path, loops: LoopMounts,
                                                                     case: str) -> None:
    """Under --on-agent-death thaw (the default) a state the agent cannot read may hide a
    freeze of a dead agent: it thaws every filesystem it may freeze before serving."""
    a = loops.add("a")
    freeze_directly(a.mountpoint)
    agent = _plant(tmp_path, ["--freeze-include", loops.glob(), "--on-agent-death", "thaw"], CORRUPT[case])
    try:
        agent.start()
        info = _check_alive_and_honest(agent)
        wait_until(lambda: thaw_fully(a.mountpoint) == 0, 10, f"{a} thawed by the agent at start")
        assert info["status"] == "thawed", info
    finally:
        agent.stop()
        thaw_fully(a.mountpoint)


def test_pid_file_symlink_target_is_never_truncated(tmp_path: Path) -> None:
    """A symlink where the pid file goes: the agent must not write through it (it runs as root;
    the link could name /etc/shadow).  Refusing to start is fine if it says why."""
    agent = _plant(tmp_path, NOTHING_FREEZABLE, _symlink, name=PID_FILE)
    target = tmp_path / "agent" / "link-target"
    try:
        agent.start()
    except ProcessFailed as exc:
        assert PID_FILE in str(exc) or PID_FILE in _log(agent), exc
    else:
        with AgentClient(str(agent.socket_path), timeout=30) as client:
            assert client.call("guest-ping") == {}
    finally:
        agent.stop()
    assert target.read_bytes() == PRECIOUS, "the agent wrote through the pid file's symlink"
    assert "Traceback" not in _log(agent)


def test_a_fifo_as_the_pid_file_does_not_hang_start(tmp_path: Path) -> None:
    agent = _plant(tmp_path, NOTHING_FREEZABLE, lambda p: os.mkfifo(p), name=PID_FILE)
    try:
        try:
            agent.start()
        except ProcessFailed as exc:  # refusing is fine, hanging or a traceback is not
            assert "did not listen" not in str(exc), exc
        else:
            wait_until(lambda: "listening" in _log(agent), 15, "the agent serves")
    finally:
        agent.stop()
    assert "Traceback" not in _log(agent)
