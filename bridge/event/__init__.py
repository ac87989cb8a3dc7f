"""The event envelope and its codecs.

`Event` is CloudEvents 1.0 compatible (see `bridge.event.envelope`). The package is in
one-concept modules; everything public is re-exported here, so ``from bridge.event
import ...`` is the import path to use:

- `bridge.event.envelope`: `Event`, `new_id`, `now_rfc3339`, `one_instant`;
- `bridge.event.attributes`: attribute, header and extension checks and their limits;
- `bridge.event.rfc3339`: RFC 3339 date-times;
- `bridge.event.codecs`: the plain shape from JSON / msgpack / a mapping; ``data`` as bytes;
- `bridge.event.structured`: the CloudEvents JSON event format.
"""

from bridge.event.attributes import (
    BINARY_ATTRIBUTES,
    BRIDGE_EXTENSIONS,
    MAX_ATTR_LEN,
    MAX_EXTENSION_NAME_LEN,
    MAX_HEADER_NAME_LEN,
    MAX_HEADER_VALUE_LEN,
    MAX_TTL_MS,
    MAX_TYPE_LEN,
    RESERVED_ATTRIBUTES,
    check_extension_name,
    check_extension_value,
    extension_text,
)
from bridge.event.codecs import (
    convert,
    data_bytes,
    decode_json,
    decode_msgpack,
    field_of,
    to_plain,
    wire_content_type,
)
from bridge.event.envelope import KINDS, Event, Kind, new_id, now_rfc3339, one_instant
from bridge.event.rfc3339 import epoch_seconds
from bridge.event.structured import from_structured, to_structured

__all__ = [
    "BINARY_ATTRIBUTES",
    "BRIDGE_EXTENSIONS",
    "KINDS",
    "MAX_ATTR_LEN",
    "MAX_EXTENSION_NAME_LEN",
    "MAX_HEADER_NAME_LEN",
    "MAX_HEADER_VALUE_LEN",
    "MAX_TTL_MS",
    "MAX_TYPE_LEN",
    "RESERVED_ATTRIBUTES",
    "Event",
    "Kind",
    "check_extension_name",
    "check_extension_value",
    "convert",
    "data_bytes",
    "decode_json",
    "decode_msgpack",
    "epoch_seconds",
    "extension_text",
    "field_of",
    "from_structured",
    "new_id",
    "now_rfc3339",
    "one_instant",
    "to_plain",
    "to_structured",
    "wire_content_type",
]
