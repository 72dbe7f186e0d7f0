"""libvirt's agent verbs end to end (issue 11): each run against a guest whose agent is pyqga
and one whose agent is Debian's qemu-ga, both domains of the session's private libvirtd, and the
results compared.  What libvirt shows depends only on what the agent answered, so the same
guest image must give the same output (values that move, such as times and load, aside).

The verbs that change the guest act on things the test owns: a throwaway user it adds to the
guest's /etc/passwd, /etc/group and /etc/shadow, the guest clock (put back to the host's time at
the end), the second vCPU (brought back) and a suspend to RAM (woken up).  The guest is busybox
with no ``chpasswd``: ``set-user-password`` is first compared as the guest is (both agents fail,
each with its own version's words), then with a ``chpasswd`` the test installs (a shell script
with chpasswd's interface: ``user:password`` lines on stdin, ``-e`` for a crypt(3) hash)."""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.rig.image import GuestImage
from tests.rig.libvirt import LibvirtGuest, PrivateLibvirt

pytestmark = pytest.mark.root
MOVING = re.compile(r"^(load\.|fs\.\d+\.(used|total)|user\.\d+\.login-time|time)")


@pytest.fixture(scope="module")
def guests(private_libvirt: PrivateLibvirt, guest_image: GuestImage,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, LibvirtGuest]]:
    """One domain per agent, booted together; 2 vCPUs (one to take offline) and S3 on."""
    made = {
        name: LibvirtGuest.create(private_libvirt, guest_image, tmp_path_factory.mktemp(f"verbs-{name}"),
                                  agents=(agent,), vcpus=2, suspend_to_mem=True)
        for name, agent in (("pyqga", "pyqga-virtio"), ("qemu-ga", "qga-virtio0"))
    }
    try:
        for guest in made.values():
            guest.wait_agent(180)
        yield made
    finally:
        for guest in made.values():
            private_libvirt.virsh("destroy", guest.name, check=False)


def virsh(guest: LibvirtGuest, *args: str) -> str:
    result = guest.lv.virsh(*args, guest.name, check=False, timeout=60)
    assert result.returncode == 0, f"virsh {' '.join(args)} on {guest.name}: {result.stderr.strip()}"
    return result.stdout


def fields(output: str) -> dict[str, str]:
    """``virsh guestinfo`` lines ``key : value``, without values that move between two calls."""
    found = {}
    for line in output.splitlines():
        key, sep, value = line.partition(":")
        if sep and not MOVING.match(key.strip()):
            found[key.strip()] = value.strip()
    return found


@pytest.mark.parametrize("flags", [(), ("--os",), ("--timezone",), ("--hostname",), ("--filesystem",),
                                   ("--disk",), ("--interface",), ("--user",)])
def test_guestinfo_is_the_same_with_either_agent(guests: dict[str, LibvirtGuest],
                                                 flags: tuple[str, ...]) -> None:
    ours, theirs = (fields(virsh(guests[name], "guestinfo", *flags)) for name in ("pyqga", "qemu-ga"))
    # qemu-ga reads disk serials from udev's database, which this busybox guest does not run;
    # pyqga reads them from sysfs, so it tells libvirt more (and the right values).
    serials = {key: ours.pop(key) for key in list(ours) if key.endswith(".serial")}
    if flags in ((), ("--filesystem",)):
        assert set(serials.values()) == {"pyqga-root", "pyqga-data"}, serials
    assert ours == {key: value for key, value in theirs.items() if not key.endswith(".serial")}
    if flags == ("--os",) or not flags:
        assert ours.get("os.id") == "debian" and ours.get("os.kernel-release")
    if flags == ("--disk",) or not flags:
        assert int(ours["disk.count"]) >= 2  # the root and data disks


def test_domifaddr_through_the_agent(guests: dict[str, LibvirtGuest]) -> None:
    ours, theirs = (virsh(guests[name], "domifaddr", "--source", "agent", "--full")
                    for name in ("pyqga", "qemu-ga"))
    assert ours == theirs
    assert re.search(r"^ lo +00:00:00:00:00:00", ours, re.M), ours  # the guest has no network


def test_guestvcpus_reads_the_same(guests: dict[str, LibvirtGuest]) -> None:
    ours, theirs = (virsh(guests[name], "guestvcpus") for name in ("pyqga", "qemu-ga"))
    assert ours == theirs
    assert re.search(r"vcpus\s*:\s*0-1\n", ours) and re.search(r"online\s*:\s*0-1\n", ours), ours
    assert re.search(r"offlinable\s*:\s*1\n", ours), ours


def test_domtime_reads_the_guest_clock(guests: dict[str, LibvirtGuest]) -> None:
    for name in ("pyqga", "qemu-ga"):
        output = virsh(guests[name], "domtime", "--pretty")
        assert re.search(r"Time: \d{4}-\d\d-\d\d \d\d:\d\d:\d\d", output), (name, output)


# --- verbs that change the guest ------------------------------------------------------------

AGENTS = ("pyqga", "qemu-ga")
AGENT_ERROR = "error: internal error: unable to execute QEMU agent command"
USER, UID = "pyqga-lv", 4242
HOME = f"/home/{USER}"
ADD_USER = f"""
grep -q '^{USER}:' /etc/passwd && exit 0
echo '{USER}:x:{UID}:{UID}:pyqga test user:{HOME}:/bin/sh' >> /etc/passwd
echo '{USER}:x:{UID}:' >> /etc/group
[ -f /etc/shadow ] || {{ echo 'root:*:19000:0:99999:7:::' > /etc/shadow && chmod 600 /etc/shadow; }}
echo '{USER}:!:19000:0:99999:7:::' >> /etc/shadow
mkdir -p {HOME} && chown {UID}:{UID} {HOME} && chmod 755 {HOME}
"""
CHPASSWD = r"""#!/bin/sh
# chpasswd for the pyqga test guest (busybox-static has none): "user:password" lines on stdin;
# -e: the password is already a crypt(3) hash, otherwise it is hashed with SHA-512.
crypted=
[ "$1" = -e ] && crypted=1
status=0
while IFS= read -r line; do
    user=${line%%:*}
    pass=${line#*:}
    if ! grep -q "^$user:" /etc/shadow; then
        echo "chpasswd: user '$user' does not exist"
        status=1
        continue
    fi
    [ -n "$crypted" ] || pass=$(mkpasswd -m sha512 "$pass") || exit 1
    awk -v u="$user" -v p="$pass" 'BEGIN { FS = OFS = ":" } $1 == u { $2 = p } { print }' \
        /etc/shadow > /etc/shadow.new && cat /etc/shadow.new > /etc/shadow && rm /etc/shadow.new
done
exit $status
"""
# Installs CHPASSWD (on stdin) and locks the user again, so each test starts from "!".
INSTALL_CHPASSWD = (f"cat > /usr/sbin/chpasswd && chmod 755 /usr/sbin/chpasswd "
                    f"&& echo '{USER}:!' | chpasswd -e")
PASSWORD = "Tr0ub4dor & 3: \u00fc"
# openssl passwd -6 -salt pyqgasalt 'correct horse battery'
CRYPTED_PASSWORD = "correct horse battery"
CRYPTED = ("$6$pyqgasalt$ysEM.YrVGJ4/sOXUp.KzSL/X8ujpUDVkA1EabfR1cCM0CNc"
           "KD7VpWzWmSMZnjOODBVHfZXrRYRqaqOXhV2FWD/")
# Well-formed ed25519 public keys (type, then 32 key bytes), not anyone's.
_ED25519 = b"\0\0\0\x0bssh-ed25519\0\0\0\x20"
KEYS = [f"ssh-ed25519 {base64.b64encode(_ED25519 + bytes([n]) * 32).decode()} pyqga-test-{n}"
        for n in (1, 2, 3)]
SLACK = 120   # seconds a guest clock may run ahead of a reading, under TCG on a busy machine


def attempt(guest: LibvirtGuest, *args: str) -> tuple[int, str, str]:
    """virsh's exit status, stdout and stderr, with the domain's name as DOMAIN so two compare."""
    result = guest.lv.virsh(*args, guest.name, check=False, timeout=90)
    return (result.returncode, result.stdout.strip().replace(guest.name, "DOMAIN"),
            result.stderr.strip().replace(guest.name, "DOMAIN"))


def same(guests: dict[str, LibvirtGuest], *args: str) -> tuple[int, str, str]:
    """Run a verb on both domains; both must give the same status and words."""
    ours, theirs = (attempt(guests[name], *args) for name in AGENTS)
    assert ours == theirs, f"virsh {' '.join(args)}:\npyqga:   {ours}\nqemu-ga: {theirs}"
    return ours


@pytest.fixture(scope="module")
def user(guests: dict[str, LibvirtGuest]) -> str:
    """The throwaway user, in both guests: uid and gid 4242, home 0755, password locked."""
    for guest in guests.values():
        guest.shell(ADD_USER)
    return USER


def shadow_hash(guest: LibvirtGuest) -> str:
    return guest.shell(f"awk -F: '$1 == \"{USER}\" {{ print $2 }}' /etc/shadow").strip()


def crypt_in_guest(guest: LibvirtGuest, password: str, salt: str) -> str:
    """The SHA-512 crypt(3) of ``password`` with ``salt``, made by the guest's busybox mkpasswd."""
    return guest.shell(f'mkpasswd -m sha512 -S {salt} "$(cat)"', password.encode()).strip()


def test_set_user_password_without_chpasswd(guests: dict[str, LibvirtGuest], user: str) -> None:
    """As the guest is: no chpasswd.  Both fail, each in its version's words: qemu-ga 7.2 looks
    chpasswd up itself; newer qemu-ga (``ga_run_command``, whose words pyqga uses) execs it and
    passes on the child's perror()."""
    for guest in guests.values():
        guest.shell("rm -f /usr/sbin/chpasswd")
    ours, theirs = (attempt(guests[name], "set-user-password", "--user", user, "--password", "x")
                    for name in AGENTS)
    prefix = f"{AGENT_ERROR} 'guest-set-user-password': "
    assert ours == (1, "", prefix + "child process has failed to set user password: "
                    "failed to exec 'chpasswd': No such file or directory"), ours
    assert theirs == (1, "", prefix + "cannot find 'passwd' program in PATH"), theirs


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_set_user_password(guests: dict[str, LibvirtGuest], user: str, encrypted: bool) -> None:
    """The user starts locked ("!"); afterwards /etc/shadow holds the given hash (--encrypted) or
    a SHA-512 hash that the password itself reproduces: the agent passed it on intact."""
    for guest in guests.values():
        guest.shell(INSTALL_CHPASSWD, CHPASSWD.encode())
        assert shadow_hash(guest) == "!"
    flags = ("--encrypted",) if encrypted else ()
    secret = CRYPTED if encrypted else PASSWORD
    status, output, _ = same(guests, "set-user-password", *flags, "--user", user, "--password", secret)
    assert (status, output) == (0, f"Password set successfully for {user} in DOMAIN")
    for name, guest in guests.items():
        hashed = shadow_hash(guest)
        if encrypted:
            assert hashed == CRYPTED, name
            assert crypt_in_guest(guest, CRYPTED_PASSWORD, "pyqgasalt") == hashed, name
        else:
            assert hashed.startswith("$6$"), (name, hashed)
            assert crypt_in_guest(guest, PASSWORD, hashed.split("$")[2]) == hashed, name


def test_set_user_password_errors(guests: dict[str, LibvirtGuest], user: str) -> None:
    """Refused before chpasswd runs: the same words.  chpasswd failing: newer qemu-ga (and pyqga)
    quote its output, qemu-ga 7.2 does not."""
    for guest in guests.values():
        guest.shell(INSTALL_CHPASSWD, CHPASSWD.encode())
    prefix = f"{AGENT_ERROR} 'guest-set-user-password': "
    for who, secret, error in (("a:b", "x", "forbidden characters in username"),
                               (user, "two\nlines", "forbidden characters in raw password")):
        refused = same(guests, "set-user-password", "--user", who, "--password", secret)
        assert refused == (1, "", prefix + error), refused
    ours, theirs = (attempt(guests[name], "set-user-password", "--user", "nobody-here", "--password", "x")
                    for name in AGENTS)
    prefix += "child process has failed to set user password"
    assert theirs == (1, "", prefix), theirs
    assert ours == (1, "", prefix + ": chpasswd: user 'nobody-here' does not exist"), ours
    assert [shadow_hash(guest) for guest in guests.values()] == ["!", "!"]


def authorized_keys(guest: LibvirtGuest) -> tuple[str, str]:
    """Owner and mode of ~/.ssh and the file, then the file's exact content."""
    listing = guest.shell(f"cd {HOME}/.ssh && stat -c '%n %u:%g %a' . authorized_keys")
    return listing.strip(), guest.shell(f"cat {HOME}/.ssh/authorized_keys")


def test_user_sshkeys(guests: dict[str, LibvirtGuest], user: str, tmp_path: Path) -> None:
    """get, add, --remove, add again, --reset with keys and without, and an add over a file
    that root left 0644: each step the same through both agents, and the file as qemu-ga
    leaves it (owned by the user, 0600, in a 0700 ~/.ssh it creates)."""
    for guest in guests.values():
        guest.shell(f"rm -rf {HOME}/.ssh")
    files = {}
    for name, keys in (("1+2", KEYS[:2]), ("1", KEYS[:1]), ("3", KEYS[2:])):
        files[name] = tmp_path / f"keys-{name}"
        files[name].write_text("".join(f"{key}\n" for key in keys))
    missing = same(guests, "get-user-sshkeys", "--user", user)
    path = f"{HOME}/.ssh/authorized_keys"
    assert missing == (1, "", f"{AGENT_ERROR} 'guest-ssh-get-authorized-keys': failed to read '{path}': "
                       f"Failed to open file \u201c{path}\u201d: No such file or directory"), missing
    owned = f". {UID}:{UID} 700\nauthorized_keys {UID}:{UID} 600"
    steps: list[tuple[tuple[str, ...], list[str]]] = [
        (("--file", str(files["1+2"])), KEYS[:2]),
        (("--file", str(files["1"]), "--remove"), KEYS[1:2]),
        (("--file", str(files["1"])), [KEYS[1], KEYS[0]]),
        (("--file", str(files["3"]), "--reset"), KEYS[2:]),
        (("--reset",), []),
    ]
    for flags, expected in steps:
        assert same(guests, "set-user-sshkeys", "--user", user, *flags)[0] == 0, flags
        assert_same_file(guests, owned, expected, flags)
        status, listed, _ = same(guests, "get-user-sshkeys", "--user", user)
        assert status == 0 and all(key in listed for key in expected), (flags, listed)
    for guest in guests.values():
        guest.shell(f"chown 0:0 {path} && chmod 644 {path}")
    assert same(guests, "set-user-sshkeys", "--user", user, "--file", str(files["1"]))[0] == 0
    assert_same_file(guests, owned, KEYS[:1], "over root's 0644 file")


def assert_same_file(guests: dict[str, LibvirtGuest], owned: str, keys: list[str], step: object) -> None:
    """Both agents left the same bytes (virsh sends the key file's last, empty line as a key too,
    and qemu-ga writes it: blank lines are part of the comparison), owner and mode."""
    ours, theirs = (authorized_keys(guests[name]) for name in AGENTS)
    assert ours == theirs, (step, ours, theirs)
    assert ours[0] == owned, (step, ours)
    assert [line for line in ours[1].split("\n") if line] == keys, (step, ours)


def test_user_sshkeys_errors(guests: dict[str, LibvirtGuest], user: str, tmp_path: Path) -> None:
    """A comment line is no key (virsh passes it on, the agent refuses it); an unknown user is
    glib's "Success"; the same words through both agents for every ssh verb."""
    commented = tmp_path / "commented"
    commented.write_text(f"# a comment\n{KEYS[0]}\n")
    keys = tmp_path / "keys"
    keys.write_text(f"{KEYS[0]}\n")
    for who, flags, command, error in (
            (user, ("--file", str(commented)), "add", "invalid OpenSSH public key: '# a comment'"),
            ("nobody-here", ("--file", str(keys)), "add", "failed to lookup user 'nobody-here': Success"),
            ("nobody-here", ("--file", str(keys), "--remove"), "remove",
             "failed to lookup user 'nobody-here': Success")):
        assert same(guests, "set-user-sshkeys", "--user", who, *flags) == (
            1, "", f"{AGENT_ERROR} 'guest-ssh-{command}-authorized-keys': {error}")
    assert same(guests, "get-user-sshkeys", "--user", "nobody-here") == (
        1, "", f"{AGENT_ERROR} 'guest-ssh-get-authorized-keys': failed to lookup user 'nobody-here': Success")


def domtime(guest: LibvirtGuest) -> int:
    """The guest clock as libvirt reads it (guest-get-time), in seconds."""
    match = re.search(r"Time: (\d+)", virsh(guest, "domtime"))
    assert match, guest.name
    return int(match.group(1))


def assert_clocks_near(guests: dict[str, LibvirtGuest], when: float, what: str) -> None:
    """Both guest clocks, through libvirt and through the guest's own ``date``, at ``when``
    or up to SLACK seconds later."""
    for name, guest in guests.items():
        for seen in (domtime(guest), int(guest.shell("date +%s"))):
            assert when - 2 <= seen <= when + SLACK, f"{name} after {what}: {seen}, expected ~{when:.0f}"


def test_domtime_set_and_sync(guests: dict[str, LibvirtGuest]) -> None:
    """Times qemu-ga refuses (a year past 2069) or the kernel does (0) fail alike; --time sets
    the clock and the RTC (hwclock -w); moving the system clock alone, then --sync brings it back
    from the RTC (hwclock -s); --now puts the host's time back."""
    set_at = 1_500_000_000
    for seconds, error in ((4_102_444_800, "Invalid time"),   # 2100
                           (0, "Failed to set time to guest: Invalid argument")):
        assert same(guests, "domtime", "--time", str(seconds)) == (
            1, "", f"{AGENT_ERROR} 'guest-set-time': {error}")
    try:
        assert same(guests, "domtime", "--time", str(set_at)) == (0, "", "")
        assert_clocks_near(guests, set_at, "--time")
        for guest in guests.values():
            guest.shell("date -s @2000000000 > /dev/null")
        assert_clocks_near(guests, 2_000_000_000, "date -s")
        assert same(guests, "domtime", "--sync") == (0, "", "")
        assert_clocks_near(guests, set_at, "--sync")
    finally:
        status = same(guests, "domtime", "--now")
    assert status == (0, "", "")
    assert_clocks_near(guests, time.time(), "--now")


def cpu1_online(guest: LibvirtGuest) -> str:
    return guest.shell("cat /sys/devices/system/cpu/cpu1/online").strip()


def test_guestvcpus_set(guests: dict[str, LibvirtGuest]) -> None:
    """Take vCPU 1 offline and bring it back; vCPU 0 cannot go, and a vCPU the guest lacks is
    libvirt's own error: all the same through both agents, and the guest's sysfs agrees."""
    try:
        assert same(guests, "guestvcpus", "--cpulist", "1", "--disable")[0] == 0
        listing = same(guests, "guestvcpus")[1]
        assert re.search(r"online\s*:\s*0\n", listing), listing
        assert [cpu1_online(guest) for guest in guests.values()] == ["0", "0"]
    finally:
        enabled = same(guests, "guestvcpus", "--cpulist", "1", "--enable")
    assert enabled[0] == 0
    assert re.search(r"online\s*:\s*0-1\n", same(guests, "guestvcpus")[1])
    assert [cpu1_online(guest) for guest in guests.values()] == ["1", "1"]
    assert same(guests, "guestvcpus", "--cpulist", "0", "--disable") == (
        1, "", "error: Operation not supported: vCPU '0' is not offlinable")
    assert same(guests, "guestvcpus", "--cpulist", "5", "--disable") == (
        1, "", "error: invalid argument: guest is missing vCPUs '5'")


def test_dompmsuspend_mem_and_wakeup(guests: dict[str, LibvirtGuest]) -> None:
    """guest-suspend-ram sends no reply; libvirt sees QEMU's SUSPEND event (pmsuspended), and
    after dompmwakeup (QMP system_wakeup) the guest runs, its kernel logged a real S3 round
    trip and the agent answers again."""
    results = {}
    for name, guest in guests.items():
        try:
            suspended = attempt(guest, "dompmsuspend", "--target", "mem")
            state = guest.wait_state("pmsuspended", 60)
        finally:
            woken = attempt(guest, "dompmwakeup")
        results[name] = (suspended, state.split()[0], woken, guest.wait_state("running", 60).split()[0])
        guest.wait_agent(60)
        dmesg = guest.shell("dmesg")
        assert "PM: suspend entry (deep)" in dmesg and "PM: suspend exit" in dmesg, (name, dmesg[-2000:])
    assert results["pyqga"] == results["qemu-ga"], results
    assert results["pyqga"] == ((0, "Domain 'DOMAIN' successfully suspended", ""), "pmsuspended",
                                (0, "Domain 'DOMAIN' successfully woken up", ""), "running"), results
