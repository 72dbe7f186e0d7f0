"""One client shared by threads (AgentClient) or tasks (AsyncAgentClient), against a real agent.

Every caller must get its own reply.  A call that times out in the middle of them fails alone:
the channel then holds its late reply, which the next caller must not take for its own (the
client resyncs first).  The late reply is made by :class:`SlowLink`, a real unix socket between
the client and the real agent that holds back the agent's bytes carrying one marker, as a guest
that answers late would.  The freeze helpers let other callers through while their body runs
and while a stall waits for its end.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pyqga.host_client import AgentClient, AgentTimeout, ClientClosed
from pyqga.host_client.aio import AsyncAgentClient
from tests.rig.agent_process import PyqgaAgent
from tests.rig.freezing import start_agent
from tests.rig.loopfs import LoopMounts, thaw_fully

THREADS, CALLS = 4, 30
LATE_ID = 987_654_321_987   # the id whose guest-sync reply SlowLink holds back
LATE_BY = 2.0               # seconds: past the slow call's own limit, within the others'


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PyqgaAgent]:
    with PyqgaAgent(tmp_path_factory.mktemp("agent")) as running:
        yield running


class SlowLink:
    """A unix socket that relays one connection to the agent, holding back for ``LATE_BY``
    seconds the agent's bytes that contain ``LATE_ID`` (and, to keep the order, whatever follows
    them)."""

    def __init__(self, agent_path: Path, path: Path) -> None:
        self.path = path
        self.agent_path = agent_path
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(str(path))
        self.listener.listen(1)
        self.held = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        near, _ = self.listener.accept()
        far = socket.socket(socket.AF_UNIX)
        far.connect(str(self.agent_path))
        threading.Thread(target=self._pump, args=(near, far, False), daemon=True).start()
        self._pump(far, near, True)

    def _pump(self, src: socket.socket, dst: socket.socket, replies: bool) -> None:
        with src:
            while data := src.recv(65536):
                if replies and str(LATE_ID).encode() in data:
                    self.held += 1
                    time.sleep(LATE_BY)
                try:
                    dst.sendall(data)
                except OSError:
                    return

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def slow_link(agent: PyqgaAgent, tmp_path: Path) -> Iterator[SlowLink]:
    link = SlowLink(agent.socket_path, tmp_path / "slow.sock")
    yield link
    link.close()


def test_threads_share_one_client(agent: PyqgaAgent) -> None:
    """Threads x calls on one client: each reply is the caller's own (before: false timeouts)."""
    with AgentClient(str(agent.socket_path), timeout=10) as client:
        def caller(t: int) -> list[object]:
            out: list[object] = []
            for i in range(CALLS):
                out.append(client.call("guest-sync", id=t * 1000 + i))
                if i % 10 == 0:
                    out.append(client.call("guest-get-host-name")["host-name"])
            return out

        with ThreadPoolExecutor(THREADS) as pool:
            results = list(pool.map(caller, range(THREADS)))
    host = socket.gethostname()
    for t, got in enumerate(results):
        expected: list[object] = []
        for i in range(CALLS):
            expected.append(t * 1000 + i)
            if i % 10 == 0:
                expected.append(host)
        assert got == expected


@pytest.mark.parametrize("dialect", ["jsonrpc", "qga"])
def test_a_timeout_among_threads_fails_only_that_call(slow_link: SlowLink, dialect: str) -> None:
    with AgentClient(str(slow_link.path), dialect=dialect, timeout=10) as client:
        start = threading.Barrier(THREADS + 1)

        def caller(t: int) -> list[int]:
            start.wait()
            return [client.call("guest-sync", id=t * 1000 + i) for i in range(CALLS)]

        def slow() -> BaseException | None:
            start.wait()
            time.sleep(0.05)  # among the others' calls, not before them
            try:
                client.call("guest-sync", id=LATE_ID, timeout=0.5)
            except AgentTimeout as exc:
                return exc
            return None

        with ThreadPoolExecutor(THREADS + 1) as pool:
            others = [pool.submit(caller, t) for t in range(THREADS)]
            late = pool.submit(slow)
            results = [future.result() for future in others]
            failure = late.result()
        assert isinstance(failure, AgentTimeout) and "0.5 s" in str(failure)
        assert results == [[t * 1000 + i for i in range(CALLS)] for t in range(THREADS)]
        assert slow_link.held == 1
        assert client.call("guest-sync", id=5) == 5


def test_close_waits_for_the_call_in_flight(slow_link: SlowLink) -> None:
    """close() from another thread lets a call waiting for its reply finish, then closes."""
    client = AgentClient(str(slow_link.path), timeout=10)
    client.ping()
    with ThreadPoolExecutor(1) as pool:
        late = pool.submit(client.call, "guest-sync", id=LATE_ID)
        time.sleep(0.3)
        started = time.monotonic()
        client.close()
        assert time.monotonic() - started > 1.0  # waited for the late reply
        assert late.result() == LATE_ID
    with pytest.raises(ClientClosed):
        client.ping()


@pytest.mark.parametrize("dialect", ["jsonrpc", "qga"])
def test_tasks_share_one_async_client(agent: PyqgaAgent, dialect: str) -> None:
    async def main() -> None:
        async with AsyncAgentClient(str(agent.socket_path), dialect=dialect, timeout=10) as client:
            # The issue's own example: before, "read() called while another coroutine is already waiting".
            none, name = await asyncio.gather(client.ping(), client.call("guest-get-host-name"))
            assert none is None and name == {"host-name": socket.gethostname()}

            async def caller(t: int) -> list[int]:
                return [await client.call("guest-sync", id=t * 1000 + i) for i in range(CALLS)]

            results = await asyncio.gather(*(caller(t) for t in range(THREADS)))
            assert results == [[t * 1000 + i for i in range(CALLS)] for t in range(THREADS)]

    asyncio.run(main())


def test_a_timeout_among_tasks_fails_only_that_call(slow_link: SlowLink) -> None:
    async def main() -> None:
        async with AsyncAgentClient(str(slow_link.path), dialect="qga", timeout=10) as client:
            async def caller(t: int) -> list[int]:
                return [await client.call("guest-sync", id=t * 1000 + i) for i in range(CALLS)]

            async def slow() -> object:
                await asyncio.sleep(0.05)
                return await client.call("guest-sync", id=LATE_ID, timeout=0.5)

            *results, failure = await asyncio.gather(*(caller(t) for t in range(THREADS)), slow(),
                                                     return_exceptions=True)
            assert isinstance(failure, AgentTimeout), failure
            assert results == [[t * 1000 + i for i in range(CALLS)] for t in range(THREADS)]
            assert slow_link.held == 1
            assert await client.call("guest-sync", id=5) == 5

    asyncio.run(main())


def test_a_cancelled_call_among_tasks_is_resynced_past(slow_link: SlowLink) -> None:
    """A task cancelled while waiting for its reply leaves that reply in the channel, as a
    timeout does: the next call resyncs first."""
    async def main() -> None:
        async with AsyncAgentClient(str(slow_link.path), dialect="qga", timeout=10) as client:
            late = asyncio.create_task(client.call("guest-sync", id=LATE_ID))
            await asyncio.sleep(0.3)
            late.cancel()
            with pytest.raises(asyncio.CancelledError):
                await late
            assert client.session.needs_resync
            others = await asyncio.gather(*(client.call("guest-sync", id=i) for i in range(10)))
            assert others == list(range(10))
            assert slow_link.held == 1 and not client.session.needs_resync

    asyncio.run(main())


def test_async_exec_polls_without_holding_the_client(agent: PyqgaAgent) -> None:
    """An exec waits for its program between polls; other tasks' calls go meanwhile."""
    async def main() -> None:
        async with AsyncAgentClient(str(agent.socket_path), timeout=10) as client:
            async def pings() -> list[float]:
                await asyncio.sleep(0.2)
                times = []
                for _ in range(5):
                    started = time.monotonic()
                    await client.ping()
                    times.append(time.monotonic() - started)
                return times

            result, times = await asyncio.gather(client.exec(["sleep", "1.5"]), pings())
            assert result.exitcode == 0
            assert max(times) < 1.0, times  # not behind the 1.5 s wait

    asyncio.run(main())


def test_freeze_helpers_let_other_threads_through(tmp_path: Path, loops: LoopMounts) -> None:
    """While a frozen() body runs and while a stall waits for its end, other threads' calls are
    answered at once; the thaw still comes."""
    a = loops.add("a")
    pyqga = start_agent(tmp_path, loops)
    try:
        with AgentClient(str(pyqga.socket_path), timeout=30) as client:
            stop = threading.Event()
            slowest: list[float] = []

            def pinger() -> int:
                n = 0
                while not stop.is_set():
                    started = time.monotonic()
                    assert client.call("guest-sync", id=n) == n
                    slowest.append(time.monotonic() - started)
                    n += 1
                    time.sleep(0.01)
                return n

            with ThreadPoolExecutor(2) as pool:
                pings = [pool.submit(pinger) for _ in range(2)]
                with client.frozen([str(a)], thaw_after=60) as freeze:
                    assert freeze.count == 1
                    assert client.call("guest-fsfreeze-status") == "frozen"  # the body's own call
                    time.sleep(0.3)
                assert client.call("guest-fsfreeze-status") == "thawed"
                with client.stall([str(a)], seconds=1.5) as stall:
                    pass
                stop.set()
                assert all(p.result() > 5 for p in pings)
            assert stall.result is not None and stall.result.reason == "timeout"
            # No call waited out a freeze's body or a stall's 1.5 s behind the helper.
            assert max(slowest) < 1.0, max(slowest)
    finally:
        pyqga.stop()
    assert thaw_fully(a.mountpoint) == 0


def test_async_stall_lets_other_tasks_through(tmp_path: Path, loops: LoopMounts) -> None:
    a = loops.add("a")
    pyqga = start_agent(tmp_path, loops)
    try:
        async def main() -> None:
            async with AsyncAgentClient(str(pyqga.socket_path), timeout=30) as client:
                async def stall() -> str | None:
                    async with client.stall([str(a)], seconds=1.5) as handle:
                        assert await client.call("guest-fsfreeze-status") == "frozen"
                    assert handle.result is not None
                    return handle.result.reason

                async def pings() -> list[float]:
                    await asyncio.sleep(0.3)
                    times = []
                    for i in range(10):
                        started = time.monotonic()
                        assert await client.call("guest-sync", id=i) == i
                        times.append(time.monotonic() - started)
                        await asyncio.sleep(0.05)
                    return times

                reason, times = await asyncio.gather(stall(), pings())
                assert reason == "timeout"
                assert max(times) < 1.0, times  # not behind the 1.5 s wait
                assert await client.call("guest-fsfreeze-status") == "thawed"

        asyncio.run(main())
    finally:
        pyqga.stop()
    assert thaw_fully(a.mountpoint) == 0
