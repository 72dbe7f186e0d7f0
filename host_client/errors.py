"""What the host client raises: every error names the method and the agent's address."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pyqga.protocol.errors import AgentError

if TYPE_CHECKING:
    from pyqga.host_client.guest_ops import ExecResult


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


class ClientClosed(AgentClientError):
    """The client was used after :meth:`close`: open a new one (an async client can ``open()``
    again)."""


def client_closed(address: str) -> ClientClosed:
    return ClientClosed(f"{address}: this client is closed (close() was called); open a new one",
                        address=address)


class ExecFailed(AgentClientError):
    """``exec(..., check=True)``: the guest program did not exit with status 0 (it failed, or was
    killed, by ``kill_after`` or otherwise).  As :class:`subprocess.CalledProcessError`:
    ``returncode`` is the exit status, or minus the signal; ``stdout``/``stderr`` are what was
    captured; ``result`` is the whole :class:`~pyqga.host_client.guest_ops.ExecResult`."""

    def __init__(self, argv: tuple[str, ...], result: ExecResult, *, address: str) -> None:
        if result.signal is not None:
            how = f"was killed by signal {result.signal}"
        else:
            how = f"exited with status {result.exitcode}"
        last = result.stderr.decode(errors="replace").strip().splitlines()[-1:]
        detail = f": {last[0][:200]}" if last else ""
        super().__init__(f"{argv[0]} on {address} {how}{detail}", method="guest-exec", address=address)
        self.argv: tuple[str, ...] = argv
        self.result: ExecResult = result

    @property
    def returncode(self) -> int | None:
        """The exit status, or minus the signal that ended it (as :mod:`subprocess` says it)."""
        if self.result.signal is not None:
            return -self.result.signal
        return self.result.exitcode

    @property
    def stdout(self) -> bytes:
        return self.result.stdout

    @property
    def stderr(self) -> bytes:
        return self.result.stderr


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
