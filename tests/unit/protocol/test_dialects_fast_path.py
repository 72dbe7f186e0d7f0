"""The fast classification of well-formed requests answers exactly as the rule-by-rule checks."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from pyqga.protocol.dialects import (
    Dialect,
    Invalid,
    Request,
    _classify_jsonrpc,
    _jsonrpc_checked,
    _qga_error,
    classify,
)

VALUES = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=5),
                   st.just("2.0"), st.just("guest-ping"), st.just({}), st.just([]), st.just({"id": 1}))
KEYS = st.sampled_from(["jsonrpc", "method", "params", "id", "execute", "arguments", "other"])
OBJECTS = st.dictionaries(KEYS, VALUES, max_size=5)


@given(OBJECTS)
def test_jsonrpc_fast_path_matches_every_rule(item: dict[str, Any]) -> None:
    assert _classify_jsonrpc(item) == _jsonrpc_checked(item)


@given(OBJECTS)
def test_qga_fast_path_only_takes_well_formed_requests(obj: dict[str, Any]) -> None:
    if "jsonrpc" in obj or ("method" in obj and "execute" not in obj):
        return  # JSON-RPC: the test above
    item = classify(obj)
    well_formed = (isinstance(obj.get("execute"), str) and isinstance(obj.get("arguments", {}), dict)
                   and set(obj) <= {"execute", "arguments", "id"})
    if well_formed:
        expected = Request(Dialect.QGA, obj["execute"], obj.get("arguments", {}), obj.get("id"), "id" in obj)
        assert item == expected
    else:
        assert isinstance(item, Invalid) and item == _qga_error(obj)
