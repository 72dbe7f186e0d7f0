"""Calling a command's handler through jsonrpcserver; the one module that knows jsonrpcserver.

jsonrpcserver is the chosen dispatcher: it calls the method with the agent as context and turns
any exception that is not ours into an internal error (logged by its ``jsonrpcserver`` logger).
Each handler is wrapped once in a method that returns ``Success(result)``, or
``Error(..., data=error)`` for an :class:`AgentError`, which comes back whole as the error's data.

Only the part of jsonrpcserver that calls a method is loaded: its ``dispatcher`` (``call``,
``to_response``), ``request``, ``response`` and ``result`` modules, not its package
``__init__``, which also imports its JSON-schema validator (jsonschema, referencing, rpds, attrs:
the schema built at import), its asyncio API and its HTTP server (``http.server``), none of which
the agent uses: ``protocol/`` checks the envelope and the registry the method and its parameters,
so the pipeline around ``call`` (deserialize, validate, look up, ``signature().bind``) would only
repeat them.  What that saved (issue 22), under ``/usr/bin/python3`` on the 2-CPU development
machine: the call from 9.5 to 1.8 us a request (``call`` and the response helpers against
``dispatch_to_serializable`` with its deserializer and validator switched off), and start-up
imports of jsonschema & co (~45 ms, ~5 MB resident; see BENCHMARKS.md, bench/footprint.py).

The package objects (jsonrpcserver's and oslash's, see :data:`BARE`) are registered bare in
``sys.modules`` only while those modules load, then removed: a later ``import jsonrpcserver`` (a
test, a host tool in the same process) runs its ``__init__`` as usual and gets the same
submodules, so ``jsonrpcserver.Success`` is this module's ``Success``.  If jsonrpcserver is
imported whole already, its modules are used as they are.

Everything is imported when this module is (the agent imports it before serving): an import
reads and may write the disk, which must not happen while a filesystem is frozen.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable, Iterable
from types import ModuleType
from typing import Any

from pyqga.agent.errors import AgentExtraMissing
from pyqga.agent.registry import Command
from pyqga.protocol.errors import AgentError, ErrorKind

PACKAGE = "jsonrpcserver"
PARTS = ("dispatcher", "request", "response", "result")   # what calling a method needs
# Loaded bare as well: oslash's __init__ imports its every monad (22 modules, ~0.8 MB) for the
# one, Either, that jsonrpcserver's dispatcher uses.
BARE = (PACKAGE, "oslash")


def _load_parts() -> list[ModuleType]:
    """jsonrpcserver's :data:`PARTS`, without the ``__init__`` of :data:`BARE` (module docstring);
    a package of BARE imported whole already (and with it its dependencies) is used as it is."""
    registered = []
    try:
        for name in BARE:
            if name not in sys.modules:
                spec = importlib.util.find_spec(name)
                if spec is None:
                    raise AgentExtraMissing(name)
                sys.modules[name] = importlib.util.module_from_spec(spec)
                registered.append(name)
        return [importlib.import_module(f"{PACKAGE}.{part}") for part in PARTS]
    except ModuleNotFoundError as missing:  # another of jsonrpcserver's own dependencies
        raise AgentExtraMissing(missing.name or PACKAGE) from None
    finally:
        for name in registered:
            del sys.modules[name]


_dispatcher, _request, _response, _result = _load_parts()
Success, Error = _result.Success, _result.Error
_FAILED = ErrorKind.COMMAND_FAILED.code


def _as_method(command: Command) -> Callable[..., Any]:
    handler = command.handler

    def method(agent: Any, **params: Any) -> Any:
        try:
            return Success(handler(agent, **params))
        except AgentError as error:  # carried whole, as the data of the error result
            return Error(_FAILED, error.message, error)

    return method


class Calls:
    """The agent's commands as jsonrpcserver methods, called with ``agent`` as their context."""

    def __init__(self, agent: Any, commands: Iterable[Command]) -> None:
        self._agent = agent
        self._methods = {command.name: _as_method(command) for command in commands}

    def call(self, name: str, params: dict[str, Any]) -> Any:
        """``name``'s handler's result; raises :class:`AgentError` for its failure, and for an
        exception of ours (a bug) an internal error naming the command."""
        # An id (null) so jsonrpcserver answers: a notification is the protocol's business.
        request = _request.Request(name, params, None)
        outcome = _dispatcher.call(request, self._agent, self._methods[name])
        response: dict[str, Any] = _response.to_serializable_one(_dispatcher.to_response(request, outcome))
        if "result" in response:
            return response["result"]
        failure = response["error"].get("data")
        if isinstance(failure, AgentError):
            raise failure
        self._agent.log.error("%s failed: %s", name, failure)  # jsonrpcserver caught our bug
        raise AgentError(ErrorKind.INTERNAL_ERROR, f"internal error in {name}: {failure}")
