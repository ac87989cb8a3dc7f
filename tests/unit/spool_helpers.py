"""Helpers shared by the spool and deliverer tests."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from bridge.event import Event
from bridge.sinks.base import Outgoing
from bridge.sinks.memory import MemoryRoute
from bridge.spool import codec
from bridge.spool.layout import PENDING, segment_ids, segment_name
from bridge.spool.store import Spool, SpoolItem

ROUTE_TYPES = {"mem": MemoryRoute, "other": MemoryRoute}


def ev(i: int) -> str:
    """The id of test event ``i`` (fixed width, so every record has the same size)."""
    return f"ev-{i:04d}"


def outgoing(i: int, *, key: str | None = None, topic: str = "t", data: object = None) -> Outgoing:
    # The key is the event's own, as routing without a key template makes it: the
    # deliverer resolves a spooled record's destination again from its event.
    event = Event(
        type="test.event",
        id=ev(i),
        source="test",
        data={"n": f"{i:05d}"} if data is None else data,
        key=key,
    )
    return Outgoing(event, "r", MemoryRoute(topic=topic), key)


def payloads(n: int, start: int = 0, sink: str = "mem") -> list[bytes]:
    return [codec.encode(sink, outgoing(i)) for i in range(start, start + n)]


def make_spool(directory: Path, **kwargs: object) -> Spool:
    return Spool(directory, head=codec.head, **kwargs)  # type: ignore[arg-type]


async def append(spool: Spool, n: int, start: int = 0, sink: str = "mem") -> None:
    await spool.append([sink] * n, payloads(n, start, sink))


def ids_of(items: Sequence[SpoolItem]) -> list[str]:
    decoder = codec.Decoder(ROUTE_TYPES)
    return [decoder.decode(item.payload).outgoing.event.id for item in items]


async def read_all(spool: Spool, sink: str = "mem") -> list[SpoolItem]:
    cursor = spool.cursor(sink)
    out: list[SpoolItem] = []
    try:
        while True:
            got = await cursor.read(500)
            out.extend(got)
            if cursor.at_end and not got:
                return out
    finally:
        cursor.close()


def pending_segments(directory: Path) -> list[Path]:
    pending = directory / PENDING
    return [pending / segment_name(i) for i in segment_ids(pending)]
