"""qemu-ga's command line and config file, and the registry's listings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pyqga.agent import config as cfg
from pyqga.agent.registry import build_registry
from pyqga.agent.state import AgentState
from tests.rig.agent_process import agent_env, tmpfs_statedir


def parse(*argv: str) -> cfg.Config:
    return cfg.from_args(cfg.build_parser().parse_args(["-c", os.devnull, *argv]))


def run_agent(*argv: str) -> subprocess.CompletedProcess[str]:
    env = agent_env()
    return subprocess.run([sys.executable, "-B", "-m", "pyqga.agent", *argv], capture_output=True, text=True,
                          env=env, timeout=30)


def test_defaults_match_qemu_ga() -> None:
    config = parse()
    assert config.method == "virtio-serial"
    assert config.channel_path == "/dev/virtio-ports/org.qemu.guest_agent.0"
    assert config.statedir == "/run/pyqga"
    assert config.fsfreeze_hook is None


def test_command_line_overrides_config_file(tmp_path: Path) -> None:
    conf = tmp_path / "pyqga.conf"
    conf.write_text("[general]\nmethod=unix-listen\npath=/tmp/a.sock\nverbose=true\n"
                    "block-rpcs=guest-get-time;guest-ping;\nfsfreeze-hook=/x/hook\n")
    config = cfg.from_args(cfg.build_parser().parse_args(["-c", str(conf), "-p", "/tmp/b.sock"]))
    assert (config.method, config.path, config.verbose) == ("unix-listen", "/tmp/b.sock", True)
    assert config.block_rpcs == ("guest-get-time", "guest-ping")
    assert config.fsfreeze_hook == "/x/hook"


def test_dump_conf_loads_back_to_the_same_config(tmp_path: Path) -> None:
    original = parse("-m", "unix-listen", "-p", "/tmp/x.sock", "-b", "guest-get-time,guest-get-osinfo",
                     "-F", "--freeze-include", "/data*", "-v")
    dumped = tmp_path / "dumped.conf"
    dumped.write_text(cfg.dump(original))
    reloaded = cfg.from_args(cfg.build_parser().parse_args(["-c", str(dumped)]))
    assert reloaded == original
    assert "block-rpcs=guest-get-time,guest-get-osinfo\n" in dumped.read_text()  # qemu-ga's list form
    assert f"fsfreeze-hook={cfg.DEFAULT_HOOK}" in dumped.read_text()


def test_bad_config_values_are_clear_errors(tmp_path: Path) -> None:
    conf = tmp_path / "bad.conf"
    conf.write_text("[general]\nverbose=maybe\n")
    with pytest.raises(cfg.ConfigError, match=r"'verbose'.*not a boolean"):
        cfg.load_file(str(conf))
    conf.write_text("[general]\nno-such-key=1\n")
    with pytest.raises(cfg.ConfigError, match="unknown key 'no-such-key'"):
        cfg.load_file(str(conf))
    with pytest.raises(cfg.ConfigError, match="cannot read config file"):
        cfg.load_file(str(tmp_path / "missing.conf"))


def test_unknown_blocked_command_is_refused() -> None:
    with pytest.raises(cfg.ConfigError, match=r"unknown command.*guest-pong"):
        AgentState(parse("-b", "guest-pong"))


def test_a_qemu_ga_command_pyqga_lacks_may_be_named_as_in_qemu_ga() -> None:
    """A qemu-ga configuration that blocks guest-get-devices (listed but never run on Linux)
    starts pyqga too: nothing to block, no typo.  A real typo beside it is still refused."""
    for option in ("-b", "-a"):
        agent = AgentState(parse(option, "guest-get-devices,guest-ping"))
        assert "guest-get-devices" not in agent.registry.names()
        assert ("guest-ping" in agent.blocked) == (option == "-b")
    with pytest.raises(cfg.ConfigError, match=r"unknown command.*guest-pong"):
        AgentState(parse("-b", "guest-get-devices,guest-pong"))


def test_cli_help_dump_and_rpc_listing(tmp_path: Path) -> None:
    listing = run_agent("-b", "help")
    assert listing.returncode == 0
    names = [line.split()[0] for line in listing.stdout.splitlines() if not line.startswith(" ")]
    assert names == build_registry().names()
    assert "guest-sync id:integer" in listing.stdout and "[mountpoints:array]" in listing.stdout
    tmpfs_statedir(tmp_path / "state")  # -D checks as start-up does: / is a disk here
    dumped = run_agent("-c", os.devnull, "-D", "-m", "unix-listen", "-p", "/tmp/q.sock",
                       "-t", str(tmp_path / "state"))
    assert dumped.returncode == 0 and dumped.stdout.startswith("[general]\n")
    assert "path=/tmp/q.sock" in dumped.stdout
    helped = run_agent("--help")
    assert helped.returncode == 0 and "--fsfreeze-hook" in helped.stdout and "(qemu-ga)" in helped.stdout
    version = run_agent("-V")
    assert version.returncode == 0 and version.stdout.startswith("pyqga-agent ")
    bad = run_agent("-c", os.devnull, "-b", "nope-cmd", "-m", "unix-listen", "-p", "/tmp/z.sock")
    assert bad.returncode == 2 and "unknown command" in bad.stderr


@pytest.fixture
def shm_statedir(tmp_path: Path) -> Path:
    """A state directory the agent accepts: on tmpfs, private."""
    tmpfs_statedir(tmp_path / "state")
    return tmp_path / "state"


def test_missing_channel_device_fails_with_a_clear_message(tmp_path: Path, shm_statedir: Path) -> None:
    device = tmp_path / "no-such-port"
    result = run_agent("-c", os.devnull, "-m", "virtio-serial", "-p", str(device), "-t", str(shm_statedir))
    assert result.returncode == 1
    assert f"cannot open virtio-serial channel {device}" in result.stderr and "-r waits" in result.stderr


def test_vsock_address_is_checked(shm_statedir: Path) -> None:
    result = run_agent("-c", os.devnull, "-m", "vsock-listen", "-p", "nonsense", "-t", str(shm_statedir))
    assert result.returncode == 1 and "CID:PORT" in result.stderr


def test_registry_params_are_checked_in_qemu_words() -> None:
    sync = build_registry().get("guest-sync")
    assert sync is not None
    assert sync.check_params({"id": 3}) == {"id": 3}
    assert sync.check_params([4]) == {"id": 4}
    for params, text in (({}, "Parameter 'id' is missing"), ({"id": True}, "expected: integer"),
                         ({"id": 1, "x": 2}, "Parameter 'x' is unexpected")):
        with pytest.raises(Exception, match=text):
            sync.check_params(params)


def test_check_config_validates_and_exits(tmp_path: Path) -> None:
    good = tmp_path / "good.conf"
    tmpfs_statedir(tmp_path / "state")  # checked as start-up does: / is a disk here
    good.write_text(f"[general]\nblock-rpcs=guest-exec;guest-file-open;\nfreeze-timeout=30\n"
                    f"statedir={tmp_path / 'state'}\n")
    result = run_agent("--check-config", str(good))
    assert (result.returncode, result.stdout) == (0, f"{good}: valid\n")
    for text, reason in (("[general]\nblock-rpcs=guest-nope;\n", "unknown command(s) guest-nope"),
                         ("[general]\nfreeze-timeout=-1\n", "freeze-timeout must be 0"),
                         ("[general]\nverbos=1\n", "unknown key 'verbos'"),
                         ("no section\n", "cannot read config file")):
        good.write_text(text)
        result = run_agent("--check-config", str(good))
        assert result.returncode == 1 and reason in result.stderr, (text, result.stderr)
        assert result.stdout == ""
    result = run_agent("--check-config", str(tmp_path / "missing.conf"))
    assert result.returncode == 1 and "cannot read config file" in result.stderr
