"""The two wire dialects: JSON-RPC 2.0 (native) and qemu-ga's ``{"execute": ...}``.

Each decoded message is classified on its own, so one connection may mix them; replies are
encoded in the dialect of the request they answer.  Both dialects end up as the same
:class:`Request`, which is all the dispatcher ever sees.

Classification rules (untrusted input, so every shape is checked here once):
- an array is a JSON-RPC batch (an empty one is a single invalid-request error);
- an object with a ``jsonrpc`` member, or with ``method`` but no ``execute``, is JSON-RPC;
- any other object is qemu-ga's dialect, with qemu's own error texts.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from enum import Enum
from typing import Any, NamedTuple

from pyqga.protocol.errors import AgentError, invalid_request, not_an_object, quote

RESYNC_BYTE = b"\xff"
QGA_KEYS = frozenset(("execute", "arguments", "id"))
JSONRPC_KEYS = frozenset(("jsonrpc", "method", "params", "id"))


class Dialect(Enum):
    JSONRPC = "jsonrpc"
    QGA = "qga"


# The records here and in decoder.py and server.py are NamedTuples, not dataclasses: one is built
# per request (a frozen dataclass sets each field through object.__setattr__, ~4x dearer), and a
# dataclass costs 0.2-0.5 ms to define, at every start of the agent (a NamedTuple ~0.05 ms).
class Request(NamedTuple):
    """A well-formed request.  ``params`` is a dict, or a list for JSON-RPC by-position calls."""

    dialect: Dialect
    method: str
    params: dict[str, Any] | list[Any]
    id: Any = None
    has_id: bool = False

    @property
    def wants_reply(self) -> bool:
        # A JSON-RPC request without id is a notification; qemu-ga always replies.
        return self.has_id or self.dialect is Dialect.QGA


class Invalid(NamedTuple):
    """A message that cannot be dispatched; it is answered with ``error`` (never silently)."""

    dialect: Dialect
    error: AgentError
    id: Any = None
    has_id: bool = False


class Batch(NamedTuple):
    """A JSON-RPC batch: every element is answered on its own, in one array."""

    items: tuple[Request | Invalid, ...]


Incoming = Request | Invalid | Batch


def classify(value: Any) -> Incoming:
    """Turn one decoded JSON value into a request, a batch, or an error to send back."""
    if isinstance(value, list):
        if not value:
            return Invalid(Dialect.JSONRPC, invalid_request("Invalid request: empty batch"))
        return Batch(tuple(_classify_jsonrpc(item) for item in value))
    if isinstance(value, dict):
        if "jsonrpc" in value or ("method" in value and "execute" not in value):
            return _classify_jsonrpc(value)
        return _classify_qga(value)
    return Invalid(Dialect.QGA, not_an_object())


_NO_ARGUMENTS: dict[str, Any] = {}  # a marker, never handed out


def _classify_qga(obj: dict[str, Any]) -> Request | Invalid:
    method = obj.get("execute")
    arguments = obj.get("arguments", _NO_ARGUMENTS)
    if isinstance(method, str) and isinstance(arguments, dict) and obj.keys() <= QGA_KEYS:
        # Well formed (nearly every request): a few C-level checks, no loop over the members.
        params = {} if arguments is _NO_ARGUMENTS else arguments
        return Request(Dialect.QGA, method, params, obj.get("id"), "id" in obj)
    return _qga_error(obj)


def _qga_error(obj: dict[str, Any]) -> Invalid:
    """qemu's complaint about the first bad member, in the object's order, as qemu-ga gives it."""
    has_id = "id" in obj
    request_id = obj.get("id")

    def fail(text: str) -> Invalid:
        return Invalid(Dialect.QGA, invalid_request(text), request_id, has_id)

    for key, member in obj.items():
        if key not in QGA_KEYS:
            return fail(f"QMP input member '{quote(key)}' is unexpected")
        if key == "execute" and not isinstance(member, str):
            return fail("QMP input member 'execute' must be a string")
        if key == "arguments" and not isinstance(member, dict):
            return fail("QMP input member 'arguments' must be an object")
    return fail("QMP input lacks member 'execute'")


_ID_TYPES = (str, int, float)  # exact types: bool is an int but not an id


def _classify_jsonrpc(item: Any) -> Request | Invalid:
    if type(item) is dict:
        request_id = item.get("id")
        method = item.get("method")
        params = item.get("params", _NO_ARGUMENTS)
        if (
            item.get("jsonrpc") == "2.0" and isinstance(method, str)
            and (request_id is None or type(request_id) in _ID_TYPES)
            and isinstance(params, dict | list) and item.keys() <= JSONRPC_KEYS
        ):  # well formed: the checks below, without building an error for each
            return Request(Dialect.JSONRPC, method, {} if params is _NO_ARGUMENTS else params,
                           request_id, "id" in item)
    return _jsonrpc_checked(item)


def _jsonrpc_checked(item: Any) -> Request | Invalid:
    """Every JSON-RPC 2.0 rule one by one: the error for the first one ``item`` breaks (the
    fast path above gives the same answer for every well-formed plain dict)."""
    if not isinstance(item, dict):
        return Invalid(Dialect.JSONRPC, invalid_request("Invalid request: not an object"))
    has_id = "id" in item
    request_id = item.get("id")
    if request_id is not None and (
        isinstance(request_id, bool) or not isinstance(request_id, str | int | float)
    ):
        # Not echoed: an id of the wrong type is exactly what a client could not match.
        return Invalid(
            Dialect.JSONRPC,
            invalid_request("Invalid request: 'id' must be a string, a number or null"),
            None,
            True,
        )

    def fail(text: str) -> Invalid:
        return Invalid(Dialect.JSONRPC, invalid_request(f"Invalid request: {text}"), request_id, True)

    if not item.keys() <= JSONRPC_KEYS:
        return fail(f"unexpected member '{quote(min(item.keys() - JSONRPC_KEYS))}'")
    if item.get("jsonrpc") != "2.0":
        return fail("'jsonrpc' must be exactly \"2.0\"")
    method = item.get("method")
    if not isinstance(method, str):
        return fail("'method' must be a string")
    params = item.get("params", {})
    if not isinstance(params, dict | list):
        return fail("'params' must be an object or an array")
    return Request(Dialect.JSONRPC, method, params, request_id, has_id)


# --- replies -------------------------------------------------------------------------------


def reply_object(
    dialect: Dialect, request_id: Any, has_id: bool, result: Any = None,
    error: AgentError | None = None,
) -> dict[str, Any]:
    """The reply as a JSON-ready object in ``dialect``."""
    if dialect is Dialect.QGA:
        body: dict[str, Any] = (
            {"error": error.to_qga()} if error is not None else {"return": result}
        )
        if has_id:
            body["id"] = request_id
        return body
    if error is not None:
        return {"jsonrpc": "2.0", "error": error.to_jsonrpc(), "id": request_id}
    return {"jsonrpc": "2.0", "result": result, "id": request_id}


def _strict_encoder() -> Callable[[Any, int], Iterable[str]]:
    """``json.dumps``'s pieces (same bytes once joined), refusing NaN and infinities, built once.

    ``json.dumps`` sets up a new C encoder on every call, which is most of its ~4 us for a small
    reply; the C encoder itself can be kept, and called as ``chunks(value, 0)`` like the pure
    Python ``iterencode`` it falls back to.  Circular references are not checked (replies are
    built fresh by handlers): one would end in RecursionError, which the send side
    (:func:`pyqga.protocol.server.encode_reply`) turns into an internal error like any other
    unencodable reply.
    """
    strict = json.JSONEncoder(allow_nan=False)
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is not None:
        try:
            c_encode: Callable[[Any, int], Iterable[str]] = make(
                None, strict.default, json.encoder.encode_basestring_ascii, None,
                strict.key_separator, strict.item_separator, False, False, False)
        except TypeError:  # a Python whose private C encoder takes other arguments
            pass
        else:
            return c_encode

    def chunks(value: Any, _indent_level: int) -> Iterable[str]:
        return strict.iterencode(value)

    return chunks


_json_chunks = _strict_encoder()
UNENCODABLE = (ValueError, TypeError, RecursionError)


def encode(reply: Any, *, delimited: bool = False) -> bytes:
    """One reply (or a batch of them) as one line; ``delimited`` prefixes the 0xFF sync byte.

    Raises ValueError for NaN or an infinity (they are not JSON), TypeError for a value JSON
    cannot hold: :func:`pyqga.protocol.server.encode_reply` turns either into an internal error
    reply.
    """
    line = "".join(_json_chunks(reply, 0)).encode() + b"\n"
    return RESYNC_BYTE + line if delimited else line


def encode_request(
    dialect: Dialect, method: str, params: dict[str, Any] | None, request_id: Any
) -> bytes:
    """A request line as a host sends it (the host client and tests share this)."""
    if dialect is Dialect.QGA:
        message: dict[str, Any] = {"execute": method}
        if params:
            message["arguments"] = params
        message["id"] = request_id
    else:
        message = {"jsonrpc": "2.0", "method": method, "id": request_id}
        if params:
            message["params"] = params
    return json.dumps(message).encode() + b"\n"
