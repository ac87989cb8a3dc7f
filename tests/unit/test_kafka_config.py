"""Kafka sink config and route validation, through the real config loader."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from bridge.config import parse_config
from bridge.errors import ConfigError, SinkUnavailable
from bridge.event import Event
from bridge.sinks.base import Outgoing, get_sink_type
from bridge.sinks.kafka import SINK_TYPE, KafkaConfig, KafkaRoute, KafkaSink
from tests.brokers import free_port


def kafka(
    sink: dict[str, Any] | None = None, route: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "sinks": [{"name": "k", "type": "kafka", "bootstrap_servers": "b1:9092", **(sink or {})}],
        "routes": [{"match": "*", "sink": "k", "topic": "events", **(route or {})}],
    }


def error_of(raw: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(raw, {})
    return info.value


def test_defaults_and_route() -> None:
    config = parse_config(
        kafka(
            {"bootstrap_servers": "b1:9092, b2:9092"},
            {"topic": "events.{type}", "key": "{data.user_id}"},
        ),
        {},
    )
    [sink] = config.sinks
    assert isinstance(sink, KafkaConfig)
    assert sink.servers == ["b1:9092", "b2:9092"]
    assert (sink.acks, sink.compression, sink.mode) == ("all", "none", "binary")
    assert (sink.enable_idempotence, sink.auto_create_topics) == (False, False)
    assert (sink.max_message_bytes, sink.request_timeout_ms) == (1_048_576, 15_000)
    [route] = config.routes
    assert route.options == KafkaRoute(topic="events.{type}")
    assert route.options.destination("k") == "events.{type}"
    assert route.key == "{data.user_id}"


def test_bootstrap_servers_as_a_list() -> None:
    config = parse_config(kafka({"bootstrap_servers": ["b1:9092", "b2:9093"]}), {})
    assert isinstance(config.sinks[0], KafkaConfig)
    assert config.sinks[0].servers == ["b1:9092", "b2:9093"]


def test_registered_as_the_kafka_type_with_the_password_env_marked_secret() -> None:
    assert get_sink_type("kafka") is SINK_TYPE
    assert SINK_TYPE.config is KafkaConfig
    assert SINK_TYPE.route is KafkaRoute
    assert KafkaConfig.secret_fields == ("sasl_password_env",)


SASL = {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512"}


@pytest.mark.parametrize(
    ("sink", "route", "field", "fragment"),
    [
        ({"colour": "red"}, None, "sinks[0].colour", "unknown key"),
        ({"acks": 2}, None, "sinks[0].acks", "2"),
        ({"compression": "brotli"}, None, "sinks[0].compression", "'brotli'"),
        ({"mode": "json"}, None, "sinks[0].mode", "'json'"),
        ({"linger_ms": -1}, None, "sinks[0].linger_ms", "-1"),
        ({"max_message_bytes": 0}, None, "sinks[0].max_message_bytes", "0"),
        ({"request_timeout_ms": "soon"}, None, "sinks[0].request_timeout_ms", "'soon'"),
        ({"bootstrap_servers": " , "}, None, "sinks[0]", "bootstrap_servers"),
        ({"enable_idempotence": True, "acks": 1}, None, "sinks[0]", "enable_idempotence"),
        ({**SASL, "sasl_password_env": "PW"}, None, "sinks[0]", "sasl_username"),
        ({**SASL, "sasl_username": "u"}, None, "sinks[0]", "sasl_password_env"),
        ({"sasl_username": "u"}, None, "sinks[0]", "sasl_username"),
        ({"security_protocol": "SSL", "ssl_keyfile": "k.pem"}, None, "sinks[0]", "ssl_keyfile"),
        ({"security_protocol": "TLS"}, None, "sinks[0].security_protocol", "'TLS'"),
        (None, {"topic": None}, "routes[0].topic", "None"),
        (None, {"topic": "events.{nope}"}, "routes[0].topic", "nope"),
        (None, {"topic": "x", "partition": 1}, "routes[0].partition", "unknown key"),
    ],
)
def test_errors_name_the_key(
    sink: dict[str, Any] | None, route: dict[str, Any] | None, field: str, fragment: str
) -> None:
    error = error_of(kafka(sink, route))
    assert error.field == field
    assert fragment in error.message
    if field == "sinks[0]":  # cross-field checks: the key leads the message
        assert error.message.startswith(f"sinks[0]: {fragment}")


def test_missing_route_topic_is_named() -> None:
    raw = kafka()
    del raw["routes"][0]["topic"]
    error = error_of(raw)
    assert error.field is not None
    assert error.field.startswith("routes[0]")
    assert "topic" in error.message


async def test_not_started_sink_fails_per_event_and_is_unhealthy() -> None:
    sink = KafkaSink(KafkaConfig(name="k", type="kafka", bootstrap_servers="127.0.0.1:1"))
    item = Outgoing(Event(type="t"), "r", KafkaRoute(topic="x"), None)
    results = await sink.publish_many([item, item])
    assert all(isinstance(r, SinkUnavailable) and r.retriable for r in results)
    assert not (await sink.healthcheck()).ok
    assert await sink.publish_many([]) == []


async def test_sasl_password_is_read_at_start_and_never_shown(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "s3cr3t-value-xyz"
    monkeypatch.setenv("EVBRIDGE_TEST_KAFKA_PW", secret)
    config = parse_config(
        kafka(
            {
                "bootstrap_servers": f"127.0.0.1:{free_port()}",  # nothing listens there
                "security_protocol": "SASL_PLAINTEXT",
                "sasl_mechanism": "PLAIN",
                "sasl_username": "bridge",
                "sasl_password_env": "EVBRIDGE_TEST_KAFKA_PW",
            }
        ),
        {},
    )
    sink = KafkaSink(config.sinks[0])  # type: ignore[arg-type]
    caplog.set_level(logging.DEBUG)
    await sink.start()  # the broker is down: start() still returns
    try:
        health = await sink.healthcheck()
        [result] = await sink.publish_many(
            [Outgoing(Event(type="t"), "r", KafkaRoute(topic="x"), None)]
        )
    finally:
        await sink.stop()
    assert not health.ok
    assert isinstance(result, SinkUnavailable)
    shown = [repr(sink), repr(config), str(config), health.detail, result.message, caplog.text]
    assert all(secret not in text for text in shown)


def test_reconnect_cap_and_probe_interval_are_configurable() -> None:
    """Kafka's reconnect cap was hard-coded (2 s); it is ``reconnect_max_s`` now, as for
    RabbitMQ and NATS, and the supervisor gets it with the other knobs in seconds."""
    config = KafkaConfig(
        name="k",
        type="kafka",
        bootstrap_servers="h:9092",
        reconnect_max_s=7.5,
        probe_interval_s=3.0,
        request_timeout_ms=4000,
        health_timeout_ms=1500,
    )
    policy = config.supervision
    assert policy.backoff.max_s == 7.5
    assert policy.backoff.initial_s == 0.1
    assert (policy.connect_timeout_s, policy.health_timeout_s) == (4.0, 1.5)
    assert policy.probe_interval_s == 3.0
    assert policy.max_failed_probes is None  # aiokafka reconnects underneath
    default = KafkaConfig(name="k", type="kafka", bootstrap_servers="h:9092").supervision
    assert default.backoff.max_s == 2.0  # the old hard-coded cap stays the default
    error = error_of(kafka({"reconnect_max_s": 0}))
    assert error.field == "sinks[0].reconnect_max_s"


def test_sasl_password_is_read_when_the_sink_is_built(monkeypatch: pytest.MonkeyPatch) -> None:
    """As for every broker: a missing variable stops `serve` and `check` at config load."""
    monkeypatch.delenv("EVBRIDGE_TEST_KAFKA_MISSING", raising=False)
    config = KafkaConfig(
        name="k",
        type="kafka",
        bootstrap_servers="127.0.0.1:1",
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="PLAIN",
        sasl_username="u",
        sasl_password_env="EVBRIDGE_TEST_KAFKA_MISSING",
    )
    with pytest.raises(ConfigError, match="EVBRIDGE_TEST_KAFKA_MISSING is not set") as info:
        KafkaSink(config)
    assert info.value.field == "sasl_password_env"


def test_unreadable_tls_files_fail_when_the_sink_is_built(tmp_path: Path) -> None:
    config = KafkaConfig(
        name="k",
        type="kafka",
        bootstrap_servers="127.0.0.1:1",
        security_protocol="SSL",
        ssl_cafile=str(tmp_path / "missing-ca.pem"),
    )
    with pytest.raises(ConfigError, match="cannot load the TLS files"):
        KafkaSink(config)
