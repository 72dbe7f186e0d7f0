"""The keeper imports everything before it says it is ready, and nothing while it thaws.

It runs while filesystems are frozen: an import then could read a file on one of them and block
the one process that can thaw it.  This runs the keeper's real main with an audit hook that
records every module imported after its ``R``, feeds it a snapshot with a superblock and an owed
thaw hook, closes the pipe (the agent's death), and expects the list to be empty.  The superblock
is a directory on tmpfs (``/dev/shm``), which cannot be frozen: its FITHAW changes nothing.
The second test takes the other way out: the keeper ends a parent that holds the freeze past its
deadline (a sacrificial process the test starts, standing in for a hung agent).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pyqga.agent.keeper.handle import MODULE
from tests.rig.agent_process import agent_env

PROBE = f"""
import os, sys
after, ready, write = [], [], os.write
def said_ready(fd, data):
    if fd == 1 and data == b"R":
        ready.append(True)
    return write(fd, data)
def hook(event, args):
    if ready and event == "import" and args[0] not in sys.modules:
        after.append(args[0])
os.write = said_ready
sys.addaudithook(hook)
from {MODULE}.main import main
try:
    main()
finally:
    os.write = write
    with open(os.environ["KEEPER_IMPORTS"], "w") as f:
        f.write("\\n".join(after))
"""


def test_the_keeper_imports_nothing_after_it_is_ready(tmp_path: Path) -> None:
    hook = tmp_path / "hook"
    hook.write_text("#!/bin/sh\nexit 0\n")
    hook.chmod(0o755)
    on_tmpfs = tempfile.mkdtemp(prefix="pyqga-keeper-", dir="/dev/shm")
    snapshot = {"version": 1, "epoch": 1, "freeze": {"epoch": 1, "frozen-at": 1.0, "deadline": None},
                "superblocks": [{"device": [0, 9999], "path": on_tmpfs, "type": "tmpfs", "source": "tmpfs"}],
                "hook-owed": True, "last-thaw": None}
    imports = tmp_path / "imports"
    env = dict(agent_env(), KEEPER_IMPORTS=str(imports))
    keeper = subprocess.Popen([sys.executable, "-B", "-c", PROBE, str(tmp_path / "state"), str(hook), "5"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    assert keeper.stdin is not None and keeper.stdout is not None
    assert keeper.stdout.read(1) == b"R"
    keeper.stdin.write(json.dumps(snapshot).encode() + b"\n")
    keeper.stdin.close()  # the agent dies
    try:
        assert keeper.wait(30) == 0
    finally:
        keeper.stdout.close()
        shutil.rmtree(on_tmpfs)
    state = json.loads((tmp_path / "state" / "pyqga.state").read_text())
    assert state["last-thaw"]["reason"] == "agent-death" and state["hook-owed"] is False  # it did thaw
    assert imports.read_text() == "", f"imported while thawing: {imports.read_text()}"


# A hung agent: starts the probe as its keeper (its own pid last, as the agent's handle does),
# sends it a freeze whose deadline is 0.3 s away, and never acts again.
HUNG_PARENT = """
import json, os, subprocess, sys, time
probe, statedir, hook, superblock = sys.argv[1:5]
keeper = subprocess.Popen([sys.executable, "-B", "-c", probe, statedir, hook, "5", str(os.getpid())],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE)
assert keeper.stdout.read(1) == b"R"
now, mono = time.time(), time.monotonic()
keeper.stdin.write(json.dumps({"version": 1, "epoch": 1, "hook-owed": True, "last-thaw": None,
    "freeze": {"epoch": 1, "frozen-at": now, "deadline": now + 0.3, "deadline-mono": mono + 0.3},
    "superblocks": [{"device": [0, 9999], "path": superblock, "type": "tmpfs", "source": "tmpfs"}]}).encode()
    + b"\\n")
keeper.stdin.flush()
time.sleep(3600)
"""


def test_the_keeper_imports_nothing_when_it_ends_a_hung_agent(tmp_path: Path) -> None:
    hook = tmp_path / "hook"
    hook.write_text("#!/bin/sh\nexit 0\n")
    hook.chmod(0o755)
    on_tmpfs = tempfile.mkdtemp(prefix="pyqga-keeper-", dir="/dev/shm")
    imports = tmp_path / "imports"
    env = dict(agent_env(), KEEPER_IMPORTS=str(imports))
    parent = subprocess.Popen([sys.executable, "-B", "-c", HUNG_PARENT, PROBE, str(tmp_path / "state"),
                               str(hook), on_tmpfs], env=env)
    try:
        assert parent.wait(30) == -9, "the keeper did not end its hung parent"
        end = time.monotonic() + 30
        while not imports.exists() and time.monotonic() < end:  # the keeper writes it as it exits
            time.sleep(0.05)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        shutil.rmtree(on_tmpfs)
    state = json.loads((tmp_path / "state" / "pyqga.state").read_text())
    assert state["last-thaw"]["reason"] == "timeout" and state["hook-owed"] is False  # it did thaw
    assert imports.read_text() == "", f"imported while ending the agent and thawing: {imports.read_text()}"
