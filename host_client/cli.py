"""``pyqga``: drive a guest agent (pyqga or qemu-ga) from the host.

Output is for humans by default and JSON with ``--json``, on stdout; progress goes to stderr,
only on a terminal (:mod:`pyqga.host_client.cli_output`).  Exit codes: 0 success, 1 the agent
answered with an error, 2 bad usage, 3 the agent could not be reached or did not answer, 4 a
freeze did not hold until its thaw (a snapshot taken meanwhile may be inconsistent), 130
interrupted (:mod:`pyqga.host_client.cli_interrupt`); ``exec`` exits with the program's status.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
import textwrap
import time
from typing import Any

from pyqga.host_client import (
    cli_completion,
    cli_faults,
    cli_group,
    cli_group_plan,
    cli_interrupt,
    cli_output,
    cli_verbs,
)
from pyqga.host_client.cli_interrupt import EXIT_INTERRUPTED, Interrupted, thaw_on_interrupt
from pyqga.host_client.cli_options import (
    add_connection_options,
    add_mount_option,
    add_thaw_after_option,
    package_version,
)
from pyqga.host_client.cli_output import Output, open_qmp
from pyqga.host_client.cli_values import (
    TIME_HELP,
    agent_address,
    check_address,
    parse_time,
    positive_int,
    time_or_zero,
)
from pyqga.host_client.client import DEFAULT_TIMEOUT, AgentClient
from pyqga.host_client.errors import AgentCallError, AgentClientError, FreezeLost
from pyqga.host_client.guest_ops import StallResult
from pyqga.host_client.session import GuestInfo
from pyqga.host_client.snapshot import DEFAULT_FREEZE_TIMEOUT, format_report, take_snapshot

EXIT_OK, EXIT_AGENT_ERROR, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_FREEZE_LOST = 0, 1, 2, 3, 4


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyqga",
        description="Talk to a guest agent (pyqga or QEMU's qemu-ga) from the host.",
        epilog=(
            "Examples:\n"
            "  pyqga --socket /run/vm1/qga.sock ping\n"
            "  pyqga --socket /run/vm1/qga.sock --dialect qga info\n"
            "  PYQGA_ADDRESS=/run/vm1/qga.sock pyqga osinfo\n"
            "  pyqga -s S call guest-sync '{\"id\": 42}'\n"
            "  pyqga -s S exec -- uname -a\n"
            "  pyqga -s S freeze --mount /data --thaw-after 2m\n"
            "  pyqga -s qga.sock snapshot --qmp qmp.sock --disk data=/vm/data-snap1.qcow2 --thaw-after 30s\n"
            "  pyqga -s qga.sock fault stall --mount /data --duration 5s --repeat 3 --interval 10s\n"
            "  pyqga -s qga.sock fault disk-full --target /data --for 30s --param free-bytes=0 --wait\n"
            "  pyqga group snapshot --guest /run/vm1/qga.sock --guest /run/vm2/qga.sock --deadline 30s\n"
            "  source <(pyqga completion bash)\n"
            "The agent's address: --socket (alias --address), else $PYQGA_ADDRESS, else\n"
            "$QGA_CLIENT_ADDRESS (qemu-ga-client's variable).\n"
            f"{TIME_HELP}; the same names mean the same everywhere: --timeout, the wait for each\n"
            "reply; --thaw-after, when the agent thaws by itself; --mount, a mount point.\n"
            "Results go to stdout; notes and errors to stderr, and progress too when it is a terminal.\n"
            "Exit status: 0 ok, 1 the agent returned an error, 2 usage, 3 agent unreachable or silent,\n"
            "4 a freeze did not hold until the thaw, 130 interrupted (Ctrl-C: a frozen guest is thawed\n"
            "first); exec exits with the program's status."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    add_connection_options(parser, argparse.SUPPRESS)
    parser.set_defaults(socket=None, dialect="jsonrpc", timeout=DEFAULT_TIMEOUT, json=False)
    common = argparse.ArgumentParser(add_help=False)
    add_connection_options(common, argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("ping", parents=[common], help="check that the agent answers, and how fast")
    commands.add_parser("info", parents=[common], help="agent version and its commands")
    commands.add_parser("sync", parents=[common], help="resynchronise the channel (guest-sync-delimited)")
    call = commands.add_parser("call", parents=[common], help="run any command: call METHOD [JSON-ARGUMENTS]")
    snap = commands.add_parser(
        "snapshot", parents=[common],
        help="freeze the guest, take an external disk snapshot through QEMU's QMP monitor, thaw",
        description="Freeze the guest's filesystems through the agent, switch each disk to a new "
                    "qcow2 overlay with QMP blockdev-snapshot-sync (one transaction for several "
                    "disks), thaw, and report the timings. The old top image of each disk is the "
                    "snapshot. Exit status 4 if the freeze did not hold (snapshot may be inconsistent).")
    fault = commands.add_parser(
        "fault", parents=[common], help="inject faults: fault KIND --target PATH --for TIME, list, revert...",
        description=textwrap.fill(
            "Inject a fault into the guest for a while (fault KIND), see and end the faults active "
            "now (list, revert), read the agent's fault timeline (events) or draw it as an HTML "
            "page (report), and ask which kinds this "
            f"guest can do (capabilities). {cli_faults.LEASE_TEXT} 'fault stall' is a repeated "
            "write-stall of mount points. 'pyqga fault KIND --help' says more. Exit status: 0 ok, "
            "1 the agent refused, 2 usage, 3 agent unreachable, 130 interrupted.", 78),
        epilog="Examples:\n"
               "  pyqga fault capabilities --target /data\n"
               "  pyqga fault disk-full --target /data --for 30s --param free-bytes=0\n"
               "  pyqga fault write-stall --target /data --for 5s --wait\n"
               "  pyqga fault list\n"
               "  pyqga fault revert f1\n"
               "  pyqga fault events --since 12 --follow\n"
               "  pyqga fault report events.jsonl --metrics latency.jsonl -o faults.html",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    faults = fault.add_subparsers(dest="fault", required=True, metavar="FAULT")
    stall = faults.add_parser(
        "stall", parents=[common], help="freeze mount points for a while, as a stalled disk would",
        description="Freeze the given mount points for DURATION, so every writer there blocks, "
                    "then thaw; optionally repeated. The agent's own auto-thaw ends each stall on "
                    "time even if this command dies; Ctrl-C thaws at once. Ends with each stall as "
                    f"the agent measured it. {TIME_HELP}.")
    stall.add_argument("--mount", action="append", required=True, metavar="PATH",
                       help="mount point to stall (repeatable)")
    stall.add_argument("--duration", required=True, type=parse_time, metavar="TIME",
                       help="how long each stall lasts")
    stall.add_argument("--repeat", type=positive_int, default=1, metavar="N",
                       help="number of stalls (default 1)")
    stall.add_argument("--interval", type=time_or_zero, default=0.0, metavar="TIME",
                       help="time from one stall's start to the next one's (default: back to back)")
    snap.add_argument("--qmp", required=True, metavar="PATH", help="QEMU's QMP monitor socket")
    snap.add_argument("--disk", action="append", required=True, metavar="DEVICE=OVERLAY",
                      help="block device id and the new overlay file to create (repeatable)")
    add_mount_option(snap, "freeze only this mount point (repeatable; default: all)")
    snap.add_argument("--no-freeze", action="store_true",
                      help="skip the freeze: a crash-consistent snapshot, for comparison")
    add_thaw_after_option(snap, "--freeze-timeout", default=DEFAULT_FREEZE_TIMEOUT,
                         help="the agent thaws by itself after TIME, whatever happens here "
                              f"(default {DEFAULT_FREEZE_TIMEOUT:g}s)")
    cli_faults.add_parsers(faults, common)
    cli_group.add_parser(commands, common, parse_time)
    cli_verbs.add_parsers(commands, common, argparse.SUPPRESS)
    call.add_argument("method", help="command name, e.g. guest-get-osinfo")
    call.add_argument("arguments", nargs="?", default=None,
                      help="arguments as a JSON object, e.g. '{\"id\": 1}'")
    completion = commands.add_parser(
        "completion", help="print a shell completion script: source <(pyqga completion bash)",
        description="Print a bash completion script for pyqga (zsh: after 'autoload -U "
                    "bashcompinit && bashcompinit'). Install it with 'pyqga completion bash > "
                    "/etc/bash_completion.d/pyqga', or load it now with 'source <(pyqga completion bash)'.")
    completion.add_argument("shell", choices=("bash",), help="the shell (bash)")
    return parser


def run_ping(client: AgentClient, out: Output) -> None:
    start = time.perf_counter()
    client.ping()
    elapsed = time.perf_counter() - start
    out.show({"ok": True, "seconds": round(elapsed, 6)},
             f"{client.address}: agent answered in {elapsed * 1000:.2f} ms")


def format_info(info: GuestInfo) -> str:
    commands = info.get("supported_commands", [])
    enabled = sum(1 for c in commands if c.get("enabled"))
    lines = [f"agent version {info.get('version')}: {len(commands)} commands, {enabled} enabled"]
    width = max((len(c.get("name", "")) for c in commands), default=0)
    for command in commands:
        state = "enabled" if command.get("enabled") else "disabled"
        reply = "" if command.get("success-response", True) else "  (no reply on success)"
        lines.append(f"  {command.get('name', '?'):<{width}}  {state}{reply}")
    return "\n".join(lines)


def run_info(client: AgentClient, out: Output) -> None:
    info = client.info()
    out.show(info, lambda: format_info(info))


def run_sync(client: AgentClient, out: Output) -> None:
    start = time.perf_counter()
    sync_id = client.sync()
    elapsed = time.perf_counter() - start
    out.show({"id": sync_id, "seconds": round(elapsed, 6)},
             f"{client.address}: in sync (id {sync_id}, {elapsed * 1000:.2f} ms)")


FREEZE_METHODS = ("guest-fsfreeze-freeze", "guest-fsfreeze-freeze-list")


def run_call(client: AgentClient, method: str, arguments: dict[str, Any] | None, out: Output) -> None:
    if method in FREEZE_METHODS:  # Ctrl-C while a raw freeze is in flight thaws, as 'freeze' does
        with thaw_on_interrupt(client), out.progress.running(method):
            result = client.call(method, arguments)
    else:
        result = client.call(method, arguments)
    # A scalar reads fine as it is; anything structured is shown as JSON either way.
    Output(out.as_json or not isinstance(result, str | int | float)).show(result, lambda: str(result))


def note_without_auto_thaw(client: AgentClient, what: str) -> None:
    """Say plainly, before freezing, when nothing but this process will thaw the guest."""
    capabilities = client.capabilities()
    if not capabilities.auto_thaw:
        print(f"pyqga: note: the agent at {client.address} ({capabilities.version or 'unknown version'}) "
              f"has no auto-thaw; this command {what}, and if it dies meanwhile the guest stays frozen "
              "until someone thaws it", file=sys.stderr)


def run_stall(client: AgentClient, args: argparse.Namespace, out: Output) -> int:
    note_without_auto_thaw(client, "thaws each stall itself when its time is up")
    results: list[StallResult] = []
    first_start = time.monotonic()
    with thaw_on_interrupt(client):
        for index in range(args.repeat):
            label = f"stall {index + 1}/{args.repeat}: {', '.join(args.mount)}"
            with out.progress.running(f"{label}: freezing") as status:

                def show(elapsed: float, status: cli_output.Status = status, label: str = label) -> None:
                    status.label = f"{label}: frozen {elapsed:5.1f} / {args.duration:g} s"
                    status.timed = False

                result = client.stall_for(args.mount, args.duration, progress=show)
            results.append(result)
            if args.repeat > 1 and not args.json:  # a long schedule reports each stall as it ends
                out.show(None, f"{label}: {format_stall(result)}")
            if index + 1 < args.repeat:
                next_start = first_start + (index + 1) * args.interval
                with out.progress.running(f"stall {index + 2}/{args.repeat} starts in"):
                    time.sleep(max(0.0, next_start - time.monotonic()))
    out.show([dataclasses.asdict(r) for r in results], lambda: format_stalls(results))
    return EXIT_OK


def format_stall(r: StallResult) -> str:
    actual = "unknown" if r.actual is None else f"{r.actual:.3f} s"
    return (f"{r.count} filesystem(s) frozen {actual} (planned {r.planned:g} s), "
            f"ended by {r.reason or '-'}")


def format_stalls(results: list[StallResult]) -> str:
    lines = [f"{'#':>3}  {'frozen':>6}  {'planned':>8}  {'actual':>8}  {'ended by':<10}  mount points"]
    for number, r in enumerate(results, start=1):
        actual = "-" if r.actual is None else f"{r.actual:.3f}s"
        lines.append(f"{number:>3}  {r.count:>6}  {r.planned:>7.3f}s  {actual:>8}  {r.reason or '-':<10}  "
                     f"{', '.join(r.mountpoints)}")
    return "\n".join(lines)


def run_snapshot(parser: argparse.ArgumentParser, args: argparse.Namespace, out: Output) -> int:
    overlays: dict[str, str] = {}
    for spec in args.disk:
        device, sep, overlay = spec.partition("=")
        if not sep or not device or not overlay:
            parser.error(f"--disk takes DEVICE=OVERLAY (e.g. data=/vm/data-snap1.qcow2), not {spec!r}")
        overlays[device] = os.path.abspath(overlay)
    from pyqga.host_client.qmp import QMPError, describe

    qmp = open_qmp(args.qmp, args.timeout)
    if qmp is None:
        return EXIT_UNREACHABLE
    with qmp:
        try:
            if args.no_freeze:
                report = take_snapshot(qmp, overlays)
            else:
                with AgentClient(args.socket, dialect=args.dialect, timeout=args.timeout) as agent:
                    note_without_auto_thaw(agent, "thaws the guest after the snapshot")
                    with thaw_on_interrupt(agent), out.progress.running("snapshot: freeze, snapshot, thaw"):
                        report = take_snapshot(qmp, overlays, agent, mountpoints=args.mount,
                                               thaw_after=args.thaw_after)
        except (QMPError, ValueError) as exc:
            print(f"pyqga: error: snapshot failed: {describe(exc)}", file=sys.stderr)
            return EXIT_AGENT_ERROR
        except TimeoutError as exc:  # QEMU did not answer; AgentTimeout is not a TimeoutError
            print(f"pyqga: error: snapshot failed: {exc}", file=sys.stderr)
            return EXIT_UNREACHABLE
    out.show(report.as_dict(), lambda: format_report(report))
    return EXIT_OK


def parse_arguments(parser: argparse.ArgumentParser, text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        parser.error(f"arguments are not valid JSON ({exc.msg} at column {exc.colno}): {text}")
    if not isinstance(value, dict):
        parser.error(f"arguments must be a JSON object such as '{{\"id\": 1}}', not {text}")
    return value


def main(argv: list[str] | None = None) -> int:
    """Run one command; the exit status.  Ctrl-C ends every command with one line and 130."""
    try:
        previous = signal.getsignal(signal.SIGINT)
        cli_interrupt.install()
    except ValueError:  # not the main thread (an embedding caller): leave signals alone
        previous = None
    out = Output(False)
    try:
        return run(argv, out)
    except Interrupted as exc:
        out.progress.clear()
        print(f"pyqga: {exc}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        out.progress.clear()
        print("pyqga: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def run(argv: list[str] | None, out: Output) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "completion":
        sys.stdout.write(cli_completion.bash_script(parser))
        return EXIT_OK
    report = args.command == "fault" and args.fault == "report"   # draws a file, talks to no agent
    group_plan = args.command == "fault" and args.fault == "plan" and bool(args.guest)
    needs_agent = not ((args.command == "snapshot" and args.no_freeze) or args.command == "group" or report
                       or group_plan)
    if needs_agent:
        args.socket = resolve_address(parser, args.socket)
    arguments = parse_arguments(parser, args.arguments) if args.command == "call" else None
    if args.command == "exec":
        cli_verbs.check_exec(parser, args)
    if args.command == "fault":
        cli_faults.check(parser, args)
    out = Output(bool(args.json), out.progress)
    try:
        if args.command == "snapshot":
            return run_snapshot(parser, args, out)
        if args.command == "group":
            return cli_group.run(args, out)
        if report:
            return cli_faults.run_report(args)
        if group_plan:
            return cli_group_plan.run(args, out)
        with AgentClient(args.socket, dialect=args.dialect, timeout=args.timeout) as client:
            if args.command == "ping":
                run_ping(client, out)
            elif args.command == "info":
                run_info(client, out)
            elif args.command == "sync":
                run_sync(client, out)
            elif args.command == "fault" and args.fault == "stall":
                return run_stall(client, args, out)
            elif args.command == "fault":
                return cli_faults.run(client, args, out)
            elif args.command in cli_verbs.VERBS:
                return cli_verbs.run(client, args, out, note_without_auto_thaw)
            else:
                run_call(client, args.method, arguments, out)
    except FreezeLost as exc:
        out.progress.clear()
        print(f"pyqga: error: the freeze did not hold, the snapshot may be inconsistent: {exc}",
              file=sys.stderr)
        return EXIT_FREEZE_LOST
    except AgentCallError as exc:
        out.progress.clear()
        print(f"pyqga: error: {exc}", file=sys.stderr)
        return EXIT_AGENT_ERROR
    except AgentClientError as exc:
        out.progress.clear()
        print(f"pyqga: error: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    return EXIT_OK


def resolve_address(parser: argparse.ArgumentParser, option: str | None) -> str:
    """The agent's address by its precedence (:func:`cli_values.agent_address`), checked."""
    found = agent_address(option)
    if found is None:
        parser.error("no agent address: give --socket ADDRESS (or --address), "
                     "or set PYQGA_ADDRESS or QGA_CLIENT_ADDRESS")
    address, source = found
    problem = check_address(address)
    if problem is not None:
        parser.error(f"{source}: {problem}" if source != "--socket" else f"argument --socket: {problem}")
    return address


if __name__ == "__main__":
    sys.exit(main())
