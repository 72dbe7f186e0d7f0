"""An existing qemu-ga config file and environment mean the same to pyqga-agent (issue 19).

What qemu-ga 7.2 does was checked with its own -D; tests/differential/test_config.py runs both.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pyqga.agent import config as cfg
from pyqga.agent.registry import build_registry
from pyqga.agent.state import blocked_commands

QEMU_GA_CONF = """\
# /etc/qemu/qemu-ga.conf as qemu-ga's users write it
[general]
daemon=false
method=unix-listen
path=/run/qga.sock
logfile=\\s/var/log/qga\\\\x.log
pidfile=/run/qga.pid
fsfreeze-hook=/etc/qemu/fsfreeze-hook
statedir=/run/qga
verbose=1
retry-path=0
block-rpcs=guest-exec,guest-file-open
"""


def load(path: Path, *argv: str) -> cfg.Config:
    return cfg.from_args(cfg.build_parser().parse_args(["-c", str(path), *argv]))


def test_a_qemu_ga_config_file_is_read_with_qemu_gas_meaning(tmp_path: Path) -> None:
    conf = tmp_path / "qemu-ga.conf"
    conf.write_text(QEMU_GA_CONF)
    config = load(conf)
    assert (config.daemonize, config.method, config.path, config.pidfile) == (False, "unix-listen",
                                                                              "/run/qga.sock", "/run/qga.pid")
    assert config.logfile == " /var/log/qga\\x.log"  # glib's escapes undone
    assert (config.verbose, config.retry_path, config.statedir) == (True, False, "/run/qga")
    assert config.block_rpcs == ("guest-exec", "guest-file-open")
    conf.write_text("[general]\ndaemon=true\n")
    assert load(conf).daemonize is True
    conf.write_text("[general]\ndaemonize=1\n")  # pyqga's old spelling (the long option's name)
    assert load(conf).daemonize is True


def test_qga_conf_names_the_file_and_a_missing_one_is_no_error(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    conf = tmp_path / "qga.conf"
    conf.write_text("[general]\nmethod=isa-serial\n")
    monkeypatch.setenv("QGA_CONF", str(conf))
    config = cfg.from_args(cfg.build_parser().parse_args([]))
    assert (config.method, config.config_file) == ("isa-serial", str(conf))
    assert load(Path("/dev/null")).method == "virtio-serial"  # -c wins over QGA_CONF
    monkeypatch.setenv("QGA_CONF", str(tmp_path / "missing.conf"))  # qemu-ga: no file, no error
    assert cfg.from_args(cfg.build_parser().parse_args([])).config_file is None
    monkeypatch.setenv("QGA_CONF", str(tmp_path))  # but one it cannot read stops it
    with pytest.raises(cfg.ConfigError, match="cannot read config file"):
        cfg.from_args(cfg.build_parser().parse_args([]))
    with pytest.raises(cfg.ConfigError, match="no such file"):  # -c FILE must exist (qemu-ga 8)
        load(tmp_path / "missing.conf")


def test_lists_split_on_commas_as_in_qemu_ga_and_on_semicolons_as_before(tmp_path: Path) -> None:
    conf = tmp_path / "c.conf"
    for text in ("guest-exec,guest-file-open", "guest-exec;guest-file-open;", "guest-exec, guest-file-open"):
        conf.write_text(f"[general]\nblock-rpcs={text}\n")
        assert load(conf).block_rpcs == ("guest-exec", "guest-file-open"), text
    # -b adds to the file's list (qemu-ga concatenates them), and --blacklist is -b.
    assert load(conf, "-b", "guest-ping", "--blacklist", "guest-info").block_rpcs == (
        "guest-exec", "guest-file-open", "guest-ping", "guest-info")
    # qemu-ga 7.2 reads 'blacklist' instead of 'block-rpcs' when both are there.
    conf.write_text("[general]\nblock-rpcs=guest-ping\nblacklist=guest-exec\n")
    assert load(conf).block_rpcs == ("guest-exec",)
    # pyqga's glob lists keep GKeyFile's ';' (a glob may hold a comma).
    conf.write_text("[general]\nfreeze-include=/data[,]x;/srv*;\n")
    assert load(conf).freeze_include == ("/data[,]x", "/srv*")


@pytest.mark.parametrize(("text", "line", "reason"), [
    ("[general]\n\nverbose=yes\n", 3, "'verbose': 'yes' is not a boolean"),
    ("[general]\nmethod=unix-listen\nno-such-key=1\n", 3, "unknown key 'no-such-key'"),
    ("[general]\nlogfile=/a\\xb\n", 2, "invalid escape sequence"),
    ("# c\nnot a line\n", 2, "cannot read config file"),
    ("[general]\nfreeze-timeout=-1\n", 2, "freeze-timeout must be 0"),
    ("[general]\nmethod=carrier-pigeon\n", 2, "unknown method"),
    ("[general]\n#x\nmax-message-size=0\n", 3, "max-message-size must be"),
])
def test_errors_name_the_file_and_line(tmp_path: Path, text: str, line: int, reason: str) -> None:
    conf = tmp_path / "bad.conf"
    conf.write_text(text)
    with pytest.raises(cfg.ConfigError) as caught:
        load(conf)
    assert str(caught.value).startswith(f"{conf}:{line}: ") and reason in str(caught.value)


def test_an_unknown_command_names_the_line_and_the_separator_rule(tmp_path: Path) -> None:
    conf = tmp_path / "c.conf"
    conf.write_text("[general]\n\nblock-rpcs=guest-exec guest-file-open\n")
    with pytest.raises(cfg.ConfigError) as caught:
        blocked_commands(build_registry(), load(conf))
    message = str(caught.value)
    assert message.startswith(f"{conf}:3: block-rpcs: unknown command(s) guest-exec guest-file-open")
    assert "separated by ','" in message and "--block-rpcs=help" in message
    with pytest.raises(cfg.ConfigError, match=r"^allow-rpcs: unknown command\(s\) guest-pong"):
        blocked_commands(build_registry(), load(Path("/dev/null"), "-a", "guest-pong"))


def test_dump_is_qemu_gas_form_and_loads_back(tmp_path: Path) -> None:
    conf = tmp_path / "qemu-ga.conf"
    conf.write_text(QEMU_GA_CONF)
    original = load(conf, "--freeze-include", "/srv*", "--freeze-exclude", "/boot")
    text = cfg.dump(original)
    lines = text.splitlines()
    # qemu-ga's keys in qemu-ga's order and spelling, then pyqga's own.
    keys = [line.split("=")[0] for line in lines[1:]]
    assert lines[0] == "[general]"
    assert keys[:10] == ["daemon", "method", "path", "logfile", "pidfile", "fsfreeze-hook", "statedir",
                         "verbose", "retry-path", "block-rpcs"]
    assert "block-rpcs=guest-exec,guest-file-open" in lines and "logfile=\\s/var/log/qga\\\\x.log" in lines
    assert "freeze-include=/srv*;" in lines and "daemonize" not in keys and "blacklist" not in keys
    dumped = tmp_path / "dumped.conf"
    dumped.write_text(text)
    assert load(dumped) == original
    assert "block-rpcs=" in cfg.dump(load(Path("/dev/null"))).splitlines()  # printed even empty, as qemu-ga
