"""Hostile input for the stream decoder (issue 13): fuzzing, and the work each byte class costs.

The fuzz tests feed arbitrary bytes in arbitrary chunkings: the events must not depend on the
chunking, `feed` must never raise, and the decoder must never hold more than the message limit.
The work tests count what `feed` does instead of timing it: Python-level calls, calls into C
(each `re`, `bytes` or `json` call), and bytes the regexes walk over, for a flood of each byte
class an abusive peer can send.  Linear work with a low constant means: the counts are about the
same per byte at two sizes, few calls per byte, and no byte walked over many times.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyqga.protocol import decoder as decoder_module
from pyqga.protocol.decoder import DecodeFailure, Event, Message, Resynced, StreamDecoder
from tests.unit.protocol.test_decoder import byte_soup, chunkings, feed_all, split

# --- fuzzing ---------------------------------------------------------------------------------

LIMIT = 48


def check_stream(stream: bytes, cuts: list[int], **limits: int) -> list[Event]:
    """Feed `stream` whole and cut at `cuts`; both must give the same events, never raise, and
    never buffer more than the message limit."""
    whole_decoder = StreamDecoder(**limits)
    whole = whole_decoder.feed(stream)
    decoder = StreamDecoder(**limits)
    events: list[Event] = []
    for chunk in split(stream, cuts):
        events.extend(decoder.feed(chunk))
        assert decoder.buffered <= limits.get("max_message_size", 1 << 20)
    assert events == whole
    assert decoder.buffered == whole_decoder.buffered
    assert len(events) <= len(stream)  # at most one event per byte, whatever the input
    for event in events:
        assert isinstance(event, Message | DecodeFailure | Resynced)
        if isinstance(event, Message):
            assert isinstance(event.value, dict | list)
            assert 0 < event.size <= limits.get("max_message_size", 1 << 20)
    return events


@given(st.binary(max_size=3000), st.lists(st.integers(0, 3000), max_size=30))
@settings(max_examples=300, deadline=None)
def test_arbitrary_bytes_any_chunking(stream: bytes, cuts: list[int]) -> None:
    check_stream(stream, [c for c in cuts if c <= len(stream)], max_message_size=LIMIT, max_depth=4)


# Byte soup weighted towards what the scanner cares about, in runs as floods come.
runs = st.lists(
    st.tuples(
        st.sampled_from([b"{", b"}", b"[", b"]", b'"', b"\\", b"\xff", b" ", b"x", b"1", b"{}",
                         b"[]", b'""', b'"a\\"', b'{"a":', b"\xff{", b"]["]),
        st.integers(1, 40),
    ),
    max_size=12,
).map(lambda parts: b"".join(piece * count for piece, count in parts))


@given(runs | byte_soup, st.data(), st.sampled_from([(8, 2), (LIMIT, 4), (1 << 20, 1024)]))
@settings(max_examples=400, deadline=None)
def test_runs_of_structural_bytes_any_chunking(
    stream: bytes, data: st.DataObject, limits: tuple[int, int]
) -> None:
    max_size, max_depth = limits
    chunks = data.draw(chunkings(stream))
    cuts = list(accumulate(len(c) for c in chunks))
    check_stream(stream, cuts, max_message_size=max_size, max_depth=max_depth)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=3), children, max_size=3),
    max_leaves=10,
)


def finite_everywhere(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(finite_everywhere(v) for v in value)
    if isinstance(value, dict):
        return all(finite_everywhere(v) for v in value.values())
    return True


@given(st.lists(json_values, min_size=1, max_size=4), st.data())
@settings(max_examples=300, deadline=None)
def test_non_finite_numbers_are_never_decoded(requests: list[Any], data: st.DataObject) -> None:
    # json.dumps writes NaN and Infinity; 1e400 is what a peer writes to get an infinity anyway.
    encoded = [json.dumps({"execute": "guest-ping", "id": v}).replace("Infinity", "1e400", 1)
               for v in requests]
    stream = " ".join(encoded).encode()
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=8))
    events = check_stream(stream, cuts)
    assert len(events) == len(requests)
    for value, event in zip(requests, events, strict=True):
        if finite_everywhere(value):
            assert isinstance(event, Message)
        else:
            assert isinstance(event, DecodeFailure), event
            assert event.error.message.startswith("Parse error: ")


# --- work per byte class ---------------------------------------------------------------------


@dataclass
class Work:
    calls: int = 0  # Python and C functions called from feed
    walked: int = 0  # bytes the decoder's regexes walked over


class _Walking:
    """A compiled regex that adds up how far its matches and searches walk."""

    def __init__(self, pattern: re.Pattern[bytes], work: Work) -> None:
        self.pattern, self.work = pattern, work

    def match(self, string: bytes, pos: int = 0, endpos: int = sys.maxsize) -> re.Match[bytes] | None:
        m = self.pattern.match(string, pos, endpos)
        self.work.walked += (m.end() if m else pos) - pos + 1
        return m

    def search(self, string: bytes, pos: int = 0) -> re.Match[bytes] | None:
        m = self.pattern.search(string, pos)
        self.work.walked += (m.end() if m else len(string)) - pos + 1
        return m

    def finditer(self, string: bytes) -> Iterator[re.Match[bytes]]:
        self.work.walked += len(string)
        return self.pattern.finditer(string)


@contextmanager
def measuring(monkeypatch: pytest.MonkeyPatch) -> Iterator[Work]:
    work = Work()
    for name, value in list(vars(decoder_module).items()):
        if isinstance(value, _Walking):
            value = value.pattern
        if isinstance(value, re.Pattern):
            monkeypatch.setattr(decoder_module, name, _Walking(value, work))

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event in ("call", "c_call"):
            work.calls += 1

    sys.setprofile(profile)
    try:
        yield work
    finally:
        sys.setprofile(None)


KIB = 1024
FLOODS = {
    # name: (a flood of n bytes, events it may give at most per 1,000 bytes)
    "0xff": (lambda n: b"\xff" * n, 0),
    "[": (lambda n: b"[" * n, 0),
    "{": (lambda n: b"{" * n, 0),
    "{}": (lambda n: b"{}" * (n // 2), 500),
    "quotes": (lambda n: b'"' * n, 0),
    "quotes in a message": (lambda n: b"{" + b'"' * n, 0),
    "strings": (lambda n: b'{"a": "' + b"x" * n, 0),
    "whitespace": (lambda n: b" \t\r\n" * (n // 4), 0),
    "garbage": (lambda n: b"garbage " * (n // 8), 0),
    "digits": (lambda n: b"1234567890" * (n // 10), 0),
    "deep nesting": (lambda n: (b"[" * 2000 + b"]" * 2000) * (n // 4000), 0.25),
    "endless line": (lambda n: b'{"execute": "guest-ping", "arguments": {"k": [' + b'1, "v", ' * (n // 8), 0),
    "pings": (lambda n: b'{"execute":"guest-ping"}' * (n // 24), 42),
}


def work_for(flood: bytes, chunk: int, monkeypatch: pytest.MonkeyPatch) -> tuple[Work, int]:
    decoder = StreamDecoder()
    chunks = [flood[i : i + chunk] for i in range(0, len(flood), chunk)]
    with measuring(monkeypatch) as work:
        events = sum(len(decoder.feed(c)) for c in chunks)
    return work, events


@pytest.mark.parametrize("name", list(FLOODS))
@pytest.mark.parametrize("chunk", [4 * KIB, 256 * KIB])
def test_work_per_byte_class_is_linear_with_a_low_constant(
    name: str, chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    make, events_per_kb = FLOODS[name]
    small, large = make(128 * KIB), make(256 * KIB)
    (work_small, _), (work_large, events) = (work_for(small, chunk, monkeypatch),
                                             work_for(large, chunk, monkeypatch))
    chunks = -(-len(large) // chunk)
    assert events <= events_per_kb * len(large) / 1000 + 2 * chunks
    # Calls: a few per chunk, per event, and one per 16 bytes at most (a Python loop per byte, as
    # 0xFF and `[` had, makes one or more per byte).
    assert work_large.calls <= 8 * chunks + 8 * events + len(large) / 16, work_large
    # Regex walks: each byte about once (twice for messages the fast path gives up on).
    assert work_large.walked <= 2.5 * len(large) + 4 * work_large.calls, work_large
    # Linear: twice the bytes, about twice the work (or less, when it is per chunk).
    assert work_large.calls <= 2.2 * work_small.calls + 16, (work_small, work_large)


class TestLinearTime:
    """Small chunks must never make the decoder rescan what it has already seen."""

    @pytest.mark.parametrize(
        "message",
        [
            b'{"blob": "' + b"abc\\\"{" * 34_000 + b'"}',  # one long string
            b'{"items": [' + b'{"k": "v"}, ' * 17_000 + b"{}]}",  # many small pieces
        ],
        ids=["long-string", "many-items"],
    )
    def test_200k_message_in_64_byte_chunks_scans_each_byte_about_once(
        self, message: bytes, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        assert len(message) > 200_000
        decoder = StreamDecoder()
        chunks = [message[i : i + 64] for i in range(0, len(message), 64)]
        with measuring(monkeypatch) as work:
            events = feed_all(decoder, chunks)
        assert events == [Message(json.loads(message), len(message))]
        assert work.walked <= 2 * len(message), work
        assert work.calls <= 40 * len(chunks), work


def test_events_for_a_0xff_flood_do_not_grow_with_it() -> None:
    decoder = StreamDecoder()
    events = feed_all(decoder, [b"\xff" * 65536] * 64)
    assert events == [Resynced(0)]
