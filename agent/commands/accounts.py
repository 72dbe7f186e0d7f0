"""``guest-set-user-password`` and the three ``guest-ssh-*-authorized-keys`` commands, as qemu-ga.

``guest-set-user-password {username, password, crypted}`` (qemu's ``qga/commands-posix.c``): the
password is base64 (qemu's ``qbase64_decode``: only base64 characters and newlines, then glib's
lenient decoder, and the result read as a C string up to its first NUL); a newline in it is
"forbidden characters in raw password", a newline or ``:`` in the username "forbidden
characters in username"; then ``chpasswd`` (``-e`` when crypted), found on ``PATH``, reads
``user:password\\n`` on stdin; its output becomes the error text when it fails (qemu 11.1's
``ga_run_command``: "child process has failed to set user password: <output>").

The ssh commands (qemu's ``qga/commands-posix-ssh.c``) work on ``~user/.ssh/authorized_keys``:

- keys are checked first: one that starts with ``#`` or holds a newline is "invalid OpenSSH
  public key: '<key>'"; then the user is looked up ("failed to lookup user '<name>': Success"
  for an unknown user, glib's words);
- get: the file's lines, stripped, without blank and ``#`` lines, in REVERSE order (qemu
  prepends each to its list); a missing file is glib's "Failed to open file ..." error;
- add: the file's lines (not re-read with ``reset``) plus each new key not already there,
  joined with ``\\n`` and no final newline; ``~/.ssh`` is created 0700 owned by the user when
  the file cannot be read and the folder is missing;
- remove: nothing to do when the file is missing; otherwise every line equal to a key goes;
- the file is written as glib's ``g_file_set_contents`` does, a temporary file in the same
  folder renamed over it, and ends owned by the user (uid and primary gid) with mode 0600.

Where **we** differ from qemu-ga, deliberately: the temporary file gets its owner and mode
before the rename (qemu-ga chowns and chmods after it, so the file is briefly root's with the
umask's mode); ``chpasswd`` that runs longer than :data:`PROGRAM_TIMEOUT` is killed and reported.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import subprocess
from typing import TYPE_CHECKING, Any

from pyqga.agent.commands.qbase64 import qbase64_decode
from pyqga.agent.registry import Command, Param
from pyqga.protocol.errors import AgentError, command_failed, invalid_params

if TYPE_CHECKING:
    from pyqga.agent.state import AgentState

PROGRAM_TIMEOUT = 60.0
AUTHORIZED_KEYS = "authorized_keys"
# glib's g_strstrip: ASCII whitespace only.
_ASCII_SPACE = " \t\n\v\f\r"

# --- guest-set-user-password ------------------------------------------------------------------


def guest_set_user_password(agent: AgentState, username: str, password: str,
                            crypted: bool) -> dict[str, Any]:
    raw = qbase64_decode(password, strict=False).split(b"\0", 1)[0]   # qemu reads it as a C string
    if b"\n" in raw:
        raise command_failed("forbidden characters in raw password")
    if "\n" in username or ":" in username:
        raise command_failed("forbidden characters in username")
    name = username.split("\0", 1)[0]
    argv = ["chpasswd", "-e"] if crypted else ["chpasswd"]
    agent.log.info("guest-set-user-password called for user '%s'%s", name, " (crypted)" if crypted else "")
    run_with_input(argv, name.encode("utf-8", "surrogateescape") + b":" + raw + b"\n",
                   "set user password")
    return {}


def run_with_input(argv: list[str], data: bytes, action: str) -> None:
    """qemu 11.1's ``ga_run_command``: own session, ``data`` on stdin, stdout and stderr
    captured together and quoted in the error."""
    try:
        proc = subprocess.run(argv, input=data, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              start_new_session=True, timeout=PROGRAM_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise command_failed(f"{argv[0]} did not finish within {PROGRAM_TIMEOUT:g} s: killed") from None
    except OSError as exc:
        # qemu-ga's forked child reports its failed execvp through the pipe with perror().
        raise command_failed(f"child process has failed to {action}: failed to exec "
                             f"'{argv[0]}': {exc.strerror}\n") from None
    output = proc.stdout.decode("utf-8", "replace")
    if proc.returncode < 0:
        raise command_failed("child process has terminated abnormally"
                             + (f": {output}" if output else ""))
    if proc.returncode > 0:
        if output:
            raise command_failed(f"child process has failed to {action}: {output}")
        raise command_failed(f"child process has failed to {action}: exit status {proc.returncode}")


# --- ssh keys ---------------------------------------------------------------------------------


def check_keys(keys: list[Any]) -> list[str]:
    for index, key in enumerate(keys):
        if not isinstance(key, str):
            raise invalid_params(f"Invalid parameter type for 'keys[{index}]', expected: string")
    for key in keys:
        if key.startswith("#") or "\n" in key:
            raise command_failed(f"invalid OpenSSH public key: '{key}'")
    return keys


def lookup_user(username: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(username.split("\0", 1)[0])
    except KeyError:
        # glib's g_unix_get_passwd_entry reports getpwnam_r's 0 ("not found") as strerror(0).
        raise command_failed(f"failed to lookup user '{username}': Success") from None


def _display(path: str) -> str:
    return f"\u201c{path}\u201d"


def read_authkeys(path: str) -> list[str]:
    """The file split on newlines as ``g_strsplit(contents, "\\n", -1)``; glib's error texts."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise command_failed(f"failed to read '{path}': Failed to open file "
                             f"{_display(path)}: {exc.strerror}") from None
    try:
        chunks = []
        while True:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    except OSError as exc:
        raise command_failed(f"failed to read '{path}': Failed to read from file "
                             f"{_display(path)}: {exc.strerror}") from None
    finally:
        os.close(fd)
    contents = b"".join(chunks).split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
    return contents.split("\n") if contents else []


def mkdir_for_user(path: str, user: pwd.struct_passwd, mode: int) -> None:
    try:
        os.mkdir(path, mode)
    except OSError as exc:
        raise command_failed(f"failed to create directory '{path}': {exc.strerror}") from None
    try:
        os.chown(path, user.pw_uid, user.pw_gid)
    except OSError as exc:
        raise command_failed(f"failed to set ownership of directory '{path}': {exc.strerror}") from None
    try:
        os.chmod(path, mode)
    except OSError as exc:
        raise command_failed(f"failed to set permissions of directory '{path}': {exc.strerror}") from None


def write_authkeys(path: str, lines: list[str], user: pwd.struct_passwd) -> None:
    """Atomically: a temporary file beside ``path``, owned by the user, 0600, synced, renamed."""
    data = "\n".join(lines).encode("utf-8", "surrogateescape")
    folder, base = os.path.split(path)
    fd = -1
    tmp = ""
    for attempt in range(100):
        tmp = os.path.join(folder, f".{base}.{os.getpid()}.{attempt}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
            break
        except FileExistsError:
            continue
        except OSError as exc:
            raise command_failed(f"failed to write to '{path}': Failed to create file "
                                 f"{_display(tmp)}: {exc.strerror}") from None
    if fd < 0:
        raise command_failed(f"failed to write to '{path}': Failed to create file {_display(tmp)}: "
                             "File exists")
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except OSError as exc:
            raise command_failed(f"failed to write to '{path}': Failed to write file "
                                 f"{_display(tmp)}: {exc.strerror}") from None
        try:
            os.fchown(fd, user.pw_uid, user.pw_gid)
        except OSError as exc:
            # qemu's text, "directory" included.
            raise command_failed(f"failed to set ownership of directory '{path}': {exc.strerror}") from None
        try:
            os.fchmod(fd, 0o600)
        except OSError as exc:
            raise command_failed(f"failed to set permissions of '{path}': {exc.strerror}") from None
        os.close(fd)
        fd = -1
        try:
            os.rename(tmp, path)
        except OSError as exc:
            raise command_failed(f"failed to write to '{path}': Failed to rename file {_display(tmp)} "
                                 f"to {_display(path)}: g_rename() failed: {exc.strerror}") from None
        tmp = ""
    finally:
        if fd >= 0:
            os.close(fd)
        if tmp:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def _paths(user: pwd.struct_passwd) -> tuple[str, str]:
    ssh = os.path.join(user.pw_dir, ".ssh")
    return ssh, os.path.join(ssh, AUTHORIZED_KEYS)


def guest_ssh_get_authorized_keys(agent: AgentState, username: str) -> dict[str, Any]:
    user = lookup_user(username)
    keys = []
    for line in read_authkeys(_paths(user)[1]):
        line = line.strip(_ASCII_SPACE)
        if line and not line.startswith("#"):
            keys.append(line)
    keys.reverse()   # qemu-ga prepends each key to its list
    return {"keys": keys}


def guest_ssh_add_authorized_keys(agent: AgentState, username: str, keys: list[Any],
                                  reset: bool = False) -> dict[str, Any]:
    check_keys(keys)
    user = lookup_user(username)
    ssh_path, path = _paths(user)
    lines: list[str] | None = None
    if not reset:
        try:
            lines = read_authkeys(path)
        except AgentError:   # qemu-ga ignores why it could not read the file
            lines = None
    if lines is None:
        if not os.path.isdir(ssh_path):
            mkdir_for_user(ssh_path, user, 0o700)
        lines = []
    for key in keys:
        if key not in lines:
            lines.append(key)
    agent.log.info("guest-ssh-add-authorized-keys: %d key(s) for '%s'%s", len(keys), username,
                   " (reset)" if reset else "")
    write_authkeys(path, lines, user)
    return {}


def guest_ssh_remove_authorized_keys(agent: AgentState, username: str,
                                     keys: list[Any]) -> dict[str, Any]:
    check_keys(keys)
    user = lookup_user(username)
    path = _paths(user)[1]
    if not os.path.exists(path):   # g_file_test(G_FILE_TEST_EXISTS) follows symlinks
        return {}
    unwanted = set(keys)
    lines = [line for line in read_authkeys(path) if line not in unwanted]
    agent.log.info("guest-ssh-remove-authorized-keys: %d key(s) for '%s'", len(keys), username)
    write_authkeys(path, lines, user)
    return {}


COMMANDS = (
    Command("guest-set-user-password", guest_set_user_password,
            "Set a user's password with chpasswd: password is base64, crypted says it is "
            "already a crypt(3) hash.",
            (Param("username", str, doc="the user"),
             Param("password", str, doc="base64 of the password or of its hash"),
             Param("crypted", bool, doc="true: password is a crypt(3) hash (chpasswd -e)")),
            blocking=True),
    Command("guest-ssh-get-authorized-keys", guest_ssh_get_authorized_keys,
            "The public keys in ~username/.ssh/authorized_keys: {keys}.",
            (Param("username", str, doc="the user"),),
            blocking=True),
    Command("guest-ssh-add-authorized-keys", guest_ssh_add_authorized_keys,
            "Add public keys to ~username/.ssh/authorized_keys (replace them all with reset).",
            (Param("username", str, doc="the user"),
             Param("keys", list, doc="OpenSSH public keys, one line each"),
             Param("reset", bool, required=False, doc="true: the file holds only these keys")),
            blocking=True),
    Command("guest-ssh-remove-authorized-keys", guest_ssh_remove_authorized_keys,
            "Remove public keys from ~username/.ssh/authorized_keys.",
            (Param("username", str, doc="the user"),
             Param("keys", list, doc="OpenSSH public keys to remove")),
            blocking=True),
)
