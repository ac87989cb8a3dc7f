"""What an endpoint receives (CloudEvents HTTP binary mode) and what its answer may say.

The request: ``POST``, body = the event's data (`bridge.event.codecs.data_bytes`) with
its content type, the context attributes as ``ce-*`` headers (non-ASCII and ``%``
percent-encoded, as the binding says), extensions as ``ce-<name>``, the bridge's
``kind`` / ``key`` / ``correlation_id`` / ``ttl_ms`` as ``ce-kind`` / ``ce-partitionkey``
/ ``ce-correlationid`` / ``ce-ttl`` (the names ingest reads), and ``traceparent`` /
``tracestate`` when the event carries them. docs/handler-api.json describes it.

A 2xx answer with a JSON object body may carry ``emit`` (a list of events in the plain
JSON shape, follow-ups through ``ctx.emit``), ``stop: true`` (the chain ends after this
handler) or ``skip: true`` (this handler is recorded as skipped), with an optional
``reason`` text. Any other body is ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote

import msgspec

from bridge.event import Event
from bridge.event.attributes import extension_text
from bridge.event.codecs import convert, data_bytes, wire_content_type

#: Attribute -> header, in the order they are sent; the names ingest's binary mode reads.
_ATTRIBUTES: Final = (
    ("specversion", "ce-specversion"),
    ("id", "ce-id"),
    ("source", "ce-source"),
    ("type", "ce-type"),
    ("time", "ce-time"),
    ("subject", "ce-subject"),
    ("dataschema", "ce-dataschema"),
    ("kind", "ce-kind"),
    ("key", "ce-partitionkey"),
    ("correlation_id", "ce-correlationid"),
)
_TRACE: Final = ("traceparent", "tracestate")
#: Safe in a header value as sent: printable ASCII except ``%`` (RFC 3986 unreserved + more).
_SAFE: Final = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) not in '%"')

_decode: Final = msgspec.json.Decoder()


def _header_value(value: str) -> str:
    return (
        value
        if value.isascii() and value.isprintable() and "%" not in value
        else quote(value, safe=_SAFE)
    )


def request_of(event: Event, extra: dict[str, str]) -> tuple[dict[str, str], bytes]:
    """The headers and body of the POST for ``event`` (``extra``: configured headers)."""
    headers = dict(extra)
    for attr, header in _ATTRIBUTES:
        value = getattr(event, attr)
        if value is not None:
            headers[header] = _header_value(value)
    if event.ttl_ms is not None:
        headers["ce-ttl"] = str(event.ttl_ms)
    for name, ext in event.extensions.items():
        headers[f"ce-{name}"] = _header_value(extension_text(ext))
    for name in _TRACE:
        trace = event.headers.get(name)
        if trace is not None:
            headers[name] = trace
    body = data_bytes(event) if event.data is not None else b""
    content_type = wire_content_type(event)
    if content_type is not None and body:
        headers["content-type"] = content_type
    return headers, body


class AnswerError(ValueError):
    """A 2xx answer whose directives cannot be followed (a malformed ``emit``)."""


@dataclass(frozen=True, slots=True)
class Answer:
    """What a 2xx answer asked for."""

    emit: tuple[Event, ...] = ()
    stop: bool = False
    skip: bool = False
    reason: str | None = None


_NOTHING: Final = Answer()


def _is_json(content_type: str) -> bool:
    media = content_type.partition(";")[0].strip().lower()
    return media.endswith(("/json", "+json"))


def parse_answer(content_type: str, body: bytes) -> Answer:
    """The directives of a 2xx answer; `AnswerError` when they are malformed."""
    if not body or not _is_json(content_type):
        return _NOTHING
    try:
        decoded: Any = _decode.decode(body)
    except msgspec.DecodeError as exc:
        raise AnswerError(f"answer is not valid JSON: {exc}") from None
    if not isinstance(decoded, dict):
        return _NOTHING
    raw_emit = decoded.get("emit", ())
    if not isinstance(raw_emit, list | tuple):
        raise AnswerError(f"answer 'emit' must be a list of events, got {type(raw_emit).__name__}")
    events: list[Event] = []
    for i, item in enumerate(raw_emit):
        try:
            events.append(convert(item))
        except Exception as exc:
            raise AnswerError(f"answer emit[{i}] is not a valid event: {exc}") from None
    stop, skip, reason = decoded.get("stop"), decoded.get("skip"), decoded.get("reason")
    for key, flag in (("stop", stop), ("skip", skip)):
        if flag is not None and not isinstance(flag, bool):
            raise AnswerError(f"answer {key!r} must be true or false, got {flag!r}")
    if stop and skip:
        raise AnswerError("answer has both 'stop' and 'skip': choose one")
    if reason is not None and not isinstance(reason, str):
        reason = str(reason)
    return Answer(tuple(events), bool(stop), bool(skip), reason)
