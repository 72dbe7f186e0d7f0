"""The booted guest the fault modules share (``guest.py`` says what it runs): package scope, so
it is shut down when the last of them ends, not at the end of the session."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.rig.image import GuestImage
from tests.rig.machine import GuestVM
from tests.vm.faults.guest import AGENT_ARGS, HANDS, KERNEL_ARGS, LIFETIME_S, PORTS, SUBJECT


@pytest.fixture(scope="package")
def fault_vm(guest_image: GuestImage, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GuestVM]:
    started = time.monotonic()
    with GuestVM(tmp_path_factory.mktemp("vm"), agents=(SUBJECT, HANDS), image=guest_image,
                 kernel_args=KERNEL_ARGS, agent_args=AGENT_ARGS, ports=PORTS, lifetime=LIFETIME_S,
                 ready_timeout=120) as vm:
        print(f"\nfault guest booted in {vm.boot_seconds:.1f} s")
        yield vm
        print(f"\nfault guest: {time.monotonic() - started:.1f} s in all")
