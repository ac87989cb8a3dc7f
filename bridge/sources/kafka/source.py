"""The Kafka source: a consumer group, offsets committed only when done, on the toolkit's
`Supervisor`.

Each start of the consumer (made by the supervisor, which starts it again if it
fails) runs one fetch loop: fetch up to ``max_records`` records, handle each
partition's records **in order** (partitions concurrently), and commit, per
partition, the offset after the last record that is done. A record whose
`Verdict` is ``redeliver`` stops its partition for this round: the consumer
seeks back to it after a backoff pause, so it and the records after it come
again. A dead letter is produced to ``dead_letter_topic`` (if set) before the
offset moves past it. Offsets not committed when the process stops or dies are
consumed again by the group.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from time import perf_counter
from typing import Any, Final

from aiokafka import (  # type: ignore[import-untyped]
    AIOKafkaConsumer,
    AIOKafkaProducer,
    ConsumerRecord,
    TopicPartition,
)

from bridge.metrics import METRICS, Metrics
from bridge.sinks.base import Health
from bridge.sinks.toolkit import Backoff, Supervisor, TaskGroup, describe
from bridge.sources.base import Deliver, Incoming, Verdict
from bridge.sources.decode import Undecodable
from bridge.sources.kafka.config import KafkaSourceConfig
from bridge.sources.kafka.message import kafka_event

log = logging.getLogger("bridge.sources.kafka")

CLOSE_TIMEOUT_S: Final = 5.0
REASON_HEADER: Final = "evbridge-reason"
SOURCE_HEADER: Final = "evbridge-source"


class _Link:
    """One started consumer (and the dead-letter producer) with its fetch loop."""

    def __init__(self, consumer: AIOKafkaConsumer, producer: AIOKafkaProducer | None) -> None:
        self.consumer = consumer
        self.producer = producer
        self.loop: asyncio.Task[None] | None = None
        self._lost: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def lost(self) -> str:
        return await asyncio.shield(self._lost)

    def fail(self, why: str) -> None:
        if not self._lost.done():
            self._lost.set_result(why)

    async def probe(self) -> None:
        await self.consumer.topics()

    async def close(self) -> None:
        if self.loop is not None:
            self.loop.cancel()
        for client in (self.consumer, self.producer):
            if client is not None:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(CLOSE_TIMEOUT_S):
                        await client.stop()


class KafkaSource:
    """Consumes Kafka topics into the bus; see the module docstring."""

    def __init__(self, config: KafkaSourceConfig, metrics: Metrics = METRICS) -> None:
        self.name = config.name
        self.config = config
        self._metrics = metrics
        self._ack_duration = metrics.source_ack_duration.labels(config.name)
        self._deliver: Deliver | None = None
        self._tasks: TaskGroup | None = None
        self._handling: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._backoff = Backoff(initial_s=config.retry_initial_s, max_s=config.retry_max_s)
        self._redeliveries = 0
        self._supervisor: Supervisor[_Link] = Supervisor(
            config.name, "kafka", ",".join(config.server_list), self._connect,
            config.supervision, log=log, role="source", metrics=metrics,
        )  # fmt: skip

    async def start(self, deliver: Deliver) -> None:
        """Join the group and consume; a broker that is away does not fail the start."""
        self._deliver = deliver
        self._stopping = False
        self._tasks = TaskGroup(
            f"kafka source {self.name}", log, metrics=self._metrics, stage="source"
        )
        await self._supervisor.start()

    async def stop(self) -> None:
        """Stop fetching, give events in flight ``grace_s``, then leave the group: what
        was not committed is consumed again."""
        self._stopping = True
        if self._handling:
            await asyncio.wait(list(self._handling), timeout=self.config.grace_s)
        if self._tasks is not None:
            await self._tasks.close()
        await self._supervisor.stop()

    async def healthcheck(self) -> Health:
        """A metadata request, bounded by ``health_timeout_s``."""
        return await self._supervisor.health()

    async def lag(self) -> int | None:
        """High watermark minus position, summed over the assigned partitions (the
        watermarks come with fetches: a partition not fetched yet is left out); None
        while disconnected."""
        link = self._supervisor.current()
        if not isinstance(link, _Link):
            return None
        consumer = link.consumer
        total = 0
        for tp in consumer.assignment():
            highwater = consumer.highwater(tp)
            if highwater is not None:
                total += max(highwater - await consumer.position(tp), 0)
        return total

    async def check(self) -> Health:
        """For ``evbridge check``: a metadata request (no group joined, nothing consumed):
        the broker answers and the configured topics exist."""
        c = self.config
        client = AIOKafkaConsumer(
            bootstrap_servers=c.server_list, request_timeout_ms=int(c.connect_timeout_s * 1000)
        )
        try:
            await client.start()
            found = await client.topics()
        except Exception as exc:
            return Health(ok=False, detail=f"cannot reach the brokers: {describe(exc)}")
        finally:
            with contextlib.suppress(Exception):
                await client.stop()
        missing = [t for t in c.topics if t not in found]
        if missing:
            return Health(ok=False, detail=f"topics do not exist: {', '.join(missing)}")
        return Health(ok=True, detail=f"brokers answer; group {c.group_id!r}")

    def describe(self) -> dict[str, object]:
        """What `/v1/info` shows of this source."""
        c = self.config
        return {"name": self.name, "type": "kafka", "group_id": c.group_id,
                "topics": list(c.topics), "pattern": c.pattern, "route": c.route,
                "on_error": c.on_error}  # fmt: skip

    async def _connect(self) -> _Link:
        c = self.config
        consumer = AIOKafkaConsumer(
            bootstrap_servers=c.server_list,
            group_id=c.group_id,
            enable_auto_commit=False,
            auto_offset_reset=c.start,
            client_id=f"evbridge-source-{c.name}",
        )
        producer = (
            AIOKafkaProducer(bootstrap_servers=c.server_list, acks="all")
            if c.dead_letter_topic
            else None
        )
        try:
            if c.pattern is not None:
                consumer.subscribe(pattern=c.pattern)
            else:
                consumer.subscribe(list(c.topics))
            await consumer.start()
            if producer is not None:
                await producer.start()
        except BaseException:
            for client in (consumer, producer):
                if client is not None:
                    with contextlib.suppress(Exception):
                        await client.stop()
            raise
        link = _Link(consumer, producer)
        assert self._tasks is not None
        link.loop = self._tasks.spawn(self._fetch_loop(link), name="fetch")
        link.loop.add_done_callback(
            lambda _: None if self._stopping else link.fail("the fetch loop ended")
        )
        return link

    async def _fetch_loop(self, link: _Link) -> None:
        assert self._tasks is not None
        c = self.config
        while not self._stopping:
            batch = await link.consumer.getmany(
                timeout_ms=int(c.fetch_wait_s * 1000), max_records=c.max_records
            )
            tasks = []
            for tp, records in batch.items():
                task = self._tasks.spawn(self._partition(link, tp, records), name=f"{tp}")
                self._handling.add(task)
                task.add_done_callback(self._handling.discard)
                tasks.append(task)
            if tasks:
                # Shielded: stop() waits for these itself, then cancels what is left.
                await asyncio.shield(asyncio.wait(tasks))

    async def _partition(
        self, link: _Link, tp: TopicPartition, records: list[ConsumerRecord[Any, Any]]
    ) -> None:
        """One partition's records in order; commits after the last one done."""
        done: int | None = None
        try:
            for record in records:
                try:
                    verdict = await self._one(record)
                    if verdict.action == "dead_letter":
                        await self._dead_letter(link, record, verdict.reason)
                except Exception as exc:
                    # Not done: the fetch position has moved past it, so go back to it, or
                    # a later commit of this partition would skip it.
                    verdict = Verdict("redeliver", describe(exc))
                if verdict.action == "redeliver":
                    self._redeliveries += 1
                    await asyncio.sleep(self._backoff.delay(self._redeliveries))
                    link.consumer.seek(tp, record.offset)
                    return
                if verdict.action == "ack":
                    self._redeliveries = 0
                done = record.offset
        finally:
            if done is not None:
                with contextlib.suppress(Exception):
                    start = perf_counter()
                    await link.consumer.commit({tp: done + 1})
                    self._ack_duration.observe(perf_counter() - start)

    async def _one(self, record: ConsumerRecord[Any, Any]) -> Verdict:
        assert self._deliver is not None
        where = f"topic {record.topic!r} partition {record.partition} offset {record.offset}"
        try:
            event = kafka_event(
                record.value,
                headers=list(record.headers or ()),
                key=record.key,
                topic=record.topic,
                event_type=self.config.event_type,
            )
            incoming = Incoming(where, event=event)
        except Undecodable as exc:
            incoming = Incoming(where, problem=str(exc))
        return await self._deliver(incoming)

    async def _dead_letter(
        self, link: _Link, record: ConsumerRecord[Any, Any], reason: str
    ) -> None:
        """Produce the record as it came, with the reason, and wait for the broker's ack
        (a failure raises: the offset is not committed past it)."""
        if link.producer is None or self.config.dead_letter_topic is None:
            return
        headers = [
            (n, v) for n, v in (record.headers or ()) if n not in (REASON_HEADER, SOURCE_HEADER)
        ]
        headers.append((REASON_HEADER, " ".join(reason.split())[:1000].encode()))
        headers.append((SOURCE_HEADER, self.name.encode()))
        try:
            await link.producer.send_and_wait(
                self.config.dead_letter_topic, record.value, key=record.key, headers=headers
            )
        except Exception as exc:
            log.warning("kafka source %s: dead letter not produced: %s", self.name, describe(exc))
            raise
