"""The Kafka source's record flow without a broker: lanes in order, the concurrency
bound, pause() at the held limit, watermarks with key lanes, rewinds, revocation."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from bridge.sinks.toolkit import Backoff, TaskGroup
from bridge.sources.base import Verdict
from bridge.sources.kafka.flow import Flow, Order

TP = "tp0"


class Record(msgspec.Struct):
    offset: int
    key: bytes | None = None
    value: bytes = b"{}"


class FakeConsumer:
    def __init__(self, *tps: str) -> None:
        self.assigned = set(tps or (TP,))
        self.paused_: set[str] = set()
        self.seeks: list[tuple[str, int]] = []
        self.commits: list[dict[str, int]] = []
        self.high: dict[str, int] = {}

    def assignment(self) -> set[str]:
        return set(self.assigned)

    def pause(self, *tps: str) -> None:
        self.paused_.update(tps)

    def resume(self, *tps: str) -> None:
        self.paused_.difference_update(tps)

    def paused(self) -> set[str]:
        return set(self.paused_)

    def seek(self, tp: str, offset: int) -> None:
        self.seeks.append((tp, offset))

    def highwater(self, tp: str) -> int | None:
        return self.high.get(tp)

    async def commit(self, offsets: dict[str, int]) -> None:
        self.commits.append(dict(offsets))


def flow(
    handle: Callable[[Any], Awaitable[Verdict]],
    consumer: FakeConsumer,
    *,
    order: Order = "key",
    concurrency: int = 8,
    max_records: int = 100,
) -> Flow:
    tasks = TaskGroup("test", logging.getLogger("test"))
    return Flow(consumer, handle, name="k", order=order, concurrency=concurrency,
                max_records=max_records, backoff=Backoff(initial_s=0.001, max_s=0.001),
                tasks=tasks)  # fmt: skip


class Gates:
    """Per-offset release: a handler waits until the test opens its offset."""

    def __init__(self) -> None:
        self.gates: dict[int, asyncio.Event] = {}
        self.started: list[int] = []
        self.done: list[int] = []
        self.verdicts: dict[int, Verdict] = {}

    def gate(self, offset: int) -> asyncio.Event:
        return self.gates.setdefault(offset, asyncio.Event())

    async def handle(self, record: Record) -> Verdict:
        self.started.append(record.offset)
        await self.gate(record.offset).wait()
        self.done.append(record.offset)
        return self.verdicts.pop(record.offset, Verdict("ack"))


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_key_lanes_run_concurrently_in_order_and_the_watermark_waits_for_the_lowest() -> None:
    gates, consumer = Gates(), FakeConsumer()
    f = flow(gates.handle, consumer)
    f.add(TP, [Record(0, b"a"), Record(1, b"b"), Record(2, b"a"), Record(3, b"b")])
    await settle()
    assert sorted(gates.started) == [0, 1]  # one record per key at a time
    gates.gate(1).set()
    await settle()
    assert gates.started[-1] == 3  # key b moves on while key a's first record runs
    gates.gate(3).set()
    await settle()
    await f.commit()
    assert consumer.commits == [{TP: 0}]  # offset 0 unfinished: nothing past it
    gates.gate(0).set()
    await settle()
    await f.commit()
    assert consumer.commits[-1] == {TP: 2}  # 0, 1, 3 done; 2 (key a) is not
    gates.gate(2).set()
    await settle()
    await f.commit()
    assert consumer.commits[-1] == {TP: 4}
    assert gates.done == [1, 3, 0, 2]


async def test_partition_order_handles_one_record_of_a_partition_at_a_time() -> None:
    gates, consumer = Gates(), FakeConsumer()
    f = flow(gates.handle, consumer, order="partition")
    f.add(TP, [Record(0, b"a"), Record(1, b"b")])
    await settle()
    assert gates.started == [0]
    gates.gate(0).set()
    gates.gate(1).set()
    await settle()
    assert gates.done == [0, 1]


async def test_concurrency_bounds_records_handled_at_once() -> None:
    gates, consumer = Gates(), FakeConsumer()
    f = flow(gates.handle, consumer, concurrency=2)
    f.add(TP, [Record(i, f"k{i}".encode()) for i in range(6)])
    await settle()
    assert (len(gates.started), f.running) == (2, 2)
    for i in range(6):
        gates.gate(i).set()
    await settle()
    assert sorted(gates.done) == list(range(6))
    assert f.most_running == 2


async def test_at_the_held_limit_every_partition_is_paused_then_resumed() -> None:
    gates, consumer = Gates(), FakeConsumer(TP, "tp1")
    f = flow(gates.handle, consumer, max_records=3)
    f.add(TP, [Record(0, b"a"), Record(1, b"b")])
    f.apply_pause()
    assert (f.room, consumer.paused_) == (1, set())
    f.add("tp1", [Record(0, b"c")])
    assert f.room == 0
    assert consumer.paused_ == {TP, "tp1"}
    gates.gate(1).set()
    await settle()
    await f.wait_room(1.0)
    f.apply_pause()
    assert (f.room, consumer.paused_, f.pauses) == (1, set(), 1)


async def test_a_redelivered_record_seeks_back_to_the_lowest_dropped_offset() -> None:
    gates, consumer = Gates(), FakeConsumer()
    f = flow(gates.handle, consumer)
    gates.verdicts[1] = Verdict("redeliver", "sink down")
    f.add(TP, [Record(0, b"a"), Record(1, b"b"), Record(2, b"b"), Record(3, b"c")])
    gates.gate(1).set()
    gates.gate(3).set()
    await settle()
    # 3 (key c) finished before the rewind; 2 was queued behind 1 and is dropped
    await asyncio.sleep(0.01)  # the backoff pause (1 ms) passes
    await settle()
    assert consumer.seeks == [(TP, 1)]
    assert 2 not in gates.started
    assert f.held == 1  # only 0, still in flight
    await f.commit()
    assert consumer.commits == [{TP: 0}]  # 0 is unfinished
    gates.gate(0).set()
    await settle()
    await f.commit()
    assert consumer.commits[-1] == {TP: 1}  # never past the redelivered record
    f.add(TP, [Record(1, b"b"), Record(2, b"b"), Record(3, b"c")])  # fetched again
    gates.verdicts.clear()
    gates.gate(2).set()
    await settle()
    await f.commit()
    assert consumer.commits[-1] == {TP: 4}


async def test_the_commit_never_passes_a_record_whose_rewind_is_waiting() -> None:
    gates, consumer = Gates(), FakeConsumer()
    f = flow(gates.handle, consumer)
    f._backoff = Backoff(initial_s=60, max_s=60)
    gates.verdicts[0] = Verdict("redeliver", "sink down")
    f.add(TP, [Record(0, b"a"), Record(1, b"b")])
    gates.gate(0).set()
    gates.gate(1).set()
    await settle()
    assert TP in consumer.paused_  # paused while the rewind waits
    await f.close(grace_s=0.01)  # the rewind is cancelled: 0 is left for redelivery
    assert all(c[TP] <= 0 for c in consumer.commits)


async def test_revocation_gives_in_flight_records_grace_then_commits_what_is_done() -> None:
    gates, consumer = Gates(), FakeConsumer(TP, "tp1")
    f = flow(gates.handle, consumer)
    f.add(TP, [Record(0, b"a"), Record(1, b"b"), Record(2, b"a")])
    f.add("tp1", [Record(5, b"x")])
    await settle()
    gates.gate(1).set()
    await settle()
    await f.revoke({TP}, grace_s=0.05)  # 0 does not finish: abandoned; 2 never starts
    assert consumer.commits == [{TP: 0}]  # 0 unfinished: TP's watermark stayed at 0
    assert 2 not in gates.started
    assert f.held == 1  # tp1's record only
    consumer.assigned.discard(TP)
    f.add(TP, [Record(3, b"a")])  # fetched before the revocation: not ours any more
    assert f.held == 1
    consumer.high["tp1"] = 9
    assert f.lag() == 4  # tp1: highwater 9, offset 5 not done
    gates.gate(5).set()
    await settle()
    await f.close(grace_s=0.05)
    assert consumer.commits[-1] == {"tp1": 6}


async def test_a_stop_never_commits_past_the_queued_records_it_dropped() -> None:
    # The defect behind the SIGTERM crash test's missing messages: the in-flight record
    # finished within the grace, and the commit (the stop's, or the committer's) then
    # went to the fetch position, past the records the stop had dropped unhandled.
    gates, consumer = Gates(), FakeConsumer()
    f = flow(gates.handle, consumer, order="partition")
    committer = asyncio.create_task(f.commit_loop())
    f.add(TP, [Record(10), Record(11), Record(12)])
    await settle()
    assert gates.started == [10]
    closing = asyncio.create_task(f.close(grace_s=5.0))
    await settle()
    gates.gate(10).set()  # finishes within the grace
    await closing
    committer.cancel()
    await asyncio.gather(committer, return_exceptions=True)
    assert gates.done == [10]
    assert consumer.commits[-1:] == [{TP: 11}]
    assert all(c[TP] <= 11 for c in consumer.commits)  # 11 and 12 are consumed again


async def test_a_revocation_with_key_lanes_commits_the_lowest_dropped_offset() -> None:
    gates, consumer = Gates(), FakeConsumer(TP, "tp1")
    f = flow(gates.handle, consumer, order="key")
    f.add(TP, [Record(0, b"a"), Record(1, b"a"), Record(2, b"b"), Record(3, b"b")])
    await settle()
    assert sorted(gates.started) == [0, 2]
    revoking = asyncio.create_task(f.revoke({TP}, grace_s=5.0))
    await settle()
    gates.gate(0).set()
    gates.gate(2).set()
    await revoking
    assert consumer.commits == [{TP: 1}]  # 1 and 3 were dropped: 1 is the lowest
