"""Every destination a route names, its own and its dead-letter one, is compiled and validated
at config load: a value the broker could never take is refused there, with its key path."""

from __future__ import annotations

from typing import Any

import pytest

from bridge.config import parse_config
from bridge.errors import ConfigError, TemplateError
from bridge.event import Event
from bridge.routing import Router
from bridge.sinks.kafka import KafkaRoute

SINKS = [
    {"name": "k", "type": "kafka", "bootstrap_servers": "127.0.0.1:1"},
    {"name": "r", "type": "rabbitmq"},
    {"name": "n", "type": "nats"},
    {"name": "mem", "type": "memory"},
]


def load(*routes: dict[str, Any]) -> Any:
    return parse_config({"sinks": SINKS, "routes": list(routes)}, {})


@pytest.mark.parametrize(
    ("route", "where", "words"),
    [
        (
            {"sink": "k", "topic": "t", "dead_letter": {"sink": "k", "topic": "bad topic!"}},
            "routes[0].dead_letter.topic",
            "not a valid Kafka topic",
        ),
        (
            {"sink": "r", "dead_letter": {"sink": "r", "routing_key": "k" * 256}},
            "routes[0].dead_letter.routing_key",
            "AMQP allows 255",
        ),
        (
            {"sink": "n", "subject": "s", "dead_letter": {"sink": "n", "subject": "a.*"}},
            "routes[0].dead_letter.subject",
            "not a NATS subject",
        ),
        # Another broker's dead-letter destination is checked by that broker's rules.
        (
            {"sink": "mem", "dead_letter": {"sink": "k", "topic": "dead letters"}},
            "routes[0].dead_letter.topic",
            "not a valid Kafka topic",
        ),
        # Escaped braces are literal text: checked at load, not treated as a template.
        (
            {"sink": "k", "topic": "t", "dead_letter": {"sink": "k", "topic": "dl{{x}}"}},
            "routes[0].dead_letter.topic",
            "'dl{x}'",
        ),
        (
            {"sink": "k", "topic": "t", "dead_letter": {"sink": "k", "topic": ""}},
            "routes[0].dead_letter.topic",
            "must not be empty",
        ),
    ],
)
def test_an_invalid_dead_letter_destination_is_refused_at_load_with_its_key_path(
    route: dict[str, Any], where: str, words: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load({"match": "*", **route})
    assert info.value.field == where
    assert info.value.message.startswith(f"{where}: ")
    assert words in info.value.message


def test_a_literal_option_is_checked_even_when_another_option_is_a_template() -> None:
    with pytest.raises(ConfigError) as info:
        load(
            {"match": "a", "sink": "mem"},
            {"match": "*", "sink": "r", "exchange": "{subject}", "routing_key": "k" * 256},
        )
    assert info.value.field == "routes[1].routing_key"


def test_route_errors_carry_the_key_path_of_the_route() -> None:
    with pytest.raises(ConfigError) as info:
        load({"match": "a", "sink": "k", "topic": "ok"}, {"match": "*", "sink": "k", "topic": "."})
    assert info.value.field == "routes[1].topic"


def test_good_destinations_load_compiled_and_escaped_literals_unescaped() -> None:
    config = load(
        {
            "match": "*",
            "sink": "r",
            "routing_key": "rk.{{x}}",
            "dead_letter": {"sink": "k", "topic": "dead.{type}"},
        }
    )
    route = config.routes[0]
    assert route.compiled is not None
    assert not route.compiled.templated
    assert route.compiled.options.routing_key == "rk.{x}"
    _, out = Router(config.routes).resolve(Event(type="t"))
    assert out.options.routing_key == "rk.{x}"  # type: ignore[attr-defined]
    dead = route.dead_letter.destination
    assert dead is route.dead_letter.compiled
    assert dead.templated
    assert dead.options_for(Event(type="orders")) == KafkaRoute(topic="dead.orders")


def test_a_dead_letter_template_is_guarded_and_checked_per_event() -> None:
    route = load(
        {"match": "*", "sink": "mem", "dead_letter": {"sink": "k", "topic": "{subject}"}}
    ).routes[0]
    dead = route.dead_letter.destination
    with pytest.raises(TemplateError) as info:
        dead.options_for(Event(type="t", subject="__consumer_offsets"))
    assert (info.value.code, info.value.field) == ("destination_refused", "topic")
    with pytest.raises(TemplateError, match="not a valid Kafka topic"):
        dead.options_for(Event(type="t", subject="a b"))
