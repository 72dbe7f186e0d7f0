"""The device-mapper fault kinds in a real guest: what the application sees, and the exact table
back after revert.

The shared fault guest (Debian's 6.1 cloud kernel, ``guest.py``) boots with ``pyqga.dmdata=1``:
``/data`` is mounted through the dm-linear layer ``pyqga-data`` (``pyqga.agent.faults.layer``).
The serial agent, started with ``--enable-faults``, is the harness's hands: faults go through
guest-fault-inject and guest-fault-revert (:func:`inject`, :func:`revert`).
The last tests cut the power (drop-writes, then a reset of the same QEMU process): the plain
power cut, and SQLite under seeded cuts (``tests/rig/durability.py``, whose client acknowledges
its commits on the guest's extra virtio-serial port ``pyqga.acks``).

The probes read and write with O_DIRECT (the page cache would hide a block fault) from programs
on ``/`` (never on the faulted device).  Every test ends with ``/data``'s table byte-identical to
the one at boot (``dmsetup table``, the reference tool) and, where the fault leaves the
filesystem consistent, with a clean ``e2fsck -fn`` of the unmounted filesystem.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Iterator
from typing import Any

import pytest

from pyqga.host_client import AgentCallError, AgentClient
from pyqga.host_client.power_cut import power_cut
from pyqga.host_client.qmp import QMPConnection
from tests.rig import durability
from tests.rig.guest_files import DATA_LAYER
from tests.rig.guest_shell import fsck_clean, output_json, sh
from tests.rig.machine import GuestVM
from tests.vm.faults.guest import HANDS

pytestmark = pytest.mark.root

LAYER = f"/dev/mapper/{DATA_LAYER}"
PROBE = "/run/io-probe.py"
TCG_SLACK_S = 0.5   # what a 4 KiB O_DIRECT I/O may take beyond the fault under TCG

# In the guest: O_DIRECT I/O on /data files, 4 KiB at a time, each one timed.
#   read PATH                 every block once: [[latency, errno or 0, first 4 bytes], ...]
#   write PATH BYTE [COUNT]   COUNT blocks of BYTE at the start of PATH: [[latency, errno], ...]
#   reads PATH SECONDS        block 0 every 20 ms for SECONDS: [[start, latency, errno], ...]
PROBE_SOURCE = r"""
import json, mmap, os, sys, time
op, path = sys.argv[1], sys.argv[2]
buf = mmap.mmap(-1, 4096)
out = []
def timed(fn):
    t0 = time.monotonic()
    try:
        fn()
        return time.monotonic() - t0, 0
    except OSError as e:
        return time.monotonic() - t0, e.errno
if op == "write":
    buf[:] = bytes([int(sys.argv[3])]) * 4096
    fd = os.open(path, os.O_WRONLY | os.O_DIRECT)
    for i in range(int(sys.argv[4]) if len(sys.argv) > 4 else 1):
        out.append(list(timed(lambda: os.pwrite(fd, buf, i * 4096))))
elif op == "read":
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    for i in range(os.fstat(fd).st_size // 4096):
        latency, err = timed(lambda: os.preadv(fd, [buf], i * 4096))
        out.append([latency, err, buf[:4].hex() if not err else ""])
else:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    start = time.monotonic()
    while time.monotonic() - start < float(sys.argv[3]):
        t0 = time.monotonic() - start
        latency, err = timed(lambda: os.preadv(fd, [buf], 0))
        out.append([round(t0, 3), round(latency, 3), err])
        time.sleep(0.02)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def vm(fault_vm: GuestVM) -> Iterator[GuestVM]:
    """The shared fault guest (``guest.py``), with this module's probe program in it.  The power
    cuts wait only for the serial agent of each new boot: at the end, for every agent, so the
    next module finds the guest whole."""
    with fault_vm.client(HANDS, timeout=120) as client:
        client.write_file(PROBE, PROBE_SOURCE.encode())
    yield fault_vm
    fault_vm.ready_seconds.clear()
    fault_vm.wait_ready(timeout=120)


@pytest.fixture
def guest(vm: GuestVM, original: str) -> Iterator[AgentClient]:
    """The serial agent; after the test, no fault is left and /data's table is the boot one."""
    with vm.client(HANDS, timeout=120) as client:
        yield client
        revert(client)
        assert dm_table(client) == original


@pytest.fixture(scope="module")
def original(vm: GuestVM) -> str:
    with vm.client(HANDS, timeout=120) as client:
        return dm_table(client)


# --- the two fault calls -----------------------------------------------------------------------

def inject(client: AgentClient, kind: str, params: dict[str, Any] | None = None, target: str = "/data",
           duration: float = 60.0, force: bool = False) -> dict[str, Any]:
    """Start a fault through guest-fault-inject: ``{id, deadline, ...}``, or ``{error}`` with
    the agent's message when it is refused."""
    try:
        reply: dict[str, Any] = client.call("guest-fault-inject", {
            "kind": kind, "target": target, "duration": duration, "params": params or {}, "force": force})
    except AgentCallError as e:
        return {"error": e.error.message}
    return reply


def revert(client: AgentClient, lease: str | None = None) -> int:
    """End one fault (0 if it had already ended), or all of them; how many ended."""
    try:
        count: int = client.call("guest-fault-revert", {"id": lease} if lease else {})
    except AgentCallError as e:
        assert "no active fault" in e.error.message, e
        return 0
    return count


# --- helpers -----------------------------------------------------------------------------------

def dm_table(client: AgentClient) -> str:
    return sh(client, f"dmsetup table {DATA_LAYER}")


def probe(client: AgentClient, *args: str) -> list[list[Any]]:
    result = client.exec(["/usr/bin/python3", "-B", PROBE, *args], kill_after=120)
    assert result.exitcode == 0, result.stderr.decode()
    samples: list[list[Any]] = json.loads(result.stdout)
    return samples


def make_file(client: AgentClient, path: str, blocks: int, byte: int) -> None:
    """A file of ``blocks`` 4 KiB blocks of ``byte``, on disk and out of the page cache."""
    sh(client, f"head -c {blocks * 4096} /dev/zero | tr '\\0' '\\{byte:03o}' > {path} && sync "
               "&& echo 3 > /proc/sys/vm/drop_caches")


def workload_resumes(client: AgentClient) -> None:
    """A buffered write and fsync on /data complete at once."""
    started = time.monotonic()
    sh(client, "echo resumed > /data/resume.txt && sync -d /data/resume.txt 2>/dev/null || sync")
    assert time.monotonic() - started < 10


# --- tests -------------------------------------------------------------------------------------

def test_data_sits_on_the_dm_layer_and_our_table_reader_matches_dmsetup(guest: AgentClient,
                                                                        original: str) -> None:
    assert sh(guest, "awk '$2 == \"/data\" {print $1}' /proc/mounts").strip() == LAYER
    ours = sh(guest, "python3 -B -c 'from pyqga.agent.faults import dm\n"
                     f"print(\"\".join(l.text() + \"\\n\" for l in dm.table(\"{DATA_LAYER}\")), end=\"\")'")
    assert ours == original
    assert original.split()[2] == "linear"


def test_io_stall_blocks_reads_until_revert(guest: AgentClient) -> None:
    make_file(guest, "/data/stall.bin", 1, 0x41)
    reader = ["-B", PROBE, "reads", "/data/stall.bin", "6"]
    pid = guest.call("guest-exec", {"path": "/usr/bin/python3", "arg": reader, "capture-output": True})["pid"]
    time.sleep(1.5)
    lease = inject(guest, "io-stall")
    assert "id" in lease, lease
    assert "s" in sh(guest, f"dmsetup info -c --noheadings -o attr {DATA_LAYER}")
    time.sleep(2.0)
    assert revert(guest, lease["id"]) == 1
    samples = _wait(guest, pid)
    blocked = [s for s in samples if s[1] > 1.0]
    assert len(blocked) == 1, blocked   # one read met the stall and waited for the resume
    assert 1.5 <= blocked[0][1] < 2.0 + 3 * TCG_SLACK_S + 1.0   # the stall, plus the revert call
    assert all(s[2] == 0 for s in samples), "a stalled read failed instead of waiting"
    after = [s for s in samples if s[0] > blocked[0][0] + blocked[0][1]]
    assert after and max(s[1] for s in after) < TCG_SLACK_S
    workload_resumes(guest)
    fsck_clean(guest)


def test_io_delay_adds_the_configured_latency_to_reads_and_writes(guest: AgentClient) -> None:
    make_file(guest, "/data/delay.bin", 8, 0x41)
    lease = inject(guest, "io-delay", {"read-ms": 300, "write-ms": 150, "flush-ms": 50})
    assert "id" in lease, lease
    reads = probe(guest, "read", "/data/delay.bin")
    writes = probe(guest, "write", "/data/delay.bin", str(0x42), "4")
    assert revert(guest, lease["id"]) == 1
    assert all(0.3 <= r[0] < 0.3 + TCG_SLACK_S and r[1] == 0 for r in reads), reads
    assert all(0.15 <= w[0] < 0.15 + TCG_SLACK_S and w[1] == 0 for w in writes), writes
    again = probe(guest, "read", "/data/delay.bin")
    assert max(r[0] for r in again) < 0.15, again
    assert [r[2] for r in again] == ["42424242"] * 4 + ["41414141"] * 4
    workload_resumes(guest)
    fsck_clean(guest)


@pytest.mark.parametrize(("io", "reads_fail", "writes_fail"), [("read-write", True, True),
                                                                ("write", False, True)])
def test_io_error_fails_exactly_the_chosen_io(guest: AgentClient, io: str, reads_fail: bool,
                                              writes_fail: bool) -> None:
    make_file(guest, "/data/error.bin", 4, 0x41)
    probe(guest, "read", "/data/error.bin")   # atime set now: the reads below write no metadata
    sh(guest, "sync")
    lease = inject(guest, "io-error", {"io": io})
    assert "id" in lease, lease
    reads = probe(guest, "read", "/data/error.bin")
    writes = probe(guest, "write", "/data/error.bin", str(0x42), "1")
    assert revert(guest, lease["id"]) == 1
    assert {r[1] for r in reads} == ({5} if reads_fail else {0}), reads    # EIO
    assert {w[1] for w in writes} == ({5} if writes_fail else {0}), writes
    assert [r[1] for r in probe(guest, "read", "/data/error.bin")] == [0] * 4
    assert inject(guest, "io-error", {"io": "read"})["error"].startswith("io-error on reads only needs")
    workload_resumes(guest)
    fsck_clean(guest)


def test_corrupt_changes_the_chosen_byte_of_what_is_written(guest: AgentClient) -> None:
    make_file(guest, "/data/corrupt.bin", 2, 0x41)
    sh(guest, "sync")
    lease = inject(guest, "corrupt", {"byte": 3, "value": 0x5A})
    assert "id" in lease, lease
    writes = probe(guest, "write", "/data/corrupt.bin", str(0x42), "1")
    assert revert(guest, lease["id"]) == 1
    assert writes[0][1] == 0
    sh(guest, "echo 3 > /proc/sys/vm/drop_caches")
    blocks = probe(guest, "read", "/data/corrupt.bin")
    assert [b[2] for b in blocks] == ["42425a42", "41414141"]   # byte 3 of the written block
    assert inject(guest, "corrupt", {"direction": "read"})["error"].startswith("this kernel's dm-flakey")
    workload_resumes(guest)
    fsck_clean(guest)


def test_drop_writes_acknowledges_writes_and_loses_them(guest: AgentClient) -> None:
    make_file(guest, "/data/drop.bin", 2, 0x41)
    sh(guest, "sync")
    lease = inject(guest, "drop-writes")
    assert "id" in lease, lease
    writes = probe(guest, "write", "/data/drop.bin", str(0x43), "2")
    during = probe(guest, "read", "/data/drop.bin")
    assert revert(guest, lease["id"]) == 1
    assert [w[1] for w in writes] == [0, 0]      # acknowledged
    assert [b[2] for b in during] == ["41414141"] * 2
    sh(guest, "echo 3 > /proc/sys/vm/drop_caches")
    assert [b[2] for b in probe(guest, "read", "/data/drop.bin")] == ["41414141"] * 2   # lost
    workload_resumes(guest)
    fsck_clean(guest)


def test_bad_extents_fail_exactly_one_files_blocks(guest: AgentClient, original: str) -> None:
    make_file(guest, "/data/bad.bin", 16, 0x42)
    make_file(guest, "/data/good.bin", 16, 0x47)
    probe(guest, "read", "/data/bad.bin")
    probe(guest, "read", "/data/good.bin")
    sh(guest, "sync")
    assert "is not on /data" in inject(guest, "bad-extents", {"path": "/etc/hostname"})["error"]
    lease = inject(guest, "bad-extents", {"path": "/data/bad.bin"})
    assert "id" in lease, lease
    table = dm_table(guest)
    bad = probe(guest, "read", "/data/bad.bin")
    good = probe(guest, "read", "/data/good.bin")
    buffered = guest.exec(["/bin/sh", "-c", "echo 3 > /proc/sys/vm/drop_caches; cat /data/bad.bin"])
    second = inject(guest, "io-delay")
    assert revert(guest, lease["id"]) == 1
    assert {b[1] for b in bad} == {5} and len(bad) == 16, bad
    assert [g[1] for g in good] == [0] * 16 and {g[2] for g in good} == {"47474747"}
    assert buffered.exitcode != 0 and b"Input/output error" in buffered.stderr
    assert "error" in second and "linear" in second["error"], second   # the table is not linear now
    lines = table.splitlines()
    assert [line.split()[2] for line in lines].count("error") >= 1 and len(lines) >= 3
    assert [b[1] for b in probe(guest, "read", "/data/bad.bin")] == [0] * 16
    workload_resumes(guest)
    fsck_clean(guest)


def test_a_fault_ends_at_its_deadline_without_a_revert(guest: AgentClient, original: str) -> None:
    lease = inject(guest, "io-delay", {"read-ms": 10}, duration=2.0)
    assert "delay" in dm_table(guest)
    time.sleep(3.5)
    assert dm_table(guest) == original
    assert revert(guest, lease["id"]) == 0


TIMED_KINDS = [("io-stall", {}), ("io-error", {}), ("io-delay", {}), ("corrupt", {}), ("drop-writes", {}),
               ("bad-extents", {"path": "/data/timing.bin"})]


def test_inject_and_revert_times(guest: AgentClient, original: str) -> None:
    """guest-fault-inject (returns once the fault holds) and guest-fault-revert (once it is
    undone) per kind, each timed on the host from request to reply over the serial channel, in a
    TCG guest: p50/p99 of 9 runs.  BENCHMARKS.md quotes this table."""
    make_file(guest, "/data/timing.bin", 16, 0x54)
    print("\nkind          inject p50/p99 ms   revert p50/p99 ms")
    for kind, params in TIMED_KINDS:
        injects, reverts = [], []
        for _ in range(9):
            started = time.monotonic()
            lease = inject(guest, kind, params)
            injected = time.monotonic()
            assert "id" in lease, lease
            assert revert(guest, lease["id"]) == 1
            injects.append(injected - started)
            reverts.append(time.monotonic() - injected)
        row = [f"{_quantile(runs, q) * 1000:6.1f}" for runs in (injects, reverts) for q in (0.5, 0.99)]
        print(f"{kind:13s} {row[0]} / {row[1]}       {row[2]} / {row[3]}")
        assert max(injects) < 5.0 and max(reverts) < 5.0, (kind, injects, reverts)
    assert dm_table(guest) == original


def test_drop_writes_then_a_reset_loses_what_was_written_after_the_cut(vm: GuestVM, original: str) -> None:
    """The power cut: what was fsynced before drop-writes survives a reset, what was fsynced after
    it is gone, and the journal replay leaves a consistent filesystem.  Last: it reboots the guest."""
    def written_after_the_cut(_: float) -> None:   # power_cut's wait before the reset
        sh(client, "echo after > /data/after-cut && sync && echo changed > /data/before-cut && sync")
        assert sh(client, "cat /data/after-cut") == "after\n"   # the page cache still has it

    with vm.client(HANDS, timeout=120) as client, QMPConnection(vm.qmp_socket) as qmp:
        sh(client, "echo before > /data/before-cut && sync")
        qmp.execute("set-action", {"reboot": "reset"})   # the rig runs QEMU with -no-reboot
        mark = vm.console_mark()
        lease, _ = power_cut(client, qmp, "/data", after=1.0, sleep=written_after_the_cut)
        assert lease.kind == "drop-writes"
    vm.wait_rebooted(mark, agents=(HANDS,))
    with vm.client(HANDS, timeout=120) as client:
        assert dm_table(client) == original   # a new boot: the layer is linear again
        assert sh(client, "cat /data/before-cut").startswith("before\n")
        assert "after-cut" not in sh(client, "ls /data")
        fsck_clean(client)
        client.write_file(PROBE, PROBE_SOURCE.encode())


# The short version of issue 21's durability proof (the full one, 20 cuts a mode, is
# `make fault-demo`, tests/rig/fault_demo.py): the same seeded plan of power cuts under SQLite
# with synchronous=FULL and with synchronous=OFF (tests/rig/durability.py says what counts).
DURABILITY_SEED = 21
DURABILITY_CUTS = 1   # a cut a mode: CI's time (each cut reboots the guest; 15-35 s)


def test_sqlite_full_loses_no_acknowledged_commit_and_off_does(vm: GuestVM, original: str) -> None:
    """Each cut reboots the guest."""
    def restored(client: AgentClient) -> None:
        assert dm_table(client) == original
        client.write_file(PROBE, PROBE_SOURCE.encode())

    print(f"\n{durability.CUT_HEADER}")
    results = durability.run(vm, DURABILITY_SEED, DURABILITY_CUTS, after_reboot=restored,
                             report=lambda r: print(durability.format_cut(r), flush=True))
    print(durability.format_summary(results, DURABILITY_SEED))
    full = [r for r in results if r.mode == "FULL"]
    off = [r for r in results if r.mode == "OFF"]
    assert len(full) == len(off) == DURABILITY_CUTS
    assert all(r.acked > 0 and r.after > 0 for r in results), results   # committing through the cut
    assert [(r.lost, r.earlier_lost) for r in full] == [(0, 0)] * DURABILITY_CUTS, full
    # and the cut did cut: the rows committed after the fault held (FULL synced each) are gone
    assert all(r.beyond < r.in_flight + r.after for r in full), full
    assert all(r.integrity == "ok" for r in full), full
    assert sum(r.lost for r in off) > 0, off   # the same plan finds OFF's loss


def _quantile(values: list[float], q: float) -> float:
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q * 100) - 1]


def _wait(client: AgentClient, pid: int, limit: float = 60.0) -> list[list[Any]]:
    samples: list[list[Any]] = output_json(client, pid, limit, "the probe", 0.3)
    return samples


# In the guest: an agent whose own files (its pyqga package) live on /data, driven over a unix
# socket.  io-stall of /data is refused unless forced; forced, and with that agent stopped, its
# keeper (its code on the stalled device too, but imported up front and locked in memory) must
# still end the stall by the deadline plus its grace.  Prints one JSON object.
OWN_DEVICE = r"""
import json, os, shutil, signal, socket, subprocess, sys, time
from pyqga.agent.faults import dm
site = os.path.dirname(os.path.dirname(os.path.abspath(dm.__file__)))   # .../pyqga/agent -> .../pyqga
copy = "/data/own-agent"
shutil.rmtree(copy, ignore_errors=True)
shutil.copytree(os.path.dirname(site), copy + "/pyqga", symlinks=True,
                ignore=shutil.ignore_patterns("__pycache__"))
for dep in ("jsonrpcserver", "oslash"):
    import importlib
    shutil.copytree(os.path.dirname(importlib.import_module(dep).__file__), f"{copy}/{dep}",
                    ignore=shutil.ignore_patterns("__pycache__"))
os.sync()
sock_path, state = "/run/own-agent.sock", "/run/own-agent-state"
os.makedirs(state, exist_ok=True)
agent = subprocess.Popen([sys.executable, "-B", "-m", "pyqga.agent", "-m", "unix-listen", "-p", sock_path,
                          "-t", state, "-l", "/run/own-agent.log", "--enable-faults"],
                         env=dict(os.environ, PYTHONPATH=copy), cwd="/", stdin=subprocess.DEVNULL)
def call(command, arguments):
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(60)
        s.connect(sock_path)
        s.sendall(json.dumps({"execute": command, "arguments": arguments}).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            data += s.recv(65536)
        return json.loads(data)
end = time.monotonic() + 120
while True:   # the socket's file exists from bind(), before listen(): wait for an answer
    try:
        call("guest-ping", {})
        break
    except (FileNotFoundError, ConnectionRefusedError):
        assert time.monotonic() < end and agent.poll() is None, "the agent on /data did not start"
        time.sleep(0.1)
out = {"agent-file": call("guest-fault-capabilities", {"target": "/data"}) and os.path.realpath(copy)}
refused = call("guest-fault-inject", {"kind": "io-stall", "target": "/data", "duration": 2})
out["refused"] = refused.get("error", {}).get("desc")
forced = call("guest-fault-inject", {"kind": "io-stall", "target": "/data", "duration": 2, "force": True})
deadline = time.monotonic() + 2
out["forced"] = "return" in forced
os.kill(agent.pid, signal.SIGSTOP)      # only the keeper can end it now
assert dm.info("pyqga-data").suspended
while dm.info("pyqga-data").suspended:
    assert time.monotonic() < deadline + 10, "still suspended 10 s after the deadline"
    time.sleep(0.02)
out["late"] = round(time.monotonic() - deadline, 3)
out["agent"] = agent.wait(10)
# The keeper records the end after its undo (the resume seen above): wait for the line, 10 s at most.
end = time.monotonic() + 10
while True:
    events = [json.loads(line) for line in open(state + "/fault-events.jsonl")]
    out["ended"] = [(e["event"], e.get("reason")) for e in events if e["event"] in ("reverted", "expired")]
    if out["ended"] or time.monotonic() > end:
        break
    time.sleep(0.05)
shutil.rmtree(copy, ignore_errors=True)
print(json.dumps(out))
"""


def test_a_forced_stall_of_the_agents_own_device_is_still_ended_by_the_keeper(guest: AgentClient,
                                                                             original: str) -> None:
    guest.write_file("/run/own-device.py", OWN_DEVICE.encode())
    result = guest.exec(["/usr/bin/python3", "-B", "/run/own-device.py"], kill_after=300)
    assert result.exitcode == 0, (result.stdout + result.stderr).decode(errors="replace")
    out = json.loads(result.stdout)
    print(f"\nforced io-stall of the agent's own device, agent stopped: ended {out['late']:.3f} s after "
          "its deadline")
    assert out["refused"] and "holds the agent's own files" in out["refused"], out
    assert out["forced"], out
    assert 0 < out["late"] < 1.0, out
    assert out["agent"] == -9, out                      # the keeper killed the stopped agent
    assert out["ended"] == [["reverted", "agent-hung"]], out
    assert dm_table(guest) == original
    workload_resumes(guest)
