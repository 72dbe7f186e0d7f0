"""Differential tests: the same raw bytes to the real qemu-ga and to pyqga, replies compared.

Both peers run on unix sockets (qemu-ga from `tests/rig/qemu_ga.py`, pyqga from
`tests/rig/agent_process.py`), one process each per configuration, a fresh connection per case.
After each case's bytes we send a sentinel `guest-sync` with a unique id and read up to its reply,
so every reply the case produced is collected (and none is missed or waited for with a timeout),
and qemu-ga's parser, which survives reconnects, is known to be clean before the next case.

What is compared: reply SHAPES, error CLASSES, and texts where pyqga promises qemu's wording
(argument and envelope errors, unknown commands). Harmless differences are normalised away by
comparing parsed JSON instead of bytes: key order (qemu-ga puts `id` first on errors, we put it
last), separators, and the case of `\\uXXXX` escapes (qemu-ga upper, Python lower). The one thing
compared as bytes is the 0xFF prefix of a line. Where we differ on purpose, each side's behaviour is
asserted on its own and the line of ../shared/REFERENCE.md (or of our design) is named.
"""

from __future__ import annotations

import itertools
import json
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.rig.agent_process import PyqgaAgent
from tests.rig.qemu_ga import QemuGa, require_qemu_ga

pytestmark = pytest.mark.qemu_ga

BLOCKED = ("guest-get-time", "guest-ping")
READ_TIMEOUT = 5.0
_sentinel_ids = itertools.count(700_000_001)


# --- peers -----------------------------------------------------------------------------------


@dataclass
class Peer:
    """One running agent: a name for messages and a way to open a fresh connection."""

    name: str
    connect: Callable[[], socket.socket]


def _qemu_ga_available() -> None:
    require_qemu_ga()


@pytest.fixture(scope="module")
def peers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Peer, Peer]]:
    """(qemu-ga, pyqga), both with default options."""
    _qemu_ga_available()
    with QemuGa(tmp_path_factory.mktemp("qga")) as qga, PyqgaAgent(tmp_path_factory.mktemp("pyqga")) as ours:
        yield Peer("qemu-ga", qga.connect), Peer("pyqga", ours.connect)


@pytest.fixture(scope="module")
def blocked_peers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Peer, Peer]]:
    """(qemu-ga, pyqga), both started with `-b guest-get-time,guest-ping`."""
    _qemu_ga_available()
    args = ["-b", ",".join(BLOCKED)]
    with (
        QemuGa(tmp_path_factory.mktemp("qga-b"), args) as qga,
        PyqgaAgent(tmp_path_factory.mktemp("pyqga-b"), args) as ours,
    ):
        yield Peer("qemu-ga", qga.connect), Peer("pyqga", ours.connect)


# --- talking to a peer -----------------------------------------------------------------------


def sentinel() -> tuple[bytes, bytes]:
    """A guest-sync request with a fresh id, and the exact reply both agents give to it."""
    sync_id = next(_sentinel_ids)
    request = b'{"execute":"guest-sync","arguments":{"id":%d}}\n' % sync_id
    return request, b'{"return": %d}' % sync_id


def connect(peer: Peer) -> socket.socket:
    """A fresh connection. qemu-ga has a tiny listen backlog and accepts the next client only
    after it has seen the previous one close, so a quick reconnect can get EAGAIN: retry."""
    deadline = time.monotonic() + READ_TIMEOUT
    while True:
        try:
            return peer.connect()
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.005)


def exchange(peer: Peer, data: bytes) -> list[bytes]:
    """Send `data` on a fresh connection; return every reply line (without `\\n`) it caused.

    The sentinel after `data` bounds the read: everything before its reply belongs to `data`.
    """
    request, answer = sentinel()
    received = b""
    with connect(peer) as sock:
        sock.settimeout(READ_TIMEOUT)
        sock.sendall(data)
        sock.sendall(request)
        while True:
            lines = received.split(b"\n")
            for index, line in enumerate(lines[:-1]):
                if line == answer:
                    return lines[:index]
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                chunk = b""
            if not chunk:
                pytest.fail(f"{peer.name}: no reply to the sentinel after {data!r}; got {received!r}")
            received += chunk


@dataclass(frozen=True)
class Line:
    """One reply line, normalised: whether it began with the 0xFF byte, and its parsed JSON."""

    delimited: bool
    value: Any


def parse(lines: list[bytes]) -> list[Line]:
    out = []
    for raw in lines:
        delimited = raw.startswith(b"\xff")
        out.append(Line(delimited, json.loads(raw[1:] if delimited else raw)))
    return out


def shape(line: Line) -> Line:
    """An error line with its text blanked: for cases where only the class must agree."""
    value = line.value
    if isinstance(value, dict) and isinstance(value.get("error"), dict):
        value = {**value, "error": {**value["error"], "desc": "<text>"}}
    return Line(line.delimited, value)


def both(pair: tuple[Peer, Peer], data: bytes) -> tuple[list[Line], list[Line]]:
    qga, ours = pair
    return parse(exchange(qga, data)), parse(exchange(ours, data))


def error(cls: str, desc: str, **extra: Any) -> Line:
    return Line(False, {"error": {"class": cls, "desc": desc}, **extra})


# --- identical replies (parsed JSON, 0xFF prefix as bytes) -------------------------------------

EXACT_CASES = {
    # Valid requests and the id echo.
    "ping": b'{"execute":"guest-ping"}\n',
    "ping, no newline": b'{"execute":"guest-ping"}',
    "ping id 1": b'{"execute":"guest-ping","id":1}\n',
    "ping id string": b'{"execute":"guest-ping","id":"abc"}\n',
    "ping id null": b'{"execute":"guest-ping","id":null}\n',
    "ping id object": b'{"execute":"guest-ping","id":{"a":[1,2.5]}}\n',
    # qemu-ga escapes non-ASCII as \u00E9, Python as \u00e9: parsed, they are the same string.
    "ping id non-ASCII": b'{"execute":"guest-ping","id":"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80"}\n',
    "ping arguments {}": b'{"execute":"guest-ping","arguments":{}}\n',
    "ping CRLF": b'{"execute":"guest-ping"}\r\n',
    "blank lines only": b"\n\n  \n",
    # Framing: brace balance, not newlines, ends a message.
    "two pings, no newline": b'{"execute":"guest-ping"}{"execute":"guest-ping"}',
    "two pings ids 1 and 2, no newline": b'{"execute":"guest-ping","id":1}{"execute":"guest-ping","id":2}',
    "ping split by newlines": b'{"execute":\n"guest-ping"\n}\n',
    # guest-sync and guest-sync-delimited (its reply starts with the byte 0xFF).
    "sync 123": b'{"execute":"guest-sync","arguments":{"id":123}}\n',
    "sync 123 + request id": b'{"execute":"guest-sync","arguments":{"id":123},"id":9}\n',
    "sync int64 max": b'{"execute":"guest-sync","arguments":{"id":9223372036854775807}}\n',
    "sync int64 min": b'{"execute":"guest-sync","arguments":{"id":-9223372036854775808}}\n',
    "sync-delimited 123": b'{"execute":"guest-sync-delimited","arguments":{"id":123}}\n',
    "sync-delimited + request id": b'{"execute":"guest-sync-delimited","arguments":{"id":5},"id":"r"}\n',
    # Unknown command.
    "unknown command": b'{"execute":"no-such-cmd"}\n',
    "unknown command, id 7": b'{"execute":"no-such-cmd","id":7}\n',
    "unknown command, upper case": b'{"execute":"GUEST-PING"}\n',
    "execute empty string": b'{"execute":""}\n',
    # Parameter errors: missing, unexpected, wrong type.
    "sync without arguments": b'{"execute":"guest-sync"}\n',
    "sync arguments {}": b'{"execute":"guest-sync","arguments":{}}\n',
    "sync-delimited without arguments": b'{"execute":"guest-sync-delimited"}\n',
    "sync without arguments, id 3": b'{"execute":"guest-sync","id":3}\n',
    "sync id string": b'{"execute":"guest-sync","arguments":{"id":"x"}}\n',
    "sync id null": b'{"execute":"guest-sync","arguments":{"id":null}}\n',
    "sync id 1.5": b'{"execute":"guest-sync","arguments":{"id":1.5}}\n',
    "sync id true": b'{"execute":"guest-sync","arguments":{"id":true}}\n',
    "sync id + extra param": b'{"execute":"guest-sync","arguments":{"id":1,"foo":2}}\n',
    "ping extra param": b'{"execute":"guest-ping","arguments":{"x":1}}\n',
    "ping id inside arguments": b'{"execute":"guest-ping","arguments":{"id":1}}\n',
    # Envelope errors (checked before the command lookup), with and without an id to echo.
    "extra top-level key": b'{"execute":"guest-ping","foo":1}\n',
    "extra top-level key, id 3": b'{"execute":"guest-ping","foo":1,"id":3}\n',
    "no execute: arguments only": b'{"arguments":{}}\n',
    "no execute: empty object": b"{}\n",
    "no execute: id only": b'{"id":5}\n',
    "execute not a string: 5": b'{"execute":5}\n',
    "execute not a string: 5, id 4": b'{"execute":5,"id":4}\n',
    "execute not a string: null": b'{"execute":null}\n',
    "execute not a string: object": b'{"execute":{"a":1}}\n',
    "arguments not an object: []": b'{"execute":"guest-ping","arguments":[]}\n',
    "arguments not an object: null": b'{"execute":"guest-ping","arguments":null}\n',
    "arguments not an object: [], id 5": b'{"execute":"guest-ping","arguments":[],"id":5}\n',
    "arguments not an object: string": b'{"execute":"guest-sync","arguments":"x"}\n',
    # Top-level values that are not objects (arrays are batches for us: see test_top_level_array).
    "top-level 42": b"42\n",
    "top-level string": b'"str"\n',
    "top-level null": b"null\n",
}


@pytest.mark.parametrize("data", EXACT_CASES.values(), ids=EXACT_CASES.keys())
def test_same_replies(peers: tuple[Peer, Peer], data: bytes) -> None:
    qga, ours = both(peers, data)
    assert ours == qga


def test_sync_delimited_prefix_is_one_ff_byte_on_both(peers: tuple[Peer, Peer]) -> None:
    data = b'{"execute":"guest-sync-delimited","arguments":{"id":42},"id":1}\n'
    for peer in peers:
        [line] = exchange(peer, data)
        assert line[:1] == b"\xff", peer.name
        assert line[1:2] == b"{", peer.name
        assert json.loads(line[1:]) == {"return": 42, "id": 1}, peer.name


def test_plain_sync_has_no_ff_prefix_on_both(peers: tuple[Peer, Peer]) -> None:
    for peer in peers:
        [line] = exchange(peer, b'{"execute":"guest-sync","arguments":{"id":42}}\n')
        assert line == b'{"return": 42}', peer.name


# --- malformed JSON: same shape and class; the parse error texts are our own ---------------------

# pyqga words parse errors its own way ("Parse error: ..." with Python's reason and position),
# qemu-ga says "JSON parse error, <reason>"; both are GenericError with no id, and the number of
# error lines and what is answered after them must agree.
PARSE_ERROR_CASES = {
    "malformed {execute:}": b'{"execute":}\n',
    "malformed {execute:} then ping": b'{"execute":}{"execute":"guest-ping"}',
    "garbage then ping": b'abc\n{"execute":"guest-ping"}\n',
    "garbage then ping, no newline": b'abc{"execute":"guest-ping"}',
    "lone } then ping": b'}{"execute":"guest-ping"}',
    "trailing comma with id (no id echo)": b'{"execute":"guest-ping","id":5,}\n',
    "missing colon then ping": b'{"execute" "guest-ping"}\n{"execute":"guest-ping"}\n',
    "mismatched bracket then ping": b'{"execute":"guest-ping"]\n{"execute":"guest-ping"}\n',
    "invalid UTF-8 in string": b'{"execute":"gu\xc3("}\n',
}


@pytest.mark.parametrize("data", PARSE_ERROR_CASES.values(), ids=PARSE_ERROR_CASES.keys())
def test_parse_errors_same_shape_and_class(peers: tuple[Peer, Peer], data: bytes) -> None:
    qga, ours = both(peers, data)
    assert [shape(line) for line in ours] == [shape(line) for line in qga]
    assert any(line.value.get("error", {}).get("class") == "GenericError" for line in qga)
    for line in qga:
        if "error" in line.value:
            assert line.value["error"]["desc"].startswith("JSON parse error, ")
    for line in ours:
        if "error" in line.value:
            assert line.value["error"]["desc"].startswith("Parse error: ")


# --- deliberate differences: each side asserted on its own ----------------------------------------

PING_REPLY = Line(False, {"return": {}})
QGA_STRAY_FF = error("GenericError", "JSON parse error, stray '\ufffd'")


def test_ff_then_ping(peers: tuple[Peer, Peer]) -> None:
    # REFERENCE.md, qemu-ga wire protocol: "Resync: a host sends the byte `0xFF` ... qemu-ga then
    # also answers with a parse error, which hosts must discard; **we drop it silently.**"
    qga, ours = both(peers, b'\xff{"execute":"guest-ping"}\n')
    assert qga == [QGA_STRAY_FF, PING_REPLY]
    assert ours == [PING_REPLY]


def test_ff_alone(peers: tuple[Peer, Peer]) -> None:
    # Same REFERENCE.md line: qemu-ga answers every 0xFF with an error, we answer nothing.
    qga, ours = both(peers, b"\xff\xff")
    assert qga == [QGA_STRAY_FF, QGA_STRAY_FF]
    assert ours == []


def test_ff_inside_partial_message_then_ping(peers: tuple[Peer, Peer]) -> None:
    # Same REFERENCE.md line: 0xFF drops the partial message on both sides; qemu-ga reports the
    # dropped token as a stray one, we report nothing.
    qga, ours = both(peers, b'{"execute":"guest-p\xff{"execute":"guest-ping"}\n')
    assert qga == [error("GenericError", "JSON parse error, stray '\"guest-p\ufffd'"), PING_REPLY]
    assert ours == [PING_REPLY]


def test_top_level_array(peers: tuple[Peer, Peer]) -> None:
    # Our design (protocol/dialects.py, classification rules: "an array is a JSON-RPC batch"; not
    # a line of REFERENCE.md): pyqga answers a JSON-RPC batch reply, one invalid-request error per
    # element, where qemu-ga refuses the array as a whole.
    qga, ours = both(peers, b"[1,2]\n")
    assert qga == [error("GenericError", "QMP input must be a JSON object")]
    invalid = {"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid request: not an object"},
               "id": None}
    assert ours == [Line(False, [invalid, invalid])]


def test_parser_reset_on_reconnect(tmp_path: Path, peers: tuple[Peer, Peer]) -> None:
    # REFERENCE.md: "The qemu-ga parser is not reset when a host reconnects; **we reset it per
    # connection**." A fresh qemu-ga, so the leftover cannot disturb the shared one.
    _, ours = peers
    partial, ping = b'{"execute":"guest-p', b'{"execute":"guest-ping"}\n'
    with QemuGa(tmp_path / "qga") as fresh:
        qga = Peer("qemu-ga (fresh)", fresh.connect)
        results = []
        for peer in (qga, ours):
            with connect(peer) as sock:
                sock.sendall(partial)
            results.append(parse(exchange(peer, ping)))
    qga_lines, our_lines = results
    # qemu-ga: the leftover corrupts the next connection's first message, the ping is lost
    # (tests/data/qga_wire_facts.md, "Connections").
    assert qga_lines == [
        error("GenericError", "JSON parse error, stray '-p'"),
        error("GenericError", "JSON parse error, expecting value"),
    ]
    assert our_lines == [PING_REPLY]


# --- blocked commands (-b) -----------------------------------------------------------------------


def _assert_disabled(lines: list[Line], name: str, **extra: Any) -> None:
    [line] = lines
    assert not line.delimited
    assert set(line.value) == {"error", *extra}
    for key, value in extra.items():
        assert line.value[key] == value
    assert line.value["error"]["class"] == "CommandNotFound"
    assert line.value["error"]["desc"].startswith(f"Command {name} has been disabled")


BLOCKED_CASES = {
    "blocked guest-get-time": (b'{"execute":"guest-get-time"}\n', "guest-get-time", {}),
    "blocked guest-get-time, id 5": (b'{"execute":"guest-get-time","id":5}\n', "guest-get-time", {"id": 5}),
    "blocked guest-ping": (b'{"execute":"guest-ping"}\n', "guest-ping", {}),
    # The disabled check comes before argument validation on both.
    "blocked guest-ping with a bad argument": (
        b'{"execute":"guest-ping","arguments":{"x":1}}\n', "guest-ping", {}),
}


@pytest.mark.parametrize(("data", "name", "extra"), BLOCKED_CASES.values(), ids=BLOCKED_CASES.keys())
def test_blocked_command(blocked_peers: tuple[Peer, Peer], data: bytes, name: str,
                         extra: dict[str, Any]) -> None:
    qga, ours = both(blocked_peers, data)
    _assert_disabled(qga, name, **extra)
    _assert_disabled(ours, name, **extra)
    # qemu-ga 7.2 stops after "disabled"; we add ": the command is not allowed" (newer qemu-ga's
    # wording, REFERENCE.md: "newer versions `...: the command is not allowed`").
    assert qga[0].value["error"]["desc"] == f"Command {name} has been disabled"


def test_blocked_does_not_affect_other_commands(blocked_peers: tuple[Peer, Peer]) -> None:
    qga, ours = both(blocked_peers, b'{"execute":"guest-sync","arguments":{"id":7}}\n{"execute":"nope"}\n')
    assert ours == qga
    assert qga[0] == Line(False, {"return": 7})


def _commands(lines: list[Line]) -> dict[str, dict[str, Any]]:
    [line] = lines
    info = line.value["return"]
    assert set(info) == {"version", "supported_commands"}
    entries = info["supported_commands"]
    for entry in entries:
        assert set(entry) == {"name", "enabled", "success-response"}
    by_name = {entry["name"]: entry for entry in entries}
    assert len(by_name) == len(entries)
    return by_name


def test_guest_info_under_block(blocked_peers: tuple[Peer, Peer]) -> None:
    qga, ours = both(blocked_peers, b'{"execute":"guest-info"}\n')
    qga_commands, our_commands = _commands(qga), _commands(ours)
    for name in BLOCKED:
        assert qga_commands[name]["enabled"] is False
        assert our_commands[name]["enabled"] is False
    # Every command both agents know reads the same (we implement a subset of qemu-ga's).
    common = set(qga_commands) & set(our_commands)
    assert {"guest-ping", "guest-sync", "guest-sync-delimited", "guest-info"} <= common
    for name in sorted(common):
        assert our_commands[name] == qga_commands[name], name


def test_guest_info_default_agrees(peers: tuple[Peer, Peer]) -> None:
    qga, ours = both(peers, b'{"execute":"guest-info","id":"i"}\n')
    assert qga[0].value["id"] == ours[0].value["id"] == "i"
    qga_commands, our_commands = _commands(qga), _commands(ours)
    for name in sorted(set(qga_commands) & set(our_commands)):
        assert our_commands[name] == qga_commands[name], name
        assert our_commands[name]["enabled"] is True
