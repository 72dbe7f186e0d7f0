"""nftables and tc, run as programs (``nft``, ``tc``): the kernel side of the network fault kinds.

The agent prepares with it (the root qdisc an interface has now) and both the agent and the
keeper run the recipe steps through it (:mod:`.recipes`).  So everything is imported here, at
the top, and nothing is written to disk: ``nft`` reads its script from stdin.

- a partition is one nftables table of pyqga's own, ``inet pyqga-TOKEN``, built from a rule
  (:func:`partition_script`); undo deletes the table, and a table that is not there is undone;
- a netem fault replaces the interface's root qdisc by ``netem`` under a handle of pyqga's;
  undo deletes the root qdisc only while it still has that handle, and the kernel attaches its
  default root qdisc again (what was there before: the preparer refuses anything else unless
  forced).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import subprocess
from collections.abc import Sequence
from typing import Any, NamedTuple

from pyqga.agent.errors import AgentFailure
from pyqga.agent.programs import which

TIMEOUT = 10.0   # seconds a nft or tc call may take
MAX_ITEMS = 256  # peers, ports or netem words in one step
SEARCH_PATH = "/usr/sbin:/sbin:/usr/bin:/bin"
SYS_NET = "/sys/class/net"
TABLE_FAMILY = "inet"
TABLE_RE = re.compile(r"pyqga-[0-9a-f]{8,32}")
IFACE_RE = re.compile(r"[A-Za-z0-9_.:@+-]{1,15}")   # at most IFNAMSIZ - 1, no / and no blanks
PORT_RE = re.compile(r"([0-9]{1,5})(?:-([0-9]{1,5}))?")
HANDLE_RE = re.compile(r"[0-9a-f]{1,4}")
NETEM_WORD_RE = re.compile(r"[a-z0-9.%]{1,16}")
DIRECTIONS = ("both", "in", "out")
PROTOCOLS = ("any", "tcp", "udp")
MODES = ("add", "replace")   # tc qdisc add (fails if someone set a root qdisc meanwhile), or replace (forced)


class ToolError(AgentFailure):
    """nft or tc failed (or is missing); the message is its first line of output."""


class RootQdisc(NamedTuple):
    kind: str
    handle: str      # "8001:"; "0:" for a qdisc the kernel attached by itself


def tool(name: str) -> str | None:
    """The path of ``nft`` or ``tc``, looked up in $PATH and the sbin directories."""
    return which(name, os.environ.get("PATH", "") + ":" + SEARCH_PATH)


def run(name: str, args: Sequence[str], stdin: bytes = b"") -> str:
    """Run ``name args``; its stdout, or :class:`ToolError` with its error's first line."""
    path = tool(name)
    if path is None:
        raise ToolError(f"{name} is not installed (looked in $PATH and {SEARCH_PATH})")
    try:
        proc = subprocess.run([path, *args], input=stdin, capture_output=True, timeout=TIMEOUT,
                              env={"PATH": SEARCH_PATH, "LC_ALL": "C"}, check=False)
    except subprocess.TimeoutExpired:
        raise ToolError(f"{name} {' '.join(args)[:80]} took more than {TIMEOUT:.0f} s") from None
    if proc.returncode != 0:
        text = (proc.stderr or proc.stdout).decode(errors="replace").strip().splitlines()
        first = text[0][:200] if text else f"exit {proc.returncode}"
        raise ToolError(f"{name} {' '.join(args)[:80]}: {first}")
    return proc.stdout.decode(errors="replace")


def interfaces() -> list[str]:
    try:
        return sorted(os.listdir(SYS_NET))
    except OSError:
        return []


def interface_exists(name: str) -> bool:
    return bool(IFACE_RE.fullmatch(name)) and os.path.exists(os.path.join(SYS_NET, name))


# --- nftables --------------------------------------------------------------------------------------

def port_ranges(ports: Sequence[str]) -> list[str]:
    """Ports as nft writes them ("53", "8000-8100"); ValueError naming a bad one."""
    out = []
    for port in ports:
        match = PORT_RE.fullmatch(port)
        low = int(match.group(1)) if match else -1
        high = int(match.group(2) or low) if match else -1
        if not (1 <= low <= high <= 65535):
            raise ValueError(f"{port!r} is not a port (1-65535) or a range LOW-HIGH")
        out.append(port if low != high else str(low))
    return out


def peer_networks(peers: Sequence[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """Peers as networks (an address is a /32 or /128); ValueError naming a bad one."""
    out = []
    for peer in peers:
        try:
            out.append(ipaddress.ip_network(peer, strict=False))
        except ValueError:
            raise ValueError(f"{peer!r} is not an IP address or a CIDR network") from None
    return out


def partition_script(table: str, iface: str, peers: Sequence[str], ports: Sequence[str], protocol: str,
                     direction: str) -> str:
    """The nft script that makes table ``inet TABLE``, dropping what the rule names.

    ``in`` drops packets arriving from the peers (hooks input and forward, source address,
    ``iifname``), ``out`` packets sent to them (output and forward, destination, ``oifname``);
    ``both`` is both.  With ports, a packet matches when its source or its destination port is
    one of them.  An empty part matches everything (no peers: any address)."""
    if not TABLE_RE.fullmatch(table):
        raise ValueError(f"{table!r} is not a pyqga table name")
    if iface and not IFACE_RE.fullmatch(iface):
        raise ValueError(f"{iface!r} is not an interface name")
    if protocol not in PROTOCOLS or direction not in DIRECTIONS:
        raise ValueError(f"protocol {protocol!r} or direction {direction!r} unknown")
    nets = peer_networks(peers)
    ranges = port_ranges(ports)
    v4 = ", ".join(str(n) for n in nets if n.version == 4)
    v6 = ", ".join(str(n) for n in nets if n.version == 6)
    chains: dict[str, list[str]] = {"input": [], "forward": [], "output": []}
    for way, hooks, addr, ifkey in (("in", ("input", "forward"), "saddr", "iifname"),
                                    ("out", ("output", "forward"), "daddr", "oifname")):
        if direction not in (way, "both"):
            continue
        where = f'{ifkey} "{iface}" ' if iface else ""
        hosts = ([f"ip {addr} {{ {v4} }} "] if v4 else []) + ([f"ip6 {addr} {{ {v6} }} "] if v6 else [])
        if not nets:
            hosts = [""]
        proto = {"any": "meta l4proto { tcp, udp } " if ranges else "", "tcp": "meta l4proto tcp ",
                 "udp": "meta l4proto udp "}[protocol]
        listed = ", ".join(ranges)
        port_parts = [f"th {end} {{ {listed} }} " for end in ("sport", "dport")] if ranges else [""]
        rules = [f"{where}{host}{proto}{port}counter drop" for host in hosts for port in port_parts]
        for hook in hooks:
            chains[hook] += rules
    lines = [f"table {TABLE_FAMILY} {table} {{"]
    for hook, rules in chains.items():
        lines.append(f"  chain {hook} {{")
        lines.append(f"    type filter hook {hook} priority filter - 10; policy accept;")
        lines += [f"    {rule}" for rule in rules]
        lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def table_exists(table: str) -> bool:
    return table in run("nft", ["list", "tables", TABLE_FAMILY]).split()


def add_table(script: str) -> None:
    run("nft", ["-f", "-"], stdin=script.encode())


def delete_table(table: str) -> None:
    """Delete ``inet TABLE``; done when it is not there (deleted already, or never made)."""
    try:
        run("nft", ["delete", "table", TABLE_FAMILY, table])
    except ToolError:
        if table_exists(table):
            raise


# --- netem ---------------------------------------------------------------------------------------

def root_qdisc(dev: str) -> RootQdisc | None:
    """The root qdisc of ``dev`` (None if there is no such interface)."""
    if not interface_exists(dev):
        return None
    try:
        shown: Any = json.loads(run("tc", ["-j", "qdisc", "show", "dev", dev, "root"]) or "[]")
    except ToolError:
        if not interface_exists(dev):
            return None
        raise
    except ValueError as e:
        raise ToolError(f"tc -j qdisc show dev {dev}: not JSON ({e})") from None
    for entry in shown if isinstance(shown, list) else []:
        if isinstance(entry, dict) and entry.get("root"):
            return RootQdisc(str(entry.get("kind", "")), str(entry.get("handle", "")))
    return None


def netem_add(dev: str, handle: str, args: Sequence[str], mode: str) -> None:
    """``tc qdisc add|replace dev DEV root handle HANDLE: netem ARGS``."""
    run("tc", ["qdisc", mode, "dev", dev, "root", "handle", f"{handle}:", "netem", *args])


def netem_remove(dev: str, handle: str) -> None:
    """Delete ``dev``'s root qdisc if it is still ours (handle ``HANDLE:``); the kernel then
    attaches its default one.  Done when the interface is gone or its root is not ours."""
    try:
        run("tc", ["qdisc", "del", "dev", dev, "root", "handle", f"{handle}:"])
    except ToolError:
        root = root_qdisc(dev)
        if root is not None and root.handle == f"{handle}:":
            raise
