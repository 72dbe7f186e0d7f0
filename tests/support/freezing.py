"""Helpers for tests that freeze through a real agent: the agent, a writer that blocks, a hook."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.agent_process import PyqgaAgent
from tests.support.loopfs import LoopMounts


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
