"""Freeze and thaw through the agent process, on real loop-mounted filesystems.

Every agent here runs with ``--freeze-include`` limited to the test's own mounts, so even a
freeze-all can only reach filesystems the test made.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from pyqga.host_client import AgentCallError, AgentClient
from tests.rig.agent_process import PyqgaAgent
from tests.rig.freezing import start_agent, start_writer, write_hook
from tests.rig.loopfs import LoopMounts, freeze_directly, thaw_fully

# qemu-ga's six, plus our read-only freeze query.
FROZEN_ALLOWED = {"guest-ping", "guest-info", "guest-sync", "guest-sync-delimited",
                  "guest-fsfreeze-status", "guest-fsfreeze-thaw", "guest-fsfreeze-info"}


def test_freeze_list_blocks_writers_gates_commands_and_thaw_releases(
    tmp_path: Path, loops: LoopMounts
) -> None:
    a, b = loops.add("a"), loops.add("b")
    agent = start_agent(tmp_path, loops)
    try:
        with AgentClient(str(agent.socket_path), dialect="qga", timeout=30) as client:
            assert client.call("guest-fsfreeze-status") == "thawed"
            assert client.call("guest-fsfreeze-freeze-list", mountpoints=[str(a), str(b)]) == 2
            writer = start_writer(a.mountpoint / "log.txt")
            time.sleep(0.5)
            assert writer.poll() is None, "a writer finished on a frozen filesystem"
            assert client.call("guest-fsfreeze-status") == "frozen"
            client.ping()
            assert client.call("guest-sync", id=4) == 4
            with pytest.raises(AgentCallError) as caught:
                client.call("guest-get-time")
            assert caught.value.error_class == "CommandNotFound"
            assert "has been disabled: the agent is in frozen state" in str(caught.value)
            enabled = {c["name"] for c in client.info()["supported_commands"] if c["enabled"]}
            assert enabled == FROZEN_ALLOWED
            assert client.call("guest-fsfreeze-thaw") == 2
            assert writer.wait(20) == 0
            assert client.call("guest-fsfreeze-status") == "thawed"
            assert client.call("guest-fsfreeze-thaw") == 0
    finally:
        agent.stop()
    assert (a.mountpoint / "log.txt").read_text() == "line\n"


def test_freeze_all_is_limited_by_include_filter(tmp_path: Path, loops: LoopMounts) -> None:
    inside = [loops.add(name) for name in ("x", "y", "z")]
    outside = loops.add("outside", mountpoint=tmp_path / "outside")  # not matched by --freeze-include
    agent = start_agent(tmp_path, loops)
    try:
        with AgentClient(str(agent.socket_path), timeout=30) as client:
            assert client.call("guest-fsfreeze-freeze") == 3
            writers = [start_writer(fs.mountpoint / "log.txt") for fs in [*inside, outside]]
            deadline = time.monotonic() + 20
            while writers[-1].poll() is None and time.monotonic() < deadline:
                time.sleep(0.01)
            assert writers[-1].poll() == 0, "the filesystem outside the include filter was frozen"
            time.sleep(0.5)
            blocked = [str(fs) for fs, w in zip(inside, writers[:-1], strict=True) if w.poll() is None]
            assert blocked == [str(fs) for fs in inside], "a filesystem in the include filter was not frozen"
            frozen = {entry["mountpoint"] for entry in client.call("guest-fsfreeze-info")["frozen"]}
            assert frozen == {str(fs) for fs in inside}
            assert client.call("guest-fsfreeze-thaw") == 3
            assert [writer.wait(20) for writer in writers[:-1]] == [0, 0, 0]
    finally:
        agent.stop()
    assert loops.thaw_all() == 0
    assert [(fs.mountpoint / "log.txt").read_text() for fs in loops.filesystems] == ["line\n"] * 4


def test_freeze_list_rejects_non_mount_point_and_freezes_nothing(tmp_path: Path, loops: LoopMounts) -> None:
    a = loops.add("a")
    agent = start_agent(tmp_path, loops)
    try:
        with AgentClient(str(agent.socket_path), dialect="qga", timeout=30) as client:
            with pytest.raises(AgentCallError) as caught:
                client.call("guest-fsfreeze-freeze-list", mountpoints=[str(a), str(tmp_path)])
            assert caught.value.error_class == "GenericError"
            assert str(tmp_path) in str(caught.value) and "not a mount point" in str(caught.value)
            assert client.call("guest-fsfreeze-status") == "thawed"
    finally:
        agent.stop()
    assert thaw_fully(a.mountpoint) == 0


def test_externally_frozen_fs_is_skipped_then_counted_by_thaw(tmp_path: Path, loops: LoopMounts) -> None:
    a, b = loops.add("a"), loops.add("b")
    freeze_directly(a.mountpoint)  # as `fsfreeze -f` would
    agent = start_agent(tmp_path, loops)
    try:
        with AgentClient(str(agent.socket_path), timeout=30) as client:
            assert client.call("guest-fsfreeze-freeze-list", mountpoints=[str(a), str(b)]) == 1
            assert client.call("guest-fsfreeze-thaw") == 2
    finally:
        agent.stop()


def test_restart_while_frozen_starts_frozen_and_thaw_works(tmp_path: Path, loops: LoopMounts) -> None:
    """qemu-ga's rule, kept with --on-agent-death stay (by default a guard thaws instead)."""
    a = loops.add("a")
    first = start_agent(tmp_path, loops, "--on-agent-death", "stay")
    with AgentClient(str(first.socket_path), timeout=30) as client:
        assert client.call("guest-fsfreeze-freeze-list", mountpoints=[str(a)]) == 1
    first.stop(signal.SIGKILL)
    state = json.loads((first.statedir / "pyqga.state").read_text())
    assert [sb["path"] for sb in state["superblocks"]] == [str(a)] and state["freeze"]["epoch"] == 1
    second = start_agent(tmp_path, loops, "--on-agent-death", "stay")
    try:
        with AgentClient(str(second.socket_path), dialect="qga", timeout=30) as client:
            assert client.call("guest-fsfreeze-status") == "frozen"
            with pytest.raises(AgentCallError, match="disabled"):
                client.call("guest-fsfreeze-freeze")
            assert client.call("guest-fsfreeze-thaw") == 1
            assert client.call("guest-fsfreeze-status") == "thawed"
    finally:
        second.stop()
    state = json.loads((second.statedir / "pyqga.state").read_text())
    assert state["superblocks"] == [] and state["freeze"] is None
    assert state["last-thaw"]["epoch"] == 1 and state["last-thaw"]["reason"] == "request"


def test_log_file_on_frozen_filesystem_does_not_hang_the_agent(tmp_path: Path, loops: LoopMounts) -> None:
    a = loops.add("a")
    logfile = a.mountpoint / "agent.log"
    agent = start_agent(tmp_path, loops, "-l", str(logfile), "-v")
    try:
        with AgentClient(str(agent.socket_path), timeout=10) as client:
            assert client.call("guest-fsfreeze-freeze-list", mountpoints=[str(a)]) == 1
            for n in range(20):
                client.ping()
                assert client.call("guest-fsfreeze-status") == "frozen"
                with pytest.raises(AgentCallError):
                    client.call("guest-get-osinfo")  # refused: also logged, also held
                assert client.call("guest-sync", id=n) == n
            assert client.call("guest-fsfreeze-thaw") == 1
            client.ping()
    finally:
        assert agent.stop() == 0
    text = logfile.read_text()
    assert "froze 1 filesystem(s)" in text and "thawed 1 filesystem(s)" in text


def test_hooks_run_around_freeze_and_failures_abort(tmp_path: Path, loops: LoopMounts) -> None:
    a = loops.add("a")
    record = tmp_path / "hook.log"
    hook = write_hook(tmp_path / "hook", f'echo "$1" >> {record}\n[ -e {tmp_path}/fail ] && exit 3\n'
                      f'[ -e {tmp_path}/hang ] && sleep 30\nexit 0\n')
    agent = start_agent(tmp_path, loops, "-F" + str(hook), "--fsfreeze-hook-timeout", "1")
    try:
        with AgentClient(str(agent.socket_path), timeout=30) as client:
            assert client.call("guest-fsfreeze-freeze-list", mountpoints=[str(a)]) == 1
            assert client.call("guest-fsfreeze-thaw") == 1
            assert record.read_text().split() == ["freeze", "thaw"]

            (tmp_path / "fail").touch()
            with pytest.raises(AgentCallError, match=r"hook.*freeze failed: exit status 3"):
                client.call("guest-fsfreeze-freeze-list", mountpoints=[str(a)])
            assert client.call("guest-fsfreeze-status") == "thawed"
            assert thaw_fully(a.mountpoint) == 0
            (tmp_path / "fail").unlink()

            (tmp_path / "hang").touch()
            start = time.monotonic()
            with pytest.raises(AgentCallError, match="timeout"):
                client.call("guest-fsfreeze-freeze-list", mountpoints=[str(a)])
            assert time.monotonic() - start < 15
            (tmp_path / "hang").unlink()
            # We differ from qemu-ga: the thaw hook runs whenever the freeze hook ran.
            assert record.read_text().split()[2:] == ["freeze", "thaw", "freeze", "thaw"]
    finally:
        agent.stop()


def test_no_module_is_imported_while_frozen(tmp_path: Path, loops: LoopMounts) -> None:
    """A lazy import while frozen could read or compile code on a frozen filesystem and hang.

    ``python -v`` reports every import on stderr; nothing may appear between the first freeze
    and the end of the thaw, whatever the allowed commands do meanwhile.
    """
    a = loops.add("a")
    hook = write_hook(tmp_path / "hook", "exit 0\n")
    agent = PyqgaAgent(tmp_path / "agent", ["--freeze-include", loops.glob(), "-F" + str(hook)],
                       python_args=["-v"])
    agent.start()
    try:
        with AgentClient(str(agent.socket_path), dialect="qga", timeout=30) as client:
            client.ping()  # the first request warms every path a request takes
            before = agent.log_path.stat().st_size
            assert client.call("guest-fsfreeze-freeze-list", mountpoints=[str(a)]) == 1
            for method in sorted(FROZEN_ALLOWED - {"guest-fsfreeze-thaw", "guest-sync",
                                                   "guest-sync-delimited"}):
                client.call(method)
            client.call("guest-sync", id=1)
            client.sync()
            with pytest.raises(AgentCallError):
                client.call("guest-get-osinfo")
            assert client.call("guest-fsfreeze-thaw") == 1
    finally:
        agent.stop()
    with open(agent.log_path, "rb") as log:
        log.seek(before)
        during = log.read().decode(errors="replace").splitlines()
    imports = [line for line in during if line.startswith(("import ", "# code object from", "# trying"))]
    assert not imports, imports[:10]


def test_fsinfo_and_fstrim_through_the_agent(tmp_path: Path, loops: LoopMounts) -> None:
    a = loops.add("a", size_mb=32)
    (a.mountpoint / "data").write_bytes(os.urandom(1 << 20))
    agent = start_agent(tmp_path, loops)
    try:
        with AgentClient(str(agent.socket_path), dialect="qga", timeout=30) as client:
            info = {fs["mountpoint"]: fs for fs in client.call("guest-get-fsinfo")}
            trimmed = client.call("guest-fstrim", minimum=0)
    finally:
        agent.stop()
    mine = info[str(a.mountpoint)]
    assert mine["type"] == "ext4" and mine["name"].startswith("loop")
    assert 0 < mine["used-bytes"] < mine["total-bytes"] <= 32 << 20
    assert [p["path"] for p in trimmed["paths"]] == [str(a.mountpoint)]
    [entry] = trimmed["paths"]
    # A loop device supports discard: no "error", and the first FITRIM after mounting discards
    # every free block, at least what statvfs calls available and at most the whole image.
    assert entry.keys() == {"path", "trimmed", "minimum"}, entry
    assert entry["path"] == str(a.mountpoint)
    # We asked for 0; kernels before 6.x report back the discard granularity they rounded it up to.
    granularity = int(Path(f"/sys/block/{Path(a.device).name}/queue/discard_granularity").read_text())
    assert entry["minimum"] in (0, granularity), (entry, granularity)
    assert mine["total-bytes"] - mine["used-bytes"] <= entry["trimmed"] <= 32 << 20, (entry, mine)
