"""AgentConnection with a fake transport: how replies are grouped into writes, and their order."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pyqga.agent.config import Config
from pyqga.agent.dispatch import Dispatcher
from pyqga.agent.registry import Command, Param, Registry
from pyqga.agent.server import AgentConnection
from pyqga.agent.state import AgentState


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.reading = True

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def is_reading(self) -> bool:
        return self.reading

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_closing(self) -> bool:
        return False

    def replies(self) -> list[Any]:
        return [json.loads(line) for line in b"".join(self.writes).splitlines()]


RELEASE = threading.Event()


def echo(agent: AgentState, id: int) -> int:
    return id


def slow_echo(agent: AgentState, id: int) -> int:
    RELEASE.wait(5)
    return id


ID = (Param("id", int),)
COMMANDS = (Command("echo", echo, "", ID), Command("slow-echo", slow_echo, "", ID, blocking=True))


def qga(method: str, i: int) -> bytes:
    return b'{"execute":"%s","arguments":{"id":%d},"id":%d}\n' % (method.encode(), i, i)


def jsonrpc(method: str, i: int) -> bytes:
    return b'{"jsonrpc":"2.0","method":"%s","params":{"id":%d},"id":%d}\n' % (method.encode(), i, i)


@contextlib.contextmanager
def connected(tmp_path: Path) -> Iterator[tuple[AgentConnection, FakeTransport]]:
    """An agent connection over a fake transport, its blocking commands held until RELEASE."""
    agent = AgentState(Config(statedir=str(tmp_path)), registry=Registry(COMMANDS))
    transport = FakeTransport()
    RELEASE.clear()
    with ThreadPoolExecutor(max_workers=2) as executor:
        connection = AgentConnection(Dispatcher(agent), {"worker": executor, "urgent": executor})
        connection.connection_made(transport)
        yield connection, transport


async def serve_chunks(
    tmp_path: Path, chunks: list[bytes], replies: int, release_after: float = 0.0
) -> FakeTransport:
    """Feed `chunks`, let the blocking command finish after `release_after` s, wait for `replies`."""
    with connected(tmp_path) as (connection, transport):
        for chunk in chunks:
            connection.data_received(chunk)
        await asyncio.sleep(release_after)
        RELEASE.set()
        for _ in range(500):
            if b"".join(transport.writes).count(b"\n") >= replies:
                break
            await asyncio.sleep(0.01)
    return transport


def test_replies_to_one_chunk_leave_in_one_write(tmp_path: Path) -> None:
    chunk = qga("echo", 1) + jsonrpc("echo", 2) + b"garbage" + qga("echo", 3)
    transport = asyncio.run(serve_chunks(tmp_path, [chunk], 4))
    assert len(transport.writes) == 1
    assert [reply.get("id") for reply in transport.replies()] == [1, 2, None, 3]


def test_one_request_one_write_as_before(tmp_path: Path) -> None:
    transport = asyncio.run(serve_chunks(tmp_path, [qga("echo", 1), qga("echo", 2)], 2))
    assert transport.writes == [b'{"return": 1, "id": 1}\n', b'{"return": 2, "id": 2}\n']


def test_qga_replies_wait_for_a_worker_in_request_order(tmp_path: Path) -> None:
    chunk = qga("echo", 1) + qga("slow-echo", 2) + qga("echo", 3) + qga("echo", 4)
    transport = asyncio.run(serve_chunks(tmp_path, [chunk, qga("echo", 5)], 5, release_after=0.1))
    assert transport.writes[0] == b'{"return": 1, "id": 1}\n'  # before the worker finished
    assert [reply["id"] for reply in transport.replies()] == [1, 2, 3, 4, 5]


def test_jsonrpc_replies_do_not_wait_for_a_worker(tmp_path: Path) -> None:
    chunk = jsonrpc("echo", 1) + jsonrpc("slow-echo", 2) + jsonrpc("echo", 3)
    transport = asyncio.run(serve_chunks(tmp_path, [chunk], 3, release_after=0.1))
    assert [reply["id"] for reply in transport.replies()] == [1, 3, 2]
    assert len(transport.writes) == 2


def test_replies_owed_while_workers_answer_none_for_half_a_message(tmp_path: Path) -> None:
    """What a virtio-serial session still delivers after its input ends (agent/channels.py
    CONNECT_GRACE): replies on a worker in either dialect count, half a request does not."""

    async def main() -> FakeTransport:
        with connected(tmp_path) as (connection, transport):
            connection.data_received(b'{"execute":"echo","argu')
            assert not connection.owes_replies()
            rest = b'ments":{"id":1},"id":1}\n' + qga("slow-echo", 2) + jsonrpc("slow-echo", 3)
            connection.data_received(rest)
            assert connection.owes_replies()
            RELEASE.set()
            for _ in range(500):
                if not connection.owes_replies():
                    break
                await asyncio.sleep(0.01)
            assert not connection.owes_replies()
        return transport

    assert sorted(reply["id"] for reply in asyncio.run(main()).replies()) == [1, 2, 3]
