"""A config file means what it means to qemu-ga, and --check-config, -D and start-up agree on it.

Real agent processes with real config files and environments: a file that ``--check-config``
calls valid starts the agent, a file start-up refuses is refused by ``--check-config`` and ``-D``
with the same reason, its file and line (issue 19, sections 1 and 4).
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.rig.agent_process import ListeningProcess, agent_env, tmpfs_statedir
from tests.rig.loopfs import LoopMounts
from tests.rig.requirements import require_root


def agent(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-B", "-m", "pyqga.agent", *argv], capture_output=True,
                          text=True, env={**agent_env(), **(env or {})}, timeout=60)


@pytest.fixture
def state(tmp_path: Path) -> Path:
    tmpfs_statedir(tmp_path / "state")
    return tmp_path / "state"


def all_three(conf: Path, sock: Path) -> dict[str, subprocess.CompletedProcess[str]]:
    """The same file through --check-config, -D and a real start-up."""
    channel = ("-m", "unix-listen", "-p", str(sock))
    return {"check": agent(*channel, "--check-config", str(conf)),
            "dump": agent(*channel, "-c", str(conf), "-D"),
            "start": agent(*channel, "-c", str(conf))}


def assert_refused_alike(conf: Path, sock: Path, reason: str, line: int) -> None:
    results = all_three(conf, sock)
    assert results["check"].returncode == 1 and results["dump"].returncode != 0, results
    assert results["start"].returncode == 2, results["start"]
    for name, result in results.items():
        assert result.stdout == "", (name, result.stdout)  # nothing printed for a refused file
        assert f"{conf}:{line}: " in result.stderr and reason in result.stderr, (name, result.stderr)
    assert not sock.exists()


def test_statedir_on_a_disk_is_refused_by_all_three(tmp_path: Path) -> None:
    disk_dir = tmp_path / "on-root"  # tmp_path is on /, a filesystem the agent may freeze
    conf = tmp_path / "c.conf"
    conf.write_text(f"[general]\n# state\nstatedir={disk_dir}\n")
    agent("--check-config", str(conf))
    agent("-c", str(conf), "-D")
    assert not disk_dir.exists()  # --check-config and -D do not create it (start-up does)
    assert_refused_alike(conf, tmp_path / "s.sock", "which this agent may freeze", 3)


@pytest.mark.parametrize("kind", ["not executable", "a directory"])
def test_an_unusable_hook_is_refused_by_all_three(tmp_path: Path, state: Path, kind: str) -> None:
    hook = tmp_path / "hook"
    if kind == "a directory":
        hook.mkdir()
    else:
        hook.write_text("#!/bin/sh\nexit 0\n")
        hook.chmod(0o644)
    conf = tmp_path / "c.conf"
    conf.write_text(f"[general]\nstatedir={state}\nfsfreeze-hook={hook}\n")
    reason = "is not executable" if kind == "not executable" else "is not a regular file"
    assert_refused_alike(conf, tmp_path / "s.sock", reason, 3)


def test_a_log_file_in_a_missing_directory_is_refused_by_all_three(tmp_path: Path, state: Path) -> None:
    conf = tmp_path / "c.conf"
    conf.write_text(f"[general]\nstatedir={state}\n\nlogfile={tmp_path / 'no-dir' / 'agent.log'}\n")
    assert_refused_alike(conf, tmp_path / "s.sock", "its directory does not exist", 4)


@pytest.fixture
def loops(tmp_path: Path) -> Iterator[LoopMounts]:
    require_root()
    with LoopMounts(tmp_path / "mnt") as mounts:
        yield mounts


def test_a_log_file_on_a_read_only_filesystem_is_refused_by_all_three(
        tmp_path: Path, state: Path, loops: LoopMounts) -> None:
    read_only = loops.tmpfs(tmp_path / "mnt" / "ro")
    subprocess.run(["mount", "-o", "remount,ro", str(read_only)], check=True)
    conf = tmp_path / "c.conf"
    conf.write_text(f"[general]\nstatedir={state}\nlogfile={read_only / 'agent.log'}\n")
    assert_refused_alike(conf, tmp_path / "s.sock", "on a read-only filesystem", 3)


def test_an_unknown_command_names_the_separator_rule(tmp_path: Path, state: Path) -> None:
    conf = tmp_path / "c.conf"
    conf.write_text(f"[general]\nstatedir={state}\nblock-rpcs=guest-exec guest-file-open\n")
    assert_refused_alike(conf, tmp_path / "s.sock", "separated by ','", 3)


def test_a_missing_hook_is_a_warning_for_all_three_and_the_agent_starts(tmp_path: Path, state: Path) -> None:
    conf = tmp_path / "c.conf"
    conf.write_text(f"[general]\nstatedir={state}\nfsfreeze-hook={tmp_path / 'no-hook'}\n")
    sock = tmp_path / "s.sock"
    check = agent("--check-config", str(conf))
    assert check.returncode == 0 and "warning:" in check.stderr and "does not exist" in check.stderr
    dump = agent("-c", str(conf), "-D")
    assert dump.returncode == 0 and f"fsfreeze-hook={tmp_path / 'no-hook'}" in dump.stdout
    log = tmp_path / "agent.log"
    with ListeningProcess([sys.executable, "-B", "-m", "pyqga.agent", "-c", str(conf), "-m", "unix-listen",
                           "-p", str(sock)], sock, log, agent_env()):
        pass
    assert "does not exist" in log.read_text()


def call(sock_path: Path, command: str) -> object:
    import socket
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(sock_path))
        sock.sendall(json.dumps({"execute": command}).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            assert chunk, "connection closed"
            data += chunk
    return json.loads(data)["return"]


def test_a_qemu_ga_setup_starts_unchanged(tmp_path: Path, state: Path) -> None:
    """qemu-ga's config file through QGA_CONF, qemu-ga's keys and list form, QGA_OS_RELEASE:
    --check-config calls it valid, and the agent starts and serves with it."""
    sock = tmp_path / "qga.sock"
    hook = tmp_path / "fsfreeze-hook"
    hook.write_text("#!/bin/sh\nexit 0\n")
    hook.chmod(hook.stat().st_mode | stat.S_IXUSR)
    conf = tmp_path / "qemu-ga.conf"
    conf.write_text(f"[general]\ndaemon=false\nmethod=unix-listen\npath={sock}\nstatedir={state}\n"
                    f"fsfreeze-hook={hook}\nverbose=1\nretry-path=false\n"
                    "blacklist=guest-exec,guest-file-open\n")
    os_release = tmp_path / "os-release"
    os_release.write_text('ID=qemu-ga-test\nPRETTY_NAME="QEMU Guest Agent test"\n'
                          'VARIANT="Unit test \\"\'$`\\\\ and \\\\\\\\ etc."\n')
    env = {"QGA_CONF": str(conf), "QGA_OS_RELEASE": str(os_release)}
    check = agent("--check-config", str(conf))
    assert (check.returncode, check.stderr) == (0, ""), check.stderr
    command = [sys.executable, "-B", "-m", "pyqga.agent"]  # no options: all from QGA_CONF
    with ListeningProcess(command, sock, tmp_path / "agent.log", {**agent_env(), **env}):
        info = call(sock, "guest-info")
        assert isinstance(info, dict)
        disabled = {c["name"] for c in info["supported_commands"] if not c["enabled"]}
        faults = {c["name"] for c in info["supported_commands"] if c["name"].startswith("guest-fault-")}
        assert faults and disabled == {"guest-exec", "guest-file-open"} | faults, \
            "besides the fault commands (opt-in, off here), the -b list and only it"
        osinfo = call(sock, "guest-get-osinfo")
        assert isinstance(osinfo, dict)
        assert osinfo["id"] == "qemu-ga-test" and osinfo["pretty-name"] == "QEMU Guest Agent test"
        assert osinfo["variant"] == "Unit test \"'$`\\ and \\\\ etc."
    assert os.path.exists(conf)
