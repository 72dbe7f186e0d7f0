"""Pure parsing of /proc/self/mountinfo and qemu-ga's rules for what is freezable."""

from __future__ import annotations

from pyqga.agent.freeze.mounts import (
    Mount,
    freezable,
    parse_mountinfo,
    parse_mountinfo_line,
    read_mountinfo,
    unescape,
)

SAMPLE = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
24 27 0:6 / /dev rw,relatime - devtmpfs devtmpfs rw,size=12334524k,mode=755
27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw,discard
30 27 0:27 / /run rw,nosuid,nodev - tmpfs tmpfs rw,size=100m
41 27 7:0 / /srv/data\\040disk rw,relatime shared:5 master:2 - ext4 /dev/loop0 rw
42 27 7:0 /sub /srv/bind\\011tab rw,relatime - ext4 /dev/loop0 rw
43 41 7:1 / /srv/data\\040disk/inner rw,relatime - xfs /dev/loop1 rw,attr2
44 27 0:45 / /home rw,relatime - btrfs /dev/vdb rw,subvol=/home
45 27 0:46 / /var rw,relatime - btrfs /dev/vdb rw,subvol=/var
46 27 0:47 / /mnt/weird rw - btrfs none rw
47 27 0:48 / /mnt/nfs rw - nfs4 server:/export rw,vers=4.2
48 27 0:49 / /mnt/back\\134slash rw - autofs systemd-1 rw
"""

BLOCK_DEVICES = {"/dev/vdb": (254, 16)}


def lookup(source: str) -> tuple[int, int] | None:
    return BLOCK_DEVICES.get(source)


def test_parses_fields_and_optional_tags() -> None:
    mount = parse_mountinfo_line("41 27 7:0 / /srv/data rw,relatime shared:5 master:2 - ext4 /dev/loop0 rw,x")
    assert mount == Mount(
        mountpoint="/srv/data",
        fstype="ext4",
        source="/dev/loop0",
        major=7,
        minor=0,
        mount_id=41,
        parent_id=27,
        root="/",
        options="rw,relatime",
        super_options="rw,x",
    )
    assert mount.device == (7, 0)


def test_no_optional_fields_and_empty_source() -> None:
    mount = parse_mountinfo_line("50 1 0:50 / /x rw - fuse.sshfs  rw")
    assert mount is not None
    assert (mount.fstype, mount.source, mount.super_options) == ("fuse.sshfs", "", "rw")


def test_octal_escapes_decoded() -> None:
    mounts = {m.mount_id: m for m in parse_mountinfo(SAMPLE)}
    assert mounts[41].mountpoint == "/srv/data disk"
    assert mounts[42].mountpoint == "/srv/bind\ttab"
    assert mounts[43].mountpoint == "/srv/data disk/inner"
    assert mounts[48].mountpoint == "/mnt/back\\slash"
    assert unescape("a\\012b") == "a\nb"
    assert unescape("no escapes \\x") == "no escapes \\x"  # only backslash + 3 octal digits


def test_non_utf8_names_survive_as_surrogates() -> None:
    mount = parse_mountinfo_line("60 1 8:1 / /mnt/caf\udce9 rw - ext4 /dev/sda1 rw")
    assert mount is not None
    assert mount.mountpoint.encode("utf-8", "surrogateescape") == b"/mnt/caf\xe9"


def test_malformed_lines_are_skipped() -> None:
    text = "garbage\n\n1 2 x:y / /a rw - ext4 /dev/a rw\n" + SAMPLE.splitlines()[2] + "\n1 2 3:4 / /b rw\n"
    assert [m.mountpoint for m in parse_mountinfo(text)] == ["/"]


def test_major_zero_skipped_and_order_kept() -> None:
    points = [m.mountpoint for m in freezable(parse_mountinfo(SAMPLE), lookup)]
    # proc, devtmpfs, tmpfs, nfs, autofs and btrfs without a block device are gone; file order.
    assert points == ["/", "/srv/data disk", "/srv/data disk/inner", "/home"]


def test_btrfs_takes_the_block_device_numbers() -> None:
    home = next(m for m in freezable(parse_mountinfo(SAMPLE), lookup) if m.mountpoint == "/home")
    assert home.device == (254, 16)
    # The second subvolume of the same device is a duplicate, like a bind mount.
    assert "/var" not in [m.mountpoint for m in freezable(parse_mountinfo(SAMPLE), lookup)]


def test_btrfs_without_block_device_is_skipped() -> None:
    mounts = parse_mountinfo("46 27 0:47 / /mnt/weird rw - btrfs none rw\n")
    assert freezable(mounts, lookup) == []
    assert freezable(mounts, lambda _source: None) == []


def test_bind_mounts_deduplicated_first_wins() -> None:
    text = (
        "1 0 8:1 /sub /bind rw - ext4 /dev/sda1 rw\n"
        "2 0 8:1 / /real rw - ext4 /dev/sda1 rw\n"
        "3 0 8:2 / /other rw - ext4 /dev/sda2 rw\n"
    )
    assert [m.mountpoint for m in freezable(parse_mountinfo(text), lookup)] == ["/bind", "/other"]


def test_default_lookup_handles_missing_sources() -> None:
    # The real stat-based lookup: a btrfs "source" that is not a device node is not freezable.
    mounts = parse_mountinfo("1 0 0:99 / /x rw - btrfs /nonexistent/device rw\n")
    assert freezable(mounts) == []


def test_reads_the_real_mountinfo() -> None:
    mounts = read_mountinfo()
    assert any(m.mountpoint == "/" for m in mounts)
    assert all(m.mountpoint.startswith("/") for m in mounts)
