"""From a classified request to its reply: one lookup, the gate, the call.

The dispatcher answers with :class:`~pyqga.protocol.server.Reply` values (results and errors,
never bytes): the connection's send side (``ServerConnection.send``) turns them into bytes
with the wire's rules (dialect, id, batch layout, the 0xFF prefix).

The call goes through jsonrpcserver's ``call`` step: it invokes the method with the agent as
context and turns any exception that is not ours into an internal error.  We skip its envelope
parsing and JSON-schema validation (``protocol/`` has already checked the envelope, the registry
the parameters; the schema step alone cost ~45 us a request), and its
``inspect.signature().bind`` re-check of the parameters (~8 us).  An :class:`AgentError` travels
through it untouched, as the data of its error result, so nothing is converted back and forth.

We import only jsonrpcserver's dispatcher, not its package ``__init__``, which would also load
its schema validator (jsonschema: 7 MB resident and ~60 ms of start-up), its async API and an
HTTP server, none of which the agent uses: see :func:`_import_dispatcher`.

Per request the command is looked up once (:meth:`Dispatcher.prepare`); the gate, the lane
(``Command.lane``) and the call all use that one :class:`Prepared`.  Gatekeeping happens before
the call, in this order, so the host hears the most useful error: unknown command, disabled
command (blocked or frozen), bad parameters.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from pyqga.agent.registry import Command
from pyqga.agent.state import AgentState
from pyqga.protocol.dialects import Batch, Incoming, Invalid, Request
from pyqga.protocol.errors import AgentError, ErrorKind, command_disabled, command_not_found
from pyqga.protocol.server import BatchReply, Reply


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
from jsonrpcserver.result import ErrorResult, SuccessResult  # noqa: E402
from oslash.either import Left, Right  # noqa: E402  (jsonrpcserver's result type)


@dataclass(slots=True)
class Prepared:
    """A request that passed the gate, with its command: ready to run (maybe on a worker)."""

    request: Request
    command: Command
    params: dict[str, Any]


def _as_method(command: Command) -> Callable[..., Any]:
    handler = command.handler
    kind_code = ErrorKind.COMMAND_FAILED.code

    def method(agent: AgentState, **params: Any) -> Any:
        try:
            return Right(SuccessResult(handler(agent, **params)))
        except AgentError as error:  # carried whole, as the data of the error result
            return Left(ErrorResult(kind_code, error.message, error))

    return method


class Dispatcher:
    def __init__(self, agent: AgentState) -> None:
        self.agent = agent
        self._commands = {command.name: command for command in agent.registry}
        self._methods = {command.name: _as_method(command) for command in agent.registry}

    def prepare(self, request: Request) -> Prepared | Reply:
        """The gate: a Prepared call, or the Reply that refuses it (one lookup)."""
        command = self._commands.get(request.method)
        if command is None:
            return Reply(request, error=command_not_found(request.method))
        refusal = self._refusal(request, command)
        if refusal is not None:
            return refusal
        try:
            params = command.check_params(request.params)
        except AgentError as error:
            return Reply(request, error=error)
        return Prepared(request, command, params)

    def _refusal(self, request: Request, command: Command) -> Reply | None:
        reason = self.agent.disabled_reason(command.name)
        return None if reason is None else Reply(request, error=command_disabled(command.name, reason))

    def run(self, prepared: Prepared) -> Reply:
        """Call the handler; safe on a worker thread.  A delimited command's success is
        delimited (its errors are not)."""
        name = prepared.command.name
        rpc = RpcRequest(name, prepared.params, prepared.request.id)
        result = _rpc.call(rpc, self.agent, self._methods[name])
        if isinstance(result, Right):
            return Reply(prepared.request, result._value.result, None, prepared.command.delimited)
        failure = result._error.data
        if isinstance(failure, AgentError):
            return Reply(prepared.request, error=failure)
        self.agent.log.error("%s failed: %s", name, failure)  # jsonrpcserver caught our bug
        return Reply(prepared.request,
                     error=AgentError(ErrorKind.INTERNAL_ERROR, f"internal error in {name}: {failure}"))

    def complete(self, prepared: Prepared) -> Reply | None:
        """Run a prepared request: its reply, or None for a success that is not answered
        (``success_response``: guest-shutdown)."""
        reply = self.run(prepared)
        if reply.error is None and not prepared.command.success_response:
            return None
        return reply

    def complete_later(self, prepared: Prepared) -> Reply | None:
        """:meth:`complete` for a request that waited for a worker: the agent may have frozen
        meanwhile, so the gate's freeze check is asked again before the call."""
        refusal = self._refusal(prepared.request, prepared.command)
        if refusal is not None:
            return refusal
        return self.complete(prepared)

    def answer(self, item: Incoming) -> Reply | BatchReply | None:
        """Answer ``item`` entirely on this thread."""
        if isinstance(item, Request):
            prepared = self.prepare(item)
            if isinstance(prepared, Reply):
                return prepared
            return self.complete(prepared)
        if isinstance(item, Batch):
            return BatchReply([self._answer_in_batch(element) for element in item.items])
        return Reply(item, error=item.error)

    def _answer_in_batch(self, item: Request | Invalid) -> Reply:
        """In a batch every request is answered, guest-shutdown's success too."""
        if isinstance(item, Invalid):
            return Reply(item, error=item.error)
        prepared = self.prepare(item)
        return prepared if isinstance(prepared, Reply) else self.run(prepared)

    def lane(self, item: Incoming) -> str | None:
        """Where answering a batch or an invalid message must run (see ``Command.lane``)."""
        lane = None
        for request in item.items if isinstance(item, Batch) else ():
            command = self._commands.get(request.method) if isinstance(request, Request) else None
            if command is not None and command.lane == "urgent":
                return "urgent"
            lane = lane or (command.lane if command is not None else None)
        return lane
