"""``guest-exec`` and ``guest-exec-status``: run a program in the guest, collect its end and output.

Shapes and error texts are qemu-ga's (``qga/commands.c``): ``guest-exec`` answers ``{pid}`` as soon
as the program has started (a program that cannot be started is an error of ``guest-exec`` itself);
``guest-exec-status {pid}`` answers ``{exited: false}`` until the program has ended and its output
pipes are drained, then once ``{exited: true, exitcode | signal, out-data?, err-data?,
out-truncated?, err-truncated?}`` (output base64, present only when non-empty, each then with
its truncated flag, as qemu-ga reports it since its 2025 fix; before, the flag was never true),
and forgets the pid: asking again is ``Invalid parameter 'pid'``, as for a pid it never started.

Each program gets a monitor thread that feeds its stdin, reads its output and reaps it, so
the connection loop never waits for a program, and no child stays a zombie while the agent
runs.  A program still running when the agent exits is left alone (qemu-ga does the same).

Worst cases, for untrusted requests: the agent holds at most ``--exec-output-limit`` bytes
(default 16 MiB, qemu-ga's cap) per stream per program, whatever the program writes; beyond
it output is read and dropped (the program is not blocked or killed, as in current qemu-ga)
and ``*-truncated`` is true.  ``input-data`` is held until written (at most one request, so
``--max-message-size``).  The table holds at most :data:`MAX_PROCESSES` programs, running or
with a status not yet collected: when full, the oldest uncollected status is dropped (hosts that
never ask are common), and only if all are still running does ``guest-exec`` fail.  The
final status reply briefly needs about 5 times the captured output (buffer, base64, JSON).

Where **we** differ from qemu-ga, deliberately:
- extension ``timeout`` (seconds): when it passes, SIGKILL goes to the program's whole process
  group, so its children die with it, and the status reports ``signal: 9``;
- the program runs in its own process group (qemu-ga's shares the agent's), for that kill;
- when the program has ended but a background child of it still holds the output pipes, the
  status says ``exited: true`` :data:`EXIT_DRAIN_GRACE` seconds later with the output so far
  (qemu-ga says ``exited: false`` until every holder of the pipes has closed them, maybe never);
- the table of programs is bounded (:data:`MAX_PROCESSES`, see above); qemu-ga's grows forever;
- an ``env`` entry must be ``KEY=VALUE`` (qemu-ga passes any string to execve).
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import selectors
import signal
import subprocess
import threading
import time
from typing import TYPE_CHECKING, Any

from pyqga.agent.commands.qbase64 import qbase64_decode
from pyqga.agent.registry import AnyValueParam, Command, Param
from pyqga.protocol.errors import AgentError, command_failed, invalid_params, quote

if TYPE_CHECKING:
    from pyqga.agent.state import AgentState

EXEC_IO_SIZE = 64 * 1024          # one read or write on a pipe
EXIT_DRAIN_GRACE = 1.0            # seconds the output may stay open after the program ended
MAX_PROCESSES = 1024              # running, or ended with a status nobody collected yet
REAP_POLL_INTERVAL = 0.05         # only where pidfd_open is missing (Linux < 5.3)
MAX_WAIT = 3600.0                 # longest single wait of a monitor thread, in seconds

# capture-output mode -> (capture stdout, capture stderr, stderr into stdout); qemu's
# GuestExecCaptureOutputMode, minus "interactive" (a vsock side channel we do not offer).
CAPTURE_MODES: dict[str, tuple[bool, bool, bool]] = {
    "none": (False, False, False),
    "stdout": (True, False, False),
    "stderr": (False, True, False),
    "separated": (True, True, False),
    "merged": (True, False, True),
}



def _os_string(name: str, value: str) -> str:
    """``value`` if execve can take it: no NUL, encodable (lone surrogates are not)."""
    if "\0" in value:
        raise invalid_params(f"Invalid parameter '{name}': it contains a NUL character")
    try:
        os.fsencode(value)
    except UnicodeEncodeError:
        raise invalid_params(f"Invalid parameter '{name}': it is not valid text for the OS") from None
    return value


def _string_list(name: str, values: list[Any]) -> list[str]:
    for index, value in enumerate(values):
        if not isinstance(value, str):
            raise invalid_params(f"Invalid parameter type for '{name}[{index}]', expected: string")
        _os_string(f"{name}[{index}]", value)
    return values


def _environment(entries: list[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for index, entry in enumerate(entries):
        key, sep, value = entry.partition("=")
        if not sep or not key:
            raise invalid_params(f"Invalid parameter 'env[{index}]': expected KEY=VALUE, "
                                 f"got {quote(repr(entry))}")
        env[key] = value
    return env


def capture_mode(value: Any) -> str:
    """qemu's GuestExecCaptureOutput: a bool (true = separated) or a mode name."""
    if value is None or value is False:
        return "none"
    if value is True:
        return "separated"
    if isinstance(value, str):
        if value not in CAPTURE_MODES:
            raise invalid_params(f"Parameter 'capture-output' does not accept value '{quote(value)}'")
        return value
    raise invalid_params("Invalid parameter type for 'capture-output', expected: GuestExecCaptureOutput")


class _Output:
    """One captured stream: a non-blocking pipe and a buffer that never passes ``limit``."""

    __slots__ = ("data", "fd", "limit", "truncated")

    def __init__(self, fd: int, limit: int) -> None:
        self.fd = fd
        self.limit = limit
        self.data = bytearray()
        self.truncated = False

    def read(self) -> bool:
        """Read what is there; False at end of file.  Beyond the limit, read and drop, so the
        program is never stopped by a full pipe and our memory stays bounded."""
        room = self.limit - len(self.data)
        try:
            chunk = os.read(self.fd, min(room, EXEC_IO_SIZE) if room > 0 else EXEC_IO_SIZE)
        except BlockingIOError:
            return True
        except OSError:
            return False
        if not chunk:
            return False
        if room > 0:
            self.data += chunk
        else:
            self.truncated = True
        return True


class ExecProcess:
    """One program: the monitor thread owns every fd here until ``finished`` is set; after
    that the fields are read-only, so ``guest-exec-status`` reads them without a lock.  (A
    plain class: a dataclass costs ~0.5 ms to define at every start of the agent.)"""

    popen: subprocess.Popen[bytes]
    outputs: dict[str, _Output]
    stdin_fd: int | None
    stdin_data: bytes
    deadline: float | None
    log: logging.Logger
    finished: threading.Event
    reaped: bool
    returncode: int | None
    timed_out: bool

    def __init__(self, popen: subprocess.Popen[bytes], outputs: dict[str, _Output],
                 stdin_fd: int | None = None, stdin_data: bytes = b"", deadline: float | None = None,
                 log: logging.Logger | None = None) -> None:
        self.popen = popen
        self.outputs = outputs                  # "out"/"err" -> capture
        self.stdin_fd = stdin_fd
        self.stdin_data = stdin_data
        self.deadline = deadline                # time.monotonic() of the timeout, if any
        self.log = log if log is not None else logging.getLogger("pyqga.agent")
        self.finished = threading.Event()
        self.reaped = False
        self.returncode = None                  # Popen's: negative = killed by that signal
        self.timed_out = False

    @property
    def pid(self) -> int:
        return self.popen.pid

    def start_monitor(self) -> None:
        threading.Thread(target=self._monitor, name=f"pyqga-exec-{self.pid}", daemon=True).start()

    def _monitor(self) -> None:
        try:
            self._run()
        except Exception:  # our bug: still reap, still report what we have
            self.log.exception("guest-exec monitor of pid %d failed", self.pid)
            self._reap(block=True)
        finally:
            for output in self.outputs.values():
                _close(output.fd)
            if self.stdin_fd is not None:
                _close(self.stdin_fd)
            self.stdin_data = b""
            self.finished.set()
            self.log.debug("guest-exec pid %d ended: %s", self.pid, self.returncode)

    def _run(self) -> None:
        try:
            pidfd: int | None = os.pidfd_open(self.pid)
        except (AttributeError, OSError):
            pidfd = None  # old kernel: poll for the exit instead
        selector = selectors.DefaultSelector()
        try:
            self._loop(selector, pidfd)
        finally:
            selector.close()
            if pidfd is not None:
                os.close(pidfd)

    def _loop(self, selector: selectors.BaseSelector, pidfd: int | None) -> None:
        if pidfd is not None:
            selector.register(pidfd, selectors.EVENT_READ, "exit")
        open_outputs = set()
        for output in self.outputs.values():
            selector.register(output.fd, selectors.EVENT_READ, output)
            open_outputs.add(output)
        written = 0
        if self.stdin_fd is not None:
            if self.stdin_data:
                selector.register(self.stdin_fd, selectors.EVENT_WRITE, "stdin")
            else:
                self._close_stdin(None)
        reaped_at: float | None = None
        while True:
            now = time.monotonic()
            if reaped_at is None:
                if self.deadline is not None and now >= self.deadline and not self.timed_out:
                    self._kill_group()
                wait: float | None = None
                if self.deadline is not None and not self.timed_out:
                    wait = self.deadline - now
                if pidfd is None:
                    wait = REAP_POLL_INTERVAL if wait is None else min(wait, REAP_POLL_INTERVAL)
                if wait is not None:
                    wait = min(wait, MAX_WAIT)  # epoll cannot wait "forever" in ms
            else:
                if not open_outputs:
                    return
                wait = reaped_at + EXIT_DRAIN_GRACE - now
                if wait <= 0:
                    return
            for key, _ in selector.select(wait):
                if key.data == "exit":
                    selector.unregister(key.fd)
                    self._reap(block=True)
                elif key.data == "stdin":
                    written = self._feed_stdin(selector, written)
                elif not key.data.read():
                    selector.unregister(key.fd)
                    open_outputs.discard(key.data)
            if pidfd is None and reaped_at is None:
                self._reap(block=False)
            if reaped_at is None and self.reaped:
                reaped_at = time.monotonic()

    def _feed_stdin(self, selector: selectors.BaseSelector, written: int) -> int:
        """Write the next piece of input-data; close stdin after the last (or if the program
        closed its end), so the program sees end of file, as with qemu-ga."""
        assert self.stdin_fd is not None
        try:
            written += os.write(self.stdin_fd, self.stdin_data[written:written + EXEC_IO_SIZE])
        except BlockingIOError:
            return written
        except OSError:  # EPIPE: nobody reads stdin any more
            self._close_stdin(selector)
            return written
        if written >= len(self.stdin_data):
            self._close_stdin(selector)
        return written

    def _close_stdin(self, selector: selectors.BaseSelector | None) -> None:
        assert self.stdin_fd is not None
        if selector is not None:
            selector.unregister(self.stdin_fd)
        _close(self.stdin_fd)
        self.stdin_fd = None
        self.stdin_data = b""

    def _kill_group(self) -> None:
        """SIGKILL the program's process group.  Only called before the program is reaped:
        until then its pid, which is the group id, cannot name anyone else's group."""
        self.timed_out = True
        self.log.info("guest-exec pid %d: timeout passed, killing its process group", self.pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)

    def _reap(self, block: bool) -> None:
        if self.reaped:
            return
        try:
            self.returncode = self.popen.wait() if block else self.popen.poll()
        except ChildProcessError:  # reaped by someone else: the status is lost
            self.log.warning("guest-exec pid %d was reaped elsewhere; exit status unknown", self.pid)
            self.reaped = True
            return
        self.reaped = self.returncode is not None

    def status(self) -> dict[str, Any]:
        """The final status, in qemu's key order.  Worst case: two base64 copies of the output
        (4/3 of 2 x --exec-output-limit)."""
        result: dict[str, Any] = {"exited": True}
        code = self.returncode
        if code is not None and code >= 0:
            result["exitcode"] = code
        elif code is not None:
            result["signal"] = -code
        for name in ("out", "err"):
            output = self.outputs.get(name)
            if output is not None and output.data:
                result[f"{name}-data"] = base64.b64encode(output.data).decode("ascii")
        for name in ("out", "err"):
            output = self.outputs.get(name)
            if output is not None and output.data:
                result[f"{name}-truncated"] = output.truncated
        return result


def _close(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


class ExecTable:
    """The agent's programs by pid (an :class:`AgentState` field); safe from any thread."""

    def __init__(self, max_processes: int = MAX_PROCESSES) -> None:
        self.max_processes = max_processes
        self._lock = threading.Lock()
        self._processes: dict[int, ExecProcess] = {}

    def __len__(self) -> int:
        with self._lock:
            return len(self._processes)

    def start(self, argv: list[str], env: dict[str, str] | None, input_data: bytes | None,
              capture: str, output_limit: int, timeout: float | None,
              log: logging.Logger) -> int:
        """Start ``argv`` and its monitor; return the pid.  Spawn failures are errors here."""
        self._make_room(log)
        want_out, want_err, merged = CAPTURE_MODES[capture]
        parent_fds: list[int] = []   # ours, kept on success
        child_fds: list[int] = []    # the child's ends, closed here once it has them
        try:
            stdin: int = subprocess.DEVNULL
            stdin_fd = None
            if input_data is not None:
                stdin, stdin_fd = os.pipe2(os.O_CLOEXEC)
                child_fds.append(stdin)
                parent_fds.append(stdin_fd)
                os.set_blocking(stdin_fd, False)
            outputs: dict[str, _Output] = {}
            streams: dict[str, int] = {"out": subprocess.DEVNULL, "err": subprocess.DEVNULL}
            for name, wanted in (("out", want_out), ("err", want_err)):
                if wanted:
                    read_end, write_end = os.pipe2(os.O_CLOEXEC)
                    child_fds.append(write_end)
                    parent_fds.append(read_end)
                    os.set_blocking(read_end, False)
                    outputs[name] = _Output(read_end, output_limit)
                    streams[name] = write_end
            if merged:
                streams["err"] = streams["out"]
            try:
                popen = subprocess.Popen(
                    argv, stdin=stdin, stdout=streams["out"], stderr=streams["err"], env=env,
                    close_fds=True, process_group=0,
                )
            except OSError as exc:
                reason = exc.strerror or str(exc)
                raise command_failed(
                    f"Guest agent command failed, error was 'Failed to execute child process "
                    f"\"{argv[0]}\" ({reason})'"
                ) from None
        except AgentError:
            for fd in parent_fds:
                _close(fd)
            raise
        except OSError as exc:  # pipe2 failed: out of fds
            for fd in parent_fds:
                _close(fd)
            raise command_failed(f"cannot start {argv[0]}: {exc.strerror or exc}") from None
        finally:
            for fd in child_fds:
                _close(fd)
        deadline = None if timeout is None else time.monotonic() + timeout
        process = ExecProcess(popen, outputs, stdin_fd, input_data or b"", deadline, log)
        with self._lock:
            stale = self._processes.get(process.pid)
            if stale is not None:  # the pid was freed by reaping and reused
                log.warning("guest-exec pid %d reused; its earlier uncollected status is dropped",
                            process.pid)
            self._processes[process.pid] = process
        process.start_monitor()
        return process.pid

    def _make_room(self, log: logging.Logger) -> None:
        """Below the bound, or drop the oldest uncollected status (hosts that start programs
        and never ask must not lock guest-exec out); refuse only if all are still running."""
        with self._lock:
            if len(self._processes) < self.max_processes:
                return
            for pid, process in self._processes.items():
                if process.finished.is_set():
                    del self._processes[pid]
                    log.warning("guest-exec: %d statuses uncollected; dropped the oldest (pid %d)",
                                self.max_processes, pid)
                    return
        raise command_failed(f"too many guest-exec processes running ({self.max_processes}); "
                             "wait for some to end")

    def status(self, pid: int) -> dict[str, Any]:
        with self._lock:
            process = self._processes.get(pid)
            if process is None:
                raise command_failed("Invalid parameter 'pid'")
            if not process.finished.is_set():
                return {"exited": False}
            del self._processes[pid]  # reported once, as qemu-ga
        return process.status()


def guest_exec(agent: AgentState, path: str, **params: Any) -> dict[str, Any]:
    """Start ``path`` with ``arg``; return its pid at once (the status comes later)."""
    argv = [_os_string("path", path), *_string_list("arg", params.get("arg") or [])]
    env = None
    if params.get("env") is not None:
        env = _environment(_string_list("env", params["env"]))
    capture = capture_mode(params.get("capture-output"))
    input_text = params.get("input-data")
    input_data = None if input_text is None else qbase64_decode(input_text, strict=True)
    timeout = params.get("timeout")
    if timeout is not None and not timeout > 0:
        raise invalid_params("Parameter 'timeout' must be a positive number of seconds")
    pid = agent.exec_table.start(argv, env, input_data, capture, agent.config.exec_output_limit,
                                 timeout, agent.log)
    agent.log.info("guest-exec: pid %d: %s", pid, path)
    return {"pid": pid}


def guest_exec_status(agent: AgentState, pid: int) -> dict[str, Any]:
    return agent.exec_table.status(pid)


COMMANDS = (
    Command("guest-exec", guest_exec,
            "Start a program; returns {pid} at once. Collect its exit and output with "
            "guest-exec-status.",
            (Param("path", str, doc="program; searched in PATH (of env, if given) without a slash"),
             Param("arg", list, required=False, doc="arguments (strings), after argv[0] = path"),
             Param("env", list, required=False,
                   doc="the whole environment as KEY=VALUE strings (default: the agent's)"),
             Param("input-data", str, required=False, doc="base64 data for stdin, then end of file"),
             AnyValueParam("capture-output", bool, required=False,
                           doc="true/false, or none|stdout|stderr|separated|merged; without it "
                               "stdout and stderr go to /dev/null"),
             Param("timeout", float, required=False,
                   doc="seconds, then SIGKILL to the program's process group (pyqga extension)")),
            blocking=True),
    Command("guest-exec-status", guest_exec_status,
            "{exited: false} while the program runs; then, once, exitcode or signal and the "
            "captured output (base64); after that the pid is unknown.",
            (Param("pid", int, doc="what guest-exec returned"),),
            blocking=True),
)
