"""An event as a NATS message: the CloudEvents NATS binding, binary content mode.

The body is the event's ``data``; every CloudEvents attribute travels as a
``ce-<name>`` header, ``datacontenttype`` as ``content-type``; the bridge's
``key`` and ``correlation_id`` as the ``partitionkey`` and ``correlationid``
extensions; the event's extension attributes as ``ce-<name>`` (canonical text).
``content-type`` is absent when nobody described raw bytes. ``Nats-Msg-Id`` is
the event id, so JetStream's duplicate window drops a resent event. The event's
own headers (W3C ``traceparent`` and ``tracestate`` among them) go first and as
they are, except names the binding or JetStream reserve, so an event header
cannot spoof an attribute.
"""

from __future__ import annotations

from typing import Final

from bridge.event import Event, extension_text, wire_content_type

MSG_ID: Final = "Nats-Msg-Id"
#: (Event attribute, header) pairs for the optional attributes. New CloudEvents
#: extensions on `Event` are one more row here.
_OPTIONAL: Final = (
    ("source", "ce-source"),
    ("subject", "ce-subject"),
    ("key", "ce-partitionkey"),
    ("correlation_id", "ce-correlationid"),
    ("ttl_ms", "ce-ttl"),
    ("dataschema", "ce-dataschema"),
)


def _reserved(name: str) -> bool:
    lower = name.lower()
    return lower.startswith(("ce-", "nats-")) or lower == "content-type"


def nats_headers(event: Event, key: str | None) -> dict[str, str]:
    """The headers of ``event``'s message (``key`` is the route's resolved key)."""
    headers = {n: v for n, v in event.headers.items() if not _reserved(n)} if event.headers else {}
    headers[MSG_ID] = event.id
    headers["ce-specversion"] = event.specversion
    headers["ce-id"] = event.id
    headers["ce-type"] = event.type
    headers["ce-time"] = event.time
    content_type = wire_content_type(event)
    if content_type is not None:
        headers["content-type"] = content_type
    for attr, header in _OPTIONAL:
        value = key if attr == "key" else getattr(event, attr)
        if value is not None:
            headers[header] = str(value)
    for name, ext in event.extensions.items():
        headers["ce-" + name] = extension_text(ext)
    return headers
