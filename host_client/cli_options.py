"""The options several ``pyqga`` verbs share, defined once so each name means one thing.

``--socket`` (aliases ``-s``, ``--address``) is the agent's address; ``--timeout TIME`` the wait
for each reply; ``--thaw-after TIME`` when the agent thaws by itself; ``--mount PATH`` a mount
point.  Old spellings (snapshot's ``--mountpoint`` and ``--freeze-timeout``, freeze's
``--timeout`` after the verb) still work, hidden from ``--help``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
from typing import Any

from pyqga.host_client.cli_values import ADDRESS_FORMS, parse_time
from pyqga.host_client.client import DEFAULT_TIMEOUT


def package_version() -> str:
    try:
        return importlib.metadata.version("pyqga")
    except importlib.metadata.PackageNotFoundError:  # a checkout that was never installed
        from pyqga.agent.config import VERSION

        return VERSION


def add_connection_options(parser: argparse.ArgumentParser, default: Any, *, timeout: bool = True) -> None:
    """Options accepted before and after the command word (``pyqga ping --json`` works too)."""
    parser.add_argument("--socket", "-s", "--address", dest="socket", metavar="ADDRESS", default=default,
                        help=f"the agent's channel: {ADDRESS_FORMS}. Default: $PYQGA_ADDRESS, "
                             "else $QGA_CLIENT_ADDRESS; this option beats both")
    parser.add_argument("--dialect", choices=("jsonrpc", "qga"), default=default,
                        help="wire dialect; 'qga' also talks to QEMU's qemu-ga (default jsonrpc)")
    if timeout:
        parser.add_argument("--timeout", type=parse_time, metavar="TIME", default=default,
                            help=f"give up on a reply after TIME (default {DEFAULT_TIMEOUT:g}s)")
    parser.add_argument("--json", action="store_true", default=default,
                        help="print the raw result as JSON")


def add_mount_option(parser: argparse.ArgumentParser, help: str) -> None:
    """``--mount PATH`` (repeatable); ``--mountpoint``, snapshot's old spelling, still works."""
    parser.add_argument("--mount", action="append", metavar="PATH", help=help)
    parser.add_argument("--mountpoint", action="append", dest="mount", help=argparse.SUPPRESS)


def add_thaw_after_option(parser: argparse.ArgumentParser, old: str, *, default: float | None,
                         help: str) -> None:
    """``--thaw-after TIME``; ``old`` (snapshot's --freeze-timeout, freeze's --timeout) still works."""
    parser.add_argument("--thaw-after", dest="thaw_after", type=parse_time, metavar="TIME",
                        default=default, help=help)
    parser.add_argument(old, dest="thaw_after", type=parse_time, help=argparse.SUPPRESS)
