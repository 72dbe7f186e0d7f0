"""qemu-ga and pyqga side by side: one request sent to both, back to back, for tests that
compare the VALUES the two agents report at the same moment."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.rig.agent_process import PyqgaAgent
from tests.rig.qemu_ga import QemuGa, require_qemu_ga

READ_TIMEOUT = 10.0


class Pair:
    """(qemu-ga, pyqga) on unix sockets; ``call`` sends one request to both, back to back."""

    def __init__(self, qga: QemuGa, ours: PyqgaAgent) -> None:
        self.qga, self.ours = qga, ours

    @staticmethod
    def _one(connect: Any, request: dict[str, Any]) -> Any:
        deadline = time.monotonic() + READ_TIMEOUT
        while True:
            try:
                sock = connect()
                break
            except BlockingIOError:  # qemu-ga's tiny backlog: retry
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.005)
        with contextlib.closing(sock):
            sock.settimeout(READ_TIMEOUT)
            sock.sendall(json.dumps(request).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(1 << 20)
                assert chunk, f"connection closed after {data!r}"
                data += chunk
        return json.loads(data)

    def call(self, command: str, arguments: dict[str, Any] | None = None) -> tuple[Any, Any]:
        request: dict[str, Any] = {"execute": command}
        if arguments is not None:
            request["arguments"] = arguments
        return self._one(self.qga.connect, request), self._one(self.ours.connect, request)


@contextlib.contextmanager
def side_by_side(tmp: Path, args: tuple[str, ...] = ()) -> Iterator[Pair]:
    """Both agents, started with the same arguments (needs qemu-ga: skipped without, failed in CI)."""
    require_qemu_ga()
    with QemuGa(tmp / "qga", list(args)) as qga, PyqgaAgent(tmp / "pyqga", args) as ours:
        yield Pair(qga, ours)


def ok(reply: Any) -> Any:
    """The reply's ``return``, asserting it is not an error."""
    assert "return" in reply, reply
    return reply["return"]


def same(pair: Pair, command: str, arguments: dict[str, Any]) -> Any:
    """The reply, asserting both agents sent exactly the same one."""
    qga, ours = pair.call(command, arguments)
    assert ours == qga, (command, arguments)
    return ours
