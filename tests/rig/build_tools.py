"""The build steps both test guests use (:mod:`tests.rig.image`, :mod:`tests.rig.systemd_image`):
run a tool with a timeout and fail with its last lines, hash a cache key, lock the cache, write
a file atomically, and make an ext4 image from a tree without mounting anything.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import subprocess
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

_MKFS_OPTIONS = (
    # Initialise inode tables and journal now: lazy init would make the guest kernel write to the
    # disk in the background, which muddles "no writes while frozen" measurements.
    "-E", "lazy_itable_init=0,lazy_journal_init=0", "-m", "0", "-q", "-F", "-t", "ext4",
)
COMMAND_TIMEOUT = 900.0


class ImageBuildError(RuntimeError):
    """The guest image could not be built; the message says which step and why."""



def digest(parts: Iterable[bytes]) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()[:16]



@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)



def atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_bytes(data)
    tmp.replace(path)



def try_run(cmd: Sequence[str], cwd: Path | None = None,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(list(cmd), cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=COMMAND_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return subprocess.CompletedProcess(list(cmd), 127, "", f"{cmd[0]}: {exc}")



def run(cmd: Sequence[str], what: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    proc = try_run(cmd, cwd=cwd)
    if proc.returncode != 0:
        raise ImageBuildError(f"{what} failed (exit {proc.returncode}): {tail(proc.stderr or proc.stdout)}")
    return proc



def tail(text: str, n: int = 5) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return " | ".join(lines[-n:]) or "no output"



def mkfs(path: Path, size_mb: int, label: str, source: Path | None = None) -> None:
    """An ext4 image file, filled from ``source`` without mounting it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    with open(tmp, "wb") as handle:
        handle.truncate(size_mb << 20)
    cmd = ["mkfs.ext4", *_MKFS_OPTIONS, "-L", label]
    if source is not None:
        cmd += ["-d", str(source)]
    try:
        run([*cmd, str(tmp)], f"mkfs.ext4 {path.name}")
        tmp.replace(path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()

