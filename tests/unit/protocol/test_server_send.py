"""ServerConnection's send side: replies in, bytes out (the id rules, the batch layout, the 0xFF
prefix, nothing that is not JSON).  Belongs in tests/unit/protocol/."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from pyqga.protocol.dialects import Dialect, Invalid, Request
from pyqga.protocol.errors import AgentError, ErrorKind, command_not_found, invalid_request
from pyqga.protocol.server import BatchReply, Reply, ServerConnection

SEND = ServerConnection().send
FAILED = AgentError(ErrorKind.COMMAND_FAILED, "it failed")


def line(value: Any) -> bytes:
    """What the host reads: json.dumps's layout, one line."""
    return json.dumps(value).encode() + b"\n"


def qga(request_id: Any = None, has_id: bool = False) -> Request:
    return Request(Dialect.QGA, "guest-ping", {}, request_id, has_id)


def rpc(request_id: Any = None, has_id: bool = False) -> Request:
    return Request(Dialect.JSONRPC, "guest-ping", {}, request_id, has_id)


@pytest.mark.parametrize(("request_", "expected"), [
    (qga(), {"return": {}}),
    (qga(7, True), {"return": {}, "id": 7}),
    (qga(None, True), {"return": {}, "id": None}),  # qemu-ga echoes an id given as null
    (rpc("a", True), {"jsonrpc": "2.0", "result": {}, "id": "a"}),
    (rpc(None, True), {"jsonrpc": "2.0", "result": {}, "id": None}),
])
def test_a_result_in_the_dialect_of_its_request_with_its_id(request_: Request, expected: Any) -> None:
    assert SEND(Reply(request_, {})) == line(expected)


def test_a_notification_gets_no_reply_not_even_an_error() -> None:
    assert SEND(Reply(rpc(), {})) is None
    assert SEND(Reply(rpc(), error=FAILED)) is None


def test_errors_in_each_dialect() -> None:
    assert SEND(Reply(qga(3, True), error=FAILED)) == line(
        {"error": {"class": "GenericError", "desc": "it failed"}, "id": 3})
    reply = json.loads(SEND(Reply(rpc(3, True), error=FAILED)) or b"")
    assert reply == {"jsonrpc": "2.0", "error": FAILED.to_jsonrpc(), "id": 3}
    assert reply["error"]["code"] == ErrorKind.COMMAND_FAILED.code


def test_an_invalid_message_is_answered_in_its_dialect_jsonrpc_with_a_null_id() -> None:
    bad = invalid_request("Invalid request: not an object")
    reply = json.loads(SEND(Reply(Invalid(Dialect.JSONRPC, bad), error=bad)) or b"")
    assert reply["id"] is None and reply["error"]["code"] == ErrorKind.INVALID_REQUEST.code
    assert json.loads(SEND(Reply(Invalid(Dialect.QGA, bad), error=bad)) or b"") == {
        "error": bad.to_qga()}
    assert json.loads(SEND(Reply(Invalid(Dialect.QGA, bad, 9, True), error=bad)) or b"")["id"] == 9


def test_the_sync_byte_goes_before_a_delimited_reply_only() -> None:
    assert SEND(Reply(qga(1, True), 5, delimited=True)) == b"\xff" + line({"return": 5, "id": 1})
    assert SEND(Reply(qga(1, True), 5)) == line({"return": 5, "id": 1})


@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan, {"x": [math.inf]}, object()])
def test_a_result_json_cannot_hold_becomes_an_internal_error(bad: Any) -> None:
    for request_ in (qga(4, True), rpc(4, True)):
        raw = SEND(Reply(request_, bad))
        assert raw is not None and b"Infinity" not in raw and b"NaN" not in raw
        reply = json.loads(raw)
        assert reply["id"] == 4 and "not valid JSON" in json.dumps(reply["error"])


def test_an_id_json_cannot_hold_is_not_echoed() -> None:
    assert "id" not in json.loads(SEND(Reply(qga(math.inf, True), {})) or b"")
    assert json.loads(SEND(Reply(rpc(math.nan, True), {})) or b"")["id"] is None


def test_a_batch_is_one_array_in_json_dumps_layout_without_its_notifications() -> None:
    replies = [Reply(rpc(1, True), {}), Reply(rpc(), "unseen"), Reply(rpc(2, True), error=FAILED)]
    expected = [{"jsonrpc": "2.0", "result": {}, "id": 1},
                {"jsonrpc": "2.0", "error": FAILED.to_jsonrpc(), "id": 2}]
    assert SEND(BatchReply(replies)) == line(expected)


def test_a_batch_of_notifications_gets_no_reply() -> None:
    assert SEND(BatchReply([Reply(rpc(), {}), Reply(rpc(), error=FAILED)])) is None


def test_a_batch_with_a_delimited_reply_starts_with_the_sync_byte() -> None:
    raw = SEND(BatchReply([Reply(rpc(1, True), {}), Reply(rpc(2, True), 7, delimited=True)]))
    assert raw is not None and raw.startswith(b"\xff[") and raw.count(b"\xff") == 1
    assert json.loads(raw[1:]) == [{"jsonrpc": "2.0", "result": {}, "id": 1},
                                   {"jsonrpc": "2.0", "result": 7, "id": 2}]


def test_a_bad_element_spoils_only_itself() -> None:
    raw = SEND(BatchReply([Reply(rpc(1, True), math.inf), Reply(rpc(2, True), {"ok": True})]))
    first, second = json.loads(raw or b"")
    assert first["id"] == 1 and first["error"]["code"] == ErrorKind.INTERNAL_ERROR.code
    assert second == {"jsonrpc": "2.0", "result": {"ok": True}, "id": 2}


def test_nothing_to_answer_is_nothing_sent() -> None:
    assert SEND(None) is None


def test_what_the_connection_received_does_not_change_what_it_sends() -> None:
    """The send side keeps no state (the agent encodes on worker threads)."""
    connection = ServerConnection()
    before = connection.send(Reply(qga(1, True), error=command_not_found("x")))
    connection.receive_data(b'{"jsonrpc":"2.0","method":"guest-ping","id":1}\n{not json}\n')
    assert connection.dialect is Dialect.JSONRPC
    assert connection.send(Reply(qga(1, True), error=command_not_found("x"))) == before


def test_a_round_trip_through_receive_and_send() -> None:
    connection = ServerConnection()
    items = connection.receive_data(
        b'{"execute":"guest-ping","id":5}\n[{"jsonrpc":"2.0","method":"m","id":6},5]\n')
    ping, batch = items
    assert isinstance(ping, Request)
    assert connection.send(Reply(ping, {})) == line({"return": {}, "id": 5})
    replies = [Reply(item, {}) if isinstance(item, Request) else Reply(item, error=item.error)
               for item in batch.items]  # type: ignore[union-attr]
    first, second = json.loads(connection.send(BatchReply(replies)) or b"")
    assert first == {"jsonrpc": "2.0", "result": {}, "id": 6}
    assert second["id"] is None and second["error"]["code"] == ErrorKind.INVALID_REQUEST.code
