"""An AMQP message back into an event: the CloudEvents AMQP binding the RabbitMQ sink
writes (`bridge.sinks.rabbitmq.message`), binary and structured modes, else a plain event.

Binary mode is recognised by a ``cloudEvents:specversion`` (or ``cloudEvents_``)
header; structured mode by the ``application/cloudevents+json`` content type.
No broker library is imported here: the source passes the message's parts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from bridge.event import Event
from bridge.sources.base import render
from bridge.sources.decode import (
    binary_mode_event,
    is_structured,
    plain_event,
    structured_event,
)

_PREFIXES: Final = ("cloudevents:", "cloudevents_")


def _text(value: object) -> str:
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode(errors="replace")
    return str(value)


def _value(value: object) -> Any:
    """An AMQP header value as an extension value (bytes as text; bool and int kept)."""
    if isinstance(value, bool | int | str):
        return value
    return _text(value)


def amqp_event(
    body: bytes,
    *,
    headers: Mapping[str, object] | None,
    content_type: str | None,
    message_id: str | None,
    routing_key: str,
    exchange: str,
    queue: str,
    event_type: str,
) -> Event:
    """The event of one AMQP message (`Undecodable` when there is none)."""
    attributes: dict[str, object] = {}
    transport: dict[str, str] = {}
    for name, value in (headers or {}).items():
        if name[:12].lower() in _PREFIXES:
            attributes[name[12:].lower()] = value
        else:
            transport[name] = _text(value)
    if is_structured(content_type):
        return structured_event(body, transport)
    if "specversion" not in attributes:
        fields = {"routing_key": routing_key or queue, "queue": queue, "exchange": exchange}
        return plain_event(
            render(event_type, fields), body, content_type, id=message_id, headers=transport
        )
    return binary_mode_event(
        attributes, body, content_type, transport, text=_text, extension=_value
    )
