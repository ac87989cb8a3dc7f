"""The spool: group commit, acknowledgements, recovery, bounds, dead letters."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import tracemalloc
from pathlib import Path

import pytest

from bridge.errors import SpoolError, SpoolFull
from bridge.metrics import METRICS
from bridge.spool import codec, writer
from bridge.spool.framing import HEADER_SIZE, SEGMENT_HEADER_SIZE
from bridge.spool.layout import DEAD, PENDING, segment_ids
from tests.unit.spool_helpers import (
    append,
    ev,
    ids_of,
    make_spool,
    outgoing,
    payloads,
    pending_segments,
    read_all,
)


def counter(name: str) -> float:
    value = METRICS.registry.get_sample_value(name)
    return value or 0.0


async def test_records_come_back_in_order_and_acks_survive_a_restart(tmp_path: Path) -> None:
    async with make_spool(tmp_path) as spool:
        await append(spool, 10)
        items = await read_all(spool)
        assert ids_of(items) == [ev(i) for i in range(10)]
        assert spool.status().pending["mem"].events == 10
        spool.ack(items[:4])
        assert spool.status().pending["mem"].events == 6
    recovered_before = counter("evbridge_spool_recovered_total")
    async with make_spool(tmp_path) as spool:
        assert spool.report.recovered == 6
        assert ids_of(await read_all(spool)) == [ev(i) for i in range(4, 10)]
        # New records go after the recovered ones, in a new segment.
        await append(spool, 2, start=10)
        assert ids_of(await read_all(spool))[-2:] == [ev(10), ev(11)]
    assert counter("evbridge_spool_recovered_total") == recovered_before + 6


async def test_concurrent_appends_share_fsyncs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    syncs = 0
    real_sync = writer._sync

    def counting_sync(fd: int) -> None:
        nonlocal syncs
        syncs += 1
        real_sync(fd)

    monkeypatch.setattr(writer, "_sync", counting_sync)
    async with make_spool(tmp_path) as spool:
        await asyncio.gather(*(append(spool, 1, start=i) for i in range(300)))
        assert spool.status().pending["mem"].events == 300
        assert ids_of(await read_all(spool)) == [ev(i) for i in range(300)]
    # 300 appends from one loop iteration: the first write takes one, the rest share one.
    assert syncs <= 3


async def test_a_full_spool_refuses_new_events_and_keeps_accepted_ones(tmp_path: Path) -> None:
    record = len(payloads(1)[0]) + HEADER_SIZE
    segment = SEGMENT_HEADER_SIZE + record * 10
    async with make_spool(tmp_path, max_bytes=segment * 4, segment_bytes=segment) as spool:
        for i in range(40):
            await append(spool, 1, start=i)
        with pytest.raises(SpoolFull) as caught:
            await append(spool, 1, start=40)
        assert caught.value.retriable
        assert caught.value.code == "spool_full"
        assert spool.full
        # A batch is all or nothing.
        with pytest.raises(SpoolFull):
            await append(spool, 5, start=100)
        items = await read_all(spool)
        assert ids_of(items) == [ev(i) for i in range(40)]
        # Delivering the first two segments frees their space.
        spool.ack(items[:20])
        await spool.flush()
        assert not spool.full
        assert len(pending_segments(tmp_path)) == 2
        await append(spool, 5, start=100)
    async with make_spool(tmp_path) as spool:
        assert ids_of(await read_all(spool)) == [
            *(ev(i) for i in range(20, 40)),
            *(ev(i) for i in range(100, 105)),
        ]


async def test_fully_acknowledged_segments_are_deleted(tmp_path: Path) -> None:
    record = len(payloads(1)[0]) + HEADER_SIZE
    async with make_spool(tmp_path, segment_bytes=SEGMENT_HEADER_SIZE + record * 5) as spool:
        await append(spool, 23)
        assert len(pending_segments(tmp_path)) == 5
        items = await read_all(spool)
        spool.ack(items)
        await spool.flush()
        # Only the segment being written stays.
        assert len(pending_segments(tmp_path)) == 1
        assert spool.status().pending["mem"].events == 0
        assert spool.disk_bytes == pending_segments(tmp_path)[0].stat().st_size + (
            pending_segments(tmp_path)[0].with_suffix(".ack").stat().st_size
        )
    async with make_spool(tmp_path) as spool:
        assert spool.report.recovered == 0
        assert pending_segments(tmp_path) == []
        assert spool.disk_bytes == 0


async def test_a_torn_tail_is_cut_at_the_last_good_record(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with make_spool(tmp_path) as spool:
        await append(spool, 10)
    (segment,) = pending_segments(tmp_path)
    size = segment.stat().st_size
    os.truncate(segment, size - 7)  # the last record loses its end
    corrupt_before = counter("evbridge_spool_corrupt_records_total")
    with caplog.at_level(logging.WARNING, logger="bridge.spool"):
        async with make_spool(tmp_path) as spool:
            assert spool.report.corrupt == 1
            assert ids_of(await read_all(spool)) == [ev(i) for i in range(9)]
            await append(spool, 1, start=99)
    assert counter("evbridge_spool_corrupt_records_total") == corrupt_before + 1
    damage_lines = [r for r in caplog.records if "torn or corrupt tail" in r.getMessage()]
    assert len(damage_lines) == 1
    record = (size - SEGMENT_HEADER_SIZE) // 10
    assert segment.stat().st_size == SEGMENT_HEADER_SIZE + record * 9
    # The cut is permanent: the next start finds nothing wrong.
    async with make_spool(tmp_path) as spool:
        assert spool.report.corrupt == 0
        assert ids_of(await read_all(spool)) == [*(ev(i) for i in range(9)), ev(99)]


async def test_a_flipped_byte_costs_one_record_and_is_reported_once(tmp_path: Path) -> None:
    async with make_spool(tmp_path) as spool:
        await append(spool, 10)
    (segment,) = pending_segments(tmp_path)
    record = (segment.stat().st_size - SEGMENT_HEADER_SIZE) // 10
    with segment.open("r+b") as file:
        file.seek(SEGMENT_HEADER_SIZE + record * 4 + HEADER_SIZE + 3)  # inside record 4
        byte = file.read(1)
        file.seek(-1, os.SEEK_CUR)
        file.write(bytes([byte[0] ^ 0x40]))
    async with make_spool(tmp_path) as spool:
        assert spool.report.corrupt == 1
        assert spool.report.corrupt_bytes == record
        assert ids_of(await read_all(spool)) == [ev(i) for i in range(10) if i != 4]
    async with make_spool(tmp_path) as spool:
        assert spool.report.corrupt == 0
        assert spool.report.recovered == 9


async def test_a_second_process_cannot_open_the_same_spool(tmp_path: Path) -> None:
    async with make_spool(tmp_path):
        with pytest.raises(SpoolError) as caught:
            await make_spool(tmp_path).open()
        assert caught.value.code == "spool_locked"
        assert str(os.getpid()) in caught.value.message
    async with make_spool(tmp_path):  # released on close
        pass


async def test_dead_letters_are_kept_listed_and_replayed(tmp_path: Path) -> None:
    async with make_spool(tmp_path) as spool:
        await append(spool, 3)
        await append(spool, 2, start=10, sink="other")
        mine = await read_all(spool)
        others = await read_all(spool, "other")
        await spool.dead_letter(
            [*mine[:2], others[0]],
            [
                codec.to_dead_letter(item.payload, "broker said no", "sink_rejected", 1)
                for item in (*mine[:2], others[0])
            ],
        )
        status = spool.status()
        assert status.pending["mem"].events == 1
        assert status.dead["mem"].events == 2
        assert status.dead["other"].events == 1
    async with make_spool(tmp_path) as spool:
        assert spool.report.dead_letters == 3
        assert ids_of(await read_all(spool)) == [ev(2)]
        moved = await spool.replay_dead_letters(codec.revive, sink="mem")
        assert moved == 2
        assert ids_of(await read_all(spool)) == [ev(2), ev(0), ev(1)]
        assert spool.status().dead["mem"].events == 0
        assert spool.status().dead["other"].events == 1
    async with make_spool(tmp_path) as spool:
        assert spool.report.dead_letters == 1
        assert await spool.replay_dead_letters(codec.revive) == 1
        assert segment_ids(tmp_path / DEAD) == []
        assert ids_of(await read_all(spool, "other")) == [ev(11), ev(10)]


async def test_a_failed_write_is_rolled_back_and_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write_all = writer.write_all
    fail = True

    def flaky(fd: int, data: bytes | memoryview) -> None:
        if fail:
            os.write(fd, bytes(data)[:10])  # a partial write, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write_all(fd, data)

    async with make_spool(tmp_path) as spool:
        await append(spool, 3)
        monkeypatch.setattr(writer, "write_all", flaky)
        with pytest.raises(SpoolError) as caught:
            await append(spool, 2, start=3)
        assert caught.value.retriable
        fail = False
        await append(spool, 2, start=5)
        assert ids_of(await read_all(spool)) == [ev(0), ev(1), ev(2), ev(5), ev(6)]
    async with make_spool(tmp_path) as spool:
        assert spool.report.corrupt == 0
        assert ids_of(await read_all(spool)) == [ev(0), ev(1), ev(2), ev(5), ev(6)]


async def test_each_sink_reads_only_its_own_records(tmp_path: Path) -> None:
    async with make_spool(tmp_path) as spool:
        for i in range(6):
            await append(spool, 1, start=i, sink="mem" if i % 2 else "other")
        assert ids_of(await read_all(spool)) == [ev(1), ev(3), ev(5)]
        assert ids_of(await read_all(spool, "other")) == [ev(0), ev(2), ev(4)]
        assert sorted(spool.sinks()) == ["mem", "other"]


async def test_stray_files_are_ignored_and_orphan_acks_removed(tmp_path: Path) -> None:
    async with make_spool(tmp_path) as spool:
        await append(spool, 2)
    (tmp_path / PENDING / "notes.txt").write_text("hello")
    orphan = tmp_path / PENDING / "0000000000000099.ack"
    orphan.write_bytes(b"junk")
    async with make_spool(tmp_path) as spool:
        assert spool.report.recovered == 2
    assert not orphan.exists()
    assert (tmp_path / PENDING / "notes.txt").exists()


async def test_startup_streams_instead_of_loading_the_spool(tmp_path: Path) -> None:
    big = [codec.encode("mem", outgoing(i, data={"blob": "x" * 4000})) for i in range(100)]
    async with make_spool(tmp_path, segment_bytes=8 * 1024 * 1024) as spool:
        for _ in range(100):
            await spool.append(["mem"] * len(big), big)  # ~40 MB
    tracemalloc.start()
    try:
        async with make_spool(tmp_path) as spool:
            _, peak = tracemalloc.get_traced_memory()
            assert spool.report.recovered == 10_000
    finally:
        tracemalloc.stop()
    assert peak < 6 * 1024 * 1024, f"startup peaked at {peak / 1e6:.1f} MB for a 40 MB spool"


async def test_appends_are_refused_once_closed(tmp_path: Path) -> None:
    spool = make_spool(tmp_path)
    await spool.open()
    await spool.close()
    with pytest.raises(SpoolError) as caught:
        await append(spool, 1)
    assert caught.value.code == "spool_closed"


async def test_the_in_memory_tail_is_bounded_by_what_it_costs(tmp_path: Path) -> None:
    """Large events keep far fewer records in memory than small ones (TAIL_BYTES holds
    for payload and event objects together), and every record still reads back."""
    from bridge.spool.store import TAIL_BYTES, TAIL_COST_PER_BYTE

    big = "x" * 64 * 1024
    n = 300
    async with make_spool(tmp_path, max_bytes=1 << 30) as spool:
        for start in range(0, n, 50):
            await spool.append(
                ["mem"] * 50,
                [codec.encode("mem", outgoing(i, data=big)) for i in range(start, start + 50)],
            )
        tail = spool._tail
        charged = sum(item.size for item in tail) * TAIL_COST_PER_BYTE
        assert 0 < len(tail) < n
        assert charged <= TAIL_BYTES + 50 * len(big) * TAIL_COST_PER_BYTE  # one batch of slack
        assert ids_of(await read_all(spool)) == [ev(i) for i in range(n)]


async def test_reads_do_not_wait_for_the_default_executor(tmp_path: Path) -> None:
    """Sync handlers share the default executor: with every one of its threads stuck,
    the spool still reads records back from its files (it has threads of its own)."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    async with make_spool(tmp_path) as spool:
        await append(spool, 5)
    loop = asyncio.get_running_loop()
    stuck = ThreadPoolExecutor(1)
    loop.set_default_executor(stuck)
    release = threading.Event()
    blocked = loop.run_in_executor(None, release.wait)
    try:
        async with make_spool(tmp_path) as spool:  # records come from the file, not the tail
            items = await asyncio.wait_for(read_all(spool), timeout=5)
            assert ids_of(items) == [ev(i) for i in range(5)]
    finally:
        release.set()
        await blocked


async def test_the_tail_bound_is_configurable(tmp_path: Path) -> None:
    """``delivery.tail_bytes`` reaches the spool: a smaller bound keeps fewer records."""
    from bridge.spool.store import TAIL_COST_PER_BYTE

    big = "x" * 16 * 1024
    async with make_spool(tmp_path, max_bytes=1 << 30, tail_bytes=256 * 1024) as spool:
        for start in range(0, 100, 10):
            await spool.append(
                ["mem"] * 10,
                [codec.encode("mem", outgoing(i, data=big)) for i in range(start, start + 10)],
            )
        charged = sum(item.size for item in spool._tail) * TAIL_COST_PER_BYTE
        assert 0 < charged <= 256 * 1024 + 10 * len(big) * TAIL_COST_PER_BYTE
        assert ids_of(await read_all(spool)) == [ev(i) for i in range(100)]


async def test_a_read_is_bounded_in_bytes_from_the_tail_too(tmp_path: Path) -> None:
    """`Cursor.read`'s ``max_bytes`` holds whether records come from the file or the
    in-memory tail (a caught-up deliverer's window relies on it), and lets one in."""
    big = "x" * 10_000
    async with make_spool(tmp_path, max_bytes=1 << 30) as spool:
        await spool.append(
            ["mem"] * 50,
            [codec.encode("mem", outgoing(i, data=big)) for i in range(50)],
            [f"decoded {i}" for i in range(50)],
        )
        cursor = spool.cursor("mem")
        try:
            first = await cursor.read(1000, max_bytes=35_000)
            assert [item.obj is not None for item in first] == [True] * len(first)  # the tail
            assert 1 <= len(first) <= 4
            assert sum(item.size for item in first[:-1]) < 35_000
            one = await cursor.read(1000, max_bytes=1)
            assert len(one) == 1
            rest = [*first, *one]
            while got := await cursor.read(1000, max_bytes=35_000):
                rest.extend(got)
        finally:
            cursor.close()
        assert ids_of(rest) == [ev(i) for i in range(50)]
