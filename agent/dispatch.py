"""From a classified request to reply bytes, through jsonrpcserver.

jsonrpcserver does the method call: it invokes the method with the agent as context and turns
its result or exception into a success or error result.  We skip its envelope parsing and
JSON-schema validation (``protocol/`` has already checked the envelope, the registry the
parameters; the schema step alone cost ~45 us a request, more than the rest of a round trip),
and its ``inspect.signature().bind`` re-check of the parameters (~8 us), by calling its ``call``
step directly.  Measured here: ``dispatch_to_response`` ~73 us a request, ``dispatch_request``
~11 us, ``call`` ~2 us.

We import only jsonrpcserver's dispatcher, not its package ``__init__``, which would also load
its schema validator (jsonschema: 7 MB resident and ~60 ms of start-up), its async API and an
HTTP server, none of which the agent uses: see :func:`_import_dispatcher`.

Gatekeeping happens before the call, in this order, so the host hears the most useful error:
unknown command, disabled command (blocked or frozen), bad parameters.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from agent.registry import Command
from agent.state import AgentState
from protocol.dialects import (
    EMPTY_RETURN_LINE,
    Batch,
    Dialect,
    Incoming,
    Invalid,
    Request,
    encode,
    reply_object,
)
from protocol.errors import (
    AgentError,
    ErrorKind,
    command_disabled,
    command_not_found,
)

KIND_BY_CODE = {kind.code: kind for kind in ErrorKind}


def _import_dispatcher() -> ModuleType:
    """``jsonrpcserver.dispatcher`` with the package registered bare (its ``__init__`` not run).

    The package module gets its real search path, so its submodules load as usual; a process
    that imports this module sees a ``jsonrpcserver`` package without the top-level names.
    """
    if "jsonrpcserver" not in sys.modules:
        spec = importlib.util.find_spec("jsonrpcserver")
        if spec is None:
            raise ImportError("jsonrpcserver is not installed")
        sys.modules["jsonrpcserver"] = importlib.util.module_from_spec(spec)
    return importlib.import_module("jsonrpcserver.dispatcher")


_rpc = _import_dispatcher()
from jsonrpcserver.request import Request as RpcRequest  # noqa: E402
from jsonrpcserver.result import Error, Success  # noqa: E402
from jsonrpcserver.sentinels import NODATA  # noqa: E402
from oslash.either import Right  # noqa: E402  (jsonrpcserver's result type)


@dataclass(frozen=True, slots=True)
class Outcome:
    result: Any = None
    error: AgentError | None = None


@dataclass(frozen=True, slots=True)
class Prepared:
    """A request that passed the gate, ready to run (maybe on a worker thread)."""

    request: Request
    command: Command
    params: dict[str, Any]


def _as_method(command: Command) -> Callable[..., Any]:
    handler = command.handler

    def method(agent: AgentState, **params: Any) -> Any:
        try:
            return Success(handler(agent, **params))
        except AgentError as error:
            return Error(error.kind.code, error.message, NODATA if error.data is None else error.data)

    return method


class Dispatcher:
    def __init__(self, agent: AgentState) -> None:
        self.agent = agent
        self._methods = {command.name: _as_method(command) for command in agent.registry}

    def prepare(self, request: Request) -> Prepared | Outcome:
        """The gate: a Prepared call, or the Outcome that refuses it."""
        command = self.agent.registry.get(request.method)
        if command is None:
            return Outcome(error=command_not_found(request.method))
        reason = self.agent.disabled_reason(command.name)
        if reason is not None:
            return Outcome(error=command_disabled(command.name, reason))
        try:
            params = command.check_params(request.params)
        except AgentError as error:
            return Outcome(error=error)
        return Prepared(request, command, params)

    def run(self, prepared: Prepared) -> Outcome:
        """Call the handler; safe on a worker thread."""
        rpc = RpcRequest(prepared.command.name, prepared.params, prepared.request.id)
        result = _rpc.call(rpc, self.agent, self._methods[prepared.command.name])
        if isinstance(result, Right):
            return Outcome(result=result._value.result)
        failure = result._error
        kind = KIND_BY_CODE.get(failure.code, ErrorKind.COMMAND_FAILED)
        data = None if failure.data is NODATA else failure.data
        if kind is ErrorKind.INTERNAL_ERROR:
            self.agent.log.error("%s failed: %s", prepared.command.name, data)
            return Outcome(error=AgentError(kind, f"internal error in {prepared.command.name}: {data}"))
        return Outcome(error=AgentError(kind, failure.message, data))


def encode_outcome(request: Request | Invalid, outcome: Outcome, delimited: bool = False) -> bytes | None:
    """Reply bytes, or None when nothing is sent (a notification, a no-reply command)."""
    if (
        outcome.error is None
        and request.dialect is Dialect.QGA
        and not request.has_id
        and not delimited
        and type(outcome.result) is dict
        and not outcome.result
    ):
        return EMPTY_RETURN_LINE  # exactly what the general path below gives, ~1.7 us sooner
    obj = outcome_object(request, outcome)
    return None if obj is None else encode(obj, delimited=delimited)


def outcome_object(request: Request | Invalid, outcome: Outcome) -> dict[str, Any] | None:
    if isinstance(request, Request) and not request.wants_reply:
        return None
    has_id = request.has_id or request.dialect is Dialect.JSONRPC
    return reply_object(request.dialect, request.id, has_id, outcome.result, outcome.error)


def answer_now(dispatcher: Dispatcher, item: Incoming) -> bytes | None:
    """Answer ``item`` on this thread (the loop's fast path, and worker threads)."""
    if isinstance(item, Invalid):
        return encode_outcome(item, Outcome(error=item.error))
    if isinstance(item, Batch):
        return answer_batch(dispatcher, item)
    prepared = dispatcher.prepare(item)
    if isinstance(prepared, Outcome):
        return encode_outcome(item, prepared)
    outcome = dispatcher.run(prepared)
    if outcome.error is None and not prepared.command.success_response:
        return None
    return encode_outcome(item, outcome, delimited=prepared.command.delimited and outcome.error is None)


def answer_batch(dispatcher: Dispatcher, batch: Batch) -> bytes | None:
    replies: list[dict[str, Any]] = []
    delimited = False
    for item in batch.items:
        if isinstance(item, Invalid):
            outcome = Outcome(error=item.error)
        else:
            prepared = dispatcher.prepare(item)
            if isinstance(prepared, Outcome):
                outcome = prepared
            else:
                outcome = dispatcher.run(prepared)
                delimited |= prepared.command.delimited and outcome.error is None
        obj = outcome_object(item, outcome)
        if obj is not None:
            replies.append(obj)
    return encode(replies, delimited=delimited) if replies else None


def needs_worker(dispatcher: Dispatcher, item: Incoming) -> str | None:
    """Where answering ``item`` must run: None on the connection loop (it cannot block),
    "urgent" on the freeze commands' own threads, "worker" on the shared worker pool."""
    requests = item.items if isinstance(item, Batch) else (item,)
    lane = None
    for request in requests:
        if isinstance(request, Request):
            command = dispatcher.agent.registry.get(request.method)
            if command is not None and command.urgent:
                return "urgent"
            if command is not None and command.blocking:
                lane = "worker"
    return lane
