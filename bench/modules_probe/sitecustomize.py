"""A window on ``sys.modules`` for ``bench/footprint.py``: which modules an agent and its keeper hold.

``site`` imports this at start-up when its folder is on ``PYTHONPATH``; the keeper, started by
the agent with the agent's environment, inherits that.  With ``PYQGA_MODULES_DUMP`` set, SIGUSR2
writes the names of the modules loaded in this process (``sys.modules`` entries that are not
None: the agent puts None under ``ssl`` to keep it out) to ``$PYQGA_MODULES_DUMP/PID.N``, one a
line.  It imports only ``os``, ``signal``, ``sys`` and ``typing`` (the agent and the keeper import
them all anyway) and shadows Debian's ``sitecustomize`` (an apport hook that is not installed here).
"""

from __future__ import annotations

import os
import signal
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from types import FrameType

_TARGET = os.environ.get("PYQGA_MODULES_DUMP")
_dumps = [0]


def _dump(signum: int, frame: FrameType | None) -> None:
    assert _TARGET is not None
    _dumps[0] += 1
    names = sorted(name for name, module in list(sys.modules.items()) if module is not None)
    path = os.path.join(_TARGET, f"{os.getpid()}.{_dumps[0]}")
    with open(path + ".part", "w", encoding="utf-8") as out:
        out.write("\n".join(names) + "\n")
    os.rename(path + ".part", path)


if _TARGET:
    signal.signal(signal.SIGUSR2, _dump)
