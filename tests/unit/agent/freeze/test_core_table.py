"""The freeze core's transitions as a table: events in, actions out, as h11's ``test_state.py``.

Each row puts a fresh :class:`FreezeCore` in a named state (by feeding it events, nothing
else), hands it one event, and checks the phase and superblocks it is left in and every action
it asks for, in order.  Every handler of :data:`HANDLERS` has rows, and so have the events a
state does not expect (stale results, requests at the wrong time): those change nothing, or are
refused with the error a host sees.  No driver, no threads, no kernel: the model test
(``test_freeze_model.py``) covers interleavings, this one pins each step.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from typing import Any

import pytest

from pyqga.agent.freeze.machine import HANDLERS, RETRY_SECONDS, FreezeCore
from pyqga.agent.freeze.snapshot import parse_snapshot
from pyqga.agent.freeze.vocabulary import (
    Action,
    AgentDied,
    DeadlineCheck,
    Event,
    Exit,
    Flush,
    FlushDone,
    FreezeDone,
    FreezeRequested,
    FreezeSb,
    HookDone,
    KeeperRestarted,
    Log,
    Persist,
    Persisted,
    PersistFailed,
    Reply,
    Restored,
    RunHook,
    SavedState,
    StopRequested,
    Target,
    ThawDone,
    ThawReason,
    ThawRecord,
    ThawRequested,
    ThawResults,
    ThawSbs,
)
from pyqga.protocol.errors import ErrorKind
from pyqga.protocol.freeze_lost import LostHow, parse_freeze_lost
from tests.rig.model_kernel import ModelClock

EIO, EBUSY, EOPNOTSUPP = 5, 16, 95
A = Target((8, 1), "/a", "ext4", "/dev/a")
B = Target((8, 2), "/b", "ext4", "/dev/b")
TIMEOUT = 60.0


def new(hook: bool = False) -> FreezeCore:
    """A machine that has seen no event yet: its first one also persists the empty state."""
    # Time stands still unless a row moves it; local time is visibly the port's.
    return FreezeCore(ModelClock(100.0, lambda at: f"LOCAL({at:g})"), TIMEOUT, hook)


def core(hook: bool = False) -> FreezeCore:
    """A thawed machine that has settled (its state written once)."""
    return feed(new(hook), DeadlineCheck())


def feed(machine: FreezeCore, *events: Event) -> FreezeCore:
    for event in events:
        machine.handle(event)
    return machine


def later(machine: FreezeCore, seconds: float) -> FreezeCore:
    machine.clock.advance(seconds)  # type: ignore[attr-defined]
    return machine


# --- the states (each reached by events only) ----------------------------------------------------

FREEZE = FreezeRequested(1, ((A, B),))            # one wave: A and B frozen together
THAW = ThawRequested(2, (A, B))
SAVED = SavedState(4, (A,), None, ThawRecord(3, ThawReason.TIMEOUT, 1_700_000_050.0), False)


def frozen(hook: bool = False) -> FreezeCore:
    if hook:
        return feed(core(hook=True), FREEZE, Persisted(1), HookDone(1, "freeze", True, True), Persisted(1),
                    FreezeDone(A.device), FreezeDone(B.device))
    return feed(core(), FREEZE, Persisted(1), FreezeDone(A.device), FreezeDone(B.device))


STATES: dict[str, Callable[[], FreezeCore]] = {
    "new": new,
    "thawed": core,
    "recording the hook": lambda: feed(core(hook=True), FREEZE),
    "hook": lambda: feed(core(hook=True), FREEZE, Persisted(1)),
    "flush": lambda: feed(core(), FreezeRequested(1, ((A, B),), flush=True)),
    "persist": lambda: feed(core(), FREEZE),
    "persist, two waves": lambda: feed(core(), FreezeRequested(1, ((A,), (B,)))),
    "freeze": lambda: feed(core(), FREEZE, Persisted(1)),
    "freeze, wave 1 of 2": lambda: feed(core(), FreezeRequested(1, ((A,), (B,))), Persisted(1)),
    "freeze, A frozen": lambda: feed(core(), FREEZE, Persisted(1), FreezeDone(A.device)),
    "freeze, A failed": lambda: feed(core(), FREEZE, Persisted(1), FreezeDone(A.device, EIO, "EIO")),
    "frozen": frozen,
    "frozen, deadline passed": lambda: later(frozen(), TIMEOUT),
    "frozen with hook": lambda: frozen(hook=True),
    "thawing": lambda: feed(frozen(), THAW),
    "thawing with hook": lambda: feed(frozen(hook=True), THAW),
    "thaw hook": lambda: feed(frozen(hook=True), THAW, ThawResults((ThawDone(A.device, True),
                                                                      ThawDone(B.device, True)))),
    "partly thawed": lambda: feed(frozen(), THAW, ThawResults((ThawDone(A.device, True),
                                                               ThawDone(B.device, False, "EIO")))),
    "rolling back": lambda: feed(core(), FREEZE, Persisted(1), FreezeDone(A.device),
                                 FreezeDone(B.device, EIO, "EIO")),
    "stuck": lambda: feed(core(), FREEZE, Persisted(1), FreezeDone(A.device), THAW,
                          ThawResults((ThawDone(A.device, True),))),
    "thawed after a timeout": lambda: feed(later(frozen(), TIMEOUT), DeadlineCheck(),
                                           ThawResults((ThawDone(A.device, True), ThawDone(B.device, True)))),
}


# --- what a row compares -------------------------------------------------------------------------


def action(done: Action) -> tuple[Any, ...]:
    """An action as the table spells it (paths, not targets; an error by its kind)."""
    if isinstance(done, Persist):
        return ("Persist", done.op, tuple(sb["path"] for sb in done.snapshot["superblocks"]))
    if isinstance(done, FreezeSb):
        return ("FreezeSb", done.target.path, done.op)
    if isinstance(done, ThawSbs):
        return ("ThawSbs", tuple(t.path for t in done.targets), done.reason.value, done.op)
    if isinstance(done, Reply):
        if done.error is not None:
            return ("Reply", done.rid, done.error.kind.name)
        return ("Reply", done.rid, done.result) + (() if done.epoch is None else (f"epoch {done.epoch}",))
    if isinstance(done, Log):
        return ("Log", done.level)
    if isinstance(done, RunHook):
        return ("RunHook", done.op, done.action)
    if isinstance(done, Flush):
        return ("Flush", done.op, tuple(t.path for t in done.targets))
    assert isinstance(done, Exit), done
    return ("Exit",)


def superblocks(machine: FreezeCore) -> dict[str, str]:
    """Path -> its record's state; ``+abandoned`` and ``+error`` mark the two flags."""
    return {sb.target.path: sb.state.value + ("+abandoned" if sb.abandoned else "")
            + ("+error" if sb.error else "") for sb in machine.sbs.values()}


PERSIST_NONE = ("Persist", None, ())   # the settled state written: nothing of ours left
REPLY_BUSY = ("Reply", 9, "BUSY")

# (state, event) -> (phase, superblocks, actions)
TABLE: list[tuple[str, Event, str, dict[str, str], list[tuple[Any, ...]]]] = [
    ("new", DeadlineCheck(), "thawed", {}, [PERSIST_NONE]),   # the first event writes the empty state
    # FreezeRequested
    ("thawed", FREEZE, "freezing", {"/a": "freezing", "/b": "freezing"}, [("Persist", 1, ("/a", "/b"))]),
    ("thawed", FreezeRequested(1, ()), "thawed", {}, [("Log", "info"), ("Reply", 1, 0)]),
    ("thawed", FreezeRequested(1, ((A,),), timeout=0), "thawed", {}, [("Reply", 1, "INVALID_PARAMS")]),
    ("thawed", FreezeRequested(1, ((A, B),), flush=True), "freezing", {}, [("Flush", 1, ("/a", "/b"))]),
    ("recording the hook", FreezeRequested(9, ((A,),)), "freezing", {}, [REPLY_BUSY]),
    ("freeze", FreezeRequested(9, ((A,),)), "freezing", {"/a": "freezing", "/b": "freezing"}, [REPLY_BUSY]),
    ("frozen", FreezeRequested(9, ((A,),)), "frozen", {"/a": "frozen", "/b": "frozen"},
     [("Reply", 9, "COMMAND_FAILED")]),
    ("thawing", FreezeRequested(9, ((A,),)), "thawing", {"/a": "thawing", "/b": "thawing"}, [REPLY_BUSY]),
    ("thawed", FreezeRequested(1, ((A,),), timeout=1e10), "thawed", {}, [("Reply", 1, "INVALID_PARAMS")]),
    # Persisted
    ("recording the hook", Persisted(1), "freezing", {}, [("RunHook", 1, "freeze")]),
    ("recording the hook", Persisted(1, "ENOSPC"), "thawed", {},
     [PERSIST_NONE, ("Reply", 1, "COMMAND_FAILED")]),
    ("persist", Persisted(1), "freezing", {"/a": "freezing", "/b": "freezing"},
     [("FreezeSb", "/a", 1), ("FreezeSb", "/b", 1)]),
    ("persist", Persisted(1, "ENOSPC"), "thawed", {}, [PERSIST_NONE, ("Reply", 1, "COMMAND_FAILED")]),
    ("persist", Persisted(7), "freezing", {"/a": "freezing", "/b": "freezing"}, []),   # another op's
    ("freeze", Persisted(1), "freezing", {"/a": "freezing", "/b": "freezing"}, []),     # not waiting
    ("thawed", Persisted(1), "thawed", {}, []),
    # HookDone
    ("hook", HookDone(1, "freeze", True, True), "freezing", {"/a": "freezing", "/b": "freezing"},
     [("Persist", 1, ("/a", "/b"))]),
    ("hook", HookDone(1, "freeze", True, False, "exit status 1"), "thawing", {},
     [("RunHook", 0, "thaw"), PERSIST_NONE]),   # the failed freeze's reply waits for the thaw hook
    ("hook", HookDone(7, "freeze", True, True), "freezing", {}, []),    # a stale hook's
    ("thaw hook", HookDone(0, "thaw", True, True), "thawed", {}, [("Reply", 2, 2)]),
    ("thawed", HookDone(0, "thaw", True, True), "thawed", {}, []),
    # FlushDone
    ("flush", FlushDone(1), "freezing", {"/a": "freezing", "/b": "freezing"}, [("Persist", 1, ("/a", "/b"))]),
    ("flush", FlushDone(7), "freezing", {}, []),
    ("thawed", FlushDone(1), "thawed", {}, []),
    # FreezeDone
    ("freeze", FreezeDone(A.device), "freezing", {"/a": "frozen", "/b": "freezing"}, []),
    ("freeze, A frozen", FreezeDone(B.device), "frozen", {"/a": "frozen", "/b": "frozen"},
     [("Log", "info"), ("Reply", 1, 2, "epoch 1")]),
    ("freeze, A frozen", FreezeDone(B.device, EBUSY, "EBUSY"), "frozen", {"/a": "frozen", "/b": "foreign"},
     [("Log", "info"), ("Log", "info"), ("Persist", None, ("/a",)), ("Reply", 1, 1, "epoch 1")]),
    ("freeze, A frozen", FreezeDone(B.device, EOPNOTSUPP, "EOPNOTSUPP"), "frozen", {"/a": "frozen"},
     [("Log", "info"), ("Log", "info"), ("Persist", None, ("/a",)), ("Reply", 1, 1, "epoch 1")]),
    ("freeze, A frozen", FreezeDone(B.device, EIO, "EIO"), "thawing", {"/a": "thawing"},
     [("ThawSbs", ("/a",), "rollback", 1), ("Persist", None, ("/a",))]),
    ("freeze, A failed", FreezeDone(B.device), "thawing", {"/b": "thawing"},
     [("ThawSbs", ("/b",), "rollback", 1)]),
    ("freeze, wave 1 of 2", FreezeDone(A.device), "freezing", {"/a": "frozen", "/b": "freezing"},
     [("Persist", 1, ("/a", "/b"))]),
    ("freeze", FreezeDone((9, 9)), "freezing", {"/a": "freezing", "/b": "freezing"}, []),   # not ours
    ("frozen", FreezeDone(A.device), "frozen", {"/a": "frozen", "/b": "frozen"}, []),       # not freezing
    ("stuck", FreezeDone(B.device), "thawing", {"/b": "thawing+abandoned"},
     [("Log", "warning"), ("ThawSbs", ("/b",), "rollback", None)]),
    ("stuck", FreezeDone(B.device, EIO, "EIO"), "thawed", {}, [("Log", "info"), PERSIST_NONE]),
    # ThawRequested
    ("frozen", THAW, "thawing", {"/a": "thawing", "/b": "thawing"},
     [("ThawSbs", ("/a", "/b"), "request", 2)]),
    ("thawed", THAW, "thawing", {}, [("ThawSbs", ("/a", "/b"), "request", 2)]),   # qemu-ga: thaw all
    ("thawed", ThawRequested(2, ()), "thawed", {}, [("Log", "info"), ("Reply", 2, 0)]),
    ("freeze", THAW, "partly-thawed", {"/a": "freezing+abandoned", "/b": "freezing+abandoned"},
     [("Log", "info"), ("Persist", None, ("/a", "/b")), ("Reply", 1, "COMMAND_FAILED"),
      ("Reply", 2, "COMMAND_FAILED")]),   # both stuck in FIFREEZE: nothing to thaw yet, both named
    ("freeze, A frozen", THAW, "thawing", {"/a": "thawing", "/b": "freezing+abandoned"},
     [("ThawSbs", ("/a",), "request", 2), ("Persist", None, ("/a", "/b")), ("Reply", 1, "COMMAND_FAILED")]),
    ("thawing", ThawRequested(3, (A, B)), "thawing", {"/a": "thawing", "/b": "thawing"}, []),   # queued
    ("frozen", ThawRequested(2, (A, B), epoch=1), "thawing", {"/a": "thawing", "/b": "thawing"},
     [("ThawSbs", ("/a", "/b"), "request", 2)]),
    # ThawResults (and the ThawDone each carries)
    ("thawing", ThawResults((ThawDone(A.device, True), ThawDone(B.device, True))), "thawed", {},
     [("Log", "info"), PERSIST_NONE, ("Reply", 2, 2)]),
    ("thawing", ThawResults((ThawDone(A.device, True), ThawDone(B.device, False))), "thawed", {},
     [("Log", "warning"), ("Log", "info"), PERSIST_NONE, ("Reply", 2, 1)]),   # B thawed by someone else
    ("thawing", ThawResults((ThawDone(A.device, True), ThawDone(B.device, False, "EIO"))), "partly-thawed",
     {"/b": "frozen+error"}, [("Log", "error"), ("Persist", None, ("/b",)), ("Reply", 2, "COMMAND_FAILED")]),
    ("thawing with hook", ThawResults((ThawDone(A.device, True), ThawDone(B.device, True))), "thawing", {},
     [("Log", "info"), ("RunHook", 0, "thaw"), ("Persist", None, ())]),   # the reply waits for the hook
    ("rolling back", ThawResults((ThawDone(A.device, True),)), "thawed", {},
     [("Log", "error"), PERSIST_NONE, ("Reply", 1, "COMMAND_FAILED")]),
    ("thawing", ThawResults((ThawDone((9, 9), True),)), "thawing", {"/a": "thawing", "/b": "thawing"}, []),
    ("frozen", ThawResults((ThawDone(A.device, True),)), "frozen", {"/a": "frozen", "/b": "frozen"}, []),
    # ThawDone alone (the driver sends ThawResults; the core takes either)
    ("thawing", ThawDone(A.device, True), "thawing", {"/b": "thawing"}, [("Persist", None, ("/b",))]),
    ("thawed", ThawDone(A.device, True), "thawed", {}, []),
    # DeadlineCheck
    ("frozen", DeadlineCheck(), "frozen", {"/a": "frozen", "/b": "frozen"}, []),     # not yet
    ("frozen, deadline passed", DeadlineCheck(), "thawing", {"/a": "thawing", "/b": "thawing"},
     [("Log", "warning"), ("ThawSbs", ("/a", "/b"), "timeout", None)]),
    ("thawed", DeadlineCheck(), "thawed", {}, []),
    # StopRequested
    ("thawed", StopRequested(), "thawed", {}, [("Exit",)]),
    ("frozen", StopRequested(), "thawing", {"/a": "thawing", "/b": "thawing"},
     [("Log", "warning"), ("ThawSbs", ("/a", "/b"), "signal", None)]),
    ("freeze, A frozen", StopRequested(), "thawing", {"/a": "thawing", "/b": "freezing+abandoned"},
     [("Log", "warning"), ("ThawSbs", ("/a",), "signal", None), ("Persist", None, ("/a", "/b")),
      ("Reply", 1, "COMMAND_FAILED")]),
    # AgentDied (in the keeper)
    ("frozen", AgentDied("gone"), "thawing", {"/a": "thawing", "/b": "thawing"},
     [("ThawSbs", ("/a", "/b"), "agent-death", None)]),
    ("thawed", AgentDied("gone"), "thawed", {}, []),
    # PersistFailed
    ("frozen", PersistFailed("ENOSPC"), "frozen", {"/a": "frozen", "/b": "frozen"}, []),
    # KeeperRestarted
    ("frozen", KeeperRestarted("pid 7, status -9"), "frozen", {"/a": "frozen", "/b": "frozen"},
     [("Log", "warning")]),
    # Restored
    ("thawed", Restored(SAVED), "frozen", {"/a": "frozen"}, [("Log", "warning"), ("Persist", None, ("/a",))]),
    ("thawed", Restored(SAVED, thaw=True, detail="dead"), "thawing", {"/a": "thawing"},
     [("Log", "warning"), ("ThawSbs", ("/a",), "agent-death", None), ("Persist", None, ("/a",))]),
    ("thawed", Restored(SavedState(4, (), None, None, False)), "thawed", {}, [("Persist", None, ())]),
    # the keeper's end of an agent that held a freeze past its deadline: the record says timeout
    ("thawed", Restored(SAVED, thaw=True, detail="hung", reason=ThawReason.TIMEOUT), "thawing",
     {"/a": "thawing"},
     [("Log", "warning"), ("ThawSbs", ("/a",), "timeout", None), ("Persist", None, ("/a",))]),
]


@pytest.mark.parametrize(("state", "event", "phase", "sbs", "actions"), TABLE,
                         ids=[f"{row[0]}: {type(row[1]).__name__}" for row in TABLE])
def test_transition(state: str, event: Event, phase: str, sbs: dict[str, str],
                    actions: list[tuple[Any, ...]]) -> None:
    machine = STATES[state]()
    done = machine.handle(event)
    assert [action(a) for a in done] == actions
    assert machine.phase.value == phase
    assert superblocks(machine) == sbs


def test_every_event_type_has_a_handler_and_a_row() -> None:
    events = set(typing.get_args(Event))
    assert set(HANDLERS) == events
    assert {type(row[1]) for row in TABLE} == events


def test_a_value_that_is_not_an_event_is_refused() -> None:
    with pytest.raises(TypeError, match="not a freeze event"):
        core().handle(Exit())  # type: ignore[arg-type]  # an action, not an event


def test_every_state_is_reachable_and_persists_what_it_reads_back() -> None:
    for name, build in STATES.items():
        machine = build()
        parse_snapshot(machine.snapshot())  # the snapshot of every state is valid
        assert machine.snapshot()["version"] == 1, name


def test_freeze_lost_words_come_from_protocol_and_local_time_from_the_clock() -> None:
    """A thaw naming an epoch that ended by timeout: FREEZE_LOST, in words the host parses,
    with the end time as the clock port renders it."""
    machine = STATES["thawed after a timeout"]()
    (reply,) = [a for a in machine.handle(ThawRequested(5, (), epoch=1)) if isinstance(a, Reply)]
    assert reply.error is not None and reply.error.kind is ErrorKind.FREEZE_LOST
    lost = parse_freeze_lost(reply.error.message)
    assert lost is not None and lost.epoch == 1 and lost.how is LostHow.DID_NOT_HOLD
    assert lost.why == f"it ended at LOCAL({1_700_000_000.0 + 100.0 + TIMEOUT:g}) by timeout"
    unknown = next(a for a in machine.handle(ThawRequested(6, (), epoch=9)) if isinstance(a, Reply))
    assert unknown.error is not None
    assert parse_freeze_lost(unknown.error.message) == (9, LostHow.UNKNOWN, "the last freeze was epoch 1")


def test_a_failed_safety_thaw_is_retried_after_a_second() -> None:
    machine = STATES["frozen, deadline passed"]()
    machine.handle(DeadlineCheck())
    machine.handle(ThawResults((ThawDone(A.device, True), ThawDone(B.device, False, "EIO"))))
    assert machine.deadline_mono == machine.clock.monotonic() + RETRY_SECONDS
    later(machine, RETRY_SECONDS)
    assert [action(a) for a in machine.handle(DeadlineCheck())] == [
        ("Log", "warning"), ("ThawSbs", ("/b",), "timeout", None)]
