"""Events no broker can take are refused before anything is sent; destinations a template
renders are bounded by the broker's internal names and the route's allow/deny patterns."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from bridge.config import parse_config
from bridge.errors import ConfigError, InvalidEvent, TemplateError
from bridge.event import Event, decode_msgpack
from bridge.routing import Router
from bridge.sinks.rabbitmq import MAX_EXPIRATION_MS


def router(**route: Any) -> Router:
    sinks = [
        {"name": "k", "type": "kafka", "bootstrap_servers": "127.0.0.1:1"},
        {"name": "r", "type": "rabbitmq"},
        {"name": "n", "type": "nats"},
    ]
    return Router(parse_config({"sinks": sinks, "routes": [{"match": "*", **route}]}, {}).routes)


@pytest.mark.parametrize(
    "data",
    [
        msgspec.msgpack.Ext(1, b"x"),
        {"nested": [1, {"deep": msgspec.msgpack.Ext(-5, b"")}]},
    ],
)
def test_msgpack_extension_values_in_data_are_refused_naming_data(data: object) -> None:
    body = msgspec.msgpack.encode({"type": "t", "data": data})
    with pytest.raises(InvalidEvent) as info:
        decode_msgpack(body)
    assert info.value.field == "data"
    assert "extension" in info.value.message


def test_msgpack_map_with_array_keys_is_refused_naming_data() -> None:
    # {"type": "t", "data": {[1]: "x"}}: JSON has no such key.
    with pytest.raises(InvalidEvent) as info:
        decode_msgpack(b"\x82\xa4type\xa1t\xa4data\x81\x91\x01\xa1x")
    assert info.value.field == "data"


def test_msgpack_data_json_can_carry_is_kept() -> None:
    data = {"n": 2**64 - 1, "b": b"\x00", "f": 1.5, "l": [None, True]}
    assert decode_msgpack(msgspec.msgpack.encode({"type": "t", "data": data})).data == data


def test_rabbitmq_routes_refuse_a_ttl_beyond_the_broker_limit_kafka_routes_do_not() -> None:
    rabbit = router(sink="r")
    rabbit.resolve(Event(type="t", ttl_ms=MAX_EXPIRATION_MS))
    with pytest.raises(InvalidEvent) as info:
        rabbit.resolve(Event(type="t", ttl_ms=MAX_EXPIRATION_MS + 1))
    assert info.value.field == "ttl_ms"
    router(sink="k", topic="t").resolve(Event(type="t", ttl_ms=2**63 - 1))


@pytest.mark.parametrize("subject", ["__consumer_offsets", "__transaction_state", "__x"])
def test_a_template_never_renders_a_kafka_internal_topic(subject: str) -> None:
    with pytest.raises(TemplateError) as info:
        router(sink="k", topic="{subject}").resolve(Event(type="t", subject=subject))
    assert (info.value.code, info.value.field) == ("destination_refused", "topic")
    assert "{subject}" in info.value.message


def test_a_template_never_renders_a_rabbitmq_builtin_exchange() -> None:
    route = router(sink="r", exchange="{subject}")
    with pytest.raises(TemplateError) as info:
        route.resolve(Event(type="t", subject="amq.rabbitmq.trace"))
    assert info.value.field == "exchange"
    route.resolve(Event(type="t", subject="orders"))


@pytest.mark.parametrize(
    "subject", ["$JS.API.STREAM.DELETE.orders", "$SYS.REQ.SERVER.PING", "_INBOX.x"]
)
def test_a_template_never_renders_a_nats_server_subject(subject: str) -> None:
    route = router(sink="n", subject="{subject}")
    with pytest.raises(TemplateError) as info:
        route.resolve(Event(type="t", subject=subject))
    assert (info.value.code, info.value.field) == ("destination_refused", "subject")
    route.resolve(Event(type="t", subject="orders.created"))


def test_allow_and_deny_patterns_bound_what_a_template_renders() -> None:
    route = router(
        sink="r",
        routing_key="{data.k}",
        allow={"routing_key": ["orders.*", "users.*"]},
        deny={"routing_key": "users.admin*"},
    )
    _, out = route.resolve(Event(type="t", data={"k": "orders.eu"}))
    assert out.options.routing_key == "orders.eu"  # type: ignore[attr-defined]
    for key in ("billing.x", "users.admin.root"):
        with pytest.raises(TemplateError) as info:
            route.resolve(Event(type="t", data={"k": key}))
        assert (info.value.code, info.value.field) == ("destination_refused", "routing_key")


def test_a_literal_internal_topic_is_the_operator_choice() -> None:
    router(sink="k", topic="__operator_choice").resolve(Event(type="t"))


@pytest.mark.parametrize(
    ("route", "where"),
    [
        ({"sink": "k", "topic": "t", "allow": {"topic": ["t*"]}}, "routes[0].allow.topic"),
        ({"sink": "k", "topic": "{type}", "deny": {"topc": ["x"]}}, "routes[0].deny.topc"),
        ({"sink": "k", "topic": "{type}", "deny": ["x"]}, "routes[0].deny"),
        ({"sink": "k", "topic": "{type}", "allow": {"topic": [""]}}, "routes[0].allow.topic"),
    ],
)
def test_bad_allow_or_deny_config_names_the_key(route: dict[str, Any], where: str) -> None:
    with pytest.raises(ConfigError) as info:
        router(**route)
    assert info.value.field == where
