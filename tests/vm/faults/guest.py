"""The one guest the fault tests share: what runs in it, named once.

Booting a TCG guest and starting its agents costs 8-15 s, so the block, clock, keeper-matrix,
network and stall modules run in one guest (``conftest.py``'s ``fault_vm``), booted for all of them:
``/data`` on the dm-linear layer (``pyqga.dmdata=1``), two agents with ``--enable-faults`` and the
durability client's acknowledgement port.  Each module leaves the guest as it found it (no fault
listed, ``/data``'s table as at boot, no worker, true time): its own checks say so.
"""

from __future__ import annotations

from tests.rig import durability

# The subject takes the faults over virtio-serial (the clock, matrix and network modules); the
# hands (the serial line) are never faulted there and run the guest-side programs.  The block
# module faults through the serial agent, its only client.
SUBJECT, HANDS = "pyqga-virtio", "pyqga-serial"
AGENT_ARGS = ("--enable-faults",)
KERNEL_ARGS = ("pyqga.dmdata=1",)
PORTS = (durability.ACK_PORT,)
# All four modules in one guest (~12 min in CI, SQLite's power cuts included), with room.
LIFETIME_S = 2400.0
