"""Every failure class the agent defines has one root, :class:`AgentFailure`, as qemu.qmp's
exceptions have ``QMPError``; the wire's ``AgentError`` stays apart from it."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pyqga.agent
from pyqga.agent.errors import AgentFailure
from pyqga.protocol.errors import AgentError


def _agent_exception_classes() -> list[type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages(pyqga.agent.__path__, "pyqga.agent."):
        if info.name.endswith(".__main__"):
            continue  # importing it starts the agent
        module = importlib.import_module(info.name)
        for _, value in inspect.getmembers(module, inspect.isclass):
            if issubclass(value, BaseException) and value.__module__ == info.name:
                found[f"{value.__module__}.{value.__qualname__}"] = value
    return list(found.values())


def test_every_agent_failure_class_has_the_one_root() -> None:
    classes = _agent_exception_classes()
    names = {c.__name__ for c in classes}
    # The ones the issue named, so the walk cannot pass by finding nothing.
    assert {"AgentFailure", "ConfigError", "ChannelError", "PidFileError", "CorruptState"} <= names
    strays = [c.__qualname__ for c in classes if not issubclass(c, AgentFailure)]
    assert strays == []


def test_the_root_is_not_the_wire_error() -> None:
    assert not issubclass(AgentFailure, AgentError)
    assert not issubclass(AgentError, AgentFailure)


def test_corrupt_state_is_still_a_value_error() -> None:
    from pyqga.agent.freeze.snapshot import CorruptState

    assert issubclass(CorruptState, ValueError)
