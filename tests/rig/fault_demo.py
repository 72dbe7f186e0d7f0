"""``make fault-demo``: issue 21's durability proof in full, 20 seeded power cuts a mode.

Boots the test guest (``pyqga.dmdata=1``, the serial agent with ``--enable-faults``, the
acknowledgement port), runs :func:`tests.rig.durability.run` with ``synchronous=FULL`` and
``synchronous=OFF`` under the same seeded plan, prints a line per cut as it comes and a table at
the end.  Exit status 0 when FULL lost no acknowledged commit and OFF's losses were found.
``tests/vm/faults/test_block.py`` runs the short version (2 cuts a mode) in ``make test``.

    python -m tests.rig.fault_demo [--seed 21] [--cuts 20]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from tests.rig import durability
from tests.rig.demo import vm_missing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make fault-demo", description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=21)
    parser.add_argument("--cuts", type=int, default=20, help="power cuts a mode")
    args = parser.parse_args(argv)
    missing = vm_missing()
    if missing:
        print(f"fault-demo: cannot run: {missing}")
        return 2
    from tests.rig.image import ensure_image
    from tests.rig.machine import GuestVM

    image = ensure_image()
    print(f"# SQLite under seeded power cuts: seed {args.seed}, {args.cuts} cuts a mode, "
          f"delays {durability.DELAYS[0]}-{durability.DELAYS[1]} s")
    print(f"guest: kernel {image.kernel_release}, python {image.python_version}, "
          f"libsqlite3 {image.packages.get('libsqlite3-0', '?')}, QEMU TCG")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="pyqga-fault-demo-") as scratch, \
            GuestVM(Path(scratch) / "vm", agents=(durability.AGENT,), image=image,
                    kernel_args=("pyqga.dmdata=1",), agent_args=("--enable-faults",),
                    ports=(durability.ACK_PORT,), lifetime=600.0 + 2 * 60.0 * args.cuts) as vm:
        print(f"booted in {vm.boot_seconds:.1f} s\n\n{durability.CUT_HEADER}", flush=True)
        results = durability.run(vm, args.seed, args.cuts,
                                 report=lambda r: print(durability.format_cut(r), flush=True))
    print(f"\n{durability.format_summary(results, args.seed)}")
    print(f"\n{len(results)} cuts in {time.monotonic() - started:.0f} s (with the boot)")
    full = [r for r in results if r.mode == "FULL"]
    off = [r for r in results if r.mode == "OFF"]
    full_ok = all(r.lost == 0 and r.earlier_lost == 0 and r.integrity == "ok" for r in full)
    off_found = sum(r.lost for r in off) > 0
    print(f"synchronous=FULL: {'no acknowledged commit lost' if full_ok else 'LOST ACKNOWLEDGED COMMITS'}; "
          f"synchronous=OFF: {'losses found' if off_found else 'NO LOSS FOUND'}")
    return 0 if full_ok and off_found else 1


if __name__ == "__main__":
    sys.exit(main())
