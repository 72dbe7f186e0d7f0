"""guest-get-osinfo reads os-release as qemu-ga does: $QGA_OS_RELEASE, GKeyFile lines, and
values unquoted by g_shell_unquote (os-release(5): shell quoting)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyqga.agent.commands.core import OsRelease, os_release_files, parse_os_release, shell_unquote

# os-release(5)'s example file (Fedora 32, from its EXAMPLES section, shortened), with a comment
# and a blank line as its syntax section allows, and what each value reads back as.
SPEC_EXAMPLE = b"""\
NAME=Fedora
VERSION="32 (Workstation Edition)"
ID=fedora
VERSION_ID=32
PRETTY_NAME="Fedora 32 (Workstation Edition)"
VARIANT="Workstation Edition"
VARIANT_ID=workstation
# a comment

ANSI_COLOR="0;38;2;60;110;180"
"""

# qemu's tests/data/test-qga-os-release, as test-qga.c's test_qga_guest_get_osinfo reads it.
QEMU_TEST_FILE = b"""\
ID=qemu-ga-test
NAME=QEMU-GA
PRETTY_NAME="QEMU Guest Agent test"
VERSION="Test version"
VERSION_ID=1
VARIANT="Unit test \\"'$`\\\\ and \\\\\\\\ etc."
VARIANT_ID=unit-test
"""


def test_the_spec_examples_read_back_as_written() -> None:
    assert parse_os_release(SPEC_EXAMPLE) == {
        "NAME": "Fedora", "VERSION": "32 (Workstation Edition)", "ID": "fedora", "VERSION_ID": "32",
        "PRETTY_NAME": "Fedora 32 (Workstation Edition)", "VARIANT": "Workstation Edition",
        "VARIANT_ID": "workstation", "ANSI_COLOR": "0;38;2;60;110;180",
    }


def test_qemus_own_test_case(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "test-qga-os-release"
    path.write_bytes(QEMU_TEST_FILE)
    monkeypatch.setenv("QGA_OS_RELEASE", str(path))
    assert OsRelease().fields() == {
        "id": "qemu-ga-test", "name": "QEMU-GA", "pretty-name": "QEMU Guest Agent test",
        "version": "Test version", "version-id": "1", "variant": "Unit test \"'$`\\ and \\\\ etc.",
        "variant-id": "unit-test",
    }


@pytest.mark.parametrize(("quoted", "plain"), [
    ("plain", "plain"),
    ("'single $quoted `text` \\ stays'", "single $quoted `text` \\ stays"),
    ('"dollar \\$ tick \\` quote \\" backslash \\\\"', "dollar $ tick ` quote \" backslash \\"),
    ('"other \\n \\a backslashes stay"', "other \\n \\a backslashes stay"),
    ("escaped\\ space\\'", "escaped space'"),
    ("'adjacent'\"pieces\"join", "adjacentpiecesjoin"),
    ('"it\'s"', "it's"),
    ('"it\\\'s"', "it\\'s"),  # \' inside double quotes stays, as in a shell
    ("", ""),
    ('"trailing \\', None),
    ("'open", None),
])
def test_shell_unquote_follows_glib(quoted: str, plain: str | None) -> None:
    if plain is None:
        with pytest.raises(ValueError, match="unmatched"):
            shell_unquote(quoted)
    else:
        assert shell_unquote(quoted) == plain


def test_blanks_after_a_value_are_no_part_of_it() -> None:
    # GKeyFile hands the value over with its trailing blanks; a shell word ends before them.
    assert parse_os_release(b'VERSION_ID=1.0  \nNAME="x y" \nID=a\\ \n') == {
        "VERSION_ID": "1.0", "NAME": "x y", "ID": "a "}


def test_bad_values_and_bad_files_as_qemu_ga_reads_them(tmp_path: Path) -> None:
    # A value that does not unquote is left out; the others stay.
    assert parse_os_release(b'ID=x\nNAME="open\n') == {"ID": "x"}
    # A line that is neither KEY=value nor a comment spoils the file, as does invalid UTF-8:
    # the next file is tried.
    assert parse_os_release(b"ID=x\njunk\n") is None
    assert parse_os_release(b"ID=\xff\n") is None
    spoilt, good = tmp_path / "spoilt", tmp_path / "good"
    spoilt.write_bytes(b"ID=spoilt\nnot a line\n")
    good.write_bytes(b"ID=good\n")
    assert OsRelease((str(spoilt), str(good))).fields() == {"id": "good"}


def test_qga_os_release_replaces_the_standard_files(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QGA_OS_RELEASE", raising=False)
    assert os_release_files() == ("/etc/os-release", "/usr/lib/os-release")
    monkeypatch.setenv("QGA_OS_RELEASE", "/nowhere/os-release")
    assert os_release_files() == ("/nowhere/os-release",)
    assert OsRelease().fields() == {}  # no fallback to /etc/os-release, as in qemu-ga
