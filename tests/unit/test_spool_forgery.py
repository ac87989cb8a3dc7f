"""Recovery never lands inside a payload: a client that embeds a complete, checksummed
record in its event data gets nothing of it delivered, whatever tears or flips."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec
import pytest

from bridge.config import RouteConfig
from bridge.event import Event
from bridge.sinks.base import Outgoing
from bridge.sinks.memory import MemoryRoute
from bridge.spool import codec, framing
from bridge.spool.layout import PENDING, segment_name
from tests.unit.spool_helpers import ROUTE_TYPES, append, make_spool, pending_segments, read_all

FORGED_ID = "forged-0001"


class _Unchecked(Event, frozen=True):
    """An event built the way an attacker writes bytes: without the checks."""

    def __post_init__(self) -> None:
        pass


def forged_record() -> bytes:
    """What an attacker puts in a binary-mode body: a whole spool record, framed and
    checksummed as the legacy format did, for a destination and headers of its choosing."""
    event = _Unchecked(
        type="test.event",
        id=FORGED_ID,
        source="attacker",
        data="x",
        headers={"X-Evil\r\nInjected": "a\r\nb"},
    )
    payload = codec.encode("mem", Outgoing(event, "r", MemoryRoute(topic="attacker-topic"), None))
    return framing.frame(payload, framing.RECORD_MAGIC)


def carrier(i: int) -> bytes:
    """A legitimate event whose bytes ``data`` holds forged records (and a salt-less forgery
    of the new format, framed with a salt the attacker made up)."""
    guess = framing.Keyed(bytes(16))
    inner = codec.encode(
        "mem",
        Outgoing(
            Event(type="test.event", id=FORGED_ID, source="attacker"),
            "r",
            MemoryRoute(topic="attacker-topic"),
            None,
        ),
    )
    data = b"\x00" * 7 + forged_record() + guess.frame(inner, 3) + forged_record() + b"\x01" * 64
    event = Event(type="test.event", id=f"ev-{i:04d}", source="test", data=data)
    return codec.encode("mem", Outgoing(event, "r", MemoryRoute(topic="t"), None))


def decoded_ids(items: list[object]) -> list[str]:
    decoder = codec.Decoder(ROUTE_TYPES)
    out = []
    for item in items:
        try:
            out.append(decoder.decode(item.payload).outgoing.event.id)  # type: ignore[attr-defined]
        except (msgspec.DecodeError, codec.InvalidRecord):
            out.append("<refused>")
    return out


async def write_carriers(directory: Path, n: int) -> Path:
    async with make_spool(directory) as spool:
        await spool.append(["mem"] * n, [carrier(i) for i in range(n)])
    (segment,) = pending_segments(directory)
    return segment


def record_offsets(segment: Path) -> list[int]:
    with segment.open("rb") as file:
        return [r.offset for r in framing.scan_segment(file) if isinstance(r, framing.Record)]


async def test_a_torn_tail_inside_a_carrier_delivers_nothing_forged(tmp_path: Path) -> None:
    segment = await write_carriers(tmp_path, 5)
    offsets = record_offsets(segment)
    # Tear the last record just before its end: the forged records inside stay whole.
    os.truncate(segment, segment.stat().st_size - 60)
    async with make_spool(tmp_path) as spool:
        assert spool.report.corrupt == 1
        ids = decoded_ids(await read_all(spool))
    assert ids == [f"ev-{i:04d}" for i in range(4)]
    assert segment.stat().st_size == offsets[4]


async def test_a_flipped_bit_in_a_carrier_header_delivers_nothing_forged(tmp_path: Path) -> None:
    segment = await write_carriers(tmp_path, 5)
    offsets = record_offsets(segment)
    data = bytearray(segment.read_bytes())
    data[offsets[2] + 5] ^= 0x01  # record 2's length: a reader must look elsewhere for record 3
    segment.write_bytes(bytes(data))
    async with make_spool(tmp_path) as spool:
        assert spool.report.corrupt == 1
        ids = decoded_ids(await read_all(spool))
    assert ids == ["ev-0000", "ev-0001", "ev-0003", "ev-0004"]
    async with make_spool(tmp_path) as spool:  # reported once, padded over
        assert spool.report.corrupt == 0
        assert decoded_ids(await read_all(spool)) == ids


async def test_a_legacy_segment_is_cut_at_damage_not_resynchronized(tmp_path: Path) -> None:
    """Segments of the legacy format (plain crc32) are still read, but their first
    damage ends them: their checksums are ones a client can compute."""
    pending = tmp_path / PENDING
    pending.mkdir(parents=True)
    records = [framing.frame(carrier(i), framing.RECORD_MAGIC) for i in range(4)]
    legacy = pending / segment_name(1)
    data = bytearray(b"".join(records))
    data[len(records[0]) + 6] ^= 0x01  # record 1's header
    legacy.write_bytes(bytes(data))
    async with make_spool(tmp_path) as spool:
        assert spool.report.corrupt == 1
        ids = decoded_ids(await read_all(spool))
    assert ids == ["ev-0000"]
    assert legacy.stat().st_size == len(records[0])


async def test_legacy_segments_are_still_delivered(tmp_path: Path) -> None:
    pending = tmp_path / PENDING
    pending.mkdir(parents=True)
    (pending / segment_name(1)).write_bytes(
        b"".join(framing.frame(carrier(i), framing.RECORD_MAGIC) for i in range(3))
    )
    async with make_spool(tmp_path) as spool:
        assert spool.report.recovered == 3
        assert decoded_ids(await read_all(spool)) == ["ev-0000", "ev-0001", "ev-0002"]
        await append(spool, 1, start=7)  # new records go to a format-2 segment
    newest = pending_segments(tmp_path)[-1]
    assert newest.read_bytes()[:4] == framing.SEGMENT_MAGIC


def test_a_recovered_event_is_validated_like_an_ingested_one() -> None:
    """A record whose checksums hold but whose event ingest would refuse (CR/LF in a
    header, a bad header name) is refused, not delivered."""
    raw = forged_record()[framing.LEGACY_HEADER_SIZE :]
    with pytest.raises(codec.InvalidRecord, match="header"):
        codec.Decoder(ROUTE_TYPES).decode(raw)


def test_a_recovered_destination_is_resolved_again_by_the_current_routes() -> None:
    route = RouteConfig(name="r", match="test.*", sink="mem", options=MemoryRoute(topic="real"))
    decoder = codec.Decoder(ROUTE_TYPES, [route])
    event = Event(type="test.event", id="e1", source="s")
    recorded = codec.encode("mem", Outgoing(event, "r", MemoryRoute(topic="elsewhere"), "k"))
    decoded = decoder.decode(recorded)
    assert decoded.outgoing.options == MemoryRoute(topic="real")
    assert decoded.outgoing.key is None  # the route has no key template; the event none
    # Routed to another sink now, or no route at all: refused, not sent where it says.
    other = RouteConfig(name="o", match="test.*", sink="other", options=MemoryRoute(topic="x"))
    with pytest.raises(codec.InvalidRecord, match="sink 'other'"):
        codec.Decoder(ROUTE_TYPES, [other]).decode(recorded)
    nothing = RouteConfig(name="n", match="nope.*", sink="mem", options=MemoryRoute(topic="x"))
    with pytest.raises(codec.InvalidRecord, match="do not resolve"):
        codec.Decoder(ROUTE_TYPES, [nothing]).decode(recorded)
