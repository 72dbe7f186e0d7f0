"""Timed freezes (stalls) in a real guest, driven over the serial line as test harnesses do.

A probe program started with guest-exec writes to /data every 20 ms and times each write; the
stalls the host injects must show up in its own measurements, on schedule, and end on time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from pyqga.host_client import AgentCallError, AgentClient
from tests.rig.agent_process import agent_env
from tests.rig.guest_shell import output_json
from tests.rig.machine import GuestVM
from tests.vm.faults.guest import HANDS

pytestmark = pytest.mark.root

# Appends a line every 20 ms for DURATION seconds, timing each write; prints [[t, latency], ...].
PROBE = """
import json, os, sys, time
duration = float(sys.argv[1])
fd = os.open("/data/probe.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
start = time.monotonic()
samples = []
while time.monotonic() - start < duration:
    t0 = time.monotonic()
    os.write(fd, b"probe line\\n")
    samples.append([round(t0 - start, 3), round(time.monotonic() - t0, 3)])
    time.sleep(0.02)
print(json.dumps(samples))
"""


@pytest.fixture
def vm(fault_vm: GuestVM) -> GuestVM:
    return fault_vm


@pytest.fixture
def serial(vm: GuestVM) -> Iterator[AgentClient]:
    with vm.client(HANDS, timeout=60) as client:
        yield client


def spikes(samples: list[list[float]], threshold: float) -> list[tuple[float, float]]:
    """(time, latency) of every write that blocked longer than ``threshold``."""
    return [(t, latency) for t, latency in samples if latency > threshold]


def test_exec_round_trips_output_exit_codes_binary_and_timeouts(serial: AgentClient) -> None:
    hello = serial.exec(["/bin/sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (hello.exitcode, hello.stdout, hello.stderr) == (3, b"out\n", b"err\n")
    payload = bytes(range(256)) * 64
    echoed = serial.exec(["/bin/cat"], input=payload)
    assert echoed.ok and echoed.stdout == payload
    env = serial.exec(["/bin/sh", "-c", "echo $PYQGA_TEST"], env={"PYQGA_TEST": "in the guest"})
    assert env.stdout == b"in the guest\n"
    started = time.monotonic()
    killed = serial.exec(["/bin/sh", "-c", "sleep 60 & sleep 60"], kill_after=2)
    assert killed.signal == 9 and killed.exitcode is None
    assert time.monotonic() - started < 30
    with pytest.raises(AgentCallError, match="no-such-program"):
        serial.exec(["/no-such-program"])


def test_file_round_trip(serial: AgentClient) -> None:
    data = os.urandom(300_000)
    serial.write_file("/tmp/blob", data)
    assert serial.read_file("/tmp/blob") == data
    serial.write_file("/tmp/blob", b"more", mode="ab")
    assert serial.read_file("/tmp/blob") == data + b"more"
    with pytest.raises(AgentCallError):
        serial.read_file("/tmp/no-such-file")


def test_commands_refused_while_frozen(serial: AgentClient) -> None:
    with serial.frozen(["/data"], thaw_after=60):
        for method, params in (("guest-exec", {"path": "/bin/true"}),
                               ("guest-file-open", {"path": "/tmp/x", "mode": "w"}),
                               ("guest-set-time", {}), ("guest-shutdown", {})):
            with pytest.raises(AgentCallError, match="disabled: the agent is in frozen state") as caught:
                serial.call(method, params)
            assert caught.value.error_class == "CommandNotFound"


def test_stall_shows_in_the_guest_workload_and_ends_on_time(serial: AgentClient) -> None:
    serial.write_file("/tmp/probe.py", PROBE.encode())
    pid = serial.call("guest-exec", {"path": "/usr/bin/python3", "arg": ["-B", "/tmp/probe.py", "9"],
                                     "capture-output": True})["pid"]
    time.sleep(3.0)  # python starts slowly under TCG; the probe has begun writing by now
    result = serial.stall_for(["/data"], 2.0)
    assert result.reason == "timeout" and result.count == 1
    assert result.actual == pytest.approx(2.0, abs=0.6)
    samples = _wait_for_probe(serial, pid)
    blocked = spikes(samples, 0.5)
    assert len(blocked) == 1, blocked  # one write blocked: the one that met the stall
    assert 1.0 < blocked[0][1] < 3.0
    after = [latency for t, latency in samples if t > blocked[0][0] + blocked[0][1] + 0.2]
    assert after and max(after) < 0.5, "writes did not return to normal after the stall"


def test_repeated_stalls_follow_the_schedule(vm: GuestVM, serial: AgentClient) -> None:
    serial.write_file("/tmp/probe.py", PROBE.encode())
    pid = serial.call("guest-exec", {"path": "/usr/bin/python3", "arg": ["-B", "/tmp/probe.py", "12"],
                                     "capture-output": True})["pid"]
    time.sleep(3.0)
    serial.close()  # the serial line now belongs to the CLI
    cli = subprocess.run(
        [sys.executable, "-m", "pyqga.host_client", "-s", vm.agent_address(HANDS), "--timeout", "60",
         "fault", "stall", "--mount", "/data", "--duration", "1s", "--repeat", "2", "--interval", "4s",
         "--json"],
        capture_output=True, text=True, timeout=120, env=agent_env())
    assert cli.returncode == 0, cli.stderr
    stalls = json.loads(cli.stdout)
    assert [s["reason"] for s in stalls] == ["timeout", "timeout"]
    assert all(s["actual"] == pytest.approx(1.0, abs=0.5) for s in stalls)
    with vm.client(HANDS, timeout=60) as again:
        samples = _wait_for_probe(again, pid)
    blocked = spikes(samples, 0.4)
    assert len(blocked) == 2, blocked
    gap = blocked[1][0] - blocked[0][0]
    assert gap == pytest.approx(4.0, abs=1.0), f"stalls {gap:.2f} s apart, planned 4 s"


def _wait_for_probe(client: AgentClient, pid: int, limit: float = 60.0) -> list[list[float]]:
    samples: list[list[float]] = output_json(client, pid, limit, "the probe", 0.5)
    return samples
