"""The root of the agent's own failures, as ``qemu.qmp`` has ``QMPError``.

:class:`AgentFailure` is what goes wrong *inside* the daemon: a bad option
(:class:`~pyqga.agent.config.ConfigError`), a channel that cannot be opened
(:class:`~pyqga.agent.channels.ChannelError`), a pid file held by another agent
(:class:`~pyqga.agent.pidfile.PidFileError`), a state file that is not ours
(:class:`~pyqga.agent.fsfreeze.core.CorruptState`), the agent's dependencies missing from a host-only
install (:class:`AgentExtraMissing`).  These end up in the log, on the terminal or as an
exit status; ``except AgentFailure`` catches every one of them and nothing else.

Not to be confused with :class:`pyqga.protocol.errors.AgentError`: that is a *wire* error value,
the ``{"error": {"class", "desc"}}`` a command answers the host with, shared by both sides.
An :class:`AgentFailure` never travels on the wire as such.
"""

from __future__ import annotations


class AgentFailure(Exception):
    """A failure of the agent itself (not a command's answer); the message says what and why."""


class AgentExtraMissing(AgentFailure, ImportError):
    """The agent's own dependencies are not installed: ``pip install pyqga`` is the host library
    alone, the agent is ``pyqga[agent]``.  An ImportError too, for code that expects one."""

    def __init__(self, missing: str) -> None:
        super().__init__(f"the agent needs {missing}, which a host-only install of pyqga leaves out: "
                         "pip install 'pyqga[agent]'")
