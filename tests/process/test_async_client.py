"""AsyncAgentClient against a real pyqga agent over a real unix socket: the sync client's
behaviour, errors, timeouts and resync (the same operations drive both), plus what asyncio adds:
many calls in flight on several connections at once, and cancellation that still thaws."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyqga.agent.config import VERSION
from pyqga.host_client.aio import AsyncAgentClient, ThreadedTransport, run_async
from pyqga.host_client.errors import AgentCallError, AgentConnectionError, AgentTimeout
from pyqga.host_client.session import Session
from pyqga.host_client.transport import open_transport
from pyqga.protocol.dialects import Dialect
from tests.rig.agent_process import PyqgaAgent
from tests.rig.freezing import start_agent, write_hook
from tests.rig.loopfs import LoopMounts, thaw_fully


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PyqgaAgent]:
    with PyqgaAgent(tmp_path_factory.mktemp("agent")) as running:
        yield running


@pytest.mark.parametrize("dialect", ["jsonrpc", "qga"])
def test_calls_errors_and_resync(agent: PyqgaAgent, dialect: str) -> None:
    async def main() -> None:
        async with AsyncAgentClient(str(agent.socket_path), dialect=dialect, timeout=10) as client:
            await client.ping()
            assert await client.call("guest-sync", id=77) == 77
            assert (await client.info())["version"] == VERSION
            assert (await client.capabilities()).auto_thaw is True
            with pytest.raises(AgentCallError) as caught:
                await client.call("guest-no-such-command")
            assert caught.value.error_class == "CommandNotFound"
            assert "guest-no-such-command" in str(caught.value) and client.address in str(caught.value)
            # A timeout leaves the channel unknown: the next call resyncs first, and works.
            with pytest.raises(AgentTimeout, match="guest-exec-status"):
                await client.call("guest-exec-status", {"pid": 1}, timeout=0.0)
            assert client.session.needs_resync
            assert await client.call("guest-sync", id=5) == 5
            assert not client.session.needs_resync
            assert await client.sync() > 0

    asyncio.run(main())


def test_many_clients_at_once(agent: PyqgaAgent) -> None:
    async def one(n: int) -> list[int]:
        async with AsyncAgentClient(str(agent.socket_path), dialect="qga" if n % 2 else "jsonrpc") as client:
            return [await client.call("guest-sync", id=n * 1000 + i) for i in range(50)]

    async def main() -> list[list[int]]:
        return await asyncio.gather(*(one(n) for n in range(8)))

    results = asyncio.run(main())
    assert results == [[n * 1000 + i for i in range(50)] for n in range(8)]


def test_connection_errors_name_the_address(tmp_path: Path) -> None:
    missing = tmp_path / "nobody.sock"

    async def main() -> None:
        with pytest.raises(AgentConnectionError, match=str(missing)):
            await AsyncAgentClient(str(missing)).open()
        with pytest.raises(AgentConnectionError, match="not connected"):
            await AsyncAgentClient(str(missing)).ping()

    asyncio.run(main())


def test_blocking_transports_run_on_a_thread(agent: PyqgaAgent) -> None:
    """A transport asyncio has no native form for (serial, libvirt) drives the same operations."""
    async def main() -> int:
        transport = ThreadedTransport(open_transport(str(agent.socket_path), 5))
        session = Session(transport.address, Dialect.QGA, 5)
        try:
            return await run_async(session.call("guest-sync", {"id": 31}), transport)
        finally:
            await transport.close()

    assert asyncio.run(main()) == 31


def test_cancelled_freeze_is_thawed(tmp_path: Path, loops: LoopMounts) -> None:
    """A task cancelled while its freeze is in flight (the hook makes it take 2 s) must not
    leave the guest frozen: the cancellation reaches the operation, which thaws first."""
    a = loops.add("a")
    hook = write_hook(tmp_path / "hook", '[ "$1" = freeze ] && sleep 2\nexit 0\n')
    pyqga = start_agent(tmp_path, loops, f"-F{hook}")
    try:
        async def main() -> None:
            async with AsyncAgentClient(str(pyqga.socket_path), timeout=30) as client:
                async def freeze_forever() -> None:
                    async with client.frozen([str(a)], thaw_after=60):
                        await asyncio.sleep(3600)

                task = asyncio.create_task(freeze_forever())
                await asyncio.sleep(0.5)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                deadline = time.monotonic() + 20
                while await client.call("guest-fsfreeze-status") != "thawed":
                    assert time.monotonic() < deadline, "left frozen after the cancel"
                    await asyncio.sleep(0.1)

        asyncio.run(main())
        assert thaw_fully(a.mountpoint) == 0
    finally:
        pyqga.stop()
