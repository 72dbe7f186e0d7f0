"""Running shell scripts in a test guest through its agent's guest-exec."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

from pyqga.host_client import AgentClient
from tests.rig.guest_files import DATA_LAYER

# The guest's tools live in /usr/sbin and /usr/bin; dmsetup there has no udev to wait for.
GUEST_SHELL = "export PATH=/usr/sbin:/usr/bin DM_DISABLE_UDEV=1; "


def sh(client: AgentClient, script: str, timeout: float = 90.0) -> str:
    """Run ``script`` with the guest's /bin/sh (set -e); its stdout, or fail with its output."""
    result = client.exec(["/bin/sh", "-c", GUEST_SHELL + "set -e\n" + script], kill_after=timeout)
    output = (result.stdout + result.stderr).decode(errors="replace")
    assert result.exitcode == 0, f"guest script failed ({result.exitcode}/{result.signal}):{script}\n{output}"
    return result.stdout.decode()


def fsck_clean(client: AgentClient) -> str:
    """``e2fsck -fn`` of /data's dm layer (``pyqga.dmdata=1``) unmounted, then mounted again; its
    output, asserted clean."""
    layer = f"/dev/mapper/{DATA_LAYER}"
    result = client.exec(["/bin/sh", "-c", f"umount /data && e2fsck -fn {layer}; s=$?; "
                          f"mount -t ext4 {layer} /data; exit $s"], kill_after=120)
    output = (result.stdout + result.stderr).decode(errors="replace")
    assert result.exitcode == 0, f"e2fsck found problems:\n{output}"
    return output


def started(client: AgentClient, argv: list[str]) -> int:
    """Start ``argv`` in the guest with its output captured; its guest-exec pid (see :func:`output_json`)."""
    pid: int = client.call("guest-exec", {"path": argv[0], "arg": argv[1:], "capture-output": True})["pid"]
    return pid


def output_json(client: AgentClient, pid: int, limit: float, what: str, poll: float = 0.05) -> Any:
    """The JSON that a program :func:`started` printed, once it exited with status 0 (asserted,
    with its output); AssertionError if it runs longer than ``limit`` seconds."""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        status = client.call("guest-exec-status", {"pid": pid})
        if status["exited"]:
            out = base64.b64decode(status.get("out-data", "")).decode(errors="replace")
            err = base64.b64decode(status.get("err-data", "")).decode(errors="replace")
            assert status.get("exitcode") == 0 and out.strip(), f"{what} failed: {out}{err}"
            return json.loads(out)
        time.sleep(poll)
    raise AssertionError(f"{what} did not finish in {limit} s")
