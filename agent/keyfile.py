"""GKeyFile, as qemu-ga reads its config file: the syntax, the escapes and the booleans of glib.

qemu-ga loads its file with ``g_key_file_load_from_file`` and reads keys with
``g_key_file_get_string``/``_get_boolean``; a file written for it must mean the same here.  What
glib does (checked against Debian's qemu-ga 7.2): ``#`` comments and blank lines; ``[group]``
headers; ``key=value`` with spaces around ``=`` ignored; a later key or group of the same name
replaces or extends the earlier one; any other line, or a key before the first group, is an
error.  Strings undo ``\\s \\n \\t \\r \\\\`` and refuse any other escape; booleans are exactly
``true``, ``false``, ``1`` or ``0`` (trailing blanks allowed).

Worst case on untrusted input: the file is the administrator's, read once at start; a huge file
costs memory in proportion to its size, nothing else.
"""

from __future__ import annotations

from typing import NamedTuple

from pyqga.agent.errors import AgentFailure

_ESCAPES = {"s": " ", "n": "\n", "t": "\t", "r": "\r", "\\": "\\"}


class KeyFileError(AgentFailure):
    """A line glib would refuse: its number, and what is wrong with it."""

    def __init__(self, line: int, reason: str) -> None:
        super().__init__(f"line {line}: {reason}")
        self.line, self.reason = line, reason


class Entry(NamedTuple):
    """One ``key=value``: the raw value (escapes not undone) and the line it came from."""

    raw: str
    line: int


def parse(text: str) -> dict[str, dict[str, Entry]]:
    """Groups of entries, as GKeyFile holds them after loading ``text``."""
    groups: dict[str, dict[str, Entry]] = {}
    current: dict[str, Entry] | None = None
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r").lstrip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.rstrip().endswith("]"):
            current = groups.setdefault(line.rstrip()[1:-1], {})
            continue
        key, equals, value = line.partition("=")
        if not equals or not key.strip():
            raise KeyFileError(number, f"{line!r} is not a key=value pair, a [group] or a # comment")
        if current is None:
            raise KeyFileError(number, f"key {key.strip()!r} comes before the first [group]")
        current[key.strip()] = Entry(value.lstrip(), number)
    return groups


def unescape(raw: str) -> str:
    """``g_key_file_get_string``: undo glib's escapes; ValueError for one glib refuses."""
    out: list[str] = []
    chars = iter(raw)
    for char in chars:
        if char != "\\":
            out.append(char)
            continue
        following = next(chars, "")
        if following not in _ESCAPES:
            raise ValueError(f"invalid escape sequence '\\{following}' (glib knows \\s \\n \\t \\r \\\\)")
        out.append(_ESCAPES[following])
    return "".join(out)


def escape(value: str) -> str:
    """The inverse of :func:`unescape`, as ``g_key_file_set_string`` writes it."""
    text = (value.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t")
            .replace("\r", "\\r"))
    return "\\s" + text[1:] if text.startswith(" ") else text


def boolean(raw: str) -> bool:
    """``g_key_file_get_boolean``: ``true``/``1`` or ``false``/``0``, case-sensitive."""
    word = raw.rstrip()
    if word in ("true", "1"):
        return True
    if word in ("false", "0"):
        return False
    raise ValueError(f"{raw!r} is not a boolean: use true or false (or 1 or 0)")
