"""A fault plan across guests (issue 21): real agents on unix sockets, each standing for a guest,
pausing ``sleep`` processes this test started (process-pause: safe on the host).

Checked: every guest runs exactly its part of the schedule the seed drew (the same seed gives
the same schedule and hash again); the merged timeline has both guests' events, in order, on
the host's clock; a guest that refuses its part leaves nothing running on the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pyqga.host_client import AgentCallError, AgentClient
from pyqga.host_client.group_plan import GroupPlanFailed, start_group_plan
from tests.rig.agent_process import REPO_ROOT, PyqgaAgent, own_processes, process_state
from tests.rig.requirements import require_root

ENDS = ("reverted", "expired")
LATE = 0.5   # how late a step may start on a loaded 2-CPU machine (the agent's clock)


@pytest.fixture
def sleepers() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Three sleep processes of this test's own: the targets."""
    with own_processes([shutil.which("sleep") or "/bin/sleep", "600"], 3) as started:
        yield started


def agents(tmp_path: Path, names: str, *extra: str) -> contextlib.ExitStack:
    stack = contextlib.ExitStack()
    for name in names:
        stack.enter_context(PyqgaAgent(tmp_path / name, ["--enable-faults", *extra]))
    return stack


def address(tmp_path: Path, name: str) -> str:
    return str(tmp_path / name / "agent.sock")


def partition_like(pids: list[int]) -> list[dict[str, Any]]:
    """Pause a's process, then b's, with drawn times and durations, then both at once."""
    return [
        {"guest": "a", "at": {"between": [0.1, 0.3]}, "kind": "process-pause", "target": f"pid:{pids[0]}",
         "duration": {"between": [0.3, 0.5]}},
        {"guest": "b", "after": 0.1, "kind": "process-pause", "target": f"pid:{pids[1]}",
         "duration": 0.3},
        {"guest": {"one-of": ["a", "b"]}, "after": 0.1, "kind": "process-pause",
         "target": {"one-of": [f"pid:{pids[2]}"]}, "duration": {"between": [0.2, 0.4]}},
    ]


def test_a_plan_across_two_guests_runs_each_part_and_merges_the_timelines(
        tmp_path: Path, sleepers: list[subprocess.Popen[bytes]]) -> None:
    require_root()
    pids = [p.pid for p in sleepers]
    with agents(tmp_path, "ab"):
        async def run() -> tuple[dict[str, Any], list[dict[str, Any]], list[str]]:
            guests = {"a": address(tmp_path, "a"), "b": address(tmp_path, "b")}
            async with await start_group_plan(guests, 7, partition_like(pids), timeout=30) as plan:
                seen = []
                # While a's first pause holds, its process is stopped and b's is not.
                give_up = time.monotonic() + 5
                while process_state(pids[0]) != "T" and time.monotonic() < give_up:
                    await asyncio.sleep(0.005)
                seen.append(process_state(pids[0]) + process_state(pids[1]))
                timeline = [event.as_dict() for event in await plan.wait(interval=0.1)]
                return plan.as_dict(), timeline, seen

        summary, timeline, seen = asyncio.run(run())
        assert seen == ["TS"], seen
        for name in "ab":
            with AgentClient(address(tmp_path, name), timeout=10) as client:
                assert client.call("guest-fault-list") == []
    assert all(process_state(pid) != "T" for pid in pids)
    schedule = summary["schedule"]
    assert [entry["guest"] for entry in schedule[:2]] == ["a", "b"] and len(schedule) == 3
    assert summary["guests"]["a"]["faults"] + summary["guests"]["b"]["faults"] == 3
    print(f"skew {summary['skew'] * 1000:.2f} ms +- {summary['skew-uncertainty'] * 1000:.2f} ms; "
          + ", ".join(f"{n}: +-{g['uncertainty'] * 1000:.2f} ms" for n, g in summary["guests"].items()))
    assert summary["skew"] < 0.02, summary   # one origin on both clocks (measured: under 1 ms)

    # One axis: ordered, both guests, each fault at its scheduled time (within the mapping's error).
    assert [e["t"] for e in timeline] == sorted(e["t"] for e in timeline)
    assert {e["guest"] for e in timeline} == {"a", "b"}
    armed = [e for e in timeline if e["event"] == "armed" and e["kind"] == "process-pause"]
    assert [(e["guest"], e["target"]) for e in armed] == [(s["guest"], s["target"]) for s in schedule]
    for entry, event in zip(schedule, armed, strict=True):
        guest = summary["guests"][entry["guest"]]
        error = guest["uncertainty"] + summary["skew"] + summary["skew-uncertainty"]
        late = event["t"] - entry["at"]
        print(f"{entry['guest']}: step at {entry['at']:.3f} s armed {late * 1000:+.1f} ms late")
        assert -error <= late < LATE + error, (entry, event, summary)
    ends = [e for e in timeline if e["event"] in ("expired", "reverted") and e["kind"] == "process-pause"]
    assert len(ends) == 3 and all(e["event"] == "expired" for e in ends), ends
    assert sum(1 for e in timeline if e["kind"] == "plan" and e["event"] == "expired") == 2


def test_the_same_seed_gives_the_same_schedule_and_hash_again(
        tmp_path: Path, sleepers: list[subprocess.Popen[bytes]]) -> None:
    require_root()
    pids = [p.pid for p in sleepers]
    summaries = []
    for run_ in ("first", "second"):
        with agents(tmp_path / run_, "ab"):
            async def run(where: Path = tmp_path / run_) -> dict[str, Any]:
                guests = {"a": address(where, "a"), "b": address(where, "b")}
                async with await start_group_plan(guests, 1234, partition_like(pids), repeat=2) as plan:
                    return plan.as_dict()

            summaries.append(asyncio.run(run()))
    first, second = summaries
    assert first["hash"] == second["hash"] and first["schedule"] == second["schedule"]
    assert [g["hash"] for g in first["guests"].values()] == [g["hash"] for g in second["guests"].values()]
    assert len(first["schedule"]) == 6


@pytest.mark.parametrize("lead", [0.0, 0.3])
def test_a_guest_that_refuses_its_part_leaves_nothing_on_the_others(
        tmp_path: Path, sleepers: list[subprocess.Popen[bytes]], lead: float) -> None:
    """Three guests; b's agent answers capabilities but has guest-fault-plan blocked.  The parts
    of a and c (each pausing its process at the origin, already passed or still ahead) are
    reverted, and their processes run again."""
    require_root()
    pids = [p.pid for p in sleepers]
    steps = [{"guest": name, "at": 0, "kind": "process-pause", "target": f"pid:{pid}", "duration": 60}
             for name, pid in zip("abc", pids, strict=True)]
    with agents(tmp_path, "ac"), agents(tmp_path, "b", "-b", "guest-fault-plan"):
        guests = {name: address(tmp_path, name) for name in "abc"}
        with pytest.raises(GroupPlanFailed) as failed:
            asyncio.run(start_group_plan(guests, 3, steps, timeout=30, lead=lead))
        assert failed.value.guest == "b" and failed.value.left == ()
        message = str(failed.value)
        assert "guest b" in message and "guest-fault-plan" in message, message
        assert "the parts of a, c were reverted; nothing was left behind" in message, message
        time.sleep(lead + 0.2)   # past the origin: a cancelled part starts nothing
        for name in "ac":
            with AgentClient(address(tmp_path, name), timeout=10) as client:
                assert client.call("guest-fault-list") == []
                events = client.call("guest-fault-events")["events"]
            assert [e["event"] for e in events if e["kind"] == "plan"][-1] == "reverted", events
            pauses = [e for e in events if e["kind"] == "process-pause" and e["event"] in ENDS]
            assert all(e.get("reason") == "plan" for e in pauses), pauses
    assert all(process_state(pid) != "T" for pid in pids)


def test_an_agent_refuses_a_start_too_far_from_its_clock(tmp_path: Path) -> None:
    require_root()
    step = {"at": 0, "kind": "process-pause", "target": "pid:999999999", "duration": 1}
    with agents(tmp_path, "a"), AgentClient(address(tmp_path, "a"), timeout=10) as client:
        mono = client.call("guest-fault-events", {"since": 1 << 53})["mono"]
        for start, says in ((mono + 3600, "at most 60 s"), (mono - 30, "s ago on this guest's monotonic")):
            with pytest.raises(AgentCallError, match=says):
                client.call("guest-fault-plan", {"seed": 1, "steps": [step], "start": start})
        assert client.call("guest-fault-list") == []
        ahead = client.call("guest-fault-plan", {"seed": 1, "steps": [step], "start": mono + 5})
        assert ahead["start"] == pytest.approx(mono + 5)
        assert client.call("guest-fault-revert", {"id": ahead["id"]}) == 1


def test_the_cli_prints_the_plan_and_the_merged_events(tmp_path: Path,
                                                       sleepers: list[subprocess.Popen[bytes]]) -> None:
    require_root()
    pids = [p.pid for p in sleepers]
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps({"seed": 9, "steps": partition_like(pids)}))
    with agents(tmp_path, "ab"):
        done = subprocess.run(
            [sys.executable, "-m", "pyqga.host_client", "fault", "plan", str(plan_file), "--wait",
             "--guest", f"a={address(tmp_path, 'a')}", "--guest", f"b=unix:{address(tmp_path, 'b')}"],
            capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    summary, *events = (json.loads(line) for line in done.stdout.splitlines())
    assert summary["faults"] == 3 and set(summary["guests"]) == {"a", "b"}
    assert [e["t"] for e in events] == sorted(e["t"] for e in events)
    assert {e["guest"] for e in events} == {"a", "b"}
    assert sum(1 for e in events if e["event"] == "armed" and e["kind"] == "process-pause") == 3
    assert [e["event"] for e in events if e["kind"] == "plan"][-2:] == ["expired", "expired"]


def test_reverting_the_group_plan_reverts_every_part(tmp_path: Path,
                                                     sleepers: list[subprocess.Popen[bytes]]) -> None:
    require_root()
    pids = [p.pid for p in sleepers]
    steps = [{"guest": name, "at": 0, "kind": "process-pause", "target": f"pid:{pid}", "duration": 60}
             for name, pid in zip("ab", pids[:2], strict=True)]
    with agents(tmp_path, "ab"):
        async def run() -> dict[str, bool]:
            guests = {name: address(tmp_path, name) for name in "ab"}
            async with await start_group_plan(guests, 5, steps, lead=0.1) as plan:
                give_up = time.monotonic() + 5
                while not all(process_state(pid) == "T" for pid in pids[:2]):
                    assert time.monotonic() < give_up, "the pauses did not start"
                    await asyncio.sleep(0.01)
                ended = await plan.revert()
                assert all(process_state(pid) != "T" for pid in pids[:2])
                timeline = await plan.wait(interval=0.05)
            reasons = {(e.guest, e.event.kind): e.event.reason for e in timeline if e.event.ends_lease}
            assert reasons == {("a", "plan"): "revert", ("b", "plan"): "revert",
                               ("a", "process-pause"): "plan", ("b", "process-pause"): "plan"}, reasons
            return ended

        assert asyncio.run(run()) == {"a": True, "b": True}
        for name in "ab":
            with AgentClient(address(tmp_path, name), timeout=10) as client:
                assert client.call("guest-fault-list") == []


def test_ctrl_c_in_the_cli_reverts_every_part(tmp_path: Path,
                                              sleepers: list[subprocess.Popen[bytes]]) -> None:
    require_root()
    pids = [p.pid for p in sleepers]
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps({"seed": 2, "steps": [
        {"guest": name, "at": 0, "kind": "process-pause", "target": f"pid:{pid}", "duration": 60}
        for name, pid in zip("ab", pids[:2], strict=True)]}))
    with agents(tmp_path, "ab"):
        cli = subprocess.Popen(
            [sys.executable, "-m", "pyqga.host_client", "fault", "plan", str(plan_file), "--wait",
             "--guest", f"a={address(tmp_path, 'a')}", "--guest", f"b={address(tmp_path, 'b')}"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT)
        try:
            give_up = time.monotonic() + 20
            while not all(process_state(pid) == "T" for pid in pids[:2]):
                assert time.monotonic() < give_up and cli.poll() is None, "the pauses did not start"
                time.sleep(0.02)
            cli.send_signal(signal.SIGINT)
            out, err = cli.communicate(timeout=30)
        finally:
            if cli.poll() is None:
                cli.kill()
                cli.wait()
        assert cli.returncode == 130, out + err
        assert "every guest's part of the plan was reverted" in err, err
        assert all(process_state(pid) != "T" for pid in pids[:2])
        for name in "ab":
            with AgentClient(address(tmp_path, name), timeout=10) as client:
                assert client.call("guest-fault-list") == []


def test_the_cli_says_what_is_wrong_with_a_guest_option(tmp_path: Path) -> None:
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps({"seed": 1, "steps": [
        {"guest": "a", "at": 0, "kind": "process-pause", "target": "pid:1", "duration": 1}]}))
    for guest, says in (("/run/a.sock", "expected NAME=ADDRESS"), ("a=tcp:x", "expected tcp:HOST:PORT"),
                        ("b=/run/b.sock", "guest 'a' is not one of the plan's guests (b)")):
        done = subprocess.run([sys.executable, "-m", "pyqga.host_client", "fault", "plan", str(plan_file),
                               "--guest", guest], capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)
        assert done.returncode == 2 and says in done.stderr, done.stderr
