"""The real qemu-ga (Debian's build) as a differential test and benchmark peer.

pyqga claims wire compatibility with qemu-ga, so tests run the same input against both. The Debian
package is never installed (its maintainer scripts would start a system service); it is downloaded
with `apt-get download` and unpacked into a cache folder, together with any shared library the
machine lacks (liburing2 on a stock Debian 12). Callers then run the returned path like any program.

    path = ensure_qemu_ga()                      # raises QemuGaUnavailable if it cannot be had
    with QemuGa(tmp_path) as peer:               # a private instance on a unix socket
        sock = peer.connect()
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from tests.rig.loopfs import LoopMounts
from tests.rig.paths import REPO_ROOT
from tests.rig.requirements import require
from tests.rig.sockets import connect_unix

__all__ = ["IsolatedQemuGa", "QemuGa", "QemuGaUnavailable", "cache_dir", "ensure_qemu_ga"]

PACKAGE = "qemu-guest-agent"
_BINARY_IN_PACKAGE = Path("usr/sbin/qemu-ga")
# Library directories inside the unpacked tree that LD_LIBRARY_PATH must cover.
_LIB_DIRS = ("usr/lib/x86_64-linux-gnu", "lib/x86_64-linux-gnu")
_MAX_DEPENDENCY_ROUNDS = 5
_APT_TIMEOUT = 600.0
_SUN_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) - 1 on Linux

_resolved: Path | None = None
_resolve_lock = threading.Lock()


class QemuGaUnavailable(RuntimeError):
    """The qemu-ga binary could not be obtained or does not run on this machine."""


# --------------------------------------------------------------------------------------------
# Obtaining the binary


def cache_dir() -> Path:
    """`$PYQGA_CACHE/qemu-ga`, else `<repo>/.cache/qemu-ga` (git-ignored)."""
    base = os.environ.get("PYQGA_CACHE")
    return (Path(base) if base else REPO_ROOT / ".cache") / "qemu-ga"


def ensure_qemu_ga() -> Path:
    """Return the path of a runnable `qemu-ga`, downloading it on first use.

    The result may be a small shell wrapper that sets LD_LIBRARY_PATH and `exec`s the real binary
    (so the pid seen by callers is qemu-ga's own). `$PYQGA_QEMU_GA` overrides the lookup. Safe to
    call from parallel processes: the cache is filled under a lock file.
    """
    global _resolved
    with _resolve_lock:
        if _resolved is not None and _resolved.exists():
            return _resolved
        override = os.environ.get("PYQGA_QEMU_GA")
        if override:
            path = Path(override)
            _check_runs(path)
        else:
            path = _ensure_cached(cache_dir())
        _resolved = path
        return path


def _ensure_cached(cache: Path) -> Path:
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise QemuGaUnavailable(f"cannot create the qemu-ga cache folder {cache}: {exc}") from exc
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel callers wait for the first one to finish
        entry = cache / "bin" / "qemu-ga"
        if entry.exists():
            try:
                _check_runs(entry)
                return entry
            except QemuGaUnavailable:
                pass  # stale or half-built cache: build it again
        for stale in ("root", "bin", "debs", *(p.name for p in cache.glob("build-*"))):
            shutil.rmtree(cache / stale, ignore_errors=True)
        _build(cache)
        _check_runs(entry)
        return entry


def _build(cache: Path) -> None:
    """Download and unpack qemu-ga plus missing libraries, then write `bin/qemu-ga`."""
    work = Path(tempfile.mkdtemp(prefix="build-", dir=cache))
    try:
        debs, tree = work / "debs", work / "root"
        debs.mkdir()
        tree.mkdir()
        _download_and_unpack([PACKAGE], debs, tree)
        binary = tree / _BINARY_IN_PACKAGE
        if not binary.is_file():
            raise QemuGaUnavailable(f"{PACKAGE} did not contain {_BINARY_IN_PACKAGE}")

        fetched = {PACKAGE}
        frontier = [PACKAGE]
        for _ in range(_MAX_DEPENDENCY_ROUNDS):
            missing = _missing_libraries(binary, tree)
            if not missing:
                break
            # Only libraries the system lacks, following the dependency chain of what we fetched.
            wanted = [
                dep
                for pkg in frontier
                for dep in _library_dependencies(pkg)
                if dep not in fetched and not _installed(dep)
            ]
            wanted = list(dict.fromkeys(wanted))
            if not wanted:
                break
            _download_and_unpack(wanted, debs, tree)
            fetched.update(wanted)
            frontier = wanted
        missing = _missing_libraries(binary, tree)
        if missing:
            raise QemuGaUnavailable(
                "qemu-ga needs shared libraries that could not be provided: " + ", ".join(missing)
            )

        # Move into place under final names, so the wrapper points at stable paths.
        shutil.move(str(tree), cache / "root")
        shutil.move(str(debs), cache / "debs")
        final_binary = cache / "root" / _BINARY_IN_PACKAGE
        libdirs = _lib_path(cache / "root")
        bindir = cache / "bin"
        bindir.mkdir(exist_ok=True)
        script = "#!/bin/sh\n# Written by tests/rig/qemu_ga.py: run the unpacked Debian qemu-ga.\n"
        if libdirs:
            quoted = shlex.quote(libdirs)
            script += f'LD_LIBRARY_PATH={quoted}"${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}}"\n'
            script += "export LD_LIBRARY_PATH\n"
        script += f'exec {shlex.quote(str(final_binary))} "$@"\n'
        tmp = bindir / f".qemu-ga.{os.getpid()}"
        tmp.write_text(script)
        tmp.chmod(0o755)
        tmp.replace(bindir / "qemu-ga")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _download_and_unpack(packages: Sequence[str], debs: Path, tree: Path) -> None:
    with tempfile.TemporaryDirectory(dir=debs) as tmp:
        _apt_download(packages, Path(tmp))
        files = sorted(Path(tmp).glob("*.deb"))
        if len(files) < len(packages):
            raise QemuGaUnavailable(f"apt-get download produced {files} for {list(packages)}")
        for deb in files:
            _run(["dpkg-deb", "-x", str(deb), str(tree)], what=f"unpacking {deb.name}")
            shutil.move(str(deb), debs / deb.name)


def _apt_download(packages: Sequence[str], where: Path) -> None:
    """`apt-get download`; on failure (typically no package lists yet) update once and retry."""
    cmd = ["apt-get", "download"]
    if os.geteuid() == 0:
        cmd += ["-o", "APT::Sandbox::User=root"]  # else _apt cannot write to our folder
    cmd += list(packages)
    first = _try(cmd, cwd=where)
    if first.returncode == 0:
        return
    update = _try(["apt-get", "update"])
    if update.returncode != 0:
        raise QemuGaUnavailable(
            f"`{' '.join(cmd)}` failed ({_last_lines(first.stderr)}) and `apt-get update` failed "
            f"too ({_last_lines(update.stderr)}); run as root with network access, or set "
            "PYQGA_QEMU_GA to a qemu-ga binary"
        )
    second = _try(cmd, cwd=where)
    if second.returncode != 0:
        raise QemuGaUnavailable(f"`{' '.join(cmd)}` failed: {_last_lines(second.stderr)}")


def _library_dependencies(package: str) -> list[str]:
    """Direct Depends/PreDepends of `package` that are shared-library packages (`lib*`)."""
    proc = _try(["apt-cache", "depends", "--important", package])
    deps = []
    for line in proc.stdout.splitlines():
        key, _, name = line.strip().lstrip("|").partition(": ")
        if key in ("Depends", "PreDepends") and name.startswith("lib"):
            deps.append(name.split(":")[0])
    return deps


def _installed(package: str) -> bool:
    proc = _try(["dpkg-query", "-W", "-f=${db:Status-Status}", package])
    return proc.returncode == 0 and proc.stdout.strip() == "installed"


def _lib_path(tree: Path) -> str:
    return ":".join(str(tree / d) for d in _LIB_DIRS if (tree / d).is_dir())


def _missing_libraries(binary: Path, tree: Path) -> list[str]:
    env = dict(os.environ, LD_LIBRARY_PATH=_lib_path(tree))
    proc = _try(["ldd", str(binary)], env=env)
    if proc.returncode != 0:
        raise QemuGaUnavailable(f"ldd {binary} failed: {_last_lines(proc.stderr or proc.stdout)}")
    return [ln.split()[0] for ln in proc.stdout.splitlines() if "not found" in ln]


def _check_runs(path: Path) -> None:
    proc = _try([str(path), "-V"])
    if proc.returncode != 0 or "QEMU Guest Agent" not in proc.stdout:
        raise QemuGaUnavailable(
            f"{path} -V did not run (exit {proc.returncode}): {_last_lines(proc.stderr or proc.stdout)}"
        )


def _try(
    cmd: list[str], cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=_APT_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return subprocess.CompletedProcess(cmd, 127, "", f"{cmd[0]}: {exc}")


def _run(cmd: list[str], what: str) -> None:
    proc = _try(cmd)
    if proc.returncode != 0:
        raise QemuGaUnavailable(f"{what} failed: {_last_lines(proc.stderr)}")


def _last_lines(text: str, n: int = 3) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return " | ".join(lines[-n:]) or "no output"


# --------------------------------------------------------------------------------------------
# Running an instance


def _die_with_parent() -> None:
    """In the child before exec: get SIGKILL if the test process dies without cleaning up.

    Tied to the thread that started the child, so start and stop a peer on the same thread.
    """
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class QemuGa:
    """A private qemu-ga on `<workdir>/qga.sock`, touching nothing outside `workdir`.

    The config file is pointed (via `$QGA_CONF`, qemu-ga 7.2 has no `-c`) at an empty file in
    `workdir` so `/etc/qemu/qemu-ga.conf` is never read; no `-F`, so no freeze hook runs; state,
    log and pid file live in `workdir`. qemu-ga serves one client at a time: close a connection
    before opening the next. Its JSON parser is not reset between connections.
    """

    def __init__(
        self,
        workdir: Path,
        extra_args: Sequence[str] = (),
        *,
        start_timeout: float = 10.0,
        stop_timeout: float = 3.0,
    ) -> None:
        self.workdir = Path(workdir).resolve()
        self.socket_path = self.workdir / "qga.sock"
        self.statedir = self.workdir / "state"
        self.log_path = self.workdir / "qga.log"
        self.stderr_path = self.workdir / "qga.stderr"
        self.pid_path = self.workdir / "qga.pid"
        self.conf_path = self.workdir / "qga.conf"
        self.extra_args = list(extra_args)
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.binary: Path | None = None
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError("qemu-ga is not running")
        return self.process.pid

    def command(self) -> list[str]:
        """The argument vector used to start qemu-ga (after `ensure_qemu_ga()`)."""
        binary = self.binary or ensure_qemu_ga()
        return [
            str(binary),
            "-m", "unix-listen",
            "-p", str(self.socket_path),
            "-t", str(self.statedir),
            "-l", str(self.log_path),
            "-f", str(self.pid_path),
            *self.extra_args,
        ]  # fmt: skip

    def __enter__(self) -> QemuGa:
        if len(os.fsencode(self.socket_path)) > _SUN_PATH_MAX:
            raise ValueError(f"socket path too long for AF_UNIX (max 107 bytes): {self.socket_path}")
        self.binary = ensure_qemu_ga()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.statedir.mkdir(exist_ok=True)
        self.conf_path.write_text("")
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        env = dict(os.environ, QGA_CONF=str(self.conf_path))
        with open(self.stderr_path, "wb") as err:
            self.process = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                env=env,
                cwd=self.workdir,
                preexec_fn=_die_with_parent,
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _wait_ready(self) -> None:
        """Poll until the socket accepts a connection; fail fast if qemu-ga exits."""
        assert self.process is not None
        deadline = time.monotonic() + self.start_timeout
        while True:
            code = self.process.poll()
            if code is not None:
                raise RuntimeError(f"qemu-ga exited with {code} during start-up\n{self.log_tail()}")
            if self.socket_path.exists():
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                    try:
                        probe.connect(str(self.socket_path))
                        return
                    except OSError:
                        pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"qemu-ga did not accept connections on {self.socket_path} within "
                    f"{self.start_timeout} s\n{self.log_tail()}"
                )
            time.sleep(0.01)

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after `stop_timeout` (qemu-ga ignores SIGTERM while frozen)."""
        proc, self.process = self.process, None
        if proc is None:
            return None
        try:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(self.stop_timeout)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
        finally:
            code = proc.wait()
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()
        return code

    def connect(self, timeout: float = 5.0) -> socket.socket:
        """A new client connection (the caller closes it)."""
        return connect_unix(self.socket_path, timeout)

    def log_tail(self, lines: int = 20) -> str:
        """The end of qemu-ga's log and stderr, for error messages."""
        parts = []
        for path in (self.stderr_path, self.log_path):
            with contextlib.suppress(OSError):
                text = path.read_text(errors="replace").splitlines()[-lines:]
                if text:
                    parts.append(f"--- {path.name} ---\n" + "\n".join(text))
        return "\n".join(parts) or "(no log output)"


class IsolatedQemuGa(QemuGa):
    """qemu-ga in a mount namespace where, besides ``/``, only ``loops``' mounts are freezable.

    qemu-ga has no include filter and its thaw FITHAWs every mount it sees: on a shared machine
    it would thaw, and count, what a concurrent test froze.
    """

    def __init__(self, workdir: Path, loops: LoopMounts, extra_args: Sequence[str] = ()) -> None:
        super().__init__(workdir, extra_args)
        self.loops = loops

    def command(self) -> list[str]:
        inner = super().command()
        return self.loops.isolated(inner, keep=[self.workdir, inner[0], cache_dir()])


def require_qemu_ga() -> Path:
    """The real qemu-ga for a test that needs it as a peer: skipped without it, failed in CI."""
    try:
        return ensure_qemu_ga()
    except QemuGaUnavailable as exc:
        require(False, f"the real qemu-ga is not available: {exc}")
        raise
