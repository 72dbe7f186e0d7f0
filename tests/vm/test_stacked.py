"""Stacked block devices in a real guest, and an agent killed while ``/`` is frozen.

One guest (Debian's cloud kernel, busybox, lvm2 and dmsetup) runs pyqga twice: on virtio-serial,
the agent under test, and on ttyS1, the harness's hands (guest-exec, files).  Each stack is built
over a loop file on ``/data`` (dm-linear, LVM, a partition of a loop device) and frozen by a
freeze-all of the whole guest (``/``, ``/data`` and the stack, as the other VM tests do).  The
stack has dirty data, so freezing ``/data`` before it would deadlock its FIFREEZE; every freeze
call has a timeout and a rescue (the serial agent's thaw), so a deadlock fails, never hangs.

No udev in the guest: ``DM_DISABLE_UDEV=1`` makes dmsetup and LVM create their /dev nodes.
"""

from __future__ import annotations

import base64
import json
import struct
import time
from collections.abc import Iterator
from typing import Any

import pytest

from pyqga.host_client import AgentClient
from pyqga.host_client.errors import AgentClientError, AgentTimeout
from tests.rig.guest_shell import sh
from tests.rig.image import GuestImage
from tests.rig.machine import GuestVM

pytestmark = pytest.mark.root

FREEZE_CALL_S = 60.0  # a freeze-all in the TCG guest takes about a second; longer is a deadlock
RESUME_LIMIT_S = 2.0  # the guard thaws within a second of the agent's death; allow TCG's slowness
# The waves the agent's own code computes in the guest, from the guest's sysfs.
GUEST_ORDER = """
import json
from pyqga.agent.freeze.mounts import freezable, read_mountinfo
from pyqga.agent.freeze.order import backing_files, freeze_waves
plan = list(reversed(freezable(read_mountinfo())))
print(json.dumps({"files": {m.mountpoint: backing_files(m) for m in plan},
                  "waves": [[m.mountpoint for m in wave] for wave in freeze_waves(plan)]}))
"""

# Appends to a file on / every 20 ms until /run/probe.stop appears; prints [[start, latency], ...]
# on the boot clock (/proc/uptime's), so the host can line it up with the moment of the kill.
ROOT_PROBE = r"""
import json, os, time
def now():
    return time.clock_gettime(time.CLOCK_BOOTTIME)
fd = os.open("/var/tmp/probe.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
samples = []
start = now()
while not os.path.exists("/run/probe.stop") and now() - start < 180:
    t0 = now()
    os.write(fd, b"probe line\n")
    samples.append([round(t0, 3), round(now() - t0, 3)])
    if len(samples) == 1:
        open("/run/probe.ready", "w").close()
    time.sleep(0.02)
print(json.dumps(samples))
"""


@pytest.fixture(scope="module")
def vm(guest_image: GuestImage, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GuestVM]:
    started = time.monotonic()
    with GuestVM(tmp_path_factory.mktemp("vm"), agents=("pyqga-virtio", "pyqga-serial"),
                 image=guest_image) as machine:
        with machine.client("pyqga-serial", timeout=120) as serial:
            sh(serial, "modprobe loop && modprobe dm-mod")
        print(f"\nguest booted and modules loaded in {time.monotonic() - started:.1f} s")
        yield machine


@pytest.fixture
def serial(vm: GuestVM) -> Iterator[AgentClient]:
    with vm.client("pyqga-serial", timeout=120) as client:
        yield client


def wait_exit(client: AgentClient, pid: int, limit: float) -> dict[str, Any] | None:
    """guest-exec-status once the process exited, or None if it still runs after ``limit`` s."""
    deadline = time.monotonic() + limit
    while True:
        status = client.call("guest-exec-status", {"pid": pid})
        if status["exited"] or time.monotonic() > deadline:
            return status if status["exited"] else None
        time.sleep(0.2)


def rescue(serial: AgentClient, agent: AgentClient | None, limit: float = 60.0) -> None:
    """After a stuck freeze: thaw everything through the serial agent until the agent under
    test answers "thawed" (a freeze released from its deadlock goes on to its next wave, and
    that agent keeps its freeze until told to thaw), so the next test gets a usable guest."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        serial.call("guest-fsfreeze-thaw", timeout=FREEZE_CALL_S)
        if agent is None:
            return
        try:
            agent.call("guest-fsfreeze-thaw", timeout=5)
            if agent.call("guest-fsfreeze-status", timeout=5) == "thawed":
                return
        except AgentClientError as exc:
            print(f"rescue: the agent did not thaw yet: {exc}")
        time.sleep(0.5)


def freeze_all_blocks_the_stack_and_thaws(vm: GuestVM, serial: AgentClient, mount: str,
                                          backing: list[str]) -> None:
    """The checks every stack gets: ordered waves, a freeze-all that returns, a write that blocks
    while frozen, and a thaw that releases it."""
    order = json.loads(sh(serial, f"python3 -B -c '{GUEST_ORDER}'"))
    assert order["files"][mount] == backing
    waves = {path: i for i, wave in enumerate(order["waves"]) for path in wave}
    assert waves[mount] < waves["/data"] < waves["/"], order["waves"]
    sh(serial, f"dd if=/dev/urandom of={mount}/dirty bs=1M count=4 2>/dev/null")  # not synced
    with vm.client("pyqga-virtio", timeout=FREEZE_CALL_S) as agent:
        started = time.monotonic()
        try:
            count = agent.call("guest-fsfreeze-freeze", {"timeout": 300}, timeout=FREEZE_CALL_S)
        except AgentTimeout:
            rescue(serial, agent)
            pytest.fail(f"freeze-all with {mount} did not return in {FREEZE_CALL_S} s: deadlock")
        took = time.monotonic() - started
        try:
            assert count == 3
            info = agent.call("guest-fsfreeze-info")
            assert sorted(f["mountpoint"] for f in info["frozen"]) == sorted(["/", "/data", mount])
            writer = serial.call("guest-exec", {"path": "/bin/sh", "capture-output": True,
                                                "arg": ["-c", f"echo written > {mount}/while-frozen"]})
            assert wait_exit(serial, writer["pid"], 1.5) is None, f"a write to {mount} did not block"
        finally:
            thawed = agent.call("guest-fsfreeze-thaw", timeout=FREEZE_CALL_S)
        assert thawed == 3
    status = wait_exit(serial, writer["pid"], 10.0)
    assert status is not None, "the blocked write did not finish after the thaw"
    assert status["exitcode"] == 0
    assert serial.read_file(f"{mount}/while-frozen") == b"written\n"
    print(f"\n{mount}: freeze-all of 3 filesystems took {took:.2f} s")


def test_dm_linear_over_a_loop_file_on_data(vm: GuestVM, serial: AgentClient) -> None:
    sh(serial, """
        truncate -s 32M /data/dm.img
        dev=$(losetup -f)
        losetup "$dev" /data/dm.img
        dmsetup create pyqga-linear --table "0 $(blockdev --getsz "$dev") linear $dev 0"
        mkfs.ext4 -q /dev/mapper/pyqga-linear
        mkdir -p /mnt/dm
        mount /dev/mapper/pyqga-linear /mnt/dm
    """)
    try:
        freeze_all_blocks_the_stack_and_thaws(vm, serial, "/mnt/dm", ["/data/dm.img"])
    finally:
        sh(serial, """
            umount /mnt/dm
            dmsetup remove pyqga-linear
            losetup -a | grep ' /data/dm.img' | cut -d: -f1 | while read -r dev; do losetup -d "$dev"; done
            rm /data/dm.img
        """)


def test_lvm_over_a_loop_file_on_data(vm: GuestVM, serial: AgentClient) -> None:
    sh(serial, """
        truncate -s 48M /data/pv.img
        dev=$(losetup -f)
        losetup "$dev" /data/pv.img
        pvcreate -q "$dev"
        vgcreate -q pyqgavg "$dev"
        lvcreate -q -y -n lv -l 100%FREE pyqgavg
        mkfs.ext4 -q /dev/pyqgavg/lv
        mkdir -p /mnt/lv
        mount /dev/pyqgavg/lv /mnt/lv
    """)
    try:
        freeze_all_blocks_the_stack_and_thaws(vm, serial, "/mnt/lv", ["/data/pv.img"])
    finally:
        sh(serial, """
            umount /mnt/lv
            vgchange -q -an pyqgavg
            vgremove -q -f pyqgavg
            losetup -a | grep ' /data/pv.img' | cut -d: -f1 | while read -r dev; do losetup -d "$dev"; done
            rm /data/pv.img
        """)


def test_partition_of_a_loop_file_on_data(vm: GuestVM, serial: AgentClient) -> None:
    """The host's kernel has no partition tables; the guest's has: a loop device's partition
    sits below the loop device in sysfs, and only the walk up to it finds the file."""
    size = 32 << 20
    entry = struct.pack("<B3sB3sII", 0, b"\0\0\0", 0x83, b"\0\0\0", 2048, size // 512 - 2048)
    mbr = bytearray(512)
    mbr[446:462] = entry
    mbr[510:512] = b"\x55\xaa"
    serial.write_file("/data/part.img", bytes(mbr))
    sh(serial, """
        truncate -s 32M /data/part.img
        dev=$(losetup -f)
        losetup -P "$dev" /data/part.img
        i=0
        while [ ! -b "${dev}p1" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
        mkfs.ext4 -q "${dev}p1"
        mkdir -p /mnt/part
        mount "${dev}p1" /mnt/part
    """)
    try:
        freeze_all_blocks_the_stack_and_thaws(vm, serial, "/mnt/part", ["/data/part.img"])
    finally:
        sh(serial, """
            umount /mnt/part
            losetup -a | grep ' /data/part.img' | cut -d: -f1 | while read -r dev; do losetup -d "$dev"; done
            rm /data/part.img
        """)


def test_sigkill_while_root_is_frozen_resumes_writes(vm: GuestVM, serial: AgentClient) -> None:
    """Kills the virtio agent for good: keep this test last in the module.

    A probe on / runs before, during and after; the guard must thaw / within RESUME_LIMIT_S of
    the SIGKILL, measured in the guest on one clock.  If it does not, / stays frozen and the
    probe cannot finish: the serial agent thaws it so the failure is reported, not hung.
    """
    serial.write_file("/tmp/root-probe.py", ROOT_PROBE.encode())
    sh(serial, "rm -f /run/probe.ready /run/probe.stop /var/tmp/probe.log")
    probe = serial.call("guest-exec", {"path": "/usr/bin/python3", "arg": ["-B", "/tmp/root-probe.py"],
                                       "capture-output": True})["pid"]
    deadline = time.monotonic() + 60
    while sh(serial, "[ -e /run/probe.ready ] && echo yes || echo no").strip() != "yes":
        assert time.monotonic() < deadline, "the probe did not start writing"
        time.sleep(0.2)
    with vm.client("pyqga-virtio", timeout=FREEZE_CALL_S) as agent:
        assert agent.call("guest-fsfreeze-freeze-list", {"mountpoints": ["/"], "timeout": 300},
                          timeout=FREEZE_CALL_S) == 1
        time.sleep(1.0)  # the probe is blocked on / by now
        # /proc/uptime before the kill: the measured resume time can only be too long.
        killed_at = float(sh(serial, "cat /proc/uptime; kill -9 $(cat /run/pyqga/pyqga.pid)").split()[0])
    time.sleep(RESUME_LIMIT_S + 1.0)
    serial.write_file("/run/probe.stop", b"")
    status = wait_exit(serial, probe, 20.0)
    if status is None:
        rescue(serial, None)
        pytest.fail("/ stayed frozen after the agent was killed: its guard did not thaw")
    assert status["exitcode"] == 0, base64.b64decode(status.get("err-data", ""))
    samples = json.loads(base64.b64decode(status["out-data"]))
    blocked = [(t, latency) for t, latency in samples if t < killed_at < t + latency]
    assert blocked, "no write was blocked when the agent was killed: / was not frozen"
    start, latency = blocked[0]
    resumed_after = start + latency - killed_at
    print(f"\nwrites to / resumed {resumed_after:.2f} s after the SIGKILL (blocked {latency:.2f} s)")
    assert latency > 0.5 and resumed_after < RESUME_LIMIT_S
    later = [lat for t, lat in samples if t > start + latency + 0.2]
    assert later and max(later) < 0.5, "writes to / did not return to normal"
