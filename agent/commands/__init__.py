"""Command modules; each exports ``COMMANDS``, a tuple of :class:`agent.registry.Command`."""

from agent.commands import core, fsfreeze

COMMAND_MODULES = (core, fsfreeze)
