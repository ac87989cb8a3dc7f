"""Request bodies to events: every content mode of the HTTP API, without a server."""

from __future__ import annotations

import base64
import json

import msgspec
import pytest
from multidict import CIMultiDict

from bridge.errors import InvalidEvent
from bridge.event import Event
from bridge.server.errors import ApiError, status_for
from bridge.server.ingest import (
    decode_batch,
    decode_event,
    media_type,
    trace_context,
    with_trace,
)

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def headers(**items: str) -> CIMultiDict[str]:
    return CIMultiDict({k.replace("_", "-"): v for k, v in items.items()})


def dumps(value: object) -> bytes:
    return json.dumps(value).encode()


# --- media types ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, "application/json"),
        ("", "application/json"),
        ("application/json", "application/json"),
        ("Application/JSON; charset=utf-8", "application/json"),
        ("application/x-msgpack", "application/msgpack"),
        ("application/vnd.msgpack", "application/msgpack"),
        ("application/jsonl", "application/x-ndjson"),
        ("application/cloudevents+json; charset=UTF-8", "application/cloudevents+json"),
        ("text/plain", "text/plain"),
    ],
)
def test_media_type(header: str | None, expected: str) -> None:
    assert media_type(header) == expected


# --- single events ----------------------------------------------------------------


def test_plain_json() -> None:
    event = decode_event("application/json", headers(), dumps({"type": "a.b", "data": {"x": 1}}))
    assert (event.type, event.data, event.kind) == ("a.b", {"x": 1}, "notification")


def test_missing_content_type_means_json() -> None:
    assert decode_event(None, headers(), dumps({"type": "a"})).type == "a"


def test_plain_json_all_fields() -> None:
    body = {
        "type": "a",
        "data": [1],
        "id": "e-1",
        "source": "/app",
        "subject": "s",
        "time": "2026-01-02T03:04:05Z",
        "kind": "domain",
        "key": "k",
        "headers": {"x-a": "1"},
    }
    event = decode_event("application/json", headers(), dumps(body))
    assert (event.id, event.source, event.subject, event.kind, event.key) == (
        "e-1",
        "/app",
        "s",
        "domain",
        "k",
    )
    assert event.headers == {"x-a": "1"}


@pytest.mark.parametrize(
    ("body", "code", "field"),
    [
        (b"{", "invalid_json", None),
        (b"", "invalid_json", None),
        (b"[]", "invalid_event", None),
        (b'{"data": 1}', "invalid_event", "type"),
        (b'{"type": ""}', "invalid_event", "type"),
        (b'{"type": 5}', "invalid_event", "type"),
        (b'{"type": "a", "kind": "weird"}', "invalid_event", "kind"),
        (b'{"type": "a", "bogus": 1}', "invalid_event", "bogus"),
        (b'{"type": "a", "time": "yesterday"}', "invalid_event", "time"),
        (b'{"type": "a", "headers": {"bad name": "x"}}', "invalid_event", "headers.bad name"),
    ],
)
def test_plain_json_errors(body: bytes, code: str, field: str | None) -> None:
    with pytest.raises(InvalidEvent) as info:
        decode_event("application/json", headers(), body)
    assert info.value.code == code
    assert info.value.field == field
    assert status_for(info.value) == 400


def test_msgpack() -> None:
    body = msgspec.msgpack.encode({"type": "a", "data": {"n": 1}, "key": "k"})
    event = decode_event("application/msgpack", headers(), body)
    assert (event.type, event.data, event.key) == ("a", {"n": 1}, "k")


def test_msgpack_malformed() -> None:
    with pytest.raises(InvalidEvent) as info:
        decode_event("application/msgpack", headers(), b"\xc1")
    assert info.value.code == "invalid_msgpack"


def test_structured_cloudevent() -> None:
    body = {
        "specversion": "1.0",
        "id": "ce-1",
        "source": "/src",
        "type": "a.b",
        "data": {"x": 1},
        "kind": "domain",
        "partitionkey": "pk",
        "tenant": "acme",
    }
    event = decode_event("application/cloudevents+json", headers(), dumps(body))
    assert (event.id, event.source, event.kind, event.key) == ("ce-1", "/src", "domain", "pk")
    assert event.extensions == {"tenant": "acme"}
    assert event.headers == {}


def test_structured_data_base64() -> None:
    body = {
        "specversion": "1.0",
        "id": "1",
        "source": "/s",
        "type": "t",
        "data_base64": base64.b64encode(b"\x00\xff").decode(),
    }
    assert decode_event("application/cloudevents+json", headers(), dumps(body)).data == b"\x00\xff"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"specversion": "1.0", "id": "1", "type": "t"}, "source"),
        ({"specversion": "0.3", "id": "1", "source": "/s", "type": "t"}, "specversion"),
        ({"specversion": "1.0", "id": "1", "source": "/s", "type": "t", "ext": {"a": 1}}, "ext"),
    ],
)
def test_structured_errors(body: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidEvent) as info:
        decode_event("application/cloudevents+json", headers(), dumps(body))
    assert info.value.field == field


def test_structured_malformed_json() -> None:
    with pytest.raises(InvalidEvent) as info:
        decode_event("application/cloudevents+json", headers(), b"{nope")
    assert info.value.code == "invalid_json"


BINARY = {"ce_specversion": "1.0", "ce_id": "b-1", "ce_source": "/src", "ce_type": "a.b"}


def test_binary_json_data() -> None:
    event = decode_event(
        "application/json",
        headers(
            **BINARY, ce_subject="sub", ce_partitionkey="pk", ce_kind="domain", ce_tenant="acme"
        ),
        dumps({"x": 1}),
    )
    assert (event.id, event.type, event.source, event.subject) == ("b-1", "a.b", "/src", "sub")
    assert (event.key, event.kind, event.data) == ("pk", "domain", {"x": 1})
    assert event.extensions == {"tenant": "acme"}
    assert event.headers == {}
    assert event.datacontenttype == "application/json"


def test_binary_opaque_data_stays_bytes() -> None:
    event = decode_event("application/octet-stream", headers(**BINARY), bytes(range(256)))
    assert event.data == bytes(range(256))
    assert event.datacontenttype == "application/octet-stream"


def test_binary_text_keeps_content_type_with_parameters() -> None:
    event = decode_event("text/plain; charset=utf-8", headers(**BINARY), b"hello")
    assert event.data == b"hello"
    assert event.datacontenttype == "text/plain; charset=utf-8"


def test_binary_empty_body_is_no_data() -> None:
    event = decode_event(None, headers(**BINARY), b"")
    assert event.data is None


def test_binary_percent_decoding_and_ttl() -> None:
    event = decode_event(
        "application/json",
        headers(**{**BINARY, "ce_subject": "caf%C3%A9 %25"}, ce_ttl="1500"),
        b"1",
    )
    assert event.subject == "café %"
    assert event.ttl_ms == 1500


@pytest.mark.parametrize(
    ("extra", "drop", "field"),
    [
        ({}, "ce_source", "source"),
        ({}, "ce_id", "id"),
        ({"ce_ttl": "soon"}, None, "ttl_ms"),
        ({"ce_specversion": "0.3"}, None, "specversion"),
        ({"ce_datacontenttype": "text/plain"}, None, "datacontenttype"),
        ({"ce_subject": "%FF"}, None, "subject"),
    ],
)
def test_binary_errors(extra: dict[str, str], drop: str | None, field: str) -> None:
    items = {**BINARY, **extra}
    if drop:
        del items[drop]
    with pytest.raises(InvalidEvent) as info:
        decode_event("application/json", headers(**items), b"{}")
    assert info.value.field == field


def test_binary_malformed_json_data() -> None:
    with pytest.raises(InvalidEvent) as info:
        decode_event("application/json", headers(**BINARY), b"{")
    assert (info.value.code, info.value.field) == ("invalid_json", "data")


@pytest.mark.parametrize("content_type", ["text/plain", "application/xml", "multipart/form-data"])
def test_unsupported_content_type(content_type: str) -> None:
    with pytest.raises(ApiError) as info:
        decode_event(content_type, headers(), b"{}")
    assert (info.value.status, info.value.code) == (415, "unsupported_media_type")


@pytest.mark.parametrize(
    "content_type", ["application/x-ndjson", "application/cloudevents-batch+json"]
)
def test_batch_types_on_single_endpoint(content_type: str) -> None:
    with pytest.raises(ApiError) as info:
        decode_event(content_type, headers(), b"[]")
    assert info.value.status == 415
    assert "/v1/events/batch" in info.value.message


# --- trace context ----------------------------------------------------------------


def test_traceparent_goes_into_headers() -> None:
    event = decode_event(
        "application/json", headers(traceparent=TRACEPARENT, tracestate="a=1"), dumps({"type": "a"})
    )
    assert event.headers == {"traceparent": TRACEPARENT, "tracestate": "a=1"}


def test_event_headers_win_over_request_trace() -> None:
    own = "00-11111111111111111111111111111111-2222222222222222-00"
    body = dumps({"type": "a", "headers": {"traceparent": own, "x": "y"}})
    event = decode_event("application/json", headers(traceparent=TRACEPARENT), body)
    assert event.headers == {"traceparent": own, "x": "y"}


@pytest.mark.parametrize(
    "value",
    [
        "garbage",
        "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
        "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
    ],
)
def test_invalid_traceparent_is_ignored(value: str) -> None:
    assert trace_context(headers(traceparent=value, tracestate="a=1")) is None


def test_oversized_tracestate_is_dropped() -> None:
    found = trace_context(headers(traceparent=TRACEPARENT, tracestate="a=" + "x" * 600))
    assert found == {"traceparent": TRACEPARENT}


def test_with_trace_without_context_is_identity() -> None:
    event = Event(type="a")
    assert with_trace(event, None) is event


def test_binary_mode_gets_trace_context() -> None:
    event = decode_event("application/json", headers(**BINARY, traceparent=TRACEPARENT), b"{}")
    assert event.headers["traceparent"] == TRACEPARENT


# --- batches ----------------------------------------------------------------------


def test_json_array_batch_keeps_bad_items_in_place() -> None:
    body = b'[{"type": "a"}, {"data": 1}, 7, {"type": "b", "kind": "domain"}]'
    items = decode_batch("application/json", headers(), body, max_items=10)
    assert [type(i).__name__ for i in items] == ["Event", "InvalidEvent", "InvalidEvent", "Event"]
    assert isinstance(items[1], InvalidEvent)
    assert items[1].field == "type"
    assert isinstance(items[3], Event)
    assert items[3].kind == "domain"


def test_ndjson_batch_skips_blank_lines_and_isolates_bad_lines() -> None:
    body = b'{"type": "a"}\r\n\n{"type": \n   \n{"type": "c"}'
    items = decode_batch("application/x-ndjson", headers(), body, max_items=10)
    assert len(items) == 3
    assert isinstance(items[0], Event)
    assert isinstance(items[2], Event)
    assert isinstance(items[1], InvalidEvent)
    assert items[1].code == "invalid_json"


def test_ndjson_batch_is_one_event_per_line() -> None:
    # Two events on a line, and one event across two lines, are refused line by line:
    # the whole-body decoder must not read them as whitespace-separated values.
    body = b'{"type": "a"} {"type": "b"}\n{"type":\n"c"}\n{"type": "d"}\n'
    items = decode_batch("application/x-ndjson", headers(), body, max_items=10)
    assert [type(i).__name__ for i in items] == ["InvalidEvent"] * 3 + ["Event"]
    assert isinstance(items[3], Event)
    assert items[3].type == "d"


def test_a_batch_is_stamped_with_one_time_and_distinct_ids() -> None:
    lines = [dumps({"type": "t"}) for _ in range(4)] + [
        dumps({"type": "t", "time": "2026-01-01T00:00:00Z"})
    ]
    for content_type, body in (
        ("application/x-ndjson", b"\n".join(lines)),
        ("application/json", b"[" + b",".join(lines) + b"]"),
        ("application/x-ndjson", b"\n".join([*lines, b"{"])),  # the per-item path
    ):
        events = [
            e
            for e in decode_batch(content_type, headers(), body, max_items=9)
            if isinstance(e, Event)
        ]
        assert len(events) == 5
        assert len({e.time for e in events[:4]}) == 1
        assert events[4].time == "2026-01-01T00:00:00Z"
        assert len({e.id for e in events}) == 5
    again = decode_batch("application/x-ndjson", headers(), lines[0], max_items=9)[0]
    assert isinstance(again, Event)
    assert again.time != events[0].time


def test_valid_batches_decode_whole_and_keep_the_limit() -> None:
    lines = [dumps({"type": f"t{i}", "data": {"i": i}}) for i in range(5)]
    ndjson = decode_batch("application/x-ndjson", headers(), b"\n".join(lines), max_items=5)
    array = decode_batch("application/json", headers(), b"[" + b",".join(lines) + b"]", max_items=5)
    assert [e.type for e in ndjson if isinstance(e, Event)] == [f"t{i}" for i in range(5)]
    assert [e.data for e in array if isinstance(e, Event)] == [{"i": i} for i in range(5)]
    for content_type, body in (
        ("application/x-ndjson", b"\n".join(lines)),
        ("application/json", b"[" + b",".join(lines) + b"]"),
    ):
        with pytest.raises(ApiError) as info:
            decode_batch(content_type, headers(), body, max_items=4)
        assert info.value.status == 413


def test_cloudevents_batch() -> None:
    good = {"specversion": "1.0", "id": "1", "source": "/s", "type": "t", "partitionkey": "k"}
    body = dumps([good, {"specversion": "1.0", "id": "2", "type": "t"}])
    items = decode_batch("application/cloudevents-batch+json", headers(), body, max_items=10)
    assert isinstance(items[0], Event)
    assert items[0].key == "k"
    assert isinstance(items[1], InvalidEvent)
    assert items[1].field == "source"


def test_msgpack_batch() -> None:
    body = msgspec.msgpack.encode([{"type": "a"}, {"nope": 1}])
    items = decode_batch("application/msgpack", headers(), body, max_items=10)
    assert isinstance(items[0], Event)
    assert isinstance(items[1], InvalidEvent)


def test_batch_gets_trace_context() -> None:
    items = decode_batch(
        "application/json", headers(traceparent=TRACEPARENT), b'[{"type": "a"}]', max_items=10
    )
    assert isinstance(items[0], Event)
    assert items[0].headers == {"traceparent": TRACEPARENT}


def test_empty_batch() -> None:
    assert decode_batch("application/json", headers(), b"[]", max_items=10) == []
    assert decode_batch("application/x-ndjson", headers(), b"", max_items=10) == []


@pytest.mark.parametrize(
    ("content_type", "body", "status", "code"),
    [
        ("application/json", b'{"type": "a"}', 400, "invalid_batch"),
        ("application/json", b"[{", 400, "invalid_json"),
        ("application/msgpack", b"\xc1", 400, "invalid_msgpack"),
        ("application/msgpack", msgspec.msgpack.encode({"a": 1}), 400, "invalid_batch"),
        ("application/cloudevents+json", b"[]", 415, "unsupported_media_type"),
        ("text/csv", b"a,b", 415, "unsupported_media_type"),
        (
            "application/json",
            b"[" + b",".join([b'{"type": "a"}'] * 4) + b"]",
            413,
            "batch_too_large",
        ),
        ("application/x-ndjson", b'{"type": "a"}\n' * 4, 413, "batch_too_large"),
    ],
)
def test_batch_errors(content_type: str, body: bytes, status: int, code: str) -> None:
    with pytest.raises(ApiError) as info:
        decode_batch(content_type, headers(), body, max_items=3)
    assert (info.value.status, info.value.code) == (status, code)


# --- status mapping ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "retriable", "status"),
    [
        ("no_route", False, 422),
        ("invalid_event", False, 400),
        ("template_error", False, 400),
        ("sink_unavailable", True, 503),
        ("kafka_timeout", True, 503),
        ("sink_rejected", False, 502),
        ("message_too_large", False, 502),
        ("overloaded", True, 429),
    ],
)
def test_status_for(code: str, retriable: bool, status: int) -> None:
    from bridge.results import ErrorInfo

    assert status_for(ErrorInfo(code, "m", None, retriable)) == status
