"""``pyqga fault KIND|list|revert|events|capabilities``: fault leases from the command line.

``pyqga fault KIND --target PATH --for TIME`` starts a lease and prints it as one JSON line, for
a script to read its id; with ``--wait`` it stays until the lease ends (then prints the event
that ended it, as a second line), and Ctrl-C reverts it.  ``events`` prints the agent's
timeline as JSON lines.  ``list``, ``revert`` and ``capabilities`` print text, or with
``--json`` the agent's reply.  ``fault stall`` (a repeated write-stall, older than leases) is
:func:`pyqga.host_client.cli.run_stall`.  Errors reach :func:`pyqga.host_client.cli.run`,
which prints one line and maps them to its exit statuses.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from pyqga.host_client.cli_interrupt import on_interrupt
from pyqga.host_client.cli_output import Output, Status, print_json
from pyqga.host_client.cli_values import TIME_HELP, non_negative_int, parse_time
from pyqga.host_client.cli_verbs import table
from pyqga.host_client.client import AgentClient
from pyqga.host_client.errors import AgentClientError
from pyqga.host_client.faults import FOLLOW_INTERVAL, KINDS, ActiveFault, Fault, FaultCapabilities

EXIT_OK = 0

VERBS = ("list", "revert", "events", "capabilities")

# What the application in the guest sees (issue 20's table); the agent documents the parameters.
SEES = {
    "write-stall": "writes to the filesystem block (a freeze); reads go on",
    "io-stall": "every I/O to the device waits, reads too",
    "io-error": "EIO on reads and/or writes to the whole device, in up/down intervals",
    "io-delay": "added read, write and flush latency",
    "corrupt": "corrupted bytes on reads or writes",
    "drop-writes": "writes acknowledged but lost: the building block of a power cut",
    "bad-extents": "EIO on exactly one file's blocks (--param path=FILE)",
    "disk-full": "the filesystem full until N bytes remain (--param free-bytes=N); released on revert",
}

LEASE_TEXT = ("Each fault is a lease: the agent, or its keeper if the agent hangs or dies, ends it "
              "at its deadline whatever becomes of this command. The agent must run with "
              "--enable-faults (or faults=true in its config); otherwise every fault command "
              "fails with an error that says so.")


def add_parsers(faults: argparse._SubParsersAction[argparse.ArgumentParser],
                common: argparse.ArgumentParser) -> None:
    """The fault kinds and verbs, under ``pyqga fault``; ``common`` holds the connection options."""
    for kind in KINDS:
        sees = SEES.get(kind, "see 'pyqga fault capabilities'")
        inject = faults.add_parser(
            kind, parents=[common], help=sees,
            description=f"Inject {kind} (the application sees: {sees}) on --target for --for TIME "
                        "(guest-fault-inject), and print the lease as one JSON line: id, kind, target, "
                        "deadline (Unix time), duration, params. With --wait, stay until it ends, print "
                        "the event that ended it as a second line, and revert it on Ctrl-C (exit status "
                        f"130). {LEASE_TEXT} {TIME_HELP}.")
        inject.add_argument("--target", required=True, metavar="PATH",
                            help="the guest's mount point or device to inject into")
        inject.add_argument("--for", dest="duration", required=True, type=parse_time, metavar="TIME",
                            help="how long the fault lasts (at most 7d)")
        inject.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                            help="a parameter of the kind (repeatable; 'pyqga fault capabilities' lists "
                                 "them). VALUE is read as JSON where it is JSON (1048576, true), else "
                                 "taken as a string; write name='\"123\"' for a string of digits")
        inject.add_argument("--seed", type=int, metavar="N",
                            help="seed for whatever the kind picks at random")
        inject.add_argument("--force", action="store_true",
                            help="inject what the agent refuses by default (a stall of the disk that "
                                 "holds its own files); the keeper still ends it")
        inject.add_argument("--wait", action="store_true",
                            help="wait until the fault ends; Ctrl-C reverts it")

    faults.add_parser("list", parents=[common], help="the faults active now",
                      description="One line per active fault lease (guest-fault-list): id, kind, target, "
                                  "state (arming, active, reverting), seconds left and parameters. "
                                  f"--json for the agent's reply. {LEASE_TEXT}")
    revert = faults.add_parser(
        "revert", parents=[common], help="end one fault now, or all of them",
        description="End the fault with this ID (an error if it is not active), or every active fault "
                    "without one (guest-fault-revert), and print how many ended. Reverting restores "
                    "exactly what the fault changed.")
    revert.add_argument("id", nargs="?", metavar="ID", help="the lease's id, as 'fault list' shows (f1...)")
    events = faults.add_parser(
        "events", parents=[common], help="the agent's fault timeline, as JSON lines",
        description="Print the agent's fault events (guest-fault-events) after cursor --since, one JSON "
                    "object per line: event (armed, fired, reverted, expired, refused, revert-failed), "
                    "id, kind, target, mono, wall, boot-id, and reason or detail. The cursor for the next "
                    "call goes to standard error; --json prints the reply ({events, cursor}) as one "
                    "document instead. --follow keeps printing new events until Ctrl-C.")
    events.add_argument("--since", type=non_negative_int, default=0, metavar="N",
                        help="only events after cursor N (default: all the agent keeps)")
    events.add_argument("--follow", action="store_true", help="keep printing events as they come")
    events.add_argument("--interval", type=parse_time, default=FOLLOW_INTERVAL, metavar="TIME",
                        help=f"with --follow, how often to ask (default {FOLLOW_INTERVAL:g}s)")
    capabilities = faults.add_parser(
        "capabilities", parents=[common], help="the fault kinds this guest can do, and why not",
        description="Every fault kind the agent knows (guest-fault-capabilities): whether it is "
                    "available, on --target if given, the reason where it is not (no dm-mod, the "
                    "target not on a device-mapper device, a kernel target missing), and its "
                    "parameters with their types, defaults and meaning.")
    capabilities.add_argument("--target", metavar="PATH", help="a mount point or device to ask about")


def check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Usage errors before connecting: ``--param`` into ``args.params``."""
    if args.fault not in KINDS:
        return
    params: dict[str, Any] = {}
    for item in args.param:
        name, sep, text = item.partition("=")
        if not sep or not name:
            parser.error(f"argument --param: expected NAME=VALUE, not {item!r}")
        if name in params:
            parser.error(f"argument --param: {name} given twice")
        params[name] = param_value(text)
    args.params = params


def param_value(text: str) -> Any:
    """JSON where ``text`` is JSON (a number, true, a quoted string), else ``text`` itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def run(client: AgentClient, args: argparse.Namespace, out: Output) -> int:
    verb = args.fault
    if verb in KINDS:
        return run_inject(client, args, out)
    if verb == "list":
        faults = client.faults.list()
        out.show([f.as_dict() for f in faults], lambda: format_list(faults))
    elif verb == "revert":
        count = client.faults.revert(args.id)
        out.show(count, f"{count} fault{'' if count == 1 else 's'} reverted")
    elif verb == "events":
        run_events(client, args, out)
    else:
        caps = client.faults.capabilities(args.target)
        out.show(caps.as_dict(), lambda: format_capabilities(caps))
    return EXIT_OK


def json_line(value: Any) -> None:
    print(json.dumps(value, sort_keys=True), flush=True)


def run_inject(client: AgentClient, args: argparse.Namespace, out: Output) -> int:
    """``args`` as :func:`check` left them."""
    def unknown() -> str:
        return ("interrupted; the fault may have started: 'pyqga fault list' shows it, and it ends by "
                f"itself within {args.duration:g} s")

    with on_interrupt(unknown), out.progress.running(f"injecting {args.fault} on {args.target}"):
        fault = client.faults.inject(args.fault, args.target, args.duration, args.params, args.force,
                                     args.seed)
    out.progress.clear()
    json_line(fault.as_dict())
    if not args.wait:
        return EXIT_OK
    with on_interrupt(lambda: revert_after_interrupt(client, fault)), \
            out.progress.running(f"{fault.describe()}") as status:
        ended = fault.wait(progress=lambda entry: show_left(status, fault, entry))
    out.progress.clear()
    if ended is not None:
        json_line(ended.as_dict())
    else:
        print(f"pyqga: note: {fault.describe()} ended; the agent's timeline no longer says how",
              file=sys.stderr)
    return EXIT_OK


def show_left(status: Status, fault: Fault, entry: ActiveFault) -> None:
    status.label = f"{fault.describe()}: {entry.state}, {entry.remaining:.1f} s left"
    status.timed = False


def revert_after_interrupt(client: AgentClient, fault: Fault) -> str:
    # The interrupted call may have left half an exchange on the channel: resync first.
    client.session.needs_resync = not client.session.synchronised
    try:
        ended = fault.revert()
    except AgentClientError as exc:
        by = time.strftime("%H:%M:%S", time.localtime(fault.deadline))
        return f"interrupted; could not revert {fault.describe()} ({exc}); the agent ends it by {by}"
    return f"interrupted; {fault.describe()} {'reverted' if ended else 'had already ended'}"


def run_events(client: AgentClient, args: argparse.Namespace, out: Output) -> None:
    if args.follow:
        for event in client.faults.follow(args.since, args.interval):
            json_line(event.as_dict())
        return
    events, cursor = client.faults.events(args.since)
    if out.as_json:
        print_json({"events": [e.as_dict() for e in events], "cursor": cursor})
        return
    for event in events:
        json_line(event.as_dict())
    print(f"pyqga: cursor {cursor} (next: pyqga fault events --since {cursor})", file=sys.stderr)


def format_list(faults: list[ActiveFault]) -> str:
    if not faults:
        return "no active faults"
    rows = [("ID", "KIND", "TARGET", "STATE", "LEFT", "PARAMS")]
    for f in faults:
        params = json.dumps(dict(f.params), sort_keys=True) if f.params else "-"
        plan = f" (plan {f.plan})" if f.plan else ""
        rows.append((f.id, f.kind, f.target, f.state, f"{f.remaining:.1f}s", params + plan))
    return table(rows)


def format_capabilities(caps: FaultCapabilities) -> str:
    lines = [f"boot id {caps.boot_id}: {len(caps.available)} of {len(caps.kinds)} kinds available"]
    width = max((len(k.kind) for k in caps.kinds), default=0)
    for kind in caps.kinds:
        state = "available" if kind.available else f"unavailable: {kind.reason or 'no reason given'}"
        lines.append(f"  {kind.kind:<{width}}  {state}")
        for param in kind.params:
            default = f", default {json.dumps(param.default)}" if param.has_default else ""
            lines.append(f"  {'':<{width}}    --param {param.name}=... ({param.type}{default}): {param.doc}")
    return "\n".join(lines)
