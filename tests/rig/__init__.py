"""The test rig: everything the tests, the benchmarks and ``make demo`` run pyqga with; not shipped.

Processes and sockets (``agent_process``, ``sockets``, ``flood``, ``async_facade``), the real
qemu-ga as a differential peer (``qemu_ga``), loop-mounted filesystems and disk images
(``loopfs``, ``freezing``, ``disk_images``), the in-memory model kernel (``model_kernel``), and a
throw-away QEMU guest: ``image.ensure_image()`` builds (or finds in the cache) a tiny Debian guest
with python3, qemu-ga and this checkout's pyqga, ``machine.GuestVM`` boots it under TCG with the
agents on virtio-serial and isa-serial channels and always powers it off (its monitor is reached
with the product's ``pyqga.host_client.qmp``); ``systemd_image`` and ``libvirt`` for the package
and libvirt tests; ``demo`` is ``make demo``.

It is imported as ``tests.rig`` from the repository root: pytest puts the root on the path, and
the benchmarks run as ``python -m bench.NAME`` from there.  Import the modules themselves: this
package's ``__init__`` loads nothing, so a benchmark that only needs a socket does not load QEMU's.
"""
