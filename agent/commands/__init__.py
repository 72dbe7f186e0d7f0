"""Command modules; each exports ``COMMANDS``, a tuple of :class:`pyqga.agent.registry.Command`."""

from pyqga.agent.commands import (
    accounts,
    core,
    cpus_memory,
    disks,
    exec,
    faults,
    files,
    fsfreeze,
    network,
    power,
    stats,
    system,
    users,
)

COMMAND_MODULES = (core, fsfreeze, faults, exec, files, system, network, stats, cpus_memory, disks, users,
                   accounts, power)
