"""The dispatcher's shortcuts must give exactly the bytes of the general path."""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any

import pytest

from agent.dispatch import Outcome, encode_outcome, outcome_object
from protocol.dialects import EMPTY_RETURN_LINE, Dialect, Invalid, Request, encode
from protocol.errors import command_not_found

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
    obj = outcome_object(request, outcome)
    return None if obj is None else encode(obj, delimited=delimited)


def test_empty_return_line_is_the_encoded_reply() -> None:
    assert EMPTY_RETURN_LINE == b'{"return": {}}\n'
    assert json.loads(EMPTY_RETURN_LINE) == {"return": {}}


@pytest.mark.parametrize("delimited", [False, True])
@pytest.mark.parametrize("outcome", OUTCOMES)
@pytest.mark.parametrize("request_", REQUESTS)
def test_encode_outcome_matches_the_general_path(
    request_: Request | Invalid, outcome: Outcome, delimited: bool
) -> None:
    expected: Any = general_path(request_, outcome, delimited)
    assert encode_outcome(request_, outcome, delimited=delimited) == expected
