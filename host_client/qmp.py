"""A small blocking QMP client: enough for ``quit``, ``query-*`` and ``blockdev-snapshot-sync``.

QEMU's own ``qemu.qmp`` package is asyncio-based and not packaged for Debian 12; the protocol we
need is three steps (greeting, ``qmp_capabilities``, one JSON request per line with an ``id``),
so a socket and a line buffer do.  Events arriving between replies are kept in ``events``.
"""

from __future__ import annotations

import itertools
import json
import socket
import time
from pathlib import Path
from typing import Any


class QMPError(RuntimeError):
    """QEMU answered a command with an error (``error_class`` is QMP's ``class``)."""

    def __init__(self, command: str, error_class: str, desc: str) -> None:
        super().__init__(f"QMP {command}: {error_class}: {desc}")
        self.command = command
        self.error_class = error_class
        self.desc = desc


class QMPClient:
    """One connection to a QMP monitor socket, negotiated and ready for ``execute``.

    QEMU serves one client per monitor at a time: close this before another connects (the VM
    harness keeps a second, private monitor for itself, so tests may hold ``vm.qmp_socket``).
    """

    def __init__(self, path: str | Path, timeout: float = 10.0, connect_timeout: float = 10.0) -> None:
        self.path = str(path)
        self.timeout = timeout
        self.events: list[dict[str, Any]] = []
        self.greeting: dict[str, Any] = {}
        self._ids = itertools.count(1)
        self._buffer = b""
        self._sock = self._connect(connect_timeout)
        try:
            self.greeting = self._read_message(time.monotonic() + timeout)
            if "QMP" not in self.greeting:
                raise ConnectionError(f"{self.path}: not a QMP greeting: {self.greeting}")
            self.execute("qmp_capabilities")
        except BaseException:
            self.close()
            raise

    def _connect(self, connect_timeout: float) -> socket.socket:
        """Retry while QEMU is still creating the socket (it exists once QEMU has parsed -qmp)."""
        deadline = time.monotonic() + connect_timeout
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(max(0.1, deadline - time.monotonic()))
                sock.connect(self.path)
                return sock
            except (FileNotFoundError, ConnectionRefusedError):
                sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
            except BaseException:
                sock.close()
                raise

    def __enter__(self) -> QMPClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._sock.close()

    def execute(self, command: str, arguments: dict[str, Any] | None = None, *,
                timeout: float | None = None) -> Any:
        """Run ``command`` and return its ``return`` value; raise :class:`QMPError` on error."""
        request_id = next(self._ids)
        request: dict[str, Any] = {"execute": command, "id": request_id}
        if arguments:
            request["arguments"] = arguments
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        self._sock.settimeout(max(0.001, deadline - time.monotonic()))
        self._sock.sendall(json.dumps(request).encode() + b"\n")
        while True:
            message = self._read_message(deadline)
            if "event" in message:
                self.events.append(message)
                continue
            if message.get("id") != request_id:
                continue  # a reply to a request that timed out earlier
            if "error" in message:
                error = message["error"]
                raise QMPError(command, error.get("class", "?"), error.get("desc", ""))
            return message.get("return")

    def wait_event(self, name: str, timeout: float | None = None) -> dict[str, Any]:
        """Return (and remove) the first event called ``name``, reading until it comes."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            for i, event in enumerate(self.events):
                if event.get("event") == name:
                    return self.events.pop(i)
            message = self._read_message(deadline)
            if "event" in message:
                self.events.append(message)

    def _read_message(self, deadline: float) -> dict[str, Any]:
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{self.path}: no QMP message in time")
            self._sock.settimeout(remaining)
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                raise TimeoutError(f"{self.path}: no QMP message in time") from None
            if not data:
                raise ConnectionError(f"{self.path}: QEMU closed the QMP connection")
            self._buffer += data
        line, _, self._buffer = self._buffer.partition(b"\n")
        return json.loads(line)
