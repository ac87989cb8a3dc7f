"""RabbitMQ sink without a broker: config, the message format, error mapping, lifecycle."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import aiormq
import pytest
from pamqp.commands import Basic
from pamqp.header import ContentHeader

from bridge import Bus
from bridge.config import parse_config
from bridge.errors import ConfigError, SinkRejected, SinkUnavailable
from bridge.event import Event
from bridge.redact import mask_url
from bridge.routing import Router
from bridge.sinks.base import Outgoing, get_sink_type
from bridge.sinks.rabbitmq import (
    RabbitConfig,
    RabbitRoute,
    RabbitSink,
    amqp_headers,
    amqp_properties,
    broker_url,
    publish_error,
)
from bridge.sinks.rabbitmq.connection import MAX_FAILED_PROBES
from bridge.sources.rabbitmq.config import RabbitSourceConfig
from bridge.sources.rabbitmq.source import source_url
from tests.brokers import free_port

SECRET = "s3cr3t-pa55"


def rabbit(**fields: Any) -> dict[str, Any]:
    return {
        "sinks": [{"name": "rmq", "type": "rabbitmq", **fields}],
        "routes": [{"match": "*", "sink": "rmq"}],
    }


def config_error(raw: dict[str, Any], env: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(raw, env or {})
    return info.value


# --- config -------------------------------------------------------------------


def test_registered_under_rabbitmq_with_defaults() -> None:
    sink_type = get_sink_type("rabbitmq")
    assert sink_type.config is RabbitConfig
    assert sink_type.route is RabbitRoute
    config = parse_config(rabbit(), {})
    sink = config.sinks[0]
    assert isinstance(sink, RabbitConfig)
    assert (sink.exchange, sink.exchange_type) == ("evbridge", "topic")
    assert sink.declare
    assert sink.persistent
    assert sink.mandatory
    assert sink.channels >= 1
    assert sink.max_inflight >= 1
    route = config.routes[0].options
    assert route == RabbitRoute(exchange=None, routing_key="{type}")


def test_url_is_a_secret_field() -> None:
    assert "url" in RabbitConfig.secret_fields


@pytest.mark.parametrize(
    ("fields", "key", "fragment"),
    [
        ({"exchange_type": "ring"}, "sinks[0].exchange_type", "'ring'"),
        ({"channels": 0}, "sinks[0].channels", "0"),
        ({"max_inflight": 0}, "sinks[0].max_inflight", "0"),
        ({"url": "http://localhost"}, "sinks[0].url", "http://localhost"),
        ({"confirm_timeout_s": 0}, "sinks[0].confirm_timeout_s", "0"),
        ({"exchange": "x" * 256}, "sinks[0].exchange", "length"),
        ({"routing": "x"}, "sinks[0].routing", "unknown key"),
    ],
)
def test_bad_sink_fields_name_the_key(fields: dict[str, Any], key: str, fragment: str) -> None:
    error = config_error(rabbit(**fields))
    assert error.field == key
    assert key in error.message
    assert fragment in error.message


def test_bad_route_fields_name_the_key() -> None:
    raw = rabbit()
    raw["routes"] = [{"match": "*", "sink": "rmq", "routing_key": "{nosuch}"}]
    assert "routes[0].routing_key" in config_error(raw).message
    raw["routes"] = [{"match": "*", "sink": "rmq", "queue": "q"}]
    assert config_error(raw).field == "routes[0].queue"


def test_router_renders_routing_key_and_exchange_templates() -> None:
    raw = rabbit()
    raw["routes"] = [
        {
            "match": "*",
            "sink": "rmq",
            "exchange": "ex.{data.tenant}",
            "routing_key": "{source}.{type}",
            "key": "{data.user}",
        }
    ]
    router = Router(parse_config(raw, {}).routes)
    event = Event(type="invite.accepted", source="app", data={"tenant": "t1", "user": "u9"})
    sink, outgoing = router.resolve(event)
    assert sink == "rmq"
    assert outgoing.options == RabbitRoute(exchange="ex.t1", routing_key="app.invite.accepted")
    assert outgoing.key == "u9"


def test_password_comes_from_the_named_env_var() -> None:
    config = RabbitConfig(
        name="rmq", type="rabbitmq", url="amqp://app@broker:5672/vh", password_env="RMQ_PW"
    )
    url = broker_url(config, {"RMQ_PW": SECRET})
    assert url.user == "app"
    assert url.password == SECRET
    assert (url.host, url.port, url.path) == ("broker", 5672, "/vh")
    assert url.query["heartbeat"] == "15"
    assert mask_url(str(url)) == "amqp://***:***@broker:5672/vh"


def test_missing_password_env_is_a_config_error_naming_the_key() -> None:
    config = RabbitConfig(name="rmq", type="rabbitmq", password_env="RMQ_PW_UNSET")
    with pytest.raises(ConfigError) as info:
        broker_url(config, {})
    assert info.value.field == "sinks.rmq.password_env"
    assert "RMQ_PW_UNSET" in info.value.message


def test_bus_with_missing_password_env_fails_at_build(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RMQ_PW_UNSET", raising=False)
    config = parse_config(rabbit(password_env="RMQ_PW_UNSET"), {})
    with pytest.raises(ConfigError, match="RMQ_PW_UNSET"):
        Bus(config)


# --- the message --------------------------------------------------------------


def full_event(**overrides: Any) -> Event:
    fields: dict[str, Any] = {
        "type": "invite.accepted",
        "data": {"id": 7},
        "id": "evt-1",
        "source": "/apps/invites",
        "time": "2026-11-05T10:20:30.123456+02:00",
        "subject": "invite/7",
        "headers": {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
        "correlation_id": "corr-9",
        "ttl_ms": 60000,
    }
    return Event(**{**fields, **overrides})


def test_properties_carry_the_event_attributes() -> None:
    props = amqp_properties(full_event(), "user-7", persistent=True)
    assert props.message_id == "evt-1"
    assert props.message_type == "invite.accepted"
    assert props.app_id == "/apps/invites"
    assert props.content_type == "application/json"
    assert props.correlation_id == "corr-9"
    assert props.expiration == "60000"
    assert props.delivery_mode == 2
    assert props.timestamp is not None
    # AMQP timestamps are whole seconds.
    assert props.timestamp.astimezone(UTC) == datetime(2026, 11, 5, 8, 20, 30, tzinfo=UTC)
    assert amqp_properties(full_event(), None, persistent=False).delivery_mode == 1


def test_optional_properties_are_left_out() -> None:
    event = Event(type="t", time="1969-12-31T23:59:59Z")
    props = amqp_properties(event, None, persistent=True)
    assert props.correlation_id is None
    assert props.expiration is None
    assert props.app_id is None
    assert props.timestamp is None  # AMQP timestamps are unsigned
    assert "cloudEvents:subject" not in (props.headers or {})


def test_headers_hold_cloudevents_attributes_and_event_headers() -> None:
    headers = amqp_headers(full_event(), "user-7")
    assert headers == {
        "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "cloudEvents:specversion": "1.0",
        "cloudEvents:id": "evt-1",
        "cloudEvents:source": "/apps/invites",
        "cloudEvents:type": "invite.accepted",
        "cloudEvents:time": "2026-11-05T10:20:30.123456+02:00",
        "cloudEvents:subject": "invite/7",
        "cloudEvents:partitionkey": "user-7",
        "cloudEvents:correlationid": "corr-9",
        "cloudEvents:ttl": "60000",
    }


def test_event_headers_cannot_spoof_cloudevents_attributes() -> None:
    event = full_event(headers={"cloudEvents:id": "forged", "x-tenant": "t1"})
    headers = amqp_headers(event, None)
    assert headers["cloudEvents:id"] == "evt-1"
    assert headers["x-tenant"] == "t1"


def test_values_too_long_for_amqp_are_rejected_naming_the_field() -> None:
    with pytest.raises(SinkRejected) as info:
        amqp_properties(full_event(id="é" * 200), None, persistent=True)
    assert (info.value.code, info.value.field, info.value.retriable) == ("too_long", "id", False)
    with pytest.raises(SinkRejected):
        amqp_properties(full_event(correlation_id="c" * 256), None, persistent=True)


def test_properties_survive_the_wire_format() -> None:
    props = amqp_properties(full_event(), "k", persistent=True)
    decoded = ContentHeader()
    decoded.unmarshal(ContentHeader(0, 2, props).marshal())
    assert decoded.properties.message_id == "evt-1"
    assert decoded.properties.headers == amqp_headers(full_event(), "k")
    assert decoded.properties.timestamp == datetime(2026, 11, 5, 8, 20, 30, tzinfo=UTC)


# --- error mapping ------------------------------------------------------------


def test_nack_is_retriable_return_is_not() -> None:
    nack = publish_error(aiormq.exceptions.DeliveryError(None, Basic.Nack(1)), "ex", "rk")
    assert (nack.code, nack.retriable) == ("nacked", True)
    timeout = publish_error(TimeoutError(), "ex", "rk")
    assert isinstance(timeout, SinkUnavailable)
    assert timeout.retriable
    lost = publish_error(aiormq.exceptions.ConnectionClosed(320, "CONNECTION_FORCED"), "ex", "rk")
    assert isinstance(lost, SinkUnavailable)
    assert "ex" in lost.message
    assert "rk" in lost.message


# --- lifecycle without a broker -------------------------------------------------


def closed_port_sink(**fields: Any) -> RabbitSink:
    url = f"amqp://guest:{SECRET}@127.0.0.1:{free_port()}/"
    return RabbitSink(
        RabbitConfig(name="down", type="rabbitmq", url=url, connect_timeout_s=1, **fields)
    )


async def test_unstarted_sink_fails_each_event_retriably() -> None:
    sink = closed_port_sink()
    item = Outgoing(Event(type="t"), "r", RabbitRoute(), None)
    results = await sink.publish_many([item, item])
    assert len(results) == 2
    assert all(isinstance(r, SinkUnavailable) and r.retriable for r in results)
    health = await sink.healthcheck()
    assert not health.ok


async def test_start_with_no_broker_succeeds_and_fails_fast(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink = closed_port_sink(reconnect_max_s=0.2)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await sink.start()
    try:
        assert loop.time() - started < 2.0
        assert not sink.connected
        health = await sink.healthcheck()
        assert not health.ok
        assert "cannot connect" in health.detail
        began = loop.time()
        [result] = await sink.publish_many([Outgoing(Event(type="t"), "r", RabbitRoute(), None)])
        assert loop.time() - began < 0.1
        assert isinstance(result, SinkUnavailable)
        assert result.retriable
        assert SECRET not in health.detail
        assert SECRET not in result.message
    finally:
        await sink.stop()
    assert SECRET not in caplog.text
    assert "cannot connect" in caplog.text
    await sink.stop()  # idempotent


def test_refused_login_is_unauthorized_retriable_and_a_503() -> None:
    from bridge.server.errors import status_for
    from bridge.sinks.rabbitmq import connect_error

    refused = aiormq.exceptions.ProbableAuthenticationError("ACCESS_REFUSED - Login was refused")
    error = connect_error(refused, "cannot connect to amqp://guest:***@broker/")
    assert (error.code, error.retriable) == ("unauthorized", True)
    assert "credentials refused" in error.message
    # The broker refused the sink, not the client: not the 401 of a wrong bearer token.
    assert status_for(error) == 503
    other = connect_error(ConnectionRefusedError(111, "refused"), "cannot connect")
    assert (other.code, other.retriable) == ("sink_unavailable", True)


def test_a_close_over_a_too_large_message_is_message_too_large() -> None:
    from bridge.sinks.rabbitmq import own_close_error

    close = aiormq.exceptions.ChannelPreconditionFailed(
        406, "PRECONDITION_FAILED - message size 70000 is larger than configured max size 65536"
    )
    error = own_close_error(close, "ex", "rk")
    assert (error.code, error.retriable, error.field) == ("message_too_large", False, "data")
    ttl = aiormq.exceptions.ChannelPreconditionFailed(
        406, "PRECONDITION_FAILED - invalid expiration"
    )
    assert own_close_error(ttl, "ex", "rk").code == "broker_refused"


def test_the_source_connects_and_is_supervised_as_the_sink_is(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # One connection layer (bridge.sinks.rabbitmq.connection) for both sides.
    monkeypatch.setenv("RMQ_PW", SECRET)
    fields = {"url": "amqp://app@broker:5672/vh", "password_env": "RMQ_PW", "heartbeat_s": 7,
              "reconnect_max_s": 2.0, "probe_interval_s": 1.5}  # fmt: skip
    sink = RabbitConfig(name="rmq", type="rabbitmq", **fields)  # type: ignore[arg-type]
    source = RabbitSourceConfig(name="in", type="rabbitmq", queue="q", **fields)  # type: ignore[arg-type]
    sink_url, source_url_ = broker_url(sink), source_url(source)
    assert sink_url.with_query({}) == source_url_.with_query({})
    assert sink_url.password == source_url_.password == SECRET
    assert sink_url.query["heartbeat"] == source_url_.query["heartbeat"] == "7"
    assert (sink_url.query["name"], source_url_.query["name"]) == (
        "evbridge rmq",
        "evbridge source in",
    )
    assert sink.supervision == source.supervision
    assert sink.supervision.max_failed_probes == MAX_FAILED_PROBES
    monkeypatch.delenv("RMQ_PW")
    with pytest.raises(ConfigError) as info:
        source_url(source)
    assert info.value.field == "sources.in.password_env"
