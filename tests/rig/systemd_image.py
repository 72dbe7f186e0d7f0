"""A Debian guest with systemd and udev as PID 1, for testing the ``.deb`` as an administrator
would use it (``tests/vm/test_systemd.py``).

The root tree comes from ``mmdebstrap`` (Debian's packages, the host's apt sources), without
pyqga: the test installs the package with ``dpkg -i``.  Kernel and initramfs are the busybox
guest's (:mod:`tests.rig.image`): its initramfs mounts the disk labelled by virtio serial and
switches to ``/sbin/init``, which here is systemd.

A control service of the test's own (``pyqga-test-control``, started by udev when the port
``org.qemu.guest_agent.1`` appears) runs commands for the host, so the test can stop, kill and
remove the agent under test and still look inside.  It speaks JSON lines, one request and one
reply per line, and never writes to the root filesystem (the test freezes it).

Cache: ``<cache>/systemd-KEY/root.ext4``; KEY covers the suite, the package list, mmdebstrap's
options, the files written here and the host's apt lists.  A cold build costs about 1.5-2 minutes
(mmdebstrap, mostly downloading and unpacking ~150 packages), a warm call milliseconds.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

from tests.rig.build_tools import digest, locked, mkfs, run
from tests.rig.image import GuestImage, cache_dir, ensure_image

log = logging.getLogger("pyqga.vm")

SUITE = "bookworm"
# systemd and udev as PID 1 and device manager; the .deb's dependencies, so that dpkg -i works
# offline; python3 also runs the control service.
PACKAGES = ("systemd", "systemd-sysv", "udev", "python3", "python3-serial", "python3-jsonschema",
            "python3-typing-extensions", "util-linux", "procps")
MMDEBSTRAP_OPTIONS = ("--quiet", "--mode=root", "--variant=essential",
                      "--dpkgopt=path-exclude=/usr/share/doc/*", "--dpkgopt=path-exclude=/usr/share/man/*",
                      "--dpkgopt=path-exclude=/usr/share/locale/*")
ROOT_SIZE_MB = 1024
CONTROL_PORT = "org.qemu.guest_agent.1"
PRUNE_AFTER_S = 3600.0
APT_SOURCES = Path("/etc/apt/sources.list.d/debian.sources")

CONTROL_SCRIPT = r"""#!/usr/bin/python3 -IB
# pyqga systemd test guest: run the host's commands, one JSON line each way.  Writes nothing to
# disk: the host freezes / while this runs.
import base64, json, os, subprocess, time
PORT = "/dev/virtio-ports/org.qemu.guest_agent.1"
fd = os.open(PORT, os.O_RDWR)
buf = b""
while True:
    chunk = os.read(fd, 65536)
    if not chunk:          # no host connected: virtio-serial reads return 0
        time.sleep(0.1)
        continue
    buf += chunk
    while b"\n" in buf:
        line, buf = buf.split(b"\n", 1)
        try:
            req = json.loads(line)
        except ValueError:
            continue
        try:
            proc = subprocess.run(req["argv"], input=base64.b64decode(req.get("stdin", "")),
                                  capture_output=True, timeout=req.get("timeout", 60))
            reply = {"id": req["id"], "rc": proc.returncode,
                     "out": proc.stdout.decode(errors="replace"), "err": proc.stderr.decode(errors="replace")}
        except Exception as exc:
            reply = {"id": req.get("id"), "rc": -1, "out": "", "err": repr(exc)}
        data = (json.dumps(reply) + "\n").encode()
        while data:
            data = data[os.write(fd, data):]
"""

CONTROL_UNIT = f"""[Unit]
Description=pyqga test guest: the host's command channel
BindsTo=dev-virtio\\x2dports-{CONTROL_PORT}.device
After=dev-virtio\\x2dports-{CONTROL_PORT}.device

[Service]
ExecStart=/usr/local/sbin/pyqga-test-control
Restart=always
RestartSec=0
"""

CONTROL_UDEV = (f'SUBSYSTEM=="virtio-ports", ATTR{{name}}=="{CONTROL_PORT}", '
                'TAG+="systemd", ENV{SYSTEMD_WANTS}="pyqga-test-control.service"\n')

# path in the tree -> text; None masks a unit (a symlink to /dev/null)
FILES: dict[str, str | None] = {
    "etc/hostname": "pyqga-systemd\n",
    # The initramfs mounts / read-write; the harness's data disk (if any) goes on /data.
    "etc/fstab": "LABEL=pyqga-data /data ext4 defaults,nofail,x-systemd.device-timeout=60s 0 0\n",
    "usr/local/sbin/pyqga-test-control": CONTROL_SCRIPT,
    "etc/systemd/system/pyqga-test-control.service": CONTROL_UNIT,
    "etc/udev/rules.d/60-pyqga-test-control.rules": CONTROL_UDEV,
    # No logins (the harness writes its own requests on the console), no timers, no utmp: each
    # costs seconds of a TCG boot and none matters here.
    **{f"etc/systemd/system/{unit}": None for unit in (
        "serial-getty@.service", "getty@.service", "getty-static.service", "getty.target",
        "systemd-update-utmp.service", "systemd-update-utmp-runlevel.service", "e2scrub_reap.service",
        "e2scrub_all.timer", "fstrim.timer", "dpkg-db-backup.timer", "systemd-tmpfiles-clean.timer",
        "systemd-pstore.service", "systemd-timesyncd.service")},
}


class ControlError(RuntimeError):
    """The guest's control service did not answer; the message says what was asked."""


@dataclass(frozen=True)
class Result:
    rc: int
    out: str
    err: str


def ensure_systemd_image(cache: Path | None = None) -> GuestImage:
    """The busybox guest's kernel and initramfs with a systemd root, built if missing."""
    base = ensure_image(cache)
    cache = cache or cache_dir()
    started = time.monotonic()
    key = digest([SUITE.encode(), " ".join(PACKAGES).encode(), " ".join(MMDEBSTRAP_OPTIONS).encode(),
                  json.dumps(FILES, sort_keys=True).encode(), str(ROOT_SIZE_MB).encode(), *_apt_stamp()])
    layer = cache / f"systemd-{key}"
    root = layer / "root.ext4"
    hit = True
    with locked(cache / ".lock-systemd"):
        if not root.exists():
            hit = False
            _build(layer, root)
        os.utime(root)
        _prune(cache, layer)
    seconds = time.monotonic() - started
    log.info("systemd guest root %s (%s, %.1f s)", root, "cached" if hit else "built", seconds)
    return replace(base, root=root, cache_hit=hit and base.cache_hit, seconds=seconds + base.seconds)


def _prune(cache: Path, current: Path) -> None:
    """Drop other systemd roots nobody used for an hour (a booted VM keeps its file open)."""
    for other in cache.glob("systemd-*"):
        with contextlib.suppress(OSError):
            if other != current and time.time() - (other / "root.ext4").stat().st_mtime > PRUNE_AFTER_S:
                shutil.rmtree(other, ignore_errors=True)


def _apt_stamp() -> list[bytes]:
    lists = sorted(Path("/var/lib/apt/lists").glob("*_Packages*"))
    return [f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}".encode() for p in lists]


def _build(layer: Path, root: Path) -> None:
    started = time.monotonic()
    layer.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".stage-", dir=layer))
    try:
        tree = stage / "tree"
        mirror = [str(APT_SOURCES)] if APT_SOURCES.exists() else []
        run(["mmdebstrap", *MMDEBSTRAP_OPTIONS, f"--include={','.join(PACKAGES)}", SUITE, str(tree),
             *mirror], "mmdebstrap (the systemd guest's root)")
        for relative, text in FILES.items():
            path = tree / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.unlink(missing_ok=True)
            if text is None:
                path.symlink_to("/dev/null")
            else:
                path.write_text(text)
        (tree / "usr/local/sbin/pyqga-test-control").chmod(0o755)
        mkfs(root, ROOT_SIZE_MB, label="pyqga-root", source=tree)
        root.chmod(0o444)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    log.info("systemd guest root built in %.1f s", time.monotonic() - started)


class Control:
    """The host end of ``pyqga-test-control`` (the VM's ``qga_socket``)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._next = 0

    def wait(self, timeout: float) -> None:
        """Until the guest answers (it starts with the port, during boot)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.run(["true"], timeout=2.0)
                return
            except (ControlError, OSError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def run(self, argv: list[str], stdin: bytes = b"", timeout: float = 60.0) -> Result:
        self._next += 1
        request = {"id": self._next, "argv": argv, "stdin": base64.b64encode(stdin).decode(),
                   "timeout": timeout}
        deadline = time.monotonic() + timeout + 5.0
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(2.0)
            sock.connect(str(self.path))
            sock.sendall((json.dumps(request) + "\n").encode())
            received = b""
            while True:
                for line in received.split(b"\n")[:-1]:
                    with contextlib.suppress(ValueError):
                        reply = json.loads(line)
                        if reply.get("id") == self._next:
                            return Result(reply["rc"], reply["out"], reply["err"])
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ControlError(f"no reply to {argv} within {timeout} s")
                sock.settimeout(min(remaining, 1.0))
                with contextlib.suppress(TimeoutError):
                    chunk = sock.recv(65536)
                    if not chunk:
                        raise ControlError(f"the control channel closed while running {argv}")
                    received += chunk

    def check(self, argv: list[str], stdin: bytes = b"", timeout: float = 60.0) -> str:
        result = self.run(argv, stdin, timeout)
        if result.rc != 0:
            raise ControlError(f"{argv} exited {result.rc}: {result.err.strip() or result.out.strip()}")
        return result.out
