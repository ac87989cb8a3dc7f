"""CloudEvents structured mode: an `Event` to and from the CloudEvents JSON event format."""

from __future__ import annotations

import base64
from typing import Any, Final

from bridge.errors import InvalidEvent
from bridge.event.attributes import BRIDGE_EXTENSIONS, check_extension_name, check_extension_value
from bridge.event.codecs import convert
from bridge.event.envelope import Event

_CE_EXTENSIONS: Final = {"key": "partitionkey", "correlation_id": "correlationid"}


def to_structured(event: Event) -> dict[str, Any]:
    """The event as a CloudEvents JSON-format object (``data_base64`` for bytes).

    Only attributes that are set appear: an unset ``datacontenttype`` stays unset
    (JSON, by the format's rule). Extensions are top-level members.
    """
    out: dict[str, Any] = {
        "specversion": event.specversion,
        "id": event.id,
        "source": event.source,
        "type": event.type,
        "time": event.time,
    }
    if event.datacontenttype is not None:
        out["datacontenttype"] = event.datacontenttype
    if event.dataschema is not None:
        out["dataschema"] = event.dataschema
    if event.subject is not None:
        out["subject"] = event.subject
    for attr, ext in _CE_EXTENSIONS.items():
        value = getattr(event, attr)
        if value is not None:
            out[ext] = value
    if event.ttl_ms is not None:
        out["ttl"] = event.ttl_ms
    if event.extensions:
        # The names cannot collide with the members above: `check_extensions`.
        out.update(event.extensions)
    if isinstance(event.data, bytes | bytearray | memoryview):
        out["data_base64"] = base64.b64encode(bytes(event.data)).decode()
    elif event.data is not None:
        out["data"] = event.data
    return out


_CE_REQUIRED: Final = ("id", "source", "type", "specversion")
_CE_CONTEXT: Final = {
    "id", "source", "type", "specversion", "time", "subject", "datacontenttype", "dataschema"
}  # fmt: skip


def from_structured(obj: object, *, headers: dict[str, str] | None = None) -> Event:
    """Build an event from a decoded CloudEvents JSON-format object.

    Top-level members that are not context attributes are extension attributes
    (`Event.extensions`), except ``kind``, ``partitionkey``, ``correlationid`` and
    ``ttl``, which set the bridge attributes. A null member is an absent one.
    ``headers`` are transport headers to attach. An extension with an invalid
    name or value raises `InvalidEvent` whose ``field`` is the member's name.
    """
    if not isinstance(obj, dict):
        raise InvalidEvent("a CloudEvent must be a JSON object", field=None)
    for name in _CE_REQUIRED:
        # A null required attribute is as absent as a missing one (CloudEvents JSON format).
        if obj.get(name) is None:
            raise InvalidEvent(f"CloudEvents attribute {name!r} is required", field=name)
    fields: dict[str, Any] = {k: v for k, v in obj.items() if k in _CE_CONTEXT and v is not None}
    # The attribute was not set: do not let the plain shape's default fill it in.
    fields.setdefault("datacontenttype", None)
    extensions: dict[str, Any] = {}
    for name, value in obj.items():
        if name in _CE_CONTEXT or name in ("data", "data_base64") or value is None:
            continue
        target = BRIDGE_EXTENSIONS.get(name)
        if target is not None:
            fields[target] = value
            continue
        check_extension_name(name, name)
        check_extension_value(name, value, name)
        extensions[name] = value
    if "data_base64" in obj and obj["data_base64"] is not None:
        if obj.get("data") is not None:
            raise InvalidEvent("data and data_base64 are mutually exclusive", field="data_base64")
        try:
            fields["data"] = base64.b64decode(obj["data_base64"], validate=True)
        except (ValueError, TypeError):
            raise InvalidEvent("data_base64 is not valid base64", field="data_base64") from None
    elif "data" in obj:
        fields["data"] = obj["data"]
    if headers:
        fields["headers"] = dict(headers)
    if extensions:
        fields["extensions"] = extensions
    return convert(fields)
