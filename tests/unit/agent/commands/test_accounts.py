"""guest-set-user-password, guest-ssh-*-authorized-keys (agent/commands/accounts.py) and
guest-suspend-* (agent/commands/power.py).

Differential: the real qemu-ga and pyqga run side by side and get the same requests on a
throwaway user this module creates (useradd) and removes (userdel -r): the same replies, and
after every step the same ~/.ssh (content, owner, group, mode) and the same /etc/shadow effect.

Suspend NEVER suspends this machine: pyqga is started with its helpers' PATH and its sysfs state
file pointed at a recorder (PYQGA_SUSPEND_PATH, PYQGA_POWER_STATE_FILE); qemu-ga is started with
PATH pointing at the same recorder, and only when /sys/power/state offers neither mem nor disk
(then qemu-ga's last mechanism cannot act either).
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import ctypes.util
import json
import os
import pwd
import secrets
import shutil
import socket
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from pyqga.agent.commands import accounts, power
from pyqga.agent.commands.qbase64 import qbase64_decode
from pyqga.agent.registry import build_registry
from tests.rig.agent_process import PyqgaAgent
from tests.rig.qemu_ga import QemuGa, require_qemu_ga
from tests.rig.requirements import require, require_root, require_tool

NEW_COMMANDS = ("guest-set-user-password", "guest-ssh-get-authorized-keys",
                "guest-ssh-add-authorized-keys", "guest-ssh-remove-authorized-keys",
                "guest-suspend-ram", "guest-suspend-disk", "guest-suspend-hybrid")
READ_TIMEOUT = 10.0
K1 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOne one@example"
K2 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAITwo two@example"
K3 = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQThree three@example"
K4 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFour four"


# --- talking to an agent -----------------------------------------------------------------------


def _connect(connect: Callable[[], socket.socket]) -> socket.socket:
    deadline = time.monotonic() + READ_TIMEOUT
    while True:
        try:
            return connect()
        except BlockingIOError:   # qemu-ga's tiny backlog
            if time.monotonic() > deadline:
                raise
            time.sleep(0.005)


def exchange(connect: Callable[[], socket.socket], request: dict[str, Any]) -> list[Any]:
    """Every reply ``request`` causes (none for a suspend that succeeded), bounded by a sentinel
    guest-sync whose reply is dropped."""
    sync_id = secrets.randbelow(1 << 30) + 1
    sentinel = json.dumps({"return": sync_id}).encode()
    with contextlib.closing(_connect(connect)) as sock:
        sock.settimeout(READ_TIMEOUT)
        sock.sendall(json.dumps(request).encode() + b"\n")
        sock.sendall(json.dumps({"execute": "guest-sync", "arguments": {"id": sync_id}}).encode() + b"\n")
        data = b""
        while True:
            lines = data.split(b"\n")
            for index, line in enumerate(lines[:-1]):
                if json.loads(line) == json.loads(sentinel):
                    return [json.loads(x) for x in lines[:index]]
            chunk = sock.recv(1 << 20)
            assert chunk, f"connection closed after {data!r}"
            data += chunk


def call(connect: Callable[[], socket.socket], command: str, arguments: dict[str, Any] | None = None) -> Any:
    request: dict[str, Any] = {"execute": command}
    if arguments is not None:
        request["arguments"] = arguments
    replies = exchange(connect, request)
    assert len(replies) == 1, replies
    return replies[0]


def _need_qemu_ga() -> None:
    require_qemu_ga()


# --- the throwaway user ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def user() -> Iterator[pwd.struct_passwd]:
    require_root()
    require_tool("useradd")
    require_tool("chpasswd")
    name = "pyqgat" + secrets.token_hex(4)
    subprocess.run(["useradd", "-m", "-s", "/usr/sbin/nologin", name], check=True, capture_output=True)
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", "-r", name], check=False, capture_output=True)
    with contextlib.suppress(KeyError):
        pwd.getpwnam(name)
        pytest.fail(f"userdel -r {name} did not remove the user")


@pytest.fixture(scope="module")
def peers(tmp_path_factory: pytest.TempPathFactory,
          user: pwd.struct_passwd) -> Iterator[tuple[QemuGa, PyqgaAgent]]:
    _need_qemu_ga()
    with QemuGa(tmp_path_factory.mktemp("qga")) as qga, PyqgaAgent(tmp_path_factory.mktemp("pyqga")) as ours:
        yield qga, ours


def ssh_state(home: str) -> dict[str, Any]:
    """What a step left in ~/.ssh: modes, owners, contents; temporary files would show."""
    ssh = os.path.join(home, ".ssh")
    if not os.path.lexists(ssh):
        return {"ssh": None}
    st = os.lstat(ssh)
    out: dict[str, Any] = {"ssh": (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid), "files": {}}
    for name in sorted(os.listdir(ssh)):
        fst = os.lstat(os.path.join(ssh, name))
        out["files"][name] = (stat.S_IMODE(fst.st_mode), fst.st_uid, fst.st_gid,
                              Path(ssh, name).read_bytes())
    return out


def _shadow_hash(name: str) -> str:
    for line in Path("/etc/shadow").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return fields[1]
    raise AssertionError(f"{name} not in /etc/shadow")


def _crypt(password: str, salt: str) -> str:
    lib = ctypes.CDLL(ctypes.util.find_library("crypt") or "libcrypt.so.1")
    lib.crypt.restype = ctypes.c_char_p
    lib.crypt.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    result = lib.crypt(password.encode(), salt.encode())
    assert result is not None
    return result.decode()


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


# --- registration ------------------------------------------------------------------------------


def test_commands_registered_blocking_not_while_frozen() -> None:
    registry = build_registry()
    for name in NEW_COMMANDS:
        command = registry.get(name)
        assert command is not None, name
        assert command.blocking and not command.allowed_while_frozen
        assert command.success_response == (not name.startswith("guest-suspend"))


# --- ssh keys: the same steps, the same files --------------------------------------------------


def _run_ssh_steps(connect: Callable[[], socket.socket], user: pwd.struct_passwd) -> list[Any]:
    home, name = user.pw_dir, user.pw_name
    shutil.rmtree(os.path.join(home, ".ssh"), ignore_errors=True)
    results: list[Any] = []

    def step(command: str, **arguments: Any) -> None:
        results.append((command, arguments, call(connect, command, {"username": name, **arguments}),
                        ssh_state(home)))

    step("guest-ssh-get-authorized-keys")                  # no file: glib's error
    step("guest-ssh-remove-authorized-keys", keys=[K1])    # no file: nothing to do
    step("guest-ssh-add-authorized-keys", keys=[K1, K2, K1])
    step("guest-ssh-get-authorized-keys")
    step("guest-ssh-add-authorized-keys", keys=[K2, K3], reset=False)
    step("guest-ssh-get-authorized-keys")
    # A file edited by hand: root's, 0644, comments, blanks, spaces, a final newline.
    path = os.path.join(home, ".ssh", "authorized_keys")
    Path(path).write_text(f"# managed by hand\n  {K4}  \n\n{K1}\n")
    os.chown(path, 0, 0)
    os.chmod(path, 0o644)
    step("guest-ssh-get-authorized-keys")
    step("guest-ssh-add-authorized-keys", keys=[K2])
    step("guest-ssh-remove-authorized-keys", keys=[K1, f"  {K4}  "])
    step("guest-ssh-add-authorized-keys", keys=[K3], reset=True)
    step("guest-ssh-add-authorized-keys", keys=[], reset=True)
    step("guest-ssh-get-authorized-keys")
    # A missing ~/.ssh with reset: created 0700, the user's.
    shutil.rmtree(os.path.join(home, ".ssh"))
    step("guest-ssh-add-authorized-keys", keys=[K1], reset=True)
    # Bad keys are refused before anything is touched.
    step("guest-ssh-add-authorized-keys", keys=[K2, "# a comment"])
    step("guest-ssh-add-authorized-keys", keys=[f"{K2}\n{K3}"])
    step("guest-ssh-remove-authorized-keys", keys=["#x"])
    step("guest-ssh-add-authorized-keys", keys=[K2, 7])
    step("guest-ssh-add-authorized-keys", keys=K2)
    step("guest-ssh-remove-authorized-keys")
    return results


@pytest.mark.qemu_ga
def test_ssh_keys_same_replies_and_files(peers: tuple[QemuGa, PyqgaAgent], user: pwd.struct_passwd) -> None:
    qga, ours = peers
    theirs = _run_ssh_steps(qga.connect, user)
    mine = _run_ssh_steps(ours.connect, user)
    for expected, got in zip(theirs, mine, strict=True):
        assert got == expected
    # The owner and modes qemu promises, on pyqga's last good state.
    final = mine[12][3]
    assert final["ssh"] == (0o700, user.pw_uid, user.pw_gid)
    assert final["files"] == {"authorized_keys": (0o600, user.pw_uid, user.pw_gid, K1.encode())}


@pytest.mark.qemu_ga
def test_ssh_keys_unknown_user_same_error(peers: tuple[QemuGa, PyqgaAgent]) -> None:
    qga, ours = peers
    for command, arguments in (("guest-ssh-get-authorized-keys", {}),
                               ("guest-ssh-add-authorized-keys", {"keys": [K1]}),
                               ("guest-ssh-remove-authorized-keys", {"keys": [K1]})):
        for name in ("pyqga-no-such-user", ""):
            request = {"username": name, **arguments}
            expected = call(qga.connect, command, request)
            assert call(ours.connect, command, request) == expected
            assert expected["error"]["desc"] == f"failed to lookup user '{name}': Success"


def test_ssh_write_is_atomic(user: pwd.struct_passwd, tmp_path: Path) -> None:
    """A new inode replaces the file (temp file + rename), already the user's with 0600."""
    agent = mock.Mock()
    shutil.rmtree(os.path.join(user.pw_dir, ".ssh"), ignore_errors=True)
    accounts.guest_ssh_add_authorized_keys(agent, user.pw_name, [K1])
    path = os.path.join(user.pw_dir, ".ssh", "authorized_keys")
    before = os.stat(path).st_ino
    seen: list[os.stat_result] = []
    real_rename = os.rename

    def spy(src: str, dst: str) -> None:
        seen.append(os.stat(src))
        assert Path(path).read_text() == K1   # the old file is whole until the rename
        real_rename(src, dst)

    with mock.patch.object(accounts.os, "rename", spy):
        accounts.guest_ssh_add_authorized_keys(agent, user.pw_name, [K2])
    assert len(seen) == 1
    tmp = seen[0]
    assert (stat.S_IMODE(tmp.st_mode), tmp.st_uid, tmp.st_gid) == (0o600, user.pw_uid, user.pw_gid)
    assert os.stat(path).st_ino != before
    assert Path(path).read_text() == f"{K1}\n{K2}"
    assert os.listdir(os.path.dirname(path)) == ["authorized_keys"]
    shutil.rmtree(os.path.join(user.pw_dir, ".ssh"))


# --- set-user-password -------------------------------------------------------------------------


@pytest.mark.qemu_ga
def test_set_user_password_same_effect(peers: tuple[QemuGa, PyqgaAgent], user: pwd.struct_passwd) -> None:
    qga, ours = peers
    name = user.pw_name
    for peer in (qga, ours):
        # Crypted: the hash lands in /etc/shadow as given.
        hashed = _crypt("one two", "$6$" + secrets.token_hex(8) + "$")
        reply = call(peer.connect, "guest-set-user-password",
                     {"username": name, "password": _b64(hashed), "crypted": True})
        assert reply == {"return": {}}
        assert _shadow_hash(name) == hashed
        # Plain: chpasswd hashes it; the password then verifies against the new hash.
        secret = "pl41n " + secrets.token_hex(4)
        reply = call(peer.connect, "guest-set-user-password",
                     {"username": name, "password": _b64(secret), "crypted": False})
        assert reply == {"return": {}}
        stored = _shadow_hash(name)
        assert stored != hashed and _crypt(secret, stored) == stored


@pytest.mark.qemu_ga
def test_set_user_password_same_errors(peers: tuple[QemuGa, PyqgaAgent], user: pwd.struct_passwd) -> None:
    qga, ours = peers
    name = user.pw_name
    before = _shadow_hash(name)
    for arguments in (
        {"username": name, "password": "!!not base64", "crypted": False},
        {"username": name, "password": _b64("a\nb"), "crypted": False},
        {"username": name + ":0", "password": _b64("x"), "crypted": False},
        {"username": name + "\n", "password": _b64("x"), "crypted": True},
        {"username": name, "password": _b64("x")},
        {"username": name, "password": 5, "crypted": False},
        {"username": name, "password": _b64("x"), "crypted": "yes"},
    ):
        expected = call(qga.connect, "guest-set-user-password", arguments)
        assert "error" in expected, (arguments, expected)
        assert call(ours.connect, "guest-set-user-password", arguments) == expected
    assert _shadow_hash(name) == before
    # chpasswd's own failure: qemu-ga 7.2 says only "child process has failed to set user
    # password"; qemu 11.1 (and pyqga) add chpasswd's output after ": ".
    arguments = {"username": "pyqga-no-such-user", "password": _b64("x"), "crypted": False}
    expected = call(qga.connect, "guest-set-user-password", arguments)
    got = call(ours.connect, "guest-set-user-password", arguments)
    assert expected["error"]["class"] == got["error"]["class"] == "GenericError"
    assert got["error"]["desc"].startswith(expected["error"]["desc"] + ": ")
    assert "pyqga-no-such-user" in got["error"]["desc"]


def test_password_base64_as_qemu() -> None:
    assert qbase64_decode("aGVsbG8=", strict=False) == b"hello"
    assert qbase64_decode("aGVs\nbG8=", strict=False) == b"hello"
    assert qbase64_decode("YQ=", strict=False) == b""          # glib drops a partial quantum
    assert qbase64_decode("YWJjZA", strict=False) == b"abc"
    with pytest.raises(Exception, match="Base64 data contains invalid characters"):
        qbase64_decode("YW J j", strict=False)


def test_set_user_password_feeds_chpasswd(tmp_path: Path) -> None:
    """The program, its flag and stdin, through a recorder found first on PATH."""
    record = tmp_path / "record"
    fake = tmp_path / "chpasswd"
    fake.write_text(f'#!/bin/sh\necho "$*" > {record}\ncat >> {record}\n')
    fake.chmod(0o755)
    agent = mock.Mock()
    with mock.patch.dict(os.environ, {"PATH": f"{tmp_path}:{os.environ.get('PATH', '')}"}):
        accounts.guest_set_user_password(agent, "alice", _b64("s3cret\0ignored"), False)
        assert record.read_text() == "\nalice:s3cret\n"
        accounts.guest_set_user_password(agent, "bob", _b64("$6$x$y"), True)
        assert record.read_text() == "-e\nbob:$6$x$y\n"
        fake.write_text("#!/bin/sh\necho 'chpasswd: nope'\nexit 3\n")
        with pytest.raises(Exception, match="child process has failed to set user password: chpasswd: nope"):
            accounts.guest_set_user_password(agent, "bob", _b64("x"), True)


# --- suspend -----------------------------------------------------------------------------------


class Recorder:
    """A folder of fake suspend helpers that log their arguments and exit as told (shell
    builtins only: qemu-ga runs them with PATH set to this folder alone)."""

    SCRIPT = """#!/bin/sh
name=${{0##*/}}
echo "$name $*" >> "{log}"
key="$name"
if [ "$name" = systemctl ] && [ "$1" = status ]; then key=systemctl-status; fi
read -r code < "{codes}/$key"
exit "$code"
"""

    def __init__(self, root: Path) -> None:
        self.bin = root / "bin"
        self.codes = root / "codes"
        self.log = root / "calls"
        self.state = root / "power-state"
        self.bin.mkdir(parents=True)
        self.codes.mkdir()

    def setup(self, codes: dict[str, int], state: str = "") -> None:
        """``codes``: helper name (``systemctl-status`` for the check) -> exit status; a helper
        not named is not installed."""
        for entry in list(self.bin.iterdir()) + list(self.codes.iterdir()):
            entry.unlink()
        for key, code in codes.items():
            (self.codes / key).write_text(str(code))
            name = "systemctl" if key.startswith("systemctl") else key
            script = self.bin / name
            script.write_text(self.SCRIPT.format(log=self.log, codes=self.codes))
            script.chmod(0o755)
        self.log.write_text("")
        self.state.write_text(state)

    def calls(self) -> list[str]:
        return [line.rstrip() for line in self.log.read_text().splitlines()]


@pytest.fixture(scope="module")
def suspend_peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Recorder, PyqgaAgent]]:
    recorder = Recorder(tmp_path_factory.mktemp("recorder"))
    env = {power.SUSPEND_PATH_ENV: str(recorder.bin), power.POWER_STATE_ENV: str(recorder.state)}
    with mock.patch.dict(os.environ, env):
        ours = PyqgaAgent(tmp_path_factory.mktemp("pyqga-suspend"))
    with ours:
        yield recorder, ours


SUSPEND_CASES = [
    # (command, helpers' exit codes, sysfs content, calls, reply: None = none, str = error text)
    ("guest-suspend-ram", {"systemctl-status": 3, "systemctl": 0}, "",
     ["systemctl status systemd-suspend", "systemctl suspend"], None),
    ("guest-suspend-disk", {"systemctl-status": 0, "pm-is-supported": 0, "pm-hibernate": 0}, "",
     ["systemctl status systemd-hibernate", "pm-is-supported --hibernate", "pm-hibernate"], None),
    ("guest-suspend-hybrid", {"pm-is-supported": 0, "pm-suspend-hybrid": 0}, "",
     ["pm-is-supported --suspend-hybrid", "pm-suspend-hybrid"], None),
    ("guest-suspend-ram", {"systemctl-status": 4, "pm-is-supported": 1}, "",
     ["systemctl status systemd-suspend", "pm-is-supported --suspend"], power.NOT_SUPPORTED),
    ("guest-suspend-hybrid", {}, "", [], power.NOT_SUPPORTED),
    # qemu-ga's quirk: systemd claims the mode, fails, and nothing else claims it: no error.
    ("guest-suspend-ram", {"systemctl-status": 3, "systemctl": 1}, "",
     ["systemctl status systemd-suspend", "systemctl suspend"], None),
    # pm-utils claims it, fails; the next mechanism does not: no error either.
    ("guest-suspend-disk", {"pm-is-supported": 0, "pm-hibernate": 5}, "",
     ["pm-is-supported --hibernate", "pm-hibernate"], None),
]


def _check_suspend(replies: list[Any], expected: str | None) -> None:
    if expected is None:
        assert replies == []          # no reply at all on success
    else:
        assert replies == [{"error": {"class": "GenericError", "desc": expected}}]


@pytest.mark.parametrize(("command", "codes", "state", "calls", "expected"), SUSPEND_CASES)
def test_suspend_runs_qemus_mechanisms(suspend_peer: tuple[Recorder, PyqgaAgent], command: str,
                                       codes: dict[str, int], state: str, calls: list[str],
                                       expected: str | None) -> None:
    recorder, ours = suspend_peer
    recorder.setup(codes, state)
    _check_suspend(exchange(ours.connect, {"execute": command}), expected)
    assert recorder.calls() == calls


def test_suspend_sysfs_fallback(suspend_peer: tuple[Recorder, PyqgaAgent]) -> None:
    recorder, ours = suspend_peer
    for command, word in (("guest-suspend-ram", "mem"), ("guest-suspend-disk", "disk")):
        recorder.setup({"systemctl-status": 4}, "freeze mem disk\n")
        assert exchange(ours.connect, {"execute": command}) == []
        assert recorder.state.read_text().startswith(word)
    recorder.setup({}, "freeze mem disk\n")   # hybrid has no sysfs form
    _check_suspend(exchange(ours.connect, {"execute": "guest-suspend-hybrid"}), power.NOT_SUPPORTED)
    recorder.setup({}, "freeze\n")
    _check_suspend(exchange(ours.connect, {"execute": "guest-suspend-ram"}), power.NOT_SUPPORTED)
    assert recorder.state.read_text() == "freeze\n"


def _machine_cannot_sleep_by_sysfs() -> bool:
    try:
        offered = Path(power.LINUX_SYS_STATE_FILE).read_bytes()[:31]
    except OSError:
        return True
    return b"mem" not in offered and b"disk" not in offered


@pytest.mark.qemu_ga
def test_suspend_same_as_qemu_ga(suspend_peer: tuple[Recorder, PyqgaAgent],
                                 tmp_path_factory: pytest.TempPathFactory) -> None:
    """qemu-ga with PATH at the same recorder: the same helper calls, the same (absent) replies.
    Only where its last resort, /sys/power/state, offers neither mem nor disk."""
    require(_machine_cannot_sleep_by_sysfs(),
            "/sys/power/state offers mem or disk: qemu-ga would really suspend this machine")
    _need_qemu_ga()
    recorder, ours = suspend_peer
    workdir = tmp_path_factory.mktemp("qga-suspend")
    with mock.patch.dict(os.environ, {"PATH": str(recorder.bin)}), QemuGa(workdir) as qga:
        for command, codes, _state, calls, expected in SUSPEND_CASES:
            recorder.setup(codes, Path(power.LINUX_SYS_STATE_FILE).read_text()
                           if os.path.exists(power.LINUX_SYS_STATE_FILE) else "")
            theirs = exchange(qga.connect, {"execute": command})
            their_calls = recorder.calls()
            recorder.setup(codes, Path(power.LINUX_SYS_STATE_FILE).read_text()
                           if os.path.exists(power.LINUX_SYS_STATE_FILE) else "")
            mine = exchange(ours.connect, {"execute": command})
            assert mine == theirs, command
            assert recorder.calls() == their_calls == calls
            _check_suspend(mine, expected)


def test_suspend_setup_read_from_environment() -> None:
    setup = power.SuspendSetup.from_environment({power.SUSPEND_PATH_ENV: "/x",
                                                 power.POWER_STATE_ENV: "/y"})
    assert setup == power.SuspendSetup(path="/x", state_file="/y")
    assert power.SuspendSetup.from_environment({}) == power.SuspendSetup(None, "/sys/power/state")


@pytest.mark.qemu_ga
def test_disabled_with_b_like_qemu_ga(tmp_path: Path, user: pwd.struct_passwd) -> None:
    """-b disables each of them; nothing runs. qemu-ga refuses with its own text, pyqga with
    "the command is not allowed" (README: where we differ); both as errors, before any action."""
    _need_qemu_ga()
    recorder = Recorder(tmp_path / "recorder")
    recorder.setup({"systemctl-status": 3, "systemctl": 0}, "mem disk\n")
    env = {power.SUSPEND_PATH_ENV: str(recorder.bin), power.POWER_STATE_ENV: str(recorder.state)}
    args = ["-b", ",".join(NEW_COMMANDS)]
    with mock.patch.dict(os.environ, env):
        ours = PyqgaAgent(tmp_path / "pyqga", args)
    shutil.rmtree(os.path.join(user.pw_dir, ".ssh"), ignore_errors=True)
    requests = {
        "guest-set-user-password": {"username": user.pw_name, "password": _b64("x"), "crypted": False},
        "guest-ssh-get-authorized-keys": {"username": user.pw_name},
        "guest-ssh-add-authorized-keys": {"username": user.pw_name, "keys": [K1]},
        "guest-ssh-remove-authorized-keys": {"username": user.pw_name, "keys": [K1]},
    }
    before = _shadow_hash(user.pw_name)
    with QemuGa(tmp_path / "qga", args) as qga, ours:
        for name in NEW_COMMANDS:
            request: dict[str, Any] = {"execute": name}
            if name in requests:
                request["arguments"] = requests[name]
            if name.startswith("guest-suspend"):   # qemu-ga: only where it could never suspend
                their = exchange(qga.connect, request) if _machine_cannot_sleep_by_sysfs() else None
            else:
                their = exchange(qga.connect, request)
            mine = exchange(ours.connect, request)
            assert len(mine) == 1 and mine[0]["error"]["desc"].endswith("the command is not allowed"), mine
            if their is not None:
                assert len(their) == 1 and "has been disabled" in their[0]["error"]["desc"], their
                assert mine[0]["error"]["class"] == their[0]["error"]["class"]
    assert recorder.calls() == [] and recorder.state.read_text() == "mem disk\n"
    assert ssh_state(user.pw_dir) == {"ssh": None}
    assert _shadow_hash(user.pw_name) == before
