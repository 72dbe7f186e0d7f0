"""Freeze waves: independent filesystems together, dependent ones in order.

The pure rules first, then :func:`backing_files` over fake sysfs trees (dm, LVM, md, partitions,
loop over loop, cycles), then real stacks on this host's loop devices frozen by a real agent
process, with a call timeout so that a deadlock fails the test instead of hanging it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pyqga.agent.freeze import order
from pyqga.agent.freeze.mounts import Mount, freezable, read_mountinfo
from pyqga.agent.freeze.order import MAX_STACK_NODES, backing_files, freeze_waves, is_within, must_precede
from pyqga.host_client import AgentClient
from pyqga.host_client.errors import AgentTimeout
from tests.rig.freezing import start_agent
from tests.rig.loopfs import LoopFs, LoopMounts, thaw_fully


def mount(path: str, minor: int, major: int = 7) -> Mount:
    return Mount(mountpoint=path, fstype="ext4", source=f"/dev/loop{minor}", major=major, minor=minor)


def names(waves: list[list[Mount]]) -> list[list[str]]:
    return [[m.mountpoint for m in wave] for wave in waves]


def no_backing(_: Mount) -> tuple[str, ...]:
    return ()


# -- the rules --------------------------------------------------------------------------------


def test_independent_filesystems_share_one_wave_and_root_comes_last() -> None:
    plan = [mount("/data/b", 3), mount("/data/a", 2), mount("/srv", 1), mount("/", 0)]
    assert names(freeze_waves(plan, no_backing)) == [["/data/b", "/data/a", "/srv"], ["/"]]


def test_children_before_parents() -> None:
    plan = [mount("/mnt/outer/inner/deeper", 3), mount("/mnt/outer/inner", 2), mount("/mnt/outer", 1)]
    assert names(freeze_waves(plan, no_backing)) == [
        ["/mnt/outer/inner/deeper"], ["/mnt/outer/inner"], ["/mnt/outer"]]


def test_loop_image_before_the_filesystem_holding_its_file() -> None:
    host, image_fs, other = mount("/mnt/host", 1), mount("/mnt/image", 2), mount("/mnt/other", 3)
    backing = {id(image_fs): ("/mnt/host/images/disk.img",)}
    waves = freeze_waves([other, image_fs, host], lambda m: backing.get(id(m), ()))
    assert names(waves) == [["/mnt/other", "/mnt/image"], ["/mnt/host"]]


def test_any_backing_file_of_the_stack_orders_it() -> None:
    """An LV on two PVs, each a loop file on another filesystem: the LV precedes both."""
    lv, a, b = mount("/mnt/lv", 0, major=253), mount("/a", 1), mount("/b", 2)
    files = {id(lv): ("/a/pv0.img", "/b/pv1.img")}
    assert names(freeze_waves([a, b, lv], lambda m: files.get(id(m), ()))) == [["/mnt/lv"], ["/a", "/b"]]


def test_loop_over_loop_is_ordered_transitively() -> None:
    innermost, inner, outer = mount("/mnt/c", 3), mount("/mnt/b", 2), mount("/srv", 1)
    files = {id(innermost): ("/mnt/b/c.img",), id(inner): ("/srv/b.img",)}
    waves = freeze_waves([outer, inner, innermost], lambda m: files.get(id(m), ()))
    assert names(waves) == [["/mnt/c"], ["/mnt/b"], ["/srv"]]


def test_prefix_is_not_containment() -> None:
    assert not is_within("/data2", "/data") and is_within("/data/x", "/data") and is_within("/x", "/")
    assert not must_precede(mount("/data2", 1), mount("/data", 2), no_backing)
    assert not must_precede(mount("/m", 1), mount("/data", 2), lambda _: ("/data2/x.img",))
    assert must_precede(mount("/m", 1), mount("/data", 2), lambda _: ("/data2/x.img", "/data/./x.img"))


def test_every_mount_once_in_plan_order_within_a_wave() -> None:
    plan = [mount(f"/m{i}", i) for i in range(20)]
    waves = freeze_waves(plan, no_backing)
    assert names(waves) == [[f"/m{i}" for i in range(20)]]


def test_lookup_runs_once_per_mount_and_must_return_a_sequence() -> None:
    plan = [mount(f"/m{i}", i) for i in range(5)]
    calls: list[str] = []
    freeze_waves(plan, lambda m: calls.append(m.mountpoint) or ())
    assert sorted(calls) == sorted(m.mountpoint for m in plan)
    with pytest.raises(TypeError, match="one path"):
        freeze_waves(plan, lambda m: "/data/x.img")  # type: ignore[arg-type, return-value]


# -- backing_files over a fake sysfs ------------------------------------------------------------


class FakeSysfs:
    """The parts of /sys the walk reads, laid out as the kernel does: device directories under
    devices/, ``dev/block/MAJ:MIN`` and ``slaves/*`` as relative symlinks to them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.nodes: dict[str, Path] = {}

    @property
    def path(self) -> str:
        return str(self.root)

    def disk(self, name: str, major: int, minor: int, backing: str | None = None) -> Path:
        node = self.root / "devices/virtual/block" / name
        self._node(name, node, major, minor)
        if backing is not None:
            (node / "loop").mkdir()
            (node / "loop/backing_file").write_text(backing + "\n")
        return node

    def partition(self, disk: str, name: str, major: int, minor: int) -> Path:
        node = self.nodes[disk] / name
        self._node(name, node, major, minor)
        (node / "partition").write_text("1\n")
        return node

    def slave(self, holder: str, slave: str) -> None:
        slaves = self.nodes[holder] / "slaves"
        slaves.mkdir(exist_ok=True)
        (slaves / slave).symlink_to(os.path.relpath(self.nodes[slave], slaves))

    def _node(self, name: str, node: Path, major: int, minor: int) -> None:
        node.mkdir(parents=True)
        (node / "dev").write_text(f"{major}:{minor}\n")
        link = self.root / "dev/block" / f"{major}:{minor}"
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(node, link.parent))
        self.nodes[name] = node


@pytest.fixture
def sysfs(tmp_path: Path) -> FakeSysfs:
    return FakeSysfs(tmp_path / "sys")


def test_plain_loop_and_plain_disk(sysfs: FakeSysfs) -> None:
    sysfs.disk("loop0", 7, 0, backing="/srv/images/a.img")
    sysfs.disk("vda", 254, 0)
    assert backing_files(mount("/mnt/a", 0), sysfs.path) == ("/srv/images/a.img",)
    assert backing_files(mount("/", 0, major=254), sysfs.path) == ()
    assert backing_files(mount("/run", 45, major=0), sysfs.path) == ()  # tmpfs: no device at all


def test_deleted_suffix_is_stripped_and_path_normalised(sysfs: FakeSysfs) -> None:
    sysfs.disk("loop0", 7, 0, backing="/srv//images/../a.img (deleted)")
    assert backing_files(mount("/mnt/a", 0), sysfs.path) == ("/srv/a.img",)


def test_dm_linear_over_loop(sysfs: FakeSysfs) -> None:
    sysfs.disk("loop0", 7, 0, backing="/data/dm.img")
    sysfs.disk("dm-0", 253, 0)
    sysfs.slave("dm-0", "loop0")
    dm, data = mount("/mnt/dm", 0, major=253), mount("/data", 1, major=254)
    assert backing_files(dm, sysfs.path) == ("/data/dm.img",)
    waves = freeze_waves([data, dm], lambda m: backing_files(m, sysfs.path))
    assert names(waves) == [["/mnt/dm"], ["/data"]]


def test_partition_of_a_loop_device(sysfs: FakeSysfs) -> None:
    sysfs.disk("loop3", 7, 3, backing="/data/disk.img")
    sysfs.partition("loop3", "loop3p1", 259, 0)
    sysfs.partition("loop3", "loop3p2", 259, 1)
    assert backing_files(mount("/mnt/p2", 1, major=259), sysfs.path) == ("/data/disk.img",)


def test_lvm_volume_on_two_physical_volumes(sysfs: FakeSysfs) -> None:
    """dm with two slaves: one PV a whole loop device, the other a partition of one."""
    sysfs.disk("loop0", 7, 0, backing="/b/pv0.img")
    sysfs.disk("loop1", 7, 1, backing="/a/pv1.img")
    sysfs.partition("loop1", "loop1p1", 259, 0)
    sysfs.disk("dm-2", 253, 2)
    sysfs.slave("dm-2", "loop0")
    sysfs.slave("dm-2", "loop1p1")
    assert backing_files(mount("/mnt/lv", 2, major=253), sysfs.path) == ("/b/pv0.img", "/a/pv1.img")


def test_deep_stack_crypt_over_md_over_lvm_over_loops(sysfs: FakeSysfs) -> None:
    """Walk order is depth first, slaves by name; a file met twice is listed once."""
    sysfs.disk("loop0", 7, 0, backing="/x/0.img")
    sysfs.disk("loop1", 7, 1, backing="/y/1.img")
    sysfs.disk("loop2", 7, 2, backing="/x/0.img")  # a second loop device on the same file
    sysfs.disk("dm-0", 253, 0)  # an LV on loop0 and loop1
    sysfs.slave("dm-0", "loop1")
    sysfs.slave("dm-0", "loop0")
    sysfs.disk("md0", 9, 0)  # a mirror of the LV and loop2
    sysfs.slave("md0", "dm-0")
    sysfs.slave("md0", "loop2")
    sysfs.disk("dm-1", 253, 1)  # dm-crypt on the mirror
    sysfs.slave("dm-1", "md0")
    assert backing_files(mount("/secret", 1, major=253), sysfs.path) == ("/x/0.img", "/y/1.img")


def test_loop_over_a_loop_device(sysfs: FakeSysfs, monkeypatch: pytest.MonkeyPatch) -> None:
    """``losetup /dev/loop2 /dev/loop1``: the walk goes on at the block device named as file."""
    sysfs.disk("loop1", 7, 1, backing="/data/base.img")
    sysfs.disk("loop2", 7, 2, backing="/dev/loop1")
    monkeypatch.setattr(order, "_block_device", {"/dev/loop1": (7, 1)}.get)
    assert backing_files(mount("/mnt/top", 2), sysfs.path) == ("/dev/loop1", "/data/base.img")


def test_block_device_lookup_looks_only_in_dev() -> None:
    assert order._block_device("/dev/null") is None  # a character device
    assert order._block_device("/srv/no/such/file") is None
    assert order._block_device("/dev/no-such-device") is None


def test_cycles_end_and_each_node_is_read_once(sysfs: FakeSysfs) -> None:
    sysfs.disk("loop0", 7, 0, backing="/data/a.img")
    sysfs.disk("dm-0", 253, 0)
    sysfs.disk("dm-1", 253, 1)
    sysfs.slave("dm-0", "dm-1")
    sysfs.slave("dm-1", "dm-0")
    sysfs.slave("dm-1", "loop0")
    sysfs.slave("dm-0", "loop0")
    assert backing_files(mount("/mnt/x", 0, major=253), sysfs.path) == ("/data/a.img",)


@pytest.mark.parametrize(("depth", "found"), [(MAX_STACK_NODES - 1, True), (MAX_STACK_NODES + 10, False)])
def test_walk_is_capped(sysfs: FakeSysfs, depth: int, found: bool) -> None:
    """A chain of ``depth`` dm devices ending in a loop device: past the cap the walk gives up."""
    sysfs.disk("loop0", 7, 0, backing="/data/deep.img")
    previous = "loop0"
    for i in range(depth):
        sysfs.disk(f"dm-{i}", 253, i)
        sysfs.slave(f"dm-{i}", previous)
        previous = f"dm-{i}"
    expected = ("/data/deep.img",) if found else ()
    assert backing_files(mount("/mnt/x", depth - 1, major=253), sysfs.path) == expected


def test_vanished_slave_is_skipped(sysfs: FakeSysfs) -> None:
    sysfs.disk("dm-0", 253, 0)
    (sysfs.nodes["dm-0"] / "slaves").mkdir()
    (sysfs.nodes["dm-0"] / "slaves/loop9").symlink_to("../../loop9")  # removed meanwhile
    assert backing_files(mount("/mnt/x", 0, major=253), sysfs.path) == ()


# -- real stacks on this host -------------------------------------------------------------------

FREEZE_LIMIT_S = 30.0


def planned_waves(loops: LoopMounts) -> list[list[str]]:
    """The waves a freeze-all of the test's mounts gets (reverse mount order, as the agent plans)."""
    prefix = str(loops.base) + "/"
    plan = [m for m in reversed(freezable(read_mountinfo())) if m.mountpoint.startswith(prefix)]
    return names(freeze_waves(plan))


def mount_of(fs: LoopFs) -> Mount:
    rdev = os.stat(fs.device).st_rdev
    return Mount(str(fs.mountpoint), fs.fstype, fs.device, os.major(rdev), os.minor(rdev))


def freeze_all_and_thaw(tmp_path: Path, loops: LoopMounts) -> tuple[int, list[str], int]:
    """Freeze-all and thaw through a real agent limited to the test's mounts; (count, frozen
    mount points, thaw count).  A deadlock fails the test: the call times out, the test's
    filesystems are thawed (the agent's FIFREEZE cannot return before that), the agent stops.
    """
    agent = start_agent(tmp_path, loops)
    try:
        with AgentClient(str(agent.socket_path), timeout=FREEZE_LIMIT_S) as client:
            try:
                count = client.call("guest-fsfreeze-freeze", {"timeout": 120}, timeout=FREEZE_LIMIT_S)
            except AgentTimeout:
                loops.thaw_all()
                pytest.fail(f"freeze-all did not return within {FREEZE_LIMIT_S} s: deadlock")
            frozen = [f["mountpoint"] for f in client.call("guest-fsfreeze-info")["frozen"]]
            thawed = client.call("guest-fsfreeze-thaw", timeout=FREEZE_LIMIT_S)
    finally:
        agent.stop()
    return count, sorted(frozen), thawed


def dirty(fs: LoopFs, megabytes: int = 4) -> None:
    """Unsynced data: its FIFREEZE must write through the stack into the host's file."""
    (fs.mountpoint / "dirty").write_bytes(os.urandom(megabytes << 20))


def test_real_loop_over_loop_freezes_inner_first(tmp_path: Path, loops: LoopMounts) -> None:
    """Three ext4 images, each inside the previous one, mounted side by side (not nested, so
    only the backing files order them)."""
    outer = loops.add("outer", size_mb=64)
    inner = loops.add("inner", image=outer.mountpoint / "inner.img", size_mb=32)
    innermost = loops.add("innermost", image=inner.mountpoint / "innermost.img", size_mb=16)
    assert backing_files(mount_of(inner)) == (str(outer.mountpoint / "inner.img"),)
    assert planned_waves(loops) == [[str(innermost)], [str(inner)], [str(outer)]]
    dirty(innermost)
    dirty(inner)
    assert freeze_all_and_thaw(tmp_path, loops) == (3, sorted(map(str, (outer, inner, innermost))), 3)
    assert not [fs for fs in (outer, inner, innermost) if thaw_fully(fs.mountpoint)], "left frozen"


def test_real_loop_over_a_loop_device_freezes_first(tmp_path: Path, loops: LoopMounts) -> None:
    """``losetup`` of a loop device: the top device's backing file is /dev/loopN, and only the
    walk through it finds the image on the outer filesystem."""
    outer = loops.add("outer", size_mb=48)
    image = outer.mountpoint / "lower.img"
    with open(image, "wb") as handle:
        handle.truncate(24 << 20)
    lower = loops.attach(image)
    top = loops.mount_device(loops.attach(lower), "top")
    assert backing_files(mount_of(top)) == (lower, str(image))
    assert planned_waves(loops) == [[str(top)], [str(outer)]]
    dirty(top)
    assert freeze_all_and_thaw(tmp_path, loops) == (2, sorted(map(str, (outer, top))), 2)
    assert not [fs for fs in (outer, top) if thaw_fully(fs.mountpoint)], "left frozen"
