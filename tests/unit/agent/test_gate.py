"""The gate runs where the call runs: a request that waited for a worker is asked again."""

from __future__ import annotations

import json
from pathlib import Path

from pyqga.agent.config import Config
from pyqga.agent.dispatch import Dispatcher, Prepared
from pyqga.agent.registry import Command, Registry
from pyqga.agent.state import AgentState
from pyqga.protocol.server import ServerConnection


def test_a_freeze_while_waiting_for_a_worker_refuses_the_request(tmp_path: Path) -> None:
    calls = []
    slow = Command("slow-read", lambda agent: calls.append(1) or {}, "reads", blocking=True)
    agent = AgentState(Config(statedir=str(tmp_path)), registry=Registry([slow]))
    dispatcher = Dispatcher(agent)
    connection = ServerConnection()
    [item] = connection.receive_data(b'{"execute":"slow-read","id":1}\n')
    prepared = dispatcher.prepare(item)
    assert isinstance(prepared, Prepared) and prepared.command.lane == "worker"

    agent.freezer.frozen = True  # frozen after the loop let it through, before a worker ran it
    try:
        reply = json.loads(connection.send(dispatcher.complete_later(prepared)) or b"")
    finally:
        agent.freezer.frozen = False
    assert reply["id"] == 1 and reply["error"]["class"] == "CommandNotFound", reply
    assert calls == []

    assert json.loads(connection.send(dispatcher.complete_later(prepared)) or b"") == {"return": {}, "id": 1}
    assert calls == [1]
