"""The public package as a user gets it: the wheel, installed alone in a fresh virtualenv.

Issue 18's "Done when" for the package and its types: the wheel holds one top-level import name;
in a fresh venv with only the wheel (and its dependencies), ``from pyqga import AgentClient,
AsyncAgentClient`` works and ``mypy --strict`` passes on a script using it (and fails on a wrong
one, so the check can fail); ``pyright --verifytypes pyqga`` scores at least 95%.  Issue 19: that
plain install is the host library alone (no jsonrpcserver; ``pyqga-agent`` then names the
``agent`` extra in one line), and ``pyqga[agent]`` is enough to run the agent.

Offline and quick: the wheel is built as ``make dist`` builds it (``packaging/build_dist.py``,
no index), and the fresh venv gets its dependencies by links to the ones this environment has
installed (the closure of the wheel's own requirements, no more), so no index is asked.  The
venv's interpreter runs from a scratch folder: a checkout on ``sys.path`` would hide the wheel.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
import venv
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import pyqga
from tests.rig.agent_process import REPO_ROOT
from tests.rig.requirements import require, require_tool

VERIFYTYPES_FLOOR = 0.95

USER_SCRIPT = '''\
"""What a user writes: both clients, a freeze, exec, the errors."""

from __future__ import annotations

from pyqga import AgentCallError, AgentClient, AsyncAgentClient, ExecResult, Freeze, FreezeLost


def snapshot(address: str) -> int:
    with AgentClient(address, dialect="qga", timeout=5.0) as agent:
        agent.ping()
        version: str = agent.info()["version"]
        print(version)
        try:
            with agent.frozen(["/data"], thaw_after=30) as freeze:
                held: Freeze = freeze
                print(held.count, held.epoch)
        except FreezeLost as lost:
            print(lost.error_class)
        except AgentCallError as exc:
            print(exc.code)
        result: ExecResult = agent.exec(["true"])
        return -1 if result.exitcode is None else result.exitcode


async def auto_thaw(address: str) -> bool:
    async with AsyncAgentClient(address) as agent:
        await agent.ping()
        return (await agent.capabilities()).auto_thaw
'''

# Each line is wrong in a way only the package's own types can tell.
WRONG_SCRIPT = '''\
from __future__ import annotations

from pyqga import AgentClient, AsyncAgentClient


def thawed(agent: AgentClient) -> str:
    return agent.thaw()


async def exit_code(agent: AsyncAgentClient) -> int:
    return (await agent.exec(["true"])).exitcode
'''


@dataclass(frozen=True)
class Installed:
    wheel: Path
    python: Path  # the fresh venv's interpreter
    scratch: Path  # a folder outside the checkout to run it in


def _build_wheel(dist: Path) -> Path:
    """The wheel, as ``make dist`` builds it: from a clean copy of the tree, without an index."""
    spec = importlib.util.spec_from_file_location("build_dist", REPO_ROOT / "packaging" / "build_dist.py")
    assert spec is not None and spec.loader is not None
    build_dist = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build_dist)
    wheel: Path = build_dist.build_wheel(dist)
    return wheel


def _wheel_requires(wheel: Path) -> list[str]:
    """The wheel's own Requires-Dist lines (not the checkout's installed metadata, which may be older)."""
    with zipfile.ZipFile(wheel) as archive:
        lines = archive.read("pyqga-0.1.0.dist-info/METADATA").decode().splitlines()
    return [line.removeprefix("Requires-Dist: ") for line in lines if line.startswith("Requires-Dist: ")]


def _requirements(requires: list[str],
                  extras: tuple[str, ...] = ()) -> dict[str, importlib.metadata.Distribution]:
    """The installed distributions that ``requires`` (with ``extras``) needs, and what they need."""
    found: dict[str, importlib.metadata.Distribution] = {}

    def wanted(texts: list[str], with_extras: tuple[str, ...]) -> list[str]:
        needed = [Requirement(text) for text in texts]
        return [r.name for r in needed
                if r.marker is None or any(r.marker.evaluate({"extra": extra}) for extra in with_extras)]

    todo = wanted(requires, ("", *extras))
    while todo:
        dist = importlib.metadata.distribution(todo.pop())
        key = canonicalize_name(dist.metadata["Name"])
        if key not in found:
            found[key] = dist
            todo += wanted(dist.requires or [], ("",))
    return found


def _link_requirements(site_packages: Path, requires: list[str], extras: tuple[str, ...] = ()) -> None:
    """Give the fresh venv the wheel's dependencies by linking the installed ones' top-level
    entries (their packages, modules and dist-info) into its site-packages."""
    for dist in _requirements(requires, extras).values():
        tops = {Path(str(f)).parts[0] for f in dist.files or []}
        for top in tops - {"..", "__pycache__"}:
            target = site_packages / top
            if not target.exists():
                target.symlink_to(Path(str(dist.locate_file(top))))


def _fresh_venv(tmp_path_factory: pytest.TempPathFactory, wheel: Path, extras: tuple[str, ...]) -> Installed:
    """A new venv with the wheel and the dependencies ``pip install 'pyqga[EXTRAS]'`` would bring."""
    env_dir = tmp_path_factory.mktemp("fresh") / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
                    "--no-index", str(wheel)], check=True, capture_output=True, text=True, timeout=120)
    (site_packages,) = env_dir.glob("lib/python3*/site-packages")
    _link_requirements(site_packages, _wheel_requires(wheel), extras)
    return Installed(wheel, python, tmp_path_factory.mktemp("scratch"))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build_wheel(tmp_path_factory.mktemp("dist"))


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Iterator[Installed]:
    """``pip install pyqga``: the host library alone."""
    yield _fresh_venv(tmp_path_factory, wheel, ())


@pytest.fixture(scope="module")
def installed_agent(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Iterator[Installed]:
    """``pip install 'pyqga[agent]'``: the guest agent too."""
    yield _fresh_venv(tmp_path_factory, wheel, ("agent",))


def _run(installed: Installed, argv: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MYPYPATH", "VIRTUAL_ENV")}
    return subprocess.run(argv, cwd=installed.scratch, env={**clean, **env}, capture_output=True, text=True,
                          timeout=300)


def test_all_is_the_lazy_table() -> None:
    """``__all__`` is a literal for type checkers; it must name exactly what ``__getattr__`` loads."""
    assert sorted(pyqga.__all__) == pyqga.__all__
    assert set(pyqga.__all__) == set(pyqga._PUBLIC)
    for name in pyqga.__all__:
        assert getattr(pyqga, name).__name__ == name


def test_wheel_holds_one_import_name(installed: Installed) -> None:
    names = zipfile.ZipFile(installed.wheel).namelist()
    assert {name.split("/")[0] for name in names} == {"pyqga", "pyqga-0.1.0.dist-info"}
    assert "pyqga/py.typed" in names


def test_fresh_venv_imports_the_clients_from_the_wheel(installed: Installed) -> None:
    code = ("import sys, pyqga; from pyqga import AgentClient, AsyncAgentClient, FreezeLost; "
            "print(pyqga.__file__); print(AgentClient.__module__, AsyncAgentClient.__module__)")
    proc = _run(installed, [str(installed.python), "-c", code])
    assert proc.returncode == 0, proc.stderr
    where, modules = proc.stdout.splitlines()
    assert Path(where).is_relative_to(installed.python.parent.parent), where  # not the checkout
    assert modules == "pyqga.host_client.client pyqga.host_client.aio"


def test_host_only_install_leaves_the_agents_dependencies_out(installed: Installed) -> None:
    """A plain install imports the host library and has no jsonrpcserver (nor what only it
    brings); the wheel asks for it only with the agent extra."""
    code = ("import importlib.util; from pyqga import AgentClient; "
            "print([m for m in ('jsonrpcserver', 'oslash', 'jsonschema') if importlib.util.find_spec(m)])")
    proc = _run(installed, [str(installed.python), "-c", code])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", proc.stdout
    requires = _wheel_requires(installed.wheel)
    assert [r for r in requires if "extra ==" not in r] == ["pyserial>=3.5", "qemu.qmp<0.1,>=0.0.6"]
    assert 'jsonrpcserver<6,>=5.0; extra == "agent"' in requires


def test_the_agent_without_its_extra_names_the_extra(installed: Installed) -> None:
    """``pyqga-agent`` from a host-only install says in one line what to install; importing the
    agent's server says the same, as an ImportError."""
    proc = _run(installed, [str(installed.python.parent / "pyqga-agent"), "--help"])
    assert proc.returncode == 1 and proc.stdout == "", proc.stdout + proc.stderr
    assert proc.stderr.count("\n") == 1 and "pip install 'pyqga[agent]'" in proc.stderr, proc.stderr
    code = ("try:\n    import pyqga.agent.server\nexcept ImportError as exc:\n    print(exc)\n"
            "else:\n    print('imported')")
    proc = _run(installed, [str(installed.python), "-c", code])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("the agent needs jsonrpcserver"), proc.stdout
    assert "'pyqga[agent]'" in proc.stdout, proc.stdout


def test_the_agent_extra_is_enough_for_the_agent(installed_agent: Installed) -> None:
    proc = _run(installed_agent, [str(installed_agent.python.parent / "pyqga-agent"), "-b", "help"])
    assert proc.returncode == 0, proc.stderr
    assert "guest-fsfreeze-freeze" in proc.stdout


def _mypy(installed: Installed, source: str, name: str) -> subprocess.CompletedProcess[str]:
    require(importlib.util.find_spec("mypy") is not None, "mypy is not installed (test-tools extra)")
    script = installed.scratch / name
    script.write_text(source)
    return _run(installed, [sys.executable, "-m", "mypy", "--strict", "--python-executable",
                            str(installed.python), "--cache-dir", str(installed.scratch / ".mypy_cache"),
                            "--no-error-summary", str(script)])


def test_mypy_strict_passes_on_a_users_script(installed: Installed) -> None:
    proc = _mypy(installed, USER_SCRIPT, "user_script.py")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_mypy_strict_sees_the_packages_types(installed: Installed) -> None:
    proc = _mypy(installed, WRONG_SCRIPT, "wrong_script.py")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    errors = [line for line in proc.stdout.splitlines() if ": error:" in line]
    assert len(errors) == 2, proc.stdout
    assert 'Incompatible return value type (got "int", expected "str")' in errors[0]
    assert 'Incompatible return value type (got "int | None", expected "int")' in errors[1]


def test_pyright_verifytypes_scores_at_least_95_percent(installed: Installed) -> None:
    """pyright (the PyPI package, which runs pyright's JavaScript on the machine's Node.js) finds
    the package through the interpreter first on PATH: the fresh venv's."""
    require_tool("node")
    require(importlib.util.find_spec("pyright") is not None, "pyright is not installed (test-tools extra)")
    path = f"{installed.python.parent}{os.pathsep}{os.environ.get('PATH', '')}"
    proc = _run(installed, [sys.executable, "-m", "pyright", "--verifytypes", "pyqga", "--outputjson"],
                PATH=path)
    assert proc.stdout, proc.stderr
    report = json.loads(proc.stdout)["typeCompleteness"]
    assert Path(report["pyTypedPath"]).is_relative_to(installed.python.parent.parent), report["pyTypedPath"]
    exported = {s["name"] for s in report["symbols"] if s["name"].count(".") == 1 and s["isExported"]}
    assert {f"pyqga.{name}" for name in pyqga.__all__} <= exported
    score = report["completenessScore"]
    unclear = [(s["name"], [d["message"] for d in s["diagnostics"]]) for s in report["symbols"]
               if s["isExported"] and not s["isTypeKnown"]]
    assert score >= VERIFYTYPES_FLOOR, f"{score:.1%}: {unclear}"
