"""The values the ``pyqga`` command line takes, checked before anything is sent.

TIME is ``500ms``, ``30s``, ``2m``, ``1h``, ``1d`` or a bare number of seconds, for every option
that is a length of time.  A bad value (negative, zero where that means nothing, ``nan``,
``inf``, an address that cannot parse) is a usage error: one line, exit status 2, before any
connection is made.  The agent's own limit on a freeze's auto-thaw (7 days) caps every TIME, so
a number too large for the system's timers never reaches them.

The agent's address comes from ``--socket``/``--address``, else ``PYQGA_ADDRESS``, else
``QGA_CLIENT_ADDRESS`` (qemu-ga-client's variable): the option wins, then the more specific
variable.
"""

from __future__ import annotations

import argparse
import math
import os
import re

from pyqga.host_client.errors import AgentConnectionError
from pyqga.host_client.transport import host_port, parse_address

MAX_TIME = 7 * 24 * 3600.0   # the agent's own cap on an auto-thaw (agent/freeze/machine.py)
TIME_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_TIME = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h|d)?\s*", re.IGNORECASE)
TIME_HELP = "TIME is 500ms, 30s, 2m, 1h, 1d or plain seconds"

ADDRESS_VARIABLES = ("PYQGA_ADDRESS", "QGA_CLIENT_ADDRESS")   # in order of precedence
ADDRESS_FORMS = ("a unix socket path, unix:PATH, vsock:CID:PORT, tcp:HOST:PORT, "
                 "serial:DEVICE[?baud=N], a pyserial URL, or libvirt:URI?domain=NAME")


def parse_time(text: str, *, zero: bool = False) -> float:
    """Seconds from TIME; > 0 (>= 0 with ``zero``) and at most :data:`MAX_TIME`."""
    match = _TIME.fullmatch(text)
    if match is None and text.strip().startswith("-"):
        raise argparse.ArgumentTypeError(f"{text!r}: must be more than zero")
    if match is None:
        raise argparse.ArgumentTypeError(f"not a time: {text!r} ({TIME_HELP})")
    seconds = float(match[1]) * TIME_UNITS[(match[2] or "s").lower()]
    if not math.isfinite(seconds) or seconds > MAX_TIME:
        raise argparse.ArgumentTypeError(f"{text!r} is too long (at most 7d)")
    if seconds == 0 and not zero:
        raise argparse.ArgumentTypeError(f"{text!r}: must be more than zero")
    return seconds


def time_or_zero(text: str) -> float:
    return parse_time(text, zero=True)


def positive_int(text: str) -> int:
    return _int(text, 1)


def non_negative_int(text: str) -> int:
    return _int(text, 0)


def _int(text: str, least: int) -> int:
    try:
        value = int(text.strip(), 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"{text!r}: must be at least {least}")
    return value


def check_address(address: str) -> str | None:
    """Why ``address`` cannot name an agent (one line), or None: the syntax only, no connect."""
    if not address.strip():
        return "empty address"
    scheme, rest = parse_address(address)
    if scheme in ("unix", "serial", "libvirt") and not rest:
        return f"{address!r}: nothing after '{scheme}:'"
    if scheme in ("tcp", "vsock"):
        form = "tcp:HOST:PORT" if scheme == "tcp" else "vsock:CID:PORT"
        try:
            host, port = host_port(rest, address)
        except AgentConnectionError:
            return f"{address!r}: expected {form}"
        if not host or (scheme == "vsock" and not host.isdigit()):
            return f"{address!r}: expected {form}" + (" with a numeric CID" if host else "")
        if not 0 < port < (1 << 32 if scheme == "vsock" else 1 << 16):
            return f"{address!r}: port {port} is out of range"
    return None


def agent_address(option: str | None) -> tuple[str, str] | None:
    """(address, where it came from) by the precedence in the module docstring, or None."""
    if option is not None:
        return option, "--socket"
    for name in ADDRESS_VARIABLES:
        value = os.environ.get(name)
        if value:
            return value, name
    return None
