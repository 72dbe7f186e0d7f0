"""Host side of pyqga: the AgentClient library and the pyqga CLI."""

from host_client.client import AgentClient, Freeze
from host_client.errors import (
    AgentCallError,
    AgentClientError,
    AgentConnectionError,
    AgentTimeout,
    FreezeLost,
)

__all__ = ["AgentCallError", "AgentClient", "AgentClientError", "AgentConnectionError", "AgentTimeout",
           "Freeze", "FreezeLost"]
