"""A private libvirtd for tests, and the test guest as a libvirt domain.

Why a private instance: a root libvirtd keeps its qemu driver's state in fixed places
(``/etc/libvirt/qemu.conf``, ``/run/libvirt``, ``/var/lib/libvirt``...); ``libvirtd.conf`` can move
its sockets but not those.  Two instances sharing them would fight over ``driver.pid`` and adopt
each other's domains, and a system one would be left configured by us.  So libvirtd runs in a
mount namespace of its own (``unshare --mount``) where those directories are bind mounts of
folders in the test's tmp dir: the config (qemu.conf per REFERENCE.md), state, logs and the
capabilities cache all live there, and nothing outside it changes except the ``libvirt-qemu``
user the qemu driver insists on.  Clients reach it through ``qemu:///system?socket=PATH``.

    with PrivateLibvirt(tmp / "libvirt") as lv:
        domain = LibvirtGuest.create(lv, image, tmp / "guest")
        domain.wait_agent()
        lv.virsh("domfsinfo", domain.name)

On exit, also after a failure: every domain defined here is destroyed and undefined, libvirtd is
stopped by the pid in its pid file (SIGTERM, then SIGKILL), and any QEMU it left running is killed
by the pid libvirt recorded for it.  Nothing is installed here; the Makefile's ``deps`` does that.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.rig import guest_files
from tests.rig.image import GuestImage

_SUN_PATH_MAX = 107
QEMU_USER = "libvirt-qemu"
AGENT_PORT = "org.qemu.guest_agent.0"

# The directories a privileged libvirtd uses that its config cannot move; each is hidden behind a
# private folder inside the namespace.  /etc/libvirt exists once libvirt is installed; the others
# are parents that exist on any Debian system (their libvirt subfolders would not).
_PRIVATE_MOUNTS = ("etc/libvirt", "run", "var/lib", "var/log", "var/cache")

QEMU_CONF = """\
# pyqga tests: REFERENCE.md "Running libvirt here".  Root without a security driver, no cgroups
# (libvirt would otherwise move QEMU into new cgroups of the host's tree), no virtlogd.
user = "root"
group = "root"
security_driver = "none"
cgroup_controllers = [ ]
stdio_handler = "file"
# Never chown or tag (xattrs) image files: the backing image is the shared cached guest image.
dynamic_ownership = 0
remember_owner = 0
"""


class LibvirtError(RuntimeError):
    """libvirtd could not be set up, started or reached; the message ends with its log."""


def table_rows(output: str) -> list[list[str]]:
    """The rows of a virsh table (``domblklist``, ``domfsinfo``): what follows the dashed line."""
    lines = output.splitlines()
    start = next((i + 1 for i, line in enumerate(lines) if line.startswith("---")), 0)
    return [line.split() for line in lines[start:] if line.strip()]


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").replace("\r", "").splitlines()[-lines:])
    except OSError:
        return f"(no {path.name})"


def _pid_alive(pid: int, name: str) -> bool:
    """Whether ``pid`` is still a process called ``name`` (a recycled pid is someone else's)."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip().startswith(name)
    except OSError:
        return False


def _kill_and_wait(pid: int, name: str, grace: float) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds; not our child, so poll /proc to wait."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        if not _pid_alive(pid, name):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and _pid_alive(pid, name):
            time.sleep(0.05)


def ensure_qemu_user() -> None:
    """libvirt's qemu driver looks up its compiled-in user at start and fails without it."""
    if subprocess.run(["getent", "passwd", QEMU_USER], capture_output=True).returncode == 0:
        return
    subprocess.run(["useradd", "-r", "-U", "-M", "-d", "/var/lib/libvirt", "-s", "/usr/sbin/nologin",
                    QEMU_USER], check=True, capture_output=True)


class PrivateLibvirt:
    """A libvirtd of our own (see the module docstring); ``virsh()`` talks to it."""

    def __init__(self, workdir: str | Path, *, connect_timeout: float = 90.0) -> None:
        self.workdir = Path(workdir).resolve()
        self.connect_timeout = connect_timeout
        self.root = self.workdir / "root"          # sources of the namespace's bind mounts
        self.sock_dir = self.workdir / "sock"
        self.socket = self.sock_dir / "libvirt-sock"
        self.conf = self.workdir / "libvirtd.conf"
        self.pidfile = self.workdir / "libvirtd.pid"
        self.log = self.workdir / "libvirtd.log"
        self.uri = f"qemu:///system?socket={self.socket}"
        self.pid: int | None = None
        self.domains: list[str] = []
        self.connect_seconds: float | None = None

    # --- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> PrivateLibvirt:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def start(self) -> None:
        for tool in ("libvirtd", "virsh", "unshare", "mount"):
            if shutil.which(tool) is None:
                raise LibvirtError(f"{tool!r} is not installed (make deps installs libvirt as root)")
        if os.geteuid() != 0:
            raise LibvirtError("a private libvirtd needs root (mount namespace, QEMU as root)")
        if not Path("/etc/libvirt").is_dir():
            raise LibvirtError("/etc/libvirt is missing (is libvirt installed?)")
        self._check_visible(self.workdir)
        if len(os.fsencode(self.sock_dir / "libvirt-admin-sock")) > _SUN_PATH_MAX:
            raise LibvirtError(f"{self.sock_dir} is too long for AF_UNIX socket paths")
        ensure_qemu_user()
        for sub in (*_PRIVATE_MOUNTS, "var/tmp"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.sock_dir.mkdir(parents=True, exist_ok=True)
        (self.root / "etc/libvirt/qemu.conf").write_text(QEMU_CONF)
        self.conf.write_text(
            f'unix_sock_dir = "{self.sock_dir}"\n'
            'auth_unix_rw = "none"\nauth_unix_ro = "none"\n'
            f'log_outputs = "3:file:{self.log}"\n'
        )
        binds = " && ".join(f"mount --bind '{self.root / sub}' '/{sub}'" for sub in _PRIVATE_MOUNTS)
        script = f"{binds} && exec libvirtd -d -f '{self.conf}' -p '{self.pidfile}'"
        # -d: libvirtd forks and the parent exits once the daemon is initialised; stdio goes to a
        # file so no pipe of ours is held open by the daemon.
        with open(self.workdir / "libvirtd.out", "wb") as out:
            command = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script]
            result = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    timeout=60)
        with contextlib.suppress(OSError, ValueError):
            self.pid = int(self.pidfile.read_text().strip())
        if result.returncode != 0 or self.pid is None:
            raise LibvirtError(f"libvirtd did not start (exit {result.returncode})\n{self.diagnostics()}")
        self._wait_connect()

    def _wait_connect(self) -> None:
        """The first connection makes the qemu driver probe QEMU (~8 s); later ones are fast."""
        started = time.monotonic()
        deadline = started + self.connect_timeout
        while True:
            if self.pid is None or not _pid_alive(self.pid, "libvirtd"):
                raise LibvirtError(f"libvirtd died while starting\n{self.diagnostics()}")
            result = self.virsh("version", check=False, timeout=max(1.0, deadline - time.monotonic()))
            if result.returncode == 0:
                self.connect_seconds = time.monotonic() - started
                return
            if time.monotonic() > deadline:
                raise LibvirtError(f"virsh could not connect within {self.connect_timeout} s: "
                                   f"{result.stderr.strip()}\n{self.diagnostics()}")
            time.sleep(0.2)

    def close(self) -> None:
        """Destroy and undefine our domains, stop libvirtd, kill any QEMU it left. Idempotent."""
        if self.pid is not None and _pid_alive(self.pid, "libvirtd"):
            for name in self.domains:
                self.virsh("destroy", name, check=False, timeout=30)
                self.virsh("undefine", name, check=False, timeout=30)
            _kill_and_wait(self.pid, "libvirtd", grace=10.0)
        self.domains.clear()
        # QEMU outlives libvirtd by design; libvirt recorded each one's pid in its state dir.
        for pidfile in (self.root / "run/libvirt/qemu").glob("*.pid"):
            with contextlib.suppress(OSError, ValueError):
                _kill_and_wait(int(pidfile.read_text().strip()), "qemu", grace=0.0)
        self.pid = None

    # --- use -------------------------------------------------------------------------------

    def virsh(self, *args: str, check: bool = True, timeout: float = 60.0
              ) -> subprocess.CompletedProcess[str]:
        """Run virsh against this libvirtd; with ``check``, a failure raises ``LibvirtError``
        carrying libvirt's own message.  Not ``-q``: that also drops the messages tests read
        ("Froze 2 filesystem(s)")."""
        result = subprocess.run(["virsh", "-c", self.uri, *args], stdin=subprocess.DEVNULL,
                                capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise LibvirtError(f"virsh {' '.join(args)} failed (exit {result.returncode}): "
                               f"{result.stderr.strip()}")
        return result

    def define(self, domain_xml: str, path: Path) -> str:
        """Define a persistent domain from ``domain_xml`` (kept in ``path``); return its name.

        Persistent, not transient: after the guest powers itself off the domain stays listed as
        "shut off (shutdown)", which is what a test of ``shutdown --mode agent`` wants to see.
        """
        path.write_text(domain_xml)
        name = ET.fromstring(domain_xml).findtext("name") or ""
        self.domains.append(name)
        self.virsh("define", str(path))
        return name

    def _check_visible(self, path: Path) -> None:
        """A path under one of the hidden directories would not exist for libvirtd and QEMU."""
        resolved = path.resolve()
        for sub in _PRIVATE_MOUNTS:
            if resolved.is_relative_to(Path("/", sub)):
                raise LibvirtError(f"{resolved} is under /{sub}, which the private libvirtd replaces: "
                                   "use a tmp dir and image cache elsewhere (TMPDIR, PYQGA_CACHE)")

    def qemu_log(self, name: str) -> str:
        return _tail(self.root / "var/log/libvirt/qemu" / f"{name}.log")

    def diagnostics(self) -> str:
        return "\n".join([f"--- libvirtd log ({self.log}) ---", _tail(self.log),
                          "--- libvirtd output ---", _tail(self.workdir / "libvirtd.out", 10)])


class LibvirtGuest:
    """The pyqga test guest as a libvirt domain, mirroring ``GuestVM.command()``: direct kernel
    boot with the same kernel command line, root and data disks found by their virtio-blk serials,
    ttyS0 on a unix socket (the console control loop's requests) logged to a file, and a
    virtio-serial channel named ``org.qemu.guest_agent.0`` whose host end libvirt owns.

    Disks are fresh per domain: the root is a qcow2 overlay on the cached image (QEMU opens the
    backing file read-only, so the cache is never written), the data disk a sparse raw copy.
    """

    def __init__(self, lv: PrivateLibvirt, name: str, workdir: Path) -> None:
        self.lv = lv
        self.name = name
        self.workdir = workdir
        self.root_disk = workdir / "root.qcow2"
        self.data_disk = workdir / "data.img"
        self.console_socket = workdir / "console.sock"
        self.console_log = workdir / "console.log"
        self.started_at = 0.0
        self.boot_seconds: float | None = None

    @classmethod
    def create(cls, lv: PrivateLibvirt, image: GuestImage, workdir: Path, *,
               agents: tuple[str, ...] = ("pyqga-virtio",), memory_mb: int = 512,
               kernel_args: tuple[str, ...] = (), vcpus: int = 1,
               suspend_to_mem: bool = False) -> LibvirtGuest:
        """Prepare the disks, define and start the domain (not waiting for the agent).

        ``vcpus`` > 1 lets ``guestvcpus`` take one offline; ``suspend_to_mem`` turns S3 on
        (``<pm><suspend-to-mem enabled='yes'/>``), which ``dompmsuspend --target mem`` needs."""
        workdir = workdir.resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        for path in (workdir, image.kernel, image.root):
            lv._check_visible(path)
        guest = cls(lv, f"pyqga-{random.getrandbits(24):06x}", workdir)
        if len(os.fsencode(guest.console_socket)) > _SUN_PATH_MAX:
            raise LibvirtError(f"{guest.console_socket} is too long for an AF_UNIX socket")
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(image.root),
                        str(guest.root_disk)], check=True, capture_output=True)
        subprocess.run(["cp", "--sparse=always", str(image.data_template), str(guest.data_disk)], check=True)
        cmdline = ["console=ttyS0", "panic=-1", f"pyqga.agents={','.join(agents)}", *kernel_args]
        xml = guest.domain_xml(image, " ".join(cmdline), memory_mb, vcpus, suspend_to_mem)
        lv.define(xml, workdir / "domain.xml")
        guest.started_at = time.monotonic()
        lv.virsh("start", guest.name)
        return guest

    def domain_xml(self, image: GuestImage, cmdline: str, memory_mb: int, vcpus: int = 1,
                   suspend_to_mem: bool = False) -> str:
        dom = ET.Element("domain", type="qemu")  # TCG: KVM is not usable for guests here
        ET.SubElement(dom, "name").text = self.name
        ET.SubElement(dom, "memory", unit="MiB").text = str(memory_mb)
        ET.SubElement(dom, "vcpu").text = str(vcpus)
        os_el = ET.SubElement(dom, "os")
        ET.SubElement(os_el, "type", arch="x86_64", machine="pc").text = "hvm"
        ET.SubElement(os_el, "kernel").text = str(image.kernel)
        ET.SubElement(os_el, "initrd").text = str(image.initrd)
        ET.SubElement(os_el, "cmdline").text = cmdline
        # Without <acpi/> libvirt passes -no-acpi and the guest's poweroff only halts the CPU.
        ET.SubElement(ET.SubElement(dom, "features"), "acpi")
        for event in ("on_poweroff", "on_reboot", "on_crash"):  # on_reboot=destroy: -no-reboot
            ET.SubElement(dom, event).text = "destroy"
        if suspend_to_mem:  # QEMU's PIIX4 has S3 off unless libvirt is told to turn it on
            pm = ET.SubElement(dom, "pm")
            ET.SubElement(pm, "suspend-to-mem", enabled="yes")
            ET.SubElement(pm, "suspend-to-disk", enabled="no")
        devices = ET.SubElement(dom, "devices")
        ET.SubElement(devices, "emulator").text = shutil.which("qemu-system-x86_64") or "qemu-system-x86_64"
        for path, fmt, target, serial in ((self.root_disk, "qcow2", "vda", guest_files.ROOT_SERIAL),
                                          (self.data_disk, "raw", "vdb", guest_files.DATA_SERIAL)):
            disk = ET.SubElement(devices, "disk", type="file", device="disk")
            ET.SubElement(disk, "driver", name="qemu", type=fmt)
            ET.SubElement(disk, "source", file=str(path))
            ET.SubElement(disk, "target", dev=target, bus="virtio")
            ET.SubElement(disk, "serial").text = serial
        ET.SubElement(devices, "controller", type="usb", model="none")
        ET.SubElement(devices, "controller", type="virtio-serial", index="0")
        serial = ET.SubElement(devices, "serial", type="unix")
        ET.SubElement(serial, "source", mode="bind", path=str(self.console_socket))
        ET.SubElement(serial, "log", file=str(self.console_log), append="off")
        ET.SubElement(serial, "target", port="0")
        channel = ET.SubElement(devices, "channel", type="unix")
        ET.SubElement(channel, "target", type="virtio", name=AGENT_PORT)
        ET.SubElement(devices, "memballoon", model="none")
        ET.indent(dom)
        return ET.tostring(dom, encoding="unicode") + "\n"

    def state(self) -> str:
        return self.lv.virsh("domstate", "--reason", self.name, check=False).stdout.strip()

    def wait_agent(self, timeout: float = 90.0) -> float:
        """Poll ``guest-ping`` through libvirt until it answers (libvirt says "QEMU guest agent is
        not connected" until the guest opens its port); return and record seconds since start."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.lv.virsh("qemu-agent-command", "--timeout", "5", self.name,
                                   '{"execute":"guest-ping"}', check=False, timeout=30)
            if result.returncode == 0:
                self.boot_seconds = time.monotonic() - self.started_at
                return self.boot_seconds
            state = self.state()
            if not state.startswith("running") or time.monotonic() > deadline:
                raise LibvirtError(f"the agent did not answer through libvirt ({state}): "
                                   f"{result.stderr.strip()}\n{self.diagnostics()}")
            time.sleep(0.5)

    def agent(self, command: str, arguments: dict[str, Any] | None = None, timeout: int = 30) -> Any:
        """One agent command through ``virsh qemu-agent-command``; its ``return`` value.  A test's
        hands in the guest that work whichever agent serves the domain."""
        request: dict[str, Any] = {"execute": command}
        if arguments is not None:
            request["arguments"] = arguments
        result = self.lv.virsh("qemu-agent-command", "--timeout", str(timeout), self.name,
                               json.dumps(request), timeout=timeout + 30)
        return json.loads(result.stdout)["return"]

    def shell(self, script: str, stdin: bytes = b"", timeout: float = 60.0) -> str:
        """Run ``/bin/sh -c script`` in the guest with guest-exec; its stdout.  A non-zero exit
        raises ``LibvirtError`` with the script's stderr."""
        arguments: dict[str, Any] = {"path": "/bin/sh", "arg": ["-c", script], "capture-output": True}
        if stdin:
            arguments["input-data"] = base64.b64encode(stdin).decode()
        pid = self.agent("guest-exec", arguments)["pid"]
        deadline = time.monotonic() + timeout
        while not (status := self.agent("guest-exec-status", {"pid": pid}))["exited"]:
            if time.monotonic() > deadline:
                raise LibvirtError(f"{script!r} still runs in {self.name} after {timeout} s")
            time.sleep(0.1)
        out, err = (base64.b64decode(status.get(key, "")).decode(errors="replace")
                    for key in ("out-data", "err-data"))
        if status.get("exitcode") != 0:
            raise LibvirtError(f"{script!r} in {self.name} failed ({status}): {err.strip()}")
        return out

    def ensure_running(self, timeout: float = 90.0) -> None:
        """Boot the domain again if a test powered it off: one guest serves every libvirt test
        module (conftest's ``libvirt_guest``), and more than one of them ends with a shutdown."""
        if self.state().startswith("running"):
            return
        self.started_at = time.monotonic()
        self.lv.virsh("start", self.name)
        self.wait_agent(timeout)

    def wait_state(self, prefix: str, timeout: float = 30.0) -> str:
        """Wait until ``domstate --reason`` starts with ``prefix``; return the last state."""
        deadline = time.monotonic() + timeout
        state = self.state()
        while not state.startswith(prefix) and time.monotonic() < deadline:
            time.sleep(0.2)
            state = self.state()
        return state

    def guest_logs(self, timeout: float = 10.0) -> str:
        """The agents' logs and output from the guest's /run, asked for on the console (the same
        request ``GuestVM.guest_logs`` makes), so it works whatever the agent is doing."""
        nonce = f"{random.getrandbits(64):016x}"
        end = f"{guest_files.LOGS_END} {nonce}".encode()
        deadline = time.monotonic() + timeout
        received = b""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(2.0)
                sock.connect(str(self.console_socket))
                sock.sendall(f"\n{guest_files.LOGS_REQUEST} {nonce}\n".encode())
                while end not in received and time.monotonic() < deadline:
                    with contextlib.suppress(TimeoutError):
                        chunk = sock.recv(65536)
                        if not chunk:
                            break
                        received += chunk
        except OSError as exc:
            return f"(no guest logs: {exc})"
        if end not in received:
            return f"(no guest logs within {timeout} s)"
        text = received[: received.index(end)].decode(errors="replace").replace("\r", "")
        start = text.find("--- /run/")
        return text[start:] if start >= 0 else text

    def diagnostics(self) -> str:
        return "\n".join([f"--- console ({self.console_log}) ---", _tail(self.console_log),
                          f"--- qemu log ({self.name}) ---", self.lv.qemu_log(self.name),
                          self.lv.diagnostics()])
