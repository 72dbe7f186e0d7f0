"""The agent's one state object: configuration, the command registry, and what is allowed now.

Everything mutable in the daemon lives here, so that what a command may see or change is
explicit and tests can build an agent without a process around it.
"""

from __future__ import annotations

import logging

from pyqga.agent.commands.core import OsRelease
from pyqga.agent.commands.exec import ExecTable
from pyqga.agent.commands.files import FileTable
from pyqga.agent.commands.fsinfo import FsinfoCache
from pyqga.agent.commands.power import SuspendSetup
from pyqga.agent.commands.system import SystemPrograms
from pyqga.agent.config import LIST_RULE, VERSION, Config, ConfigError
from pyqga.agent.faults.engine import FaultEngine
from pyqga.agent.freeze.build import build_freezer
from pyqga.agent.freeze.driver import Freezer
from pyqga.agent.keeper.handle import KeeperHandle
from pyqga.agent.logs import LogControl
from pyqga.agent.registry import QEMU_GA_DISABLED, Registry, build_registry

BLOCKED_REASON = "the command is not allowed"
FROZEN_REASON = "the agent is in frozen state"  # qemu-ga's words (qga/main.c)
FAULTS_OFF_REASON = ("fault injection is off in this agent; start it with --enable-faults or set "
                     "faults=true in its config file (test guests only)")
FAULT_COMMAND_PREFIX = "guest-fault-"


class AgentState:
    """Built once at start; the tables and caches in it change, the fields do not (a plain
    class, not a dataclass, which would cost ~1 ms to define at every start)."""

    config: Config
    registry: Registry
    log: logging.Logger
    logs: LogControl | None
    version: str
    exec_table: ExecTable           # guest-exec's processes
    file_handles: FileTable         # guest-file-*'s handles
    system: SystemPrograms          # read from the environment once, at start
    suspend: SuspendSetup           # read from the environment once, at start
    os_release: OsRelease           # what guest-get-osinfo keeps between calls (hosts poll it)
    fsinfo: FsinfoCache             # and guest-get-fsinfo
    blocked: frozenset[str]
    freezer: Freezer
    faults: FaultEngine

    def __init__(self, config: Config, log: logging.Logger | None = None, logs: LogControl | None = None,
                 registry: Registry | None = None) -> None:
        self.config = config
        self.registry = registry if registry is not None else build_registry()
        self.log = log if log is not None else logging.getLogger("pyqga.agent")
        self.logs = logs
        self.version = VERSION
        self.exec_table = ExecTable()
        self.file_handles = FileTable()
        self.system = SystemPrograms.from_environment()
        self.suspend = SuspendSetup.from_environment()
        self.os_release = OsRelease()
        self.fsinfo = FsinfoCache()
        self.blocked = blocked_commands(self.registry, self.config)
        self.freezer = build_freezer(self.config, self.log, self.logs)
        self.faults = FaultEngine(self.config.statedir, self.freezer.keeper, log=self.log,
                                  kinds=self.config.faults)
        if isinstance(self.freezer.keeper, KeeperHandle):
            self.freezer.keeper.resend.append(self.faults.republish)

    def disabled_reason(self, name: str) -> str | None:
        """Why ``name`` may not run now, or None.  Checked on every request."""
        if name in self.blocked:
            return BLOCKED_REASON
        if not self.config.faults and name.startswith(FAULT_COMMAND_PREFIX):
            return FAULTS_OFF_REASON
        if self.freezer.frozen:
            command = self.registry.get(name)
            if command is not None and not command.allowed_while_frozen:
                return FROZEN_REASON
        return None


def blocked_commands(registry: Registry, config: Config) -> frozenset[str]:
    """The commands -b/-a disable; a name we do not know is a typo worth stopping for.  The
    names qemu-ga knows but never runs here (:data:`QEMU_GA_DISABLED`) are no typo: a qemu-ga
    configuration may name them, and there is nothing to block or allow."""
    known = set(registry.names())
    for name, option in (("block_rpcs", "block-rpcs"), ("allow_rpcs", "allow-rpcs")):
        unknown = sorted(set(getattr(config, name)) - known - QEMU_GA_DISABLED)
        if unknown:
            raise ConfigError(
                f"{config.where(name)}{option}: unknown command(s) {', '.join(unknown)}; "
                f"{LIST_RULE}; '--{option}=help' lists the commands"
            )
    blocked = set(config.block_rpcs)
    if config.allow_rpcs:
        blocked |= known - set(config.allow_rpcs)
    return frozenset(blocked)
