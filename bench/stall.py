"""How long applications stall during a freeze: pyqga against the real qemu-ga and a floor.

    sudo python -m bench.stall [--rounds 5] [--size-mb 200] [--no-write]

Run as root from the repository root. Four loop-mounted ext4 images are made (four times
``--size-mb``, see IMAGE_FACTOR; on tmpfs and fully allocated when there is room, so the flush
measures the agents and not the shared disk). A probe process per filesystem appends a small
record every 1 ms (plain ``write``, no fsync: a write on a frozen filesystem blocks until the
thaw) and times every write with ``time.monotonic``. Right before each freeze every probe writes
``--size-mb`` of fresh data to its filesystem without syncing it (the kernel's dirty limits are
checked first, and raised for the run only if they would flush that data early; ``Dirty`` in
/proc/meminfo is recorded before each freeze). Then one agent gets
``guest-fsfreeze-freeze-list`` of the four mount points and, as soon as it answers,
``guest-fsfreeze-thaw``. Per freeze: the freeze latency (request to reply) and the worst stall,
the longest probe write overlapping the window from the freeze request to the thaw reply.

The third contender is the floor, ``bench/stall_floor.py``: a minimal freezer, FIFREEZE on the
four filesystems at once (a thread each), then, when all are frozen, FITHAW on them at once;
nothing else (no state, no reply to build, no pre-flush, no round trip before the thaw). It runs
as a process of its own, started once like the agents, and a freeze is a ``freeze`` line on its
stdin: the freeze latency runs to its ``frozen`` line, the window to its ``thawed`` line. It
freezes in the same rounds as the agents, after the same data, measured by the same probes.

The three take turns within each round (the order changes every round), ``--rounds`` freezes
each. Not counted: a first freeze without data and WARMUP freezes with data each before the
rounds (fresh images are slower at first). After them, IDLE_FREEZES freezes each without data,
each after 1 s idle: what a freeze of four clean filesystems costs, where pyqga is held to
CLEAN_FLOOR_TARGET times the floor's worst stall. Those stalls come in steps of one RCU grace
period (~8 ms here): each FIFREEZE waits for three, and the four share them or one falls a grace
period behind, by chance (checked by hand: kicking off a grace period right before the four
FIFREEZEs, so that all four wait for the next one together, made their stalls equal in most
freezes). A median of them jumps a whole step between runs, so the floor's table compares
interquartile means.

A second set of freezes measures ``guest-ping`` while a freeze is in progress: a second
connection sends a ping every 5 ms from the freeze request on, and the freeze connection itself
sends a ping right behind the freeze request. qemu-ga serves one client at a time, so its second
connection is not served until the first one closes: that is reported as measured.

Both agents are driven by the same raw-socket client (qga dialect, one JSON request per line,
replies matched by ``id``). Safety: only ``guest-fsfreeze-freeze-list`` naming this run's own
loop mounts is ever sent, never a freeze-all; pyqga runs with ``--freeze-include`` limited to
them, qemu-ga in a private mount namespace in which only ``/`` and those mounts are freezable
(its thaw FITHAWs every mount it sees); the floor is given those four mount points, refuses
anything else and thaws in a ``finally``. The main process never writes to those filesystems.
Everything made here is thawed, stopped, unmounted and removed on exit, also on Ctrl-C or
SIGTERM. Results go to the "stall" section of BENCHMARKS.md unless ``--no-write``.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import itertools
import json
import os
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT_ONLY = ("bench/stall.py must run as root: it makes loop devices, mounts them and freezes them "
             "(try: sudo python -m bench.stall)")
if __name__ == "__main__" and os.geteuid() != 0:
    sys.exit(ROOT_ONLY)  # before importing the test helpers, which need more than a plain user has

from bench.report import (  # noqa: E402
    BENCHMARKS_MD,
    load_average,
    machine_line,
    qemu_ga_problem,
    unwind_on_sigterm,
    verdict,
    write_section,
)
from bench.stall_floor import MinimalFreezer  # noqa: E402
from bench.stall_load import DirtyLimits, Probe, fill_all, longest_writes, mark_all, meminfo_kib  # noqa: E402
from tests.rig.agent_process import PyqgaAgent  # noqa: E402
from tests.rig.loopfs import LoopMounts, thaw_fully  # noqa: E402
from tests.rig.paths import REPO_ROOT  # noqa: E402
from tests.rig.qemu_ga import IsolatedQemuGa, ensure_qemu_ga  # noqa: E402
from tests.rig.sockets import connect_unix  # noqa: E402

FILESYSTEMS = 4
WARMUP = 2  # freezes with data per agent before the counted rounds
IDLE_FREEZES = 12  # freezes without data each, after 1 s idle: every order of the three twice
PING_PERIOD = 0.005
CALL_TIMEOUT = 30.0  # a freeze that takes longer is a failure; cleanup thaws
# ext4 starts writing delayed-allocation data back on its own once free space falls below about
# twice the dirty data (ext4_nonda_switch): measured here, a 400 MB image kept only 17 of 200 MB
# dirty, a 700 MB or larger one all of it. So images are 4x the data.
IMAGE_FACTOR = 4
STALL_RATIO_TARGET = 0.4  # pyqga's median worst stall <= 0.4 x qemu-ga's
CLEAN_FLOOR_TARGET = 1.1  # without dirty data, pyqga's worst stall <= 1.1 x the floor's (middle_mean)
SECTION = "stall"  # our section of BENCHMARKS.md (bench/report.py)
AGENTS = ("qemu-ga", "pyqga")
FLOOR = "floor"  # the minimal freezer, bench/stall_floor.py
CONTENDERS = (*AGENTS, FLOOR)


# --- small helpers ------------------------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def turns(i: int, who: Sequence[str]) -> tuple[str, ...]:
    """The order of round ``i``: every order of ``who`` in turn (for two, swapped every round)."""
    orders = list(itertools.permutations(who))
    return orders[i % len(orders)]


class AgentReplyError(RuntimeError):
    pass


class QgaClient:
    """The raw-socket client both agents get: qga dialect, one request per line, replies by id."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""
        self.next_id = 0
        self.replies: dict[int, tuple[float, dict[str, Any]]] = {}

    @classmethod
    def open(cls, path: Path, timeout: float = CALL_TIMEOUT) -> QgaClient:
        return cls(connect_unix(path, timeout))

    def close(self) -> None:
        self.sock.close()

    def send(self, command: str, arguments: dict[str, Any] | None = None) -> tuple[int, float]:
        """Send one request; return its id and the time just before it went out."""
        self.next_id += 1
        message: dict[str, Any] = {"execute": command, "id": self.next_id}
        if arguments is not None:
            message["arguments"] = arguments
        data = json.dumps(message).encode() + b"\n"
        sent_at = time.monotonic()
        self.sock.sendall(data)
        return self.next_id, sent_at

    def wait(self, request_id: int) -> tuple[float, Any]:
        """(arrival time, return value) of the reply to ``request_id``; errors raise."""
        while request_id not in self.replies:
            while b"\n" not in self.buffer:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError("the agent closed the connection")
                self.buffer += chunk
            arrived = time.monotonic()
            while b"\n" in self.buffer:
                line, _, self.buffer = self.buffer.partition(b"\n")
                line = line.lstrip(b"\xff").strip()
                if line:
                    reply = json.loads(line)
                    self.replies[reply.get("id")] = (arrived, reply)
        arrived, reply = self.replies.pop(request_id)
        if "error" in reply:
            raise AgentReplyError(f"{reply['error'].get('class')}: {reply['error'].get('desc')}")
        return arrived, reply.get("return")

    def call(self, command: str, arguments: dict[str, Any] | None = None) -> tuple[Any, float, float]:
        """(return value, sent at, reply arrived at)."""
        request_id, sent_at = self.send(command, arguments)
        arrived, value = self.wait(request_id)
        return value, sent_at, arrived


# --- agents -------------------------------------------------------------------------------------


@dataclass
class FreezeResult:
    latency: float  # freeze request sent -> reply
    window: float  # freeze request sent -> thaw reply
    stalls: list[float]  # longest write per filesystem, in mount order
    dirty_kib: int  # /proc/meminfo Dirty right before the freeze
    fill: float
    writes: int

    @property
    def worst(self) -> float:
        return max(self.stalls)


@dataclass
class PingResult:
    latency: float  # of the freeze
    pings: list[tuple[float, float | None]] = field(default_factory=list)  # (sent - t0, latency)
    connect_attempted: float = 0.0  # second connection, relative to the freeze request
    connected: float | None = None
    first_reply: float | None = None  # second connection, relative to the freeze request
    same_connection: float | None = None  # ping right behind the freeze request: its latency
    same_before_freeze_reply: bool = False
    closed: float = 0.0  # the freeze connection closed (after the thaw), relative to the request


class Bench:
    def __init__(self, loops: LoopMounts, probes: Sequence[Probe], sockets: dict[str, Path],
                 floor: MinimalFreezer, size: int) -> None:
        self.loops = loops
        self.probes = probes
        self.sockets = sockets
        self.floor = floor
        self.size = size
        self.mountpoints = [str(fs.mountpoint) for fs in loops.filesystems]
        self.pids: dict[str, int] = {}
        base = str(loops.base) + "/"
        assert len(self.mountpoints) == FILESYSTEMS and all(p.startswith(base) for p in self.mountpoints)

    def prepare(self, dirty: bool = True) -> tuple[float, int]:
        fill = fill_all(self.probes, self.size) if dirty else 0.0
        mark_all(self.probes)
        return fill, meminfo_kib("Dirty")["Dirty"]

    def freeze_list(self, client: QgaClient) -> tuple[int, float]:
        """Send the freeze-list of this run's own mounts (the only freeze this bench sends)."""
        return client.send("guest-fsfreeze-freeze-list", {"mountpoints": list(self.mountpoints)})

    def check_thawed(self, agent: str) -> None:
        left = [p for p in self.mountpoints if thaw_fully(p)]
        if left:
            raise RuntimeError(f"{agent} left {left} frozen after its thaw")

    def freeze_once(self, agent: str, dirty: bool = True, pause: float = 0.0) -> FreezeResult:
        """One measured freeze and thaw by an agent or the floor; ``pause``: seconds to wait
        after writing the data."""
        fill, dirty_kib = self.prepare(dirty)
        time.sleep(pause)
        if agent == FLOOR:
            start, frozen_at, thawed_at = self.floor.freeze(CALL_TIMEOUT)
        else:
            start, frozen_at, thawed_at = self.agent_freeze(agent)
        self.check_thawed(agent)
        stalls, writes = longest_writes(self.probes, start, thawed_at)
        return FreezeResult(frozen_at - start, thawed_at - start, stalls, dirty_kib, fill, writes)

    def agent_freeze(self, agent: str) -> tuple[float, float, float]:
        """freeze-list, then the thaw as soon as it answers: (request sent, frozen, thawed)."""
        client = QgaClient.open(self.sockets[agent])
        try:
            request, start = self.freeze_list(client)
            frozen_at, count = client.wait(request)
            _, _, thawed_at = client.call("guest-fsfreeze-thaw")
        finally:
            client.close()
        if count != FILESYSTEMS:
            raise RuntimeError(f"{agent} froze {count} filesystems, expected {FILESYSTEMS}")
        return start, frozen_at, thawed_at

    def freeze_with_pings(self, agent: str) -> PingResult:
        self.prepare()
        go, stop = threading.Event(), threading.Event()
        state: dict[str, Any] = {"pings": []}
        pinger = threading.Thread(target=self._pinger, args=(self.sockets[agent], go, stop, state),
                                  name="pinger", daemon=True)
        client = QgaClient.open(self.sockets[agent])
        try:
            pinger.start()
            time.sleep(0.02)  # let the pinger connect first where the agent allows it
            go.set()
            freeze_id, start = self.freeze_list(client)
            ping_id, ping_sent = client.send("guest-ping")
            state["t0"] = start
            frozen_at, count = client.wait(freeze_id)
            stop.set()
            ping_arrived, _ = client.wait(ping_id)
            client.call("guest-fsfreeze-thaw")
        finally:
            stop.set()
            client.close()  # qemu-ga serves the second connection only from here on
            closed_at = time.monotonic()
            pinger.join(CALL_TIMEOUT)
        if count != FILESYSTEMS:
            raise RuntimeError(f"{agent} froze {count} filesystems, expected {FILESYSTEMS}")
        self.check_thawed(agent)
        if "error" in state:
            raise RuntimeError(f"pinger on {agent}: {state['error']}")
        result = PingResult(latency=frozen_at - start,
                            same_connection=ping_arrived - ping_sent,
                            same_before_freeze_reply=ping_arrived < frozen_at, closed=closed_at - start)
        result.pings = [(sent - start, took) for sent, took in state["pings"]]
        result.connect_attempted = state["attempt"] - start
        result.connected = None if state.get("connected") is None else state["connected"] - start
        replies = [sent + took for sent, took in state["pings"] if took is not None]
        result.first_reply = min(replies) - start if replies else None
        return result

    @staticmethod
    def _pinger(path: Path, go: threading.Event, stop: threading.Event, state: dict[str, Any]) -> None:
        """A second connection: connect (EAGAIN retried), then from ``go`` on a ping every 5 ms,
        each waiting for its reply, until ``stop``."""
        try:
            state["attempt"] = time.monotonic()
            client = QgaClient(connect_unix(path, CALL_TIMEOUT))
            state["connected"] = time.monotonic()
            try:
                go.wait(CALL_TIMEOUT)
                while not stop.is_set():
                    request, sent = client.send("guest-ping")
                    state["pings"].append((sent, None))
                    arrived, _ = client.wait(request)
                    state["pings"][-1] = (sent, arrived - sent)
                    time.sleep(max(0.0, sent + PING_PERIOD - time.monotonic()))
            finally:
                client.close()
        except Exception as exc:  # reported by the main thread
            state["error"] = repr(exc)


# --- report -------------------------------------------------------------------------------------


def medians(runs: Sequence[FreezeResult]) -> tuple[float, float]:
    """(median freeze latency, median worst stall)."""
    return statistics.median(r.latency for r in runs), statistics.median(r.worst for r in runs)


def middle_mean(values: Sequence[float]) -> float:
    """The interquartile mean: the mean of the middle half (a quarter dropped at each end)."""
    cut = len(values) // 4
    return statistics.fmean(sorted(values)[cut:len(values) - cut])


def floor_row(stalls: dict[str, float]) -> str:
    """Table cells: the floor's, pyqga's and qemu-ga's stall, then theirs over the floor's."""
    return " | ".join([*(ms(stalls[who]) for who in (FLOOR, *AGENTS[::-1])),
                       *(f"{stalls[who] / stalls[FLOOR]:.2f}x" for who in AGENTS[::-1])])


def per_fs(runs: Sequence[FreezeResult]) -> str:
    """Median stall of each filesystem, in mount order."""
    return ", ".join(ms(statistics.median(c)) for c in zip(*(r.stalls for r in runs), strict=True))


def build_report(results: dict[str, list[FreezeResult]], pings: dict[str, list[PingResult]],
                 extra: dict[str, dict[str, Any]], args: argparse.Namespace, setup: str,
                 limits: str, loads: Sequence[str]) -> str:
    lat, med = {}, {}
    for who in CONTENDERS:
        lat[who], med[who] = medians(results[who])
    clean = {who: middle_mean([r.worst for r in extra["idle"][who]]) for who in CONTENDERS}
    loaded = {who: middle_mean([r.worst for r in results[who]]) for who in CONTENDERS}
    stall_ratio = med["pyqga"] / med["qemu-ga"]
    latency_ratio = lat["pyqga"] / lat["qemu-ga"]
    clean_ratio = clean["pyqga"] / clean[FLOOR]
    lines = [
        machine_line(ensure_qemu_ga()),
        "",
        f"{setup} {args.rounds} freezes each by qemu-ga, pyqga and the floor (a minimal freezer, "
        "below), taking turns (the order changes every round); each after "
        f"{args.size_mb} MB of fresh unsynced data per filesystem ({FILESYSTEMS * args.size_mb} MB "
        "in all). Worst stall: the longest probe write (1 write/ms per filesystem) overlapping the "
        "window from the freeze request to the thaw reply. Load average (1 min) before and after "
        f"these freezes and the ones without data: {loads[0]} and {loads[1]} on {os.cpu_count()} CPUs.",
        "",
        "| round | " + " | ".join(f"{who} freeze latency | {who} worst stall" for who in CONTENDERS) + " |",
        "|---|" + "---:|---:|" * len(CONTENDERS),
    ]
    for i, runs in enumerate(zip(*(results[who] for who in CONTENDERS), strict=True), 1):
        lines.append(f"| {i} | " + " | ".join(f"{ms(r.latency)} | {ms(r.worst)}" for r in runs) + " |")
    lines.append("| **median** | " + " | ".join(f"**{ms(lat[who])}** | **{ms(med[who])}**"
                                                for who in CONTENDERS) + " |")
    lines += [
        "",
        "| measurement (medians) | pyqga / qemu-ga | target | result |",
        "|---|---:|---|---|",
        f"| worst stall | {stall_ratio:.2f}x | ≤ {STALL_RATIO_TARGET}x | "
        f"{verdict(stall_ratio <= STALL_RATIO_TARGET)} |",
        f"| freeze latency | {latency_ratio:.2f}x | none (information) | |",
        "",
        "| worst stall against the floor (interquartile means) | floor | pyqga | qemu-ga | pyqga / floor "
        "| qemu-ga / floor | target | result |",
        "|---|---:|---:|---:|---:|---:|---|---|",
        f"| without dirty data, after 1 s idle ({IDLE_FREEZES} freezes each) | {floor_row(clean)} | "
        f"pyqga ≤ {CLEAN_FLOOR_TARGET}x | {verdict(clean_ratio <= CLEAN_FLOOR_TARGET)} |",
        f"| after {FILESYSTEMS * args.size_mb} MB of dirty data ({args.rounds} freezes each) | "
        f"{floor_row(loaded)} | none (information) | |",
        "",
        "The floor is `bench/stall_floor.py`: FIFREEZE on the four filesystems at once (a thread "
        "each) and, as soon as all are frozen, FITHAW on them at once; nothing else (no request to "
        "parse, no state, no pre-flush, no round trip before the thaw). It runs as a process of its "
        "own, started once like the agents; a freeze is a line on its stdin, the freeze latency runs "
        "to its `frozen` line, the window to its `thawed` line. Without dirty data, its stall is what "
        "freezing these filesystems costs writers anyway, and what an agent takes beyond it is the "
        "agent's. With dirty data it is a reference, not a bound: FIFREEZE writes the data back "
        "while it blocks writers, pyqga flushes first (syncfs) while they still run. Without data the "
        "stalls come in steps of about one RCU grace period (see them sorted below): a "
        "FIFREEZE waits for three of them, and four started together share them or fall one behind, "
        "by chance. A median jumps a whole step from run to run, so this table compares the means of "
        "the middle half of the freezes (interquartile means).",
        "",
    ]
    window = {who: statistics.median(r.window for r in results[who]) for who in CONTENDERS}
    dirty = [r.dirty_kib for who in CONTENDERS for r in results[who]]
    fills = [r.fill for who in CONTENDERS for r in results[who]]

    def each(text: Callable[[str], str]) -> str:
        return "; ".join(f"{who} {text(who)}" for who in CONTENDERS)

    lines += [
        "Stall per filesystem in mount order (qemu-ga freezes them last to first, the others at "
        f"once), median over rounds: {each(lambda who: per_fs(results[who]))}. Freeze request to "
        f"thaw reply, median: {each(lambda who: ms(window[who]))}.",
        "",
        f"Without dirty data, each after 1 s idle ({IDLE_FREEZES} freezes each), freezing and "
        "thawing stall writers too; freeze latency / worst stall, medians: "
        + each(lambda who: " / ".join(ms(m) for m in medians(extra["idle"][who])))
        + "; per filesystem (mount order), worst stall: "
        + each(lambda who: per_fs(extra["idle"][who]))
        + "; all worst stalls, sorted: "
        + each(lambda who: ", ".join(f"{r.worst * 1000:.0f}" for r in sorted(extra["idle"][who],
                                                                           key=lambda r: r.worst)))
        + " ms.",
        "",
        "Not counted: a first freeze without dirty data (freeze latency / worst stall: "
        + each(lambda who: f"{ms(extra['clean'][who].latency)} / {ms(extra['clean'][who].worst)}")
        + "; pyqga starts its guard process when it starts serving, so this is no longer slower), then "
        + f"{WARMUP} warm-up freezes each with data (fresh images are slower at first: "
        + each(lambda who: ", ".join(f"{ms(r.latency)} / {ms(r.worst)}" for r in extra["warm-up"][who]))
        + ").",
        "",
        f"Dirty data (/proc/meminfo `Dirty`) right before each freeze: {min(dirty) / 1024:,.0f} to "
        f"{max(dirty) / 1024:,.0f} MB; writing it took {min(fills):.2f} to {max(fills):.2f} s. {limits}"
        + ("" if min(dirty) * 1024 >= 0.9 * FILESYSTEMS * args.size_mb * 2**20 else
           " **Warning: some of the data had been written back before the freeze.**"),
        "",
    ]
    lines += ping_report(pings)
    return "\n".join(lines) + "\n"


def ping_report(pings: dict[str, list[PingResult]]) -> list[str]:
    lines = [
        f"`guest-ping` while a freeze (same dirty data) is in progress, {len(pings['pyqga'])} freezes "
        "per agent: a second connection, opened before the freeze request, sends a ping every 5 ms "
        "from the request on (each waits for its reply); the freeze connection also sends one ping "
        "right behind the freeze request.",
        "",
        "| agent | freeze latency (median) | 2nd connection: pings answered during the freeze | "
        "2nd connection: ping latency during the freeze, median / max | 2nd connection: first reply, "
        "after the freeze request (median) | same connection: ping latency (median) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    notes = []
    for agent in AGENTS:
        runs = pings[agent]
        latency = statistics.median(r.latency for r in runs)
        during = [took for r in runs for sent, took in r.pings
                  if took is not None and sent + took <= r.latency]
        answered = f"{len(during)} of {sum(len(r.pings) for r in runs)} sent"
        spread = (f"{statistics.median(during) * 1000:.1f} / {max(during) * 1000:.1f} ms" if during
                  else "no answer during the freeze")
        firsts = [r.first_reply for r in runs if r.first_reply is not None]
        first = ms(statistics.median(firsts)) if firsts else "never"
        same = statistics.median(r.same_connection for r in runs if r.same_connection is not None)
        before = sum(r.same_before_freeze_reply for r in runs)
        lines.append(f"| {agent} | {ms(latency)} | {answered} | {spread} | {first} | {ms(same)} "
                     f"({before} of {len(runs)} before the freeze reply) |")
        late = [r for r in runs if r.connected is None or r.connected > r.latency]
        if late:
            waits = ", ".join("failed" if r.connected is None else ms(r.connected) for r in late)
            notes.append(f"{agent}: in {len(late)} of {len(runs)} freezes the second connection's "
                         f"connect() only completed {waits} after the freeze request (EAGAIN until then).")
        after_close = [r.first_reply - r.closed for r in runs
                       if r.first_reply is not None and r.first_reply >= r.closed]
        if after_close:
            gap = statistics.median(after_close)
            notes.append(
                f"{agent}: the second connection's connect() returned at once in "
                f"{len(runs) - len(late)} of {len(runs)} freezes (the kernel queues it), but its first "
                f"ping was answered only after the freeze connection had closed, after the thaw, in "
                f"{len(after_close)} of {len(runs)} (median {gap * 1000:.1f} ms after the close): "
                f"{agent} serves one client at a time, so a second client gets nothing, not even "
                "during a freeze, while the first stays connected.")
        if before < len(runs):
            notes.append(f"{agent}: a ping sent on the freeze connection right behind the freeze request "
                         f"was answered after the freeze reply in {len(runs) - before} of {len(runs)} "
                         "freezes (requests on one connection are answered in order).")
    lines.append("")
    for note in notes:
        lines += [note, ""]
    return lines


# --- main ---------------------------------------------------------------------------------------


def image_place(workdir: Path, image_mb: int) -> tuple[Path, bool]:
    """Where the images go: /dev/shm when it and the memory have room for them fully allocated
    (memory-backed loop devices: the flush is the agents' work, not the shared disk's), else next
    to the mounts. The bool says "on tmpfs"."""
    shm = Path("/dev/shm")
    needed = FILESYSTEMS * image_mb * 2**20 + 4 * 2**30  # and room for the page cache, margin
    with contextlib.suppress(OSError):
        if min(shutil.disk_usage(shm).free, meminfo_kib("MemAvailable")["MemAvailable"] * 1024) > needed:
            return Path(tempfile.mkdtemp(prefix="pyqga-stall-", dir=shm)), True
    return workdir / "images", False


def allocate(image: Path) -> None:
    """Give a sparse image on tmpfs all its pages now (zeros where it had holes; data is kept), so
    no freeze pays for tmpfs allocating pages under the loop device: the first rounds would be
    slower than the later ones, whose blocks ext4 reuses."""
    fd = os.open(image, os.O_RDWR | os.O_CLOEXEC)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    finally:
        os.close(fd)


@contextlib.contextmanager
def environment(workdir: Path, size_mb: int) -> Iterator[tuple[Bench, str]]:
    image_mb = max(64, IMAGE_FACTOR * size_mb)
    images, on_tmpfs = image_place(workdir, image_mb)
    with contextlib.ExitStack() as stack:
        if on_tmpfs:
            stack.callback(shutil.rmtree, images, True)
        loops = stack.enter_context(LoopMounts(workdir / "mnt", watchdog=600.0))
        for i in range(1, FILESYSTEMS + 1):
            fs = loops.add(f"fs{i}", image=images / f"fs{i}.img", size_mb=image_mb)
            if on_tmpfs:
                allocate(fs.image)
        stack.callback(loops.thaw_all)  # runs before the unmount, and before probes are stopped
        probes = []
        for fs in loops.filesystems:
            probe = Probe(fs.mountpoint)
            stack.callback(probe.stop)
            probes.append(probe)
        qga = stack.enter_context(IsolatedQemuGa(workdir / "qemu-ga", loops))
        ours = PyqgaAgent(workdir / "pyqga", ["--freeze-include", loops.glob()])
        stack.callback(ours.stop)
        ours.start()
        floor = MinimalFreezer([str(fs.mountpoint) for fs in loops.filesystems])
        stack.callback(floor.stop)  # it holds the mount points open: stopped before the unmount
        stack.callback(loops.thaw_all)  # first of all: nothing stays frozen while we clean up
        where = ("on tmpfs (/dev/shm), fully allocated" if on_tmpfs
                 else f"sparse, on the filesystem of {workdir}")
        setup = (f"{FILESYSTEMS} loop-mounted ext4 images of {image_mb} MB ({where}), one probe "
                 "process per filesystem;")
        bench = Bench(loops, probes, {"qemu-ga": qga.socket_path, "pyqga": ours.socket_path},
                      floor, size_mb * 2**20)
        # for tracing by hand (strace -p)
        bench.pids = {"qemu-ga": qga.pid, "pyqga": ours.pid, FLOOR: floor.process.pid}
        yield bench, setup


def show(label: str, agent: str, r: FreezeResult) -> None:
    print(f"{label:>10} {agent:8} freeze {ms(r.latency):>7}  worst stall {ms(r.worst):>7}  per fs "
          f"{' '.join(ms(s) for s in r.stalls)}  dirty {r.dirty_kib / 1024:,.0f} MB", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="freezes per agent (default 5)")
    parser.add_argument("--size-mb", type=int, default=200,
                        help="unsynced data per filesystem before each freeze, MB (default 200)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.size_mb < 1:
        parser.error("--rounds and --size-mb must be at least 1")
    if os.geteuid() != 0:
        print(ROOT_ONLY, file=sys.stderr)
        return 2
    missing = [t for t in ("losetup", "mkfs.ext4", "mount", "umount", "unshare") if not shutil.which(t)]
    if missing:
        print(f"bench/stall.py needs {', '.join(missing)} on PATH", file=sys.stderr)
        return 2
    if problem := qemu_ga_problem():
        print(f"bench/stall.py: {problem}", file=sys.stderr)
        return 2
    unwind_on_sigterm()
    limits = DirtyLimits(FILESYSTEMS * args.size_mb * 2**20)
    began = time.monotonic()
    results: dict[str, list[FreezeResult]] = {a: [] for a in CONTENDERS}
    extra: dict[str, dict[str, Any]] = {"clean": {}, "warm-up": {}, "idle": {}}
    loads: list[str] = []
    pings: dict[str, list[PingResult]] = {a: [] for a in AGENTS}
    try:
        limits.apply()
        with tempfile.TemporaryDirectory(prefix="pyqga-stall-") as tmp, \
                environment(Path(tmp), args.size_mb) as (bench, setup):
            print(f"set up in {time.monotonic() - began:.1f} s; {limits.describe()}", flush=True)
            # Not counted: a freeze without dirty data (first-use costs: pyqga starts its guard
            # process; also a baseline), then WARMUP freezes each with data: on fresh images the
            # first freezes with data are several times slower (measured 2 s, then 0.3 s).
            for agent in CONTENDERS:
                r = bench.freeze_once(agent, dirty=False)
                extra["clean"][agent] = r
                show("clean", agent, r)
            for i in range(WARMUP):
                for agent in turns(i, CONTENDERS):
                    r = bench.freeze_once(agent)
                    extra["warm-up"].setdefault(agent, []).append(r)
                    show(f"warm-up {i + 1}", agent, r)
            loads.append(load_average())
            for i in range(args.rounds):
                for agent in turns(i, CONTENDERS):
                    r = bench.freeze_once(agent)
                    results[agent].append(r)
                    show(f"round {i + 1}", agent, r)
            # Without dirty data, and 1 s idle first (right after a thaw a freeze is much
            # cheaper, the kernel still has the previous freeze's grace periods).
            for i in range(IDLE_FREEZES):
                for agent in turns(i, CONTENDERS):
                    r = bench.freeze_once(agent, dirty=False, pause=1.0)
                    extra["idle"].setdefault(agent, []).append(r)
                    show(f"no data {i + 1}", agent, r)
            loads.append(load_average())
            for i in range(args.rounds):
                for agent in turns(i, AGENTS):
                    p = bench.freeze_with_pings(agent)
                    pings[agent].append(p)
                    answered = [t for s, t in p.pings if t is not None and s + t <= p.latency]
                    first = "none" if p.first_reply is None else ms(p.first_reply)
                    worst_ping = ms(max(answered)) if answered else "-"
                    print(f"pings {i + 1} {agent:8} freeze {ms(p.latency):>7}  2nd connection: "
                          f"{len(answered)} answered during the freeze (max {worst_ping}), "
                          f"first reply {first}; same connection "
                          f"{ms(p.same_connection or 0)}", flush=True)
    except KeyboardInterrupt:
        print("bench/stall.py: interrupted; everything it made has been thawed and removed", file=sys.stderr)
        return 130
    except OSError as exc:
        if exc.errno == errno.EPERM:
            print(f"bench/stall.py: not permitted ({exc}); run as root", file=sys.stderr)
            return 2
        raise
    finally:
        limits.restore()
    report = build_report(results, pings, extra, args, setup, limits.describe(), loads)
    print()
    print(report)
    print(f"total {time.monotonic() - began:.0f} s")
    if not args.no_write:
        write_section(SECTION, "## Results: `bench/stall.py`\n\n" + report)
        print(f"wrote section {SECTION!r} of {BENCHMARKS_MD.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
