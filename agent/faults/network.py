"""The network kinds: ``net-partition`` (nftables) and the netem kinds ``net-delay``,
``net-loss``, ``net-duplicate``, ``net-reorder`` and ``net-corrupt`` (tc).

A partition's target is an interface or ``any``; its rule (``peers``, ``ports``, ``protocol``,
``direction``) becomes a table of its own, ``inet pyqga-TOKEN`` (:func:`.nettools.partition_script`),
and its undo deletes that table.  Two partitions never share a table, so they may overlap; the
device two leases may not share is ``nft:TABLE``.

A netem fault's target is an interface; it replaces the interface's root qdisc, and its undo
deletes it while it still has pyqga's handle, so the kernel attaches its default root qdisc again.
That is exactly what was there before only if the root qdisc was the kernel's default (handle
``0:``: noqueue, pfifo_fast, fq_codel, mq with its default children): anything else (someone's
htb, tbf or netem) is refused unless forced, and forced, revert leaves the kernel's default.
The device is ``net:IFACE``: one netem fault an interface.

The agent's control channel (virtio-serial, a serial line or vsock, never IP) is not touched by
any of these, and a rule that names it is refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pyqga.agent.faults import nettools
from pyqga.agent.faults.block import module_missing
from pyqga.agent.faults.kinds import Context, ParamSpec, Preparer, Spec
from pyqga.agent.faults.machine import Refused
from pyqga.agent.faults.tokens import randbelow, token_hex
from pyqga.agent.faults.vocabulary import Kind

ANY = "any"
MAX_DELAY_MS = 60_000
NETEM_KINDS = (Kind.NET_DELAY, Kind.NET_LOSS, Kind.NET_DUPLICATE, Kind.NET_REORDER, Kind.NET_CORRUPT)
CHANNEL_WORDS = ("vsock", "virtio", "serial", "cid:", "hvc", "ttys")
CHANNEL = ("is the agent's control channel: virtio-serial, a serial line or vsock, never IP, so no "
           "partition can cut it (a partition drops IP traffic only); name IP peers, ports or an interface")


def _percent(value: float) -> str:
    return f"{value:.4f}".rstrip("0").rstrip(".") + "%"


def netem_args(kind: Kind, params: Mapping[str, Any]) -> list[str]:
    """The words after ``netem`` for ``kind``'s (checked) parameters."""
    correlation = [_percent(params["correlation"])] if params.get("correlation") else []
    if kind is Kind.NET_DELAY:
        jitter = [f"{params['jitter-ms']}ms"] if params["jitter-ms"] or correlation else []
        return ["delay", f"{params['delay-ms']}ms", *jitter, *(correlation if jitter else [])]
    if kind is Kind.NET_REORDER:   # netem reorders by sending some packets at once, the rest delayed
        return ["delay", f"{params['delay-ms']}ms", "reorder", _percent(params["percent"]), *correlation]
    word = {Kind.NET_LOSS: "loss", Kind.NET_DUPLICATE: "duplicate", Kind.NET_CORRUPT: "corrupt"}[kind]
    return [word, _percent(params["percent"]), *correlation]


def _names_channel(text: str) -> bool:
    return any(word in text.lower() for word in CHANNEL_WORDS)


def _interface(kind: Kind, target: str, allow_any: bool = False) -> str:
    """The interface a target names ("" for ``any``); :class:`Refused` if there is none."""
    if not isinstance(target, str):
        raise Refused(f"{kind.value}: the target is an interface name")
    if _names_channel(target):
        raise Refused(f"{kind.value}: {target[:40]} {CHANNEL}")
    if allow_any and target == ANY:
        return ""
    if not nettools.interface_exists(target):
        known = ", ".join(nettools.interfaces()) or "none"
        also = " (or any)" if allow_any else ""
        raise Refused(f"{kind.value}: no network interface {target[:40]!r}{also}; this guest has: {known}")
    return target


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _partition(target: str, params: Mapping[str, Any], force: bool, context: Context) -> Spec:
    kind = Kind.NET_PARTITION
    iface = _interface(kind, target, allow_any=True)
    peers, ports = _split(params["peers"]), _split(params["ports"])
    for name in ("peers", "ports", "protocol"):
        if _names_channel(params[name]):
            raise Refused(f"{kind.value}: {name} {params[name][:40]!r} {CHANNEL}")
    if params["protocol"] not in nettools.PROTOCOLS:
        raise Refused(f"{kind.value}: protocol must be one of {', '.join(nettools.PROTOCOLS)}, "
                      f"not {params['protocol'][:20]!r}")
    if len(peers) > nettools.MAX_ITEMS or len(ports) > nettools.MAX_ITEMS:
        raise Refused(f"{kind.value}: at most {nettools.MAX_ITEMS} peers and {nettools.MAX_ITEMS} ports")
    try:
        nettools.peer_networks(peers)
        nettools.port_ranges(ports)
    except ValueError as e:
        raise Refused(f"{kind.value}: {e}") from None
    table = "pyqga-" + token_hex(6)
    apply = {"op": "nft-table", "table": table, "iface": iface, "peers": peers, "ports": ports,
             "protocol": params["protocol"], "direction": params["direction"]}
    return Spec(f"nft:{table}", (apply,), ({"op": "nft-delete", "table": table},), params)


def _netem(kind: Kind) -> Preparer:
    def prepare(target: str, params: Mapping[str, Any], force: bool, context: Context) -> Spec:
        dev = _interface(kind, target)
        try:
            root = nettools.root_qdisc(dev)
        except nettools.ToolError as e:
            raise Refused(f"{kind.value}: cannot read {dev}'s root qdisc: {e}") from None
        if root is None:
            raise Refused(f"{kind.value}: no network interface {dev!r} any more")
        mode = "add"
        if root.handle != "0:":
            if not force:
                raise Refused(f"{kind.value}: {dev}'s root qdisc is {root.kind} {root.handle}, someone's; "
                              "revert restores only the kernel's default root qdisc, so this is refused: "
                              "pass force to replace it (revert then leaves the kernel's default)")
            mode = "replace"
        handle = f"{0x1000 + randbelow(0x6fff):x}"
        if f"{handle}:" == root.handle:
            handle = f"{int(handle, 16) + 1:x}"
        apply = {"op": "netem", "dev": dev, "handle": handle, "args": netem_args(kind, params), "mode": mode}
        return Spec(f"net:{dev}", (apply,), ({"op": "netem-remove", "dev": dev, "handle": handle},), params)
    return prepare


def unavailable(kind: Kind) -> str | None:
    """Why ``kind`` cannot run in this guest at all, or None."""
    if kind is Kind.NET_PARTITION:
        if nettools.tool("nft") is None:
            return "nft is not installed (Debian's nftables package)"
        return module_missing("nf_tables", "kernel/net/netfilter")
    if nettools.tool("tc") is None:
        return "tc is not installed (Debian's iproute2 package)"
    return module_missing("sch_netem", "kernel/net/sched")


def _correlation() -> ParamSpec:
    return ParamSpec("correlation", float, 0.0, "percent: how much each packet's chance depends on the "
                     "previous one's (netem's correlation)", minimum=0, maximum=100)


def _chance(what: str, default: float) -> ParamSpec:
    return ParamSpec("percent", float, default, f"percent of packets {what}", minimum=0, maximum=100)


PARAMS: dict[Kind, tuple[ParamSpec, ...]] = {
    Kind.NET_PARTITION: (
        ParamSpec("peers", str, "", "IP addresses or CIDR networks, comma-separated (IPv4 and IPv6); "
                  "empty: every address"),
        ParamSpec("ports", str, "", "TCP/UDP ports or LOW-HIGH ranges, comma-separated; a packet "
                  "matches if its source or destination port is one; empty: every packet"),
        ParamSpec("protocol", str, "any", "any, tcp or udp"),
        ParamSpec("direction", str, "both", "in (from the peers), out (to the peers) or both",
                  choices=nettools.DIRECTIONS),
    ),
    Kind.NET_DELAY: (
        ParamSpec("delay-ms", int, 100, "milliseconds added to every packet sent", minimum=0,
                  maximum=MAX_DELAY_MS),
        ParamSpec("jitter-ms", int, 0, "milliseconds of random variation around the delay", minimum=0,
                  maximum=MAX_DELAY_MS),
        _correlation(),
    ),
    Kind.NET_LOSS: (_chance("dropped", 10.0), _correlation()),
    Kind.NET_DUPLICATE: (_chance("sent twice", 10.0), _correlation()),
    Kind.NET_REORDER: (
        _chance("sent at once, ahead of the others (which wait delay-ms)", 25.0), _correlation(),
        ParamSpec("delay-ms", int, 10, "milliseconds the packets that are not reordered wait", minimum=1,
                  maximum=MAX_DELAY_MS),
    ),
    Kind.NET_CORRUPT: (_chance("with one bit flipped", 10.0), _correlation()),
}
PREPARERS: dict[Kind, Preparer] = {Kind.NET_PARTITION: _partition,
                                   **{kind: _netem(kind) for kind in NETEM_KINDS}}
