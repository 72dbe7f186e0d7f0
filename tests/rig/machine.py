"""``GuestVM``: boot the test guest under QEMU (TCG), reach its agents, always tear it down.

    with GuestVM(tmp_path, agents=("pyqga-virtio", "qga-virtio")) as vm:   # booted and answering
        with vm.client("qga-virtio") as qga:
            qga.ping()
        with QMPConnection(vm.qmp_socket) as qmp:
            qmp.execute("query-block")

TCG, not KVM: KVM guests die with emulation failures on the machines this runs on.  Each VM gets
its own workdir: the root image is used with ``snapshot=on`` (the cached image is never written),
the data disk is a fresh raw copy (drive id ``data``, so QMP ``blockdev-snapshot-sync`` can target
it and the first snapshot is a plain file), every socket lives in the workdir.

Teardown, also when the body raises: the guest is asked to power off through its console (works
whatever the agents are doing; the guest thaws, syncs and unmounts first), then QMP ``quit``, then
SIGKILL.  QEMU also dies with the process that started it (``PR_SET_PDEATHSIG``, tied to the
starting thread: start and stop a VM on the same thread) and after ``lifetime`` seconds.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import random
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import termios
import threading
import time
import tty
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from pyqga.host_client.client import AgentClient
from pyqga.host_client.qmp import ConnectError, QMPConnection
from tests.rig import guest_files
from tests.rig.image import DATA_SIZE_MB, GuestImage, ensure_image, make_data_disk

QEMU = "qemu-system-x86_64"
KNOWN_AGENTS = tuple(guest_files.AGENT_COMMANDS)
DEFAULT_AGENTS = ("pyqga-virtio", "qga-virtio", "pyqga-serial")
VSOCK_AGENT_PORT = 1024
_SUN_PATH_MAX = 107
_SYNC_RESEND_S = 1.0
MEMORY_SLOTS = 2
DISK_SERIAL_PREFIX = "pyqga-disk"


class VMError(RuntimeError):
    """The VM failed to start, to answer or to stop; the message ends with the console's tail."""


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the thread that started QEMU goes away."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _chardev_path(path: Path) -> str:
    return str(path).replace(",", ",,")  # QEMU option syntax: a literal comma is doubled


class GuestVM:
    """One QEMU guest running the agents named in ``agents`` (see ``guest_files.AGENT_COMMANDS``).

    Attributes after start: ``pyqga_socket`` and ``qga_socket`` (virtio-serial chardev sockets of
    ports ``org.qemu.guest_agent.0``/``.1``), ``serial_pty`` (host end of the guest's ttyS1),
    ``qmp_socket`` (free for tests; the harness has its own monitor), ``console_log``,
    ``data_image`` (or None), ``vsock_cid`` (or None), ``boot_seconds`` (QEMU start to the
    last agent's first reply), ``ready_seconds`` per agent, ``exit_code`` after stop.

    Machine options for the tests of commands that change the guest: ``max_memory_mb`` adds
    :data:`MEMORY_SLOTS` DIMM slots up to that size, for ``pc-dimm`` hotplug over QMP;
    ``s3`` True or False turns the firmware's S3 (suspend to RAM) on or off (None: QEMU's
    default); ``disks`` are raw images attached read-write as further virtio-blk disks, with
    serials ``pyqga-disk0``, ``pyqga-disk1``, ... (drive ids ``disk0``, ..., device ids ``vdisk0``, ...).
    ``ports`` are further virtio-serial ports by name (``/dev/virtio-ports/NAME`` in the guest),
    each with a host end on a chardev socket, :meth:`port_socket`: a channel for a test's own
    program in the guest that no disk or network fault touches.
    """

    def __init__(
        self,
        workdir: str | Path,
        agents: Sequence[str] = DEFAULT_AGENTS,
        *,
        data_disk: bool | Path = True,
        data_size_mb: int = DATA_SIZE_MB,
        memory_mb: int = 512,
        cpus: int = 1,
        max_memory_mb: int | None = None,
        s3: bool | None = None,
        disks: Sequence[Path] = (),
        ports: Sequence[str] = (),
        agent_args: Sequence[str] = (),
        kernel_args: Sequence[str] = (),
        qemu_args: Sequence[str] = (),
        image: GuestImage | None = None,
        ready_timeout: float | None = 90.0,
        lifetime: float = 900.0,
        vsock: bool | None = None,
    ) -> None:
        unknown = [a for a in agents if a not in KNOWN_AGENTS]
        if unknown:
            raise ValueError(f"unknown agents {unknown}; known: {KNOWN_AGENTS}")
        bad = [a for a in agent_args if not a or any(c in a for c in " ,\t\n")]
        if bad:
            raise ValueError(f"agent_args travel on the kernel command line: no spaces or commas: {bad}")
        self.workdir = Path(workdir).resolve()
        self.agents = tuple(agents)
        self.data_disk = data_disk
        self.data_size_mb = data_size_mb
        self.memory_mb = memory_mb
        self.cpus = cpus
        self.max_memory_mb = max_memory_mb
        self.s3 = s3
        self.disks = tuple(Path(d).resolve() for d in disks)
        bad_ports = [p for p in ports if not p or any(c in p for c in " ,/\t\n")]
        if bad_ports:
            raise ValueError(f"port names are QEMU option values and guest file names: {bad_ports}")
        self.ports = tuple(ports)
        self.agent_args = tuple(agent_args)
        self.kernel_args = tuple(kernel_args)
        self.qemu_args = tuple(qemu_args)
        self.image = image
        self.ready_timeout = ready_timeout
        self.lifetime = lifetime
        if vsock is None:
            vsock = os.path.exists("/dev/vhost-vsock")
        self.vsock_cid: int | None = random.randint(1000, 0x7FFFFFFF) if vsock else None

        self._sockdir = self.workdir
        if len(os.fsencode(self.workdir / "qmp-harness.sock")) > _SUN_PATH_MAX:
            self._sockdir = Path(tempfile.mkdtemp(prefix="pyqga-vm-"))  # AF_UNIX path limit
        self.pyqga_socket = self._sockdir / "pyqga.sock"
        self.qga_socket = self._sockdir / "qga.sock"
        self.qmp_socket = self._sockdir / "qmp.sock"
        self.console_socket = self._sockdir / "console.sock"
        self._harness_qmp_socket = self._sockdir / "qmp-harness.sock"
        self.console_log = self.workdir / "console.log"
        self.qemu_log = self.workdir / "qemu.log"
        self.data_image: Path | None = None
        self.serial_pty: str | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self.boot_seconds: float | None = None
        self.ready_seconds: dict[str, float] = {}
        self.exit_code: int | None = None
        self._started_at = 0.0
        self._qmp: QMPConnection | None = None
        self._watchdog: threading.Timer | None = None

    # --- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> GuestVM:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        # After a failure the guest may be wedged: give a clean power-off less time.
        self.stop(grace=3.0 if exc_type is not None else 15.0)

    def start(self) -> GuestVM:
        """Boot; with ``ready_timeout`` set, return once every agent answered."""
        if self.process is not None:
            raise VMError("this VM was already started")
        if self.image is None:
            self.image = ensure_image()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._remove_sockets()
        self._prepare_data_disk()
        command = self.command()
        (self.workdir / "qemu.cmdline").write_text(" ".join(command) + "\n")
        env = dict(os.environ, TMPDIR=str(self.workdir))  # snapshot=on puts its overlay there
        with open(self.qemu_log, "wb") as out:
            self._started_at = time.monotonic()
            self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out,
                                            stderr=subprocess.STDOUT, env=env, cwd=self.workdir,
                                            preexec_fn=_die_with_parent)
        self._watchdog = threading.Timer(self.lifetime, self._expire, args=(self.process,))
        self._watchdog.daemon = True
        self._watchdog.start()
        try:
            self._qmp = self._connect_qmp()
            self.serial_pty = self._find_pty("serial1")
            if self.ready_timeout is not None:
                self.wait_ready(self.ready_timeout)
        except BaseException:
            self.stop(grace=0)
            raise
        return self

    def command(self) -> list[str]:
        """QEMU's argument vector (needs ``self.image``)."""
        if self.image is None:
            raise VMError("no image: call start() or pass image=")
        image = self.image
        cmdline = ["console=ttyS0", "panic=-1", f"pyqga.agents={','.join(self.agents)}"]
        if self.agent_args:
            cmdline.append(f"pyqga.args={','.join(self.agent_args)}")
        cmdline += self.kernel_args

        def server(chardev_id: str, path: Path, extra: str = "") -> list[str]:
            spec = f"socket,id={chardev_id},path={_chardev_path(path)},server=on,wait=off{extra}"
            return ["-chardev", spec]

        memory = str(self.memory_mb)
        if self.max_memory_mb is not None:
            memory += f",slots={MEMORY_SLOTS},maxmem={self.max_memory_mb}M"
        cmd = [
            QEMU, "-name", "pyqga-guest", "-machine", "pc", "-accel", "tcg",
            "-m", memory, "-smp", str(self.cpus),
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-kernel", str(image.kernel), "-initrd", str(image.initrd), "-append", " ".join(cmdline),
            # ttyS0: kernel and init messages to console.log; the host writes requests to the socket.
            *server("console", self.console_socket, f",logfile={_chardev_path(self.console_log)}"),
            "-serial", "chardev:console",
            # ttyS1: a host pty for pyqga's isa-serial channel.
            "-chardev", "pty,id=serial1", "-device", "isa-serial,chardev=serial1,index=1",
            "-device", "virtio-serial-pci,id=vser0",
            *server("agent0", self.pyqga_socket),
            "-device", "virtserialport,bus=vser0.0,chardev=agent0,name=org.qemu.guest_agent.0",
            *server("agent1", self.qga_socket),
            "-device", "virtserialport,bus=vser0.0,chardev=agent1,name=org.qemu.guest_agent.1",
            "-drive", f"file={_chardev_path(image.root)},format=raw,if=none,id=root,snapshot=on",
            "-device", f"virtio-blk-pci,drive=root,serial={guest_files.ROOT_SERIAL}",
        ]  # fmt: skip
        if self.data_image is not None:
            cmd += ["-drive", f"file={_chardev_path(self.data_image)},format=raw,if=none,id=data",
                    "-device", f"virtio-blk-pci,drive=data,serial={guest_files.DATA_SERIAL}"]
        for i, disk in enumerate(self.disks):
            cmd += ["-drive", f"file={_chardev_path(disk)},format=raw,if=none,id=disk{i}",
                    "-device", f"virtio-blk-pci,id=vdisk{i},drive=disk{i},serial={DISK_SERIAL_PREFIX}{i}"]
        for i, name in enumerate(self.ports):
            cmd += [*server(f"port{i}", self.port_socket(name)),
                    "-device", f"virtserialport,bus=vser0.0,chardev=port{i},name={name}"]
        if self.s3 is not None:  # the pc machine's ACPI is PIIX4's
            cmd += ["-global", f"PIIX4_PM.disable_s3={0 if self.s3 else 1}"]
        cmd += [*server("qmp", self.qmp_socket), "-mon", "chardev=qmp,mode=control",
                *server("qmp-harness", self._harness_qmp_socket), "-mon", "chardev=qmp-harness,mode=control"]
        if self.vsock_cid is not None:
            cmd += ["-device", f"vhost-vsock-pci,guest-cid={self.vsock_cid}"]
        return [*cmd, *self.qemu_args]

    def _prepare_data_disk(self) -> None:
        if self.data_disk is False:
            return
        assert self.image is not None
        self.data_image = self.workdir / "data.img"
        self.data_image.unlink(missing_ok=True)
        if self.data_disk is True and self.data_size_mb != DATA_SIZE_MB:
            make_data_disk(self.data_image, self.data_size_mb)
            return
        source = self.image.data_template if self.data_disk is True else Path(self.data_disk)
        subprocess.run(["cp", "--sparse=always", str(source), str(self.data_image)], check=True)
        self.data_image.chmod(0o644)

    def _connect_qmp(self) -> QMPConnection:
        """QEMU creates and listens on the socket while it parses its options: retry until then."""
        deadline = time.monotonic() + 15.0
        while True:
            self._check_alive("while starting")
            if self._harness_qmp_socket.exists():
                try:
                    return QMPConnection(self._harness_qmp_socket, timeout=10.0)
                except ConnectError as exc:
                    if not isinstance(exc.exc, FileNotFoundError | ConnectionRefusedError):
                        raise
            if time.monotonic() > deadline:
                raise VMError(f"QEMU created no QMP socket in 15 s\n{self.diagnostics()}")
            time.sleep(0.02)

    def _find_pty(self, label: str) -> str | None:
        assert self._qmp is not None
        for chardev in self._qmp.execute("query-chardev"):
            if chardev.get("label") == label and chardev.get("filename", "").startswith("pty:"):
                return chardev["filename"].removeprefix("pty:")
        return None

    def stop(self, grace: float = 15.0) -> int | None:
        """Power off (clean within ``grace`` seconds, else QMP quit, else SIGKILL); clean up.

        Idempotent; returns QEMU's exit status.
        """
        proc = self.process
        try:
            if proc is not None and proc.poll() is None:
                if grace > 0:
                    with contextlib.suppress(OSError, VMError):
                        self._request_poweroff(grace)
                if proc.poll() is None and self._qmp is not None:
                    with contextlib.suppress(Exception):
                        self._qmp.execute("quit", timeout=3.0)
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(5.0)
                if proc.poll() is None:
                    proc.kill()
            if proc is not None:
                self.exit_code = proc.wait()
        finally:
            if self._watchdog is not None:
                self._watchdog.cancel()
            if self._qmp is not None:
                self._qmp.close()
                self._qmp = None
            self._remove_sockets()
            if self._sockdir != self.workdir:
                shutil.rmtree(self._sockdir, ignore_errors=True)
        return self.exit_code

    def poweroff(self, timeout: float = 30.0) -> int:
        """Power the guest off cleanly (agents stopped, filesystems thawed, synced, unmounted)
        and wait for QEMU to exit; then :meth:`stop` cleans up.  Returns QEMU's exit status."""
        self._request_poweroff(timeout)
        code = self.stop(grace=0)
        assert code is not None
        return code

    def _request_poweroff(self, timeout: float) -> None:
        """Write the request on the console and drain it until QEMU exits.

        The connection stays open until then: QEMU drops input still queued when the client
        hangs up, and a client that does not read would stall the guest's console output.
        """
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        deadline = time.monotonic() + timeout
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(2.0)
            sock.connect(str(self.console_socket))
            sock.sendall(f"\n{guest_files.POWEROFF_REQUEST}\n".encode())
            sock.settimeout(0.1)
            while proc.poll() is None and time.monotonic() < deadline:
                with contextlib.suppress(TimeoutError):
                    if not sock.recv(65536):
                        break  # QEMU is going away
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.0, deadline - time.monotonic()))
        if proc.poll() is None:
            raise VMError(f"the guest did not power off within {timeout} s\n{self.diagnostics()}")

    @staticmethod
    def _expire(proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.kill()

    def _remove_sockets(self) -> None:
        for path in (self.pyqga_socket, self.qga_socket, self.qmp_socket, self.console_socket,
                     self._harness_qmp_socket, *map(self.port_socket, self.ports)):
            path.unlink(missing_ok=True)

    def port_socket(self, name: str) -> Path:
        """The host end of the extra virtio-serial port ``name`` (a chardev socket QEMU listens on)."""
        return self._sockdir / f"port-{name}.sock"

    def _check_alive(self, doing: str) -> None:
        if self.process is None or self.process.poll() is not None:
            code = None if self.process is None else self.process.returncode
            raise VMError(f"QEMU exited (status {code}) {doing}\n{self.diagnostics()}")

    # --- agents ----------------------------------------------------------------------------

    def agent_address(self, agent: str) -> str:
        """An address ``AgentClient`` understands for ``agent``'s host end."""
        if agent == "pyqga-virtio":
            return str(self.pyqga_socket)
        if agent == "qga-virtio":
            return str(self.qga_socket)
        if agent == "pyqga-serial":
            if self.serial_pty is None:
                raise VMError("no serial pty (is the VM running?)")
            return f"serial:{self.serial_pty}"
        if agent == "pyqga-vsock":
            if self.vsock_cid is None:
                raise VMError("this VM has no vsock device (/dev/vhost-vsock is missing on the host)")
            return f"vsock:{self.vsock_cid}:{VSOCK_AGENT_PORT}"
        raise ValueError(f"unknown agent {agent!r}")

    def client(self, agent: str = "qga-virtio", **kwargs: Any) -> AgentClient:
        """An ``AgentClient`` for ``agent``; qemu-ga only speaks the qga dialect."""
        if agent == "qga-virtio":
            kwargs.setdefault("dialect", "qga")
        return AgentClient(self.agent_address(agent), **kwargs)

    def wait_ready(self, timeout: float = 90.0, agents: Sequence[str] | None = None) -> float:
        """Wait until each agent answers ``guest-sync-delimited``; return and record
        ``boot_seconds`` (QEMU start to the last agent's first reply).

        All agents are probed at once, so ``ready_seconds`` holds each one's own start time.
        """
        deadline = time.monotonic() + timeout
        pending = [a for a in (self.agents if agents is None else agents) if a not in self.ready_seconds]
        probes: dict[str, _Probe] = {}
        try:
            while pending or probes:
                self._check_alive(f"while waiting for {', '.join([*pending, *probes])}")
                if time.monotonic() >= deadline:
                    raise VMError(f"{', '.join([*pending, *probes])} did not answer within {timeout} s\n"
                                  f"{self.diagnostics()}")
                for agent in list(pending):
                    channel = _RawChannel.try_open(self, agent)
                    if channel is not None:
                        probes[agent] = _Probe(channel)
                        pending.remove(agent)
                for probe in probes.values():
                    probe.send_if_due()
                ready = _Probe.wait(list(probes.values()), 0.2 if pending else 0.5)
                for agent, probe in list(probes.items()):
                    if probe in ready and probe.receive():
                        self.ready_seconds[agent] = time.monotonic() - self._started_at
                        probe.channel.close()
                        del probes[agent]
        finally:
            for probe in probes.values():
                probe.channel.close()
        self.boot_seconds = max(self.ready_seconds.values(), default=0.0)
        return self.boot_seconds

    def console_mark(self) -> int:
        """Where the console log ends now: give it to :meth:`wait_rebooted` after a reset."""
        try:
            return self.console_log.stat().st_size
        except FileNotFoundError:
            return 0

    def wait_rebooted(self, mark: int, timeout: float = 90.0, agents: Sequence[str] | None = None) -> float:
        """After a reset (``system_reset``, the same QEMU process): wait until the new boot's init
        has started the agents (its line in the console log after ``mark``), then until each agent
        answers; the seconds that took.  Waiting for the log line first means an agent of the old
        boot, still answering in the instant before the reset lands, is never taken for the new one."""
        started = time.monotonic()
        deadline = started + timeout
        while True:
            self._check_alive("while waiting for the guest to reboot")
            with open(self.console_log, "rb") as log:
                log.seek(mark)
                if guest_files.AGENTS_STARTED.encode() in log.read():
                    break
            if time.monotonic() > deadline:
                raise VMError(f"no new boot within {timeout} s after the reset\n{self.diagnostics()}")
            time.sleep(0.1)
        for agent in self.agents if agents is None else agents:
            self.ready_seconds.pop(agent, None)
        self.wait_ready(max(1.0, deadline - time.monotonic()), agents)
        return time.monotonic() - started

    # --- diagnostics -----------------------------------------------------------------------

    def guest_logs(self, timeout: float = 10.0) -> str:
        """The agents' log files and output (``/run/*.log``, ``/run/*.out``, last 100 lines each),
        fetched over the console, so it works whatever state the agents are in."""
        nonce = f"{random.getrandbits(64):016x}"
        end = f"{guest_files.LOGS_END} {nonce}".encode()
        deadline = time.monotonic() + timeout
        received = b""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(2.0)
            sock.connect(str(self.console_socket))
            sock.sendall(f"\n{guest_files.LOGS_REQUEST} {nonce}\n".encode())
            while end not in received:
                self._check_alive("while fetching the guest's logs")
                if time.monotonic() > deadline:
                    raise VMError(f"the guest sent no logs within {timeout} s\n{self.diagnostics()}")
                sock.settimeout(max(0.01, min(0.5, deadline - time.monotonic())))
                with contextlib.suppress(TimeoutError):
                    received += sock.recv(65536)
        text = received[: received.index(end)].decode(errors="replace").replace("\r", "")
        start = text.find("--- /run/")
        return text[start:] if start >= 0 else text


    def console_tail(self, lines: int = 40) -> str:
        try:
            text = self.console_log.read_text(errors="replace")
        except OSError:
            return "(no console log)"
        return "\n".join(text.replace("\r", "").splitlines()[-lines:])

    def diagnostics(self) -> str:
        parts = [f"--- console ({self.console_log}) ---", self.console_tail()]
        with contextlib.suppress(OSError):
            qemu = self.qemu_log.read_text(errors="replace").strip()
            if qemu:
                parts += ["--- qemu ---", qemu[-2000:]]
        return "\n".join(parts)

    def __repr__(self) -> str:
        state = "running" if self.process is not None and self.process.poll() is None else "stopped"
        return f"<GuestVM {self.workdir} agents={','.join(self.agents)} {state}>"


class _RawChannel:
    """A byte channel to an agent's host end for the readiness probe: a chardev socket, or the
    serial pty put in raw mode (else the pty's echo would send the agent its own replies)."""

    def __init__(self, fd: int, sock: socket.socket | None) -> None:
        self.fd = fd
        self.sock = sock

    @classmethod
    def try_open(cls, vm: GuestVM, agent: str) -> _RawChannel | None:
        """The channel, or None while it cannot be opened yet (a vsock listener appears only
        once the agent runs; QEMU's chardev sockets and pty exist from the start)."""
        if agent == "pyqga-serial":
            if vm.serial_pty is None:
                raise VMError("QEMU reported no pty for the guest's ttyS1")
            fd = os.open(vm.serial_pty, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
            tty.setraw(fd, termios.TCSANOW)
            return cls(fd, None)
        address = vm.agent_address(agent)
        family: int = socket.AF_UNIX
        target: Any = address
        if address.startswith("vsock:"):
            cid, port = address.split(":")[1:]
            family, target = socket.AF_VSOCK, (int(cid), int(port))
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.settimeout(2.0)
            sock.connect(target)
        except OSError:
            sock.close()
            return None
        sock.setblocking(False)
        return cls(sock.fileno(), sock)

    def write(self, data: bytes) -> bool:
        try:
            return os.write(self.fd, data) == len(data)
        except (BlockingIOError, InterruptedError):
            return False  # nobody reads yet (guest port closed, pty buffer full): resend later

    def read(self) -> bytes:
        try:
            return os.read(self.fd, 65536)
        except (BlockingIOError, InterruptedError):
            return b""
        except OSError:
            return b""  # EIO: a pty whose other end is not connected yet

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        else:
            os.close(self.fd)


class _Probe:
    """Send ``0xFF`` + guest-sync-delimited every second until one of them is answered.

    Requests sent before the agent opened its port wait in QEMU and arrive late; each starts
    with 0xFF (the agent drops partial input), and an answer to any of them counts.
    """

    def __init__(self, channel: _RawChannel) -> None:
        self.channel = channel
        self.sent: set[int] = set()
        self.buffer = b""
        self.next_send = 0.0
        self.idle_until = 0.0

    def send_if_due(self) -> None:
        now = time.monotonic()
        if now >= self.next_send:
            sync_id = random.getrandbits(48) + 1
            request = {"execute": "guest-sync-delimited", "arguments": {"id": sync_id}}
            if self.channel.write(b"\xff" + json.dumps(request).encode() + b"\n"):
                self.sent.add(sync_id)
            self.next_send = now + _SYNC_RESEND_S

    def receive(self) -> bool:
        data = self.channel.read()
        if not data:
            # Hang-up or EOF (no agent on the other end yet): stop polling it for a while,
            # or select would report it readable in a busy loop.
            self.idle_until = time.monotonic() + 0.1
            return False
        self.buffer = (self.buffer + data)[-65536:]
        for segment in self.buffer.split(b"\xff"):
            for line in segment.split(b"\n"):
                with contextlib.suppress(ValueError):
                    message = json.loads(line)
                    if isinstance(message, dict) and message.get("return") in self.sent:
                        return True
        return False

    @staticmethod
    def wait(probes: list[_Probe], timeout: float) -> list[_Probe]:
        now = time.monotonic()
        active = [p for p in probes if p.idle_until <= now]
        if not active:
            time.sleep(min(timeout, 0.1))
            return []
        ready, _, _ = select.select([p.channel.fd for p in active], [], [], timeout)
        return [p for p in active if p.channel.fd in ready]


def qemu_available() -> bool:
    return shutil.which(QEMU) is not None


__all__ = ["DEFAULT_AGENTS", "DISK_SERIAL_PREFIX", "KNOWN_AGENTS", "MEMORY_SLOTS", "GuestVM", "VMError",
           "qemu_available"]
