"""The agent's channels and the client's transports, over real ptys, sockets and socat relays.

virtio-serial needs a VM (tests/vm/test_*.py); here: isa-serial on a real pty pair, retrying a
missing device, systemd socket activation, and the client's tcp, serial and pyserial-URL
transports.  socat links two ptys as a null-modem cable would.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyqga.host_client import AgentClient, AgentConnectionError
from pyqga.host_client.transport import parse_address
from tests.rig.agent_process import ListeningProcess, PyqgaAgent, agent_command, agent_env
from tests.rig.requirements import require_tool


class Socat:
    """A socat process; waits until the paths it creates exist."""

    def __init__(self, *args: str, wait_for: tuple[Path, ...] = ()) -> None:
        require_tool("socat")
        self.process = subprocess.Popen(["socat", *args], stdin=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while not all(path.exists() for path in wait_for):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"socat did not start: {self.process.stderr.read().decode()}")  # type: ignore[union-attr]
            time.sleep(0.01)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(5)


@pytest.fixture
def pty_pair(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """Two linked ptys: the guest's serial line and the host's end of it."""
    guest, host = tmp_path / "ttyGuest", tmp_path / "ttyHost"
    relay = Socat(f"PTY,link={guest},raw,echo=0", f"PTY,link={host},raw,echo=0", wait_for=(guest, host))
    yield guest, host
    relay.stop()


def serial_agent(workdir: Path, device: Path, *extra: str) -> subprocess.Popen[bytes]:
    command = [arg if arg != "unix-listen" else "isa-serial" for arg in agent_command(workdir)]
    command[command.index("-p") + 1] = str(device)
    workdir.mkdir(parents=True, exist_ok=True)
    log = open(workdir / "agent.log", "wb")  # noqa: SIM115 - the child owns it
    return subprocess.Popen([*command, *extra], stdout=log, stderr=log,
                            env=agent_env())


def stop(process: subprocess.Popen[bytes]) -> int:
    process.terminate()
    try:
        return process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


def test_isa_serial_over_a_pty_in_both_dialects(tmp_path: Path, pty_pair: tuple[Path, Path]) -> None:
    guest, host = pty_pair
    agent = serial_agent(tmp_path / "agent", guest)
    try:
        for dialect in ("qga", "jsonrpc"):
            with AgentClient(f"serial:{host}", dialect=dialect, timeout=10) as client:
                client.ping()
                assert client.call("guest-sync", id=11) == 11
                assert "guest-fsfreeze-status" in {c["name"] for c in client.info()["supported_commands"]}
    finally:
        assert stop(agent) == 0


def test_serial_line_with_garbage_and_a_half_message_resyncs(
    tmp_path: Path, pty_pair: tuple[Path, Path]
) -> None:
    """A serial line has no connections: a dead host's leftovers stay in the agent's decoder."""
    guest, host = pty_pair
    agent = serial_agent(tmp_path / "agent", guest)
    try:
        with open(host, "r+b", buffering=0) as line:
            line.write(b'garbage {"execute":"guest-sync","arguments":{"id":1}}{"execute":"guest-pi')
        with AgentClient(f"serial:{host}?baud=115200", dialect="qga", timeout=10) as client:
            assert client.call("guest-sync", id=2) == 2
    finally:
        stop(agent)


def test_missing_device_is_a_clear_error_and_retry_path_waits(tmp_path: Path) -> None:
    require_tool("socat")
    missing = tmp_path / "ttyLater"
    failed = serial_agent(tmp_path / "a", missing)
    assert failed.wait(20) == 1
    log = (tmp_path / "a" / "agent.log").read_text()
    assert f"cannot open isa-serial channel {missing}" in log

    waiting = serial_agent(tmp_path / "b", missing, "-r")
    try:
        time.sleep(1.5)
        assert waiting.poll() is None, "with -r the agent must wait for the device"
        host = tmp_path / "ttyHost"
        relay = Socat(f"PTY,link={missing},raw,echo=0", f"PTY,link={host},raw,echo=0",
                      wait_for=(missing, host))
        try:
            with AgentClient(f"serial:{host}", dialect="qga", timeout=10) as client:
                client.ping()
        finally:
            relay.stop()
    finally:
        stop(waiting)
    assert "retrying every" in (tmp_path / "b" / "agent.log").read_text()


def test_tcp_and_pyserial_url_transports_through_a_relay(tmp_path: Path) -> None:
    with PyqgaAgent(tmp_path / "agent") as agent:
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        relay = Socat(f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork", f"UNIX-CONNECT:{agent.socket_path}")
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), 1).close()
                    break
                except OSError:
                    assert time.monotonic() < deadline
                    time.sleep(0.02)
            with AgentClient(f"tcp:127.0.0.1:{port}") as client:
                assert client.call("guest-sync", id=5) == 5
            with AgentClient(f"socket://127.0.0.1:{port}", dialect="qga") as client:
                assert client.call("guest-sync", id=6) == 6
        finally:
            relay.stop()


def test_address_parsing_and_clear_connection_errors(tmp_path: Path) -> None:
    assert parse_address("/run/x.sock") == ("unix", "/run/x.sock")
    assert parse_address("unix:/run/x.sock") == ("unix", "/run/x.sock")
    assert parse_address("vsock:3:1024") == ("vsock", "3:1024")
    assert parse_address("serial:/dev/pts/3?baud=9600") == ("serial", "/dev/pts/3?baud=9600")
    assert parse_address("rfc2217://h:7000") == ("url", "rfc2217://h:7000")
    with pytest.raises(AgentConnectionError, match="HOST:PORT"):
        AgentClient("tcp:nowhere")
    with pytest.raises(AgentConnectionError, match=f"cannot open serial:{tmp_path}/none"):
        AgentClient(f"serial:{tmp_path}/none")
    with pytest.raises(AgentConnectionError, match="cannot connect to vsock:"):
        AgentClient("vsock:2:9", timeout=2)


def test_systemd_socket_activation(tmp_path: Path) -> None:
    """The socket comes from the service manager as fd 3 (LISTEN_FDS/LISTEN_PID)."""
    path = tmp_path / "activated.sock"
    command = agent_command(tmp_path)
    launcher = (
        "import os, socket, sys\n"
        f"s = socket.socket(socket.AF_UNIX); s.bind({str(path)!r}); s.listen()\n"
        "os.dup2(s.fileno(), 3) if s.fileno() != 3 else None\n"
        "os.set_inheritable(3, True)\n"
        "os.environ.update(LISTEN_FDS='1', LISTEN_PID=str(os.getpid()))\n"
        f"os.execv(sys.executable, {json.dumps(command)})\n"
    )
    runner = ListeningProcess([sys.executable, "-c", launcher], path, tmp_path / "agent.log",
                              env=agent_env())
    with runner:
        with AgentClient(str(path)) as client:
            assert client.call("guest-sync", id=9) == 9
        assert not (tmp_path / "agent.sock").exists()  # -p was not used: the socket came from fd 3
