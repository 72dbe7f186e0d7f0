"""Fixtures of the agent's unit tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.rig.loopfs import LoopMounts, require_loop_support


@pytest.fixture
def spaced_loops(tmp_path: Path) -> Iterator[LoopMounts]:
    """Loop filesystems under a base dir whose name has a space, so every test using them
    exercises mountinfo's ``\\040`` escape."""
    require_loop_support()
    with LoopMounts(tmp_path / "loop fs") as lm:
        yield lm
