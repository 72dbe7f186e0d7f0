"""The resource kinds' pure parts (issue 21): their caps and parameters, the recipe a request
becomes (a spawn and its reap, under one fresh token), and the spawn and reap steps as the
engine and the keeper run them, against the model fault kernel.  The real workers are in
tests/process/test_resource_faults.py."""

from __future__ import annotations

from typing import Any

import pytest

from pyqga.agent.faults import catalog, resources
from pyqga.agent.faults.kinds import Context
from pyqga.agent.faults.machine import LeaseBook, Refused, keeper_deadline
from pyqga.agent.faults.recipes import RELEASES_IO, StepError, check_step, run_step, run_steps, undo_order
from pyqga.agent.faults.vocabulary import SPAWN_WAIT, Now, Prepared
from tests.rig.model_kernel import ModelFaultKernel

NO_MOUNTS = Context([], frozenset())
MEMINFO = """MemTotal:         512000 kB
MemFree:          300000 kB
MemAvailable:     409600 kB
Buffers:            1000 kB
HugePages_Total:       0
"""


def prepare(kind: str, target: str, params: dict[str, Any] | None = None) -> Any:
    return catalog.prepare(kind, target, params, False, NO_MOUNTS)


def refusal(kind: str, target: str, params: dict[str, Any] | None = None) -> str:
    with pytest.raises(Refused) as caught:
        prepare(kind, target, params)
    message = str(caught.value)
    assert "\n" not in message and len(message) < 300, message
    return message


@pytest.fixture
def two_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resources.os, "cpu_count", lambda: 2)


@pytest.fixture
def meminfo(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """The guest's /proc/meminfo as the preparer reads it: a dict the test sets."""
    info = resources.parse_meminfo(MEMINFO)
    monkeypatch.setattr(resources, "meminfo", lambda: info)
    return info


def test_meminfo_is_read_in_kib_by_field() -> None:
    info = resources.parse_meminfo(MEMINFO)
    assert info == {"MemTotal": 512000, "MemFree": 300000, "MemAvailable": 409600, "Buffers": 1000,
                    "HugePages_Total": 0}
    assert resources.parse_meminfo("") == {} and resources.parse_meminfo("garbage\nA: b kB") == {}


@pytest.mark.parametrize(("total_mib", "available_mib", "cap"), [
    (500, 400, 400 - 128),          # a small guest: the fixed reserve is the larger
    (8192, 6144, 6144 - 819),       # a large one: a tenth of its memory
    (500, 100, 0),                  # less available than the reserve: nothing
    (0, 0, 0),                      # meminfo unreadable: nothing
])
def test_the_memory_cap_is_available_less_the_larger_reserve(total_mib: int, available_mib: int,
                                                             cap: int) -> None:
    info = {"MemTotal": total_mib * 1024, "MemAvailable": available_mib * 1024}
    assert resources.memory_cap_mib(info) == cap


def test_memory_pressure_up_to_the_cap_and_not_beyond(meminfo: dict[str, int]) -> None:
    cap = resources.memory_cap_mib(meminfo)
    assert cap == 400 - 128
    spec = prepare("memory-pressure", "memory", {"mib": cap})
    assert spec.device == "memory" and spec.apply[0]["args"] == {"mib": cap}
    message = refusal("memory-pressure", "memory", {"mib": cap + 1})
    assert f"{cap + 1} MiB is above the cap of {cap} MiB" in message
    meminfo["MemAvailable"] = 0
    assert "above the cap of 0 MiB" in refusal("memory-pressure", "memory", {"mib": 1})


@pytest.mark.parametrize(("params", "says"), [
    ({}, "needs the parameter 'mib'"),
    ({"mib": 0}, "mib must be between 1"),
    ({"mib": True}, "mib must be int"),
    ({"mib": "64"}, "mib must be int"),
    ({"mib": 64, "processes": 2}, "has no parameter 'processes'"),
])
def test_memory_pressure_params(meminfo: dict[str, int], params: dict[str, Any], says: str) -> None:
    assert says in refusal("memory-pressure", "memory", params)


def test_cpu_hog_defaults_and_caps(two_cpus: None) -> None:
    spec = prepare("cpu-hog", "cpu")
    assert spec.device == "cpu"
    assert spec.apply[0]["args"] == {"processes": 1, "percent": 100, "period-ms": 100}
    assert prepare("cpu-hog", "cpu", {"processes": 8, "percent": 25}).apply[0]["args"]["processes"] == 8
    assert prepare("cpu-hog", "cpu", {"processes": 2, "percent": 100}).device == "cpu"
    message = refusal("cpu-hog", "cpu", {"processes": 9, "percent": 1})
    assert "9 processes is above the cap of 8 (4 per CPU, 2 CPUs)" in message
    assert "3 x 100 % is more than this guest's 2 CPUs" in refusal("cpu-hog", "cpu", {"processes": 3})
    assert "5 x 50 %" in refusal("cpu-hog", "cpu", {"processes": 5, "percent": 50})


@pytest.mark.parametrize(("params", "says"), [
    ({"percent": 0}, "percent must be between 1 and 100"),
    ({"percent": 101}, "percent must be between 1 and 100"),
    ({"processes": 0}, "processes must be between 1"),
    ({"period-ms": 5}, "period-ms must be between 10 and 10000"),
    ({"period-ms": 2.5}, "period-ms must be int"),
])
def test_cpu_hog_params(two_cpus: None, params: dict[str, Any], says: str) -> None:
    assert says in refusal("cpu-hog", "cpu", params)


@pytest.mark.parametrize(("kind", "target", "says"), [
    ("cpu-hog", "memory", "cpu-hog takes the target 'cpu', not 'memory'"),
    ("cpu-hog", "/data", "not '/data'"),
    ("memory-pressure", "cpu", "memory-pressure takes the target 'memory', not 'cpu'"),
    ("memory-pressure", "x" * 500, "not 'xxxx"),
])
def test_wrong_targets(meminfo: dict[str, int], kind: str, target: str, says: str) -> None:
    message = refusal(kind, target, {"mib": 1} if kind == "memory-pressure" else {})
    assert says in message


def test_capabilities_ask_for_the_target_only(meminfo: dict[str, int]) -> None:
    """mib has no default, yet memory-pressure is available on 'memory' (not on 'cpu')."""
    kinds = {entry["kind"]: entry for entry in catalog.capabilities("memory", NO_MOUNTS)}
    assert kinds["memory-pressure"]["available"] and not kinds["cpu-hog"]["available"]
    assert "takes the target 'cpu'" in kinds["cpu-hog"]["reason"]


def test_a_request_is_one_spawn_and_its_reap_under_a_fresh_token(meminfo: dict[str, int]) -> None:
    specs = [prepare("memory-pressure", "memory", {"mib": 8}), prepare("cpu-hog", "cpu")]
    tokens = set()
    for spec in specs:
        (spawn,), (reap,) = spec.apply, spec.undo
        assert spawn["op"] == "spawn" and reap == {"op": "reap", "token": spawn["token"]}
        check_step(spawn), check_step(reap)
        assert len(spawn["token"]) == 16 and int(spawn["token"], 16) >= 0
        tokens.add(spawn["token"])
    assert specs[0].apply[0]["worker"] == "memory" and specs[1].apply[0]["worker"] == "cpu-hog"
    assert len(tokens) == 2
    again = prepare("memory-pressure", "memory", {"mib": 8})
    assert again.apply[0]["token"] not in tokens


@pytest.mark.parametrize("step", [
    {"op": "spawn", "worker": "memory", "token": "t"},                          # no args
    {"op": "spawn", "worker": "memory", "token": "t", "args": [64]},            # args not an object
    {"op": "spawn", "worker": 3, "token": "t", "args": {}},
    {"op": "spawn", "worker": "memory", "token": None, "args": {}},
    {"op": "reap"},
    {"op": "reap", "token": 7},
    {"op": "reap", "token": True},
])
def test_malformed_spawn_and_reap_steps_are_refused(step: dict[str, Any]) -> None:
    with pytest.raises(StepError):
        check_step(step)


def test_spawn_then_reap_in_the_model_and_reap_is_idempotent() -> None:
    kernel = ModelFaultKernel({}, {})
    before = kernel.state()
    spawn = {"op": "spawn", "worker": "memory", "token": "a1", "args": {"mib": 8}}
    reap = {"op": "reap", "token": "a1"}
    assert run_steps([spawn], kernel) == (None, True)
    assert kernel.state() == {**before, "worker:a1": True}
    with pytest.raises(FileExistsError):   # one token, one worker
        run_step(spawn, kernel)
    for _ in range(2):   # the agent's undo, then the keeper's: one change
        assert run_steps(undo_order([reap]), kernel) == (None, True)
    assert kernel.state() == before and kernel.count("spawn") == kernel.count("reap") == 1
    assert run_steps([reap], kernel)[0] is None   # a reap of a token never spawned: done


def test_a_failed_spawn_may_have_started_its_worker_so_it_is_undone() -> None:
    """spawn is not atomic: a worker may run when the step fails (a timeout), so the engine
    undoes it, and the reap ends it."""
    kernel = ModelFaultKernel({}, {})
    before = kernel.state()
    kernel.fail_next("spawn", after=True)
    error, changed = run_steps([{"op": "spawn", "worker": "cpu-hog", "token": "b2", "args": {}}], kernel)
    assert error is not None and error.startswith("spawn:") and changed
    assert kernel.state() == {**before, "worker:b2": True}
    run_step({"op": "reap", "token": "b2"}, kernel)
    assert kernel.state() == before


def test_reap_releases_first() -> None:
    """A reap is among the steps the keeper runs first: a worker may hold the memory or the
    CPU that the other undo steps need."""
    assert "reap" in RELEASES_IO
    steps = [{"op": "unlink", "path": "/m/f"}, {"op": "reap", "token": "c3"}]
    assert [s["op"] for s in undo_order(steps)] == ["reap", "unlink"]


@pytest.mark.parametrize(("duration", "arming", "active"), [
    (0.5, 1000 + SPAWN_WAIT + 1, 1000.5),     # a short lease: the worker's start may outlast it
    (60.0, 1060.0, 1060.0),                   # a long one: its deadline, as every kind
])
def test_the_keeper_waits_for_a_worker_to_start(duration: float, arming: float, active: float) -> None:
    """An agent waiting on a spawn (bounded by SPAWN_WAIT) is not hung: the keeper's deadline of
    an arming worker lease is at least the end of that wait.  Once applied, its own deadline."""
    book = LeaseBook()
    now = Now(1000.0, 1_700_000_000.0)
    spawn = {"op": "spawn", "worker": "memory", "token": "d4", "args": {"mib": 8}}
    lease, _ = book.inject(Prepared("memory-pressure", "memory", {"mib": 8}, "memory", (spawn,),
                                    ({"op": "reap", "token": "d4"},), duration), now)
    assert keeper_deadline(book.leases[lease.id]) == arming
    book.applied(lease.id, Now(1000.2, 1_700_000_000.2), None, True)
    assert keeper_deadline(book.leases[lease.id]) == active
    write_stall = Prepared("write-stall", "/m", {}, "8:1", ({"op": "freeze", "path": "/m"},),
                           ({"op": "thaw", "path": "/m"},), 0.5)
    other, _ = book.inject(write_stall, now)
    assert keeper_deadline(book.leases[other.id]) == 1000.5   # no worker: no wait
