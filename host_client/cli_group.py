"""``pyqga group snapshot``: a consistency group across guests (see :mod:`pyqga.host_client.group`)."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from pyqga.host_client.cli_interrupt import Interrupted
from pyqga.host_client.cli_output import Output
from pyqga.host_client.cli_values import check_address

T = TypeVar("T")

EXIT_OK, EXIT_AGENT_ERROR, EXIT_USAGE, EXIT_FREEZE_LOST = 0, 1, 2, 4


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser,
               parse_time: Callable[[str], float]) -> None:
    group = commands.add_parser("group", parents=[common], help="consistency groups: group snapshot ...")
    actions = group.add_subparsers(dest="group_action", required=True, metavar="ACTION")
    snap = actions.add_parser(
        "snapshot", parents=[common],
        help="freeze several guests at once, snapshot them all, thaw; say if the group was consistent",
        description="Freeze every --guest concurrently (each agent's auto-thaw set to the deadline "
                    "where it has one), all or nothing: if one cannot be frozen before --deadline, "
                    "every guest is thawed and the command fails naming it. Then each guest's disks "
                    "are switched to new overlays through its QMP monitor, everything is thawed "
                    "(checking each freeze held where the agent has epochs), and a report gives per "
                    "guest the freeze, snapshot, thaw and frozen times and for the group the overlap "
                    "window. Exit status: 0 consistent, 1 a guest could not be frozen (all thawed), "
                    "4 frozen but not consistent (a freeze did not hold, a snapshot failed), 130 "
                    "interrupted (Ctrl-C thaws every guest first).",
        epilog="GUEST is ADDRESS[,mount=PATH]...[,qmp=SOCKET,disk=DEVICE=OVERLAY...], e.g.\n"
               "  --guest /run/vm1/qga.sock,qmp=/run/vm1/qmp.sock,disk=data=/vm/vm1-snap.qcow2\n"
               "ADDRESS takes every form --socket does; mount= is --mount's name here.\n"
               "TIME is 500ms, 30s, 2m, 1h, 1d or plain seconds.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    snap.add_argument("--guest", action="append", required=True, metavar="GUEST",
                      help="a member of the group (repeatable)")
    snap.add_argument("--deadline", type=parse_time, default=30.0, metavar="TIME",
                      help="the whole group frozen within this, and the agents' auto-thaw (default 30s)")


def run(args: argparse.Namespace, out: Output) -> int:
    # Here, not at the top: asyncio and the async client load only for this command.
    from pyqga.host_client.group import GroupFailed, format_report, group_snapshot, parse_member

    try:  # the qga dialect: every member may be qemu-ga
        members = [parse_member(spec, "qga", args.timeout) for spec in args.guest]
    except ValueError as exc:
        print(f"pyqga: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    for spec, member in zip(args.guest, members, strict=True):
        problem = check_address(member.address)
        if problem is not None:
            print(f"pyqga: error: --guest {spec!r}: {problem}", file=sys.stderr)
            return EXIT_USAGE
    try:
        with out.progress.running(f"group of {len(members)}: freeze, snapshot, thaw"):
            report = asyncio.run(interruptible(group_snapshot(members, args.deadline,
                                                              call_timeout=args.timeout)))
    except GroupFailed as failed:
        partial = failed.report
        out.show(partial.as_dict(), lambda: format_report(partial))
        print(f"pyqga: error: {failed}", file=sys.stderr)
        return EXIT_AGENT_ERROR
    out.show(report.as_dict(), lambda: format_report(report))
    return EXIT_OK if report.consistent else EXIT_FREEZE_LOST


THAW_SAID = ("every guest of the group was thawed",
             "{left} guest(s) did not confirm the thaw in time "
             "(an agent with auto-thaw still thaws by itself)")


async def interruptible(work: Coroutine[Any, Any, T], said: tuple[str, str] = THAW_SAID) -> T:
    """Run ``work``; the first Ctrl-C cancels it (each member's ``frozen()`` thaws on the way
    out) and raises :class:`Interrupted` once that is done; later ones are ignored.  ``said``:
    what the message says when every guest confirmed, and when ``{left}`` of them did not."""
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(work)
    interrupted = False

    def on_sigint() -> None:
        nonlocal interrupted
        if not interrupted:
            interrupted = True
            task.cancel()

    previous = signal.getsignal(signal.SIGINT)
    loop.add_signal_handler(signal.SIGINT, on_sigint)
    try:
        return await task
    except asyncio.CancelledError:
        if not interrupted:
            raise
        left = [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()]
        if left:
            raise Interrupted("interrupted; " + said[1].format(left=len(left))) from None
        raise Interrupted(f"interrupted; {said[0]}") from None
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        signal.signal(signal.SIGINT, previous)
