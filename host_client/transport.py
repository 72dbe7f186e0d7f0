"""Byte channels to an agent.  Each has ``send``, ``recv`` with a deadline, and ``close``.

Addresses: ``unix:PATH`` or a bare path (a QEMU chardev socket or the agent's own socket),
``vsock:CID:PORT``, ``tcp:HOST:PORT``, ``serial:DEVICE[?baud=N]`` (a host pty from QEMU's
``-serial pty``, or a real line), any pyserial URL (``socket://``, ``rfc2217://``), and
``libvirt:URI?domain=NAME`` (:mod:`pyqga.host_client.libvirt_transport`, the optional extra).
"""

from __future__ import annotations

import select
import socket
import time
import urllib.parse
from typing import Any, Protocol

import serial

from pyqga.host_client.errors import (
    AgentConnectionError,
    channel_failed,
    closed_by_agent,
    receive_failed,
    timed_out,
)

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
                raise channel_failed(self.address, "send", exc) from None
            view = view[sent:]

    def recv(self, deadline: float) -> bytes:
        while True:
            self._wait(select.POLLIN, deadline, "waiting for a reply")
            try:
                data = self.sock.recv(RECV_SIZE)
            except BlockingIOError:
                continue
            except OSError as exc:
                raise receive_failed(self.address, exc) from None
            if not data:
                raise closed_by_agent(self.address)
            return data

    def _wait(self, events: int, deadline: float, doing: str) -> None:
        poller = select.poll()
        poller.register(self.sock, events)
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not poller.poll(remaining * 1000):
            raise timed_out(self.address, doing)

    def close(self) -> None:
        self.sock.close()


class SerialTransport:
    """A serial line (a host pty from ``-serial pty``, a real line) or any pyserial URL
    (``socket://``, ``rfc2217://``).  No connection to speak of: resync is what makes it safe."""

    def __init__(self, port: serial.Serial, address: str) -> None:
        self.port = port
        self.address = address

    def send(self, data: bytes, deadline: float) -> None:
        self.port.write_timeout = max(0.0, deadline - time.monotonic())
        try:
            self.port.write(data)
            self.port.flush()
        except serial.SerialTimeoutException:
            raise timed_out(self.address, "sending") from None
        except (serial.SerialException, OSError) as exc:
            raise channel_failed(self.address, "send", exc) from None

    def recv(self, deadline: float) -> bytes:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise timed_out(self.address, "waiting for a reply")
            self.port.timeout = min(remaining, 0.5)
            try:
                data = self.port.read(max(1, self.port.in_waiting))
            except (serial.SerialException, OSError) as exc:
                raise receive_failed(self.address, exc) from None
            if data:
                return bytes(data) + bytes(self.port.read(self.port.in_waiting))

    def close(self) -> None:
        self.port.close()


def parse_address(address: str) -> tuple[str, str]:
    """(scheme, rest): ``unix:PATH`` or a bare path, ``vsock:CID:PORT``, ``tcp:HOST:PORT``,
    ``serial:DEVICE[?baud=N]``, a pyserial URL such as ``socket://host:port``, or
    ``libvirt:URI?domain=NAME`` (checked first: a libvirt URI contains ``://`` too)."""
    if address.startswith("libvirt:"):
        return "libvirt", address[len("libvirt:"):]
    if "://" in address:
        return "url", address
    scheme, sep, rest = address.partition(":")
    if sep and scheme in ("unix", "vsock", "tcp", "serial"):
        return scheme, rest
    return "unix", address


def _connect(family: int, target: Any, address: str, timeout: float) -> Transport:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(target)
    except OSError as exc:
        sock.close()
        raise AgentConnectionError(f"cannot connect to {address}: {exc.strerror or exc}") from None
    return SocketTransport(sock, address)


def host_port(rest: str, address: str) -> tuple[str, int]:
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit():
        raise AgentConnectionError(f"{address}: expected HOST:PORT after the scheme")
    return host.strip("[]"), int(port)


def _open_serial(scheme: str, rest: str, address: str) -> Transport:
    try:
        if scheme == "url":
            port = serial.serial_for_url(rest, do_not_open=False, timeout=0.5)
        else:
            device, _, query = rest.partition("?")
            options = urllib.parse.parse_qs(query)
            baud = int(options.get("baud", ["38400"])[0])
            port = serial.Serial(device, baud, bytesize=8, parity="N", stopbits=1, timeout=0.5)
    except (serial.SerialException, ValueError, OSError) as exc:
        raise AgentConnectionError(f"cannot open {address}: {exc}") from None
    return SerialTransport(port, address)


def open_transport(address: str, timeout: float) -> Transport:
    """Open a channel to an agent by address; errors name the address and the reason."""
    scheme, rest = parse_address(address)
    if scheme == "libvirt":
        from pyqga.host_client.libvirt_transport import open_libvirt  # libvirt-python is optional

        return open_libvirt(address, timeout)
    if scheme == "unix":
        return _connect(socket.AF_UNIX, rest, f"unix:{rest}", timeout)
    if scheme == "tcp":
        host, port = host_port(rest, address)
        return _connect(socket.AF_INET6 if ":" in host else socket.AF_INET, (host, port), address, timeout)
    if scheme == "vsock":
        cid, port = host_port(rest, address)
        if not cid.isdigit():
            raise AgentConnectionError(f"{address}: expected vsock:CID:PORT with a numeric CID")
        if not hasattr(socket, "AF_VSOCK"):
            raise AgentConnectionError(f"{address}: this Python has no AF_VSOCK support")
        return _connect(socket.AF_VSOCK, (int(cid), port), address, timeout)
    return _open_serial(scheme, rest, address)
