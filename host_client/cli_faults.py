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
import textwrap
import time
from typing import Any

from pyqga.host_client.cli_interrupt import on_interrupt
from pyqga.host_client.cli_output import Output, Status, open_qmp, print_json
from pyqga.host_client.cli_values import TIME_HELP, non_negative_int, parse_time
from pyqga.host_client.cli_verbs import table
from pyqga.host_client.client import AgentClient
from pyqga.host_client.errors import AgentClientError
from pyqga.host_client.faults import FOLLOW_INTERVAL, KINDS, ActiveFault, Fault, FaultCapabilities

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3

VERBS = ("list", "revert", "events", "capabilities", "plan", "power-cut", "report")

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
    "process-pause": "the processes of --target (pid:N, name:NAME, cgroup:PATH, unit:NAME) stopped, "
                     "continued on revert",
    "process-kill": "a signal to the processes of --target (--param signal=TERM; default KILL)",
    "clock-step": "the wall clock (--target clock) stepped by --param offset=SECONDS; true time back "
                  "on revert",
    "clock-skew": "the wall clock (--target clock) running fast or slow (--param ppm=N); true time "
                  "back on revert",
    "clock-strobe": "the wall clock (--target clock) jumping back and forth (--param offset=SECONDS, "
                    "interval=SECONDS)",
    "net-partition": "traffic to and from --param peers/ports dropped (nftables); the agent's channel "
                     "is not touched",
    "net-delay": "packets on the interface --target delayed (--param delay-ms, jitter-ms)",
    "net-loss": "packets on the interface --target lost (--param percent)",
    "net-duplicate": "packets on the interface --target duplicated (--param percent)",
    "net-reorder": "packets on the interface --target reordered (--param percent)",
    "net-corrupt": "packets on the interface --target corrupted (--param percent)",
    "cpu-hog": "busy threads taking a share of the CPUs (--param threads, percent)",
    "memory-pressure": "memory locked away from the application (--param mib)",
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
    plan = faults.add_parser(
        "plan", parents=[common], help="run a seeded schedule of faults in the guest",
        description="Send the plan in FILE (JSON: a list of steps, or {\"seed\", \"steps\", \"repeat\"}; "
                    "'-' reads standard input) to the agent (guest-fault-plan), which runs it on its own "
                    "clock, and print the plan as one JSON line: id, hash, deadline, faults and the drawn "
                    "schedule. The same seed gives the same schedule and hash. With --wait, print the "
                    "plan's events as JSON lines until it ends; Ctrl-C reverts it (and its faults). "
                    "Steps: docs/faults.md, 'Seeded plans'.")
    plan.add_argument("file", metavar="FILE", help="the plan, JSON")
    plan.add_argument("--seed", type=int, metavar="N", help="the seed (overrides the file's)")
    plan.add_argument("--repeat", type=non_negative_int, metavar="N", help="run the steps N times")
    plan.add_argument("--wait", action="store_true", help="print its events until it ends")
    plan.add_argument("--guest", action="append", default=[], metavar="NAME=ADDRESS",
                      help="a plan across guests: a guest its steps name (\"guest\": NAME), at ADDRESS "
                           "(any form --socket takes, libvirt: included); repeatable. The host draws the "
                           "schedule and sends each guest its part at once; the first line adds each "
                           "guest's part and clock offset and the start skew, and --wait prints the "
                           "merged events of every guest, in order, each with its guest and t (seconds "
                           "from the plan's start on this host's clock). If a guest refuses its part, "
                           "the others' are reverted. docs/faults.md, 'Plans across guests'")
    cut = faults.add_parser(
        "power-cut", parents=[common], help="lose the disk's recent writes, then reset the VM (QMP)",
        description="Start drop-writes on --target through the agent (writes are acknowledged and lost "
                    "from then on), wait --after TIME, then reset the VM through QEMU's QMP monitor "
                    "(system_reset), as a power cut would: the guest reboots with what the disk held at "
                    "the cut, and the application's recovery can be checked. Prints the lease and the "
                    "reset time as one JSON line. If the reset fails, the fault is reverted. The target "
                    "must be on a device-mapper device (docs/faults.md, 'A dm layer'). A QEMU started "
                    "with -no-reboot quits instead of rebooting.")
    cut.add_argument("--qmp", required=True, metavar="PATH", help="QEMU's QMP monitor socket")
    cut.add_argument("--target", required=True, metavar="PATH", help="the guest's mount point or device")
    report = faults.add_parser(
        "report", help="draw a fault timeline as an HTML page (no agent needed)",
        description=textwrap.fill(
                    "Read fault events (EVENTS: the JSON lines 'pyqga fault events' prints, its --json "
                    "document, or the agent's fault-events.jsonl; '-' reads standard input) and write one "
                    "self-contained HTML page with an SVG timeline: one lane per fault target, a bar per "
                    "fault from when it took effect to its end, labelled with its kind and how it ended "
                    "(reverted, expired, and why), a color per kind, refusals marked in red, every event "
                    "in a table below. The time axis is seconds from the first event on the guest's "
                    "monotonic clock (a clock fault does not bend it); a reboot (a new boot id) is placed "
                    "by the guest's wall clock and drawn as a dashed line. --metrics adds application "
                    "metrics underneath on the same axis. Nothing is sent to the agent.", 78),
        epilog="example:\n"
               "  pyqga fault events > events.jsonl\n"
               "  pyqga fault report events.jsonl --metrics latency.jsonl -o faults.html",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    report.add_argument("events", metavar="EVENTS", help="the events, JSON lines ('-': standard input)")
    report.add_argument("--metrics", metavar="FILE",
                        help="application metrics, JSON lines {\"time\": UNIX_SECONDS, \"value\": NUMBER} "
                             "with an optional \"name\" (one line per name), e.g. each request's latency; "
                             "placed by Unix time against the guest's wall clock at the first event")
    report.add_argument("-o", "--output", metavar="OUT",
                        help="the HTML file to write (default: standard output, unless it is a terminal)")
    report.add_argument("--title", default="pyqga fault timeline", help="the page's title")
    cut.add_argument("--after", type=parse_time, default=0.0, metavar="TIME",
                     help="how long writes are lost before the reset (default 0)")


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
    elif verb == "plan":
        return run_plan(client, args, out)
    elif verb == "power-cut":
        return run_power_cut(client, args)
    elif verb == "report":
        return run_report(args)
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


def read_plan(args: argparse.Namespace) -> tuple[int, list[Any], int]:
    """(seed, steps, repeat) from FILE and the options; ValueError saying what is wrong."""
    try:
        text = sys.stdin.read() if args.file == "-" else open(args.file, encoding="utf-8").read()  # noqa: SIM115
        value = json.loads(text)
    except OSError as exc:
        raise ValueError(f"cannot read the plan {args.file}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ValueError(f"the plan {args.file} is not JSON: {exc}") from None
    plan = {"steps": value} if isinstance(value, list) else value
    if not isinstance(plan, dict) or not isinstance(plan.get("steps"), list):
        raise ValueError(f"the plan {args.file} is neither a list of steps nor an object with steps")
    seed = args.seed if args.seed is not None else plan.get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError("a plan needs a seed (an integer): --seed N, or \"seed\" in the file")
    repeat = args.repeat if args.repeat is not None else plan.get("repeat", 1)
    return seed, plan["steps"], repeat


def run_plan(client: AgentClient, args: argparse.Namespace, out: Output) -> int:
    try:
        seed, steps, repeat = read_plan(args)
    except ValueError as exc:
        print(f"pyqga: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if any(isinstance(step, dict) and "guest" in step for step in steps):
        print("pyqga: error: the plan's steps name guests: give each as --guest NAME=ADDRESS "
              "(docs/faults.md, 'Plans across guests')", file=sys.stderr)
        return EXIT_USAGE
    _, since = client.faults.events(0)
    with out.progress.running("starting the plan"):
        plan = client.faults.plan(seed, steps, repeat)
    out.progress.clear()
    json_line(plan.as_dict())
    if not args.wait:
        return EXIT_OK

    def cancel() -> str:
        client.session.needs_resync = not client.session.synchronised
        try:
            client.faults.revert(plan.id)
        except AgentClientError as exc:
            return f"interrupted; could not revert plan {plan.id} ({exc}); it ends by itself"
        return f"interrupted; plan {plan.id} reverted with its faults"

    with on_interrupt(cancel):
        for event in client.faults.follow(since):
            if event.id == plan.id or event.plan == plan.id:
                json_line(event.as_dict())
            if event.id == plan.id and event.ends_lease:
                break
    return EXIT_OK


def run_report(args: argparse.Namespace) -> int:
    """``pyqga fault report``: no agent; errors in the inputs are one line and status 2."""
    from pyqga.host_client.fault_report import read_events, read_metrics, render

    def read(path: str) -> str:
        try:
            if path == "-":
                return sys.stdin.read()
            with open(path, encoding="utf-8") as file:
                return file.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None

    if args.output is None and sys.stdout.isatty():
        print("pyqga: error: give -o OUT.html (or redirect standard output): the report is an HTML page",
              file=sys.stderr)
        return EXIT_USAGE
    try:
        events = read_events(read(args.events), args.events)
        samples = read_metrics(read(args.metrics), args.metrics) if args.metrics else []
    except ValueError as exc:
        print(f"pyqga: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    text = render(events, samples, args.title, "standard input" if args.events == "-" else args.events)
    if args.output is None:
        sys.stdout.write(text)
        return EXIT_OK
    try:
        with open(args.output, "w", encoding="utf-8") as out:
            out.write(text)
    except OSError as exc:
        print(f"pyqga: error: cannot write {args.output}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_REFUSED
    print(f"pyqga: wrote {args.output} ({len(events)} events)", file=sys.stderr)
    return EXIT_OK


def run_power_cut(client: AgentClient, args: argparse.Namespace) -> int:
    from pyqga.host_client.power_cut import power_cut
    from pyqga.host_client.qmp import QMPError, describe

    qmp = open_qmp(args.qmp, args.timeout)
    if qmp is None:
        return EXIT_UNREACHABLE
    with qmp:
        try:
            lease, at = power_cut(client, qmp, args.target, args.after)
        except QMPError as exc:
            print(f"pyqga: error: the reset failed, drop-writes reverted: {describe(exc)}", file=sys.stderr)
            return EXIT_REFUSED
    json_line({"fault": lease.as_dict(), "reset": round(at, 6)})
    return EXIT_OK


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
