"""The ``pyqga`` CLI's conventions (issue 19): bad values are usage errors, one name per
meaning with the old spellings still working, --version, the address from the environment,
--address, exec, completion, and progress only on a terminal's stderr.

Real CLI processes against a real agent; progress under a real pseudo-terminal (``pty``).
"""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyqga.agent.config import VERSION
from pyqga.host_client.cli import build_parser
from tests.rig.agent_process import REPO_ROOT, PyqgaAgent, agent_env
from tests.rig.freezing import start_agent, write_hook
from tests.rig.loopfs import LoopMounts, thaw_fully

CLI = [sys.executable, "-m", "pyqga.host_client"]


def cli_env(**variables: str) -> dict[str, str]:
    env = {k: v for k, v in agent_env().items() if k not in ("PYQGA_ADDRESS", "QGA_CLIENT_ADDRESS")}
    env.update(variables)
    return env


def pyqga(*args: str, env: dict[str, str] | None = None, stdin: bytes | None = None,
          timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*CLI, *args], capture_output=True, env=env or cli_env(), input=stdin,
                          timeout=timeout, cwd=REPO_ROOT)


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PyqgaAgent]:
    with PyqgaAgent(tmp_path_factory.mktemp("agent")) as running:
        yield running


# --- bad values ----------------------------------------------------------------------------------

NOWHERE = "/nonexistent/pyqga-test.sock"
BAD = [
    ["--timeout", "-1", "-s", NOWHERE, "ping"],
    ["--timeout", "nan", "-s", NOWHERE, "ping"],
    ["--timeout", "inf", "-s", NOWHERE, "ping"],
    ["--timeout", "0", "-s", NOWHERE, "ping"],
    ["--timeout", "1" + "0" * 400, "-s", NOWHERE, "ping"],
    ["--timeout", "5 parsecs", "-s", NOWHERE, "ping"],
    ["-s", NOWHERE, "ping", "--timeout", "-0.5"],
    ["-s", "vsock:abc", "ping"],
    ["-s", "vsock:x:9", "ping"],
    ["-s", "tcp:host", "ping"],
    ["-s", "tcp:host:0", "ping"],
    ["-s", "tcp:host:70000", "ping"],
    ["-s", NOWHERE, "freeze", "--thaw-after", "0"],
    ["-s", NOWHERE, "freeze", "--timeout", "nan"],
    ["-s", NOWHERE, "fault", "stall", "--mount", "/x", "--duration", "inf"],
    ["-s", NOWHERE, "fault", "stall", "--mount", "/x", "--duration", "1s", "--repeat", "0"],
    ["-s", NOWHERE, "fault", "stall", "--mount", "/x", "--duration", "1s", "--interval", "-1s"],
    ["-s", NOWHERE, "thaw", "--epoch", "-3"],
    ["-s", NOWHERE, "fstrim", "-5"],
    ["-s", NOWHERE, "exec"],
    ["-s", NOWHERE, "exec", "--env", "NOEQUALS", "true"],
    ["-s", NOWHERE, "exec", "--kill-after", "-1", "true"],
    ["group", "snapshot", "--guest", NOWHERE, "--deadline", "nan"],
    ["group", "snapshot", "--guest", "vsock:abc"],
    ["-s", NOWHERE, "snapshot", "--qmp", "/q", "--disk", "d=/o", "--thaw-after", "inf"],
    ["ping"],                                              # no address anywhere
]


@pytest.mark.parametrize("args", BAD, ids=[" ".join(a)[:60] for a in BAD])
def test_bad_values_are_one_line_usage_errors(args: list[str]) -> None:
    done = pyqga(*args)
    err = done.stderr.decode()
    assert done.returncode == 2, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("pyqga"), err
    assert "cannot connect" not in err      # refused before any connection


def test_a_bad_address_in_the_environment_names_the_variable() -> None:
    done = pyqga("ping", env=cli_env(QGA_CLIENT_ADDRESS="vsock:abc"))
    assert done.returncode == 2
    assert "QGA_CLIENT_ADDRESS: 'vsock:abc': expected vsock:CID:PORT" in done.stderr.decode()


# --- names, aliases, the environment --------------------------------------------------------------


def test_version() -> None:
    done = pyqga("--version")
    assert done.returncode == 0 and done.stdout.decode() == f"pyqga {VERSION}\n"


def test_address_alias_and_variables_with_their_precedence(agent: PyqgaAgent, tmp_path: Path) -> None:
    good, bad = str(agent.socket_path), str(tmp_path / "nobody.sock")

    def ping(*args: str, **variables: str) -> int:
        return pyqga(*args, "ping", env=cli_env(**variables)).returncode

    assert ping("--address", good) == 0
    assert ping(QGA_CLIENT_ADDRESS=good) == 0
    assert ping(PYQGA_ADDRESS=good) == 0
    assert ping(PYQGA_ADDRESS=good, QGA_CLIENT_ADDRESS=bad) == 0
    assert ping(PYQGA_ADDRESS=bad, QGA_CLIENT_ADDRESS=good) == 3      # PYQGA_ADDRESS wins
    assert ping("--socket", good, PYQGA_ADDRESS=bad, QGA_CLIENT_ADDRESS=bad) == 0
    assert ping("-s", bad, PYQGA_ADDRESS=good) == 3                   # the option wins
    help_text = pyqga("--help").stdout.decode()
    assert "libvirt:" in help_text and "PYQGA_ADDRESS" in help_text and "QGA_CLIENT_ADDRESS" in help_text
    assert "--address" in help_text


def test_one_name_per_meaning_and_the_old_spellings_still_parse() -> None:
    parser = build_parser()
    new = parser.parse_args(["snapshot", "--qmp", "q", "--disk", "d=o", "--mount", "/a",
                             "--thaw-after", "2m"])
    old = parser.parse_args(["snapshot", "--qmp", "q", "--disk", "d=o", "--mountpoint", "/a",
                             "--freeze-timeout", "120"])
    assert (new.mount, new.thaw_after) == (old.mount, old.thaw_after) == (["/a"], 120.0)
    freeze_new = parser.parse_args(["freeze", "--mount", "/a", "--thaw-after", "90s"])
    freeze_old = parser.parse_args(["freeze", "--mount", "/a", "--timeout", "90"])
    assert freeze_new.thaw_after == freeze_old.thaw_after == 90.0
    assert parser.parse_args(["--timeout", "500ms", "ping"]).timeout == 0.5
    assert parser.parse_args(["ping", "--timeout", "2m"]).timeout == 120.0
    stall = parser.parse_args(["fault", "stall", "--mount", "/a", "--duration", "1.5", "--interval", "0"])
    assert (stall.duration, stall.interval) == (1.5, 0.0)
    for verb in (["snapshot"], ["freeze"]):
        text = pyqga(*verb, "--help").stdout.decode()
        listed = {line.split()[0].rstrip(",") for line in text.splitlines() if line.startswith("  -")}
        assert {"--mount", "--thaw-after"} <= listed
        assert not {"--mountpoint", "--freeze-timeout"} & listed, listed
        # after 'freeze', --timeout is --thaw-after's old spelling: hidden; elsewhere the reply wait
        assert ("--timeout" in listed) == (verb == ["snapshot"])


# --- exec ----------------------------------------------------------------------------------------


def test_exec_prints_the_output_and_exits_with_the_programs_status(agent: PyqgaAgent) -> None:
    sock = str(agent.socket_path)
    done = pyqga("-s", sock, "exec", "--", "sh", "-c", "printf 'out\\377'; echo err >&2; exit 7")
    assert done.returncode == 7, done.stderr
    assert done.stdout == b"out\xff" and done.stderr == b"err\n"
    piped = pyqga("-s", sock, "exec", "--stdin", "--env", "GREETING=hi", "sh", "-c", 'cat; echo "$GREETING"',
                  stdin=b"from the host\n")
    assert piped.returncode == 0 and piped.stdout == b"from the host\nhi\n", piped.stderr
    started = time.monotonic()
    killed = pyqga("-s", sock, "exec", "--kill-after", "1s", "sleep", "60")
    assert killed.returncode == 128 + 9 and time.monotonic() - started < 30
    assert "signal 9" in killed.stderr.decode()
    raw = pyqga("-s", sock, "exec", "--json", "true")
    assert raw.returncode == 0 and json.loads(raw.stdout)["exitcode"] == 0
    missing = pyqga("-s", sock, "exec", "/no/such/program")
    assert missing.returncode == 1 and missing.stderr.decode().count("\n") == 1


# --- completion ----------------------------------------------------------------------------------


def complete(script: Path, line: str) -> list[str]:
    """What bash offers for ``line`` (the word under the cursor is the last, maybe empty)."""
    words = line.split(" ")
    program = (f"source {script}\nCOMP_WORDS=({' '.join(repr(w) for w in words)})\n"
               f"COMP_CWORD={len(words) - 1}\n_pyqga\nprintf '%s\\n' \"${{COMPREPLY[@]}}\"\n")
    done = subprocess.run(["bash", "--norc", "--noprofile", "-c", program], capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return sorted(filter(None, done.stdout.splitlines()))


def test_bash_completion_follows_the_parser(tmp_path: Path) -> None:
    done = pyqga("completion", "bash")
    assert done.returncode == 0
    script = tmp_path / "pyqga.bash"
    script.write_bytes(done.stdout)
    assert complete(script, "pyqga fault st") == ["stall"]
    assert complete(script, "pyqga --dialect ") == ["jsonrpc", "qga"]
    assert complete(script, "pyqga -s /x fsfreeze ") == ["freeze", "status", "thaw"]
    assert "exec" in complete(script, "pyqga --timeout 5s ")
    options = complete(script, "pyqga freeze --")
    assert "--mount" in options and "--thaw-after" in options and "--address" in options
    assert "--mountpoint" not in options and "--timeout" not in options   # hidden old spellings
    assert complete(script, "pyqga snapshot --mo") == ["--mount"]
    assert complete(script, "pyqga suspend ") == ["disk", "hybrid", "ram"]
    (tmp_path / "vm1.sock").touch()
    assert complete(script, f"pyqga --socket {tmp_path}/vm1") == [f"{tmp_path}/vm1.sock"]


# --- progress: stderr, and only on a terminal -------------------------------------------------------


@pytest.fixture
def slow_freeze(tmp_path: Path, loops: LoopMounts) -> Iterator[tuple[list[str], Path]]:
    """A pyqga whose freeze hook takes 1.5 s, and a loop filesystem to freeze."""
    a = loops.add("a")
    hook = write_hook(tmp_path / "hook", '[ "$1" = freeze ] && sleep 1.5\nexit 0\n')
    agent = start_agent(tmp_path, loops, f"-F{hook}")
    try:
        yield ["-s", str(agent.socket_path), "freeze", "--mount", str(a.mountpoint), "--thaw-after", "1m"], \
            a.mountpoint
    finally:
        agent.stop()
        thaw_fully(a.mountpoint)


def test_no_progress_when_stderr_is_not_a_terminal(slow_freeze: tuple[list[str], Path]) -> None:
    args, mountpoint = slow_freeze
    done = pyqga(*args)
    assert done.returncode == 0, done.stderr
    assert done.stderr == b""
    first, second = done.stdout.decode().splitlines()
    assert first == "1 filesystems frozen" and second.startswith("epoch ")
    assert thaw_fully(mountpoint) == 1


def test_progress_on_a_terminal_goes_to_stderr_only(slow_freeze: tuple[list[str], Path]) -> None:
    args, mountpoint = slow_freeze
    leader, follower = pty.openpty()
    try:
        proc = subprocess.Popen([*CLI, *args], stdout=subprocess.PIPE, stderr=follower,
                                env=cli_env(), cwd=REPO_ROOT)
        os.close(follower)
        follower = -1
        shown = b""
        while True:
            ready, _, _ = select.select([leader], [], [], 30)
            assert ready, "nothing on the terminal within 30 s"
            try:
                chunk = os.read(leader, 4096)
            except OSError:       # EIO: the CLI closed the terminal
                break
            if not chunk:
                break
            shown += chunk
        out, _ = proc.communicate(timeout=30)
    finally:
        os.close(leader)
        if follower >= 0:
            os.close(follower)
    assert proc.returncode == 0
    assert b"freezing " + str(mountpoint).encode() in shown and b"s)" in shown
    assert shown.endswith(b"\r\x1b[K"), "the status line was not erased"
    assert out.decode().splitlines()[0] == "1 filesystems frozen"
    assert b"freezing" not in out
    assert thaw_fully(mountpoint) == 1
