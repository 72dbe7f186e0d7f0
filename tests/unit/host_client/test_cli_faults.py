"""``pyqga fault KIND|list|revert|events|capabilities`` (:mod:`pyqga.host_client.cli_faults`), run
in-process through :func:`pyqga.host_client.cli.main` against a scripted agent on a real socket:
what reaches the agent, what reaches stdout and stderr, the exit statuses, and Ctrl-C."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from pyqga.host_client import cli
from pyqga.host_client.cli_completion import levels
from pyqga.host_client.faults import KINDS
from pyqga.protocol.errors import ErrorKind
from tests.unit.host_client.fake_faults import FakeFaults
from tests.unit.host_client.scripted_agent import ScriptedAgent, failure, scripted_agent


class Run:
    def __init__(self, status: int, out: str, err: str) -> None:
        self.status, self.out, self.err = status, out, err

    def lines(self) -> list[Any]:
        return [json.loads(line) for line in self.out.splitlines()]


@pytest.fixture
def pyqga(agent: ScriptedAgent, capsys: pytest.CaptureFixture[str]) -> Any:
    def run(*args: str, interrupt_after: float | None = None) -> Run:
        timer = None
        if interrupt_after is not None:   # Ctrl-C, as the terminal sends it, to this process
            timer = threading.Timer(interrupt_after, os.kill, (os.getpid(), signal.SIGINT))
            timer.start()
        try:
            status = cli.main(["-s", agent.address, "--timeout", "5", *args])
        finally:
            if timer is not None:
                timer.cancel()
        captured = capsys.readouterr()
        return Run(status, captured.out, captured.err)

    return run


def sent(agent: ScriptedAgent, method: str) -> list[dict[str, Any]]:
    return [params for name, params in agent.requests if name == method]


# --- inject --------------------------------------------------------------------------------------

def test_inject_prints_the_lease_as_one_json_line(pyqga: Any, agent: ScriptedAgent) -> None:
    done = pyqga("fault", "disk-full", "--target", "/data", "--for", "2m", "--param", "free-bytes=4096",
                 "--param", "path=/data/x", "--param", 'tag="007"', "--param", "strict=true", "--seed", "9")
    assert done.status == 0 and done.err == ""
    (lease,) = done.lines()
    assert lease["id"] == "f1" and lease["kind"] == "disk-full" and lease["duration"] == 120.0
    assert lease["params"] == {"free-bytes": 4096, "path": "/data/x", "tag": "007", "strict": True}
    assert time.time() < lease["deadline"] <= time.time() + 120
    assert sent(agent, "guest-fault-inject") == [{"kind": "disk-full", "target": "/data", "duration": 120.0,
                                                  "params": lease["params"], "seed": 9}]


def test_force_is_sent_only_when_given(pyqga: Any, agent: ScriptedAgent) -> None:
    assert pyqga("fault", "io-stall", "--target", "/", "--for", "1s", "--force").status == 0
    assert sent(agent, "guest-fault-inject") == [{"kind": "io-stall", "target": "/", "duration": 1.0,
                                                  "force": True}]


def test_wait_prints_the_event_that_ended_it(pyqga: Any, fake: FakeFaults) -> None:
    started = time.monotonic()
    done = pyqga("fault", "write-stall", "--target", "/data", "--for", "300ms", "--wait")
    assert done.status == 0, done.err
    assert time.monotonic() - started >= 0.3
    lease, ended = done.lines()
    assert (ended["event"], ended["id"], ended["reason"]) == ("expired", lease["id"], "deadline")
    assert fake.leases == {}


def test_ctrl_c_while_waiting_reverts_the_fault(pyqga: Any, fake: FakeFaults) -> None:
    done = pyqga("fault", "write-stall", "--target", "/data", "--for", "1m", "--wait", interrupt_after=0.5)
    assert done.status == 130
    assert done.err == "pyqga: interrupted; fault f1 (write-stall on /data) reverted\n"
    assert [line["id"] for line in done.lines()] == ["f1"]
    assert fake.leases == {} and fake.timeline[-1]["event"] == "reverted"


def test_an_agent_without_faults_is_one_line_and_status_1(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    message = ("guest-fault-inject is disabled: start the agent with --enable-faults (or faults=true in "
               "its config)")
    handlers = {"guest-fault-inject": failure(message, ErrorKind.COMMAND_DISABLED)}
    with scripted_agent(tmp_path / "a.sock", handlers) as agent:
        status = cli.main(["-s", agent.address, "fault", "write-stall", "--target", "/d", "--for", "5s"])
    captured = capsys.readouterr()
    assert status == 1 and captured.out == ""
    assert captured.err.count("\n") == 1 and captured.err.startswith("pyqga: error: guest-fault-inject on ")
    assert "CommandNotFound" in captured.err and "--enable-faults" in captured.err


def test_an_unreachable_agent_is_status_3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = cli.main(["-s", str(tmp_path / "none.sock"), "fault", "list"])
    err = capsys.readouterr().err
    assert status == 3 and err.startswith("pyqga: error: cannot connect") and err.count("\n") == 1


@pytest.mark.parametrize(("args", "says"), [
    (["--target", "/d", "--for", "5s", "--param", "free-bytes"], "expected NAME=VALUE, not 'free-bytes'"),
    (["--target", "/d", "--for", "5s", "--param", "a=1", "--param", "a=2"], "--param: a given twice"),
    (["--target", "/d", "--for", "0"], "must be more than zero"),
    (["--target", "/d", "--for", "8d"], "too long"),
    (["--for", "5s"], "the following arguments are required: --target"),
    (["--target", "/d"], "the following arguments are required: --for"),
])
def test_usage_errors_are_one_line_before_any_request(pyqga: Any, agent: ScriptedAgent, args: list[str],
                                                      says: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        pyqga("fault", "disk-full", *args)
    err = capsys.readouterr().err
    assert exited.value.code == 2 and says in err.splitlines()[-1]
    assert agent.requests == []


# --- list, revert, events, capabilities -----------------------------------------------------------

def test_list_and_revert(pyqga: Any, agent: ScriptedAgent) -> None:
    assert pyqga("fault", "list").out == "no active faults\n"
    pyqga("fault", "write-stall", "--target", "/a", "--for", "1m")
    pyqga("fault", "disk-full", "--target", "/b", "--for", "1m", "--param", "free-bytes=0")
    text = pyqga("fault", "list").out.splitlines()
    assert text[0].split() == ["ID", "KIND", "TARGET", "STATE", "LEFT", "PARAMS"]
    assert text[1].split()[:4] == ["f1", "write-stall", "/a", "active"] and text[1].endswith("-")
    assert text[2].split()[:4] == ["f2", "disk-full", "/b", "active"]
    assert text[2].endswith('{"free-bytes": 0}')
    raw = json.loads(pyqga("fault", "list", "--json").out)
    assert [(f["id"], f["state"]) for f in raw] == [("f1", "active"), ("f2", "active")]

    assert pyqga("fault", "revert", "f2").out == "1 fault reverted\n"
    missing = pyqga("fault", "revert", "f2")
    assert missing.status == 1 and missing.out == ""
    assert missing.err.startswith("pyqga: error: guest-fault-revert on ")
    assert "no active fault 'f2'" in missing.err and missing.err.count("\n") == 1
    assert pyqga("fault", "revert", "--json").out == "1\n"
    assert pyqga("fault", "revert").out == "0 faults reverted\n"
    assert sent(agent, "guest-fault-revert") == [{"id": "f2"}, {"id": "f2"}, {}, {}]


def test_events_are_json_lines_and_the_cursor_goes_to_stderr(pyqga: Any, agent: ScriptedAgent) -> None:
    pyqga("fault", "write-stall", "--target", "/a", "--for", "1m")
    pyqga("fault", "revert", "f1")
    done = pyqga("fault", "events")
    assert [(e["event"], e["id"]) for e in done.lines()] == [("armed", "f1"), ("fired", "f1"),
                                                             ("reverted", "f1")]
    assert done.lines()[-1]["reason"] == "revert" and "boot-id" in done.lines()[0]
    assert done.err == "pyqga: cursor 3 (next: pyqga fault events --since 3)\n"
    later = pyqga("fault", "events", "--since", "2")
    assert [e["event"] for e in later.lines()] == ["reverted"]
    raw = json.loads(pyqga("fault", "events", "--json", "--since", "3").out)
    assert raw == {"events": [], "cursor": 3}
    assert sent(agent, "guest-fault-events") == [{}, {"since": 2}, {"since": 3}]


def test_events_follow_until_ctrl_c(pyqga: Any, agent: ScriptedAgent) -> None:
    pyqga("fault", "write-stall", "--target", "/a", "--for", "200ms")
    done = pyqga("fault", "events", "--follow", "--interval", "50ms", interrupt_after=0.8)
    assert done.status == 130 and done.err == "pyqga: interrupted\n"
    assert [e["event"] for e in done.lines()] == ["armed", "fired", "expired"]


def test_capabilities(pyqga: Any, agent: ScriptedAgent) -> None:
    text = pyqga("fault", "capabilities", "--target", "/data").out.splitlines()
    assert text[0].endswith(f"2 of {len(KINDS)} kinds available")
    assert text[1].split() == ["write-stall", "available"]
    assert " ".join(text[2].split()) == "io-stall unavailable: /data is not on a device-mapper device"
    assert any("--param free-bytes=... (int, default 0): bytes left free" in line for line in text)
    raw = json.loads(pyqga("fault", "capabilities", "--json").out)
    assert raw == FakeFaults().capabilities({})
    assert sent(agent, "guest-fault-capabilities") == [{"target": "/data"}, {}]


# --- the parser ---------------------------------------------------------------------------------------

def test_fault_stall_is_unchanged() -> None:
    args = cli.build_parser().parse_args(["fault", "stall", "--mount", "/x", "--duration", "2s",
                                          "--repeat", "2"])
    assert (args.fault, args.mount, args.duration, args.repeat, args.interval) == \
        ("stall", ["/x"], 2.0, 2, 0.0)


def test_every_kind_explains_itself_and_completes(capsys: pytest.CaptureFixture[str]) -> None:
    found = levels(cli.build_parser())
    assert set(found["fault"].subcommands) == {"stall", *KINDS, "list", "revert", "events", "capabilities",
                                               "plan", "power-cut", "report"}
    for kind in KINDS:
        options = set(found[f"fault {kind}"].options)
        assert {"--target", "--for", "--param", "--seed", "--force", "--wait"} <= options
        with pytest.raises(SystemExit):
            cli.main(["fault", kind, "--help"])
        text = re.sub(r"-\s+", "-", " ".join(capsys.readouterr().out.split()))  # argparse wraps at hyphens
        assert "guest-fault-inject" in text and "--enable-faults" in text
    assert "--follow" in found["fault events"].options
    assert {"--metrics", "--output", "--title"} <= set(found["fault report"].options)
    script = cli_completion_script()
    assert "'fault disk-full') echo" in script


def cli_completion_script() -> str:
    from pyqga.host_client.cli_completion import bash_script

    return bash_script(cli.build_parser())
