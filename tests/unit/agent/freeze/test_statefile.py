"""The freeze state file (agent/freeze/statefile.py): written atomically, and what it did not
write refused as corrupt."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pyqga.agent.freeze.snapshot import CorruptState
from pyqga.agent.freeze.statefile import StateFile

# -- state file --------------------------------------------------------------------------------


def test_statefile_roundtrip(tmp_path: Path) -> None:
    store = StateFile(tmp_path / "state dir")
    assert store.read() is None
    snapshot = {"version": 1, "epoch": 3, "freeze": None, "superblocks": [], "last-thaw": None}
    store.write(snapshot)
    assert store.read() == snapshot
    store.write({**snapshot, "epoch": 4})
    assert store.read() == {**snapshot, "epoch": 4}
    assert os.listdir(store.directory) == ["pyqga.state"]  # no temporary files left


def test_statefile_refuses_what_it_did_not_write(tmp_path: Path) -> None:
    store = StateFile(tmp_path)
    store.path.write_text("{half")
    with pytest.raises(CorruptState, match="not valid JSON"):
        store.read()
    store.path.write_text("[1]")
    with pytest.raises(CorruptState, match="not a JSON object"):
        store.read()
    store.path.unlink()
    os.mkfifo(store.path)  # a FIFO would hang a plain open() and read() forever
    with pytest.raises(CorruptState, match="not a regular file"):
        store.read()
    store.path.unlink()
    (tmp_path / "elsewhere").write_text("{}")
    store.path.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(CorruptState, match="cannot open"):
        store.read()
    store.path.unlink()
    store.path.write_bytes(b" " * (2 << 20))
    with pytest.raises(CorruptState, match="larger than"):
        store.read()


def test_statefile_rejects_unserialisable_state(tmp_path: Path) -> None:
    store = StateFile(tmp_path / "s")
    with pytest.raises(TypeError):
        store.write({"epoch": object()})
    with pytest.raises(ValueError):
        store.write({"deadline": float("inf")})  # nothing non-finite is ever written
    assert store.read() is None
