"""The host helpers never leave a guest frozen, whatever agent it runs (issue 10, part 1).

Each test runs against Debian's real qemu-ga and against pyqga, on loop filesystems the test
made, through the qga dialect both speak, with the sync client and with the async one (driven
here through a small blocking facade, so one test body serves both).  qemu-ga has no auto-thaw,
no epochs and no ``guest-fsfreeze-info``, and rejects a ``timeout`` it does not know: the helpers
must learn that from ``guest-info`` and fall back, and on every failure after a freeze was sent,
thaw first.

Safety: only freeze-lists of the test's own mount points are sent (a freeze-all through qemu-ga
would freeze ``/``); qemu-ga runs in a private mount namespace (see test_differential_freeze).
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pyqga.host_client import AgentClient
from pyqga.host_client.errors import AgentTimeout
from tests.rig.agent_process import REPO_ROOT, PyqgaAgent
from tests.rig.async_facade import BlockingAsyncClient
from tests.rig.freezing import start_writer, write_hook
from tests.rig.loopfs import LoopFs, LoopMounts, thaw_fully
from tests.rig.qemu_ga import IsolatedQemuGa

pytestmark = [pytest.mark.root, pytest.mark.qemu_ga]

PEERS = ("qemu-ga", "pyqga")
Start = Callable[..., Any]


@pytest.fixture
def loops(qga_loops: LoopMounts) -> LoopMounts:
    return qga_loops


@pytest.fixture(params=PEERS)
def peer(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def start(peer: str, tmp_path: Path, loops: LoopMounts) -> Iterator[Start]:
    """``start(hook_body=None)``: the peer running, with a freeze hook if given; stopped after."""
    started: list[Any] = []

    def run(hook_body: str | None = None) -> Any:
        workdir = tmp_path / peer
        workdir.mkdir(exist_ok=True)
        hook_args = [f"-F{write_hook(workdir / 'hook', hook_body)}"] if hook_body else []
        agent: Any
        if peer == "qemu-ga":
            agent = IsolatedQemuGa(workdir, loops, hook_args)
            agent.__enter__()
        else:
            agent = PyqgaAgent(workdir, ["--freeze-include", loops.glob(), *hook_args])
            agent.start()
        started.append(agent)
        return agent

    yield run
    for agent in started:
        agent.stop()
    assert loops.thaw_all() == 0, f"{peer}: a test left a filesystem frozen"


@pytest.fixture(params=["sync", "async"])
def client_for(request: pytest.FixtureRequest) -> Callable[..., Any]:
    """``client_for(agent)``: a qga-dialect client of the kind under test."""
    def make(agent: Any, timeout: float = 30) -> Any:
        if request.param == "sync":
            return AgentClient(str(agent.socket_path), dialect="qga", timeout=timeout)
        return BlockingAsyncClient(str(agent.socket_path), dialect="qga", timeout=timeout)
    return make


def writes_go_through(fs: LoopFs) -> bool:
    """A write that finishes within 2 s: the filesystem is not frozen.  A blocked writer is
    released by the thaw that the fixture's end checks for."""
    writer = start_writer(fs.mountpoint / "probe.txt")
    try:
        return writer.wait(2) == 0
    except subprocess.TimeoutExpired:
        thaw_fully(fs.mountpoint)
        writer.wait(10)
        return False


def test_frozen_holds_then_thaws(peer: str, start: Start, loops: LoopMounts, client_for: Callable[..., Any],
                                 caplog: pytest.LogCaptureFixture) -> None:
    a = loops.add("a")
    agent = start()
    with client_for(agent) as client, caplog.at_level(logging.WARNING, "pyqga.client"):
        with client.frozen([str(a)], thaw_after=30) as freeze:
            assert freeze.count == 1
            assert freeze.auto_thaw is (peer == "pyqga")
            assert (freeze.epoch is None) is (peer == "qemu-ga")
            writer = start_writer(a.mountpoint / "log.txt")
            time.sleep(0.3)
            assert writer.poll() is None, "the freeze did not hold"
        assert writer.wait(10) == 0
        assert client.call("guest-fsfreeze-status") == "thawed"
    warned = any("has no auto-thaw" in m for m in caplog.messages)
    assert warned is (peer == "qemu-ga")


def test_an_error_in_the_body_thaws_before_it_propagates(start: Start, loops: LoopMounts,
                                                         client_for: Callable[..., Any]) -> None:
    a = loops.add("a")
    agent = start()
    with client_for(agent) as client:
        with pytest.raises(RuntimeError, match="snapshot failed"), client.frozen([str(a)], thaw_after=30):
            raise RuntimeError("snapshot failed")
        assert client.call("guest-fsfreeze-status") == "thawed"
    assert writes_go_through(a)


def test_a_freeze_without_reply_in_time_is_thawed(start: Start, loops: LoopMounts,
                                                  client_for: Callable[..., Any]) -> None:
    """The freeze hook makes the freeze take 3 s; the caller gives up after 1 s.  The agent may
    freeze after that: the helper must have sent the thaw."""
    a = loops.add("a")
    agent = start('[ "$1" = freeze ] && sleep 3\nexit 0\n')
    with client_for(agent) as client:
        with pytest.raises(AgentTimeout) as caught, client.frozen([str(a)], thaw_after=30, call_timeout=1):
            pytest.fail("the body ran although the freeze never answered")
        assert any("thawed the guest" in note for note in caught.value.__notes__)
        deadline = time.monotonic() + 20
        while client.call("guest-fsfreeze-status") != "thawed":
            assert time.monotonic() < deadline
            time.sleep(0.1)
    assert writes_go_through(a)


def test_stall_ends_on_time(peer: str, start: Start, loops: LoopMounts,
                            client_for: Callable[..., Any]) -> None:
    a = loops.add("a")
    agent = start()
    with client_for(agent) as client:
        t0 = time.monotonic()
        result = client.stall_for([str(a)], 1.0)
        took = time.monotonic() - t0
    assert result.count == 1
    assert result.reason == ("timeout" if peer == "pyqga" else "host")
    assert result.actual is not None and 0.9 <= result.actual <= 3.0, result
    assert took < 10
    assert writes_go_through(a)


def test_cli_fault_stall(peer: str, start: Start, loops: LoopMounts) -> None:
    a = loops.add("a")
    agent = start()
    done = subprocess.run(
        [sys.executable, "-m", "pyqga.host_client", "--socket", str(agent.socket_path), "--dialect", "qga",
         "fault", "stall", "--mount", str(a), "--duration", "1s"],
        capture_output=True, text=True, timeout=60, cwd=REPO_ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert ("has no auto-thaw" in done.stderr) is (peer == "qemu-ga"), done.stderr
    assert ("host" if peer == "qemu-ga" else "timeout") in done.stdout, done.stdout
    assert writes_go_through(a)
