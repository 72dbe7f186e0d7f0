"""``guest-get-diskstats``, ``guest-get-cpustats`` and ``guest-get-load``, as qemu-ga answers them.

``guest-get-diskstats`` reads ``/proc/diskstats`` as qemu's ``guest_get_diskstats``
(``qga/commands-linux.c``): every line becomes ``{"name", "major", "minor", "stats"}``; a line
of 4 counters (old partition format) gives read-ios, read-sectors, write-ios and
write-sectors; 11 or more give the read, write, ios-pgr, total-ticks and weight-ticks fields;
15 or more add the discard fields, 17 the flush fields.  Counters qemu reads into a C
``unsigned int`` (ios-pgr and the ticks) wrap at 32 bits, as there.

``guest-get-cpustats`` reads ``/proc/stat``: one ``{"type": "linux", "cpu": N, ...}`` per
``cpuN`` line (the ``cpu`` total is left out), times in milliseconds (ticks * 1000 / CLK_TCK,
integer division as in C); iowait, irq, softirq, steal, guest and guestnice as far as the
line has them.

``guest-get-load`` (qemu 10.0) is libc's ``getloadavg`` (``os.getloadavg``):
``{"load1m", "load5m", "load15m"}``.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from pyqga.agent.commands.kernel_files import read_kernel_file
from pyqga.agent.registry import Command
from pyqga.protocol.errors import command_failed

if TYPE_CHECKING:
    from pyqga.agent.state import AgentState

PROC_DISKSTATS = "/proc/diskstats"
PROC_STAT = "/proc/stat"
CLK_TCK = os.sysconf("SC_CLK_TCK")
_UINT = 0xFFFFFFFF
_ULONG = 0xFFFFFFFFFFFFFFFF


def _read(path: str) -> str:
    try:
        return read_kernel_file(path)
    except OSError as exc:
        raise command_failed(f'open("{path}"): {exc.strerror}') from None


def _leading_numbers(fields: list[str]) -> list[int]:
    """As sscanf: convert until the first field that is not a number."""
    numbers = []
    for field in fields:
        try:
            numbers.append(int(field))
        except ValueError:
            break
    return numbers


def parse_diskstats(text: str) -> list[dict[str, Any]]:
    disks = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        try:
            major, minor = int(fields[0]), int(fields[1])
        except ValueError:
            continue
        n = _leading_numbers(fields[3:20])
        count = 3 + len(n)  # what qemu's sscanf returns
        if count < 7:
            continue
        stats: dict[str, int] = {}
        if count == 7:
            stats = {"read-sectors": n[1] & _ULONG, "read-ios": n[0] & _ULONG,
                     "write-sectors": n[3] & _ULONG, "write-ios": n[2] & _ULONG}
        if count >= 14:
            stats = {
                "read-sectors": n[2] & _ULONG, "read-ios": n[0] & _ULONG,
                "read-merges": n[1] & _ULONG,
                "write-sectors": n[6] & _ULONG, "write-ios": n[4] & _ULONG,
                "write-merges": n[5] & _ULONG,
            }
            if count >= 18:
                stats.update({"discard-sectors": n[13] & _ULONG, "discard-ios": n[11] & _ULONG,
                              "discard-merges": n[12] & _ULONG})
            if count >= 20:
                stats["flush-ios"] = n[15] & _ULONG
            stats["read-ticks"] = n[3] & _ULONG
            stats["write-ticks"] = n[7] & _UINT
            if count >= 18:
                stats["discard-ticks"] = n[14] & _UINT
            if count >= 20:
                stats["flush-ticks"] = n[16] & _UINT
            stats.update({"ios-pgr": n[8] & _UINT, "total-ticks": n[9] & _UINT,
                          "weight-ticks": n[10] & _UINT})
        disks.append({"name": fields[2], "major": major & _UINT, "minor": minor & _UINT,
                      "stats": stats})
    return disks


CPU_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal", "guest",
              "guestnice")


def parse_cpustats(text: str, clk_tck: int = CLK_TCK) -> list[dict[str, Any]]:
    cpus = []
    for line in text.splitlines():
        # Test before splitting: /proc/stat's intr line has a field per interrupt (thousands).
        if not line.startswith("cpu"):
            continue
        fields = line.split()
        if fields[0] == "cpu":
            continue
        n = _leading_numbers(fields[1:11])
        count = 1 + len(n)  # what qemu's sscanf returns
        if count < 5:
            break  # qemu logs "Parsing cpu stat from /proc/stat failed" and stops
        ms = [v * 1000 // clk_tck for v in n]
        digits = fields[0][3:]
        cpu: dict[str, Any] = {"type": "linux", "cpu": _atoi(digits)}
        cpu.update(zip(CPU_FIELDS[:4], ms[:4], strict=True))
        if count > 5:
            cpu["iowait"] = ms[4]
        if count > 6:
            cpu["irq"] = ms[5]
            cpu["softirq"] = ms[6] if len(ms) > 6 else 0
        if count > 8:
            cpu["steal"] = ms[7]
        if count > 9:
            cpu["guest"] = ms[8]
        if count > 10:
            cpu["guestnice"] = ms[9]
        cpus.append(cpu)
    return cpus


def _atoi(text: str) -> int:
    digits = ""
    for ch in text:
        if not ch.isdigit():
            break
        digits += ch
    return int(digits) if digits else 0


def guest_get_diskstats(agent: AgentState) -> list[dict[str, Any]]:
    return parse_diskstats(_read(PROC_DISKSTATS))


def guest_get_cpustats(agent: AgentState) -> list[dict[str, Any]]:
    return parse_cpustats(_read(PROC_STAT))


def guest_get_load(agent: AgentState) -> dict[str, float]:
    try:
        load1, load5, load15 = os.getloadavg()
    except OSError as exc:
        raise command_failed(f"cannot query load average: {exc.strerror}") from None
    return {"load1m": load1, "load5m": load5, "load15m": load15}


COMMANDS = (
    Command("guest-get-diskstats", guest_get_diskstats,
            "Block device I/O counters from /proc/diskstats: name, major, minor and stats "
            "(read/write/discard/flush ios, merges, sectors, ticks; ios-pgr, total-ticks, "
            "weight-ticks)."),
    Command("guest-get-cpustats", guest_get_cpustats,
            "Per-CPU times from /proc/stat in milliseconds: type linux, cpu, user, nice, system, "
            "idle, iowait, irq, softirq, steal, guest, guestnice."),
    Command("guest-get-load", guest_get_load,
            "The load averages over 1, 5 and 15 minutes: load1m, load5m, load15m."),
)
