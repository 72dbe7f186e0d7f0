"""The agent process over a real unix socket, in both dialects, raw bytes and through the client."""

from __future__ import annotations

import json
import os
import socket
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyqga.host_client import AgentCallError, AgentClient
from tests.rig.agent_process import ProcessFailed, PyqgaAgent, agent_env

QGA_SAFE_WHILE_FROZEN = {"guest-ping", "guest-info", "guest-sync", "guest-sync-delimited"}


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PyqgaAgent]:
    with PyqgaAgent(tmp_path_factory.mktemp("agent")) as running:
        yield running


def exchange(agent: PyqgaAgent, data: bytes, replies: int, timeout: float = 5.0) -> list[bytes]:
    """Send raw bytes; read until `replies` newline-terminated lines arrived."""
    with agent.connect(timeout) as sock:
        sock.sendall(data)
        return read_lines(sock, replies)


def read_lines(sock: socket.socket, count: int) -> list[bytes]:
    buffer = b""
    while buffer.count(b"\n") < count:
        chunk = sock.recv(65536)
        if not chunk:
            break
        buffer += chunk
    return buffer.splitlines()[:count] if count else []


def assert_silent(sock: socket.socket, wait: float = 0.3) -> None:
    sock.settimeout(wait)
    with pytest.raises(TimeoutError):
        data = sock.recv(100)
        pytest.fail(f"expected no reply, got {data!r}")


# --- qemu-ga dialect ----------------------------------------------------------------------------


def test_qga_ping_without_and_with_id(agent: PyqgaAgent) -> None:
    lines = exchange(agent, b'{"execute":"guest-ping"}{"execute":"guest-ping","id":"abc"}', 2)
    assert [json.loads(line) for line in lines] == [{"return": {}}, {"return": {}, "id": "abc"}]


def test_qga_sync_delimited_reply_starts_with_ff(agent: PyqgaAgent) -> None:
    [line] = exchange(agent, b'{"execute":"guest-sync-delimited","arguments":{"id":123}}\n', 1)
    assert line[:1] == b"\xff"
    assert json.loads(line[1:]) == {"return": 123}


def test_qga_errors_have_qemu_classes_and_texts(agent: PyqgaAgent) -> None:
    requests = [
        b'{"execute":"no-such-cmd"}',
        b'{"execute":"guest-sync"}',
        b'{"execute":"guest-sync","arguments":{"id":"x"}}',
        b'{"execute":"guest-sync","arguments":{"id":1,"foo":2}}',
        b'{"execute":"guest-ping","foo":1}',
        b'{"arguments":{}}',
        b'{"execute":5}',
        b'{"execute":"guest-ping","arguments":[]}',
    ]
    lines = exchange(agent, b"\n".join(requests) + b"\n", len(requests))
    errors = [json.loads(line)["error"] for line in lines]
    assert errors[0] == {"class": "CommandNotFound", "desc": "The command no-such-cmd has not been found"}
    assert [e["class"] for e in errors[1:]] == ["GenericError"] * 7
    assert errors[1]["desc"] == "Parameter 'id' is missing"
    assert errors[2]["desc"] == "Invalid parameter type for 'id', expected: integer"
    assert errors[3]["desc"] == "Parameter 'foo' is unexpected"
    assert errors[4]["desc"] == "QMP input member 'foo' is unexpected"
    assert errors[5]["desc"] == "QMP input lacks member 'execute'"
    assert errors[6]["desc"] == "QMP input member 'execute' must be a string"
    assert errors[7]["desc"] == "QMP input member 'arguments' must be an object"


def test_malformed_json_and_garbage_give_one_error_each_then_recover(agent: PyqgaAgent) -> None:
    lines = exchange(agent, b'{"execute":}\nabc def\n{"execute":"guest-ping","id":3}\n', 3)
    replies = [json.loads(line) for line in lines]
    assert [r["error"]["class"] for r in replies[:2]] == ["GenericError", "GenericError"]
    assert replies[2] == {"return": {}, "id": 3}


def test_unbalanced_message_swallows_input_until_resync(agent: PyqgaAgent) -> None:
    """A stream, not lines: an unclosed brace holds what follows until the host sends 0xFF."""
    with agent.connect() as sock:
        sock.sendall(b'{"execute":\n{"execute":"guest-ping","id":2}\n')
        assert_silent(sock)
        sock.sendall(b'\xff{"execute":"guest-ping","id":3}\n')
        assert [json.loads(line) for line in read_lines(sock, 1)] == [{"return": {}, "id": 3}]


def test_resync_byte_drops_partial_input_silently(agent: PyqgaAgent) -> None:
    with agent.connect() as sock:
        sock.sendall(b'{"execute":"guest-ping", "argu\xff{"execute":"guest-ping","id":9}\n')
        assert [json.loads(line) for line in read_lines(sock, 1)] == [{"return": {}, "id": 9}]
        assert_silent(sock)


def test_qga_replies_keep_request_order(agent: PyqgaAgent) -> None:
    template = b'{"execute":"guest-sync","arguments":{"id":%d},"id":%d}'
    messages = b"".join(template % (i, i) for i in range(200))
    lines = exchange(agent, messages, 200)
    assert [json.loads(line)["id"] for line in lines] == list(range(200))


# --- JSON-RPC dialect ---------------------------------------------------------------------------


def test_jsonrpc_request_notification_and_errors(agent: PyqgaAgent) -> None:
    with agent.connect() as sock:
        sock.sendall(b'{"jsonrpc":"2.0","method":"guest-ping"}\n')  # notification: no reply
        assert_silent(sock)
        sock.sendall(
            b'{"jsonrpc":"2.0","method":"guest-sync","params":{"id":5},"id":"a"}\n'
            b'{"jsonrpc":"2.0","method":"guest-sync","params":[6],"id":"b"}\n'
            b'{"jsonrpc":"2.0","method":"nope","id":1}\n'
            b'{"jsonrpc":"2.0","method":"guest-sync","params":{"id":true},"id":2}\n'
            b'{"jsonrpc":"1.0","method":"guest-ping","id":3}\n'
        )
        replies = [json.loads(line) for line in read_lines(sock, 5)]
    assert replies[0] == {"jsonrpc": "2.0", "result": 5, "id": "a"}
    assert replies[1] == {"jsonrpc": "2.0", "result": 6, "id": "b"}
    assert replies[2]["error"]["code"] == -32601 and replies[2]["id"] == 1
    assert replies[3]["error"]["code"] == -32602 and replies[3]["id"] == 2
    assert replies[4]["error"]["code"] == -32600 and replies[4]["id"] == 3


def test_jsonrpc_batches(agent: PyqgaAgent) -> None:
    with agent.connect() as sock:
        sock.sendall(
            b'[{"jsonrpc":"2.0","method":"guest-ping","id":1},{"jsonrpc":"2.0","method":"nope","id":2},'
            b'{"jsonrpc":"2.0","method":"guest-ping"},5]\n'
        )
        [line] = read_lines(sock, 1)
        batch = json.loads(line)
        assert [r.get("id") for r in batch] == [1, 2, None]
        assert batch[0]["result"] == {}
        assert batch[1]["error"]["code"] == -32601
        assert batch[2]["error"]["code"] == -32600
        sock.sendall(b"[]\n")
        [empty] = read_lines(sock, 1)
        assert json.loads(empty)["error"]["code"] == -32600
        sock.sendall(b'[{"jsonrpc":"2.0","method":"guest-ping"}]\n')  # only notifications
        assert_silent(sock)


def test_parse_error_uses_the_connections_dialect(agent: PyqgaAgent) -> None:
    with agent.connect() as sock:
        sock.sendall(b'{"jsonrpc":"2.0","method":"guest-ping","id":1}\n{"jsonrpc":,}\n')
        replies = [json.loads(line) for line in read_lines(sock, 2)]
    assert replies[1]["error"]["code"] == -32700 and replies[1]["id"] is None


# --- limits, concurrency, misbehaving clients ---------------------------------------------------


def test_oversized_message_one_error_then_next_works(tmp_path: Path) -> None:
    with PyqgaAgent(tmp_path, ["--max-message-size", "4096"]) as small, small.connect() as sock:
        huge = b'{"execute":"guest-sync","arguments":{"id":1,"pad":"' + b"x" * 100_000 + b'"}}'
        sock.sendall(huge + b'{"execute":"guest-ping","id":7}')
        replies = [json.loads(line) for line in read_lines(sock, 2)]
    assert "error" in replies[0] and "4096" in replies[0]["error"]["desc"]
    assert replies[1] == {"return": {}, "id": 7}


def test_many_clients_at_once_both_dialects(agent: PyqgaAgent) -> None:
    failures: list[BaseException] = []

    def worker(index: int) -> None:
        try:
            with AgentClient(str(agent.socket_path), dialect="qga" if index % 2 else "jsonrpc") as client:
                for n in range(100):
                    assert client.call("guest-sync", id=index * 1000 + n) == index * 1000 + n
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not failures, failures[:3]


def test_client_dying_mid_message_or_not_reading_harms_no_one(agent: PyqgaAgent) -> None:
    half = agent.connect()
    half.sendall(b'{"execute":"guest-sy')  # then vanishes
    half.close()
    hog = agent.connect()
    hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    request = b'{"execute":"guest-info"}' * 2000
    hog.setblocking(False)
    sent = 0
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and sent < 5_000_000:
        try:
            sent += hog.send(request)
        except BlockingIOError:
            break  # the agent stopped reading from us: backpressure works
    with AgentClient(str(agent.socket_path)) as client:
        for n in range(50):
            assert client.call("guest-sync", id=n) == n
    assert agent.rss_kib() < 200_000
    hog.close()


def test_socket_is_private_and_stale_socket_is_replaced(tmp_path: Path) -> None:
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(tmp_path / "agent.sock"))
    stale.close()  # the path stays, nobody listens: what a killed agent leaves behind
    with PyqgaAgent(tmp_path) as running:
        mode = stat.S_IMODE(os.stat(running.socket_path).st_mode)
        assert mode == 0o600
        second = PyqgaAgent(tmp_path / "second", ["-p", str(running.socket_path)])
        with pytest.raises(ProcessFailed, match="in use by a running agent"):
            second.start()
    assert not running.socket_path.exists()


def test_second_agent_on_same_pidfile_refuses(tmp_path: Path) -> None:
    pidfile = tmp_path / "agent.pid"
    with PyqgaAgent(tmp_path / "a", ["-f", str(pidfile)]) as first:
        assert pidfile.read_text().strip() == str(first.pid)
        second = PyqgaAgent(tmp_path / "b", ["-f", str(pidfile)])
        with pytest.raises(ProcessFailed, match="holds"):
            second.start()
    assert not pidfile.exists()


def test_sigterm_stops_cleanly(tmp_path: Path) -> None:
    running = PyqgaAgent(tmp_path)
    running.start()
    assert running.stop() == 0
    assert "stopped" in running.log_path.read_text()


# --- blocked and allowed commands ---------------------------------------------------------------


def test_block_rpcs_disables_like_qemu_ga(tmp_path: Path) -> None:
    with PyqgaAgent(tmp_path, ["-b", "guest-get-time,guest-get-osinfo"]) as running:
        with AgentClient(str(running.socket_path), dialect="qga") as client:
            with pytest.raises(AgentCallError) as caught:
                client.call("guest-get-time")
            enabled = {c["name"]: c["enabled"] for c in client.info()["supported_commands"]}
        assert caught.value.error_class == "CommandNotFound"
        assert "guest-get-time has been disabled" in str(caught.value)
        assert enabled["guest-get-time"] is False and enabled["guest-get-osinfo"] is False
        assert enabled["guest-ping"] is True


def test_allow_rpcs_disables_everything_else(tmp_path: Path) -> None:
    allowed = ["-a", "guest-ping,guest-info,guest-sync-delimited"]
    with PyqgaAgent(tmp_path, allowed) as running, AgentClient(str(running.socket_path)) as client:
        client.ping()
        enabled = {c["name"] for c in client.info()["supported_commands"] if c["enabled"]}
        with pytest.raises(AgentCallError):
            client.call("guest-get-host-name")
    assert enabled == {"guest-ping", "guest-info", "guest-sync-delimited"}


def test_daemonize_returns_at_once_and_serves_with_a_pid_file(tmp_path: Path) -> None:
    import os as _os
    import signal as _signal
    import subprocess as _subprocess

    from tests.rig.agent_process import agent_command

    pidfile = tmp_path / "agent.pid"
    command = [*agent_command(tmp_path, ["-d", "-f", str(pidfile)])]
    launched = _subprocess.run(command, capture_output=True, timeout=30,
                               env=agent_env())
    assert launched.returncode == 0, launched.stderr
    deadline = time.monotonic() + 15
    while not (pidfile.exists() and pidfile.read_text().strip()):
        assert time.monotonic() < deadline, "the daemon wrote no pid file"
        time.sleep(0.02)
    daemon_pid = int(pidfile.read_text())
    try:
        with AgentClient(str(tmp_path / "agent.sock")) as client:
            client.ping()
        assert _os.getsid(daemon_pid) != _os.getsid(0)  # detached from our session
    finally:
        _os.kill(daemon_pid, _signal.SIGTERM)
    deadline = time.monotonic() + 15
    while pidfile.exists() or (tmp_path / "agent.sock").exists():
        assert time.monotonic() < deadline, "the daemon did not clean up after SIGTERM"
        time.sleep(0.02)
