"""Tests for the sans-IO stream decoder: framing, recovery, limits, and chunking independence."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyqga.protocol import decoder as decoder_module
from pyqga.protocol.decoder import DecodeFailure, Event, Message, Resynced, StreamDecoder
from pyqga.protocol.errors import ErrorKind


def feed_all(decoder: StreamDecoder, chunks: Iterable[bytes]) -> list[Event]:
    events: list[Event] = []
    for chunk in chunks:
        events.extend(decoder.feed(chunk))
    return events


def decode(data: bytes, **kwargs: Any) -> list[Event]:
    return StreamDecoder(**kwargs).feed(data)


def values(events: list[Event]) -> list[Any]:
    return [event.value for event in events if isinstance(event, Message)]


def failures(events: list[Event]) -> list[str]:
    return [event.error.message for event in events if isinstance(event, DecodeFailure)]


def split(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    bounds = [0, *sorted(set(cuts)), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def assert_failure(event: Event, text: str) -> None:
    assert isinstance(event, DecodeFailure), event
    assert event.error.kind is ErrorKind.PARSE_ERROR
    assert text in event.error.message


# A stream exercising every path: strings with brackets and escapes, garbage, bad JSON, bad UTF-8,
# a resync inside a partial message, a batch, and no newlines.
MIXED = (
    b'{"execute":"guest-ping"}'
    b'  {"a": "}{][\\"", "b": ["\\\\", {"c": "\\u00e9"}]}\n'
    b"garbage 12 } ]"
    b'[{"jsonrpc":"2.0","method":"m","id":1}]'
    b'{"a" 1}'
    b'{"s": "\xc3\x28"}'
    b'{"partial": [1, 2, "x\xff'
    b'{"after": "resync"}\r\n'
    b'{"\xc3\xa9": "\xe2\x82\xac"}'
)


class TestFraming:
    def test_single_message(self) -> None:
        assert decode(b'{"execute": "guest-ping"}') == [
            Message({"execute": "guest-ping"}, 25)
        ]

    def test_several_messages_in_one_chunk_without_newlines(self) -> None:
        events = decode(b'{"a":1}{"b":2}[3]\n\n {"c":{}}\t')
        assert events == [
            Message({"a": 1}, 7),
            Message({"b": 2}, 7),
            Message([3], 3),
            Message({"c": {}}, 8),
        ]

    def test_message_split_over_feeds_is_buffered(self) -> None:
        decoder = StreamDecoder()
        assert decoder.feed(b'  {"a": [1, ') == []
        assert decoder.buffered == len(b'{"a": [1, ')
        assert decoder.feed(b"2]}") == [Message({"a": [1, 2]}, 13)]
        assert decoder.buffered == 0

    def test_strings_containing_brackets_and_escaped_quotes(self) -> None:
        data = b'{"a": "}}]]{{[[", "b": "say \\"}\\" now", "c": "\\\\", "d": "\\\\\\""}'
        assert decode(data) == [Message(json.loads(data), len(data))]

    def test_every_split_point_gives_the_same_events(self) -> None:
        whole = decode(MIXED)
        assert len(values(whole)) == 5
        for cut in range(len(MIXED) + 1):
            assert feed_all(StreamDecoder(), split(MIXED, [cut])) == whole, cut

    def test_byte_by_byte_gives_the_same_events(self) -> None:
        whole = decode(MIXED)
        one_byte = [MIXED[i : i + 1] for i in range(len(MIXED))]
        assert feed_all(StreamDecoder(), one_byte) == whole

    def test_empty_feed(self) -> None:
        decoder = StreamDecoder()
        assert decoder.feed(b"") == []
        assert decoder.feed(b'{"a"') == []
        assert decoder.feed(b"") == []
        assert decoder.buffered == 4

    def test_reset_forgets_partial_input(self) -> None:
        decoder = StreamDecoder()
        decoder.feed(b'{"a": "unterminated {')
        decoder.reset()
        assert decoder.buffered == 0
        assert decoder.feed(b'{"b": 2}') == [Message({"b": 2}, 8)]

    def test_bytearray_and_memoryview_input(self) -> None:
        decoder = StreamDecoder()
        assert decoder.feed(bytearray(b'{"a":')) == []
        assert decoder.feed(memoryview(b"1}")) == [Message({"a": 1}, 7)]  # type: ignore[arg-type]


class TestRecovery:
    def test_garbage_between_messages_gives_one_failure(self) -> None:
        events = decode(b'{"a":1} is not json, 12 "x" true } ] {"b":2}')
        assert len(events) == 3
        assert events[0] == Message({"a": 1}, 7)
        assert_failure(events[1], "unexpected 'i'")
        assert events[2] == Message({"b": 2}, 7)

    def test_garbage_split_over_chunks_is_still_one_failure(self) -> None:
        chunks = [b"gar", b"bage ", b"  ", b"more}", b'{"ok":true}']
        events = feed_all(StreamDecoder(), chunks)
        assert len(failures(events)) == 1
        assert values(events) == [{"ok": True}]

    @pytest.mark.parametrize("garbage", [b"}", b"]", b"\xc3\xa9", b"\x00"])
    def test_top_level_non_containers_are_garbage(self, garbage: bytes) -> None:
        events = decode(garbage + b' [1]')
        assert len(events) == 2
        assert_failure(events[0], "a message must be a JSON object or array")
        assert events[1] == Message([1], 3)

    @pytest.mark.parametrize("scalar", [b"42", b"-1", b'"str"', b"null", b"true"])
    def test_top_level_scalars_are_invalid_requests_as_in_qemu_ga(self, scalar: bytes) -> None:
        events = decode(scalar + b' [1]')
        assert len(events) == 2
        assert isinstance(events[0], DecodeFailure)
        assert events[0].error.message == "QMP input must be a JSON object"
        assert events[1] == Message([1], 3)

    def test_garbage_then_resync_then_message(self) -> None:
        events = decode(b'garbage\xff{"execute":"guest-ping"}')
        assert len(events) == 3
        assert_failure(events[0], "unexpected 'g'")
        assert events[1] == Resynced(0)
        assert events[2] == Message({"execute": "guest-ping"}, 24)

    def test_resync_drops_partial_message_silently(self) -> None:
        decoder = StreamDecoder()
        assert decoder.feed(b'{"a": [1, 2') == []
        assert decoder.feed(b'\xff{"b": 2}') == [Resynced(11), Message({"b": 2}, 8)]

    def test_resync_inside_a_string_and_after_a_backslash(self) -> None:
        assert decode(b'{"a": "x { \xff{"b": 2}') == [Resynced(11), Message({"b": 2}, 8)]
        assert decode(b'{"a": "x\\\xff{"b": 2}') == [Resynced(9), Message({"b": 2}, 8)]
        decoder = StreamDecoder()
        assert decoder.feed(b'{"a": "x\\') == []
        assert decoder.feed(b'\xff{"b": 2}') == [Resynced(9), Message({"b": 2}, 8)]

    def test_resync_between_messages(self) -> None:
        # A run of 0xFF (whitespace between included) is one event, however it is chunked.
        stream = b'\xff\xff \xff{"a":1}\xff'
        expected = [Resynced(0), Message({"a": 1}, 7), Resynced(0)]
        assert decode(stream) == expected
        assert feed_all(StreamDecoder(), [stream[i : i + 1] for i in range(len(stream))]) == expected

    def test_a_flood_of_resync_bytes_is_one_event(self) -> None:
        decoder = StreamDecoder()
        assert decoder.feed(b"\xff" * 100_000) == [Resynced(0)]
        assert decoder.feed(b"\xff" * 100_000) == []  # the same run
        assert decoder.feed(b'{"a": [1, \xff\xff\xff') == [Resynced(10)]

    def test_invalid_json_reports_where(self) -> None:
        events = decode(b'{"a": 1 "b": 2}{"c":3}')
        assert len(events) == 2
        assert_failure(events[0], "Expecting ',' delimiter: line 1 column 9")
        assert events[1] == Message({"c": 3}, 7)

    def test_invalid_utf8_gives_one_failure_and_next_message_decodes(self) -> None:
        events = decode(b'{"a": "\xc3\x28"}\n{"a": "\xed\xa0\x80"}\n{"b": "\xc3\xa9"}')
        assert len(events) == 3
        assert_failure(events[0], "invalid UTF-8")
        assert_failure(events[1], "invalid UTF-8")  # an encoded surrogate
        assert events[2] == Message({"b": "é"}, 11)

    def test_non_standard_constants_are_rejected(self) -> None:
        events = decode(b'{"a": NaN}{"b": -Infinity}{"c": Infinity}[1]')
        assert failures(events) == [
            "Parse error: JSON parse error, stray 'N': NaN is not a JSON number",
            "Parse error: JSON parse error, stray '-I': -Infinity is not a JSON number",
            "Parse error: JSON parse error, stray 'I': Infinity is not a JSON number",
        ]
        assert values(events) == [[1]]

    @pytest.mark.parametrize("number", [b"1e400", b"-1e400", b"1" * 400 + b".0", b"9e99999"])
    def test_numbers_beyond_a_float_are_parse_errors_not_infinity(self, number: bytes) -> None:
        # json would turn them into inf, which qemu-ga echoes back as the invalid token `inf`.
        request = b'{"execute":"guest-ping","id":' + number + b"}"
        for chunks in ([request + b"[1]"], [request, b"[1]"], [request[:-1], b"}", b"[1]"]):
            events = feed_all(StreamDecoder(), chunks)
            assert len(events) == 2
            assert_failure(events[0], "is out of range: JSON numbers must be finite")
            assert len(events[0].error.message) < 150  # a long literal is not echoed whole
            assert events[1] == Message([1], 3)

    def test_finite_floats_still_parse(self) -> None:
        data = b'{"a": 1e308, "b": -2.5e-400, "c": 1.5, "d": 123456789012345678901234567890}'
        assert decode(data) == [Message(json.loads(data), len(data))]

    def test_mismatched_brackets_fail_and_recover(self) -> None:
        events = decode(b'{"a": 1]{"b": 2}')
        assert len(events) == 2
        assert_failure(events[0], "Parse error")
        assert events[1] == Message({"b": 2}, 8)


class TestLimits:
    def test_message_exactly_at_the_limit_is_fine(self) -> None:
        data = b'{"a": "' + b"x" * 10 + b'"}'
        assert decode(data, max_message_size=len(data)) == [Message(json.loads(data), len(data))]
        events = decode(data, max_message_size=len(data) - 1)
        assert len(events) == 1
        assert_failure(events[0], f"message larger than {len(data) - 1} bytes")

    def test_oversized_message_gives_one_failure_then_next_decodes(self) -> None:
        big = b'{"a": "' + b"{" * 5000 + b'", "b": [' + b"[1]," * 5000 + b"0]}"
        data = big + b'\n{"next": 1}'
        for chunks in ([data], [data[i : i + 7] for i in range(0, len(data), 7)]):
            decoder = StreamDecoder(max_message_size=1000)
            events = feed_all(decoder, chunks)
            assert len(events) == 2
            assert_failure(events[0], "message larger than 1000 bytes")
            assert events[1] == Message({"next": 1}, 11)

    def test_ten_megabyte_message_in_4k_chunks_stays_bounded(self) -> None:
        limit = 1 << 20
        big = b'{"data": ["' + b"a}\\\"" * (10 << 18) + b'", {"x": [' + b"[]," * 100 + b"1]}]}"
        assert len(big) > 10_000_000
        decoder = StreamDecoder()
        events: list[Event] = []
        for i in range(0, len(big), 4096):
            events.extend(decoder.feed(big[i : i + 4096]))
            assert decoder.buffered <= limit
        events.extend(decoder.feed(b'{"execute": "guest-ping"}'))
        assert len(events) == 2
        assert_failure(events[0], f"message larger than {limit} bytes")
        assert events[1] == Message({"execute": "guest-ping"}, 25)
        assert decoder.buffered == 0

    def test_resync_ends_skipping_an_oversized_message(self) -> None:
        decoder = StreamDecoder(max_message_size=16)
        events = decoder.feed(b'{"a": "' + b"x" * 100)
        assert len(events) == 1
        assert decoder.buffered == 0
        assert decoder.feed(b'\xff{"b": 2}') == [Resynced(0), Message({"b": 2}, 8)]

    def test_too_deep_nesting_gives_one_failure(self) -> None:
        ok = b"[" * 8 + b"]" * 8
        assert decode(ok, max_depth=8) == [Message(json.loads(ok), 16)]
        deep = b'{"a": ' + b"[{}," * 9 + b"1" + b"]" * 9 + b"}"
        events = decode(deep + b"[1]", max_depth=8)
        assert len(events) == 2
        assert_failure(events[0], "nesting deeper than 8")
        assert events[1] == Message([1], 3)

    @pytest.mark.parametrize("chunk", [1, 7, 64, 1 << 20])
    def test_pairs_at_the_depth_limit_cross_it(self, chunk: int) -> None:
        # Pairs like `[]` leave the depth where it was, but their inside is one level deeper.
        at_limit = b"[[" + b"[1]" * 500 + b"]]"
        inside = b"[[" + b"[]," * 500 + b"1]]"
        for data in (at_limit, inside):
            events = feed_all(StreamDecoder(max_depth=2), split(data, range(0, len(data), chunk)))
            assert len(events) == 1
            assert_failure(events[0], "nesting deeper than 2")
        ok = b"[" + b"[1]," * 500 + b"[]]"
        events = feed_all(StreamDecoder(max_depth=2), split(ok, range(0, len(ok), chunk)))
        assert events == [Message(json.loads(ok), len(ok))]

    def test_very_deep_nesting_never_raises(self) -> None:
        depth = 200_000
        data = b"[" * depth + b"]" * depth + b'{"a": 1}'
        decoder = StreamDecoder(max_message_size=1 << 22)
        events = feed_all(decoder, [data[i : i + 1000] for i in range(0, len(data), 1000)])
        assert len(events) == 2
        assert_failure(events[0], f"nesting deeper than {decoder.max_depth}")
        assert events[1] == Message({"a": 1}, 8)

    def test_depth_between_json_recursion_and_our_limit_fails_like_too_deep(self) -> None:
        # json recurses; with the default recursion limit (1000) it gives up below 1024.  The
        # decoder's limit is the lower of the two, so such a message fails as any too-deep one:
        # same words, and as soon as the scan crosses the limit, not after buffering it all.
        decoder = StreamDecoder(max_depth=1024)
        assert decoder.max_depth == min(1024, decoder_module.JSON_DEPTH_LIMIT)
        decoder_module._JSON.raw_decode("[" * decoder.max_depth + "]" * decoder.max_depth)
        ok = b"[" * decoder.max_depth + b"]" * decoder.max_depth
        assert decoder.feed(ok) == [Message(json.loads(ok), len(ok))]
        (event,) = decoder.feed(b"[" * (decoder.max_depth + 1))
        assert_failure(event, f"JSON nesting depth limit exceeded: nesting deeper than {decoder.max_depth}")
        assert decoder.buffered == 0
        assert decoder.feed(b"]" * (decoder.max_depth + 1) + b"[1]") == [Message([1], 3)]

    def test_recursion_error_in_json_reads_as_too_deep(self, monkeypatch: pytest.MonkeyPatch) -> None:
        # A deeper call stack than JSON_DEPTH_LIMIT allows for: the same answer as too deep.
        def recursing(text: str) -> Any:
            raise RecursionError

        monkeypatch.setattr(decoder_module._JSON, "decode", recursing)
        (event,) = decode(b'{"a": "\xc3\xa9"}')  # not ASCII: the scan, then _decode
        assert_failure(event, "nesting deeper than")

    @pytest.mark.parametrize(
        "kwargs",
        [
            {"max_message_size": 0},
            {"max_message_size": -1},
            {"max_message_size": (64 << 20) + 1},
            {"max_depth": 0},
        ],
    )
    def test_bad_limits_are_rejected(self, kwargs: dict[str, int]) -> None:
        with pytest.raises(ValueError):
            StreamDecoder(**kwargs)

    def test_largest_allowed_limit(self) -> None:
        StreamDecoder(max_message_size=64 << 20)


def general_scan_only(**kwargs: Any) -> StreamDecoder:
    """A decoder whose fast path never applies (no chunk is short enough for it)."""
    decoder = StreamDecoder(**kwargs)
    decoder._fast_limit = 0
    return decoder


class TestFastPath:
    """Chunks of complete small ASCII messages skip the general scan; the events must not change."""

    def test_complete_messages_never_reach_the_general_scan(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        for name in ("_CONTENT", "_STRING_BODY", "_BRACKET", "_GARBAGE_END"):
            monkeypatch.setattr(decoder_module, name, None)  # any use would raise
        decoder = StreamDecoder()
        assert decoder.feed(b'{"execute":"guest-ping"}\n') == [Message({"execute": "guest-ping"}, 24)]
        assert decoder.feed(b' {"a": "\\"}]"}\r\n[1, {"b": []}]\t') == [
            Message({"a": '"}]'}, 13),
            Message([1, {"b": []}], 14),
        ]

    def test_the_general_scan_takes_over_at_the_first_message_it_cannot_parse(self) -> None:
        chunk = b'{"a": 1} {"b": NaN} {"c": 2} trailing garbage {"d": [1, '
        decoder, general = StreamDecoder(), general_scan_only()
        events = decoder.feed(chunk)
        assert events == general.feed(chunk)
        assert values(events) == [{"a": 1}, {"c": 2}]
        assert len(failures(events)) == 2
        assert decoder.buffered == general.buffered == len(b'{"d": [1, ')
        assert decoder.feed(b"2]}") == [Message({"d": [1, 2]}, 13)]

    def test_a_chunk_that_could_break_a_limit_takes_the_general_scan(self) -> None:
        # max_depth 3: the fast path only takes chunks of up to 7 bytes, which cannot nest deeper.
        assert decode(b"[[[]]]", max_depth=3) == [Message([[[]]], 6)]
        (event,) = decode(b"[[[[]]]]", max_depth=3)
        assert_failure(event, "nesting deeper than 3")
        (event,) = decode(b'{"a": 12345}', max_message_size=11)
        assert_failure(event, "message larger than 11 bytes")

    def test_in_a_long_chunk_only_short_messages_take_the_fast_path(self) -> None:
        # max_depth 3: json would accept the deep one, the scan refuses it.
        chunk = b"[1] " * 1000 + b"[[[[5]]]] " + b'{"a": "' + b"x" * 5000 + b'"} [2]'
        events = decode(chunk, max_depth=3)
        assert events == general_scan_only(max_depth=3).feed(chunk)
        assert values(events) == [[1]] * 1000 + [{"a": "x" * 5000}, [2]]
        assert failures(events) == [
            "Parse error: JSON nesting depth limit exceeded: nesting deeper than 3"
        ]


# Strategies: random JSON documents, and byte soup rich in the bytes the scanner cares about.
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=20,
)
json_messages = st.dictionaries(st.text(), json_values, max_size=5) | st.lists(
    json_values, max_size=5
)
whitespace = st.sampled_from([b"", b" ", b"\n", b"\r\n", b"\t", b"  \n "])
byte_soup = st.lists(
    st.sampled_from(
        [b"{", b"}", b"[", b"]", b'"', b"\\", b"\xff", b" ", b"\n", b"a", b"1", b":", b",",
         b"\xc3", b"\xa9", b'{"a":', b'"x"', b"null"]
    )
    | st.binary(max_size=4),
    max_size=80,
).map(b"".join)


@st.composite
def chunkings(draw: st.DrawFn, data: bytes) -> list[bytes]:
    cuts = draw(st.lists(st.integers(0, len(data)), max_size=20))
    return split(data, cuts)


@given(st.lists(st.tuples(json_messages, whitespace, st.booleans()), max_size=8), st.data())
@settings(max_examples=300, deadline=None)
def test_any_chunking_of_a_valid_stream_gives_the_messages(
    messages: list[tuple[Any, bytes, bool]], data: st.DataObject
) -> None:
    stream = b""
    expected = []
    for value, gap, ascii_only in messages:
        encoded = json.dumps(value, ensure_ascii=ascii_only).encode()
        stream += encoded + gap
        expected.append(Message(value, len(encoded)))
    chunks = data.draw(chunkings(stream))
    assert feed_all(StreamDecoder(), chunks) == expected


@given(byte_soup, st.data())
@settings(max_examples=500, deadline=None)
def test_arbitrary_bytes_never_raise_stay_bounded_and_ignore_chunking(
    soup: bytes, data: st.DataObject
) -> None:
    limit = 24
    whole = StreamDecoder(max_message_size=limit, max_depth=3).feed(soup)
    decoder = StreamDecoder(max_message_size=limit, max_depth=3)
    events: list[Event] = []
    for chunk in data.draw(chunkings(soup)):
        events.extend(decoder.feed(chunk))
        assert decoder.buffered <= limit
    assert events == whole
    assert all(isinstance(e, Message | DecodeFailure | Resynced) for e in events)


@given(st.binary(max_size=2000), st.integers(1, 64))
@settings(max_examples=200, deadline=None)
def test_random_binary_in_fixed_chunks(blob: bytes, size: int) -> None:
    decoder = StreamDecoder(max_message_size=100)
    for i in range(0, len(blob), size):
        decoder.feed(blob[i : i + size])
        assert decoder.buffered <= 100


# Valid messages, now and then followed by garbage, a resync byte or the start of a message.
junk = st.sampled_from([b"", b"", b"", b"x", b"\xff", b"["])
valid_streams = st.lists(
    st.tuples(json_messages, whitespace, st.booleans(), junk), max_size=6
).map(
    lambda parts: b"".join(
        json.dumps(value, ensure_ascii=ascii_only).encode() + gap + junk
        for value, gap, ascii_only, junk in parts
    )
)


@given(
    valid_streams | byte_soup,
    st.sampled_from([1, 8, 24, 100, 1 << 20]),
    st.sampled_from([1, 2, 3, 1024]),
    st.data(),
)
@settings(max_examples=500, deadline=None)
def test_fast_path_and_general_scan_give_the_same_events(
    stream: bytes, max_size: int, max_depth: int, data: st.DataObject
) -> None:
    chunks = data.draw(chunkings(stream))
    decoder = StreamDecoder(max_message_size=max_size, max_depth=max_depth)
    general = general_scan_only(max_message_size=max_size, max_depth=max_depth)
    for chunk in chunks:
        assert decoder.feed(chunk) == general.feed(chunk)
        assert decoder.buffered == general.buffered
