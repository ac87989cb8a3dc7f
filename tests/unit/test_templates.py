from __future__ import annotations

import pytest

from bridge.errors import ConfigError, TemplateError
from bridge.event import Event
from bridge.templates import Template


def test_renders_attributes_data_and_headers() -> None:
    event = Event(
        type="order.created", subject="s1", data={"user": {"id": 7}, "ok": True}, headers={"t": "v"}
    )
    assert Template("events.{type}", where="w").render(event) == "events.order.created"
    assert Template("{data.user.id}-{subject}", where="w").render(event) == "7-s1"
    assert Template("{data.ok}/{headers.t}", where="w").render(event) == "true/v"
    assert Template("{{literal}}", where="w").render(event) == "{literal}"


def test_literal_template_is_detected() -> None:
    assert Template("orders", where="w").is_literal
    assert not Template("o.{type}", where="w").is_literal


@pytest.mark.parametrize("source", ["{nope}", "{data.}", "{type", "a}b", "{ }"])
def test_bad_templates_fail_at_load_naming_where(source: str) -> None:
    with pytest.raises(ConfigError) as info:
        Template(source, where="routes[0].topic")
    assert info.value.field == "routes[0].topic"


def test_missing_field_is_a_clear_per_event_error() -> None:
    template = Template("{data.user_id}", where="w")
    with pytest.raises(TemplateError) as info:
        template.render(Event(type="x", data={"other": 1}))
    assert info.value.field == "data.user_id"
    with pytest.raises(TemplateError):
        Template("{subject}", where="w").render(Event(type="x"))
    with pytest.raises(TemplateError):
        template.render(Event(type="x", data={"user_id": {"nested": 1}}))


def test_rendered_control_characters_are_refused() -> None:
    with pytest.raises(TemplateError):
        Template("{data.k}", where="w").render(Event(type="x", data={"k": "a\r\nb"}))
