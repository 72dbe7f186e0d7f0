"""The agent's configuration: qemu-ga's command line and INI file, plus our own options.

Precedence is qemu-ga's: built-in defaults, then the ``[general]`` section of the config file,
then the command line.  Lists in the file are ``;``-separated (GKeyFile's convention, which
qemu-ga uses); on the command line they are comma-separated and the option may repeat.
"""

from __future__ import annotations

import argparse
import configparser
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

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


@dataclass(frozen=True)
class Config:
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
    config_file: str | None = field(default=None, compare=False)

    @property
    def channel_path(self) -> str:
        return self.path or DEFAULT_PATHS[self.method]

    @property
    def pidfile_path(self) -> str:
        return self.pidfile or str(Path(self.statedir) / "pyqga.pid")


# INI key -> (Config field, kind); kinds: str, bool, list, float, int.
_INI_KEYS: dict[str, tuple[str, str]] = {
    "daemonize": ("daemonize", "bool"),
    "method": ("method", "str"),
    "path": ("path", "str"),
    "logfile": ("logfile", "str"),
    "pidfile": ("pidfile", "str"),
    "statedir": ("statedir", "str"),
    "verbose": ("verbose", "bool"),
    "retry-path": ("retry_path", "bool"),
    "block-rpcs": ("block_rpcs", "list"),
    "blacklist": ("block_rpcs", "list"),  # qemu-ga's old name
    "allow-rpcs": ("allow_rpcs", "list"),
    "fsfreeze-hook": ("fsfreeze_hook", "str"),
    "fsfreeze-hook-timeout": ("fsfreeze_hook_timeout", "float"),
    "freeze-include": ("freeze_include", "list"),
    "freeze-exclude": ("freeze_exclude", "list"),
    "max-message-size": ("max_message_size", "int"),
    "freeze-timeout": ("freeze_timeout", "float"),
    "on-agent-death": ("on_agent_death", "str"),
    "exec-output-limit": ("exec_output_limit", "int"),
}


def _split_list(text: str, sep: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(sep) if item.strip())


def _convert(key: str, kind: str, raw: str) -> object:
    try:
        if kind == "bool":
            lowered = raw.strip().lower()
            if lowered not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(f"not a boolean: {raw!r}")
            return lowered in ("true", "1", "yes")
        if kind == "list":
            return _split_list(raw, ";")
        if kind == "float":
            return float(raw)
        if kind == "int":
            return int(raw)
    except ValueError as exc:
        raise ConfigError(f"config key {key!r}: {exc}") from None
    return raw.strip()


def load_file(path: str) -> dict[str, object]:
    """Values from the ``[general]`` section, as Config field names."""
    parser = configparser.ConfigParser(interpolation=None, delimiters=("=",))
    try:
        with open(path, encoding="utf-8") as handle:
            parser.read_file(handle)
    except (OSError, configparser.Error) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    values: dict[str, object] = {}
    if parser.has_section("general"):
        for key, raw in parser.items("general"):
            if key not in _INI_KEYS:
                raise ConfigError(f"config file {path}: unknown key {key!r} in [general]")
            name, kind = _INI_KEYS[key]
            values[name] = _convert(key, kind, raw)
    return values


def dump(config: Config) -> str:
    """The config as an INI file (``-D``), loadable again with ``-c``."""
    lines = ["[general]"]
    written: set[str] = set()
    for key, (name, kind) in _INI_KEYS.items():
        if name in written:
            continue
        written.add(name)
        value = getattr(config, name)
        if value is None or (kind == "list" and not value):
            continue
        if kind == "bool":
            text = "true" if value else "false"
        elif kind == "list":
            text = ";".join(value) + ";"
        else:
            text = str(value)
        lines.append(f"{key}={text}")
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
            "and config files keep working. The config file's [general] section takes the same "
            "names as the long options; lists there are ';'-separated. Under systemd (JOURNAL_STREAM "
            "set) messages go to the journal with their priority and no timestamp of their own."
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
    add("-b", "--block-rpcs", action="append", metavar="LIST",
        help="comma-separated commands to disable; 'help' lists them (qemu-ga)")
    add("-a", "--allow-rpcs", action="append", metavar="LIST",
        help="comma-separated commands to allow, all others disabled; 'help' lists them (qemu-ga)")
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
    add("--max-message-size", type=int, metavar="BYTES",
        help="largest request accepted, up to 64 MiB (default 1 MiB)")
    add("-c", "--config", help=f"config file (qemu-ga; default {DEFAULT_CONFIG} if it exists)")
    add("-D", "--dump-conf", action="store_true", help="print the effective config file and exit (qemu-ga)")
    add("--check-config", metavar="FILE",
        help="validate FILE (keys, values, command names) and exit: 0 if valid, 1 with the reason if not")
    return parser


def from_args(args: argparse.Namespace) -> Config:
    """Merge defaults, config file and command line into a checked Config."""
    values: dict[str, object] = {}
    config_file = args.config or (DEFAULT_CONFIG if Path(DEFAULT_CONFIG).exists() else None)
    if config_file:
        values.update(load_file(config_file))
    for name in ("method", "path", "logfile", "pidfile", "statedir", "verbose", "daemonize",
                 "retry_path", "fsfreeze_hook", "fsfreeze_hook_timeout", "max_message_size",
                 "freeze_timeout", "on_agent_death", "exec_output_limit"):
        value = getattr(args, name)
        if value is not None:
            values[name] = value
    for name in ("block_rpcs", "allow_rpcs"):
        given = getattr(args, name)
        if given:
            values[name] = tuple(item for chunk in given for item in _split_list(chunk, ","))
    for name in ("freeze_include", "freeze_exclude"):
        given = getattr(args, name)
        if given:
            values[name] = tuple(given)
    values["config_file"] = config_file
    config = Config(**values)  # type: ignore[arg-type]
    return check(config)


def check(config: Config) -> Config:
    if config.method not in METHODS:
        raise ConfigError(f"unknown method {config.method!r}; choose one of {', '.join(METHODS)}")
    if not 0 < config.max_message_size <= 64 << 20:
        raise ConfigError("max-message-size must be between 1 and 67108864 bytes")
    if config.fsfreeze_hook_timeout <= 0:
        raise ConfigError("fsfreeze-hook-timeout must be positive")
    if not (config.freeze_timeout == 0 or 0 < config.freeze_timeout <= MAX_TIMEOUT):
        raise ConfigError(f"freeze-timeout must be 0 (never: qemu-ga's behaviour) or a number of seconds "
                          f"up to {MAX_TIMEOUT:g}, not {config.freeze_timeout}")
    if config.on_agent_death not in ("thaw", "stay"):
        raise ConfigError(f"on-agent-death must be 'thaw' or 'stay', not {config.on_agent_death!r}")
    if config.exec_output_limit <= 0:
        raise ConfigError("exec-output-limit must be a positive number of bytes")
    return config


def replace(config: Config, **changes: object) -> Config:
    return check(dataclasses.replace(config, **changes))  # type: ignore[arg-type]
