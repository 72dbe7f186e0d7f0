"""Nothing the agent sends is invalid JSON: NaN and infinities become internal errors (issue 13).

Python's json writes ``NaN``/``Infinity`` by default, which no strict parser (ours included)
accepts, so a host would lose the reply and resynchronise.  The encoder refuses them, and the
reply becomes an internal error the host can read; an id that could not be echoed is dropped.
"""

from __future__ import annotations

import json
import math
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pyqga.agent.config import Config
from pyqga.agent.dispatch import Dispatcher
from pyqga.agent.registry import Command, Param, Registry
from pyqga.agent.state import AgentState
from pyqga.protocol.dialects import Dialect, encode
from pyqga.protocol.server import ServerConnection, encode_reply
from tests.rig.agent_process import PyqgaAgent


def strict(line: bytes) -> Any:
    """Parse like a strict peer: NaN, Infinity and -Infinity are errors."""
    def refuse(name: str) -> Any:
        raise ValueError(f"non-finite number {name} on the wire")

    return json.loads(line, parse_constant=refuse)


@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan, {"deep": [1, {"x": math.inf}]}])
@pytest.mark.parametrize("dialect", list(Dialect))
def test_non_finite_result_is_an_internal_error(dialect: Dialect, bad: Any) -> None:
    reply = strict(encode_reply(dialect, 7, True, bad))
    if dialect is Dialect.QGA:
        assert reply["id"] == 7 and reply["error"]["class"] == "GenericError"
        assert "not valid JSON" in reply["error"]["desc"]
    else:
        assert reply["id"] == 7 and reply["error"]["code"] == -32603
        assert "not valid JSON" in reply["error"]["message"]


def test_a_non_finite_id_is_not_echoed() -> None:
    qga = strict(encode_reply(Dialect.QGA, math.inf, True, {}))
    assert "id" not in qga and "error" in qga
    rpc = strict(encode_reply(Dialect.JSONRPC, math.nan, True, {}))
    assert rpc["id"] is None and rpc["error"]["code"] == -32603


def test_plain_encode_refuses_non_finite() -> None:
    with pytest.raises(ValueError):
        encode({"return": math.inf})
    assert encode({"return": 1.5, "id": "x"}) == json.dumps({"return": 1.5, "id": "x"}).encode() + b"\n"


def answer(dispatcher: Dispatcher, line: bytes) -> Any:
    connection = ServerConnection()
    [item] = connection.receive_data(line)
    reply = connection.send(dispatcher.answer(item))
    assert reply is not None
    return strict(reply)


@pytest.fixture
def dispatcher(tmp_path: Path) -> Dispatcher:
    def number(agent: AgentState, value: str) -> float:
        return float(value)

    registry = Registry([Command("number", number, "float(value)", (Param("value", str),))])
    return Dispatcher(AgentState(Config(statedir=str(tmp_path)), registry=registry))


def test_handler_returning_infinity_through_the_dispatcher(dispatcher: Dispatcher) -> None:
    reply = answer(dispatcher, b'{"execute":"number","arguments":{"value":"inf"},"id":3}\n')
    assert reply["id"] == 3 and "not valid JSON" in reply["error"]["desc"]
    reply = answer(dispatcher, b'{"execute":"number","arguments":{"value":"2.5"},"id":4}\n')
    assert reply == {"return": 2.5, "id": 4}


def test_batch_keeps_the_good_replies(dispatcher: Dispatcher) -> None:
    batch = (b'[{"jsonrpc":"2.0","method":"number","params":{"value":"nan"},"id":1},'
             b'{"jsonrpc":"2.0","method":"number","params":{"value":"1"},"id":2}]\n')
    bad, good = answer(dispatcher, batch)
    assert bad["id"] == 1 and bad["error"]["code"] == -32603
    assert good == {"jsonrpc": "2.0", "result": 1.0, "id": 2}


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PyqgaAgent]:
    with PyqgaAgent(tmp_path_factory.mktemp("encode")) as running:
        yield running


@pytest.mark.parametrize("request_id", [b"1e400", b"-1e400"])
@pytest.mark.parametrize("template", [b'{"execute":"guest-ping","id":%s}\n',
                                      b'{"execute":"guest-sync","arguments":{"id":1},"id":%s}\n',
                                      b'{"jsonrpc":"2.0","method":"guest-ping","id":%s}\n'])
def test_real_agent_never_sends_infinity(agent: PyqgaAgent, template: bytes, request_id: bytes) -> None:
    """An id that overflows to infinity (issue 13's case): whatever layer refuses it, the
    reply is strict JSON and an error, and the connection goes on."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(agent.socket_path))
        sock.sendall(template % request_id + b'{"execute":"guest-ping","id":2}\n')
        data = b""
        while data.count(b"\n") < 2:
            chunk = sock.recv(4096)
            assert chunk, f"connection closed after {data!r}"
            data += chunk
    first, second = (strict(line) for line in data.splitlines())
    assert "error" in first, first
    assert second == {"return": {}, "id": 2}
