"""The daemon: parse the configuration, take the pid file, serve until told to stop.

Started through :func:`pyqga.agent.main.main`, which sets process-wide switches first.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from typing import TextIO

from pyqga.agent import config as config_module
from pyqga.agent import preflight
from pyqga.agent.channels import Channel, ChannelError, open_channel
from pyqga.agent.config import ConfigError
from pyqga.agent.logs import LogControl
from pyqga.agent.pidfile import PidFile, PidFileError
from pyqga.agent.registry import Registry, build_registry
from pyqga.agent.server import serve
from pyqga.agent.state import AgentState


def list_commands(registry: Registry) -> str:
    """``-b help``: every command with its parameters (``[name:type]`` is optional) and doc."""
    lines = []
    for command in registry:
        lines.append(command.usage())
        lines.append(f"    {command.doc}")
    return "\n".join(lines) + "\n"


def daemonize() -> None:
    """Classic double fork; stdio to /dev/null.  The parent returns only in the grandchild."""
    if os.fork() > 0:
        os._exit(0)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    os.chdir("/")
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


async def run(agent: AgentState, channel: Channel, early_signals: list[int]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, stop.set)
    if early_signals:  # a stop request came while we were starting: honour it
        stop.set()
    await serve(agent, channel, stop)


def _say(stream: TextIO, text: str, prefix: str = "pyqga-agent: ") -> None:
    stream.write("".join(f"{prefix}{line}\n" for line in text.splitlines()))


def validated(args: argparse.Namespace) -> config_module.Config:
    """The configuration ``args`` give, with every check start-up makes (warnings to stderr):
    ``--check-config`` and ``-D`` must not accept what start-up refuses."""
    config = config_module.from_args(args)
    for warning in preflight.warnings(preflight.validate(config)):
        _say(sys.stderr, warning, "pyqga-agent: warning: ")
    return config


def check_config(args: argparse.Namespace) -> int:
    """``--check-config FILE``: what the agent would refuse at start, reported without starting.
    Other options count as at start (a unit's ``-t`` decides where the state directory is)."""
    path = args.config = args.check_config
    try:
        validated(args)
    except ConfigError as exc:
        _say(sys.stderr, str(exc))
        return 1
    sys.stdout.write(f"{path}: valid\n")
    return 0


def run_daemon(argv: list[str] | None = None) -> int:
    parser = config_module.build_parser()
    args = parser.parse_args(argv)
    if args.check_config is not None:
        return check_config(args)
    for option in (args.block_rpcs or []) + (args.allow_rpcs or []):
        if option in ("help", "?"):
            sys.stdout.write(list_commands(build_registry()))
            return 0
    try:
        if args.dump_conf:  # printed only once it is known to be good
            sys.stdout.write(config_module.dump(validated(args)))
            return 0
        config = config_module.from_args(args)
        # Held until the freezer has read its state file: a dead agent may have left the log
        # file's filesystem frozen (released at once when nothing is frozen).
        logs = LogControl(config.logfile, config.verbose, held=True)
        agent = AgentState(config, log=logs.log, logs=logs)
        # Before anything is written there (the state file, the pid file).
        for warning in preflight.warnings(
                preflight.machine_findings(config, agent.freezer.planner, create=True)):
            agent.log.warning("%s", warning)
    except ConfigError as exc:
        _say(sys.stderr, str(exc))
        parser.exit(2)
    # From here on a stop signal must not kill us outright (the socket may already accept
    # hosts, a freeze may follow): note it, and the event loop acts on it once it runs.
    early_signals: list[int] = []
    for signum in STOP_SIGNALS:
        signal.signal(signum, lambda signum, _frame: early_signals.append(signum))
    pidfile = PidFile(config.pidfile_path)
    try:
        # Listening sockets are bound before daemonizing: once the parent exits, hosts can
        # connect, and a socket in use is reported on the terminal.  Threads start only after.
        pidfile.check()
        channel = open_channel(config, agent.log)
        if config.daemonize:
            daemonize()
        pidfile.acquire()
        agent.log.info("pyqga-agent %s starting (pid %d)", agent.version, os.getpid())
        asyncio.run(run(agent, channel, early_signals))
    except (PidFileError, ChannelError) as exc:
        agent.log.error("%s", exc)
        return 1
    finally:
        pidfile.release()
    agent.log.info("stopped")
    return 0
