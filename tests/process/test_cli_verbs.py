"""The qemu-ga-client verbs of the ``pyqga`` CLI (issue 11), run as an operator runs them.

Every test runs ``python -m host_client`` in a subprocess against a real agent: pyqga, and
Debian's real qemu-ga (both in the qga dialect, which both speak).  Read verbs go to agents with
default options; freezes go only to pyqga limited by ``--freeze-include`` to the test's loop
filesystems, or to qemu-ga isolated in a mount namespace (IsolatedQemuGa) and only as
freeze-lists (never a freeze-all: qemu-ga would freeze ``/``).  Shutdown verbs go to a pyqga
whose shutdown program is a recorder; suspend goes only to a fake agent that records the request
(a real agent would suspend this machine).
"""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pyqga.agent.config import VERSION
from pyqga.host_client import AgentClient
from tests.rig.agent_process import REPO_ROOT, PyqgaAgent, agent_env
from tests.rig.freezing import start_writer
from tests.rig.loopfs import LoopFs, LoopMounts, thaw_fully
from tests.rig.qemu_ga import IsolatedQemuGa, QemuGa, QemuGaUnavailable, ensure_qemu_ga, require_qemu_ga

PEERS = ("pyqga", "qemu-ga")


def pyqga(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = agent_env()
    return subprocess.run([sys.executable, "-m", "pyqga.host_client", *args], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=REPO_ROOT)


def pyqga_bytes(*args: str) -> subprocess.CompletedProcess[bytes]:
    env = agent_env()
    return subprocess.run([sys.executable, "-m", "pyqga.host_client", *args], capture_output=True,
                          env=env, timeout=60, cwd=REPO_ROOT)


@pytest.fixture(scope="module")
def agents(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Socket paths of a pyqga and, where it can be had, a qemu-ga, both with default options
    (read verbs only: nothing here freezes, trims or shuts down)."""
    sockets: dict[str, str] = {}
    with PyqgaAgent(tmp_path_factory.mktemp("pyqga")) as ours:
        sockets["pyqga"] = str(ours.socket_path)
        try:
            ensure_qemu_ga()
        except QemuGaUnavailable:
            yield sockets
            return
        with QemuGa(tmp_path_factory.mktemp("qga")) as qga:
            sockets["qemu-ga"] = str(qga.socket_path)
            yield sockets


@pytest.fixture(params=PEERS)
def peer(request: pytest.FixtureRequest, agents: dict[str, str]) -> tuple[str, list[str]]:
    """(name, the CLI's connection options) for one peer, qga dialect."""
    name = str(request.param)
    if name not in agents:
        require_qemu_ga()
    return name, ["-s", agents[name], "--dialect", "qga"]


def agent_has(connection: list[str], command: str) -> bool:
    info = json.loads(pyqga(*connection, "info", "--json").stdout)
    return any(c["name"] == command and c["enabled"] for c in info["supported_commands"])


def assert_listed(peer: tuple[str, list[str]], command: str) -> None:
    """qemu-ga has the command, and so must pyqga: its guest-info lists it, enabled."""
    name, connection = peer
    if name == "pyqga":
        assert agent_has(connection, command), f"pyqga's guest-info no longer lists {command}"


# --- read verbs ----------------------------------------------------------------------------------


def test_cat_prints_the_file_exactly(peer: tuple[str, list[str]], tmp_path: Path) -> None:
    _, connection = peer
    content = b"first line\n\xff\x00binary \xe9t\xe9\nlast line without newline" + os.urandom(3000)
    path = tmp_path / "cat-me.bin"
    path.write_bytes(content)
    done = pyqga_bytes(*connection, "cat", str(path))
    assert done.returncode == 0, done.stderr
    assert done.stdout == content
    as_json = json.loads(pyqga(*connection, "cat", str(path), "--json").stdout)
    assert base64.b64decode(as_json["buf-b64"]) == content
    assert as_json["size"] == len(content) and as_json["path"] == str(path)
    missing = pyqga(*connection, "cat", str(tmp_path / "no-such-file"))
    assert missing.returncode == 1, missing
    assert "no-such-file" in missing.stderr or "No such file" in missing.stderr
    assert missing.stdout == ""


def test_osinfo_shows_this_kernel(peer: tuple[str, list[str]]) -> None:
    _, connection = peer
    uname = os.uname()
    done = pyqga(*connection, "osinfo")
    assert done.returncode == 0, done.stderr
    lines = dict(line.split(":", 1) for line in done.stdout.splitlines())
    assert lines["kernel-release"].strip() == uname.release
    assert lines["kernel-version"].strip() == uname.version
    assert lines["machine"].strip() == uname.machine
    os_release = dict(line.split("=", 1) for line in Path("/etc/os-release").read_text().splitlines()
                      if "=" in line)
    assert lines["id"].strip() == os_release["ID"].strip('"')
    raw = json.loads(pyqga(*connection, "osinfo", "--json").stdout)
    assert raw["kernel-release"] == uname.release and raw["machine"] == uname.machine


def test_info_lists_the_version_and_commands(peer: tuple[str, list[str]]) -> None:
    name, connection = peer
    raw = pyqga(*connection, "info", "--json")
    assert raw.returncode == 0, raw.stderr
    info = json.loads(raw.stdout)
    if name == "pyqga":
        assert info["version"] == VERSION
    else:
        version = subprocess.run([str(ensure_qemu_ga()), "-V"], capture_output=True, text=True).stdout
        assert info["version"] in version
    human = pyqga(*connection, "info")
    assert human.returncode == 0
    assert f"agent version {info['version']}" in human.stdout
    for command in ("guest-ping", "guest-file-open", "guest-get-osinfo", "guest-fsfreeze-status"):
        assert any(line.split()[:1] == [command] for line in human.stdout.splitlines()), command


def test_ping(peer: tuple[str, list[str]], tmp_path: Path) -> None:
    _, connection = peer
    done = pyqga(*connection, "ping")
    assert done.returncode == 0 and "agent answered in" in done.stdout
    gone = pyqga("-s", str(tmp_path / "nobody.sock"), "osinfo")
    assert gone.returncode == 3 and "cannot connect" in gone.stderr


def test_fsinfo_lists_the_mounts(peer: tuple[str, list[str]]) -> None:
    _, connection = peer
    raw = json.loads(pyqga(*connection, "fsinfo", "--json").stdout)
    root = [fs for fs in raw if fs["mountpoint"] == "/"]
    assert root, raw
    assert root[0]["type"] == next(line.split()[2] for line in Path("/proc/mounts").read_text().splitlines()
                                   if line.split()[1] == "/")
    done = pyqga(*connection, "fsinfo")
    assert done.returncode == 0
    header, *rows = done.stdout.splitlines()
    assert header.split() == ["MOUNTPOINT", "TYPE", "NAME", "USED", "TOTAL", "DISKS"]
    assert [row.split()[0] for row in rows] == [fs["mountpoint"] for fs in raw]
    root_row = rows[[fs["mountpoint"] for fs in raw].index("/")].split()
    assert root_row[1] == root[0]["type"] and root_row[2] == root[0]["name"]


def test_fsfreeze_status_when_thawed(peer: tuple[str, list[str]]) -> None:
    _, connection = peer
    done = pyqga(*connection, "fsfreeze", "status")
    assert done.returncode == 0 and done.stdout == "thawed\n"
    assert json.loads(pyqga(*connection, "fsfreeze", "status", "--json").stdout) == "thawed"


def test_ifconfig_shows_this_machines_interfaces(peer: tuple[str, list[str]]) -> None:
    assert_listed(peer, "guest-network-get-interfaces")
    _, connection = peer
    done = pyqga(*connection, "ifconfig")
    assert done.returncode == 0, done.stderr
    blocks: dict[str, list[str]] = {}
    current = ""
    for line in done.stdout.splitlines():
        if line.startswith("\t"):
            blocks[current].append(line.strip())
        else:
            current = line.rstrip(":")
            blocks[current] = []
    assert set(blocks) == set(os.listdir("/sys/class/net"))
    assert "inet 127.0.0.1  netmask 255.0.0.0" in blocks["lo"]
    for name, lines in blocks.items():
        mac = Path(f"/sys/class/net/{name}/address").read_text().strip()
        if mac and mac != "00:00:00:00:00:00":
            assert f"ether {mac}" in lines, (name, lines)
    addresses = subprocess.run(["ip", "-j", "addr"], capture_output=True, text=True)
    if addresses.returncode == 0:
        for link in json.loads(addresses.stdout):
            for addr in link.get("addr_info", []):
                if addr["family"] == "inet":
                    assert any(line.startswith(f"inet {addr['local']}  netmask ")
                               for line in blocks[link["ifname"]]), (link["ifname"], addr)
                elif addr["family"] == "inet6":
                    assert f"inet6 {addr['local']}  prefixlen {addr['prefixlen']}" in blocks[link["ifname"]]
    raw = json.loads(pyqga(*connection, "ifconfig", "--json").stdout)
    assert {nif["name"] for nif in raw} == set(blocks)


def test_vcpus_match_this_machine(peer: tuple[str, list[str]]) -> None:
    assert_listed(peer, "guest-get-vcpus")
    _, connection = peer
    raw = json.loads(pyqga(*connection, "vcpus", "--json").stdout)
    online = set()
    for part in Path("/sys/devices/system/cpu/online").read_text().strip().split(","):
        low, _, high = part.partition("-")
        online.update(range(int(low), int(high or low) + 1))
    assert {cpu["logical-id"] for cpu in raw if cpu["online"]} == online
    done = pyqga(*connection, "vcpus")
    assert done.returncode == 0
    rows = [line.split() for line in done.stdout.splitlines()[1:-1]]
    assert [int(row[0]) for row in rows] == [cpu["logical-id"] for cpu in raw]
    assert all(row[1] == ("yes" if cpu["online"] else "no") for row, cpu in zip(rows, raw, strict=True))
    assert done.stdout.splitlines()[-1] == f"{len(online)} of {len(raw)} online"


def test_users_match_who(peer: tuple[str, list[str]]) -> None:
    assert_listed(peer, "guest-get-users")
    _, connection = peer
    raw = json.loads(pyqga(*connection, "users", "--json").stdout)
    who = subprocess.run(["who"], capture_output=True, text=True).stdout
    assert {user["user"] for user in raw} == {line.split()[0] for line in who.splitlines() if line.strip()}
    done = pyqga(*connection, "users")
    assert done.returncode == 0
    if raw:
        assert [line.split()[0] for line in done.stdout.splitlines()[1:]] == [u["user"] for u in raw]
    else:
        assert done.stdout == "no users logged in\n"


# --- freezing ------------------------------------------------------------------------------------


def frozen(fs: LoopFs) -> bool:
    """A write that does not finish within 1 s: the filesystem is frozen.  The writer is left
    to finish when it is thawed (the caller thaws)."""
    writer = start_writer(fs.mountpoint / "probe.txt")
    try:
        writer.wait(1)
        return False
    except subprocess.TimeoutExpired:
        threading.Thread(target=writer.wait, daemon=True).start()
        return True


@pytest.fixture
def pyqga_on_loops(tmp_path: Path, loops: LoopMounts) -> Iterator[tuple[list[str], LoopFs, LoopFs]]:
    a, b = loops.add("a"), loops.add("b")
    with PyqgaAgent(tmp_path / "agent", ["--freeze-include", loops.glob()]) as agent:
        yield ["-s", str(agent.socket_path)], a, b
    assert loops.thaw_all() == 0, "a test left a loop filesystem frozen"


@pytest.mark.root
def test_freeze_and_thaw_with_epoch_on_pyqga(pyqga_on_loops: tuple[list[str], LoopFs, LoopFs]) -> None:
    connection, a, b = pyqga_on_loops
    done = pyqga(*connection, "freeze", "--mount", str(a), "--timeout", "120")
    assert done.returncode == 0, done.stderr
    assert "no auto-thaw" not in done.stderr
    first, second = done.stdout.splitlines()
    assert first == "1 filesystems frozen"
    epoch = int(second.split()[1].rstrip(":"))
    assert f"'pyqga thaw --epoch {epoch}'" in second and "thaws by itself at" in second
    left = float(second.rsplit("(in ", 1)[1].split()[0])
    assert 110 <= left <= 120
    assert frozen(a) and not frozen(b)
    assert pyqga(*connection, "fsfreeze", "status").stdout == "frozen\n"
    thawed = pyqga(*connection, "thaw", "--epoch", str(epoch))
    assert thawed.returncode == 0, thawed.stderr
    assert thawed.stdout == f"1 filesystems thawed (freeze {epoch} held until now)\n"
    assert not frozen(a)
    assert pyqga(*connection, "fsfreeze", "status").stdout == "thawed\n"


@pytest.mark.root
def test_freeze_json_and_a_freeze_that_did_not_hold(pyqga_on_loops: tuple[list[str], LoopFs, LoopFs]) -> None:
    connection, a, b = pyqga_on_loops
    done = pyqga(*connection, "freeze", "--mount", str(a), "--mount", str(b), "--timeout", "1", "--json")
    assert done.returncode == 0, done.stderr
    raw = json.loads(done.stdout)
    assert raw["count"] == 2 and raw["auto-thaw"] is True
    assert raw["info"]["status"] == "frozen" and raw["info"]["epoch"] == raw["epoch"]
    assert sorted(fs["mountpoint"] for fs in raw["info"]["frozen"]) == sorted([str(a), str(b)])
    deadline = time.monotonic() + 10
    while pyqga(*connection, "fsfreeze", "status").stdout != "thawed\n":
        assert time.monotonic() < deadline, "the agent's auto-thaw did not come"
        time.sleep(0.2)
    lost = pyqga(*connection, "thaw", "--epoch", str(raw["epoch"]))
    assert lost.returncode == 4, lost
    assert "did not hold" in lost.stderr
    assert not frozen(a) and not frozen(b)


@pytest.mark.root
def test_fsfreeze_freeze_all_and_thaw_on_pyqga(pyqga_on_loops: tuple[list[str], LoopFs, LoopFs]) -> None:
    """qemu-ga-client's 'fsfreeze freeze': a freeze-all, which --freeze-include keeps to the loops."""
    connection, a, b = pyqga_on_loops
    done = pyqga(*connection, "fsfreeze", "freeze")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "2 filesystems frozen"
    assert frozen(a) and frozen(b)
    assert pyqga(*connection, "fsfreeze", "status").stdout == "frozen\n"
    thawed = pyqga(*connection, "fsfreeze", "thaw")
    assert thawed.returncode == 0 and thawed.stdout == "2 filesystems thawed\n"
    assert not frozen(a) and not frozen(b)
    assert json.loads(pyqga(*connection, "thaw", "--json").stdout) == 0


@pytest.mark.root
def test_freeze_usage_errors(pyqga_on_loops: tuple[list[str], LoopFs, LoopFs]) -> None:
    connection, a, _ = pyqga_on_loops
    assert pyqga(*connection, "freeze", "--mount", str(a), "--timeout", "0").returncode == 2
    assert pyqga(*connection, "fsfreeze", "melt").returncode == 2
    not_a_mount = pyqga(*connection, "freeze", "--mount", str(a.mountpoint / "nope"))
    assert not_a_mount.returncode == 1 and "nope" in not_a_mount.stderr
    assert not frozen(a)


@pytest.mark.root
@pytest.mark.qemu_ga
def test_freeze_and_thaw_on_qemu_ga(tmp_path: Path, qga_loops: LoopMounts) -> None:
    a, b = qga_loops.add("a"), qga_loops.add("b")
    with IsolatedQemuGa(tmp_path / "qga", qga_loops) as qga:
        connection = ["-s", str(qga.socket_path), "--dialect", "qga"]
        try:
            done = pyqga(*connection, "freeze", "--mount", str(a), "--timeout", "30")
            assert done.returncode == 0, done.stderr
            assert "has no auto-thaw" in done.stderr and "leaves the guest frozen" in done.stderr
            assert "--timeout 30 ignored" in done.stderr
            assert done.stdout == "1 filesystems frozen\n"
            assert frozen(a) and not frozen(b)
            assert pyqga(*connection, "fsfreeze", "status").stdout == "frozen\n"
            no_epochs = pyqga(*connection, "thaw", "--epoch", "1")
            assert no_epochs.returncode == 2 and "no freeze epochs" in no_epochs.stderr
            assert frozen(a)
            thawed = pyqga(*connection, "thaw")
            assert thawed.returncode == 0 and thawed.stdout == "1 filesystems thawed\n"
            assert not frozen(a)
            assert pyqga(*connection, "fsfreeze", "status").stdout == "thawed\n"
        finally:
            qga_loops.thaw_all()
    assert thaw_fully(a.mountpoint) == 0


@pytest.mark.root
def test_fstrim_reports_each_filesystem(pyqga_on_loops: tuple[list[str], LoopFs, LoopFs]) -> None:
    connection, a, b = pyqga_on_loops
    raw = json.loads(pyqga(*connection, "fstrim", "--json").stdout)
    assert sorted(entry["path"] for entry in raw["paths"]) == sorted([str(a), str(b)])
    done = pyqga(*connection, "fstrim", "4096")
    assert done.returncode == 0, done.stderr
    lines = sorted(done.stdout.splitlines())
    assert [line.split(":")[0] for line in lines] == sorted([str(a), str(b)])
    for line, entry in zip(lines, sorted(raw["paths"], key=lambda e: e["path"]), strict=True):
        if "error" in entry:
            assert line == f"{entry['path']}: error: {entry['error']}"
        else:
            assert line.endswith(" bytes trimmed")
            trimmed, st = int(line.split()[1]), os.statvfs(entry["path"])
            assert 0 <= trimmed <= st.f_blocks * st.f_frsize and trimmed % st.f_frsize == 0, line


# --- shutdown and suspend ------------------------------------------------------------------------


@pytest.fixture
def recording_agent(tmp_path: Path) -> Iterator[Callable[[int], tuple[list[str], Path]]]:
    """``start(exit_status)``: a pyqga whose shutdown program records its argv and exits so."""
    started: list[PyqgaAgent] = []

    def start(status: int) -> tuple[list[str], Path]:
        record = tmp_path / f"shutdown-{status}.log"
        program = tmp_path / f"shutdown-{status}"
        program.write_text(f'#!/bin/sh\necho "$@" >> {record}\nexit {status}\n')
        program.chmod(0o755)
        agent = PyqgaAgent(tmp_path / f"agent-{status}")
        assert agent.env is not None
        agent.env["PYQGA_SHUTDOWN_PROGRAM"] = str(program)
        agent.start()
        started.append(agent)
        return ["-s", str(agent.socket_path)], record

    yield start
    for agent in started:
        agent.stop()


@pytest.mark.parametrize("dialect", ["qga", "jsonrpc"])
def test_powerdown_reboot_halt_run_the_shutdown_program(
        recording_agent: Callable[[int], tuple[list[str], Path]], dialect: str) -> None:
    connection, record = recording_agent(0)
    for verb, flag in (("powerdown", "-P"), ("reboot", "-r"), ("halt", "-H")):
        done = pyqga(*connection, "--dialect", dialect, "--timeout", "2", verb)
        assert done.returncode == 0, done.stderr
        assert record.read_text().splitlines()[-1] == f"{flag} +0 hypervisor initiated shutdown"
        assert done.stdout.startswith("guest-shutdown")
    assert len(record.read_text().splitlines()) == 3
    as_json = json.loads(pyqga(*connection, "--dialect", dialect, "--timeout", "2", "halt", "--json").stdout)
    assert as_json["method"] == "guest-shutdown" and as_json["arguments"] == {"mode": "halt"}


Recorder = Callable[[int], tuple[list[str], Path]]


def test_a_failed_shutdown_is_an_agent_error(recording_agent: Recorder) -> None:
    connection, record = recording_agent(3)
    done = pyqga(*connection, "--dialect", "qga", "--timeout", "10", "reboot")
    assert done.returncode == 1, done
    assert "failed to shutdown" in done.stderr and "exited with 3" in done.stderr
    assert record.read_text() == "-r +0 hypervisor initiated shutdown\n"


class FakeAgent:
    """A unix socket that answers qemu-ga's resync and records every other request, answering
    it only with ``answer`` (None: no reply, as a guest that suspends)."""

    def __init__(self, path: Path, answer: dict[str, Any] | None = None) -> None:
        self.path = path
        self.answer = answer
        self.requests: list[dict[str, Any]] = []
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                buffer = b""
                while chunk := conn.recv(4096):
                    buffer += chunk.replace(b"\xff", b"")
                    while b"\n" in buffer or buffer.rstrip().endswith(b"}"):
                        text, _, buffer = buffer.partition(b"\n")
                        if not text.strip():
                            continue
                        request = json.loads(text)
                        if request.get("execute") == "guest-sync-delimited":
                            reply = {"return": request["arguments"]["id"]}
                            conn.sendall(b"\xff" + json.dumps(reply).encode() + b"\n")
                            continue
                        self.requests.append(request)
                        if self.answer is not None:
                            reply = {**self.answer, **({"id": request["id"]} if "id" in request else {})}
                            conn.sendall(json.dumps(reply).encode() + b"\n")

    def close(self) -> None:
        self.listener.close()


@pytest.mark.parametrize("mode", ["disk", "ram", "hybrid"])
def test_suspend_sends_the_command_and_takes_silence_as_success(tmp_path: Path, mode: str) -> None:
    fake = FakeAgent(tmp_path / "fake.sock")
    try:
        done = pyqga("-s", str(fake.path), "--dialect", "qga", "--timeout", "1.5", "suspend", mode)
    finally:
        fake.close()
    assert done.returncode == 0, done.stderr
    assert [r["execute"] for r in fake.requests] == [f"guest-suspend-{mode}"]
    assert "arguments" not in fake.requests[0] or not fake.requests[0]["arguments"]
    assert "no reply within 1.5 s, as on success" in done.stdout


def test_suspend_error_is_an_agent_error(tmp_path: Path) -> None:
    answer = {"error": {"class": "GenericError", "desc": "suspend-to-RAM not supported"}}
    fake = FakeAgent(tmp_path / "fake.sock", answer)
    try:
        done = pyqga("-s", str(fake.path), "--dialect", "qga", "suspend", "ram")
        usage = pyqga("-s", str(fake.path), "--dialect", "qga", "suspend", "sleep")
    finally:
        fake.close()
    assert done.returncode == 1 and "suspend-to-RAM not supported" in done.stderr
    assert usage.returncode == 2
    assert [r["execute"] for r in fake.requests] == ["guest-suspend-ram"]


# --- help ----------------------------------------------------------------------------------------


VERB_HELP = {
    "cat": "guest-file-open", "fsfreeze": "guest-fsfreeze-status", "freeze": "guest-fsfreeze-freeze-list",
    "thaw": "--epoch", "fsinfo": "guest-get-fsinfo", "fstrim": "guest-fstrim",
    "ifconfig": "guest-network-get-interfaces", "vcpus": "guest-get-vcpus", "users": "guest-get-users",
    "osinfo": "guest-get-osinfo", "suspend": "guest-suspend-disk", "powerdown": "guest-shutdown",
    "reboot": "guest-shutdown", "halt": "guest-shutdown",
}


def test_every_verb_explains_itself() -> None:
    top = pyqga("--help")
    for verb, mentions in VERB_HELP.items():
        assert f"    {verb} " in top.stdout, verb
        done = pyqga(verb, "--help")
        assert done.returncode == 0, done.stderr
        text = re.sub(r"-\s+", "-", " ".join(done.stdout.split()))  # argparse wraps at hyphens
        assert mentions in text, (verb, done.stdout)
        assert "--json" in done.stdout


@pytest.mark.root
def test_a_cli_freeze_is_thawed_by_the_library(pyqga_on_loops: tuple[list[str], LoopFs, LoopFs]) -> None:
    """A freeze left by 'pyqga freeze' (default auto-thaw) is the agent's current freeze: the
    library sees its epoch and thaws it with that epoch."""
    connection, a, _ = pyqga_on_loops
    raw = json.loads(pyqga(*connection, "freeze", "--mount", str(a), "--json").stdout)
    with AgentClient(connection[1], timeout=30) as client:
        assert client.call("guest-fsfreeze-info")["epoch"] == raw["epoch"]
        assert client.thaw(raw["epoch"]) == 1
    assert not frozen(a)
