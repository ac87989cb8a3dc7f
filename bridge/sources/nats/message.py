"""A NATS message back into an event: the CloudEvents NATS binding the NATS sink writes
(`bridge.sinks.nats.message`: ``ce-*`` headers, ``content-type``), else a plain event.

Binary mode is recognised by a ``ce-specversion`` header, structured mode by the
``application/cloudevents+json`` content type. NATS headers are text, so an
extension arrives as text (an int or bool extension comes back as its text form).
No broker library is imported here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from bridge.event import Event
from bridge.sources.base import render
from bridge.sources.decode import (
    binary_mode_event,
    is_structured,
    plain_event,
    structured_event,
)

MSG_ID: Final = "nats-msg-id"


def nats_event(
    body: bytes,
    *,
    headers: Mapping[str, str] | None,
    subject: str,
    stream: str,
    event_type: str,
) -> Event:
    """The event of one JetStream message (`Undecodable` when there is none)."""
    attributes: dict[str, str] = {}
    transport: dict[str, str] = {}
    content_type: str | None = None
    message_id: str | None = None
    for name, value in (headers or {}).items():
        lower = name.lower()
        if lower.startswith("ce-"):
            attributes[lower[3:]] = value
        elif lower == "content-type":
            content_type = value
        elif lower == MSG_ID:
            message_id = value
        elif not lower.startswith("nats-"):
            transport[name] = value
    if is_structured(content_type):
        return structured_event(body, transport)
    if "specversion" not in attributes:
        fields = {"subject": subject, "stream": stream}
        return plain_event(
            render(event_type, fields), body, content_type, id=message_id, headers=transport
        )
    return binary_mode_event(attributes, body, content_type, transport)
