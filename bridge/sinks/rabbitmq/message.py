"""An event as an AMQP message: the CloudEvents AMQP binding, binary and structured modes.

Binary mode: the body is the event's ``data``, the attributes travel as
``cloudEvents:*`` headers and as AMQP properties (``message_id``, ``type``,
``app_id``, ``timestamp``, ...). Structured mode: the body is the CloudEvents
JSON format and the header table holds only the event's transport headers.
docs/rabbitmq.md has the full table.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final

import msgspec
from pamqp.commands import Basic

from bridge.errors import SinkRejected
from bridge.event import Event, epoch_seconds, to_structured, wire_content_type
from bridge.sinks.rabbitmq.config import MAX_EXPIRATION_MS, SHORTSTR_MAX, too_long, ttl_problem

#: Prefixes of the AMQP CloudEvents binding's attribute names (both are valid there).
_CE_PREFIXES: Final = ("cloudevents:", "cloudevents_")
STRUCTURED_CONTENT_TYPE: Final = "application/cloudevents+json; charset=utf-8"
_json_encode: Final = msgspec.json.Encoder().encode


class AmqpMessage:
    """One event ready to go out: where to, its properties and body, its place in the call."""

    __slots__ = ("body", "exchange", "index", "message_id", "properties", "routing_key")

    def __init__(
        self,
        index: int,
        exchange: str,
        routing_key: str,
        properties: Basic.Properties,
        body: bytes,
    ) -> None:
        self.index = index
        self.exchange = exchange
        self.routing_key = routing_key
        self.properties = properties
        self.message_id: str = properties.message_id or ""
        self.body = body


def shortstr(value: str, what: str, field: str) -> str:
    """``value`` if it fits an AMQP short string; else `SinkRejected` naming ``field``."""
    if too_long(value):
        raise SinkRejected(
            f"{what} is longer than AMQP's {SHORTSTR_MAX}-byte limit", code="too_long", field=field
        )
    return value


def _timestamp(event: Event) -> datetime | None:
    """The event time for the AMQP ``timestamp`` property (whole seconds, none before 1970)."""
    seconds = epoch_seconds(event.time)
    return datetime.fromtimestamp(seconds, UTC) if seconds >= 0 else None


def _transport_headers(event: Event) -> dict[str, Any]:
    """The event's own headers, without names of the binding's attribute namespace: a
    transport header cannot forge an attribute (compared case-insensitively)."""
    headers: dict[str, Any] = {}
    for name, value in event.headers.items():
        if name[:12].lower() in _CE_PREFIXES:
            continue
        headers[shortstr(name, f"header name {name[:40]!r}", "headers")] = value
    return headers


def amqp_headers(event: Event, key: str | None) -> dict[str, Any]:
    """The header table in binary mode: the event's own headers, then the
    ``cloudEvents:*`` attributes (extensions included, as AMQP booleans, integers
    or long strings)."""
    headers = _transport_headers(event)
    headers["cloudEvents:specversion"] = event.specversion
    headers["cloudEvents:id"] = event.id
    if event.source is not None:
        headers["cloudEvents:source"] = event.source
    headers["cloudEvents:type"] = event.type
    headers["cloudEvents:time"] = event.time
    if event.subject is not None:
        headers["cloudEvents:subject"] = event.subject
    if key is not None:
        headers["cloudEvents:partitionkey"] = key
    if event.dataschema is not None:
        headers["cloudEvents:dataschema"] = event.dataschema
    if event.correlation_id is not None:
        headers["cloudEvents:correlationid"] = event.correlation_id
    if event.ttl_ms is not None:
        headers["cloudEvents:ttl"] = str(event.ttl_ms)
    for name, value in event.extensions.items():
        headers["cloudEvents:" + name] = value
    return headers


def structured_body(event: Event, key: str | None) -> bytes:
    """The event in the CloudEvents JSON format; ``partitionkey`` is the route's key."""
    envelope = to_structured(event)
    if key is not None:
        envelope["partitionkey"] = key
    return _json_encode(envelope)


def amqp_properties(
    event: Event, key: str | None, *, persistent: bool, structured: bool = False
) -> Basic.Properties:
    """The AMQP message properties of an event; `SinkRejected` if one cannot be encoded.

    Binary mode: ``content_type`` is the data's content type (none when unset and
    the data is raw bytes) and the attributes are ``cloudEvents:*`` headers.
    Structured mode: ``content_type`` is the JSON event format's and the header
    table holds only the event's transport headers (the body has the attributes).
    """
    if structured:
        content_type: str | None = STRUCTURED_CONTENT_TYPE
        headers = _transport_headers(event)
    else:
        content_type = wire_content_type(event)
        if content_type is not None:
            content_type = shortstr(content_type, "datacontenttype", "datacontenttype")
        headers = amqp_headers(event, key)
    if event.ttl_ms is not None and event.ttl_ms > MAX_EXPIRATION_MS:
        # Sent anyway, it would close the channel under every other unconfirmed publish.
        raise SinkRejected(ttl_problem(event.ttl_ms), code="invalid_ttl", field="ttl_ms")
    return Basic.Properties(
        content_type=content_type,
        headers=headers,
        delivery_mode=2 if persistent else 1,
        correlation_id=(
            None
            if event.correlation_id is None
            else shortstr(event.correlation_id, "correlation_id", "correlation_id")
        ),
        expiration=None if event.ttl_ms is None else str(event.ttl_ms),
        message_id=shortstr(event.id, "id", "id"),
        timestamp=_timestamp(event),
        message_type=shortstr(event.type, "type", "type"),
        app_id=None if event.source is None else shortstr(event.source, "source", "source"),
    )
