"""Header and destination injection, secret redaction and request ids, without a server."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from bridge import redact
from bridge.config import parse_config
from bridge.errors import ConfigError, InvalidEvent, TemplateError
from bridge.event import MAX_HEADER_NAME_LEN, Event
from bridge.logs import REQUEST_ID, JsonFormatter, TextFormatter
from bridge.routing import Router
from bridge.server.requestid import request_id_for

# --- event headers -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "field"),
    [
        ({"X-Foo": "a\r\nInjected: 1"}, "headers.X-Foo"),
        ({"X-Foo": "a\nb"}, "headers.X-Foo"),
        ({"X-Foo": "nul\x00byte"}, "headers.X-Foo"),
        ({"X-Foo": "esc\x1b[31m"}, "headers.X-Foo"),
        ({"X-Foo": "del\x7f"}, "headers.X-Foo"),
        ({"X-Foo": "v" * 8193}, "headers.X-Foo"),
        ({"X-Foo\r\nInjected": "v"}, "headers.X-Foo\r\nInjected"),
        ({"X\x00": "v"}, "headers.X\x00"),
        ({"bad name": "v"}, "headers.bad name"),
        ({"-leading": "v"}, "headers.-leading"),
        ({"": "v"}, "headers."),
        ({"n" * (MAX_HEADER_NAME_LEN + 1): "v"}, "headers." + "n" * 64),
    ],
)
def test_bad_header_names_and_values_are_refused_naming_the_header(
    headers: dict[str, str], field: str
) -> None:
    with pytest.raises(InvalidEvent) as info:
        Event(type="x", headers=headers)
    assert info.value.code == "invalid_event"
    assert info.value.field == field


def test_header_names_fit_an_amqp_short_string() -> None:
    assert MAX_HEADER_NAME_LEN == 255
    event = Event(type="x", headers={"n" * 255: "v", "x-tenant": "t 1: ok"})
    assert len(event.headers) == 2


# --- rendered destinations -------------------------------------------------------------


def _router(sinks: list[dict[str, Any]], routes: list[dict[str, Any]]) -> Router:
    return Router(parse_config({"sinks": sinks, "routes": routes}, {}).routes)


KAFKA = {"name": "k", "type": "kafka", "bootstrap_servers": "127.0.0.1:9"}
RABBIT = {"name": "r", "type": "rabbitmq"}


@pytest.mark.parametrize(
    "type_",
    ["a b", "a/b", "a:b", "ünïcode", "x" * 250, "a{b}", "a\u00a0b"[:1] + "#"],
)
def test_hostile_type_in_a_kafka_topic_template_is_a_template_error(type_: str) -> None:
    router = _router([KAFKA], [{"name": "t", "match": "*", "sink": "k", "topic": "ev.{type}"}])
    with pytest.raises(TemplateError) as info:
        router.resolve(Event(type=type_))
    assert info.value.code == "template_error"
    assert info.value.field == "topic"
    assert repr(f"ev.{type_}"[:100]) in info.value.message


@pytest.mark.parametrize("subject", [".", ".."])
def test_kafka_topics_dot_and_dotdot_are_refused(subject: str) -> None:
    router = _router([KAFKA], [{"name": "t", "match": "*", "sink": "k", "topic": "{subject}"}])
    with pytest.raises(TemplateError, match="not a valid Kafka topic"):
        router.resolve(Event(type="x", subject=subject))


def test_a_good_kafka_topic_resolves() -> None:
    router = _router([KAFKA], [{"name": "t", "match": "*", "sink": "k", "topic": "ev.{type}"}])
    _, outgoing = router.resolve(Event(type="order.placed-v1_x"))
    assert outgoing.options.destination("k") == "ev.order.placed-v1_x"


def test_a_literal_invalid_kafka_topic_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        _router([KAFKA], [{"name": "t", "match": "*", "sink": "k", "topic": "bad topic"}])
    assert info.value.field == "routes[0].topic"  # refused at load, with its key path


def test_rendered_control_characters_name_the_option_and_show_the_value() -> None:
    router = _router(
        [RABBIT], [{"name": "r", "match": "*", "sink": "r", "routing_key": "rk.{data.k}"}]
    )
    with pytest.raises(TemplateError) as info:
        router.resolve(Event(type="x", data={"k": "a\r\nb\x00"}))
    assert info.value.field == "routing_key"
    assert "'rk.a\\r\\nb\\x00'" in info.value.message


def test_a_routing_key_over_255_bytes_is_a_template_error() -> None:
    router = _router([RABBIT], [{"name": "r", "match": "*", "sink": "r"}])  # routing key {type}
    with pytest.raises(TemplateError) as info:
        router.resolve(Event(type="é" * 128))  # 128 characters, 256 bytes
    assert info.value.field == "routing_key"
    _, outgoing = router.resolve(Event(type="é" * 127))
    assert outgoing.options.routing_key == "é" * 127  # type: ignore[attr-defined]


def test_event_attributes_over_255_bytes_are_refused_for_rabbitmq() -> None:
    router = _router([RABBIT], [{"name": "r", "match": "*", "sink": "r", "routing_key": "fixed"}])
    with pytest.raises(InvalidEvent) as info:
        router.resolve(Event(type="t" * 256))
    assert info.value.field == "type"
    with pytest.raises(InvalidEvent) as info:
        router.resolve(Event(type="x", source="s" * 300))
    assert info.value.field == "source"


def test_key_template_with_a_hostile_value_names_the_key() -> None:
    router = _router(
        [KAFKA], [{"name": "t", "match": "*", "sink": "k", "topic": "t", "key": "{data.k}"}]
    )
    with pytest.raises(TemplateError) as info:
        router.resolve(Event(type="x", data={"k": "\x00"}))
    assert info.value.field == "key"


# --- redaction -----------------------------------------------------------------------


@pytest.fixture
def registry() -> Iterator[None]:
    redact.forget_all()
    yield
    redact.forget_all()


def test_url_passwords_are_masked_without_registration(registry: None) -> None:
    text = "cannot connect to amqp://user:p%40ss-w0rd@host:5672/vh (got 'amqps://u:x@h')"
    shown = redact.scrub(text)
    assert "p%40ss-w0rd" not in shown
    assert "amqp://***:***@host:5672/vh" in shown
    assert "amqps://***:***@h" in shown
    assert redact.scrub("amqp://host:5672/ and http://h:80/a@b") == (
        "amqp://host:5672/ and http://h:80/a@b"
    )


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("amqp://guest:guest@h:5672/", "amqp://***:***@h:5672/"),
        ("amqp://app@h/vh", "amqp://***@h/vh"),
        ("nats://tok3n@h:4222", "nats://***@h:4222"),
        ("amqp://:pw@h/", "amqp://***:***@h/"),
        ("amqp://h:5672/", "amqp://h:5672/"),
    ],
)
def test_one_rule_masks_user_and_password_alike(registry: None, url: str, shown: str) -> None:
    """`scrub` (free text: logs, error bodies) and `mask_url` (a URL shown on its own:
    health details, /readyz) agree, whether or not the value is a registered secret."""
    assert redact.mask_url(url) == shown
    line = f"cannot connect to {url}: refused"
    assert redact.scrub(line) == f"cannot connect to {shown}: refused"
    redact.register("guest")
    assert redact.scrub(url) == shown


def test_mask_url_drops_the_query(registry: None) -> None:
    assert redact.mask_url("amqps://u:p@h/?heartbeat=15&password=x") == "amqps://***:***@h/"


def test_secrets_of_a_config_come_from_the_token_urls_and_env(registry: None) -> None:
    config = parse_config(
        {
            "auth": {"token": "tok-123456"},
            "sinks": [
                {"name": "r1", "type": "rabbitmq", "url": "amqp://u:inline-pw@h/"},
                {"name": "r2", "type": "rabbitmq", "url": "amqp://u@h/", "password_env": "RPW"},
                {
                    **KAFKA,
                    "security_protocol": "SASL_PLAINTEXT",
                    "sasl_mechanism": "PLAIN",
                    "sasl_username": "user",
                    "sasl_password_env": "KPW",
                },
            ],
            "routes": [{"name": "a", "match": "*", "sink": "r1"}],
        },
        {},
    )
    env = {"RPW": "env-rabbit-pw", "KPW": "kafka-sasl-pw"}
    assert set(redact.secrets_of(config, env)) == {
        "tok-123456",
        "inline-pw",
        "env-rabbit-pw",
        "kafka-sasl-pw",
    }
    redact.register(*redact.secrets_of(config, env))
    line = (
        "auth failed for user with kafka-sasl-pw, token tok-123456, b'\\x00user\\x00kafka-sasl-pw'"
    )
    assert redact.scrub(line) == "auth failed for user with ***, token ***, b'\\x00user\\x00***'"


def test_short_values_are_not_registered(registry: None) -> None:
    redact.register("ab", None, "")
    assert redact.scrub("ab abc") == "ab abc"


def test_config_errors_do_not_quote_secret_values(registry: None) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"auth": {"token": 123456789}}, {})
    assert "123456789" not in info.value.message
    assert "<redacted>" in info.value.message
    with pytest.raises(ConfigError) as info:
        parse_config(
            {
                "sinks": [{"name": "r", "type": "rabbitmq", "url": "ampq://u:hunter2-pw@h/"}],
                "routes": [{"name": "a", "match": "*", "sink": "r"}],
            },
            {},
        )
    assert info.value.field == "sinks[0].url"
    assert "hunter2-pw" not in info.value.message
    assert "ampq://***:***@h/" in info.value.message


# --- log formatting ------------------------------------------------------------------


def _record(msg: str, *args: object, exc: bool = False, **extra: object) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise RuntimeError("boom with sekret-value-1")
        except RuntimeError:
            import sys

            exc_info = sys.exc_info()
    record = logging.LogRecord("t", logging.WARNING, __file__, 1, msg, args, exc_info)
    record.__dict__.update(extra)
    return record


def test_formatters_scrub_secrets_everywhere(registry: None) -> None:
    redact.register("sekret-value-1")
    record = _record(
        "connect %s failed", "amqp://u:sekret-value-1@h/", exc=True, url="x sekret-value-1"
    )
    text = TextFormatter().format(record)
    assert "sekret-value-1" not in text
    assert "RuntimeError: boom with ***" in text
    out = json.loads(JsonFormatter().format(record))
    assert "sekret-value-1" not in json.dumps(out)
    assert out["url"] == "x ***"


def test_text_lines_escape_control_characters() -> None:
    line = TextFormatter().format(_record("event %s rejected", "a\nFAKE 2026 error forged\r\x1b"))
    assert "\n" not in line
    assert "\r" not in line
    assert "\x1b" not in line
    assert "a\\nFAKE 2026 error forged\\r\\x1b" in line
    field_line = TextFormatter().format(_record("x", value="a\rb"))
    assert "\r" not in field_line


def test_lines_written_during_a_request_carry_its_id() -> None:
    token = REQUEST_ID.set("req-42")
    try:
        text = TextFormatter().format(_record("hello"))
        data = json.loads(JsonFormatter().format(_record("hello")))
    finally:
        REQUEST_ID.reset(token)
    assert text.endswith("request_id=req-42")
    assert data["request_id"] == "req-42"
    assert "request_id" not in json.loads(JsonFormatter().format(_record("hello")))


def test_logging_through_a_handler_scrubs(registry: None) -> None:
    redact.register("handler-secret-9")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(TextFormatter())
    logger = logging.getLogger("tests.injection")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("password is %s", "handler-secret-9")
    finally:
        logger.removeHandler(handler)
    assert "handler-secret-9" not in stream.getvalue()


# --- request ids ----------------------------------------------------------------------


@pytest.mark.parametrize("given", ["abc-123", "0af7651916cd43dd8448eb211c80319c", "a.b:c/d+e=f@g"])
def test_sane_incoming_request_ids_are_kept(given: str) -> None:
    assert request_id_for(given) == given


@pytest.mark.parametrize(
    "given", [None, "", "a b", "x\r\nSet-Cookie: 1", "é", "x" * 129, "<script>"]
)
def test_other_request_ids_are_replaced(given: str | None) -> None:
    made = request_id_for(given)
    assert made != given
    assert len(made) == 16
    assert int(made, 16) >= 0
