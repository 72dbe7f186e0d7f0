"""Error messages stay bounded whatever the input (issue 13, item 4)."""

from __future__ import annotations

import json

import pytest

from pyqga.protocol.errors import MESSAGE_LIMIT, QUOTE_LIMIT, AgentError, ErrorKind, command_not_found, quote


def test_quote_keeps_short_input_whole() -> None:
    assert quote("/mnt/data") == "/mnt/data"
    assert quote(42) == "42"


def test_quote_cuts_long_input_and_says_how_long() -> None:
    quoted = quote("x" * 1_000_000)
    assert quoted == "x" * QUOTE_LIMIT + "... (1000000 characters)"


def test_a_huge_command_name_gives_a_short_error() -> None:
    error = command_not_found("guest-" + "é" * 1_000_000)
    assert error.message.startswith("The command guest-é")
    assert error.message.endswith("(1000006 characters) has not been found")
    # Even with every non-ASCII character escaped as \\uXXXX the reply stays small.
    assert len(json.dumps(error.to_qga())) < 6 * QUOTE_LIMIT + 200


def test_any_message_is_capped_keeping_both_ends() -> None:
    error = AgentError(ErrorKind.COMMAND_FAILED, "failed to open file '" + "a" * 50_000 + "': No such file")
    assert len(error.message) <= MESSAGE_LIMIT
    assert error.message.startswith("failed to open file 'aaa")
    assert error.message.endswith("': No such file")
    assert "characters cut" in error.message


def test_unknown_parameter_and_member_names_are_quoted() -> None:
    """Names that come from the request are input too (registry, JSON-RPC and qemu-ga members)."""
    from pyqga.agent.registry import build_registry
    from pyqga.protocol.dialects import classify

    huge = "k" * 100_000
    ping = build_registry().get("guest-ping")
    assert ping is not None
    with pytest.raises(AgentError) as caught:
        ping.check_params({huge: 1})
    assert caught.value.message == f"Parameter '{quote(huge)}' is unexpected"
    for message in ({"jsonrpc": "2.0", "method": "guest-ping", "id": 1, huge: 1},
                    {"execute": "guest-ping", huge: 1}):
        error = classify(message).error  # type: ignore[union-attr]
        assert f"'{quote(huge)}'" in error.message and len(error.message) < 2 * QUOTE_LIMIT
