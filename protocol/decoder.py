"""Split a byte stream into JSON messages, the way qemu-ga's json-streamer does (sans-IO).

What we support:
- A stream of top-level JSON objects and arrays (an array is a JSON-RPC batch), not lines: a message
  ends when its brackets balance outside strings.  Whitespace between messages is ignored; chunk
  boundaries never matter (one byte at a time gives the same events as everything at once).
- Recovery instead of exceptions: `feed` never raises.  A run of garbage at top level gives one
  failure and we resume at the next `{` or `[`; a message that is not valid UTF-8 or JSON gives one
  failure; the byte 0xFF (never valid in UTF-8) silently drops any partial message, so a host can
  resync in the middle of anything, even inside a string.  A run of 0xFF bytes (whitespace between
  them included) is one `Resynced` event, not one per byte.
- JSON only: NaN, Infinity and numbers too large for a float (1e400) are parse errors, so nothing
  non-finite ever reaches a command (qemu-ga would echo ``1e400`` back as ``inf``).
- Limits: a message larger than `max_message_size` or nested deeper than the depth limit gives one
  failure as soon as the limit is crossed; the rest of it is skipped (structure only, not stored).
  The depth limit is `max_depth` or, if lower, what `json`'s recursive parser is known to manage
  here (`JSON_DEPTH_LIMIT`), so a message between the two fails in the same way and as early.

Worst case on untrusted input (h11 style: what one peer can make us do):
- Memory: the partial message we hold never exceeds `max_message_size`, so we hold at most
  `max_message_size` plus the chunk being fed; a message being skipped costs nothing beyond its
  depth.  Events: at most one per message, per run of garbage and per run of 0xFF.
- Time: O(n) in the bytes fed, whatever the chunking.  No Python loop runs per byte: bytes are
  walked by C (`re`, `bytes.find`/`count`/`translate`/`replace`, `itertools.accumulate`, `json`'s
  scanner).  A byte is walked again only in a block that could hold an event (the end of the
  message, the depth limit): the scan resumes after the event and the next block starts at 256
  bytes, and a block is at most 4x the one before it that moved the depth without an event, so
  the extra walking is bounded by what came before it.  The fast path walks a message at most once
  more, in a window of at most `_WINDOW` bytes, and sits out after a miss.  Python-level steps
  are a few per event (message, failure, run of garbage or 0xFF), per string cut by a chunk
  boundary or holding a bracket or backslash, and per block; blocks start at 256 bytes and grow
  4x while nothing happens in them, up to 64 KiB or to as many bytes as the depth leaves room for.
- Constants, from `bench/decoder.py` (BENCHMARKS.md, 256 KiB floods): runs of 0xFF, `[`, `{`,
  `"`, whitespace, garbage, digits, an endless message and brackets that pair up cost at most
  about what plain string bytes cost, deep nesting (2000 levels) about twice that.  What stays
  dear is what makes an event every few bytes: floods of the smallest messages (`{}`: one `json`
  call and one `Message` per 2 bytes, over a microsecond each here), `\xff{` (a `Resynced`
  each) or `{]` (a failure each).  Those cost what their events cost, so a caller must budget
  events, not only bytes.

Plan:
- Keep one bytearray: the current partial message, followed (during `feed`) by the new chunk.  The
  scanner's state (depth, in string, pending backslash, skipping, in garbage, in a resync run)
  describes everything in the buffer, so each `feed` resumes scanning at the old end of the buffer.
- Between messages, one regex skips whitespace and 0xFF runs; another skips a garbage run.
- At a message start, `json`'s C scanner first tries to parse the message from an ASCII slice of
  the buffer (`_WINDOW` bytes, so it can neither recurse past its limit nor waste more than that):
  for valid JSON it ends exactly where the brackets balance, so it gives the very value the scan
  would.  It is only trusted for messages of at most `2 * depth limit + 1` bytes and
  `max_message_size` (nothing that short can break a limit); anything else goes to the scan
  below, and after such a miss the fast path sits out 1, 2, 4 ... 64 message starts.
- Inside a message, one regex skips a run without brackets, backslashes or 0xFF; the parity of
  its quotes says whether it ends inside a string (string mode then takes over).  Brackets go by
  blocks, which end at a backslash or 0xFF (`bytes.find`) and before a cut string: strings are
  split out, `translate` keeps the brackets, and `count` says whether the block can end the message
  or cross the depth limit.  If not, the depth moves by the block's net count in one step.  If it
  can, a shorter block the depth leaves room for is tried; failing that, adjacent open-close
  pairs are cut out with `replace` (they leave the lowest depth as it was), and only if the
  block can still hold an event does `accumulate` give the depth after each bracket, by pieces
  that double from 16, for `list.index` to find the first that ends the message or crosses the
  limit.

One module at about 600 lines, a tenth of them this docstring: the bounds above are one argument
about the scanner, its helpers and their constants together; split, the argument would sit in one
file and what it argues about in others.
"""

from __future__ import annotations

import json
import math
import re
from array import array
from bisect import bisect_left
from collections.abc import Callable
from itertools import accumulate, islice
from operator import methodcaller
from typing import Any, NamedTuple

from pyqga.protocol.errors import AgentError, not_an_object, parse_error

__all__ = ["JSON_DEPTH_LIMIT", "DecodeFailure", "Event", "Message", "Resynced", "StreamDecoder"]

#: qemu-ga's own ceiling for a message; a larger limit would let one peer pin that much memory.
MAX_MESSAGE_SIZE_LIMIT = 64 << 20

_OPENERS = (0x7B, 0x5B)  # { [
_QUOTE, _BACKSLASH, _RESYNC = 0x22, 0x5C, 0xFF
_SCALAR_START = frozenset(b'-0123456789"tfn')  # numbers, strings, true, false, null

# Between messages: whitespace and resync bytes.
_GAP = re.compile(rb"[ \t\r\n\xff]*+")
# Garbage at top level runs until the next message start or resync byte.
_GARBAGE_END = re.compile(rb"[{\[\xff]")
# Inside a message: a run without brackets, backslashes or 0xFF.  Its quotes delimit strings
# exactly (no escapes in it), so their parity says whether it ends inside a string.
_CONTENT = re.compile(rb"[^{}\[\]\\\xff]*+")
# String mode (a string left open by the end of a chunk): its body, up to `"`, `\` or 0xFF.
_STRING_BODY = re.compile(rb'(?:[^"\\\xff]++|\\[^\xff])*+')
_BRACKET = re.compile(rb"[{}\[\]]")
# `translate` table for a block: openers become 1, closers 0xFF (-1 as a signed byte); the rest
# is deleted.
_SIGNS = bytes(1 if b in b"{[" else 0xFF if b in b"}]" else 0 for b in range(256))
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"{}[]")
_MIN_BLOCK = 16  # the first piece `_first_event` looks at
_FIRST_BLOCK = 256  # the first block of a message, or after an event (copying it is cheap)
_MAX_BLOCK = 1 << 16


class Message(NamedTuple):
    """One complete top-level JSON value (an object, or an array = JSON-RPC batch)."""

    value: Any
    size: int  # bytes it occupied on the wire


class DecodeFailure(NamedTuple):
    """One bad message or run of garbage; the decoder has already recovered."""

    error: AgentError


class Resynced(NamedTuple):
    """A run of 0xFF bytes arrived; `discarded` bytes of a partial message were dropped.

    Only bytes not yet reported count: a message already failed (too large or too deep) or a run of
    garbage contributes 0.  Whitespace and further 0xFF bytes after the first belong to the same
    run, so a flood of 0xFF is one event.
    """

    discarded: int


Event = Message | DecodeFailure | Resynced


def _describe_byte(byte: int) -> str:
    return repr(bytes([byte]))[1:]


def _garbage_error(work: bytes | bytearray, pos: int) -> AgentError:
    """What looks like a JSON scalar where a message should start is an invalid request
    (qemu-ga's answer to ``42``, ``"str"`` or ``null``); anything else is a parse error.  Either
    way the run is skipped to the next message."""
    if work[pos] in _SCALAR_START:  # by its first byte only, so chunking cannot change the answer
        return not_an_object()
    return parse_error(
        f"unexpected {_describe_byte(work[pos])} between messages; a message must be a JSON object or array"
    )


def _too_large(max_size: int) -> DecodeFailure:
    return DecodeFailure(parse_error(f"message larger than {max_size} bytes"))


def _too_deep(max_depth: int) -> DecodeFailure:
    # qemu-ga's words ("JSON nesting depth limit exceeded"), and the limit.
    return DecodeFailure(
        parse_error(f"JSON nesting depth limit exceeded: nesting deeper than {max_depth}")
    )


class _NonFinite(ValueError):
    """A number JSON cannot carry; the message is a parse error."""


def _reject_constant(name: str) -> Any:
    """`json` accepts NaN and Infinity; JSON (and qemu-ga, which calls them stray tokens) does not."""
    stray = "-I" if name == "-Infinity" else name[0]
    raise _NonFinite(f"JSON parse error, stray '{stray}': {name} is not a JSON number")


def _finite_float(literal: str) -> float:
    """`json` turns 1e400 into inf, which no JSON encoder can send back: refuse it here."""
    value = float(literal)
    if math.isfinite(value):
        return value
    shown = literal if len(literal) <= 40 else f"{literal[:40]}... ({len(literal)} characters)"
    raise _NonFinite(f"number {shown} is out of range: JSON numbers must be finite")


# One parser for every message: `json.loads` with a keyword argument builds a new JSONDecoder (and
# scanner) per call, ~1.5 us.  `decode` is exactly what `loads` does after its BOM check, and a
# message never starts with a BOM (it starts with `{` or `[`).
class _Decoder(json.JSONDecoder):
    """`json.JSONDecoder` with the attribute its ``__init__`` sets and typeshed leaves out: the C
    scanner, called as ``scan_once(text, index) -> (value, end)``."""

    scan_once: Callable[[str, int], tuple[Any, int]]


_JSON = _Decoder(parse_constant=_reject_constant, parse_float=_finite_float)


def _json_depth_capacity(ceiling: int = 1 << 13) -> int:
    """How deep `json`'s recursive C scanner nests here before RecursionError (it counts against
    the interpreter's recursion limit, or its C recursion limit on newer versions)."""
    low, high = 1, ceiling  # low parses; find the largest that does
    while low < high:
        mid = (low + high + 1) // 2
        try:
            _JSON.raw_decode("[" * mid + "]" * mid)
        except RecursionError:
            high = mid - 1
        else:
            low = mid
    return low


#: The deepest nesting we pass to `json`: what it managed at import, less a margin for a deeper
#: call stack when `feed` runs (an event loop, a thread), rounded down to a round number.
JSON_DEPTH_LIMIT = max(100, (_json_depth_capacity() - 64) // 100 * 100)


# The fast path parses from an ASCII slice of the buffer this long, taken afresh when a message
# starts in its second half: each byte is copied about twice, a message the fast path cannot
# finish costs it at most this much, and `json` can never nest deeper than JSON_DEPTH_LIMIT in it
# (RecursionError is dear: it unwinds a thousand levels).
_WINDOW = JSON_DEPTH_LIMIT


def _decode(raw: bytes | bytearray, size: int, max_depth: int) -> Event:
    """Turn one complete message into a Message, or a DecodeFailure saying why it is not one."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return DecodeFailure(parse_error(f"invalid UTF-8 at byte {exc.start}: {exc.reason}"))
    try:
        value = _JSON.decode(text)
    except json.JSONDecodeError as exc:
        return DecodeFailure(parse_error(f"{exc.msg}: line {exc.lineno} column {exc.colno}"))
    except ValueError as exc:  # NaN/Infinity/1e400, integers past Python's digit limit
        return DecodeFailure(parse_error(str(exc)))
    except RecursionError:  # a call stack deeper than JSON_DEPTH_LIMIT allows for: same answer
        return _too_deep(max_depth)
    return Message(value, size)


def _balanced_inside(signs: bytes | bytearray, depth: int, headroom: int | None) -> bool:
    """Whether the block surely neither ends the message nor climbs more than `headroom` levels
    (None: no limit), once adjacent open-close pairs are cut out (up to 3 rounds, in C): a pair
    leaves the lowest depth of the walk as it was and its highest at most one level lower."""
    for rounds in range(1, 4):
        signs = signs.replace(b"\x01\xff", b"")
        closers = signs.count(b"\xff")
        if depth > closers and (headroom is None or len(signs) - closers + rounds <= headroom):
            return True
    return False


def _first_event(signs: bytes | bytearray, depth: int, limit: int) -> tuple[int, int]:
    """Follow the depth from `depth` over a block's bracket signs (1 opens, -1 closes) to the
    first bracket that ends the message (depth 0) or reaches `limit` (0: no limit).  Returns its
    number (from 1) and the depth after it, or 0 and the depth after the block.  In C, by pieces
    that double in size, so an event near the start costs little."""
    done, piece = 0, _MIN_BLOCK
    while done < len(signs):
        depths = list(accumulate(array("b", signs[done : done + piece]), initial=depth))
        nth = depths.index(0) if 0 in depths else len(depths)  # depths[0] is depth, never 0
        if limit and limit in depths:
            nth = min(nth, depths.index(limit))
        if nth < len(depths):
            return done + nth, depths[nth]
        depth = depths[-1]
        done += piece
        piece *= 2
    return 0, depth


_KEEP_BRACKETS = methodcaller("translate", None, _NOT_BRACKETS)


def _nth_bracket(block: bytes | bytearray, n: int) -> int:
    """Offset of the `n`-th bracket (from 1) outside strings in `block` (whole strings, no
    escapes); C-level work only, however many strings and brackets it holds."""
    if b'"' not in block:
        return next(islice(_BRACKET.finditer(block), n - 1, None)).start()
    parts = block.split(b'"')
    outside = parts[::2]  # between strings
    counts = list(accumulate(map(len, map(_KEEP_BRACKETS, outside))))
    i = bisect_left(counts, n)
    before = counts[i - 1] if i else 0
    offset = sum(map(len, parts[: 2 * i])) + 2 * i  # 2 * i quotes precede outside[i]
    return offset + _nth_bracket(outside[i], n - before)


class StreamDecoder:
    """Incremental splitter and decoder of a qemu-ga style JSON stream; see the module docstring."""

    __slots__ = (
        "_block",
        "_buf",
        "_depth",
        "_escape",
        "_fast_limit",
        "_fast_misses",
        "_fast_skip",
        "_garbage",
        "_in_string",
        "_max_depth",
        "_max_size",
        "_resync",
        "_skipping",
    )

    def __init__(self, max_message_size: int = 1 << 20, max_depth: int = 1024) -> None:
        if not 0 < max_message_size <= MAX_MESSAGE_SIZE_LIMIT:
            raise ValueError(
                f"max_message_size must be in 1..{MAX_MESSAGE_SIZE_LIMIT}, not {max_message_size}"
            )
        if max_depth < 1:
            raise ValueError(f"max_depth must be at least 1, not {max_depth}")
        self._max_size = max_message_size
        self._max_depth = min(max_depth, JSON_DEPTH_LIMIT)
        # Messages up to this length may take the fast path: none can be too large or too deep
        # (depth <= length // 2).
        self._fast_limit = min(max_message_size, 2 * self._max_depth + 1)
        self._buf = bytearray()
        self.reset()

    @property
    def max_depth(self) -> int:
        """The depth limit in force: `max_depth`, or `JSON_DEPTH_LIMIT` if lower."""
        return self._max_depth

    def reset(self) -> None:
        """Forget partial input, e.g. for a new connection (qemu-ga does not; we do)."""
        self._buf.clear()
        self._depth = 0  # > 0 while inside a message
        self._in_string = False
        self._escape = False  # the last byte buffered was a backslash inside a string
        self._skipping = False  # the current message has failed; track its end only
        self._garbage = False  # inside a run of top-level garbage already reported
        self._resync = False  # inside a run of 0xFF (and whitespace) already reported
        self._block = _FIRST_BLOCK  # bytes of brackets to take in one step in this message
        self._fast_misses = 0  # messages the fast path failed on in a row, capped
        self._fast_skip = 0  # message starts left before the fast path is tried again

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete message (0 while skipping one that already failed)."""
        return len(self._buf)

    def _alone(self, data: bytes | bytearray) -> list[Event] | None:
        """The usual chunk between messages: one message and its newline, in one C call (the
        fast path's own test, without the scan's set-up); None leaves the chunk to the scan,
        which gives the same events for it (a failure here is the fast path's miss there)."""
        size = len(data) - 1
        if size > self._fast_limit or data[size] != 0x0A or data[0] not in _OPENERS or not data.isascii():
            return None
        try:
            value, after = _JSON.scan_once(data.decode("ascii"), 0)
        except (StopIteration, ValueError, RecursionError):
            return None
        if after != size:
            return None
        self._resync = False
        self._fast_misses = 0
        return [Message(value, size)]

    def feed(self, data: bytes) -> list[Event]:
        """Scan `data` and return the events it completes; never raises on any input."""
        events: list[Event] = []
        if not data:
            return events
        if not isinstance(data, bytes | bytearray):
            data = bytes(data)
        if not (self._buf or self._depth or self._garbage or self._fast_skip):
            alone = self._alone(data)
            if alone is not None:
                return alone
        buf = self._buf
        pos = len(buf)  # everything before this has been scanned by an earlier feed
        if pos:
            buf += data
            work: bytes | bytearray = buf
            start = 0  # a non-empty buffer always holds exactly one partial message
        else:
            work = data  # nothing pending: scan the chunk in place, copy only a leftover
            start = -1
        end = len(work)
        max_size = self._max_size
        max_depth = self._max_depth
        fast_limit = self._fast_limit
        depth = self._depth
        in_string = self._in_string
        escape = self._escape
        skipping = self._skipping
        garbage = self._garbage
        resync = self._resync
        # `raw_decode` minus its Python frame: the C scanner, which raises StopIteration where
        # `raw_decode` would say "Expecting value".
        scan_once = _JSON.scan_once
        block = self._block
        window: str | None = None  # the fast path's text: an ASCII slice of `work`
        window_at = window_end = -1  # window[i] is work[window_at + i]

        while pos < end:
            if depth == 0:
                # Between messages.
                if garbage:
                    m = _GARBAGE_END.search(work, pos)
                    if m is None:
                        break
                    pos = m.start()
                    garbage = False
                gap_end = _GAP.match(work, pos).end()  # type: ignore[union-attr]
                if gap_end != pos:
                    if not resync and work.find(b"\xff", pos, gap_end) >= 0:
                        events.append(Resynced(0))
                        resync = True
                    pos = gap_end
                    if pos == end:
                        break
                resync = False
                if work[pos] not in _OPENERS:
                    events.append(DecodeFailure(_garbage_error(work, pos)))
                    garbage = True
                    pos += 1
                    continue
                # The fast path, in a loop of its own for back-to-back messages.  After a miss it
                # sits out 1, 2, 4 ... 64 messages, so a flood it cannot parse costs it little.
                first = pos
                if self._fast_skip:
                    self._fast_skip -= 1
                else:
                    tried = False
                    while True:
                        if pos + _WINDOW // 2 > window_end != end:
                            raw = work[pos : pos + _WINDOW]
                            window = raw.decode("ascii") if raw.isascii() else None
                            window_at, window_end = pos, pos + len(raw)
                        if window is None:
                            break
                        tried = True
                        try:
                            value, after = scan_once(window, pos - window_at)
                        except (StopIteration, ValueError, RecursionError):
                            break
                        size = after + window_at - pos
                        if size > fast_limit:
                            break
                        events.append(Message(value, size))
                        pos += size
                        if pos == end or work[pos] not in _OPENERS:
                            break
                    if tried:
                        if pos != end and work[pos] in _OPENERS:  # a miss
                            self._fast_misses = min(2 * self._fast_misses or 1, 64)
                            self._fast_skip = self._fast_misses
                        else:
                            self._fast_misses = 0
                if pos != first:
                    continue
                start = pos
                depth = 1
                block = _FIRST_BLOCK
                pos += 1
                continue

            # Inside a message.
            if in_string:
                if escape:
                    escape = False
                    if work[pos] != _RESYNC:
                        pos += 1  # the escaped byte, whatever it is
                        continue
                pos = _STRING_BODY.match(work, pos).end()  # type: ignore[union-attr]
                if pos == end:
                    break
                byte = work[pos]
                if byte == _QUOTE:
                    in_string = False
                    pos += 1
                    continue
                if byte == _BACKSLASH:
                    # Last in the buffer (else the body would have taken it) or before a 0xFF.
                    pos += 1
                    if pos == end:
                        escape = True
                    continue
                # byte == 0xFF: fall through to the resync below.
            else:
                run_end = _CONTENT.match(work, pos).end()  # type: ignore[union-attr]
                if work.count(b'"', pos, run_end) & 1:
                    in_string = True  # the run ends inside a string: string mode takes it
                    pos = run_end
                    continue
                pos = run_end
                if pos == end:
                    break
                byte = work[pos]
                if byte == _BACKSLASH:  # outside a string: bad JSON, for json to report
                    pos += 1
                    continue
                if byte != _RESYNC:
                    # A block of brackets and whatever is between them, strings whole.  `room`
                    # bytes cannot end the message or cross the depth limit, whatever they are.
                    room = depth - 1 if skipping else min(depth - 1, max_depth - depth)
                    size = room if room >= _FIRST_BLOCK else block
                    block_end = min(end, pos + size)
                    for stop in b"\\\xff":  # memchr, far faster than a regex over a class
                        found = work.find(stop, pos, block_end)
                        if found >= 0:
                            block_end = found
                    quoted = work.find(b'"', pos, block_end) >= 0
                    if quoted and work.count(b'"', pos, block_end) & 1:
                        block_end = work.rfind(b'"', pos, block_end)  # the last string is cut
                    region = work[pos:block_end]
                    if quoted:
                        region = b"".join(region.split(b'"')[::2])
                    signs = region.translate(_SIGNS, _NOT_BRACKETS)
                    closers = signs.count(b"\xff")
                    if depth > closers and (skipping or depth + len(signs) - closers <= max_depth):
                        # Nothing can happen in this block: move the depth by its net count.
                        depth += len(signs) - 2 * closers
                        pos = block_end
                        if not skipping and pos - start > max_size:
                            events.append(_too_large(max_size))
                            skipping = True
                        if size == block:
                            block = min(4 * block, _MAX_BLOCK)
                        continue
                    if room >= _MIN_BLOCK:  # try `room` bytes, which move the depth in one step
                        block = room
                        continue
                    limit = 0 if skipping else max_depth + 1
                    nth, after = _first_event(signs[:_MIN_BLOCK], depth, limit)  # an event at once?
                    if not nth and len(signs) > _MIN_BLOCK:
                        if _balanced_inside(signs, depth, None if skipping else max_depth - depth):
                            depth += len(signs) - 2 * closers
                            pos = block_end
                            if not skipping and pos - start > max_size:
                                events.append(_too_large(max_size))
                                skipping = True
                            block = min(4 * block, _MAX_BLOCK)
                            continue
                        nth, after = _first_event(signs, depth, limit)
                    depth = after
                    if not nth:  # the count was too cautious: nothing happens
                        pos = block_end
                        if not skipping and pos - start > max_size:
                            events.append(_too_large(max_size))
                            skipping = True
                        block = min(4 * block, _MAX_BLOCK)
                        continue
                    # The nth bracket ends the message or crosses the depth limit.
                    if len(signs) != block_end - pos:
                        pos += _nth_bracket(work[pos:block_end], nth)
                    else:
                        pos += nth - 1
                    block = _FIRST_BLOCK
                    if not skipping and pos - start > max_size:
                        events.append(_too_large(max_size))
                        skipping = True
                    pos += 1
                    if depth:  # deeper than the limit
                        if not skipping:
                            events.append(_too_deep(max_depth))
                            skipping = True
                        continue
                    if skipping:
                        skipping = False
                    elif pos - start > max_size:
                        events.append(_too_large(max_size))
                    else:
                        events.append(_decode(work[start:pos], pos - start, max_depth))
                    start = -1
                    continue

            # A 0xFF at `pos` inside a message: drop the message, report what was not yet reported.
            if not skipping and pos - start > max_size:
                events.append(_too_large(max_size))
                skipping = True
            events.append(Resynced(0 if skipping else pos - start))
            resync = True
            depth = 0
            in_string = escape = skipping = False
            start = -1
            pos += 1

        # The chunk is scanned to its end; keep only a partial message that may still succeed.
        if depth and not skipping and end - start > max_size:
            events.append(_too_large(max_size))
            skipping = True
        if depth and not skipping:
            if work is buf:
                if start:
                    del buf[:start]
            else:
                buf += memoryview(work)[start:]
        else:
            buf.clear()
        self._depth = depth
        self._in_string = in_string
        self._escape = escape
        self._skipping = skipping
        self._garbage = garbage
        self._resync = resync
        self._block = block
        return events
