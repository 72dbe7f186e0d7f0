"""Hostile load on an agent's unix socket, and pings that measure how the agent copes.

Shared by ``tests/process/test_abuse.py`` (bounded liveness checks) and ``bench/abuse.py`` (figures
against qemu-ga).  The flood runs in a child process (``python -m tests.rig.flood``) so its
threads never compete with the measuring pings for this process's GIL: a slow ping is then the
agent's doing, not ours.

Each flood client connects, sends its pattern in 256 KiB chunks (reading and discarding any
replies, so the agent never waits on us) until it has sent ``CONNECTION_BYTES`` (an endless
line: ``ENDLESS_BYTES``, past the message size limit), closes, and starts again; the
close-flood client sends half a message and closes at once.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import select
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.rig.agent_process import agent_env

CHUNK = 256 << 10
CONNECTION_BYTES = 1 << 20
ENDLESS_BYTES = 4 << 20  # an endless line must cross the agent's 1 MiB message limit
PING = b'{"execute":"guest-ping"}\n'
PING_TIMEOUT = 30.0


def _garbage() -> bytes:
    """Random bytes (seeded): every byte class, brackets and 0xFF included."""
    return random.Random(13).randbytes(CHUNK)


def _repeat(unit: bytes, size: int = CHUNK) -> bytes:
    return (unit * (size // len(unit) + 1))[:size]


ENDLESS_HEAD = b'{"execute":"guest-ping","arguments":{"s":"'

# name -> (first chunk of a connection, every later chunk)
PATTERNS: dict[str, tuple[bytes, bytes]] = {
    "0xFF": (_repeat(b"\xff"), _repeat(b"\xff")),
    "[": (_repeat(b"["), _repeat(b"[")),
    "{}": (_repeat(b"{}"), _repeat(b"{}")),
    "garbage": (_garbage(), _garbage()),
    "deep nesting": (_repeat(b'{"a":['), _repeat(b'{"a":[')),
    "endless line": (ENDLESS_HEAD + _repeat(b"x", CHUNK - len(ENDLESS_HEAD)), _repeat(b"x")),
    "close-flood": (b'{"execute":"guest-ping","argu', b""),
}


def _connect(path: str, timeout: float) -> socket.socket | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        return None
    sock.setblocking(False)
    return sock


def _one_connection(path: str, pattern: str, deadline: float) -> int:
    """One flood connection; the bytes it sent."""
    first, rest = PATTERNS[pattern]
    sock = _connect(path, 1.0)
    if sock is None:
        time.sleep(0.01)  # qemu-ga: one client at a time, the backlog is full
        return 0
    sent = 0
    with sock:
        if not rest:  # close-flood: half a message, gone at once
            with contextlib.suppress(OSError):
                sent = sock.send(first)
            return sent
        view = memoryview(first)
        limit = ENDLESS_BYTES if pattern == "endless line" else CONNECTION_BYTES
        while sent < limit and time.monotonic() < deadline:
            readable, writable, _ = select.select([sock], [sock], [], 0.2)
            try:
                if readable and not sock.recv(1 << 20):
                    break  # the agent closed on us
                if writable:
                    n = sock.send(view)
                    sent += n
                    view = view[n:] if n < len(view) else memoryview(rest)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                break
    return sent


def run_flood(path: str, pattern: str, clients: int, seconds: float) -> dict[str, int]:
    """``clients`` threads flooding ``path`` for ``seconds``; totals of bytes and connections."""
    deadline = time.monotonic() + seconds
    totals = {"bytes": 0, "connections": 0}
    lock = threading.Lock()

    def client() -> None:
        while time.monotonic() < deadline:
            sent = _one_connection(path, pattern, deadline)
            with lock:
                totals["bytes"] += sent
                totals["connections"] += 1

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return totals


class FloodProcess:
    """The flood in a child process; :meth:`wait` returns its totals."""

    def __init__(self, socket_path: Path, pattern: str, clients: int, seconds: float) -> None:
        env = agent_env()
        self.process = subprocess.Popen(
            [sys.executable, "-B", "-m", "tests.rig.flood", str(socket_path), pattern, str(clients),
             str(seconds)],
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env, start_new_session=True,
        )
        self.seconds = seconds

    def wait(self) -> dict[str, int]:
        try:
            out, _ = self.process.communicate(timeout=self.seconds + 30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            out, _ = self.process.communicate()
            raise RuntimeError("the flood process did not finish") from None
        if self.process.returncode != 0:
            raise RuntimeError(f"the flood process failed with status {self.process.returncode}")
        return json.loads(out)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


# --- measuring -------------------------------------------------------------------------------------


def _read_line(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError(f"connection closed after {data!r}")
        data += chunk
    return data


@dataclass
class Latencies:
    """Ping round trips (seconds) and what went wrong."""

    times: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def quantile(self, q: float) -> float:
        if not self.times:
            return float("nan")
        ordered = sorted(self.times)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    @property
    def median(self) -> float:
        return statistics.median(self.times) if self.times else float("nan")

    @property
    def worst(self) -> float:
        return max(self.times, default=float("nan"))

    def summary(self) -> str:
        return (f"{len(self.times)} pings, p50 {self.median * 1e3:.1f} ms, "
                f"p99 {self.quantile(0.99) * 1e3:.1f} ms, max {self.worst * 1e3:.1f} ms, "
                f"{len(self.failures)} failed {self.failures[:3]}")


class Pinger(threading.Thread):
    """Pings every ``interval`` until stopped: on a fresh connection each time, or on one
    connection kept open (``persistent``).  A ping that fails or times out is recorded as such."""

    def __init__(self, socket_path: Path, persistent: bool, interval: float = 0.02,
                 timeout: float = PING_TIMEOUT) -> None:
        super().__init__(daemon=True)
        self.socket_path, self.persistent = socket_path, persistent
        self.interval, self.timeout = interval, timeout
        self.result = Latencies()
        self._stop_event = threading.Event()

    def stop(self) -> Latencies:
        self._stop_event.set()
        self.join(self.timeout + 10)
        return self.result

    def run(self) -> None:
        kept: socket.socket | None = None
        try:
            while not self._stop_event.is_set():
                start = time.perf_counter()
                try:
                    if kept is None or not self.persistent:
                        kept = self._connect(start)
                    kept.sendall(PING)
                    reply = _read_line(kept)
                    if reply != b'{"return": {}}\n':
                        raise ValueError(f"unexpected reply {reply[:200]!r}")
                    self.result.times.append(time.perf_counter() - start)
                except (OSError, ValueError) as exc:
                    self.result.failures.append(f"{type(exc).__name__}: {exc}")
                    if kept is not None:
                        kept.close()
                    kept = None
                finally:
                    if kept is not None and not self.persistent:
                        kept.close()
                        kept = None
                self._stop_event.wait(self.interval)
        finally:
            if kept is not None:
                kept.close()

    def _connect(self, start: float) -> socket.socket:
        """Connect, retrying a full backlog (qemu-ga) within the ping's own timeout."""
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                sock.connect(str(self.socket_path))
                return sock
            except BlockingIOError:
                sock.close()
                if time.perf_counter() - start > self.timeout:
                    raise
                time.sleep(0.002)
            except BaseException:
                sock.close()
                raise


# --- the agent process, from /proc -------------------------------------------------------------------


def status_kib(pid: int, key: str) -> int:
    """A field of /proc/PID/status in KiB (VmRSS, VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(f"{key} not in /proc/{pid}/status")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def thread_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


if __name__ == "__main__":
    socket_arg, pattern_arg, clients_arg, seconds_arg = sys.argv[1:5]
    print(json.dumps(run_flood(socket_arg, pattern_arg, int(clients_arg), float(seconds_arg))))
