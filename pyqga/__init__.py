"""pyqga: a guest agent modelled on QEMU's qemu-ga, and the host library that drives it.

The one import name of the project.  Its parts are the repository's top-level folders, mapped
here by ``pyproject.toml`` (``package-dir``) in a built wheel and by symlinks in a checkout:

- :mod:`pyqga.agent`: the in-guest daemon ``pyqga-agent``;
- :mod:`pyqga.protocol`: the sans-IO wire code both sides share;
- :mod:`pyqga.host_client`: the host library and the ``pyqga`` CLI.

The host library's public names are importable from here.  They load on first use (PEP 562), so
that the agent, which imports ``pyqga.agent`` and so this module, never pays for the host side.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pyqga.host_client.aio import AsyncAgentClient as AsyncAgentClient
    from pyqga.host_client.client import AgentClient as AgentClient
    from pyqga.host_client.client import Freeze as Freeze
    from pyqga.host_client.errors import AgentCallError as AgentCallError
    from pyqga.host_client.errors import AgentClientError as AgentClientError
    from pyqga.host_client.errors import AgentConnectionError as AgentConnectionError
    from pyqga.host_client.errors import AgentTimeout as AgentTimeout
    from pyqga.host_client.errors import ClientClosed as ClientClosed
    from pyqga.host_client.errors import ExecFailed as ExecFailed
    from pyqga.host_client.errors import FreezeLost as FreezeLost
    from pyqga.host_client.faults import ActiveFault as ActiveFault
    from pyqga.host_client.faults import AsyncFault as AsyncFault
    from pyqga.host_client.faults import Fault as Fault
    from pyqga.host_client.faults import FaultCapabilities as FaultCapabilities
    from pyqga.host_client.faults import FaultEvent as FaultEvent
    from pyqga.host_client.faults import Plan as Plan
    from pyqga.host_client.guest_ops import ExecResult as ExecResult
    from pyqga.host_client.guest_ops import StallResult as StallResult

_PUBLIC = {
    "AgentClient": "pyqga.host_client.client",
    "AsyncAgentClient": "pyqga.host_client.aio",
    "Freeze": "pyqga.host_client.client",
    "AgentClientError": "pyqga.host_client.errors",
    "AgentConnectionError": "pyqga.host_client.errors",
    "AgentTimeout": "pyqga.host_client.errors",
    "AgentCallError": "pyqga.host_client.errors",
    "ClientClosed": "pyqga.host_client.errors",
    "ExecFailed": "pyqga.host_client.errors",
    "FreezeLost": "pyqga.host_client.errors",
    "ActiveFault": "pyqga.host_client.faults",
    "AsyncFault": "pyqga.host_client.faults",
    "Fault": "pyqga.host_client.faults",
    "FaultCapabilities": "pyqga.host_client.faults",
    "FaultEvent": "pyqga.host_client.faults",
    "Plan": "pyqga.host_client.faults",
    "ExecResult": "pyqga.host_client.guest_ops",
    "StallResult": "pyqga.host_client.guest_ops",
}

# A literal, as type checkers read it (pyright ignores a computed __all__ and would export every
# name here, `importlib` and `Any` included); tests/process/test_public_package.py checks it is
# _PUBLIC's keys.
__all__ = [
    "ActiveFault",
    "AgentCallError",
    "AgentClient",
    "AgentClientError",
    "AgentConnectionError",
    "AgentTimeout",
    "AsyncAgentClient",
    "AsyncFault",
    "ClientClosed",
    "ExecFailed",
    "ExecResult",
    "Fault",
    "FaultCapabilities",
    "FaultEvent",
    "Freeze",
    "FreezeLost",
    "Plan",
    "StallResult",
]


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'pyqga' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next access is a plain lookup
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
