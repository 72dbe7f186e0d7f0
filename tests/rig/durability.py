"""SQLite's durability across seeded power cuts in the test guest: issue 21's proof that the fault
toolkit finds a real difference (``synchronous=FULL`` loses nothing acknowledged, ``OFF`` does).

The application is the guest's own python3 ``sqlite3`` (Debian's libsqlite3), in WAL mode, its
database on ``/data``, which sits on the dm layer (boot with ``pyqga.dmdata=1``).  Its client
commits numbered rows, one transaction each, and after each commit returns it writes
``ack CUT SEQ`` to a virtio-serial port of its own (:data:`ACK_PORT`, ``GuestVM(ports=...)``).
The host reads that port's socket on a thread (:class:`AckReader`); an acknowledgement is received
the moment that thread has read it.  No disk is on that path, so the cut cannot touch it.

**The cut, exactly.**  :func:`~pyqga.host_client.power_cut.power_cut` asks the agent for
``drop-writes``; the fault takes hold somewhere inside that request, after the host sent it.  So
an acknowledgement counts if the host had read it *before it sent the request*: the client wrote
it after its commit had returned, and it reached the host before the request left, so that
commit returned before the fault could hold.  Nothing counted was committed after the cut; the
acknowledgements read during the request (committed just before or just after the fault took
hold: undecidable from the host) are not counted, only reported (``in_flight``).  Rows are
committed one at a time, so a cut's counted rows are 1..N.

**One cut.**  Start the client; once its ``start`` line arrives, wait the plan's delay; cut
(drop-writes, :data:`CUT_AFTER` seconds in which the client goes on committing into the void,
QMP ``system_reset``: the same QEMU process, /data's image kept); wait for the new boot; e2fsck
the unmounted filesystem (asserted clean: ext4's journal must hold whatever the application
does); then in the guest ``PRAGMA integrity_check`` and, for every cut of this database so far,
how many of its counted rows are there.  A database SQLite cannot read at all after a cut
(``OFF`` can leave it malformed: a checkpoint's pages half on disk) keeps none of its rows: every
counted one is lost, and the next cut starts a fresh database.  ``random.Random(seed)`` draws
the delays, and both modes run the same plan.  With ``OFF`` the loss is reliable at these
delays: nothing forces the committed pages out of the guest's page cache within :data:`DELAYS`
(the kernel writes dirty pages back after 30 s, and ext4's 5 s journal commit does not carry
delayed-allocation or overwritten data).  Seed 21's full run lost every acknowledged commit of
all 20 OFF cuts (BENCHMARKS.md).
"""

from __future__ import annotations

import base64
import contextlib
import json
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from pyqga.host_client import AgentClient
from pyqga.host_client.power_cut import power_cut
from pyqga.host_client.qmp import QMPConnection
from tests.rig.guest_shell import fsck_clean
from tests.rig.machine import GuestVM

ACK_PORT = "pyqga.acks"        # the client's virtio-serial port: /dev/virtio-ports/pyqga.acks
AGENT = "pyqga-serial"          # the agent that injects the cut (started with --enable-faults)
SCRIPT = "/run/durability.py"   # on tmpfs: written again after every boot
MODES = ("FULL", "OFF")
DELAYS = (0.5, 4.0)             # seconds of committing before each cut, drawn per cut
CUT_AFTER = 0.5                 # seconds of dropped writes between the fault and the reset
START_TIMEOUT = 60.0

# In the guest.  setup DB: a fresh database in WAL mode, synced.  client DB MODE CUT PORT: commit
# rows (CUT, 1), (CUT, 2), ... with synchronous=MODE, each acknowledged on PORT after its commit.
# check DB ACKED: integrity_check, and per cut of ACKED ({cut: N}) how many of rows 1..N are
# there and how many rows beyond N; or the error when the database cannot be read at all.
GUEST_SOURCE = r"""
import json, os, sqlite3, sys
op, path = sys.argv[1], sys.argv[2]
if op == "setup":
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
    db = sqlite3.connect(path, isolation_level=None)
    assert db.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"
    db.execute("CREATE TABLE rows (cut INTEGER, seq INTEGER, payload TEXT, PRIMARY KEY (cut, seq))")
    db.close()
    os.sync()
elif op == "client":
    mode, cut = sys.argv[3], int(sys.argv[4])
    port = os.open(sys.argv[5], os.O_WRONLY)
    db = sqlite3.connect(path, isolation_level=None)   # autocommit: each INSERT is a transaction
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.execute("PRAGMA synchronous=" + mode)
    os.write(port, b"start %d %d\n" % (cut, db.execute("PRAGMA synchronous").fetchone()[0]))
    seq = 0
    while True:
        seq += 1
        db.execute("INSERT INTO rows VALUES (?, ?, ?)", (cut, seq, "row %d of cut %d" % (seq, cut)))
        os.write(port, b"ack %d %d\n" % (cut, seq))
else:
    acked = json.loads(sys.argv[3])
    out = {"integrity": [], "present": {}, "beyond": {}}
    try:
        db = sqlite3.connect(path, isolation_level=None)
        out["integrity"] = [r[0] for r in db.execute("PRAGMA integrity_check")]
        for cut, n in acked.items():
            count = "SELECT count(*) FROM rows WHERE cut = ? AND seq %s ?"
            out["present"][cut] = db.execute(count % "<=", (int(cut), n)).fetchone()[0]
            out["beyond"][cut] = db.execute(count % ">", (int(cut), n)).fetchone()[0]
    except sqlite3.DatabaseError as e:
        out["error"] = "%s: %s" % (type(e).__name__, e)
    print(json.dumps(out))
"""


def plan(seed: int, cuts: int) -> list[float]:
    """The delay before each cut, from the seed: the same for the same seed, in both modes."""
    rng = random.Random(seed)
    return [round(rng.uniform(*DELAYS), 3) for _ in range(cuts)]


class AckReader:
    """The host end of :data:`ACK_PORT`: a thread reads the lines as they come and keeps, per cut,
    the last acknowledged row and when its ``start`` line came."""

    def __init__(self, path: Path) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.connect(str(path))   # QEMU listens from its start (server=on, wait=off)
        self._sock.settimeout(0.2)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._last: dict[int, int] = {}
        self._started: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name="ack-reader", daemon=True)
        self._thread.start()

    def __enter__(self) -> AckReader:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()

    def acked(self, cut: int) -> int:
        """The last row of ``cut`` whose acknowledgement this host has read (0: none)."""
        with self._lock:
            return self._last.get(cut, 0)

    def wait_started(self, cut: int, timeout: float) -> str | None:
        """The synchronous setting the client of ``cut`` reported once it began, or None by then."""
        with self._changed:
            self._changed.wait_for(lambda: cut in self._started, timeout)
            return self._started.get(cut)

    def _read(self) -> None:
        buffer = b""
        while not self._stop.is_set():
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            if not data:
                return
            *lines, buffer = (buffer + data).split(b"\n")
            with self._changed:
                for line in lines:
                    word, cut, value = line.decode(errors="replace").split(" ")
                    if word == "ack":
                        self._last[int(cut)] = int(value)
                    elif word == "start":
                        self._started[int(cut)] = value
                self._changed.notify_all()


@dataclass
class CutResult:
    """One power cut and what the reboot found."""

    mode: str
    cut: int               # numbered across the whole run
    delay: float           # seconds of committing before the cut (the plan's)
    acked: int             # acknowledgements the host had read before the inject request
    in_flight: int         # read during the inject request: not counted
    after: int             # read after the fault held, before the reset: committed into the void
    lost: int              # counted rows missing after the reboot
    beyond: int            # rows past the counted ones that survived (committed before the fault held)
    earlier_lost: int      # rows of earlier cuts found after their own cut and missing now
    integrity: str         # PRAGMA integrity_check's first line, or the error reading the database
    unreadable: bool       # the database could not be read: all its rows count as lost
    reboot_s: float        # reset to the agent answering again
    seconds: float         # the whole cut: client start to the check's end


def _exec_detached(client: AgentClient, argv: Sequence[str]) -> int:
    pid: int = client.call("guest-exec", {"path": "/usr/bin/python3", "arg": list(argv),
                                          "capture-output": True})["pid"]
    return pid


def _status(client: AgentClient, pid: int) -> str:
    status = client.call("guest-exec-status", {"pid": pid})
    err = base64.b64decode(status.get("err-data", "")).decode(errors="replace")
    return f"exited={status['exited']} code={status.get('exitcode')}: {err[-2000:]}"


def _check(client: AgentClient, db: str, acked: dict[int, int]) -> dict[str, object]:
    result = client.exec(["/usr/bin/python3", "-B", SCRIPT, "check", db, json.dumps(acked)],
                         kill_after=120)
    assert result.exitcode == 0, (result.stdout + result.stderr).decode(errors="replace")
    out: dict[str, object] = json.loads(result.stdout)
    return out


@contextlib.contextmanager
def _agent(vm: GuestVM) -> Iterator[AgentClient]:
    with vm.client(AGENT, timeout=120) as client:
        yield client


def run(vm: GuestVM, seed: int, cuts: int, modes: Sequence[str] = MODES,
        after_reboot: Callable[[AgentClient], None] | None = None,
        report: Callable[[CutResult], None] | None = None) -> list[CutResult]:
    """``cuts`` power cuts per mode at the seed's points; every cut's result.  ``vm`` runs
    :data:`AGENT` with ``--enable-faults``, ``pyqga.dmdata=1`` and the port :data:`ACK_PORT`;
    ``after_reboot`` runs after each reboot's check (to restore a test's files on tmpfs),
    ``report`` gets each result as it comes."""
    delays = plan(seed, cuts)
    results: list[CutResult] = []
    number = 0
    with AckReader(vm.port_socket(ACK_PORT)) as acks:
        for mode in modes:
            db = f"/data/durability-{mode.lower()}.db"
            counted: dict[int, int] = {}    # cut -> rows acknowledged before it
            survived: dict[int, int] = {}   # cut -> of those, found after its reboot
            for i, delay in enumerate(delays):
                if i == 0 or results[-1].unreadable:   # a fresh database, also after a ruined one
                    _setup(vm, db)
                    counted.clear()
                    survived.clear()
                number += 1
                result = _one_cut(vm, acks, db, mode, number, delay, counted, survived)
                if after_reboot is not None:
                    with _agent(vm) as client:
                        after_reboot(client)
                results.append(result)
                if report is not None:
                    report(result)
    return results


def _setup(vm: GuestVM, db: str) -> None:
    with _agent(vm) as client:
        client.write_file(SCRIPT, GUEST_SOURCE.encode())
        client.exec(["/usr/bin/python3", "-B", SCRIPT, "setup", db], kill_after=120, check=True)


def _one_cut(vm: GuestVM, acks: AckReader, db: str, mode: str, number: int, delay: float,
             counted: dict[int, int], survived: dict[int, int]) -> CutResult:
    started = time.monotonic()
    held: list[int] = []
    with _agent(vm) as client, QMPConnection(vm.qmp_socket) as qmp:
        qmp.execute("set-action", {"reboot": "reset"})   # the rig runs QEMU with -no-reboot
        pid = _exec_detached(client, ["-B", SCRIPT, "client", db, mode, str(number),
                                      f"/dev/virtio-ports/{ACK_PORT}"])
        reported = acks.wait_started(number, START_TIMEOUT)
        assert reported is not None, f"the client did not start: {_status(client, pid)}"
        assert int(reported) == {"OFF": 0, "NORMAL": 1, "FULL": 2}[mode], reported
        time.sleep(delay)
        acked = acks.acked(number)   # read before the inject request leaves: see the docstring
        mark = vm.console_mark()

        def hold(after: float) -> None:   # the fault holds from here on
            held.append(acks.acked(number))
            time.sleep(after)

        power_cut(client, qmp, "/data", after=CUT_AFTER, sleep=hold)
        last = acks.acked(number)
    reboot_s = vm.wait_rebooted(mark, agents=(AGENT,))
    counted[number] = acked
    with _agent(vm) as client:
        fsck_clean(client)   # before SQLite opens the database (its recovery writes)
        client.write_file(SCRIPT, GUEST_SOURCE.encode())
        check = _check(client, db, counted)
    error = check.get("error")
    # An unreadable database keeps none of its rows: every counted one is lost.
    present: dict[str, int] = {} if error else check["present"]  # type: ignore[assignment]
    beyond: dict[str, int] = {} if error else check["beyond"]  # type: ignore[assignment]
    integrity: list[str] = check["integrity"]  # type: ignore[assignment]
    earlier = sum(n - present.get(str(c), 0) for c, n in survived.items())
    survived[number] = present.get(str(number), 0)
    return CutResult(mode=mode, cut=number, delay=delay, acked=acked, in_flight=held[0] - acked,
                     after=last - held[0], lost=acked - survived[number], beyond=beyond.get(str(number), 0),
                     earlier_lost=earlier, integrity=str(error or integrity[0]), unreadable=bool(error),
                     reboot_s=reboot_s, seconds=time.monotonic() - started)


@dataclass
class ModeSummary:
    mode: str
    cuts: int
    acked: int
    lost: int
    cuts_with_loss: int
    in_flight: int
    integrity_ok: int
    unreadable: int
    seconds_per_cut: float


def summarise(results: Sequence[CutResult]) -> list[ModeSummary]:
    out = []
    for mode in dict.fromkeys(r.mode for r in results):
        rs = [r for r in results if r.mode == mode]
        out.append(ModeSummary(mode, len(rs), sum(r.acked for r in rs), sum(r.lost for r in rs),
                               sum(r.lost > 0 for r in rs), sum(r.in_flight for r in rs),
                               sum(r.integrity == "ok" for r in rs), sum(r.unreadable for r in rs),
                               sum(r.seconds for r in rs) / len(rs)))
    return out


CUT_HEADER = ("mode  cut  delay s  acked  in flight  after  lost  beyond  earlier lost  reboot s  cut s  "
              "integrity")


def format_cut(r: CutResult) -> str:
    return (f"{r.mode:4s}  {r.cut:3d}  {r.delay:7.3f}  {r.acked:5d}  {r.in_flight:9d}  {r.after:5d}  "
            f"{r.lost:4d}  {r.beyond:6d}  {r.earlier_lost:12d}  {r.reboot_s:8.1f}  {r.seconds:5.1f}  "
            f"{r.integrity}")


def format_summary(results: Sequence[CutResult], seed: int) -> str:
    lines = [f"seed {seed}: acknowledged = read by the host before the cut's inject request",
             "| mode | cuts | acknowledged | lost | cuts with loss | in flight (not counted) "
             "| integrity_check ok | database unreadable | e2fsck clean | s per cut |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in summarise(results):
        lines.append(f"| `synchronous={s.mode}` | {s.cuts} | {s.acked} | {s.lost} | {s.cuts_with_loss} "
                     f"| {s.in_flight} | {s.integrity_ok}/{s.cuts} | {s.unreadable} | {s.cuts}/{s.cuts} "
                     f"| {s.seconds_per_cut:.1f} |")
    return "\n".join(lines)
