"""The commands that change a guest, in a real guest, against qemu-ga in the same guest.

One guest (2 vCPUs, S3 on, DIMM slots for memory hotplug, an extra virtio disk with two MBR
partitions) runs pyqga and Debian's qemu-ga on two virtio-serial ports.  Each command is run
by both agents with the same request; their replies must be the same, and what they claim must
be what the guest's sysfs (read with ``cat`` through guest-exec, not through the command under
test) and QEMU (QMP events, ``query-status``, ``query-pci``) then say.

- ``guest-set-vcpus``: vCPU 1 offline and back; cpu0 (no ``online`` file) refused; partial
  success counts as in qemu (the vCPUs handled before the first failure).
- ``guest-set-memory-blocks``: a DIMM hot-added over QMP shows up as an offline block (no udev
  to online it), which each agent onlines and offlines again.  The kernel option
  ``memory_hotplug.online_policy=auto-movable`` puts it in ZONE_MOVABLE when onlined, so the
  offline is not left to luck.  A boot block the kernel cannot offline (``valid_zones`` says
  ``none``: it spans zones) and a block that does not exist give qemu-ga's error responses.
- ``guest-suspend-ram``: the guest really enters S3 (QEMU's SUSPEND event, status
  ``suspended``), no reply comes, ``system_wakeup`` brings it back (WAKEUP event; QEMU has no
  RESUME event for S3) and the agent answers the next request as the first thing it sends.
  ``guest-suspend-disk`` without swap and ``guest-suspend-hybrid`` end in errors on both.
- ``guest-get-disks``: the partitioned disk, its partitions and a dm-linear device on a
  partition: names, partition flags, dependencies and PCI addresses as sysfs and QMP say.
"""

from __future__ import annotations

import json
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pyqga.host_client import AgentCallError, AgentClient
from pyqga.host_client.qmp import QMPConnection
from tests.rig.disk_images import mbr_image
from tests.rig.guest_shell import sh
from tests.rig.image import GuestImage
from tests.rig.machine import DISK_SERIAL_PREFIX, GuestVM

pytestmark = pytest.mark.root

AGENTS = ("pyqga-virtio", "qga-virtio")
CALL_TIMEOUT = 120.0
STATE_TIMEOUT = 60.0       # QEMU state changes under TCG on a busy host
DIMM_MB = 128              # one memory block (the guest's block_size_bytes is 128 MiB)
ONLINE_POLICY = "memory_hotplug.online_policy=auto-movable"
# QEMU's run-state events; any of them other than SUSPEND and WAKEUP would be a surprise here.
LIFECYCLE_EVENTS = {"SUSPEND", "WAKEUP", "RESUME", "STOP", "RESET", "SHUTDOWN", "POWERDOWN"}


@pytest.fixture(scope="module")
def vm(guest_image: GuestImage, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GuestVM]:
    workdir = tmp_path_factory.mktemp("vm-commands")
    disk = workdir / "parts.img"
    mbr_image(disk)
    started = time.monotonic()
    with GuestVM(workdir, agents=AGENTS, image=guest_image, cpus=2, s3=True, max_memory_mb=1024,
                 data_disk=False, disks=[disk], kernel_args=(ONLINE_POLICY,)) as machine:
        print(f"\nguest with 2 vCPUs booted in {time.monotonic() - started:.1f} s")
        yield machine


@pytest.fixture
def peers(vm: GuestVM) -> Iterator[tuple[AgentClient, AgentClient]]:
    """(pyqga, qemu-ga), connected for one test."""
    with vm.client("pyqga-virtio", timeout=CALL_TIMEOUT) as ours, \
            vm.client("qga-virtio", timeout=CALL_TIMEOUT) as qga:
        yield ours, qga


def outcome(client: AgentClient, command: str, arguments: dict[str, Any] | None = None) -> Any:
    """The reply's value, or ("error", class, text) for an error reply: comparable across agents."""
    try:
        return client.call(command, arguments)
    except AgentCallError as exc:
        return ("error", exc.error_class, exc.error.message)


def guest_cat(pyqga: AgentClient, *paths: str) -> list[str]:
    """Files as the guest's ``cat`` reads them, through pyqga's guest-exec (the client must be
    open already: QEMU serves one client per agent socket at a time)."""
    out = sh(pyqga, "".join(f"cat {p}; echo '\x1e'\n" for p in paths))
    return [part.strip() for part in out.split("\x1e")[:-1]]


# --- vCPUs ---------------------------------------------------------------------------------------


def by_id(vcpus: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    return {v["logical-id"]: v for v in vcpus}


def vcpu_round(client: AgentClient, other: AgentClient, pyqga: AgentClient) -> list[Any]:
    """Offline vCPU 1, check sysfs and the other agent's view, ask for the impossible, bring it
    back: what the agent said."""
    seen: list[Any] = []
    seen.append(outcome(client, "guest-set-vcpus", {"vcpus": [{"logical-id": 1, "online": False}]}))
    assert guest_cat(pyqga, "/sys/devices/system/cpu/cpu1/online", "/sys/devices/system/cpu/online") \
        == ["0", "0"], "vCPU 1 is still online in sysfs"
    seen.append(sorted(by_id(client.call("guest-get-vcpus")).items()))
    assert sorted(by_id(other.call("guest-get-vcpus")).items()) == seen[-1]
    seen.append(outcome(client, "guest-set-vcpus", {"vcpus": [{"logical-id": 0, "online": False}]}))
    seen.append(outcome(client, "guest-set-vcpus", {"vcpus": [{"logical-id": 7, "online": True}]}))
    # vCPU 1 back online, then cpu0 refused: one handled before the first failure.
    seen.append(outcome(client, "guest-set-vcpus", {"vcpus": [{"logical-id": 1, "online": True},
                                                              {"logical-id": 0, "online": False}]}))
    assert guest_cat(pyqga, "/sys/devices/system/cpu/cpu1/online", "/sys/devices/system/cpu/online") \
        == ["1", "0-1"]
    seen.append(sorted(by_id(client.call("guest-get-vcpus")).items()))
    seen.append(outcome(client, "guest-set-vcpus", {"vcpus": [{"logical-id": 1, "online": True}]}))
    return seen


def test_set_vcpus_offlines_a_vcpu_and_brings_it_back(peers: tuple[AgentClient, AgentClient]) -> None:
    ours, qga = peers
    before = by_id(ours.call("guest-get-vcpus"))
    assert before == by_id(qga.call("guest-get-vcpus")) == {
        0: {"logical-id": 0, "online": True, "can-offline": False},
        1: {"logical-id": 1, "online": True, "can-offline": True}}
    mine, theirs = vcpu_round(ours, qga, ours), vcpu_round(qga, ours, ours)
    assert mine == theirs
    offline = {0: before[0], 1: {"logical-id": 1, "online": False, "can-offline": True}}
    assert mine == [
        1,
        sorted(offline.items()),
        ("error", "GenericError", "logical processor #0 can't be offlined"),
        ("error", "GenericError", 'open("/sys/devices/system/cpu/cpu7/"): No such file or directory'),
        1,
        sorted(before.items()),
        1,   # already online: nothing written, still counted
    ]


# --- memory blocks -------------------------------------------------------------------------------


def blocks_by_index(client: AgentClient) -> dict[int, dict[str, Any]]:
    return {b["phys-index"]: b for b in client.call("guest-get-memory-blocks")}


def hot_add_dimm(vm: GuestVM) -> None:
    with QMPConnection(vm.qmp_socket) as qmp:
        qmp.execute("object-add", {"qom-type": "memory-backend-ram", "id": "mem-hot0",
                                   "size": DIMM_MB << 20})
        qmp.execute("device_add", {"driver": "pc-dimm", "id": "dimm-hot0", "memdev": "mem-hot0"})


def test_set_memory_blocks_onlines_and_offlines_a_hot_added_block(
        vm: GuestVM, peers: tuple[AgentClient, AgentClient]) -> None:
    ours, qga = peers
    boot = blocks_by_index(ours)
    assert ours.call("guest-get-memory-block-info") == qga.call("guest-get-memory-block-info") \
        == {"size": DIMM_MB << 20}
    hot_add_dimm(vm)
    deadline = time.monotonic() + STATE_TIMEOUT
    while not (new := sorted(set(blocks_by_index(ours)) - set(boot))):
        assert time.monotonic() < deadline, "the hot-added DIMM shows no memory block"
        time.sleep(0.5)
    [index] = new
    now = blocks_by_index(ours)
    assert now == blocks_by_index(qga)
    assert now[index] == {"phys-index": index, "online": False, "can-offline": True}
    state = f"/sys/devices/system/memory/memory{index}/state"
    for agent, client in zip(AGENTS, peers, strict=True):
        for online, word in ((True, "online"), (False, "offline")):
            reply = client.call("guest-set-memory-blocks",
                                {"mem-blks": [{"phys-index": index, "online": online}]})
            assert reply == [{"phys-index": index, "response": "success"}], agent
            assert guest_cat(ours, state) == [word], agent
            assert blocks_by_index(ours)[index]["online"] is online
            assert blocks_by_index(qga)[index]["online"] is online

    # Refusals: a boot block the kernel cannot offline, and one that does not exist.
    zones = dict(zip(sorted(boot), guest_cat(ours, *(f"/sys/devices/system/memory/memory{i}/valid_zones"
                                                     for i in sorted(boot))), strict=True))
    stuck = [i for i, zone in zones.items() if zone == "none"]
    assert stuck, f"no boot block spans zones here: {zones}"
    request = {"mem-blks": [{"phys-index": stuck[0], "online": False},
                            {"phys-index": 4096, "online": False},
                            {"phys-index": index, "online": False}]}
    mine = ours.call("guest-set-memory-blocks", request)
    theirs = qga.call("guest-set-memory-blocks", request)
    assert guest_cat(ours, f"/sys/devices/system/memory/memory{stuck[0]}/state") == ["online"]
    assert mine == theirs
    assert mine == [{"phys-index": stuck[0], "response": "operation-failed", "error-code": 22},  # EINVAL
                    {"phys-index": 4096, "response": "not-found", "error-code": 2},              # ENOENT
                    {"phys-index": index, "response": "success"}]                                # already


# --- disks ---------------------------------------------------------------------------------------


def guest_names(pyqga: AgentClient, script: str) -> list[str]:
    """The words a guest shell loop prints (its status is that of its last test: ignored)."""
    return sh(pyqga, script + "\ntrue").split()


def test_get_disks_partitions_and_dependencies_as_sysfs_says(
        vm: GuestVM, peers: tuple[AgentClient, AgentClient]) -> None:
    ours, qga = peers
    [disk] = guest_names(ours, "for d in /sys/block/vd*; do "
                               f"[ \"$(cat $d/serial)\" = {DISK_SERIAL_PREFIX}0 ] && echo ${{d##*/}}; done")
    sectors = int(guest_cat(ours, f"/sys/block/{disk}/{disk}1/size")[0])
    sh(ours, f"modprobe dm-mod && dmsetup create pyqga-vmtest --table '0 {sectors} linear /dev/{disk}1 0'")
    try:
        [dm] = guest_names(ours, "for d in /sys/block/dm-*; do "
                                 "[ \"$(cat $d/dm/name)\" = pyqga-vmtest ] && echo ${d##*/}; done")
        # Every block device of non-zero size and its partitions, as the guest's sysfs lists them.
        listed = guest_names(ours, "for d in /sys/block/*; do [ \"$(cat $d/size)\" != 0 ] || continue; "
                                   "echo /dev/${d##*/}; for p in $d/*/partition; do [ -e $p ] && "
                                   "q=${p%/partition} && echo /dev/${q##*/}; done; done")
        syspath = sh(ours, f"readlink -f /sys/block/{disk}").strip()
        mine = ours.call("guest-get-disks")
        theirs = qga.call("guest-get-disks")
    finally:
        sh(ours, "dmsetup remove pyqga-vmtest")
    by_name = {d["name"]: d for d in mine}
    assert sorted(by_name) == sorted(listed)
    pci = pci_function(syspath)
    assert pci == qemu_pci_function(vm, "disk0")
    assert by_name[f"/dev/{disk}"] == {
        "name": f"/dev/{disk}", "partition": False, "dependencies": [],
        "address": {"pci-controller": pci, "bus-type": "virtio", "bus": 0, "target": 0, "unit": 0,
                    "dev": f"/dev/{disk}", "serial": f"{DISK_SERIAL_PREFIX}0"}}
    for part in (f"/dev/{disk}1", f"/dev/{disk}2"):
        assert by_name[part] == {"name": part, "partition": True, "dependencies": [f"/dev/{disk}"]}
    assert by_name[f"/dev/{dm}"] == {"name": f"/dev/{dm}", "partition": False,
                                     "dependencies": [f"/dev/{disk}1"]}
    # qemu-ga reads serials only from udev's database (none in this guest): the rest is the same.
    assert without_serials(mine) == theirs


def pci_function(syspath: str) -> dict[str, int]:
    """The PCI function a virtio disk hangs off: ``.../0000:00:04.0/virtioN/block/vdX``."""
    function = syspath.split("/virtio")[0].rsplit("/", 1)[1]
    domain, bus, rest = function.split(":")
    slot, fn = rest.split(".")
    return {"domain": int(domain, 16), "bus": int(bus, 16), "slot": int(slot, 16), "function": int(fn, 16)}


def qemu_pci_function(vm: GuestVM, drive: str) -> dict[str, int]:
    """Where QEMU put the virtio-blk device of ``drive`` (the harness names it ``v<drive>``)."""
    with QMPConnection(vm.qmp_socket) as qmp:
        for bus in qmp.execute("query-pci"):
            for device in bus["devices"]:
                if device.get("qdev_id") == f"v{drive}":
                    return {"domain": 0, "bus": device["bus"], "slot": device["slot"],
                            "function": device["function"]}
    raise AssertionError(f"QEMU has no PCI device v{drive}")


def without_serials(disks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**d, "address": {k: v for k, v in d["address"].items() if k != "serial"}}
            if "address" in d else d for d in disks]


# --- suspend (last: the guest sleeps and wakes) --------------------------------------------------


class RawAgent:
    """The qga dialect over an agent's host socket, line by line, to see exactly what arrives
    (and that nothing does)."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))
        self.buffer = b""

    def send(self, command: str, arguments: dict[str, Any] | None = None) -> None:
        request: dict[str, Any] = {"execute": command}
        if arguments is not None:
            request["arguments"] = arguments
        self.sock.sendall(json.dumps(request).encode() + b"\n")

    def pending(self) -> bytes:
        """Whatever has arrived and not been read, without waiting."""
        while select.select([self.sock], [], [], 0)[0]:
            data = self.sock.recv(65536)
            if not data:
                break
            self.buffer += data
        return self.buffer

    def line(self, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            remaining = deadline - time.monotonic()
            assert remaining > 0 and select.select([self.sock], [], [], remaining)[0], \
                f"no reply within {timeout} s (have {self.buffer!r})"
            data = self.sock.recv(65536)
            assert data, "the agent's socket closed"
            self.buffer += data
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)

    def sync(self, sync_id: int, timeout: float = CALL_TIMEOUT) -> None:
        """guest-sync until its reply: drops what an earlier host left unread."""
        self.send("guest-sync", {"id": sync_id})
        while self.line(timeout) != {"return": sync_id}:
            pass

    def close(self) -> None:
        self.sock.close()


def wait_status(qmp: QMPConnection, status: str) -> float:
    started = time.monotonic()
    while (now := qmp.execute("query-status")["status"]) != status:
        assert time.monotonic() - started < STATE_TIMEOUT, f"QEMU status still {now!r}, not {status!r}"
        time.sleep(0.1)
    return time.monotonic() - started


def suspend_and_wake(vm: GuestVM, agent: str) -> list[str]:
    """guest-suspend-ram through ``agent``, then system_wakeup; QEMU's events meanwhile."""
    raw = RawAgent(Path(vm.agent_address(agent)))
    try:
        raw.sync(1001)
        with QMPConnection(vm.qmp_socket) as qmp:
            seen = len(qmp.client.events.history)
            raw.send("guest-suspend-ram")
            slept = wait_status(qmp, "suspended")
            assert raw.pending() == b"", "a reply arrived for guest-suspend-ram"
            qmp.execute("system_wakeup")
            woke = wait_status(qmp, "running")
            events = [e["event"] for e in qmp.client.events.history[seen:]
                      if e["event"] in LIFECYCLE_EVENTS]
        raw.send("guest-sync", {"id": 1002})
        assert raw.line(CALL_TIMEOUT) == {"return": 1002}, "not the first reply after the wake-up"
        raw.send("guest-ping")
        assert raw.line(CALL_TIMEOUT) == {"return": {}}
        print(f"{agent}: suspended in {slept:.1f} s, running {woke:.1f} s after system_wakeup")
        return events
    finally:
        raw.close()


def test_suspend_ram_sleeps_without_reply_and_wakes(vm: GuestVM) -> None:
    with vm.client("pyqga-virtio", timeout=CALL_TIMEOUT) as ours:
        assert "mem" in guest_cat(ours, "/sys/power/state")[0].split()
    events = {agent: suspend_and_wake(vm, agent) for agent in AGENTS}
    assert events["pyqga-virtio"] == events["qga-virtio"] == ["SUSPEND", "WAKEUP"]
    # The guest really went through S3 and back, once per agent.
    with vm.client("pyqga-virtio", timeout=CALL_TIMEOUT) as ours:
        log = sh(ours, "dmesg").splitlines()
    assert sum("PM: suspend entry (deep)" in line for line in log) == 2
    assert sum("PM: suspend exit" in line for line in log) == 2


def test_suspend_disk_without_swap_and_hybrid_are_errors(peers: tuple[AgentClient, AgentClient]) -> None:
    """The guest offers "disk" but has no swap: the kernel makes its image, then refuses
    (ENODEV); hybrid has no sysfs form and no helper here. Both agents answer with errors."""
    ours, qga = peers
    mine = outcome(ours, "guest-suspend-disk")
    theirs = outcome(qga, "guest-suspend-disk")
    assert mine == ("error", "GenericError",
                    "suspend: cannot write to '/sys/power/state': No such device")
    assert theirs[:2] == mine[:2]   # qemu-ga 7.2: "child process has failed to suspend"
    assert "PM: Cannot find swap device" in sh(ours, "dmesg")
    assert outcome(ours, "guest-suspend-hybrid") == outcome(qga, "guest-suspend-hybrid") == (
        "error", "GenericError", "the requested suspend mode is not supported by the guest")
