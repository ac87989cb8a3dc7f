"""Byte accounting: what an event costs in memory, and budgets of bytes.

Every queue that holds client data is bounded in bytes (docs/guarantees.md,
"Memory"), so it needs the size of what it holds. Decoded events are Python
objects, whose size is not their length on the wire: a string costs about
its length, but every dict, list and value inside costs tens of bytes on its
own, so ``[{}, {}, ...]`` takes some 20 times the bytes of its JSON. Walking
the object graph in Python to measure it would cost more than decoding it,
so `data_cost` estimates from the JSON encoding (C speed): its length plus
`PER_ITEM` for every ``{``, ``[`` and ``,`` in it (one per container and per
element) and `PER_OBJECT` more for every object (a dict's table).
Within a factor of about 2 for real payloads, and an over- rather than an
under-estimate for the shapes that amplify most (measured in
tests/unit/test_memory.py against tracemalloc). Characters inside strings are
counted too: they can only raise a client's own estimate.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from bridge.event import Event

#: Bytes charged per container and per element of a structured ``data``.
PER_ITEM: Final = 64
#: Bytes charged on top for every JSON object (CPython allocates a dict's table).
PER_OBJECT: Final = 80
#: What an event costs besides its text attributes and ``data``: the struct, the
#: strings' object headers, its queue entry (measured ~600 bytes with tracemalloc).
EVENT_OVERHEAD: Final = 640
#: Per header: the dict slot and two string objects.
PER_HEADER: Final = 128
#: Encodings up to this size are charged `SMALL_PER_BYTE` per byte without counting.
SMALL: Final = 64
SMALL_PER_BYTE: Final = 1 + PER_ITEM // 2

_encode: Final = msgspec.json.Encoder().encode
_STRUCTURE: Final = b"{[,"


def data_cost(data: Any) -> int:
    """Estimated bytes of memory a decoded ``data`` value holds (see the module docstring)."""
    kind = type(data)
    if kind is not dict and kind is not list:
        if data is None:
            return 0
        if kind is str or kind is bytes or kind is bytearray:
            return len(data)
        if kind is memoryview:
            return data.nbytes  # type: ignore[no-any-return]
        if kind is int or kind is float or kind is bool:
            return 32
    try:
        encoded = _encode(data)
    except (TypeError, ValueError, OverflowError):
        # Not JSON-encodable (a handler's own object): charge what can be seen of it.
        return len(repr(data))
    size = len(encoded)
    if size <= SMALL:
        # Counting costs more than it is worth here: charge as if half were structure.
        return size * SMALL_PER_BYTE + PER_OBJECT
    structure = size - len(encoded.translate(None, _STRUCTURE))
    return size + PER_ITEM * structure + PER_OBJECT * encoded.count(b"{")


def event_cost(event: Event) -> int:
    """Estimated bytes of memory ``event`` keeps alive while it is queued."""
    # Straight-line: this runs once per event offered to subscribers.
    cost = EVENT_OVERHEAD + len(event.type) + len(event.id) + len(event.time)
    source, subject, key, correlation_id = (
        event.source,
        event.subject,
        event.key,
        event.correlation_id,
    )
    if source is not None:
        cost += len(source)
    if subject is not None:
        cost += len(subject)
    if key is not None:
        cost += len(key)
    if correlation_id is not None:
        cost += len(correlation_id)
    headers = event.headers
    if headers:
        for name, value in headers.items():
            cost += PER_HEADER + len(name) + len(value)
    data = event.data
    if data is None:
        return cost
    if type(data) is dict:
        # `data_cost`'s usual case, inlined: this runs once per event offered.
        try:
            encoded = _encode(data)
        except (TypeError, ValueError, OverflowError):
            return cost + len(repr(data))
        size = len(encoded)
        if size <= SMALL:
            return cost + size * SMALL_PER_BYTE + PER_OBJECT
        structure = size - len(encoded.translate(None, _STRUCTURE))
        return cost + size + PER_ITEM * structure + PER_OBJECT * encoded.count(b"{")
    return cost + data_cost(data)


class ByteBudget:
    """Bytes taken from a shared bound (``limit``), given back when freed.

    `take` never blocks: it says whether the bytes fit. Callers decide what a
    refusal means (a 429, a dropped event, waiting for room).
    """

    __slots__ = ("limit", "used")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def fits(self, size: int) -> bool:
        return self.used + size <= self.limit

    def take(self, size: int) -> bool:
        """Take ``size`` bytes if they fit; False (nothing taken) if not."""
        if self.used + size > self.limit:
            return False
        self.used += size
        return True

    def give_back(self, size: int) -> None:
        self.used -= size
