"""``guest-get-users`` and ``guest-get-timezone``, as qemu-ga computes them.

``guest-get-users``: qemu-ga walks utmp with ``getutxent`` and lists each user with a
``USER_PROCESS`` record once, in order of first appearance, with the earliest login time among
that user's records, in seconds since the epoch as a float (``tv_sec + tv_usec / 1e6``, the same
double arithmetic). We read the same file, glibc's ``/var/run/utmp``, as the 384-byte records of
glibc's ``struct utmpx`` on Linux; no utmp file means no users, as for getutxent. ``domain`` is
never sent (qemu-ga fills it only on Windows).

``guest-get-timezone``: qemu-ga asks glib for the local zone's interval at the current second and
reports its abbreviation (``zone``: "UTC", "CET", "CEST") and its offset east of UTC in seconds;
libc's local time (``TZ``, else ``/etc/localtime``) gives the same two values.
"""

from __future__ import annotations

import struct
import time
from typing import TYPE_CHECKING, Any

from pyqga.agent.registry import Command

if TYPE_CHECKING:
    from pyqga.agent.state import AgentState

UTMP_PATH = "/var/run/utmp"
USER_PROCESS = 7
# glibc's struct utmp / utmpx on Linux (x86_64, aarch64...: 32-bit times for compatibility):
# ut_type (short, padded), ut_pid, ut_line[32], ut_id[4], ut_user[32], ut_host[256],
# ut_exit {short, short}, ut_session, ut_tv {int32 sec, int32 usec}, ut_addr_v6[4], unused[20].
UTMP_RECORD = struct.Struct("=h2xi32s4s32s256shhiii16s20x")
assert UTMP_RECORD.size == 384
_USER_OFFSET = 2 + 2 + 4 + 32 + 4


def _c_string(record: bytes, offset: int) -> str:
    """A NUL-terminated string as C reads it: a full ut_user runs on into ut_host, as qemu-ga's
    g_strdup of the field would."""
    end = record.find(b"\0", offset)
    raw = record[offset:] if end < 0 else record[offset:end]
    return raw.decode("utf-8", "replace")


def read_users(path: str = UTMP_PATH) -> list[dict[str, Any]]:
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        return []
    users: dict[str, dict[str, Any]] = {}
    for start in range(0, len(data) - UTMP_RECORD.size + 1, UTMP_RECORD.size):
        record = data[start:start + UTMP_RECORD.size]
        fields = UTMP_RECORD.unpack(record)
        ut_type, tv_sec, tv_usec = fields[0], fields[9], fields[10]
        if ut_type != USER_PROCESS:
            continue
        name = _c_string(record, _USER_OFFSET)
        login_time = float(tv_sec) + float(tv_usec) / 1000000
        known = users.get(name)
        if known is None:
            users[name] = {"user": name, "login-time": login_time}
        elif login_time < known["login-time"]:
            known["login-time"] = login_time
    return list(users.values())


def get_timezone(now: float | None = None) -> dict[str, Any]:
    local = time.localtime(int(time.time() if now is None else now))
    info: dict[str, Any] = {"offset": local.tm_gmtoff}
    if local.tm_zone is not None:
        info["zone"] = local.tm_zone
    return info


def guest_get_users(agent: AgentState) -> list[dict[str, Any]]:
    return read_users()


def guest_get_timezone(agent: AgentState) -> dict[str, Any]:
    return get_timezone()


COMMANDS = (
    Command("guest-get-users", guest_get_users,
            "Users logged in (utmp): user, login-time in seconds since the epoch."),
    Command("guest-get-timezone", guest_get_timezone,
            "The local time zone: its abbreviation (zone) and offset from UTC in seconds."),
)
