"""One error model for both wire dialects.

Every failure the agent reports is an :class:`AgentError` value: a kind, a message a human can act
on, and optional data.  The kind fixes both its JSON-RPC code and its qemu-ga class, so the same
error reads naturally to a JSON-RPC client and to libvirt, which only knows qemu-ga's two classes.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from pyqga.protocol.freeze_lost import parse_freeze_lost


class ErrorKind(Enum):
    """What went wrong, with its JSON-RPC code and its qemu-ga class."""

    PARSE_ERROR = (-32700, "GenericError")
    INVALID_REQUEST = (-32600, "GenericError")
    COMMAND_NOT_FOUND = (-32601, "CommandNotFound")
    INVALID_PARAMS = (-32602, "GenericError")
    INTERNAL_ERROR = (-32603, "GenericError")
    # Application codes (-32000 .. -32099 is the range JSON-RPC reserves for servers).
    COMMAND_FAILED = (-32000, "GenericError")
    COMMAND_DISABLED = (-32001, "CommandNotFound")
    BUSY = (-32002, "GenericError")
    FREEZE_LOST = (-32003, "GenericError")
    TIMEOUT = (-32004, "GenericError")

    @property
    def code(self) -> int:
        return self.value[0]

    @property
    def qga_class(self) -> str:
        return self.value[1]


_KIND_BY_CODE = {kind.code: kind for kind in ErrorKind}

# An error that names its input quotes at most QUOTE_LIMIT characters of it (:func:`quote`), and
# no message is ever longer than MESSAGE_LIMIT: a 1 MB path must not become a 1 MB reply.
QUOTE_LIMIT = 200
MESSAGE_LIMIT = 2000


def quote(value: object, limit: int = QUOTE_LIMIT) -> str:
    """``value`` as an error message names it: whole when short, else a prefix and its length."""
    text = value if isinstance(value, str) else repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


class AgentError(Exception):
    """An error as a value; also raisable so command handlers can bail out from deep inside.

    A value: equal to another of the same kind, message and data.  A plain class, not a
    dataclass, which would cost ~0.5 ms to define at every start of the agent."""

    __match_args__ = ("kind", "message", "data")
    kind: ErrorKind
    message: str
    data: Any

    def __init__(self, kind: ErrorKind, message: str, data: Any = None) -> None:
        # The backstop for a site that forgot quote(): cut in the middle, keep both ends (the
        # end usually says why).
        if len(message) > MESSAGE_LIMIT:
            half = MESSAGE_LIMIT // 2 - 40
            message = f"{message[:half]} ... [{len(message) - 2 * half} characters cut] ... {message[-half:]}"
        super().__init__(kind, message, data)
        self.kind, self.message, self.data = kind, message, data

    def _fields(self) -> tuple[ErrorKind, str, Any]:
        return (self.kind, self.message, self.data)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, AgentError)
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kind={self.kind!r}, message={self.message!r}, data={self.data!r})"

    def __str__(self) -> str:
        return self.message

    def to_jsonrpc(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.kind.code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return error

    def to_qga(self) -> dict[str, Any]:
        return {"class": self.kind.qga_class, "desc": self.message}

    @classmethod
    def from_jsonrpc(cls, error: Any) -> AgentError:
        """Rebuild an error from a JSON-RPC reply (host side); unknown codes become COMMAND_FAILED."""
        if not isinstance(error, dict):
            return cls(ErrorKind.INVALID_REQUEST, f"malformed error object: {error!r}")
        code = error.get("code")
        kind = _KIND_BY_CODE.get(code, ErrorKind.COMMAND_FAILED) if isinstance(code, int) else (
            ErrorKind.COMMAND_FAILED
        )
        return cls(kind, str(error.get("message", "")), error.get("data"))

    @classmethod
    def from_qga(cls, error: Any) -> AgentError:
        """Rebuild an error from a qemu-ga reply; the class is all qemu-ga tells, so map it back."""
        if not isinstance(error, dict):
            return cls(ErrorKind.INVALID_REQUEST, f"malformed error object: {error!r}")
        qga_class = error.get("class")
        desc = str(error.get("desc", ""))
        if qga_class == "CommandNotFound":
            kind = ErrorKind.COMMAND_NOT_FOUND
        elif parse_freeze_lost(desc) is not None:  # the kind back from pyqga's words
            kind = ErrorKind.FREEZE_LOST
        else:
            kind = ErrorKind.COMMAND_FAILED
        return cls(kind, desc, {"class": qga_class})

    @property
    def qga_class(self) -> str:
        """The class as the peer said it, when it came from qemu-ga; else the kind's class."""
        said = self.data.get("class") if isinstance(self.data, dict) else None
        return said if isinstance(said, str) else self.kind.qga_class


def parse_error(reason: str) -> AgentError:
    return AgentError(ErrorKind.PARSE_ERROR, f"Parse error: {reason}")


def invalid_request(reason: str) -> AgentError:
    return AgentError(ErrorKind.INVALID_REQUEST, reason)


def not_an_object() -> AgentError:
    # qemu's wording for any top-level value that is not an object (42, "str", null...).
    return AgentError(ErrorKind.INVALID_REQUEST, "QMP input must be a JSON object")


def command_not_found(name: str) -> AgentError:
    # qemu-ga's exact wording, which libvirt matches on.
    return AgentError(ErrorKind.COMMAND_NOT_FOUND, f"The command {quote(name)} has not been found")


def command_disabled(name: str, why: str) -> AgentError:
    return AgentError(ErrorKind.COMMAND_DISABLED, f"Command {quote(name)} has been disabled: {why}")


def invalid_params(reason: str) -> AgentError:
    return AgentError(ErrorKind.INVALID_PARAMS, reason)


def command_failed(reason: str) -> AgentError:
    return AgentError(ErrorKind.COMMAND_FAILED, reason)
