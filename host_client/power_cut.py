"""A power cut of a guest: writes the disk acknowledged but never stored, then a hard reset.

A real power cut loses what the disk's volatile cache held; a guest's virtual disk never does,
so a reset alone loses nothing that was written.  :func:`power_cut` first makes the agent start
``drop-writes`` on the target (dm-flakey: writes are acknowledged and lost from that instant),
waits ``after`` seconds while the application goes on believing its writes are safe, then resets
the VM through QEMU's QMP monitor (``system_reset``: no shutdown, no sync).  The guest boots
with the disk as it was at the cut; the fault ends with the boot (the dm table is not
persistent), and its lease's deadline ends it anyway if the reset never happens.

A QEMU run with ``-no-reboot`` quits on the reset instead of rebooting (also a power cut; start
it again to check the recovery), unless its reboot action was set to ``reset``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from pyqga.host_client.client import AgentClient
from pyqga.host_client.faults import Lease


class Monitor(Protocol):
    """What the cut needs of a QMP connection (``host_client.qmp.QMPConnection`` is one)."""

    def execute(self, command: str, arguments: dict[str, object] | None = None) -> object: ...


def power_cut(client: AgentClient, monitor: Monitor, target: str, after: float = 0.0,
              duration: float = 60.0, sleep: Callable[[float], None] = time.sleep) -> tuple[Lease, float]:
    """Start drop-writes on ``target``, wait ``after`` seconds, reset the VM; (the lease, the
    host's Unix time of the reset).  If the reset fails the fault is reverted and the error
    raised: the guest must not go on losing writes without a cut."""
    fault = client.faults.inject("drop-writes", target, duration)
    try:
        if after > 0:
            sleep(after)
        monitor.execute("system_reset")
    except BaseException:
        fault.revert()
        raise
    return fault, time.time()
