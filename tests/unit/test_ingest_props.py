"""Property tests: no body, header set or content type makes ingest fail other than cleanly.

Whatever the input, decoding either yields events or raises `InvalidEvent` /
`ApiError` with a 4xx status, and batch items come back one per input item.
"""

from __future__ import annotations

import json

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from bridge.errors import InvalidEvent
from bridge.event import Event
from bridge.server.errors import ApiError, status_for
from bridge.server.ingest import decode_batch, decode_event

CONTENT_TYPES = st.one_of(
    st.none(),
    st.sampled_from(
        [
            "application/json",
            "application/cloudevents+json",
            "application/cloudevents-batch+json",
            "application/x-ndjson",
            "application/msgpack",
            "text/plain",
            "application/octet-stream",
            "application/json; charset=latin-1",
        ]
    ),
    st.text(max_size=40),
)
INTS = st.integers(min_value=-(2**63), max_value=2**63 - 1)  # what msgpack can carry
SCALARS = st.none() | st.booleans() | INTS | st.floats(allow_nan=False, allow_infinity=False)
JSON_VALUES = st.recursive(
    SCALARS | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
EVENTISH = st.fixed_dictionaries(
    {},
    optional={
        "type": st.one_of(st.text(max_size=30), JSON_VALUES),
        "data": JSON_VALUES,
        "id": st.one_of(st.text(max_size=10), INTS),
        "source": st.text(max_size=10),
        "specversion": st.sampled_from(["1.0", "0.3", ""]),
        "time": st.one_of(st.text(max_size=30), st.just("2026-01-01T00:00:00Z")),
        "kind": st.one_of(st.sampled_from(["notification", "domain"]), st.text(max_size=8)),
        "key": JSON_VALUES,
        "headers": st.one_of(
            st.dictionaries(st.text(max_size=12), st.text(max_size=12), max_size=3), JSON_VALUES
        ),
        "ttl_ms": JSON_VALUES,
        "partitionkey": st.text(max_size=5),
        "data_base64": st.text(max_size=12),
    },
)
BODIES = st.one_of(
    st.binary(max_size=300),
    EVENTISH.map(lambda d: json.dumps(d).encode()),
    st.lists(EVENTISH, max_size=5).map(lambda d: json.dumps(d).encode()),
    st.lists(EVENTISH, max_size=5).map(lambda d: b"\n".join(json.dumps(x).encode() for x in d)),
    EVENTISH.map(msgspec.msgpack.encode),
)
HEADER_NAMES = st.sampled_from(
    [
        "ce-specversion",
        "ce-id",
        "ce-type",
        "ce-source",
        "ce-ttl",
        "ce-kind",
        "ce-x",
        "ce-",
        "traceparent",
        "tracestate",
    ]
)
HEADERS = st.dictionaries(HEADER_NAMES, st.text(max_size=40), max_size=6)


def _check_error(exc: Exception) -> None:
    if isinstance(exc, ApiError):
        assert 400 <= exc.status < 500
    else:
        assert isinstance(exc, InvalidEvent)
        assert 400 <= status_for(exc) < 500
        assert exc.code in ("invalid_event", "invalid_json", "invalid_msgpack")


@settings(max_examples=200, deadline=None)
@given(content_type=CONTENT_TYPES, headers=HEADERS, body=BODIES)
def test_decode_event_fails_only_cleanly(
    content_type: str | None, headers: dict[str, str], body: bytes
) -> None:
    try:
        event = decode_event(content_type, CIMultiDict(headers), body)
    except (InvalidEvent, ApiError) as exc:
        _check_error(exc)
    else:
        assert isinstance(event, Event)
        assert event.type


@settings(max_examples=200, deadline=None)
@given(content_type=CONTENT_TYPES, headers=HEADERS, body=BODIES)
def test_decode_batch_fails_only_cleanly(
    content_type: str | None, headers: dict[str, str], body: bytes
) -> None:
    try:
        items = decode_batch(content_type, CIMultiDict(headers), body, max_items=100)
    except ApiError as exc:
        _check_error(exc)
    else:
        for item in items:
            if isinstance(item, InvalidEvent):
                _check_error(item)
            else:
                assert isinstance(item, Event)


@settings(max_examples=100, deadline=None)
@given(events=st.lists(EVENTISH, max_size=8))
def test_batch_items_match_input_items(events: list[dict[str, object]]) -> None:
    body = json.dumps(events).encode()
    items = decode_batch("application/json", CIMultiDict(), body, max_items=100)
    assert len(items) == len(events)
    ndjson = b"\n".join(json.dumps(e).encode() for e in events)
    assert len(decode_batch("application/x-ndjson", CIMultiDict(), ndjson, max_items=100)) == len(
        events
    )
