"""An event as a Kafka record's value and headers: the CloudEvents Kafka protocol binding.

Binary mode (the default): the value is the event's data, the attributes are
``ce_*`` headers and ``datacontenttype`` is ``content-type``. Structured mode:
the value is the whole CloudEvent as JSON, ``content-type:
application/cloudevents+json``. The event's own headers (W3C trace context)
are copied, except names the binding owns (``content-type``, ``ce_*`` in any
case), so transport headers can neither forge an attribute nor switch a
consumer that detects the mode by ``ce_*`` headers to binary mode.
"""

from __future__ import annotations

import msgspec

from bridge.event import Event, data_bytes, extension_text, to_structured, wire_content_type

Headers = list[tuple[str, bytes]]

_STRUCTURED_TYPE = b"application/cloudevents+json; charset=utf-8"
_SPECVERSION = ("ce_specversion", b"1.0")
_CONTENT_TYPE = "content-type"
_CE_PREFIX = "ce_"
#: Upper bound of the ``ce_*`` headers' size, to skip the exact record-size
#: computation for events far below the limit.
CE_HEADERS_BOUND = 10 * (1024 + 32) + 256
#: Upper bound of one copied event header's size in a record.
EVENT_HEADER_BOUND = 256 + 8192 * 4 + 16


class Codec:
    """Turns events into (value, headers): CloudEvents Kafka binding, binary or structured."""

    def __init__(self, mode: str) -> None:
        self.structured = mode == "structured"
        self._encoder = msgspec.json.Encoder()
        # type, source and content type repeat from event to event: their header tuples
        # are built once (aiokafka only reads them), in one table per header name so
        # that a lookup needs no key tuple.
        self._cached: dict[str, dict[str, tuple[str, bytes]]] = {}
        # The three looked up for nearly every event, bound directly (the tables above).
        self._types: dict[str, tuple[str, bytes]] = {}
        self._content_types: dict[str, tuple[str, bytes]] = {}
        self._sources: dict[str, tuple[str, bytes]] = {}

    def _header(self, name: str, text: str) -> tuple[str, bytes]:
        table = self._cached.get(name)
        if table is None:
            table = self._cached[name] = {}
        found = table.get(text)
        if found is None:
            if len(table) >= 4096:
                table.clear()
            found = table[text] = (name, text.encode())
        return found

    def encode(self, event: Event) -> tuple[bytes, Headers]:
        """The record value and headers for ``event``; raises TypeError/ValueError/
        OverflowError when its data cannot be encoded."""
        if self.structured:
            value = self._encoder.encode(to_structured(event))
            headers: Headers = [(_CONTENT_TYPE, _STRUCTURED_TYPE)]
        else:
            value = data_bytes(event)
            header = self._header
            type_header = self._types.get(event.type)
            if type_header is None:
                type_header = header("ce_type", event.type)
                self._types = self._cached["ce_type"]
            headers = [
                _SPECVERSION if event.specversion == "1.0" else header("ce_specversion", "1.0"),
                ("ce_id", event.id.encode()),
                type_header,
                ("ce_time", event.time.encode()),
            ]
            content_type = wire_content_type(event)
            if content_type is not None:
                found = self._content_types.get(content_type)
                if found is None:
                    found = header(_CONTENT_TYPE, content_type)
                    self._content_types = self._cached[_CONTENT_TYPE]
                headers.append(found)
            if event.source is not None:
                found = self._sources.get(event.source)
                if found is None:
                    found = header("ce_source", event.source)
                    self._sources = self._cached["ce_source"]
                headers.append(found)
            if event.subject is not None:
                headers.append(("ce_subject", event.subject.encode()))
            if event.correlation_id is not None:
                headers.append(("ce_correlationid", event.correlation_id.encode()))
            if event.ttl_ms is not None:
                headers.append(("ce_ttl", str(event.ttl_ms).encode()))
            if event.dataschema is not None:
                headers.append(header("ce_dataschema", event.dataschema))
            for name, ext in event.extensions.items():
                headers.append((_CE_PREFIX + name, extension_text(ext).encode()))
        if event.headers:
            for name, text in event.headers.items():
                lower = name.lower()
                if lower != _CONTENT_TYPE and not lower.startswith(_CE_PREFIX):
                    headers.append((name, text.encode()))
        return value, headers


#: The old private name, still imported by tests.
_Codec = Codec
