"""A virtio-serial session whose host's first request arrives before the port shows the host
(agent/channels.py, :data:`~pyqga.agent.channels.CONNECT_GRACE`), over a fake port.

Linux's virtio_console hands a host's data to the reader at once but learns that the host
connected from a control message handled later, in a workqueue.  Meanwhile the port reads the
request, then EOF, and refuses writes (EAGAIN).  Here one end of a ``SOCK_SEQPACKET`` socketpair
is the agent's device fd, the other is the guest kernel: a zero-length datagram reads as EOF, as
a port with no host does, and while the kernel's end holds a full queue of filler the agent's
writes get EAGAIN; draining it is the kernel catching up (the port becomes writable, SIGIO).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from pyqga.agent import channels
from pyqga.agent.channels import DeviceChannel, StreamProtocol
from pyqga.agent.config import Config

FILLER = b"-"


class FakePort(DeviceChannel):
    """A virtio-serial channel whose device is the agent's end of a socketpair."""

    def __init__(self) -> None:
        super().__init__(Config(method="virtio-serial", path="/dev/virtio-ports/fake"),
                         logging.getLogger("test-device-channel"))
        agent, self.kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        agent.setblocking(False)
        self.kernel.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while True:
                agent.send(FILLER)  # no host: the agent's writes get EAGAIN
        self.kernel.send(b"")       # and its first read is EOF
        self.fd = agent.detach()    # the channel closes it
        self.got: list[bytes] = []

    def open(self) -> int:
        return self.fd

    def catch_up(self) -> None:
        """The kernel has handled the host's PORT_OPEN: the port takes the agent's writes.  What
        the agent wrote (filler aside) is kept in ``got``."""
        with contextlib.suppress(BlockingIOError):
            while True:
                data = self.kernel.recv(65536)
                if data != FILLER:
                    self.got.append(data)

    async def replies(self, timeout: float, wanted: int = 0) -> list[bytes]:
        """What the agent sent (filler aside): once there are ``wanted`` replies, or after
        ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self.catch_up()
        while (not wanted or len(self.got) < wanted) and loop.time() < deadline:
            await asyncio.sleep(0.01)
            self.catch_up()
        return self.got


class Lines(StreamProtocol):
    """Answers each line with ``reply:`` + it, ``delay`` seconds later if set (a request worked on
    elsewhere, its reply written after the EOF was read); a line's start waits for its end."""

    def __init__(self, delay: float, ended: list[bool]) -> None:
        self.delay = delay
        self.ended = ended
        self.partial = b""
        self.owed = 0
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        *lines, self.partial = (self.partial + data).split(b"\n")
        for line in lines:
            if self.delay:
                self.owed += 1
                asyncio.get_running_loop().call_later(self.delay, self.answer, b"reply:" + line)
            else:
                self.transport.write(b"reply:" + line)

    def answer(self, reply: bytes) -> None:
        self.owed -= 1
        self.transport.write(reply)

    def owes_replies(self) -> bool:
        return self.owed > 0

    def connection_lost(self, exc: Exception | None) -> None:
        self.ended.append(True)


@contextlib.asynccontextmanager
async def serving(port: FakePort, delay: float = 0.0) -> AsyncIterator[list[bool]]:
    """The channel served (its first session has read the EOF and ended); yields the list each
    ended session appends to."""
    ended: list[bool] = []
    stop = asyncio.Event()
    factory: Callable[[], StreamProtocol] = lambda: Lines(delay, ended)  # noqa: E731
    task = asyncio.ensure_future(port.serve(factory, stop))
    while not ended:
        await asyncio.sleep(0.01)
    try:
        yield ended
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
        port.kernel.close()


@pytest.mark.parametrize("delay", [0.0, 0.2], ids=["answered-at-once", "answered-after-the-eof"])
def test_a_request_read_before_the_port_shows_the_host_is_answered(delay: float) -> None:
    async def main() -> None:
        port = FakePort()
        async with serving(port, delay):
            port.kernel.send(b"ping\n")  # the host's request, before the port knows the host
            port.kernel.send(b"")         # so the next read is EOF
            await asyncio.sleep(0.3)
            port.catch_up()
            assert await port.replies(2.0, wanted=1) == [b"reply:ping"]

    asyncio.run(main())


def test_a_host_that_sent_and_left_unseen_is_given_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """It sent, and the port never showed it: the session ends after the grace, its reply with
    it (a later host gets none)."""
    monkeypatch.setattr(channels, "CONNECT_GRACE", 0.3)

    async def main() -> None:
        port = FakePort()
        async with serving(port) as ended:
            sessions = len(ended)
            port.kernel.send(b"ping\n")
            port.kernel.shutdown(socket.SHUT_WR)  # the port never shows this host: EOF from now on
            await asyncio.sleep(0.6)
            assert len(ended) > sessions, "the session did not end after CONNECT_GRACE"
            assert await port.replies(0.3) == [], "the reply outlived the session"

    asyncio.run(main())


def test_half_a_message_from_a_host_the_port_never_showed_is_not_inherited() -> None:
    """Nothing owed at that EOF: the session ends, and the next host starts a fresh one (the
    next host may be another one: this one may have sent and left)."""

    async def main() -> None:
        port = FakePort()
        async with serving(port):
            port.kernel.send(b'{"execute":"guest-sy')
            port.kernel.send(b"")
            await asyncio.sleep(0.3)
            port.catch_up()
            port.kernel.send(b"ping\n")  # the next host's request
            assert await port.replies(2.0, wanted=1) == [b"reply:ping"]

    asyncio.run(main())
