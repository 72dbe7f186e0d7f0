"""From a classified request to its reply: one lookup, the gate, the call.

The dispatcher answers with :class:`~pyqga.protocol.server.Reply` values (results and errors,
never bytes): the connection's send side (``ServerConnection.send``) turns them into bytes
with the wire's rules (dialect, id, batch layout, the 0xFF prefix).  The call itself goes
through jsonrpcserver, in :mod:`pyqga.agent.jsonrpc_calls`, the one module that knows it.

Per request the command is looked up once (:meth:`Dispatcher.prepare`); the gate, the lane
(``Command.lane``) and the call all use that one :class:`Prepared`.  Gatekeeping happens before
the call, in this order, so the host hears the most useful error: unknown command, disabled
command (blocked or frozen), bad parameters.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from pyqga.agent.jsonrpc_calls import Calls
from pyqga.agent.registry import Command
from pyqga.agent.state import AgentState
from pyqga.protocol.dialects import Batch, Incoming, Invalid, Request
from pyqga.protocol.errors import AgentError, command_disabled, command_not_found
from pyqga.protocol.server import BatchReply, Reply


class Prepared(NamedTuple):
    """A request that passed the gate, with its command: ready to run (maybe on a worker)."""

    request: Request
    command: Command
    params: dict[str, Any]


class Dispatcher:
    def __init__(self, agent: AgentState) -> None:
        self.agent = agent
        self._commands = {command.name: command for command in agent.registry}
        self._calls = Calls(agent, agent.registry)

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
        try:
            result = self._calls.call(prepared.command.name, prepared.params)
        except AgentError as error:
            return Reply(prepared.request, error=error)
        return Reply(prepared.request, result, None, prepared.command.delimited)

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
