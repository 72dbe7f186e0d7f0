"""The libvirt transport: ``libvirt:URI?domain=NAME`` (needs ``pip install 'pyqga[libvirt]'``).

The host end of a libvirt guest's agent channel belongs to libvirtd, so the only way in is
``virDomainQemuAgentCommand``: one qemu-ga request in, one reply out, after libvirt's own
``guest-sync``.  :class:`LibvirtTransport` turns the bytes the client writes into such calls and
their outcomes back into reply lines, so :class:`~pyqga.host_client.client.AgentClient` and everything
built on it work unchanged:

- Both dialects: libvirt speaks only qemu-ga's, so a JSON-RPC request is sent as ``execute`` and
  answered in JSON-RPC again.  libvirt does not carry our ids: each reply gets its request's back.
- ``synchronised``: libvirt syncs before every command and cannot carry the 0xFF resync byte, so
  the client does not resync.  A ``guest-sync-delimited`` that still comes goes out as
  ``guest-sync`` (same answer): libvirt cannot parse the 0xFF the agent puts before that reply,
  and forwarding it left libvirt's channel to that domain's agent broken ("not available due to
  an error") until the agent reconnected (libvirt 9.0).
- Deadlines: libvirt takes whole seconds, and its ``guest-sync`` may add 5 s of its own, so calls
  run in order on a worker thread and :meth:`~LibvirtTransport.recv` keeps the client's deadline to
  the millisecond.  A call that outlives it finishes in the background; its late reply is handed
  over later and dropped by id, as a late reply on a socket would be.
- Errors: libvirt reports an agent's error as ``unable to execute QEMU agent command 'NAME':
  DESC`` without the class, which :func:`classify_libvirt_error` recovers from qemu-ga's wording;
  the result is an ordinary error reply, hence ``AgentCallError``.  No reply in time is
  ``AgentTimeout``; a domain, libvirtd or agent that is not there is ``AgentConnectionError``
  saying which.
- Commands that answer nothing on success (``guest-shutdown``, ``guest-suspend-*``): libvirt waits
  for a reply until the agent goes away with the guest or the time is up; both mean "sent".
"""

from __future__ import annotations

import json
import math
import queue
import re
import threading
import time
import xml.etree.ElementTree as ET
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from enum import Enum
from typing import Any
from urllib.parse import unquote

from pyqga.host_client.errors import AgentConnectionError, AgentTimeout, timed_out
from pyqga.protocol.decoder import DecodeFailure, Message, StreamDecoder
from pyqga.protocol.dialects import Batch, Dialect, Invalid, Request, classify, encode, reply_object
from pyqga.protocol.errors import AgentError, ErrorKind, invalid_params
from pyqga.protocol.freeze_lost import parse_freeze_lost

SCHEME = "libvirt:"
EXTRA = "pip install 'pyqga[libvirt]'"
# qemu-ga's commands with "success-response": false; everything else answers.
NO_REPLY_COMMANDS = frozenset(("guest-shutdown", "guest-suspend-disk", "guest-suspend-ram",
                               "guest-suspend-hybrid"))
MAX_REQUEST_SIZE = 64 << 20  # what the agent would accept

# libvirt's error numbers (virterror.h); the last two are newer than some libvirts we may meet.
VIR_ERR_NO_DOMAIN = 42
VIR_ERR_OPERATION_INVALID = 55
VIR_ERR_ARGUMENT_UNSUPPORTED = 67
VIR_ERR_AGENT_UNRESPONSIVE = 86
VIR_ERR_AGENT_COMMAND_TIMEOUT = 112
VIR_ERR_AGENT_COMMAND_FAILED = 113

_AGENT_ERROR = re.compile(r"unable to execute QEMU agent command '(?P<command>[^']*)': (?P<desc>.*)", re.S)
_NOT_FOUND = re.compile(r"The command (\S+ )?has not been found")
_DISABLED = re.compile(r"(Command \S+|The command) has been disabled")


@dataclass(frozen=True)
class LibvirtAddress:
    """``libvirt:URI?domain=NAME``: the libvirt URI (None: libvirt's default) and the domain."""

    uri: str | None
    domain: str

    @property
    def uri_text(self) -> str:
        return self.uri or "libvirt's default URI"


def parse_libvirt_address(address: str) -> LibvirtAddress:
    """Split off ``domain=NAME`` from the URI's query; the rest of the URI is kept as written
    (``qemu:///system?socket=/path`` must reach libvirt unchanged).  ``libvirt:?domain=NAME``
    uses libvirt's default URI (``LIBVIRT_DEFAULT_URI``...)."""
    if not address.startswith(SCHEME):
        raise AgentConnectionError(f"{address}: not a libvirt address (libvirt:URI?domain=NAME)")
    uri, _, query = address[len(SCHEME):].partition("?")
    params = [p for p in query.split("&") if p]
    domains = [p.partition("=")[2] for p in params if p.partition("=")[0] == "domain"]
    if len(domains) != 1 or not domains[0]:
        raise AgentConnectionError(f"{address}: expected exactly one domain=NAME, as in "
                                   "libvirt:qemu:///system?domain=NAME")
    rest = [p for p in params if p.partition("=")[0] != "domain"]
    if rest:
        uri = f"{uri}?{'&'.join(rest)}"
    return LibvirtAddress(uri or None, unquote(domains[0]))


# --- libvirt's errors ---------------------------------------------------------------------


class Outcome(Enum):
    AGENT_ERROR = "the agent answered with an error"
    TIMEOUT = "no reply in time"
    AGENT_GONE = "the agent went away during the command"
    NO_AGENT = "no agent to talk to"
    DOMAIN = "the domain cannot take agent commands"
    LIBVIRT = "libvirt failed"


def classify_libvirt_error(code: int, message: str) -> tuple[Outcome, AgentError | None]:
    """What a libvirtError from ``virDomainQemuAgentCommand`` means.  For an agent's own error,
    the :class:`AgentError` the agent sent: libvirt keeps only its ``desc``, so the class comes
    back from qemu-ga's wording (``The command X has not been found``, ``Command X has been
    disabled: ...`` are CommandNotFound; anything else is GenericError), and a lost freeze from
    pyqga's words (:func:`~pyqga.protocol.freeze_lost.parse_freeze_lost`)."""
    match = _AGENT_ERROR.search(message)
    if match or code == VIR_ERR_AGENT_COMMAND_FAILED:
        desc = match.group("desc").strip() if match else message
        if _NOT_FOUND.fullmatch(desc):
            kind = ErrorKind.COMMAND_NOT_FOUND
        elif _DISABLED.match(desc):
            kind = ErrorKind.COMMAND_DISABLED
        elif parse_freeze_lost(desc) is not None:
            kind = ErrorKind.FREEZE_LOST
        else:
            kind = ErrorKind.COMMAND_FAILED
        return Outcome.AGENT_ERROR, AgentError(kind, desc, {"class": kind.qga_class})
    if code == VIR_ERR_AGENT_COMMAND_TIMEOUT or (
            code == VIR_ERR_AGENT_UNRESPONSIVE and "not available for now" in message):
        return Outcome.TIMEOUT, None
    if code == VIR_ERR_AGENT_UNRESPONSIVE:
        return (Outcome.AGENT_GONE if "disappeared" in message else Outcome.NO_AGENT), None
    if code in (VIR_ERR_NO_DOMAIN, VIR_ERR_OPERATION_INVALID, VIR_ERR_ARGUMENT_UNSUPPORTED):
        return Outcome.DOMAIN, None
    return Outcome.LIBVIRT, None


def _hint(message: str) -> str:
    """What to do about an agent libvirt cannot reach, from libvirt's words."""
    if "not connected" in message:
        return ": is an agent running in the guest on org.qemu.guest_agent.0?"
    if "due to an error" in message:
        return ": libvirt recovers when the agent reconnects (restart the agent in the guest)"
    if "not configured" in message:
        return ": the domain needs a <channel> with target name org.qemu.guest_agent.0"
    return ""


# --- the worker -----------------------------------------------------------------------------


class _Worker:
    """One daemon thread running libvirt calls in order (libvirt runs one agent command per
    domain at a time anyway).  A daemon, so a call stuck in libvirt never holds up exit."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]] | None] = queue.SimpleQueue()
        threading.Thread(target=self._run, name=name, daemon=True).start()

    def submit(self, job: Callable[[], Any]) -> Future[Any]:
        future: Future[Any] = Future()
        self._jobs.put((job, future))
        return future

    def stop(self) -> None:
        self._jobs.put(None)

    def _run(self) -> None:
        while (item := self._jobs.get()) is not None:
            job, future = item
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(job())
                except BaseException as exc:
                    future.set_exception(exc)


def _done(data: bytes | None) -> Future[bytes | None]:
    future: Future[bytes | None] = Future()
    future.set_result(data)
    return future


# --- the transport ----------------------------------------------------------------------------


def _import_libvirt(address: str) -> tuple[Any, Any]:
    """libvirt-python, imported only now: the rest of the client must not need it."""
    try:
        import libvirt
        import libvirt_qemu
    except ImportError as exc:
        raise AgentConnectionError(
            f"{address}: the libvirt transport needs libvirt-python: {EXTRA} (it builds against "
            f"libvirt's headers: apt-get install libvirt-dev pkg-config gcc python3-dev) [{exc}]"
        ) from None
    # libvirt's default handler also prints every error on stderr, even those raised as
    # exceptions here and turned into the client's own errors.
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    return libvirt, libvirt_qemu


class LibvirtTransport:
    """A :class:`~pyqga.host_client.transport.Transport` through ``virDomainQemuAgentCommand``; see
    the module docstring.  Open with :func:`open_libvirt`."""

    #: libvirt does its own guest-sync before every command: the client must not resync.
    synchronised = True

    def __init__(self, address: str, target: LibvirtAddress, libvirt: Any, libvirt_qemu: Any,
                 conn: Any, domain: Any, worker: _Worker) -> None:
        self.address = address
        self.target = target
        self._libvirt = libvirt
        self._qemu = libvirt_qemu
        self._conn = conn
        self._domain = domain
        self._worker = worker
        self._decoder = StreamDecoder(max_message_size=MAX_REQUEST_SIZE)
        self._pending: deque[Future[bytes | None]] = deque()
        self._latest: Future[bytes | None] | None = None
        self._closed = False

    # --- Transport -------------------------------------------------------------------------

    def send(self, data: bytes, deadline: float) -> None:
        """Start a libvirt call for each request in ``data``.  A command that answers nothing
        on success is waited for here (up to ``deadline``), so it has left when this returns."""
        if self._closed:
            raise AgentConnectionError(f"{self.address}: the transport is closed")
        for event in self._decoder.feed(data):
            if isinstance(event, Message):
                incoming = classify(event.value)
                for item in incoming.items if isinstance(incoming, Batch) else (incoming,):
                    self._submit(item, deadline)
            elif isinstance(event, DecodeFailure):  # answered as the agent would
                self._queue(_done(encode(reply_object(Dialect.QGA, None, False, error=event.error))))
            # A Resynced event (the 0xFF byte) means nothing here: nothing is partial.

    def recv(self, deadline: float) -> bytes:
        """The next reply; the failure of the latest request is raised, an earlier request's
        (one the client has given up on) is dropped."""
        while True:
            if not self._pending:  # nothing will come: like a silent agent on a socket
                time.sleep(max(0.0, deadline - time.monotonic()))
                raise timed_out(self.address, "waiting for a reply")
            future = self._pending[0]
            try:
                reply = future.result(timeout=max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                raise timed_out(self.address, "waiting for a reply") from None
            except (AgentTimeout, AgentConnectionError):
                self._pending.popleft()
                if future is self._latest:
                    raise
                continue
            self._pending.popleft()
            if reply:
                return reply

    def close(self) -> None:
        """Stop the worker; it closes the libvirt connection once any call in flight returns."""
        if not self._closed:
            self._closed = True
            self._worker.submit(self._conn.close)
            self._worker.stop()

    # --- internals --------------------------------------------------------------------------

    def _queue(self, future: Future[bytes | None]) -> None:
        self._pending.append(future)
        self._latest = future

    def _submit(self, item: Request | Invalid, deadline: float) -> None:
        if isinstance(item, Invalid):
            self._queue(_done(encode(reply_object(item.dialect, item.id, item.has_id, error=item.error))))
            return
        future: Future[bytes | None] = self._worker.submit(lambda: self._execute(item, deadline))
        if item.method not in NO_REPLY_COMMANDS:
            if item.wants_reply:
                self._queue(future)
            return
        try:
            reply = future.result(timeout=max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            if future.cancel():  # still behind a call the client gave up on: never sent
                raise AgentTimeout(f"{self.address}: timed out before libvirt could send "
                                   f"{item.method}") from None
            return  # libvirt still waits for the reply that never comes: the command was sent
        if reply:
            self._queue(_done(reply))  # an error the agent answered (or an agent that replies)

    def _execute(self, request: Request, deadline: float) -> bytes | None:
        """One libvirt call (on the worker): the reply line in the request's dialect, None when
        the request wants none, or AgentTimeout / AgentConnectionError."""
        if isinstance(request.params, list):
            return self._reply(request, error=invalid_params(
                "positional parameters cannot go through libvirt: pass them by name"))
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AgentTimeout(f"{self.address}: timed out before libvirt could send {request.method}")
        # The same answer without the 0xFF that libvirt cannot parse (module docstring).
        method = "guest-sync" if request.method == "guest-sync-delimited" else request.method
        command: dict[str, Any] = {"execute": method}
        if request.params:
            command["arguments"] = request.params
        try:
            # Whole seconds, at least 1 (0 would not wait at all); recv() keeps the exact deadline.
            text = self._qemu.qemuAgentCommand(self._domain, json.dumps(command),
                                               max(1, math.ceil(remaining)), 0)
        except self._libvirt.libvirtError as exc:
            return self._failure(request, exc.get_error_code() or 0, str(exc))
        except SystemError as exc:  # libvirt-python: "returned a result with an exception set"
            raise AgentConnectionError(f"{self.address}: libvirt failed: {exc}") from None
        try:
            value = json.loads(text) if text else {}
        except ValueError:
            raise AgentConnectionError(f"{self.address}: libvirt returned a reply that is not JSON: "
                                       f"{text[:200]!r}") from None
        if not isinstance(value, dict) or "return" not in value:
            raise AgentConnectionError(f"{self.address}: unexpected reply through libvirt: {text[:200]!r}")
        return self._reply(request, result=value["return"])

    def _failure(self, request: Request, code: int, message: str) -> bytes | None:
        outcome, error = classify_libvirt_error(code, message)
        if error is not None:
            return self._reply(request, error=error)
        if request.method in NO_REPLY_COMMANDS and outcome in (Outcome.TIMEOUT, Outcome.AGENT_GONE):
            return None  # no reply, or the agent went down with the guest: as asked
        if outcome is Outcome.TIMEOUT:
            raise AgentTimeout(f"{self.address}: no reply ({message})")
        if outcome is Outcome.AGENT_GONE:
            raise AgentConnectionError(f"{self.address}: the guest agent went away during the command "
                                       f"({message})")
        if outcome is Outcome.NO_AGENT:
            raise AgentConnectionError(f"{self.address}: libvirt cannot reach the guest agent "
                                       f"({message}){_hint(message)}")
        if outcome is Outcome.DOMAIN:
            raise AgentConnectionError(f"{self.address}: domain {self.target.domain!r}: {message}"
                                       f"{_hint(message)}")
        raise AgentConnectionError(f"{self.address}: libvirt at {self.target.uri_text}: {message}")

    @staticmethod
    def _reply(request: Request, result: Any = None, error: AgentError | None = None) -> bytes | None:
        if not request.wants_reply:
            return None
        return encode(reply_object(request.dialect, request.id, request.has_id, result, error))


def _running_domain(address: str, target: LibvirtAddress, libvirt: Any) -> tuple[Any, Any]:
    """(connection, domain) of a running domain; errors say what is missing and how to look."""
    try:
        conn = libvirt.open(target.uri)
    except libvirt.libvirtError as exc:
        raise AgentConnectionError(f"cannot connect to libvirt at {target.uri_text} for {address}: "
                                   f"{exc} (is libvirtd running, and may this user use it?)") from None
    try:
        domain = conn.lookupByName(target.domain)
        active = domain.isActive()
    except libvirt.libvirtError as exc:
        conn.close()
        if exc.get_error_code() == VIR_ERR_NO_DOMAIN:
            virsh = f"virsh -c '{target.uri}'" if target.uri else "virsh"
            raise AgentConnectionError(f"{address}: libvirt at {target.uri_text} has no domain named "
                                       f"{target.domain!r} ({virsh} list --all shows them)") from None
        raise AgentConnectionError(f"{address}: {exc}") from None
    if not active:
        conn.close()
        raise AgentConnectionError(f"{address}: domain {target.domain!r} is not running")
    return conn, domain


def open_libvirt(address: str, timeout: float) -> LibvirtTransport:
    """Connect to libvirt and find the running domain, within ``timeout`` seconds (a remote
    URI may hang in ssh); errors say what is missing and how to look."""
    target = parse_libvirt_address(address)
    libvirt, libvirt_qemu = _import_libvirt(address)
    worker = _Worker(f"pyqga-libvirt-{target.domain}")
    future = worker.submit(lambda: _running_domain(address, target, libvirt))
    try:
        conn, domain = future.result(timeout=timeout)
    except TimeoutError:
        worker.stop()
        # If it ever connects, nobody will use that connection.
        future.add_done_callback(lambda done: done.exception() or done.result()[0].close())
        raise AgentConnectionError(f"cannot connect to libvirt at {target.uri_text} for {address}: "
                                   f"no answer within {timeout:g} s") from None
    except BaseException:
        worker.stop()
        raise
    return LibvirtTransport(address, target, libvirt, libvirt_qemu, conn, domain, worker)


def snapshot_disks(address: str, overlays: dict[str, str]) -> None:
    """An external, disk-only snapshot of the domain's disks named in ``overlays`` (target
    name such as ``vdb`` -> the new overlay file), atomic across them, without libvirt metadata
    and without libvirt's own quiesce: the caller froze the guest itself.  Every other disk is
    left alone.  Blocking; a failure is an ``AgentConnectionError`` in libvirt's words."""
    libvirt, _ = _import_libvirt(address)
    conn, domain = _running_domain(address, parse_libvirt_address(address), libvirt)
    try:
        present = [dev for d in ET.fromstring(domain.XMLDesc()).iter("target")
                   if (dev := d.get("dev")) and d.get("bus") not in (None, "usb")]
        unknown = sorted(set(overlays) - set(present))
        if unknown:
            raise AgentConnectionError(f"{address}: no disk {', '.join(unknown)} (the domain has "
                                       f"{', '.join(present)})")
        snapshot = ET.Element("domainsnapshot")
        disks = ET.SubElement(snapshot, "disks")
        for dev in present:
            if dev in overlays:
                disk = ET.SubElement(disks, "disk", name=dev, snapshot="external")
                ET.SubElement(disk, "source", file=overlays[dev])
            else:
                ET.SubElement(disks, "disk", name=dev, snapshot="no")
        flags = (libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA
                 | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC)
        domain.snapshotCreateXML(ET.tostring(snapshot, encoding="unicode"), flags)
    except libvirt.libvirtError as exc:
        raise AgentConnectionError(f"{address}: the disk snapshot failed: {exc}") from None
    finally:
        conn.close()
