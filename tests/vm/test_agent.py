"""pyqga where it is meant to run: inside a QEMU guest, over virtio-serial and a serial line.

One guest runs pyqga on virtio-serial and on ttyS1, qemu-ga on a second virtio-serial port, and a
busy workload on /data.  Whether a guest writer is blocked is read from outside, from QEMU's own
block statistics: while /data is frozen no write may reach its disk.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pyqga.host_client import AgentCallError, AgentClient
from pyqga.host_client.qmp import QMPConnection
from tests.rig.agent_process import agent_env
from tests.rig.consistency import compare, format_comparison
from tests.rig.image import GuestImage
from tests.rig.machine import GuestVM

pytestmark = pytest.mark.root
ALL_AGENTS = ("pyqga-virtio", "qga-virtio", "pyqga-serial")


@pytest.fixture(scope="module")
def vm(guest_image: GuestImage, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GuestVM]:
    with GuestVM(tmp_path_factory.mktemp("vm"), agents=ALL_AGENTS, image=guest_image,
                 kernel_args=("pyqga.workload=1",)) as machine:
        yield machine


def data_writes(vm: GuestVM) -> tuple[int, int]:
    """(write, flush) operations QEMU has completed on the data disk so far."""
    with QMPConnection(vm.qmp_socket) as qmp:
        for entry in qmp.execute("query-blockstats"):
            if entry.get("device") == "data" or entry.get("qdev", "").endswith("data"):
                return entry["stats"]["wr_operations"], entry["stats"]["flush_operations"]
    raise AssertionError("no block statistics for the data disk")


def writes_during(vm: GuestVM, seconds: float) -> tuple[int, int]:
    before = data_writes(vm)
    time.sleep(seconds)
    after = data_writes(vm)
    return after[0] - before[0], after[1] - before[1]


def test_freeze_all_in_the_guest_freezes_root_and_data(vm: GuestVM) -> None:
    """Freeze `/` too: every allowed command must still answer, and the thaw must work."""
    with vm.client("pyqga-virtio", timeout=120) as client:
        assert writes_during(vm, 1.0)[0] > 0, "the workload is not writing"
        count = client.call("guest-fsfreeze-freeze", {"timeout": 300}, timeout=120)
        try:
            assert count == 2
            assert writes_during(vm, 1.5) == (0, 0), "writes reached the disk while frozen"
            client.ping()
            client.sync()
            assert client.call("guest-sync", id=7) == 7
            assert client.call("guest-fsfreeze-status") == "frozen"
            info = client.call("guest-fsfreeze-info")
            assert sorted(f["mountpoint"] for f in info["frozen"]) == ["/", "/data"]
            assert {c["name"] for c in client.info()["supported_commands"] if c["enabled"]} >= {
                "guest-ping", "guest-fsfreeze-thaw"}
            with pytest.raises(AgentCallError, match="disabled"):
                client.call("guest-get-fsinfo")
        finally:
            assert client.thaw(info["epoch"] if count else None) == count
        assert writes_during(vm, 1.5)[0] > 0, "the workload did not resume after the thaw"
        assert client.call("guest-fsfreeze-status") == "thawed"


def test_freeze_list_data_only(vm: GuestVM) -> None:
    with vm.client("pyqga-virtio", timeout=60) as client:
        with client.frozen(["/data"], thaw_after=120) as freeze:
            assert freeze.count == 1
            assert writes_during(vm, 1.0) == (0, 0)
            assert [f["mountpoint"] for f in freeze.info["frozen"]] == ["/data"]
        fsinfo = {fs["mountpoint"]: fs for fs in client.call("guest-get-fsinfo")}
    assert fsinfo["/data"]["type"] == "ext4" and fsinfo["/data"]["disk"][0]["bus-type"] == "virtio"


def test_host_reconnect_starts_clean_and_garbage_is_resynced(vm: GuestVM) -> None:
    """A host that dies mid-message leaves nothing behind on virtio-serial: the next host's
    first request is answered without a resync (qemu-ga would still hold the half message)."""
    with socket.socket(socket.AF_UNIX) as dead_host:
        dead_host.connect(str(vm.pyqga_socket))
        dead_host.sendall(b'{"execute":"guest-sync","argum')
    time.sleep(0.5)  # the guest sees the hang-up, the agent starts a new session
    with socket.socket(socket.AF_UNIX) as fresh:
        fresh.settimeout(30)
        fresh.connect(str(vm.pyqga_socket))
        fresh.sendall(b'{"execute":"guest-ping","id":1}\n')
        reply = b""
        while not reply.endswith(b"\n"):
            reply += fresh.recv(4096)
        assert json.loads(reply) == {"return": {}, "id": 1}
        fresh.sendall(b'garbage {"execute":"guest-sy')  # then a real host resyncs
    with vm.client("pyqga-virtio", dialect="qga", timeout=30) as client:
        assert client.call("guest-sync", id=99) == 99


# The virtio agent's main thread at SCHED_FIFO (from the serial agent) outruns the guest
# kernel's workqueue, so a host's request reaches it before the port knows the host.
_SCHED_AGENT = """
import os, sys
pid = int(open("/run/pyqga/pyqga.pid").read())
policy = os.SCHED_FIFO if sys.argv[1] == "fifo" else os.SCHED_OTHER
os.sched_setscheduler(pid, policy, os.sched_param(1 if policy == os.SCHED_FIFO else 0))
"""


def _first_reply(path: Path, sync_id: int, timeout: float) -> bytes:
    """A new host's ``guest-sync`` and what it got back within ``timeout`` seconds."""
    with socket.socket(socket.AF_UNIX) as host:
        host.settimeout(timeout)
        host.connect(str(path))
        host.sendall(json.dumps({"execute": "guest-sync", "arguments": {"id": sync_id}}).encode() + b"\n")
        reply = b""
        with contextlib.suppress(TimeoutError):
            while not reply.endswith(b"\n"):
                chunk = host.recv(4096)
                if not chunk:
                    break
                reply += chunk
        return reply


def test_a_request_that_outruns_the_port_open_is_answered(vm: GuestVM) -> None:
    """Linux's virtio_console gives the agent a new host's first bytes at once (with SIGIO) but
    learns that the host connected later, from a control message its workqueue handles: the
    agent reads the request while writes still fail and the next read is EOF.  The reply must
    wait for the port (agent/channels.py CONNECT_GRACE), not be dropped with the session: with
    the agent at SCHED_FIFO, 9 of 20 first replies were lost before (about 1 in 10 after an idle
    minute without it, in bench/footprint.py), none after."""
    with vm.client("pyqga-serial", timeout=60) as hands:
        result = hands.exec(["/usr/bin/python3", "-c", _SCHED_AGENT, "fifo"], kill_after=60)
        assert result.exitcode == 0, result.stderr.decode(errors="replace")
        try:
            lost = []
            for sync_id in range(1, 9):
                time.sleep(0.1)  # the agent is back waiting for a host
                reply = _first_reply(vm.pyqga_socket, sync_id, timeout=5.0)
                if not reply:
                    lost.append(sync_id)
                else:
                    assert json.loads(reply) == {"return": sync_id}
            assert not lost, f"no reply to {len(lost)} of 8 new hosts' first requests"
        finally:
            hands.exec(["/usr/bin/python3", "-c", _SCHED_AGENT, "other"], kill_after=60)


def test_agent_over_the_serial_line(vm: GuestVM) -> None:
    with vm.client("pyqga-serial", dialect="qga", timeout=60) as client:
        client.ping()
        assert client.call("guest-sync", id=3) == 3
        assert client.call("guest-fsfreeze-freeze-list", {"mountpoints": ["/data"]}, timeout=60) == 1
        assert client.call("guest-fsfreeze-status") == "frozen"
        assert client.call("guest-fsfreeze-thaw", timeout=60) == 1


def run_sequence(client: AgentClient) -> list[Any]:
    """The same requests for both agents; results normalised to what both should agree on."""
    results: list[Any] = [client.call("guest-ping"), client.call("guest-sync", id=5),
                          client.call("guest-fsfreeze-status")]
    names = {c["name"] for c in client.info()["supported_commands"]}
    results.append(sorted(names & {"guest-ping", "guest-fsfreeze-freeze-list", "guest-get-fsinfo"}))
    results.append(sorted(fs["mountpoint"] for fs in client.call("guest-get-fsinfo")))
    results.append(client.call("guest-fsfreeze-freeze-list", {"mountpoints": ["/data"]}, timeout=60))
    results.append(client.call("guest-fsfreeze-status"))
    try:
        client.call("guest-get-time")
    except AgentCallError as exc:
        results.append(exc.error_class)
    results.append(client.call("guest-fsfreeze-thaw", timeout=60))
    try:
        client.call("guest-no-such-command")
    except AgentCallError as exc:
        results.append(exc.error_class)
    return results


def test_pyqga_and_qemu_ga_in_the_same_guest_agree(vm: GuestVM) -> None:
    with vm.client("qga-virtio", timeout=60) as qga:
        reference = run_sequence(qga)
    with vm.client("pyqga-virtio", dialect="qga", timeout=60) as ours:
        mine = run_sequence(ours)
    assert mine == reference
    assert reference[5:9] == [1, "frozen", "CommandNotFound", 1]


def test_snapshot_with_freeze_is_consistent_and_without_is_not(
    guest_image: GuestImage, tmp_path: Path
) -> None:
    """The job the agent exists for (REFERENCE.md: "Proof that a freeze made a snapshot
    consistent"): with a workload busy on /data, the quiesced snapshot is clean, the plain one
    needs journal recovery."""
    with GuestVM(tmp_path / "vm", agents=("pyqga-virtio",), image=guest_image,
                 kernel_args=("pyqga.workload=1",)) as machine:
        plain, quiesced = compare(machine, tmp_path)
        print(format_comparison(plain, quiesced))
        cli = subprocess.run(
            [sys.executable, "-m", "pyqga.host_client", "-s", str(machine.pyqga_socket), "snapshot",
             "--qmp", str(machine.qmp_socket), "--disk", f"data={tmp_path / 'cli.qcow2'}",
             "--mountpoint", "/data", "--json"],
            capture_output=True, text=True, timeout=120, env=agent_env())
    assert quiesced.check.consistent, quiesced.check
    assert quiesced.report.frozen_filesystems == 1 and quiesced.report.frozen_seconds > 0
    assert plain.check.needs_recovery, "a snapshot of a busy ext4 without a freeze should need recovery"
    assert cli.returncode == 0, cli.stderr
    report = json.loads(cli.stdout)
    assert report["quiesced"] and report["frozen_filesystems"] == 1
    assert report["disks"][0]["snapshot"].endswith("after-quiesced.qcow2")


def test_snapshot_through_qemu_ga_is_consistent_and_never_left_frozen(vm: GuestVM, tmp_path: Path) -> None:
    """The host helpers with the guest's real qemu-ga (no auto-thaw, no epochs, no
    guest-fsfreeze-info): the quiesced snapshot is still clean, an error inside the freeze
    still thaws, and the CLI says plainly that nothing but itself will thaw the guest."""
    plain, quiesced = compare(vm, tmp_path, agent="qga-virtio")
    print(format_comparison(plain, quiesced))
    assert quiesced.check.consistent, quiesced.check
    assert quiesced.report.frozen_filesystems == 1 and quiesced.report.epoch is None
    with vm.client("qga-virtio", timeout=60) as qga:
        assert qga.capabilities().auto_thaw is False
        with pytest.raises(RuntimeError, match="backup tool crashed"), qga.frozen(["/data"]):
            raise RuntimeError("backup tool crashed")
        assert qga.call("guest-fsfreeze-status") == "thawed"
    assert writes_during(vm, 1.0)[0] > 0, "the workload did not resume"
    cli = subprocess.run(
        [sys.executable, "-m", "pyqga.host_client", "--dialect", "qga", "-s", str(vm.qga_socket), "snapshot",
         "--qmp", str(vm.qmp_socket), "--disk", f"data={tmp_path / 'cli.qcow2'}", "--mountpoint", "/data",
         "--json"],
        capture_output=True, text=True, timeout=120, env=agent_env())
    assert cli.returncode == 0, cli.stderr
    assert "has no auto-thaw" in cli.stderr
    report = json.loads(cli.stdout)
    assert report["quiesced"] and report["frozen_filesystems"] == 1 and report["epoch"] is None
    with vm.client("qga-virtio", timeout=60) as qga:
        assert qga.call("guest-fsfreeze-status") == "thawed"
