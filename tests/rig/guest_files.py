"""The scripts that run inside the test guest, as text the image builder writes into the images.

They live here as constants (not package data files) so an editable or a plain install carries
them, and so the builder can hash them: editing any script here rebuilds the images.

Boot sequence: the kernel runs ``/init`` from the initramfs (``INITRAMFS_INIT``), which loads the
virtio modules (no ``modules.dep`` is shipped, so order matters), mounts the root disk and
switches to it, running busybox ``init``.  ``/etc/inittab`` runs ``RC_SYSINIT`` once (mounts,
``/dev/virtio-ports`` links, ``/data``, the agents) and keeps ``CONSOLE_CONTROL`` reading the
console for host requests.  ``SHUTDOWN`` is ``/sbin/shutdown`` (qemu-ga calls it) and ``HALT``
does the work, quickly: busybox init's own shutdown path sleeps two seconds.

Which agents start is read from the kernel command line (``pyqga.agents=a,b``) so one image
serves every test; ``AGENT_COMMANDS`` is the single place their command lines are defined.
``pyqga.dmdata=1`` mounts ``/data`` through a dm-linear layer (:data:`DATA_LAYER`, made by
``pyqga.agent.faults.layer``) for the block fault tests; without it ``/data`` is the plain disk.
"""

from __future__ import annotations

# Label of the disk the initramfs mounts as root and of the one mounted on /data; the harness
# sets them as virtio-blk serial numbers, so the order of the disks on the PCI bus does not matter.
ROOT_SERIAL = "pyqga-root"
DATA_SERIAL = "pyqga-data"
# The dm name of the linear layer under /data when the kernel command line has pyqga.dmdata=1.
DATA_LAYER = "pyqga-data"

# Lines the console control loop acts on: a clean power-off, and a dump of the agents' logs
# and output (ended by LOGS_END and the request's argument, so the host knows where it stops).
POWEROFF_REQUEST = "pyqga-vm-poweroff"
LOGS_REQUEST = "pyqga-vm-logs"
LOGS_END = "pyqga-vm-logs-end"
# What init prints to the console once it has started the agents (each boot, a reset's too).
AGENTS_STARTED = "agents started:"

# name -> the shell command line that starts it.  ``$PYQGA_ARGS`` carries the extra agent
# arguments from ``pyqga.args=`` (comma-separated on the kernel command line).
AGENT_COMMANDS: dict[str, str] = {
    "pyqga-virtio": (
        "python3 -B -m pyqga.agent -m virtio-serial -p /dev/virtio-ports/org.qemu.guest_agent.0"
        " -t /run/pyqga -l /run/pyqga.log $PYQGA_ARGS"
    ),
    "qga-virtio": (
        "qemu-ga -m virtio-serial -p /dev/virtio-ports/org.qemu.guest_agent.1"
        " -t /run/qga -l /run/qga.log -f /run/qga.pid"
    ),
    # qemu-ga alone on the port libvirt uses as the guest agent (a libvirt guest has only that one)
    "qga-virtio0": (
        "qemu-ga -m virtio-serial -p /dev/virtio-ports/org.qemu.guest_agent.0"
        " -t /run/qga -l /run/qga.log -f /run/qga.pid"
    ),
    "pyqga-serial": (
        "python3 -B -m pyqga.agent -m isa-serial -p /dev/ttyS1"
        " -t /run/pyqga-serial -l /run/pyqga-serial.log $PYQGA_ARGS"
    ),
    "pyqga-vsock": (
        "python3 -B -m pyqga.agent -m vsock-listen -p -1:1024"
        " -t /run/pyqga-vsock -l /run/pyqga-vsock.log $PYQGA_ARGS"
    ),
}


def _agent_cases() -> str:
    return "\n".join(
        f"    {name}) start_agent {name} {command} ;;" for name, command in AGENT_COMMANDS.items()
    )


INITRAMFS_INIT = rf"""#!/bin/sh
# pyqga test guest, initramfs stage: load the virtio drivers, mount the root disk, switch_root.
export PATH=/bin
mount -t devtmpfs devtmpfs /dev
mount -t proc proc /proc
mount -t sysfs sysfs /sys
while read -r module; do
    insmod "/lib/modules/$module.ko" || echo "initramfs: insmod $module failed"
done < /modules
root=
i=0
while [ -z "$root" ] && [ $i -lt 200 ]; do
    for d in /sys/block/vd*; do
        [ "$(cat "$d/serial" 2>/dev/null)" = "{ROOT_SERIAL}" ] && root=/dev/${{d##*/}}
    done
    [ -n "$root" ] || {{ i=$((i + 1)); sleep 0.05; }}
done
if [ -z "$root" ] || ! mount -t ext4 -o rw "$root" /newroot; then
    echo "initramfs: no root disk (virtio-blk serial {ROOT_SERIAL}); disks: $(ls /sys/block)"
    exit 1   # PID 1 exits -> panic -> panic=-1 reboots -> qemu -no-reboot exits
fi
mount --move /dev /newroot/dev
mount --move /proc /newroot/proc
mount --move /sys /newroot/sys
exec switch_root /newroot /sbin/init
"""

INITTAB = """\
# pyqga test guest: busybox init (reaps orphans; no getty, no respawned login).
::sysinit:/etc/pyqga-vm/rc.sysinit
::respawn:/etc/pyqga-vm/console-control
::ctrlaltdel:/sbin/shutdown -P now
"""

RC_SYSINIT = rf"""#!/bin/sh
# pyqga test guest: mounts, device links, /data, agents.  Output goes to the console (ttyS0).
export PATH=/usr/sbin:/usr/bin
log() {{ echo "pyqga-init: $*"; }}
mkdir -p /dev/pts /dev/shm
mount -t devpts -o mode=620,ptmxmode=666 devpts /dev/pts
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /dev/shm
# Agent state and logs live on tmpfs, so a frozen root cannot block an agent.
mount -t tmpfs -o mode=755,nosuid,nodev tmpfs /run
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp
ln -sf /proc/self/fd /dev/fd
ln -sf /proc/self/fd/0 /dev/stdin
ln -sf /proc/self/fd/1 /dev/stdout
ln -sf /proc/self/fd/2 /dev/stderr
hostname pyqga-guest
ip link set lo up
# No udev: name the virtio-serial ports as udev's rules would.
mkdir -p /dev/virtio-ports
for p in /sys/class/virtio-ports/*; do
    name=$(cat "$p/name" 2>/dev/null)
    [ -n "$name" ] && ln -sf "../${{p##*/}}" "/dev/virtio-ports/$name"
done
agents=
PYQGA_ARGS=
workload=
dmdata=
for word in $(cat /proc/cmdline); do
    case "$word" in
        pyqga.agents=*) agents=$(echo "${{word#*=}}" | tr , ' ') ;;
        pyqga.args=*) PYQGA_ARGS=$(echo "${{word#*=}}" | tr , ' ') ;;
        pyqga.workload=1) workload=1 ;;
        pyqga.dmdata=1) dmdata=1 ;;
    esac
done
for d in /sys/block/vd*; do
    if [ "$(cat "$d/serial" 2>/dev/null)" = "{DATA_SERIAL}" ]; then
        mkdir -p /data
        dev=/dev/${{d##*/}}
        # pyqga.dmdata=1: /data through a dm-linear layer (the block fault kinds swap its table)
        if [ -n "$dmdata" ]; then
            if modprobe dm-mod && python3 -B -m pyqga.agent.faults.layer "$dev" {DATA_LAYER} > /dev/null
            then dev=/dev/mapper/{DATA_LAYER}
            else log "cannot put a dm layer under $dev"; fi
        fi
        if mount -t ext4 "$dev" /data; then log "mounted $dev on /data"
        else log "cannot mount $dev on /data"; fi
    fi
done
if [ -n "$workload" ] && [ -d /data ]; then
    python3 -B /etc/pyqga-vm/workload /data < /dev/null > /run/workload.out 2>&1 &
    log "workload started on /data"
fi
mkdir -p /run/pyqga /run/qga /run/pyqga-serial /run/pyqga-vsock
start_agent() {{
    name=$1
    shift
    # A subshell waits for the agent, so its exit status and last output reach the console.
    (
        "$@" > "/run/$name.out" 2>&1
        status=$?
        log "$name exited with status $status"
        tail -n 20 "/run/$name.out" | sed "s/^/$name: /"
    ) < /dev/null &
}}
for agent in $agents; do
    case "$agent" in
{_agent_cases()}
    *) log "unknown agent $agent" ;;
    esac
done
log "{AGENTS_STARTED} $agents"
"""

CONSOLE_CONTROL = rf"""#!/bin/sh
# pyqga test guest: act on requests the host writes to the console (ttyS0), one per line.
# It lets the harness power the guest off cleanly whatever the agents are doing.
export PATH=/usr/sbin:/usr/bin
stty -echo 2>/dev/null
while read -r request rest; do
    case "$request" in
        {POWEROFF_REQUEST}) /sbin/shutdown -P now ;;
        {LOGS_REQUEST})
            for f in /run/*.log /run/*.out; do
                [ -f "$f" ] && {{ echo "--- $f"; tail -n 100 "$f"; }}
            done
            echo "{LOGS_END} $rest" ;;
    esac
done
sleep 1   # no console input at all (EOF): do not spin under respawn
"""

SHUTDOWN = r"""#!/bin/sh
# pyqga test guest: /sbin/shutdown as qemu-ga calls it (`shutdown -P|-H|-r +0 MESSAGE`).
# Returns at once, like the real one; the power-off runs detached.
mode=poweroff
for arg in "$@"; do
    case "$arg" in
        -H|--halt) mode=halt ;;
        -r|--reboot) mode=reboot ;;
        -P|--poweroff|-h) mode=poweroff ;;
    esac
done
setsid /etc/pyqga-vm/halt "$mode" < /dev/null > /dev/console 2>&1 &
exit 0
"""

HALT = r"""#!/bin/sh
# pyqga test guest: stop everything, thaw, flush, unmount, then power off at once.
export PATH=/usr/sbin:/usr/bin
mode=${1:-poweroff}
echo "pyqga-init: $mode"
kill -TERM -1 2>/dev/null
# A filesystem left frozen (by a test, or by an agent we just stopped) would make unmount fail
# and sync hang: thaw every freezable mount, as often as it was frozen.
for mp in $(awk '$3 ~ /^(ext[234]|xfs|btrfs)$/ {print $2}' /proc/mounts); do
    n=0
    while [ $n -lt 8 ] && fsfreeze --unfreeze "$mp" 2>/dev/null; do n=$((n + 1)); done
    [ $n -gt 0 ] && echo "pyqga-init: thawed $mp"
done
sleep 0.2
kill -KILL -1 2>/dev/null
sync
if grep -q " /data " /proc/mounts; then
    umount /data || mount -o remount,ro /data
fi
mount -o remount,ro /
echo "pyqga-init: $mode now"
exec "$mode" -f
"""

# A busy writer for the consistency proof (started by ``pyqga.workload=1``): numbered lines of a
# fixed width appended to WORKLOAD_LOG (so a torn or zero-filled tail is visible), and small
# files rewritten and renamed over each other (metadata churn for the journal).
WORKLOAD_LOG = "workload.log"
WORKLOAD_LINE_WIDTH = 10
WORKLOAD = rf"""#!/usr/bin/python3
import os, sys, time
base = sys.argv[1]
os.makedirs(os.path.join(base, "churn"), exist_ok=True)
log = open(os.path.join(base, "{WORKLOAD_LOG}"), "a", buffering=1)
n = 0
while True:
    n += 1
    log.write("%0{WORKLOAD_LINE_WIDTH - 1}d\n" % n)
    if n % 64 == 0:
        os.fsync(log.fileno())
    name = os.path.join(base, "churn", "f%d" % (n % 32))
    with open(name + ".tmp", "w") as f:
        f.write(str(n) * 200)
    os.replace(name + ".tmp", name)
    if n % 16 == 0:
        time.sleep(0.002)
"""

PASSWD = "root:x:0:0:root:/root:/bin/sh\n"
GROUP = "root:x:0:\n"

# Everything above, for the image key: any change here must rebuild the images.
ALL_TEXTS = (
    INITRAMFS_INIT, INITTAB, RC_SYSINIT, CONSOLE_CONTROL, SHUTDOWN, HALT, WORKLOAD, PASSWD, GROUP,
)
