"""The pid file as untrusted input (issue 13, item 5): root must never follow a planted link."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pyqga.agent.pidfile import PidFile, PidFileError


def test_a_symlink_pid_file_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    target = tmp_path / "precious"
    target.write_text("keep me\n")
    (tmp_path / "pyqga.pid").symlink_to(target)
    with pytest.raises(PidFileError, match="is a symbolic link; remove it"):
        PidFile(str(tmp_path / "pyqga.pid")).acquire()
    assert target.read_text() == "keep me\n"


def test_a_fifo_pid_file_is_refused_without_hanging(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pyqga.pid")
    with pytest.raises(PidFileError, match="is not a regular file"):
        PidFile(str(tmp_path / "pyqga.pid")).acquire()


def test_a_regular_pid_file_holds_our_pid_and_goes_on_release(tmp_path: Path) -> None:
    path = str(tmp_path / "pyqga.pid")
    first = PidFile(path)
    first.acquire()
    try:
        assert Path(path).read_text() == f"{os.getpid()}\n"
    finally:
        first.release()
    assert not Path(path).exists()
