"""Differential freeze tests: the real qemu-ga and pyqga, the same sequences on the same loop mounts.

Each test makes its filesystems once, then runs one script against qemu-ga and then against pyqga
(never both frozen at once: each agent is stopped, and every mount checked thawed, before the next
starts), through the same client in the ``qga`` dialect, and compares what came back. Where we
differ on purpose, each side is asserted on its own and the reason is named.

Safety: only ``guest-fsfreeze-freeze-list`` with our own mount points is ever sent; never
``guest-fsfreeze-freeze``. pyqga runs with ``--freeze-include`` limited to our mounts. qemu-ga has
no such filter and its thaw FITHAWs every mount it sees, so it runs in a private mount namespace
in which the only freezable filesystems left are ``/`` and ours (:meth:`LoopMounts.isolated`):
otherwise it would thaw, and count, what a concurrent test froze.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pyqga.host_client import AgentCallError, AgentClient
from tests.rig.agent_process import PyqgaAgent
from tests.rig.loopfs import LoopMounts, freeze_directly, thaw_fully
from tests.rig.qemu_ga import IsolatedQemuGa, QemuGa

pytestmark = [pytest.mark.root, pytest.mark.qemu_ga]

SAFE_SIX = {"guest-ping", "guest-info", "guest-sync", "guest-sync-delimited",
            "guest-fsfreeze-status", "guest-fsfreeze-thaw"}
QEMU_GA_FROZEN_TEXT = "Command guest-get-time has been disabled: the agent is in frozen state"
CALL_TIMEOUT = 30.0
PEERS = ("qemu-ga", "pyqga")

Outcome = tuple[Any, ...]  # ("return", value) or ("error", class, desc)
Script = Callable[[AgentClient], list[Outcome]]


@pytest.fixture
def loops(qga_loops: LoopMounts) -> LoopMounts:
    return qga_loops


@contextlib.contextmanager
def connected(peer: str, workdir: Path, loops: LoopMounts) -> Iterator[AgentClient]:
    """Start ``peer`` with a fresh state folder, yield a qga-dialect client, stop it after."""
    agent: QemuGa | PyqgaAgent
    if peer == "qemu-ga":
        agent = IsolatedQemuGa(workdir, loops)
        agent.__enter__()
    else:
        agent = PyqgaAgent(workdir, ["--freeze-include", loops.glob()])
        agent.start()
    try:
        with AgentClient(str(agent.socket_path), dialect="qga", timeout=CALL_TIMEOUT) as client:
            yield client
    finally:
        agent.stop()


def outcome(client: AgentClient, method: str, **params: Any) -> Outcome:
    try:
        return ("return", client.call(method, **params))
    except AgentCallError as exc:
        return ("error", exc.error_class, exc.error.message)


def assert_nothing_frozen(loops: LoopMounts, after: str) -> None:
    left = {str(fs.mountpoint): n for fs in loops.filesystems if (n := thaw_fully(fs.mountpoint))}
    assert not left, f"left frozen after {after}: {left}"


def run_both(tmp_path: Path, loops: LoopMounts, script: Script,
             setup: Callable[[], None] | None = None) -> dict[str, list[Outcome]]:
    """``script`` against qemu-ga, then against pyqga; ``setup`` runs before each."""
    results: dict[str, list[Outcome]] = {}
    for peer in PEERS:
        if setup is not None:
            setup()
        try:
            with connected(peer, tmp_path / peer, loops) as client:
                results[peer] = script(client)
        finally:
            assert_nothing_frozen(loops, peer)
    return results


def paths(*items: Any) -> list[str]:
    return [str(item) for item in items]


# --- the cases -------------------------------------------------------------------------------


def test_freeze_list_of_three_then_status_then_thaw(tmp_path: Path, loops: LoopMounts) -> None:
    a, b, c = loops.add("a"), loops.add("b"), loops.add("c")

    def script(client: AgentClient) -> list[Outcome]:
        return [
            outcome(client, "guest-fsfreeze-status"),
            outcome(client, "guest-fsfreeze-freeze-list", mountpoints=paths(a, b, c)),
            outcome(client, "guest-fsfreeze-status"),
            outcome(client, "guest-fsfreeze-thaw"),
            outcome(client, "guest-fsfreeze-status"),
        ]

    results = run_both(tmp_path, loops, script)
    expected = [("return", "thawed"), ("return", 3), ("return", "frozen"), ("return", 3),
                ("return", "thawed")]
    assert results["qemu-ga"] == expected
    assert results["pyqga"] == expected


def test_tmpfs_in_the_list_is_not_counted(tmp_path: Path, loops: LoopMounts) -> None:
    """EOPNOTSUPP (tmpfs) is skipped and not counted; a list of only tmpfs freezes nothing, returns
    0 and leaves the agent thawed (REFERENCE.md, qemu-ga freeze semantics 4 and 5)."""
    a, b = loops.add("a"), loops.add("b")
    t = loops.tmpfs(loops.base / "t")

    def script(client: AgentClient) -> list[Outcome]:
        return [
            outcome(client, "guest-fsfreeze-freeze-list", mountpoints=paths(a, t, b)),
            outcome(client, "guest-fsfreeze-status"),
            outcome(client, "guest-fsfreeze-thaw"),
            outcome(client, "guest-fsfreeze-freeze-list", mountpoints=paths(t)),
            outcome(client, "guest-fsfreeze-status"),
            outcome(client, "guest-fsfreeze-thaw"),
        ]

    results = run_both(tmp_path, loops, script)
    expected = [("return", 2), ("return", "frozen"), ("return", 2),
                ("return", 0), ("return", "thawed"), ("return", 0)]
    assert results["qemu-ga"] == expected
    assert results["pyqga"] == expected


def test_already_frozen_fs_is_skipped_and_thaw_counts_it(tmp_path: Path, loops: LoopMounts) -> None:
    """EBUSY is skipped and not counted; thaw thaws (and counts) it anyway (semantics 4 and 7)."""
    a, b, c = loops.add("a"), loops.add("b"), loops.add("c")

    def script(client: AgentClient) -> list[Outcome]:
        return [
            outcome(client, "guest-fsfreeze-freeze-list", mountpoints=paths(a, b, c)),
            outcome(client, "guest-fsfreeze-status"),
            outcome(client, "guest-fsfreeze-thaw"),
            outcome(client, "guest-fsfreeze-status"),
        ]

    results = run_both(tmp_path, loops, script, setup=lambda: freeze_directly(b.mountpoint))
    expected = [("return", 2), ("return", "frozen"), ("return", 3), ("return", "thawed")]
    assert results["qemu-ga"] == expected
    assert results["pyqga"] == expected


def test_already_frozen_only_fs_returns_zero(tmp_path: Path, loops: LoopMounts) -> None:
    """Nothing newly frozen: 0 and thawed, although the kernel has the fs frozen (semantics 5, 8)."""
    a = loops.add("a")

    def script(client: AgentClient) -> list[Outcome]:
        return [
            outcome(client, "guest-fsfreeze-freeze-list", mountpoints=paths(a)),
            outcome(client, "guest-fsfreeze-status"),
            outcome(client, "guest-fsfreeze-thaw"),
        ]

    results = run_both(tmp_path, loops, script, setup=lambda: freeze_directly(a.mountpoint))
    expected = [("return", 0), ("return", "thawed"), ("return", 1)]
    assert results["qemu-ga"] == expected
    assert results["pyqga"] == expected


def test_bind_mount_of_a_listed_fs_is_frozen_once(tmp_path: Path, loops: LoopMounts) -> None:
    a, b = loops.add("a"), loops.add("b")
    a_bind = loops.bind(a.mountpoint, loops.base / "a-bind")

    def script(client: AgentClient) -> list[Outcome]:
        return [
            outcome(client, "guest-fsfreeze-freeze-list", mountpoints=paths(a, a_bind, b)),
            outcome(client, "guest-fsfreeze-thaw"),
            outcome(client, "guest-fsfreeze-freeze-list", mountpoints=paths(a_bind, a)),
            outcome(client, "guest-fsfreeze-thaw"),
        ]

    results = run_both(tmp_path, loops, script)
    expected = [("return", 2), ("return", 2), ("return", 1), ("return", 1)]
    assert results["qemu-ga"] == expected
    assert results["pyqga"] == expected


def test_thaw_with_nothing_frozen_returns_zero(tmp_path: Path, loops: LoopMounts) -> None:
    loops.add("a")

    def script(client: AgentClient) -> list[Outcome]:
        return [outcome(client, "guest-fsfreeze-thaw"), outcome(client, "guest-fsfreeze-status")]

    results = run_both(tmp_path, loops, script)
    assert results["qemu-ga"] == results["pyqga"] == [("return", 0), ("return", "thawed")]


def test_other_commands_are_refused_while_frozen(tmp_path: Path, loops: LoopMounts) -> None:
    """Both refuse with CommandNotFound and qemu-ga's text. Of qemu-ga's commands both keep exactly
    the safe six enabled (pyqga adds its read-only guest-fsfreeze-info, which qemu-ga lacks)."""
    a = loops.add("a")

    def script(client: AgentClient) -> list[Outcome]:
        frozen = outcome(client, "guest-fsfreeze-freeze-list", mountpoints=paths(a))
        refused = outcome(client, "guest-get-time")
        again = outcome(client, "guest-fsfreeze-freeze-list", mountpoints=paths(a))
        commands = client.info()["supported_commands"]
        enabled = frozenset(c["name"] for c in commands if c["enabled"])
        known = frozenset(c["name"] for c in commands)
        ping = outcome(client, "guest-ping")
        thawed = outcome(client, "guest-fsfreeze-thaw")
        after = outcome(client, "guest-get-time")[0]
        return [frozen, refused, again[:2], ping, thawed, after, ("info", enabled, known)]

    results = run_both(tmp_path, loops, script)
    for peer in PEERS:
        assert results[peer][:-1] == [
            ("return", 1),
            ("error", "CommandNotFound", QEMU_GA_FROZEN_TEXT),
            ("error", "CommandNotFound"),
            ("return", {}),
            ("return", 1),
            "return",
        ], peer
    _, qga_enabled, qga_known = results["qemu-ga"][-1]
    _, our_enabled, _ = results["pyqga"][-1]
    assert qga_enabled == SAFE_SIX
    assert our_enabled & qga_known == SAFE_SIX


def test_freeze_list_naming_a_non_mount_point(tmp_path: Path, loops: LoopMounts) -> None:
    """qemu-ga silently skips a path that is not a mount point (0 alone; with a real mount point
    listed too it freezes that one); we reject the whole list with an invalid-parameter
    GenericError and freeze nothing. Deliberate difference: REFERENCE.md, "qemu-ga's freeze-list
    returns 0, not an error, for ... non-mount-points"; ours is ``FreezePlanner.plan_list``."""
    a = loops.add("a")
    plain = loops.base / "not-a-mount"
    plain.mkdir()

    def script(client: AgentClient) -> list[Outcome]:
        return [
            outcome(client, "guest-fsfreeze-freeze-list", mountpoints=paths(plain)),
            outcome(client, "guest-fsfreeze-status"),
            outcome(client, "guest-fsfreeze-freeze-list", mountpoints=paths(a, plain)),
            outcome(client, "guest-fsfreeze-status"),
            outcome(client, "guest-fsfreeze-thaw"),
        ]

    results = run_both(tmp_path, loops, script)
    assert results["qemu-ga"] == [("return", 0), ("return", "thawed"),
                                  ("return", 1), ("return", "frozen"), ("return", 1)]
    refused = ("error", "GenericError", f"{plain} is not a mount point")
    assert results["pyqga"] == [refused, ("return", "thawed"),
                                refused, ("return", "thawed"), ("return", 0)]

    # The qga dialect has one class for every failure; pyqga's own dialect tells which one.
    agent = PyqgaAgent(tmp_path / "pyqga-jsonrpc", ["--freeze-include", loops.glob()])
    agent.start()
    try:
        with (
            AgentClient(str(agent.socket_path), dialect="jsonrpc", timeout=CALL_TIMEOUT) as client,
            pytest.raises(AgentCallError) as caught,
        ):
            client.call("guest-fsfreeze-freeze-list", mountpoints=paths(a, plain))
    finally:
        agent.stop()
    assert caught.value.code == -32602  # invalid params
    assert_nothing_frozen(loops, "pyqga (jsonrpc)")
