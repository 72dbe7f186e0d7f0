"""Commands every host uses to find and check the agent: ping, sync, info, system facts."""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pyqga.agent import keyfile
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


def parse_os_release(data: bytes) -> dict[str, str] | None:
    """The fields of an os-release file: read as qemu-ga reads the file (``ga_parse_osrelease``:
    a GKeyFile group of raw ``KEY=value`` lines; None, so the next file is tried, when it is not
    UTF-8 or has a line that is no ``KEY=value`` or comment), each value unquoted as os-release(5)
    says (shell quoting, :func:`shell_unquote`); a value that does not unquote is left out.

    qemu-ga's own unquoting (``ga_osrelease_replace_special``) departs from os-release(5) where
    a file uses single quotes or ``\\'`` inside double quotes (tests/differential/test_config.py
    records how); on double-quoted and plain values, what distributions write, both agree."""
    try:
        entries = keyfile.parse("[os-release]\n" + data.decode("utf-8")).get("os-release", {})
    except (UnicodeDecodeError, keyfile.KeyFileError):
        return None
    values: dict[str, str] = {}
    for key, entry in entries.items():
        raw = entry.raw.rstrip(" \t")
        if raw.endswith("\\") and raw != entry.raw:
            raw += entry.raw[len(raw)]  # an escaped blank ends the word
        with contextlib.suppress(ValueError):
            values[key] = shell_unquote(raw)  # blanks after the word are no part of it
    return values


def shell_unquote(text: str) -> str:
    """glib's ``g_shell_unquote``, which os-release(5)'s shell quoting asks for.  Outside
    quotes a backslash takes the next character literally (a backslash-newline vanishes);
    ``'...'`` is literal; inside ``"..."`` a backslash escapes only ``" \\ ` $`` and newline and
    stays otherwise; adjacent pieces join.  ValueError for an unmatched quote."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        char = text[i]
        if char == "\\":
            if i + 1 < n and text[i + 1] != "\n":
                out.append(text[i + 1])
            i += 2
        elif char == "'":
            end = text.find("'", i + 1)
            if end < 0:
                raise ValueError("unmatched quotation mark")
            out.append(text[i + 1:end])
            i = end + 1
        elif char == '"':
            i += 1
            while True:
                if i >= n:
                    raise ValueError("unmatched quotation mark")
                char = text[i]
                if char == '"':
                    i += 1
                    break
                if char == "\\" and i + 1 < n and text[i + 1] in '"\\`$\n':
                    out.append(text[i + 1])
                    i += 2
                else:
                    out.append(char)
                    i += 1
        else:
            out.append(char)
            i += 1
    return "".join(out)


def os_release_files(environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """``$QGA_OS_RELEASE`` alone when set (as qemu-ga reads it), else the standard two."""
    override = (os.environ if environ is None else environ).get("QGA_OS_RELEASE")
    return (override,) if override else OS_RELEASE_FILES


def guest_get_osinfo(agent: AgentState) -> dict[str, Any]:
    uname = os.uname()
    return {
        "kernel-release": uname.release,
        "kernel-version": uname.version,
        "machine": uname.machine,
        **agent.os_release.fields(),
    }


class OsRelease:
    """The os-release fields qemu-ga reports, from the first file that reads and parses.  Re-read only
    when a stat says the file changed (an upgrade replaces it): hosts poll guest-get-osinfo.
    One per agent, owned by its ``AgentState``."""

    def __init__(self, files: tuple[str, ...] | None = None) -> None:
        self._files = files  # None: os_release_files() at each call, as qemu-ga looks
        # (path, device, inode, size, mtime) of the file last read, and what it said; replaced
        # whole, so a worker thread never sees one half of it.
        self._seen: tuple[tuple[Any, ...], dict[str, str]] | None = None

    def fields(self) -> dict[str, str]:
        for path in self._files or os_release_files():
            try:
                st = os.stat(path)
                identity = (path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
                seen = self._seen
                if seen is not None and seen[0] == identity:
                    return seen[1]
                with open(path, "rb") as handle:
                    release = parse_os_release(handle.read())
            except OSError:
                continue
            if release is None:
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

