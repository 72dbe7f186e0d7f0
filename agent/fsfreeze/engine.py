"""Freeze and thaw filesystems with qemu-ga's rules, as a library.

The engine decides *which* filesystems and in *what order*, issues the ioctls through an
:class:`~agent.fsfreeze.ioctls.FsIoctl`, and turns failures into :class:`AgentError` values.
It knows nothing about agent state, the state file, hooks or logging: the command layer wraps
it (``plan_*`` first so it can write the frozen marker before the first ioctl, then
:meth:`FreezeEngine.freeze`).

Not serialised on purpose: the caller serialises commands, and a thaw must be able to run
while a freeze is stuck in FIFREEZE (that is how a watchdog rescues a stalled freeze).
"""

from __future__ import annotations

import dataclasses
import errno
import fnmatch
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from agent.fsfreeze.ioctls import FsIoctl
from agent.fsfreeze.mounts import (
    MOUNTINFO,
    BlockDeviceLookup,
    Mount,
    block_device_numbers,
    freezable,
    read_mountinfo,
    resolve_device,
)
from agent.fsfreeze.order import BackingFilesLookup, backing_files, freeze_waves
from protocol.errors import AgentError, command_failed, invalid_params

# Errors that mean "nothing to do here" rather than "the freeze failed" (qemu-ga's rule):
# EOPNOTSUPP: the filesystem cannot be frozen (tmpfs); EBUSY: it is already frozen (by another
# tool, or through another mount of the same device). Neither is counted.
SKIPPED_ERRNOS = frozenset({errno.EOPNOTSUPP, errno.EBUSY})

# Concurrent FIFREEZEs in one wave; more threads than this buys nothing on small guests.
MAX_PARALLEL_FREEZES = 16

# A filesystem that keeps accepting FITHAW is broken; stop rather than spin forever.
MAX_THAWS_PER_FS = 64


@dataclass(frozen=True)
class FreezeOutcome:
    """What a freeze did.

    ``frozen``: in the order frozen; ``skipped``: (mount point, errno name) for EOPNOTSUPP/EBUSY.
    """

    count: int
    frozen: list[Mount]
    skipped: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class ThawReport:
    """What a thaw did: ``thawed`` mount points (they were frozen) and per-path ``errors``."""

    thawed: tuple[str, ...]
    errors: tuple[dict[str, str], ...] = ()

    @property
    def count(self) -> int:
        return len(self.thawed)

    def checked(self) -> int:
        """The count, or one ``command_failed`` naming every failure, whose ``data`` is
        ``{"thawed": count, "errors": [{"path", "error"}]}``: a partial thaw is never success."""
        if self.errors:
            details = "; ".join(f"{e['path']}: {e['error']}" for e in self.errors)
            raise dataclasses.replace(
                command_failed(f"thawed {self.count} filesystem(s), but failed to thaw {details}"),
                data={"thawed": self.count, "errors": list(self.errors)},
            )
        return self.count


def _errno_name(number: int | None) -> str:
    # errno.errorcode[95] is "ENOTSUP" on Linux; the freeze literature says EOPNOTSUPP (same value).
    if number == errno.EOPNOTSUPP:
        return "EOPNOTSUPP"
    return errno.errorcode.get(number or 0, str(number))


def _strerror(e: OSError) -> str:
    return e.strerror or (os.strerror(e.errno) if e.errno else str(e))


def _normalise(path: str) -> str:
    """Mount points as mountinfo spells them: absolute, no trailing slash (except ``/``)."""
    return path.rstrip("/") or "/"


def flush(
    mounts: Iterable[Mount], ioctl: FsIoctl | None = None, workers: int = 8
) -> dict[str, OSError]:
    """syncfs every mount in parallel and return the failures by mount point.

    Flushing before the first FIFREEZE shortens the window in which the filesystems frozen
    first block writers while later ones are still writing back (measured: 0.2-0.3 s down to
    ~0.1 s over four filesystems). Failures are returned, not raised: the FIFREEZE that follows
    flushes anyway, so a failed flush only costs time.
    """
    fs = ioctl or FsIoctl()
    paths = [m.mountpoint for m in mounts]
    errors: dict[str, OSError] = {}
    if not paths:
        return errors

    def one(path: str) -> None:
        try:
            fs.syncfs(path)
        except OSError as e:
            errors[path] = e

    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(paths)))) as pool:
        list(pool.map(one, paths))
    return errors


class FreezeEngine:
    """Freeze-all, freeze-list and thaw over the mounts of this mount namespace.

    ``include``/``exclude`` are fnmatch globs on the mount point (``*`` also matches ``/``; use
    :func:`glob.escape` for literal paths). A mount is selected when it matches some include
    glob (or there are none) and no exclude glob. The filters apply to every operation, so a
    filesystem this engine can freeze is always one its :meth:`thaw` finds.
    """

    def __init__(
        self,
        ioctl: FsIoctl | None = None,
        mountinfo_path: str = MOUNTINFO,
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
        block_device: BlockDeviceLookup = block_device_numbers,
        backing_file: BackingFilesLookup = backing_files,
    ) -> None:
        self.ioctl = ioctl or FsIoctl()
        self.mountinfo_path = mountinfo_path
        self.include = tuple(include)
        self.exclude = tuple(exclude)
        self.block_device = block_device
        self.backing_file = backing_file
        # Mount points frozen although outside the freezable set (a major-0 filesystem named in
        # a freeze-list that did accept FIFREEZE); thaw() would not find them by device rules.
        self._frozen_outside: set[str] = set()

    # -- selection ---------------------------------------------------------------------------

    def selected(self, mountpoint: str) -> bool:
        """Whether the include/exclude filters allow this mount point."""
        if self.include and not any(fnmatch.fnmatchcase(mountpoint, g) for g in self.include):
            return False
        return not any(fnmatch.fnmatchcase(mountpoint, g) for g in self.exclude)

    def mounts(self) -> list[Mount]:
        """Every mount, freshly read (never cached: mounts change between freeze and thaw)."""
        return read_mountinfo(self.mountinfo_path)

    def candidates(self) -> list[Mount]:
        """Freezable mounts that pass the filters, in mount order."""
        found = freezable(self.mounts(), self.block_device)
        return [m for m in found if self.selected(m.mountpoint)]

    def plan_all(self) -> list[Mount]:
        """What :meth:`freeze_all` would freeze, in freeze order (reverse mount order: children
        before parents, and a loop-mounted image before the filesystem holding its file)."""
        return list(reversed(self.candidates()))

    def plan_list(self, mountpoints: Iterable[str]) -> list[Mount]:
        """Validate an explicit list and return it in freeze order; nothing is touched.

        We differ from qemu-ga, which silently freezes nothing for a path it does not know:
        every path must be a mount point the filters allow, else ``invalid_params`` naming it.
        A bind mount stands for its device (frozen once). A mount point whose filesystem has no
        device (tmpfs...) is kept: the caller asked for it, and FIFREEZE answers EOPNOTSUPP.
        """
        if isinstance(mountpoints, str):
            raise invalid_params("mountpoints must be a list of paths, not a string")
        requested = list(mountpoints)
        if not requested:
            raise invalid_params("mountpoints is empty: nothing to freeze")
        all_mounts = self.mounts()
        canonical = {m.device: m for m in freezable(all_mounts, self.block_device)}
        # The last mount at a path is the visible one (a later mount hides an earlier one).
        position = {m.mountpoint: i for i, m in enumerate(all_mounts)}
        chosen: dict[tuple[int, int], tuple[int, Mount]] = {}
        for raw in requested:
            if not isinstance(raw, str) or not raw.startswith("/"):
                raise invalid_params(f"{raw!r} is not an absolute path")
            path = _normalise(raw)
            if path not in position:
                raise invalid_params(f"{raw} is not a mount point")
            index = position[path]
            mount = all_mounts[index]
            resolved = resolve_device(mount, self.block_device)
            owner = canonical.get(resolved.device) if resolved is not None else None
            checked = owner.mountpoint if owner is not None else path
            if not self.selected(checked):
                raise invalid_params(f"{raw} is excluded by the freeze filters")
            key = resolved.device if resolved is not None else mount.device
            if key not in chosen:
                chosen[key] = (index, resolved or mount)
        return [m for _, m in sorted(chosen.values(), key=lambda im: im[0], reverse=True)]

    # -- freeze ------------------------------------------------------------------------------

    def freeze_all(self) -> FreezeOutcome:
        """Freeze every selected freezable filesystem (qemu-ga's guest-fsfreeze-freeze)."""
        return self.freeze(self.plan_all())

    def freeze_list(self, mountpoints: Iterable[str]) -> FreezeOutcome:
        """Freeze exactly these mount points (guest-fsfreeze-freeze-list), validated first."""
        return self.freeze(self.plan_list(mountpoints))

    def freeze(self, plan: Sequence[Mount]) -> FreezeOutcome:
        """Freeze ``plan``; all or nothing.

        Independent filesystems are frozen concurrently, dependent ones in order (see
        :mod:`agent.fsfreeze.order`): the stall applications see is then about one FIFREEZE,
        not the sum of all of them.  EOPNOTSUPP/EBUSY are skipped and not counted. Any other
        error (or an exception of any kind, even KeyboardInterrupt) thaws what this call froze
        before it propagates, so a failed freeze never leaves a filesystem frozen behind the
        caller's back.
        """
        frozen: list[Mount] = []
        skipped: list[tuple[str, str]] = []
        try:
            for wave in freeze_waves(plan, self.backing_file):
                failure: tuple[Mount, OSError] | None = None
                unexpected: BaseException | None = None
                for mount, error in self._freeze_wave(wave):
                    if error is None:
                        frozen.append(mount)
                        if resolve_device(mount, self.block_device) is None:
                            self._frozen_outside.add(mount.mountpoint)
                    elif isinstance(error, OSError) and error.errno in SKIPPED_ERRNOS:
                        skipped.append((mount.mountpoint, _errno_name(error.errno)))
                    elif isinstance(error, OSError):
                        failure = failure or (mount, error)
                    else:
                        unexpected = unexpected or error
                if unexpected is not None:
                    raise unexpected
                if failure is not None:
                    self._fail(failure[0], failure[1], frozen)
        except AgentError:
            raise
        except BaseException:
            self._rollback(frozen)
            raise
        return FreezeOutcome(count=len(frozen), frozen=frozen, skipped=skipped)

    def _freeze_wave(self, wave: Sequence[Mount]) -> list[tuple[Mount, BaseException | None]]:
        """FIFREEZE every mount of one wave, concurrently when there are several."""

        def one(mount: Mount) -> tuple[Mount, BaseException | None]:
            try:
                self.ioctl.freeze(mount.mountpoint)
            except BaseException as exc:  # reported, so the wave's other freezes are rolled back
                return mount, exc
            return mount, None

        if len(wave) == 1:
            return [one(wave[0])]
        with ThreadPoolExecutor(max_workers=min(len(wave), MAX_PARALLEL_FREEZES)) as pool:
            return list(pool.map(one, wave))

    def _fail(self, mount: Mount, error: OSError, frozen: Sequence[Mount]) -> None:
        failures = self._rollback(frozen)
        message = f"failed to freeze {mount.mountpoint}: {_strerror(error)}"
        if failures:
            message += "; and could not thaw " + ", ".join(f"{path} ({why})" for path, why in failures)
        raise dataclasses.replace(
            command_failed(message),
            data={"path": mount.mountpoint, "errno": error.errno, "unthawed": failures},
        ) from error

    def _rollback(self, frozen: Sequence[Mount]) -> list[tuple[str, str]]:
        """Thaw what one freeze call froze (parents first); return what failed to thaw."""
        failures = []
        for mount in reversed(frozen):
            try:
                self.ioctl.thaw(mount.mountpoint)
            except OSError as e:
                if e.errno != errno.EINVAL:  # EINVAL: someone else already thawed it
                    failures.append((mount.mountpoint, _strerror(e)))
            self._frozen_outside.discard(mount.mountpoint)
        return failures

    # -- thaw --------------------------------------------------------------------------------

    def thaw(self, also: Iterable[str] = ()) -> int:
        """:meth:`thaw_report`, raising if any filesystem failed to thaw; returns the count."""
        return self.thaw_report(also).checked()

    def thaw_report(self, also: Iterable[str] = ()) -> ThawReport:
        """Thaw every selected freezable filesystem, whoever froze it; report what happened.

        The mount list is read afresh. Each filesystem gets FITHAW until the kernel says EINVAL
        ("not frozen"), and counts once if at least one FITHAW succeeded. Mount order (parents
        first), so a loop image's host is writable again before the image's writers resume.

        ``also``: extra mount points to thaw regardless of the rules, e.g. those a previous
        agent recorded in the state file. Mount points that are no longer mounted are ignored.

        Errors other than EINVAL do not stop the loop: every other filesystem is still thawed.
        The report lists which mount points were thawed (a FITHAW succeeded: they were frozen)
        so the caller can tell whether a freeze it made held until now.
        """
        all_mounts = self.mounts()
        targets = self.candidates()
        seen = {m.device for m in targets}
        visible = {m.mountpoint: m for m in all_mounts}
        for path in [*sorted(self._frozen_outside), *also]:
            extra = visible.get(_normalise(path))
            if extra is None:
                self._frozen_outside.discard(path)
                continue
            key = (resolve_device(extra, self.block_device) or extra).device
            if key not in seen:
                seen.add(key)
                targets.append(extra)

        thawed: list[str] = []
        errors: list[dict[str, str]] = []
        for mount in targets:
            did_thaw, error = self._thaw_one(mount.mountpoint)
            if did_thaw:
                thawed.append(mount.mountpoint)
            if error is None:
                self._frozen_outside.discard(mount.mountpoint)
            else:
                errors.append({"path": mount.mountpoint, "error": error})
        return ThawReport(tuple(thawed), tuple(errors))

    def _thaw_one(self, path: str) -> tuple[int, str | None]:
        """FITHAW until EINVAL: (1 if anything thawed else 0, error text or None)."""
        thawed = 0
        for _ in range(MAX_THAWS_PER_FS):
            try:
                self.ioctl.thaw(path)
            except OSError as e:
                if e.errno == errno.EINVAL:
                    return thawed, None
                return thawed, _strerror(e)
            thawed = 1
        return thawed, f"still frozen after {MAX_THAWS_PER_FS} thaws"

    # -- flush -------------------------------------------------------------------------------

    def flush(self, mounts: Iterable[Mount], workers: int = 8) -> dict[str, OSError]:
        """:func:`flush` through this engine's ioctl seam."""
        return flush(mounts, self.ioctl, workers)
