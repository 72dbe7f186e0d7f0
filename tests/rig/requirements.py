"""Skip where the machine lacks something a test needs, but fail in CI, where it must be there.

CI runs as root on a machine that `.ci/run` has provisioned; a skip there would hide a missing
install step, so with CI=true every unmet requirement is a failure.
"""

from __future__ import annotations

import os
import shutil

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(condition: bool, reason: str) -> None:
    """Skip (or fail under CI) with `reason` unless `condition` holds."""
    if condition:
        return
    if in_ci():
        pytest.fail(f"required in CI: {reason}", pytrace=False)
    pytest.skip(reason)


def require_root() -> None:
    require(os.geteuid() == 0, "needs root (loop devices, mount, FIFREEZE)")


def require_tool(name: str) -> str:
    path = shutil.which(name)
    require(path is not None, f"needs the {name!r} program on PATH")
    return path or ""
