"""A throw-away QEMU guest for tests, the demo and benchmarks; not part of the pyqga wheel.

``ensure_image()`` builds (or finds in the cache) a tiny Debian guest with python3, qemu-ga and
this checkout's pyqga; ``GuestVM`` boots it under TCG with the agents on virtio-serial and
isa-serial channels and always powers it off; ``QMPClient`` talks to QEMU's monitor.
"""

from harness.image import GuestImage, ImageBuildError, cache_dir, ensure_image
from harness.machine import DEFAULT_AGENTS, KNOWN_AGENTS, GuestVM, VMError, qemu_available
from host_client.qmp import QMPClient, QMPError

__all__ = [
    "DEFAULT_AGENTS",
    "KNOWN_AGENTS",
    "GuestImage",
    "GuestVM",
    "ImageBuildError",
    "QMPClient",
    "QMPError",
    "VMError",
    "cache_dir",
    "ensure_image",
    "qemu_available",
]
