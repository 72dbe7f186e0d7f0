"""vCPUs, memory blocks, disks, users and time zone (agent/commands/hardware.py, users.py).

Differential: the real qemu-ga and pyqga run side by side on this machine and are asked the same
thing at the same moment; the VALUES must agree (vCPU ids and online state, memory block indexes,
block size, time zone, users, disk names and addresses). The set commands are compared only with
requests that change nothing: the state a vCPU or block already has, ids that do not exist,
malformed arguments. Nothing here offlines a CPU or a memory block of this machine; the real
state changes are exercised on a fake sysfs tree in a temporary directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pyqga.agent.commands import hardware, users
from pyqga.agent.registry import build_registry
from tests.rig.agent_process import PyqgaAgent
from tests.rig.disk_images import mbr_image
from tests.rig.qemu_ga import QemuGa, require_qemu_ga
from tests.rig.requirements import require

NEW_COMMANDS = ("guest-get-vcpus", "guest-set-vcpus", "guest-get-memory-blocks",
                "guest-set-memory-blocks", "guest-get-memory-block-info", "guest-get-disks",
                "guest-get-users", "guest-get-timezone")
READ_TIMEOUT = 10.0


# --- peers -------------------------------------------------------------------------------------


class Pair:
    """(qemu-ga, pyqga) on unix sockets; ``call`` sends one request to both, back to back."""

    def __init__(self, qga: QemuGa, ours: PyqgaAgent) -> None:
        self.qga, self.ours = qga, ours

    @staticmethod
    def _one(connect: Any, request: dict[str, Any]) -> Any:
        deadline = time.monotonic() + READ_TIMEOUT
        while True:
            try:
                sock = connect()
                break
            except BlockingIOError:  # qemu-ga's tiny backlog: retry
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.005)
        with contextlib.closing(sock):
            sock.settimeout(READ_TIMEOUT)
            sock.sendall(json.dumps(request).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(1 << 20)
                assert chunk, f"connection closed after {data!r}"
                data += chunk
        return json.loads(data)

    def call(self, command: str, arguments: dict[str, Any] | None = None) -> tuple[Any, Any]:
        request: dict[str, Any] = {"execute": command}
        if arguments is not None:
            request["arguments"] = arguments
        return self._one(self.qga.connect, request), self._one(self.ours.connect, request)


def _need_qemu_ga() -> None:
    require_qemu_ga()


@contextlib.contextmanager
def _pair(tmp: Path, args: tuple[str, ...] = ()) -> Iterator[Pair]:
    _need_qemu_ga()
    with QemuGa(tmp / "qga", list(args)) as qga, PyqgaAgent(tmp / "pyqga", args) as ours:
        yield Pair(qga, ours)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    with _pair(tmp_path_factory.mktemp("hw")) as peers:
        yield peers


def _ok(reply: Any) -> Any:
    assert "return" in reply, reply
    return reply["return"]


# --- read commands: the same values ------------------------------------------------------------


@pytest.mark.qemu_ga
def test_get_vcpus_same_ids_and_state(pair: Pair) -> None:
    qga, ours = pair.call("guest-get-vcpus")
    assert _ok(ours) == _ok(qga)   # same order too: both read the directory in readdir order
    ids = sorted(v["logical-id"] for v in ours["return"])
    assert ids == sorted(int(n[3:]) for n in os.listdir("/sys/devices/system/cpu")
                         if n[3:].isdigit() and n.startswith("cpu"))


@pytest.mark.qemu_ga
def test_get_memory_blocks_same_indexes_and_state(pair: Pair) -> None:
    if not os.path.isdir("/sys/devices/system/memory"):
        qga, ours = pair.call("guest-get-memory-blocks")
        assert _ok(ours) == _ok(qga) == []
        return
    qga, ours = pair.call("guest-get-memory-blocks")
    assert _ok(ours) == _ok(qga)
    assert len(ours["return"]) == sum(1 for n in os.listdir("/sys/devices/system/memory")
                                      if n.startswith("memory") and n[6:].isdigit())


@pytest.mark.qemu_ga
def test_get_memory_block_info_same_size(pair: Pair) -> None:
    qga, ours = pair.call("guest-get-memory-block-info")
    assert _ok(ours) == _ok(qga)
    assert ours["return"]["size"] > 0


@pytest.mark.qemu_ga
def test_get_timezone_same(pair: Pair) -> None:
    qga, ours = pair.call("guest-get-timezone")
    assert _ok(ours) == _ok(qga)


@pytest.mark.qemu_ga
@pytest.mark.parametrize("zone", ["Asia/Kolkata", "America/New_York", "UTC"])
def test_get_timezone_same_under_tz(tmp_path: Path, zone: str, monkeypatch: pytest.MonkeyPatch) -> None:
    require(os.path.exists(f"/usr/share/zoneinfo/{zone}"), f"tzdata has no {zone}")
    monkeypatch.setenv("TZ", zone)   # both agents inherit the test's environment
    with _pair(tmp_path) as peers:
        qga, ours = peers.call("guest-get-timezone")
    assert _ok(ours) == _ok(qga)
    if zone == "Asia/Kolkata":
        assert ours["return"] == {"zone": "IST", "offset": 19800}


def _without_sysfs_serials(disks: list[dict[str, Any]], qga: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Our disks with the serials qemu-ga lacks removed, after checking each is the kernel's.

    qemu-ga reads serials only from udev's database; where that has none (no udev running, as
    on this machine) we report the sysfs serial, as our guest-get-fsinfo does. Any other
    difference stays."""
    theirs = {d["name"]: d for d in qga}
    out = []
    for disk in disks:
        address = disk.get("address")
        other = theirs.get(disk["name"], {}).get("address") or {}
        if address and "serial" in address and "serial" not in other:
            syspath = os.path.realpath(f"/sys/class/block/{os.path.basename(disk['name'])}")
            assert address["serial"] == hardware.sysfs_serial(syspath)
            disk = {**disk, "address": {k: v for k, v in address.items() if k != "serial"}}
        out.append(disk)
    return out


def _same_disks(pair: Pair) -> dict[str, Any]:
    """guest-get-disks from both agents, equal but for pyqga's sysfs serials; pyqga's reply.
    Other tests attach and detach loop devices at any time: ask again until both saw the same
    /sys/block (the comparison itself is exact)."""
    for _attempt in range(10):
        qga, ours = pair.call("guest-get-disks")
        if _ok(qga) == _without_sysfs_serials(_ok(ours), qga["return"]):
            break
        time.sleep(0.2)
    assert _without_sysfs_serials(_ok(ours), qga["return"]) == _ok(qga)
    return ours


@pytest.mark.qemu_ga
def test_get_disks_same_names_and_addresses(pair: Pair) -> None:
    ours = _same_disks(pair)
    # At least the machine's real disks are there, with an address when they sit on PCI.
    names = {d["name"] for d in ours["return"]}
    for entry in os.listdir("/sys/block"):
        target = os.path.realpath(f"/sys/block/{entry}")
        if "/virtual/" not in target and Path(target, "size").read_text() != "0\n":
            assert f"/dev/{entry}" in names
            [disk] = [d for d in ours["return"] if d["name"] == f"/dev/{entry}"]
            if "/pci" in target:
                assert {"bus-type", "bus", "target", "unit", "pci-controller"} <= set(disk["address"])


@pytest.mark.qemu_ga
def test_get_users_same_without_utmp_change(pair: Pair) -> None:
    qga, ours = pair.call("guest-get-users")
    assert _ok(ours) == _ok(qga)


def _utmp_record(ut_type: int, user: bytes, sec: int, usec: int, line: bytes = b"pts/9") -> bytes:
    return users.UTMP_RECORD.pack(ut_type, 4242, line, b"ts/9", user, b"host.example", 0, 0, 0,
                                  sec, usec, b"\0" * 16)


UTMP_RECORDS = [
    _utmp_record(2, b"reboot", 1_700_000_000, 0),                 # BOOT_TIME: not a user
    _utmp_record(users.USER_PROCESS, b"alice", 1_700_000_500, 250_000),
    _utmp_record(users.USER_PROCESS, b"bob", 1_700_000_100, 999_999),
    _utmp_record(users.USER_PROCESS, b"alice", 1_700_000_200, 5),   # earlier: this one counts
    _utmp_record(8, b"carol", 1_700_000_300, 0),                   # DEAD_PROCESS
    _utmp_record(users.USER_PROCESS, b"alice", 1_700_000_900, 0),
]


@pytest.mark.qemu_ga
def test_get_users_same_with_logins(pair: Pair) -> None:
    """qemu-ga reads glibc's /var/run/utmp and nothing else, so the logins must be there. Only
    when this machine has no utmp (a container, a minimal VM) does the test write one, and it
    removes it afterwards."""
    path = Path(users.UTMP_PATH)
    require(os.geteuid() == 0, "writing /var/run/utmp needs root")
    require(not path.exists(), "this machine has a utmp of its own, which the test would clobber")
    path.write_bytes(b"".join(UTMP_RECORDS))
    try:
        qga, ours = pair.call("guest-get-users")
    finally:
        path.unlink()
    assert _ok(ours) == _ok(qga)
    assert ours["return"] == [
        {"user": "alice", "login-time": 1_700_000_200.000005},
        {"user": "bob", "login-time": 1_700_000_100.999999},
    ]


# --- set commands: argument checking and no-op requests, compared ------------------------------


def _same(pair: Pair, command: str, arguments: dict[str, Any]) -> Any:
    qga, ours = pair.call(command, arguments)
    assert ours == qga, (command, arguments)
    return ours


SET_VCPUS_ARGS = [
    {"vcpus": []},
    {"vcpus": [{"logical-id": 99999, "online": True}]},
    {"vcpus": [{"logical-id": -1, "online": True}]},
    {"vcpus": [{"logical-id": 0}]},
    {"vcpus": [{"online": True}]},
    {"vcpus": [{"logical-id": "0", "online": True}]},
    {"vcpus": [{"logical-id": 1.0, "online": True}]},
    {"vcpus": [{"logical-id": 2**63, "online": True}]},
    {"vcpus": [{"logical-id": True, "online": True}]},
    {"vcpus": [{"logical-id": 0, "online": 1}]},
    {"vcpus": [{"logical-id": 0, "online": True, "x": 1}]},
    {"vcpus": [{"logical-id": 0, "online": True, "can-offline": 3}]},
    {"vcpus": [1]},
    {"vcpus": [{"logical-id": 0, "online": True}, {"logical-id": 0}]},
    {"vcpus": {}},
    {"vcpus": "0"},
    {},
    {"vcpus": [], "extra": 1},
]


@pytest.mark.qemu_ga
@pytest.mark.parametrize("arguments", SET_VCPUS_ARGS, ids=[json.dumps(a) for a in SET_VCPUS_ARGS])
def test_set_vcpus_argument_errors_same(pair: Pair, arguments: dict[str, Any]) -> None:
    # None of these can change anything: each fails its checks, names a vCPU that does not
    # exist, or asks an online vCPU to be online (the state all of this machine's vCPUs have).
    _online_everywhere(pair)
    _same(pair, "guest-set-vcpus", arguments)


def _online_everywhere(pair: Pair) -> list[dict[str, Any]]:
    """The vCPUs, if all are online (the requests above that reach sysfs ask for "online");
    asking each for the state it has changes nothing either way."""
    vcpus = _ok(pair.call("guest-get-vcpus")[1])
    require(all(v["online"] for v in vcpus), "a vCPU is offline: the requests for 'online' would change it")
    return vcpus


@pytest.mark.qemu_ga
def test_set_vcpus_same_state_counts_each(pair: Pair) -> None:
    vcpus = _online_everywhere(pair)
    request = [{"logical-id": v["logical-id"], "online": True} for v in vcpus]
    assert _same(pair, "guest-set-vcpus", {"vcpus": request}) == {"return": len(vcpus)}


@pytest.mark.qemu_ga
def test_set_vcpus_partial_success_same(pair: Pair) -> None:
    """The first vCPU is handled (already online), the second does not exist: qemu-ga returns 1
    and drops the error; with the missing one first, the error is the reply."""
    vcpus = _online_everywhere(pair)
    first = {"logical-id": vcpus[0]["logical-id"], "online": True}
    missing = {"logical-id": 99999, "online": True}
    assert _same(pair, "guest-set-vcpus", {"vcpus": [first, missing, first]}) == {"return": 1}
    reply = _same(pair, "guest-set-vcpus", {"vcpus": [missing, first]})
    assert reply["error"]["desc"] == \
        'open("/sys/devices/system/cpu/cpu99999/"): No such file or directory'


@pytest.mark.qemu_ga
def test_set_vcpus_offline_of_a_cpu_without_online_file_same(pair: Pair) -> None:
    """A vCPU with no 'online' file (usually cpu0) cannot be offlined: the request fails before
    it could write anything. Only sent for such a vCPU: never one that could go offline."""
    fixed = [v for v in _online_everywhere(pair) if not v["can-offline"]]
    require(bool(fixed), "every vCPU here can be offlined: the request would not be a no-op")
    cpu = fixed[0]["logical-id"]
    assert not os.path.exists(f"/sys/devices/system/cpu/cpu{cpu}/online")
    reply = _same(pair, "guest-set-vcpus", {"vcpus": [{"logical-id": cpu, "online": False}]})
    assert reply["error"]["desc"] == f"logical processor #{cpu} can't be offlined"


def _an_online_block(pair: Pair) -> int:
    blocks = _ok(pair.call("guest-get-memory-blocks")[1])
    online = [b["phys-index"] for b in blocks if b["online"]]
    require(bool(online), "no online memory block")
    return online[0]


@pytest.mark.qemu_ga
def test_set_memory_blocks_no_op_and_missing_same(pair: Pair) -> None:
    block = _an_online_block(pair)
    reply = _same(pair, "guest-set-memory-blocks",
                  {"mem-blks": [{"phys-index": block, "online": True},
                                {"phys-index": 999999, "online": False},
                                {"phys-index": -1, "online": True}]})
    assert reply["return"] == [
        {"phys-index": block, "response": "success"},
        {"phys-index": 999999, "response": "not-found", "error-code": 2},
        {"phys-index": 2**64 - 1, "response": "not-found", "error-code": 2},
    ]


SET_MEMORY_ARGS = [
    {"mem-blks": []},
    {"mem-blks": [{"phys-index": 0}]},
    {"mem-blks": [{"online": True}]},
    {"mem-blks": [{"phys-index": "0", "online": True}]},
    {"mem-blks": [{"phys-index": 1.0, "online": True}]},
    {"mem-blks": [{"phys-index": True, "online": True}]},
    {"mem-blks": [{"phys-index": 2**64, "online": True}]},
    {"mem-blks": [{"phys-index": -(2**63) - 1, "online": True}]},
    {"mem-blks": [{"phys-index": 2**64 - 1, "online": True}]},
    {"mem-blks": [{"phys-index": 999999, "online": True, "can-offline": "x"}]},
    {"mem-blks": [{"phys-index": 999999, "online": True, "y": None}]},
    {"mem-blks": [None]},
    {"mem-blks": [{"phys-index": 999999, "online": True}, {"phys-index": 0, "online": "no"}]},
    {"mem-blks": 3},
    {},
]


@pytest.mark.qemu_ga
@pytest.mark.parametrize("arguments", SET_MEMORY_ARGS, ids=[json.dumps(a) for a in SET_MEMORY_ARGS])
def test_set_memory_blocks_argument_errors_same(pair: Pair, arguments: dict[str, Any]) -> None:
    # Each fails its checks before anything runs, or names a block that does not exist.
    _same(pair, "guest-set-memory-blocks", arguments)


# --- -b, guest-info, frozen --------------------------------------------------------------------


@pytest.mark.qemu_ga
def test_guest_info_lists_them_as_qemu_ga_does(pair: Pair) -> None:
    qga, ours = pair.call("guest-info")
    theirs = {c["name"]: c for c in _ok(qga)["supported_commands"]}
    mine = {c["name"]: c for c in _ok(ours)["supported_commands"]}
    for name in NEW_COMMANDS:
        assert mine[name] == theirs[name]


@pytest.mark.qemu_ga
def test_each_can_be_disabled_with_b(tmp_path: Path) -> None:
    with _pair(tmp_path, ("-b", ",".join(NEW_COMMANDS))) as peers:
        for name in NEW_COMMANDS:
            qga, ours = peers.call(name, {} if name.startswith("guest-get") else None)
            assert ours["error"]["class"] == qga["error"]["class"] == "CommandNotFound", name
            # qemu-ga 7.2 stops after "disabled"; newer qemu-ga and we add the reason.
            assert qga["error"]["desc"] == f"Command {name} has been disabled", name
            assert ours["error"]["desc"].startswith(qga["error"]["desc"]), name


def test_registered_where_they_run_and_not_allowed_while_frozen() -> None:
    """qemu-ga's freeze allowlist (qga/main.c) has none of them.  Those that write sysfs, or ask
    disks (SMART), run on a worker; those that only read sysfs stay on the connection loop."""
    registry = build_registry()
    for name in NEW_COMMANDS:
        command = registry.get(name)
        assert command is not None, name
        assert not command.allowed_while_frozen, name
        assert command.blocking == (name.startswith("guest-set-") or name == "guest-get-disks"), name


# --- the same code on a fake sysfs: the paths that would change this machine --------------------


def _fake_cpus(root: Path, states: dict[int, str | None]) -> str:
    for cpu, state in states.items():
        (root / f"cpu{cpu}").mkdir(parents=True)
        if state is not None:
            (root / f"cpu{cpu}" / "online").write_text(state + "\n")
    for other in ("cpufreq", "cpuidle"):
        (root / other).mkdir()
    (root / "online").write_text("0-3\n")
    return str(root)


def test_vcpus_on_fake_sysfs(tmp_path: Path) -> None:
    root = _fake_cpus(tmp_path / "cpu", {0: None, 1: "1", 2: "0", 3: "1"})
    got = sorted(hardware.get_vcpus(root), key=lambda v: v["logical-id"])
    assert got == [
        {"logical-id": 0, "online": True, "can-offline": False},
        {"logical-id": 1, "online": True, "can-offline": True},
        {"logical-id": 2, "online": False, "can-offline": True},
        {"logical-id": 3, "online": True, "can-offline": True},
    ]
    # 2 goes online, 3 offline, 1 stays: three handled; then cpu0 cannot go offline: stop there.
    request = [{"logical-id": 2, "online": True}, {"logical-id": 3, "online": False},
               {"logical-id": 1, "online": True}, {"logical-id": 0, "online": False},
               {"logical-id": 1, "online": False}]
    assert hardware.set_vcpus(request, root) == 3
    assert (tmp_path / "cpu/cpu2/online").read_text().startswith("1")
    assert (tmp_path / "cpu/cpu3/online").read_text().startswith("0")
    assert (tmp_path / "cpu/cpu1/online").read_text() == "1\n"   # untouched, not rewritten
    with pytest.raises(Exception, match="logical processor #0 can't be offlined"):
        hardware.set_vcpus([{"logical-id": 0, "online": False}], root)
    assert hardware.set_vcpus([{"logical-id": 0, "online": True}], root) == 1


def _fake_memory(root: Path, blocks: dict[int, tuple[str | None, str | None]]) -> str:
    root.mkdir(parents=True)
    (root / "block_size_bytes").write_text("8000000\n")
    (root / "auto_online_blocks").write_text("online\n")
    (root / "memory_notes").write_text("a file, not a block\n")
    for index, (state, removable) in blocks.items():
        (root / f"memory{index}").mkdir()
        if state is not None:
            (root / f"memory{index}" / "state").write_text(state + "\n")
        if removable is not None:
            (root / f"memory{index}" / "removable").write_text(removable + "\n")
    return str(root)


def test_memory_blocks_on_fake_sysfs(tmp_path: Path) -> None:
    root = _fake_memory(tmp_path / "memory",
                        {0: ("online", "0"), 7: ("offline", "1"), 9: ("online", None), 12: (None, None)})
    got = sorted(hardware.get_memory_blocks(root), key=lambda b: b["phys-index"])
    assert got == [
        {"phys-index": 0, "online": True, "can-offline": False},
        {"phys-index": 7, "online": False, "can-offline": True},
        {"phys-index": 9, "online": True, "can-offline": False},
        {"phys-index": 12, "online": True, "can-offline": False},
    ]
    assert hardware.get_memory_block_info(root) == {"size": 0x8000000}
    results = hardware.set_memory_blocks(
        [{"phys-index": 7, "online": True}, {"phys-index": 0, "online": True},
         {"phys-index": 0, "online": False}, {"phys-index": 12, "online": False},
         {"phys-index": 12, "online": True}, {"phys-index": 5, "online": True}], root)
    assert results == [
        {"phys-index": 7, "response": "success"},
        {"phys-index": 0, "response": "success"},
        {"phys-index": 0, "response": "success"},
        {"phys-index": 12, "response": "operation-not-supported", "error-code": 2},
        {"phys-index": 12, "response": "success", "error-code": 2},
        {"phys-index": 5, "response": "not-found", "error-code": 2},
    ]
    assert (tmp_path / "memory/memory7/state").read_text().startswith("online")
    assert (tmp_path / "memory/memory0/state").read_text().startswith("offline")
    assert hardware.get_memory_blocks(str(tmp_path / "none")) == []
    assert hardware.set_memory_blocks([{"phys-index": 1, "online": True}], str(tmp_path / "none")) == [
        {"phys-index": 1, "response": "operation-not-supported", "error-code": 2}]


def test_memory_blocks_none_is_an_error(tmp_path: Path) -> None:
    root = _fake_memory(tmp_path / "memory", {})
    with pytest.raises(Exception, match="guest reported zero memory blocks!"):
        hardware.get_memory_blocks(root)


def test_users_from_a_crafted_utmp(tmp_path: Path) -> None:
    path = tmp_path / "utmp"
    long_name = b"u" * 32   # fills ut_user: C reads on into ut_host
    path.write_bytes(b"".join(UTMP_RECORDS) + _utmp_record(users.USER_PROCESS, long_name, 5, 500_000)
                     + b"\0" * 100)   # a torn record at the end is ignored
    assert users.read_users(str(path)) == [
        {"user": "alice", "login-time": 1_700_000_200.000005},
        {"user": "bob", "login-time": 1_700_000_100.999999},
        {"user": "u" * 32 + "host.example", "login-time": 5.5},
    ]
    assert users.read_users(str(tmp_path / "absent")) == []


def test_timezone_matches_libc() -> None:
    now = time.time()
    local = time.localtime(int(now))
    assert users.get_timezone(now) == {"zone": local.tm_zone, "offset": local.tm_gmtoff}


@pytest.mark.parametrize(("disk", "name", "expected"), [
    ("sda", "sda1", True), ("sda", "sda", False), ("sda", "sdaa", False), ("sda", "sdab1", False),
    ("nvme0n1", "nvme0n1p2", True), ("nvme0n1", "nvme0n1p", False), ("vda", "vda15", True),
    ("loop0", "loop0p1", True), ("sda", "holders", False),
])
def test_partition_names_as_qemu_matches_them(disk: str, name: str, expected: bool) -> None:
    assert hardware._is_partition_of(disk, name) is expected


def test_utmp_record_is_glibc_size() -> None:
    assert users.UTMP_RECORD.size == 384
    assert struct.calcsize("=h2xi32s4s32s256shhiii16s20x") == 384



# --- disk addresses from sysfs paths, as qemu-ga reads them --------------------------------------


def _fake_disk(root: Path, rel: str, name: str, drivers: dict[str, str],
               siblings: tuple[str, ...] = ()) -> str:
    """A block device directory at root/rel/block/name with a uevent, PCI functions with
    driver links, and extra sibling directories; returns a /sys/block-style symlink to it."""
    device = root / rel / "block" / name
    device.mkdir(parents=True)
    (device / "uevent").write_text(f"MAJOR=8\nMINOR=0\nDEVNAME={name}\nDEVTYPE=disk\n")
    (device / "size").write_text("2048\n")
    for function, driver in drivers.items():
        (root / "bus" / driver).mkdir(parents=True, exist_ok=True)
        (root / function / "driver").symlink_to(root / "bus" / driver)
    for sibling in siblings:
        (root / sibling).mkdir(parents=True, exist_ok=True)
    link = root / "sysblock" / name
    link.parent.mkdir(exist_ok=True)
    link.symlink_to(device)
    return str(link)


def test_address_virtio_scsi_reports_the_lun_as_unit(tmp_path: Path) -> None:
    fn = "devices/pci0000:00/0000:00:05.0"
    link = _fake_disk(tmp_path, f"{fn}/virtio3/host2/target2:0:1/2:0:1:3", "sdb",
                      {fn: "virtio-pci"})
    assert hardware.real_disk_address(link) == {
        "pci-controller": {"domain": 0, "bus": 0, "slot": 5, "function": 0},
        "bus-type": "scsi", "bus": 0, "target": 0, "unit": 3, "dev": "/dev/sdb"}


def test_address_ahci_counts_hosts(tmp_path: Path) -> None:
    fn = "devices/pci0000:00/0000:00:1f.2"
    link = _fake_disk(tmp_path, f"{fn}/ata3/host2/target2:0:0/2:0:0:0", "sda", {fn: "ahci"},
                      siblings=(f"{fn}/ata1", f"{fn}/ata2", f"{fn}/ata5"))
    address = hardware.real_disk_address(link)
    assert address is not None
    assert (address["bus-type"], address["bus"], address["unit"]) == ("sata", 0, 2)   # ata1 ata2 [ata3] ata5
    assert address["pci-controller"] == {"domain": 0, "bus": 0, "slot": 0x1f, "function": 2}


def test_address_ide_bus_is_the_host_index(tmp_path: Path) -> None:
    fn = "devices/pci0000:00/0000:00:01.1"
    link = _fake_disk(tmp_path, f"{fn}/ata2/host1/target1:0:1/1:0:1:0", "sdc", {fn: "ata_piix"},
                      siblings=(f"{fn}/ata1",))
    address = hardware.real_disk_address(link)
    assert address is not None
    assert (address["bus-type"], address["bus"], address["unit"]) == ("ide", 1, 1)


def test_address_behind_a_bridge_is_the_controller(tmp_path: Path) -> None:
    bridge = "devices/pci0000:00/0000:00:1c.0"
    fn = f"{bridge}/0000:01:00.0"
    link = _fake_disk(tmp_path, f"{fn}/nvme/nvme0", "nvme0n1", {bridge: "pcieport", fn: "nvme"})
    address = hardware.real_disk_address(link)
    assert address is not None
    assert address["bus-type"] == "nvme"
    assert address["pci-controller"] == {"domain": 0, "bus": 1, "slot": 0, "function": 0}


def test_address_unknown_bus_still_names_the_device(tmp_path: Path) -> None:
    fn = "devices/pci0000:00/0000:00:07.0"
    link = _fake_disk(tmp_path, f"{fn}/host0/target0:0:0/0:0:0:0", "sdd", {fn: "megaraid_sas"})
    unknown = {"pci-controller": {"domain": -1, "bus": -1, "slot": -1, "function": -1},
               "bus-type": "unknown", "bus": 0, "target": 0, "unit": 0}
    assert hardware.real_disk_address(link) == {**unknown, "dev": "/dev/sdd"}
    mmc = _fake_disk(tmp_path, "devices/platform/mmc/mmc_host/mmc0/mmc0:0001", "mmcblk0", {})
    assert hardware.real_disk_address(mmc) == {**unknown, "dev": "/dev/mmcblk0"}


def test_address_ccw_virtio_blk(tmp_path: Path) -> None:
    link = _fake_disk(tmp_path, "devices/css0/0.0.0002/0.0.0000/virtio0", "vda", {})
    address = hardware.real_disk_address(link)
    assert address is not None
    assert address["ccw-address"] == {"cssid": 0, "ssid": 0, "subchno": 2, "devno": 0}
    assert address["bus-type"] == "virtio"


def test_nvme_smart_log_parsed_as_qemu_ga_reports_it() -> None:
    log = bytearray(512)
    log[0], log[1:3], log[3], log[4], log[5] = 4, (310).to_bytes(2, "little"), 100, 10, 3
    for i in range(10):
        struct.pack_into("<QQ", log, 32 + 16 * i, 1000 + i, i)
    smart = hardware.parse_nvme_smart(bytes(log))
    assert smart["type"] == "nvme"
    assert (smart["critical-warning"], smart["temperature"], smart["available-spare"],
            smart["available-spare-threshold"], smart["percentage-used"]) == (4, 310, 100, 10, 3)
    assert (smart["data-units-read-lo"], smart["data-units-read-hi"]) == (1000, 0)
    assert (smart["number-of-error-log-entries-lo"], smart["number-of-error-log-entries-hi"]) == (1009, 9)
    assert len(smart) == 1 + 5 + 20
    assert hardware._NVME_ADMIN_CMD.size == 72   # struct nvme_admin_cmd


def _run(*argv: str) -> str:
    import subprocess
    proc = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {proc.stderr.strip()}")
    return proc.stdout


@pytest.mark.qemu_ga
def test_get_disks_same_with_partitions_and_a_dm_device(pair: Pair, tmp_path: Path) -> None:
    """A partitioned loop device and a device-mapper device on its first partition: partitions
    (each depending on its disk) and dependencies (the dm device on the partition) must read the
    same on both agents. Kernels without MBR partitions or device-mapper (this machine's
    microVM kernel has neither) still compare the loop disk itself."""
    require(os.geteuid() == 0, "loop and device-mapper devices need root")
    require(shutil.which("losetup") is not None, "losetup is missing")
    image = tmp_path / "disk.img"
    mbr_image(image)
    loop = _run("losetup", "--find", "--show", "--partscan", str(image)).strip()
    dm_name = f"pyqga-hwtest-{os.getpid()}"
    dm_made = False
    try:
        name = os.path.basename(loop)
        deadline = time.monotonic() + 2
        while not os.path.isdir(f"/sys/block/{name}/{name}p2") and time.monotonic() < deadline:
            time.sleep(0.05)
        # Kernels without MBR support (some microVM kernels) show no partitions: the dm device
        # then sits on the whole loop device.
        partitioned = os.path.isdir(f"/sys/block/{name}/{name}p2")
        base = f"/sys/block/{name}/{name}p1" if partitioned else f"/sys/block/{name}"
        base_dev = Path(f"{base}/dev").read_text().strip()
        sectors = int(Path(f"{base}/size").read_text())
        dm: str | None = None
        if shutil.which("dmsetup") and os.path.exists("/sys/class/misc/device-mapper"):
            _run("dmsetup", "create", dm_name, "--table", f"0 {sectors} linear {base_dev} 0")
            dm_made = True
            dm = next(n for n in os.listdir("/sys/block") if n.startswith("dm-") and
                      Path(f"/sys/block/{n}/dm/name").read_text().strip() == dm_name)
        ours = _same_disks(pair)
        by_name = {d["name"]: d for d in ours["return"]}
        assert by_name[loop] == {"name": loop, "partition": False, "dependencies": []}
        if partitioned:
            assert by_name[f"{loop}p1"] == {"name": f"{loop}p1", "partition": True,
                                            "dependencies": [loop]}
            assert by_name[f"{loop}p2"]["dependencies"] == [loop]
        if dm is not None:
            assert by_name[f"/dev/{dm}"]["dependencies"] == [f"{loop}p1" if partitioned else loop]
            assert "address" not in by_name[f"/dev/{dm}"]   # virtual: no address
    finally:
        if dm_made:
            _run("dmsetup", "remove", "--retry", dm_name)
        _run("losetup", "-d", loop)
