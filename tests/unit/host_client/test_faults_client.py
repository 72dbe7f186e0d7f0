"""``client.faults`` (:mod:`pyqga.host_client.faults`) against a scripted agent on a real socket:
what each call sends, what it makes of the replies, and that a lease is reverted however its
``with`` block ends."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import pyqga
from pyqga.agent.faults.machine import LeaseBook, Refused
from pyqga.agent.faults.vocabulary import EndReason, Kind, Now
from pyqga.host_client import AgentClient
from pyqga.host_client.aio import AsyncAgentClient
from pyqga.host_client.errors import AgentCallError, AgentClientError
from pyqga.host_client.faults import KINDS, NOT_ACTIVE, AsyncFault, Fault, FaultEvent
from pyqga.protocol.errors import ErrorKind
from tests.unit.host_client.fake_faults import BOOT_ID, FakeFaults
from tests.unit.host_client.scripted_agent import ScriptedAgent, failure, scripted_agent


@pytest.fixture(params=["jsonrpc", "qga"])
def client(request: pytest.FixtureRequest, agent: ScriptedAgent) -> Iterator[AgentClient]:
    with AgentClient(agent.address, dialect=request.param, timeout=5) as connected:
        yield connected


def sent(agent: ScriptedAgent, method: str) -> list[dict[str, Any]]:
    return [params for name, params in agent.requests if name == method]


# --- requests and replies -------------------------------------------------------------------------

def test_inject_sends_only_what_was_given(client: AgentClient, agent: ScriptedAgent) -> None:
    plain = client.faults.inject("write-stall", "/data", 5)
    full = client.faults.inject("disk-full", "/srv", 2.5, params={"free-bytes": 4096}, force=True, seed=7)
    assert sent(agent, "guest-fault-inject") == [
        {"kind": "write-stall", "target": "/data", "duration": 5},
        {"kind": "disk-full", "target": "/srv", "duration": 2.5, "params": {"free-bytes": 4096}, "seed": 7,
         "force": True},
    ]
    assert (plain.id, plain.kind, plain.target, plain.duration) == ("f1", "write-stall", "/data", 5.0)
    assert full.id == "f2" and full.params == {"free-bytes": 4096}
    assert time.time() < full.deadline <= time.time() + 2.5 and 0 < full.remaining <= 2.5
    assert full.as_dict() == {"id": "f2", "kind": "disk-full", "target": "/srv", "deadline": full.deadline,
                              "duration": 2.5, "params": {"free-bytes": 4096}}


@pytest.mark.parametrize("duration", [0, -1, float("nan"), float("inf"), True])
def test_a_duration_that_can_never_be_valid_is_refused_before_sending(
        client: AgentClient, agent: ScriptedAgent, duration: float) -> None:
    with pytest.raises(ValueError, match="duration"):
        client.faults.inject("write-stall", "/data", duration)
    assert sent(agent, "guest-fault-inject") == []


def test_list_revert_events_and_capabilities(client: AgentClient, agent: ScriptedAgent) -> None:
    first = client.faults.inject("write-stall", "/a", 30)
    client.faults.inject("disk-full", "/b", 30, params={"free-bytes": 0})
    listed = client.faults.list()
    assert [(f.id, f.kind, f.target, f.state) for f in listed] == [
        ("f1", "write-stall", "/a", "active"), ("f2", "disk-full", "/b", "active")]
    assert listed[1].params == {"free-bytes": 0} and 29 < listed[0].remaining <= 30 and listed[0].plan is None
    assert client.faults.revert(first.id) == 1
    assert client.faults.revert() == 1          # all: the one left
    assert client.faults.list() == []
    assert sent(agent, "guest-fault-revert") == [{"id": "f1"}, {}]

    events, cursor = client.faults.events()
    assert [(e.event, e.id) for e in events] == [("armed", "f1"), ("fired", "f1"), ("armed", "f2"),
                                                 ("fired", "f2"), ("reverted", "f1"), ("reverted", "f2")]
    assert cursor == 6 and events[-1].reason == "revert" and events[-1].ends_lease
    assert events[0].boot_id == BOOT_ID and events[0].detail is None and not events[0].ends_lease
    assert client.faults.events(cursor) == ([], 6)
    assert sent(agent, "guest-fault-events") == [{}, {"since": 6}]

    caps = client.faults.capabilities("/data")
    assert sent(agent, "guest-fault-capabilities") == [{"target": "/data"}]
    assert [k.kind for k in caps.kinds] == list(KINDS) and caps.boot_id == BOOT_ID
    assert caps.available == ("write-stall", "disk-full")
    assert caps["io-error"].reason == "/data is not on a device-mapper device"
    (free,) = caps["disk-full"].params
    assert (free.name, free.type, free.default, free.has_default) == ("free-bytes", "int", 0, True)
    assert caps.as_dict() == FakeFaults().capabilities({"target": "/data"})


def test_follow_yields_each_event_once(client: AgentClient) -> None:
    client.faults.inject("write-stall", "/a", 30)
    stream = client.faults.follow(interval=0.01)
    assert [next(stream).event, next(stream).event] == ["armed", "fired"]
    client.faults.revert()
    assert next(stream).event == "reverted"


def test_an_agent_without_enable_faults_says_how(tmp_path: Path) -> None:
    message = ("guest-fault-inject is disabled: fault injection is opt-in; start the agent with "
               "--enable-faults (or faults=true in its config)")
    handlers = {"guest-fault-inject": failure(message, ErrorKind.COMMAND_DISABLED)}
    with scripted_agent(tmp_path / "a.sock", handlers) as agent, AgentClient(agent.address) as client, \
            pytest.raises(AgentCallError) as caught:
        client.faults.inject("write-stall", "/data", 5)
    assert "--enable-faults" in str(caught.value) and caught.value.error_class == "CommandNotFound"


def test_a_reply_of_another_shape_is_one_clear_error(tmp_path: Path) -> None:
    handlers = {"guest-fault-list": lambda params: [{"id": "f1"}], "guest-fault-events": lambda params: 3}
    with scripted_agent(tmp_path / "a.sock", handlers) as agent, AgentClient(agent.address) as client:
        with pytest.raises(AgentClientError, match=r"guest-fault-list on .*: unexpected reply \(KeyError"):
            client.faults.list()
        with pytest.raises(AgentClientError, match=r"guest-fault-events on .*: unexpected reply"):
            client.faults.events()


# --- the lease as a context manager -----------------------------------------------------------------

def test_leaving_the_block_reverts(client: AgentClient, agent: ScriptedAgent) -> None:
    with client.faults.inject("write-stall", "/data", 30) as fault:
        assert isinstance(fault, Fault) and [f.id for f in client.faults.list()] == [fault.id]
    assert client.faults.list() == []
    assert sent(agent, "guest-fault-revert") == [{"id": fault.id}]


def test_an_exception_in_the_block_reverts_and_propagates(client: AgentClient) -> None:
    with pytest.raises(RuntimeError, match="the test failed"), client.faults.inject("disk-full", "/d", 30):
        raise RuntimeError("the test failed")
    assert client.faults.list() == []
    assert client.faults.events()[0][-1].event == "reverted"


def test_a_lease_that_already_ended_is_no_error(client: AgentClient) -> None:
    with client.faults.inject("write-stall", "/data", 0.05) as fault:
        time.sleep(0.1)                                 # it expires meanwhile
    assert fault.revert() is False                      # and again: still no error
    with pytest.raises(AgentCallError, match=NOT_ACTIVE):  # asked for by id, it is an error
        client.faults.revert(fault.id)


def test_a_failed_revert_is_raised_or_noted_on_the_failure(tmp_path: Path, fake: FakeFaults) -> None:
    handlers = {**fake.handlers(), "guest-fault-revert": failure("the keeper is gone")}
    with scripted_agent(tmp_path / "a.sock", handlers) as agent, AgentClient(agent.address) as client:
        with pytest.raises(AgentCallError, match="the keeper is gone"), \
                client.faults.inject("write-stall", "/a", 30):
            pass
        with pytest.raises(KeyError) as caught, client.faults.inject("write-stall", "/b", 30):
            raise KeyError("body")
    (note,) = caught.value.__notes__
    assert note.startswith("pyqga: could not revert fault f2 (write-stall on /b) after this failure")
    assert "the keeper is gone" in note and "the agent ends it by its deadline" in note


def test_wait_returns_the_event_that_ended_it(client: AgentClient) -> None:
    fault = client.faults.inject("write-stall", "/data", 0.3)
    seen: list[float] = []
    ended = fault.wait(progress=lambda entry: seen.append(entry.remaining))
    assert isinstance(ended, FaultEvent)
    assert (ended.event, ended.id, ended.reason) == ("expired", "f1", "deadline")
    assert seen and time.time() >= fault.deadline


def test_wait_gives_up_with_the_lease_left_alone(tmp_path: Path, fake: FakeFaults) -> None:
    with scripted_agent(tmp_path / "a.sock", fake.handlers()) as agent, AgentClient(agent.address) as client:
        fault = client.faults.inject("write-stall", "/data", 30)
        with pytest.raises(AgentClientError, match=r"fault f1 .* is still active after 0\.2 s of waiting"):
            fault.wait(timeout=0.2)
        assert [f.id for f in client.faults.list()] == ["f1"]


# --- async -------------------------------------------------------------------------------------------

def test_the_async_client_does_the_same(agent: ScriptedAgent) -> None:
    async def body() -> None:
        async with AsyncAgentClient(agent.address, timeout=5) as client:
            async with client.faults.inject("disk-full", "/d", 30, params={"free-bytes": 0}) as fault:
                assert isinstance(fault, AsyncFault) and fault.params == {"free-bytes": 0}
                assert [f.id for f in await client.faults.list()] == [fault.id]
            assert await client.faults.list() == []
            with pytest.raises(RuntimeError):
                async with client.faults.inject("write-stall", "/d", 30):
                    raise RuntimeError
            lease = await client.faults.inject("write-stall", "/e", 0.2, seed=3)
            ended = await lease.wait()
            assert ended is not None and ended.event == "expired"
            assert await lease.revert() is False
            events, cursor = await client.faults.events()
            assert [e.event for e in events].count("reverted") == 2 and cursor == len(events)
            stream = client.faults.follow(since=cursor - 1, interval=0.01)
            assert (await anext(stream)).event == "expired"
            caps = await client.faults.capabilities()
            assert "disk-full" in caps.available and await client.faults.revert() == 0

    asyncio.run(body())
    assert sent(agent, "guest-fault-inject")[-1] == {"kind": "write-stall", "target": "/e", "duration": 0.2,
                                                     "seed": 3}


# --- agreement with the agent and the package --------------------------------------------------------

def test_the_not_active_words_are_the_agents() -> None:
    with pytest.raises(Refused) as caught:
        LeaseBook().revert("f9", EndReason.REVERT, Now(1.0, 1.0))
    assert str(caught.value).startswith(NOT_ACTIVE)


def test_the_host_knows_the_agents_kinds() -> None:
    assert tuple(kind.value for kind in Kind) == KINDS


def test_the_fault_types_are_public() -> None:
    for name in ("Fault", "AsyncFault", "FaultEvent", "ActiveFault", "FaultCapabilities"):
        assert getattr(pyqga, name).__module__ == "pyqga.host_client.faults"


def test_wait_finds_the_end_far_back_without_fetching_the_whole_timeline(client: AgentClient,
                                                                         agent: ScriptedAgent) -> None:
    fault = client.faults.inject("write-stall", "/data", 0.05)
    time.sleep(0.1)
    for n in range(40):                                   # 120 events after it expired
        client.faults.inject("disk-full", f"/other{n}", 30)
        client.faults.revert(f"f{n + 2}")
    ended = fault.wait()
    assert ended is not None and (ended.event, ended.id) == ("expired", "f1")
    assert [p.get("since") for p in sent(agent, "guest-fault-events")] == [1 << 53, 123 - 64, None]


def test_following_starts_again_when_the_timeline_did(tmp_path: Path) -> None:
    replies = iter([{"events": [], "cursor": 2}, {"events": [
        {"event": "armed", "id": "f1", "kind": "disk-full", "target": "/d", "mono": 1, "wall": 2,
         "boot-id": BOOT_ID}], "cursor": 1}])
    with scripted_agent(tmp_path / "a.sock", {"guest-fault-events": lambda params: next(replies)}) as agent, \
            AgentClient(agent.address) as client:
        first = next(client.faults.follow(since=5, interval=0.01))
    assert first.event == "armed"
    assert [p.get("since") for p in sent(agent, "guest-fault-events")] == [5, None]   # None: from 0
