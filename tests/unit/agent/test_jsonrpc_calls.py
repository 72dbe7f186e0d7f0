"""The jsonrpcserver adapter: handlers called through its public API only.  Belongs in
tests/unit/agent/."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pyqga.agent.jsonrpc_calls import Calls
from pyqga.agent.registry import Command, Param
from pyqga.protocol.errors import AgentError, ErrorKind, command_failed


class Agent:
    log = logging.getLogger("pyqga.test")


def ok(agent: Agent, value: int = 0) -> dict[str, Any]:
    return {"value": value, "agent": type(agent).__name__}


def refuse(agent: Agent) -> None:
    raise command_failed("no, and here is why")


def buggy(agent: Agent) -> None:
    raise KeyError("oops")


CALLS = Calls(Agent(), [Command("ok", ok, "", (Param("value", int, required=False),)),
                        Command("refuse", refuse, ""), Command("buggy", buggy, "")])


def test_the_result_with_the_agent_as_context() -> None:
    assert CALLS.call("ok", {"value": 3}) == {"value": 3, "agent": "Agent"}
    assert CALLS.call("ok", {}) == {"value": 0, "agent": "Agent"}


def test_an_agent_error_comes_back_whole() -> None:
    with pytest.raises(AgentError) as caught:
        CALLS.call("refuse", {})
    assert caught.value == command_failed("no, and here is why")


def test_a_bug_is_an_internal_error_naming_the_command(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR), pytest.raises(AgentError) as caught:
        CALLS.call("buggy", {})
    assert caught.value.kind is ErrorKind.INTERNAL_ERROR
    assert caught.value.message == "internal error in buggy: 'oops'"
    assert "buggy failed" in caplog.text


PROBE = """
import sys
import pyqga.agent.jsonrpc_calls as calls
print(sorted(m for m in ("jsonrpcserver", "jsonrpcserver.main", "jsonrpcserver.server", "jsonschema",
                         "http.server", "asyncio", "oslash", "oslash.maybe") if m in sys.modules))
import jsonrpcserver
import oslash
print(jsonrpcserver.Success is calls.Success, all(hasattr(jsonrpcserver, n) for n in jsonrpcserver.__all__),
      oslash.Left is sys.modules["oslash.either"].Left)
"""


def test_only_what_calls_a_method_is_loaded_and_the_package_imports_whole_later() -> None:
    """Not jsonrpcserver's ``__init__`` (its schema validator, asyncio API and HTTP server), and
    no bare package left in sys.modules: a later ``import jsonrpcserver`` gets the same classes."""
    proc = subprocess.run([sys.executable, "-B", "-c", PROBE], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).parents[3])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["[]", "True True True"], proc.stdout
