"""The network fault kinds in a real guest, measured, and the partition proof (issue 21).

Inside the guest (never on this machine): two network namespaces, ``a`` (the client,
10.91.1.2) and ``b`` (a UDP echo server, 10.91.2.2), each joined to the guest's own namespace by
a veth pair (``va``, ``vb``), which routes between them.  The agent under test (``pyqga-virtio``,
the *subject*) runs in the guest's namespace and faults ``vb`` (netem on the way to the server)
or partitions the server's address (nftables, forward hook); the *hands* (``pyqga-serial``) set
things up and run the client, which sends numbered UDP probes and reports, on the guest's
CLOCK_MONOTONIC (the clock of the timeline's ``mono``), when it sent each and what came back.

Each kind must measurably do what it says, the root qdisc must read back identical after
revert (``tc qdisc show``), nothing must be left after a refusal, and the subject must answer
on virtio-serial while every fault holds: its channel is not IP, so no network fault reaches it.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Iterator
from typing import Any

import pytest

from pyqga.host_client import AgentCallError, AgentClient
from tests.rig.guest_shell import output_json, sh
from tests.rig.machine import GuestVM
from tests.vm.faults.guest import HANDS, SUBJECT

pytestmark = pytest.mark.root

IP, TC = "/usr/bin/ip", "/usr/sbin/tc"   # busybox sh runs its own ip and tc applets otherwise
SERVER_IP, PORT = "10.91.2.2", 7000
CLIENT = "/run/net-client.py"
SERVER = "/run/net-server.py"
SETUP = f"""
{IP} netns add a
{IP} netns add b
{IP} link add va type veth peer name va1 netns a
{IP} link add vb type veth peer name vb1 netns b
{IP} addr add 10.91.1.1/24 dev va
{IP} addr add 10.91.2.1/24 dev vb
{IP} link set va up
{IP} link set vb up
{IP} -n a addr add 10.91.1.2/24 dev va1
{IP} -n b addr add {SERVER_IP}/24 dev vb1
for ns in a b; do
    {IP} -n $ns link set lo up
    {IP} -n $ns link set v${{ns}}1 up
done
{IP} -n a route add default via 10.91.1.1
{IP} -n b route add default via 10.91.2.1
echo 1 > /proc/sys/net/ipv4/ip_forward
"""
SERVER_SOURCE = f"""
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", {PORT}))
while True:
    data, peer = s.recvfrom(4096)
    s.sendto(data, peer)
"""
# python3 CLIENT JSON: `count` probes, one every `interval` s, then `wait` s for late replies.
# Prints {"sent": [mono of probe i], "got": [[i, mono, payload intact], ...]}.
CLIENT_SOURCE = """
import json, select, socket, sys, time
a = json.loads(sys.argv[1])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect((a["host"], a["port"]))
payload = bytes(range(256))[:a["size"]]
sent, got = [], []
n, interval = a["count"], a["interval"]
next_send = time.monotonic()
end = None
while True:
    now = time.monotonic()
    if len(sent) < n and now >= next_send:
        try:
            s.send(len(sent).to_bytes(4, "big") + payload)
        except OSError:
            pass
        sent.append(now)
        next_send += interval
        if len(sent) == n:
            end = now + a["wait"]
    if end is not None and now >= end:
        break
    until = end if end is not None else next_send
    if select.select([s], [], [], max(0.0, until - time.monotonic()))[0]:
        try:
            data = s.recv(4096)
        except OSError:
            continue
        got.append([int.from_bytes(data[:4], "big"), time.monotonic(), data[4:] == payload])
print(json.dumps({"sent": sent, "got": got}))
"""


class Net:
    """The guest, its hands and the subject."""

    def __init__(self, vm: GuestVM, hands: AgentClient, subject: AgentClient) -> None:
        self.vm, self.hands, self.subject = vm, hands, subject

    def start_probes(self, count: int, interval: float, wait: float = 0.5, size: int = 64) -> int:
        spec = {"host": SERVER_IP, "port": PORT, "count": count, "interval": interval, "wait": wait,
                "size": size}
        argv = ["netns", "exec", "a", "/usr/bin/python3", "-B", CLIENT, json.dumps(spec)]
        request = {"path": IP, "arg": argv, "capture-output": True}
        pid: int = self.hands.call("guest-exec", request)["pid"]
        return pid

    def probes(self, pid: int, limit: float = 120.0) -> dict[str, Any]:
        result: dict[str, Any] = output_json(self.hands, pid, limit, "the client")
        return result

    def probe(self, count: int, interval: float, wait: float = 0.5, size: int = 64,
              ping_subject: bool = True) -> dict[str, Any]:
        """Run the client to its end; meanwhile the subject must answer on virtio-serial."""
        pid = self.start_probes(count, interval, wait, size)
        if ping_subject:
            self.subject_answers(count * interval)
        return self.probes(pid)

    def subject_answers(self, seconds: float) -> float:
        """Ping the subject for ``seconds``; every ping must be answered; the slowest, in s."""
        slowest, end = 0.0, time.monotonic() + seconds
        while time.monotonic() < end:
            asked = time.monotonic()
            self.subject.call("guest-ping", timeout=5)
            slowest = max(slowest, time.monotonic() - asked)
            time.sleep(0.05)
        return slowest

    def qdiscs(self) -> str:
        return sh(self.hands, f"{TC} qdisc show")

    def tables(self) -> str:
        return sh(self.hands, "nft list tables")


@pytest.fixture(scope="module")
def net(fault_vm: GuestVM) -> Iterator[Net]:
    started = time.monotonic()
    with fault_vm.client(HANDS, timeout=120) as hands, fault_vm.client(SUBJECT, timeout=60) as subject:
        sh(hands, SETUP)
        hands.write_file(CLIENT, CLIENT_SOURCE.encode())
        hands.write_file(SERVER, SERVER_SOURCE.encode())
        server = ["netns", "exec", "b", "/usr/bin/python3", "-B", SERVER]
        hands.call("guest-exec", {"path": IP, "arg": server})
        rig = Net(fault_vm, hands, subject)
        first = rig.probe(5, 0.1, ping_subject=False)   # the server is up before the tests start
        for _ in range(50):
            if first["got"]:
                break
            time.sleep(0.2)
            first = rig.probe(5, 0.1, ping_subject=False)
        assert first["got"], "the echo server in namespace b never answered"
        yield rig
        print(f"\nnetwork fault tests: {time.monotonic() - started:.1f} s in all")


def replies(result: dict[str, Any]) -> dict[int, list[float]]:
    """Probe number -> the times its replies came back."""
    out: dict[int, list[float]] = {}
    for seq, at, _intact in result["got"]:
        out.setdefault(seq, []).append(at)
    return out


def rtts(result: dict[str, Any]) -> list[float]:
    return [times[0] - result["sent"][seq] for seq, times in replies(result).items()]


def inject(net: Net, kind: str, target: str, params: dict[str, Any], duration: float = 60) -> str:
    lease: dict[str, Any] = net.subject.call("guest-fault-inject", {"kind": kind, "target": target,
                                                                    "duration": duration, "params": params})
    return str(lease["id"])


def revert(net: Net, lease: str) -> None:
    assert net.subject.call("guest-fault-revert", {"id": lease}) == 1
    assert net.subject.call("guest-fault-list") == []


def test_net_delay_adds_its_delay_and_revert_restores_the_qdisc(net: Net) -> None:
    before = net.qdiscs()
    base = statistics.median(rtts(net.probe(40, 0.02, ping_subject=False)))
    lease = inject(net, "net-delay", "vb", {"delay-ms": 200, "jitter-ms": 10})
    assert "netem" in sh(net.hands, f"{TC} qdisc show dev vb")
    delayed = statistics.median(rtts(net.probe(40, 0.02)))
    revert(net, lease)
    assert net.qdiscs() == before
    after = statistics.median(rtts(net.probe(40, 0.02, ping_subject=False)))
    print(f"\nnet-delay 200 ms: median RTT {base * 1000:.1f} ms -> {delayed * 1000:.1f} ms -> "
          f"{after * 1000:.1f} ms after revert")
    assert 0.18 < delayed - base < 0.30
    assert after < base + 0.05


def test_net_loss_drops_about_its_share(net: Net) -> None:
    before = net.qdiscs()
    lease = inject(net, "net-loss", "vb", {"percent": 30})
    result = net.probe(300, 0.01)
    revert(net, lease)
    assert net.qdiscs() == before
    lost = 1 - len(replies(result)) / len(result["sent"])
    print(f"\nnet-loss 30 %: {lost:.1%} of {len(result['sent'])} probes lost")
    assert 0.18 < lost < 0.42


def test_net_duplicate_sends_about_its_share_twice(net: Net) -> None:
    before = net.qdiscs()
    lease = inject(net, "net-duplicate", "vb", {"percent": 50})
    result = net.probe(200, 0.01)
    revert(net, lease)
    assert net.qdiscs() == before
    seen = replies(result)
    twice = sum(1 for times in seen.values() if len(times) > 1) / len(result["sent"])
    print(f"\nnet-duplicate 50 %: {twice:.1%} of probes answered twice")
    assert 0.35 < twice < 0.65


def test_net_reorder_sends_some_ahead(net: Net) -> None:
    before = net.qdiscs()
    lease = inject(net, "net-reorder", "vb", {"percent": 50, "delay-ms": 100})
    result = net.probe(200, 0.01)
    revert(net, lease)
    assert net.qdiscs() == before
    arrival = [seq for seq, _at, _intact in result["got"]]
    overtaken = sum(1 for i, seq in enumerate(arrival) if i and seq < max(arrival[:i]))
    print(f"\nnet-reorder 50 %: {overtaken} of {len(arrival)} replies arrived after a later probe's")
    assert overtaken / len(arrival) > 0.2


def test_net_corrupt_damages_about_its_share(net: Net) -> None:
    before = net.qdiscs()
    lease = inject(net, "net-corrupt", "vb", {"percent": 50})
    result = net.probe(200, 0.01, size=512)
    revert(net, lease)
    assert net.qdiscs() == before
    intact = {seq for seq, _at, ok in result["got"] if ok}
    damaged = 1 - len(intact) / len(result["sent"])
    print(f"\nnet-corrupt 50 %: {damaged:.1%} of probes lost or damaged (a flipped bit fails a checksum)")
    assert 0.25 < damaged < 0.75
    clean = net.probe(50, 0.01, ping_subject=False)
    assert len({seq for seq, _at, ok in clean["got"] if ok}) >= 48


def test_a_partition_drops_the_peer_and_revert_heals(net: Net) -> None:
    assert "pyqga-" not in net.tables()
    lease = inject(net, "net-partition", "any", {"peers": SERVER_IP})
    table = next(word for word in net.tables().split() if word.startswith("pyqga-"))
    cut = net.probe(30, 0.02)
    revert(net, lease)
    assert "pyqga-" not in net.tables()
    healed = net.probe(30, 0.02, ping_subject=False)
    print(f"\npartition (table {table}): {len(replies(cut))} of 30 probes answered; "
          f"healed: {len(replies(healed))}")
    assert replies(cut) == {}
    assert len(replies(healed)) >= 29


def test_a_partition_of_one_port_leaves_the_others(net: Net) -> None:
    lease = inject(net, "net-partition", "va", {"ports": "7001", "direction": "in"})
    other_port = net.probe(20, 0.02, ping_subject=False)
    revert(net, lease)
    lease = inject(net, "net-partition", "va", {"ports": str(PORT), "direction": "in", "protocol": "udp"})
    this_port = net.probe(20, 0.02, ping_subject=False)
    revert(net, lease)
    assert len(replies(other_port)) >= 19 and replies(this_port) == {}


BAD_INPUT = [
    ("net-delay", "eth9", {}, "net-delay: no network interface 'eth9'; this guest has: lo, va, vb"),
    ("net-partition", "eth9", {}, "no network interface 'eth9' (or any)"),
    ("net-partition", "vsock", {}, "vsock is the agent's control channel: virtio-serial, a serial line or "
                                   "vsock, never IP"),
    ("net-partition", "any", {"peers": "vsock:2"}, "is the agent's control channel"),
    ("net-loss", "vb", {"percent": 101}, "net-loss: percent must be between 0 and 100, not 101"),
    ("net-delay", "vb", {"delay-ms": 600_000}, "delay-ms must be between 0 and 60000"),
    ("net-partition", "any", {"peers": "10.0.0.0/33"}, "'10.0.0.0/33' is not an IP address or a CIDR"),
]


def test_bad_input_is_refused_and_leaves_nothing(net: Net) -> None:
    before = net.qdiscs() + net.tables()
    for kind, target, params, message in BAD_INPUT:
        with pytest.raises(AgentCallError) as caught:
            inject(net, kind, target, params)
        assert message in str(caught.value) and "\n" not in str(caught.value), caught.value
    assert net.qdiscs() + net.tables() == before
    assert net.subject.call("guest-fault-list") == []


def test_a_root_qdisc_someone_set_is_kept_unless_forced(net: Net) -> None:
    sh(net.hands, f"{TC} qdisc add dev va root handle 1: netem delay 1ms")   # someone else's netem
    try:
        theirs = net.qdiscs()
        with pytest.raises(AgentCallError, match="va's root qdisc is netem 1:, someone's"):
            inject(net, "net-delay", "va", {})
        assert net.qdiscs() == theirs
        lease = net.subject.call("guest-fault-inject", {"kind": "net-delay", "target": "va", "duration": 30,
                                                        "force": True})["id"]
        assert "netem" in sh(net.hands, f"{TC} qdisc show dev va")
        revert(net, lease)   # forced: the kernel's default comes back, not theirs (documented)
        assert sh(net.hands, f"{TC} qdisc show dev va root").startswith("qdisc noqueue 0: root")
    finally:
        sh(net.hands, f"{TC} qdisc del dev va root 2>/dev/null || true")


def test_the_partition_proof_a_seeded_plan(net: Net) -> None:
    """A plan partitions the server from the client at a seeded time and heals it; every probe
    that failed was sent inside the partition's window (as the timeline has it), nearly every
    probe sent inside it failed, and the agent answered on virtio-serial throughout."""
    interval, timeout = 0.05, 0.3
    plan = net.subject.call("guest-fault-plan", {"seed": 21, "steps": [
        {"at": {"between": [1.0, 2.0]}, "kind": "net-partition", "target": "any",
         "duration": {"between": [2.0, 3.0]}, "params": {"peers": SERVER_IP}}]})
    (step,) = plan["schedule"]
    total = step["at"] + step["duration"] + 1.5
    pid = net.start_probes(int(total / interval), interval, wait=timeout)
    slowest = net.subject_answers(total)
    result = net.probes(pid)
    events = net.subject.call("guest-fault-events", {"since": 0})["events"]
    mine = [e for e in events if e.get("plan") == plan["id"] and e["kind"] == "net-partition"]
    fired = next(e["mono"] for e in mine if e["event"] == "fired")
    ended = next(e["mono"] for e in mine if e["event"] in ("expired", "reverted"))
    answered = replies(result)
    failed = [t for seq, t in enumerate(result["sent"])
              if not any(at - t <= timeout for at in answered.get(seq, []))]
    inside = [t for t in result["sent"] if fired <= t <= ended - timeout]
    print(f"\npartition proof: plan {plan['hash'][:12]}, at {step['at']:.2f} s for {step['duration']:.2f} s; "
          f"{len(failed)} of {len(result['sent'])} probes failed, all within [{fired:.2f}, {ended:.2f}]; "
          f"slowest guest-ping {slowest * 1000:.0f} ms")
    assert failed, "no probe failed: the partition did not cut anything"
    assert all(fired - timeout - 0.05 <= t <= ended + 0.05 for t in failed), (fired, ended, failed)
    assert sum(1 for t in inside if t in failed) >= 0.95 * len(inside)
    assert "pyqga-" not in net.tables()
    assert net.subject.call("guest-fault-list") == []
