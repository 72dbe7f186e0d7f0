"""Seeded plans through a real agent on loop mounts (issue 20): the agent runs the schedule on
its own clock, the same seed gives the same schedule in another agent, and reverting the plan
ends what it started and cancels the rest."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pyqga.host_client import AgentClient
from tests.rig.freezing import start_agent
from tests.rig.loopfs import LoopMounts

LATE = 0.5   # how late a step may start on a loaded 2-CPU machine (the agent's clock, not the host's)


def steps(a: str, b: str) -> list[dict[str, Any]]:
    return [
        {"at": {"between": [0.2, 0.6]}, "kind": "disk-full", "target": {"one-of": [a, b]}, "duration": 0.4,
         "params": {"free-bytes": {"between": [0, 65536]}}},
        {"after": 0.3, "kind": "write-stall", "target": {"one-of": [a, b]},
         "duration": {"between": [0.2, 0.4]}},
    ]


def test_a_plan_runs_its_schedule_on_the_agent_s_clock(tmp_path: Path, loops: LoopMounts) -> None:
    a, b = (str(loops.add(name)) for name in ("a", "b"))
    agent = start_agent(tmp_path, loops, "--enable-faults")
    try:
        with AgentClient(str(agent.socket_path), timeout=30) as client:
            plan = client.call("guest-fault-plan", {"seed": 11, "steps": steps(a, b), "repeat": 2})
            assert plan["faults"] == 4 and len(plan["schedule"]) == 4
            time.sleep(max(0.0, plan["deadline"] - time.time()) + 0.3)
            assert client.call("guest-fault-list") == []
            events = client.call("guest-fault-events")["events"]
        started = next(e["mono"] for e in events if e["id"] == plan["id"] and e["event"] == "armed")
        armed = [e for e in events if e["event"] == "armed" and e.get("plan") == plan["id"]]
        assert len(armed) == 4, events
        for entry, event in zip(plan["schedule"], armed, strict=True):
            assert (event["kind"], event["target"]) == (entry["kind"], entry["target"])
            late = event["mono"] - (started + entry["at"])
            assert 0 <= late < LATE, f"step at {entry['at']} s started {late:.3f} s late"
            end = next(e for e in events if e["id"] == event["id"] and e["event"] in ("expired", "reverted"))
            assert end["event"] == "expired", end
        assert [e["event"] for e in events if e["id"] == plan["id"]] == ["armed", "fired", "expired"]
    finally:
        agent.stop()


def test_the_same_seed_gives_the_same_schedule_in_another_agent(tmp_path: Path, loops: LoopMounts) -> None:
    a, b = (str(loops.add(name)) for name in ("a", "b"))
    replies = []
    for name in ("first", "second"):
        agent = start_agent(tmp_path / name, loops, "--enable-faults")
        try:
            with AgentClient(str(agent.socket_path), timeout=30) as client:
                plan = {"seed": 5, "steps": steps(a, b), "repeat": 3}
                replies.append(client.call("guest-fault-plan", plan))
                assert client.call("guest-fault-revert", {"id": replies[-1]["id"]}) == 1
        finally:
            agent.stop()
    assert replies[0]["hash"] == replies[1]["hash"] and replies[0]["schedule"] == replies[1]["schedule"]


def test_reverting_a_plan_ends_its_faults_and_cancels_the_rest(tmp_path: Path, loops: LoopMounts) -> None:
    a = str(loops.add("a"))
    agent = start_agent(tmp_path, loops, "--enable-faults")
    try:
        with AgentClient(str(agent.socket_path), timeout=30) as client:
            plan = client.call("guest-fault-plan", {"seed": 1, "steps": [
                {"at": 0, "kind": "disk-full", "target": a, "duration": 30},
                {"at": 5, "kind": "write-stall", "target": a, "duration": 5}]})
            deadline = time.monotonic() + 5
            while len(client.call("guest-fault-list")) < 2:
                assert time.monotonic() < deadline, "the plan's first fault did not start"
                time.sleep(0.02)
            assert client.call("guest-fault-revert", {"id": plan["id"]}) == 1
            assert client.call("guest-fault-list") == []
            time.sleep(5.5)
            assert client.call("guest-fault-list") == [], "a cancelled plan started its next step"
            events = client.call("guest-fault-events")["events"]
        child = [e for e in events if e.get("plan") == plan["id"]]
        assert [(e["event"], e.get("reason")) for e in child] == [("armed", None), ("fired", None),
                                                                  ("reverted", "plan")], child
    finally:
        agent.stop()
