"""``make dist``'s artefacts as a new user would check them: the wheel, and the .deb's layout,
control data, configuration and unit.  The guest test (tests/vm/test_systemd.py) installs it."""

from __future__ import annotations

import configparser
import gzip
import re
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyqga.agent import config as cfg
from pyqga.agent.registry import build_registry
from pyqga.agent.state import blocked_commands
from tests.rig.agent_process import REPO_ROOT, agent_env, tmpfs_statedir
from tests.rig.deb_builder import BUILDER, builder_env
from tests.rig.requirements import require, require_tool

PACKAGING = REPO_ROOT / "packaging"


def build_dist(out: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """The command `make dist` runs, into ``out``, with ``env`` as its builder (none without)."""
    return subprocess.run([sys.executable, str(PACKAGING / "build_dist.py"), "--dist", str(out)],
                          capture_output=True, text=True, timeout=600, env=builder_env(**env))


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, subprocess.CompletedProcess[str]]]:
    """The same command `make dist` runs, into a folder of our own."""
    require_tool("dpkg-deb")
    out = tmp_path_factory.mktemp("dist")
    result = build_dist(out, **BUILDER)
    assert (out / "pyqga-agent_0.1.0_all.deb").exists(), result.stdout + result.stderr
    yield out, result


def deb_listing(deb: Path) -> dict[str, str]:
    """path -> mode string, from dpkg-deb -c."""
    out = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True).stdout
    return {line.split()[-1].removeprefix("."): line.split()[0] for line in out.splitlines()}


def deb_field(deb: Path, name: str) -> str:
    return subprocess.run(["dpkg-deb", "-f", str(deb), name], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_deb_layout(dist: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    files = deb_listing(dist[0] / "pyqga-agent_0.1.0_all.deb")
    for path in ("/lib/systemd/system/pyqga-agent.service", "/lib/udev/rules.d/60-pyqga-agent.rules",
                 "/etc/pyqga/pyqga.conf", "/usr/share/man/man8/pyqga-agent.8.gz",
                 "/usr/share/doc/pyqga-agent/copyright", "/usr/lib/pyqga-agent/pyqga/agent/main.py",
                 "/usr/lib/pyqga-agent/vendor/jsonrpcserver/__init__.py",
                 "/usr/lib/pyqga-agent/vendor/oslash/__init__.py"):
        assert files.get(path, "").startswith("-rw-r--r--"), (path, files.get(path))
    for path in ("/usr/sbin/pyqga-agent", "/etc/pyqga/fsfreeze-hook"):
        assert files.get(path, "").startswith("-rwxr-xr-x"), (path, files.get(path))
    assert files["/etc/pyqga/fsfreeze-hook.d/"].startswith("d")
    assert not [p for p in files if "__pycache__" in p or p.endswith(".pyc")]  # compiled by postinst


def test_deb_control_data(dist: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    deb = dist[0] / "pyqga-agent_0.1.0_all.deb"
    assert deb_field(deb, "Architecture") == "all"
    assert deb_field(deb, "Depends") == (
        "python3 (>= 3.11), python3-serial, python3-jsonschema, python3-typing-extensions")
    assert deb_field(deb, "Conflicts") == "qemu-guest-agent"
    control = subprocess.run(["dpkg-deb", "--ctrl-tarfile", str(deb)], capture_output=True, check=True).stdout
    listing = subprocess.run(["tar", "-t"], input=control, capture_output=True, check=True).stdout.decode()
    assert {"./conffiles", "./md5sums", "./postinst", "./prerm", "./postrm"} <= set(listing.split())
    conffiles = (PACKAGING / "debian/conffiles").read_text().split()
    assert conffiles == ["/etc/pyqga/pyqga.conf", "/etc/pyqga/fsfreeze-hook"]


def test_deb_maintainer_is_its_builder(dist: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    """The Maintainer field and the changelog's trailer name whoever built the .deb (DEBFULLNAME,
    DEBEMAIL); the tree itself carries no address to ship."""
    deb = dist[0] / "pyqga-agent_0.1.0_all.deb"
    builder = f"{BUILDER['DEBFULLNAME']} <{BUILDER['DEBEMAIL']}>"
    assert deb_field(deb, "Maintainer") == builder
    data = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True, check=True).stdout
    changelog = subprocess.run(["tar", "-xO", "./usr/share/doc/pyqga-agent/changelog.gz"], input=data,
                               capture_output=True, check=True).stdout
    assert f" -- {builder}  " in gzip.decompress(changelog).decode()
    addresses = [(path.name, found) for path in PACKAGING.rglob("*") if path.is_file()
                 for found in re.findall(r"[\w.+-]+@[\w-]+\.[\w.-]+", path.read_text())]
    assert not addresses, addresses


def test_deb_needs_a_maintainer(tmp_path: Path) -> None:
    """Without DEBEMAIL nothing is built, and one line says what to set."""
    result = build_dist(tmp_path)
    assert result.returncode != 0
    assert result.stderr.count("\n") == 1 and "DEBEMAIL" in result.stderr, result.stderr
    assert not list(tmp_path.iterdir())
    bad = build_dist(tmp_path, DEBEMAIL="not an address")
    assert bad.returncode != 0 and "not a Maintainer" in bad.stderr, bad.stderr


def test_license_has_one_source(dist: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    """LICENSE is the text: the wheel carries it and declares MIT by SPDX expression; the .deb's
    copyright file quotes it."""
    license_text = (REPO_ROOT / "LICENSE").read_text()
    (wheel,) = dist[0].glob("pyqga-0.1.0-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        assert archive.read("pyqga-0.1.0.dist-info/licenses/LICENSE").decode() == license_text
        metadata = archive.read("pyqga-0.1.0.dist-info/METADATA").decode()
    assert "License-Expression: MIT" in metadata.splitlines()
    assert "License-File: LICENSE" in metadata.splitlines()
    deb = dist[0] / "pyqga-agent_0.1.0_all.deb"
    data = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True, check=True).stdout
    copyright_text = subprocess.run(["tar", "-xO", "./usr/share/doc/pyqga-agent/copyright"], input=data,
                                    capture_output=True, check=True, text=False).stdout.decode()
    holders = next(line for line in license_text.splitlines() if line.startswith("Copyright (c) "))
    assert f"Files: *\nCopyright: {holders.removeprefix('Copyright (c) ')}\n" in copyright_text
    last = license_text.strip().splitlines()[-1]
    assert f" {last}" in copyright_text


def test_lintian_clean_where_it_runs(dist: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    _out, result = dist
    assert result.returncode == 0, result.stdout + result.stderr
    require("lintian not installed" not in result.stdout, "lintian is not installed (make deps installs it)")
    assert "dist: lintian clean" in result.stdout, result.stdout


def test_wheel_has_host_and_guest(dist: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    (wheel,) = dist[0].glob("pyqga-0.1.0-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for path in ("pyqga/__init__.py", "pyqga/py.typed", "pyqga/agent/main.py", "pyqga/agent/statedir.py",
                 "pyqga/agent/freeze/sample-fsfreeze-hook", "pyqga/protocol/__init__.py",
                 "pyqga/host_client/cli.py"):
        assert path in names, path
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "pyqga-agent = pyqga.agent.main:main" in text and "pyqga = pyqga.host_client.cli:main" in text
    assert "[pytest11]\npyqga = pyqga.host_client.pytest_plugin" in text   # the pytest plugin
    # One import name: nothing but the pyqga package and its metadata (no tests, rig or bench).
    assert {n.split("/")[0] for n in names} == {"pyqga", "pyqga-0.1.0.dist-info"}
    assert {"pyqga-agent.8", "pyqga.1"} <= {p.name for p in (dist[0] / "man").iterdir()}


def run_agent(*argv: str) -> subprocess.CompletedProcess[str]:
    env = agent_env()
    return subprocess.run([sys.executable, "-B", "-m", "pyqga.agent", *argv], capture_output=True, text=True,
                          env=env, timeout=30)


def test_shipped_config_is_valid_and_its_example_blocks_exec_and_files(tmp_path: Path) -> None:
    shipped = PACKAGING / "pyqga.conf"
    # The unit's -t, on tmpfs as /run is on a guest (--check-config checks it as start-up does).
    tmpfs_statedir(tmp_path / "state")
    unit = ("-t", str(tmp_path / "state"))
    assert run_agent(*unit, "--check-config", str(shipped)).returncode == 0
    example = tmp_path / "pyqga.conf"
    example.write_text(shipped.read_text().replace("#block-rpcs=", "block-rpcs="))
    assert run_agent(*unit, "--check-config", str(example)).returncode == 0
    config = cfg.from_args(cfg.build_parser().parse_args(["-c", str(example)]))
    registry = build_registry()
    blocked = blocked_commands(registry, config)
    assert blocked == {n for n in registry.names() if n.startswith(("guest-exec", "guest-file-"))}
    assert config.fsfreeze_hook == "/etc/pyqga/fsfreeze-hook"


def test_unit_and_udev_rule_match_qemu_guest_agents_scheme() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    text = (PACKAGING / "pyqga-agent.service").read_text()
    unit.read_string(text)
    device = "dev-virtio\\x2dports-org.qemu.guest_agent.0.device"
    assert unit["Unit"]["BindsTo"] == device and unit["Unit"]["After"] == device
    service = unit["Service"]
    assert service["Restart"] == "always" and service["RuntimeDirectory"] == "pyqga"
    assert service["RuntimeDirectoryMode"] == "0700" and "-t /run/pyqga" in service["ExecStart"]
    assert not unit.has_section("Install")  # started by udev, never enabled
    comments = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    for omitted in ("ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateDevices", "ProtectKernelTunables",
                    "CapabilityBoundingSet", "ProtectClock", "SystemCallFilter", "MemoryDenyWriteExecute"):
        assert omitted not in service, omitted
        assert omitted in comments, f"{omitted}: left out without saying why"
    rule = (PACKAGING / "60-pyqga-agent.rules").read_text()
    assert 'ATTR{name}=="org.qemu.guest_agent.0"' in rule and 'TAG+="systemd"' in rule
    assert 'ENV{SYSTEMD_WANTS}+="pyqga-agent.service"' in rule
