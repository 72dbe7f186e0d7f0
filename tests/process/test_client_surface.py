"""The host library as a script author meets it, against a real agent: a closed client says so,
the wire shows at DEBUG, each meaning of "timeout" has its own name (the old spellings still
work, with a DeprecationWarning), and ``exec(check=True)`` raises like ``subprocess.run``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

import pyqga
from pyqga import ClientClosed, ExecFailed
from pyqga.host_client import AgentClient, AgentClientError
from pyqga.host_client.aio import AsyncAgentClient
from pyqga.protocol.client import WIRE_LOG_CAP
from tests.rig.agent_process import PyqgaAgent
from tests.rig.freezing import start_agent
from tests.rig.loopfs import LoopMounts, thaw_fully


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PyqgaAgent]:
    with PyqgaAgent(tmp_path_factory.mktemp("agent")) as running:
        yield running


def test_a_closed_client_says_so(agent: PyqgaAgent) -> None:
    client = AgentClient(str(agent.socket_path))
    client.ping()
    client.close()
    client.close()  # twice is harmless
    assert client.closed
    for use in (client.ping, client.info, lambda: client.exec(["true"]), lambda: client.sync()):
        with pytest.raises(ClientClosed, match="closed") as caught:
            use()
        assert isinstance(caught.value, AgentClientError)
        assert caught.value.address == f"unix:{agent.socket_path}"
    with AgentClient(str(agent.socket_path)) as inside:
        pass
    with pytest.raises(ClientClosed):
        inside.call("guest-ping")


def test_a_closed_async_client_says_so_and_can_open_again(agent: PyqgaAgent) -> None:
    async def main() -> None:
        client = AsyncAgentClient(str(agent.socket_path))
        async with client:
            await client.ping()
        assert client.closed
        with pytest.raises(ClientClosed, match="closed"):
            await client.ping()
        with pytest.raises(ClientClosed):
            await client.exec(["true"])
        await client.close()
        await client.open()
        assert not client.closed
        assert await client.call("guest-sync", id=9) == 9
        await client.close()

    asyncio.run(main())


def test_close_during_an_exec_ends_it_with_client_closed(agent: PyqgaAgent) -> None:
    """An exec waits for its program without holding the client: a close() meanwhile ends it
    at its next poll, with ClientClosed (not an error from a closed file descriptor)."""
    async def main() -> None:
        client = await AsyncAgentClient(str(agent.socket_path)).open()
        call = asyncio.create_task(client.exec(["sleep", "0.3"]))
        await asyncio.sleep(0.05)
        # exec sleeps between polls without the client; its next poll finds it closed.
        await client.close()
        with pytest.raises(ClientClosed):
            await call

    asyncio.run(main())


def test_wire_log_shows_requests_and_replies_capped(
        agent: PyqgaAgent, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="pyqga.client.wire")
    with AgentClient(str(agent.socket_path), dialect="qga") as client:
        assert client.call("guest-sync", id=4242) == 4242
        lines = [r.getMessage() for r in caplog.records]
        assert all(r.name == "pyqga.client.wire" and r.levelno == logging.DEBUG for r in caplog.records)
        assert f"unix:{agent.socket_path} --> " + '{"execute": "guest-sync", "arguments": {"id": 4242}' in \
            "\n".join(lines)
        assert f"unix:{agent.socket_path} <-- " + '{"return":4242' in "\n".join(lines)
        caplog.clear()
        long = "y" * (3 * WIRE_LOG_CAP)   # a long request (its argv), and a long reply (its output)
        assert client.exec(["echo", long]).stdout == long.encode() + b"\n"
    lines = [r.getMessage() for r in caplog.records]
    [request] = [line for line in lines if " --> " in line and "guest-exec\"" in line]
    assert "[cut: " in request and len(request) < WIRE_LOG_CAP + 200
    [reply] = [line for line in lines if " <-- " in line and "out-data" in line]
    assert "[cut: " in reply and "bytes in all]" in reply and len(reply) < WIRE_LOG_CAP + 200


def test_wire_log_includes_the_resync_and_is_silent_above_debug(
        agent: PyqgaAgent, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pyqga.client")
    with AgentClient(str(agent.socket_path)) as client:
        client.ping()
    assert not [r for r in caplog.records if r.name == "pyqga.client.wire"]
    caplog.set_level(logging.DEBUG, logger="pyqga.client")  # the parent's level reaches it
    with AgentClient(str(agent.socket_path)) as client:
        client.ping()
    lines = [r.getMessage() for r in caplog.records if r.name == "pyqga.client.wire"]
    assert any("guest-sync-delimited" in line and " --> " in line for line in lines), lines
    assert any("0xFF" in line for line in lines), lines
    assert any("guest-ping" in line for line in lines), lines


def test_exec_check_raises_exec_failed(agent: PyqgaAgent) -> None:
    with AgentClient(str(agent.socket_path)) as client:
        assert client.exec(["true"], check=True).exitcode == 0
        with pytest.raises(ExecFailed) as caught:
            client.exec(["sh", "-c", "echo out; echo broken >&2; exit 3"], check=True)
        failed = caught.value
        assert failed.returncode == 3 and failed.result.exitcode == 3 and failed.result.signal is None
        assert failed.stdout == b"out\n" and failed.stderr == b"broken\n"
        assert failed.argv[0] == "sh" and "exited with status 3: broken" in str(failed)
        assert isinstance(failed, pyqga.AgentClientError)
        # Without check the result comes back, as before.
        assert client.exec(["sh", "-c", "exit 3"]).exitcode == 3
        # kill_after: the agent kills it; with check that is a failure too.
        killed = client.exec(["sleep", "30"], kill_after=0.5)
        assert killed.signal == 9
        with pytest.raises(ExecFailed, match="killed by signal 9") as caught:
            client.exec(["sleep", "30"], kill_after=0.5, check=True)
        assert caught.value.returncode == -9


def test_async_exec_check(agent: PyqgaAgent) -> None:
    async def main() -> None:
        async with AsyncAgentClient(str(agent.socket_path)) as client:
            with pytest.raises(ExecFailed) as caught:
                await client.exec(["sh", "-c", "exit 5"], check=True)
            assert caught.value.returncode == 5
            assert (await client.exec(["sleep", "30"], kill_after=0.5)).signal == 9

    asyncio.run(main())


def test_old_timeout_spellings_still_work_with_a_warning(agent: PyqgaAgent) -> None:
    with AgentClient(str(agent.socket_path)) as client:
        with pytest.warns(DeprecationWarning, match=r"exec\(kill_after=") as warned:
            assert client.exec(["sleep", "30"], timeout=0.5).signal == 9
        assert warned[0].filename == __file__  # points at the caller
        with pytest.raises(TypeError, match="kill_after= only"):
            client.exec(["true"], timeout=1, kill_after=1)

    async def main() -> None:
        async with AsyncAgentClient(str(agent.socket_path)) as client:
            with pytest.warns(DeprecationWarning, match="kill_after"):
                assert (await client.exec(["sleep", "30"], timeout=0.5)).signal == 9

    asyncio.run(main())


def test_frozen_thaw_after_and_its_old_name(tmp_path: Path, loops: LoopMounts) -> None:
    """``thaw_after`` reaches the agent as its auto-thaw deadline; ``timeout=`` still does, warned."""
    a = loops.add("a")
    pyqga = start_agent(tmp_path, loops)
    try:
        with AgentClient(str(pyqga.socket_path), timeout=30) as client:
            with client.frozen([str(a)], thaw_after=40):
                info = client.call("guest-fsfreeze-info")
                assert info["deadline"] - info["frozen-at"] == pytest.approx(40, abs=1)
            with pytest.warns(DeprecationWarning, match=r"frozen\(thaw_after=") as warned, \
                    client.frozen([str(a)], timeout=50):
                info = client.call("guest-fsfreeze-info")
                assert info["deadline"] - info["frozen-at"] == pytest.approx(50, abs=1)
            assert warned[0].filename == __file__
            assert client.call("guest-fsfreeze-status") == "thawed"
    finally:
        pyqga.stop()
    assert thaw_fully(a.mountpoint) == 0
