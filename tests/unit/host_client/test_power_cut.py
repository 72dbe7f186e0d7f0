"""``power_cut``: drop-writes through the agent, then the reset through the monitor, in that
order; a failed reset reverts the fault (the guest must not go on losing writes uncut)."""

from __future__ import annotations

import pytest

from pyqga.host_client import AgentClient
from pyqga.host_client.power_cut import power_cut
from tests.unit.host_client.scripted_agent import ScriptedAgent


class Monitor:
    def __init__(self, agent: ScriptedAgent, fails: bool = False) -> None:
        self.agent, self.fails = agent, fails
        self.seen: list[tuple[str, int]] = []

    def execute(self, command: str, arguments: dict[str, object] | None = None) -> object:
        self.seen.append((command, len(self.agent.requests)))   # how many agent requests came first
        if self.fails:
            raise OSError("monitor gone")
        return {}


def test_the_cut_starts_drop_writes_waits_then_resets(agent: ScriptedAgent) -> None:
    monitor, slept = Monitor(agent), []
    with AgentClient(agent.address, timeout=5) as client:
        lease, _ = power_cut(client, monitor, "/data", after=2.5, sleep=slept.append)
    assert (lease.kind, lease.target) == ("drop-writes", "/data")
    assert [name for name, _ in agent.requests] == ["guest-fault-inject"]
    assert monitor.seen == [("system_reset", 1)] and slept == [2.5]


def test_a_failed_reset_reverts_the_fault_and_raises(agent: ScriptedAgent) -> None:
    with AgentClient(agent.address, timeout=5) as client, pytest.raises(OSError, match="monitor gone"):
        power_cut(client, Monitor(agent, fails=True), "/data")
    assert [name for name, _ in agent.requests] == ["guest-fault-inject", "guest-fault-revert"]
