"""The agent's configuration: qemu-ga's command line and INI file, plus our own options.

A qemu-ga setup must work unchanged, so the file is found, read and merged as qemu-ga does it
(``qga/main.c``, checked against Debian's qemu-ga 7.2): ``-c FILE``, else ``$QGA_CONF``, else the
default; the file is a GKeyFile (:mod:`pyqga.agent.keyfile`) whose ``[general]`` group holds
qemu-ga's keys (``daemon``, ``block-rpcs`` split on ``,``, its old name ``blacklist``...) beside
pyqga's own; then the command line wins, except ``-b``/``-a``, which add to the file's lists as in
qemu-ga.  Every value remembers the file and line it came from, for the error that rejects it.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import NamedTuple

from pyqga.agent import keyfile
from pyqga.agent.errors import AgentFailure
from pyqga.agent.freeze.machine import MAX_TIMEOUT

VERSION = "0.1.0"
DEFAULT_CONFIG = "/etc/pyqga/pyqga.conf"
DEFAULT_HOOK = "/etc/pyqga/fsfreeze-hook"
DEFAULT_STATEDIR = "/run/pyqga"
DEFAULT_EXEC_OUTPUT_LIMIT = 16 << 20  # qemu-ga's GUEST_EXEC_MAX_OUTPUT, per stream
METHODS = ("virtio-serial", "isa-serial", "unix-listen", "vsock-listen")
DEFAULT_PATHS = {
    "virtio-serial": "/dev/virtio-ports/org.qemu.guest_agent.0",
    "isa-serial": "/dev/ttyS1",
    "unix-listen": "/run/pyqga/pyqga.sock",
    "vsock-listen": "-1:1024",
}


class ConfigError(AgentFailure):
    """A configuration problem the user must fix; the message says which option and why."""


class Config(NamedTuple):
    """The agent's settings, fixed for its life (a NamedTuple: cheap to define at every start)."""

    method: str = "virtio-serial"
    path: str | None = None
    logfile: str | None = None
    pidfile: str | None = None
    statedir: str = DEFAULT_STATEDIR
    verbose: bool = False
    daemonize: bool = False
    retry_path: bool = False
    block_rpcs: tuple[str, ...] = ()
    allow_rpcs: tuple[str, ...] = ()
    fsfreeze_hook: str | None = None
    fsfreeze_hook_timeout: float = 60.0
    freeze_include: tuple[str, ...] = ()
    freeze_exclude: tuple[str, ...] = ()
    max_message_size: int = 1 << 20
    freeze_timeout: float = 600.0
    on_agent_death: str = "thaw"
    exec_output_limit: int = DEFAULT_EXEC_OUTPUT_LIMIT
    faults: bool = False   # accept the guest-fault-* commands (opt-in: not for production guests)
    # Where the settings came from; these two stay last (settings() ends before them).
    config_file: str | None = None
    # Field name -> "PATH:LINE" for values read from the config file.
    origins: Mapping[str, str] = MappingProxyType({})

    def settings(self) -> tuple[object, ...]:
        """Every setting, without where they came from (``config_file`` and ``origins``, the last
        fields)."""
        return tuple(self)[:self._fields.index("config_file")]

    # Equal settings are one configuration, whichever file or options gave them (``-D`` output
    # loaded back equals the configuration it was dumped from).
    def __eq__(self, other: object) -> bool:
        return isinstance(other, Config) and self.settings() == other.settings()

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return hash(self.settings())

    def where(self, name: str) -> str:
        """The prefix of an error about the setting ``name``: ``PATH:LINE: `` when it came from
        the config file, else nothing (the command line)."""
        origin = self.origins.get(name)
        return f"{origin}: " if origin else ""

    @property
    def channel_path(self) -> str:
        return self.path or DEFAULT_PATHS[self.method]

    @property
    def pidfile_path(self) -> str:
        return self.pidfile or str(Path(self.statedir) / "pyqga.pid")


# Config file key -> (Config field, kind); kinds: str, bool, rpcs, list, float, int.  qemu-ga's
# keys first, in the order its -D prints them; then aliases; then pyqga's own keys.
_INI_KEYS: dict[str, tuple[str, str]] = {
    "daemon": ("daemonize", "bool"),
    "method": ("method", "str"),
    "path": ("path", "str"),
    "logfile": ("logfile", "str"),
    "pidfile": ("pidfile", "str"),
    "fsfreeze-hook": ("fsfreeze_hook", "str"),
    "statedir": ("statedir", "str"),
    "verbose": ("verbose", "bool"),
    "retry-path": ("retry_path", "bool"),
    "block-rpcs": ("block_rpcs", "rpcs"),
    "allow-rpcs": ("allow_rpcs", "rpcs"),
    "blacklist": ("block_rpcs", "rpcs"),  # qemu-ga's old name (7.2: it wins over block-rpcs)
    "daemonize": ("daemonize", "bool"),  # pyqga's old name of daemon, as the long option
    "fsfreeze-hook-timeout": ("fsfreeze_hook_timeout", "float"),
    "freeze-include": ("freeze_include", "list"),
    "freeze-exclude": ("freeze_exclude", "list"),
    "max-message-size": ("max_message_size", "int"),
    "freeze-timeout": ("freeze_timeout", "float"),
    "on-agent-death": ("on_agent_death", "str"),
    "exec-output-limit": ("exec_output_limit", "int"),
    "faults": ("faults", "bool"),
}
# Lists -D prints even when empty, as qemu-ga does (other lists only when set; other keys
# whenever they have a value: the pid file's default, STATEDIR/pyqga.pid, is left to follow -t).
_ALWAYS_DUMPED = ("block-rpcs",)
LIST_RULE = ("lists are separated by ',' (qemu-ga's rule; ';' is accepted too), "
             "without spaces inside names")


def _split_list(text: str, separators: str) -> tuple[str, ...]:
    for sep in separators[1:]:
        text = text.replace(sep, separators[0])
    return tuple(item.strip() for item in text.split(separators[0]) if item.strip())


def _convert(kind: str, raw: str) -> object:
    """A raw key-file value as the Config field wants it; ValueError says why not."""
    if kind == "bool":
        return keyfile.boolean(raw)
    text = keyfile.unescape(raw.rstrip())
    if kind == "rpcs":  # qemu-ga splits the string on ','; pyqga always took ';' (GKeyFile's)
        return _split_list(text, ",;")
    if kind == "list":  # globs may hold ',' ([,] classes): only GKeyFile's ';'
        return _split_list(text, ";")
    if kind == "float":
        return float(text)
    if kind == "int":
        return int(text)
    return text


def config_path(option: str | None, environ: Mapping[str, str] | None = None) -> tuple[str, bool]:
    """Which file to read, and whether it must exist: ``-c`` (must), else ``$QGA_CONF`` as
    qemu-ga reads it (a missing file is no error), else the default if it exists."""
    if option:
        return option, True
    env = (os.environ if environ is None else environ).get("QGA_CONF")
    if env:
        return env, False
    return DEFAULT_CONFIG, False


def load_file(path: str, required: bool = True) -> tuple[dict[str, object], dict[str, str]]:
    """Values of the ``[general]`` group as Config field names, and where each came from
    (``PATH:LINE``).  A missing file that is not ``required`` gives nothing, as in qemu-ga."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        if not required:
            return {}, {}
        raise ConfigError(f"cannot read config file {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8"
        raise ConfigError(f"cannot read config file {path}: {reason}") from None
    try:
        general = keyfile.parse(text).get("general", {})
    except keyfile.KeyFileError as exc:
        raise ConfigError(f"{path}:{exc.line}: cannot read config file: {exc.reason}") from None
    if "blacklist" in general:  # qemu-ga 7.2 reads one of the two, the old name first
        general.pop("block-rpcs", None)
    values: dict[str, object] = {}
    origins: dict[str, str] = {}
    for key, entry in sorted(general.items(), key=lambda item: item[1].line):
        where = f"{path}:{entry.line}"
        if key not in _INI_KEYS:
            raise ConfigError(f"{where}: unknown key {key!r} in [general]; "
                              f"'pyqga-agent --help' lists the options, whose long names are the keys")
        name, kind = _INI_KEYS[key]
        try:
            values[name] = _convert(kind, entry.raw)
        except ValueError as exc:
            raise ConfigError(f"{where}: config key {key!r}: {exc}") from None
        origins[name] = where
    return values, origins


def _dump_value(kind: str, value: object) -> str:
    if kind == "bool":
        return "true" if value else "false"
    if kind == "rpcs":
        return ",".join(map(str, value))  # type: ignore[call-overload]
    if kind == "list":
        return "".join(f"{keyfile.escape(item)};" for item in value)  # type: ignore[attr-defined]
    return keyfile.escape(str(value))


def dump(config: Config) -> str:
    """The config as qemu-ga's ``-D`` writes it (its keys, order and list form), then pyqga's
    own keys: loadable again by qemu-ga (which ignores keys it lacks) and by pyqga."""
    lines = ["[general]"]
    written: set[str] = set()
    for key, (name, kind) in _INI_KEYS.items():
        if name in written:
            continue
        written.add(name)
        value = getattr(config, name)
        if value is None or (key not in _ALWAYS_DUMPED and kind in ("list", "rpcs") and not value):
            continue
        lines.append(f"{key}={_dump_value(kind, value)}")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyqga-agent",
        usage="%(prog)s [OPTION]...",
        description=(
            "pyqga guest agent: answers qemu-ga and JSON-RPC 2.0 requests from the host, "
            "freezes and thaws filesystems for consistent snapshots."
        ),
        epilog=(
            "Options marked (qemu-ga) behave as in QEMU's guest agent, so existing service files "
            "and config files keep working. The config file (-c, else $QGA_CONF as in qemu-ga, else "
            f"{DEFAULT_CONFIG}) is a GKeyFile whose [general] group takes the long options' names "
            "and qemu-ga's keys (daemon, blacklist); booleans are true/false; block-rpcs and allow-rpcs "
            "are ','-separated as in qemu-ga (';' works too), freeze-include/exclude ';'-separated. "
            "Under systemd (JOURNAL_STREAM set) messages go to the journal with their priority and "
            "no timestamp of their own."
        ),
    )
    add = parser.add_argument
    add("-m", "--method", choices=METHODS, help="transport (qemu-ga; default virtio-serial)")
    add("-p", "--path", help="device or socket path; vsock: CID:PORT (qemu-ga)")
    add("-l", "--logfile", help="log to this file instead of stderr (qemu-ga)")
    add("-f", "--pidfile", help="pid file, locked while running (qemu-ga; default STATEDIR/pyqga.pid)")
    add("-t", "--statedir", help=f"state directory, keep it on tmpfs (qemu-ga; default {DEFAULT_STATEDIR})")
    add("-v", "--verbose", action="store_true", default=None, help="log debug messages (qemu-ga)")
    add("-V", "--version", action="version", version=f"pyqga-agent {VERSION}")
    add("-d", "--daemonize", action="store_true", default=None, help="become a daemon (qemu-ga)")
    add("-r", "--retry-path", action="store_true", default=None,
        help="retry opening the channel if it is missing or closes (qemu-ga)")
    add("-b", "--block-rpcs", "--blacklist", action="append", metavar="LIST",
        help="comma-separated commands to disable, added to the config file's; 'help' lists them (qemu-ga)")
    add("-a", "--allow-rpcs", action="append", metavar="LIST",
        help="comma-separated commands to allow, all others disabled, added to the config file's; "
             "'help' lists them (qemu-ga)")
    add("-F", "--fsfreeze-hook", nargs="?", const=DEFAULT_HOOK, metavar="PATH",
        help=f"run PATH freeze|thaw around freezes (qemu-ga; default path {DEFAULT_HOOK})")
    add("--fsfreeze-hook-timeout", type=float, metavar="SECONDS",
        help="kill a hook that runs longer and fail the freeze (default 60)")
    add("--freeze-include", action="append", metavar="GLOB",
        help="freeze, thaw and fstrim only touch mount points matching one of these globs (repeatable)")
    add("--freeze-exclude", action="append", metavar="GLOB",
        help="freeze, thaw and fstrim never touch mount points matching these globs (repeatable)")
    add("--freeze-timeout", type=float, metavar="SECONDS",
        help="auto-thaw a freeze after this long unless the request names its own timeout; "
             "0 means never (default 600)")
    add("--on-agent-death", choices=("thaw", "stay"),
        help="if the agent dies while frozen, a guard process thaws (default), or the filesystems "
             "stay frozen as with qemu-ga")
    add("--exec-output-limit", type=int, metavar="BYTES",
        help="guest-exec keeps at most this much of each output stream, the rest is dropped and "
             "reported as truncated (default 16 MiB, as qemu-ga)")
    add("--enable-faults", dest="faults", action="store_true", default=None,
        help="accept the fault-injection commands (guest-fault-*: stalls, I/O errors, disk full...); "
             "off by default, for test guests only (config file: faults=true)")
    add("--max-message-size", type=int, metavar="BYTES",
        help="largest request accepted, up to 64 MiB (default 1 MiB)")
    add("-c", "--config",
        help=f"config file (qemu-ga 8; default $QGA_CONF, else {DEFAULT_CONFIG}, if it exists)")
    add("-D", "--dump-conf", action="store_true",
        help="check the effective configuration as start-up does, print it as a config file that "
             "qemu-ga and pyqga-agent both load, and exit (qemu-ga)")
    add("--check-config", metavar="FILE",
        help="check FILE, with the other options given, as start-up would (keys, values, command "
             "names, state directory, hook, log file) and exit: 0 if valid, 1 with the reasons "
             "(file and line) if not")
    return parser


def from_args(args: argparse.Namespace) -> Config:
    """Merge defaults, config file and command line into a checked Config."""
    values: dict[str, object] = {}
    origins: dict[str, str] = {}
    config_file: str | None
    config_file, required = config_path(args.config)
    if required or Path(config_file).exists():
        values, origins = load_file(config_file, required)
    else:
        config_file = None
    for name in ("method", "path", "logfile", "pidfile", "statedir", "verbose", "daemonize",
                 "retry_path", "fsfreeze_hook", "fsfreeze_hook_timeout", "max_message_size",
                 "freeze_timeout", "on_agent_death", "exec_output_limit", "faults"):
        value = getattr(args, name)
        if value is not None:
            values[name] = value
            origins.pop(name, None)
    for name in ("block_rpcs", "allow_rpcs"):  # qemu-ga adds these to the file's list
        given = getattr(args, name)
        if given:
            from_file: tuple[str, ...] = values.get(name, ())  # type: ignore[assignment]
            values[name] = from_file + tuple(item for chunk in given for item in _split_list(chunk, ","))
            origins.pop(name, None)  # no longer one line's list
    for name in ("freeze_include", "freeze_exclude"):
        given = getattr(args, name)
        if given:
            values[name] = tuple(given)
            origins.pop(name, None)
    values["config_file"] = config_file
    values["origins"] = origins
    config = Config(**values)  # type: ignore[arg-type]
    return check(config)


def check(config: Config) -> Config:
    """The values' own rules (what the machine says is :mod:`pyqga.agent.preflight`'s job)."""
    def fail(name: str, message: str) -> ConfigError:
        return ConfigError(config.where(name) + message)

    if config.method not in METHODS:
        raise fail("method", f"unknown method {config.method!r}; choose one of {', '.join(METHODS)}")
    if not 0 < config.max_message_size <= 64 << 20:
        raise fail("max_message_size", "max-message-size must be between 1 and 67108864 bytes")
    if config.fsfreeze_hook_timeout <= 0:
        raise fail("fsfreeze_hook_timeout", "fsfreeze-hook-timeout must be positive")
    if not (config.freeze_timeout == 0 or 0 < config.freeze_timeout <= MAX_TIMEOUT):
        raise fail("freeze_timeout", f"freeze-timeout must be 0 (never: qemu-ga's behaviour) or a number "
                   f"of seconds up to {MAX_TIMEOUT:g}, not {config.freeze_timeout}")
    if config.on_agent_death not in ("thaw", "stay"):
        raise fail("on_agent_death",
                   f"on-agent-death must be 'thaw' or 'stay', not {config.on_agent_death!r}")
    if config.exec_output_limit <= 0:
        raise fail("exec_output_limit", "exec-output-limit must be a positive number of bytes")
    return config


def replace(config: Config, **changes: object) -> Config:
    return check(config._replace(**changes))  # type: ignore[arg-type]
