"""NATS sink without a server: config, the message mapping, error mapping."""

from __future__ import annotations

from typing import Any

import nats.errors
import nats.js.errors
import pytest

from bridge.config import parse_config
from bridge.errors import ConfigError, InvalidEvent, SinkRejected, SinkUnavailable
from bridge.event import Event
from bridge.redact import mask_url
from bridge.routing import Router
from bridge.sinks.base import get_sink_type
from bridge.sinks.nats import NatsConfig, NatsRoute, NatsSink
from bridge.sinks.nats.errors import connect_error, no_stream_error, publish_error
from bridge.sinks.nats.message import nats_headers

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def nats_config(route: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    return {
        "sinks": [{"name": "n", "type": "nats", **fields}],
        "routes": [{"match": "*", "sink": "n", **(route or {"subject": "events.{type}"})}],
    }


def config_error(raw: dict[str, Any], env: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(raw, env or {})
    return info.value


def test_registered_under_nats_with_defaults() -> None:
    sink_type = get_sink_type("nats")
    assert (sink_type.config, sink_type.route) == (NatsConfig, NatsRoute)
    config = parse_config(nats_config(), {})
    sink = config.sinks[0]
    assert isinstance(sink, NatsConfig)
    assert sink.server_list == ["nats://127.0.0.1:4222"]
    assert sink.create_stream is None
    policy = sink.supervision
    assert (policy.connect_timeout_s, policy.health_timeout_s) == (5.0, 2.0)
    assert policy.backoff.max_s == sink.reconnect_max_s
    assert config.routes[0].options == NatsRoute(subject="events.{type}")


def test_servers_take_a_list_or_a_comma_separated_string() -> None:
    one = parse_config(nats_config(servers="nats://a:4222, nats://b:4222"), {}).sinks[0]
    two = parse_config(nats_config(servers=["nats://a:4222", "tls://b:4222"]), {}).sinks[0]
    assert isinstance(one, NatsConfig)
    assert isinstance(two, NatsConfig)
    assert one.server_list == ["nats://a:4222", "nats://b:4222"]
    assert two.server_list == ["nats://a:4222", "tls://b:4222"]


@pytest.mark.parametrize(
    ("fields", "key", "fragment"),
    [
        ({"servers": "http://x:4222"}, "sinks[0]", "must start with nats://"),
        ({"servers": []}, "sinks[0]", "at least one"),
        ({"confirm_timeout_s": 0}, "sinks[0].confirm_timeout_s", "0"),
        ({"max_inflight": 0}, "sinks[0].max_inflight", "0"),
        ({"token_env": "A", "creds_file": "x.creds"}, "sinks[0]", "only one of"),
        ({"user": "app"}, "sinks[0]", "user and password_env"),
        ({"token_env": "not a name"}, "sinks[0].token_env", "regex"),
        ({"create_stream": {"name": "S"}}, "sinks[0].create_stream", "subjects"),
        ({"create_stream": {"name": "a.b", "subjects": ["x"]}}, "sinks[0].create_stream.name", ""),
        ({"tls": {"keyfile": "k"}}, "sinks[0].tls", "without certfile"),
        ({"stream": "S"}, "sinks[0].stream", "unknown key"),
    ],
)
def test_bad_sink_fields_name_the_key(fields: dict[str, Any], key: str, fragment: str) -> None:
    error = config_error(nats_config(**fields))
    assert (error.field or "").startswith(key), error
    assert fragment in error.message


def test_secrets_come_from_the_environment_when_the_sink_is_built() -> None:
    config = NatsConfig(name="n", type="nats", token_env="NATS_TOKEN_UNSET_FOR_TEST")
    with pytest.raises(ConfigError) as info:
        NatsSink(config)
    assert info.value.field == "sinks.n.token_env"
    assert "servers" in NatsConfig.secret_fields
    assert mask_url("nats://app:pw@host:4222") == "nats://***:***@host:4222"


@pytest.mark.parametrize("subject", ["a..b", "a.*", "a.>", "with space", ".a", "a."])
def test_a_subject_that_cannot_be_published_to_is_refused_at_load(subject: str) -> None:
    with pytest.raises(ConfigError, match="subject") as info:
        Router(parse_config(nats_config({"subject": subject}), {}).routes)
    assert info.value.field is not None
    assert info.value.field.endswith(".subject")


def test_a_rendered_subject_and_header_names_are_checked_per_event() -> None:
    router = Router(parse_config(nats_config({"subject": "ev.{data.tenant}"}), {}).routes)
    _, out = router.resolve(Event(type="t", data={"tenant": "acme"}))
    assert out.options == NatsRoute(subject="ev.acme")
    with pytest.raises(BaseException, match="subject") as info:
        router.resolve(Event(type="t", data={"tenant": "a b"}))
    assert getattr(info.value, "field", None) == "subject"
    with pytest.raises(InvalidEvent) as bad:
        router.resolve(Event(type="t", data={"tenant": "x"}, headers={"a:b": "1"}))
    assert bad.value.field == "headers.a:b"


def test_headers_carry_the_cloudevents_nats_binding_and_trace_context() -> None:
    event = Event(
        type="order.created",
        id="id-1",
        source="/shop",
        subject="o-9",
        time="2026-01-02T03:04:05Z",
        datacontenttype="text/plain",
        correlation_id="c-1",
        ttl_ms=5000,
        headers={"traceparent": TRACEPARENT, "tracestate": "k=v"},
    )
    headers = nats_headers(event, "user-7")
    assert headers == {
        "traceparent": TRACEPARENT,
        "tracestate": "k=v",
        "Nats-Msg-Id": "id-1",
        "ce-specversion": "1.0",
        "ce-id": "id-1",
        "ce-type": "order.created",
        "ce-time": "2026-01-02T03:04:05Z",
        "content-type": "text/plain",
        "ce-source": "/shop",
        "ce-subject": "o-9",
        "ce-partitionkey": "user-7",
        "ce-correlationid": "c-1",
        "ce-ttl": "5000",
    }
    minimal = nats_headers(Event(type="t", id="i"), None)
    assert set(minimal) == {
        "Nats-Msg-Id", "ce-specversion", "ce-id", "ce-type", "ce-time", "content-type"
    }  # fmt: skip


def test_extensions_and_dataschema_are_ce_headers_and_unset_content_type_stays_unset() -> None:
    event = Event(
        type="t",
        id="i",
        data=b"raw",
        datacontenttype=None,
        dataschema="https://example.com/s.json",
        extensions={"tenant": "acme", "count": 3, "flag": True},
    )
    headers = nats_headers(event, None)
    assert headers["ce-dataschema"] == "https://example.com/s.json"
    assert headers["ce-tenant"] == "acme"
    assert headers["ce-count"] == "3"
    assert headers["ce-flag"] == "true"
    assert "content-type" not in headers


def test_event_headers_cannot_spoof_attributes_or_the_message_id() -> None:
    event = Event(
        type="t",
        id="real",
        headers={"ce-id": "fake", "Nats-Msg-Id": "fake", "Content-Type": "x/y", "CE-Type": "z"},
    )
    headers = nats_headers(event, None)
    assert headers["Nats-Msg-Id"] == headers["ce-id"] == "real"
    assert headers["content-type"] == "application/json"
    assert "fake" not in headers.values()
    assert "Content-Type" not in headers
    assert "CE-Type" not in headers


def test_publish_errors_map_to_retriable_or_not() -> None:
    too_big = publish_error(nats.errors.MaxPayloadError(), "s")
    assert isinstance(too_big, SinkRejected)
    assert too_big.code == "message_too_large"
    assert too_big.field == "data"
    stream_size = publish_error(
        nats.js.errors.BadRequestError(code=400, err_code=10054, description="too big"), "s"
    )
    assert isinstance(stream_size, SinkRejected)
    assert stream_size.code == "message_too_large"
    unavailable = publish_error(nats.js.errors.ServiceUnavailableError(code=503), "s")
    assert isinstance(unavailable, SinkUnavailable)
    refused = publish_error(nats.js.errors.BadRequestError(code=400, err_code=10060), "s")
    assert isinstance(refused, SinkRejected)
    assert refused.code == "refused"
    timeout = publish_error(nats.errors.TimeoutError(), "s")
    assert isinstance(timeout, SinkUnavailable)
    assert timeout.code == "confirm_timeout"
    closed = publish_error(nats.errors.ConnectionClosedError(), "s")
    assert isinstance(closed, SinkUnavailable)
    assert closed.retriable


def test_no_stream_is_final_and_no_responders_is_retriable() -> None:
    none = no_stream_error("orders.x", None)
    assert isinstance(none, SinkRejected)
    assert (none.code, none.field, none.retriable) == ("no_stream", "subject", False)
    held = no_stream_error("orders.x", "ORDERS")
    assert isinstance(held, SinkUnavailable)
    assert (held.code, held.retriable) == ("no_responders", True)
    assert "ORDERS" in held.message


def test_a_refused_login_is_its_own_code_but_retriable() -> None:
    denied = connect_error(nats.errors.AuthorizationError(), "cannot connect to x")
    assert (denied.code, denied.retriable) == ("unauthorized", True)
    away = connect_error(ConnectionRefusedError(), "cannot connect to x")
    assert (away.code, away.retriable) == ("sink_unavailable", True)


async def test_unstarted_sink_fails_each_event_retriably() -> None:
    from bridge.sinks.base import Outgoing

    sink = NatsSink(NatsConfig(name="n", type="nats"))
    item = Outgoing(Event(type="t"), "r", NatsRoute(subject="a"), None)
    results = await sink.publish_many([item, item])
    assert [type(r) for r in results] == [SinkUnavailable, SinkUnavailable]
    assert not (await sink.healthcheck()).ok


def test_the_token_and_password_from_the_environment_are_registered_as_secrets() -> None:
    from bridge.redact import secrets_of

    env = {"NATS_TOKEN": "tok-very-secret", "NATS_PW": "pw-very-secret"}
    token = parse_config(nats_config(token_env="NATS_TOKEN"), env)
    password = parse_config(
        nats_config(user="app", password_env="NATS_PW", servers="nats://u:inline-pw@h:4222"), env
    )
    assert "tok-very-secret" in secrets_of(token, env)
    assert {"pw-very-secret", "inline-pw"} <= set(secrets_of(password, env))
