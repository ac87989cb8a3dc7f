from __future__ import annotations

import base64

import pytest

from bridge.errors import InvalidEvent
from bridge.event import (
    Event,
    data_bytes,
    decode_json,
    decode_msgpack,
    from_structured,
    to_structured,
)


def test_defaults_fill_id_time_and_kind() -> None:
    event = Event(type="invite.accepted", data={"a": 1})
    assert len(event.id) == 36
    assert event.time.endswith("Z")
    assert event.kind == "notification"
    assert event.specversion == "1.0"
    assert event.datacontenttype == "application/json"


def test_ids_are_uuid4_text_and_unique() -> None:
    import uuid

    ids = {Event(type="x").id for _ in range(2000)}
    assert len(ids) == 2000
    for text in list(ids)[:50]:
        parsed = uuid.UUID(text)
        assert (parsed.version, parsed.variant, str(parsed)) == (4, uuid.RFC_4122, text)


def test_ids_stay_uuid4_and_unique_across_blocks_and_forks() -> None:
    import os
    import uuid

    from bridge.event import envelope

    # Past one block of ids, so the random part is drawn again at least once.
    ids = [envelope.new_id() for _ in range(envelope._ID_BLOCK + 10)]
    assert len(set(ids)) == len(ids)
    assert len({i[:29] for i in ids}) >= 2  # two blocks: two random prefixes
    for text in (ids[0], ids[envelope._ID_BLOCK - 1], ids[-1]):
        parsed = uuid.UUID(text)
        assert (parsed.version, parsed.variant, str(parsed)) == (4, uuid.RFC_4122, text)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next id must not be the parent's next one
        os.write(write, envelope.new_id().encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.close(read)
    os.waitpid(pid, 0)
    assert child != envelope.new_id()
    assert child[:29] != ids[-1][:29]


def test_one_instant_gives_the_events_built_inside_one_time() -> None:
    from bridge.event import one_instant

    with one_instant() as now:
        inside = [Event(type="x") for _ in range(3)]
        own = Event(type="x", time="2026-01-01T00:00:00Z")
        with one_instant() as nested:
            assert nested is now
        decoded = decode_json(b'{"type": "x"}')
    assert {e.time for e in inside} == {now} == {decoded.time}
    assert own.time == "2026-01-01T00:00:00Z"
    with pytest.raises(InvalidEvent), one_instant():
        Event(type="x", time="yesterday")  # still checked inside
    assert Event(type="x").time != now  # released, also after an error


def test_default_time_is_rfc3339_utc_and_moves_forward() -> None:
    from datetime import datetime

    first, second = Event(type="x").time, Event(type="x").time
    assert datetime.fromisoformat(first) <= datetime.fromisoformat(second)
    assert len(first) == len("2026-01-01T00:00:00.000000Z")


def test_is_immutable() -> None:
    event = Event(type="x")
    with pytest.raises(AttributeError):
        event.type = "y"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"type": ""}, "type"),
        ({"type": "x" * 257}, "type"),
        ({"type": "a\nb"}, "type"),
        ({"type": "x", "id": ""}, "id"),
        ({"type": "x", "kind": "other"}, "kind"),
        ({"type": "x", "specversion": "0.3"}, "specversion"),
        ({"type": "x", "time": "yesterday"}, "time"),
        ({"type": "x", "time": "2026-01-01T00:00:00"}, "time"),
        ({"type": "x", "headers": {"bad name": "v"}}, "headers.bad name"),
        ({"type": "x", "headers": {"h": "line\r\nInjected: 1"}}, "headers.h"),
        ({"type": "x", "ttl_ms": 0}, "ttl_ms"),
        ({"type": "x", "key": ""}, "key"),
    ],
)
def test_validation_names_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidEvent) as info:
        Event(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field
    assert info.value.code == "invalid_event"


def test_decode_json_happy_and_errors() -> None:
    event = decode_json(b'{"type": "a.b", "data": [1, 2], "key": "k", "headers": {"x": "1"}}')
    assert (event.type, event.data, event.key, event.headers) == ("a.b", [1, 2], "k", {"x": "1"})
    with pytest.raises(InvalidEvent) as info:
        decode_json(b'{"type": 5}')
    assert info.value.field == "type"
    with pytest.raises(InvalidEvent) as info:
        decode_json(b'{"type": "x", "colour": "red"}')
    assert info.value.field == "colour"
    with pytest.raises(InvalidEvent) as info:
        decode_json(b"{not json")
    assert info.value.code == "invalid_json"
    with pytest.raises(InvalidEvent) as info:
        decode_json(b'{"data": 1}')
    assert info.value.field == "type"


def test_decode_msgpack() -> None:
    import msgspec

    body = msgspec.msgpack.encode({"type": "m", "data": {"x": b"\x00\x01"}})
    event = decode_msgpack(body)
    assert event.data == {"x": b"\x00\x01"}
    with pytest.raises(InvalidEvent):
        decode_msgpack(b"\xc1")


def test_data_bytes() -> None:
    assert data_bytes(Event(type="x", data={"a": "é"})) == '{"a":"é"}'.encode()
    assert data_bytes(Event(type="x", data=b"\x00raw")) == b"\x00raw"
    assert data_bytes(Event(type="x", data="plain", datacontenttype="text/plain")) == b"plain"
    assert data_bytes(Event(type="x", data="s")) == b'"s"'


def test_structured_round_trip_keeps_bridge_attributes() -> None:
    event = Event(
        type="t",
        source="s",
        data=b"\x01\x02",
        key="k",
        subject="sub",
        correlation_id="c",
        ttl_ms=1000,
        dataschema="https://example.com/s.json",
        extensions={"myext": "v", "n": 3, "flag": False},
    )
    obj = to_structured(event)
    assert obj["data_base64"] == base64.b64encode(b"\x01\x02").decode()
    assert obj["partitionkey"] == "k"
    assert "kind" not in obj  # the bridge's routing choice is not a CloudEvents attribute
    assert (obj["myext"], obj["n"], obj["flag"]) == ("v", 3, False)
    back = from_structured(obj)
    for name in (
        "id",
        "type",
        "source",
        "data",
        "key",
        "datacontenttype",
        "dataschema",
        "extensions",
        "subject",
        "correlation_id",
        "ttl_ms",
        "time",
    ):
        assert getattr(back, name) == getattr(event, name), name


def test_structured_requires_context_attributes_and_keeps_extensions() -> None:
    with pytest.raises(InvalidEvent) as info:
        from_structured({"id": "1", "type": "t", "specversion": "1.0"})
    assert info.value.field == "source"
    event = from_structured(
        {
            "id": "1",
            "type": "t",
            "source": "s",
            "specversion": "1.0",
            "traceparent": "00-ab",
            "n": 3,
        }
    )
    assert event.extensions == {"traceparent": "00-ab", "n": 3}
    assert event.headers == {}
    with pytest.raises(InvalidEvent):
        from_structured(
            {"id": "1", "type": "t", "source": "s", "specversion": "1.0", "data_base64": "!!"}
        )
