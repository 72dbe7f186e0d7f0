"""The caches of guest-get-osinfo and guest-get-fsinfo belong to the AgentState, not to modules."""

from __future__ import annotations

import os
from pathlib import Path

from pyqga.agent.commands.core import OsRelease, guest_get_osinfo
from pyqga.agent.commands.fsfreeze import guest_get_fsinfo
from pyqga.agent.commands.fsinfo import FsinfoCache
from pyqga.agent.config import Config
from pyqga.agent.state import AgentState


def test_os_release_is_read_once_and_again_when_the_file_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "os-release"
    path.write_text('ID=one\nPRETTY_NAME="One 1"\n')
    release = OsRelease((str(tmp_path / "missing"), str(path)))
    first = release.fields()
    assert first == {"id": "one", "pretty-name": "One 1"}
    assert release.fields() is first  # unchanged file: the same answer, not read again

    replacement = tmp_path / "os-release.new"
    replacement.write_text("ID=two\nVERSION_ID=2\n")
    os.replace(replacement, path)  # as a package upgrade does: a new inode
    assert release.fields() == {"id": "two", "version-id": "2"}
    assert OsRelease((str(tmp_path / "missing"),)).fields() == {}


def test_each_agent_owns_its_caches(tmp_path: Path) -> None:
    one = AgentState(Config(statedir=str(tmp_path / "one")))
    two = AgentState(Config(statedir=str(tmp_path / "two")))
    assert isinstance(one.os_release, OsRelease) and isinstance(one.fsinfo, FsinfoCache)
    assert one.os_release is not two.os_release
    assert one.fsinfo is not two.fsinfo


def test_the_commands_answer_through_the_agents_caches(tmp_path: Path) -> None:
    agent = AgentState(Config(statedir=str(tmp_path)))
    path = tmp_path / "os-release"
    path.write_text("ID=owned\n")
    agent.os_release = OsRelease((str(path),))
    assert guest_get_osinfo(agent)["id"] == "owned"

    answer = [{"mountpoint": "/owned"}]

    class Owned(FsinfoCache):
        def get(self) -> list[dict[str, object]]:
            return answer

    agent.fsinfo = Owned()
    assert guest_get_fsinfo(agent) is answer
