"""What fault-injection harnesses do to a guest: stall its disks, run commands, move files.

Operations over a :class:`~pyqga.host_client.session.Session` (generators that yield their I/O),
which :class:`~pyqga.host_client.client.AgentClient` and :class:`~pyqga.host_client.aio.AsyncAgentClient`
expose as methods, so a pytest test needs no glue::

    with client.stall(["/data"], seconds=5) as stall:   # /data blocks writers for 5 s
        ...                                             # the test's own checks meanwhile
    print(stall.result.actual)                          # as the agent measured it
    result = client.exec(["sh", "-c", "echo hi"], kill_after=10, check=True)
    client.write_file("/tmp/x", b"bytes"); client.read_file("/tmp/x")

A stall is a freeze with the agent's auto-thaw deadline set to its duration, so it ends on
time even if the host process dies mid-stall.  An agent without auto-thaw (qemu-ga) gets a
plain freeze-list that this process thaws when the time is up (and a warning that a host dying
meanwhile leaves the guest frozen).
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pyqga.host_client.errors import AgentClientError, ExecFailed
from pyqga.host_client.session import Op, Session, Sleep

FILE_CHUNK = 1 << 20          # bytes per guest-file-read/write request
POLL_FIRST, POLL_MAX = 0.01, 0.25
THAW_GRACE = 5.0              # how long past a stall's deadline we wait for the agent's thaw


@dataclass(frozen=True)
class ExecResult:
    exitcode: int | None
    signal: int | None
    stdout: bytes
    stderr: bytes
    stdout_truncated: bool = False
    stderr_truncated: bool = False

    @property
    def ok(self) -> bool:
        return self.exitcode == 0


@dataclass(frozen=True)
class StallResult:
    """One stall as the agent measured it: planned and actual frozen seconds, how it ended."""

    mountpoints: tuple[str, ...]
    count: int
    epoch: int | None
    planned: float
    actual: float | None
    reason: str | None


class StallHandle:
    """Yielded by the clients' ``stall()``; ``result`` is set when the stall is over."""

    def __init__(self, mountpoints: Sequence[str], planned: float, epoch: int | None, count: int) -> None:
        self.mountpoints: tuple[str, ...] = tuple(mountpoints)
        self.planned: float = planned
        self.epoch: int | None = epoch
        self.count: int = count
        self.result: StallResult | None = None


def stall_begin(session: Session, mountpoints: Sequence[str],
                seconds: float) -> Op[tuple[StallHandle, dict[str, Any], float]]:
    """Freeze ``mountpoints`` for ``seconds``: with the agent's auto-thaw deadline where it has
    one, else plainly (the driver then thaws when the time is up).  Thawed again if anything
    fails on the way.  The handle, the freeze info and the monotonic start."""
    if seconds <= 0:
        raise ValueError("a stall must last a positive number of seconds")
    caps = yield from session.capabilities()
    count = yield from session.send_freeze(list(mountpoints), seconds if caps.auto_thaw else None,
                                           max(60.0, seconds))
    started = time.monotonic()
    try:
        info = (yield from session.call("guest-fsfreeze-info")) if caps.auto_thaw else {}
    except BaseException as exc:
        yield from session.thaw_after_failure(exc)
        raise
    return StallHandle(mountpoints, seconds, info.get("epoch") if count and caps.auto_thaw else None,
                       count), info, started


def stall_end(session: Session, handle: StallHandle, info: Mapping[str, Any], started: float,
              progress: Callable[[float], None] | None) -> Op[StallResult]:
    """Wait for the stall's end as the agent measures it, or end it here where it cannot."""
    caps = yield from session.capabilities()
    if caps.auto_thaw:
        return (yield from _await_stall_end(session, handle, info, progress))
    return (yield from _end_stall_from_host(session, handle, started, progress))


def stall_abort(session: Session, handle: StallHandle, failure: BaseException) -> Op[None]:
    """The caller's body raised during the stall: thaw now."""
    if handle.count:
        yield from session.thaw_after_failure(failure)


def _await_stall_end(session: Session, handle: StallHandle, info: Mapping[str, Any],
                     progress: Callable[[float], None] | None) -> Op[StallResult]:
    if handle.epoch is None:  # nothing could be frozen (tmpfs...): nothing to wait for
        return StallResult(handle.mountpoints, 0, None, handle.planned, 0.0, None)
    frozen_at = float(info.get("frozen-at") or time.time())
    give_up = time.monotonic() + handle.planned + THAW_GRACE + max(0.0, frozen_at - time.time())
    while True:
        now = yield from session.call("guest-fsfreeze-info")
        last = now.get("last-thaw") or {}
        over = now.get("status") == "thawed" or now.get("epoch") != handle.epoch
        if over and not now.get("in-progress"):
            if last.get("epoch") == handle.epoch:
                return StallResult(handle.mountpoints, handle.count, handle.epoch, handle.planned,
                                   float(last["at"]) - frozen_at, last.get("reason"))
            return StallResult(handle.mountpoints, handle.count, handle.epoch, handle.planned,
                               None, "unknown")
        if progress is not None:
            progress(time.time() - frozen_at)
        if time.monotonic() > give_up:
            yield from session.call("guest-fsfreeze-thaw", None, 60.0)
            raise AgentClientError(f"the agent did not end the {handle.planned:g} s stall on time; "
                                   "thawed it from the host")
        yield Sleep(min(0.1, max(0.01, float(now.get("deadline") or 0) - time.time())))


def _end_stall_from_host(session: Session, handle: StallHandle, started: float,
                         progress: Callable[[float], None] | None) -> Op[StallResult]:
    """The agent cannot thaw by itself: wait out the stall here, then thaw."""
    if handle.count:
        end = started + handle.planned
        while (left := end - time.monotonic()) > 0:
            if progress is not None:
                progress(time.monotonic() - started)
            yield Sleep(min(0.1, left))
        yield from session.call("guest-fsfreeze-thaw", None, 60.0)
    actual = time.monotonic() - started if handle.count else 0.0
    return StallResult(handle.mountpoints, handle.count, None, handle.planned, actual,
                       "host" if handle.count else None)


def exec_op(session: Session, argv: Sequence[str], *, kill_after: float | None = None,
            check: bool = False, input: bytes | None = None, env: Mapping[str, str] | None = None,
            capture: bool = True) -> Op[ExecResult]:
    """Run ``argv`` in the guest and wait for it.  ``kill_after``: the agent kills its process
    group when that many seconds pass (guest-exec's ``timeout``; the result then has ``signal``
    9).  ``check``: raise :class:`ExecFailed` unless the program exited with status 0, as
    ``subprocess.run(check=True)`` does."""
    if not argv:
        raise ValueError("exec needs a program to run")
    params: dict[str, Any] = {"path": argv[0], "arg": list(argv[1:]), "capture-output": capture}
    if input is not None:
        params["input-data"] = base64.b64encode(input).decode()
    if env is not None:
        params["env"] = [f"{key}={value}" for key, value in env.items()]
    if kill_after is not None:
        params["timeout"] = kill_after
    pid = (yield from session.call("guest-exec", params))["pid"]
    deadline = None if kill_after is None else time.monotonic() + kill_after + 30.0
    delay = POLL_FIRST
    while True:
        status = yield from session.call("guest-exec-status", {"pid": pid})
        if status.get("exited"):
            result = ExecResult(
                status.get("exitcode"), status.get("signal"),
                base64.b64decode(status.get("out-data", "")),
                base64.b64decode(status.get("err-data", "")),
                bool(status.get("out-truncated")), bool(status.get("err-truncated")),
            )
            if check and not result.ok:
                raise ExecFailed(tuple(argv), result, address=session.address)
            return result
        if deadline is not None and time.monotonic() > deadline:
            raise AgentClientError(f"{argv[0]} (pid {pid}) still runs {kill_after:g} s + 30 s later")
        yield Sleep(delay)
        delay = min(POLL_MAX, delay * 2)


def read_file_op(session: Session, path: str) -> Op[bytes]:
    handle = yield from session.call("guest-file-open", {"path": path, "mode": "rb"})
    try:
        parts = []
        while True:
            chunk = yield from session.call("guest-file-read", {"handle": handle, "count": FILE_CHUNK})
            parts.append(base64.b64decode(chunk.get("buf-b64", "")))
            if chunk.get("eof") or not chunk.get("count"):
                return b"".join(parts)
    finally:
        yield from session.call("guest-file-close", {"handle": handle})


def write_file_op(session: Session, path: str, data: bytes, mode: str = "wb") -> Op[None]:
    handle = yield from session.call("guest-file-open", {"path": path, "mode": mode})
    try:
        for offset in range(0, len(data), FILE_CHUNK):
            chunk = data[offset:offset + FILE_CHUNK]
            yield from session.call("guest-file-write",
                                    {"handle": handle, "buf-b64": base64.b64encode(chunk).decode()})
        yield from session.call("guest-file-flush", {"handle": handle})
    finally:
        yield from session.call("guest-file-close", {"handle": handle})
