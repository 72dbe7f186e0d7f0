"""What a freeze touches: the selected filesystems, validated and cut into ordered waves.

Planning only; nothing here freezes or thaws.  The freeze state machine (:mod:`.machine`)
decides, its driver (:mod:`.driver`) does, and this module answers "which superblocks, through
which mount points, in which order" from the kernel's mount table (qemu-ga's rules, with our
differences marked **we**):

- major-0 filesystems are skipped, except btrfs on a block device;
- one mount stands for each device (bind mounts and btrfs subvolumes are the same superblock);
- ``--freeze-include``/``--freeze-exclude`` globs limit every operation, freeze-all, thaw and
  fstrim alike, so a filesystem we can freeze is always one our thaw finds;
- a freeze-list is validated completely before anything is touched (**we**: a path that is not a
  mount point is an error, qemu-ga silently freezes nothing);
- waves: children before parents, and a device stacked on a file of another filesystem (loop,
  dm, LVM, partitions, at any depth) before that filesystem (:mod:`.order`).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

from pyqga.agent.freeze.kernel import Kernel, LinuxKernel
from pyqga.agent.freeze.mounts import Mount, freezable, resolve_device
from pyqga.agent.freeze.order import freeze_waves
from pyqga.agent.freeze.vocabulary import Target
from pyqga.protocol.errors import invalid_params, quote


def normalise(path: str) -> str:
    """Mount points as mountinfo spells them: absolute, no trailing slash (except ``/``)."""
    return path.rstrip("/") or "/"


def target_of(mount: Mount) -> Target:
    return Target(mount.device, mount.mountpoint, mount.fstype, mount.source)


class FreezePlanner:
    """Selection and ordering over the mounts of this mount namespace.

    ``include``/``exclude`` are fnmatch globs on the mount point (``*`` also matches ``/``; use
    :func:`glob.escape` for literal paths). A mount is selected when it matches some include
    glob (or there are none) and no exclude glob.
    """

    def __init__(self, kernel: Kernel | None = None, include: Sequence[str] = (),
                 exclude: Sequence[str] = ()) -> None:
        self.kernel: Kernel = kernel or LinuxKernel()
        self.include: tuple[str, ...] = tuple(include)
        self.exclude: tuple[str, ...] = tuple(exclude)

    def selected(self, mountpoint: str) -> bool:
        """Whether the include/exclude filters allow this mount point."""
        if self.include and not any(fnmatch.fnmatchcase(mountpoint, g) for g in self.include):
            return False
        return not any(fnmatch.fnmatchcase(mountpoint, g) for g in self.exclude)

    def candidates(self) -> list[Mount]:
        """Freezable mounts that pass the filters, in mount order (read afresh every time:
        mounts change between a freeze and its thaw)."""
        found = freezable(self.kernel.mounts(), self.kernel.block_device)
        return [m for m in found if self.selected(m.mountpoint)]

    def plan_all(self) -> list[Mount]:
        """What guest-fsfreeze-freeze freezes, in qemu-ga's order (reverse mount order)."""
        return list(reversed(self.candidates()))

    def plan_list(self, mountpoints: Sequence[str]) -> list[Mount]:
        """Validate an explicit list and return it in freeze order; nothing is touched.

        Every path must be a mount point the filters allow, else ``invalid_params`` naming it.
        A bind mount stands for its device (frozen once, through the path the host named). A
        mount point whose filesystem has no device (tmpfs...) is kept: the caller asked for it,
        and FIFREEZE answers EOPNOTSUPP.
        ``mountpoints`` is a list: the command's parameter check refuses anything else.
        """
        requested = list(mountpoints)
        if not requested:
            raise invalid_params("mountpoints is empty: nothing to freeze")
        all_mounts = self.kernel.mounts()
        canonical = {m.device: m for m in freezable(all_mounts, self.kernel.block_device)}
        # The last mount at a path is the visible one (a later mount hides an earlier one).
        position = {m.mountpoint: i for i, m in enumerate(all_mounts)}
        chosen: dict[tuple[int, int], tuple[int, Mount]] = {}
        for raw in requested:
            if not isinstance(raw, str) or not raw.startswith("/"):
                raise invalid_params(f"{quote(repr(raw))} is not an absolute path")
            path = normalise(raw)
            if path not in position:
                raise invalid_params(f"{quote(raw)} is not a mount point")
            index = position[path]
            mount = all_mounts[index]
            resolved = resolve_device(mount, self.kernel.block_device)
            owner = canonical.get(resolved.device) if resolved is not None else None
            checked = owner.mountpoint if owner is not None else path
            if not self.selected(checked):
                raise invalid_params(f"{quote(raw)} is excluded by the freeze filters")
            key = resolved.device if resolved is not None else mount.device
            if key not in chosen:
                chosen[key] = (index, resolved or mount)
        return [m for _, m in sorted(chosen.values(), key=lambda im: im[0], reverse=True)]

    def waves(self, plan: Sequence[Mount]) -> tuple[tuple[Target, ...], ...]:
        """The plan cut into waves of superblocks that may be frozen concurrently."""
        return tuple(tuple(target_of(m) for m in wave)
                     for wave in freeze_waves(plan, self.kernel.backing_files))

    def thaw_targets(self) -> tuple[Target, ...]:
        """What the host's thaw covers (qemu-ga: every freezable filesystem), in mount order."""
        return tuple(target_of(m) for m in self.candidates())
