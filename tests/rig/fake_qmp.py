"""A QMP monitor that never finishes a snapshot: for Ctrl-C tests of ``pyqga snapshot``/``group``
where no QEMU runs.

It greets as QEMU 7.2 does, accepts ``qmp_capabilities``, answers ``query-block`` with the
devices it was given, and on ``blockdev-snapshot-sync`` or ``transaction`` sets ``snapshotting``
and answers nothing, as a QEMU whose storage hangs would.  One client at a time, as QEMU.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

GREETING = {"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""},
                    "capabilities": ["oob"]}}


class HungQMP:
    def __init__(self, path: Path, devices: dict[str, str]) -> None:
        self.path = path
        self.devices = devices              # device -> its top image file
        self.snapshotting = threading.Event()
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(str(path))
        self._server.listen(1)
        self._thread = threading.Thread(target=self._serve, daemon=True, name="hung-qmp")

    def __enter__(self) -> HungQMP:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._server.close()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            with conn, contextlib.suppress(OSError):  # OSError: the client went away
                self._session(conn)

    def _session(self, conn: socket.socket) -> None:
        def send(message: dict[str, Any]) -> None:
            conn.sendall(json.dumps(message).encode() + b"\r\n")

        send(GREETING)
        for request in _messages(conn):
            name, reply_id = request.get("execute"), request.get("id")
            if name in ("blockdev-snapshot-sync", "transaction"):
                self.snapshotting.set()
                continue  # never answered
            if name == "query-block":
                result: Any = [{"device": d, "inserted": {"file": f}} for d, f in self.devices.items()]
            else:
                result = {}
            send({"return": result, "id": reply_id})


def _messages(conn: socket.socket) -> Iterator[dict[str, Any]]:
    """JSON objects as they arrive (a QMP client need not end them with a newline)."""
    decoder, buffer = json.JSONDecoder(), ""
    while chunk := conn.recv(65536):
        buffer += chunk.decode()
        while buffer.strip():
            try:
                message, end = decoder.raw_decode(buffer.lstrip())
            except json.JSONDecodeError:
                break
            buffer = buffer.lstrip()[end:]
            yield message
