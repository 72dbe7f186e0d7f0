"""The pytest plugin for fault tests: ``guest`` and ``nemesis`` fixtures, the timeline in the report.

Registered through the ``pytest11`` entry point (``pyqga`` in pyproject.toml), so installing
pyqga is enough; ``-p no:pyqga`` turns it off.  What it adds (docs/faults.md, "The pytest plugin"):

- ``--pyqga-address ADDRESS`` (else ``$PYQGA_ADDRESS`` or ``$QGA_CLIENT_ADDRESS``, else the ini
  setting ``pyqga_address``): where the agent is.  Without one, tests that use ``guest`` skip.
- ``guest``: an :class:`~pyqga.host_client.client.AgentClient` for the session.
- ``nemesis``: a :class:`~pyqga.host_client.nemesis.Nemesis` for one test.  Every lease and plan
  started through it is reverted when the test ends, passed, failed or interrupted: pytest runs
  fixture finalizers from ``pytest_sessionfinish`` after a Ctrl-C (``KeyboardInterrupt`` skips
  the test's own teardown phase, not the finalizers), and the nemesis ignores SIGINT while it
  reverts.  If even that cannot happen (the host dies), every lease still ends by its deadline.
- ``--pyqga-seed N`` (default: random, one per session, shown in the header): each test's
  nemesis seed is derived from it and the test's id, so one test replays alone.
- The fault timeline since the test's start, as the section "pyqga fault timeline" of the
  test's reports, printed under a failure with the line to replay it.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field

import pytest

from pyqga.host_client.cli_values import ADDRESS_FORMS, agent_address, check_address
from pyqga.host_client.client import DEFAULT_TIMEOUT, AgentClient
from pyqga.host_client.errors import AgentClientError
from pyqga.host_client.nemesis import Nemesis, Reverted, format_timeline

SECTION = "pyqga fault timeline"


@dataclass
class Session:
    """The plugin's state for one pytest session (in ``config.stash``, not in this module:
    pytester runs sessions inside sessions)."""

    seed: int
    address: str | None
    source: str
    timeout: float
    interrupted: bool = False
    failed: list[str] = field(default_factory=list)   # node ids of failed tests that had a nemesis


ReportHook = Generator[None, pytest.TestReport, pytest.TestReport]
SESSION = pytest.StashKey[Session]()
NEMESIS = pytest.StashKey[Nemesis]()
TIMELINE = pytest.StashKey[str]()
MAIN_REPORT = pytest.StashKey[pytest.TestReport]()   # the call's (or a failed setup's)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("pyqga", "fault tests through a pyqga agent (pyqga's pytest plugin)")
    group.addoption("--pyqga-address", metavar="ADDRESS",
                    help=f"the agent the 'guest' and 'nemesis' fixtures use: {ADDRESS_FORMS}. "
                         "Default: $PYQGA_ADDRESS, else $QGA_CLIENT_ADDRESS, else the ini setting "
                         "pyqga_address; without any, tests that use them skip")
    group.addoption("--pyqga-seed", metavar="N", type=int,
                    help="the session's seed: each test's nemesis seed (its plans, its random choices) "
                         "is derived from it and the test's id. Default: a random one, shown in the "
                         "header and printed under a failure, so a run can be replayed")
    group.addoption("--pyqga-timeout", metavar="SECONDS", type=float,
                    help=f"the wait for each reply of the agent (default: the ini setting pyqga_timeout, "
                         f"else {DEFAULT_TIMEOUT:g})")
    parser.addini("pyqga_address", "the agent's address for the guest fixture (--pyqga-address and "
                                   "$PYQGA_ADDRESS beat it)")
    parser.addini("pyqga_timeout", "the wait for each of the agent's replies, seconds", default="")


def pytest_configure(config: pytest.Config) -> None:
    seed = config.getoption("pyqga_seed")
    if seed is None:
        seed = random.SystemRandom().randrange(1 << 32)
    found = agent_address(config.getoption("pyqga_address"))
    address, source = found if found is not None else (None, "")
    if address is None and config.getini("pyqga_address"):
        address, source = str(config.getini("pyqga_address")), "the ini setting pyqga_address"
    if address is not None:
        problem = check_address(address)
        if problem is not None:
            name = "--pyqga-address" if source == "--socket" else source
            raise pytest.UsageError(f"{name}: {problem}")
    timeout = config.getoption("pyqga_timeout")
    if timeout is None:
        text = str(config.getini("pyqga_timeout") or DEFAULT_TIMEOUT)
        try:
            timeout = float(text)
        except ValueError:
            raise pytest.UsageError(f"pyqga_timeout: a number of seconds, not {text!r}") from None
    config.stash[SESSION] = Session(seed, address, "--pyqga-address" if source == "--socket" else source,
                                    timeout)


def state(config: pytest.Config) -> Session:
    return config.stash[SESSION]


def pytest_report_header(config: pytest.Config) -> str:
    s = state(config)
    where = f"agent {s.address} (from {s.source})" if s.address else "no agent address (guest tests skip)"
    return f"pyqga: seed {s.seed} (--pyqga-seed {s.seed} replays it); {where}"


def test_seed(session_seed: int, nodeid: str) -> int:
    """A test's own seed: the same for the same session seed and test, whatever else runs."""
    digest = hashlib.sha256(f"{session_seed}:{nodeid}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


test_seed.__test__ = False  # type: ignore[attr-defined]   # not a test, whatever its name


@pytest.fixture(scope="session")
def guest(pytestconfig: pytest.Config) -> Iterator[AgentClient]:
    """An AgentClient for the agent at --pyqga-address (one for the session); skips without one."""
    s = state(pytestconfig)
    if s.address is None:
        pytest.skip("no pyqga agent address: give --pyqga-address ADDRESS, set PYQGA_ADDRESS, "
                    "or pyqga_address in the ini file")
    try:
        client = AgentClient(s.address, timeout=s.timeout)
    except AgentClientError as exc:
        pytest.fail(f"pyqga: cannot reach the agent at {s.address} ({s.source}): {exc}", pytrace=False)
    with client:
        yield client


@pytest.fixture
def nemesis(guest: AgentClient, request: pytest.FixtureRequest) -> Iterator[Nemesis]:
    """Faults for this test (``nemesis.inject``, ``nemesis.plan``), every one reverted at its end,
    even on failure or Ctrl-C; the timeline goes into the test's report."""
    s = state(request.config)
    chaos = Nemesis(guest.faults, test_seed(s.seed, request.node.nodeid))
    request.node.stash[NEMESIS] = chaos
    yield chaos
    # A finalizer: also run after Ctrl-C, from pytest_sessionfinish (see the module's docstring).
    outcome = chaos.revert_all()
    try:
        timeline = format_timeline(chaos.events())
    except AgentClientError as exc:
        timeline = f"(the timeline could not be read: {exc})"
    text = describe(chaos, s, outcome, timeline)
    request.node.stash[TIMELINE] = text
    if request.session.exitstatus == pytest.ExitCode.INTERRUPTED:   # Ctrl-C: no report will show it
        s.interrupted = True
        say(request.config, f"pyqga: interrupted: {request.node.nodeid}: {outcome.describe()}\n{text}")
    if outcome.failed:
        pytest.fail(f"pyqga: {outcome.describe()}", pytrace=False)


def describe(chaos: Nemesis, s: Session, outcome: Reverted, timeline: str) -> str:
    lines = [f"seed: replay with --pyqga-seed {s.seed} (this test's nemesis seed {chaos.seed})",
             f"at the end: {outcome.describe()}"]
    lines += [f"plan {p.id}: {p.faults} faults, hash {p.hash}" for p in chaos.plans]
    return "\n".join([*lines, "", timeline])


def say(config: pytest.Config, text: str) -> None:
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(text)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> ReportHook:
    report: pytest.TestReport = yield
    if NEMESIS not in item.stash:
        return report
    if report.when == "call" or (report.failed and report.when == "setup"):
        item.stash[MAIN_REPORT] = report
    if report.when == "teardown":
        timeline = item.stash.get(TIMELINE, "")
        main = item.stash.get(MAIN_REPORT, None)
        if timeline:
            report.sections.append((SECTION, timeline))
            if main is not None:
                # The test's own report, whose sections the terminal prints under a failure (and
                # under a pass with -rP) at the end of the run.
                main.sections.append((SECTION, timeline))
        if report.failed or (main is not None and main.failed):
            state(item.config).failed.append(item.nodeid)
    return report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    s = state(terminalreporter.config)
    if s.failed or s.interrupted:
        what = (f"{len(s.failed)} failed test{'s' if len(s.failed) != 1 else ''} injected faults"
                if s.failed else "interrupted")
        terminalreporter.write_sep("-", "pyqga")
        terminalreporter.write_line(f"pyqga: {what}; replay with --pyqga-seed {s.seed}")
