"""Finding a program on a search path, as ``shutil.which`` does for a plain name.

Not ``shutil`` itself: importing it loads its archive support (zlib, bz2, lzma and their shared
libraries) into the agent and the keeper, which never archive anything (issue 22).
"""

from __future__ import annotations

import os


def which(name: str, path: str) -> str | None:
    """The first executable regular file ``name`` in ``path``'s directories (``:``-separated;
    an empty entry is the current directory, as for ``shutil.which``), or None.  A name with a
    slash is taken as it is."""
    if os.sep in name:
        return name if _runnable(name) else None
    for directory in path.split(os.pathsep):
        candidate = os.path.join(directory or os.curdir, name)
        if _runnable(candidate):
            return candidate
    return None


def _runnable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)
