"""Running shell scripts in a test guest through its agent's guest-exec."""

from __future__ import annotations

from pyqga.host_client import AgentClient
from tests.rig.guest_files import DATA_LAYER

# The guest's tools live in /usr/sbin and /usr/bin; dmsetup there has no udev to wait for.
GUEST_SHELL = "export PATH=/usr/sbin:/usr/bin DM_DISABLE_UDEV=1; "


def sh(client: AgentClient, script: str, timeout: float = 90.0) -> str:
    """Run ``script`` with the guest's /bin/sh (set -e); its stdout, or fail with its output."""
    result = client.exec(["/bin/sh", "-c", GUEST_SHELL + "set -e\n" + script], kill_after=timeout)
    output = (result.stdout + result.stderr).decode(errors="replace")
    assert result.exitcode == 0, f"guest script failed ({result.exitcode}/{result.signal}):{script}\n{output}"
    return result.stdout.decode()


def fsck_clean(client: AgentClient) -> str:
    """``e2fsck -fn`` of /data's dm layer (``pyqga.dmdata=1``) unmounted, then mounted again; its
    output, asserted clean."""
    layer = f"/dev/mapper/{DATA_LAYER}"
    result = client.exec(["/bin/sh", "-c", f"umount /data && e2fsck -fn {layer}; s=$?; "
                          f"mount -t ext4 {layer} /data; exit $s"], kill_after=120)
    output = (result.stdout + result.stderr).decode(errors="replace")
    assert result.exitcode == 0, f"e2fsck found problems:\n{output}"
    return output
