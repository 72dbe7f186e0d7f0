"""Fixtures of the host-side fault tests: a scripted agent on a real socket with an in-memory
fault book behind it (``fake``: what the agent holds, for the test to look at)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.host_client.fake_faults import FakeFaults
from tests.unit.host_client.scripted_agent import ScriptedAgent, scripted_agent


@pytest.fixture
def fake() -> FakeFaults:
    return FakeFaults()


@pytest.fixture
def agent(tmp_path: Path, fake: FakeFaults) -> Iterator[ScriptedAgent]:
    with scripted_agent(tmp_path / "agent.sock", fake.handlers()) as scripted:
        yield scripted
