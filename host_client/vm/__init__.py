"""A throw-away QEMU guest for tests, the demo and benchmarks.

``ensure_image()`` builds (or finds in the cache) a tiny Debian guest with python3, qemu-ga and
this checkout's pyqga; ``GuestVM`` boots it under TCG with the agents on virtio-serial and
isa-serial channels and always powers it off; ``QMPClient`` talks to QEMU's monitor.
"""

from host_client.vm.image import GuestImage, ImageBuildError, cache_dir, ensure_image
from host_client.vm.machine import DEFAULT_AGENTS, KNOWN_AGENTS, GuestVM, VMError, qemu_available
from host_client.vm.qmp import QMPClient, QMPError

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
