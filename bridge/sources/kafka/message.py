"""A Kafka record back into an event: the CloudEvents Kafka binding the Kafka sink writes
(`bridge.sinks.kafka.message`: ``ce_*`` headers, ``content-type``, the record key as the
event's ``key``; structured mode by ``application/cloudevents+json``), else a plain event.
Header values are bytes on Kafka: extensions arrive as text. No broker library here."""

from __future__ import annotations

import functools
from collections.abc import Sequence

from bridge.event import Event
from bridge.sources.base import render
from bridge.sources.decode import (
    binary_mode_event,
    is_structured,
    plain_event,
    structured_event,
)


@functools.lru_cache(maxsize=256)
def _event_type(template: str, topic: str) -> str:
    # Rendered once per topic, not per record (topics are few; a pattern's are bounded).
    return render(template, {"topic": topic})


def kafka_event(
    value: bytes | None,
    *,
    headers: Sequence[tuple[str, bytes]],
    key: bytes | None,
    topic: str,
    event_type: str,
) -> Event:
    """The event of one Kafka record (`Undecodable` when there is none)."""
    attributes: dict[str, str] = {}
    transport: dict[str, str] = {}
    content_type: str | None = None
    for name, raw in headers:
        text = raw.decode(errors="replace") if raw is not None else ""
        lower = name.lower()
        if lower.startswith("ce_"):
            attributes[lower[3:]] = text
        elif lower == "content-type":
            content_type = text
        else:
            transport[name] = text
    body = value or b""
    if is_structured(content_type):
        return structured_event(body, transport)
    if "specversion" not in attributes:
        return plain_event(_event_type(event_type, topic), body, content_type, headers=transport)
    if key is not None:
        attributes["partitionkey"] = key.decode(errors="replace")
    return binary_mode_event(attributes, body, content_type, transport)
