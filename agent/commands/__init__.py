"""Command modules; each exports ``COMMANDS``, a tuple of :class:`agent.registry.Command`."""

from agent.commands import core

COMMAND_MODULES = (core,)
