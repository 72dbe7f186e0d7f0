"""Host side of pyqga: the AgentClient library and the pyqga CLI."""

from host_client.client import AgentClient
from host_client.errors import AgentCallError, AgentClientError, AgentConnectionError, AgentTimeout

__all__ = ["AgentCallError", "AgentClient", "AgentClientError", "AgentConnectionError", "AgentTimeout"]
