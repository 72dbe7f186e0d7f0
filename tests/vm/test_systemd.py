"""The Debian package in a Debian guest with systemd and udev as PID 1, used as an administrator
would: ``dpkg -i`` offline, a reboot, and the agent must come up by itself from its udev rule.

One guest for the module (``tests/rig/systemd_image.py``; a cold image build costs ~2 minutes, then
it is cached): the tests run in file order on it, ending with ``dpkg -r``.  A control service of
the image's own, on the second virtio-serial port, runs ``systemctl``, ``journalctl``, ``kill``
and ``dpkg`` for the host, whatever state the agent is in.  "Not frozen" is read from the kernel:
``fsfreeze --unfreeze`` answers EINVAL for a filesystem that is not frozen (and would repair one
that is, so a failing test leaves no frozen guest behind).
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyqga.host_client import AgentClient
from pyqga.host_client.errors import AgentClientError
from tests.rig.agent_process import REPO_ROOT
from tests.rig.deb_builder import BUILDER, builder_env
from tests.rig.image import ImageBuildError
from tests.rig.machine import GuestVM
from tests.rig.requirements import require, require_root, require_tool
from tests.rig.systemd_image import Control, ControlError, ensure_systemd_image

pytestmark = pytest.mark.root
UNIT = "pyqga-agent.service"
DEVICE_UNIT = "dev-virtio\\x2dports-org.qemu.guest_agent.0.device"
# TCG, and a Python agent starting in it: tens of seconds on a loaded machine.
SLOW = 240.0


class SystemdGuest:
    """The VM, its control channel and one long-lived client of the packaged agent (a host that
    stays connected also spares the agent waking up to look for one)."""

    def __init__(self, vm: GuestVM) -> None:
        self.vm = vm
        self.control = Control(vm.qga_socket)
        self.client = AgentClient(str(vm.pyqga_socket), timeout=30)

    def sh(self, script: str, timeout: float = 120.0) -> str:
        return self.control.check(["sh", "-c", script], timeout=timeout)

    def show(self, *props: str) -> dict[str, str]:
        """Unit properties; values with backslashes come quoted and escaped: undone here."""
        out = self.control.check(["systemctl", "show", UNIT, *(f"-p{p}" for p in props)])
        pairs = (line.split("=", 1) for line in out.splitlines() if "=" in line)
        return {key: value.strip('"').replace("\\\\", "\\") for key, value in pairs}

    def wait_answering(self, timeout: float = SLOW) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.client.call("guest-ping", timeout=10)
                return
            except (AgentClientError, OSError) as exc:
                if time.monotonic() > deadline:
                    raise AssertionError(f"the packaged agent did not answer in {timeout} s: {exc}\n"
                                         f"{self.journal()}\n{self.vm.diagnostics()}") from exc
                time.sleep(1.0)

    def wait_for(self, what: str, check: object, timeout: float = SLOW) -> None:
        deadline = time.monotonic() + timeout
        while not check():  # type: ignore[operator]
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not within {timeout} s\n{self.journal()}")
            time.sleep(1.0)

    def boot_id(self) -> str:
        """This boot's id, or "" while the guest does not answer (shutting down, booting)."""
        try:
            return self.control.run(["cat", "/proc/sys/kernel/random/boot_id"], timeout=5).out.strip()
        except (ControlError, OSError):
            return ""

    def journal(self) -> str:
        result = self.control.run(["journalctl", "--no-pager", "-u", UNIT, "-o", "short-monotonic"])
        return result.out[-4000:]

    def frozen(self, mountpoint: str) -> bool:
        """Whether the kernel had ``mountpoint`` frozen (thawing it if so)."""
        result = self.control.run(["fsfreeze", "--unfreeze", mountpoint])
        assert result.rc == 0 or "Invalid argument" in result.err, result
        return result.rc == 0


def build_deb(workdir: Path) -> Path:
    subprocess.run([sys.executable, str(REPO_ROOT / "packaging/build_dist.py"), "--no-wheel", "--no-lintian",
                    "--dist", str(workdir)], check=True, capture_output=True, timeout=300,
                   env=builder_env(**BUILDER))
    (deb,) = workdir.glob("pyqga-agent_*_all.deb")
    return deb


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SystemdGuest]:
    require_root()
    for tool in ("qemu-system-x86_64", "mmdebstrap", "dpkg-deb", "mkfs.ext4"):
        require_tool(tool)
    try:
        image = ensure_systemd_image()
    except ImageBuildError as exc:
        require(False, f"cannot build the systemd guest image (network? apt?): {exc}")
        raise
    deb = build_deb(tmp_path_factory.mktemp("deb"))
    # -action reboot=reset after the harness's -no-reboot: a guest reboot stays in this QEMU,
    # and so on this VM's disk overlay, with the package installed.
    vm = GuestVM(tmp_path_factory.mktemp("vm-systemd"), agents=("pyqga-virtio",), image=image,
                 ready_timeout=None, cpus=2, memory_mb=1024, qemu_args=("-action", "reboot=reset"))
    vm.start()
    try:
        machine = SystemdGuest(vm)
        machine.control.wait(SLOW)
        machine.control.check(["sh", "-c", "cat > /root/pyqga-agent.deb"], stdin=deb.read_bytes())
        machine.control.check(["dpkg", "-i", "/root/pyqga-agent.deb"], timeout=SLOW)
        # postinst started it at once, the port being there already.
        machine.wait_answering()
        first_boot = machine.boot_id()
        with contextlib.suppress(ControlError):  # the reply may be lost to the shutdown
            machine.control.run(["systemctl", "--no-block", "reboot"], timeout=20)
        machine.wait_for("the guest rebooted", lambda: machine.boot_id() not in ("", first_boot))
        yield machine
    finally:
        with_client = locals().get("machine")
        if with_client is not None:
            with_client.client.close()
        vm.stop(grace=0)  # the root is snapshot=on: nothing to save


def test_agent_came_up_at_boot_from_its_udev_rule(guest: SystemdGuest) -> None:
    guest.wait_answering()
    props = guest.show("ActiveState", "UnitFileState", "WantedBy", "NRestarts")
    assert props["ActiveState"] == "active"
    # static (no [Install], never enabled): only the device's SYSTEMD_WANTS can have started it.
    assert props["UnitFileState"] == "static"
    # The port's device (systemd names it by its sysfs path; DEVICE_UNIT is an alias) wants it.
    device = props["WantedBy"]
    assert "x2dports-vport" in device and device.endswith(".device"), props
    wants = guest.control.check(["systemctl", "show", device, "-pWants"])
    assert wants.strip() == "Wants=pyqga-agent.service", wants
    port = device.removesuffix(".device").rsplit("-", 1)[-1]
    assert guest.sh(f"cat /sys/class/virtio-ports/{port}/name").strip() == "org.qemu.guest_agent.0"
    assert guest.show("BindsTo")["BindsTo"] == DEVICE_UNIT
    assert props["NRestarts"] == "0"
    info = guest.client.info()
    assert info["version"] and any(c["name"] == "guest-fsfreeze-info" for c in info["supported_commands"])


def test_journal_has_the_agents_lines_with_priorities(guest: SystemdGuest) -> None:
    lines = guest.sh(f"journalctl --no-pager -b -u {UNIT} -o cat _COMM=pyqga-agent")
    assert "pyqga-agent 0.1.0 starting" in lines and "serving virtio-serial" in lines, lines
    # Its own timestamps and pid are gone (the journal has them); the priority is the journal's.
    assert not any(line.startswith(("20", "<")) for line in lines.splitlines()), lines
    info = guest.sh(f"journalctl --no-pager -b -u {UNIT} -o verbose -p info..info _COMM=pyqga-agent")
    assert "PRIORITY=6" in info and "starting" in info


def test_freeze_all_of_root_works_under_the_units_hardening(guest: SystemdGuest) -> None:
    count = guest.client.call("guest-fsfreeze-freeze", {"timeout": 120}, timeout=SLOW)
    try:
        assert count == 2  # / and /data
        info = guest.client.call("guest-fsfreeze-info")
        assert sorted(f["mountpoint"] for f in info["frozen"]) == ["/", "/data"]
    finally:
        assert guest.client.thaw(info["epoch"]) == count
    assert not guest.frozen("/") and not guest.frozen("/data")


def test_sigkill_restarts_the_agent_and_the_guard_thaws(guest: SystemdGuest) -> None:
    before = guest.show("MainPID", "NRestarts")
    freeze = guest.client.freeze(thaw_after=300)
    assert freeze.count == 2
    guest.control.check(["kill", "-KILL", before["MainPID"]])
    guest.wait_for("systemd restarted the agent", lambda: guest.show("NRestarts", "ActiveState") == {
        "NRestarts": str(int(before["NRestarts"]) + 1), "ActiveState": "active"})
    guest.wait_answering()
    info = guest.client.call("guest-fsfreeze-info")
    assert info["status"] == "thawed" and info["last-thaw"]["reason"] == "agent-death", info
    # The guard thawed, before systemd started the next agent: that one found nothing to thaw.
    log = guest.sh(f"journalctl --no-pager -b -u {UNIT} -o cat _COMM=pyqga-agent").splitlines()
    last_start = max(i for i, line in enumerate(log) if "starting" in line)
    assert not [line for line in log[last_start:] if "at start" in line], log[last_start:]
    assert not guest.frozen("/") and not guest.frozen("/data")


def test_systemctl_stop_while_root_is_frozen_thaws_first(guest: SystemdGuest) -> None:
    freeze = guest.client.freeze(thaw_after=300)
    assert freeze.count == 2
    guest.control.check(["systemctl", "stop", UNIT], timeout=SLOW)
    assert guest.show("ActiveState")["ActiveState"] == "inactive"
    assert not guest.frozen("/") and not guest.frozen("/data")
    log = guest.sh(f"journalctl --no-pager -b -u {UNIT} -o cat _COMM=pyqga-agent").splitlines()
    last_start = max(i for i, line in enumerate(log) if "starting" in line)
    tail = log[last_start:]
    thawed = [i for i, line in enumerate(tail) if "thaw" in line.lower()]
    assert thawed and tail[-1] == "stopped" and thawed[0] < len(tail) - 1, tail
    guest.control.check(["systemctl", "start", UNIT])
    guest.wait_answering()


def test_dpkg_remove_while_frozen_leaves_nothing_frozen(guest: SystemdGuest) -> None:
    """/data frozen (dpkg itself writes to /, so / stays thawed): prerm stops the agent, which
    thaws first."""
    freeze = guest.client.freeze(["/data"], thaw_after=300)
    assert freeze.count == 1
    guest.control.check(["dpkg", "-r", "pyqga-agent"], timeout=SLOW)
    assert not guest.frozen("/data") and not guest.frozen("/")
    assert guest.show("LoadState")["LoadState"] == "not-found"
    assert guest.control.run(["pgrep", "-f", "pyqga-agent|agent.keeper"]).rc == 1
    assert {"fsfreeze-hook", "pyqga.conf"} <= set(guest.sh("ls /etc/pyqga").split())  # conffiles stay
