"""README.md's pytest example ("Fault tests with pytest") runs for real, so it cannot rot: the
code block after the marker comment is taken from README.md as it is, run with pytester against
a real agent with --enable-faults, with a ``workers`` fixture (the one the example says is the
reader's) that starts two ``sleep`` processes here.  Pausing needs root."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyqga.host_client import AgentClient
from tests.rig.agent_process import PyqgaAgent, fault_agent, process_state
from tests.rig.paths import REPO_ROOT

pytest_plugins = ["pytester"]

MARKER = "<!-- tests/process/test_readme_fault_tests.py runs this block against a real agent -->"

WORKERS = """
import subprocess
import pytest

class Worker:
    def __init__(self):
        self.process = subprocess.Popen(["sleep", "60"])
        self.pid = self.process.pid

    def running(self):
        return self.process.poll() is None

@pytest.fixture
def workers():
    started = [Worker(), Worker()]
    with open("pids", "w") as out:
        out.write(" ".join(str(w.pid) for w in started))
    yield started
    # Left running on purpose: the outer test checks their states after the nemesis is done.
"""


def readme_example() -> str:
    text = (REPO_ROOT / "README.md").read_text()
    assert MARKER in text, "README.md lost the marked pytest example"
    found = re.search(r"```python\n(.*?)```", text[text.index(MARKER):], re.DOTALL)
    assert found is not None
    return found.group(1)


def test_the_readme_example_is_about_twenty_lines() -> None:
    assert 15 <= len(readme_example().splitlines()) <= 25


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[PyqgaAgent]:
    with fault_agent(tmp_path / "agent") as running:
        yield running


def test_the_readme_example_passes_and_leaves_nothing_behind(pytester: pytest.Pytester,
                                                             agent: PyqgaAgent) -> None:
    pytester.makeconftest(WORKERS)
    pytester.makepyfile(test_readme=readme_example())
    result = pytester.runpytest("--pyqga-address", str(agent.socket_path), "-rA")
    try:
        slow, doomed = (int(pid) for pid in (pytester.path / "pids").read_text().split())
        result.assert_outcomes(passed=1)
        with AgentClient(str(agent.socket_path), timeout=10) as client:
            assert client.call("guest-fault-list") == []
        assert process_state(slow) != "T", "the paused worker is still stopped after the test"
        assert not Path(f"/proc/{doomed}").exists() or process_state(doomed) == "Z"
        assert re.search(r"reverted +f1 +process-pause", result.stdout.str()), result.stdout.str()
    finally:
        for pid in (slow, doomed):
            subprocess.run(["kill", "-CONT", str(pid)], check=False, capture_output=True)
            subprocess.run(["kill", "-KILL", str(pid)], check=False, capture_output=True)
