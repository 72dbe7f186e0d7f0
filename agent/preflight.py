"""What start-up checks on this machine before it serves: the one list, for every path.

Start-up, ``--check-config`` and ``-D`` all run :func:`machine_findings`, so a file that
``--check-config`` calls valid is one the agent starts with.  The checks: the state directory
(:mod:`pyqga.agent.statedir`), the freeze hook (:func:`pyqga.agent.freeze.hooks.hook_problem`),
and the log file: it must be writable where it is (qemu-ga refuses to start when it cannot open
it; pyqga opens it at the first record, so the check comes first).  Nothing here writes, except
start-up's creation of the state directory.
"""

from __future__ import annotations

import os
from typing import NamedTuple

from pyqga.agent import statedir
from pyqga.agent.config import Config, ConfigError
from pyqga.agent.freeze.hooks import hook_problem
from pyqga.agent.freeze.planner import FreezePlanner
from pyqga.agent.logs import HELD_RECORDS
from pyqga.agent.registry import build_registry
from pyqga.agent.state import blocked_commands


class Finding(NamedTuple):
    """One thing a check found; a fatal one stops start-up, the others are logged."""

    message: str
    fatal: bool = True


def machine_findings(config: Config, planner: FreezePlanner | None = None,
                     create: bool = False) -> list[Finding]:
    """Everything start-up would refuse or warn about on this machine; ``create`` makes the
    state directory (start-up only)."""
    planner = planner or FreezePlanner(include=config.freeze_include, exclude=config.freeze_exclude)
    findings: list[Finding] = []
    problem = statedir.prepare(config.statedir, planner=planner, create=create)
    if problem is not None:
        findings.append(Finding(config.where("statedir") + problem))
    if config.fsfreeze_hook is not None:
        hook = hook_problem(config.fsfreeze_hook)
        if hook is not None:
            findings.append(Finding(config.where("fsfreeze_hook") + hook.message, fatal=not hook.missing))
    if config.logfile is not None:
        findings += [Finding(config.where("logfile") + message, fatal)
                     for message, fatal in logfile_findings(config.logfile, planner)]
    return findings


def logfile_findings(path: str, planner: FreezePlanner) -> list[tuple[str, bool]]:
    """The log file must be appendable (without opening it: its filesystem may be frozen); on
    a filesystem the agent freezes, records wait in memory meanwhile (worth a warning)."""
    target = path if os.path.lexists(path) else os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(os.path.dirname(os.path.abspath(path))):
        return [(f"cannot log to {path}: its directory does not exist", True)]
    if os.path.isdir(path):
        return [(f"cannot log to {path}: it is a directory", True)]
    if not os.access(target, os.W_OK):
        where = "it" if target == path else "its directory"
        why = "on a read-only filesystem" if _read_only(target) else "not writable by this agent"
        return [(f"cannot log to {path}: {where} is {why}", True)]
    mount = statedir.freezable_mount(path, planner)
    if mount is not None:
        return [(f"log file {path} is on {mount.mountpoint}, which this agent may freeze: while it is "
                 f"frozen, records wait in memory (the last {HELD_RECORDS}); a file on tmpfs avoids that",
                 False)]
    return []


def _read_only(path: str) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def validate(config: Config) -> list[Finding]:
    """``--check-config`` and ``-D``: the checks start-up makes (command names included),
    without starting, every finding at once."""
    try:
        blocked_commands(build_registry(), config)
        names: list[Finding] = []
    except ConfigError as exc:
        names = [Finding(str(exc))]
    return names + machine_findings(config)


def warnings(findings: list[Finding]) -> list[str]:
    """The warnings to report, once nothing is fatal; else ConfigError with every fatal finding,
    one per line."""
    fatal = [f.message for f in findings if f.fatal]
    if fatal:
        raise ConfigError("\n".join(fatal))
    return [f.message for f in findings]
