"""What the host client raises: every error names the method and the agent's address."""

from __future__ import annotations

from pyqga.protocol.errors import AgentError


class AgentClientError(Exception):
    """Base class; ``str()`` is one line a human can act on."""

    def __init__(self, message: str, *, method: str | None = None, address: str | None = None) -> None:
        super().__init__(message)
        self.method = method
        self.address = address


class AgentConnectionError(AgentClientError):
    """The channel could not be opened, or it closed under us."""


class AgentTimeout(AgentClientError):
    """No reply in time; the client resyncs before its next call."""


def channel_failed(address: str, doing: str, exc: BaseException) -> AgentConnectionError:
    """``<address>: send failed: <reason>``, in the system's words where it has them."""
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
    return AgentConnectionError(f"{address}: {doing} failed: {reason}")


def closed_by_agent(address: str) -> AgentConnectionError:
    return AgentConnectionError(f"{address}: the agent closed the connection")


def receive_failed(address: str, exc: OSError) -> AgentConnectionError:
    """A reset is the agent going away, as an EOF is; anything else is the channel's failure."""
    if isinstance(exc, ConnectionResetError):
        return closed_by_agent(address)
    return channel_failed(address, "receive", exc)


def timed_out(address: str, doing: str) -> AgentTimeout:
    """``doing``: what was under way, such as "sending" or "waiting for a reply"."""
    return AgentTimeout(f"{address}: timed out {doing}")


class AgentCallError(AgentClientError):
    """The agent answered with an error; ``error`` has its class/code and message."""

    def __init__(self, error: AgentError, *, method: str, address: str) -> None:
        super().__init__(f"{method} on {address}: {error.qga_class}: {error.message}",
                         method=method, address=address)
        self.error = error

    @property
    def error_class(self) -> str:
        return self.error.qga_class

    @property
    def code(self) -> int:
        return self.error.kind.code


class FreezeLost(AgentCallError):
    """A freeze did not hold until the thaw (auto-thaw, agent death, someone else thawed):
    whatever was copied while "frozen" may be inconsistent.  ``error.data["last-thaw"]`` says
    how and when it ended."""
