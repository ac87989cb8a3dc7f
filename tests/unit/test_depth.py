"""The nesting-depth pre-check (`bridge.server.depth`) against a reference depth, for
random JSON and msgpack values, including strings full of brackets, quotes and escapes."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.errors import InvalidEvent
from bridge.server.depth import check_json, check_msgpack, split_json_array, split_msgpack_array

LIMIT = 4
tricky_text = st.text(alphabet='[]{}"\\,:ab\n', max_size=12)
values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | tricky_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(tricky_text, inner, max_size=3),
    max_leaves=30,
)


def depth(value: Any) -> int:
    """Arrays/objects around the deepest value (a scalar is 0, ``[]`` is 1)."""
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    return 0


@settings(max_examples=400)
@given(data=values)
def test_json_check_matches_the_reference_depth(data: Any) -> None:
    body = json.dumps({"type": "t", "data": data}).encode()
    if depth(data) <= LIMIT:
        check_json(body, LIMIT)
    else:
        with pytest.raises(InvalidEvent) as caught:
            check_json(body, LIMIT)
        assert (caught.value.code, caught.value.field) == ("too_deep", "data")


@settings(max_examples=400)
@given(data=values)
def test_msgpack_check_matches_the_reference_depth(data: Any) -> None:
    body = msgspec.msgpack.encode({"type": "t", "data": data})
    if depth(data) <= LIMIT:
        check_msgpack(body, LIMIT)
    else:
        with pytest.raises(InvalidEvent) as caught:
            check_msgpack(body, LIMIT)
        assert (caught.value.code, caught.value.field) == ("too_deep", "data")


@settings(max_examples=200)
@given(items=st.lists(values, min_size=1, max_size=5))
def test_batch_split_refuses_exactly_the_deep_items(items: list[Any]) -> None:
    events = [{"type": "t", "data": data} for data in items]
    deep = [depth(data) > LIMIT for data in items]
    for body, split in (
        (json.dumps(events).encode(), split_json_array),
        (msgspec.msgpack.encode(events), split_msgpack_array),
    ):
        result = split(body, LIMIT)
        if not any(deep):
            assert result is None
            continue
        assert result is not None
        assert [isinstance(item, InvalidEvent) for item in result] == deep
        for item, event in zip(result, events, strict=True):
            if not isinstance(item, InvalidEvent):
                decode = json.loads if split is split_json_array else msgspec.msgpack.decode
                assert decode(item) == event


def test_binary_mode_data_is_checked_from_its_top() -> None:
    check_json(b"[[[[1]]]]", LIMIT, field="data", outer=0)
    with pytest.raises(InvalidEvent, match="in data"):
        check_json(b"[[[[[1]]]]]", LIMIT, field="data", outer=0)
