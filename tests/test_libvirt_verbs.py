"""libvirt's agent verbs end to end (issue 11): each run against a guest whose agent is pyqga
and one whose agent is Debian's qemu-ga, both domains of the session's private libvirtd, and the
results compared.  What libvirt shows depends only on what the agent answered, so the same
guest image must give the same output (values that move, such as times and load, aside)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from harness import GuestImage
from tests.support.libvirt import LibvirtGuest, PrivateLibvirt

pytestmark = pytest.mark.root
MOVING = re.compile(r"^(load\.|fs\.\d+\.(used|total)|user\.\d+\.login-time|time)")


@pytest.fixture(scope="module")
def guests(private_libvirt: PrivateLibvirt, guest_image: GuestImage,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, LibvirtGuest]]:
    """One domain per agent, booted together."""
    made = {
        "pyqga": LibvirtGuest.create(private_libvirt, guest_image, tmp_path_factory.mktemp("verbs-pyqga"),
                                     agents=("pyqga-virtio",)),
        "qemu-ga": LibvirtGuest.create(private_libvirt, guest_image, tmp_path_factory.mktemp("verbs-qga"),
                                       agents=("qga-virtio0",)),
    }
    try:
        for guest in made.values():
            guest.wait_agent(180)
        yield made
    finally:
        for guest in made.values():
            private_libvirt.virsh("destroy", guest.name, check=False)


def virsh(guest: LibvirtGuest, *args: str) -> str:
    result = guest.lv.virsh(*args, guest.name, check=False, timeout=60)
    assert result.returncode == 0, f"virsh {' '.join(args)} on {guest.name}: {result.stderr.strip()}"
    return result.stdout


def fields(output: str) -> dict[str, str]:
    """``virsh guestinfo`` lines ``key : value``, without values that move between two calls."""
    found = {}
    for line in output.splitlines():
        key, sep, value = line.partition(":")
        if sep and not MOVING.match(key.strip()):
            found[key.strip()] = value.strip()
    return found


@pytest.mark.parametrize("flags", [(), ("--os",), ("--timezone",), ("--hostname",), ("--filesystem",),
                                   ("--disk",), ("--interface",), ("--user",)])
def test_guestinfo_is_the_same_with_either_agent(guests: dict[str, LibvirtGuest],
                                                 flags: tuple[str, ...]) -> None:
    ours, theirs = (fields(virsh(guests[name], "guestinfo", *flags)) for name in ("pyqga", "qemu-ga"))
    # qemu-ga reads disk serials from udev's database, which this busybox guest does not run;
    # pyqga reads them from sysfs, so it tells libvirt more (and the right values).
    serials = {key: ours.pop(key) for key in list(ours) if key.endswith(".serial")}
    if flags in ((), ("--filesystem",)):
        assert set(serials.values()) == {"pyqga-root", "pyqga-data"}, serials
    assert ours == {key: value for key, value in theirs.items() if not key.endswith(".serial")}
    if flags == ("--os",) or not flags:
        assert ours.get("os.id") == "debian" and ours.get("os.kernel-release")
    if flags == ("--disk",) or not flags:
        assert int(ours["disk.count"]) >= 2  # the root and data disks


def test_domifaddr_through_the_agent(guests: dict[str, LibvirtGuest]) -> None:
    ours, theirs = (virsh(guests[name], "domifaddr", "--source", "agent", "--full")
                    for name in ("pyqga", "qemu-ga"))
    assert ours == theirs
    assert re.search(r"^ lo +00:00:00:00:00:00", ours, re.M), ours  # the guest has no network


def test_guestvcpus_reads_the_same(guests: dict[str, LibvirtGuest]) -> None:
    ours, theirs = (virsh(guests[name], "guestvcpus") for name in ("pyqga", "qemu-ga"))
    assert ours == theirs
    assert re.search(r"vcpus\s*:\s*0", ours) and re.search(r"online\s*:\s*0", ours)


def test_domtime_reads_the_guest_clock(guests: dict[str, LibvirtGuest]) -> None:
    for name in ("pyqga", "qemu-ga"):
        output = virsh(guests[name], "domtime", "--pretty")
        assert re.search(r"Time: \d{4}-\d\d-\d\d \d\d:\d\d:\d\d", output), (name, output)
