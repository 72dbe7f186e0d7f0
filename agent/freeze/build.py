"""The agent's freezer, put together from its configuration.

Kept apart from :mod:`.driver` because the keeper process imports the driver and must stay
small: it needs neither the planner nor the keeper handle nor the configuration.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from pyqga.agent.freeze.driver import Freezer
from pyqga.agent.freeze.planner import FreezePlanner
from pyqga.agent.freeze.statefile import StateFile
from pyqga.agent.keeper.handle import KeeperHandle

if TYPE_CHECKING:
    from pyqga.agent.config import Config
    from pyqga.agent.logs import LogControl


def build_freezer(config: Config, log: logging.Logger, logs: LogControl | None = None) -> Freezer:
    """The agent's freezer: planning within the freeze filters, the state file, the hook, and
    under ``--on-agent-death thaw`` a keeper process whose death is noticed and repaired."""
    keeper = KeeperHandle(config.statedir, config.fsfreeze_hook, config.fsfreeze_hook_timeout, log) \
        if config.on_agent_death == "thaw" else None
    freezer = Freezer(planner=FreezePlanner(include=config.freeze_include, exclude=config.freeze_exclude),
                      store=StateFile(config.statedir), keeper=keeper, hook=config.fsfreeze_hook,
                      hook_timeout=config.fsfreeze_hook_timeout,
                      default_timeout=config.freeze_timeout or None, on_agent_death=config.on_agent_death,
                      log=log, logs=logs)
    if keeper is not None:
        keeper.on_death = freezer.keeper_died
    return freezer
