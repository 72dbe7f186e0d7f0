"""Commands every host uses to find and check the agent: ping, sync, info, system facts."""

from __future__ import annotations

import os
import socket
import time
from typing import TYPE_CHECKING, Any

from pyqga.agent.registry import Command, Param

if TYPE_CHECKING:
    from pyqga.agent.state import AgentState

OS_RELEASE_FILES = ("/etc/os-release", "/usr/lib/os-release")
OS_RELEASE_KEYS = {
    "ID": "id",
    "NAME": "name",
    "PRETTY_NAME": "pretty-name",
    "VERSION": "version",
    "VERSION_ID": "version-id",
    "VARIANT": "variant",
    "VARIANT_ID": "variant-id",
}


def guest_ping(agent: AgentState) -> dict[str, Any]:
    return {}


def guest_sync(agent: AgentState, id: int) -> int:
    return id


def guest_info(agent: AgentState) -> dict[str, Any]:
    return {
        "version": agent.version,
        "supported_commands": [
            {
                "name": command.name,
                "enabled": agent.disabled_reason(command.name) is None,
                "success-response": command.success_response,
            }
            for command in agent.registry
        ],
    }


def parse_os_release(text: str) -> dict[str, str]:
    """``KEY=value`` lines with shell quoting, as os-release(5) defines them."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        values[key.strip()] = value
    return values


def guest_get_osinfo(agent: AgentState) -> dict[str, Any]:
    uname = os.uname()
    return {
        "kernel-release": uname.release,
        "kernel-version": uname.version,
        "machine": uname.machine,
        **agent.os_release.fields(),
    }


class OsRelease:
    """The os-release fields qemu-ga reports, from the first file that exists.  Re-read only
    when a stat says the file changed (an upgrade replaces it): hosts poll guest-get-osinfo.
    One per agent, owned by its ``AgentState``."""

    def __init__(self, files: tuple[str, ...] = OS_RELEASE_FILES) -> None:
        self._files = files
        # (path, device, inode, size, mtime) of the file last read, and what it said; replaced
        # whole, so a worker thread never sees one half of it.
        self._seen: tuple[tuple[Any, ...], dict[str, str]] | None = None

    def fields(self) -> dict[str, str]:
        for path in self._files:
            try:
                st = os.stat(path)
                identity = (path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
                seen = self._seen
                if seen is not None and seen[0] == identity:
                    return seen[1]
                with open(path, encoding="utf-8") as handle:
                    release = parse_os_release(handle.read())
            except OSError:
                continue
            fields = {ours: release[key] for key, ours in OS_RELEASE_KEYS.items() if key in release}
            self._seen = (identity, fields)
            return fields
        return {}


def guest_get_host_name(agent: AgentState) -> dict[str, Any]:
    return {"host-name": socket.gethostname()}


def guest_get_time(agent: AgentState) -> int:
    return time.time_ns()


SYNC_ID = Param("id", int, doc="any integer; returned unchanged")

COMMANDS = (
    Command("guest-ping", guest_ping, "Check that the agent answers.", allowed_while_frozen=True),
    Command("guest-sync", guest_sync, "Echo an id so the host can match replies to requests.",
            (SYNC_ID,), allowed_while_frozen=True),
    Command("guest-sync-delimited", guest_sync,
            "Like guest-sync, but the reply starts with the byte 0xFF so the host can resync.",
            (SYNC_ID,), allowed_while_frozen=True, delimited=True),
    Command("guest-info", guest_info, "Agent version and the commands it supports.",
            allowed_while_frozen=True),
    Command("guest-get-osinfo", guest_get_osinfo, "Kernel and distribution of the guest."),
    Command("guest-get-host-name", guest_get_host_name, "The guest's host name."),
    Command("guest-get-time", guest_get_time, "Guest time in nanoseconds since the epoch."),
)

