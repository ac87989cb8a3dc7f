"""Broker messages back into events: what every source's decoder shares.

A message in a CloudEvents binding becomes the event that was published
(per broker: `bridge.sources.rabbitmq.message`, `bridge.sources.nats.message`);
any other message becomes a *plain* event (`plain_event`): its ``type`` from the
source's ``event_type`` template, its ``data`` the payload, JSON-decoded when the
content type says JSON or, with no content type, when the payload parses as JSON.
A message that can be neither raises `Undecodable` with the reason.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping
from typing import Any, Final

import msgspec

from bridge.errors import InvalidEvent
from bridge.event import BINARY_ATTRIBUTES, Event, convert, from_structured

STRUCTURED: Final = "application/cloudevents+json"
_decode_json: Final = msgspec.json.Decoder().decode


class Undecodable(Exception):
    """A message that is no event: its reason goes with it to the dead letter."""


def media_type(content_type: str | None) -> str | None:
    """The lower-case media type of a content type, without its parameters."""
    if content_type is None:
        return None
    return content_type.partition(";")[0].strip().lower() or None


def is_json(content_type: str | None) -> bool:
    media = media_type(content_type)
    return media is not None and media.endswith(("/json", "+json"))


def is_structured(content_type: str | None) -> bool:
    """Whether the body is a CloudEvent in the JSON event format (structured mode)."""
    return media_type(content_type) == STRUCTURED


def payload(body: bytes, content_type: str | None) -> Any:
    """``data`` of a binary-mode message, the inverse of `bridge.event.data_bytes`.

    JSON content types are decoded (`Undecodable` when the body is not JSON);
    ``text/*`` becomes text; anything else, and no content type, stays bytes
    (the sinks omit the content type only for raw bytes nobody described).
    """
    if is_json(content_type):
        try:
            return _decode_json(body) if body else None
        except msgspec.DecodeError as exc:
            problem = f"content type {content_type!r} but the body is not JSON: {exc}"
            raise Undecodable(problem) from None
    media = media_type(content_type)
    if media is not None and media.startswith("text/"):
        try:
            return body.decode()
        except UnicodeDecodeError:
            return body
    return body


def structured_event(body: bytes, headers: dict[str, str]) -> Event:
    """A structured-mode message (the CloudEvents JSON format) as its event."""
    try:
        return from_structured(_decode_json(body), headers=headers or None)
    except msgspec.DecodeError as exc:
        raise Undecodable(f"a structured CloudEvent whose body is not JSON: {exc}") from None
    except InvalidEvent as exc:
        raise Undecodable(f"not a valid CloudEvent: {exc.message}") from None


def binary_event(fields: dict[str, Any]) -> Event:
    """An event from attributes a binary-mode decoder collected (`Undecodable` if invalid)."""
    try:
        return convert(fields)
    except InvalidEvent as exc:
        raise Undecodable(f"not a valid CloudEvent: {exc.message}") from None


def binary_mode_event(
    attributes: Mapping[str, object],
    body: bytes,
    content_type: str | None,
    transport: dict[str, str],
    *,
    text: Callable[[object], str] = str,
    extension: Callable[[object], Any] = lambda value: value,
) -> Event:
    """The event of a binary-mode message: its binding's attributes (lower case, without
    their prefix), body, content type and the other headers (``transport``). ``text``
    turns an attribute's value into text, ``extension`` an extension's into its value."""
    event: dict[str, Any] = {"datacontenttype": content_type}
    extensions: dict[str, Any] = {}
    for name, value in attributes.items():
        target = BINARY_ATTRIBUTES.get(name)
        if target is not None:
            event[target] = text(value)
        elif name == "ttl":
            event["ttl_ms"] = ttl(text(value))
        else:
            extensions[name] = extension(value)
    event["data"] = payload(body, content_type)
    if transport:
        event["headers"] = transport
    if extensions:
        event["extensions"] = extensions
    return binary_event(event)


def ttl(text: object) -> int | None:
    """The ``ttl`` extension's text as milliseconds (`Undecodable` if it is not a number)."""
    if text is None:
        return None
    try:
        return int(str(text))
    except ValueError:
        raise Undecodable(f"ttl {str(text)[:40]!r} is not a whole number of ms") from None


def plain_event(
    event_type: str,
    body: bytes,
    content_type: str | None,
    *,
    id: str | None = None,
    headers: dict[str, str] | None = None,
) -> Event:
    """A message outside any CloudEvents binding as an event of ``event_type``.

    ``data`` is the JSON-decoded payload when the content type says JSON or there
    is no content type and the payload parses as JSON; else the payload itself
    (text for ``text/*``, else bytes, with the content type kept).
    """
    data: Any
    if content_type is None:
        try:
            data = _decode_json(body) if body else None
            content_type = "application/json"
        except msgspec.DecodeError:
            data = body
    else:
        data = payload(body, content_type)
    try:
        # Built directly, not converted from a mapping: every field's type is known here,
        # and `Event`'s own checks still run (its ``__post_init__``).
        if id:
            return Event(type=event_type, data=data, id=id, datacontenttype=content_type,
                         headers=headers or {})  # fmt: skip
        return Event(type=event_type, data=data, datacontenttype=content_type,
                     headers=headers or {})  # fmt: skip
    except InvalidEvent as exc:
        raise Undecodable(f"no event can be made of this message: {exc.message}") from None


def shown(body: bytes, limit: int = 64) -> str:
    """A short, printable view of a body for a log line."""
    head = body[:limit]
    try:
        text = head.decode()
    except UnicodeDecodeError:
        text = "base64:" + base64.b64encode(head).decode()
    return text + ("..." if len(body) > limit else "")
