"""A burst of clients on a fresh agent loses none of them (issue 19, section 3).

A client the kernel refuses because the listen queue is full gets EAGAIN from a non-blocking
connect; asyncio's clients (and ``AsyncAgentClient``) read that as connected and then lose the
connection, and the agent logs nothing.  So the queue must hold any burst the agent's loop is
too busy to accept at once; only the agent's connection cap refuses, with its log line.

Each test sends BURST non-blocking connects as fast as one thread can, while the loop is busy:
right at start-up (the socket is bound before the loop serves), and under a flooding client.
Every connect must be queued (no EAGAIN), and every client then gets its ping answered or is
closed by the cap, which the log says.  A third sends BURST AsyncAgentClients at once at
start-up, the issue's own case (before the fix about half of them failed with "send failed",
and the agent logged nothing).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyqga import AsyncAgentClient
from pyqga.agent.server import MAX_CONNECTIONS
from pyqga.host_client.errors import AgentConnectionError
from tests.rig.agent_process import PyqgaAgent
from tests.rig.flood import FloodProcess

BURST = 128
FLOOD_CLIENTS = 1
REPLY_TIMEOUT = 30.0
REFUSAL_LOG = f"already serving {MAX_CONNECTIONS} clients, the most at once"


def burst(path: Path, count: int = BURST) -> tuple[list[socket.socket], list[int]]:
    """``count`` non-blocking connects back to back: the queued sockets, and the connects the
    kernel refused with EAGAIN (indexes), the ones an asyncio client would silently lose."""
    queued: list[socket.socket] = []
    refused: list[int] = []
    for index in range(count):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        code = sock.connect_ex(str(path))
        if code == 0:
            queued.append(sock)
            continue
        sock.close()
        assert code == errno.EAGAIN, f"connect {index}: {errno.errorcode.get(code, code)}"
        refused.append(index)
    return queued, refused


def outcomes(socks: list[socket.socket]) -> tuple[int, int]:
    """(answered, closed by the agent): each sends a ping with its own id, then all read.  All
    stay connected until every one has its answer, so the cap counts them all at once."""
    for index, sock in enumerate(socks):
        sock.setblocking(True)
        sock.settimeout(REPLY_TIMEOUT)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # closed by the cap: read sees it
            sock.sendall(b'{"execute":"guest-ping","id":%d}\n' % index)
    answered = closed = 0
    for index, sock in enumerate(socks):
        data = b""
        try:
            while not data.endswith(b"\n"):
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
        except ConnectionResetError:
            data = b""
        if data:
            assert json.loads(data) == {"return": {}, "id": index}, data[:200]
            answered += 1
        else:
            closed += 1
    for sock in socks:
        sock.close()
    return answered, closed


def listen_queue(path: Path) -> int | None:
    """The listen backlog of the socket at ``path`` as ``ss -xl`` shows it (Send-Q of a
    listener), None without ss.  /proc/net/unix does not show it."""
    if shutil.which("ss") is None:
        return None
    out = subprocess.run(["ss", "-xlnH"], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        fields = line.split()
        if str(path) in fields:
            return int(fields[3])
    raise AssertionError(f"{path} not listed by ss -xl:\n{out}")


def check(agent: PyqgaAgent, socks: list[socket.socket], refused: list[int], others: int) -> None:
    """No connect refused by the kernel; every client answered or closed by the cap, which
    ``others`` clients besides the burst may fill; a refusal is logged."""
    answered, closed = outcomes(socks)
    assert not refused, f"{len(refused)} of {BURST} connects refused by the kernel (EAGAIN): {refused[:10]}"
    assert answered + closed == BURST
    assert closed <= max(0, BURST + others - MAX_CONNECTIONS), f"{closed} closed, {answered} answered"
    if closed:
        time.sleep(0.2)  # the log line is written by the agent's loop
        assert REFUSAL_LOG in agent.log_path.read_text(), f"{closed} clients closed without a log line"
    queue = listen_queue(agent.socket_path)
    assert queue is None or queue >= max(BURST, MAX_CONNECTIONS), f"listen queue {queue}"


def just_bound(agent: PyqgaAgent) -> None:
    """Start ``agent`` and return as soon as its socket exists: bound and listening, before its
    loop serves (the agent binds first, then takes its pid file and starts the loop)."""
    agent.start_nowait()
    deadline = time.monotonic() + 15
    while not agent.socket_path.exists():
        assert agent.process is not None and agent.process.poll() is None, agent.log_tail()
        assert time.monotonic() < deadline, "the agent never bound its socket"
        time.sleep(0.001)


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[PyqgaAgent]:
    agent = PyqgaAgent(tmp_path / "agent")
    try:
        yield agent
    finally:
        agent.stop()


def test_a_burst_at_start_up_is_served(fresh: PyqgaAgent) -> None:
    """The burst arrives as soon as the socket exists, before the loop accepts anything: the
    kernel's queue holds all of it."""
    just_bound(fresh)
    socks, refused = burst(fresh.socket_path)
    fresh.wait_ready()
    check(fresh, socks, refused, others=1)  # wait_ready's probe, until its EOF is read


def test_asyncio_clients_at_start_up_are_served(fresh: PyqgaAgent) -> None:
    """The issue's case: AsyncAgentClients (asyncio's own connect) all at once on an agent just
    started.  Each pings once; a failure is allowed only as a refusal the agent logged."""
    just_bound(fresh)

    async def client() -> None:
        async with AsyncAgentClient(str(fresh.socket_path), timeout=REPLY_TIMEOUT) as agent:
            await agent.ping()

    async def clients() -> list[BaseException | None]:
        return await asyncio.gather(*(client() for _ in range(BURST)), return_exceptions=True)

    failures = [result for result in asyncio.run(clients()) if result is not None]
    assert all(isinstance(failure, AgentConnectionError) for failure in failures), failures[:3]
    if failures:
        time.sleep(0.2)
        assert REFUSAL_LOG in fresh.log_path.read_text(), f"{len(failures)} lost: {failures[:3]}"
    assert len(failures) <= max(0, BURST + 1 - MAX_CONNECTIONS), failures[:3]


def test_a_burst_under_a_flood_is_served(fresh: PyqgaAgent) -> None:
    """A client floods the fresh agent with `{}` (the loop decoding all the time) while the
    burst arrives; with it the burst is one client over the cap."""
    fresh.start()
    flood = FloodProcess(fresh.socket_path, "{}", FLOOD_CLIENTS, seconds=4.0)
    try:
        time.sleep(0.5)  # the flood is on
        socks, refused = burst(fresh.socket_path)
        check(fresh, socks, refused, others=FLOOD_CLIENTS + 1)
    finally:
        flood.kill()
