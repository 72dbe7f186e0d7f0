"""guest-network-get-interfaces, guest-network-get-route, guest-get-diskstats, guest-get-cpustats
and guest-get-load: differential against the real qemu-ga on this machine, at the same moment.

qemu-ga and pyqga run side by side on unix sockets (module fixture); each case asks both one
after the other and compares values, not only shapes.  Interface names, MACs and addresses,
diskstats names, major and minor, and the cpustats CPU count must be equal; counters that move
between the two reads are compared as "qemu-ga's first sample <= ours <= qemu-ga's second
sample" (qemu-ga asked again after us), which makes the comparison exact for counters that did
not move.

Debian's qemu-ga is 7.2: it has no guest-network-get-route (9.1) and no guest-get-load (10.0).
Those two are checked against /proc/net/route, /proc/net/ipv6_route and /proc/loadavg read
directly at the same moment, and qemu-ga 7.2 is asserted to answer CommandNotFound for them.
The parsers are also tested on fixed texts: the old 4-counter diskstats format, a short
/proc/stat line, an IPv6 metric of ffffffff.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pyqga.agent.commands import network, stats
from pyqga.agent.registry import build_registry
from tests.rig.agent_process import PyqgaAgent
from tests.rig.qemu_ga import QemuGa, require_qemu_ga

NEW_COMMANDS = ("guest-network-get-interfaces", "guest-network-get-route", "guest-get-diskstats",
                "guest-get-cpustats", "guest-get-load")
_ids = itertools.count(1)


def ask(sock_factory: Any, command: str) -> dict[str, Any]:
    """One request on a fresh connection; the parsed reply (``return`` or ``error``)."""
    with sock_factory() as sock:
        sock.settimeout(10.0)
        sock.sendall(json.dumps({"execute": command, "id": next(_ids)}).encode() + b"\n")
        data = b""
        while b"\n" not in data:
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            data += chunk
    return json.loads(data.split(b"\n", 1)[0])


@pytest.fixture(scope="module")
def peers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Any]]:
    """(qemu-ga's connect, pyqga's connect)."""
    require_qemu_ga()
    with QemuGa(tmp_path_factory.mktemp("qga")) as qga, \
            PyqgaAgent(tmp_path_factory.mktemp("pyqga")) as ours:
        yield qga.connect, ours.connect


@pytest.fixture(scope="module")
def ours(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with PyqgaAgent(tmp_path_factory.mktemp("pyqga-only")) as agent:
        yield agent.connect


def three_samples(peers: tuple[Any, Any], command: str) -> tuple[Any, Any, Any]:
    """qemu-ga, pyqga, qemu-ga again: ours must lie between the two qemu-ga samples."""
    qga, mine = peers
    first, middle, last = ask(qga, command), ask(mine, command), ask(qga, command)
    for reply in (first, middle, last):
        assert "return" in reply, reply
    return first["return"], middle["return"], last["return"]


def assert_between(low: dict[str, int], value: dict[str, int], high: dict[str, int], what: str,
                   slack: dict[str, int] | None = None) -> None:
    """low <= value <= high for every key, give or take ``slack[key]``."""
    assert set(value) == set(low) == set(high), what
    for key in value:
        give = (slack or {}).get(key, 0)
        assert low[key] - give <= value[key] <= high[key] + give, \
            f"{what}: {key} {low[key]} <= {value[key]} <= {high[key]}"


pytestmark_qga = pytest.mark.qemu_ga


# --- registry -------------------------------------------------------------------------------


def test_new_commands_are_registered_read_only_and_on_the_loop() -> None:
    """They only read procfs, sysfs and utmp (never waiting, even on a frozen filesystem): the
    connection loop answers them, as qemu-ga does, without a hand-off to a thread."""
    registry = build_registry()
    for name in NEW_COMMANDS:
        command = registry.get(name)
        assert command is not None, name
        assert not command.blocking and not command.allowed_while_frozen and not command.params
        assert command.success_response


def test_new_commands_can_be_disabled_with_b(tmp_path: Path) -> None:
    with PyqgaAgent(tmp_path, ["-b", ",".join(NEW_COMMANDS)]) as agent:
        for name in NEW_COMMANDS:
            reply = ask(agent.connect, name)
            assert reply["error"]["class"] == "CommandNotFound", reply
            assert "disabled" in reply["error"]["desc"]
        info = ask(agent.connect, "guest-info")["return"]
        enabled = {c["name"]: c["enabled"] for c in info["supported_commands"]}
        assert all(enabled[name] is False for name in NEW_COMMANDS)


# --- guest-network-get-interfaces -----------------------------------------------------------


@pytestmark_qga
def test_interfaces_match_qemu_ga(peers: tuple[Any, Any]) -> None:
    first, mine, last = three_samples(peers, "guest-network-get-interfaces")

    def identity(interfaces: list[dict[str, Any]]) -> list[Any]:
        return [(i["name"], i.get("hardware-address"), i.get("ip-addresses"), "statistics" in i)
                for i in interfaces]

    # Same interfaces in the same order, same MACs, same addresses with type and prefix.
    assert identity(mine) == identity(first) == identity(last)
    assert any(i.get("ip-addresses") for i in mine)
    for low, value, high in zip(first, mine, last, strict=True):
        if "statistics" in value:
            assert_between(low["statistics"], value["statistics"], high["statistics"], value["name"])


def test_interfaces_against_the_kernel(ours: Any) -> None:
    """Independent of qemu-ga: names from /sys/class/net, MACs from its address files, the
    addresses from /proc/net/if_inet6 and the loopback's 127.0.0.1/8."""
    interfaces = ask(ours, "guest-network-get-interfaces")["return"]
    by_name = {i["name"]: i for i in interfaces}
    assert set(by_name) == set(os.listdir("/sys/class/net"))
    for name, info in by_name.items():
        mac = Path(f"/sys/class/net/{name}/address").read_text().strip()
        if len(mac) == 17:
            assert info["hardware-address"] == mac, name
    if "lo" in by_name:
        loopback = {"ip-address": "127.0.0.1", "ip-address-type": "ipv4", "prefix": 8}
        assert loopback in by_name["lo"]["ip-addresses"]
    if os.path.exists("/proc/net/if_inet6"):
        for line in Path("/proc/net/if_inet6").read_text().splitlines():
            hex_address, _index, prefix, _scope, _flags, name = line.split()
            address = socket.inet_ntop(socket.AF_INET6, bytes.fromhex(hex_address))
            assert {"ip-address": address, "ip-address-type": "ipv6", "prefix": int(prefix, 16)} \
                in by_name[name]["ip-addresses"]


# --- guest-network-get-route ----------------------------------------------------------------


@pytestmark_qga
def test_qemu_ga_72_has_no_route_or_load(peers: tuple[Any, Any]) -> None:
    """Why those two are tested against /proc: the peer predates them."""
    qga, _ = peers
    for name in ("guest-network-get-route", "guest-get-load"):
        assert ask(qga, name)["error"]["class"] == "CommandNotFound"


def test_routes_against_proc(ours: Any) -> None:
    before = Path("/proc/net/route").read_text().splitlines()[1:]
    before6 = Path("/proc/net/ipv6_route").read_text().splitlines()
    routes = ask(ours, "guest-network-get-route")["return"]
    v4 = [r for r in routes if r["version"] == 4]
    v6 = [r for r in routes if r["version"] == 6]
    assert routes == v4 + v6  # IPv4 first, as qemu
    assert len(v4) == len(before) and len(v6) == len(before6)
    for route, line in zip(v4, before, strict=True):
        f = line.split()
        assert route["iface"] == f[0]
        assert route["destination"] == socket.inet_ntop(socket.AF_INET, bytes.fromhex(f[1])[::-1])
        assert route["gateway"] == socket.inet_ntop(socket.AF_INET, bytes.fromhex(f[2])[::-1])
        assert route["mask"] == socket.inet_ntop(socket.AF_INET, bytes.fromhex(f[7])[::-1])
        assert route["flags"] == int(f[3], 16) and route["metric"] == int(f[6])
        assert set(route) == {"iface", "destination", "metric", "gateway", "mask", "irtt", "flags",
                              "refcnt", "use", "window", "mtu", "version"}
    for route, line in zip(v6, before6, strict=True):
        f = line.split()
        assert route["iface"] == f[9]
        assert route["destination"] == socket.inet_ntop(socket.AF_INET6, bytes.fromhex(f[0]))
        assert route["nexthop"] == socket.inet_ntop(socket.AF_INET6, bytes.fromhex(f[4]))
        assert route["desprefixlen"] == str(int(f[1], 16))
        assert set(route) == {"iface", "destination", "metric", "flags", "refcnt", "use",
                              "desprefixlen", "source", "srcprefixlen", "nexthop", "version"}
    if any(r["destination"] == "0.0.0.0" and r["mask"] == "0.0.0.0" for r in v4):
        assert any(r["gateway"] != "0.0.0.0" for r in v4)


def test_route_parser_keeps_qemus_c_int_conversions() -> None:
    v4 = "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT\n" \
         "eth0\t0001A8C0\t0101A8C0\t0003\t0\t0\t100\t00FFFFFF\t1500\t0\t0\n"
    v6 = ("00000000000000000000000000000000 00 00000000000000000000000000000000 00 "
          "00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo\n"
          "00000000000000000000000000000001 80 00000000000000000000000000000000 00 "
          "00000000000000000000000000000000 00000000 00000002 00000000 80200001       lo\n")
    routes = network._ipv4_routes(v4.splitlines()) + network._ipv6_routes(v6.splitlines())
    assert routes[0]["destination"] == "192.168.1.0" and routes[0]["gateway"] == "192.168.1.1"
    assert routes[0]["mask"] == "255.255.255.0" and routes[0]["metric"] == 100 and routes[0]["mtu"] == 1500
    assert routes[1]["metric"] == -1 and routes[1]["flags"] == 0x200200
    assert routes[2]["destination"] == "::1" and routes[2]["desprefixlen"] == "128"
    assert routes[2]["flags"] == (0x80200001 - (1 << 32)) % (1 << 64)  # int -> uint64, as qemu


# --- guest-get-diskstats --------------------------------------------------------------------


@pytestmark_qga
def test_diskstats_match_qemu_ga(peers: tuple[Any, Any]) -> None:
    first, mine, last = three_samples(peers, "guest-get-diskstats")
    names = [(d["name"], d["major"], d["minor"]) for d in mine]
    # Devices can come and go while other tests run (loop devices): compare where all three agree.
    common = set(names) & {(d["name"], d["major"], d["minor"]) for d in first} \
        & {(d["name"], d["major"], d["minor"]) for d in last}
    assert common, "no block device seen by both agents"
    assert len(common) >= len(names) - 4, (names, first)
    by_key = [{(d["name"], d["major"], d["minor"]): d["stats"] for d in sample}
              for sample in (first, mine, last)]
    for key in sorted(common):
        low, value, high = (sample[key] for sample in by_key)
        assert set(value) == set(low), key
        # Counters grow; ios-pgr (I/O in flight) may go either way.
        assert_between({k: v for k, v in low.items() if k != "ios-pgr"},
                       {k: v for k, v in value.items() if k != "ios-pgr"},
                       {k: v for k, v in high.items() if k != "ios-pgr"}, str(key))


def test_diskstats_parser_formats() -> None:
    text = ("   8       0 sda 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17\n"
            "   8       1 sda1 10 20 30 40\n"
            "   8       2 sda2 1 2 3 4 5 6 7 8 9 10 11\n"
            "   8       3 sda3 1 2\n")
    disks = stats.parse_diskstats(text)
    assert [d["name"] for d in disks] == ["sda", "sda1", "sda2"]
    assert disks[0]["stats"] == {
        "read-ios": 1, "read-merges": 2, "read-sectors": 3, "read-ticks": 4, "write-ios": 5,
        "write-merges": 6, "write-sectors": 7, "write-ticks": 8, "ios-pgr": 9, "total-ticks": 10,
        "weight-ticks": 11, "discard-ios": 12, "discard-merges": 13, "discard-sectors": 14,
        "discard-ticks": 15, "flush-ios": 16, "flush-ticks": 17}
    assert disks[1]["stats"] == {"read-ios": 10, "read-sectors": 20, "write-ios": 30, "write-sectors": 40}
    assert "discard-ios" not in disks[2]["stats"] and disks[2]["stats"]["weight-ticks"] == 11


# --- guest-get-cpustats ---------------------------------------------------------------------


@pytestmark_qga
def test_cpustats_match_qemu_ga(peers: tuple[Any, Any]) -> None:
    first, mine, last = three_samples(peers, "guest-get-cpustats")
    assert [c["cpu"] for c in mine] == [c["cpu"] for c in first] == [c["cpu"] for c in last]
    assert len(mine) == sum(1 for line in Path("/proc/stat").read_text().splitlines()
                            if line.startswith("cpu") and line.split()[0] != "cpu")
    for low, value, high in zip(first, mine, last, strict=True):
        assert value["type"] == low["type"] == "linux"
        assert_between({k: v for k, v in low.items() if k != "type"},
                       {k: v for k, v in value.items() if k != "type"},
                       {k: v for k, v in high.items() if k != "type"}, f"cpu{value['cpu']}",
                       # proc(5): iowait may decrease; idle is not strictly monotonic under NO_HZ.
                       slack={"iowait": 1000, "idle": 1000})


def test_cpustats_parser_short_lines() -> None:
    text = "cpu  1 2 3 4\ncpu0 100 200 300 400 500 600\ncpu1 100 200 300 400\nintr 5\n"
    cpus = stats.parse_cpustats(text, clk_tck=100)
    assert cpus[0] == {"type": "linux", "cpu": 0, "user": 1000, "nice": 2000, "system": 3000,
                       "idle": 4000, "iowait": 5000, "irq": 6000, "softirq": 0}
    assert cpus[1] == {"type": "linux", "cpu": 1, "user": 1000, "nice": 2000, "system": 3000, "idle": 4000}


# --- guest-get-load -------------------------------------------------------------------------


def test_load_against_proc_loadavg(ours: Any) -> None:
    before = [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    load = ask(ours, "guest-get-load")["return"]
    after = [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    assert set(load) == {"load1m", "load5m", "load15m"}
    for key, low, high in zip(("load1m", "load5m", "load15m"), before, after, strict=True):
        # /proc/loadavg rounds to 2 decimals; the average moves every 5 s.
        assert min(low, high) - 0.5 <= load[key] <= max(low, high) + 0.5, (key, load, before, after)
