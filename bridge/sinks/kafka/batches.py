"""Record batches being filled, and the per-partition lanes that hand them to aiokafka.

Every event of a ``publish_many`` call (and of calls running at the same time)
is appended to the *open* record batch of its topic-partition. One drain task
per partition (`drain`) hands batches to aiokafka's ``send_batch`` one at a
time; while a batch is on the wire the next one keeps filling, so a partition
sees one produce request per round trip however many events arrive. An
event's offset is the batch's base offset plus its index in the batch.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from bridge.errors import SinkUnavailable
from bridge.sinks.kafka.message import Headers

Record = tuple[bytes | None, bytes, Headers, int]  # key, value, headers, timestamp ms


class Batch:
    """One record batch of a topic-partition, filled by any number of publish calls.

    ``done`` resolves (always with ``None``) once the broker answered; then
    ``base`` holds the base offset (``None`` with ``acks: 0``) or ``error`` the failure.
    """

    __slots__ = (
        "base", "builder", "count", "created", "done", "error", "partition", "pending", "topic",
    )  # fmt: skip

    def __init__(self, builder: Any, topic: str, partition: int, pending: set[Batch]) -> None:
        loop = asyncio.get_running_loop()
        self.created = loop.time()
        self.builder = builder
        self.topic = topic
        self.partition = partition
        self.count = 0
        self.done: asyncio.Future[None] = loop.create_future()
        self.base: int | None = None
        self.error: BaseException | None = None
        self.pending = pending  # the set of unanswered batches this one leaves when done

    def append(self, record: Record) -> int | None:
        """The record's index in the batch, or None when the batch is full."""
        key, value, headers, ts = record
        if self.builder.append(timestamp=ts, key=key, value=value, headers=headers) is None:
            return None
        self.count += 1
        return self.count - 1

    def settle(self, future: asyncio.Future[Any]) -> None:
        """Done-callback of aiokafka's delivery future."""
        if future.cancelled():
            self.fail(SinkUnavailable("the batch was cancelled before the broker answered"))
        elif (exc := future.exception()) is not None:
            self.fail(exc)
        elif not self.done.done():
            meta = future.result()
            self.base = None if meta is None else meta.offset
            self.done.set_result(None)
            self.pending.discard(self)

    def fail(self, exc: BaseException) -> None:
        if not self.done.done():
            self.error = exc
            self.done.set_result(None)
            self.pending.discard(self)


class Lane:
    """Batches of one topic-partition waiting for the producer: full ones, then the open one."""

    __slots__ = ("full", "open", "task")

    def __init__(self) -> None:
        self.full: deque[Batch] = deque()
        self.open: Batch | None = None
        self.task: asyncio.Task[None] | None = None


async def drain(
    producer: Any, lanes: dict[tuple[str, int], Lane], tp: tuple[str, int], lane: Lane,
    linger_s: float, sink: str,
) -> None:  # fmt: skip
    """Hand the lane's batches to the producer, one at a time, until the lane is empty.

    A batch is closed and sent when the previous one of its partition was
    answered (and, with ``linger_ms``, once it is that old or full): whatever
    arrives while a batch is on the wire fills the next one, so each round
    trip carries everything that came in during the last.
    """
    topic, partition = tp
    loop = asyncio.get_running_loop()
    try:
        while True:
            if lane.full:
                batch = lane.full.popleft()
            elif lane.open is not None:
                wait = lane.open.created + linger_s - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)  # linger_ms: let the open batch fill
                    continue
                batch, lane.open = lane.open, None
            else:
                return
            batch.builder.close()
            try:
                future = await producer.send_batch(batch.builder, topic, partition=partition)
            except asyncio.CancelledError:
                batch.fail(SinkUnavailable(f"kafka sink {sink!r} stopped"))
                raise
            except Exception as exc:
                batch.fail(exc)
                continue
            future.add_done_callback(batch.settle)
            await batch.done
    finally:
        lane.task = None
        if lane.open is None and not lane.full and lanes.get(tp) is lane:
            del lanes[tp]
