"""QMP for the blocking host side (``pyqga snapshot``, the VM harness): QEMU's own ``qemu.qmp``.

``qemu.qmp.QMPClient`` does the protocol (greeting, ``qmp_capabilities``, ids, error replies,
events); :class:`QMPConnection` only drives it on a private event loop with a timeout on every
step, so a blocking caller gets the same "every call has a timeout" promise as ``AgentClient``.
Async code should use ``qemu.qmp.QMPClient`` directly (this class cannot run inside a running
event loop).

Why not ``qemu.qmp.legacy.QEMUMonitorProtocol``, the library's own sync wrapper: its
``connect()`` has no timeout, and QEMU serves one client per monitor at a time, so while another
client holds the monitor the connection is accepted but never greeted and ``connect()`` blocks
for ever (measured with QEMU 7.2: killed after 6 s by an alarm; this class raises
``TimeoutError`` after ``timeout``).  It also installs its event loop as the calling thread's.

Errors are ``qemu.qmp``'s: :class:`~qemu.qmp.ExecuteError` for an error reply (``error_class``
is QMP's ``class``), :class:`~qemu.qmp.ConnectError` when the socket cannot be reached (``exc``
holds the ``OSError``), other :class:`~qemu.qmp.QMPError` subclasses when QEMU goes away; and
``TimeoutError``.  :func:`describe` words an error reply for a human.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from qemu.qmp import ConnectError, ExecuteError, QMPClient, QMPError

__all__ = ["ConnectError", "ExecuteError", "QMPConnection", "QMPError", "describe"]

T = TypeVar("T")


class QMPConnection:
    """One negotiated connection to a QMP monitor socket, ready for :meth:`execute`.

    QEMU serves one client per monitor at a time: close this before another connects (the VM
    harness keeps a second, private monitor for itself, so tests may hold ``vm.qmp_socket``).
    """

    def __init__(self, path: str | Path, timeout: float = 10.0) -> None:
        self.path: str = str(path)
        self.timeout: float = timeout
        self.client: QMPClient = QMPClient(self.path)
        self._loop: asyncio.AbstractEventLoop | None = asyncio.new_event_loop()
        try:
            self._run(lambda: self.client.connect(self.path), timeout,
                      "no QMP greeting (does another client hold this monitor? QEMU serves one at a time)")
        except BaseException:
            self._loop.close()  # a failed connect() leaves the client idle: nothing else to undo
            self._loop = None
            raise

    @property
    def greeting(self) -> dict[str, Any]:
        greeting = self.client.greeting
        return {} if greeting is None else greeting._asdict()

    def execute(self, command: str, arguments: dict[str, Any] | None = None, *,
                timeout: float | None = None) -> Any:
        """Run ``command`` and return its ``return`` value; raise ``ExecuteError`` on an error
        reply and ``TimeoutError`` after ``timeout`` (default: the connection's)."""
        return self._run(lambda: self.client.execute(command, arguments),
                         self.timeout if timeout is None else timeout, f"no reply to {command}")

    def close(self) -> None:
        """Disconnect (idempotent).  QEMU hanging up first (``quit``) is not an error here."""
        if self._loop is None:
            return
        try:
            with contextlib.suppress(Exception):
                self._run(self.client.disconnect, self.timeout, "disconnect")
        finally:
            self._loop.close()
            self._loop = None

    def __enter__(self) -> QMPConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, step: Callable[[], Awaitable[T]], timeout: float, what: str) -> T:
        if self._loop is None:
            raise ConnectionError(f"{self.path}: this QMP connection is closed")
        task = self._loop.create_task(asyncio.wait_for(step(), timeout))
        try:
            return self._loop.run_until_complete(task)
        except TimeoutError:
            raise TimeoutError(f"{self.path}: {what} within {timeout} s") from None
        except BaseException:
            # Interrupted (Ctrl-C): end the step here, or a later close() finishes it with an
            # error nobody retrieves, which asyncio prints as a traceback.
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    self._loop.run_until_complete(task)
            raise


def describe(error: BaseException) -> str:
    """One line for a human; for an error reply, which command failed with which QMP class."""
    if isinstance(error, ExecuteError):
        return f"QMP {error.sent.get('execute', '?')}: {error.error_class}: {error}"
    return str(error) or type(error).__name__
