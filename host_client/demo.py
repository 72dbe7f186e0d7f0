"""``make demo``: start an agent on a unix socket in a scratch folder and drive it with the CLI.

Each step prints the command a user would type and its output, so the transcript doubles as a
tutorial.  The agent is always stopped at the end, also when a step fails.
"""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
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


def main() -> int:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    with tempfile.TemporaryDirectory(prefix="pyqga-demo-") as scratch:
        work = Path(scratch)
        sock = work / "agent.sock"
        agent_cmd = [sys.executable, "-B", "-m", "agent", "-m", "unix-listen", "-p", str(sock),
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
                result = subprocess.run([sys.executable, "-m", "host_client", *argv], env=env,
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
    print(f"\ndemo: {'all steps behaved as expected' if not failures else f'{failures} step(s) misbehaved'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
