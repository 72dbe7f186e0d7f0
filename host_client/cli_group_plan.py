"""``pyqga fault plan FILE --guest NAME=ADDRESS ... [--wait]``: a plan across guests
(:mod:`pyqga.host_client.group_plan`).

Prints the plan as one JSON line (the whole schedule, each guest's part with its clock offset
and its uncertainty, the start skew); with ``--wait``, then every guest's events of the plan,
merged in order on this host's clock, one JSON line each, until every part has ended.  Ctrl-C
reverts every part.  Exit status: 0, 1 a guest refused its part (the others' were reverted),
2 a bad plan or option, 3 a guest unreachable, 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from pyqga.host_client.cli_faults import json_line, read_plan
from pyqga.host_client.cli_group import interruptible
from pyqga.host_client.cli_output import Output
from pyqga.host_client.cli_values import check_address

if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

EXIT_OK, EXIT_REFUSED, EXIT_USAGE = 0, 1, 2
REVERT_SAID = ("every guest's part of the plan was reverted",
               "{left} guest(s) did not confirm the revert; each part ends by its own deadline")


def parse_guests(specs: Sequence[str]) -> dict[str, str]:
    """``NAME=ADDRESS`` options, by name; ValueError saying which is wrong."""
    from pyqga.host_client.group_plan import GUEST_NAME

    guests: dict[str, str] = {}
    for spec in specs:
        name, sep, address = spec.partition("=")
        if not sep or not GUEST_NAME.fullmatch(name):
            raise ValueError(f"--guest {spec!r}: expected NAME=ADDRESS, NAME of letters, digits, "
                             "'.', '_', '-'")
        if name in guests:
            raise ValueError(f"--guest {spec!r}: guest {name} given twice")
        problem = check_address(address)
        if problem is not None:
            raise ValueError(f"--guest {spec!r}: {problem}")
        guests[name] = address
    return guests


def run(args: argparse.Namespace, out: Output) -> int:
    # Here, not at the top: asyncio and the async client load only for this command.
    import asyncio

    from pyqga.host_client.group_plan import GroupPlanFailed

    try:
        seed, steps, repeat = read_plan(args)
        guests = parse_guests(args.guest)
        return asyncio.run(interruptible(follow(args, guests, seed, steps, repeat), REVERT_SAID))
    except ValueError as exc:
        print(f"pyqga: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except GroupPlanFailed as exc:
        print(f"pyqga: error: {exc}", file=sys.stderr)
        return EXIT_REFUSED


async def follow(args: argparse.Namespace, guests: dict[str, str], seed: int, steps: list[Any],
                 repeat: int) -> int:
    import asyncio

    from pyqga.host_client.group_plan import start_group_plan

    plan = await start_group_plan(guests, seed, steps, repeat, dialect=args.dialect, timeout=args.timeout)
    try:
        json_line(plan.as_dict())
        if args.wait:
            try:
                async for event in plan.follow():
                    json_line(event.as_dict())
            except asyncio.CancelledError:
                await plan.revert()
                raise
    finally:
        await plan.close()
    return EXIT_OK
