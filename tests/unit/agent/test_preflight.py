"""Start-up's checks of the machine, the one list --check-config and -D run too."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyqga.agent import preflight
from pyqga.agent.config import Config, ConfigError
from tests.rig.agent_process import tmpfs_statedir


@pytest.fixture
def state(tmp_path: Path) -> str:
    tmpfs_statedir(tmp_path / "state")
    return str(tmp_path / "state")


def messages(config: Config) -> list[tuple[str, bool]]:
    return [(f.message, f.fatal) for f in preflight.machine_findings(config)]


def test_a_good_configuration_has_no_findings(tmp_path: Path, state: str) -> None:
    hook = tmp_path / "hook"
    hook.write_text("#!/bin/sh\n")
    hook.chmod(0o755)
    assert messages(Config(statedir=state, fsfreeze_hook=str(hook), logfile=f"{state}/agent.log")) == []


def test_a_missing_statedir_is_judged_without_creating_it(tmp_path: Path, state: str) -> None:
    missing = Path(state) / "sub" / "dir"
    assert messages(Config(statedir=str(missing))) == [] and not missing.exists()
    blocker = Path(state) / "file"
    blocker.write_text("")
    [(message, fatal)] = messages(Config(statedir=str(blocker / "dir")))
    assert fatal and "cannot create state directory" in message and not (blocker / "dir").exists()
    on_disk = tmp_path / "on-disk"  # tmp_path is on /
    [(message, fatal)] = messages(Config(statedir=str(on_disk), origins={"statedir": "/x.conf:7"}))
    assert fatal and message.startswith("/x.conf:7: state directory") and "may freeze" in message


def test_hook_checks(tmp_path: Path, state: str) -> None:
    plain = tmp_path / "plain"
    plain.write_text("")
    [(message, fatal)] = messages(Config(statedir=state, fsfreeze_hook=str(plain)))
    assert fatal and "is not executable" in message and "chmod +x" in message
    [(message, fatal)] = messages(Config(statedir=state, fsfreeze_hook=str(tmp_path)))
    assert fatal and "not a regular file" in message
    [(message, fatal)] = messages(Config(statedir=state, fsfreeze_hook=str(tmp_path / "none")))
    assert not fatal and "does not exist" in message  # freezes skip a missing hook: a warning


def test_log_file_checks(tmp_path: Path, state: str) -> None:
    [(message, fatal)] = messages(Config(statedir=state, logfile=str(tmp_path / "no" / "x.log")))
    assert fatal and "its directory does not exist" in message
    [(message, fatal)] = messages(Config(statedir=state, logfile=str(tmp_path)))
    assert fatal and "is a directory" in message
    [(message, fatal)] = messages(Config(statedir=state, logfile=str(tmp_path / "x.log")))
    assert not fatal and "which this agent may freeze" in message  # records are held meanwhile


def test_warnings_pass_and_fatal_findings_stop_with_every_reason() -> None:
    assert preflight.warnings([preflight.Finding("w", fatal=False)]) == ["w"]
    findings = [preflight.Finding("a"), preflight.Finding("w", fatal=False), preflight.Finding("b")]
    with pytest.raises(ConfigError) as caught:
        preflight.warnings(findings)
    assert str(caught.value) == "a\nb"
