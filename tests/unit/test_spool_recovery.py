"""Property tests: whatever happens to a spool file, recovery keeps every intact record,
invents none, and always finishes."""

from __future__ import annotations

import asyncio
import io
import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.spool.framing import (
    HEADER_SIZE,
    SEGMENT_HEADER_SIZE,
    Damage,
    Keyed,
    Record,
    scan_segment,
)
from tests.unit.spool_helpers import append, ev, ids_of, make_spool, pending_segments, read_all

payload_lists = st.lists(st.binary(min_size=0, max_size=200), min_size=1, max_size=30)


@st.composite
def damaged_files(draw: st.DrawFn) -> tuple[list[bytes], bytes, bytes, set[int]]:
    """Records framed back to back, then cut short and/or with bytes flipped.

    Returns the payloads, the original file, the damaged file and the damaged offsets.
    """
    payloads = draw(payload_lists)
    keyed = Keyed.new()
    original = keyed.header() + b"".join(keyed.frame(p, seq) for seq, p in enumerate(payloads))
    data = bytearray(original)
    flips = draw(
        st.lists(
            st.tuples(st.integers(0, len(data) - 1), st.integers(1, 255)),
            max_size=4,
        )
    )
    for position, mask in flips:
        data[position] ^= mask
    if draw(st.booleans()):
        del data[draw(st.integers(0, len(data))) :]
    damaged = {i for i in range(len(original)) if i >= len(data) or data[i] != original[i]}
    return payloads, original, bytes(data), damaged


def intact_records(payloads: list[bytes], damaged: set[int]) -> list[tuple[int, bytes]]:
    out: list[tuple[int, bytes]] = []
    if any(p < SEGMENT_HEADER_SIZE for p in damaged):
        return out  # no record of a segment whose salt is lost can be trusted
    offset = SEGMENT_HEADER_SIZE
    for payload in payloads:
        end = offset + HEADER_SIZE + len(payload)
        if not any(offset <= p < end for p in damaged):
            out.append((offset, payload))
        offset = end
    return out


@settings(max_examples=400, deadline=None)
@given(damaged_files(), st.integers(16, 300))
def test_scan_returns_exactly_the_intact_records(
    case: tuple[list[bytes], bytes, bytes, set[int]], chunk: int
) -> None:
    payloads, _, data, damaged = case
    found = list(scan_segment(io.BytesIO(data), chunk=chunk))
    records = [(r.offset, r.payload) for r in found if isinstance(r, Record)]
    assert records == intact_records(payloads, damaged)
    # Records and damage tile the file in order: nothing is read twice or skipped unreported.
    header_ok = not any(p < SEGMENT_HEADER_SIZE for p in damaged)
    position = SEGMENT_HEADER_SIZE if header_ok else 0
    if not data:
        position = 0
    for item in found:
        start = item.offset if isinstance(item, Record) else item.start
        assert start == position
        position = item.end
    assert position == len(data)
    tails = [d for d in found if isinstance(d, Damage) and d.at_eof]
    assert len(tails) <= 1
    assert not tails or found[-1] is tails[0]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, 40),
    cut_back=st.integers(0, 400),
    flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 255)), max_size=3),
)
def test_the_spool_recovers_from_any_damage_to_its_last_segment(
    n: int, cut_back: int, flips: list[tuple[int, int]]
) -> None:
    directory = Path(tempfile.mkdtemp(prefix="spool-prop-"))
    try:
        asyncio.run(_damage_and_recover(directory, n, cut_back, flips))
    finally:
        shutil.rmtree(directory)


async def _damage_and_recover(
    directory: Path, n: int, cut_back: int, flips: list[tuple[int, int]]
) -> None:
    async with make_spool(directory) as spool:
        await append(spool, n)
    (segment,) = pending_segments(directory)
    original = segment.read_bytes()
    data = bytearray(original)
    header = SEGMENT_HEADER_SIZE
    record = (len(data) - header) // n
    for position, mask in flips:
        data[position % len(data)] ^= mask
    del data[max(0, len(data) - cut_back) :]
    segment.write_bytes(bytes(data))
    changed = [i for i in range(len(original)) if i >= len(data) or data[i] != original[i]]
    if any(i < header for i in changed):  # the salt is lost: so is every record
        damaged = set(range(n))
        reported = len(data) > 0
    else:
        damaged = {(i - header) // record for i in changed}
        # Whole records cut off the end leave nothing behind to report.
        reported = any(i < len(data) for i in changed) or (len(data) - header) % record != 0

    expected = [ev(i) for i in range(n) if i not in damaged]
    async with make_spool(directory) as spool:
        assert (spool.report.corrupt > 0) == reported
        assert ids_of(await read_all(spool)) == expected
        await append(spool, 1, start=n)  # and it serves again
    async with make_spool(directory) as spool:  # damage is reported once
        assert spool.report.corrupt == 0
        assert ids_of(await read_all(spool)) == [*expected, ev(n)]
