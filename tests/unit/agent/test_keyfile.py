"""The GKeyFile reader: glib's syntax, escapes and booleans (checked against qemu-ga 7.2's -D)."""

from __future__ import annotations

import pytest

from pyqga.agent import keyfile


def test_groups_keys_comments_and_repeats() -> None:
    groups = keyfile.parse("# c\n\n[general]\n  method = unix-listen\nverbose=true\r\n"
                           "[other]\nverbose=x\n[general]\nverbose=false\n")
    general = groups["general"]
    assert (general["method"].raw, general["method"].line) == ("unix-listen", 4)
    assert (general["verbose"].raw, general["verbose"].line) == ("false", 9)  # the last one wins
    assert groups["other"]["verbose"].raw == "x"
    assert "general" not in keyfile.parse("[ general ]\nverbose=true\n")  # the name is exact


@pytest.mark.parametrize(("text", "reason"), [
    ("junk\n", "line 1: 'junk' is not a key=value pair"),
    ("[general]\n\nverbose\n", "line 3: 'verbose' is not"),
    ("method=x\n[general]\n", "line 1: key 'method' comes before the first"),
])
def test_lines_glib_refuses(text: str, reason: str) -> None:
    with pytest.raises(keyfile.KeyFileError, match=reason):
        keyfile.parse(text)


def test_string_escapes_round_trip() -> None:
    assert keyfile.unescape(r"\s/tmp/a\sb\\c\td\ne\r") == " /tmp/a b\\c\td\ne\r"
    for bad in (r"/tmp/a\xb", "end\\"):
        with pytest.raises(ValueError, match="invalid escape"):
            keyfile.unescape(bad)
    for value in (" lead", "a\\b", "tab\there", "multi\nline", "plain"):
        assert keyfile.unescape(keyfile.escape(value)) == value
    assert keyfile.escape(" /x\\y") == r"\s/x\\y"  # as qemu-ga -D writes it


def test_booleans_as_glib_reads_them() -> None:
    values = ("true", "1", "false", "0", "true  ")
    assert [keyfile.boolean(v) for v in values] == [True, True, False, False, True]
    for bad in ("yes", "True", "on", ""):
        with pytest.raises(ValueError, match="not a boolean"):
            keyfile.boolean(bad)
