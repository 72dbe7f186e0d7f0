"""The lease snapshot's reader: what the book writes reads back as the same leases, through JSON;
anything else is CorruptState naming the first bad field; the keeper's deadline is the earliest
of the leases'."""

from __future__ import annotations

import copy
import json
import math
from typing import Any

import pytest

from pyqga.agent.faults.machine import UNDO_ALLOWANCE, LeaseBook
from pyqga.agent.faults.snapshot import keeper_deadline, parse_leases
from pyqga.agent.faults.vocabulary import EndReason, Lease, Now, Phase, Prepared
from pyqga.agent.freeze.snapshot import CorruptState

NOW = Now(100.0, 1_700_000_100.0)
TABLE = [[0, 1024, "linear", "8:16 0"], [1024, 1024, "error", ""]]


def book() -> LeaseBook:
    """Three leases: f1 active, f2 reverting (its undo out), f3 arming, one of a plan."""
    book = LeaseBook()
    requests = [
        Prepared("write-stall", "/a", {}, "8:1", ({"op": "freeze", "path": "/a"},),
                 ({"op": "thaw", "path": "/a"},), 10.0),
        Prepared("bad-extents", "/data", {"path": "/data/f"}, "254:0", (),
                 ({"op": "dm-table", "name": "vg-data", "table": TABLE},
                  {"op": "dm-resume", "name": "vg-data"}), 0.25),
        Prepared("disk-full", "/b", {"free-bytes": 4096}, "8:2", (),
                 ({"op": "unlink", "path": "/b/.pyqga-fill-1"},), 3600, plan="p1"),
    ]
    for request in requests:
        book.inject(request, NOW)
    book.applied("f1", NOW)
    book.applied("f2", NOW)
    book.revert("f2", EndReason.REVERT, NOW)
    return book


def through_json(snapshot: dict[str, Any]) -> Any:
    return json.loads(json.dumps(snapshot, allow_nan=False))


def comparable(lease: Lease) -> Lease:
    """What a snapshot keeps of a lease: not its apply steps, nor an undo's bookkeeping."""
    return lease._replace(apply=(), retry_at=None, acting_until=None)


def test_round_trip() -> None:
    written = book()
    leases, next_id = parse_leases(through_json(written.snapshot()))
    assert leases == [comparable(lease) for lease in written.leases.values()]
    assert next_id == 4
    assert [lease.phase for lease in leases] == [Phase.ACTIVE, Phase.REVERTING, Phase.ARMING]
    assert leases[1].revert_reason is EndReason.REVERT and leases[2].plan == "p1"


def test_a_reverting_lease_keeps_its_own_deadline() -> None:
    """deadline-mono is the keeper's (here the undo's allowance): before, it was read back as the
    lease's deadline, which moved 10 s later with every restart."""
    written = book()
    snapshot = through_json(written.snapshot())
    # An early revert's undo: the keeper waits until the lease's deadline plus a second, not the
    # whole UNDO_ALLOWANCE (undo_allowance).
    assert snapshot["leases"][1]["deadline-mono"] == NOW.mono + 0.25 + 1.0 < NOW.mono + UNDO_ALLOWANCE
    leases, _ = parse_leases(snapshot)
    assert leases[1].deadline_mono == NOW.mono + 0.25
    assert leases[1].deadline == written.leases["f2"].deadline
    again = LeaseBook()
    for _ in range(3):   # three restarts in a row: the deadline stays
        again = LeaseBook()
        again.restore(leases, EndReason.AGENT_RESTART, Now(200.0, 1_700_000_200.0))
        leases, _ = parse_leases(through_json(again.snapshot()))
    assert leases[1].deadline_mono == NOW.mono + 0.25


def test_a_restored_book_writes_what_it_read() -> None:
    leases, next_id = parse_leases(through_json(book().snapshot()))
    restored = LeaseBook(next_id)
    restored.restore(leases, EndReason.AGENT_RESTART, NOW)
    again, again_next = parse_leases(through_json(restored.snapshot()))
    assert again_next == next_id
    assert again == [lease._replace(phase=Phase.REVERTING, revert_reason=EndReason.AGENT_RESTART)
                     for lease in leases]


def test_an_empty_book() -> None:
    assert parse_leases(LeaseBook().snapshot()) == ([], 1)
    assert keeper_deadline(LeaseBook().snapshot()) is None


def lease_field(name: str, value: Any) -> tuple[str, Any, str]:
    return (f"leases.1.{name}", value, f"leases[1].{name}")


def missing(name: str) -> tuple[str, Any, str]:
    return (f"leases.1.{name}", KeyError, f"leases[1].{name}")


# (path into the snapshot, the value put there (KeyError: removed), what the error names)
CORRUPT: list[tuple[str, Any, str]] = [
    ("of", "freeze", "not a fault snapshot"),
    ("of", KeyError, "not a fault snapshot"),
    ("version", 0, "version is not an integer >= 1"),
    ("version", "1", "version"),
    ("serial", -1, "serial is not an integer >= 0"),
    ("serial", True, "serial"),
    ("serial", KeyError, "serial"),
    ("next-id", 0, "next-id is not an integer >= 1"),
    ("next-id", 1.5, "next-id"),
    ("leases", {}, "leases is not a list"),
    ("leases", KeyError, "leases is not a list"),
    ("leases", [{}] * 4097, "leases is not a list of at most 4096"),
    ("leases.1", [], "leases[1] is not an object"),
    lease_field("id", ""), lease_field("id", 7), missing("id"), lease_field("id", "x" * 5000),
    lease_field("kind", None), lease_field("target", ["/a"]), lease_field("device", b"8:1"),
    lease_field("params", []), lease_field("params", {1: 2}), missing("params"),
    lease_field("phase", "frozen"), missing("phase"),
    lease_field("started", math.nan), lease_field("started", "now"), missing("started"),
    lease_field("started-mono", math.inf), lease_field("started-mono", True),
    lease_field("deadline-mono", -math.inf), lease_field("deadline-mono", None),
    lease_field("duration", 0), lease_field("duration", -1), lease_field("duration", 1e10),
    lease_field("duration", math.nan), lease_field("duration", "10"), missing("duration"),
    lease_field("undo", {"op": "thaw"}), missing("undo"),
    ("leases.1.undo.0", {"op": "format-disk", "name": "vg-data"},
     "leases[1].undo[0]: unknown step 'format-disk'"),
    ("leases.1.undo.0", "thaw /a", "leases[1].undo[0]: a step is not an object"),
    ("leases.1.undo.0.table", [], "leases[1].undo[0]: a table has 0 lines"),
    ("leases.1.undo.0.table.1", [0, -1, "linear", ""], "leases[1].undo[0]: a table line is not"),
    ("leases.1.undo.1.name", 5, "leases[1].undo[1]: step dm-resume: name is not a str"),
    lease_field("reason", "bored"), lease_field("reason", 3),
    lease_field("plan", 5), lease_field("plan", ""),
    ("leases.2.id", "f1", "leases[2].id 'f1' is there twice"),
]


def corrupt(snapshot: Any, path: str, value: Any) -> Any:
    *parents, last = path.split(".")
    node = snapshot
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    key: Any = int(last) if isinstance(node, list) else last
    if value is KeyError:
        del node[key]
    else:
        node[key] = value
    return snapshot


@pytest.mark.parametrize(("path", "value", "message"), CORRUPT,
                         ids=[f"{p}={str(v)[:20]}" for p, v, _ in CORRUPT])
def test_every_corrupt_field_is_named(path: str, value: Any, message: str) -> None:
    snapshot = corrupt(copy.deepcopy(book().snapshot()), path, value)
    with pytest.raises(CorruptState) as caught:
        parse_leases(snapshot)
    assert str(caught.value).startswith(message) or message in str(caught.value), caught.value
    assert len(str(caught.value)) < 200


@pytest.mark.parametrize("snapshot", [None, [], "faults", 7])
def test_not_an_object(snapshot: Any) -> None:
    with pytest.raises(CorruptState, match="not a fault snapshot"):
        parse_leases(snapshot)


def test_fields_the_reader_does_not_know_are_ignored() -> None:
    snapshot = book().snapshot()
    snapshot["from-the-future"] = 1
    snapshot["leases"][0]["retry-mono"] = 5.0
    assert parse_leases(snapshot)[0] == parse_leases(book().snapshot())[0]


def test_the_keeper_deadline_is_the_earliest() -> None:
    snapshot = book().snapshot()
    # f1 active: 110; f2 reverting early: its deadline plus a second, 101.25; f3 arming: 3700
    assert keeper_deadline(snapshot) == NOW.mono + 1.25
    snapshot["leases"][0]["deadline-mono"] = 100.5
    assert keeper_deadline(snapshot) == 100.5
    snapshot["leases"][0]["deadline-mono"] = math.nan   # not a number it can wait for: skipped
    snapshot["leases"][1]["deadline-mono"] = True
    assert keeper_deadline(snapshot) == NOW.mono + 3600


@pytest.mark.parametrize("snapshot", [None, {}, {"leases": {}}, {"leases": []}, {"leases": [1, "x"]},
                                      {"leases": [{"deadline-mono": math.inf}]}])
def test_no_keeper_deadline(snapshot: Any) -> None:
    assert keeper_deadline(snapshot) is None
