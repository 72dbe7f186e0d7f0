"""Users and time zone (agent/commands/users.py).

Differential: the real qemu-ga and pyqga run side by side on this machine and are asked the same
thing at the same moment; the VALUES must agree (users and their login times, time zone). A utmp
file is written only where this machine has none, and removed afterwards.
"""

from __future__ import annotations

import os
import struct
import time
from pathlib import Path

import pytest

from pyqga.agent.commands import users
from tests.rig.requirements import require
from tests.rig.side_by_side import Pair, ok, side_by_side

# --- the same values as qemu-ga --------------------------------------------------------------


@pytest.mark.qemu_ga
def test_get_timezone_same(pair: Pair) -> None:
    qga, ours = pair.call("guest-get-timezone")
    assert ok(ours) == ok(qga)


@pytest.mark.qemu_ga
@pytest.mark.parametrize("zone", ["Asia/Kolkata", "America/New_York", "UTC"])
def test_get_timezone_same_under_tz(tmp_path: Path, zone: str, monkeypatch: pytest.MonkeyPatch) -> None:
    require(os.path.exists(f"/usr/share/zoneinfo/{zone}"), f"tzdata has no {zone}")
    monkeypatch.setenv("TZ", zone)   # both agents inherit the test's environment
    with side_by_side(tmp_path) as peers:
        qga, ours = peers.call("guest-get-timezone")
    assert ok(ours) == ok(qga)
    if zone == "Asia/Kolkata":
        assert ours["return"] == {"zone": "IST", "offset": 19800}


@pytest.mark.qemu_ga
def test_get_users_same_without_utmp_change(pair: Pair) -> None:
    qga, ours = pair.call("guest-get-users")
    assert ok(ours) == ok(qga)


def _utmp_record(ut_type: int, user: bytes, sec: int, usec: int, line: bytes = b"pts/9") -> bytes:
    return users.UTMP_RECORD.pack(ut_type, 4242, line, b"ts/9", user, b"host.example", 0, 0, 0,
                                  sec, usec, b"\0" * 16)


UTMP_RECORDS = [
    _utmp_record(2, b"reboot", 1_700_000_000, 0),                 # BOOT_TIME: not a user
    _utmp_record(users.USER_PROCESS, b"alice", 1_700_000_500, 250_000),
    _utmp_record(users.USER_PROCESS, b"bob", 1_700_000_100, 999_999),
    _utmp_record(users.USER_PROCESS, b"alice", 1_700_000_200, 5),   # earlier: this one counts
    _utmp_record(8, b"carol", 1_700_000_300, 0),                   # DEAD_PROCESS
    _utmp_record(users.USER_PROCESS, b"alice", 1_700_000_900, 0),
]


@pytest.mark.qemu_ga
def test_get_users_same_with_logins(pair: Pair) -> None:
    """qemu-ga reads glibc's /var/run/utmp and nothing else, so the logins must be there. Only
    when this machine has no utmp (a container, a minimal VM) does the test write one, and it
    removes it afterwards."""
    path = Path(users.UTMP_PATH)
    require(os.geteuid() == 0, "writing /var/run/utmp needs root")
    require(not path.exists(), "this machine has a utmp of its own, which the test would clobber")
    path.write_bytes(b"".join(UTMP_RECORDS))
    try:
        qga, ours = pair.call("guest-get-users")
    finally:
        path.unlink()
    assert ok(ours) == ok(qga)
    assert ours["return"] == [
        {"user": "alice", "login-time": 1_700_000_200.000005},
        {"user": "bob", "login-time": 1_700_000_100.999999},
    ]


# --- utmp and time zone, read directly -------------------------------------------------------


def test_users_from_a_crafted_utmp(tmp_path: Path) -> None:
    path = tmp_path / "utmp"
    long_name = b"u" * 32   # fills ut_user: C reads on into ut_host
    path.write_bytes(b"".join(UTMP_RECORDS) + _utmp_record(users.USER_PROCESS, long_name, 5, 500_000)
                     + b"\0" * 100)   # a torn record at the end is ignored
    assert users.read_users(str(path)) == [
        {"user": "alice", "login-time": 1_700_000_200.000005},
        {"user": "bob", "login-time": 1_700_000_100.999999},
        {"user": "u" * 32 + "host.example", "login-time": 5.5},
    ]
    assert users.read_users(str(tmp_path / "absent")) == []


def test_timezone_matches_libc() -> None:
    now = time.time()
    local = time.localtime(int(now))
    assert users.get_timezone(now) == {"zone": local.tm_zone, "offset": local.tm_gmtoff}


def test_utmp_record_is_glibc_size() -> None:
    assert users.UTMP_RECORD.size == 384
    assert struct.calcsize("=h2xi32s4s32s256shhiii16s20x") == 384
