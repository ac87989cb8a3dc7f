"""Request bodies to events: the content modes of ``POST /v1/events`` and ``/v1/events/batch``.

Single event (``decode_event``):

- ``application/json`` (also a missing Content-Type): the plain JSON shape;
- ``application/cloudevents+json``: CloudEvents structured mode;
- CloudEvents binary mode, chosen by a ``ce-specversion``, ``ce-id`` or
  ``ce-type`` header: the ``ce-*`` headers are the attributes and the body is
  ``data`` (decoded when its Content-Type is JSON, raw bytes otherwise);
- ``application/msgpack``: the plain JSON shape in msgpack.

Batch (``decode_batch``): a JSON array (``application/json``), NDJSON
(``application/x-ndjson``), ``application/cloudevents-batch+json`` or a
msgpack array. A bad item becomes that item's `InvalidEvent`; only a body that
cannot be split into items fails the whole request.

Before any decoder sees a body, values nested deeper than ``max_depth``
(``limits.max_nesting_depth``) are refused as ``too_deep`` (`bridge.server.depth`):
the decoders recurse, and a few KB of brackets would otherwise exhaust the stack.
In a batch only the items that nest too deep are refused.

W3C ``traceparent``/``tracestate`` request headers are copied into each event's
``headers`` unless the event carries its own.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, Final, cast
from urllib.parse import unquote

import msgspec

from bridge.errors import BridgeError, InvalidEvent
from bridge.event import (
    BINARY_ATTRIBUTES,
    Event,
    check_extension_name,
    check_extension_value,
    convert,
    decode_json,
    decode_msgpack,
    from_structured,
    one_instant,
)
from bridge.server.depth import (
    check_json,
    check_msgpack,
    depth_checked,
    json_within,
    per_item,
    split_json_array,
    split_msgpack_array,
)
from bridge.server.errors import ApiError

JSON: Final = "application/json"
CLOUDEVENTS: Final = "application/cloudevents+json"
CLOUDEVENTS_BATCH: Final = "application/cloudevents-batch+json"
NDJSON: Final = "application/x-ndjson"
MSGPACK: Final = "application/msgpack"

_MEDIA_ALIASES: Final = {
    "application/x-msgpack": MSGPACK,
    "application/vnd.msgpack": MSGPACK,
    "application/ndjson": NDJSON,
    "application/jsonl": NDJSON,
    "application/x-jsonlines": NDJSON,
    "application/jsonlines": NDJSON,
}
SINGLE_TYPES: Final = (JSON, CLOUDEVENTS, MSGPACK)
BATCH_TYPES: Final = (JSON, NDJSON, CLOUDEVENTS_BATCH, MSGPACK)

_media_cache: dict[str, str] = {}
_MEDIA_CACHE_LIMIT: Final = 256

_raw_list_json: Final = msgspec.json.Decoder(list[msgspec.Raw])
_raw_list_msgpack: Final = msgspec.msgpack.Decoder(list[msgspec.Raw])
_any_json: Final = msgspec.json.Decoder()
# A whole batch in one call (`_decode_whole`); any item it refuses sends the batch
# down the per-item path, which names each bad item.
_events_json: Final = msgspec.json.Decoder(list[Event])
_event_lines: Final = msgspec.json.Decoder(Event)

# W3C Trace Context, level 1: version-traceid-parentid-flags (lowercase hex).
_TRACEPARENT: Final = re.compile(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}(?:-.*)?\Z")
_TRACESTATE_MAX: Final = 512
#: The default of ``limits.max_nesting_depth``.
MAX_DEPTH: Final = 64


def media_type(content_type: str | None) -> str:
    """The lowercased media type of a Content-Type header (no parameters); JSON if absent."""
    if not content_type:
        return JSON
    found = _media_cache.get(content_type)
    if found is None:
        found = content_type.partition(";")[0].strip().lower()
        found = _MEDIA_ALIASES.get(found, found)
        if len(_media_cache) >= _MEDIA_CACHE_LIMIT:
            _media_cache.clear()
        _media_cache[content_type] = found
    return found


def trace_context(headers: Mapping[str, str]) -> dict[str, str] | None:
    """``traceparent`` (and ``tracestate``) from request headers, if the traceparent is valid.

    An invalid ``traceparent`` is ignored together with its ``tracestate``, as
    the W3C spec asks.
    """
    parent = headers.get("traceparent")
    if parent is None:
        return None
    parent = parent.strip()
    if not _TRACEPARENT.match(parent) or parent.startswith("ff"):
        return None
    found = {"traceparent": parent}
    state = headers.get("tracestate")
    if state:
        state = state.strip()
        if state and len(state) <= _TRACESTATE_MAX and state.isprintable():
            found["tracestate"] = state
    return found


def with_trace(event: Event, trace: dict[str, str] | None) -> Event:
    """``event`` with the request's trace context added to its headers (its own win)."""
    if trace is None:
        return event
    headers = event.headers
    if all(name in headers for name in trace):
        return event
    return msgspec.structs.replace(event, headers={**trace, **headers})


def _unsupported(media: str, accepted: tuple[str, ...], hint: str = "") -> ApiError:
    return ApiError(
        415,
        "unsupported_media_type",
        f"unsupported Content-Type {media!r}; use one of {', '.join(accepted)}{hint}",
        field="Content-Type",
    )


def is_binary_mode(headers: Mapping[str, str]) -> bool:
    return "ce-specversion" in headers or "ce-type" in headers or "ce-id" in headers


def decode_event(
    content_type: str | None,
    headers: Mapping[str, str],
    body: bytes,
    *,
    max_depth: int = MAX_DEPTH,
) -> Event:
    """One event from a ``POST /v1/events`` request.

    Raises `InvalidEvent` (400) or `ApiError` (415).
    """
    media = media_type(content_type)
    _check_depth(media, content_type, headers, body, max_depth)
    if media == CLOUDEVENTS:
        event = decode_structured(body)
    elif is_binary_mode(headers):
        event = decode_binary(content_type, headers, body)
    elif media == JSON:
        event = decode_json(body)
    elif media == MSGPACK:
        event = decode_msgpack(body)
    elif media in (NDJSON, CLOUDEVENTS_BATCH):
        raise _unsupported(media, SINGLE_TYPES, "; send batches to /v1/events/batch")
    else:
        raise _unsupported(media, SINGLE_TYPES, ", or CloudEvents binary mode (ce-* headers)")
    return with_trace(event, trace_context(headers))


def _check_depth(
    media: str, content_type: str | None, headers: Mapping[str, str], body: bytes, limit: int
) -> None:
    """Refuse a body nested deeper than ``limit`` before it reaches a decoder."""
    if media == CLOUDEVENTS:
        check_json(body, limit)
    elif is_binary_mode(headers):
        # The body is the event's data; only JSON data is decoded.
        if body and content_type and _is_json(media):
            check_json(body, limit, field="data", outer=0)
    elif media == JSON:
        check_json(body, limit)
    elif media == MSGPACK:
        check_msgpack(body, limit)


def decode_structured(body: bytes) -> Event:
    """A CloudEvents JSON-format (structured mode) event."""
    try:
        obj = _any_json.decode(body)
    except msgspec.DecodeError as exc:
        raise InvalidEvent(f"malformed JSON: {exc}", code="invalid_json") from None
    return from_structured(obj)


_BINARY_REQUIRED: Final = ("id", "source", "type", "specversion")


def _is_json(media: str) -> bool:
    return media == JSON or media.endswith("+json") or media == "text/json"


def decode_binary(content_type: str | None, headers: Mapping[str, str], body: bytes) -> Event:
    """A CloudEvents binary-mode event: ``ce-*`` headers plus the body as ``data``.

    A ``ce-<name>`` header that is not a context attribute is the extension
    ``<name>`` (HTTP header names are case-insensitive, so it is lower-cased; the
    rest must be a-z0-9). Without a Content-Type, ``datacontenttype`` stays unset.
    """
    fields: dict[str, Any] = {"datacontenttype": None}
    extensions: dict[str, str] = {}
    for name, raw_value in headers.items():
        lower = name.lower()
        if not lower.startswith("ce-") or len(lower) == 3:
            continue
        attr = lower[3:]
        value = raw_value
        if "%" in value:
            try:
                value = unquote(value, errors="strict")
            except UnicodeDecodeError:
                raise InvalidEvent(
                    f"header {name} is not valid percent-encoded UTF-8", field=attr
                ) from None
        target = BINARY_ATTRIBUTES.get(attr)
        if target is not None:
            fields[target] = value
        elif attr == "ttl":
            try:
                fields["ttl_ms"] = int(value)
            except ValueError:
                raise InvalidEvent(
                    f"ce-ttl must be an integer, got {value!r}", field="ttl_ms"
                ) from None
        elif attr == "datacontenttype":
            raise InvalidEvent(
                "in binary mode the Content-Type header is the data content type; "
                "drop ce-datacontenttype",
                field="datacontenttype",
            )
        else:
            # The error names the header as sent (a plain str: aiohttp's names are istr).
            check_extension_name(attr, str(name))
            check_extension_value(attr, value, str(name))
            extensions[str(attr)] = value
    for name in _BINARY_REQUIRED:
        if name not in fields:
            raise InvalidEvent(f"CloudEvents binary mode needs the ce-{name} header", field=name)
    if body:
        # No Content-Type: the bytes are opaque and the attribute stays unset.
        media = media_type(content_type) if content_type else "application/octet-stream"
        fields["datacontenttype"] = content_type or None
        if _is_json(media):
            try:
                fields["data"] = _any_json.decode(body)
            except msgspec.DecodeError as exc:
                raise InvalidEvent(
                    f"malformed JSON data: {exc}", code="invalid_json", field="data"
                ) from None
        else:
            fields["data"] = bytes(body)
    elif content_type:
        fields["datacontenttype"] = content_type
    if extensions:
        fields["extensions"] = extensions
    return convert(fields)


# --- batches ------------------------------------------------------------------


def _split_ndjson(body: bytes) -> list[bytes]:
    return [line for line in body.split(b"\n") if line.strip()]


_RawListDecoder = (
    msgspec.json.Decoder[list[msgspec.Raw]] | msgspec.msgpack.Decoder[list[msgspec.Raw]]
)


def _split_array(body: bytes, decoder: _RawListDecoder, what: str) -> list[bytes | InvalidEvent]:
    try:
        raws = decoder.decode(body)
    except msgspec.ValidationError:
        raise ApiError(400, "invalid_batch", f"a batch must be a {what} array of events") from None
    except msgspec.DecodeError as exc:
        code = "invalid_json" if what == "JSON" else "invalid_msgpack"
        raise ApiError(400, code, f"malformed {what}: {exc}") from None
    return [bytes(raw) for raw in raws]


def decode_batch(
    content_type: str | None,
    headers: Mapping[str, str],
    body: bytes,
    *,
    max_items: int,
    max_depth: int = MAX_DEPTH,
) -> list[Event | InvalidEvent]:
    """The items of a ``POST /v1/events/batch`` body, in input order.

    Each item is its `Event` or the `InvalidEvent` that says why it is not
    one. Raises `ApiError` when the body as a whole is unusable: 415 for an
    unsupported type, 400 when it cannot be split into items, 413 when it has
    more than ``max_items``.
    """
    media = media_type(content_type)
    with one_instant():  # the batch's events arrived together
        return _decode_batch(media, headers, body, max_items, max_depth)


def _decode_batch(
    media: str, headers: Mapping[str, str], body: bytes, max_items: int, max_depth: int
) -> list[Event | InvalidEvent]:
    whole = _decode_whole(media, body, max_items, max_depth)
    if whole is not None:
        trace = trace_context(headers)
        if trace is not None:
            whole = [with_trace(event, trace) for event in whole]
        return cast("list[Event | InvalidEvent]", whole)  # a new list, only ever read
    items: list[bytes | InvalidEvent]
    decode_item: Callable[[bytes], Event]
    if media == NDJSON:
        lines = _split_ndjson(body)
        items, decode_item = depth_checked(lines, check_json, max_depth), decode_json
    elif media in (JSON, CLOUDEVENTS_BATCH):
        split = split_json_array(body, max_depth)
        items = split if split is not None else _split_array(body, _raw_list_json, "JSON")
        decode_item = decode_json if media == JSON else decode_structured
    elif media == MSGPACK:
        split = split_msgpack_array(body, max_depth)
        items = split if split is not None else _split_array(body, _raw_list_msgpack, "msgpack")
        decode_item = decode_msgpack
    elif media == CLOUDEVENTS:
        raise _unsupported(media, BATCH_TYPES, "; send single events to /v1/events")
    else:
        raise _unsupported(media, BATCH_TYPES)
    if len(items) > max_items:
        raise ApiError(
            413,
            "batch_too_large",
            f"the batch has {len(items)} events; the limit is {max_items}",
            field=None,
        )
    trace = trace_context(headers)
    return per_item(items, lambda item: with_trace(decode_item(item), trace))


def _decode_whole(media: str, body: bytes, max_items: int, max_depth: int) -> list[Event] | None:
    """Every item of a JSON-array or NDJSON batch body decoded in one go, or None
    when the per-item path must run: an item is invalid or nests too deep, the body
    cannot be split, or it holds more than ``max_items``. That path then gives each
    item its own result, exactly as if this one did not exist."""
    if media == NDJSON:
        if not json_within(body, max_depth + 1):
            return None
        lines = _split_ndjson(body)
        if len(lines) > max_items:
            return None
        decode_line = _event_lines.decode
        # Line by line, not ``decode_lines``: that splits on any whitespace, so a line
        # of two events, or an event across two lines, would not be refused.
        try:
            return [decode_line(line) for line in lines]
        except (msgspec.DecodeError, BridgeError, RecursionError):
            return None
    if media != JSON or not json_within(body, max_depth + 2):  # the array, the event
        return None
    try:
        events = _events_json.decode(body)
    except (msgspec.DecodeError, BridgeError, RecursionError):
        # ValidationError is a DecodeError; InvalidEvent (from Event.__post_init__) a
        # BridgeError. RecursionError: only for malformed bodies that fool `json_within`.
        return None
    if len(events) > max_items:
        return None
    return events
