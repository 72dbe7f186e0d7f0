"""Byte channels to an agent.  Each has ``send``, ``recv`` with a deadline, and ``close``.

Addresses: ``unix:PATH`` or a bare path (a QEMU chardev socket or the agent's own socket).
Other schemes (vsock, tcp, serial) come with the channels work and are refused clearly here.
"""

from __future__ import annotations

import select
import socket
import time
from typing import Protocol

from host_client.errors import AgentConnectionError, AgentTimeout

RECV_SIZE = 65536


class Transport(Protocol):
    address: str

    def send(self, data: bytes, deadline: float) -> None: ...

    def recv(self, deadline: float) -> bytes: ...

    def close(self) -> None: ...


class SocketTransport:
    """A connected stream socket (unix now; vsock and tcp reuse it)."""

    def __init__(self, sock: socket.socket, address: str) -> None:
        self.sock = sock
        self.address = address
        sock.setblocking(False)

    def send(self, data: bytes, deadline: float) -> None:
        view = memoryview(data)
        while view:
            self._wait(select.POLLOUT, deadline, "sending")
            try:
                sent = self.sock.send(view)
            except BlockingIOError:
                continue
            except OSError as exc:
                raise AgentConnectionError(f"{self.address}: send failed: {exc.strerror}") from None
            view = view[sent:]

    def recv(self, deadline: float) -> bytes:
        while True:
            self._wait(select.POLLIN, deadline, "waiting for a reply")
            try:
                data = self.sock.recv(RECV_SIZE)
            except BlockingIOError:
                continue
            except ConnectionResetError:
                data = b""
            except OSError as exc:
                raise AgentConnectionError(f"{self.address}: receive failed: {exc.strerror}") from None
            if not data:
                raise AgentConnectionError(f"{self.address}: the agent closed the connection")
            return data

    def _wait(self, events: int, deadline: float, doing: str) -> None:
        poller = select.poll()
        poller.register(self.sock, events)
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not poller.poll(remaining * 1000):
            raise AgentTimeout(f"{self.address}: timed out {doing}")

    def close(self) -> None:
        self.sock.close()


def parse_address(address: str) -> tuple[str, str]:
    """(scheme, rest); a bare path means unix."""
    scheme, sep, rest = address.partition(":")
    if sep and scheme in ("unix", "vsock", "tcp", "serial"):
        return scheme, rest
    if "://" in address:
        return "url", address
    return "unix", address


def open_transport(address: str, timeout: float) -> Transport:
    scheme, rest = parse_address(address)
    if scheme != "unix":
        raise AgentConnectionError(f"{address}: {scheme} addresses are not supported yet; use unix:PATH")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(rest)
    except OSError as exc:
        sock.close()
        raise AgentConnectionError(f"cannot connect to unix:{rest}: {exc.strerror or exc}") from None
    return SocketTransport(sock, f"unix:{rest}")
