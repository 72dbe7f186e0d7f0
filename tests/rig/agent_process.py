"""A real agent process on a unix socket, for tests and benchmarks.

:class:`ListeningProcess` is the shared part (start, wait until the socket accepts, stop and
reap even when the body raises); :class:`PyqgaAgent` runs ours with its state in a private
folder.  The real qemu-ga peer lives in ``tests/rig/qemu_ga.py``.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType

from tests.rig.paths import REPO_ROOT
from tests.rig.requirements import require_root
from tests.rig.sockets import connect_unix

START_TIMEOUT = 15.0


class ProcessFailed(RuntimeError):
    """The process died or never listened; the message carries the tail of its log."""


class ListeningProcess:
    """Runs ``command`` and waits until ``socket_path`` accepts a connection."""

    def __init__(self, command: Sequence[str], socket_path: Path, log_path: Path,
                 env: dict[str, str] | None = None) -> None:
        self.command = list(command)
        self.socket_path = socket_path
        self.log_path = log_path
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    @property
    def pid(self) -> int:
        assert self.process is not None, "not started"
        return self.process.pid

    def start(self) -> None:
        self.start_nowait()
        self.wait_ready()

    def start_nowait(self) -> None:
        """Start the process; :meth:`wait_ready` waits for its socket (many can start at once)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.started_at = time.perf_counter()
            self.process = subprocess.Popen(
                self.command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=self.env,
                start_new_session=True,
            )

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise ProcessFailed(
                    f"{self.command[0]} exited with {self.process.returncode}: {self.log_tail()}"
                )
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                    probe.connect(str(self.socket_path))
                return
            except OSError:
                time.sleep(0.005)
        self.stop()
        raise ProcessFailed(f"{self.command[0]} did not listen within {timeout} s: {self.log_tail()}")

    def log_tail(self, lines: int = 8) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return " | ".join(text.strip().splitlines()[-lines:]) or "(empty log)"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 5.0) -> int | None:
        """Signal, wait, then SIGKILL; returns the exit status (None if it never started)."""
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            try:
                process.send_signal(sig)
                return process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
        return process.wait()

    def connect(self, timeout: float = 5.0) -> socket.socket:
        return connect_unix(self.socket_path, timeout)

    def rss_kib(self) -> int:
        """Resident memory of the process now, from /proc (VmRSS)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise ProcessFailed("VmRSS not found")

    def __enter__(self) -> ListeningProcess:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def agent_command(workdir: Path, extra_args: Sequence[str] = (),
                  python_args: Sequence[str] = (), python: str = sys.executable) -> list[str]:
    """``pyqga-agent`` on a unix socket with every file it writes inside ``workdir`` (the state
    directory through a symlink to tmpfs, see :func:`tmpfs_statedir`)."""
    workdir.mkdir(parents=True, exist_ok=True)
    tmpfs_statedir(workdir / "state")
    return [
        python, "-B", *python_args, "-m", "pyqga.agent",
        "-m", "unix-listen", "-p", str(workdir / "agent.sock"),
        "-t", str(workdir / "state"), "-c", os.devnull, *extra_args,
    ]


def tmpfs_statedir(link: Path) -> None:
    """Make ``link`` a symlink to a private directory on /dev/shm (removed at exit): the agent
    refuses a state directory on a filesystem it may freeze, and the tests' folders are on /."""
    if link.exists() or link.is_symlink():
        return
    target = tempfile.mkdtemp(prefix="pyqga-test-state-", dir="/dev/shm")
    atexit.register(shutil.rmtree, target, True)
    link.symlink_to(target)


def agent_env(module_paths: Sequence[str] = ()) -> dict[str, str]:
    """The environment an agent from this checkout runs in: the repository (and, for another
    interpreter than this one, the folders of its dependencies) on its module path."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), *module_paths]))


class PyqgaAgent(ListeningProcess):
    def __init__(self, workdir: Path, extra_args: Sequence[str] = (),
                 python_args: Sequence[str] = (), python: str = sys.executable,
                 module_paths: Sequence[str] = ()) -> None:
        super().__init__(agent_command(workdir, extra_args, python_args, python), workdir / "agent.sock",
                         workdir / "agent.log", agent_env(module_paths))
        self.statedir = workdir / "state"

    def __enter__(self) -> PyqgaAgent:
        self.start()
        return self


def process_state(pid: int) -> str:
    """The state letter in /proc/PID/stat (T: stopped)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def keeper_of(agent_pid: int) -> int | None:
    """The pid of the keeper the agent ``agent_pid`` started (its child), or None."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(stat[1]) == agent_pid and b"pyqga.agent.keeper" in (entry / "cmdline").read_bytes():
                    return int(entry.name)
    return None


def cpu_ticks(pid: int) -> int:
    """User + system CPU time of a whole process (all threads) so far, in clock ticks."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def started_keeper(agent_pid: int, timeout: float = 30.0, quiet: float = 0.2) -> int:
    """The pid of the keeper the agent ``agent_pid`` started, once it has finished starting: it
    sleeps and used no CPU time for ``quiet`` seconds (its imports are done and it waits on its
    pipe).  The agent starts it in the background when it starts serving."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        keeper = keeper_of(agent_pid)
        if keeper is not None:
            with contextlib.suppress(OSError, IndexError):
                before = cpu_ticks(keeper)
                time.sleep(quiet)
                if cpu_ticks(keeper) == before and process_state(keeper) == "S":
                    return keeper
        else:
            time.sleep(0.01)
    raise ProcessFailed(f"agent {agent_pid}: no keeper at rest within {timeout} s")


def shared_objects(pid: int) -> set[str]:
    """The shared objects (``.so`` files: libraries, extension modules) mapped in process ``pid``."""
    paths = set()
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        path = line.split(maxsplit=5)[5:]
        if path and ".so" in os.path.basename(path[0]):
            paths.add(path[0])
    return paths


def ssl_objects(pid: int) -> list[str]:
    """The TLS shared objects mapped in ``pid``: the ``_ssl`` extension module and OpenSSL's libssl
    (libcrypto alone is hashlib's, not TLS)."""
    return sorted(p for p in shared_objects(pid) if os.path.basename(p).startswith(("_ssl.", "libssl.")))


@contextlib.contextmanager
def fault_agent(workdir: Path) -> Iterator[PyqgaAgent]:
    """A running agent with ``--enable-faults`` (root: its faults pause and signal processes)."""
    require_root()
    with PyqgaAgent(workdir, ["--enable-faults"]) as running:
        yield running


@contextlib.contextmanager
def own_processes(argv: Sequence[str], count: int) -> Iterator[list[subprocess.Popen[bytes]]]:
    """``count`` processes of ``argv`` that this test starts: the only ones a fault test may
    pause or kill.  At the end each is continued (a test may leave one paused), killed and
    reaped."""
    started = [subprocess.Popen(list(argv)) for _ in range(count)]
    try:
        yield started
    finally:
        for process in started:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGCONT)
            process.kill()
            process.wait()
