"""Helpers for tests that freeze through a real agent: the agent, a writer that blocks, a hook."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pyqga.host_client import AgentClient, FreezeLost
from tests.rig.agent_process import PyqgaAgent
from tests.rig.loopfs import LoopMounts


def start_agent(tmp_path: Path, loops: LoopMounts, *extra: str) -> PyqgaAgent:
    """A running agent whose freezes can only ever reach ``loops``' filesystems."""
    agent = PyqgaAgent(tmp_path / "agent", ["--freeze-include", loops.glob(), *extra])
    agent.start()
    return agent


def start_writer(path: Path) -> subprocess.Popen[bytes]:
    """A process that appends and fsyncs one line: it blocks while its filesystem is frozen."""
    code = ("import os, sys\nwith open(sys.argv[1], 'a') as f:\n"
            "    f.write('line\\n'); f.flush(); os.fsync(f.fileno())\n")
    return subprocess.Popen([sys.executable, "-B", "-c", code, str(path)])


def write_hook(path: Path, body: str) -> Path:
    """An executable shell script at ``path`` (an fsfreeze hook)."""
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def freeze_through(agent: PyqgaAgent, mountpoints: Sequence[object], **params: Any) -> int:
    """Freeze-list ``mountpoints`` through a fresh connection; return the freeze's epoch."""
    with AgentClient(str(agent.socket_path), timeout=30) as client:
        count = client.call("guest-fsfreeze-freeze-list", {"mountpoints": [str(m) for m in mountpoints],
                                                            **params})
        assert count == len(mountpoints), f"froze {count} of {len(mountpoints)}"
        return int(client.call("guest-fsfreeze-info")["epoch"])


def wait_until(condition: Callable[[], object], limit: float, what: str) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``limit`` seconds."""
    end = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < end, f"not within {limit} s: {what}"
        time.sleep(0.02)


def assert_freeze_ended(client: AgentClient, epoch: int, reason: str) -> None:
    """Freeze ``epoch`` is over, ended by ``reason``, and a thaw naming it is told so."""
    info = client.call("guest-fsfreeze-info")
    assert info["status"] == "thawed"
    assert info["last-thaw"]["reason"] == reason and info["last-thaw"]["epoch"] == epoch, info["last-thaw"]
    try:
        client.thaw(epoch)
    except FreezeLost as lost:
        assert reason in str(lost), lost
    else:
        raise AssertionError(f"a thaw of freeze {epoch}, ended by {reason}, was not told it was lost")
