"""A scripted agent on a unix socket, for host-side tests that need exact replies.

It speaks the real wire (either dialect, through :class:`pyqga.protocol.server.ServerConnection`),
answers the resync itself, records every other request, and answers each with the test's
handler for that method: a result, or an :class:`~pyqga.protocol.errors.AgentError` raised.  An
unscripted method gets CommandNotFound, as from an agent that lacks it.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pyqga.protocol.dialects import Batch, Invalid, Request
from pyqga.protocol.errors import AgentError, ErrorKind
from pyqga.protocol.server import Reply, ServerConnection

Handler = Callable[[dict[str, Any]], Any]


class ScriptedAgent:
    def __init__(self, path: Path, handlers: dict[str, Handler]) -> None:
        self.path = path
        self.handlers = handlers
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen()
        self.thread = threading.Thread(target=self._serve, daemon=True, name="scripted-agent")
        self.thread.start()

    @property
    def address(self) -> str:
        return str(self.path)

    def methods(self) -> list[str]:
        return [method for method, _ in self.requests]

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                server = ServerConnection()
                try:
                    while chunk := conn.recv(65536):
                        for item in server.receive_data(chunk):
                            assert not isinstance(item, Batch)
                            out = server.send(self._answer(item))
                            if out:
                                conn.sendall(out)
                except OSError:
                    continue

    def _answer(self, item: Request | Invalid) -> Reply:
        if isinstance(item, Invalid):
            return Reply(item, error=item.error)
        params = item.params if isinstance(item.params, dict) else {}
        if item.method == "guest-sync-delimited":
            return Reply(item, result=params["id"], delimited=True)
        if item.method == "guest-sync":
            return Reply(item, result=params["id"])
        self.requests.append((item.method, params))
        handler = self.handlers.get(item.method)
        if handler is None:
            return Reply(item, error=AgentError(ErrorKind.COMMAND_NOT_FOUND,
                                                f"The command {item.method} has not been found"))
        try:
            return Reply(item, result=handler(params))
        except AgentError as exc:
            return Reply(item, error=exc)
        except Exception as exc:  # a bug in the script: an answer the test will see, not a dead thread
            return Reply(item, error=AgentError(ErrorKind.INTERNAL_ERROR, f"script failed: {exc!r}"))

    def close(self) -> None:
        self.listener.close()


@contextmanager
def scripted_agent(path: Path, handlers: dict[str, Handler]) -> Iterator[ScriptedAgent]:
    agent = ScriptedAgent(path, handlers)
    try:
        yield agent
    finally:
        agent.close()


def failure(message: str, kind: ErrorKind = ErrorKind.COMMAND_FAILED) -> Handler:
    """A handler that always fails with ``message``."""

    def fail(params: dict[str, Any]) -> Any:
        raise AgentError(kind, message)

    return fail
