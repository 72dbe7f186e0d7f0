"""The pytest plugin (host_client/pytest_plugin.py) against a real agent with --enable-faults.

Each test writes a small test file, runs pytest on it with pytester (in this process, or as a
child process where Ctrl-C must be real), and then checks the guest's side with its own
client: ``guest-fault-list`` is empty and the ``sleep`` the inner test paused runs again.
Pausing needs root, as in test_process_faults.py.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyqga.host_client import AgentClient
from pyqga.host_client.pytest_plugin import SECTION
from tests.rig.agent_process import PyqgaAgent, fault_agent, own_processes, process_state

pytest_plugins = ["pytester"]

LONG = 300   # the inner tests' lease duration: an end seen sooner came from the plugin's revert


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[PyqgaAgent]:
    with fault_agent(tmp_path / "agent") as running:
        yield running


@pytest.fixture
def sleepers() -> Iterator[list[subprocess.Popen[bytes]]]:
    with own_processes(["sleep", "600"], 2) as started:
        yield started


def assert_clean(agent: PyqgaAgent, processes: list[subprocess.Popen[bytes]]) -> None:
    with AgentClient(str(agent.socket_path), timeout=10) as client:
        assert client.call("guest-fault-list") == []
    states = [process_state(p.pid) for p in processes]
    assert "T" not in states, f"still stopped after the test: {states}"


FAILING = """
import os

def test_pauses_then_fails(nemesis):
    fault = nemesis.inject("process-pause", "pid:{pid}", duration={long})
    assert open("/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "T"
    os.environ["PYQGA_INNER_FAULT"] = fault.id
    assert 1 + 1 == 3, "the application broke under the fault"
"""


def test_a_test_that_injects_and_fails_still_reverts(pytester: pytest.Pytester, agent: PyqgaAgent,
                                                     sleepers: list[subprocess.Popen[bytes]]) -> None:
    pytester.makepyfile(FAILING.format(pid=sleepers[0].pid, long=LONG))
    started = time.monotonic()
    result = pytester.runpytest("--pyqga-address", str(agent.socket_path), "--pyqga-seed", "4242")
    result.assert_outcomes(failed=1)
    assert time.monotonic() - started < LONG / 2
    assert_clean(agent, sleepers)
    fault = os.environ.pop("PYQGA_INNER_FAULT")
    output = result.stdout.str()
    # Under the failure: the section, the seed to replay, and the lease's whole life.
    failure = output[output.index("the application broke"):]
    assert SECTION in failure and "replay with --pyqga-seed 4242" in failure, output
    assert re.search(rf"armed +{fault} +process-pause pid:{sleepers[0].pid}", failure), output
    assert re.search(rf"reverted +{fault} +process-pause pid:{sleepers[0].pid} \(revert\)", failure), output
    assert f"at the end: reverted {fault}" in failure
    assert "pyqga: 1 failed test injected faults; replay with --pyqga-seed 4242" in output
    # The section is in the reports themselves (teardown's, and the failed call's).
    reports = result.reprec.getreports("pytest_runtest_logreport")  # type: ignore[attr-defined]
    sections = {r.when: dict(r.sections).get(SECTION, "") for r in reports}
    assert f"{fault}" in sections["teardown"] and "reverted" in sections["teardown"], sections
    assert sections["call"] == sections["teardown"]


PASSING = """
def test_pauses_and_passes(nemesis, guest):
    fault = nemesis.inject("process-pause", "pid:{pid}", duration={long})
    assert [f.id for f in guest.faults.list()] == [fault.id]
    assert fault.revert() is True      # ended early by the test itself: the nemesis finds it ended
"""


def test_a_passing_test_has_its_timeline_in_the_report(pytester: pytest.Pytester, agent: PyqgaAgent,
                                                       sleepers: list[subprocess.Popen[bytes]]) -> None:
    pytester.makepyfile(PASSING.format(pid=sleepers[0].pid, long=LONG))
    result = pytester.runpytest("--pyqga-address", str(agent.socket_path), "-rA")
    result.assert_outcomes(passed=1)
    assert_clean(agent, sleepers)
    teardown = next(r for r in result.reprec.getreports("pytest_runtest_logreport")  # type: ignore[attr-defined]
                    if r.when == "teardown")
    text = dict(teardown.sections)[SECTION]
    assert "at the end: already ended f1" in text, text
    assert [line.split()[2] for line in text.splitlines()[-3:]] == ["armed", "fired", "reverted"], text


INTERRUPTED = """
import time

def test_pauses_and_hangs(nemesis):
    fault = nemesis.inject("process-pause", "pid:{pid}", duration={long})
    open("{marker}", "w").write(fault.id)
    time.sleep({long})
"""


def test_ctrl_c_still_reverts(pytester: pytest.Pytester, agent: PyqgaAgent,
                              sleepers: list[subprocess.Popen[bytes]]) -> None:
    marker = pytester.path / "injected"
    pytester.makepyfile(INTERRUPTED.format(pid=sleepers[0].pid, long=LONG, marker=marker))
    child = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                              "--rootdir", str(pytester.path), "--pyqga-address", str(agent.socket_path)],
                             cwd=pytester.path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        give_up = time.monotonic() + 60
        while not marker.exists() or not marker.read_text():
            assert child.poll() is None and time.monotonic() < give_up, "the inner test never injected"
            time.sleep(0.05)
        assert process_state(sleepers[0].pid) == "T"
        interrupted = time.monotonic()
        child.send_signal(signal.SIGINT)
        output, _ = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    took = time.monotonic() - interrupted
    assert child.returncode == pytest.ExitCode.INTERRUPTED, output
    assert_clean(agent, sleepers)
    fault = marker.read_text()
    node = "test_ctrl_c_still_reverts.py::test_pauses_and_hangs"
    assert f"pyqga: interrupted: {node}: reverted {fault}" in output, output
    assert re.search(rf"reverted +{fault} +process-pause", output), output
    assert "pyqga: interrupted; replay with --pyqga-seed" in output
    assert took < 20, f"Ctrl-C to the end took {took:.1f} s"


PLANNED = """
import json

def test_plan(nemesis):
    plan = nemesis.plan([
        {{"at": {{"between": [0.0, 0.3]}}, "kind": "process-pause",
          "target": {{"one-of": ["pid:{a}", "pid:{b}"]}}, "duration": {{"between": [0.1, 0.2]}}}},
        {{"after": {{"between": [0.0, 0.2]}}, "kind": "process-pause",
          "target": {{"one-of": ["pid:{a}", "pid:{b}"]}}, "duration": 0.1}},
    ], repeat=2)
    with open("{out}", "a") as out:
        out.write(json.dumps({{"hash": plan.hash, "seed": nemesis.seed}}) + "\\n")
    assert False, "fail, so that the seed is printed"
"""


def test_the_seed_printed_on_failure_replays_the_same_schedule(
        pytester: pytest.Pytester, agent: PyqgaAgent, sleepers: list[subprocess.Popen[bytes]]) -> None:
    out = pytester.path / "plans.jsonl"
    a, b = (p.pid for p in sleepers)
    pytester.makepyfile(PLANNED.format(a=a, b=b, out=out))
    address = str(agent.socket_path)
    first = pytester.runpytest_subprocess("--pyqga-address", address)   # a random seed
    first.assert_outcomes(failed=1)
    found = re.search(r"replay with --pyqga-seed (\d+)", first.stdout.str())
    assert found, first.stdout.str()
    seed = found.group(1)
    assert f"pyqga: seed {seed}" in first.stdout.str()   # the header says it too
    replay = pytester.runpytest_subprocess("--pyqga-address", address, "--pyqga-seed", seed)
    replay.assert_outcomes(failed=1)
    other = pytester.runpytest_subprocess("--pyqga-address", address, "--pyqga-seed", str(int(seed) + 1))
    other.assert_outcomes(failed=1)


    runs = [json.loads(line) for line in out.read_text().splitlines()]
    assert runs[0] == runs[1], runs                 # the same seed: the same schedule (its hash)
    assert runs[2]["hash"] != runs[0]["hash"], runs
    assert f"hash {runs[0]['hash']}" in first.stdout.str()
    assert_clean(agent, sleepers)
