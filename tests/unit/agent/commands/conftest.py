"""Fixtures of the command tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.rig.side_by_side import Pair, side_by_side


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    """qemu-ga and pyqga side by side, shared by one test module."""
    with side_by_side(tmp_path_factory.mktemp("hw")) as peers:
        yield peers
