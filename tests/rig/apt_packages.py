"""Debian packages for the test guest, without installing anything on the host: the set apt
resolves for a list of packages (against an empty dpkg status, as for an empty tree), and exact
versions downloaded with ``apt-get download`` into a cache folder.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path

from tests.rig.build_tools import ImageBuildError, atomic_write, digest, run, tail, try_run


class DownloadFailed(ImageBuildError):
    """``apt-get download`` failed: usually lists that name versions the mirror dropped."""


def resolve(cache: Path, kernel_metapackage: str, packages: Sequence[str],
            key_texts: Sequence[bytes]) -> dict[str, object]:
    """The kernel package (the one ``kernel_metapackage`` depends on) and the set ``packages``
    needs, with versions: ``{"kernel": (name, version), "root": [(name, version), ...]}``.

    apt resolves the root set against an empty dpkg status (as if installing into an empty
    tree); that takes seconds, so the answer is cached under a key of the apt lists' stat
    and ``key_texts`` (the caller's source).
    """
    lists = apt_lists()
    if not lists:
        apt_update()
        lists = apt_lists()
    stamp = [f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}".encode() for p in lists]
    key = digest([*stamp, *key_texts])
    path = cache / f"resolve-{key}.json"
    if path.exists():
        return json.loads(path.read_text())

    kernel = _kernel_package(kernel_metapackage)
    with tempfile.NamedTemporaryFile(prefix="pyqga-empty-status-") as empty:
        proc = run(
            ["apt-get", "-s", "-o", f"Dir::State::status={empty.name}", "-o", "Debug::NoLocking=1",
             "install", "--no-install-recommends", *packages],
            "resolving the guest's packages",
        )
    root: list[tuple[str, str]] = []
    for line in proc.stdout.splitlines():
        match = re.match(r"Inst (\S+) \((\S+)", line)
        if match:
            name = match.group(1).split(":")[0]
            if not _install_only(name):
                root.append((name, match.group(2)))
    missing = set(packages) - {name for name, _ in root}
    if missing:
        raise ImageBuildError(f"apt did not resolve {sorted(missing)}:\n{tail(proc.stdout)}")
    plan: dict[str, object] = {"kernel": kernel, "root": sorted(root)}
    atomic_write(path, json.dumps(plan, indent=1).encode())
    return plan


def _install_only(name: str) -> bool:
    """Dependencies that only matter to install packages (dpkg, perl, usrmerge): never needed
    in a tree that is unpacked, not installed."""
    return (
        name in ("dpkg", "tar", "usrmerge", "init-system-helpers", "debconf", "libdb5.3",
                 "libgdbm6", "libgdbm-compat4")
        or name.startswith(("perl", "libperl"))
        or name.endswith("-perl")
    )


def _kernel_package(metapackage: str) -> tuple[str, str]:
    proc = run(["apt-cache", "depends", metapackage], "looking up the cloud kernel")
    names = re.findall(r"Depends: (linux-image-\S+)", proc.stdout)
    if not names:
        raise ImageBuildError(f"{metapackage} names no kernel package:\n{tail(proc.stdout)}")
    policy = run(["apt-cache", "policy", names[0]], f"looking up {names[0]}")
    match = re.search(r"Candidate: (\S+)", policy.stdout)
    if not match or match.group(1) == "(none)":
        raise ImageBuildError(f"no installable version of {names[0]}")
    return names[0], match.group(1)


def apt_lists() -> list[Path]:
    return sorted(Path("/var/lib/apt/lists").glob("*_Packages*"))


def apt_update() -> None:
    if os.geteuid() != 0:
        raise ImageBuildError("apt has no package lists and only root can run `apt-get update`")
    run(["apt-get", "update", "-qq"], "apt-get update")


def deb_path(debs: Path, name: str, version: str) -> Path:
    return debs / f"{name}_{version.replace(':', '%3a')}.deb"


def fetch(debs: Path, packages: Sequence[tuple[str, str]]) -> dict[str, Path]:
    """Download what is not cached yet (exact versions); return name -> .deb path."""
    debs.mkdir(exist_ok=True)
    missing = [(n, v) for n, v in packages if not deb_path(debs, n, v).exists()]
    if missing:
        with tempfile.TemporaryDirectory(prefix=".download-", dir=debs) as tmp:
            cmd = ["apt-get", "download", *[f"{n}={v}" for n, v in missing]]
            if os.geteuid() == 0:
                cmd[2:2] = ["-o", "APT::Sandbox::User=root"]  # else _apt cannot write here
            proc = try_run(cmd, cwd=Path(tmp))
            if proc.returncode != 0:
                raise DownloadFailed(f"apt-get download failed: {tail(proc.stderr)}")
            for deb in Path(tmp).glob("*.deb"):
                fields = run(["dpkg-deb", "-f", str(deb), "Package", "Version"], f"reading {deb.name}")
                info = dict(line.split(": ", 1) for line in fields.stdout.splitlines() if ": " in line)
                deb.replace(deb_path(debs, info["Package"], info["Version"]))
    result = {}
    for name, version in packages:
        path = deb_path(debs, name, version)
        if not path.exists():
            raise ImageBuildError(f"apt-get download did not produce {name} {version}")
        result[name] = path
    return result
