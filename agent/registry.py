"""The command registry: the single source for dispatch, ``guest-info``, ``--help`` and docs.

A command is declared once as a :class:`Command` value next to its handler; each commands module
exports a tuple of them and :func:`build_registry` joins those tuples.  Parameter checking lives
here (not in the handlers, not in jsonrpcserver's schema validation, which costs ~45 us a
request) and uses qemu's QAPI wording, so libvirt sees the texts it knows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, NamedTuple

from pyqga.protocol.errors import invalid_params, quote

# Commands qemu-ga lists on Linux but never runs (guest-get-devices is Windows-only: qemu-ga 7.2
# reports it in guest-info as disabled).  pyqga has no such command; a qemu-ga configuration's
# -b/-a may still name it.
QEMU_GA_DISABLED = frozenset({"guest-get-devices"})

JSON_TYPE_NAMES: Mapping[type, str] = {
    int: "integer",
    float: "number",
    str: "string",
    bool: "boolean",
    list: "array",
    dict: "object",
}


class Param(NamedTuple):
    name: str
    type: type
    required: bool = True
    doc: str = ""

    def accepts(self, value: Any) -> bool:
        if self.type is float:
            return isinstance(value, int | float) and not isinstance(value, bool)
        if self.type is int:
            return isinstance(value, int) and not isinstance(value, bool)
        return isinstance(value, self.type)


class AnyValueParam(Param):
    """A parameter of a QAPI alternate type (``bool`` or enum name, int or enum name): the
    registry lets any JSON value through and the handler checks it, so the error can name the
    alternate type as qemu does (``expected: GuestExecCaptureOutput``)."""

    __slots__ = ()

    def accepts(self, value: Any) -> bool:
        return True


class Command:
    """One command.  The handler is called as ``handler(agent, **params)``.

    Immutable by convention.  A plain class, not a dataclass, which would cost ~1 ms to define at
    every start of the agent; a NamedTuple would not derive :attr:`lane` and :attr:`required`."""

    __slots__ = ("_by_name", "allowed_while_frozen", "blocking", "delimited", "doc", "handler", "lane",
                 "name", "params", "required", "success_response", "urgent")
    name: str
    handler: Callable[..., Any]
    doc: str
    params: tuple[Param, ...]
    success_response: bool       # False: no reply on success (guest-shutdown)
    allowed_while_frozen: bool
    delimited: bool              # reply is prefixed with 0xFF (guest-sync-delimited)
    # Runs on a worker thread, off the connection loop: anything that may wait on a device, a
    # filesystem or a process (writes, statvfs, ioctls to disks, exec, sleeps).  Reads of procfs
    # and sysfs never wait, not even on a frozen filesystem, and stay on the loop as in qemu-ga:
    # a hand-off to a thread costs several times what they do.
    blocking: bool
    urgent: bool                 # blocking, on threads of its own: never queued behind commands
                                 # that a freeze may block (a thaw must always find a thread)
    _by_name: Mapping[str, Param]
    # Where it runs: None on the connection loop (it cannot block), "urgent" on the freeze
    # commands' own threads, "worker" on the shared worker pool.  Derived once, used per request.
    lane: str | None
    required: tuple[str, ...]

    def __init__(self, name: str, handler: Callable[..., Any], doc: str, params: tuple[Param, ...] = (),
                 success_response: bool = True, allowed_while_frozen: bool = False, delimited: bool = False,
                 blocking: bool = False, urgent: bool = False) -> None:
        self.name, self.handler, self.doc, self.params = name, handler, doc, params
        self.success_response, self.allowed_while_frozen, self.delimited = (
            success_response, allowed_while_frozen, delimited)
        self.blocking, self.urgent = blocking, urgent
        self._by_name = {p.name: p for p in params}
        self.required = tuple(p.name for p in params if p.required)
        self.lane = "urgent" if urgent else "worker" if blocking else None

    def __repr__(self) -> str:
        return f"Command({self.name!r})"

    def check_params(self, params: dict[str, Any] | list[Any]) -> dict[str, Any]:
        """Validated keyword arguments, or an INVALID_PARAMS error in qemu's words."""
        if not params:
            if self.required:
                raise invalid_params(f"Parameter '{self.required[0]}' is missing")
            return {}
        if isinstance(params, list):
            if len(params) > len(self.params):
                raise invalid_params(f"{self.name} takes at most {len(self.params)} parameters")
            params = {p.name: value for p, value in zip(self.params, params, strict=False)}
        for name, value in params.items():
            spec = self._by_name.get(name)
            if spec is None:
                raise invalid_params(f"Parameter '{quote(name)}' is unexpected")
            if not spec.accepts(value):
                raise invalid_params(
                    f"Invalid parameter type for '{name}', expected: {JSON_TYPE_NAMES[spec.type]}"
                )
        for name in self.required:
            if name not in params:
                raise invalid_params(f"Parameter '{name}' is missing")
        return params

    def usage(self) -> str:
        """One line for ``--help`` style listings."""
        args = " ".join(
            f"{p.name}:{JSON_TYPE_NAMES[p.type]}" if p.required else f"[{p.name}:{JSON_TYPE_NAMES[p.type]}]"
            for p in self.params
        )
        return f"{self.name} {args}".rstrip()


class Registry:
    """Immutable after construction; iteration is in name order, as listings want."""

    def __init__(self, commands: Iterable[Command]) -> None:
        by_name: dict[str, Command] = {}
        for command in commands:
            if command.name in by_name:
                raise ValueError(f"command {command.name} registered twice")
            by_name[command.name] = command
        self._by_name = dict(sorted(by_name.items()))

    def get(self, name: str) -> Command | None:
        return self._by_name.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self) -> Iterator[Command]:
        return iter(self._by_name.values())

    def names(self) -> list[str]:
        return list(self._by_name)


def build_registry() -> Registry:
    """Every command the agent knows, from every commands module."""
    from pyqga.agent.commands import (
        accounts,
        core,
        cpus_memory,
        disks,
        exec,
        faults,
        files,
        fsfreeze,
        network,
        power,
        stats,
        system,
        users,
    )

    modules = (core, fsfreeze, faults, exec, files, system, network, stats, cpus_memory, disks, users,
               accounts, power)
    return Registry(command for module in modules for command in module.COMMANDS)
