"""``guest-suspend-ram``, ``guest-suspend-disk`` and ``guest-suspend-hybrid``, as qemu-ga.

qemu's ``qga/commands-linux.c`` tries three mechanisms in order, each only where it says it
supports the mode, and sends NO reply on success (the host sees the guest suspend):

1. systemd: ``systemctl status systemd-suspend|systemd-hibernate|systemd-hybrid-sleep`` exiting
   1, 2 or 3 (LSB codes: the unit exists) means supported; then ``systemctl
   suspend|hibernate|hybrid-sleep``;
2. pm-utils: ``pm-is-supported --suspend|--hibernate|--suspend-hybrid`` exiting 0; then
   ``pm-suspend|pm-hibernate|pm-suspend-hybrid``;
3. ``/sys/power/state``: supported when its first 31 bytes hold ``mem`` (ram) or ``disk``
   (disk; hybrid has no sysfs form); then that word is written to it.

A failed mechanism falls through to the next; when none claims the mode the error is "the
requested suspend mode is not supported by the guest"; only the sysfs step's own error reaches
the host (an earlier mechanism that claimed the mode and failed, with sysfs not supporting it,
ends in qemu-ga's silent "success", and so here). Programs are found on ``PATH`` with stdin,
stdout and stderr on /dev/null; a program not found counts as "not supported" (or "the helper
program '...' was not found" for the suspending step); one killed by a signal counts as exit
status 0, as qemu-ga's ``WEXITSTATUS`` of it.

For tests, and guests that keep the helpers elsewhere, two environment variables redirect all
of it: ``PYQGA_SUSPEND_PATH`` is the ``PATH`` searched for the helpers, ``PYQGA_POWER_STATE_FILE``
replaces ``/sys/power/state``. They are read once, when the agent's state is built
(:class:`SuspendSetup`, the ``AgentState.suspend`` field, as ``system.SystemPrograms`` is
``AgentState.system``), so each agent object carries its own settings.

Where **we** differ from qemu-ga, deliberately: a helper that runs longer than
:data:`PROGRAM_TIMEOUT` is killed and reported as an error at once (qemu-ga waits forever).
The sysfs word is written to the file itself, as qemu-ga up to 9.0 did (in a child); qemu 9.1+
calls ``g_file_set_contents``, which first creates a temporary file beside it, and sysfs refuses
that (glib 2.74, Debian 12's, in the test guest: "Failed to create file
“/sys/power/state.XXXXXX”: Permission denied"), so its last resort never suspends.  A write the
kernel refuses keeps qemu's wording with the kernel's reason ("suspend: cannot write to
'/sys/power/state': No such device" for hibernation without swap; qemu-ga 7.2 says "child
process has failed to suspend").
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from pyqga.agent.errors import AgentFailure
from pyqga.agent.programs import which
from pyqga.agent.registry import Command
from pyqga.protocol.errors import command_failed

if TYPE_CHECKING:
    from pyqga.agent.state import AgentState

SUSPEND_PATH_ENV = "PYQGA_SUSPEND_PATH"
POWER_STATE_ENV = "PYQGA_POWER_STATE_FILE"
LINUX_SYS_STATE_FILE = "/sys/power/state"
PROGRAM_TIMEOUT = 300.0
NOT_SUPPORTED = "the requested suspend mode is not supported by the guest"

# Per mode: systemd unit checked, systemctl verb, pm-is-supported flag, pm-utils program, sysfs word.
MODES: Mapping[str, tuple[str, str, str, str, str | None]] = {
    "disk": ("systemd-hibernate", "hibernate", "--hibernate", "pm-hibernate", "disk"),
    "ram": ("systemd-suspend", "suspend", "--suspend", "pm-suspend", "mem"),
    "hybrid": ("systemd-hybrid-sleep", "hybrid-sleep", "--suspend-hybrid", "pm-suspend-hybrid", None),
}


class SuspendSetup(NamedTuple):
    """Where the suspend helpers and the sysfs state file are; fixed for the agent's life."""

    path: str | None = None            # None: the agent's own PATH
    state_file: str = LINUX_SYS_STATE_FILE

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> SuspendSetup:
        env = os.environ if environ is None else environ
        return cls(path=env.get(SUSPEND_PATH_ENV) or None,
                   state_file=env.get(POWER_STATE_ENV) or LINUX_SYS_STATE_FILE)


class _HelperError(AgentFailure):
    """A helper could not be started (qemu's errp from run_process_child)."""


def run_process_child(setup: SuspendSetup, argv: list[str]) -> int:
    """qemu's ``run_process_child``: the exit status, -1 when the program is not on PATH,
    :class:`_HelperError` when it could not be started for another reason."""
    search = setup.path if setup.path is not None else os.environ.get("PATH", os.defpath)
    program = which(argv[0], search)
    if program is None:
        return -1
    try:
        completed = subprocess.run([program, *argv[1:]], stdin=subprocess.DEVNULL,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   timeout=PROGRAM_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise command_failed(f"the helper program '{' '.join(argv)}' did not finish within "
                             f"{PROGRAM_TIMEOUT:g} s: killed") from None
    except OSError as exc:
        raise _HelperError(f"failed to create child process, error 'Failed to execute child "
                           f"process \u201c{argv[0]}\u201d ({exc.strerror})'") from None
    # WEXITSTATUS of a signalled child's wait status is 0: qemu-ga counts it as success.
    return max(completed.returncode, 0)


def _systemd_supports(setup: SuspendSetup, unit: str) -> bool:
    try:
        status = run_process_child(setup, ["systemctl", "status", unit])
    except _HelperError:
        return False
    return 0 < status < 4


def _run_suspender(setup: SuspendSetup, argv: list[str]) -> str | None:
    """The error text of a suspending helper, or None on success."""
    try:
        status = run_process_child(setup, argv)
    except _HelperError as exc:
        return str(exc)
    if status == 0:
        return None
    name = " ".join(argv)
    if status == -1:
        return f"the helper program '{name}' was not found"
    return f"the helper program '{name}' returned an unexpected exit status code ({status})"


def _pmutils_supports(setup: SuspendSetup, flag: str) -> bool:
    try:
        return run_process_child(setup, ["pm-is-supported", flag]) == 0
    except _HelperError:
        return False


def _sys_state_supports(setup: SuspendSetup, word: str | None) -> bool:
    if word is None:
        return False
    try:
        fd = os.open(setup.state_file, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        data = os.read(fd, 31)
    except OSError:
        return False
    finally:
        os.close(fd)
    return word.encode() in data.split(b"\0", 1)[0]


def _sys_state_suspend(setup: SuspendSetup, word: str) -> str | None:
    try:
        fd = os.open(setup.state_file, os.O_WRONLY | os.O_CLOEXEC)
    except OSError as exc:
        return f"suspend: cannot write to '{setup.state_file}': {exc.strerror}"
    try:
        os.write(fd, word.encode())
    except OSError as exc:
        return f"suspend: cannot write to '{setup.state_file}': {exc.strerror}"
    finally:
        os.close(fd)
    return None


def guest_suspend(agent: AgentState, mode: str) -> dict[str, Any]:
    setup = agent.suspend
    unit, verb, pm_flag, pm_program, word = MODES[mode]
    agent.log.info("guest-suspend-%s called", mode)
    supported = False
    if _systemd_supports(setup, unit):
        supported = True
        if _run_suspender(setup, ["systemctl", verb]) is None:
            return {}
    if _pmutils_supports(setup, pm_flag):
        supported = True
        if _run_suspender(setup, [pm_program]) is None:
            return {}
    error = None
    if _sys_state_supports(setup, word):
        supported = True
        assert word is not None
        error = _sys_state_suspend(setup, word)
    if not supported:
        raise command_failed(NOT_SUPPORTED)
    if error is not None:
        raise command_failed(error)
    return {}


def guest_suspend_ram(agent: AgentState) -> dict[str, Any]:
    return guest_suspend(agent, "ram")


def guest_suspend_disk(agent: AgentState) -> dict[str, Any]:
    return guest_suspend(agent, "disk")


def guest_suspend_hybrid(agent: AgentState) -> dict[str, Any]:
    return guest_suspend(agent, "hybrid")


COMMANDS = (
    Command("guest-suspend-ram", guest_suspend_ram,
            "Suspend to RAM (S3): systemd, pm-utils or /sys/power/state; no reply on success.",
            success_response=False, blocking=True),
    Command("guest-suspend-disk", guest_suspend_disk,
            "Suspend to disk (S4, hibernate): systemd, pm-utils or /sys/power/state; no reply on "
            "success.",
            success_response=False, blocking=True),
    Command("guest-suspend-hybrid", guest_suspend_hybrid,
            "Save to disk and suspend to RAM: systemd or pm-utils; no reply on success.",
            success_response=False, blocking=True),
)
