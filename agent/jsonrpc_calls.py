"""Calling a command's handler through jsonrpcserver, by its public API; the one module that
knows jsonrpcserver.

jsonrpcserver is the chosen dispatcher: it calls the method with the agent as context and turns
any exception that is not ours into an internal error (logged by its ``jsonrpcserver``
logger).  ``protocol/`` has already checked the envelope and the registry the parameters, so its
parsing and JSON-schema validation are switched off through its own options (``deserializer``,
``validator``: the schema step alone cost ~45 us a request).  Each handler is wrapped once in a
method that returns ``Success(result)``, or ``Error(..., data=error)`` for an
:class:`AgentError`, which comes back whole as the error's data.  The method's
``__signature__`` says "the agent, then any keywords", so jsonrpcserver's own
``signature().bind`` check of the parameters is cheap (~4 us less than inspecting the wrapper
each time); the registry's check is the one that words the errors.

What the public API costs, against the previous route (``jsonrpcserver.dispatcher.call`` with the
package registered bare in ``sys.modules`` to skip its ``__init__``, and the result unwrapped
through oslash's private ``_value``/``_error``), measured on the 2-CPU development machine,
both trees alternated in the same minutes (issue 18):
- the call alone: ~9.5 us through ``dispatch_to_serializable`` against ~0.9 us through
  ``dispatcher.call`` (its pipeline of ``Either`` binds, partials and namedtuples, and the
  ``signature().bind`` check: no public option skips them);
- from bytes in to the transport's write, in process (best of 9 x 5,000): ``guest-ping`` with an
  id 4.75 -> 13.7 us, ``guest-sync`` 5.3 -> 14.4 us (JSON-RPC 5.6 -> 15.0 us),
  ``guest-fsfreeze-status`` 4.7 -> 14.1 us; a request refused before any call (unknown
  command) 4.6 -> 4.8 us;
- start-up: importing the package ``__init__`` also loads jsonschema (it builds its request
  schema validator at import), its async API and its HTTP server: importing the agent's modules
  under ``/usr/bin/python3`` 96 -> 139 ms, resident 26.9 -> 32.5 MB (medians of 9);
  ``bench/rpc.py``'s resident size after 10,000 requests 23.5 -> 29.2 MB, over its 25 MB target.

Everything is imported when this module is (the agent imports it before serving): an import
reads and may write the disk, which must not happen while a filesystem is frozen.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Iterable
from typing import Any

from pyqga.agent.errors import AgentExtraMissing
from pyqga.agent.registry import Command
from pyqga.protocol.errors import AgentError, ErrorKind

with warnings.catch_warnings():
    # jsonrpcserver 5 reads its schema with importlib.resources.read_text, deprecated in 3.11.
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        from jsonrpcserver import Error, Success, dispatch_to_serializable
    except ModuleNotFoundError as missing:  # jsonrpcserver, or one of its own dependencies
        raise AgentExtraMissing(missing.name or "jsonrpcserver") from None

# "the agent, then any keywords": the parameters were checked by the registry already.
_SIGNATURE = inspect.Signature([
    inspect.Parameter("agent", inspect.Parameter.POSITIONAL_ONLY),
    inspect.Parameter("params", inspect.Parameter.VAR_KEYWORD),
])
_FAILED = ErrorKind.COMMAND_FAILED.code


def _as_method(command: Command) -> Callable[..., Any]:
    handler = command.handler

    def method(agent: Any, **params: Any) -> Any:
        try:
            return Success(handler(agent, **params))
        except AgentError as error:  # carried whole, as the data of the error result
            return Error(_FAILED, error.message, error)

    method.__signature__ = _SIGNATURE  # type: ignore[attr-defined]
    return method


def _decoded(request: dict[str, Any]) -> dict[str, Any]:
    """The request is decoded and checked already: handed to jsonrpcserver as it is."""
    return request


def _valid(request: dict[str, Any]) -> None:
    """No schema check: ``protocol/`` checked the envelope, the registry the parameters."""


class Calls:
    """The agent's commands as jsonrpcserver methods, called with ``agent`` as their context."""

    def __init__(self, agent: Any, commands: Iterable[Command]) -> None:
        self._agent = agent
        self._methods = {command.name: _as_method(command) for command in commands}

    def call(self, name: str, params: dict[str, Any]) -> Any:
        """``name``'s handler's result; raises :class:`AgentError` for its failure, and for an
        exception of ours (a bug) an internal error naming the command."""
        response = dispatch_to_serializable(
            # An id (null) so jsonrpcserver answers: a notification is the protocol's business.
            {"method": name, "params": params, "id": None},
            self._methods, context=self._agent, deserializer=_decoded, validator=_valid)
        # One request with an id: jsonrpcserver answers with one response object.
        assert isinstance(response, dict), f"jsonrpcserver answered {type(response).__name__}"
        if "result" in response:
            return response["result"]
        failure = response["error"].get("data")
        if isinstance(failure, AgentError):
            raise failure
        self._agent.log.error("%s failed: %s", name, failure)  # jsonrpcserver caught our bug
        raise AgentError(ErrorKind.INTERNAL_ERROR, f"internal error in {name}: {failure}")
