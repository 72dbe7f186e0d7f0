"""The servers a request benchmark measures, and how it reaches them: the real qemu-ga and pyqga
(under the interpreter chosen with ``--python``), the CPUs they and the client are pinned to, and
one persistent raw connection per server. Shared by ``bench/rpc.py`` and ``bench/floor.py``.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.rig.agent_process import PyqgaAgent
from tests.rig.qemu_ga import QemuGa
from tests.rig.sockets import connect_unix

# What the Debian package runs the agent with (packaging/pyqga-agent: #!/usr/bin/python3 -IB).
PACKAGED_PYTHON = "/usr/bin/python3"
DEPENDENCIES = ("jsonrpcserver", "oslash", "serial")  # pure Python: any 3.11+ can import them


@dataclass
class Agent:
    name: str
    socket_path: Path
    pid: int


@contextlib.contextmanager
def running_qemu_ga(workdir: Path) -> Iterator[Agent]:
    with QemuGa(workdir) as peer:
        yield Agent("qemu-ga", peer.socket_path, peer.pid)


@dataclass(frozen=True)
class Interpreter:
    """The Python pyqga runs under here, and the folders its dependencies come from."""

    path: str
    version: str
    module_paths: tuple[str, ...] = ()

    def describe(self) -> str:
        if self.path == PACKAGED_PYTHON:
            return (f"pyqga runs under {self.path} (Python {self.version}), the interpreter its Debian "
                    "package runs it with, its dependencies imported from this checkout's venv")
        return f"pyqga runs under {self.path} (Python {self.version})"


def _version(python: str) -> tuple[int, ...] | None:
    try:
        proc = subprocess.run([python, "-c", "import sys; print(*sys.version_info[:3])"],
                              capture_output=True, text=True, timeout=30)
    except OSError:
        return None
    return tuple(int(part) for part in proc.stdout.split()) if proc.returncode == 0 else None


THIS_PYTHON = Interpreter(sys.executable, platform.python_version())


def pick_interpreter(requested: str | None) -> Interpreter:
    """``requested``, else the packaged interpreter where it is a 3.11+, else this one."""
    candidate = requested or PACKAGED_PYTHON
    version = _version(candidate)
    if version is None or version < (3, 11):
        if requested:
            raise SystemExit(f"bench/rpc.py: --python {requested}: not a Python 3.11 or later")
        return THIS_PYTHON
    if Path(candidate).resolve() == Path(sys.executable).resolve():
        return THIS_PYTHON
    modules = [importlib.import_module(name) for name in DEPENDENCIES]
    paths = tuple(dict.fromkeys(str(Path(module.__file__).parents[1]) for module in modules))
    return Interpreter(candidate, ".".join(map(str, version)), paths)


INTERPRETER = THIS_PYTHON  # set by main() of bench/rpc.py and bench/floor.py


@contextlib.contextmanager
def running_pyqga(workdir: Path) -> Iterator[Agent]:
    with PyqgaAgent(workdir, python=INTERPRETER.path, module_paths=INTERPRETER.module_paths) as agent:
        yield Agent("pyqga", agent.socket_path, agent.pid)


class Connection:
    """One persistent client connection: send a line, read the one-line reply."""

    def __init__(self, path: Path) -> None:
        self.sock = connect_unix(path, timeout=30)
        self.path = path
        self.last = b""

    def close(self) -> None:
        self.sock.close()

    def loop(self, line: bytes, seconds: float | None = None, count: int | None = None) -> tuple[int, float]:
        """(requests, seconds) for ``line`` sent ``count`` times or for ``seconds``."""
        send, recv, clock = self.sock.sendall, self.sock.recv, time.perf_counter
        done = 0
        start = clock()
        deadline = start + seconds if seconds is not None else float("inf")
        limit = count if count is not None else -1
        reply = b""
        while done != limit:
            send(line)
            reply = recv(65536)
            while not reply.endswith(b"\n"):
                chunk = recv(65536)
                if not chunk:
                    raise RuntimeError(f"{self.path}: connection closed after {done} replies")
                reply += chunk
            done += 1
            if clock() >= deadline:
                break
        self.last = reply
        return done, clock() - start


@dataclass(frozen=True)
class Placement:
    """Which CPUs the client and the agents run on during the request runs.

    Left to the scheduler, two identical agents measured side by side differed by up to 23% in
    rate, depending on whether each landed on the client's CPU or the other one (the wake-up of
    a task on another CPU costs more than a switch on the same one); pinned, by 2-4%.  Both
    agents share one CPU and the client has another, as a host talks to a guest's agent.
    """

    client: frozenset[int]
    agents: frozenset[int]

    @classmethod
    def choose(cls) -> Placement | None:
        cpus = sorted(os.sched_getaffinity(0))
        return cls(frozenset(cpus[:1]), frozenset(cpus[1:2])) if len(cpus) >= 2 else None

    def describe(self) -> str:
        return (f"the client runs on CPU {min(self.client)} and every server measured (all its "
                f"threads) on CPU {min(self.agents)}")

    def pin_agent(self, pid: int) -> None:
        # Every thread there is now; threads started later inherit their creator's CPUs.
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(ProcessLookupError):
                os.sched_setaffinity(int(task), self.agents)

    @contextlib.contextmanager
    def pinned_client(self) -> Iterator[None]:
        before = os.sched_getaffinity(0)
        os.sched_setaffinity(0, self.client)
        try:
            yield
        finally:
            os.sched_setaffinity(0, before)


def describe_placement(placement: Placement | None) -> str:
    return placement.describe() if placement else "fewer than 2 CPUs: nothing is pinned"


@contextlib.contextmanager
def pinned(placement: Placement | None, pids: list[int]) -> Iterator[None]:
    """This process on the client's CPU and ``pids`` on the agents' for the block (no-op
    without a placement)."""
    if placement is None:
        yield
        return
    for pid in pids:
        placement.pin_agent(pid)
    with placement.pinned_client():
        yield
