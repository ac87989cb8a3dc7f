"""Hypothesis on the event decoders, in process.

Guarantees:

- whatever bytes, objects or headers they get, the decoders (`decode_json`,
  `decode_msgpack`, `from_structured`, CloudEvents binary mode, batch
  splitting) return events or raise a `BridgeError` subclass: `InvalidEvent`
  for an event, `ApiError` with a 4xx status for a whole request; never
  another exception;
- a value that is wrong for exactly one attribute is refused with ``field``
  naming that attribute;
- valid events survive every codec unchanged: plain JSON, msgpack, CloudEvents
  structured (single and batch), CloudEvents binary mode and NDJSON.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from urllib.parse import quote

import msgspec
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from bridge.errors import BridgeError, InvalidEvent
from bridge.event import (
    MAX_ATTR_LEN,
    MAX_TYPE_LEN,
    Event,
    decode_json,
    decode_msgpack,
    from_structured,
    to_plain,
    to_structured,
)
from bridge.server.errors import ApiError, status_for
from bridge.server.ingest import decode_batch, decode_binary, decode_event

#: Examples per property: ``make fuzz`` raises it with ``EVBRIDGE_FUZZ_EXAMPLES``.
EXAMPLES = int(os.environ.get("EVBRIDGE_FUZZ_EXAMPLES") or 100)

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
ROUND_TRIP = settings(FUZZ, max_examples=max(EXAMPLES // 2, 1))

BATCH_TYPES = [
    "application/json",
    "application/x-ndjson",
    "application/cloudevents-batch+json",
    "application/msgpack",
]
CONTENT_TYPES = st.one_of(
    st.none(),
    st.sampled_from(
        [
            *BATCH_TYPES,
            "application/cloudevents+json",
            "application/json; charset=utf-8",
            "text/plain",
            "application/octet-stream",
            "application/vnd.foo+json",
            "application/x-msgpack",
            "",
            ";",
        ]
    ),
    st.text(max_size=30),
)

# --- arbitrary values ------------------------------------------------------------------

INT64 = st.integers(-(2**63), 2**64 - 1)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),  # beyond 64 bits too: JSON has no limit
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
ATTRS = [
    "type",
    "data",
    "id",
    "source",
    "specversion",
    "time",
    "subject",
    "datacontenttype",
    "kind",
    "key",
    "headers",
    "correlation_id",
    "ttl_ms",
    # CloudEvents names and things that are not attributes at all
    "partitionkey",
    "correlationid",
    "ttl",
    "data_base64",
    "traceparent",
    "x",
]
EVENTISH = st.dictionaries(
    st.sampled_from(ATTRS) | st.text(max_size=8),
    JSON_VALUES | st.sampled_from(["a.b", "1.0", "domain", "2026-01-01T00:00:00Z", "AQI="]),
    max_size=8,
)
# Python objects JSON cannot even express: decoders called from Python may get them.
ODD_OBJECTS = st.recursive(
    SCALARS | st.binary(max_size=8) | st.builds(object) | st.tuples(st.integers()),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.integers() | st.text(max_size=4) | st.none(), children, max_size=3)
    ),
    max_leaves=8,
)
BODIES = st.one_of(
    st.binary(max_size=300),
    EVENTISH.map(lambda d: json.dumps(d).encode()),
    st.lists(EVENTISH, max_size=4).map(lambda d: json.dumps(d).encode()),
    st.lists(EVENTISH, max_size=4).map(lambda d: b"\n".join(json.dumps(x).encode() for x in d)),
    EVENTISH.map(lambda d: msgspec.msgpack.encode(_msgpackable(d))),
    st.lists(EVENTISH, max_size=4).map(lambda d: msgspec.msgpack.encode(_msgpackable(d))),
)

HEADER_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=30)
CE_HEADERS = st.dictionaries(
    st.sampled_from(
        [
            "ce-specversion",
            "ce-id",
            "ce-source",
            "ce-type",
            "ce-time",
            "ce-subject",
            "ce-kind",
            "ce-partitionkey",
            "ce-correlationid",
            "ce-ttl",
            "ce-datacontenttype",
            "ce-",
            "CE-Type",
            "traceparent",
            "tracestate",
        ]
    )
    | st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=12).map(
        lambda n: f"ce-{n}"
    ),
    HEADER_TEXT
    | st.sampled_from(
        ["1.0", "%", "%zz", "%C3%A9", "%FF", "%0A", "00-" + "a" * 32 + "-" + "b" * 16]
    )
    | INT64.map(str),
    max_size=8,
)


def _msgpackable(value: Any) -> Any:
    """``value`` with integers msgpack cannot carry replaced by strings."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**64 else str(value)
    if isinstance(value, list):
        return [_msgpackable(v) for v in value]
    if isinstance(value, dict):
        return {k: _msgpackable(v) for k, v in value.items()}
    return value


def _assert_clean(exc: BaseException) -> None:
    """A refusal the API can answer with a 4xx JSON error."""
    assert isinstance(exc, BridgeError), repr(exc)
    assert exc.code
    assert exc.message
    assert exc.field is None or isinstance(exc.field, str)
    status = exc.status if isinstance(exc, ApiError) else status_for(exc)
    assert 400 <= status < 500, (status, exc.code)


def _decodes_or_refuses(decode: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return decode(*args, **kwargs)
    except BridgeError as exc:
        _assert_clean(exc)
        return exc


# --- arbitrary input: BridgeError or an event, never anything else ----------------------


@FUZZ
@given(body=BODIES)
def test_decode_json_and_msgpack_refuse_cleanly(body: bytes) -> None:
    for decode in (decode_json, decode_msgpack):
        result = _decodes_or_refuses(decode, body)
        assert isinstance(result, Event | InvalidEvent)


@FUZZ
@given(
    obj=EVENTISH | JSON_VALUES | ODD_OBJECTS,
    extra=st.none() | st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2),
)
def test_from_structured_refuses_cleanly(obj: Any, extra: dict[str, str] | None) -> None:
    result = _decodes_or_refuses(from_structured, obj, headers=extra)
    if isinstance(result, Event):
        assert isinstance(obj, dict)
        for name in ("id", "source", "type", "specversion"):
            assert obj.get(name) is not None, name


@FUZZ
@given(content_type=CONTENT_TYPES, headers=CE_HEADERS, body=BODIES)
def test_binary_mode_refuses_cleanly(
    content_type: str | None, headers: dict[str, str], body: bytes
) -> None:
    result = _decodes_or_refuses(decode_binary, content_type, CIMultiDict(headers), body)
    assert isinstance(result, Event | InvalidEvent)


@FUZZ
@given(content_type=CONTENT_TYPES, headers=CE_HEADERS, body=BODIES)
def test_decode_event_refuses_cleanly(
    content_type: str | None, headers: dict[str, str], body: bytes
) -> None:
    result = _decodes_or_refuses(decode_event, content_type, CIMultiDict(headers), body)
    assert isinstance(result, Event | BridgeError)


@FUZZ
@given(
    content_type=CONTENT_TYPES,
    headers=CE_HEADERS,
    body=BODIES,
    max_items=st.integers(1, 10),
)
def test_decode_batch_refuses_cleanly(
    content_type: str | None, headers: dict[str, str], body: bytes, max_items: int
) -> None:
    result = _decodes_or_refuses(
        decode_batch, content_type, CIMultiDict(headers), body, max_items=max_items
    )
    if isinstance(result, BridgeError):
        assert isinstance(result, ApiError), "a batch fails as a whole only with an ApiError"
        return
    assert len(result) <= max_items
    for item in result:
        if isinstance(item, InvalidEvent):
            _assert_clean(item)
        else:
            assert isinstance(item, Event)


# --- structured but wrong: refused, naming the field --------------------------------------

PRINTABLE = st.characters(categories=("L", "M", "N", "P", "S"))
TEXT_1024 = st.text(PRINTABLE, min_size=1, max_size=40)
OFFSETS = st.integers(-23 * 60, 23 * 60).map(lambda m: timezone(timedelta(minutes=m)))
TIMES = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=OFFSETS | st.just(UTC)
).map(lambda t: t.isoformat())
HEADER_NAMES = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,20}", fullmatch=True)
JSON_DATA = st.recursive(
    st.none()
    | st.booleans()
    | INT64
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)


EXTENSION_RESERVED = {
    "id",
    "source",
    "type",
    "specversion",
    "time",
    "subject",
    "datacontenttype",
    "dataschema",
    "kind",
    "partitionkey",
    "correlationid",
    "ttl",
    "data",
    "data_base64",
}
EXTENSION_NAMES = st.from_regex(r"[a-z0-9]{1,12}", fullmatch=True).filter(
    lambda n: n not in EXTENSION_RESERVED
)
EXTENSION_TEXT = st.text(PRINTABLE, max_size=20)
EXTENSION_VALUES = EXTENSION_TEXT | st.booleans() | st.integers(-(2**31), 2**31 - 1)


@st.composite
def valid_events(
    draw: st.DrawFn, *, transport_headers: bool = True, text_extensions: bool = False
) -> Event:
    """Events every codec must carry unchanged (``data`` is JSON; ``source`` is set,
    as the bus sets it before anything is encoded). ``text_extensions``: extension
    values are strings only (binary mode carries no types)."""
    fields: dict[str, Any] = {
        "type": draw(st.text(PRINTABLE, min_size=1, max_size=30)),
        "source": draw(TEXT_1024),
        "time": draw(TIMES),
        "data": draw(JSON_DATA),
        "kind": draw(st.sampled_from(["notification", "domain"])),
    }
    # Always an id: the default factory draws from `random`, which strategies must not.
    fields["id"] = draw(TEXT_1024 | st.uuids().map(str))
    for name in ("subject", "key", "correlation_id"):
        if draw(st.booleans()):
            fields[name] = draw(TEXT_1024)
    if draw(st.booleans()):
        fields["ttl_ms"] = draw(st.integers(1, 2**63 - 1))
    if transport_headers:
        headers = draw(st.dictionaries(HEADER_NAMES, st.text(PRINTABLE, max_size=20), max_size=3))
        if headers:
            fields["headers"] = headers
    values = EXTENSION_TEXT if text_extensions else EXTENSION_VALUES
    extensions = draw(st.dictionaries(EXTENSION_NAMES, values, max_size=3))
    if extensions:
        fields["extensions"] = extensions
    if draw(st.booleans()):
        fields["dataschema"] = "urn:schema:" + draw(st.text(PRINTABLE, max_size=10))
    if draw(st.booleans()):
        fields["datacontenttype"] = draw(st.sampled_from([None, "application/vnd.x+json"]))
    return Event(**fields)


WRONG_TEXT = st.one_of(
    st.integers(),
    st.booleans(),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.just(""),
    st.text(st.characters(categories=["Cc"]), min_size=1, max_size=5),
)
WRONG: dict[str, st.SearchStrategy[Any]] = {
    "type": WRONG_TEXT | st.none() | st.just("t" * (MAX_TYPE_LEN + 1)),
    "id": WRONG_TEXT | st.none() | st.just("i" * (MAX_ATTR_LEN + 1)),
    "source": WRONG_TEXT | st.just("s" * (MAX_ATTR_LEN + 1)),
    "subject": WRONG_TEXT,
    "key": WRONG_TEXT,
    "correlation_id": WRONG_TEXT,
    "datacontenttype": WRONG_TEXT,  # null is valid: unset
    "dataschema": WRONG_TEXT | st.sampled_from(["relative/ref", "//host/x"]),
    "extensions": st.one_of(
        st.lists(st.text(max_size=3), max_size=2),
        st.text(max_size=3),
        st.dictionaries(
            st.sampled_from(["My-Ext", "a_b", "É", "", "a" * 65]), st.just("v"), min_size=1
        ),
        st.dictionaries(st.sampled_from(sorted(EXTENSION_RESERVED)), st.just("v"), min_size=1),
        st.dictionaries(
            EXTENSION_NAMES,
            st.floats() | st.none() | st.integers(min_value=2**31) | st.just("a\nb"),
            min_size=1,
            max_size=1,
        ),
    ),
    "specversion": WRONG_TEXT | st.sampled_from(["0.3", "1", "1.0 "]) | st.none(),
    "kind": WRONG_TEXT | st.sampled_from(["Domain", "notify"]) | st.none(),
    "time": WRONG_TEXT
    | st.none()
    | st.sampled_from(
        [
            "2026-01-01",
            "2026-01-01T00:00:00",
            "12:00:00Z",
            "2026-13-01T00:00:00Z",
            "20261122T072500Z",
            "2026-W47-7T07:25:00Z",
            "2026-11-22T07Z",
        ]
    ),
    "ttl_ms": st.one_of(
        st.integers(max_value=0),
        st.integers(min_value=2**63),
        st.floats(),
        st.text(max_size=3),
        st.booleans(),
    ),
    "headers": st.one_of(
        st.lists(st.text(max_size=3), max_size=2),
        st.text(max_size=3),
        st.integers(),
        st.dictionaries(st.just("bad name"), st.text(max_size=3), min_size=1),
        st.dictionaries(HEADER_NAMES, st.integers() | st.none(), min_size=1, max_size=2),
        st.dictionaries(HEADER_NAMES, st.just("line\nbreak"), min_size=1, max_size=1),
        st.dictionaries(HEADER_NAMES, st.just("v" * 8193), min_size=1, max_size=1),
        st.just({"h" * 300: "v"}),
    ),
}


@FUZZ
@given(event=valid_events(), data=st.data())
def test_one_wrong_attribute_is_named(event: Event, data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(sorted(WRONG)), label="attribute")
    wrong = data.draw(WRONG[name], label="value")
    plain = to_plain(event)
    plain[name] = wrong
    try:
        encoded = json.dumps(plain, allow_nan=False).encode()
    except ValueError:
        assume(False)  # a float JSON cannot carry (nan/inf) tests nothing here
    with pytest.raises(InvalidEvent) as info:
        decode_json(encoded)
    _assert_clean(info.value)
    field = info.value.field or ""
    assert field == name or field.startswith((f"{name}.", f"{name}[")), (
        name,
        wrong,
        info.value.message,
        field,
    )


# --- valid events survive every codec -------------------------------------------------


@ROUND_TRIP
@given(event=valid_events())
def test_plain_json_and_msgpack_round_trip(event: Event) -> None:
    assert decode_json(msgspec.json.encode(to_plain(event))) == event
    assert decode_json(msgspec.json.encode(event)) == event
    assert decode_msgpack(msgspec.msgpack.encode(event)) == event


@ROUND_TRIP
@given(event=valid_events())
def test_structured_round_trip(event: Event) -> None:
    structured = to_structured(event)
    # ``kind`` is the bridge's own and is not written as a CloudEvents attribute.
    assert "kind" not in structured
    expected = msgspec.structs.replace(event, kind="notification")
    # Bridge headers travel beside the structured body (as broker headers).
    assert from_structured(structured, headers=dict(event.headers)) == expected
    body = msgspec.json.encode(structured)
    decoded = decode_event("application/cloudevents+json", CIMultiDict(), body)
    assert msgspec.structs.replace(decoded, headers=event.headers) == expected


@ROUND_TRIP
@given(event=valid_events(transport_headers=False))
def test_structured_extensions_round_trip(event: Event) -> None:
    # Extensions are top-level members of the JSON format, and come back as extensions.
    structured = to_structured(event)
    for name, value in event.extensions.items():
        assert structured[name] == value
    assert from_structured(structured) == msgspec.structs.replace(event, kind="notification")


def binary_headers(event: Event) -> CIMultiDict[str]:
    """The ``ce-*`` headers of ``event`` in CloudEvents binary mode (percent-encoded)."""
    headers: CIMultiDict[str] = CIMultiDict(
        {
            "ce-specversion": event.specversion,
            "ce-id": quote(event.id, safe=""),
            "ce-source": quote(event.source or "", safe=""),
            "ce-type": quote(event.type, safe=""),
            "ce-time": quote(event.time, safe=""),
            "ce-kind": event.kind,
        }
    )
    for attr, ce in (
        ("subject", "subject"),
        ("key", "partitionkey"),
        ("correlation_id", "correlationid"),
    ):
        value = getattr(event, attr)
        if value is not None:
            headers[f"ce-{ce}"] = quote(value, safe="")
    if event.ttl_ms is not None:
        headers["ce-ttl"] = str(event.ttl_ms)
    if event.dataschema is not None:
        headers["ce-dataschema"] = quote(event.dataschema, safe="")
    for name, value in event.extensions.items():
        headers[f"ce-{name}"] = quote(str(value), safe="")
    return headers


#: One corruption of binary-mode headers → the field the refusal must name.
BINARY_CORRUPTIONS: list[tuple[str, str | None, str]] = [
    ("ce-id", None, "id"),
    ("ce-source", None, "source"),
    ("ce-type", None, "type"),
    ("ce-specversion", None, "specversion"),
    ("ce-specversion", "0.3", "specversion"),
    ("ce-id", "%FF", "id"),
    ("ce-id", "%0A", "id"),
    ("ce-type", "", "type"),
    ("ce-ttl", "soon", "ttl_ms"),
    ("ce-ttl", "0", "ttl_ms"),
    ("ce-ttl", str(2**63), "ttl_ms"),
    ("ce-kind", "event", "kind"),
    ("ce-time", "yesterday", "time"),
    ("ce-partitionkey", "%00", "key"),
    ("ce-datacontenttype", "application/json", "datacontenttype"),
    ("ce-x", "%0D%0A", "ce-x"),
    ("ce-bad name", "v", "ce-bad name"),
    ("ce-My-Ext", "v", "ce-My-Ext"),
    ("ce-dataschema", "relative/path", "dataschema"),
    ("ce-time", "20261122T072500Z", "time"),
]


@ROUND_TRIP
@given(
    event=valid_events(transport_headers=False, text_extensions=True),
    corruption=st.sampled_from(BINARY_CORRUPTIONS),
)
def test_binary_mode_names_the_wrong_header(
    event: Event, corruption: tuple[str, str | None, str]
) -> None:
    header, value, field = corruption
    headers = binary_headers(event)
    if value is None:
        headers.popall(header)
    else:
        headers[header] = value
    with pytest.raises(InvalidEvent) as info:
        decode_event("application/json", headers, msgspec.json.encode(event.data))
    _assert_clean(info.value)
    assert info.value.field == field, (corruption, info.value.message)


@ROUND_TRIP
@given(
    event=valid_events(transport_headers=False, text_extensions=True),
    content_type=st.sampled_from(
        ["application/json", "application/vnd.x+json", "text/plain", "application/octet-stream"]
    ),
)
def test_binary_mode_round_trip(event: Event, content_type: str) -> None:
    headers = binary_headers(event)
    body = msgspec.json.encode(event.data)
    # A JSON Content-Type makes the body decoded data; any other keeps it as bytes.
    expected_data: Any = event.data if content_type.endswith("json") else body
    decoded = decode_event(content_type, headers, body)
    expected = msgspec.structs.replace(event, data=expected_data, datacontenttype=content_type)
    assert decoded == expected


@ROUND_TRIP
@given(events=st.lists(valid_events(), max_size=6))
def test_batch_round_trip_in_every_format(events: list[Event]) -> None:
    bodies = {
        "application/json": msgspec.json.encode([to_plain(e) for e in events]),
        "application/x-ndjson": b"\n".join(msgspec.json.encode(to_plain(e)) for e in events),
        "application/cloudevents-batch+json": msgspec.json.encode(
            [to_structured(e) for e in events]
        ),
        "application/msgpack": msgspec.msgpack.encode(events),
    }
    for content_type, body in bodies.items():
        items = decode_batch(content_type, CIMultiDict(), body, max_items=10)
        expected = events
        if content_type == "application/cloudevents-batch+json":
            # Transport headers travel beside a structured event, and kind is the bridge's.
            expected = [msgspec.structs.replace(e, headers={}, kind="notification") for e in events]
        assert items == expected, content_type
