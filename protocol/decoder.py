"""Split a byte stream into JSON messages, the way qemu-ga's json-streamer does (sans-IO).

What we support:
- A stream of top-level JSON objects and arrays (an array is a JSON-RPC batch), not lines: a message
  ends when its brackets balance outside strings.  Whitespace between messages is ignored; chunk
  boundaries never matter (one byte at a time gives the same events as everything at once).
- Recovery instead of exceptions: `feed` never raises.  A run of garbage at top level gives one
  failure and we resume at the next `{` or `[`; a message that is not valid UTF-8 or JSON gives one
  failure; the byte 0xFF (never valid in UTF-8) silently drops any partial message, so a host can
  resync in the middle of anything, even inside a string.
- Limits: a message larger than `max_message_size` or nested deeper than `max_depth` gives one
  failure as soon as the limit is crossed; the rest of it is skipped (structure only, not stored).

Worst case on untrusted input:
- Time: O(n) in the bytes fed, whatever the chunking, plus one JSON parse per complete message.
  Every byte is scanned once by the general scan, and at most once more by the fast path (below),
  which only ever looks at a whole chunk of at most `2 * max_depth + 1` bytes; a partial message is
  never rescanned when more of it arrives.
- Memory: the partial message we hold never exceeds `max_message_size`, so we hold at most
  `max_message_size` plus the chunk being fed.  An oversized or too-deep message costs nothing
  beyond that while it is skipped: we only keep its depth and whether we are inside a string.

Plan:
- Keep one bytearray: the current partial message, followed (during `feed`) by the new chunk.  The
  scanner's state (depth, in string, pending backslash, skipping, in garbage) describes everything
  in the buffer, so each `feed` resumes scanning at the old end of the buffer.
- Jump to the next interesting byte with compiled regexes instead of a Python loop per byte: in
  structure mode `{ } [ ] 0xFF` and whole strings (one match per string, possessive so it is
  linear); inside a string left open by a chunk boundary, to the next `"`, backslash or 0xFF.
- Complete messages are decoded from the buffer in place; the buffer is compacted once per `feed`
  (never `del buf[:k]` per message), and when nothing is pending a chunk is scanned without copying.
- Fast path for the common chunk, one or more complete small messages: when nothing is pending and
  the chunk is ASCII and no longer than `min(max_message_size, 2 * max_depth + 1)` (so no message
  in it can break a limit: nesting depth is at most half a message's length), `json`'s own C
  scanner parses each message straight from the chunk.  For valid JSON the scanner ends exactly
  where the brackets balance, so it yields the very values and sizes the scan above would; at the
  first thing it does not accept (garbage, bad JSON, a cut message) the scan above takes over from
  there, as it would at a message boundary.  So such a chunk is scanned at most twice, and only a
  chunk of bounded length: time stays linear.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from protocol.errors import AgentError, not_an_object, parse_error

__all__ = ["DecodeFailure", "Event", "Message", "Resynced", "StreamDecoder"]

#: qemu-ga's own ceiling for a message; a larger limit would let one peer pin that much memory.
MAX_MESSAGE_SIZE_LIMIT = 64 << 20

_OPENERS = (0x7B, 0x5B)  # { [
_QUOTE, _BACKSLASH, _RESYNC = 0x22, 0x5C, 0xFF
_SCALAR_START = frozenset(b'-0123456789"tfn')  # numbers, strings, true, false, null

# Top level: skip JSON whitespace.
_WHITESPACE = re.compile(rb"[ \t\r\n]*+")
# Garbage at top level runs until the next message start or resync byte.
_GARBAGE_END = re.compile(rb"[{\[\xff]")
# Structure mode: a bracket, a resync byte, or a string as far as it goes in the buffer.  Group 1 is
# the closing quote, empty when the string is cut by the end of the buffer, a 0xFF, or a backslash
# that is last in the buffer or followed by 0xFF.
_STRUCTURE = re.compile(rb'[{}\[\]\xff]|"(?:[^"\\\xff]++|\\[^\xff])*+("?)')
# String mode (a string left open by the end of a chunk): its body, up to `"`, `\` or 0xFF.
_STRING_BODY = re.compile(rb'(?:[^"\\\xff]++|\\[^\xff])*+')
_WHITESPACE_CHARS = " \t\r\n"
_OPENER_CHARS = "{["


@dataclass(frozen=True, slots=True)
class Message:
    """One complete top-level JSON value (an object, or an array = JSON-RPC batch)."""

    value: Any
    size: int  # bytes it occupied on the wire


@dataclass(frozen=True, slots=True)
class DecodeFailure:
    """One bad message or run of garbage; the decoder has already recovered."""

    error: AgentError


@dataclass(frozen=True, slots=True)
class Resynced:
    """A 0xFF byte arrived; `discarded` bytes of a partial message were dropped.

    Only bytes not yet reported count: a message already failed (too large or too deep) or a run of
    garbage contributes 0.
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


def _reject_constant(name: str) -> Any:
    """`json` accepts NaN and Infinity; JSON (and qemu-ga) does not."""
    raise ValueError(f"invalid JSON constant {name}")


# One parser for every message: `json.loads` with a keyword argument builds a new JSONDecoder (and
# scanner) per call, ~1.5 us.  `decode` is exactly what `loads` does after its BOM check, and a
# message never starts with a BOM (it starts with `{` or `[`).
_JSON = json.JSONDecoder(parse_constant=_reject_constant)


def _decode(raw: bytes | bytearray, size: int) -> Event:
    """Turn one complete message into a Message, or a DecodeFailure saying why it is not one."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return DecodeFailure(parse_error(f"invalid UTF-8 at byte {exc.start}: {exc.reason}"))
    try:
        value = _JSON.decode(text)
    except json.JSONDecodeError as exc:
        return DecodeFailure(parse_error(f"{exc.msg}: line {exc.lineno} column {exc.colno}"))
    except ValueError as exc:  # NaN/Infinity, integers past Python's digit limit
        return DecodeFailure(parse_error(str(exc)))
    except RecursionError:
        # Python's recursion limit, not ours, can be lower than max_depth.
        return DecodeFailure(parse_error("nesting too deep for the JSON parser"))
    return Message(value, size)


def _complete_messages(text: str, events: list[Event]) -> int:
    """The fast path: append the complete messages at the start of `text` (an ASCII chunk within
    the limits, nothing pending) and return where the general scan must take over.

    `raw_decode` accepts exactly valid JSON and ends a value where its brackets balance, so every
    value it returns is the one the general scan would cut out and decode; anything else (between
    messages: garbage; in a message: bad JSON or the end of the chunk) is left to the general
    scan, starting at that message.
    """
    pos = 0
    end = len(text)
    raw_decode = _JSON.raw_decode
    while True:
        while pos < end and text[pos] in _WHITESPACE_CHARS:
            pos += 1
        if pos == end or text[pos] not in _OPENER_CHARS:
            return pos
        try:
            value, after = raw_decode(text, pos)
        except (ValueError, RecursionError):  # JSONDecodeError is a ValueError
            return pos
        events.append(Message(value, after - pos))
        pos = after


class StreamDecoder:
    """Incremental splitter and decoder of a qemu-ga style JSON stream; see the module docstring."""

    __slots__ = (
        "_buf",
        "_depth",
        "_escape",
        "_fast_limit",
        "_garbage",
        "_in_string",
        "_max_depth",
        "_max_size",
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
        self._max_depth = max_depth
        # Chunks up to this length may take the fast path: no message in them can be too large
        # or too deep (depth <= length // 2).
        self._fast_limit = min(max_message_size, 2 * max_depth + 1)
        self._buf = bytearray()
        self.reset()

    def reset(self) -> None:
        """Forget partial input, e.g. for a new connection (qemu-ga does not; we do)."""
        self._buf.clear()
        self._depth = 0  # > 0 while inside a message
        self._in_string = False
        self._escape = False  # the last byte buffered was a backslash inside a string
        self._skipping = False  # the current message has failed; track its end only
        self._garbage = False  # inside a run of top-level garbage already reported

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete message (0 while skipping one that already failed)."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Event]:
        """Scan `data` and return the events it completes; never raises on any input."""
        events: list[Event] = []
        if not data:
            return events
        if not isinstance(data, bytes | bytearray):
            data = bytes(data)
        buf = self._buf
        pos = len(buf)  # everything before this has been scanned by an earlier feed
        if pos:
            buf += data
            work: bytes | bytearray = buf
            start = 0  # a non-empty buffer always holds exactly one partial message
        else:
            work = data  # nothing pending: scan the chunk in place, copy only a leftover
            start = -1
            if (
                not self._depth
                and not self._garbage
                and len(data) <= self._fast_limit
                and data.isascii()
            ):
                pos = _complete_messages(data.decode("ascii"), events)
                if pos == len(data):
                    return events
        end = len(work)
        max_size = self._max_size
        max_depth = self._max_depth
        depth = self._depth
        in_string = self._in_string
        escape = self._escape
        skipping = self._skipping
        garbage = self._garbage
        structure = _STRUCTURE
        string_body = _STRING_BODY

        while pos < end:
            if depth == 0:
                # Between messages.
                if garbage:
                    m = _GARBAGE_END.search(work, pos)
                    if m is None:
                        break
                    pos = m.start()
                    garbage = False
                pos = _WHITESPACE.match(work, pos).end()  # type: ignore[union-attr]
                if pos == end:
                    break
                byte = work[pos]
                if byte in _OPENERS:
                    start = pos
                    depth = 1
                elif byte == _RESYNC:
                    events.append(Resynced(0))
                else:
                    events.append(DecodeFailure(_garbage_error(work, pos)))
                    garbage = True
                pos += 1
                continue

            # Inside a message.
            if in_string:
                if escape:
                    escape = False
                    if work[pos] != _RESYNC:
                        pos += 1  # the escaped byte, whatever it is
                        continue
                pos = string_body.match(work, pos).end()  # type: ignore[union-attr]
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
                p = pos
            else:
                m = structure.search(work, pos)
                if m is None:
                    pos = end
                    break
                p = m.start()
                byte = work[p]
                if byte == _QUOTE:
                    pos = m.end()
                    if not m.group(1):
                        in_string = True  # cut short: string mode takes it from here
                    continue
                if not skipping and p - start > max_size:
                    events.append(_too_large(max_size))
                    skipping = True
                if byte in _OPENERS:
                    depth += 1
                    if not skipping and depth > max_depth:
                        events.append(
                            DecodeFailure(parse_error(f"nesting deeper than {max_depth}"))
                        )
                        skipping = True
                    pos = p + 1
                    continue
                if byte != _RESYNC:  # a closing bracket
                    depth -= 1
                    pos = p + 1
                    if depth == 0:
                        if skipping:
                            skipping = False
                        elif pos - start > max_size:
                            events.append(_too_large(max_size))
                        else:
                            events.append(_decode(work[start:pos], pos - start))
                        start = -1
                    continue

            # A 0xFF at `p` inside a message: drop the message, report what was not yet reported.
            if not skipping and p - start > max_size:
                events.append(_too_large(max_size))
                skipping = True
            events.append(Resynced(0 if skipping else p - start))
            depth = 0
            in_string = escape = skipping = False
            start = -1
            pos = p + 1

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
        return events
