"""The whole command set: every Linux command of QEMU 11.1's schema is there, the generated
``docs/commands.md`` is current, the 20 commands Proxmox's ``qm guest cmd`` offers answer
with qemu-ga's shapes (compared with the real qemu-ga on this machine, read commands only), and
the vCPU, memory block, disk, user and time zone commands are listed in guest-info, disabled by
``-b`` and kept off while frozen as qemu-ga does."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pyqga.agent.commands_doc import commands_markdown
from pyqga.agent.registry import build_registry
from pyqga.host_client import AgentClient
from tests.rig.agent_process import REPO_ROOT, PyqgaAgent
from tests.rig.qemu_ga import QemuGa, require_qemu_ga
from tests.rig.side_by_side import Pair, ok, side_by_side

# QEMU 11.1 qga/qapi-schema.json, the commands built on Linux.
QEMU_LINUX_COMMANDS = {
    "guest-sync-delimited", "guest-sync", "guest-ping", "guest-get-time", "guest-set-time", "guest-info",
    "guest-shutdown", "guest-file-open", "guest-file-close", "guest-file-read", "guest-file-write",
    "guest-file-seek", "guest-file-flush", "guest-fsfreeze-status", "guest-fsfreeze-freeze",
    "guest-fsfreeze-freeze-list", "guest-fsfreeze-thaw", "guest-fstrim", "guest-suspend-disk",
    "guest-suspend-ram", "guest-suspend-hybrid", "guest-network-get-interfaces", "guest-get-vcpus",
    "guest-set-vcpus", "guest-get-disks", "guest-get-fsinfo", "guest-set-user-password",
    "guest-get-memory-blocks", "guest-set-memory-blocks", "guest-get-memory-block-info", "guest-exec-status",
    "guest-exec", "guest-get-host-name", "guest-get-users", "guest-get-timezone", "guest-get-osinfo",
    "guest-get-devices", "guest-ssh-get-authorized-keys", "guest-ssh-add-authorized-keys",
    "guest-ssh-remove-authorized-keys", "guest-get-diskstats", "guest-get-cpustats",
    "guest-network-get-route", "guest-get-load",
}
# guest-get-devices is Windows-only in qemu's build (CONFIG_WIN32): not a Linux command.
QEMU_LINUX_COMMANDS.discard("guest-get-devices")
OURS = {"guest-fsfreeze-info"}
# The fault commands (issue 20), opt-in; list, revert and events answer while frozen, so a test
# can always see and end its faults.
FAULTS = {"guest-fault-capabilities", "guest-fault-inject", "guest-fault-list", "guest-fault-revert",
          "guest-fault-events", "guest-fault-plan"}
FAULTS_WHILE_FROZEN = {"guest-fault-list", "guest-fault-revert", "guest-fault-events"}
# qga/main.c's ga_freeze_allowlist (QEMU 11.1).
FREEZE_ALLOWLIST = {"guest-ping", "guest-info", "guest-sync", "guest-sync-delimited", "guest-fsfreeze-status",
                    "guest-fsfreeze-thaw"}
# Proxmox VE's `qm guest cmd` (PVE/API2/Qemu/Agent.pm): the 20 commands it offers.
PROXMOX = {
    "fsfreeze-freeze", "fsfreeze-status", "fsfreeze-thaw", "fstrim", "get-fsinfo", "get-host-name",
    "get-memory-block-info", "get-memory-blocks", "get-osinfo", "get-time", "get-timezone", "get-users",
    "get-vcpus", "info", "network-get-interfaces", "ping", "shutdown", "suspend-disk", "suspend-hybrid",
    "suspend-ram",
}
# Of those, the ones that read and change nothing: asked of both agents here.
PROXMOX_READS = sorted(PROXMOX - {"fsfreeze-freeze", "fsfreeze-thaw", "fstrim", "shutdown", "suspend-disk",
                                  "suspend-hybrid", "suspend-ram"})


def test_every_linux_command_of_qemu_11_1_and_only_those() -> None:
    assert len(QEMU_LINUX_COMMANDS) == 43
    assert set(build_registry().names()) == QEMU_LINUX_COMMANDS | OURS | FAULTS


def test_only_qemu_ga_s_freeze_allowlist_runs_while_frozen() -> None:
    """qga/main.c's ga_freeze_allowlist, plus our read-only guest-fsfreeze-info; every command
    added since (get-load, network-get-route, ...) stays off while frozen, as in qemu-ga."""
    allowed = {command.name for command in build_registry() if command.allowed_while_frozen}
    assert allowed == FREEZE_ALLOWLIST | OURS | FAULTS_WHILE_FROZEN


def test_generated_command_docs_are_current() -> None:
    current = (REPO_ROOT / "docs" / "commands.md").read_text()
    assert current == commands_markdown(build_registry()), \
        "docs/commands.md is out of date: python -m pyqga.agent.commands_doc > docs/commands.md"


def test_proxmox_commands_are_all_there() -> None:
    assert {f"guest-{name}" for name in PROXMOX} <= set(build_registry().names())


@pytest.fixture(scope="module")
def both(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AgentClient, AgentClient]]:
    require_qemu_ga()
    with QemuGa(tmp_path_factory.mktemp("qga")) as qga, \
            PyqgaAgent(tmp_path_factory.mktemp("pyqga")) as ours, \
            AgentClient(str(qga.socket_path), dialect="qga", timeout=30) as theirs_client, \
            AgentClient(str(ours.socket_path), dialect="qga", timeout=30) as our_client:
        yield our_client, theirs_client


def shape(value: Any) -> Any:
    """The JSON structure: types, and for objects their keys (lists by their first item)."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return type(value).__name__


def covers(ours: Any, theirs: Any, where: str) -> None:
    """Everything qemu-ga sends, pyqga sends with the same type (pyqga may send more)."""
    if isinstance(theirs, dict):
        assert isinstance(ours, dict), f"{where}: {ours!r} is not an object"
        for key, item in theirs.items():
            assert key in ours, f"{where}: pyqga lacks {key!r}"
            covers(ours[key], item, f"{where}.{key}")
    elif isinstance(theirs, list) and theirs:
        assert isinstance(ours, list) and ours, f"{where}: pyqga sent {ours!r}"
        covers(ours[0], theirs[0], f"{where}[0]")
    else:
        assert ours == theirs, f"{where}: {ours!r} where qemu-ga has {theirs!r}"


@pytest.mark.parametrize("name", PROXMOX_READS)
def test_proxmox_reads_answer_with_qemu_ga_shapes(both: tuple[AgentClient, AgentClient], name: str) -> None:
    ours, theirs = (client.call(f"guest-{name}") for client in both)
    covers(shape(ours), shape(theirs), f"guest-{name}")


def test_the_docs_name_every_command() -> None:
    text = Path(REPO_ROOT / "docs" / "commands.md").read_text()
    for name in QEMU_LINUX_COMMANDS | OURS:
        assert f"`{name}`" in text


# --- vCPUs, memory blocks, disks, users, time zone: -b, guest-info, frozen -------------------------


# The vCPU, memory block, disk, user and time zone commands (cpus_memory.py, disks.py, users.py),
# added together: listed, disabled and placed as qemu-ga does.
SYSFS_AND_UTMP_COMMANDS = ("guest-get-vcpus", "guest-set-vcpus", "guest-get-memory-blocks",
                           "guest-set-memory-blocks", "guest-get-memory-block-info", "guest-get-disks",
                           "guest-get-users", "guest-get-timezone")


@pytest.mark.qemu_ga
def test_guest_info_lists_them_as_qemu_ga_does(pair: Pair) -> None:
    qga, ours = pair.call("guest-info")
    theirs = {c["name"]: c for c in ok(qga)["supported_commands"]}
    mine = {c["name"]: c for c in ok(ours)["supported_commands"]}
    for name in SYSFS_AND_UTMP_COMMANDS:
        assert mine[name] == theirs[name]


@pytest.mark.qemu_ga
def test_each_can_be_disabled_with_b(tmp_path: Path) -> None:
    with side_by_side(tmp_path, ("-b", ",".join(SYSFS_AND_UTMP_COMMANDS))) as peers:
        for name in SYSFS_AND_UTMP_COMMANDS:
            qga, ours = peers.call(name, {} if name.startswith("guest-get") else None)
            assert ours["error"]["class"] == qga["error"]["class"] == "CommandNotFound", name
            # qemu-ga 7.2 stops after "disabled"; newer qemu-ga and we add the reason.
            assert qga["error"]["desc"] == f"Command {name} has been disabled", name
            assert ours["error"]["desc"].startswith(qga["error"]["desc"]), name


def test_registered_where_they_run_and_not_allowed_while_frozen() -> None:
    """qemu-ga's freeze allowlist (qga/main.c) has none of them.  Those that write sysfs, or ask
    disks (SMART), run on a worker; those that only read sysfs stay on the connection loop."""
    registry = build_registry()
    for name in SYSFS_AND_UTMP_COMMANDS:
        command = registry.get(name)
        assert command is not None, name
        assert not command.allowed_while_frozen, name
        assert command.blocking == (name.startswith("guest-set-") or name == "guest-get-disks"), name
