"""CloudEvents attributes end to end without a broker: extensions, dataschema, exact
RFC 3339 ``time``, and a ``datacontenttype`` nobody set (issue 17, items 12-14)."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from multidict import CIMultiDict

from bridge.errors import InvalidEvent
from bridge.event import Event, convert, decode_json, from_structured, to_plain, to_structured
from bridge.server.ingest import decode_event
from bridge.sinks.base import Outgoing
from bridge.sinks.kafka import _Codec
from bridge.sinks.memory import MemoryRoute
from bridge.sinks.rabbitmq import amqp_properties, structured_body
from bridge.spool import codec

CE = {"id": "e-1", "source": "/src", "type": "t.x", "specversion": "1.0"}
BINARY = {"ce-id": "e-1", "ce-source": "/src", "ce-type": "t.x", "ce-specversion": "1.0"}


def structured(**members: Any) -> Event:
    body = json.dumps({**CE, **members}).encode()
    return decode_event("application/cloudevents+json", CIMultiDict(), body)


def binary(content_type: str | None, body: bytes, **extra: str) -> Event:
    return decode_event(content_type, CIMultiDict({**BINARY, **extra}), body)


# --- 13: time is exactly RFC 3339 -----------------------------------------------------

ACCEPTED_TIMES = [
    "2026-11-22T07:25:00Z",
    "2026-11-22t07:25:00z",  # RFC 3339 5.6: "T" and "Z" may be lower case
    "2026-11-22T07:25:00.123456789+05:30",
    "2026-11-22T07:25:00-00:00",
    "2024-02-29T00:00:00Z",  # a leap day
    "2016-12-31T23:59:60Z",  # a leap second
    "2016-12-31T18:59:60-05:00",
]
REFUSED_TIMES = [
    "20261122T072500Z",  # ISO 8601 basic format
    "2026-W47-7T07:25:00Z",  # ISO week date
    "2026-11-22T07Z",  # reduced precision
    "2026-11-22T07:25Z",
    "2026-11-22T07:25:00",  # no offset
    "2026-11-22 07:25:00Z",  # space separator: RFC 3339 allows it only in prose, not ABNF
    "2026-11-22",
    "2026-02-29T00:00:00Z",  # not a leap year
    "2026-04-31T00:00:00Z",
    "2026-13-01T00:00:00Z",
    "2026-11-22T24:00:00Z",
    "2026-11-22T07:60:00Z",
    "2026-11-22T07:25:60Z",  # 60 only ends a minute 59
    "2026-11-22T07:25:61Z",
    "2026-11-22T07:25:00+24:00",
    "2026-11-22T07:25:00+0530",
    "2026-11-22T07:25:00.Z",
    "٢٠٢٦-11-22T07:25:00Z",  # non-ASCII digits
    "2026-11-22T07:25:00Z\n",
]


@pytest.mark.parametrize("text", ACCEPTED_TIMES)
def test_every_rfc3339_time_is_accepted_and_forwarded_as_given(text: str) -> None:
    for event in (
        Event(type="t", time=text),
        structured(time=text),
        binary("application/json", b"1", **{"ce-time": text}),
    ):
        assert event.time == text
        assert to_structured(event)["time"] == text
        assert dict(_Codec("binary").encode(event)[1])["ce_time"] == text.encode()
        headers = amqp_properties(event, None, persistent=True).headers or {}
        assert headers["cloudEvents:time"] == text


@pytest.mark.parametrize("text", REFUSED_TIMES)
def test_anything_else_is_refused_naming_time(text: str) -> None:
    with pytest.raises(InvalidEvent) as info:
        Event(type="t", time=text)
    assert info.value.field == "time"
    with pytest.raises(InvalidEvent) as info:
        structured(time=text)
    assert info.value.field == "time"


def test_a_second_found_valid_once_still_refuses_what_follows_it_wrongly() -> None:
    # check_time remembers seconds already found valid; the rest of the text is still checked.
    for valid in ("2026-11-22T07:25:00Z", "2026-11-22T07:25:00.5Z", "2016-12-31T23:59:60Z"):
        Event(type="t", time=valid)
    for text in (
        "2026-11-22T07:25:00+24:00",
        "2026-11-22T07:25:00.Z",
        "2026-11-22T07:25:00Z\n",
        "2026-11-22T07:25:00",
        "2026-11-22T07:25:00.١Z",  # a non-ASCII digit in the fraction
    ):
        with pytest.raises(InvalidEvent) as info:
            Event(type="t", time=text)
        assert info.value.field == "time", text


def test_a_leap_second_gets_an_amqp_timestamp() -> None:
    props = amqp_properties(Event(type="t", time="2016-12-31T23:59:60Z"), None, persistent=True)
    assert props.timestamp is not None
    assert props.timestamp.timestamp() == 1483228799  # 23:59:59, the second it extends


# --- 12: extensions and dataschema are attributes ----------------------------------------


def test_structured_extensions_are_attributes_not_headers() -> None:
    event = structured(
        myext="v", count=42, flag=True, dataschema="https://example.com/s.json", traceparent="00"
    )
    assert event.extensions == {"myext": "v", "count": 42, "flag": True, "traceparent": "00"}
    assert event.dataschema == "https://example.com/s.json"
    assert event.headers == {}


def test_binary_ce_headers_are_extensions_and_dataschema() -> None:
    event = binary(
        "application/json",
        b"{}",
        **{"ce-myext": "v", "CE-Other": "w", "ce-dataschema": "urn:example:schema"},
    )
    assert event.extensions == {"myext": "v", "other": "w"}
    assert event.dataschema == "urn:example:schema"
    assert event.headers == {}


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("My-Ext", "upper case and a hyphen"),
        ("myExt", "upper case"),
        ("my_ext", "underscore"),
        ("my.ext", "dot"),
        ("é", "not ASCII"),
        ("a" * 65, "over the 64-character bound"),
        ("", "empty"),
    ],
)
def test_bad_extension_names_are_refused_naming_the_attribute(name: str, why: str) -> None:
    with pytest.raises(InvalidEvent) as info:
        structured(**{name: "v"})
    assert info.value.field == name, why
    with pytest.raises(InvalidEvent) as info:
        Event(type="t", extensions={name: "v"})
    assert info.value.field == f"extensions.{name[:64]}", why


def test_bad_binary_extension_header_is_refused_naming_the_header() -> None:
    with pytest.raises(InvalidEvent) as info:
        binary("application/json", b"{}", **{"ce-My-Ext": "v"})
    assert info.value.field == "ce-My-Ext"


def test_a_twenty_one_character_name_is_accepted() -> None:
    # CloudEvents: names SHOULD NOT exceed 20 characters (a recommendation, not a rule).
    assert structured(**{"a" * 21: "v"}).extensions == {"a" * 21: "v"}


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (1.5, "CloudEvents has no float type"),
        (2**31, "beyond a 32-bit Integer"),
        ({"a": 1}, "not a scalar"),
        ([1], "not a scalar"),
        ("a\nb", "control characters"),
        ("x" * 8193, "too long for a header"),
    ],
)
def test_bad_extension_values_are_refused(value: object, why: str) -> None:
    with pytest.raises(InvalidEvent) as info:
        structured(myext=value)
    assert info.value.field == "myext", why
    with pytest.raises(InvalidEvent) as info:
        convert({"type": "t", "extensions": {"myext": value}})
    assert (info.value.field or "").startswith("extensions"), why


@pytest.mark.parametrize(
    "name", ["id", "time", "data", "dataschema", "kind", "partitionkey", "ttl"]
)
def test_plain_extensions_cannot_take_attribute_names(name: str) -> None:
    with pytest.raises(InvalidEvent) as info:
        Event(type="t", extensions={name: "v"})
    assert info.value.field == f"extensions.{name}"


def test_dataschema_must_be_an_absolute_uri() -> None:
    with pytest.raises(InvalidEvent) as info:
        structured(dataschema="schemas/order.json")
    assert info.value.field == "dataschema"


def test_null_extension_is_absent() -> None:
    assert structured(myext=None).extensions == {}


def test_plain_shape_takes_extensions_and_dataschema() -> None:
    body = b'{"type":"t","dataschema":"urn:s","extensions":{"myext":"v","n":-3,"ok":false}}'
    event = decode_json(body)
    assert event.extensions == {"myext": "v", "n": -3, "ok": False}
    assert event.dataschema == "urn:s"
    assert to_plain(event)["extensions"] == {"myext": "v", "n": -3, "ok": False}


def ext_event(**overrides: Any) -> Event:
    fields: dict[str, Any] = {
        "type": "t",
        "source": "/s",
        "data": {"a": 1},
        "dataschema": "https://example.com/s.json",
        "extensions": {"myext": "v", "count": 42, "flag": True},
        "headers": {"traceparent": "00-x", "ce_forged": "f", "cloudEvents:forged": "f"},
    }
    return Event(**{**fields, **overrides})


def test_kafka_binary_writes_extensions_as_ce_headers() -> None:
    _value, headers = _Codec("binary").encode(ext_event())
    found = dict(headers)
    assert found["ce_myext"] == b"v"
    assert found["ce_count"] == b"42"
    assert found["ce_flag"] == b"true"
    assert found["ce_dataschema"] == b"https://example.com/s.json"
    assert found["traceparent"] == b"00-x"
    assert "myext" not in found
    assert "ce_forged" not in found
    assert "kind" not in found
    assert "ce_kind" not in found


def test_kafka_structured_carries_extensions_in_the_envelope() -> None:
    value, headers = _Codec("structured").encode(ext_event(kind="notification"))
    envelope = json.loads(value)
    assert (envelope["myext"], envelope["count"], envelope["flag"]) == ("v", 42, True)
    assert envelope["dataschema"] == "https://example.com/s.json"
    assert "kind" not in envelope
    # No ce_* header: a consumer detecting the mode by them must see structured mode.
    assert [name for name, _ in headers] == ["content-type", "traceparent", "cloudEvents:forged"]


def test_amqp_binary_writes_cloudevents_prefixed_extensions() -> None:
    props = amqp_properties(ext_event(), None, persistent=True)
    headers = props.headers or {}
    assert headers["cloudEvents:myext"] == "v"
    assert headers["cloudEvents:count"] == 42
    assert headers["cloudEvents:flag"] is True
    assert headers["cloudEvents:dataschema"] == "https://example.com/s.json"
    assert "myext" not in headers
    assert "cloudEvents:forged" not in headers


def test_amqp_structured_puts_the_envelope_in_the_body() -> None:
    event = ext_event()
    props = amqp_properties(event, "k-1", persistent=True, structured=True)
    assert props.content_type == "application/cloudevents+json; charset=utf-8"
    assert props.headers == {"traceparent": "00-x", "ce_forged": "f"}
    envelope = json.loads(structured_body(event, "k-1"))
    assert envelope["myext"] == "v"
    assert envelope["partitionkey"] == "k-1"
    assert envelope["data"] == {"a": 1}


# --- 14: attributes nobody set ------------------------------------------------------------


def test_binary_without_content_type_leaves_datacontenttype_unset() -> None:
    event = binary(None, b"\x00\x01")
    assert event.datacontenttype is None
    assert event.data == b"\x00\x01"
    assert "datacontenttype" not in to_structured(event)
    value, headers = _Codec("binary").encode(event)
    assert value == b"\x00\x01"
    assert "content-type" not in dict(headers)
    props = amqp_properties(event, None, persistent=True)
    assert props.content_type is None


def test_structured_without_datacontenttype_leaves_it_unset() -> None:
    event = structured(data={"a": 1})
    assert event.datacontenttype is None
    assert "datacontenttype" not in to_structured(event)
    # The sinks JSON-encode such data, and say so in binary mode.
    value, headers = _Codec("binary").encode(event)
    assert (value, dict(headers)["content-type"]) == (b'{"a":1}', b"application/json")
    text = structured(data="hi")
    assert _Codec("binary").encode(text)[0] == b'"hi"'  # unset means JSON


def test_spool_carries_the_new_attributes_and_reads_old_records() -> None:
    decoder = codec.Decoder({"mem": MemoryRoute})
    event = ext_event(datacontenttype=None, data=b"\x01")
    record = codec.encode("mem", Outgoing(event, "r", MemoryRoute(topic="t"), None))
    back = decoder.decode(record).outgoing.event
    assert (back.extensions, back.dataschema, back.datacontenttype) == (
        event.extensions,
        event.dataschema,
        None,
    )
    # A record written before these fields existed: no extensions, no dataschema, and
    # an omitted datacontenttype that meant (and still means) application/json.
    old_event = {"type": "t", "id": "old-1", "time": "2026-11-05T10:20:30Z", "headers": {"x": "y"}}
    options = msgspec.msgpack.encode(MemoryRoute(topic="t"))
    old = msgspec.msgpack.encode(["mem", "r", None, 1, msgspec.Raw(options), old_event])
    back = decoder.decode(old).outgoing.event
    assert (back.id, back.headers, back.extensions) == ("old-1", {"x": "y"}, {})
    assert (back.datacontenttype, back.dataschema) == ("application/json", None)


def test_structured_round_trips_through_from_structured() -> None:
    event = ext_event(datacontenttype=None)
    back = from_structured(to_structured(event))
    assert (back.extensions, back.dataschema, back.datacontenttype, back.data) == (
        event.extensions,
        event.dataschema,
        None,
        event.data,
    )
