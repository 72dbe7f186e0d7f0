"""Connecting to an agent's unix socket, the same way for every test and benchmark."""

from __future__ import annotations

import socket
import time
from pathlib import Path


def connect_unix(path: str | Path, timeout: float = 10.0) -> socket.socket:
    """A connected socket (the caller closes it), retrying EAGAIN until ``timeout``.

    qemu-ga's listen backlog is tiny and it accepts the next client only once the previous one
    has closed, so a quick reconnect can find the queue full.
    """
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
            return sock
        except BlockingIOError:
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.002)
        except BaseException:
            sock.close()
            raise
