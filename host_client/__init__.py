"""Host side of pyqga: the AgentClient library and the pyqga CLI."""

from pyqga.host_client.client import AgentClient, Freeze
from pyqga.host_client.errors import (
    AgentCallError,
    AgentClientError,
    AgentConnectionError,
    AgentTimeout,
    ClientClosed,
    ExecFailed,
    FreezeLost,
)
from pyqga.host_client.guest_ops import ExecResult, StallResult

__all__ = ["AgentCallError", "AgentClient", "AgentClientError", "AgentConnectionError", "AgentTimeout",
           "ClientClosed", "ExecFailed", "ExecResult", "Freeze", "FreezeLost", "StallResult"]
