"""Command modules; each exports ``COMMANDS``, a tuple of :class:`pyqga.agent.registry.Command`.

:func:`pyqga.agent.registry.build_registry` imports them all; nothing is imported here, so a
process that needs one helper module (the keeper reads kernel files through
:mod:`.kernel_files`) does not load every command the agent has."""
