"""``guest-network-get-interfaces`` and ``guest-network-get-route``, as qemu-ga answers them.

``guest-network-get-interfaces`` walks libc's ``getifaddrs`` list, as qemu-ga does
(``qga/commands-posix.c``): Python has no ``getifaddrs``, so it is called through ctypes (bound
once, at import).  An interface appears at its first entry in that list, in the kernel's order;
its ``hardware-address`` comes from ``SIOCGIFHWADDR`` (left out when that fails, as qemu-ga
since 7.1); each AF_INET/AF_INET6 entry adds ``{"ip-address", "ip-address-type", "prefix"}``
with the prefix counted from the netmask's bits; ``statistics`` (from ``/proc/net/dev``) is
given only to interfaces that have an address, because qemu-ga reads them only there.

``guest-network-get-route`` (qemu 9.1, ``qga/commands-linux.c``) parses ``/proc/net/route``
(``gateway``, ``mask``, ``mtu``, ``window``, ``irtt``; ``version`` 4) and
``/proc/net/ipv6_route`` (``source``, ``nexthop``, ``desprefixlen`` and ``srcprefixlen`` as
decimal strings; ``version`` 6) with qemu's conversions: IPv6 metric, refcnt and use are read
as hex into a C ``int``, so a metric of ``ffffffff`` is ``-1``, and flags with the top bit set
(``80200001``, local routes) reach the ``uint64`` field sign-extended
(18446744071564165121), as in qemu.

Where **we** differ from qemu-ga, deliberately: when ``/proc/net/ipv6_route`` does not exist
(IPv6 disabled at boot) we answer with the IPv4 routes; qemu-ga answers
``open("/proc/net/ipv6_route"): No such file or directory`` and no routes at all.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import socket
import struct
from typing import TYPE_CHECKING, Any

from pyqga.agent.commands.kernel_files import read_kernel_file
from pyqga.agent.registry import Command
from pyqga.protocol.errors import command_failed

if TYPE_CHECKING:
    from pyqga.agent.state import AgentState

PROC_NET_DEV = "/proc/net/dev"
PROC_NET_ROUTE = "/proc/net/route"
PROC_NET_IPV6_ROUTE = "/proc/net/ipv6_route"
SIOCGIFHWADDR = 0x8927
IFNAMSIZ = 16


class _Sockaddr(ctypes.Structure):
    _fields_ = [("sa_family", ctypes.c_ushort), ("sa_data", ctypes.c_ubyte * 14)]


class _Ifaddrs(ctypes.Structure):
    pass


_Ifaddrs._fields_ = [
    ("ifa_next", ctypes.POINTER(_Ifaddrs)),
    ("ifa_name", ctypes.c_char_p),
    ("ifa_flags", ctypes.c_uint),
    ("ifa_addr", ctypes.POINTER(_Sockaddr)),
    ("ifa_netmask", ctypes.POINTER(_Sockaddr)),
    ("ifa_ifu", ctypes.POINTER(_Sockaddr)),
    ("ifa_data", ctypes.c_void_p),
]

_libc = ctypes.CDLL(None, use_errno=True)  # the libc this process already has
_getifaddrs = _libc.getifaddrs
_getifaddrs.argtypes = [ctypes.POINTER(ctypes.POINTER(_Ifaddrs))]
_getifaddrs.restype = ctypes.c_int
_freeifaddrs = _libc.freeifaddrs
_freeifaddrs.argtypes = [ctypes.POINTER(_Ifaddrs)]
_freeifaddrs.restype = None

# Offsets of the address inside sockaddr_in / sockaddr_in6, and its length.
_ADDRESS_AT: dict[int, tuple[int, int]] = {socket.AF_INET: (4, 4), socket.AF_INET6: (8, 16)}


def _sockaddr_bytes(pointer: Any, family: int) -> bytes:
    offset, length = _ADDRESS_AT[family]
    return ctypes.string_at(ctypes.addressof(pointer.contents) + offset, length)


def _hardware_address(sock: socket.socket, name: bytes) -> str | None:
    """``SIOCGIFHWADDR``; None where the interface has none (qemu-ga leaves the field out)."""
    request = struct.pack("16s16x", name[:IFNAMSIZ - 1])
    try:
        reply = fcntl.ioctl(sock.fileno(), SIOCGIFHWADDR, request)
    except OSError:
        return None
    return ":".join(f"{b:02x}" for b in reply[18:24])  # ifr_name[16], sa_family[2], sa_data


def read_net_dev(path: str = PROC_NET_DEV) -> dict[str, dict[str, int]]:
    """``/proc/net/dev`` as qemu's ``guest_get_network_stats`` reads a line: name, colon,
    16 numbers of which it keeps the 4 receive and 4 transmit counters it reports."""
    stats: dict[str, dict[str, int]] = {}
    try:
        lines = read_kernel_file(path).splitlines()
    except OSError:
        return stats
    for line in lines:
        name, colon, rest = line.lstrip().partition(":")
        if not colon or name in stats:
            continue
        fields = rest.split()
        if len(fields) < 16:
            continue
        try:
            n = [int(v) for v in fields[:16]]
        except ValueError:
            continue
        stats[name] = {"rx-bytes": n[0], "rx-packets": n[1], "rx-errs": n[2], "rx-dropped": n[3],
                       "tx-bytes": n[8], "tx-packets": n[9], "tx-errs": n[10], "tx-dropped": n[11]}
    return stats


def network_interfaces() -> list[dict[str, Any]]:
    head = ctypes.POINTER(_Ifaddrs)()
    if _getifaddrs(ctypes.byref(head)) < 0:
        err = ctypes.get_errno()
        raise command_failed(f"getifaddrs failed: {os.strerror(err)}")
    interfaces: dict[bytes, dict[str, Any]] = {}
    net_dev: dict[str, dict[str, int]] | None = None
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            node = head
            while node:
                entry = node.contents
                node = entry.ifa_next
                raw_name = entry.ifa_name or b""
                info = interfaces.get(raw_name)
                if info is None:
                    info = interfaces[raw_name] = {"name": os.fsdecode(raw_name)}
                if "hardware-address" not in info:
                    mac = _hardware_address(sock, raw_name)
                    if mac is not None:
                        info["hardware-address"] = mac
                if not entry.ifa_addr:
                    continue
                family = entry.ifa_addr.contents.sa_family
                if family not in _ADDRESS_AT:
                    continue
                address = {
                    "ip-address": socket.inet_ntop(family, _sockaddr_bytes(entry.ifa_addr, family)),
                    "ip-address-type": "ipv4" if family == socket.AF_INET else "ipv6",
                    "prefix": 0,
                }
                if entry.ifa_netmask:
                    mask = _sockaddr_bytes(entry.ifa_netmask, family)
                    address["prefix"] = sum(bin(b).count("1") for b in mask)
                info.setdefault("ip-addresses", []).append(address)
                if "statistics" not in info:
                    if net_dev is None:
                        net_dev = read_net_dev()
                    stats = net_dev.get(info["name"])
                    if stats is not None:
                        info["statistics"] = stats
    finally:
        _freeifaddrs(head)
    return list(interfaces.values())


def _ipv4(value: int) -> str:
    """``/proc/net/route``'s address: a 32-bit number (hex in the file), in host
    (little-endian) order, printed lowest byte first as qemu's ``hex_to_ip_address``."""
    return socket.inet_ntop(socket.AF_INET, struct.pack("<I", value & 0xFFFFFFFF))


def _ipv6(hex_be: str) -> str:
    return socket.inet_ntop(socket.AF_INET6, bytes.fromhex(hex_be))


def _int32(value: int) -> int:
    """What C's ``int`` holds after ``sscanf`` stores a 32-bit value into it."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


def _uint64_of_int(value: int) -> int:
    """qemu assigns an ``int`` to a ``uint64`` field: a negative one wraps."""
    return value & 0xFFFFFFFFFFFFFFFF


def _ipv4_routes(lines: list[str]) -> list[dict[str, Any]]:
    routes = []
    for line in lines[1:]:  # a header line
        fields = line.split()
        if len(fields) < 11:
            continue
        try:
            iface = fields[0]
            destination, gateway = int(fields[1], 16), int(fields[2], 16)
            flags = int(fields[3], 16)
            refcnt, use, metric = (int(v) for v in fields[4:7])
            mask = int(fields[7], 16)
            mtu, window, irtt = (int(v) for v in fields[8:11])
        except ValueError:
            continue
        routes.append({
            "iface": iface,
            "destination": _ipv4(destination),
            "metric": _int32(metric),
            "gateway": _ipv4(gateway),
            "mask": _ipv4(mask),
            "irtt": _int32(irtt),
            "flags": flags & 0xFFFFFFFF,
            "refcnt": _int32(refcnt),
            "use": _int32(use),
            "window": _int32(window),
            "mtu": _int32(mtu),
            "version": 4,
        })
    return routes


def _ipv6_routes(lines: list[str]) -> list[dict[str, Any]]:
    routes = []
    for line in lines:
        fields = line.split()
        if len(fields) < 10:
            continue
        try:
            destination, source, nexthop = (_ipv6(fields[i][:32]) for i in (0, 2, 4))
            des_prefixlen, src_prefixlen, metric, refcnt, use, flags = (
                _int32(int(fields[i], 16)) for i in (1, 3, 5, 6, 7, 8))
        except ValueError:
            continue
        routes.append({
            "iface": fields[9],
            "destination": destination,
            "metric": metric,
            "flags": _uint64_of_int(flags),
            "refcnt": refcnt,
            "use": use,
            "desprefixlen": str(des_prefixlen),
            "source": source,
            "srcprefixlen": str(src_prefixlen),
            "nexthop": nexthop,
            "version": 6,
        })
    return routes


def _read_lines(path: str) -> list[str]:
    try:
        return read_kernel_file(path).splitlines()
    except OSError as exc:
        raise command_failed(f'open("{path}"): {exc.strerror}') from None


def network_routes(route: str = PROC_NET_ROUTE,
                   ipv6_route: str = PROC_NET_IPV6_ROUTE) -> list[dict[str, Any]]:
    routes = _ipv4_routes(_read_lines(route))
    if os.path.exists(ipv6_route):
        routes += _ipv6_routes(_read_lines(ipv6_route))
    return routes


def guest_network_get_interfaces(agent: AgentState) -> list[dict[str, Any]]:
    return network_interfaces()


def guest_network_get_route(agent: AgentState) -> list[dict[str, Any]]:
    return network_routes()


COMMANDS = (
    Command("guest-network-get-interfaces", guest_network_get_interfaces,
            "Network interfaces: name, hardware-address, ip-addresses (ip-address, "
            "ip-address-type, prefix) and statistics (rx/tx bytes, packets, errs, dropped)."),
    Command("guest-network-get-route", guest_network_get_route,
            "The IPv4 and IPv6 routing tables (/proc/net/route, /proc/net/ipv6_route)."),
)
