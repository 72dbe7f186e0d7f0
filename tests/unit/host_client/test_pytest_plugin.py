"""The pytest plugin's options and seeds, without an agent (tests/process/test_pytest_plugin.py
runs it against a real one)."""

from __future__ import annotations

import pytest

from pyqga.host_client.faults import FaultEvent
from pyqga.host_client.nemesis import format_timeline
from pyqga.host_client.pytest_plugin import test_seed as derive_seed

pytest_plugins = ["pytester"]

USES_GUEST = """
def test_needs_a_guest(guest):
    pass
"""


@pytest.fixture(autouse=True)
def no_address_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYQGA_ADDRESS", raising=False)
    monkeypatch.delenv("QGA_CLIENT_ADDRESS", raising=False)


def test_without_an_address_guest_tests_skip_and_say_how_to_give_one(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(USES_GUEST)
    result = pytester.runpytest("-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["pyqga: seed * replays it); no agent address (guest tests skip)",
                                 "*no pyqga agent address: give --pyqga-address ADDRESS*"])


def test_the_ini_setting_is_the_default_and_the_option_beats_it(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\npyqga_address = unix:/nonexistent/from-ini.sock\n")
    pytester.makepyfile("def test_nothing():\n    pass\n")
    result = pytester.runpytest()
    result.stdout.fnmatch_lines(["pyqga: seed *; agent unix:/nonexistent/from-ini.sock "
                                 "(from the ini setting pyqga_address)"])
    result = pytester.runpytest("--pyqga-address", "unix:/nonexistent/opt.sock", "--pyqga-seed", "9")
    result.stdout.fnmatch_lines(["pyqga: seed 9 (--pyqga-seed 9 replays it); "
                                 "agent unix:/nonexistent/opt.sock (from --pyqga-address)"])


def test_an_address_that_cannot_be_one_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(USES_GUEST)
    result = pytester.runpytest("--pyqga-address", "vsock:abc:1")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--pyqga-address: 'vsock:abc:1': expected vsock:CID:PORT*"])


def test_an_unreachable_agent_is_one_clear_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(USES_GUEST)
    result = pytester.runpytest("--pyqga-address", str(pytester.path / "nobody.sock"))
    assert result.ret != pytest.ExitCode.OK
    assert "pyqga: cannot reach the agent at" in result.stdout.str() + result.stderr.str()


def test_a_test_s_seed_depends_on_the_session_seed_and_the_test_only() -> None:
    assert derive_seed(7, "t.py::a") == derive_seed(7, "t.py::a")
    assert len({derive_seed(7, "t.py::a"), derive_seed(8, "t.py::a"), derive_seed(7, "t.py::b")}) == 3


def event(name: str, mono: float, boot: str = "b1", **extra: str) -> FaultEvent:
    return FaultEvent(name, "f1", "disk-full", "/data", mono, 1_700_000_000 + mono, boot, **extra)


def test_the_timeline_text_counts_from_the_first_event_and_marks_a_reboot() -> None:
    text = format_timeline([event("armed", 100.0), event("fired", 100.25),
                            event("expired", 5.0, boot="b2", reason="agent-restart")])
    lines = text.splitlines()
    assert lines[0].split()[0] == "+0.000s" and lines[1].split()[0] == "+0.250s"
    assert lines[2].startswith("-- boot b2")
    assert lines[3].split()[0] == "+0.000s" and lines[3].endswith("(agent-restart)")
    assert format_timeline([]) == "(no fault events)"
