"""The state directory must be safe to write while frozen and safe from other users.

The agent writes its freeze state there during a freeze and reads it back after a crash, so:
on a filesystem the agent may freeze, that write would hang until a thaw only the agent can
send; a directory others can write (or a symlink someone else owns) lets them swap the state
file and so decide what a restarted agent thaws.  Each check returns an actionable message.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence

from pyqga.agent.freeze.mounts import Mount, resolve_device
from pyqga.agent.freeze.planner import FreezePlanner

FIX_HINT = "use a directory on tmpfs owned by the agent's user, such as the default /run/pyqga"


def prepare(path: str, include: Sequence[str] = (), exclude: Sequence[str] = (),
            planner: FreezePlanner | None = None, create: bool = True) -> str | None:
    """Create ``path`` (mode 0700) if missing, then check it; None when it is fit for use.
    Without ``create`` (``--check-config``, ``-D``) a missing directory is only checked for
    whether start-up could create it."""
    planner = planner or FreezePlanner(include=include, exclude=exclude)
    if not create and not os.path.lexists(path):
        return creatable_problem(path) or freezable_problem(path, planner)
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except OSError as exc:
        return f"cannot create state directory {path}: {exc.strerror}; {FIX_HINT} (-t/--statedir)"
    return ownership_problem(path) or freezable_problem(path, planner)


def creatable_problem(path: str) -> str | None:
    """Why ``os.makedirs(path)`` would fail, judged on the nearest directory that exists."""
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.lexists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
        return (f"cannot create state directory {path}: {parent} is not a directory this agent may "
                f"write; {FIX_HINT} (-t/--statedir)")
    return None


def ownership_problem(path: str) -> str | None:
    """A symlink someone else owns, a non-directory, or a directory others may write."""
    me = os.geteuid()
    try:
        link = os.lstat(path)
        st = os.stat(path)
    except OSError as exc:
        return f"cannot use state directory {path}: {exc.strerror}; {FIX_HINT}"
    if stat.S_ISLNK(link.st_mode) and link.st_uid not in (me, 0):
        return (f"state directory {path} is a symlink owned by uid {link.st_uid}, not by this agent "
                f"(uid {me}): its owner could point it elsewhere; remove it, or {FIX_HINT}")
    if not stat.S_ISDIR(st.st_mode):
        return f"state directory {path} is not a directory; {FIX_HINT}"
    if st.st_mode & 0o022:
        return (f"state directory {path} is group- or world-writable (mode {stat.S_IMODE(st.st_mode):04o}): "
                f"others could replace the state file and decide what a restarted agent thaws; "
                f"run 'chmod go-w {path}', or {FIX_HINT}")
    return None


def mount_of(path: str, mounts: Sequence[Mount]) -> Mount | None:
    """The mount ``path`` (resolved) lives on: the longest mount point above it, the last
    mounted when several are stacked on the same one."""
    real = os.path.realpath(path)
    best: Mount | None = None
    for mount in mounts:
        point = mount.mountpoint
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= len(best.mountpoint)):
            best = mount
    return best


def freezable_mount(path: str, planner: FreezePlanner) -> Mount | None:
    """The mount ``path`` is on if a freeze-all (within the filters) would freeze it."""
    mount = mount_of(path, planner.kernel.mounts())
    if mount is None:
        return None
    resolved = resolve_device(mount, planner.kernel.block_device)
    if resolved is None:  # tmpfs, proc...: nothing to freeze
        return None
    if not any(c.device == resolved.device for c in planner.candidates()):
        return None
    return mount


def freezable_problem(path: str, planner: FreezePlanner) -> str | None:
    """The state directory sits on a filesystem a freeze-all (within the filters) would freeze."""
    mount = freezable_mount(path, planner)
    if mount is None:
        return None
    return (f"state directory {path} is on {mount.mountpoint} ({mount.fstype}), which this agent may "
            f"freeze: writing its state there during a freeze would hang the agent; {FIX_HINT}, "
            f"or keep {mount.mountpoint} out of freezes with --freeze-exclude or --freeze-include")
