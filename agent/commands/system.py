"""``guest-shutdown`` and ``guest-set-time``: the two commands that act on the whole guest.

Both run a system program, as qemu-ga does (``qga/commands-posix.c``): ``guest-shutdown`` runs
``shutdown -P|-H|-r +0 "hypervisor initiated shutdown"`` and, on success, sends no reply at
all (the host learns of success by the guest going away); ``guest-set-time {time?}`` sets the
system clock to ``time`` (ns since the epoch) and then the RTC from it with ``hwclock -w``, or
without ``time`` sets the system clock from the RTC with ``hwclock -s``.

The programs are :class:`SystemPrograms`, an :class:`AgentState` field read once at agent start;
``PYQGA_SHUTDOWN_PROGRAM`` and ``PYQGA_HWCLOCK_PROGRAM`` in the agent's environment replace
``/sbin/shutdown`` and ``/sbin/hwclock`` (for tests, and guests that keep them elsewhere).

Where **we** differ from qemu-ga, deliberately: a program that cannot be started is reported as
such (qemu-ga's forked child just exits 1: "child process has failed to shutdown"); a program
that runs longer than :data:`PROGRAM_TIMEOUT` is killed and reported (qemu-ga waits forever,
and a hung ``shutdown`` would hang it); ``time`` is set with nanosecond precision
(``clock_settime``; qemu-ga's ``settimeofday`` keeps microseconds).  The range check is
qemu-ga's: the whole seconds (C's division, towards zero) must fall in a local-time year
1970-2069, else "Invalid time" (qemu's ``error_setg_errno`` with errno 0 adds nothing; libvirt's
``domtime --time`` shows that text).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from time import CLOCK_REALTIME, clock_settime_ns, localtime
from typing import TYPE_CHECKING, Any, NamedTuple

from pyqga.agent.registry import Command, Param
from pyqga.protocol.errors import command_failed

if TYPE_CHECKING:
    from pyqga.agent.state import AgentState

SHUTDOWN_ENV = "PYQGA_SHUTDOWN_PROGRAM"
HWCLOCK_ENV = "PYQGA_HWCLOCK_PROGRAM"
DEFAULT_SHUTDOWN = "/sbin/shutdown"
DEFAULT_HWCLOCK = "/sbin/hwclock"
SHUTDOWN_FLAGS = {"powerdown": "-P", "halt": "-H", "reboot": "-r"}
SHUTDOWN_MESSAGE = "hypervisor initiated shutdown"
PROGRAM_TIMEOUT = 60.0
# qemu-ga accepts the local-time years 1970..2069.
YEAR_MIN, YEAR_END = 1970, 2070
NS_PER_SECOND = 1_000_000_000


class SystemPrograms(NamedTuple):
    """Where the system programs are; fixed for the agent's life."""

    shutdown: str = DEFAULT_SHUTDOWN
    hwclock: str = DEFAULT_HWCLOCK

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> SystemPrograms:
        env = os.environ if environ is None else environ
        return cls(shutdown=env.get(SHUTDOWN_ENV) or DEFAULT_SHUTDOWN,
                   hwclock=env.get(HWCLOCK_ENV) or DEFAULT_HWCLOCK)


def run_program(argv: list[str]) -> int:
    """Run ``argv`` detached from the agent (own session, stdio on /dev/null, as qemu-ga's
    fork+setsid) and return its exit status; negative is a signal, as subprocess says."""
    try:
        completed = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, start_new_session=True,
                                   timeout=PROGRAM_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise command_failed(f"{argv[0]} did not finish within {PROGRAM_TIMEOUT:g} s: killed") from None
    except OSError as exc:
        raise command_failed(f"failed to run {argv[0]}: {exc.strerror or exc}") from None
    return completed.returncode


def guest_shutdown(agent: AgentState, mode: str | None = None) -> dict[str, Any]:
    if mode is None:
        mode = "powerdown"
    flag = SHUTDOWN_FLAGS.get(mode)
    if flag is None:
        # qemu-ga's text, unbalanced parenthesis included (libvirt hosts have seen it for years).
        raise command_failed("mode is invalid (valid values are: halt|powerdown|reboot")
    program = agent.system.shutdown
    agent.log.info("guest-shutdown called, mode: %s (%s %s +0)", mode, program, flag)
    status = run_program([program, flag, "+0", SHUTDOWN_MESSAGE])
    if status < 0:
        raise command_failed("child process has terminated abnormally")
    if status > 0:
        raise command_failed(f"child process has failed to shutdown ({program} exited with {status})")
    return {}


def valid_year(time_ns: int) -> bool:
    """qemu-ga's check: ``g_date_set_time_t(time_ns / 1000000000)`` (local time) in 1970-2069."""
    seconds = abs(time_ns) // NS_PER_SECOND * (-1 if time_ns < 0 else 1)
    try:
        return YEAR_MIN <= localtime(seconds).tm_year < YEAR_END
    except (OverflowError, OSError, ValueError):   # beyond what the C library can represent
        return False


def guest_set_time(agent: AgentState, time: int | None = None) -> dict[str, Any]:
    """Needs hwclock in both directions, as qemu-ga: with ``time`` the RTC must follow the new
    system time, or the next boot would undo it."""
    hwclock = agent.system.hwclock
    # qemu-ga checks hwclock first: without it, neither direction can be completed.
    if not os.access(hwclock, os.X_OK):
        raise command_failed(f"this feature or command is not currently supported ({hwclock} is missing)")
    if time is not None:
        if not valid_year(time):
            raise command_failed("Invalid time")
        try:
            clock_settime_ns(CLOCK_REALTIME, time)
        except OSError as exc:
            raise command_failed(f"Failed to set time to guest: {exc.strerror}") from None
        agent.log.info("guest-set-time: system clock set to %d ns", time)
    status = run_program([hwclock, "-s" if time is None else "-w"])
    if status != 0:
        if time is None:
            raise command_failed("hwclock failed to set system time from hardware clock")
        raise command_failed("hwclock failed to set hardware clock to system time")
    return {}


COMMANDS = (
    Command("guest-shutdown", guest_shutdown,
            "Power down, halt or reboot the guest; no reply on success.",
            (Param("mode", str, required=False, doc="powerdown (default), halt or reboot"),),
            success_response=False, blocking=True),
    Command("guest-set-time", guest_set_time,
            "Set the system clock to time (ns since the epoch) and the RTC from it; without time, "
            "set the system clock from the RTC.",
            (Param("time", int, required=False, doc="nanoseconds since the epoch, UTC"),),
            blocking=True),
)
