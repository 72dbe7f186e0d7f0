"""The libvirt transport (``libvirt:URI?domain=NAME``): AgentClient and the CLI through
``virDomainQemuAgentCommand`` of the private libvirtd, against pyqga in the shared TCG guest.

What is checked is what the other transports promise: the same results, the agent's errors with
their qemu-ga class, a timeout on time (libvirt itself only knows whole seconds and adds its own
5 s guest-sync) naming the method and the address, clear errors for a domain or libvirtd that is
not there, the freeze helpers, and a command with no reply (``guest-shutdown``), which powers the
guest off and so runs last.  The first tests need no VM: address parsing, libvirt's error texts
(measured with libvirt 9.0), and what happens without libvirt-python.
"""

from __future__ import annotations

import importlib.util
import json
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pyqga.agent.config import VERSION
from pyqga.host_client import AgentClient
from pyqga.host_client.errors import AgentCallError, AgentConnectionError, AgentTimeout
from pyqga.host_client.libvirt_transport import (
    VIR_ERR_AGENT_UNRESPONSIVE,
    VIR_ERR_OPERATION_INVALID,
    LibvirtAddress,
    Outcome,
    classify_libvirt_error,
    parse_libvirt_address,
)
from pyqga.host_client.transport import open_transport, parse_address
from pyqga.protocol.errors import ErrorKind
from tests.rig.libvirt import LibvirtGuest, PrivateLibvirt
from tests.rig.paths import REPO_ROOT
from tests.rig.requirements import require

REPO = REPO_ROOT
NO_SUCH_DOMAIN = "pyqga-no-such-domain"


def require_libvirt_python() -> None:
    require(importlib.util.find_spec("libvirt") is not None,
            "needs libvirt-python (pip install 'pyqga[libvirt]', built against libvirt-dev)")


def libvirt_address(lv: PrivateLibvirt, domain: str) -> str:
    # lv.uri already has a query (?socket=...): domain= joins it.
    return f"libvirt:{lv.uri}&domain={domain}"


# --- no VM needed ------------------------------------------------------------------------------


@pytest.mark.parametrize(("address", "expected"), [
    ("libvirt:qemu:///system?domain=vm1", LibvirtAddress("qemu:///system", "vm1")),
    ("libvirt:qemu+ssh://root@host/system?domain=vm1", LibvirtAddress("qemu+ssh://root@host/system", "vm1")),
    ("libvirt:qemu:///system?socket=/run/lv/libvirt-sock&domain=vm1",
     LibvirtAddress("qemu:///system?socket=/run/lv/libvirt-sock", "vm1")),
    ("libvirt:qemu:///system?domain=vm%201&socket=/s", LibvirtAddress("qemu:///system?socket=/s", "vm 1")),
    ("libvirt:?domain=vm1", LibvirtAddress(None, "vm1")),
])
def test_address_forms(address: str, expected: LibvirtAddress) -> None:
    assert parse_address(address)[0] == "libvirt"  # before the "://" rule that would make it a URL
    assert parse_libvirt_address(address) == expected


@pytest.mark.parametrize("address", ["libvirt:qemu:///system", "libvirt:qemu:///system?domain=",
                                     "libvirt:qemu:///system?domain=a&domain=b"])
def test_address_without_one_domain_is_refused(address: str) -> None:
    with pytest.raises(AgentConnectionError, match="expected exactly one domain=NAME"):
        parse_libvirt_address(address)


# What libvirt 9.0 raised (code, str(libvirtError)) in the trials behind this transport; DISABLED
# wraps qemu-ga 7.2's text the same way (pyqga's own is checked in the VM by the freeze test).
AGENT_COMMAND = "internal error: unable to execute QEMU agent command"
NOT_FOUND = f"{AGENT_COMMAND} 'guest-x': The command guest-x has not been found"
DISABLED = f"{AGENT_COMMAND} 'guest-exec': Command guest-exec has been disabled: the agent is in frozen state"
FAILED = f"{AGENT_COMMAND} 'guest-fsfreeze-freeze-list': /nonexistent is not a mount point"
TIMED_OUT = "Guest agent is not responding: Guest agent not available for now"
GONE = "Guest agent is not responding: Guest agent disappeared while executing command"
NOT_CONNECTED = "Guest agent is not responding: QEMU guest agent is not connected"
NOT_RUNNING = "Requested operation is not valid: domain is not running"


@pytest.mark.parametrize(("code", "message", "outcome", "kind", "qga_class", "desc"), [
    (1, NOT_FOUND, Outcome.AGENT_ERROR, ErrorKind.COMMAND_NOT_FOUND, "CommandNotFound",
     "The command guest-x has not been found"),
    (1, DISABLED, Outcome.AGENT_ERROR, ErrorKind.COMMAND_DISABLED, "CommandNotFound",
     "Command guest-exec has been disabled: the agent is in frozen state"),
    (1, FAILED, Outcome.AGENT_ERROR, ErrorKind.COMMAND_FAILED, "GenericError",
     "/nonexistent is not a mount point"),
    (VIR_ERR_AGENT_UNRESPONSIVE, TIMED_OUT, Outcome.TIMEOUT, None, None, None),
    (VIR_ERR_AGENT_UNRESPONSIVE, GONE, Outcome.AGENT_GONE, None, None, None),
    (VIR_ERR_AGENT_UNRESPONSIVE, NOT_CONNECTED, Outcome.NO_AGENT, None, None, None),
    (VIR_ERR_OPERATION_INVALID, NOT_RUNNING, Outcome.DOMAIN, None, None, None),
    (1, "internal error: Missing agent reply object", Outcome.LIBVIRT, None, None, None),
])
def test_libvirt_errors_map_to_agent_errors(code: int, message: str, outcome: Outcome, kind: ErrorKind | None,
                                            qga_class: str | None, desc: str | None) -> None:
    got, error = classify_libvirt_error(code, message)
    assert got is outcome
    if kind is None:
        assert error is None
    else:
        assert error is not None
        assert (error.kind, error.qga_class, error.message) == (kind, qga_class, desc)


def test_without_libvirt_python_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "libvirt", None)  # import libvirt now raises ImportError
    monkeypatch.setitem(sys.modules, "libvirt_qemu", None)
    with pytest.raises(AgentConnectionError, match=re.escape("pip install 'pyqga[libvirt]'")):
        AgentClient("libvirt:qemu:///system?domain=vm1")


def test_host_client_imports_without_libvirt_python() -> None:
    """Every module of the host library imports with libvirt-python unavailable."""
    code = ("import sys, pkgutil, importlib, pyqga.host_client as host_client\n"
            "sys.modules['libvirt'] = sys.modules['libvirt_qemu'] = None\n"
            "names = [m.name for m in pkgutil.walk_packages(host_client.__path__, 'pyqga.host_client.')\n"
            "         if not m.name.endswith('__main__')]\n"
            "for name in names: importlib.import_module(name)\n"
            "print(len(names))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) > 5


def test_libvirtd_not_running_is_a_connection_error(tmp_path: Path) -> None:
    require_libvirt_python()
    address = f"libvirt:qemu:///system?socket={tmp_path}/libvirt-sock&domain=vm1"
    with pytest.raises(AgentConnectionError) as caught:
        AgentClient(address, timeout=10)
    message = str(caught.value)
    assert message.startswith("cannot connect to libvirt at qemu:///system?socket="), message
    assert "No such file or directory" in message and "is libvirtd running" in message, message


# --- through the private libvirtd, against pyqga in the guest --------------------------------------


@pytest.fixture(scope="module")
def domain(libvirt_guest: LibvirtGuest) -> LibvirtGuest:
    """The session's libvirt guest (conftest), running: the last test here powers it off."""
    require_libvirt_python()
    libvirt_guest.ensure_running()
    return libvirt_guest


@pytest.fixture
def address(domain: LibvirtGuest) -> str:
    return libvirt_address(domain.lv, domain.name)


@pytest.mark.root
@pytest.mark.parametrize("dialect", ["jsonrpc", "qga"])
def test_ping_info_and_no_resync(address: str, dialect: str) -> None:
    """Both dialects work (JSON-RPC is sent as qemu-ga's and answered in JSON-RPC), and the
    client sends libvirt no resync of its own: nothing but the calls made."""
    transport = open_transport(address, 10)
    sent: list[bytes] = []
    send = transport.send
    transport.send = lambda data, deadline: (sent.append(data), send(data, deadline))[1]  # type: ignore[method-assign]
    with AgentClient(address, dialect=dialect, transport=transport) as agent:
        assert agent.address == address
        agent.ping()
        info = agent.info()
    assert info["version"] == VERSION
    assert "guest-fsfreeze-info" in {c["name"] for c in info["supported_commands"]}
    names = [json.loads(data).get("execute" if dialect == "qga" else "method") for data in sent]
    assert names == ["guest-ping", "guest-info"], sent


@pytest.mark.root
def test_guest_sync_answers_and_leaves_libvirt_usable(address: str) -> None:
    """``guest-sync`` goes through; ``guest-sync-delimited`` is answered too (sent as guest-sync:
    forwarded as it is, its 0xFF reply breaks libvirt's agent channel until the agent
    reconnects), so calls after it still work."""
    ids = [random.getrandbits(31) + 1 for _ in range(3)]
    with AgentClient(address, timeout=10) as agent:
        assert agent.call("guest-sync", id=ids[0]) == ids[0]
        assert agent.call("guest-sync-delimited", id=ids[1]) == ids[1]
        assert isinstance(agent.sync(), int)
        assert agent.call("guest-sync", id=ids[2]) == ids[2]
        agent.ping()


@pytest.mark.root
@pytest.mark.parametrize("dialect", ["jsonrpc", "qga"])
def test_agent_errors_keep_their_class(address: str, dialect: str) -> None:
    with AgentClient(address, dialect=dialect, timeout=10) as agent:
        with pytest.raises(AgentCallError) as caught:
            agent.call("guest-pyqga-no-such-command")
        error = caught.value
        assert (error.error_class, error.error.kind) == ("CommandNotFound", ErrorKind.COMMAND_NOT_FOUND)
        assert error.error.message == "The command guest-pyqga-no-such-command has not been found"
        assert (error.method, error.address) == ("guest-pyqga-no-such-command", address)
        with pytest.raises(AgentCallError) as caught:
            agent.call("guest-fsfreeze-freeze-list", mountpoints=["/no-such-mount"])
        assert caught.value.error_class == "GenericError"
        assert "/no-such-mount" in caught.value.error.message
        assert agent.call("guest-fsfreeze-status") == "thawed"  # that refusal froze nothing


@pytest.mark.root
def test_frozen_data_through_libvirt(domain: LibvirtGuest, address: str) -> None:
    """AgentClient.frozen() over libvirt: capabilities from guest-info, the freeze with its
    agent-side deadline, the epoch from guest-fsfreeze-info, the thaw that checks it.  libvirt
    itself must see the same state."""
    with AgentClient(address, timeout=10) as agent:
        assert agent.capabilities().auto_thaw
        with agent.frozen(["/data"], thaw_after=60) as freeze:
            assert freeze.count == 1 and freeze.epoch is not None and freeze.auto_thaw
            info = agent.call("guest-fsfreeze-info")
            assert [(f["mountpoint"], f["state"]) for f in info["frozen"]] == [("/data", "frozen")], info
            assert info["deadline"] - info["frozen-at"] == pytest.approx(60, abs=1)
            status = domain.lv.virsh("qemu-agent-command", domain.name, '{"execute":"guest-fsfreeze-status"}')
            assert json.loads(status.stdout) == {"return": "frozen"}
            with pytest.raises(AgentCallError) as caught:  # disabled while frozen: CommandNotFound
                agent.call("guest-exec", path="/bin/true")
            assert (caught.value.error_class, caught.value.error.kind) == ("CommandNotFound",
                                                                          ErrorKind.COMMAND_DISABLED)
            assert caught.value.error.message.startswith("Command guest-exec has been disabled"), caught.value
        assert agent.call("guest-fsfreeze-status") == "thawed"
        last = agent.call("guest-fsfreeze-info")["last-thaw"]
        assert (last["epoch"], last["reason"]) == (freeze.epoch, "request"), last


@pytest.mark.root
def test_timeout_is_kept_and_names_the_method(address: str) -> None:
    """The agent stops itself for a few seconds (SIGSTOP from a child, SIGCONT from the same
    child later).  Calls of 0.5 s must fail after 0.5 s each: libvirt alone would wait a whole
    second, and for the second call 5 s more in its own guest-sync.  The next calls get their
    own answers, not the late ones."""
    stop_seconds = 4
    with AgentClient(address, timeout=10) as agent:
        agent.call("guest-exec", {"path": "/bin/sh", "arg": [
            "-c", f"sleep 0.2; kill -STOP $PPID; sleep {stop_seconds}; kill -CONT $PPID"]})
        time.sleep(1.0)  # the agent is stopped by now, for about 3 s more
        for method in ("guest-ping", "guest-info"):
            started = time.monotonic()
            with pytest.raises(AgentTimeout) as caught:
                agent.call(method, timeout=0.5)
            elapsed = time.monotonic() - started
            assert 0.45 <= elapsed < 0.9, (method, elapsed)
            assert (caught.value.method, caught.value.address) == (method, address)
            assert str(caught.value) == f"{method} on {address}: no reply within 0.5 s"
        sync_id = random.getrandbits(31) + 1
        assert agent.call("guest-sync", id=sync_id) == sync_id  # waits for the agent to resume
        assert agent.info()["version"] == VERSION


@pytest.mark.root
def test_unknown_domain_is_a_clear_connection_error(domain: LibvirtGuest) -> None:
    with pytest.raises(AgentConnectionError) as caught:
        AgentClient(libvirt_address(domain.lv, NO_SUCH_DOMAIN), timeout=10)
    message = str(caught.value)
    assert f"has no domain named '{NO_SUCH_DOMAIN}'" in message, message
    assert f"virsh -c '{domain.lv.uri}' list --all" in message, message


@pytest.mark.root
def test_cli_through_libvirt(domain: LibvirtGuest, address: str) -> None:
    def pyqga(*args: str, socket: str = address) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pyqga.host_client", "--socket", socket, *args],
                              cwd=REPO, capture_output=True, text=True, timeout=60)

    ping = pyqga("ping")
    assert ping.returncode == 0, ping.stderr
    assert ping.stdout.startswith(f"{address}: agent answered in "), ping.stdout
    status = pyqga("--dialect", "qga", "call", "guest-fsfreeze-status")
    assert (status.returncode, status.stdout.strip()) == (0, "thawed"), status.stderr
    unknown = pyqga("call", "guest-pyqga-no-such-command")
    assert unknown.returncode == 1 and "CommandNotFound" in unknown.stderr, unknown.stderr
    missing = pyqga("ping", socket=libvirt_address(domain.lv, NO_SUCH_DOMAIN))
    assert missing.returncode == 3 and f"no domain named '{NO_SUCH_DOMAIN}'" in missing.stderr, missing.stderr


@pytest.mark.root
def test_guest_shutdown_needs_no_reply(domain: LibvirtGuest, address: str) -> None:
    """Last: powers the guest off.  libvirt waits for a reply that never comes until the agent
    goes away with the guest; that counts as sent.  An agent error still comes back."""
    with AgentClient(address, timeout=30) as agent:
        with pytest.raises(AgentCallError, match="mode is invalid"):
            agent.call("guest-shutdown", mode="sideways")
        started = time.monotonic()
        agent.notify("guest-shutdown")
        sent_in = time.monotonic() - started
    assert sent_in < 10, sent_in
    state = domain.wait_state("shut off", timeout=30)
    assert state == "shut off (shutdown)", f"{state}\n{domain.diagnostics()}"
    with pytest.raises(AgentConnectionError, match=f"domain '{domain.name}' is not running"):
        AgentClient(address, timeout=10)
