"""The daemon: parse the configuration, take the pid file, serve until told to stop.

Started through :func:`agent.main.main`, which sets process-wide switches first.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from agent import config as config_module
from agent.channels import ChannelError
from agent.config import ConfigError
from agent.logs import LogControl
from agent.pidfile import PidFile, PidFileError
from agent.registry import Registry, build_registry
from agent.server import serve
from agent.state import AgentState


def list_commands(registry: Registry) -> str:
    width = max(len(command.name) for command in registry)
    return "\n".join(f"{command.name:<{width}}  {command.doc}" for command in registry) + "\n"


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


async def run(agent: AgentState) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(signum, stop.set)
    await serve(agent, stop)


def run_daemon(argv: list[str] | None = None) -> int:
    parser = config_module.build_parser()
    args = parser.parse_args(argv)
    for option in (args.block_rpcs or []) + (args.allow_rpcs or []):
        if option in ("help", "?"):
            sys.stdout.write(list_commands(build_registry()))
            return 0
    try:
        config = config_module.from_args(args)
        if args.dump_conf:
            sys.stdout.write(config_module.dump(config))
            return 0
        logs = LogControl(config.logfile, config.verbose)
        agent = AgentState(config, log=logs.log, logs=logs)
    except ConfigError as exc:
        parser.exit(2, f"pyqga-agent: {exc}\n")
    os.makedirs(config.statedir, exist_ok=True)
    pidfile = PidFile(config.pidfile_path)
    try:
        if config.daemonize:
            daemonize()
        pidfile.acquire()
        agent.log.info("pyqga-agent %s starting (pid %d)", agent.version, os.getpid())
        asyncio.run(run(agent))
        agent.freezer.shutdown()
    except (PidFileError, ChannelError) as exc:
        agent.log.error("%s", exc)
        return 1
    finally:
        pidfile.release()
    agent.log.info("stopped")
    return 0
