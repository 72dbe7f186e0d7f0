"""The connection's send side must give exactly the bytes of the general path (reply object, then
``json.dumps``)."""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any, NamedTuple

import pytest

from pyqga.protocol.dialects import Dialect, Invalid, Request, encode, reply_object
from pyqga.protocol.errors import AgentError, command_not_found
from pyqga.protocol.server import Reply, ServerConnection


class Outcome(NamedTuple):
    result: Any = None
    error: AgentError | None = None


def encode_outcome(request: Request | Invalid, outcome: Outcome, delimited: bool = False) -> bytes | None:
    return ServerConnection().send(Reply(request, outcome.result, outcome.error, delimited))

REQUESTS = [
    Request(Dialect.QGA, "guest-ping", {}),
    Request(Dialect.QGA, "guest-ping", {}, "abc", True),
    Request(Dialect.QGA, "guest-ping", {}, None, True),
    Request(Dialect.JSONRPC, "guest-ping", {}, 7, True),
    Request(Dialect.JSONRPC, "guest-ping", {}),  # a notification: no reply
    Invalid(Dialect.QGA, command_not_found("x")),
]
OUTCOMES = [
    Outcome(result={}),
    Outcome(result=OrderedDict()),
    Outcome(result={"a": 1}),
    Outcome(result=[]),
    Outcome(result=0),
    Outcome(result=None),
    Outcome(error=command_not_found("guest-pong")),
]


def general_path(request: Request | Invalid, outcome: Outcome, delimited: bool) -> bytes | None:
    if isinstance(request, Request) and not request.wants_reply:
        return None
    has_id = request.has_id or request.dialect is Dialect.JSONRPC
    obj = reply_object(request.dialect, request.id, has_id, outcome.result, outcome.error)
    return encode(obj, delimited=delimited)


def test_empty_return_line_is_the_encoded_reply() -> None:
    line = encode({"return": {}})
    assert line == b'{"return": {}}\n'
    assert json.loads(line) == {"return": {}}


@pytest.mark.parametrize("delimited", [False, True])
@pytest.mark.parametrize("outcome", OUTCOMES)
@pytest.mark.parametrize("request_", REQUESTS)
def test_encode_outcome_matches_the_general_path(
    request_: Request | Invalid, outcome: Outcome, delimited: bool
) -> None:
    expected: Any = general_path(request_, outcome, delimited)
    assert encode_outcome(request_, outcome, delimited=delimited) == expected
