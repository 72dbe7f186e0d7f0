"""guest-get-fsinfo keeps its sysfs walk until the mount table changes, and sees every change."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from pyqga.agent.commands import fsinfo
from pyqga.agent.commands.fsinfo import FsinfoCache, fsinfo_for
from pyqga.agent.freeze.mounts import freezable, read_mountinfo
from tests.rig.loopfs import LoopMounts


def uncached() -> list[dict[str, object]]:
    return [fsinfo_for(m) for m in reversed(freezable(read_mountinfo()))]


def without_sizes(infos: list[dict[str, object]]) -> list[dict[str, object]]:
    return [{k: v for k, v in info.items() if not k.endswith("-bytes")} for info in infos]


def test_cache_follows_mounts_and_unmounts(loops: LoopMounts, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = FsinfoCache()
    walks = []
    real = fsinfo._fixed_info
    monkeypatch.setattr(fsinfo, "_fixed_info", lambda m, s: walks.append(m.mountpoint) or real(m, s))
    try:
        first = cache.get()
        assert without_sizes(first) == without_sizes(uncached())
        walked = len(walks)
        assert cache.get() and len(walks) == walked  # nothing mounted since: no sysfs walk

        fs = loops.add("cached fs", size_mb=16)
        (fs.mountpoint / "payload").write_bytes(os.urandom(1024 * 1024))
        os.sync()
        mounted = {i["mountpoint"]: i for i in cache.get()}
        assert len(walks) > walked
        info = mounted[str(fs.mountpoint)]
        assert info["name"] == Path(fs.device).name
        assert 1024 * 1024 <= info["used-bytes"] < info["total-bytes"]  # type: ignore[operator]
        assert without_sizes(cache.get()) == without_sizes(uncached())

        # The sizes are read on every call, also from the cache.
        (fs.mountpoint / "more").write_bytes(os.urandom(2 * 1024 * 1024))
        os.sync()
        again = {i["mountpoint"]: i for i in cache.get()}[str(fs.mountpoint)]
        assert again["used-bytes"] >= info["used-bytes"] + 2 * 1024 * 1024  # type: ignore[operator]

        subprocess.run(["umount", str(fs.mountpoint)], check=True)
        assert str(fs.mountpoint) not in {i["mountpoint"] for i in cache.get()}
    finally:
        cache.close()


def test_a_missing_mount_table_is_an_error_not_an_empty_list(tmp_path: Path) -> None:
    cache = FsinfoCache(mountinfo=str(tmp_path / "missing"))
    with pytest.raises(OSError):
        cache.get()  # nothing to watch and nothing to read: the command reports it
