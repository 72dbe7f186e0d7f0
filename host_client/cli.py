"""``pyqga``: drive a guest agent (pyqga or qemu-ga) from the host.

Output is for humans by default and JSON with ``--json``.  Exit codes: 0 success, 1 the agent
answered with an error, 2 bad usage, 3 the agent could not be reached or did not answer, 4 a
freeze did not hold until its thaw (a snapshot taken meanwhile may be inconsistent).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from typing import Any

from pyqga.host_client import cli_group, cli_verbs
from pyqga.host_client.cli_output import Output
from pyqga.host_client.client import DEFAULT_TIMEOUT, AgentClient
from pyqga.host_client.errors import AgentCallError, AgentClientError, FreezeLost
from pyqga.host_client.guest_ops import StallResult
from pyqga.host_client.session import GuestInfo
from pyqga.host_client.snapshot import format_report, take_snapshot

EXIT_OK, EXIT_AGENT_ERROR, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_FREEZE_LOST = 0, 1, 2, 3, 4


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyqga",
        description="Talk to a guest agent (pyqga or QEMU's qemu-ga) from the host.",
        epilog=(
            "Examples:\n"
            "  pyqga --socket /run/vm1/qga.sock ping\n"
            "  pyqga --socket /run/vm1/qga.sock --dialect qga info\n"
            "  pyqga --socket S call guest-sync '{\"id\": 42}'\n"
            "  pyqga -s qga.sock snapshot --qmp qmp.sock --disk data=/vm/data-snap1.qcow2\n"
            "  pyqga -s qga.sock fault stall --mount /data --duration 5s --repeat 3 --interval 10s\n"
            "  pyqga group snapshot --guest /run/vm1/qga.sock --guest /run/vm2/qga.sock --deadline 30s\n"
            "Exit status: 0 ok, 1 the agent returned an error, 2 usage, 3 agent unreachable or silent,\n"
            "4 a freeze did not hold until the thaw."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_connection_options(parser, argparse.SUPPRESS)
    parser.set_defaults(dialect="jsonrpc", timeout=DEFAULT_TIMEOUT, json=False)
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
    fault = commands.add_parser("fault", parents=[common], help="inject faults: fault stall ...")
    faults = fault.add_subparsers(dest="fault", required=True, metavar="FAULT")
    stall = faults.add_parser(
        "stall", parents=[common], help="freeze mount points for a while, as a stalled disk would",
        description="Freeze the given mount points for DURATION, so every writer there blocks, "
                    "then thaw; optionally repeated. The agent's own auto-thaw ends each stall on "
                    "time even if this command dies. Ends with each stall as the agent measured it.")
    stall.add_argument("--mount", action="append", required=True, metavar="PATH",
                       help="mount point to stall (repeatable)")
    stall.add_argument("--duration", required=True, type=parse_duration, metavar="TIME",
                       help="how long each stall lasts: 5s, 500ms, 2m or plain seconds")
    stall.add_argument("--repeat", type=int, default=1, metavar="N", help="number of stalls (default 1)")
    stall.add_argument("--interval", type=parse_duration, default=0.0, metavar="TIME",
                       help="time from one stall's start to the next one's (default: back to back)")
    snap.add_argument("--qmp", required=True, metavar="PATH", help="QEMU's QMP monitor socket")
    snap.add_argument("--disk", action="append", required=True, metavar="DEVICE=OVERLAY",
                      help="block device id and the new overlay file to create (repeatable)")
    snap.add_argument("--mountpoint", action="append", metavar="PATH",
                      help="freeze only these mount points (repeatable; default: all)")
    snap.add_argument("--no-freeze", action="store_true",
                      help="skip the freeze: a crash-consistent snapshot, for comparison")
    snap.add_argument("--freeze-timeout", type=float, default=60.0, metavar="SECONDS",
                      help="the agent thaws by itself after this long, whatever happens here (default 60)")
    cli_group.add_parser(commands, common, parse_duration)
    cli_verbs.add_parsers(commands, common, argparse.SUPPRESS)
    call.add_argument("method", help="command name, e.g. guest-get-osinfo")
    call.add_argument("arguments", nargs="?", default=None,
                      help="arguments as a JSON object, e.g. '{\"id\": 1}'")
    return parser


def add_connection_options(parser: argparse.ArgumentParser, default: Any) -> None:
    """Options accepted before and after the command word (``pyqga ping --json`` works too)."""
    parser.add_argument("--socket", "-s", metavar="ADDRESS", default=default,
                        help="the agent's channel: a unix socket path, unix:PATH, vsock:CID:PORT, "
                             "tcp:HOST:PORT, serial:DEVICE[?baud=N] or a pyserial URL")
    parser.add_argument("--dialect", choices=("jsonrpc", "qga"), default=default,
                        help="wire dialect; 'qga' also talks to QEMU's qemu-ga (default jsonrpc)")
    parser.add_argument("--timeout", type=float, metavar="SECONDS", default=default,
                        help=f"give up on a reply after this long (default {DEFAULT_TIMEOUT:g})")
    parser.add_argument("--json", action="store_true", default=default,
                        help="print the raw result as JSON")


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


def run_call(client: AgentClient, method: str, arguments: dict[str, Any] | None, out: Output) -> None:
    result = client.call(method, arguments)
    # A scalar reads fine as it is; anything structured is shown as JSON either way.
    Output(out.as_json or not isinstance(result, str | int | float)).show(result, lambda: str(result))


def parse_duration(text: str) -> float:
    """``5s``, ``500ms``, ``2m``, ``1h`` or plain seconds."""
    units = (("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0))
    value = text.strip().lower()
    for suffix, scale in units:
        if value.endswith(suffix) and value[: -len(suffix)].replace(".", "", 1).isdigit():
            return float(value[: -len(suffix)]) * scale
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (try 5s, 500ms, 2m)") from None


def note_without_auto_thaw(client: AgentClient, what: str) -> None:
    """Say plainly, before freezing, when nothing but this process will thaw the guest."""
    capabilities = client.capabilities()
    if not capabilities.auto_thaw:
        print(f"pyqga: note: the agent at {client.address} ({capabilities.version or 'unknown version'}) "
              f"has no auto-thaw; this command {what}, and if it dies meanwhile the guest stays frozen "
              "until someone thaws it", file=sys.stderr)


def run_stall(client: AgentClient, args: argparse.Namespace, out: Output) -> int:
    if args.duration <= 0 or args.repeat < 1:
        print("pyqga: error: --duration must be positive and --repeat at least 1", file=sys.stderr)
        return EXIT_USAGE
    note_without_auto_thaw(client, "thaws each stall itself when its time is up")
    live = sys.stdout.isatty() and not args.json
    results: list[StallResult] = []
    first_start = time.monotonic()
    for index in range(args.repeat):
        label = f"stall {index + 1}/{args.repeat}: {', '.join(args.mount)}"

        def show(elapsed: float, label: str = label) -> None:
            if live:
                print(f"\r{label} frozen {elapsed:5.1f} / {args.duration:g} s", end="", flush=True)

        if not live and not args.json:
            print(f"{label}: freezing for {args.duration:g} s", flush=True)
        result = client.stall_for(args.mount, args.duration, progress=show)
        results.append(result)
        if live:
            print(f"\r{label} done{' ' * 30}")
        if index + 1 < args.repeat:
            next_start = first_start + (index + 1) * args.interval
            time.sleep(max(0.0, next_start - time.monotonic()))
    out.show([dataclasses.asdict(r) for r in results], lambda: format_stalls(results))
    return EXIT_OK


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
    # Imported here: qemu.qmp brings asyncio, which no other command needs (~50 ms at start).
    from pyqga.host_client.qmp import QMPConnection, QMPError, describe

    try:
        qmp = QMPConnection(args.qmp, timeout=args.timeout)
    except (QMPError, OSError) as exc:
        print(f"pyqga: error: cannot talk to QMP at {args.qmp}: {describe(exc)}", file=sys.stderr)
        return EXIT_UNREACHABLE
    with qmp:
        try:
            if args.no_freeze:
                report = take_snapshot(qmp, overlays)
            else:
                with AgentClient(args.socket, dialect=args.dialect, timeout=args.timeout) as agent:
                    note_without_auto_thaw(agent, "thaws the guest after the snapshot")
                    report = take_snapshot(qmp, overlays, agent, mountpoints=args.mountpoint,
                                           freeze_timeout=args.freeze_timeout)
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
    parser = build_parser()
    args = parser.parse_args(argv)
    needs_agent = not (args.command == "snapshot" and args.no_freeze) and args.command != "group"
    if getattr(args, "socket", None) is None and needs_agent:
        parser.error("--socket ADDRESS is required (the agent's unix socket)")
    arguments = parse_arguments(parser, args.arguments) if args.command == "call" else None
    out = Output(bool(args.json))
    try:
        if args.command == "snapshot":
            return run_snapshot(parser, args, out)
        if args.command == "group":
            return cli_group.run(args, out)
        with AgentClient(args.socket, dialect=args.dialect, timeout=args.timeout) as client:
            if args.command == "ping":
                run_ping(client, out)
            elif args.command == "info":
                run_info(client, out)
            elif args.command == "sync":
                run_sync(client, out)
            elif args.command == "fault":
                return run_stall(client, args, out)
            elif args.command in cli_verbs.VERBS:
                return cli_verbs.run(client, args, out, note_without_auto_thaw)
            else:
                run_call(client, args.method, arguments, out)
    except FreezeLost as exc:
        print(f"pyqga: error: the freeze did not hold, the snapshot may be inconsistent: {exc}",
              file=sys.stderr)
        return EXIT_FREEZE_LOST
    except AgentCallError as exc:
        print(f"pyqga: error: {exc}", file=sys.stderr)
        return EXIT_AGENT_ERROR
    except AgentClientError as exc:
        print(f"pyqga: error: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
