"""Freeze waves: independent filesystems together, dependent ones in order (pure, no kernel)."""

from __future__ import annotations

from agent.fsfreeze.mounts import Mount
from agent.fsfreeze.order import freeze_waves, is_within, must_precede


def mount(path: str, minor: int) -> Mount:
    return Mount(mountpoint=path, fstype="ext4", source=f"/dev/loop{minor}", major=7, minor=minor)


def names(waves: list[list[Mount]]) -> list[list[str]]:
    return [[m.mountpoint for m in wave] for wave in waves]


def no_backing(_: Mount) -> None:
    return None


def test_independent_filesystems_share_one_wave_and_root_comes_last() -> None:
    plan = [mount("/data/b", 3), mount("/data/a", 2), mount("/srv", 1), mount("/", 0)]
    assert names(freeze_waves(plan, no_backing)) == [["/data/b", "/data/a", "/srv"], ["/"]]


def test_children_before_parents() -> None:
    plan = [mount("/mnt/outer/inner/deeper", 3), mount("/mnt/outer/inner", 2), mount("/mnt/outer", 1)]
    assert names(freeze_waves(plan, no_backing)) == [
        ["/mnt/outer/inner/deeper"], ["/mnt/outer/inner"], ["/mnt/outer"]]


def test_loop_image_before_the_filesystem_holding_its_file() -> None:
    host, image_fs, other = mount("/mnt/host", 1), mount("/mnt/image", 2), mount("/mnt/other", 3)
    backing = {id(image_fs): "/mnt/host/images/disk.img"}
    waves = freeze_waves([other, image_fs, host], lambda m: backing.get(id(m)))
    assert names(waves) == [["/mnt/other", "/mnt/image"], ["/mnt/host"]]


def test_prefix_is_not_containment() -> None:
    assert not is_within("/data2", "/data") and is_within("/data/x", "/data") and is_within("/x", "/")
    assert not must_precede(mount("/data2", 1), mount("/data", 2), no_backing)


def test_every_mount_once_in_plan_order_within_a_wave() -> None:
    plan = [mount(f"/m{i}", i) for i in range(20)]
    waves = freeze_waves(plan, no_backing)
    assert names(waves) == [[f"/m{i}" for i in range(20)]]
