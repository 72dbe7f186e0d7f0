"""libvirt drives pyqga unchanged: the agent features libvirt builds on, used through ``virsh``.

libvirt is the main consumer of the qemu-ga wire dialect; it owns the host end of the
``org.qemu.guest_agent.0`` channel, wraps every command in its own ``guest-sync`` handshake and
parses the replies with its own expectations (``guest-get-fsinfo`` disk addresses, freeze
counts, no reply to ``guest-shutdown``).  Talking to pyqga through our own client proves none of
that, so here a private libvirtd (``tests/rig/libvirt.py``) boots the test guest with pyqga
on that channel, and each test runs the virsh command a user or backup tool would.

One domain for the whole session (conftest's ``libvirt_guest``: libvirtd's start with its QEMU probe
~8 s, a TCG boot ~10 s), shared with tests/vm/test_libvirt_transport.py; the tests run in file order
and the last one powers the guest off through the agent.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from pyqga.agent.config import VERSION
from tests.rig.libvirt import LibvirtError, LibvirtGuest, table_rows
from tests.rig.requirements import require_tool

pytestmark = pytest.mark.root

# What libvirt itself sends to the agent for the virsh commands tested here.
LIBVIRT_COMMANDS = ("guest-ping", "guest-sync", "guest-info", "guest-fsfreeze-freeze",
                    "guest-fsfreeze-freeze-list", "guest-fsfreeze-thaw", "guest-fsfreeze-status",
                    "guest-get-fsinfo", "guest-shutdown")


@pytest.fixture(scope="module")
def domain(libvirt_guest: LibvirtGuest) -> LibvirtGuest:
    """The session's libvirt guest (conftest), running; the last test here powers it off."""
    require_tool("dumpe2fs")
    libvirt_guest.ensure_running()
    return libvirt_guest


def virsh(domain: LibvirtGuest, *args: str, timeout: float = 60.0) -> str:
    """Run virsh; on failure fail the test with libvirt's exact message and the agent's log,
    so an incompatibility shows both sides."""
    result = domain.lv.virsh(*args, check=False, timeout=timeout)
    if result.returncode != 0:
        pytest.fail(f"virsh {' '.join(args)} failed (exit {result.returncode}):\n{result.stderr.strip()}\n"
                    f"--- guest agent logs ---\n{domain.guest_logs()}\n{domain.diagnostics()}",
                    pytrace=False)
    return result.stdout


def agent_command(domain: LibvirtGuest, command: str, arguments: dict[str, object] | None = None) -> object:
    """``virsh qemu-agent-command``: libvirt syncs, forwards the request, returns the raw reply."""
    request: dict[str, object] = {"execute": command}
    if arguments is not None:
        request["arguments"] = arguments
    output = virsh(domain, "qemu-agent-command", "--timeout", "10", domain.name, json.dumps(request))
    reply = json.loads(output)
    assert set(reply) == {"return"}, reply
    return reply["return"]


def block_targets(domain: LibvirtGuest) -> dict[str, str]:
    """``domblklist``: disk target (vda...) -> its current top image."""
    return {row[0]: row[1] for row in table_rows(virsh(domain, "domblklist", domain.name))}


def freeze_count(output: str, verb: str) -> int:
    match = re.search(rf"{verb} (\d+) filesystem\(s\)", output)
    assert match, output
    return int(match.group(1))


def test_ping_and_info(domain: LibvirtGuest) -> None:
    assert agent_command(domain, "guest-ping") == {}
    info = agent_command(domain, "guest-info")
    assert info["version"] == VERSION  # the pyqga of this checkout, copied into the guest
    commands = {c["name"]: c for c in info["supported_commands"]}
    for name in LIBVIRT_COMMANDS:
        assert commands.get(name, {}).get("enabled"), f"{name} missing or disabled: {commands.get(name)}"
    assert commands["guest-shutdown"]["success-response"] is False  # libvirt expects no reply


def test_domfsinfo_maps_mounts_to_disk_targets(domain: LibvirtGuest) -> None:
    """libvirt maps each filesystem's disk to a domain disk by its PCI address; an empty
    Target column would mean pyqga's ``guest-get-fsinfo`` disk entries do not match."""
    targets = block_targets(domain)
    assert set(targets) == {"vda", "vdb"}, targets
    rows = {}
    for fields in table_rows(virsh(domain, "domfsinfo", domain.name)):
        rows[fields[0]] = fields
    assert {"/", "/data"} <= set(rows), rows
    assert rows["/"][2] == "ext4" and rows["/data"][2] == "ext4", rows
    assert rows["/"][3:] == ["vda"] and rows["/data"][3:] == ["vdb"], rows
    assert targets["vda"] == str(domain.root_disk) and targets["vdb"] == str(domain.data_disk)


def test_domfsfreeze_all_then_thaw(domain: LibvirtGuest) -> None:
    try:
        froze = freeze_count(virsh(domain, "domfsfreeze", domain.name), "Froze")
        assert froze == 2  # / and /data, as qemu-ga counts them in this guest
        assert agent_command(domain, "guest-fsfreeze-status") == "frozen"
    finally:
        thawed = freeze_count(virsh(domain, "domfsthaw", domain.name), "Thawed")
    assert thawed == 2
    assert agent_command(domain, "guest-fsfreeze-status") == "thawed"


def test_domfsfreeze_one_mountpoint(domain: LibvirtGuest) -> None:
    """``--mountpoint`` makes libvirt send ``guest-fsfreeze-freeze-list``.  Thaw is always of all
    filesystems: libvirt itself rejects ``domfsthaw --mountpoint`` ("specifying mountpoints is
    not supported") without asking the agent."""
    try:
        assert freeze_count(virsh(domain, "domfsfreeze", domain.name, "--mountpoint", "/data"), "Froze") == 1
        assert agent_command(domain, "guest-fsfreeze-status") == "frozen"
    finally:
        thawed = freeze_count(virsh(domain, "domfsthaw", domain.name), "Thawed")
    assert thawed == 1
    assert agent_command(domain, "guest-fsfreeze-status") == "thawed"


def test_quiesced_disk_only_snapshot(domain: LibvirtGuest) -> None:
    """libvirt freezes through the agent, switches both disks to new overlays, thaws.  The old
    data image is then the snapshot: ext4 clears ``needs_recovery`` on freeze, so a clean
    superblock shows the freeze really covered the snapshot (REFERENCE.md)."""
    before = block_targets(domain)
    overlays = {target: domain.workdir / f"{target}-snap.qcow2" for target in before}
    specs = [arg for target, path in overlays.items() for arg in ("--diskspec", f"{target},file={path}")]
    out = virsh(domain, "snapshot-create-as", domain.name, "--disk-only", "--quiesce", "--no-metadata",
                *specs)
    assert "created" in out, out
    assert block_targets(domain) == {target: str(path) for target, path in overlays.items()}
    assert agent_command(domain, "guest-fsfreeze-status") == "thawed"
    snapshot = Path(before["vdb"])
    header = subprocess.run(["dumpe2fs", "-h", str(snapshot)], capture_output=True, text=True,
                            check=True).stdout
    features = next(line for line in header.splitlines() if line.startswith("Filesystem features:"))
    assert "needs_recovery" not in features, features
    fsck = subprocess.run(["e2fsck", "-fn", str(snapshot)], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr


def test_shutdown_through_agent(domain: LibvirtGuest) -> None:
    """``shutdown --mode agent`` sends ``guest-shutdown`` (mode powerdown) and expects no reply;
    the guest must then power off by itself."""
    virsh(domain, "shutdown", "--mode", "agent", domain.name)
    state = domain.wait_state("shut off", timeout=30)
    if not state.startswith("shut off"):
        raise LibvirtError(f"still {state!r} 30 s after shutdown --mode agent\n{domain.guest_logs()}\n"
                           f"{domain.diagnostics()}")
    assert state == "shut off (shutdown)"
