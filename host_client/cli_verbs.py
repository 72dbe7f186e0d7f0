"""``pyqga`` verbs as qemu's ``qemu-ga-client`` has them, and a few more.

qemu-ga-client's ``cat``, ``fsfreeze status|freeze|thaw``, ``fstrim``, ``ifconfig``, ``powerdown``,
``reboot``, ``halt`` and ``suspend`` (its ``info`` and ``ping`` are in :mod:`pyqga.host_client.cli`),
with similar human output, plus ``freeze``, ``thaw``, ``fsinfo``, ``vcpus``, ``users`` and
``osinfo``.  Every verb takes ``--json`` for the agent's raw result.  Errors are raised to
:func:`pyqga.host_client.cli.main`, which maps them to its exit codes (1 agent error, 3 unreachable,
4 freeze lost).
"""

from __future__ import annotations

import argparse
import base64
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from pyqga.host_client.cli_interrupt import Interrupted, thaw_on_interrupt
from pyqga.host_client.cli_options import add_connection_options, add_mount_option, add_thaw_after_option
from pyqga.host_client.cli_output import Output
from pyqga.host_client.cli_values import TIME_HELP, non_negative_int, parse_time
from pyqga.host_client.client import AgentClient
from pyqga.host_client.errors import AgentTimeout
from pyqga.host_client.guest_ops import ExecResult
from pyqga.host_client.session import Freeze

EXIT_OK, EXIT_USAGE = 0, 2

SHUTDOWN_VERBS = ("powerdown", "reboot", "halt")
SUSPEND_MODES = ("disk", "ram", "hybrid")
VERBS = ("cat", "fsfreeze", "freeze", "thaw", "exec", "fsinfo", "fstrim", "ifconfig", "vcpus", "users",
         "osinfo", "suspend", *SHUTDOWN_VERBS)

Note = Callable[[AgentClient, str], None]


def add_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser],
                common: argparse.ArgumentParser, default: str) -> None:
    """Add the verbs to ``commands``; ``common`` holds the connection options."""

    def verb(name: str, summary: str, description: str,
             parents: list[argparse.ArgumentParser] | None = None) -> argparse.ArgumentParser:
        return commands.add_parser(name, parents=[common] if parents is None else parents,
                                   help=summary, description=f"{summary[0].upper()}{summary[1:]}. "
                                                             f"{description}")

    cat = verb("cat", "print a file of the guest",
               "Reads FILE through guest-file-open/read/close and writes its bytes unchanged to "
               "standard output (qemu-ga-client's cat). --json gives the path, the size and the "
               "content in base64.")
    cat.add_argument("path", metavar="FILE", help="absolute path of the file in the guest")

    fsfreeze = verb("fsfreeze", "qemu-ga-client's fsfreeze: status, freeze (all) or thaw (all)",
                    "'status' prints thawed or frozen (guest-fsfreeze-status); 'freeze' freezes "
                    "every filesystem the agent may freeze (guest-fsfreeze-freeze, with pyqga's "
                    "default auto-thaw deadline) and prints how many; 'thaw' thaws everything "
                    "(guest-fsfreeze-thaw). To freeze chosen mount points, or set the auto-thaw "
                    "deadline, use 'pyqga freeze'.")
    fsfreeze.add_argument("action", choices=("status", "freeze", "thaw"), help="status, freeze or thaw")

    # After 'freeze', --timeout is the old spelling of --thaw-after; the per-call one goes before
    # the verb: pyqga --timeout 30 freeze --thaw-after 60.
    freeze_common = argparse.ArgumentParser(add_help=False)
    add_connection_options(freeze_common, default, timeout=False)
    freeze = verb("freeze", "freeze the guest's filesystems and leave them frozen",
                  "Freezes the given mount points (guest-fsfreeze-freeze-list), or every filesystem "
                  "the agent may freeze without --mount, and prints the count and, where the agent "
                  "has epochs (pyqga), the epoch to give 'pyqga thaw --epoch' and when the agent "
                  "will thaw by itself. qemu-ga has no auto-thaw: the guest then stays frozen until "
                  "'pyqga thaw', and a note on standard error says so. Ctrl-C during the freeze "
                  "thaws. The per-call timeout goes before the verb: pyqga --timeout 30 freeze "
                  f"--thaw-after 60s. {TIME_HELP}.",
                  parents=[freeze_common])
    add_mount_option(freeze, "mount point to freeze (repeatable; default: all the agent may freeze)")
    add_thaw_after_option(freeze, "--timeout", default=None,
                         help="the agent thaws by itself after TIME (pyqga only; default: the "
                              "agent's --freeze-timeout)")

    thaw = verb("thaw", "thaw the guest's filesystems",
                "Thaws everything frozen (guest-fsfreeze-thaw) and prints how many filesystems "
                "were thawed. With --epoch (the number 'pyqga freeze' printed; pyqga agents only) "
                "it also checks that this freeze held until now: if it had ended before (the "
                "agent's auto-thaw, the agent died, someone else thawed), the exit status is 4 "
                "and a snapshot taken meanwhile may be inconsistent.")
    thaw.add_argument("--epoch", type=non_negative_int, metavar="N",
                      help="the freeze's epoch, to check it held")

    run_exec = verb("exec", "run a program in the guest and exit with its status",
                    "Runs PROGRAM with its ARGs in the guest (guest-exec), waits for it, writes its "
                    "standard output to stdout and its standard error to stderr, and exits with "
                    "its exit status (128+N if signal N ended it). Options go before PROGRAM; put "
                    "'--' before a PROGRAM that starts with '-'. Exit status 1 with a message if "
                    "the agent could not start it, 3 if the agent is unreachable. Ctrl-C stops "
                    f"waiting; the program may still run in the guest. {TIME_HELP}.")
    run_exec.add_argument("--kill-after", type=parse_time, metavar="TIME",
                          help="the agent kills the program after TIME (exit status 137)")
    run_exec.add_argument("--env", action="append", metavar="NAME=VALUE", default=None,
                          help="the program's environment (repeatable; default: the agent's)")
    run_exec.add_argument("--stdin", action="store_true",
                          help="send this command's standard input to the program")
    run_exec.add_argument("argv", nargs=argparse.REMAINDER, metavar="PROGRAM [ARG ...]",
                          help="the program and its arguments")

    verb("fsinfo", "list the guest's filesystems",
         "One line per mounted filesystem from guest-get-fsinfo: mount point, type, device, "
         "used and total bytes where known, and the disks under it.")
    fstrim = verb("fstrim", "discard unused blocks on the guest's filesystems",
                  "guest-fstrim: trims every filesystem the agent may touch (pyqga's "
                  "--freeze-include/--freeze-exclude apply) and prints, per path, the bytes "
                  "trimmed or the error.")
    fstrim.add_argument("minimum", nargs="?", type=non_negative_int, default=None, metavar="MINIMUM",
                        help="only free ranges at least this many bytes long (default: all)")
    verb("ifconfig", "the guest's network interfaces and addresses",
         "guest-network-get-interfaces, printed as qemu-ga-client does: per interface its IPv4 "
         "addresses with netmask, IPv6 addresses with prefix length, and MAC address.")
    verb("vcpus", "the guest's virtual CPUs",
         "guest-get-vcpus: per logical CPU whether it is online and whether it can be offlined.")
    verb("users", "users logged in to the guest",
         "guest-get-users: user name, domain (Windows guests) and login time.")
    verb("osinfo", "the guest's operating system",
         "guest-get-osinfo: kernel release and version, machine, and the OS name, version and id.")
    suspend = verb("suspend", "suspend the guest to disk, RAM or both",
                   "Sends guest-suspend-disk, -ram or -hybrid. The agent answers only on error: "
                   "no reply within the timeout is taken as success (as qemu-ga-client does).")
    suspend.add_argument("mode", choices=SUSPEND_MODES, help="disk, ram or hybrid")
    for name, what in (("powerdown", "power the guest off"), ("reboot", "reboot the guest"),
                       ("halt", "halt the guest")):
        verb(name, what,
             f"Sends guest-shutdown with mode {name}. The agent answers only on error: no reply "
             "within the timeout (--timeout before or after the verb, default 10 s) is taken as "
             "success (as qemu-ga-client does).")


def run(client: AgentClient, args: argparse.Namespace, out: Output, note: Note) -> int:
    verb = args.command
    if verb == "cat":
        return run_cat(client, args.path, out)
    if verb == "fsfreeze":
        return run_fsfreeze(client, args.action, out, note)
    if verb == "freeze":
        return run_freeze(client, args.mount, args.thaw_after, out, note)
    if verb == "thaw":
        return run_thaw(client, args.epoch, out)
    if verb == "exec":
        return run_exec(client, args, out)
    if verb == "suspend":
        return run_no_reply(client, f"guest-suspend-{args.mode}", None, out)
    if verb in SHUTDOWN_VERBS:
        return run_no_reply(client, "guest-shutdown", {"mode": verb}, out)
    method, arguments, formatter = QUERIES[verb](args)
    result = client.call(method, arguments)
    out.show(result, lambda: formatter(result))
    return EXIT_OK


# --- files, freezing -----------------------------------------------------------------------------

def run_cat(client: AgentClient, path: str, out: Output) -> int:
    data = client.read_file(path)
    if out.as_json:
        out.show({"path": path, "size": len(data), "buf-b64": base64.b64encode(data).decode()}, "")
    else:  # the bytes as they are, not text
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    return EXIT_OK


def run_fsfreeze(client: AgentClient, action: str, out: Output, note: Note) -> int:
    if action == "status":
        status = client.call("guest-fsfreeze-status")
        out.show(status, str(status))
        return EXIT_OK
    if action == "freeze":
        return run_freeze(client, None, None, out, note)
    return run_thaw(client, None, out)


def run_freeze(client: AgentClient, mounts: list[str] | None, thaw_after: float | None, out: Output,
               note: Note) -> int:
    note(client, "leaves the guest frozen until 'pyqga thaw'")
    if thaw_after is not None and not client.capabilities().auto_thaw:
        # "--timeout": tests and scripts match this text; it is --thaw-after's old spelling.
        print(f"pyqga: note: --timeout {thaw_after:g} ignored (--thaw-after): the agent cannot thaw "
              "by itself", file=sys.stderr)
    # The session's freeze thaws again if the outcome is unknown (no reply, lost connection);
    # Ctrl-C thaws too.
    what = ", ".join(mounts) if mounts else "all filesystems"
    with thaw_on_interrupt(client), out.progress.running(f"freezing {what}"):
        freeze = client.freeze(mounts, thaw_after)
    out.show({"count": freeze.count, "epoch": freeze.epoch, "auto-thaw": freeze.auto_thaw,
              "info": freeze.info}, lambda: format_freeze(freeze))
    return EXIT_OK


def format_freeze(freeze: Freeze) -> str:
    lines = [f"{freeze.count} filesystems frozen"]
    if freeze.epoch is not None:
        line = f"epoch {freeze.epoch}: thaw with 'pyqga thaw --epoch {freeze.epoch}'"
        deadline = freeze.info.get("deadline")
        if isinstance(deadline, int | float):
            left = max(0.0, deadline - time.time())
            line += (f"; the agent thaws by itself at {time.strftime('%H:%M:%S', time.localtime(deadline))}"
                     f" (in {left:.0f} s)")
        lines.append(line)
    return "\n".join(lines)


def run_thaw(client: AgentClient, epoch: int | None, out: Output) -> int:
    if epoch is not None and not client.capabilities().auto_thaw:
        print(f"pyqga: error: the agent at {client.address} has no freeze epochs (qemu-ga); "
              "thaw without --epoch", file=sys.stderr)
        return EXIT_USAGE
    with thaw_on_interrupt(client), out.progress.running("thawing"):
        count = client.thaw(epoch)  # FreezeLost (exit 4) if that freeze did not hold
    held = f" (freeze {epoch} held until now)" if epoch is not None else ""
    out.show(count, f"{count} filesystems thawed{held}")
    return EXIT_OK


def check_exec(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Usage errors of ``exec`` before connecting: the program, and ``--env`` into a dict."""
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not argv:
        parser.error("exec needs a PROGRAM to run (pyqga exec [OPTIONS] [--] PROGRAM [ARG ...])")
    args.argv = argv
    if args.env is not None:
        env: dict[str, str] = {}
        for item in args.env:
            name, sep, value = item.partition("=")
            if not sep or not name:
                parser.error(f"argument --env: expected NAME=VALUE, not {item!r}")
            env[name] = value
        args.env = env


def run_exec(client: AgentClient, args: argparse.Namespace, out: Output) -> int:
    """``args`` as :func:`check_exec` left them."""
    data = sys.stdin.buffer.read() if args.stdin else None
    try:
        with out.progress.running(f"running {args.argv[0]} in the guest"):
            result = client.exec(args.argv, kill_after=args.kill_after, input=data, env=args.env)
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted; {args.argv[0]} may still run in the guest") from None
    return show_exec(result, out)


def show_exec(result: ExecResult, out: Output) -> int:
    """The program's output where it belongs, and its status as ours (128+N for signal N)."""
    status = result.exitcode if result.exitcode is not None else 0
    if result.signal:
        status = 128 + result.signal
    if out.as_json:
        out.show({"exitcode": result.exitcode, "signal": result.signal,
                  "out-data": base64.b64encode(result.stdout).decode(),
                  "err-data": base64.b64encode(result.stderr).decode(),
                  "out-truncated": result.stdout_truncated,
                  "err-truncated": result.stderr_truncated}, "")
    else:
        sys.stdout.buffer.write(result.stdout)
        sys.stdout.buffer.flush()
        sys.stderr.buffer.write(result.stderr)
        sys.stderr.buffer.flush()
    for name, cut in (("stdout", result.stdout_truncated), ("stderr", result.stderr_truncated)):
        if cut:
            print(f"pyqga: note: the agent truncated the program's {name}", file=sys.stderr)
    if result.signal:
        print(f"pyqga: the program was ended by signal {result.signal}", file=sys.stderr)
    return min(status, 255)


def run_no_reply(client: AgentClient, method: str, arguments: dict[str, Any] | None,
                 out: Output) -> int:
    """A command that answers only on error (shutdown, suspend): silence means it went ahead."""
    try:
        client.call(method, arguments)
    except AgentTimeout:
        out.show({"method": method, "arguments": arguments, "reply": None},
                 f"{method}{'' if not arguments else ' ' + arguments['mode']}: sent; no reply within "
                 f"{client.timeout:g} s, as on success")
        return EXIT_OK
    # An agent that answers success anyway (pyqga in the JSON-RPC dialect may): still success.
    out.show({"method": method, "arguments": arguments, "reply": {}}, f"{method}: done")
    return EXIT_OK


# --- queries -------------------------------------------------------------------------------------

def format_fsinfo(result: list[dict[str, Any]]) -> str:
    rows = [("MOUNTPOINT", "TYPE", "NAME", "USED", "TOTAL", "DISKS")]
    for fs in result:
        disks = ", ".join(_disk_name(d) for d in fs.get("disk", []))
        rows.append((fs.get("mountpoint", "?"), fs.get("type", "?"), fs.get("name", "?"),
                     _size(fs.get("used-bytes")), _size(fs.get("total-bytes")), disks or "-"))
    return table(rows)


def _disk_name(disk: dict[str, Any]) -> str:
    return str(disk.get("dev") or disk.get("serial") or disk.get("bus-type", "?"))


def _size(value: Any) -> str:
    if not isinstance(value, int):
        return "-"
    size: float = value
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size}{unit}" if unit == "B" else f"{size:.1f}{unit}"
        size /= 1024
    return str(size)


def format_fstrim(result: dict[str, Any]) -> str:
    lines = []
    for entry in result.get("paths", []):
        if "error" in entry:
            lines.append(f"{entry.get('path')}: error: {entry['error']}")
        else:
            lines.append(f"{entry.get('path')}: {entry.get('trimmed', 0)} bytes trimmed")
    return "\n".join(lines) or "no filesystem trimmed"


def ipv4_netmask(prefix: int) -> str:
    mask = (0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF
    return ".".join(str((mask >> shift) & 0xFF) for shift in (24, 16, 8, 0))


def format_ifconfig(result: list[dict[str, Any]]) -> str:
    """qemu-ga-client's layout: ``name:``, then ``inet A  netmask M``, ``inet6 A  prefixlen P``,
    ``ether MAC`` lines, tab-indented."""
    lines = []
    for nif in result:
        lines.append(f"{nif.get('name')}:")
        for address in nif.get("ip-addresses", []):
            if address.get("ip-address-type") == "ipv4":
                netmask = ipv4_netmask(int(address["prefix"]))
                lines.append(f"\tinet {address['ip-address']}  netmask {netmask}")
            elif address.get("ip-address-type") == "ipv6":
                lines.append(f"\tinet6 {address['ip-address']}  prefixlen {address['prefix']}")
        mac = nif.get("hardware-address")
        if mac and mac != "00:00:00:00:00:00":
            lines.append(f"\tether {mac}")
    return "\n".join(lines)


def format_vcpus(result: list[dict[str, Any]]) -> str:
    rows = [("CPU", "ONLINE", "CAN-OFFLINE")]
    for cpu in result:
        can = cpu.get("can-offline")
        rows.append((str(cpu.get("logical-id")), "yes" if cpu.get("online") else "no",
                     "-" if can is None else ("yes" if can else "no")))
    online = sum(1 for cpu in result if cpu.get("online"))
    return table(rows) + f"\n{online} of {len(result)} online"


def format_users(result: list[dict[str, Any]]) -> str:
    if not result:
        return "no users logged in"
    rows = [("USER", "DOMAIN", "LOGIN-TIME")]
    for user in result:
        login = user.get("login-time")
        when = "-"
        if isinstance(login, int | float):
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(login))
        rows.append((str(user.get("user")), str(user.get("domain", "-")), when))
    return table(rows)


OSINFO_KEYS = ("name", "pretty-name", "version", "version-id", "id", "variant", "variant-id",
               "kernel-release", "kernel-version", "machine")


def format_osinfo(result: dict[str, Any]) -> str:
    keys = [k for k in OSINFO_KEYS if k in result] + sorted(k for k in result if k not in OSINFO_KEYS)
    width = max((len(k) for k in keys), default=0)
    return "\n".join(f"{k + ':':<{width + 1}} {result[k]}" for k in keys)


def table(rows: Sequence[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
                     for row in rows)


Query = Callable[[argparse.Namespace], tuple[str, dict[str, Any] | None, Callable[[Any], str]]]
QUERIES: dict[str, Query] = {
    "fsinfo": lambda a: ("guest-get-fsinfo", None, format_fsinfo),
    "fstrim": lambda a: ("guest-fstrim", None if a.minimum is None else {"minimum": a.minimum},
                         format_fstrim),
    "ifconfig": lambda a: ("guest-network-get-interfaces", None, format_ifconfig),
    "vcpus": lambda a: ("guest-get-vcpus", None, format_vcpus),
    "users": lambda a: ("guest-get-users", None, format_users),
    "osinfo": lambda a: ("guest-get-osinfo", None, format_osinfo),
}
