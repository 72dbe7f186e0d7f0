"""The host client and CLI against a real agent, and against real sockets that misbehave."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

import pyqga.host_client.session
from pyqga.agent.config import VERSION
from pyqga.host_client import AgentCallError, AgentClient, AgentConnectionError, AgentTimeout
from pyqga.protocol.client import ClientConnection
from pyqga.protocol.dialects import Dialect
from tests.rig.agent_process import PyqgaAgent, agent_env


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PyqgaAgent]:
    with PyqgaAgent(tmp_path_factory.mktemp("agent")) as running:
        yield running


@pytest.mark.parametrize("dialect", ["jsonrpc", "qga"])
def test_typed_helpers(agent: PyqgaAgent, dialect: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with AgentClient(str(agent.socket_path), dialect=dialect) as client:
        client.ping()
        assert client.call("guest-sync", id=77) == 77
        # sync() returns only once the agent has echoed the id it sent: fix that id, then check it.
        fixed = SimpleNamespace(getrandbits=lambda bits: 0x2BAD_F00D_1234)
        monkeypatch.setattr(pyqga.host_client.session, "random", fixed)
        assert client.sync() == 0x2BAD_F00D_1235
        monkeypatch.undo()
        info = client.info()
        assert "guest-fsfreeze-status" in {c["name"] for c in info["supported_commands"]}
        assert info["version"] == VERSION
        before = time.time_ns()
        guest_time = client.call("guest-get-time")
        after = time.time_ns()
        assert before - 10**9 <= guest_time <= after + 10**9, (before, guest_time, after)
        with pytest.raises(AgentCallError) as caught:
            client.call("guest-nope")
    assert caught.value.error_class == "CommandNotFound"
    assert caught.value.method == "guest-nope" and caught.value.address == f"unix:{agent.socket_path}"


def test_resync_discards_stale_replies_and_garbage(agent: PyqgaAgent) -> None:
    """A channel with a half-sent message and unread replies still gives the right answers."""
    with AgentClient(str(agent.socket_path), dialect="qga") as client:
        sock = client._transport.sock  # type: ignore[attr-defined]
        # Leave two unread replies and half a message in the channel, as a crashed host would.
        sock.sendall(b'{"execute":"guest-sync","arguments":{"id":1}}{"execute":"guest-sync","arguments":{"id":2}}')
        sock.sendall(b'{"execute":"guest-sy')
        client.sync()
        assert client.call("guest-sync", id=3) == 3


def test_timeout_names_method_and_address_then_resyncs(tmp_path: Path) -> None:
    """A real socket whose peer reads but never answers, then starts answering."""
    path = tmp_path / "silent.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.listen(1)
    answering = threading.Event()
    received: list[bytes] = []

    def peer() -> None:
        conn, _ = listener.accept()
        protocol = _EchoSyncPeer()
        with conn:
            while data := conn.recv(65536):
                received.append(data)
                if answering.is_set():
                    conn.sendall(protocol.answer(data))

    thread = threading.Thread(target=peer, daemon=True)
    thread.start()
    client = AgentClient(str(path), timeout=0.3, resync=False)
    with pytest.raises(AgentTimeout) as caught:
        client.ping()
    message = str(caught.value)
    assert "guest-ping" in message and str(path) in message and "0.3 s" in message
    answering.set()
    client.ping()  # resyncs first: the 0xFF and guest-sync-delimited went out
    client.close()
    assert b"\xff" in b"".join(received)
    listener.close()


class _EchoSyncPeer:
    """Just enough of an agent to answer sync-delimited and ping, through our own protocol code."""

    def __init__(self) -> None:
        from pyqga.protocol.server import ServerConnection

        self.conn = ServerConnection()

    def answer(self, data: bytes) -> bytes:
        from pyqga.protocol.dialects import Request, encode, reply_object

        out = b""
        for item in self.conn.receive_data(data):
            if not isinstance(item, Request):
                continue
            result = item.params.get("id") if isinstance(item.params, dict) else None
            delimited = item.method == "guest-sync-delimited"
            obj = reply_object(item.dialect, item.id, True, {} if result is None else result)
            out += encode(obj, delimited=delimited)
        return out


def test_connection_refused_and_closed_are_clear(tmp_path: Path) -> None:
    with pytest.raises(AgentConnectionError, match="cannot connect to unix:"):
        AgentClient(str(tmp_path / "nothing.sock"))
    path = tmp_path / "closer.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.listen(1)

    def closer() -> None:
        conn, _ = listener.accept()
        conn.recv(100)
        conn.close()

    threading.Thread(target=closer, daemon=True).start()
    with pytest.raises(AgentConnectionError, match="closed the connection"):
        AgentClient(str(path), timeout=5).ping()
    listener.close()


def test_client_connection_matches_ids_and_ignores_others() -> None:
    conn = ClientConnection(Dialect.QGA)
    request_id, data = conn.send_request("guest-sync", {"id": 5})
    assert json.loads(data) == {"execute": "guest-sync", "arguments": {"id": 5}, "id": request_id}
    resync = conn.start_resync(99)
    assert resync.startswith(b"\xff")
    # Stale reply, garbage, then the delimited sync answer: nothing is delivered, resync ends.
    assert conn.receive_data(b'{"return": 1, "id": 1}\n garbage \xff{"return": 99}\n') == []
    assert not conn.resyncing
    [reply] = conn.receive_data(b'{"return": 5, "id": %d}\n' % request_id)
    assert reply.ok and reply.result == 5


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = agent_env()
    return subprocess.run([sys.executable, "-m", "pyqga.host_client", *args], capture_output=True,
                          text=True, env=env, timeout=30)


def test_cli_outputs_and_exit_codes(agent: PyqgaAgent, tmp_path: Path) -> None:
    sock = str(agent.socket_path)
    ping = run_cli("--socket", sock, "ping")
    assert ping.returncode == 0 and "answered in" in ping.stdout
    info = run_cli("-s", sock, "--dialect", "qga", "info")
    assert info.returncode == 0 and "guest-sync-delimited" in info.stdout and "enabled" in info.stdout
    as_json = run_cli("info", "--json", "-s", sock)
    assert json.loads(as_json.stdout)["version"] == VERSION
    call = run_cli("-s", sock, "call", "guest-sync", '{"id": 42}')
    assert call.returncode == 0 and call.stdout.strip() == "42"
    sync = run_cli("-s", sock, "sync")
    assert sync.returncode == 0 and "in sync" in sync.stdout
    failed = run_cli("-s", sock, "call", "guest-nope")
    assert failed.returncode == 1 and failed.stderr.count("\n") == 1
    assert "CommandNotFound" in failed.stderr
    unreachable = run_cli("-s", str(tmp_path / "none.sock"), "ping")
    assert unreachable.returncode == 3 and "cannot connect" in unreachable.stderr
    bad_json = run_cli("-s", sock, "call", "guest-sync", "{id: 1}")
    assert bad_json.returncode == 2 and "not valid JSON" in bad_json.stderr
    help_text = run_cli("--help")
    assert help_text.returncode == 0 and "Exit status" in help_text.stdout
