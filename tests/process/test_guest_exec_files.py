"""guest-exec, guest-file-*, guest-shutdown and guest-set-time through a real agent process.

SAFETY: every agent here is started with PYQGA_SHUTDOWN_PROGRAM and PYQGA_HWCLOCK_PROGRAM
pointing into the test's tmp dir (a fake script, or nothing), so no test can shut this machine
down or touch its clocks; guest-set-time is only called with invalid times or without a time
(which only runs the fake hwclock).  The freeze test freezes only its own loop mounts.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from pyqga.agent.commands.exec import ExecTable
from pyqga.agent.commands.files import FileTable
from pyqga.host_client import AgentCallError, AgentClient
from pyqga.protocol.errors import AgentError
from tests.rig.agent_process import PyqgaAgent
from tests.rig.loopfs import LoopMounts, require_loop_support

NEW_COMMANDS = ("guest-exec", "guest-exec-status", "guest-file-open", "guest-file-read",
                "guest-file-write", "guest-file-seek", "guest-file-flush", "guest-file-close",
                "guest-shutdown", "guest-set-time")
ALL_BYTES = bytes(range(256))


def start_agent(workdir: Path, extra_args: Sequence[str] = (), shutdown: Path | None = None,
                hwclock: Path | None = None) -> PyqgaAgent:
    """An agent whose system programs are fakes under ``workdir`` (or missing) - never the
    machine's own /sbin/shutdown and /sbin/hwclock."""
    agent = PyqgaAgent(workdir, extra_args)
    agent.env = dict(agent.env or os.environ)
    agent.env["PYQGA_SHUTDOWN_PROGRAM"] = str(shutdown or workdir / "no-such-shutdown")
    agent.env["PYQGA_HWCLOCK_PROGRAM"] = str(hwclock or workdir / "no-such-hwclock")
    agent.start()
    return agent


def fake_program(path: Path) -> Path:
    """A script that appends its arguments to ``<path>.args`` and exits with the number in
    ``<path>.status`` (0 if absent)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('#!/bin/sh\nprintf "%s\\n" "$@" >> "$0.args"\n'
                    'if [ -f "$0.status" ]; then exit "$(cat "$0.status")"; fi\nexit 0\n')
    path.chmod(0o755)
    return path


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PyqgaAgent]:
    running = start_agent(tmp_path_factory.mktemp("agent"))
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def client(agent: PyqgaAgent) -> Iterator[AgentClient]:
    with AgentClient(str(agent.socket_path), dialect="qga", timeout=30) as connected:
        yield connected


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: str) -> bytes:
    return base64.b64decode(text)


def wait_exited(client: AgentClient, pid: int, limit: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + limit
    while True:
        status = client.call("guest-exec-status", pid=pid)
        if status["exited"]:
            return status
        assert time.monotonic() < deadline, f"pid {pid} still running after {limit} s"
        time.sleep(0.02)


def run(client: AgentClient, path: str, *args: str, **params: Any) -> dict[str, Any]:
    request: dict[str, Any] = {"path": path, "arg": list(args)}
    request.update({key.replace("_", "-"): value for key, value in params.items()})
    pid = client.call("guest-exec", request)["pid"]
    return wait_exited(client, pid)


def call_error(client: AgentClient, method: str, params: dict[str, Any]) -> AgentCallError:
    with pytest.raises(AgentCallError) as caught:
        client.call(method, params)
    return caught.value


# --- guest-exec ----------------------------------------------------------------------------------


def test_exec_args_env_input_and_exit_code(client: AgentClient) -> None:
    script = 'printf "%s|%s|%s|%s" "$1" "$FOO" "${HOME-unset}" "$(cat)"; echo oops >&2; exit 3'
    status = run(client, "/bin/sh", "-c", script, "sh", "first arg",
                 env=["FOO=bar=baz", "PATH=/usr/bin:/bin"], input_data=b64(b"from stdin"),
                 capture_output=True)
    assert status == {
        "exited": True, "exitcode": 3,
        "out-data": b64(b"first arg|bar=baz|unset|from stdin"), "err-data": b64(b"oops\n"),
        "out-truncated": False, "err-truncated": False,
    }
    assert list(status) == ["exited", "exitcode", "out-data", "err-data", "out-truncated", "err-truncated"]


def test_exec_binary_data_round_trips_through_cat(client: AgentClient) -> None:
    data = ALL_BYTES * 1024  # 256 KiB: more than a pipe holds, both ways
    status = run(client, "cat", input_data=b64(data), capture_output=True)
    assert status["exitcode"] == 0
    assert unb64(status["out-data"]) == data
    assert "err-data" not in status


def test_exec_signal_and_no_capture(client: AgentClient) -> None:
    assert run(client, "/bin/sh", "-c", "echo hidden; kill -TERM $$") == {"exited": True, "signal": 15}
    # without capture-output the output went to /dev/null: no data keys at all
    assert run(client, "/bin/sh", "-c", "echo hidden; echo hidden >&2; exit 7") == {
        "exited": True, "exitcode": 7}
    # without input-data stdin is /dev/null, so cat ends at once
    assert run(client, "cat", capture_output=True) == {"exited": True, "exitcode": 0}


def test_exec_capture_modes(client: AgentClient) -> None:
    both = ("-c", "echo out; echo err >&2")
    merged = run(client, "/bin/sh", *both, capture_output="merged")
    assert unb64(merged["out-data"]) == b"out\nerr\n" and "err-data" not in merged
    only_err = run(client, "/bin/sh", *both, capture_output="stderr")
    assert unb64(only_err["err-data"]) == b"err\n" and "out-data" not in only_err
    error = call_error(client, "guest-exec", {"path": "true", "capture-output": "sideways"})
    assert str(error.error) == "Parameter 'capture-output' does not accept value 'sideways'"
    error = call_error(client, "guest-exec", {"path": "true", "capture-output": 1})
    assert "expected: GuestExecCaptureOutput" in str(error.error)


def test_exec_output_cap_truncates_without_killing(tmp_path: Path) -> None:
    agent = start_agent(tmp_path / "agent", ["--exec-output-limit", "1000"])
    try:
        with AgentClient(str(agent.socket_path), dialect="qga", timeout=30) as client:
            status = run(client, "/bin/sh", "-c", "head -c 200000 /dev/zero; head -c 10 /dev/zero >&2",
                         capture_output=True)
    finally:
        agent.stop()
    assert status["exitcode"] == 0  # the program was not stopped by the cap (no SIGPIPE)
    assert unb64(status["out-data"]) == bytes(1000) and status["out-truncated"] is True
    assert unb64(status["err-data"]) == bytes(10) and status["err-truncated"] is False


def _gone_or_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_exec_timeout_kills_the_process_group(client: AgentClient) -> None:
    started = time.monotonic()
    pid = client.call("guest-exec", {"path": "/bin/sh", "arg": ["-c", "sleep 60 & echo $!; sleep 60"],
                                     "capture-output": True, "timeout": 1})["pid"]
    assert client.call("guest-exec-status", pid=pid) == {"exited": False}
    status = wait_exited(client, pid)
    assert time.monotonic() - started < 10
    assert status["signal"] == 9 and "exitcode" not in status
    grandchild = int(unb64(status["out-data"]))
    deadline = time.monotonic() + 5
    while not _gone_or_zombie(grandchild):
        assert time.monotonic() < deadline, "the background sleep survived the timeout"
        time.sleep(0.05)
    error = call_error(client, "guest-exec", {"path": "true", "timeout": 0})
    assert "timeout" in str(error.error)


def test_exec_status_is_reported_once_and_unknown_pid_is_an_error(client: AgentClient) -> None:
    pid = client.call("guest-exec", {"path": "true"})["pid"]
    # reaped by the agent before anyone asks: no zombie while the agent runs
    deadline = time.monotonic() + 5
    while os.path.exists(f"/proc/{pid}"):
        assert time.monotonic() < deadline, f"pid {pid} left unreaped"
        time.sleep(0.02)
    assert wait_exited(client, pid) == {"exited": True, "exitcode": 0}
    for unknown in (pid, 2**31 + 7):
        error = call_error(client, "guest-exec-status", {"pid": unknown})
        assert (error.error_class, str(error.error)) == ("GenericError", "Invalid parameter 'pid'")


def test_exec_spawn_failures_name_the_path(client: AgentClient, tmp_path: Path) -> None:
    error = call_error(client, "guest-exec", {"path": "/nonexistent/program"})
    assert '"/nonexistent/program"' in str(error.error) and "No such file or directory" in str(error.error)
    not_executable = tmp_path / "plain.txt"
    not_executable.write_text("echo\n")
    error = call_error(client, "guest-exec", {"path": str(not_executable)})
    assert str(not_executable) in str(error.error) and "Permission denied" in str(error.error)
    error = call_error(client, "guest-exec", {"path": "true", "input-data": "not base64!"})
    assert str(error.error) == "Base64 data contains invalid characters"
    error = call_error(client, "guest-exec", {"path": "true", "arg": ["ok", 5]})
    assert str(error.error) == "Invalid parameter type for 'arg[1]', expected: string"
    error = call_error(client, "guest-exec", {"path": "true", "env": ["NOEQUALS"]})
    assert "env[0]" in str(error.error)
    error = call_error(client, "guest-exec", {})
    assert str(error.error) == "Parameter 'path' is missing"


def test_exec_table_drops_the_oldest_uncollected_status_when_full() -> None:
    table = ExecTable(max_processes=2)
    log = logging.getLogger("test")

    def start(*argv: str) -> int:
        return table.start(list(argv), None, None, "none", 1000, 2.0, log)

    def wait(pid: int) -> dict[str, Any]:
        deadline = time.monotonic() + 10
        while not (status := table.status(pid))["exited"]:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        return status

    done = start("true")
    while not table._processes[done].finished.wait(0.05):
        pass
    sleepers = [start("sleep", "30")]
    sleepers.append(start("sleep", "30"))  # full: the finished, uncollected one made room
    with pytest.raises(AgentError, match="Invalid parameter 'pid'"):
        table.status(done)
    with pytest.raises(AgentError, match="too many guest-exec processes running"):
        start("true")
    assert [wait(pid) for pid in sleepers] == [{"exited": True, "signal": 9}] * 2  # the 2 s timeout
    assert len(table) == 0


def test_exec_in_the_jsonrpc_dialect(agent: PyqgaAgent) -> None:
    with AgentClient(str(agent.socket_path), timeout=30) as client:
        status = run(client, "/bin/echo", "hi", capture_output=True)
    assert unb64(status["out-data"]) == b"hi\n"


# --- guest-file-* --------------------------------------------------------------------------------


def test_file_round_trip_with_binary_data(client: AgentClient, tmp_path: Path) -> None:
    path = tmp_path / "data.bin"
    data = ALL_BYTES * 4
    handle = client.call("guest-file-open", path=str(path), mode="w+b")
    assert isinstance(handle, int)
    assert client.call("guest-file-write", {"handle": handle, "buf-b64": b64(data)}) == {
        "count": 1024, "eof": False}
    assert client.call("guest-file-write", {"handle": handle, "buf-b64": b64(b"tail-ignored"),
                                            "count": 4}) == {"count": 4, "eof": False}
    assert client.call("guest-file-flush", handle=handle) == {}
    assert path.read_bytes() == data + b"tail"
    assert client.call("guest-file-seek", handle=handle, offset=0, whence="set") == {
        "position": 0, "eof": False}
    first = client.call("guest-file-read", handle=handle, count=1000)
    assert (first["count"], first["eof"], unb64(first["buf-b64"])) == (1000, False, data[:1000])
    assert client.call("guest-file-seek", handle=handle, offset=-4, whence=2)["position"] == 1024
    assert client.call("guest-file-seek", handle=handle, offset=-24, whence="cur")["position"] == 1000
    rest = client.call("guest-file-read", handle=handle)  # default count 4096: hits the end
    assert (rest["count"], rest["eof"], unb64(rest["buf-b64"])) == (28, True, data[1000:] + b"tail")
    assert client.call("guest-file-read", handle=handle) == {"count": 0, "buf-b64": "", "eof": True}
    assert client.call("guest-file-close", handle=handle) == {}
    error = call_error(client, "guest-file-read", {"handle": handle})
    assert str(error.error) == f"handle '{handle}' has not been found"


def test_file_read_exactly_to_the_end_then_eof(client: AgentClient, tmp_path: Path) -> None:
    path = tmp_path / "ten.bin"
    path.write_bytes(b"0123456789")
    handle = client.call("guest-file-open", path=str(path))  # default mode r
    assert client.call("guest-file-read", handle=handle, count=10) == {
        "count": 10, "buf-b64": b64(b"0123456789"), "eof": False}
    assert client.call("guest-file-read", handle=handle, count=10)["eof"] is True
    error = call_error(client, "guest-file-write", {"handle": handle, "buf-b64": b64(b"x")})
    assert str(error.error).startswith("failed to write to file: ")
    error = call_error(client, "guest-file-read", {"handle": handle, "count": (48 << 20) + 1})
    assert str(error.error) == f"value '{(48 << 20) + 1}' is invalid for argument count"
    client.call("guest-file-close", handle=handle)


def test_file_modes_and_their_errors(client: AgentClient, tmp_path: Path) -> None:
    path = tmp_path / "log.txt"
    for mode, text in (("w", b"one\n"), ("a", b"two\n"), ("ab", b"three\n")):
        handle = client.call("guest-file-open", path=str(path), mode=mode)
        client.call("guest-file-write", {"handle": handle, "buf-b64": b64(text)})
        client.call("guest-file-close", handle=handle)
    assert path.read_bytes() == b"one\ntwo\nthree\n"
    handle = client.call("guest-file-open", path=str(path), mode="r+")
    client.call("guest-file-write", {"handle": handle, "buf-b64": b64(b"ONE")})
    client.call("guest-file-close", handle=handle)
    assert path.read_bytes() == b"ONE\ntwo\nthree\n"
    error = call_error(client, "guest-file-open", {"path": str(path), "mode": "rw"})
    assert str(error.error) == "invalid file open mode 'rw'"
    missing = tmp_path / "missing"
    error = call_error(client, "guest-file-open", {"path": str(missing)})
    assert str(error.error) == f"failed to open file '{missing}' (mode: 'r'): No such file or directory"


def test_file_unknown_handles_and_bad_arguments(client: AgentClient, tmp_path: Path) -> None:
    for method in ("guest-file-close", "guest-file-read", "guest-file-flush"):
        error = call_error(client, method, {"handle": 12345})
        assert (error.error_class, str(error.error)) == ("GenericError", "handle '12345' has not been found")
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    handle = client.call("guest-file-open", path=str(path), mode="r+")
    try:
        error = call_error(client, "guest-file-write", {"handle": handle, "buf-b64": "@@@"})
        assert str(error.error) == "Base64 data contains invalid characters"
        error = call_error(client, "guest-file-write", {"handle": handle, "buf-b64": b64(b"ab"), "count": 3})
        assert str(error.error) == "value '3' is invalid for argument count"
        error = call_error(client, "guest-file-seek", {"handle": handle, "offset": 0, "whence": 3})
        assert str(error.error) == "invalid whence code 3"
        error = call_error(client, "guest-file-seek", {"handle": handle, "offset": 0, "whence": "top"})
        assert str(error.error) == "Parameter 'whence' does not accept value 'top'"
        error = call_error(client, "guest-file-seek", {"handle": handle, "offset": -5, "whence": "set"})
        assert str(error.error) == "failed to seek file: Invalid argument"
    finally:
        client.call("guest-file-close", handle=handle)


def test_file_table_bounds_open_handles(tmp_path: Path) -> None:
    table = FileTable(max_handles=2)
    first = table.open(os.devnull, "r")
    second = table.open(os.devnull, "r")
    assert second == first + 1
    with pytest.raises(Exception, match="too many open file handles"):
        table.open(os.devnull, "r")
    table.close(first)
    table.close(table.open(os.devnull, "r"))
    table.close(second)
    assert len(table) == 0


# --- gating: guest-info, -b, frozen --------------------------------------------------------------


def test_new_commands_are_listed_and_blockable(client: AgentClient, tmp_path: Path) -> None:
    listed = {entry["name"]: entry for entry in client.info()["supported_commands"]}
    for name in NEW_COMMANDS:
        assert listed[name]["enabled"] is True
        assert listed[name]["success-response"] is (name != "guest-shutdown")
    agent = start_agent(tmp_path / "agent", ["-b", ",".join(NEW_COMMANDS)])
    try:
        with AgentClient(str(agent.socket_path), dialect="qga", timeout=30) as blocked:
            for name in NEW_COMMANDS:
                error = call_error(blocked, name, {})
                assert error.error_class == "CommandNotFound", name
                assert str(error.error).startswith(f"Command {name} has been disabled"), name
    finally:
        agent.stop()


def test_new_commands_are_refused_while_frozen(tmp_path: Path) -> None:
    require_loop_support()
    with LoopMounts(tmp_path / "mnt") as loops:
        fs = loops.add("data")
        agent = start_agent(tmp_path / "agent", ["--freeze-include", loops.glob()])
        try:
            with AgentClient(str(agent.socket_path), dialect="qga", timeout=30) as client:
                handle = client.call("guest-file-open", path=str(tmp_path / "before"), mode="w")
                assert client.call("guest-fsfreeze-freeze-list", mountpoints=[str(fs.mountpoint)]) == 1
                try:
                    arguments = {"guest-exec": {"path": "true"}, "guest-exec-status": {"pid": 1},
                                 "guest-file-open": {"path": str(fs.mountpoint / "x"), "mode": "w"},
                                 "guest-file-write": {"handle": handle, "buf-b64": b64(b"x")},
                                 "guest-shutdown": {}, "guest-set-time": {}}
                    for name in NEW_COMMANDS:
                        error = call_error(client, name, arguments.get(name, {"handle": handle}))
                        assert error.error_class == "CommandNotFound", name
                        assert "has been disabled" in str(error.error), name
                    enabled = {c["name"] for c in client.info()["supported_commands"] if c["enabled"]}
                    assert not enabled & set(NEW_COMMANDS)
                finally:
                    assert client.call("guest-fsfreeze-thaw") == 1
                assert client.call("guest-file-close", handle=handle) == {}
        finally:
            agent.stop()
    assert not (fs.mountpoint / "x").exists()


# --- guest-shutdown and guest-set-time (fake programs only) -------------------------------------


def test_shutdown_runs_the_program_and_sends_no_reply(tmp_path: Path) -> None:
    fake = fake_program(tmp_path / "bin" / "shutdown")
    record = Path(f"{fake}.args")
    agent = start_agent(tmp_path / "agent", shutdown=fake)
    try:
        with agent.connect(timeout=5) as sock:
            sock.sendall(b'{"execute":"guest-shutdown","arguments":{"mode":"reboot"}}\n')
            sock.settimeout(1.0)
            with pytest.raises(TimeoutError):
                data = sock.recv(100)
                pytest.fail(f"guest-shutdown replied on success: {data!r}")
            assert record.read_text() == "-r\n+0\nhypervisor initiated shutdown\n"
            sock.settimeout(5)
            sock.sendall(b'{"execute":"guest-ping"}\n')
            assert sock.recv(100) == b'{"return": {}}\n'
        with AgentClient(str(agent.socket_path), dialect="qga", timeout=30) as client:
            record.unlink()
            client.notify("guest-shutdown")
            deadline = time.monotonic() + 5
            while not record.exists():
                assert time.monotonic() < deadline
                time.sleep(0.02)
            client.ping()
            assert record.read_text().splitlines()[0] == "-P"  # the default: powerdown
            error = call_error(client, "guest-shutdown", {"mode": "explode"})
            assert str(error.error) == "mode is invalid (valid values are: halt|powerdown|reboot"
            Path(f"{fake}.status").write_text("1\n")
            error = call_error(client, "guest-shutdown", {"mode": "halt"})
            assert str(error.error).startswith("child process has failed to shutdown")
            assert record.read_text().splitlines()[-3] == "-H"
    finally:
        agent.stop()


def test_shutdown_program_missing_is_an_error(client: AgentClient) -> None:
    error = call_error(client, "guest-shutdown", {})
    assert str(error.error).startswith("failed to run ") and "no-such-shutdown" in str(error.error)


def test_set_time_error_paths_with_a_fake_hwclock(tmp_path: Path) -> None:
    fake = fake_program(tmp_path / "bin" / "hwclock")
    record = Path(f"{fake}.args")
    agent = start_agent(tmp_path / "agent", hwclock=fake)
    try:
        with AgentClient(str(agent.socket_path), dialect="qga", timeout=30) as client:
            for bad in (-1_000_000_001, 2**62):   # 1969 and 2116: qemu-ga's local-time years
                error = call_error(client, "guest-set-time", {"time": bad})
                assert str(error.error) == "Invalid time"
            error = call_error(client, "guest-set-time", {"time": "now"})
            assert str(error.error) == "Invalid parameter type for 'time', expected: integer"
            assert not record.exists()  # rejected before anything ran
            # Without a time: "set the system clock from the RTC", here only the fake runs.
            assert client.call("guest-set-time") == {}
            assert record.read_text() == "-s\n"
            Path(f"{fake}.status").write_text("2\n")
            error = call_error(client, "guest-set-time", {})
            assert str(error.error) == "hwclock failed to set system time from hardware clock"
    finally:
        agent.stop()


def test_set_time_without_hwclock_is_unsupported(client: AgentClient) -> None:
    error = call_error(client, "guest-set-time", {})
    assert str(error.error).startswith("this feature or command is not currently supported")


def test_raw_exec_reply_shape(agent: PyqgaAgent) -> None:
    """The qga wire bytes of guest-exec: {"return": {"pid": N}}."""
    with agent.connect(timeout=5) as sock:
        sock.sendall(b'{"execute":"guest-exec","arguments":{"path":"true"},"id":1}\n')
        reply = json.loads(sock.recv(1000))
    assert list(reply) == ["return", "id"] and list(reply["return"]) == ["pid"]
    with AgentClient(str(agent.socket_path), dialect="qga", timeout=30) as client:
        assert wait_exited(client, reply["return"]["pid"]) == {"exited": True, "exitcode": 0}
