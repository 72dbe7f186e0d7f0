#!/usr/bin/env python3
"""``make dist``: build, offline and from this tree, the wheel (host and guest) and the Debian
package ``pyqga-agent_VERSION_all.deb`` (the guest agent, its unit, udev rule, config and hooks),
plus man pages made from ``--help`` (help2man's way).

The .deb depends on Debian's python3, python3-serial, python3-jsonschema and
python3-typing-extensions; jsonrpcserver and oslash, which Debian lacks, are copied from the
Python running this script (the project's virtualenv, with the ``agent`` extra) into
/usr/lib/pyqga-agent/vendor.  The license text comes from LICENSE, the Maintainer from
DEBFULLNAME and DEBEMAIL (see :func:`maintainer`).  Built with dpkg-deb alone (no debhelper);
lintian, where installed, is run on the result.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PACKAGE = "pyqga-agent"
LIBDIR = "usr/lib/pyqga-agent"
# (path under LIBDIR, source folder): the pyqga package (its own files; the parts are symlinks) and its parts
OWN_PACKAGES = (("pyqga", "pyqga"), ("pyqga/agent", "agent"), ("pyqga/protocol", "protocol"))
VENDORED = ("jsonrpcserver", "oslash")
MAN_SOURCES = {  # page -> (section, module run with --help, one-line description)
    "pyqga-agent": ("8", "pyqga.agent", "guest agent for QEMU virtual machines, in Python"),
    "pyqga": ("1", "pyqga.host_client", "talk to a guest agent (pyqga or qemu-ga) from the host"),
}
MAN_FILES = """\
.TP
.I /etc/pyqga/pyqga.conf
settings, the [general] section; checked by \\-\\-check\\-config
.TP
.I /etc/pyqga/fsfreeze\\-hook
run with freeze or thaw around freezes; runs /etc/pyqga/fsfreeze\\-hook.d/*
.TP
.I /run/pyqga
state directory (keep it on tmpfs): state file, pid file, guard lock
.TP
.I /lib/systemd/system/pyqga\\-agent.service
started by udev (60\\-pyqga\\-agent.rules) when /dev/virtio\\-ports/org.qemu.guest_agent.0 appears
"""


def version() -> str:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def source_date() -> int:
    """SOURCE_DATE_EPOCH, else the last commit's time: the same tree builds the same files."""
    if "SOURCE_DATE_EPOCH" in os.environ:
        return int(os.environ["SOURCE_DATE_EPOCH"])
    proc = subprocess.run(["git", "-C", str(REPO), "log", "-1", "--format=%ct"],
                          capture_output=True, text=True)
    return int(proc.stdout.strip() or 0) if proc.returncode == 0 else 0


def run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)  # type: ignore[call-overload]
    if proc.returncode != 0:
        raise SystemExit(f"dist: {' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return proc


# --- man pages -----------------------------------------------------------------------------


def roff_escape(line: str) -> str:
    line = line.replace("\\", "\\e").replace("-", "\\-")
    return "\\&" + line if line.startswith((".", "'")) else line


def man_page(name: str, when: int) -> str:
    section, module, summary = MAN_SOURCES[name]
    env = dict(os.environ, COLUMNS="80", PYTHONPATH=str(REPO))
    helped = run([sys.executable, "-B", "-m", module, "--help"], env=env, cwd=REPO).stdout
    date = time.strftime("%Y-%m-%d", time.gmtime(when))
    lines = [f'.TH {name.upper()} {section} {date} "pyqga {version()}"', ".SH NAME",
             f"{roff_escape(name)} \\- {roff_escape(summary)}", ".SH SYNOPSIS", f".B {roff_escape(name)}",
             "[\\fIOPTION\\fR]...", ".SH DESCRIPTION",
             f"The text below is the output of \\fB{roff_escape(name)} \\-\\-help\\fR.", ".PP", ".nf"]
    lines += [roff_escape(line) for line in helped.rstrip("\n").splitlines()]
    lines.append(".fi")
    if name == "pyqga-agent":
        lines += [".SH FILES", MAN_FILES.rstrip("\n"), ".SH SEE ALSO", ".BR pyqga (1),", ".BR qemu-ga (8)"]
    else:
        lines += [".SH SEE ALSO", ".BR pyqga-agent (8)"]
    return "\n".join(lines) + "\n"


def gzip_bytes(data: bytes, when: int) -> bytes:
    return gzip.compress(data, compresslevel=9, mtime=when)


# --- the wheel -----------------------------------------------------------------------------


def tree_files() -> list[str]:
    """What is in the tree: tracked and new files, not ignored ones."""
    proc = run(["git", "-C", str(REPO), "ls-files", "-co", "--exclude-standard", "-z"])
    return [p for p in proc.stdout.split("\0") if p and (REPO / p).is_file()]


def build_wheel(dist: Path) -> Path:
    """pip wheel from a clean copy of the tree (no stale build/), without the network."""
    with tempfile.TemporaryDirectory(prefix="pyqga-wheel-") as scratch:
        copy = Path(scratch) / "src"
        for relative in tree_files():
            target = copy / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / relative, target)
        before = set(dist.glob("pyqga-*.whl"))
        run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
             "--no-index", "-w", str(dist), str(copy)])
    wheels = sorted(set(dist.glob(f"pyqga-{version()}-*.whl")) | before, key=lambda p: p.stat().st_mtime)
    return wheels[-1]


# --- the Debian package --------------------------------------------------------------------


def copy_python_package(source: Path, target: Path) -> None:
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source)
        if "__pycache__" in relative.parts or path.suffix == ".pyc" or path.is_dir():
            continue
        dest = target / relative
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest)
        dest.chmod(0o755 if os.access(path, os.X_OK) and path.suffix != ".py" else 0o644)


def vendored_source(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise SystemExit(f"dist: {name} is not installed in {sys.executable}; "
                         "run 'make dist' (it sets up .venv)")
    return Path(spec.origin).parent


def license_text(name: str) -> str:
    """The vendored distribution's license file, from its dist-info."""
    from importlib import metadata
    dist = metadata.distribution(name)
    for file in dist.files or []:
        if file.name.upper().startswith(("LICENSE", "COPYING")):
            return Path(dist.locate_file(file)).read_text()
    raise SystemExit(f"dist: no license file for {name} in {sys.executable}'s site-packages")


def project_license() -> tuple[str, str]:
    """(holders, terms) from LICENSE, the one copy of the project's license: who its
    ``Copyright (c)`` line names, and the text after that line."""
    lines = (REPO / "LICENSE").read_text().strip().splitlines()
    at = next((i for i, line in enumerate(lines) if line.startswith("Copyright")), None)
    if at is None:
        raise SystemExit(f"dist: {REPO / 'LICENSE'} has no Copyright line")
    return lines[at].removeprefix("Copyright").removeprefix(" (c)").strip(), "\n".join(lines[at + 1:]).strip()


def copyright_file() -> str:
    holders, terms = project_license()
    parts = ["Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/",
             "Upstream-Name: pyqga", "", "Files: *", f"Copyright: {holders}", "License: MIT"]
    for name in VENDORED:
        from importlib import metadata
        meta = metadata.metadata(name)
        parts += ["", f"Files: {LIBDIR}/vendor/{name}/*",
                  f"Copyright: {meta.get('Author') or meta.get('Author-email') or name + ' authors'}",
                  f"License: {meta.get('License') or 'MIT'}"]
        parts += [" " + (line if line.strip() else ".") for line in license_text(name).strip().splitlines()]
    parts += ["", "License: MIT", " " + terms.replace("\n\n", "\n .\n").replace("\n", "\n ")]
    return "\n".join(parts) + "\n"



MAINTAINER_HELP = ("set DEBFULLNAME and DEBEMAIL to the name and address of whoever answers for "
                   "this build (as dch takes them): DEBFULLNAME='Jane Doe' DEBEMAIL=jane@... make dist")
ADDRESS = re.compile(r"[^\s<>@]+@[^\s<>@]+\.[^\s<>@.]+")


def maintainer() -> str:
    """The .deb's Maintainer: whoever builds and ships it, as Debian's tools (dch, debmake) name
    them, from DEBFULLNAME and DEBEMAIL (or DEBEMAIL alone as ``Name <address>``).  pyqga has no
    public home and no mailbox, and Debian policy wants a name with a working address, so the
    tree carries none: a placeholder would tell users where to write and be read by no one."""
    email = os.environ.get("DEBEMAIL", "").strip()
    name = os.environ.get("DEBFULLNAME", "").strip()
    quoted = re.fullmatch(r"(.+?)\s*<(.+)>", email)
    if quoted:
        name, email = name or quoted[1].strip(), quoted[2].strip()
    if not email:
        raise SystemExit(f"dist: the .deb needs a Maintainer: {MAINTAINER_HELP}")
    if not name or not ADDRESS.fullmatch(email) or any(c in name for c in "<>,\n"):
        raise SystemExit(f"dist: not a Maintainer (a name and an address): {name!r} <{email}>; "
                         f"{MAINTAINER_HELP}")
    return f"{name} <{email}>"


def install(stage: Path, relative: str, data: bytes | str, mode: int = 0o644) -> None:
    path = stage / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    path.chmod(mode)


def stage_tree(stage: Path, when: int, who: str) -> None:
    for target, source in OWN_PACKAGES:
        copy_python_package(REPO / source, stage / LIBDIR / target)
    for name in VENDORED:
        copy_python_package(vendored_source(name), stage / LIBDIR / "vendor" / name)
    install(stage, "usr/sbin/pyqga-agent", (HERE / "pyqga-agent").read_text(), 0o755)
    install(stage, "lib/systemd/system/pyqga-agent.service", (HERE / "pyqga-agent.service").read_text())
    install(stage, "lib/udev/rules.d/60-pyqga-agent.rules", (HERE / "60-pyqga-agent.rules").read_text())
    install(stage, "etc/pyqga/pyqga.conf", (HERE / "pyqga.conf").read_text())
    hook = (REPO / "agent/freeze/sample-fsfreeze-hook").read_text()
    install(stage, "etc/pyqga/fsfreeze-hook", hook, 0o755)
    (stage / "etc/pyqga/fsfreeze-hook.d").mkdir(parents=True)
    page = gzip_bytes(man_page("pyqga-agent", when).encode(), when)
    install(stage, "usr/share/man/man8/pyqga-agent.8.gz", page)
    doc = "usr/share/doc/pyqga-agent"
    install(stage, f"{doc}/copyright", copyright_file())
    date = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime(when))
    changelog = (HERE / "debian/changelog").read_text().replace("@VERSION@", version()).replace(
        "@MAINTAINER@", who).replace("@DATE@", date)
    install(stage, f"{doc}/changelog.gz", gzip_bytes(changelog.encode(), when))


def control_files(stage: Path, who: str) -> None:
    debian = stage / "DEBIAN"
    debian.mkdir()
    sums, size = [], 0
    for path in sorted(p for p in stage.rglob("*") if p.is_file() and "DEBIAN" not in p.parts):
        data = path.read_bytes()
        size += (len(data) + 1023) // 1024
        sums.append(f"{hashlib.md5(data).hexdigest()}  {path.relative_to(stage)}")
    size += len([p for p in stage.rglob("*") if p.is_dir()])
    control = (HERE / "debian/control.in").read_text().replace("@VERSION@", version()).replace(
        "@INSTALLED_SIZE@", str(size)).replace("@MAINTAINER@", who)
    install(stage, "DEBIAN/control", control)
    install(stage, "DEBIAN/md5sums", "\n".join(sums) + "\n")
    install(stage, "DEBIAN/conffiles", (HERE / "debian/conffiles").read_text())
    for script in ("postinst", "prerm", "postrm"):
        install(stage, f"DEBIAN/{script}", (HERE / "debian" / script).read_text(), 0o755)


def build_deb(dist: Path, when: int, who: str) -> Path:
    with tempfile.TemporaryDirectory(prefix="pyqga-deb-") as scratch:
        stage = Path(scratch) / "root"
        stage.mkdir(mode=0o755)
        stage_tree(stage, when, who)
        for path in [stage, *stage.rglob("*")]:
            if path.is_dir():
                path.chmod(0o755)
            os.utime(path, (when, when), follow_symlinks=False)
        control_files(stage, who)
        deb = dist / f"{PACKAGE}_{version()}_all.deb"
        run(["dpkg-deb", "--root-owner-group", "-Zxz", "--build", str(stage), str(deb)],
            env=dict(os.environ, SOURCE_DATE_EPOCH=str(when)))
    return deb


def lintian(deb: Path) -> bool:
    """Errors and warnings fail; info and pedantic notes are printed only."""
    if shutil.which("lintian") is None:
        print("dist: lintian not installed, not checked")
        return True
    proc = subprocess.run(["lintian", "--tag-display-limit", "0", "--display-info", str(deb)],
                          capture_output=True, text=True)
    out = (proc.stdout + proc.stderr).strip()
    if out:
        print(out)
    bad = [line for line in out.splitlines() if line.startswith(("E:", "W:"))]
    print(f"dist: lintian {'found ' + str(len(bad)) + ' errors/warnings' if bad else 'clean'}")
    return not bad


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dist", default=str(REPO / "dist"), help="output folder (default dist/)")
    parser.add_argument("--no-wheel", action="store_true", help="build only the .deb")
    parser.add_argument("--no-lintian", action="store_true", help="do not run lintian")
    args = parser.parse_args()
    who = maintainer()  # before anything is built: without one there is no .deb
    dist = Path(args.dist)
    dist.mkdir(parents=True, exist_ok=True)
    when = source_date()
    man = dist / "man"
    man.mkdir(exist_ok=True)
    for name, (section, _module, _summary) in MAN_SOURCES.items():
        (man / f"{name}.{section}").write_text(man_page(name, when))
    if not args.no_wheel:
        print(f"dist: {build_wheel(dist)}")
    deb = build_deb(dist, when, who)
    print(f"dist: {deb}")
    return 0 if args.no_lintian or lintian(deb) else 1


if __name__ == "__main__":
    sys.exit(main())
