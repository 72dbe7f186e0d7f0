"""host_client.qmp (QEMU's qemu.qmp driven with timeouts) against a real QEMU monitor.

QEMU runs with ``-machine none``: no guest, no disk, a monitor that answers in milliseconds.
Covers what ``pyqga snapshot`` relies on: commands return their value, an error reply names the
command and QMP's class, a monitor that another client holds times out instead of hanging (the
reason this is not qemu.qmp's legacy sync wrapper), a missing socket is a connect error, and a
QEMU that quits is not an error at close.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyqga.host_client import cli
from pyqga.host_client.qmp import ConnectError, ExecuteError, QMPConnection, describe
from tests.rig.requirements import require_tool


@pytest.fixture
def monitor(tmp_path: Path) -> Iterator[Path]:
    qemu = require_tool("qemu-system-x86_64")
    sock = tmp_path / "qmp.sock"
    log = tmp_path / "qemu.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([qemu, "-machine", "none", "-nodefaults", "-display", "none",
                                 "-qmp", f"unix:{sock},server=on,wait=off"],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while not sock.exists():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "QEMU created no QMP socket in 10 s"
            time.sleep(0.01)
        yield sock
    finally:
        proc.kill()
        proc.wait()


def test_execute_returns_the_commands_value(monitor: Path) -> None:
    with QMPConnection(monitor, timeout=5) as qmp:
        assert "QMP" in qmp.greeting
        assert qmp.execute("query-status")["status"] in ("running", "prelaunch")
        names = {c["name"] for c in qmp.execute("query-commands")}
    assert {"blockdev-snapshot-sync", "transaction", "query-block"} <= names


def test_error_reply_names_the_command_and_class(monitor: Path) -> None:
    with QMPConnection(monitor, timeout=5) as qmp:
        with pytest.raises(ExecuteError) as raised:
            qmp.execute("blockdev-snapshot-sync", {"device": "nope", "snapshot-file": "/nonexistent.qcow2",
                                                   "format": "qcow2"})
        assert qmp.execute("query-status")  # the connection is still usable
    assert raised.value.error_class == "GenericError"
    assert describe(raised.value).startswith("QMP blockdev-snapshot-sync: GenericError: ")
    assert "nope" in describe(raised.value)


def test_busy_monitor_times_out_instead_of_hanging(monitor: Path) -> None:
    with QMPConnection(monitor, timeout=5):
        start = time.monotonic()
        with pytest.raises(TimeoutError, match="another client"):
            QMPConnection(monitor, timeout=0.5)
        assert time.monotonic() - start < 3
    with QMPConnection(monitor, timeout=5) as qmp:  # free again once the first client left
        assert qmp.execute("query-status")


def test_missing_socket_is_a_connect_error(tmp_path: Path) -> None:
    with pytest.raises(ConnectError) as raised:
        QMPConnection(tmp_path / "absent.sock", timeout=2)
    assert isinstance(raised.value.exc, FileNotFoundError)


def test_quit_then_close_is_not_an_error(monitor: Path) -> None:
    qmp = QMPConnection(monitor, timeout=5)
    qmp.execute("quit")
    qmp.close()
    qmp.close()
    with pytest.raises(ConnectionError, match="closed"):
        qmp.execute("query-status")


def test_cli_snapshot_reports_an_unreachable_monitor(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    status = cli.main(["snapshot", "--no-freeze", "--qmp", str(tmp_path / "absent.sock"),
                       "--disk", f"data={tmp_path / 'snap.qcow2'}"])
    assert status == cli.EXIT_UNREACHABLE
    assert "cannot talk to QMP" in capsys.readouterr().err


def test_cli_snapshot_reports_a_qmp_error(monitor: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    status = cli.main(["snapshot", "--no-freeze", "--qmp", str(monitor),
                       "--disk", f"data={tmp_path / 'snap.qcow2'}"])
    assert status == cli.EXIT_AGENT_ERROR
    assert "no such block device(s) in the VM: data" in capsys.readouterr().err
