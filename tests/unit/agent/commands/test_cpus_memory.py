"""vCPUs and memory blocks (agent/commands/cpus_memory.py).

Differential: the real qemu-ga and pyqga run side by side on this machine and are asked the same
thing at the same moment; the VALUES must agree (vCPU ids and online state, memory block indexes,
block size). The set commands are compared only with requests that change nothing: the
state a vCPU or block already has, ids that do not exist, malformed arguments. Nothing here
offlines a CPU or a memory block of this machine; the real state changes are exercised on a fake
sysfs tree in a temporary directory.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from pyqga.agent.commands import cpus_memory
from tests.rig.requirements import require
from tests.rig.side_by_side import Pair, ok, same

# --- read commands: the same values ----------------------------------------------------------


@pytest.mark.qemu_ga
def test_get_vcpus_same_ids_and_state(pair: Pair) -> None:
    qga, ours = pair.call("guest-get-vcpus")
    assert ok(ours) == ok(qga)   # same order too: both read the directory in readdir order
    ids = sorted(v["logical-id"] for v in ours["return"])
    assert ids == sorted(int(n[3:]) for n in os.listdir("/sys/devices/system/cpu")
                         if n[3:].isdigit() and n.startswith("cpu"))


@pytest.mark.qemu_ga
def test_get_memory_blocks_same_indexes_and_state(pair: Pair) -> None:
    if not os.path.isdir("/sys/devices/system/memory"):
        qga, ours = pair.call("guest-get-memory-blocks")
        assert ok(ours) == ok(qga) == []
        return
    qga, ours = pair.call("guest-get-memory-blocks")
    assert ok(ours) == ok(qga)
    assert len(ours["return"]) == sum(1 for n in os.listdir("/sys/devices/system/memory")
                                      if n.startswith("memory") and n[6:].isdigit())


@pytest.mark.qemu_ga
def test_get_memory_block_info_same_size(pair: Pair) -> None:
    qga, ours = pair.call("guest-get-memory-block-info")
    assert ok(ours) == ok(qga)
    assert ours["return"]["size"] > 0


# --- set commands: argument checking and no-op requests, compared ----------------------------


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
    same(pair, "guest-set-vcpus", arguments)


def _online_everywhere(pair: Pair) -> list[dict[str, Any]]:
    """The vCPUs, if all are online (the requests above that reach sysfs ask for "online");
    asking each for the state it has changes nothing either way."""
    vcpus = ok(pair.call("guest-get-vcpus")[1])
    require(all(v["online"] for v in vcpus), "a vCPU is offline: the requests for 'online' would change it")
    return vcpus


@pytest.mark.qemu_ga
def test_set_vcpus_same_state_counts_each(pair: Pair) -> None:
    vcpus = _online_everywhere(pair)
    request = [{"logical-id": v["logical-id"], "online": True} for v in vcpus]
    assert same(pair, "guest-set-vcpus", {"vcpus": request}) == {"return": len(vcpus)}


@pytest.mark.qemu_ga
def test_set_vcpus_partial_success_same(pair: Pair) -> None:
    """The first vCPU is handled (already online), the second does not exist: qemu-ga returns 1
    and drops the error; with the missing one first, the error is the reply."""
    vcpus = _online_everywhere(pair)
    first = {"logical-id": vcpus[0]["logical-id"], "online": True}
    missing = {"logical-id": 99999, "online": True}
    assert same(pair, "guest-set-vcpus", {"vcpus": [first, missing, first]}) == {"return": 1}
    reply = same(pair, "guest-set-vcpus", {"vcpus": [missing, first]})
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
    reply = same(pair, "guest-set-vcpus", {"vcpus": [{"logical-id": cpu, "online": False}]})
    assert reply["error"]["desc"] == f"logical processor #{cpu} can't be offlined"


def _an_online_block(pair: Pair) -> int:
    blocks = ok(pair.call("guest-get-memory-blocks")[1])
    online = [b["phys-index"] for b in blocks if b["online"]]
    require(bool(online), "no online memory block")
    return online[0]


@pytest.mark.qemu_ga
def test_set_memory_blocks_no_op_and_missing_same(pair: Pair) -> None:
    block = _an_online_block(pair)
    reply = same(pair, "guest-set-memory-blocks",
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
    same(pair, "guest-set-memory-blocks", arguments)


# --- the same code on a fake sysfs: the paths that would change this machine -----------------


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
    got = sorted(cpus_memory.get_vcpus(root), key=lambda v: v["logical-id"])
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
    assert cpus_memory.set_vcpus(request, root) == 3
    assert (tmp_path / "cpu/cpu2/online").read_text().startswith("1")
    assert (tmp_path / "cpu/cpu3/online").read_text().startswith("0")
    assert (tmp_path / "cpu/cpu1/online").read_text() == "1\n"   # untouched, not rewritten
    with pytest.raises(Exception, match="logical processor #0 can't be offlined"):
        cpus_memory.set_vcpus([{"logical-id": 0, "online": False}], root)
    assert cpus_memory.set_vcpus([{"logical-id": 0, "online": True}], root) == 1


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
    got = sorted(cpus_memory.get_memory_blocks(root), key=lambda b: b["phys-index"])
    assert got == [
        {"phys-index": 0, "online": True, "can-offline": False},
        {"phys-index": 7, "online": False, "can-offline": True},
        {"phys-index": 9, "online": True, "can-offline": False},
        {"phys-index": 12, "online": True, "can-offline": False},
    ]
    assert cpus_memory.get_memory_block_info(root) == {"size": 0x8000000}
    results = cpus_memory.set_memory_blocks(
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
    assert cpus_memory.get_memory_blocks(str(tmp_path / "none")) == []
    assert cpus_memory.set_memory_blocks([{"phys-index": 1, "online": True}], str(tmp_path / "none")) == [
        {"phys-index": 1, "response": "operation-not-supported", "error-code": 2}]


def test_memory_blocks_none_is_an_error(tmp_path: Path) -> None:
    root = _fake_memory(tmp_path / "memory", {})
    with pytest.raises(Exception, match="guest reported zero memory blocks!"):
        cpus_memory.get_memory_blocks(root)
