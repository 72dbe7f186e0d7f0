"""Error messages stay bounded whatever the input (issue 13, item 4)."""

from __future__ import annotations

import json

from protocol.errors import MESSAGE_LIMIT, QUOTE_LIMIT, AgentError, ErrorKind, command_not_found, quote


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
