"""TIME, counts and addresses as the CLI takes them (:mod:`pyqga.host_client.cli_values`)."""

from __future__ import annotations

import argparse

import pytest

from pyqga.host_client.cli_values import MAX_TIME, agent_address, check_address, parse_time, time_or_zero


@pytest.mark.parametrize(("text", "seconds"), [
    ("500ms", 0.5), ("30s", 30.0), ("2m", 120.0), ("1h", 3600.0), ("1d", 86400.0), ("1.5", 1.5),
    ("7", 7.0), (" 2M ", 120.0), (".25s", 0.25), ("7d", MAX_TIME),
])
def test_time_forms(text: str, seconds: float) -> None:
    assert parse_time(text) == seconds


@pytest.mark.parametrize("text", ["", "-1", "nan", "inf", "-inf", "0", "0s", "1e3", "5 min", "8d",
                                  "1" + "0" * 400, "s", "1..2"])
def test_bad_times(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_time(text)


def test_zero_only_where_it_means_something() -> None:
    assert time_or_zero("0") == 0.0
    with pytest.raises(argparse.ArgumentTypeError):
        time_or_zero("-1")


@pytest.mark.parametrize("address", ["/run/qga.sock", "unix:/x", "vsock:3:1234", "tcp:localhost:4444",
                                     "tcp:[::1]:4444", "serial:/dev/ttyS1?baud=9600", "socket://h:1",
                                     "libvirt:qemu:///system?domain=vm1", "relative.sock"])
def test_good_addresses(address: str) -> None:
    assert check_address(address) is None


@pytest.mark.parametrize("address", ["", "vsock:abc", "vsock:x:1", "vsock:3:0", "tcp:host", "tcp::80",
                                     "tcp:h:65536", "unix:", "libvirt:"])
def test_bad_addresses(address: str) -> None:
    assert check_address(address) is not None


def test_address_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYQGA_ADDRESS", raising=False)
    monkeypatch.delenv("QGA_CLIENT_ADDRESS", raising=False)
    assert agent_address(None) is None
    monkeypatch.setenv("QGA_CLIENT_ADDRESS", "/q")
    assert agent_address(None) == ("/q", "QGA_CLIENT_ADDRESS")
    monkeypatch.setenv("PYQGA_ADDRESS", "/p")
    assert agent_address(None) == ("/p", "PYQGA_ADDRESS")
    assert agent_address("/o") == ("/o", "--socket")
