"""Hostile input and load over a real socket: the agent stays live, bounded and correct (issue 13).

Every test runs the real agent process on a unix socket.  Bounds are generous liveness bounds (a
ping answered within seconds, memory within a cap far above normal, fds back where they were),
never speed targets: those are in ``bench/abuse.py`` and BENCHMARKS.md.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pyqga.agent.server import MAX_CONNECTIONS, MAX_PENDING_REPLIES
from tests.rig.agent_process import PyqgaAgent
from tests.rig.flood import PATTERNS, FloodProcess, Pinger, fd_count, status_kib

FLOOD_CLIENTS = 8
FLOOD_SECONDS = 3.0
MAX_PING_SECONDS = 3.0         # a ping on any connection, while flooded (the target is 0.1 s)
MAX_HWM_KIB = 128 << 10        # agent peak RSS under a flood (idle ~25 MB; the target is 64 MB)
SETTLE_SECONDS = 15.0
# Outside any freezable filesystem: freeze-all in these tests can only ever reach nothing.
NOTHING_FREEZABLE = ["--freeze-include", "/nonexistent-pyqga-abuse/*"]


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[PyqgaAgent]:
    with PyqgaAgent(tmp_path / "agent", NOTHING_FREEZABLE) as running:
        quiet_fds(running)
        yield running


@pytest.fixture(scope="module")
def shared_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PyqgaAgent]:
    """One agent for the tests that only send requests and read replies."""
    with PyqgaAgent(tmp_path_factory.mktemp("shared") / "agent", NOTHING_FREEZABLE) as running:
        yield running


def quiet_fds(agent: PyqgaAgent) -> int:
    """The agent's fd count once it has stopped changing for a second (its freeze guard starts
    shortly after the socket listens: two pipes and a pidfd), the baseline for leak checks."""
    counts = [fd_count(agent.pid)]
    end = time.monotonic() + 15
    while time.monotonic() < end:
        time.sleep(0.25)
        counts.append(fd_count(agent.pid))
        if len(counts) > 4 and len(set(counts[-5:])) == 1:
            break
    return counts[-1]


def ask(agent: PyqgaAgent, request: bytes, timeout: float = 30.0) -> bytes:
    """Send ``request`` on a fresh connection; the first reply line (0xFF prefix kept)."""
    with agent.connect(timeout) as sock:
        sock.sendall(request)
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(1 << 20)
            if not chunk:
                raise AssertionError(f"connection closed with {data[:200]!r} for {request[:100]!r}")
            data += chunk
        return data


def strict_json(line: bytes) -> Any:
    """Parse as JSON that a strict host accepts: no NaN, Infinity or -Infinity anywhere."""
    def refuse(token: str) -> Any:
        raise AssertionError(f"non-finite number {token} on the wire: {line[:300]!r}")
    return json.loads(line.lstrip(b"\xff"), parse_constant=refuse)


def answers(agent: PyqgaAgent, timeout: float = 5.0) -> bool:
    """Whether a ping on a fresh connection is answered within ``timeout``."""
    try:
        return ask(agent, b'{"execute":"guest-ping"}', timeout) == b'{"return": {}}\n'
    except OSError:
        return False


def settle(condition: Any, what: str, limit: float = SETTLE_SECONDS) -> None:
    end = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < end, f"not within {limit} s: {what}"
        time.sleep(0.05)


# --- floods -------------------------------------------------------------------------------------


@pytest.mark.parametrize("pattern", list(PATTERNS))
def test_flood_leaves_every_client_served(agent: PyqgaAgent, pattern: str) -> None:
    """8 clients flood for 3 s while a fresh-connection ping and a kept-connection ping run."""
    assert ask(agent, b'{"execute":"guest-ping"}') == b'{"return": {}}\n'
    fds_before = fd_count(agent.pid)
    fresh = Pinger(agent.socket_path, persistent=False, timeout=30)
    kept = Pinger(agent.socket_path, persistent=True, timeout=30)
    fresh.start()
    kept.start()
    flood = FloodProcess(agent.socket_path, pattern, FLOOD_CLIENTS, FLOOD_SECONDS)
    try:
        totals = flood.wait()
    finally:
        flood.kill()
        fresh_times, kept_times = fresh.stop(), kept.stop()
    hwm = status_kib(agent.pid, "VmHWM")
    report = (f"{pattern!r}: flood {totals}, fresh {fresh_times.summary()}; kept {kept_times.summary()}; "
              f"peak RSS {hwm / 1024:.0f} MiB")
    print(report)
    assert agent.process is not None and agent.process.poll() is None, f"agent died: {agent.log_tail()}"
    assert totals["connections"] >= FLOOD_CLIENTS, report
    for name, result in (("fresh-connection", fresh_times), ("kept-connection", kept_times)):
        assert not result.failures, f"{name} pings failed: {report}"
        assert len(result.times) >= 3, f"{name} pings hardly ran: {report}"
        assert result.worst < MAX_PING_SECONDS, f"{name} ping took {result.worst:.2f} s: {report}"
    assert hwm < MAX_HWM_KIB, f"agent peak RSS {hwm / 1024:.0f} MiB: {report}"
    settle(lambda: fd_count(agent.pid) <= fds_before, f"agent fds back to {fds_before} "
           f"(now {fd_count(agent.pid)})")
    assert ask(agent, b'{"execute":"guest-ping"}') == b'{"return": {}}\n'


# --- exact replies under concurrency --------------------------------------------------------------


def _mixed_pings(agent: PyqgaAgent, worker: int, count: int, window: int = 16) -> list[str]:
    """``count`` pings on one connection, alternating dialects and id types, ``window`` in
    flight; every reply must be exactly the one its request asks for.  Returns the problems."""
    problems: list[str] = []
    expected: dict[str, dict[str, Any]] = {}

    def request(i: int) -> bytes:
        ident: int | str = worker * 1_000_000 + i if i % 3 else f"w{worker}-{i}"
        key = json.dumps(ident)
        if i % 2:
            expected[key] = {"return": {}, "id": ident}
            return json.dumps({"execute": "guest-ping", "id": ident}).encode()
        expected[key] = {"jsonrpc": "2.0", "result": {}, "id": ident}
        return json.dumps({"jsonrpc": "2.0", "method": "guest-ping", "id": ident}).encode()

    with agent.connect(60) as sock:
        sent = received = 0
        buffered = b""
        while received < count:
            burst = b""
            while sent < count and sent - received < window:
                burst += request(sent)
                sent += 1
            if burst:
                sock.sendall(burst)
            chunk = sock.recv(1 << 16)
            if not chunk:
                return [f"worker {worker}: connection closed after {received} replies"]
            buffered += chunk
            *lines, buffered = buffered.split(b"\n")
            for line in lines:
                received += 1
                reply = strict_json(line)
                key = json.dumps(reply.get("id"))
                want = expected.pop(key, None)
                if reply != want:
                    problems.append(f"worker {worker}: got {reply}, wanted {want}")
    if expected:
        problems.append(f"worker {worker}: {len(expected)} requests unanswered")
    return problems


def test_32_clients_2000_mixed_dialect_pings_each_get_exactly_their_replies(shared_agent: PyqgaAgent) -> None:
    results: list[list[str]] = [[] for _ in range(32)]

    def run(worker: int) -> None:
        try:
            results[worker] = _mixed_pings(shared_agent, worker, 2000)
        except Exception as exc:  # reported below with the worker's number
            results[worker] = [f"worker {worker}: {exc!r}"]

    threads = [threading.Thread(target=run, args=(w,)) for w in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    problems = [p for r in results for p in r]
    assert not problems, f"{len(problems)} problems, first: {problems[:5]}"


def test_5000_half_messages_then_close_leak_no_fd(agent: PyqgaAgent) -> None:
    assert ask(agent, b'{"execute":"guest-ping"}') == b'{"return": {}}\n'
    fds_before = fd_count(agent.pid)

    def churn(n: int) -> None:
        for _ in range(n):
            with agent.connect(30) as sock:
                sock.sendall(b'{"execute":"guest-ping","argu')

    threads = [threading.Thread(target=churn, args=(1250,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    settle(lambda: fd_count(agent.pid) <= fds_before,
           f"agent fds back to {fds_before} (now {fd_count(agent.pid)})")
    assert ask(agent, b'{"execute":"guest-ping"}') == b'{"return": {}}\n'


# --- a client that is gone gets nothing built for it ---------------------------------------------


def _send_while_stopped(agent: PyqgaAgent, payload: bytes, clients: int) -> int:
    """With the agent stopped (SIGSTOP), ``clients`` connections each queue as much of
    ``payload`` as the kernel takes and close; then the agent continues.  Bytes queued."""
    queued = 0
    os.kill(agent.pid, signal.SIGSTOP)
    try:
        for _ in range(clients):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
                sock.settimeout(5)
                sock.connect(str(agent.socket_path))
                sock.setblocking(False)
                view = memoryview(payload)
                while view:
                    try:
                        n = sock.send(view[:1 << 16])
                    except BlockingIOError:
                        break
                    queued += n
                    view = view[n:]
    finally:
        os.kill(agent.pid, signal.SIGCONT)
    return queued


def test_requests_of_a_closed_client_are_dropped_not_run(agent: PyqgaAgent) -> None:
    """Thousands of guest-file-open requests from a client that closed before the agent read
    them: no more than one connection's in-flight allowance (agent/server.py's
    MAX_PENDING_REPLIES, 256 today) may run.  Observable: every open that ran holds an fd in the agent
    (handles outlive connections, as in qemu-ga), so the agent's fd count grows by the opens run."""
    request = b'{"execute":"guest-file-open","arguments":{"path":"/dev/null"}}'
    assert ask(agent, b'{"execute":"guest-ping"}') == b'{"return": {}}\n'
    fds_before = fd_count(agent.pid)
    queued = _send_while_stopped(agent, request * 20_000, clients=1)
    sent = queued // len(request)
    assert sent >= 2_000, f"only {sent} requests could be queued: the test proves nothing"
    fds = [fd_count(agent.pid)]

    def stable() -> bool:
        time.sleep(0.5)
        fds.append(fd_count(agent.pid))
        return len(fds) > 3 and len(set(fds[-4:])) == 1  # unchanged for 1.5 s

    settle(stable, "agent fds stop changing")
    ran = fds[-1] - fds_before
    assert answers(agent), "the agent no longer answers"
    assert ran <= MAX_PENDING_REPLIES, \
        f"{ran} of {sent} requests of a closed client were run (1,024 is the handle limit)"


def test_error_replies_for_a_closed_client_are_not_built(agent: PyqgaAgent) -> None:
    """16 clients queue `{}` (an error reply each) and close before the agent reads: the
    agent's peak memory must not grow with the replies nobody will read."""
    assert ask(agent, b'{"execute":"guest-ping"}') == b'{"return": {}}\n'
    hwm_before = status_kib(agent.pid, "VmHWM")
    queued = _send_while_stopped(agent, b"{}" * (4 << 20), clients=16)
    assert queued >= 16 * (128 << 10), f"only {queued} bytes queued: the test proves nothing"
    settle(lambda: answers(agent), "a ping answered", limit=30)
    grown = status_kib(agent.pid, "VmHWM") - hwm_before
    assert grown < 32 << 10, \
        f"peak RSS grew {grown / 1024:.0f} MiB for {queued >> 10} KiB from closed clients"


# --- nothing non-finite on the wire, nothing unbounded in an error --------------------------------

NON_FINITE_REQUESTS = [
    b'{"execute":"guest-ping","id":1e400}',
    b'{"execute":"guest-ping","id":-1e400}',
    b'{"jsonrpc":"2.0","method":"guest-ping","id":1e400}',
    b'[{"jsonrpc":"2.0","method":"guest-ping","id":1e400}]',
    b'{"execute":"guest-sync","arguments":{"id":1e400}}',
    b'{"execute":"guest-sync-delimited","arguments":{"id":1e400}}',
    b'{"execute":"guest-ping","arguments":{"x":NaN}}',
    b'{"execute":"guest-ping","arguments":{"x":-Infinity}}',
    b'{"execute":"guest-fsfreeze-freeze","arguments":{"timeout":1e400}}',
    b'{"execute":"guest-file-read","arguments":{"handle":1e400}}',
    b'{"execute":"guest-exec-status","arguments":{"pid":1e400}}',
]


@pytest.mark.parametrize("request_bytes", NON_FINITE_REQUESTS, ids=lambda r: r.decode()[:60])
def test_non_finite_numbers_in_a_request_are_a_clear_error(shared_agent: PyqgaAgent,
                                                           request_bytes: bytes) -> None:
    agent = shared_agent
    reply = strict_json(ask(agent, request_bytes))
    replies = reply if isinstance(reply, list) else [reply]
    for one in replies:
        error = one.get("error")
        assert error is not None, f"{request_bytes!r} was answered {one}"
        text = str(error.get("desc", error.get("message", ""))).lower()
        assert "internal error" not in text, f"{request_bytes!r}: {text}"
    info = strict_json(ask(agent, b'{"execute":"guest-fsfreeze-info"}'))
    assert info["return"]["status"] == "thawed", info


HUGE = 1_000_000


def _long_input_cases() -> list[tuple[str, bytes, str]]:
    """(case, request, the input the error may quote a prefix of)."""
    ascii_path = "/nonexistent-pyqga/" + "a" * HUGE
    cjk_path = "/nonexistent-pyqga/" + "\u4e2d" * (HUGE // 7)
    name = "x" * HUGE

    def open_request(path: str) -> bytes:
        return json.dumps({"execute": "guest-file-open", "arguments": {"path": path}}).encode()

    return [
        ("1 MB path", open_request(ascii_path), ascii_path),
        ("\\u-escaped path", open_request(cjk_path), cjk_path),
        ("1 MB command name", json.dumps({"execute": name}).encode(), name),
        ("1 MB jsonrpc method", json.dumps({"jsonrpc": "2.0", "method": name, "id": 1}).encode(), name),
    ]


@pytest.mark.parametrize("case", range(4), ids=[c[0] for c in _long_input_cases()])
def test_an_error_naming_huge_input_quotes_a_prefix_and_its_length(shared_agent: PyqgaAgent,
                                                                   case: int) -> None:
    """About 200 characters quoted: up to 1.2 KB when each is a 6-byte \\u escape."""
    agent = shared_agent
    _, request, given = _long_input_cases()[case]
    assert len(request) < 1 << 20, "the request must fit the default message size limit"
    line = ask(agent, request)
    reply = strict_json(line)
    error = reply.get("error")
    assert error is not None, f"not an error: {line[:300]!r}"
    assert len(line) < 2048, f"a {len(line):,}-byte reply: {line[:300]!r}"
    text = str(error.get("desc", error.get("message", "")))
    assert given[:40] in text, f"the error does not quote the input's start: {text!r}"
    lengths = {len(given), len(given.encode())}
    assert any(str(n) in text or f"{n:,}" in text for n in lengths), \
        f"the error does not say how long the input was ({sorted(lengths)}): {text!r}"


def test_connections_over_the_cap_are_refused_and_the_first_keeps_being_served(agent: PyqgaAgent) -> None:
    """MAX_CONNECTIONS idle clients fill the agent; one more is closed at once with one log line;
    the first client is still answered; once one leaves, a new client is served again."""
    first = agent.connect(30)
    held = [agent.connect(30) for _ in range(MAX_CONNECTIONS - 1)]
    try:
        assert _ping_on(first) == 1
        with agent.connect(30) as extra:
            assert _answer(extra, 2) == b"", "a client over the cap was served"
        assert _ping_on(first) == 1
        held.pop().close()
        deadline = time.monotonic() + 10
        while True:  # the agent notices the departure when it reads its EOF
            with agent.connect(30) as again:
                reply = _answer(again, 3)
            if reply or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert json.loads(reply) == {"return": {}, "id": 3}
    finally:
        first.close()
        for sock in held:
            sock.close()
    log = agent.log_path.read_text()
    assert f"already serving {MAX_CONNECTIONS} clients, the most at once" in log


def _answer(sock: socket.socket, request_id: int) -> bytes:
    """A ping's reply, or b"" if the agent closed the connection (reset or EOF)."""
    try:
        sock.sendall(b'{"execute":"guest-ping","id":%d}\n' % request_id)
        return sock.recv(4096)
    except (ConnectionResetError, BrokenPipeError):
        return b""


def _ping_on(sock: socket.socket) -> int:
    sock.sendall(b'{"execute":"guest-ping","id":1}\n')
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(4096)
        assert chunk, "the first client was dropped"
        data += chunk
    return json.loads(data)["id"]
