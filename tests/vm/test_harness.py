"""The VM harness itself: the guest image builds and caches, a guest boots under TCG with the
agents on their channels, QMP works, and every VM is powered off and cleaned up, also when the
test body raises.

qemu-ga is the reference peer here: it proves the harness (virtio-serial port naming, /data,
shutdown path) independently of pyqga; one test then checks that the init's pyqga command lines
answer on virtio-serial and isa-serial.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyqga.host_client import AgentClient
from pyqga.host_client.qmp import QMPConnection
from tests.rig import image as image_module
from tests.rig.image import GuestImage, ensure_image
from tests.rig.machine import GuestVM

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def vm(guest_image: GuestImage, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GuestVM]:
    """One guest with all three default agents, shared by the read-only checks below."""
    with GuestVM(tmp_path_factory.mktemp("vm"), image=guest_image) as machine:
        yield machine


def _processes_mentioning(text: str) -> list[int]:
    """Pids whose command line contains ``text`` (a VM's workdir is on QEMU's command line)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if text.encode() in cmdline:
            found.append(int(entry.name))
    return found


def _assert_gone(machine: GuestVM) -> None:
    assert machine.process is not None and machine.process.returncode is not None
    assert _processes_mentioning(str(machine.workdir)) == []
    for sock in (machine.pyqga_socket, machine.qga_socket, machine.qmp_socket, machine.console_socket):
        assert not sock.exists(), sock


# --- image -------------------------------------------------------------------------------------


def test_image_builds_and_second_call_is_a_cache_hit(guest_image: GuestImage) -> None:
    for path in (guest_image.kernel, guest_image.initrd, guest_image.root, guest_image.data_template):
        assert path.is_file() and path.stat().st_size > 0, path
    assert guest_image.root.stat().st_mode & 0o222 == 0  # read-only: VMs boot it with snapshot=on
    assert guest_image.python_version.startswith("3.")
    assert {"python3", "qemu-guest-agent", "busybox-static"} <= set(guest_image.packages)

    again = ensure_image()
    assert again.cache_hit   # nothing built: the same layers, found by their keys
    assert again.root == guest_image.root
    # How long it took is shown, not asserted (speed lives in benchmarks): 0.01-0.1 s on a quiet
    # machine, 4.5 s once in CI while other guests' disks were busy.
    print(f"\na warm ensure_image() took {again.seconds:.2f} s")


def test_pyqga_change_rebuilds_only_the_root_layer(
    guest_image: GuestImage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A change in pyqga's sources gives a new root image on the same base layer, quickly."""
    extra = tmp_path / "pyqga_probe_pkg"
    extra.mkdir()
    (extra / "__init__.py").write_text(f"MARK = {time.time_ns()}\n")
    real_sources = image_module._python_sources
    monkeypatch.setattr(image_module, "_python_sources",
                        lambda: [*real_sources(), ("pyqga_probe_pkg", extra)])
    rebuilt = ensure_image()
    try:
        assert not rebuilt.cache_hit
        assert rebuilt.root != guest_image.root
        assert rebuilt.root.parent == guest_image.root.parent  # same base layer
        assert rebuilt.seconds < 20.0, f"the pyqga layer took {rebuilt.seconds:.1f} s"
    finally:
        rebuilt.root.unlink(missing_ok=True)


# --- a running guest ---------------------------------------------------------------------------


def test_qemu_ga_answers_over_virtio_serial(vm: GuestVM) -> None:
    with AgentClient(str(vm.qga_socket), dialect="qga") as qga:
        assert qga.call("guest-ping") == {}
        info = qga.call("guest-info")
    assert info["version"]
    assert "guest-fsfreeze-freeze" in {c["name"] for c in info["supported_commands"]}
    assert vm.boot_seconds is not None and 0 < vm.boot_seconds < 90
    assert set(vm.ready_seconds) == {"pyqga-virtio", "qga-virtio", "pyqga-serial"}


def test_data_disk_is_mounted(vm: GuestVM) -> None:
    with vm.client("qga-virtio") as qga:
        filesystems = {fs["mountpoint"]: fs for fs in qga.call("guest-get-fsinfo")}
    assert filesystems["/data"]["type"] == "ext4"
    assert filesystems["/"]["type"] == "ext4"


def test_qmp_lists_root_and_data_drives(vm: GuestVM) -> None:
    with QMPConnection(vm.qmp_socket) as qmp:
        devices = {block["device"]: block for block in qmp.execute("query-block")}
        status = qmp.execute("query-status")
    assert {"root", "data"} <= set(devices)
    assert devices["data"]["inserted"]["file"] == str(vm.data_image)
    assert status["status"] == "running"


def test_pyqga_answers_on_virtio_serial_and_isa_serial(vm: GuestVM) -> None:
    for agent in ("pyqga-virtio", "pyqga-serial"):
        with vm.client(agent, dialect="qga", timeout=15.0) as client:
            assert client.call("guest-ping") == {}, agent
            assert client.call("guest-sync", id=4242) == 4242, agent
    assert vm.serial_pty is not None and vm.serial_pty.startswith("/dev/pts/")


def test_guest_logs_come_over_the_console(vm: GuestVM) -> None:
    logs = vm.guest_logs()
    assert "--- /run/pyqga.log" in logs
    assert "--- /run/qga-virtio.out" in logs


# --- teardown ----------------------------------------------------------------------------------


def test_exit_powers_off_cleanly_and_leaves_nothing(guest_image: GuestImage, tmp_path: Path) -> None:
    """Even with /data left frozen: the guest thaws, unmounts and powers off by itself."""
    with GuestVM(tmp_path, agents=("qga-virtio",), image=guest_image) as machine, \
            machine.client("qga-virtio") as qga:
        assert qga.call("guest-fsfreeze-freeze-list", mountpoints=["/data"]) == 1
        stopping = time.monotonic()
    assert time.monotonic() - stopping < 10, "the clean power-off fell back to QMP quit or SIGKILL"
    _assert_gone(machine)
    assert machine.exit_code == 0
    console = machine.console_tail(20)
    assert "pyqga-init: thawed /data" in console
    assert "pyqga-init: poweroff now" in console
    # A clean power-off unmounted /data: the copy is consistent without journal replay.
    assert machine.data_image is not None
    fsck = subprocess.run(["e2fsck", "-fn", str(machine.data_image)], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr


def test_vm_is_gone_when_the_body_raises(guest_image: GuestImage, tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="test body failed"), \
            GuestVM(tmp_path, agents=("qga-virtio",), image=guest_image) as machine:
        assert machine.process is not None
        raise RuntimeError("test body failed")
    _assert_gone(machine)
    assert time.monotonic() - started < 60
