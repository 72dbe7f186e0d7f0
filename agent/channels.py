"""The channels the agent serves: listening sockets, and character devices with no connections.

- ``unix-listen`` and ``vsock-listen`` (and a socket handed over by systemd, ``LISTEN_FDS``):
  many clients, each its own connection and decoder.
- ``virtio-serial``: a character device that is not a TTY.  While no host is connected, reads
  return EOF and poll reports HUP continuously; we end the session, keep the device open, wait
  for the port's SIGIO (a host connected) instead of spinning, and start a fresh session (fresh
  decoder) then: a host that reconnects must not inherit half a message from its predecessor.
  A host's first bytes can arrive before the port says it is connected (see
  :data:`CONNECT_GRACE`): such a session, at that EOF, still delivers the replies it owes.
- ``isa-serial``: a real TTY, put in raw 8N1 by pyserial; one endless session, so hosts resync
  with 0xFF as they always do on a serial line.

A session on a device is driven by :class:`DeviceTransport`, a small asyncio transport over a
non-blocking fd, so the same :class:`~pyqga.agent.server.AgentConnection` serves every channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import importlib
import os
import signal
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pyqga.agent.config import Config
from pyqga.agent.errors import AgentFailure

if TYPE_CHECKING:
    import serial

# While no host is connected, a virtio-serial port reads as EOF at once.  qemu-ga polls it every
# 0.1 s (~590 wake-ups a minute in the test guest); we wait for the kernel's SIGIO on the port
# (sent when a host connects and when data arrives) with no timeout, so an idle agent never
# wakes.  Only where SIGIO cannot be had (the loop is not on the main thread) do we poll.
HUP_BACKOFF = 0.1
# Linux's virtio_console learns that a host connected from a control message it handles in a
# workqueue, later, but takes the host's data in the interrupt handler at once and sends SIGIO
# (drivers/char/virtio_console.c: control_intr schedules control_work; in_intr).  So an agent
# woken by a host's first request can read it while the port still says "no host": the reply
# gets EAGAIN and the next read EOF.  Ending the session there dropped the reply (and any still
# being worked on), and the host waited in vain: about one first reply in ten after an idle
# minute in the TCG test guest (QEMU showed the host connected, the request delivered, no reply
# written; qemu-ga loses none: it retries a refused write, spinning, until the port takes it).
# So at an EOF in a session whose host has only shown itself by sending, the session's input
# ends (the next host gets a fresh decoder: it may be another host, after this one sent and
# left) but the replies it owes are delivered once the port takes them, for up to this long.
CONNECT_GRACE = 5.0
RETRY_INTERVAL = 1.0       # seconds between attempts to open a missing device (-r)
READ_SIZE = 65536
WRITE_HIGH_WATER = 1 << 20
WRITE_LOW_WATER = 256 << 10
SERIAL_BAUDRATE = 38400    # qemu-ga's default for isa-serial
VMADDR_CID_ANY = 0xFFFFFFFF
SD_LISTEN_FDS_START = 3
# The kernel's queue of connections not yet accepted: as long as the system allows
# (net.core.somaxconn caps it, 4096 by default).  A burst that finds it full is refused by the
# kernel with EAGAIN, which a non-blocking client (asyncio's, AsyncAgentClient's) reads as
# "connected" and then loses, with no trace in the agent; a client the agent refuses itself
# (server.ConnectionLimit) is closed at once with a log line.  So the queue must never be the
# limit: it holds any burst the loop is too busy to accept at once (at start-up, under a flood),
# at least MAX_CONNECTIONS (128), and the connection cap decides.
LISTEN_BACKLOG = socket.SOMAXCONN



class StreamProtocol(asyncio.BufferedProtocol):
    """What a channel serves: a buffered protocol (sockets read into its buffer) that also takes
    bytes handed over whole (:class:`DeviceTransport` reads a device and calls
    :meth:`data_received`).  The agent's connection is one."""

    def data_received(self, data: bytes) -> None:
        raise NotImplementedError

    def owes_replies(self) -> bool:
        """Requests received and not answered yet (their replies are still to be written)."""
        return False


ProtocolFactory = Callable[[], StreamProtocol]


class ChannelError(AgentFailure):
    """The channel cannot be opened; the message names it and says why."""


class DeviceTransport(asyncio.Transport):
    """One host session over a non-blocking character device fd; ends at EOF or an error.

    ``grace`` (virtio-serial): at an EOF that comes after the host's data but before the port
    has shown the host connected (a read that would block, a write that went through), a
    session that owes replies *drains* instead of ending: its input is over, its fd out of the
    loop (poll reports HUP all the while), and what it owes is written as the port takes it,
    tried on :meth:`recheck` (the port's SIGIO) and every :data:`HUP_BACKOFF`, until nothing is
    owed or ``grace`` seconds have passed."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int, protocol: StreamProtocol,
                 on_end: Callable[[Exception | None], None], grace: float = 0.0) -> None:
        super().__init__()
        self._loop, self._fd, self._protocol, self._on_end = loop, fd, protocol, on_end
        self._buffer = bytearray()
        self._reading = True
        self._closing = False
        self._protocol_paused = False
        self._received = False   # a host sent something in this session
        self._host_seen = False  # the port showed a host: a read would block, a write went through
        self._grace = grace
        self._drain_until: float | None = None
        self._recheck_timer: asyncio.TimerHandle | None = None
        protocol.connection_made(self)
        loop.add_reader(fd, self._read_ready)

    def _read_ready(self) -> None:
        try:
            data = os.read(self._fd, READ_SIZE)
        except BlockingIOError:
            self._host_seen = True
            return
        except InterruptedError:
            return
        except OSError as exc:
            self._end(exc)
            return
        if data:
            self._received = True
            self._protocol.data_received(data)
        elif self._received and not self._host_seen and self._grace > 0 and self._owed():
            self._drain()  # virtio-serial: the host's data came before the port knew of the host
        else:
            self._end(None)  # virtio-serial: the host is not connected (any more)

    def _owed(self) -> bool:
        return bool(self._buffer) or self._protocol.owes_replies()

    def _drain(self) -> None:
        self._drain_until = self._loop.time() + self._grace
        self._loop.remove_reader(self._fd)
        self._loop.remove_writer(self._fd)
        self._recheck_timer = self._loop.call_later(HUP_BACKOFF, self.recheck)

    def recheck(self) -> None:
        """Draining: write what the port takes now; end once nothing is owed or the grace is
        over.  (Called on the port's SIGIO, and every :data:`HUP_BACKOFF`.)"""
        if self._drain_until is None or self._closing:
            return
        if self._recheck_timer is not None:
            self._recheck_timer.cancel()
        if self._buffer:
            try:
                self._wrote(os.write(self._fd, self._buffer))
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as exc:
                self._end(exc)
                return
        left = self._drain_until - self._loop.time()
        if not self._owed() or left <= 0:
            self._end(None)  # delivered, or the host sent and left before the port showed it
        else:
            self._recheck_timer = self._loop.call_later(min(HUP_BACKOFF, left), self.recheck)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or not data:
            return
        if not self._buffer:
            try:
                written = os.write(self._fd, data)
            except (BlockingIOError, InterruptedError):
                written = 0
            except OSError as exc:
                self._end(exc)
                return
            if written:
                self._host_seen = True
            data = memoryview(data)[written:]
            if not data:
                return
            if self._drain_until is None:
                self._loop.add_writer(self._fd, self._write_ready)
        self._buffer += data
        if len(self._buffer) > WRITE_HIGH_WATER and not self._protocol_paused:
            self._protocol_paused = True
            self._protocol.pause_writing()

    def _write_ready(self) -> None:
        try:
            written = os.write(self._fd, self._buffer)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._end(exc)
            return
        self._wrote(written)
        if not self._buffer:
            self._loop.remove_writer(self._fd)

    def _wrote(self, written: int) -> None:
        if written:
            self._host_seen = True
        del self._buffer[:written]
        if self._protocol_paused and len(self._buffer) <= WRITE_LOW_WATER:
            self._protocol_paused = False
            self._protocol.resume_writing()

    def pause_reading(self) -> None:
        if self._reading and not self._closing:
            self._loop.remove_reader(self._fd)
            self._reading = False

    def resume_reading(self) -> None:
        if not self._reading and not self._closing:
            if self._drain_until is None:
                self._loop.add_reader(self._fd, self._read_ready)
            self._reading = True

    def is_reading(self) -> bool:
        return self._reading and not self._closing and self._drain_until is None

    def is_closing(self) -> bool:
        return self._closing

    def get_write_buffer_size(self) -> int:
        return len(self._buffer)

    def close(self) -> None:
        self._end(None)

    def abort(self) -> None:
        self._end(None)

    def _end(self, exc: Exception | None) -> None:
        if self._closing:
            return
        self._closing = True
        if self._recheck_timer is not None:
            self._recheck_timer.cancel()
        self._loop.remove_reader(self._fd)
        self._loop.remove_writer(self._fd)
        self._buffer.clear()
        self._protocol.connection_lost(exc)
        self._on_end(exc)


class DeviceChannel:
    """virtio-serial or isa-serial: sessions over one device fd, reopened only on errors."""

    def __init__(self, config: Config, log: Any) -> None:
        self.method: str = config.method
        self.path: str = config.channel_path
        self.retry: bool = config.retry_path
        self.log = log
        # pyserial only for isa-serial (~0.5 MB the other channels do not pay), imported here, at
        # start-up: open() runs again after an error, maybe while a filesystem is frozen.
        self._pyserial: Any = importlib.import_module("serial") if self.method == "isa-serial" else None
        self._serial: serial.Serial | None = None

    def open(self) -> int:
        pyserial = self._pyserial
        try:
            if pyserial is not None:
                self._serial = pyserial.Serial(self.path, SERIAL_BAUDRATE, bytesize=8, parity="N",
                                               stopbits=1, timeout=0)
                return self._serial.fileno()
            return os.open(self.path, os.O_RDWR | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        except OSError as exc:  # pyserial's SerialException is one
            hint = ""
            if self.method == "virtio-serial":
                hint = " (does the VM have a virtio-serial port with that name? -r waits for it)"
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise ChannelError(f"cannot open {self.method} channel {self.path}: {reason}{hint}") from None

    def close(self, fd: int) -> None:
        if self._serial is not None:
            self._serial.close()
            self._serial = None
        else:
            with contextlib.suppress(OSError):
                os.close(fd)

    async def _open_waiting(self, stop: asyncio.Event) -> int | None:
        warned = False
        while not stop.is_set():
            try:
                return self.open()
            except ChannelError as exc:
                if not self.retry:
                    raise
                if not warned:
                    self.log.warning("%s; retrying every %g s", exc, RETRY_INTERVAL)
                    warned = True
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), RETRY_INTERVAL)
        return None

    async def serve(self, factory: ProtocolFactory, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                fd = await self._open_waiting(stop)
                if fd is None:
                    return
                self.log.info("serving %s on %s", self.method, self.path)
                try:
                    error = await self._sessions(loop, fd, factory, stopping)
                finally:
                    self.close(fd)
                if error is None:
                    return
                if not self.retry:
                    raise ChannelError(f"{self.method} channel {self.path} failed: {error}")
                self.log.warning("%s channel %s failed (%s); reopening", self.method, self.path, error)
        finally:
            stopping.cancel()

    async def _sessions(self, loop: asyncio.AbstractEventLoop, fd: int, factory: ProtocolFactory,
                        stopping: asyncio.Future[Any]) -> Exception | None:
        """Run sessions until stop (None) or a device error (returned, to reopen)."""
        host_changed = asyncio.Event()
        current: list[DeviceTransport] = []

        def on_sigio() -> None:
            host_changed.set()
            for transport in current:
                transport.recheck()

        notified = self.method == "virtio-serial" and _notify_on_sigio(loop, fd, on_sigio)
        grace = CONNECT_GRACE if self.method == "virtio-serial" else 0.0
        try:
            while not stopping.done():
                ended: asyncio.Future[Exception | None] = loop.create_future()

                def on_end(exc: Exception | None, ended: asyncio.Future[Exception | None] = ended) -> None:
                    if not ended.done():
                        ended.set_result(exc)

                host_changed.clear()
                transport = DeviceTransport(loop, fd, factory(), on_end, grace)
                current[:] = [transport]
                await asyncio.wait({ended, stopping}, return_when=asyncio.FIRST_COMPLETED)
                current.clear()
                transport.close()
                error = ended.result() if ended.done() else None
                if error is not None and not _is_hangup(error):
                    return error
                # Host absent: don't spin.  Wait for its SIGIO (set since the clear() above if it
                # connected meanwhile, so none is missed), or poll without one.
                if not stopping.done() and not host_changed.is_set():
                    waiter = asyncio.ensure_future(host_changed.wait())
                    await asyncio.wait({stopping, waiter}, timeout=None if notified else HUP_BACKOFF,
                                       return_when=asyncio.FIRST_COMPLETED)
                    waiter.cancel()
        finally:
            if notified:
                _stop_sigio(loop, fd)
        return None


def _notify_on_sigio(loop: asyncio.AbstractEventLoop, fd: int, callback: Callable[[], None]) -> bool:
    """Ask the kernel for SIGIO on ``fd`` (virtio-serial sends it when the host connects and when
    data arrives).  The handler goes in before O_ASYNC: SIGIO's default action kills.  False if
    this loop cannot take signals (not the main thread); the wait then stays at HUP_BACKOFF."""
    try:
        loop.add_signal_handler(signal.SIGIO, callback)
    except (RuntimeError, ValueError):
        return False
    try:
        fcntl.fcntl(fd, fcntl.F_SETOWN, os.getpid())
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_ASYNC)
    except OSError:
        loop.remove_signal_handler(signal.SIGIO)
        return False
    return True


def _stop_sigio(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    """O_ASYNC off before the handler goes (the fd may be closed already: then no more SIGIO),
    and SIGIO ignored rather than back at its default, which would kill us for a late one."""
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_ASYNC)
    loop.remove_signal_handler(signal.SIGIO)
    signal.signal(signal.SIGIO, signal.SIG_IGN)


def _is_hangup(exc: Exception) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.EPIPE, errno.ECONNRESET, errno.EIO)


ACCEPT_BATCH = 16


class _FixedBacklog(socket.socket):
    """A listening socket whose queue length asyncio cannot change.  ``create_server``'s
    ``backlog`` is both its accept batch and the ``listen()`` it calls on the socket: the batch
    should be small, the kernel's queue must not be (:data:`LISTEN_BACKLOG`)."""

    def listen(self, backlog: int = 0, /) -> None:
        """Already listening with :data:`LISTEN_BACKLOG` (or systemd's ``Backlog=``)."""


class ListenerChannel:
    """unix-listen, vsock-listen or a systemd-activated socket: one connection per client."""

    def __init__(self, sock: socket.socket, description: str, cleanup: Callable[[], None]) -> None:
        self.sock = sock
        self.description = description
        self.cleanup = cleanup

    async def serve(self, factory: ProtocolFactory, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        # asyncio accepts up to `backlog` clients per loop turn, and a client counts against the
        # connection cap until its EOF is read a few turns later: a small batch keeps a
        # connect-and-close flood from filling the cap (the rest wait in the kernel's queue,
        # whose length the listen() at bind set and asyncio must not shrink to the batch).
        sock = _FixedBacklog(self.sock.family, self.sock.type, self.sock.proto, fileno=self.sock.detach())
        self.sock = sock
        server = await loop.create_server(factory, sock=sock, backlog=ACCEPT_BATCH)
        try:
            await stop.wait()
        finally:
            server.close()
            self.cleanup()


def bind_unix_socket(path: str) -> socket.socket:
    """A listening socket at ``path``, mode 0600 from the start (never world-connectable)."""
    if os.path.exists(path):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # a stale socket left by an agent that died
        else:
            raise ChannelError(f"{path} is in use by a running agent; stop it or choose another -p")
        finally:
            probe.close()
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        raise ChannelError(f"cannot listen on {path}: directory {directory} does not exist")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        sock.bind(path)
    except OSError as exc:
        sock.close()
        hint = " (path longer than 107 bytes?)" if exc.errno == errno.EINVAL else ""
        raise ChannelError(f"cannot listen on {path}: {exc.strerror}{hint}") from None
    finally:
        os.umask(old_umask)
    sock.listen(LISTEN_BACKLOG)
    return sock


def parse_vsock_address(text: str) -> tuple[int, int]:
    """``CID:PORT``; CID -1 means any (VMADDR_CID_ANY)."""
    cid_text, sep, port_text = text.partition(":")
    try:
        if not sep:
            raise ValueError
        cid, port = int(cid_text), int(port_text)
    except ValueError:
        raise ChannelError(f"vsock address must be CID:PORT (CID -1 for any), not {text!r}") from None
    return (VMADDR_CID_ANY if cid == -1 else cid), port


def bind_vsock(text: str) -> socket.socket:
    cid, port = parse_vsock_address(text)
    if not hasattr(socket, "AF_VSOCK"):
        raise ChannelError("this Python has no AF_VSOCK support")
    try:
        sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
    except OSError as exc:
        raise ChannelError(
            f"cannot create a vsock socket: {exc.strerror} (is the vsock module loaded?)"
        ) from None
    try:
        sock.bind((cid, port))
        sock.listen(LISTEN_BACKLOG)
    except OSError as exc:
        sock.close()
        raise ChannelError(f"cannot listen on vsock {text}: {exc.strerror}") from None
    return sock


def activated_socket() -> socket.socket | None:
    """The socket systemd passed us (``LISTEN_FDS``), if it is meant for this process."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()) or int(os.environ.get("LISTEN_FDS", "0")) < 1:
        return None
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)  # not for our children
    os.set_inheritable(SD_LISTEN_FDS_START, False)
    return socket.socket(fileno=SD_LISTEN_FDS_START)


Channel = DeviceChannel | ListenerChannel


def open_channel(config: Config, log: Any) -> Channel:
    """The channel ``config`` names, opened where opening can fail early (listeners)."""
    activated = activated_socket()
    if activated is not None:
        return ListenerChannel(activated, "a socket from systemd", lambda: None)
    if config.method == "unix-listen":
        path = config.channel_path
        sock = bind_unix_socket(path)

        def remove_socket() -> None:
            with contextlib.suppress(OSError):
                os.unlink(path)

        return ListenerChannel(sock, f"unix-listen {path}", remove_socket)
    if config.method == "vsock-listen":
        return ListenerChannel(bind_vsock(config.channel_path), f"vsock-listen {config.channel_path}",
                               lambda: None)
    return DeviceChannel(config, log)
