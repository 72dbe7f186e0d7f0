"""The agent and its keeper never map TLS code: no ``_ssl`` extension module, no libssl.

The agent speaks no TLS, and ``ssl`` with OpenSSL's libssl is ~4 MB resident in each process
(issue 22).  asyncio imports ``ssl`` only to offer TLS; the agent keeps it out
(``pyqga/agent/main.py``).  This starts the real agent, waits for the keeper it starts in the
background, and reads both processes' ``/proc/PID/maps`` after start-up, while a loop mount is
frozen and after its thaw (a freeze is when the keeper's work and the agent's freeze code run).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pyqga.host_client import AgentClient
from tests.rig.agent_process import ssl_objects, started_keeper
from tests.rig.freezing import start_agent
from tests.rig.loopfs import LoopMounts

pytestmark = pytest.mark.root


def test_neither_the_agent_nor_its_keeper_maps_tls(tmp_path: Path, loops: LoopMounts) -> None:
    fs = loops.add("fs")
    agent = start_agent(tmp_path, loops)
    try:
        keeper = started_keeper(agent.pid)
        mapped = {"after start-up": [ssl_objects(agent.pid), ssl_objects(keeper)]}
        with AgentClient(str(agent.socket_path), timeout=30) as client:
            assert client.call("guest-fsfreeze-freeze-list", mountpoints=[str(fs)]) == 1
            try:
                mapped["frozen"] = [ssl_objects(agent.pid), ssl_objects(keeper)]
            finally:
                assert client.call("guest-fsfreeze-thaw") == 1
        assert started_keeper(agent.pid) == keeper, "the keeper was restarted"
        mapped["after the thaw"] = [ssl_objects(agent.pid), ssl_objects(keeper)]
    finally:
        agent.stop()
    assert mapped == {moment: [[], []] for moment in mapped}, f"TLS mapped (agent, keeper): {mapped}"
