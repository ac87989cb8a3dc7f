"""Kafka message mapping, partitioning and error classification (no broker)."""

from __future__ import annotations

import json

import pytest
from aiokafka import errors as kafka_errors  # type: ignore[import-untyped]
from aiokafka.partitioner import DefaultPartitioner  # type: ignore[import-untyped]

from bridge.errors import SinkRejected, SinkUnavailable
from bridge.event import Event
from bridge.sinks.kafka import KafkaConfig, KafkaSink, _Codec, classify


def test_binary_mode_headers_follow_the_cloudevents_kafka_binding() -> None:
    event = Event(
        type="invite.accepted",
        source="app",
        subject="invite/1",
        data={"a": 1},
        correlation_id="c-1",
        ttl_ms=5,
        headers={"traceparent": "00-abc-def-01", "x-tenant": "t"},
    )
    value, headers = _Codec("binary").encode(event)
    assert value == b'{"a":1}'
    assert headers == [
        ("ce_specversion", b"1.0"),
        ("ce_id", event.id.encode()),
        ("ce_type", b"invite.accepted"),
        ("ce_time", event.time.encode()),
        ("content-type", b"application/json"),
        ("ce_source", b"app"),
        ("ce_subject", b"invite/1"),
        ("ce_correlationid", b"c-1"),
        ("ce_ttl", b"5"),
        ("traceparent", b"00-abc-def-01"),
        ("x-tenant", b"t"),
    ]


def test_optional_attributes_are_left_out_and_event_headers_cannot_override_the_binding() -> None:
    event = Event(
        type="t",
        data="plain text",
        datacontenttype="text/plain",
        headers={"Content-Type": "evil", "ce_id": "forged", "CE_custom": "an attribute", "x": "y"},
    )
    value, headers = _Codec("binary").encode(event)
    assert value == b"plain text"
    names = [name for name, _ in headers]
    # A transport header cannot forge an attribute: ce_* names are the binding's.
    assert names == ["ce_specversion", "ce_id", "ce_type", "ce_time", "content-type", "x"]
    assert dict(headers)["ce_id"] == event.id.encode()
    assert dict(headers)["content-type"] == b"text/plain"


def test_structured_mode() -> None:
    event = Event(type="t", source="s", data=b"\x00\x01", headers={"tracestate": "v=1"})
    value, headers = _Codec("structured").encode(event)
    body = json.loads(value)
    assert body["id"] == event.id
    assert body["data_base64"] == "AAE="
    assert headers == [
        ("content-type", b"application/cloudevents+json; charset=utf-8"),
        ("tracestate", b"v=1"),
    ]


@pytest.mark.parametrize("key", [b"", b"a", b"user-42", "é✓".encode(), bytes(range(40))])
@pytest.mark.parametrize("partitions", [1, 3, 12])
def test_key_partitioning_matches_the_java_default_partitioner(key: bytes, partitions: int) -> None:
    sink = KafkaSink(KafkaConfig(name="k", type="kafka", bootstrap_servers="x:1"))
    all_partitions = list(range(partitions))
    expected = DefaultPartitioner()(key, all_partitions, all_partitions)
    assert all_partitions[sink._hash(key) % partitions] == expected
    assert sink._hash(key) == sink._hash(key)  # cached


@pytest.mark.parametrize(
    ("exc", "kind", "code"),
    [
        (kafka_errors.MessageSizeTooLargeError(), SinkRejected, "message_too_large"),
        (kafka_errors.RecordListTooLargeError(), SinkRejected, "message_too_large"),
        (kafka_errors.TopicAuthorizationFailedError(), SinkUnavailable, "unauthorized"),
        (kafka_errors.ClusterAuthorizationFailedError(), SinkUnavailable, "unauthorized"),
        (kafka_errors.SaslAuthenticationFailed(), SinkUnavailable, "unauthorized"),
        (kafka_errors.UnknownTopicOrPartitionError(), SinkRejected, "unknown_topic"),
        (kafka_errors.InvalidTopicError(), SinkRejected, "invalid_topic"),
        (kafka_errors.CorruptRecordException(), SinkRejected, "sink_rejected"),
        (kafka_errors.KafkaTimeoutError(), SinkUnavailable, "sink_timeout"),
        (kafka_errors.RequestTimedOutError(), SinkUnavailable, "sink_timeout"),
        (TimeoutError(), SinkUnavailable, "sink_timeout"),
        (kafka_errors.KafkaConnectionError("reset"), SinkUnavailable, "sink_unavailable"),
        (kafka_errors.NodeNotReadyError(), SinkUnavailable, "sink_unavailable"),
        (kafka_errors.NotLeaderForPartitionError(), SinkUnavailable, "sink_unavailable"),
        (kafka_errors.LeaderNotAvailableError(), SinkUnavailable, "sink_unavailable"),
        (kafka_errors.NotEnoughReplicasError(), SinkUnavailable, "sink_unavailable"),
        (kafka_errors.ProducerFenced(), SinkUnavailable, "sink_unavailable"),
        (kafka_errors.OutOfOrderSequenceNumber(), SinkUnavailable, "sink_unavailable"),
        (AssertionError("Unrecognized partition"), SinkUnavailable, "sink_unavailable"),
    ],
)
def test_classify(exc: BaseException, kind: type, code: str) -> None:
    error = classify(exc, "orders")
    assert type(error) is kind
    assert error.code == code
    assert error.retriable is (kind is SinkUnavailable)
    assert "orders" in error.message


@pytest.mark.parametrize(
    "refused",
    [
        kafka_errors.SaslAuthenticationFailed("invalid credentials"),
        kafka_errors.UnsupportedSaslMechanismError(),
        kafka_errors.ClusterAuthorizationFailedError(),
    ],
)
def test_refused_login_is_unauthorized_retriable_and_a_503(refused: BaseException) -> None:
    from bridge.server.errors import status_for
    from bridge.sinks.kafka.errors import connect_error

    error = connect_error(refused, "cannot connect to 127.0.0.1:9092")
    assert type(error) is SinkUnavailable
    assert (error.code, error.retriable) == ("unauthorized", True)
    assert "refused the login" in error.message
    # The broker refused the sink, not the client: not the 401 of a wrong bearer token.
    assert status_for(error) == 503
    other = connect_error(kafka_errors.KafkaConnectionError("reset"), "cannot connect")
    assert (type(other), other.code) == (SinkUnavailable, "sink_unavailable")
