"""Build and cache the test guest: a Debian cloud kernel, a busybox initramfs, an ext4 root with
python3, qemu-ga, pyqga, lvm2 and dmsetup, nftables and iproute2 (and the loop, dm, nf_tables,
netem and veth modules, for ``modprobe``), and an empty ext4 data disk.

Nothing is installed on the host and nothing is mounted: packages come from ``apt-get download``
and are unpacked with ``dpkg-deb``; the root image is made by ``mkfs.ext4 -d DIR``.  That keeps the
builder usable in CI containers and never leaves a loop device or a mount behind.

Cache (``$PYQGA_CACHE/vm`` or ``<repo>/.cache/vm``), two layers because pyqga changes often and the
rest rarely::

    debs/                     downloaded .deb files, by package and version
    resolve-KEY.json          the package set apt resolved (KEY: the apt lists' stat + our source)
    base-KEY/                 KEY: package versions + guest scripts + this builder's source
        vmlinuz initrd.img    kernel and initramfs
        data.ext4             empty data disk template
        rootfs/               the unpacked, byte-compiled root tree without pyqga
        manifest.json
        root-PYQGA.ext4       PYQGA: content of agent/, protocol/ and the host's dependency copies

A new pyqga only costs a hard-linked copy of ``rootfs/`` plus ``mkfs.ext4 -d`` (about a second).
A lock file serialises parallel callers; every step builds in a temporary name and renames.

Resolving and downloading the packages is :mod:`tests.rig.apt_packages`; running tools, locking,
keys and ``mkfs.ext4``, shared with :mod:`tests.rig.systemd_image`, are :mod:`tests.rig.build_tools`.
This module builds the two layers from them.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import lzma
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.rig import apt_packages, build_tools, guest_files
from tests.rig.apt_packages import DownloadFailed, apt_update, deb_path, fetch, resolve
from tests.rig.build_tools import (
    COMMAND_TIMEOUT,
    ImageBuildError,
    atomic_write,
    digest,
    locked,
    mkfs,
    run,
    tail,
    try_run,
)
from tests.rig.paths import REPO_ROOT

log = logging.getLogger("pyqga.vm")

KERNEL_METAPACKAGE = "linux-image-cloud-amd64"
# python3 (not python3-minimal: it lacks json and ctypes); python3-jsonschema and
# python3-typing-extensions are jsonrpcserver's and oslash's dependencies, taken from Debian so
# no compiled extension (jsonschema's rpds) has to match the guest's Python.
ROOT_PACKAGES = (
    "python3", "python3-jsonschema", "python3-typing-extensions", "qemu-guest-agent",
    "busybox-static", "base-files", "e2fsprogs", "dmsetup", "lvm2", "nftables", "iproute2",
)
# Virtio drivers in load order (no modules.dep in the initramfs); vsock ones are optional.
VIRTIO_MODULES = (
    "virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio_pci",
    "virtio_blk", "virtio_console",
)
VSOCK_MODULES = ("vsock", "vmw_vsock_virtio_transport_common", "vmw_vsock_virtio_transport")
# On the root disk for `modprobe` (busybox; modules.dep made at build time), not loaded at boot:
# loop devices and device-mapper (dm-linear, LVM) for the stacked-device freeze tests, and the dm
# targets of the disk fault kinds (the kernel loads one itself when a table names it); nftables,
# netem and veth pairs for the network fault kinds.  Their dependencies come along.
ROOT_MODULES = ("loop", "dm-mod", "dm-flakey", "dm-delay", "dm-log-writes", "nf_tables", "sch_netem", "veth")
# pyqga's own packages (from this checkout) and its pure-Python dependencies (from the host).
# (guest path in the site dir, folder of this checkout): the pyqga package's own files (its parts
# are symlinks, which the copy skips) and the parts the guest runs.
REPO_PYTHON_PACKAGES = (("pyqga", "pyqga"), ("pyqga/agent", "agent"), ("pyqga/protocol", "protocol"))
HOST_PYTHON_PACKAGES = ("jsonrpcserver", "oslash", "serial")
GUEST_SITE = "usr/lib/python3/dist-packages"
ROOT_SIZE_MB = 256
DATA_SIZE_MB = 64
# Unpacked but useless in a guest that never reads documentation.
_PRUNE_DIRS = ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/lintian",
               "usr/share/locale", "usr/share/bug")
_PRUNE_AFTER_S = 3600.0


@dataclass(frozen=True)
class GuestImage:
    """Paths of one built guest; never modify them (boot with ``snapshot=on`` or a copy)."""

    kernel: Path
    initrd: Path
    root: Path
    data_template: Path
    kernel_release: str
    python_version: str
    packages: dict[str, str]
    cache_hit: bool
    seconds: float


def cache_dir() -> Path:
    """``$PYQGA_CACHE/vm``, else ``<repo>/.cache/vm`` (git-ignored)."""
    base = os.environ.get("PYQGA_CACHE")
    return (Path(base) if base else REPO_ROOT / ".cache") / "vm"


def ensure_image(cache: Path | None = None) -> GuestImage:
    """Return the current guest image, building whatever layer is missing or stale.

    A warm call (nothing changed) takes tens of milliseconds: it stats the apt lists and hashes
    pyqga's sources, nothing more.  Safe to call from parallel processes.
    """
    started = time.monotonic()
    cache = cache or cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    with locked(cache / ".lock"):
        hit = True
        for attempt in (1, 2):
            plan = resolve(cache, KERNEL_METAPACKAGE, ROOT_PACKAGES, _builder_texts())
            base_key = digest([json.dumps(plan, sort_keys=True).encode(), *_builder_texts()])
            layer = cache / f"base-{base_key}"
            if (layer / "manifest.json").exists():
                break
            hit = False
            try:
                _build_base(cache, layer, plan)
                break
            except DownloadFailed:
                if attempt == 2:
                    raise
                apt_update()  # then resolve again against the new lists
        manifest = json.loads((layer / "manifest.json").read_text())
        root = layer / f"root-{_pyqga_digest()}.ext4"
        if not root.exists():
            hit = False
            _build_root(layer, root, manifest["python_version"])
        _mark_used(root)
        _prune(cache, layer, root, plan)
    image = GuestImage(
        kernel=layer / "vmlinuz",
        initrd=layer / "initrd.img",
        root=root,
        data_template=layer / "data.ext4",
        kernel_release=manifest["kernel_release"],
        python_version=manifest["python_version"],
        packages=dict(plan["root"]),
        cache_hit=hit,
        seconds=time.monotonic() - started,
    )
    log.info("guest image %s (%s, %.2f s)", root, "cached" if hit else "built", image.seconds)
    return image


# --------------------------------------------------------------------------------------------
# Keys


def _builder_texts() -> list[bytes]:
    """This module's, its build tools', its package fetcher's and the guest scripts' source:
    editing any rebuilds the base layer."""
    return [Path(__file__).read_bytes(), Path(build_tools.__file__).read_bytes(),
            Path(apt_packages.__file__).read_bytes(), "\0".join(guest_files.ALL_TEXTS).encode()]


def _python_sources() -> list[tuple[str, Path]]:
    """(guest package name, host directory) for everything copied into the guest's site dir."""
    sources = [(name, REPO_ROOT / folder) for name, folder in REPO_PYTHON_PACKAGES]
    for name in HOST_PYTHON_PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            raise ImageBuildError(
                f"the host Python has no package {name!r} to copy into the guest (pip install pyqga's "
                "dependencies first)"
            )
        sources.append((name, Path(next(iter(spec.submodule_search_locations)))))
    return sources


def _python_files(directory: Path) -> Iterator[Path]:
    for path in sorted(directory.rglob("*")):
        if "__pycache__" in path.parts or path.suffix in (".pyc", ".pyo") or not path.is_file():
            continue
        yield path


def _pyqga_digest() -> str:
    parts: list[bytes] = []
    for name, directory in _python_sources():
        for path in _python_files(directory):
            parts.append(f"{name}/{path.relative_to(directory)}".encode())
            parts.append(path.read_bytes())
    return digest(parts)


# --------------------------------------------------------------------------------------------
# Base layer


def _build_base(cache: Path, layer: Path, plan: dict[str, object]) -> None:
    started = time.monotonic()
    kernel_name, kernel_version = plan["kernel"]  # type: ignore[misc]
    root_packages: list[tuple[str, str]] = [tuple(p) for p in plan["root"]]  # type: ignore[attr-defined, misc]
    work = Path(tempfile.mkdtemp(prefix=f".{layer.name}-", dir=cache))
    try:
        debs = fetch(cache / "debs", [(kernel_name, kernel_version), *root_packages])
        log.info("guest image: %d packages fetched", len(debs))
        release, modules = _unpack_kernel(debs[kernel_name], work)
        tree = work / "rootfs"
        _unpack_root(tree, [debs[name] for name, _ in root_packages])
        busybox = tree / "usr/bin/busybox"
        _install_guest_files(tree, busybox)
        _install_root_modules(work / "kernel", release, tree, busybox)
        python_version = _guest_python_version(tree)
        _compile(tree, python_version, [tree / f"usr/lib/python{python_version}", tree / GUEST_SITE])
        _write_initramfs(work / "initrd.img", busybox, modules)
        mkfs(work / "data.ext4", DATA_SIZE_MB, label="pyqga-data")
        manifest = {
            "kernel_release": release,
            "python_version": python_version,
            "modules": [m.name for m in modules],
            "packages": root_packages,
            "seconds": round(time.monotonic() - started, 2),
        }
        atomic_write(work / "manifest.json", json.dumps(manifest, indent=1).encode())
        shutil.rmtree(work / "kernel", ignore_errors=True)
        shutil.rmtree(layer, ignore_errors=True)  # a half-built leftover without a manifest
        work.rename(layer)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    log.info("guest image: base layer built in %.1f s", time.monotonic() - started)


def _unpack_kernel(deb: Path, work: Path) -> tuple[str, list[Path]]:
    """Unpack the kernel package; copy out vmlinuz and the modules the initramfs loads."""
    tree = work / "kernel"
    run(["dpkg-deb", "-x", str(deb), str(tree)], f"unpacking {deb.name}")
    images = sorted((tree / "boot").glob("vmlinuz-*"))
    if not images:
        raise ImageBuildError(f"{deb.name} has no boot/vmlinuz-*")
    release = images[0].name.removeprefix("vmlinuz-")
    shutil.copyfile(images[0], work / "vmlinuz")
    moddir = _modules_dir(tree, release)
    found = {}
    for path in moddir.rglob("*.ko*"):
        found[path.name.split(".ko")[0]] = path
    builtin = (moddir / "modules.builtin").read_text() if (moddir / "modules.builtin").exists() else ""
    outdir = work / "modules"
    outdir.mkdir()
    modules = []
    for name in (*VIRTIO_MODULES, *VSOCK_MODULES):
        source = found.get(name)
        if source is None:
            if name in VIRTIO_MODULES and f"/{name}.ko" not in builtin:
                raise ImageBuildError(f"kernel {release} has no module {name} and does not build it in")
            continue
        target = outdir / f"{name}.ko"
        target.write_bytes(_module_bytes(source))
        modules.append(target)
    return release, modules


def _install_root_modules(kernel_tree: Path, release: str, tree: Path, busybox: Path) -> None:
    """Copy :data:`ROOT_MODULES` and what they depend on into the root's module folder, then
    busybox ``depmod`` there, so ``modprobe dm-mod`` works in the guest (no kmod installed)."""
    moddir = _modules_dir(kernel_tree, release)
    found = {path.name.split(".ko")[0].replace("-", "_"): path for path in moddir.rglob("*.ko*")}
    builtin = (moddir / "modules.builtin").read_text() if (moddir / "modules.builtin").exists() else ""
    target_dir = tree / "usr/lib/modules" / release
    wanted = [name.replace("-", "_") for name in ROOT_MODULES]
    done: set[str] = set()
    while wanted:
        name = wanted.pop()
        if name in done:
            continue
        done.add(name)
        source = found.get(name)
        if source is None:
            if f"/{name}.ko" in builtin.replace("-", "_"):
                continue  # built into this kernel: nothing to load
            raise ImageBuildError(f"kernel {release} has no module {name} and does not build it in")
        data = _module_bytes(source)
        target = target_dir / source.relative_to(moddir).with_name(source.name.split(".ko")[0] + ".ko")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        depends = re.search(rb"(?:^|\0)depends=([^\0]*)", data)
        if depends and depends.group(1):
            wanted += [d.replace("-", "_") for d in depends.group(1).decode().split(",")]
    if any(target_dir.rglob("*.ko")):
        run([str(busybox), "depmod", "-b", str(tree), release], "depmod for the guest's modules")


def _modules_dir(kernel_tree: Path, release: str) -> Path:
    for path in (kernel_tree / "lib/modules" / release, kernel_tree / "usr/lib/modules" / release):
        if path.is_dir():
            return path
    raise ImageBuildError(f"the kernel package has no modules folder for {release}")


def _module_bytes(source: Path) -> bytes:
    if source.name.endswith(".ko.xz"):
        return lzma.decompress(source.read_bytes())
    if source.name.endswith(".ko"):
        return source.read_bytes()
    raise ImageBuildError(f"cannot decompress kernel module {source.name} (busybox insmod needs .ko)")


def _unpack_root(tree: Path, debs: Sequence[Path]) -> None:
    """Unpack into a merged-/usr skeleton; ``--keep-directory-symlink`` keeps bin -> usr/bin."""
    for d in ("usr/bin", "usr/sbin", "usr/lib", "usr/lib64", "etc", "dev", "proc", "sys", "run",
              "tmp", "root", "data", "mnt", "var/tmp", "var/log"):
        (tree / d).mkdir(parents=True, exist_ok=True)
    for link in ("bin", "sbin", "lib", "lib64"):
        (tree / link).symlink_to(f"usr/{link}")
    (tree / "var/run").symlink_to("../run")
    tar = ["tar", "-x", "--keep-directory-symlink", "-C", str(tree)]
    if os.geteuid() != 0:
        tar.append("--no-same-owner")
    for deb in debs:
        with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE) as dpkg:
            proc = subprocess.run(tar, stdin=dpkg.stdout, capture_output=True, text=True,
                                  timeout=COMMAND_TIMEOUT)
        if dpkg.returncode != 0 or proc.returncode != 0:
            raise ImageBuildError(f"unpacking {deb.name} failed: {tail(proc.stderr)}")
    for d in _PRUNE_DIRS:
        shutil.rmtree(tree / d, ignore_errors=True)
    (tree / "tmp").chmod(0o1777)
    (tree / "var/tmp").chmod(0o1777)


def _install_guest_files(tree: Path, busybox: Path) -> None:
    """Our init scripts, then busybox applet links wherever no real program is installed."""
    if not busybox.is_file():
        raise ImageBuildError("busybox-static did not unpack to /usr/bin/busybox")
    files = {
        "etc/inittab": (guest_files.INITTAB, 0o644),
        "etc/pyqga-vm/rc.sysinit": (guest_files.RC_SYSINIT, 0o755),
        "etc/pyqga-vm/console-control": (guest_files.CONSOLE_CONTROL, 0o755),
        "etc/pyqga-vm/halt": (guest_files.HALT, 0o755),
        "etc/pyqga-vm/workload": (guest_files.WORKLOAD, 0o755),
        "usr/sbin/shutdown": (guest_files.SHUTDOWN, 0o755),
        "etc/passwd": (guest_files.PASSWD, 0o644),
        "etc/group": (guest_files.GROUP, 0o644),
        "etc/hostname": ("pyqga-guest\n", 0o644),
        "etc/fstab": ("# filesystems are mounted by /etc/pyqga-vm/rc.sysinit\n", 0o644),
    }
    for rel, (text, mode) in files.items():
        path = tree / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        path.write_text(text)
        path.chmod(mode)
    with contextlib.suppress(FileNotFoundError):
        (tree / "etc/mtab").unlink()
    (tree / "etc/mtab").symlink_to("../proc/self/mounts")
    for applet in _busybox_applets(busybox):
        # --list-full says e.g. "bin/sh", "sbin/poweroff"; bin and sbin are links into usr/.
        link = tree / applet
        if not os.path.lexists(link) and link.parent.is_dir():
            link.symlink_to("/usr/bin/busybox")


def _busybox_applets(busybox: Path) -> list[str]:
    """The static busybox runs on the host too; ask it for its applets and their paths."""
    proc = try_run([str(busybox), "--list-full"])
    applets = [line.strip() for line in proc.stdout.splitlines() if line.strip()]
    if proc.returncode != 0 or not applets:
        raise ImageBuildError(f"{busybox} --list-full failed: {tail(proc.stderr)}")
    return applets


def _guest_python_version(tree: Path) -> str:
    target = os.readlink(tree / "usr/bin/python3") if (tree / "usr/bin/python3").is_symlink() else ""
    match = re.fullmatch(r"python(3\.\d+)", target)
    if not match:
        raise ImageBuildError(f"cannot tell the guest's Python version from /usr/bin/python3 -> {target!r}")
    return match.group(1)


def _compile(tree: Path, version: str, directories: Sequence[Path]) -> None:
    """Byte-compile Python sources in the tree, as the guest's own Python would.

    Debian ships no .pyc (its postinst compiles), and compiling at every start under TCG
    costs seconds, so the agent would start slowly.  The guest interpreter runs here through
    its own dynamic loader; if it cannot, the host's Python is used when its bytecode magic
    is the guest's.  Hash-based, unchecked pycs: mkfs.ext4 -d need not preserve timestamps.
    """
    args = ["-m", "compileall", "-q", "-j", "0", "--invalidation-mode", "unchecked-hash",
            "-s", str(tree), "-p", "/", *[str(d) for d in directories if d.is_dir()]]
    libdir = tree / "usr/lib/x86_64-linux-gnu"
    guest = [str(libdir / "ld-linux-x86-64.so.2"), "--library-path", str(libdir),
             str(tree / f"usr/bin/python{version}"), "-s"]
    env = {"PYTHONHOME": str(tree / "usr"), "PATH": "/usr/bin:/bin", "LC_ALL": "C"}
    proc = try_run([*guest, *args], env=env)
    if proc.returncode in (0, 1) and "Traceback" not in proc.stderr:
        return  # 1: some file did not compile (e.g. lib2to3 test data): fine
    log.warning("guest python could not byte-compile (%s); trying the host's", tail(proc.stderr))
    if _host_magic_matches(tree, version):
        proc = try_run([sys.executable, "-s", *args])
        if proc.returncode in (0, 1):
            return
    log.warning("guest image: Python sources left uncompiled; the agents will start slowly")


def _host_magic_matches(tree: Path, version: str) -> bool:
    source = tree / f"usr/lib/python{version}/importlib/_bootstrap_external.py"
    match = re.search(r"MAGIC_NUMBER = \((\d+)\)", source.read_text()) if source.exists() else None
    return bool(match) and int(match.group(1)).to_bytes(2, "little") == importlib.util.MAGIC_NUMBER[:2]


def _write_initramfs(path: Path, busybox: Path, modules: Sequence[Path]) -> None:
    """A newc cpio written directly (no cpio tool, no root needed for /dev/console)."""
    entries: list[tuple[str, int, bytes, int]] = []  # name, mode, data, rdev (major, minor packed)
    for d in ("bin", "dev", "proc", "sys", "newroot", "lib", "lib/modules"):
        entries.append((d, 0o040755, b"", 0))
    entries.append(("dev/console", 0o020600, b"", (5 << 8) | 1))
    entries.append(("bin/busybox", 0o100755, busybox.read_bytes(), 0))
    for applet in ("sh", "mount", "insmod", "sleep", "cat", "ls", "switch_root", "echo"):
        entries.append((f"bin/{applet}", 0o120777, b"busybox", 0))
    entries.append(("init", 0o100755, guest_files.INITRAMFS_INIT.encode(), 0))
    entries.append(("modules", 0o100644, "".join(f"{m.stem}\n" for m in modules).encode(), 0))
    for module in modules:
        entries.append((f"lib/modules/{module.name}", 0o100644, module.read_bytes(), 0))
    atomic_write(path, _cpio_newc(entries))


def _cpio_newc(entries: Sequence[tuple[str, int, bytes, int]]) -> bytes:
    out = bytearray()

    def pad() -> None:
        out.extend(b"\0" * (-len(out) % 4))

    for ino, (name, mode, data, rdev) in enumerate([*entries, ("TRAILER!!!", 0, b"", 0)], start=1):
        encoded = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, 2 if mode & 0o040000 else 1, 0, len(data), 0, 0,
                  rdev >> 8, rdev & 0xFF, len(encoded), 0)
        out.extend(b"070701" + b"".join(b"%08X" % f for f in fields))
        out.extend(encoded)
        pad()
        out.extend(data)
        pad()
    return bytes(out)


def make_data_disk(path: Path, size_mb: int = DATA_SIZE_MB, label: str = "pyqga-data") -> None:
    """An empty ext4 disk image of another size than the cached template."""
    mkfs(path, size_mb, label)


# --------------------------------------------------------------------------------------------
# pyqga layer


def _build_root(layer: Path, root: Path, python_version: str) -> None:
    """Hard-link the base tree, add pyqga and its dependencies, compile them, mkfs.ext4 -d."""
    started = time.monotonic()
    stage = Path(tempfile.mkdtemp(prefix=".stage-", dir=layer))
    try:
        tree = stage / "tree"
        run(["cp", "-a", "-l", str(layer / "rootfs"), str(tree)], "linking the base tree")
        site = tree / GUEST_SITE
        site.mkdir(parents=True, exist_ok=True)
        copied = []
        for name, directory in _python_sources():
            target = site / name
            shutil.rmtree(target, ignore_errors=True)  # never write through a hard link
            for path in _python_files(directory):
                dest = target / path.relative_to(directory)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, dest)
            copied.append(target)
        _compile(tree, python_version, copied)
        size = _tree_megabytes(tree)
        mkfs(root, max(ROOT_SIZE_MB, size * 2), label="pyqga-root", source=tree)
        root.chmod(0o444)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    log.info("guest image: root with pyqga built in %.1f s", time.monotonic() - started)


def _tree_megabytes(tree: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(tree):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total >> 20


# --------------------------------------------------------------------------------------------
# Housekeeping


def _mark_used(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.utime(path)


def _prune(cache: Path, layer: Path, root: Path, plan: dict[str, object]) -> None:
    """Drop layers nobody used for an hour (a running VM keeps its open image alive anyway)."""
    now = time.time()

    def stale(path: Path) -> bool:
        with contextlib.suppress(OSError):
            return now - path.stat().st_mtime > _PRUNE_AFTER_S
        return False

    for other in layer.glob("root-*.ext4"):
        if other != root and stale(other):
            other.unlink(missing_ok=True)
    for other in cache.glob("base-*"):
        if other != layer and not any(not stale(r) for r in other.glob("root-*.ext4")) and stale(other):
            shutil.rmtree(other, ignore_errors=True)
    current = {deb_path(cache / "debs", n, v).name for n, v in [plan["kernel"], *plan["root"]]}  # type: ignore[misc]
    for deb in (cache / "debs").glob("*.deb"):
        if deb.name not in current and stale(deb):
            deb.unlink(missing_ok=True)
    for other in cache.glob("resolve-*.json"):
        if stale(other):
            other.unlink(missing_ok=True)


