"""The keeper enforces a freeze's deadline itself when the agent is alive but does not act (issue 20).

The agent's own deadline thaw runs inside the agent; an agent that is stopped (SIGSTOP, a
debugger, the cgroup freezer), deadlocked or wedged in D-state never runs it.  The keeper then
ends the agent (SIGKILL through a pidfd) at the deadline plus its grace and thaws what the agent
froze.  Real agents, real loop mounts, real signals; the first two tests failed before the keeper
watched the deadline (the filesystem stayed frozen until the test thawed it).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pyqga.agent.keeper.handle import MODULE
from pyqga.host_client import AgentClient
from tests.rig.agent_process import PyqgaAgent, agent_env, tmpfs_statedir
from tests.rig.freezing import start_agent, start_writer, wait_until
from tests.rig.loopfs import LoopFs, LoopMounts, thaw_fully
from tests.rig.requirements import require_root

TIMEOUT = 2.0
HUNG_DETAIL = "the agent did not act by its deadline"


def freeze_for(agent: PyqgaAgent, fs: LoopFs, timeout: float) -> tuple[dict[str, Any], float]:
    """Freeze ``fs`` through ``agent``; (guest-fsfreeze-info then, the latest monotonic instant
    its deadline can be)."""
    with AgentClient(str(agent.socket_path), timeout=30) as client:
        assert client.call("guest-fsfreeze-freeze-list", {"mountpoints": [str(fs)], "timeout": timeout}) == 1
        deadline = time.monotonic() + timeout  # the agent set its deadline before it answered
        return client.call("guest-fsfreeze-info"), deadline


def wait_for(process: subprocess.Popen[bytes], until: float, what: str) -> int:
    """Its exit status, if it exits before the monotonic instant ``until``."""
    try:
        return process.wait(max(0.0, until - time.monotonic()))
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{what}: still running {time.monotonic() - until + 1:.2f} s after the "
                             "deadline (allowed: 1 s)") from None


@contextlib.contextmanager
def cleanup(loops: LoopMounts,
            *processes: subprocess.Popen[bytes]) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Whatever the test left: thaw the loop mounts (so blocked writers finish), then reap."""
    writers: list[subprocess.Popen[bytes]] = []
    try:
        yield writers
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGCONT)
        loops.thaw_all()
        for process in [*processes, *writers]:
            if process.poll() is None:
                process.kill()
            process.wait(30)


def test_a_stopped_agent_is_ended_and_its_freeze_thawed_by_the_deadline(tmp_path: Path,
                                                                       loops: LoopMounts) -> None:
    a = loops.add("a")
    agent = start_agent(tmp_path, loops)
    assert agent.process is not None
    with cleanup(loops, agent.process) as writers:
        frozen, deadline = freeze_for(agent, a, TIMEOUT)
        os.kill(agent.pid, signal.SIGSTOP)   # alive, but it will never run its deadline thaw
        writer = start_writer(a.mountpoint / "probe.txt")
        writers.append(writer)
        time.sleep(0.3)
        assert writer.poll() is None, "the writer was not blocked: the freeze did not hold"
        assert wait_for(writer, deadline + 1, "a writer blocked on the frozen filesystem") == 0
        assert thaw_fully(a.mountpoint) == 0, "the kernel still had it frozen"
        assert wait_for(agent.process, deadline + 1, "the hung agent") == -signal.SIGKILL
        successor = start_agent(tmp_path, loops)   # the same state directory: the service restarts it
        try:
            with AgentClient(str(successor.socket_path), timeout=30) as client:
                info = client.call("guest-fsfreeze-info")
            assert info["status"] == "thawed" and info["frozen"] == []
            last = info["last-thaw"]
            assert (last["epoch"], last["reason"]) == (frozen["epoch"], "timeout"), last
            assert HUNG_DETAIL in last["detail"], last
            late = last["at"] - frozen["deadline"]   # both the guest's Unix time
            print(f"thawed {late:.3f} s after the deadline")
            assert 0 < late < 1, f"the keeper thawed {late:.2f} s after the deadline"
        finally:
            successor.stop()


def test_an_agent_that_acts_thaws_itself_and_is_not_ended(tmp_path: Path, loops: LoopMounts) -> None:
    a = loops.add("a")
    agent = start_agent(tmp_path, loops)
    assert agent.process is not None
    with cleanup(loops, agent.process):
        frozen, deadline = freeze_for(agent, a, TIMEOUT)
        time.sleep(max(0.0, deadline + 2 - time.monotonic()))
        assert agent.process.poll() is None, "the keeper ended a live agent"
        with AgentClient(str(agent.socket_path), timeout=10) as client:
            info = client.call("guest-fsfreeze-info")
        assert info["status"] == "thawed"
        assert (info["last-thaw"]["epoch"], info["last-thaw"]["reason"]) == (frozen["epoch"], "timeout")
        assert HUNG_DETAIL not in info["last-thaw"]["detail"]
        assert thaw_fully(a.mountpoint) == 0
        assert agent.stop() == 0


# An "agent" whose one thread is wedged in D-state on the frozen filesystem (an fsync there),
# while its main thread never acts: SIGKILL cannot end it before the thaw, so a keeper that
# waited for the pipe's EOF before thawing would wait forever.  It starts its keeper with the
# agent's own handle and sends it the snapshot the agent would send; then it freezes.
WEDGED_AGENT = """
import json, os, sys, threading, time
from pyqga.agent.freeze.kernel import LinuxKernel
from pyqga.agent.keeper.handle import KeeperHandle
statedir, mount, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])
device = os.stat(mount).st_dev
keeper = KeeperHandle(statedir, None, 5.0)
keeper.ensure_started()
now, mono = time.time(), time.monotonic()
keeper.send({"version": 1, "epoch": 1, "hook-owed": False, "last-thaw": None,
             "freeze": {"epoch": 1, "frozen-at": now, "deadline": now + timeout,
                        "deadline-mono": mono + timeout, "broken": ""},
             "superblocks": [{"device": [os.major(device), os.minor(device)], "path": mount,
                              "type": "ext4", "source": ""}]})
LinuxKernel().freeze(mount)
def wedge():
    with open(os.path.join(mount, "wedged.txt"), "a") as f:
        f.write("x"); f.flush(); os.fsync(f.fileno())
threading.Thread(target=wedge, daemon=True).start()
print("frozen", repr(now + timeout), flush=True)
while True:
    time.sleep(3600)
"""


def test_an_agent_wedged_in_d_state_is_ended_and_thawed(tmp_path: Path, loops: LoopMounts) -> None:
    a = loops.add("a")
    statedir = tmp_path / "state"
    tmpfs_statedir(statedir)
    wedged = subprocess.Popen([sys.executable, "-B", "-c", WEDGED_AGENT, str(statedir), str(a.mountpoint),
                               str(TIMEOUT)], stdout=subprocess.PIPE, env=agent_env())
    with cleanup(loops, wedged):
        assert wedged.stdout is not None
        said, wall_deadline = wedged.stdout.readline().split()
        assert said == b"frozen"
        deadline = time.monotonic() + TIMEOUT
        wedged.stdout.close()
        time.sleep(0.3)
        states = [(task / "stat").read_text().rsplit(")", 1)[1].split()[0]
                  for task in Path(f"/proc/{wedged.pid}/task").iterdir()]
        assert "D" in states, f"no thread of the wedged agent is in D-state: {states}"
        assert wait_for(wedged, deadline + 1, "the wedged agent") == -signal.SIGKILL
        assert thaw_fully(a.mountpoint) == 0, "the kernel still had it frozen"
        record = json.loads((statedir / "pyqga.state").read_text())
        assert record["superblocks"] == [] and record["last-thaw"]["reason"] == "timeout", record
        late = record["last-thaw"]["at"] - float(wall_deadline)
        print(f"thawed {late:.3f} s after the deadline")
        assert 0 < late < 1, f"the keeper thawed {late:.2f} s after the deadline"
        wait_until(lambda: not keepers_on(statedir), 10, "the keeper to finish once its agent is gone")


def keepers_on(statedir: Path) -> list[int]:
    """The pids of keeper processes working in ``statedir`` (a keeper outlives its agent)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                argv = (entry / "cmdline").read_bytes().split(b"\0")
                if b"pyqga.agent.keeper" in argv and os.fsencode(statedir) in argv:
                    found.append(int(entry.name))
    return found


def test_the_keeper_pins_its_memory(tmp_path: Path) -> None:
    """mlockall: every page the keeper has is resident and locked before it says it is ready, so
    a thaw never waits for a page-in from a disk that may be the one frozen or stalled."""
    require_root()  # CAP_IPC_LOCK: as the service runs it
    tmpfs_statedir(tmp_path / "state")
    keeper = subprocess.Popen([sys.executable, "-B", "-m", MODULE, str(tmp_path / "state"), "", "5"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=agent_env())
    assert keeper.stdin is not None and keeper.stdout is not None
    try:
        assert keeper.stdout.read(1) == b"R"
        lines = Path(f"/proc/{keeper.pid}/status").read_text().splitlines()
        status = dict(line.split(":", 1) for line in lines)
        locked, resident = (int(status[key].split()[0]) for key in ("VmLck", "VmRSS"))
        assert locked >= 0.9 * resident > 0, (locked, resident)
    finally:
        keeper.stdin.close()  # the agent's end of the pipe closes: the keeper exits
        assert keeper.wait(10) == 0
