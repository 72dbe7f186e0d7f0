"""The dispatcher under arbitrary input (issue 13): arbitrary JSON as every command's parameters,
and arbitrary bytes through the connection's decoder to the dispatcher.

Whatever comes in, the answer is a reply a strict host can parse (no NaN or Infinity), no
message is longer than the cap, and nothing is an internal error: our own bug would show as one.
Commands that change this machine (freeze, shutdown, exec, set-*, files...) are only ever
validated here (``check_params``), never run: they are blocked with ``-b`` in the agent that
dispatches, so arbitrary requests reach their refusal; the read-only ones really run.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyqga.agent.config import Config
from pyqga.agent.dispatch import Dispatcher
from pyqga.agent.registry import build_registry
from pyqga.agent.state import AgentState
from pyqga.protocol.dialects import Dialect, Request
from pyqga.protocol.errors import MESSAGE_LIMIT, AgentError, ErrorKind
from pyqga.protocol.server import ServerConnection

CHANGES_THE_MACHINE = (
    "guest-shutdown", "guest-set-time", "guest-file-open", "guest-fsfreeze-freeze",
    "guest-fsfreeze-freeze-list", "guest-fsfreeze-thaw", "guest-fstrim", "guest-suspend-disk",
    "guest-suspend-ram", "guest-suspend-hybrid", "guest-set-vcpus", "guest-set-memory-blocks",
    "guest-set-user-password", "guest-ssh-add-authorized-keys", "guest-ssh-remove-authorized-keys",
    "guest-exec",
)
COMMANDS = sorted(build_registry().names())
SAFE = [name for name in COMMANDS if name not in CHANGES_THE_MACHINE]
EXAMPLES = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40),
    lambda children: (st.lists(children, max_size=4)
                      | st.dictionaries(st.text(max_size=12), children, max_size=4)),
    max_leaves=12,
)


def plausible_params(name: str) -> st.SearchStrategy[dict[str, Any]]:
    """Objects using the command's own parameter names (so the checks past "unexpected" run)."""
    names = [param.name for param in build_registry().get(name).params]  # type: ignore[union-attr]
    keys = st.sampled_from(names) | st.text(max_size=8) if names else st.text(max_size=8)
    return st.dictionaries(keys, json_values, max_size=4)


@pytest.fixture(scope="module")
def dispatcher(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dispatcher]:
    config = Config(method="unix-listen", statedir=str(tmp_path_factory.mktemp("state")),
                    on_agent_death="stay", freeze_include=("/nonexistent-pyqga-fuzz/*",),
                    block_rpcs=CHANGES_THE_MACHINE)
    yield Dispatcher(AgentState(config))


def strict_reply(line: bytes) -> Any:
    def refuse(token: str) -> Any:
        raise AssertionError(f"non-finite {token} on the wire: {line[:200]!r}")
    return json.loads(line.lstrip(b"\xff"), parse_constant=refuse)


def check_reply(raw: bytes | None) -> None:
    if raw is None:
        return  # a notification, or a command that answers only on error
    reply = strict_reply(raw)
    for one in reply if isinstance(reply, list) else [reply]:
        error = one.get("error")
        if error is None:
            continue
        text = error.get("desc", error.get("message", ""))
        assert len(text) <= MESSAGE_LIMIT, text[:200]
        assert not text.startswith("internal error"), text


@pytest.mark.parametrize("name", COMMANDS)
@EXAMPLES
@given(params=st.one_of(json_values, st.just({})))
def test_check_params_only_ever_refuses_with_invalid_params(name: str, params: Any) -> None:
    command = build_registry().get(name)
    assert command is not None
    if not isinstance(params, dict | list):
        return  # the dialects refuse non-object arguments before any command sees them
    try:
        checked = command.check_params(params)
    except AgentError as error:
        assert error.kind is ErrorKind.INVALID_PARAMS, (name, params, error)
        assert len(error.message) <= MESSAGE_LIMIT
    else:
        assert isinstance(checked, dict)


@pytest.mark.parametrize("name", SAFE)
@EXAMPLES
@given(data=st.data())
def test_read_commands_answer_any_arguments_cleanly(dispatcher: Dispatcher, name: str,
                                                    data: st.DataObject) -> None:
    params = data.draw(plausible_params(name))
    dialect = data.draw(st.sampled_from([Dialect.QGA, Dialect.JSONRPC]))
    request_id = data.draw(st.none() | st.integers(min_value=-(2**63), max_value=2**63)
                           | st.text(max_size=10))
    request = Request(dialect, name, params, request_id, request_id is not None or dialect is Dialect.JSONRPC)
    check_reply(ServerConnection().send(dispatcher.answer(request)))


@EXAMPLES
@given(chunks=st.lists(st.binary(max_size=200) | st.sampled_from([
    b'{"execute":"guest-ping"}', b'{"jsonrpc":"2.0","method":"guest-info","id":1}', b"\xff", b"\n",
    b'{"execute":"guest-fsfreeze-freeze"}', b'{"execute":"guest-exec","arguments":{"path":"/bin/true"}}',
    b'[{"jsonrpc":"2.0","method":"guest-ping","id":1},5]',
    b'{"execute":"guest-sync","arguments":{"id":1e400}}',
]), max_size=12))
def test_arbitrary_bytes_through_the_decoder_get_clean_replies(dispatcher: Dispatcher,
                                                               chunks: list[bytes]) -> None:
    connection = ServerConnection()
    for chunk in chunks:
        for item in connection.receive_data(chunk):
            check_reply(connection.send(dispatcher.answer(item)))


def test_the_fuzzed_agent_really_blocks_what_changes_the_machine(dispatcher: Dispatcher) -> None:
    """The guard rail of this module: a freeze request is refused, not run."""
    answer = dispatcher.answer(Request(Dialect.QGA, "guest-fsfreeze-freeze", {}, 1, True))
    reply = strict_reply(ServerConnection().send(answer))
    assert reply["error"]["class"] == "CommandNotFound"
    assert "has been disabled" in reply["error"]["desc"]
