"""Every freeze fault of issue 9 that can be made real on this machine, through a real agent.

Real loop-mounted filesystems, real fsfreeze(8) as the "other tool", real signals, a real full
tmpfs under the state directory.  Each test names the fault it covers; each failed on the agent
before the freeze core was rebuilt (see the closing note of issue 9).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pyqga.host_client import AgentCallError, AgentClient
from tests.rig.agent_process import PyqgaAgent
from tests.rig.freezing import assert_freeze_ended, freeze_through, start_agent, start_writer, wait_until
from tests.rig.loopfs import LoopFs, LoopMounts, freeze_directly, thaw_fully
from tests.rig.requirements import require_tool


def guard_pid(agent: PyqgaAgent) -> int:
    """The agent's keeper (once called its guard): its child running ``-m pyqga.agent.keeper``."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == agent.pid and b"pyqga.agent.keeper" in cmdline:
            return int(entry.name)
    raise AssertionError("the agent has no guard process")


def state_of(agent: PyqgaAgent) -> dict:  # type: ignore[type-arg]
    return json.loads((agent.statedir / "pyqga.state").read_text())


@pytest.fixture
def agent_on_a(tmp_path: Path, loops: LoopMounts) -> Iterator[tuple[PyqgaAgent, LoopFs]]:
    """One loop filesystem ``a`` and an agent limited to the test's mounts, stopped after."""
    a = loops.add("a")
    agent = start_agent(tmp_path, loops)
    try:
        yield agent, a
    finally:
        agent.stop()


# --- fault 1: timeouts out of range ---------------------------------------------------------------


def test_out_of_range_timeouts_are_refused_and_the_deadline_still_works(
        agent_on_a: tuple[PyqgaAgent, LoopFs]) -> None:
    agent, a = agent_on_a
    with AgentClient(str(agent.socket_path), timeout=30) as client:
        for bad in (1e10, -1, 0, 7 * 24 * 3600 + 1):
            with pytest.raises(AgentCallError, match="timeout must be a number of seconds") as caught:
                client.call("guest-fsfreeze-freeze-list", {"mountpoints": [str(a)], "timeout": bad})
            assert caught.value.error_class == "GenericError"
        for raw in (b"1e400", b"NaN", b"-Infinity"):  # infinity to a JSON parser, and non-JSON
            with agent.connect(10) as sock:
                sock.sendall(b'{"execute":"guest-fsfreeze-freeze","arguments":{"timeout":%s}}\n' % raw)
                reply = json.loads(sock.recv(4096))
            assert reply["error"]["class"] == "GenericError" and "return" not in reply, reply
        assert client.call("guest-fsfreeze-status") == "thawed" and thaw_fully(a.mountpoint) == 0
        # The deadline watcher survived all of that: a 1 s freeze still thaws by itself.
        assert client.call("guest-fsfreeze-freeze-list", {"mountpoints": [str(a)], "timeout": 1}) == 1
        wait_until(lambda: client.call("guest-fsfreeze-status") == "thawed", 10, "auto-thaw")
        assert client.call("guest-fsfreeze-info")["last-thaw"]["reason"] == "timeout"
        assert thaw_fully(a.mountpoint) == 0


# --- fault 2: safety thaws undo other tools' freezes ------------------------------------------------


@pytest.mark.parametrize("safety", ["deadline", "sigterm", "sigkill"])
def test_safety_thaws_leave_a_foreign_freeze_alone(tmp_path: Path, loops: LoopMounts, safety: str) -> None:
    fsfreeze = require_tool("fsfreeze")
    a, b = loops.add("a"), loops.add("b")
    subprocess.run([fsfreeze, "-f", str(b.mountpoint)], check=True)  # someone else's snapshot
    agent = start_agent(tmp_path, loops)
    try:
        with AgentClient(str(agent.socket_path), timeout=30) as client:
            params = {"mountpoints": [str(a), str(b)], "timeout": 1}
            assert client.call("guest-fsfreeze-freeze-list", params) == 1
            assert [f["mountpoint"] for f in client.call("guest-fsfreeze-info")["frozen"]] == [str(a)]
        if safety == "deadline":
            with AgentClient(str(agent.socket_path), timeout=30) as client:
                wait_until(lambda: client.call("guest-fsfreeze-status") == "thawed", 10, "auto-thaw")
        elif safety == "sigterm":
            assert agent.stop(signal.SIGTERM, timeout=20) == 0
        else:
            agent.stop(signal.SIGKILL)
            wait_until(lambda: _not_frozen(a.mountpoint), 5, "guard thaw")
        assert _not_frozen(a.mountpoint), "our freeze was not undone"
        assert thaw_fully(b.mountpoint) == 1, f"the {safety} thaw undid the other tool's freeze"
    finally:
        agent.stop()
        loops.thaw_all()


LEFT_WRITERS: list[subprocess.Popen[bytes]] = []


def _not_frozen(path: Path) -> bool:
    """A write that finishes within 2 s means the filesystem is not frozen.  A blocked writer
    is left to finish when the filesystem is thawed (it cannot be killed before)."""
    writer = start_writer(path / "probe.txt")
    try:
        return writer.wait(2) == 0
    except subprocess.TimeoutExpired:
        LEFT_WRITERS.append(writer)
        return False


@pytest.fixture(autouse=True)
def reap_writers() -> Iterator[None]:
    yield
    while LEFT_WRITERS:
        LEFT_WRITERS.pop().wait(30)


# --- fault 3: a bind mount reports a false "lost" ---------------------------------------------------


def test_freeze_through_a_bind_mount_holds(tmp_path: Path, loops: LoopMounts) -> None:
    a = loops.add("a")
    (a.mountpoint / "sub").mkdir()
    bind = loops.bind(a.mountpoint / "sub", loops.base / "a-bind")
    agent = start_agent(tmp_path, loops)
    try:
        with AgentClient(str(agent.socket_path), timeout=30) as client:
            with client.frozen([str(bind)]) as freeze:  # raises FreezeLost if it says "lost"
                assert freeze.count == 1
            assert client.call("guest-fsfreeze-info")["last-thaw"]["reason"] == "request"
    finally:
        agent.stop()


# --- fault 5: a FIFREEZE that never returns ----------------------------------------------------------


def start_agent_seeing_dirty(tmp_path: Path, loops: LoopMounts, dirty_kb: int) -> PyqgaAgent:
    """:func:`start_agent`, but in a private mount namespace whose ``/proc/meminfo`` says
    ``Dirty: <dirty_kb> kB``: that decides whether the agent's freezes take the parallel-syncfs
    pass first (from ``FLUSH_THRESHOLD``, 32 MB), and a test must not leave it to whatever the
    rest of the machine has left dirty (other tests, other work).  The agent sees the same
    mounts and superblocks as the test (the mounts are copied when it starts)."""
    with open("/proc/meminfo", encoding="ascii") as real:
        lines = [f"Dirty:{dirty_kb:>17} kB\n" if line.startswith("Dirty:") else line for line in real]
    fake = tmp_path / "meminfo"
    fake.write_text("".join(lines))
    agent = PyqgaAgent(tmp_path / "agent", ["--freeze-include", loops.glob()])
    agent.command = ["unshare", "--mount", "--propagation", "private", "--",
                     "sh", "-c", 'mount --bind "$0" /proc/meminfo && exec "$@"', str(fake), *agent.command]
    agent.start()
    return agent


@dataclass
class StuckStack:
    """An image (``inner``) on a filesystem someone else froze (``outer``), holding dirty data,
    and ``other`` beside them; a freeze-list of inner and other started on a thread, whose
    reply (or error) lands in ``replies["freeze"]``."""

    outer: LoopFs
    inner: LoopFs
    other: LoopFs
    agent: PyqgaAgent
    thread: threading.Thread
    replies: dict[str, object]


@contextlib.contextmanager
def stuck_stack(tmp_path: Path, loops: LoopMounts, dirty_kb: int) -> Iterator[StuckStack]:
    """The stack of the two tests below, with the agent told ``dirty_kb`` of dirty data (so
    whether its syncfs pass comes first is the test's choice); everything thawed at the end."""
    require_tool("unshare")
    outer = loops.add("outer", size_mb=64)
    inner = loops.add("inner", image=outer.mountpoint / "inner.img",
                      mountpoint=loops.base / "inner", size_mb=32)
    other = loops.add("other")
    agent = start_agent_seeing_dirty(tmp_path, loops, dirty_kb)
    replies: dict[str, object] = {}
    try:
        (inner.mountpoint / "dirty").write_bytes(os.urandom(8 << 20))
        freeze_directly(outer.mountpoint)

        def freeze() -> None:
            with AgentClient(str(agent.socket_path), timeout=60) as client:
                try:
                    replies["freeze"] = client.call("guest-fsfreeze-freeze-list",
                                                    mountpoints=[str(inner), str(other)])
                except AgentCallError as exc:
                    replies["freeze"] = exc

        thread = threading.Thread(target=freeze)
        thread.start()
        yield StuckStack(outer, inner, other, agent, thread, replies)
    finally:
        loops.thaw_all()
        agent.stop()


def test_stuck_fifreeze_does_not_wedge_the_agent(tmp_path: Path, loops: LoopMounts) -> None:
    """An image on a filesystem that someone else froze: its FIFREEZE must flush into a frozen
    file and waits until that is thawed.  The host's thaw still answers at once, thaws what was
    frozen (outer too: qemu-ga's thaw is everyone's), names the stuck one; the stuck FIFREEZE
    then completes and the agent thaws it by itself."""
    # Little dirty data: no syncfs pass, the freeze goes straight to FIFREEZE.  (With one, the
    # syncfs of inner would block in the frozen outer before any FIFREEZE: the next test.)
    with stuck_stack(tmp_path, loops, dirty_kb=0) as stack, \
            AgentClient(str(stack.agent.socket_path), timeout=10) as client:
        inner, other = stack.inner, stack.other

        def states() -> dict[str, str]:
            return {e["mountpoint"]: e["state"] for e in client.call("guest-fsfreeze-info")["frozen"]}

        seen: list[dict[str, str]] = []

        def stuck_as_meant() -> bool:
            now = states()
            if not seen or seen[-1] != now:
                seen.append(now)
            return now == {str(inner): "freezing", str(other): "frozen"}

        try:
            wait_until(stuck_as_meant, 10, "other frozen, inner stuck in FIFREEZE")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; states seen: {seen}") from None
        time.sleep(0.5)
        assert stack.thread.is_alive(), "the inner FIFREEZE did not block (no dirty data?)"
        t0 = time.monotonic()
        with pytest.raises(AgentCallError, match="stuck in FIFREEZE") as caught:
            client.call("guest-fsfreeze-thaw")  # qemu-ga's thaw: the other tool's freeze too
        assert time.monotonic() - t0 < 5, "the host's thaw waited for the stuck FIFREEZE"
        assert caught.value.error.data["stuck"] == [str(inner)]
        assert caught.value.error.data["thawed"] == 2  # outer (someone else's) and other (ours)
        stack.thread.join(10)
        assert isinstance(stack.replies["freeze"], AgentCallError)
        assert "interrupted" in str(stack.replies["freeze"])
        # outer is thawed, so the stuck FIFREEZE returns; the agent thaws it at once.
        wait_until(lambda: client.call("guest-fsfreeze-status") == "thawed", 20,
                   "the agent to thaw the late freeze")
        assert _not_frozen(inner.mountpoint) and _not_frozen(other.mountpoint)


def test_stuck_syncfs_before_the_freeze_does_not_wedge_the_agent(tmp_path: Path, loops: LoopMounts) -> None:
    """The same stack with much dirty data: the parallel syncfs that comes before any FIFREEZE
    blocks on inner (its data must go into the frozen outer).  Nothing is frozen by the agent
    meanwhile; the host's thaw still answers at once, thaws outer (someone else's, as qemu-ga's
    thaw does) and interrupts the freeze, and then nothing is left frozen."""
    with stuck_stack(tmp_path, loops, dirty_kb=1 << 20) as stack, \
            AgentClient(str(stack.agent.socket_path), timeout=10) as client:  # 1 GiB: the pass first
        def flushing() -> bool:
            info = client.call("guest-fsfreeze-info")
            return info["phase"] == "freezing" and info["in-progress"] and info["frozen"] == []

        wait_until(flushing, 10, "a freeze in progress with nothing frozen yet")
        time.sleep(0.5)
        assert stack.thread.is_alive(), "the syncfs of inner did not block (no dirty data?)"
        assert flushing(), "a FIFREEZE went out while the syncfs pass was blocked"
        t0 = time.monotonic()
        assert client.call("guest-fsfreeze-thaw") == 1  # outer, someone else's
        assert time.monotonic() - t0 < 5, "the host's thaw waited for the stuck syncfs"
        stack.thread.join(10)
        assert isinstance(stack.replies["freeze"], AgentCallError)
        assert "freeze interrupted: a thaw was requested while flush" in str(stack.replies["freeze"])
        info = client.call("guest-fsfreeze-info")
        assert (info["status"], info["phase"], info["frozen"]) == ("thawed", "thawed", [])
        assert info["epoch"] == 0  # nothing was ever frozen by this agent
        assert _not_frozen(stack.inner.mountpoint) and _not_frozen(stack.other.mountpoint)
        assert _not_frozen(stack.outer.mountpoint)


# --- fault 6: the state file cannot be written during a deadline thaw ------------------------------


def test_full_state_directory_does_not_stop_the_deadline_thaw(tmp_path: Path, loops: LoopMounts) -> None:
    a = loops.add("a")
    statedir_fs = loops.tmpfs(tmp_path / "agent" / "state", size="64k")
    agent = start_agent(tmp_path, loops)
    assert agent.statedir == statedir_fs
    filler = statedir_fs / "filler"
    try:
        with AgentClient(str(agent.socket_path), timeout=30) as client:
            assert client.call("guest-fsfreeze-freeze-list", {"mountpoints": [str(a)], "timeout": 2}) == 1
            fd = os.open(filler, os.O_WRONLY | os.O_CREAT)  # ENOSPC for every later state write
            with pytest.raises(OSError, match="No space left"):
                while True:
                    os.write(fd, b"x" * 4096)
            os.close(fd)
            wait_until(lambda: client.call("guest-fsfreeze-status") == "thawed", 15, "auto-thaw")
            info = client.call("guest-fsfreeze-info")
            assert info["last-thaw"]["reason"] == "timeout"
            assert "No space left" in info["state-file-error"]
            assert _not_frozen(a.mountpoint)
            filler.unlink()
            assert client.call("guest-fsfreeze-freeze-list", {"mountpoints": [str(a)], "timeout": 30}) == 1
            assert "state-file-error" not in client.call("guest-fsfreeze-info")
            assert client.thaw(client.call("guest-fsfreeze-info")["epoch"]) == 1
    finally:
        agent.stop()


# --- fault 8: agent and guard killed together; a dead guard ------------------------------------------


def test_agent_and_guard_killed_together_next_start_thaws(tmp_path: Path, loops: LoopMounts) -> None:
    a = loops.add("a")
    agent = start_agent(tmp_path, loops)
    epoch = freeze_through(agent, [a])
    guard = guard_pid(agent)
    os.kill(guard, signal.SIGKILL)  # as systemd's cgroup kill does: both at once
    agent.stop(signal.SIGKILL)
    time.sleep(0.5)
    assert not _not_frozen(a.mountpoint), "nobody should have thawed it yet"
    successor = start_agent(tmp_path, loops)  # --on-agent-death thaw is the default
    try:
        assert _not_frozen(a.mountpoint), "the next agent did not thaw what the dead one froze"
        with AgentClient(str(successor.socket_path), timeout=30) as client:
            assert_freeze_ended(client, epoch, "agent-death")
        log = successor.log_path.read_text()
        assert f"freeze {epoch} is in force" in log and "(agent-death)" in log
    finally:
        successor.stop()


def test_a_dead_guard_is_noticed_and_restarted(agent_on_a: tuple[PyqgaAgent, LoopFs]) -> None:
    agent, a = agent_on_a
    with AgentClient(str(agent.socket_path), timeout=30) as client:
        assert client.call("guest-fsfreeze-freeze-list", mountpoints=[str(a)]) == 1
        first = guard_pid(agent)
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: client.call("guest-fsfreeze-info")["guard-restarts"] == 1, 10,
                   "the guard restart")
        second = guard_pid(agent)
        assert second != first
        assert "the freeze guard" in agent.log_path.read_text()
    # The new guard knows the freeze: kill the agent, and it thaws.
    agent.stop(signal.SIGKILL)
    wait_until(lambda: _not_frozen(a.mountpoint), 5, "the restarted guard to thaw")


# --- fault 9: smaller gaps --------------------------------------------------------------------------


def test_restart_under_stay_holds_the_log_on_a_frozen_filesystem(tmp_path: Path, loops: LoopMounts) -> None:
    """The log file sits on the frozen filesystem itself: a restarted agent that wrote to it
    before the thaw would block forever, and nothing would thaw."""
    a = loops.add("a")
    log = a.mountpoint / "agent.log"
    first = start_agent(tmp_path, loops, "--on-agent-death", "stay", "-l", str(log))
    freeze_through(first, [a])
    first.stop(signal.SIGKILL)
    second = start_agent(tmp_path, loops, "--on-agent-death", "stay", "-l", str(log))
    try:
        with AgentClient(str(second.socket_path), timeout=10) as client:
            for _ in range(20):  # each of these logs at least a debug line, and some warn
                assert client.call("guest-fsfreeze-status") == "frozen"
                with pytest.raises(AgentCallError, match="frozen"):
                    client.call("guest-get-time")
            assert client.call("guest-fsfreeze-thaw") == 1
        wait_until(lambda: "thawed 1 filesystem(s)" in log.read_text(), 10, "the held log lines")
    finally:
        second.stop()
        loops.thaw_all()


def test_state_file_deadline_is_the_deadline_in_force(agent_on_a: tuple[PyqgaAgent, LoopFs]) -> None:
    agent, a = agent_on_a
    with AgentClient(str(agent.socket_path), timeout=30) as client:
        assert client.call("guest-fsfreeze-freeze-list", {"mountpoints": [str(a)], "timeout": 30}) == 1
        info = client.call("guest-fsfreeze-info")
        recorded = state_of(agent)["freeze"]
        assert recorded["deadline"] == info["deadline"]
        assert info["deadline"] - info["frozen-at"] == pytest.approx(30)
        assert client.call("guest-fsfreeze-thaw") == 1


def test_thaw_does_not_wait_behind_commands_blocked_on_a_frozen_filesystem(tmp_path: Path,
                                                                          loops: LoopMounts) -> None:
    """Commands let through before a freeze (here: the freeze is someone else's, so nothing
    is gated) can hold every worker on a frozen filesystem; the thaw must still run."""
    a = loops.add("a")
    agent = start_agent(tmp_path, loops)
    blocked: list[socket.socket] = []
    try:
        with AgentClient(str(agent.socket_path), timeout=30) as client:
            handles = [client.call("guest-file-open", path=str(a.mountpoint / f"f{i}"), mode="w")
                       for i in range(6)]
            freeze_directly(a.mountpoint)
            for i, handle in enumerate(handles):  # more than the 4 workers, each blocks in fsync
                sock = agent.connect(10)
                sock.sendall(b'{"execute":"guest-file-write","arguments":{"handle":%d,"buf-b64":"eA=="}}'
                             b'{"execute":"guest-file-flush","arguments":{"handle":%d},"id":%d}\n'
                             % (handle, handle, i))
                blocked.append(sock)
            time.sleep(1)
            t0 = time.monotonic()
            assert client.call("guest-fsfreeze-thaw") == 1  # qemu-ga's thaw: the other tool's too
            assert time.monotonic() - t0 < 5
        for sock in blocked:
            sock.settimeout(10)
            assert b"return" in sock.recv(4096)
    finally:
        loops.thaw_all()
        for sock in blocked:
            sock.close()
        agent.stop()
