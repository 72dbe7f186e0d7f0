"""Ctrl-C in the ``pyqga`` command line: one line on stderr, the guest thawed, exit status 130.

The first Ctrl-C raises :class:`KeyboardInterrupt` where the verb is; every later one is
ignored, so the thaw that follows cannot itself be interrupted half-way (it is bounded by its
own timeout).  A verb that froze or stalls the guest runs inside :func:`thaw_on_interrupt`, which
thaws and turns the interrupt into :class:`Interrupted`, whose text is the line to print; one
that holds another fault runs inside :func:`on_interrupt` with its own cleanup (a revert).
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from types import FrameType

from pyqga.host_client.client import AgentClient
from pyqga.host_client.errors import AgentClientError

EXIT_INTERRUPTED = 130   # 128 + SIGINT, as shells report it
THAW_TIMEOUT = 30.0


class Interrupted(Exception):
    """Ctrl-C, after the cleanup; ``str()`` says what became of the guest."""


def _interrupt_once(signum: int, frame: FrameType | None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def install() -> None:
    """From now on, the first Ctrl-C interrupts and later ones are ignored (main thread only)."""
    signal.signal(signal.SIGINT, _interrupt_once)


@contextmanager
def on_interrupt(cleanup: Callable[[], str]) -> Iterator[None]:
    """Run ``cleanup`` (with later Ctrl-Cs ignored) if the body is interrupted; raise
    :class:`Interrupted` with the line it returns, saying how it went."""
    try:
        yield
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise Interrupted(cleanup()) from None


def thaw_on_interrupt(client: AgentClient) -> AbstractContextManager[None]:
    """Thaw the guest if the body is interrupted; raise :class:`Interrupted` saying how it went."""
    return on_interrupt(lambda: thaw_after_interrupt(client))


def thaw_after_interrupt(client: AgentClient) -> str:
    """Thaw everything (the library may have thawed already; a second thaw is harmless)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The interrupted call may have left half an exchange on the channel: resync first.
    client.session.needs_resync = not client.session.synchronised
    try:
        client.thaw(call_timeout=THAW_TIMEOUT)
    except AgentClientError as exc:
        return f"interrupted; the guest at {client.address} may still be frozen: the thaw failed: {exc}"
    return f"interrupted; the guest at {client.address} is thawed"
