"""``make demo``: the agent driven by the CLI, then the job it exists for, in a real VM.

Part 1 starts an agent on a unix socket in a scratch folder and drives it with the ``pyqga``
CLI; each step prints the command a user would type and its output.  Part 2 builds (or reuses)
a small Debian guest, boots it under QEMU with pyqga inside and a workload busy on /data, takes
an external snapshot of the data disk without and with a freeze, examines both images, and
prints them side by side with the timings.  Everything started is stopped, also on failure.
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.rig.paths import REPO_ROOT

STEPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Is the agent there, and how fast does it answer?", ("ping",)),
    ("What does it offer? (qemu-ga's dialect, as libvirt speaks it)", ("--dialect", "qga", "info")),
    ("Resynchronise the channel, as hosts do after a timeout", ("sync",)),
    ("Any command by name, JSON-RPC 2.0 on the wire", ("call", "guest-get-osinfo")),
    ("An unknown command is a clear error with a non-zero exit", ("call", "guest-nope")),
)


def wait_for_socket(path: Path, process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"demo: the agent exited with status {process.returncode}")
        with socket.socket(socket.AF_UNIX) as probe:
            try:
                probe.connect(str(path))
                return
            except OSError:
                time.sleep(0.02)
    raise SystemExit(f"demo: the agent did not listen on {path} within {timeout} s")


def cli_tour() -> int:
    """Part 1; returns the number of steps that misbehaved."""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    # On tmpfs: the agent refuses a state directory on a filesystem it may freeze.
    with tempfile.TemporaryDirectory(prefix="pyqga-demo-", dir="/dev/shm") as scratch:
        work = Path(scratch)
        sock = work / "agent.sock"
        agent_cmd = [sys.executable, "-B", "-m", "pyqga.agent", "-m", "unix-listen", "-p", str(sock),
                     "-t", str(work / "state"), "-c", os.devnull]
        print(f"$ pyqga-agent -m unix-listen -p {sock} -t {work / 'state'} &")
        with open(work / "agent.log", "wb") as log:
            agent = subprocess.Popen(agent_cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env)
        failures = 0
        try:
            wait_for_socket(sock, agent)
            for title, args in STEPS:
                argv = ["--socket", str(sock), *args]
                print(f"\n# {title}\n$ pyqga {shlex.join(argv)}", flush=True)
                result = subprocess.run([sys.executable, "-m", "pyqga.host_client", *argv], env=env,
                                        capture_output=True, text=True, timeout=30)
                sys.stdout.write(result.stdout + result.stderr)
                print(f"(exit status {result.returncode})")
                expected_failure = args[-1] == "guest-nope"
                failures += (result.returncode == 0) == expected_failure
        finally:
            agent.terminate()
            agent.wait(10)
        print("\n# Agent log")
        print((work / "agent.log").read_text().rstrip())
    return failures


def vm_missing() -> str | None:
    """Why part 2 cannot run here, or None."""
    if os.geteuid() != 0:
        return "it needs root (loop-free, but QEMU's disks and the image build run as root)"
    for tool in ("qemu-system-x86_64", "qemu-img", "apt-get", "dpkg-deb", "debugfs"):
        if shutil.which(tool) is None:
            return f"{tool} is missing (as root, `make deps` installs it)"
    return None


def snapshot_demo() -> bool:
    """Part 2; True when the quiesced snapshot was consistent."""
    from tests.rig.consistency import compare, format_comparison
    from tests.rig.image import ensure_image
    from tests.rig.machine import GuestVM

    print("\n# Part 2: a consistent snapshot of a busy guest")
    start = time.perf_counter()
    image = ensure_image()
    print(f"guest image: {'cached' if image.cache_hit else 'built'} in {time.perf_counter() - start:.1f} s "
          f"(kernel {image.kernel_release}, python {image.python_version})")
    with tempfile.TemporaryDirectory(prefix="pyqga-demo-vm-") as scratch:
        work = Path(scratch)
        with GuestVM(work / "vm", agents=("pyqga-virtio",), image=image,
                     kernel_args=("pyqga.workload=1",)) as vm:
            print(f"guest booted under QEMU (TCG); pyqga answered after {vm.boot_seconds:.1f} s")
            print("a workload appends numbered lines to /data/workload.log and churns small files;")
            print("snapshotting /data's disk through QMP, first without, then with a freeze ...\n")
            plain, quiesced = compare(vm, work)
        print(format_comparison(plain, quiesced))
    print("\nneeds_recovery means the snapshot caught ext4 mid-transaction: it is only crash-consistent.")
    print("The frozen one needs no recovery; the same freeze-snapshot-thaw is `pyqga snapshot`.")
    return quiesced.check.consistent


def main() -> int:
    print("# Part 1: the agent and the pyqga CLI")
    failures = cli_tour()
    missing = vm_missing()
    if missing:
        print(f"\n# Part 2 (a consistent snapshot in a VM) skipped: {missing}")
        consistent = True
    else:
        consistent = snapshot_demo()
    ok = not failures and consistent
    summary = "all steps behaved as expected" if ok else "something misbehaved (see above)"
    print(f"\ndemo: {summary}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
