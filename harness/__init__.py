"""A throw-away QEMU guest for tests, the demo and benchmarks; not part of the pyqga wheel.

``ensure_image()`` builds (or finds in the cache) a tiny Debian guest with python3, qemu-ga and
this checkout's pyqga; ``GuestVM`` boots it under TCG with the agents on virtio-serial and
isa-serial channels and always powers it off.  QEMU's monitor is reached with the product's
``host_client.qmp.QMPConnection`` (QEMU's ``qemu.qmp``), the same client ``pyqga snapshot`` uses.
It runs from a checkout: ``python -m harness.demo``, or pytest from the repository root.
"""

from harness.image import GuestImage, ImageBuildError, cache_dir, ensure_image
from harness.machine import DEFAULT_AGENTS, KNOWN_AGENTS, GuestVM, VMError, qemu_available

__all__ = [
    "DEFAULT_AGENTS",
    "KNOWN_AGENTS",
    "GuestImage",
    "GuestVM",
    "ImageBuildError",
    "VMError",
    "cache_dir",
    "ensure_image",
    "qemu_available",
]
