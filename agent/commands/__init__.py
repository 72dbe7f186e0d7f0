"""Command modules; each exports ``COMMANDS``, a tuple of :class:`pyqga.agent.registry.Command`."""

from pyqga.agent.commands import (
    accounts,
    core,
    exec,
    files,
    fsfreeze,
    hardware,
    network,
    power,
    stats,
    system,
    users,
)

COMMAND_MODULES = (core, fsfreeze, exec, files, system, network, stats, hardware, users, accounts, power)
